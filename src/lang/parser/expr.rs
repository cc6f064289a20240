//! Expressions, by precedence climbing: one function per level of the grammar, loosest first
//! (`or`, `and`, `not`, comparisons, `??`, `+ -`, `* / %`, prefix `-`, postfix, primary).
//!
//! Each function returns the expression with its tree depth, so that a long chain such as
//! `a + a + ... + a` is refused before it grows deep enough to overflow the stack of whoever
//! walks it later. The right operand of an operator is committed: once `+` is read, a missing
//! operand is an error, not a reason to backtrack.

use nom::Err;

use super::error::describe;
use super::lex::{CLAUSE_KEYWORDS, ITEM_KEYWORDS, Num, Peek, Tok};
use super::{Cx, MAX_EXPR_DEPTH, PResult};
use crate::lang::ast::{BinaryOp, Expr, ExprKind, Literal, UnaryOp};
use crate::lang::codes::Code;
use crate::lang::diagnostic::Diagnostic;
use crate::lang::span::{Span, Spanned};

/// An expression and the depth of its tree.
type PE<'a> = PResult<'a, (Expr, u32)>;

/// The magnitude of `i64::MIN`, which only parses with a `-` in front.
const MIN_INT_MAGNITUDE: &str = "9223372036854775808";

impl<'a> Cx<'a> {
    /// A required expression; `after` names what it follows (such as "`where`").
    pub(super) fn parse_expr(&self, i: &'a str, after: &str) -> PResult<'a, Expr> {
        match self.or_expr(i) {
            Ok((rest, (e, _))) => Ok((rest, e)),
            Err(Err::Error(e)) => self.fail(e.at, self.no_operand(e.at, after)),
            Err(e) => Err(e),
        }
    }

    /// "expected an expression after X", with a hint for the usual slips.
    fn no_operand(&self, at: &'a str, after: &str) -> Diagnostic {
        let d = self.unexpected(at, &format!("an expression after {after}"));
        match self.peek(at).tok {
            Tok::Word("not") => d.with_note(
                "`not` binds more loosely than comparisons and arithmetic: write `(not x)`",
            ),
            Tok::Punct("+") => d.with_note("there is no prefix `+`; write the number alone"),
            Tok::Punct("=") => d.with_note("to compare, write `==`"),
            _ => d,
        }
    }

    /// Makes an operand's absence an error that names the operator before it.
    fn operand<T>(&self, r: PResult<'a, T>, op: Span) -> PResult<'a, T> {
        match r {
            Err(Err::Error(e)) => {
                let after = format!("`{}`", self.text(op));
                self.fail(e.at, self.no_operand(e.at, &after))
            }
            other => other,
        }
    }

    /// A node over children whose deepest is `depth`; refused past [`MAX_EXPR_DEPTH`].
    fn node(
        &self,
        at: &'a str,
        kind: ExprKind,
        span: Span,
        depth: u32,
    ) -> Result<(Expr, u32), Err<super::error::PError<'a>>> {
        if depth >= MAX_EXPR_DEPTH {
            let (start, end) = self.token_bounds(at);
            return Err(Err::Failure(super::error::PError::diag(
                at,
                self.error(
                    Code::E101,
                    "expression too long",
                    self.span(start, end),
                    format!("more than {MAX_EXPR_DEPTH} levels of operators"),
                )
                .with_note("split it, for example by moving part of it into a rhai function"),
            )));
        }
        Ok((Expr { kind, span }, depth + 1))
    }

    fn binary(
        &self,
        at: &'a str,
        op: BinaryOp,
        (lhs, ld): (Expr, u32),
        (rhs, rd): (Expr, u32),
    ) -> Result<(Expr, u32), Err<super::error::PError<'a>>> {
        let span = lhs.span.to(rhs.span);
        self.node(
            at,
            ExprKind::Binary {
                op,
                lhs: Box::new(lhs),
                rhs: Box::new(rhs),
            },
            span,
            ld.max(rd),
        )
    }

    /// `or_expr = and_expr { "or" and_expr }`
    fn or_expr(&self, i: &'a str) -> PE<'a> {
        let (mut i, mut lhs) = self.and_expr(i)?;
        loop {
            let op = self.peek(i);
            if !op.is_word("or") {
                return Ok((i, lhs));
            }
            let (rest, rhs) = self.operand(self.and_expr(op.after), self.peek_span(&op))?;
            lhs = self.binary(op.at, BinaryOp::Or, lhs, rhs)?;
            i = rest;
        }
    }

    /// `and_expr = not_expr { "and" not_expr }`
    fn and_expr(&self, i: &'a str) -> PE<'a> {
        let (mut i, mut lhs) = self.not_expr(i)?;
        loop {
            let op = self.peek(i);
            if !op.is_word("and") {
                return Ok((i, lhs));
            }
            let (rest, rhs) = self.operand(self.not_expr(op.after), self.peek_span(&op))?;
            lhs = self.binary(op.at, BinaryOp::And, lhs, rhs)?;
            i = rest;
        }
    }

    /// `not_expr = "not" not_expr | cmp_expr`
    fn not_expr(&self, i: &'a str) -> PE<'a> {
        let op = self.peek(i);
        if !op.is_word("not") {
            return self.cmp_expr(i);
        }
        self.nested(op.at, || {
            let (rest, (e, d)) = self.operand(self.not_expr(op.after), self.peek_span(&op))?;
            let span = self.peek_span(&op).to(e.span);
            let kind = ExprKind::Unary {
                op: UnaryOp::Not,
                operand: Box::new(e),
            };
            Ok((rest, self.node(op.at, kind, span, d)?))
        })
    }

    /// The comparison operator at `i`, if any. Near misses (`=`, `=>`, `=<`, `<>`) are
    /// reported and read as the operator meant.
    fn cmp_op(&self, i: &'a str) -> Option<(BinaryOp, Span, &'a str)> {
        let next = self.peek(i);
        let span = self.peek_span(&next);
        let Tok::Punct(p) = next.tok else {
            return None;
        };
        let op = match p {
            "==" => BinaryOp::Eq,
            "!=" => BinaryOp::Ne,
            "<=" => BinaryOp::Le,
            ">=" => BinaryOp::Ge,
            "<" if next.after.starts_with('>') => {
                return Some(self.near_miss(next, "<>", "!=", BinaryOp::Ne));
            }
            "<" => BinaryOp::Lt,
            ">" => BinaryOp::Gt,
            "=" if next.after.starts_with('>') => {
                return Some(self.near_miss(next, "=>", ">=", BinaryOp::Ge));
            }
            "=" if next.after.starts_with('<') => {
                return Some(self.near_miss(next, "=<", "<=", BinaryOp::Le));
            }
            "=" => {
                self.report(
                    self.error(
                        Code::E113,
                        "`=` used for comparison",
                        span,
                        "`=` is not an operator",
                    )
                    .with_note("to compare, write `==`"),
                );
                BinaryOp::Eq
            }
            _ => return None,
        };
        Some((op, span, next.after))
    }

    /// Reports a two-character operator from another language and reads it as `meant`.
    fn near_miss(
        &self,
        next: Peek<'a>,
        written: &str,
        meant: &str,
        op: BinaryOp,
    ) -> (BinaryOp, Span, &'a str) {
        let after = &next.after[1..];
        let span = self.span(next.at, after);
        self.report(self.error(
            Code::E101,
            format!("`{written}` is not an operator"),
            span,
            format!("did you mean `{meant}`?"),
        ));
        (op, span, after)
    }

    /// `cmp_expr = coalesce [ cmp_op coalesce ]`; a second comparison is E114 and is read
    /// left to right so the rest of the condition still parses.
    fn cmp_expr(&self, i: &'a str) -> PE<'a> {
        let (i, lhs) = self.coalesce(i)?;
        let Some((op, op_span, after)) = self.cmp_op(i) else {
            return Ok((i, lhs));
        };
        let op_peek = self.peek(i);
        let (mut i, rhs) = self.operand(self.coalesce(after), op_span)?;
        let (first_lhs, middle) = (lhs.0.span, rhs.0.span);
        let mut e = self.binary(op_peek.at, op, lhs, rhs)?;
        let mut reported = false;
        while let Some((op2, op2_span, after)) = self.cmp_op(i) {
            let op2_peek = self.peek(i);
            let (rest, rhs) = self.operand(self.coalesce(after), op2_span)?;
            if !reported {
                reported = true;
                self.report(self.chained(first_lhs, op_span, middle, op2_span, rhs.0.span));
            }
            e = self.binary(op2_peek.at, op2, e, rhs)?;
            i = rest;
        }
        Ok((i, e))
    }

    /// E114, with the condition rewritten with `and` when it is short enough to quote.
    fn chained(&self, a: Span, op1: Span, b: Span, op2: Span, c: Span) -> Diagnostic {
        let d = self
            .error(
                Code::E114,
                "comparisons cannot be chained",
                op2,
                "second comparison",
            )
            .with_secondary(self.file, op1, "first comparison");
        let [a, op1, b, op2, c] = [a, op1, b, op2, c].map(|s| self.text(s));
        let quotable = [a, b, c]
            .iter()
            .all(|t| !t.is_empty() && t.len() <= 30 && !t.contains('\n'));
        if quotable {
            d.with_note(format!(
                "compare twice and join with `and`: `{a} {op1} {b} and {b} {op2} {c}`"
            ))
        } else {
            d.with_note("compare twice and join with `and`: `a < b and b < c`")
        }
    }

    /// `coalesce = sum { "??" sum }`
    fn coalesce(&self, i: &'a str) -> PE<'a> {
        let (mut i, mut lhs) = self.sum(i)?;
        loop {
            let op = self.peek(i);
            if !op.is_punct("??") {
                return Ok((i, lhs));
            }
            let (rest, rhs) = self.operand(self.sum(op.after), self.peek_span(&op))?;
            lhs = self.binary(op.at, BinaryOp::Coalesce, lhs, rhs)?;
            i = rest;
        }
    }

    /// `sum = product { ( "+" | "-" ) product }`
    fn sum(&self, i: &'a str) -> PE<'a> {
        let (mut i, mut lhs) = self.product(i)?;
        loop {
            let op = self.peek(i);
            let bop = match op.tok {
                Tok::Punct("+") => BinaryOp::Add,
                Tok::Punct("-") => BinaryOp::Sub,
                _ => return Ok((i, lhs)),
            };
            let (rest, rhs) = self.operand(self.product(op.after), self.peek_span(&op))?;
            lhs = self.binary(op.at, bop, lhs, rhs)?;
            i = rest;
        }
    }

    /// `product = unary { ( "*" | "/" | "%" ) unary }`
    fn product(&self, i: &'a str) -> PE<'a> {
        let (mut i, mut lhs) = self.unary(i)?;
        loop {
            let op = self.peek(i);
            let bop = match op.tok {
                Tok::Punct("*") => BinaryOp::Mul,
                Tok::Punct("/") => BinaryOp::Div,
                Tok::Punct("%") => BinaryOp::Rem,
                _ => return Ok((i, lhs)),
            };
            let (rest, rhs) = self.operand(self.unary(op.after), self.peek_span(&op))?;
            lhs = self.binary(op.at, bop, lhs, rhs)?;
            i = rest;
        }
    }

    /// `unary = "-" unary | postfix`. `-9223372036854775808` is read as one literal, since
    /// its magnitude alone does not fit in an int.
    fn unary(&self, i: &'a str) -> PE<'a> {
        let op = self.peek(i);
        if !op.is_punct("-") {
            return self.postfix(i);
        }
        let num = self.peek(op.after);
        if let Tok::Number(text) = num.tok {
            let is_min = text
                .chars()
                .filter(|c| *c != '_')
                .eq(MIN_INT_MAGNITUDE.chars());
            if is_min && !self.peek(num.after).is_punct(".") {
                let span = self.span(op.at, num.after);
                let kind = ExprKind::Literal(Literal::Int(i64::MIN));
                return Ok((num.after, (Expr { kind, span }, 1)));
            }
        }
        self.nested(op.at, || {
            let (rest, (e, d)) = self.operand(self.unary(op.after), self.peek_span(&op))?;
            let span = self.peek_span(&op).to(e.span);
            let kind = ExprKind::Unary {
                op: UnaryOp::Neg,
                operand: Box::new(e),
            };
            Ok((rest, self.node(op.at, kind, span, d)?))
        })
    }

    /// `postfix = primary { "." ident }`
    fn postfix(&self, i: &'a str) -> PE<'a> {
        let (mut i, (mut e, mut d)) = self.primary(i)?;
        loop {
            let dot = self.peek(i);
            if !dot.is_punct(".") {
                return Ok((i, (e, d)));
            }
            let name = self.peek(dot.after);
            let (rest, field) = match name.tok {
                Tok::Word(w) => {
                    let span = self.peek_span(&name);
                    if super::lex::is_reserved(w) {
                        self.report(self.reserved_as_name(w, span, "a field name"));
                    }
                    (name.after, Spanned::new(span, w.to_string()))
                }
                _ => {
                    return self.fail(
                        dot.after,
                        self.unexpected(dot.after, "a field name after `.`"),
                    );
                }
            };
            let call = self.peek(rest);
            if call.is_punct("(") {
                let base = self.text(e.span);
                let base = if base.len() <= 30 && !base.contains('\n') {
                    base
                } else {
                    "x"
                };
                let more = if self.peek(call.after).is_punct(")") {
                    ""
                } else {
                    ", ..."
                };
                let d = self
                    .error(
                        Code::E101,
                        "methods are not supported",
                        field.span.to(self.peek_span(&call)),
                        "this calls a method",
                    )
                    .with_note(format!(
                        "call a function instead: `{}({base}{more})`",
                        field.node
                    ));
                return self.fail(call.at, d);
            }
            let span = e.span.to(field.span);
            let kind = ExprKind::Field {
                base: Box::new(e),
                field,
            };
            (e, d) = self.node(dot.at, kind, span, d)?;
            i = rest;
        }
    }

    /// `primary`: literals, `key`, names, calls, `if`, parentheses.
    fn primary(&self, i: &'a str) -> PE<'a> {
        let next = self.peek(i);
        let span = self.peek_span(&next);
        let leaf = |rest: &'a str, kind: ExprKind, span: Span| Ok((rest, (Expr { kind, span }, 1)));
        match next.tok {
            Tok::Number(_) => {
                let (rest, num, span) = self.parse_number(next.at);
                let lit = match num {
                    Num::Int(v) => Literal::Int(v),
                    Num::Float(v) => Literal::Float(v),
                    Num::Duration(millis) => {
                        Literal::Duration(crate::lang::ast::Duration { millis })
                    }
                };
                leaf(rest, ExprKind::Literal(lit), span)
            }
            Tok::Str => {
                let (rest, s) = self.parse_string(next.at);
                leaf(rest, ExprKind::Literal(Literal::String(s.node)), s.span)
            }
            Tok::Time => {
                let (rest, nanos, span) = self.parse_timestamp(next.at);
                leaf(rest, ExprKind::Literal(Literal::Timestamp(nanos)), span)
            }
            Tok::Word("true") => leaf(next.after, ExprKind::Literal(Literal::Bool(true)), span),
            Tok::Word("false") => leaf(next.after, ExprKind::Literal(Literal::Bool(false)), span),
            Tok::Word("null") => leaf(next.after, ExprKind::Literal(Literal::Null), span),
            Tok::Word("key") => leaf(next.after, ExprKind::Key, span),
            Tok::Word("if") => self.if_expr(next),
            Tok::Word(w) if !super::lex::is_reserved(w) => self.name_or_call(next, w),
            Tok::Punct("(") => self.nested(next.at, || {
                let (rest, (inner, d)) =
                    self.operand(self.or_expr(next.after), self.peek_span(&next))?;
                let close = self.peek(rest);
                if !close.is_punct(")") {
                    return self.fail(rest, self.unclosed(rest, "`)`", span, "("));
                }
                let span = span.to(self.peek_span(&close));
                Ok((
                    close.after,
                    self.node(next.at, ExprKind::Paren(Box::new(inner)), span, d)?,
                ))
            }),
            _ => self.backtrack(next.at, "an expression"),
        }
    }

    /// A name, or a call when `(` or `::` follows it.
    fn name_or_call(&self, next: Peek<'a>, w: &str) -> PE<'a> {
        let name = Spanned::new(self.peek_span(&next), w.to_string());
        let after = self.peek(next.after);
        if after.is_punct("::") {
            let (rest, function) =
                self.parse_name(after.after, "a function name after `::`", &["("])?;
            let open = self.peek(rest);
            if !open.is_punct("(") {
                let d = self.unexpected(rest, "`(`").with_note(format!(
                    "`{w}::{}` names a function of an imported script; call it: `{w}::{}(...)`",
                    function.node, function.node
                ));
                return self.fail(rest, d);
            }
            return self.call(Some(name), function, open);
        }
        if after.is_punct("(") {
            return self.call(None, name, after);
        }
        Ok((
            next.after,
            (
                Expr {
                    kind: ExprKind::Name(w.to_string()),
                    span: name.span,
                },
                1,
            ),
        ))
    }

    /// `call = ident [ "::" ident ] "(" [ expr { "," expr } [ "," ] ] ")"`, from the `(`.
    fn call(
        &self,
        module: Option<crate::lang::ast::Ident>,
        function: crate::lang::ast::Ident,
        open: Peek<'a>,
    ) -> PE<'a> {
        let open_span = self.peek_span(&open);
        self.nested(open.at, || {
            let mut args = Vec::new();
            let mut depth = 0;
            let mut i = open.after;
            let close = loop {
                let next = self.peek(i);
                if next.is_punct(")") {
                    break next;
                }
                let (rest, (arg, d)) = match self.or_expr(i) {
                    Err(Err::Error(e)) => {
                        let d = match next.tok {
                            Tok::Eof | Tok::Punct("}") => self.unclosed(i, "`)`", open_span, "("),
                            _ => self.unexpected(e.at, "an argument or `)`"),
                        };
                        return self.fail(e.at, d);
                    }
                    other => other?,
                };
                args.push(arg);
                depth = depth.max(d);
                let sep = self.peek(rest);
                if sep.is_punct(",") {
                    i = sep.after;
                } else if sep.is_punct(")") {
                    i = rest;
                } else {
                    return self.fail(rest, self.unclosed(rest, "`,` or `)`", open_span, "("));
                }
            };
            let start = module.as_ref().map_or(function.span, |m| m.span);
            let span = start.to(self.peek_span(&close));
            let kind = ExprKind::Call {
                module,
                function,
                args,
            };
            Ok((close.after, self.node(open.at, kind, span, depth)?))
        })
    }

    /// `"if" expr "then" expr "else" expr`, from the `if`.
    fn if_expr(&self, kw: Peek<'a>) -> PE<'a> {
        self.nested(kw.at, || {
            let (i, (cond, cd)) = self.operand(self.or_expr(kw.after), self.peek_span(&kw))?;
            let then_kw = self.peek(i);
            if !then_kw.is_word("then") {
                let d = self
                    .unexpected(i, "`then`")
                    .with_note("write `if condition then value else other`");
                return self.fail(i, d);
            }
            let (i, (then, td)) =
                self.operand(self.or_expr(then_kw.after), self.peek_span(&then_kw))?;
            let else_kw = self.peek(i);
            if !else_kw.is_word("else") {
                let d = self
                    .unexpected(i, "`else`")
                    .with_note("`if` needs an `else` branch: `if condition then value else other`");
                return self.fail(i, d);
            }
            let (i, (otherwise, od)) =
                self.operand(self.or_expr(else_kw.after), self.peek_span(&else_kw))?;
            let span = self.peek_span(&kw).to(otherwise.span);
            let kind = ExprKind::If {
                cond: Box::new(cond),
                then: Box::new(then),
                otherwise: Box::new(otherwise),
            };
            Ok((i, self.node(kw.at, kind, span, cd.max(td).max(od))?))
        })
    }

    /// The error for a missing closing delimiter at `at`: E109 when what follows shows the
    /// delimiter was forgotten (the end of the file, the next clause or item, a closing
    /// brace of an outer construct), otherwise "expected X, found Y".
    pub(super) fn unclosed(
        &self,
        at: &'a str,
        expected: &str,
        open: Span,
        open_text: &str,
    ) -> Diagnostic {
        let next = self.peek(at);
        let forgotten = match next.tok {
            Tok::Eof => true,
            Tok::Word(w) => {
                ITEM_KEYWORDS.contains(&w) || (CLAUSE_KEYWORDS.contains(&w) && w != "key")
            }
            Tok::Punct("}") => open_text == "(",
            Tok::Punct(")") => open_text == "{",
            _ => false,
        };
        if forgotten {
            let close = if open_text == "(" { ")" } else { "}" };
            let label = format!(
                "expected `{close}` before {}",
                match next.tok {
                    Tok::Eof => "the end of the file".to_string(),
                    tok => describe(tok),
                }
            );
            self.error(
                Code::E109,
                format!("unclosed `{open_text}`"),
                self.peek_span(&next),
                label,
            )
            .with_secondary(
                self.file,
                open,
                format!("this `{open_text}` is never closed"),
            )
        } else {
            self.unexpected(at, expected).with_secondary(
                self.file,
                open,
                format!("to close this `{open_text}`"),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::lang::diagnostic::FileId;

    fn expr(src: &str) -> (Expr, Vec<Diagnostic>) {
        let cx = Cx::new(FileId(0), src);
        let (rest, e) = cx.parse_expr(src, "the start").unwrap();
        assert_eq!(cx.ws(rest), "", "all of {src:?} is read");
        (e, cx.diags.into_inner())
    }

    fn shape(e: &Expr) -> String {
        match &e.kind {
            ExprKind::Literal(Literal::Int(v)) => v.to_string(),
            ExprKind::Literal(l) => format!("{l:?}"),
            ExprKind::Key => "key".into(),
            ExprKind::Name(n) => n.clone(),
            ExprKind::Field { base, field } => format!("{}.{}", shape(base), field.node),
            ExprKind::Call { function, args, .. } => format!(
                "{}({})",
                function.node,
                args.iter().map(shape).collect::<Vec<_>>().join(", ")
            ),
            ExprKind::Unary { op, operand } => format!("({op:?} {})", shape(operand)),
            ExprKind::Binary { op, lhs, rhs } => {
                format!("({} {} {})", shape(lhs), op.as_str(), shape(rhs))
            }
            ExprKind::If {
                cond,
                then,
                otherwise,
            } => {
                format!("(if {} {} {})", shape(cond), shape(then), shape(otherwise))
            }
            ExprKind::Paren(e) => format!("[{}]", shape(e)),
        }
    }

    #[test]
    fn precedence_follows_the_grammar() {
        let cases = [
            ("a or b and c", "(a or (b and c))"),
            ("not a and b", "((Not a) and b)"),
            ("not a == b", "(Not (a == b))"),
            ("a == b ?? c + d", "(a == (b ?? (c + d)))"),
            ("a + b * c - d", "((a + (b * c)) - d)"),
            ("-a.b * 2", "((Neg a.b) * 2)"),
            ("a - b - c", "((a - b) - c)"),
            ("f(x, g(y),).z", "f(x, g(y)).z"),
            ("(a + b) * c", "([(a + b)] * c)"),
            ("if a then b else c + 1", "(if a b (c + 1))"),
            ("-9223372036854775808", "-9223372036854775808"),
            ("- -1", "(Neg (Neg 1))"),
            ("a ?? b ?? c", "((a ?? b) ?? c)"),
        ];
        for (src, want) in cases {
            assert_eq!(shape(&expr(src).0), want, "{src}");
        }
    }

    #[test]
    fn arrows_are_not_minus() {
        let cx = Cx::new(FileId(0), "x -> b");
        let (rest, e) = cx.parse_expr("x -> b", "the start").unwrap();
        assert_eq!(shape(&e), "x");
        assert_eq!(rest, " -> b");
    }

    #[test]
    fn near_misses_are_reported_and_read_as_meant() {
        let (e, d) = expr("a = 1");
        assert_eq!(shape(&e), "(a == 1)");
        assert_eq!(d[0].code, Code::E113);
        let (e, d) = expr("a => 1");
        assert_eq!(shape(&e), "(a >= 1)");
        assert_eq!(d[0].code, Code::E101);
        let (e, d) = expr("a < b < c");
        assert_eq!(shape(&e), "((a < b) < c)");
        assert_eq!(d[0].code, Code::E114);
        assert_eq!(
            d[0].notes,
            ["compare twice and join with `and`: `a < b and b < c`"]
        );
    }

    #[test]
    fn spans_cover_the_text() {
        let src = "f(a, b) + -x.y";
        let (e, _) = expr(src);
        assert_eq!(e.span, Span::new(0, src.len()));
        let ExprKind::Binary { rhs, .. } = e.kind else {
            panic!()
        };
        assert_eq!(&src[rhs.span.range()], "-x.y");
    }
}
