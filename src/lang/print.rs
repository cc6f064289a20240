//! AST to canonical text: what `tern fmt` writes.
//!
//! One clause per line, four spaces per level, each link of a pattern on its own line, `->`
//! spelled `followed by`, durations in their largest units (`1h30m`), timestamps in UTC with
//! the shortest fraction, and parentheses where the author wrote them plus where precedence
//! needs them. Parsing the output gives back the same AST (spans aside). Comments are not in
//! the AST, so they are not printed.

use chrono::{DateTime, Datelike, Timelike};

use super::ast::{
    AggregateDecl, Atom, Clause, ClauseKind, Contiguity, Element, Emit, EmitField, Expr, ExprKind,
    File, Group, Import, Item, Link, Literal, NegatedStep, Pattern, Quantifier, QuantifierForm,
    Rule, SkipStrategy, Step, StreamDecl, UnaryOp, Window,
};

const INDENT: &str = "    ";

/// The canonical text of a whole file: items separated by a blank line.
pub fn print(file: &File) -> String {
    let mut out = String::new();
    for (n, item) in file.items.iter().enumerate() {
        if n > 0 {
            out.push('\n');
        }
        match item {
            Item::Import(x) => import(&mut out, x),
            Item::Stream(x) => stream(&mut out, x),
            Item::Aggregate(x) => aggregate(&mut out, x),
            Item::Rule(x) => rule(&mut out, x),
        }
    }
    out
}

/// An expression on one line, with the parentheses precedence needs.
pub fn print_expr(e: &Expr) -> String {
    let mut out = String::new();
    expr(&mut out, e, true);
    out
}

/// A pattern on one line.
pub fn print_pattern(p: &Pattern) -> String {
    let mut out = String::new();
    pattern(&mut out, p);
    out
}

/// A duration in milliseconds with the largest units first: `1h30m`, `500ms`, `0s`.
pub fn format_duration(millis: i64) -> String {
    const UNITS: [(&str, u64); 5] = [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ];
    if millis == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    if millis < 0 {
        out.push('-');
    }
    let mut left = millis.unsigned_abs();
    for (unit, ms) in UNITS {
        if left >= ms {
            out.push_str(&format!("{}{unit}", left / ms));
            left %= ms;
        }
    }
    out
}

/// A timestamp in nanoseconds since the epoch as `@2024-03-01T08:00:00.5Z`: UTC, with the
/// shortest fraction that keeps every nanosecond.
pub fn format_timestamp(nanos: i64) -> String {
    let t = DateTime::from_timestamp_nanos(nanos);
    let mut out = format!(
        "@{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        t.year(),
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    );
    let frac = nanos.rem_euclid(1_000_000_000);
    if frac != 0 {
        let digits = format!("{frac:09}");
        out.push('.');
        out.push_str(digits.trim_end_matches('0'));
    }
    out.push('Z');
    out
}

/// A float that reads back as the same value, always with a `.` or an exponent. Values no
/// literal can spell (infinities, NaN) print as the division that makes them.
pub fn format_float(v: f64) -> String {
    if v.is_nan() {
        return "(0.0 / 0.0)".to_string();
    }
    if v.is_infinite() {
        return if v > 0.0 {
            "(1.0 / 0.0)"
        } else {
            "(-1.0 / 0.0)"
        }
        .to_string();
    }
    // Debug prints the shortest text that round-trips, switching to an exponent for very
    // large and very small magnitudes.
    let s = format!("{v:?}");
    if s.contains(['.', 'e', 'E']) {
        s
    } else {
        format!("{s}.0")
    }
}

/// A string literal with its escapes.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn import(out: &mut String, x: &Import) {
    out.push_str("import ");
    out.push_str(&quote(&x.path.node));
    if let Some(alias) = &x.alias {
        out.push_str(" as ");
        out.push_str(&alias.node);
    }
    out.push('\n');
}

fn stream(out: &mut String, x: &StreamDecl) {
    out.push_str(&format!("stream {} {{", x.name.node));
    let mut lines = Vec::new();
    for f in &x.fields {
        let q = if f.nullable { "?" } else { "" };
        lines.push(format!("{}: {}{q}", f.name.node, f.ty.node.as_str()));
    }
    if let Some(t) = &x.time {
        lines.push(format!("time {}", t.node));
    }
    if let Some(d) = &x.lateness {
        lines.push(format!("lateness {}", format_duration(d.node.millis)));
    }
    if let Some(d) = &x.idle {
        lines.push(format!("idle {}", format_duration(d.node.millis)));
    }
    body(out, &lines);
}

fn aggregate(out: &mut String, x: &AggregateDecl) {
    out.push_str(&format!(
        "aggregate {} from {} {{",
        x.name.node, x.source.node
    ));
    let mut lines = Vec::new();
    if !x.key.is_empty() {
        lines.push(format!("key {}", names(&x.key)));
    }
    if let Some(w) = &x.window {
        lines.push(match &w.node {
            Window::Tumbling(size) => {
                format!("window tumbling {}", format_duration(size.node.millis))
            }
            Window::Sliding { size, every } => format!(
                "window sliding {} every {}",
                format_duration(size.node.millis),
                format_duration(every.node.millis)
            ),
        });
    }
    if !x.select.is_empty() {
        lines.push(format!("select {}", fields(&x.select, 1)));
    }
    body(out, &lines);
}

fn rule(out: &mut String, x: &Rule) {
    out.push_str(&format!("rule {} {{", x.name.node));
    let lines: Vec<String> = x.clauses.iter().map(clause).collect();
    body(out, &lines);
}

/// The lines of a braced body, indented one level, then the closing brace.
fn body(out: &mut String, lines: &[String]) {
    if lines.is_empty() {
        out.push_str("}\n");
        return;
    }
    out.push('\n');
    for line in lines {
        out.push_str(INDENT);
        out.push_str(line);
        out.push('\n');
    }
    out.push_str("}\n");
}

fn names(list: &[super::ast::Ident]) -> String {
    list.iter()
        .map(|n| n.node.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// One clause; a pattern continues on further lines, indented below `match`.
fn clause(c: &Clause) -> String {
    match &c.kind {
        ClauseKind::From(n) => format!("from {}", names(n)),
        ClauseKind::Key(n) => format!("key {}", names(n)),
        ClauseKind::To(n) => format!("to {}", names(n)),
        ClauseKind::Match(p) => match_clause(p),
        ClauseKind::Within(d) => format!("within {}", format_duration(d.node.millis)),
        ClauseKind::Skip(s) => format!(
            "skip {}",
            match &s.node {
                SkipStrategy::None => "none".to_string(),
                SkipStrategy::ToNext => "to next".to_string(),
                SkipStrategy::PastLast => "past last".to_string(),
                SkipStrategy::ToFirst(step) => format!("to first {}", step.node),
                SkipStrategy::ToLast(step) => format!("to last {}", step.node),
            }
        ),
        ClauseKind::Emit(e) => format!("emit{}", emit(e)),
        ClauseKind::OnTimeout(e) => format!("on timeout emit{}", emit(e)),
    }
}

/// What follows `emit`: name, severity and fields.
fn emit(e: &Emit) -> String {
    let mut out = String::new();
    if let Some(n) = &e.name {
        out.push(' ');
        out.push_str(&n.node);
    }
    if let Some(s) = &e.severity {
        out.push_str(" severity ");
        out.push_str(&s.node);
    }
    out.push(' ');
    out.push_str(&fields(&e.fields, 1));
    out
}

/// A braced field list, one field per line at `level` + 1, each with a trailing comma.
fn fields(list: &[EmitField], level: usize) -> String {
    if list.is_empty() {
        return "{}".to_string();
    }
    let inner = INDENT.repeat(level + 1);
    let mut out = String::from("{\n");
    for f in list {
        out.push_str(&inner);
        out.push_str(&f.name.node);
        out.push_str(": ");
        expr(&mut out, &f.value, true);
        out.push_str(",\n");
    }
    out.push_str(&INDENT.repeat(level));
    out.push('}');
    out
}

/// Lines longer than this are broken where the layout allows.
const WIDTH: usize = 100;

/// `match` and its pattern: each link on its own line, indented below `match`; a step whose
/// line would be too long has its `where` and `until` on lines of their own below it.
fn match_clause(p: &Pattern) -> String {
    let link_indent = INDENT.repeat(2);
    let cond_indent = INDENT.repeat(3);
    let mut out = String::from("match ");
    let line = |out: &mut String, prefix_len: usize, e: &Element| {
        let mut text = String::new();
        element(&mut text, e);
        let lone_step = match e.alternatives.as_slice() {
            [Atom::Step(s)] if s.condition.is_some() || s.until.is_some() => Some(s),
            _ => None,
        };
        match lone_step {
            Some(s) if prefix_len + text.len() > WIDTH => {
                out.push_str(&s.name.node);
                out.push_str(": ");
                out.push_str(&s.stream.node);
                if let Some(q) = &s.quantifier {
                    quantifier(out, q);
                }
                for (kw, cond) in [("where", &s.condition), ("until", &s.until)] {
                    if let Some(c) = cond {
                        out.push('\n');
                        out.push_str(&cond_indent);
                        out.push_str(kw);
                        out.push(' ');
                        expr(out, c, true);
                    }
                }
            }
            _ => out.push_str(&text),
        }
    };
    line(&mut out, INDENT.len() + "match ".len(), &p.first);
    for (l, e) in &p.rest {
        out.push('\n');
        out.push_str(&link_indent);
        let mut head = String::new();
        link(&mut head, l);
        head.push(' ');
        out.push_str(&head);
        line(&mut out, link_indent.len() + head.len(), e);
    }
    out
}

/// A pattern on one line.
fn pattern(out: &mut String, p: &Pattern) {
    element(out, &p.first);
    for (l, e) in &p.rest {
        out.push(' ');
        link(out, l);
        out.push(' ');
        element(out, e);
    }
}

fn link(out: &mut String, l: &Link) {
    if l.negated {
        out.push_str(match l.contiguity {
            Contiguity::Strict => "not next",
            Contiguity::Relaxed | Contiguity::NonDeterministic => "not followed by",
        });
    } else {
        out.push_str(match l.contiguity {
            Contiguity::Strict => "next",
            Contiguity::Relaxed => "followed by",
            Contiguity::NonDeterministic => "followed by any",
        });
    }
    if let Some(w) = &l.within {
        out.push_str(" within ");
        out.push_str(&format_duration(w.node.millis));
    }
}

fn element(out: &mut String, e: &Element) {
    for (n, a) in e.alternatives.iter().enumerate() {
        if n > 0 {
            out.push_str(" | ");
        }
        match a {
            Atom::Step(s) => step(out, s),
            Atom::Group(g) => group(out, g),
            Atom::Negated(n) => negated(out, n),
        }
    }
}

fn step(out: &mut String, s: &Step) {
    out.push_str(&s.name.node);
    out.push_str(": ");
    out.push_str(&s.stream.node);
    if let Some(q) = &s.quantifier {
        quantifier(out, q);
    }
    condition(out, "where", s.condition.as_ref());
    condition(out, "until", s.until.as_ref());
}

fn condition(out: &mut String, kw: &str, e: Option<&Expr>) {
    if let Some(e) = e {
        out.push(' ');
        out.push_str(kw);
        out.push(' ');
        expr(out, e, true);
    }
}

fn group(out: &mut String, g: &Group) {
    out.push('(');
    pattern(out, &g.pattern);
    out.push(')');
    if let Some(q) = &g.quantifier {
        quantifier(out, q);
    }
}

fn negated(out: &mut String, n: &NegatedStep) {
    if let Some(name) = &n.name {
        out.push_str(&name.node);
        out.push_str(": ");
    }
    out.push_str(&n.stream.node);
    condition(out, "where", n.condition.as_ref());
}

fn quantifier(out: &mut String, q: &Quantifier) {
    // The short forms are printed only when they mean what the numbers say.
    let count = match (q.form, q.min, q.max) {
        (QuantifierForm::Plus, 1, None) => "+".to_string(),
        (QuantifierForm::Star, 0, None) => "*".to_string(),
        (QuantifierForm::Optional, 0, Some(1)) => "?".to_string(),
        (_, min, None) => format!("{{{min},}}"),
        (_, min, Some(max)) if max == min => format!("{{{min}}}"),
        (_, min, Some(max)) => format!("{{{min},{max}}}"),
    };
    out.push_str(&count);
    if q.reluctant {
        out.push('?');
    }
    match q.inner {
        Some(Contiguity::Strict) => out.push_str(" consecutive"),
        Some(Contiguity::NonDeterministic) => out.push_str(" any"),
        Some(Contiguity::Relaxed) | None => {}
    }
    if q.greedy {
        out.push_str(" greedy");
    }
}

/// How tightly an expression binds as an operand (grammar/tern.ebnf, "Precedence").
fn strength(e: &Expr) -> u8 {
    match &e.kind {
        ExprKind::Binary { op, .. } => op.precedence(),
        ExprKind::Unary {
            op: UnaryOp::Not, ..
        } => 3,
        ExprKind::Unary {
            op: UnaryOp::Neg, ..
        } => 8,
        ExprKind::Literal(l) if negative(l) => 8,
        _ => 10,
    }
}

/// True for literals printed with a leading `-`.
fn negative(l: &Literal) -> bool {
    match l {
        Literal::Int(v) => *v < 0,
        Literal::Float(v) => v.is_sign_negative() && !v.is_nan(),
        Literal::Duration(d) => d.millis < 0,
        _ => false,
    }
}

/// Prints `e`; `tail` says nothing of the same expression follows it, which an `if` needs
/// since its `else` branch extends as far as it can.
fn expr(out: &mut String, e: &Expr, tail: bool) {
    match &e.kind {
        ExprKind::Literal(l) => literal(out, l),
        ExprKind::Key => out.push_str("key"),
        ExprKind::Name(n) => out.push_str(n),
        ExprKind::Field { base, field } => {
            operand(out, base, 9, false);
            out.push('.');
            out.push_str(&field.node);
        }
        ExprKind::Call {
            module,
            function,
            args,
        } => {
            if let Some(m) = module {
                out.push_str(&m.node);
                out.push_str("::");
            }
            out.push_str(&function.node);
            out.push('(');
            for (n, a) in args.iter().enumerate() {
                if n > 0 {
                    out.push_str(", ");
                }
                expr(out, a, true);
            }
            out.push(')');
        }
        ExprKind::Unary { op, operand: inner } => {
            let (word, level) = match op {
                UnaryOp::Not => ("not ", 3),
                UnaryOp::Neg => ("-", 8),
            };
            out.push_str(word);
            // `- -x`, not `--x`.
            if *op == UnaryOp::Neg && starts_with_minus(inner) {
                out.push(' ');
            }
            operand(out, inner, level, tail);
        }
        ExprKind::Binary { op, lhs, rhs } => {
            let p = op.precedence();
            // Left-associative: an equal operator may sit on the left only, and comparisons
            // do not chain at all.
            let left_min = if op.is_comparison() { p + 1 } else { p };
            operand(out, lhs, left_min, false);
            out.push(' ');
            out.push_str(op.as_str());
            out.push(' ');
            operand(out, rhs, p + 1, tail);
        }
        ExprKind::If {
            cond,
            then,
            otherwise,
        } => {
            out.push_str("if ");
            expr(out, cond, true);
            out.push_str(" then ");
            expr(out, then, true);
            out.push_str(" else ");
            expr(out, otherwise, tail);
        }
        ExprKind::Paren(inner) => {
            out.push('(');
            expr(out, inner, true);
            out.push(')');
        }
    }
}

/// Prints an operand that must bind at least as tightly as `min`, adding parentheses when it
/// does not (or when it is an `if` with more of the expression after it).
fn operand(out: &mut String, e: &Expr, min: u8, tail: bool) {
    let is_if = matches!(e.kind, ExprKind::If { .. });
    if strength(e) < min || (is_if && !tail) {
        out.push('(');
        expr(out, e, true);
        out.push(')');
    } else {
        expr(out, e, tail);
    }
}

/// True when `e` prints starting with `-`.
fn starts_with_minus(e: &Expr) -> bool {
    match &e.kind {
        ExprKind::Unary {
            op: UnaryOp::Neg, ..
        } => true,
        ExprKind::Literal(l) => negative(l),
        ExprKind::Binary { lhs, .. } => strength(e) >= 8 && starts_with_minus(lhs),
        _ => false,
    }
}

fn literal(out: &mut String, l: &Literal) {
    match l {
        Literal::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Literal::Int(v) => out.push_str(&v.to_string()),
        Literal::Float(v) => out.push_str(&format_float(*v)),
        Literal::String(s) => out.push_str(&quote(s)),
        Literal::Duration(d) => out.push_str(&format_duration(d.millis)),
        Literal::Timestamp(t) => out.push_str(&format_timestamp(*t)),
        Literal::Null => out.push_str("null"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::lang::ast::{BinaryOp, Duration, Ident};
    use crate::lang::span::{Span, Spanned};

    fn e(kind: ExprKind) -> Expr {
        Expr {
            kind,
            span: Span::default(),
        }
    }
    fn name(n: &str) -> Expr {
        e(ExprKind::Name(n.to_string()))
    }
    fn ident(n: &str) -> Ident {
        Spanned::new(Span::default(), n.to_string())
    }
    fn bin(op: BinaryOp, l: Expr, r: Expr) -> Expr {
        e(ExprKind::Binary {
            op,
            lhs: Box::new(l),
            rhs: Box::new(r),
        })
    }
    fn un(op: UnaryOp, x: Expr) -> Expr {
        e(ExprKind::Unary {
            op,
            operand: Box::new(x),
        })
    }
    fn iff(c: Expr, t: Expr, o: Expr) -> Expr {
        e(ExprKind::If {
            cond: Box::new(c),
            then: Box::new(t),
            otherwise: Box::new(o),
        })
    }

    #[test]
    fn parentheses_follow_precedence() {
        use BinaryOp::*;
        let (a, b, c) = (name("a"), name("b"), name("c"));
        let cases = [
            (
                bin(Mul, bin(Add, a.clone(), b.clone()), c.clone()),
                "(a + b) * c",
            ),
            (
                bin(Add, a.clone(), bin(Mul, b.clone(), c.clone())),
                "a + b * c",
            ),
            (
                bin(Sub, a.clone(), bin(Sub, b.clone(), c.clone())),
                "a - (b - c)",
            ),
            (
                bin(Sub, bin(Sub, a.clone(), b.clone()), c.clone()),
                "a - b - c",
            ),
            (
                bin(Lt, bin(Lt, a.clone(), b.clone()), c.clone()),
                "(a < b) < c",
            ),
            (
                bin(Eq, a.clone(), un(UnaryOp::Not, b.clone())),
                "a == (not b)",
            ),
            (
                un(UnaryOp::Not, bin(And, a.clone(), b.clone())),
                "not (a and b)",
            ),
            (
                un(UnaryOp::Not, bin(Eq, a.clone(), b.clone())),
                "not a == b",
            ),
            (
                bin(And, un(UnaryOp::Not, a.clone()), b.clone()),
                "not a and b",
            ),
            (un(UnaryOp::Neg, un(UnaryOp::Neg, a.clone())), "- -a"),
            (un(UnaryOp::Neg, bin(Add, a.clone(), b.clone())), "-(a + b)"),
            (
                e(ExprKind::Field {
                    base: Box::new(un(UnaryOp::Neg, a.clone())),
                    field: ident("x"),
                }),
                "(-a).x",
            ),
            (
                bin(Add, iff(a.clone(), b.clone(), c.clone()), name("d")),
                "(if a then b else c) + d",
            ),
            (
                bin(Add, name("d"), iff(a.clone(), b.clone(), c.clone())),
                "d + if a then b else c",
            ),
            (
                bin(
                    Mul,
                    bin(Add, name("d"), iff(a.clone(), b.clone(), c.clone())),
                    name("e"),
                ),
                "(d + if a then b else c) * e",
            ),
            (
                bin(Coalesce, bin(Eq, a.clone(), b.clone()), c.clone()),
                "(a == b) ?? c",
            ),
            (
                e(ExprKind::Field {
                    base: Box::new(e(ExprKind::Literal(Literal::Int(i64::MIN)))),
                    field: ident("x"),
                }),
                "(-9223372036854775808).x",
            ),
        ];
        for (ast, want) in cases {
            assert_eq!(print_expr(&ast), want);
        }
    }

    #[test]
    fn literals_print_canonically() {
        let lit = |l| print_expr(&e(ExprKind::Literal(l)));
        assert_eq!(lit(Literal::Float(1.0)), "1.0");
        assert_eq!(lit(Literal::Float(0.1)), "0.1");
        assert_eq!(lit(Literal::Float(1e300)), "1e300");
        assert_eq!(lit(Literal::Float(1.5e-7)), "1.5e-7");
        assert_eq!(lit(Literal::Float(f64::NAN)), "(0.0 / 0.0)");
        assert_eq!(
            lit(Literal::Duration(Duration { millis: 5_400_000 })),
            "1h30m"
        );
        assert_eq!(
            lit(Literal::String("a\"b\\\n\u{1}é".into())),
            r#""a\"b\\\n\u{1}é""#
        );
        assert_eq!(lit(Literal::Timestamp(0)), "@1970-01-01T00:00:00Z");
        assert_eq!(
            lit(Literal::Timestamp(1_500_000_000)),
            "@1970-01-01T00:00:01.5Z"
        );
        assert_eq!(
            lit(Literal::Timestamp(-1)),
            "@1969-12-31T23:59:59.999999999Z"
        );
    }

    #[test]
    fn durations_use_the_largest_units_first() {
        assert_eq!(format_duration(500), "500ms");
        assert_eq!(format_duration(0), "0s");
        assert_eq!(format_duration(93_784_005), "1d2h3m4s5ms");
        assert_eq!(format_duration(i64::MAX), "106751991167d7h12m55s807ms");
        assert_eq!(format_duration(-60_000), "-1m");
    }
}
