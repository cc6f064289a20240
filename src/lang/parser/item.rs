//! Files and items: imports, stream declarations, aggregates and rules with their clauses,
//! and the recovery that lets one file report several mistakes.

use super::error::{describe, did_you_mean};
use super::lex::{CLAUSE_KEYWORDS, ITEM_KEYWORDS, Peek, Tok, is_reserved, token};
use super::{Cx, PResult};
use crate::lang::ast::{
    AggregateDecl, Clause, ClauseKind, Emit, EmitField, FieldDecl, Ident, Import, Item, Rule,
    SkipStrategy, StreamDecl, TypeName, Window,
};
use crate::lang::codes::Code;
use crate::lang::diagnostic::Diagnostic;
use crate::lang::span::{Span, Spanned};

/// Clause keywords that never occur inside another clause: recovery may resume at them
/// anywhere. The others (`key`, `within`, `to`, `emit`) also occur inside clauses, so
/// recovery resumes at them only when they start a line.
const STRONG_CLAUSE_KEYWORDS: &[&str] = &["from", "match", "skip", "on"];

/// Clauses of an aggregate.
const AGGREGATE_CLAUSES: &[&str] = &["key", "window", "select"];

/// Options of a stream declaration.
const STREAM_OPTIONS: &[&str] = &["time", "lateness", "idle"];

impl<'a> Cx<'a> {
    /// `file = { item }`
    pub(super) fn parse_file(&self) -> Vec<Item> {
        let mut i = self.src.strip_prefix('\u{feff}').unwrap_or(self.src);
        let mut items = Vec::new();
        loop {
            let next = self.peek(i);
            match next.tok {
                Tok::Eof => return items,
                Tok::Word(w) if ITEM_KEYWORDS.contains(&w) => match self.parse_item(next, w) {
                    Ok((rest, item)) => {
                        items.push(item);
                        i = rest;
                    }
                    Err(e) => {
                        let at = self.report_failure(e);
                        // An item keyword in the middle of a line, right where the item
                        // failed, belongs to the broken item (`import "x" as rule`).
                        let fail_tok = self.peek(at);
                        let min = match fail_tok.tok {
                            Tok::Word(w)
                                if ITEM_KEYWORDS.contains(&w)
                                    && !self.first_on_line(fail_tok.at) =>
                            {
                                fail_tok.after
                            }
                            _ => next.after,
                        };
                        i = self.recover_item(at, min);
                    }
                },
                _ => {
                    self.report(self.not_an_item(&next));
                    i = self.recover_item(next.after, next.after);
                }
            }
        }
    }

    /// The error for a token where an item should start.
    fn not_an_item(&self, next: &Peek<'a>) -> Diagnostic {
        let d = self.unexpected(
            next.at,
            "an item (`rule`, `stream`, `aggregate` or `import`)",
        );
        match next.tok {
            Tok::Word(w) => d.with_suggestion(w, ITEM_KEYWORDS.iter().copied()),
            Tok::Punct("}") => d.with_note("this `}` closes nothing"),
            _ => d,
        }
    }

    /// Skips to the next item keyword at or after `at` (and after `min`).
    fn recover_item(&self, at: &'a str, min: &'a str) -> &'a str {
        let min = self.off(min);
        let mut i = at;
        loop {
            let start = self.skip_ws_lenient(i);
            let (tok, after) = token(start);
            match tok {
                Tok::Eof => return start,
                Tok::Word(w) if ITEM_KEYWORDS.contains(&w) && self.off(start) >= min => {
                    return start;
                }
                _ => i = after,
            }
        }
    }

    /// Skips what is left of a failed clause of a body that started at `from` and failed at
    /// `fail_at`. Stops at the body's closing brace; at one of `strong` outside any bracket
    /// (or starting a line); at one of `weak` starting a line; at a word starting a line that
    /// looks like a misspelt keyword (so `skipp` gets its own diagnostic); or at an item
    /// keyword. Brackets left open by the failed clause are closed by the next `}` that
    /// closes something opened before them, as an author would read the text.
    fn recover_body(
        &self,
        from: &'a str,
        fail_at: &'a str,
        strong: &[&str],
        weak: &[&str],
    ) -> &'a str {
        let fail = self.off(fail_at).max(self.off(from) + 1);
        let mut open: Vec<bool> = Vec::new(); // true for `{`, false for `(`
        let mut i = from;
        loop {
            let at = self.skip_ws_lenient(i);
            let (tok, after) = token(at);
            if tok == Tok::Eof {
                return at;
            }
            if self.off(at) >= fail {
                let line_start = self.first_on_line(at);
                let stop = match tok {
                    Tok::Word(w) if ITEM_KEYWORDS.contains(&w) => true,
                    Tok::Word(w) if strong.contains(&w) => open.is_empty() || line_start,
                    Tok::Word(w) if weak.contains(&w) => line_start,
                    Tok::Word(w) if line_start && open.is_empty() && !is_reserved(w) => {
                        let keywords = strong.iter().chain(weak).copied();
                        crate::lang::suggest::closest(w, keywords).is_some()
                    }
                    Tok::Punct("}") => !open.contains(&true),
                    _ => false,
                };
                if stop {
                    return at;
                }
            }
            match tok {
                Tok::Punct("{") => open.push(true),
                Tok::Punct("(") => open.push(false),
                Tok::Punct(")") if open.last() == Some(&false) => {
                    open.pop();
                }
                Tok::Punct("}") => {
                    while let Some(brace) = open.pop() {
                        if brace {
                            break;
                        }
                    }
                }
                _ => {}
            }
            i = after;
        }
    }

    /// E109 for a body whose `}` never came.
    fn report_unclosed_body(&self, at: &'a str, open: Span) {
        self.report(self.unclosed(at, "`}`", open, "{"));
    }

    /// `item = stream_decl | aggregate_decl | rule | import`, from its keyword.
    fn parse_item(&self, kw: Peek<'a>, word: &str) -> PResult<'a, Item> {
        match word {
            "import" => self.parse_import(kw).map(|(r, x)| (r, Item::Import(x))),
            "stream" => self.parse_stream(kw).map(|(r, x)| (r, Item::Stream(x))),
            "aggregate" => self
                .parse_aggregate(kw)
                .map(|(r, x)| (r, Item::Aggregate(x))),
            _ => self.parse_rule(kw).map(|(r, x)| (r, Item::Rule(x))),
        }
    }

    /// `import = "import" string [ "as" ident ]`
    fn parse_import(&self, kw: Peek<'a>) -> PResult<'a, Import> {
        let next = self.peek(kw.after);
        if next.tok != Tok::Str {
            let d = self
                .unexpected(kw.after, "the script's path as a string after `import`")
                .with_note("write `import \"lib/speed.rhai\" as speed`");
            return self.fail(kw.after, d);
        }
        let (r, path) = self.parse_string(next.at);
        let (r, alias) = match self.eat_word(r, "as") {
            Some((r, _)) => {
                let next = self.peek(r);
                match next.tok {
                    // A keyword on the same line is meant as the alias.
                    Tok::Word(w) if is_reserved(w) && !self.first_on_line(next.at) => {
                        let span = self.peek_span(&next);
                        self.report(self.reserved_as_name(w, span, "a module name"));
                        (next.after, Some(Spanned::new(span, w.to_string())))
                    }
                    _ => {
                        let (r, alias) = self.parse_name(r, "a module name after `as`", &[])?;
                        (r, Some(alias))
                    }
                }
            }
            None => (r, None),
        };
        let end = alias.as_ref().map_or(path.span, |a| a.span);
        let span = self.peek_span(&kw).to(end);
        Ok((r, Import { path, alias, span }))
    }

    /// `stream_decl = "stream" ident "{" { stream_member [ "," ] } "}"`
    fn parse_stream(&self, kw: Peek<'a>) -> PResult<'a, StreamDecl> {
        let (r, name) = self.parse_name(kw.after, "a stream name after `stream`", &["{"])?;
        let (r, open) = self.expect_punct(r, "{", "`{` after the stream name")?;
        let mut decl = StreamDecl {
            name,
            fields: Vec::new(),
            time: None,
            lateness: None,
            idle: None,
            span: self.peek_span(&kw).to(open),
        };
        let mut i = r;
        loop {
            let next = self.peek(i);
            match next.tok {
                Tok::Punct("}") => {
                    decl.span = decl.span.to(self.peek_span(&next));
                    return Ok((next.after, decl));
                }
                Tok::Eof => {
                    self.report_unclosed_body(i, open);
                    return Ok((next.at, decl));
                }
                Tok::Word(w) if ITEM_KEYWORDS.contains(&w) => {
                    self.report_unclosed_body(i, open);
                    return Ok((next.at, decl));
                }
                _ => {}
            }
            match self.parse_stream_member(next, &mut decl) {
                Ok(r) => {
                    decl.span = decl.span.to(Span::new(self.off(r), self.off(r)));
                    i = self.eat_punct(r, ",").map_or(r, |(r, _)| r);
                }
                Err(e) => {
                    let at = self.report_failure(e);
                    i = self.recover_member(next.at, at);
                }
            }
        }
    }

    /// Skips the rest of a failed stream member: to the next `,` (consumed), the closing
    /// brace, or the next line.
    fn recover_member(&self, from: &'a str, fail_at: &'a str) -> &'a str {
        let fail = self.off(fail_at).max(self.off(from) + 1);
        let mut depth = 0u32;
        let mut i = from;
        loop {
            let at = self.skip_ws_lenient(i);
            let (tok, after) = token(at);
            if tok == Tok::Eof {
                return at;
            }
            if self.off(at) >= fail && depth == 0 {
                match tok {
                    Tok::Punct(",") => return after,
                    Tok::Punct("}") => return at,
                    _ if self.first_on_line(at) => return at,
                    _ => {}
                }
            }
            match tok {
                Tok::Word(w) if ITEM_KEYWORDS.contains(&w) => return at,
                Tok::Punct("{" | "(") => depth += 1,
                Tok::Punct("}") if depth == 0 => return at,
                Tok::Punct("}" | ")") => depth = depth.saturating_sub(1),
                _ => {}
            }
            i = after;
        }
    }

    /// `stream_member = field_decl | stream_clause`; adds it to `decl`.
    fn parse_stream_member(
        &self,
        next: Peek<'a>,
        decl: &mut StreamDecl,
    ) -> Result<&'a str, nom::Err<super::error::PError<'a>>> {
        let Tok::Word(w) = next.tok else {
            let d = self.unexpected(
                next.at,
                "a field (`name: type`), `time`, `lateness`, `idle` or `}`",
            );
            return Err(nom::Err::Failure(super::error::PError::diag(next.at, d)));
        };
        let span = self.peek_span(&next);
        let then = self.peek(next.after);
        if then.is_punct(":") {
            if is_reserved(w) {
                self.report(self.reserved_as_name(w, span, "a field name"));
            }
            let name = Spanned::new(span, w.to_string());
            let (r, field) = self.parse_field_type(name, then.after)?;
            decl.fields.extend(field);
            return Ok(r);
        }
        match w {
            "time" => {
                let (r, field) =
                    self.parse_name(next.after, "the name of the time field after `time`", &[])?;
                let span = span.to(field.span);
                self.once(&mut decl.time, field, span, "time");
                Ok(r)
            }
            "lateness" | "idle" => {
                let (r, d) = self.parse_duration(next.after, &format!("`{w}`"))?;
                let span = span.to(d.span);
                let slot = if w == "idle" {
                    &mut decl.idle
                } else {
                    &mut decl.lateness
                };
                self.once(slot, d, span, w);
                Ok(r)
            }
            _ => {
                // `speed float`: a field whose `:` is missing.
                if let Tok::Word(t) = then.tok
                    && type_name(t).is_some()
                {
                    self.report(
                        self.unexpected(next.after, "`:` after the field name")
                            .with_note(format!("declare a field as `{w}: {t}`")),
                    );
                    let name = Spanned::new(span, w.to_string());
                    let (r, field) = self.parse_field_type(name, next.after)?;
                    decl.fields.extend(field);
                    return Ok(r);
                }
                let d = self.error(
                    Code::E117,
                    format!("unknown stream option `{w}`"),
                    span,
                    "not a stream option",
                );
                let d = did_you_mean(
                    d,
                    w,
                    option_alias(w),
                    STREAM_OPTIONS.iter().copied(),
                    "a stream declares fields (`name: type`) and the options `time FIELD`, `lateness DURATION` and `idle DURATION`",
                );
                Err(nom::Err::Failure(super::error::PError::diag(next.after, d)))
            }
        }
    }

    /// Sets an option that may be given once; a second one is reported (E217) and ignored.
    fn once<T>(&self, slot: &mut Option<Spanned<T>>, value: Spanned<T>, span: Span, what: &str) {
        match slot {
            Some(first) => {
                let first_span = first.span;
                self.report(
                    self.error(
                        Code::E217,
                        format!("duplicate `{what}`"),
                        span,
                        format!("second `{what}`"),
                    )
                    .with_secondary(self.file, first_span, format!("first `{what}` here"))
                    .with_note(format!("give `{what}` once")),
                );
            }
            None => *slot = Some(value),
        }
    }

    /// `type [ "?" ]` after a field's `:`. An unknown type is reported (E111) and the field
    /// left out.
    fn parse_field_type(&self, name: Ident, i: &'a str) -> PResult<'a, Option<FieldDecl>> {
        let next = self.peek(i);
        let Tok::Word(t) = next.tok else {
            let d = self.unexpected(i, "a type after `:`").with_note(
                "types are `bool`, `int`, `float`, `string`, `timestamp` and `duration`",
            );
            return self.fail(i, d);
        };
        let ty_span = self.peek_span(&next);
        let (r, nullable, end) = match self.eat_punct(next.after, "?") {
            Some((r, q)) => (r, true, q),
            None => (next.after, false, ty_span),
        };
        let Some(ty) = type_name(t) else {
            let d = self.error(
                Code::E111,
                format!("unknown type `{t}`"),
                ty_span,
                "not a type",
            );
            self.report(did_you_mean(
                d,
                t,
                type_alias(t),
                TypeName::ALL.iter().map(|t| t.as_str()),
                "types are `bool`, `int`, `float`, `string`, `timestamp` and `duration`; add `?` for a field that may be null",
            ));
            return Ok((r, None));
        };
        let span = name.span.to(end);
        Ok((
            r,
            Some(FieldDecl {
                name,
                ty: Spanned::new(ty_span, ty),
                nullable,
                span,
            }),
        ))
    }

    /// `aggregate_decl = "aggregate" ident "from" ident "{" { aggregate_clause } "}"`
    fn parse_aggregate(&self, kw: Peek<'a>) -> PResult<'a, AggregateDecl> {
        let (r, name) = self.parse_name(kw.after, "a stream name after `aggregate`", &["from"])?;
        let from = self.peek(r);
        if !from.is_word("from") {
            let d = self
                .unexpected(r, "`from` and the stream to aggregate")
                .with_note(
                    "write `aggregate name from stream { key ... window ... select { ... } }`",
                );
            return self.fail(r, d);
        }
        let (r, source) = self.parse_name(from.after, "a stream name after `from`", &["{"])?;
        let (r, open) = self.expect_punct(r, "{", "`{` after the aggregated stream")?;
        let mut decl = AggregateDecl {
            name,
            source,
            key: Vec::new(),
            window: None,
            select: Vec::new(),
            span: self.peek_span(&kw).to(open),
        };
        let mut i = r;
        loop {
            let next = self.peek(i);
            let result = match next.tok {
                Tok::Punct("}") => {
                    decl.span = decl.span.to(self.peek_span(&next));
                    return Ok((next.after, decl));
                }
                Tok::Eof => {
                    self.report_unclosed_body(i, open);
                    return Ok((next.at, decl));
                }
                Tok::Word(w) if ITEM_KEYWORDS.contains(&w) => {
                    self.report_unclosed_body(i, open);
                    return Ok((next.at, decl));
                }
                Tok::Word(w) if AGGREGATE_CLAUSES.contains(&w) => {
                    self.parse_aggregate_clause(next, w, &mut decl)
                }
                Tok::Word(w) if !is_reserved(w) => {
                    let d = self.error(
                        Code::E110,
                        format!("unknown clause `{w}` in an aggregate"),
                        self.peek_span(&next),
                        "not an aggregate clause",
                    );
                    let d = did_you_mean(
                        d,
                        w,
                        None,
                        AGGREGATE_CLAUSES.iter().copied(),
                        "an aggregate has the clauses `key`, `window` and `select`",
                    );
                    self.fail(next.after, d)
                }
                _ => self.fail(
                    next.at,
                    self.unexpected(next.at, "`key`, `window`, `select` or `}`"),
                ),
            };
            match result {
                Ok((r, ())) => {
                    decl.span = decl.span.to(Span::new(self.off(r), self.off(r)));
                    i = r;
                }
                Err(e) => {
                    let at = self.report_failure(e);
                    i = self.recover_body(next.at, at, &["window", "select"], &["key"]);
                }
            }
        }
    }

    /// One clause of an aggregate, from its keyword; adds it to `decl`.
    fn parse_aggregate_clause(
        &self,
        kw: Peek<'a>,
        word: &str,
        decl: &mut AggregateDecl,
    ) -> PResult<'a, ()> {
        let kw_span = self.peek_span(&kw);
        match word {
            "key" => {
                let (r, key) = self.parse_name_list(
                    kw.after,
                    "a key field after `key`",
                    &AGGREGATE_CLAUSES[1..],
                )?;
                if !decl.key.is_empty() {
                    self.report(
                        self.error(Code::E217, "duplicate `key`", kw_span, "second `key`")
                            .with_note("list every key field in one clause: `key a, b`"),
                    );
                }
                decl.key.extend(key);
                Ok((r, ()))
            }
            "window" => {
                let shape = self.peek(kw.after);
                let (r, window) = if shape.is_word("tumbling") {
                    let (r, size) = self.parse_duration(shape.after, "`tumbling`")?;
                    (r, Window::Tumbling(size))
                } else if shape.is_word("sliding") {
                    let (r, size) = self.parse_duration(shape.after, "`sliding`")?;
                    let (r, _) = self.expect_word(
                        r,
                        "every",
                        "`every` and the slide after the window size",
                    )?;
                    let (r, every) = self.parse_duration(r, "`every`")?;
                    (r, Window::Sliding { size, every })
                } else {
                    let d = self
                        .unexpected(kw.after, "`tumbling` or `sliding` after `window`")
                        .with_note("write `window tumbling 15m` or `window sliding 15m every 5m`");
                    return self.fail(kw.after, d);
                };
                let span = self.span(shape.at, r);
                self.once(
                    &mut decl.window,
                    Spanned::new(span, window),
                    kw_span.to(span),
                    "window",
                );
                Ok((r, ()))
            }
            _ => {
                let open = self.peek(kw.after);
                if !open.is_punct("{") {
                    let d = self
                        .unexpected(kw.after, "`{` after `select`")
                        .with_note("write `select { name: expression, ... }`");
                    return self.fail(kw.after, d);
                }
                let (r, (fields, _)) = self.parse_fields(open)?;
                if !decl.select.is_empty() {
                    self.report(
                        self.error(Code::E217, "duplicate `select`", kw_span, "second `select`")
                            .with_note("list every derived field in one `select`"),
                    );
                }
                decl.select.extend(fields);
                Ok((r, ()))
            }
        }
    }

    /// `rule = "rule" ident "{" { rule_clause } "}"`
    fn parse_rule(&self, kw: Peek<'a>) -> PResult<'a, Rule> {
        let (r, name) = self.parse_name(kw.after, "a rule name after `rule`", &["{"])?;
        let (r, open) = self.expect_punct(r, "{", "`{` after the rule name")?;
        let mut rule = Rule {
            name,
            clauses: Vec::new(),
            span: self.peek_span(&kw).to(open),
        };
        let mut i = r;
        loop {
            let next = self.peek(i);
            let last_was_match = matches!(
                rule.clauses.last(),
                Some(Clause {
                    kind: ClauseKind::Match(_),
                    ..
                })
            );
            let result = match next.tok {
                Tok::Punct("}") => {
                    rule.span = rule.span.to(self.peek_span(&next));
                    return Ok((next.after, rule));
                }
                Tok::Eof => {
                    self.report_unclosed_body(i, open);
                    return Ok((next.at, rule));
                }
                Tok::Word(w) if ITEM_KEYWORDS.contains(&w) => {
                    self.report_unclosed_body(i, open);
                    return Ok((next.at, rule));
                }
                Tok::Word(w) if CLAUSE_KEYWORDS.contains(&w) => self.parse_clause(next, w),
                _ => self.fail(next.after, self.not_a_clause(&next, last_was_match)),
            };
            match result {
                Ok((r, clause)) => {
                    rule.span = rule.span.to(clause.span);
                    rule.clauses.push(clause);
                    i = r;
                }
                Err(e) => {
                    let at = self.report_failure(e);
                    i = self.recover_body(next.at, at, STRONG_CLAUSE_KEYWORDS, CLAUSE_KEYWORDS);
                }
            }
        }
    }

    /// The error for a token where a rule clause should start.
    fn not_a_clause(&self, next: &Peek<'a>, last_was_match: bool) -> Diagnostic {
        let clauses = "a rule's clauses are `from`, `key`, `match`, `within`, `skip`, `emit`, `on timeout emit` and `to`";
        match next.tok {
            Tok::Word(w) if !is_reserved(w) => {
                let d = self.error(
                    Code::E110,
                    format!("unknown clause `{w}`"),
                    self.peek_span(next),
                    "not a clause",
                );
                let mut candidates = CLAUSE_KEYWORDS.to_vec();
                if last_was_match {
                    candidates.extend(["where", "until"]);
                }
                did_you_mean(d, w, None, candidates, clauses)
            }
            Tok::Word(w) => {
                let d = self.unexpected(next.at, "a clause or `}`");
                match w {
                    "where" | "until" => d.with_note(format!(
                        "`{w}` belongs to a step of the pattern: `match a: stream {w} condition`"
                    )),
                    "severity" => d.with_note(
                        "the severity belongs to the emit clause: `emit name severity warning { ... }`",
                    ),
                    "timeout" => d.with_note("write `on timeout emit name { ... }`"),
                    "next" | "followed" | "not" => d.with_note(
                        "links join steps inside `match`; is a step missing its `name: stream` before this?",
                    ),
                    _ => d.with_note(clauses),
                }
            }
            Tok::Punct(")") => self
                .unexpected(next.at, "a clause or `}`")
                .with_note("this `)` closes nothing"),
            _ => self.unexpected(next.at, "a clause or `}`"),
        }
    }

    /// One rule clause, from its keyword.
    fn parse_clause(&self, kw: Peek<'a>, word: &str) -> PResult<'a, Clause> {
        let kw_span = self.peek_span(&kw);
        let (r, kind, end) = match word {
            "from" => {
                let (r, names) =
                    self.parse_name_list(kw.after, "a stream name after `from`", &[])?;
                let end = names.last().map_or(kw_span, |n| n.span);
                (r, ClauseKind::From(names), end)
            }
            "key" => {
                let (r, names) = self.parse_name_list(kw.after, "a key field after `key`", &[])?;
                let end = names.last().map_or(kw_span, |n| n.span);
                (r, ClauseKind::Key(names), end)
            }
            "to" => {
                let (r, names) = self.parse_name_list(kw.after, "a sink name after `to`", &[])?;
                let end = names.last().map_or(kw_span, |n| n.span);
                (r, ClauseKind::To(names), end)
            }
            "match" => {
                let (r, p) = self.parse_pattern(kw.after, "`match`")?;
                let end = p.span;
                (r, ClauseKind::Match(p), end)
            }
            "within" => {
                let (r, d) = self.parse_duration(kw.after, "`within`")?;
                let end = d.span;
                (r, ClauseKind::Within(d), end)
            }
            "skip" => {
                let (r, s) = self.parse_skip(kw)?;
                let end = s.span;
                (r, ClauseKind::Skip(s), end)
            }
            "emit" => {
                let (r, e) = self.parse_emit(kw.after, kw_span)?;
                let end = e.span;
                (r, ClauseKind::Emit(e), end)
            }
            _ => {
                let timeout = self.peek(kw.after);
                if !timeout.is_word("timeout") {
                    let d = self.unexpected(kw.after, "`timeout` after `on`");
                    let d = match timeout.tok {
                        Tok::Word(w) => did_you_mean(
                            d,
                            w,
                            None,
                            ["timeout"],
                            "write `on timeout emit name { ... }`",
                        ),
                        _ => d.with_note("write `on timeout emit name { ... }`"),
                    };
                    return self.fail(kw.after, d);
                }
                let (r, _) =
                    self.expect_word(timeout.after, "emit", "`emit` after `on timeout`")?;
                let (r, e) = self.parse_emit(r, kw_span)?;
                let end = e.span;
                (r, ClauseKind::OnTimeout(e), end)
            }
        };
        Ok((
            r,
            Clause {
                kind,
                span: kw_span.to(end),
            },
        ))
    }

    /// `ident { "," ident }`. A name that follows on the same line without a comma is
    /// reported and read (`from a b`), unless it is one of `stop` (a contextual keyword that
    /// may come next).
    fn parse_name_list(
        &self,
        i: &'a str,
        what: &'static str,
        stop: &[&str],
    ) -> PResult<'a, Vec<Ident>> {
        let (mut i, first) = self.parse_name(i, what, &[])?;
        let mut names = vec![first];
        loop {
            if let Some((r, comma)) = self.eat_punct(i, ",") {
                match self.ident(r) {
                    Some((r, name)) => {
                        names.push(name);
                        i = r;
                        continue;
                    }
                    None => {
                        let noun = what.split(" after ").next().unwrap_or(what);
                        let d = self
                            .unexpected(r, &format!("{noun} after `,`"))
                            .with_secondary(self.file, comma, "this `,` needs a name after it");
                        let d = match self.peek(r).tok {
                            Tok::Word(w) if is_reserved(w) => {
                                d.with_note("remove the trailing `,`")
                            }
                            Tok::Punct("}") | Tok::Eof => d.with_note("remove the trailing `,`"),
                            _ => d,
                        };
                        return self.fail(r, d);
                    }
                }
            }
            let next = self.peek(i);
            match next.tok {
                Tok::Word(w)
                    if !is_reserved(w) && !stop.contains(&w) && !self.first_on_line(next.at) =>
                {
                    let span = self.peek_span(&next);
                    self.report(
                        self.error(
                            Code::E101,
                            format!("expected `,` between names, found `{w}`"),
                            span,
                            "expected `,` before this name",
                        )
                        .with_note("separate names with `,`: `a, b`"),
                    );
                    names.push(Spanned::new(span, w.to_string()));
                    i = next.after;
                }
                _ => return Ok((i, names)),
            }
        }
    }

    /// `skip_strategy`, from the `skip` keyword.
    fn parse_skip(&self, kw: Peek<'a>) -> PResult<'a, Spanned<SkipStrategy>> {
        let first = self.peek(kw.after);
        let first_span = self.peek_span(&first);
        let strategies = "skip strategies are `none`, `to next`, `past last`, `to first STEP` and `to last STEP`";
        let unknown = |span: Span, written: &str| {
            let d = self.error(
                Code::E115,
                format!("unknown skip strategy `{written}`"),
                span,
                "not a skip strategy",
            );
            did_you_mean(
                d,
                &written.replace('_', " "),
                skip_alias(written),
                ["none", "to next", "past last", "to first", "to last"],
                strategies,
            )
        };
        match first.tok {
            Tok::Word("none") => Ok((first.after, Spanned::new(first_span, SkipStrategy::None))),
            Tok::Word("to") => {
                let second = self.peek(first.after);
                let span = first_span.to(self.peek_span(&second));
                match second.tok {
                    Tok::Word("next") => {
                        Ok((second.after, Spanned::new(span, SkipStrategy::ToNext)))
                    }
                    Tok::Word(w @ ("first" | "last")) => {
                        let what = if w == "first" {
                            "a step name after `skip to first`"
                        } else {
                            "a step name after `skip to last`"
                        };
                        let (r, step) = self.parse_name(second.after, what, &[])?;
                        let span = span.to(step.span);
                        let s = if w == "first" {
                            SkipStrategy::ToFirst(step)
                        } else {
                            SkipStrategy::ToLast(step)
                        };
                        Ok((r, Spanned::new(span, s)))
                    }
                    Tok::Word(w) => self.fail(second.at, unknown(span, &format!("to {w}"))),
                    _ => {
                        let d = self
                            .unexpected(first.after, "`next`, `first` or `last` after `skip to`")
                            .with_note(strategies);
                        self.fail(first.after, d)
                    }
                }
            }
            Tok::Word("past") => {
                let second = self.peek(first.after);
                match second.tok {
                    Tok::Word("last") => {
                        let span = first_span.to(self.peek_span(&second));
                        Ok((second.after, Spanned::new(span, SkipStrategy::PastLast)))
                    }
                    Tok::Word(w) => {
                        let span = first_span.to(self.peek_span(&second));
                        self.fail(second.at, unknown(span, &format!("past {w}")))
                    }
                    _ => self.fail(first.after, unknown(first_span, "past")),
                }
            }
            Tok::Word(w) => self.fail(first.at, unknown(first_span, w)),
            _ => {
                let d = self
                    .unexpected(kw.after, "a skip strategy after `skip`")
                    .with_note(strategies);
                self.fail(kw.after, d)
            }
        }
    }

    /// `emit = [ ident ] [ "severity" ident ] "{" fields "}"`, after `emit`; `start` is the
    /// span of the clause's first keyword.
    fn parse_emit(&self, i: &'a str, start: Span) -> PResult<'a, Emit> {
        let (i, name) = match self.ident(i) {
            Some((r, n)) => (r, Some(n)),
            None => (i, None),
        };
        let (i, severity) = match self.eat_word(i, "severity") {
            Some((r, _)) => {
                let (r, s) = self.parse_name(
                    r,
                    "a severity (`info`, `warning`, `error` or `critical`) after `severity`",
                    &[],
                )?;
                (r, Some(s))
            }
            None => (i, None),
        };
        let open = self.peek(i);
        if !open.is_punct("{") {
            let d = self.unexpected(i, "`{` and the alert's fields");
            let d = match open.tok {
                Tok::Word(_) if severity.is_some() && name.is_none() => d.with_note(
                    "the alert name comes before `severity`: `emit name severity warning { ... }`",
                ),
                _ => d.with_note(
                    "an emit clause lists the alert's fields in braces, even when there are none: `emit name {}`",
                ),
            };
            return self.fail(i, d);
        }
        let (r, (fields, close)) = self.parse_fields(open)?;
        Ok((
            r,
            Emit {
                name,
                severity,
                fields,
                span: start.to(close),
            },
        ))
    }

    /// `"{" [ emit_field { "," emit_field } [ "," ] ] "}"`, from the `{`. Returns the fields
    /// and the span of the closing brace.
    fn parse_fields(&self, open: Peek<'a>) -> PResult<'a, (Vec<EmitField>, Span)> {
        let open_span = self.peek_span(&open);
        let mut fields = Vec::new();
        let mut i = open.after;
        loop {
            let next = self.peek(i);
            if next.is_punct("}") {
                return Ok((next.after, (fields, self.peek_span(&next))));
            }
            let Tok::Word(w) = next.tok else {
                let d = match next.tok {
                    Tok::Eof => self.unclosed(i, "a field or `}`", open_span, "{"),
                    _ => self.unexpected(i, "a field (`name: value`) or `}`"),
                };
                return self.fail(i, d);
            };
            let span = self.peek_span(&next);
            let colon = self.peek(next.after);
            if is_reserved(w) {
                if colon.is_punct(":") {
                    self.report(self.reserved_as_name(w, span, "a field name"));
                } else {
                    return self.fail(
                        i,
                        self.unclosed(i, "a field (`name: value`) or `}`", open_span, "{"),
                    );
                }
            }
            let name = Spanned::new(span, w.to_string());
            let r = if colon.is_punct(":") {
                colon.after
            } else if colon.is_punct("=") {
                self.report(
                    self.unexpected(next.after, "`:` after the field name")
                        .with_note(format!("fields are written `{w}: value`")),
                );
                colon.after
            } else {
                let d = self
                    .unexpected(next.after, "`:` after the field name")
                    .with_note(format!("fields are written `{w}: value`"));
                return self.fail(next.after, d);
            };
            let (r, value) = self.parse_expr(r, &format!("`{w}:`"))?;
            let value_end = value.span.end as usize;
            fields.push(EmitField { name, value });
            let sep = self.peek(r);
            if sep.is_punct(",") {
                i = sep.after;
            } else if sep.is_punct("}") {
                i = r;
            } else if matches!(sep.tok, Tok::Word(_)) && self.peek(sep.after).is_punct(":") {
                // A missing comma before the next field, unless an unterminated string
                // swallowed it (that is reported already).
                let swallowed = self.unterminated_string_end.get() == Some(value_end);
                if !swallowed {
                    self.report(
                        self.error(
                            Code::E101,
                            format!("expected `,` between fields, found {}", describe(sep.tok)),
                            self.peek_span(&sep),
                            "expected `,` before this field",
                        )
                        .with_note("separate fields with `,`"),
                    );
                }
                i = r;
            } else {
                return self.fail(
                    r,
                    self.unclosed(r, "`,` or `}` after the field", open_span, "{"),
                );
            }
        }
    }
}

/// The type a keyword names.
fn type_name(word: &str) -> Option<TypeName> {
    TypeName::ALL.into_iter().find(|t| t.as_str() == word)
}

/// The type another language's name for it means.
fn type_alias(word: &str) -> Option<&'static str> {
    Some(match word.to_ascii_lowercase().as_str() {
        "integer" | "i64" | "i32" | "long" | "u64" | "u32" | "bigint" => "int",
        "boolean" => "bool",
        "double" | "number" | "f64" | "f32" | "real" | "decimal" => "float",
        "str" | "text" | "varchar" => "string",
        "datetime" | "date" | "time" | "instant" => "timestamp",
        "interval" | "period" => "duration",
        _ => return None,
    })
}

/// The stream option another name means.
fn option_alias(word: &str) -> Option<&'static str> {
    Some(match word {
        "latency" | "delay" | "out_of_order" | "out_of_orderness" | "watermark" | "late" => {
            "lateness"
        }
        "timestamp" | "event_time" | "time_field" | "timefield" => "time",
        "timeout" | "idle_timeout" | "idleness" => "idle",
        _ => return None,
    })
}

/// The skip strategy another spelling means.
fn skip_alias(written: &str) -> Option<&'static str> {
    Some(match written {
        "no_skip" | "noskip" | "no" | "never" | "off" => "none",
        "next" | "skip_to_next" | "to_next" => "to next",
        "past_last_event" | "past_last" | "pastlast" | "last" => "past last",
        _ => return None,
    })
}
