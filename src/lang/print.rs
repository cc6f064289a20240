//! AST to canonical text: what `tern fmt` writes.
//!
//! One clause per line, four spaces per level, each link of a pattern on its own line, `->`
//! spelled `followed by`, durations in their largest units (`1h30m`), timestamps in UTC with
//! the shortest fraction, and parentheses where the author wrote them plus where precedence
//! needs them. A step too long for one line has its `where` and `until` on lines of their own,
//! and a condition still too long is broken before each of its top-level `and`s (or `or`s).
//! Items are separated by one blank line; inside a body, one blank line is kept where the
//! author left one or more.
//!
//! Comments (from the file's trivia) are attached by position: a comment on a line of its own
//! goes before the item, clause, pattern line, field or closing brace that follows it, at its
//! indentation; a comment after code on the same line stays at the end of that line; a
//! comment inside a single line's code (`a /* x */ + b`) moves to its own line before it.
//! Parsing the output gives back the same AST (spans aside) and the same comments in the same
//! order, and printing it again gives the same text.

use chrono::{DateTime, Datelike, Timelike};

use super::ast::{
    AggregateDecl, Atom, BinaryOp, Clause, ClauseKind, Contiguity, Element, Emit, EmitField, Expr,
    ExprKind, File, Group, Import, Item, Link, Literal, NegatedStep, Pattern, Quantifier,
    QuantifierForm, Rule, SkipStrategy, Step, StreamDecl, Trivia, UnaryOp, Window,
};
use super::span::Span;

const INDENT: &str = "    ";

/// Lines longer than this are broken where the layout allows.
const WIDTH: usize = 100;

/// The canonical text of a whole file, with its comments.
pub fn print(file: &File) -> String {
    let mut w = Writer::new(&file.trivia);
    for (n, item) in file.items.iter().enumerate() {
        w.want_blank = n > 0;
        match item {
            Item::Import(x) => import(&mut w, x),
            Item::Stream(x) => stream(&mut w, x),
            Item::Aggregate(x) => aggregate(&mut w, x),
            Item::Rule(x) => rule(&mut w, x),
        }
    }
    w.finish()
}

/// Parses a rule file and prints it canonically: what `tern fmt` writes. A file with parse
/// errors is not formatted: the errors come back instead. As a safety net the result is
/// parsed again and must give the same AST (spans aside) and the same comments; if it does
/// not, that is a bug in tern, reported as an error rather than written.
pub fn format_source(file: super::FileId, src: &str) -> Result<String, Vec<super::Diagnostic>> {
    let (ast, diags) = super::parse(file, src);
    if diags.iter().any(super::Diagnostic::is_error) {
        return Err(diags);
    }
    let text = print(&ast);
    let (again, again_diags) = super::parse(file, &text);
    let comments =
        |f: &File| -> Vec<String> { f.trivia.comments.iter().map(|c| c.text.clone()).collect() };
    if !again_diags.is_empty() || shape(&ast) != shape(&again) || comments(&ast) != comments(&again)
    {
        let end = src.len().min(1);
        return Err(vec![
            super::Diagnostic::error(
                super::codes::Code::E101,
                "tern fmt would change this file's meaning; it is left as it is",
                file,
                Span::new(0, end),
                "formatting this file failed",
            )
            .with_note("this is a bug in tern: please report it with the file"),
        ]);
    }
    Ok(text)
}

/// A file's AST as JSON without spans: equal for files that mean the same.
pub fn shape(file: &File) -> serde_json::Value {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                m.remove("span");
                m.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut v = serde_json::to_value(file).unwrap_or_default();
    strip(&mut v);
    v
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

/// Builds the output line by line, placing comments between the lines of code.
struct Writer<'t> {
    out: String,
    trivia: &'t Trivia,
    /// The next comment not yet written.
    next: usize,
    /// End of the last code or comment written, in the source.
    last_end: usize,
    /// The last line written is code (or a trailing block comment) that a comment on the
    /// same source line may follow.
    can_trail: bool,
    /// Nothing written yet in the current body: no blank line before its first line.
    body_start: bool,
    /// The next line must be preceded by a blank line (between items).
    want_blank: bool,
}

impl<'t> Writer<'t> {
    fn new(trivia: &'t Trivia) -> Writer<'t> {
        Writer {
            out: String::new(),
            trivia,
            next: 0,
            last_end: 0,
            can_trail: false,
            body_start: true,
            want_blank: false,
        }
    }

    /// True when the source has a blank line between the two offsets.
    fn blank_between(&self, from: usize, to: usize) -> bool {
        let lines = &self.trivia.blank_lines;
        let i = lines.partition_point(|&b| (b as usize) < from);
        lines.get(i).is_some_and(|&b| (b as usize) < to)
    }

    /// Starts a new output line at `level`, after a blank line when one is due.
    fn new_line(&mut self, level: usize, blank: bool) {
        if !self.out.is_empty() {
            if (blank && !self.body_start) || self.want_blank {
                self.out.push('\n');
            }
            self.out.push('\n');
        }
        self.want_blank = false;
        self.body_start = false;
        self.out.push_str(&INDENT.repeat(level));
    }

    /// Writes the comments that start before `until`: trailing the last line when they
    /// follow code on its source line (and `trail` allows), otherwise on lines of their own.
    fn comments(&mut self, until: usize, level: usize, trail: bool) {
        while let Some(c) = self.trivia.comments.get(self.next) {
            if c.span.start as usize >= until {
                break;
            }
            self.next += 1;
            let start = c.span.start as usize;
            if trail && !c.own_line && self.can_trail && start >= self.last_end {
                self.out.push(' ');
                self.out.push_str(&c.text);
                self.can_trail = !c.is_line();
            } else {
                let blank = self.blank_between(self.last_end, start);
                self.new_line(level, blank);
                self.out.push_str(&c.text);
                self.can_trail = !c.is_line();
            }
            self.last_end = self.last_end.max(c.span.end as usize);
        }
    }

    /// Writes one unit of code (an item, clause, pattern line, field or member) at `level`:
    /// the comments before it, then `text`, whose own line breaks are already indented.
    /// Comments inside `span` go on lines before it.
    fn unit(&mut self, level: usize, span: Span, text: &str) {
        self.comments(span.start as usize, level, true);
        self.comments(span.end as usize, level, false);
        let start = span.start as usize;
        let blank = start >= self.last_end && self.blank_between(self.last_end, start);
        self.new_line(level, blank);
        self.out.push_str(text);
        self.last_end = self.last_end.max(span.end as usize);
        self.can_trail = true;
    }

    /// Writes the head of a braced body (`rule name {`) as a unit; the body's lines follow.
    fn open(&mut self, level: usize, span: Span, text: &str) {
        self.unit(level, span, text);
        self.out.push_str(" {");
        self.body_start = true;
    }

    /// Closes a body opened at `level` whose `}` is at `at` in the source: comments still
    /// inside it go at the body's indentation, then the brace. An empty body closes on the
    /// head's line: `{}`.
    fn close(&mut self, level: usize, at: usize) {
        self.comments(at, level + 1, true);
        if self.body_start && self.can_trail {
            if !self.out.ends_with('{') {
                self.out.push(' ');
            }
            self.out.push('}');
        } else {
            self.body_start = false;
            self.new_line(level, false);
            self.out.push('}');
        }
        self.body_start = false;
        self.last_end = self.last_end.max(at + 1);
        self.can_trail = true;
    }

    /// Writes the comments that follow the last line's code on its source line, wherever
    /// they are: for a body whose closing brace's position is not known.
    fn trailing(&mut self) {
        while let Some(c) = self.trivia.comments.get(self.next) {
            if c.own_line || !self.can_trail || (c.span.start as usize) < self.last_end {
                break;
            }
            self.comments(c.span.end as usize, 0, true);
        }
    }

    /// The text, with the comments after the last item, ending in one line break.
    fn finish(mut self) -> String {
        self.comments(usize::MAX, 0, true);
        if !self.out.is_empty() {
            self.out.push('\n');
        }
        self.out
    }
}

/// The span from the start of `a` to the end of `b`.
fn from_to(a: Span, b: Span) -> Span {
    Span {
        start: a.start,
        end: b.end.max(a.start),
    }
}

/// Where a body's closing brace is: the last byte of the item's span.
fn brace_of(span: Span) -> usize {
    (span.end as usize).saturating_sub(1)
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

fn import(w: &mut Writer<'_>, x: &Import) {
    let mut text = format!("import {}", quote(&x.path.node));
    if let Some(alias) = &x.alias {
        text.push_str(" as ");
        text.push_str(&alias.node);
    }
    w.unit(0, x.span, &text);
}

fn stream(w: &mut Writer<'_>, x: &StreamDecl) {
    w.open(
        0,
        from_to(x.span, x.name.span),
        &format!("stream {}", x.name.node),
    );
    for f in &x.fields {
        let q = if f.nullable { "?" } else { "" };
        w.unit(
            1,
            f.span,
            &format!("{}: {}{q}", f.name.node, f.ty.node.as_str()),
        );
    }
    if let Some(t) = &x.time {
        w.unit(1, t.span, &format!("time {}", t.node));
    }
    if let Some(d) = &x.lateness {
        w.unit(
            1,
            d.span,
            &format!("lateness {}", format_duration(d.node.millis)),
        );
    }
    if let Some(d) = &x.idle {
        w.unit(
            1,
            d.span,
            &format!("idle {}", format_duration(d.node.millis)),
        );
    }
    w.close(0, brace_of(x.span));
}

fn aggregate(w: &mut Writer<'_>, x: &AggregateDecl) {
    w.open(
        0,
        from_to(x.span, x.source.span),
        &format!("aggregate {} from {}", x.name.node, x.source.node),
    );
    if let (Some(first), Some(last)) = (x.key.first(), x.key.last()) {
        w.unit(
            1,
            from_to(first.span, last.span),
            &format!("key {}", names(&x.key)),
        );
    }
    if let Some(win) = &x.window {
        let text = match &win.node {
            Window::Tumbling(size) => {
                format!("window tumbling {}", format_duration(size.node.millis))
            }
            Window::Sliding { size, every } => format!(
                "window sliding {} every {}",
                format_duration(size.node.millis),
                format_duration(every.node.millis)
            ),
        };
        w.unit(1, win.span, &text);
    }
    if let Some(first) = x.select.first() {
        let at = Span {
            start: first.name.span.start,
            end: first.name.span.start,
        };
        w.open(1, at, "select");
        for f in &x.select {
            field(w, 2, f);
        }
        // The AST has no span for the select's braces: its closing one is taken to be
        // right after the last field, with the comments on that field's line.
        let end = x.select.last().map_or(at.end, |f| f.value.span.end) as usize;
        w.trailing();
        w.close(1, end.max(w.last_end));
    }
    w.close(0, brace_of(x.span));
}

fn rule(w: &mut Writer<'_>, x: &Rule) {
    w.open(
        0,
        from_to(x.span, x.name.span),
        &format!("rule {}", x.name.node),
    );
    for c in &x.clauses {
        clause(w, c);
    }
    w.close(0, brace_of(x.span));
}

fn names(list: &[super::ast::Ident]) -> String {
    list.iter()
        .map(|n| n.node.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// One clause at level 1; a pattern and an emit block continue on further lines.
fn clause(w: &mut Writer<'_>, c: &Clause) {
    let text = match &c.kind {
        ClauseKind::From(n) => format!("from {}", names(n)),
        ClauseKind::Key(n) => format!("key {}", names(n)),
        ClauseKind::To(n) => format!("to {}", names(n)),
        ClauseKind::Match(p) => return match_clause(w, c.span, p),
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
        ClauseKind::Emit(e) => return emit(w, c.span, "emit", e),
        ClauseKind::OnTimeout(e) => return emit(w, c.span, "on timeout emit", e),
    };
    w.unit(1, c.span, &text);
}

/// `emit name severity s {`, a field per line, `}`.
fn emit(w: &mut Writer<'_>, span: Span, keyword: &str, e: &Emit) {
    let mut head = keyword.to_string();
    let mut head_end = span.start as usize + keyword.len().min(span.len());
    if let Some(n) = &e.name {
        head.push(' ');
        head.push_str(&n.node);
        head_end = n.span.end as usize;
    }
    if let Some(s) = &e.severity {
        head.push_str(" severity ");
        head.push_str(&s.node);
        head_end = s.span.end as usize;
    }
    w.open(1, Span::new(span.start as usize, head_end), &head);
    for f in &e.fields {
        field(w, 2, f);
    }
    w.close(1, brace_of(span));
}

/// `name: value,` in an emit or select block.
fn field(w: &mut Writer<'_>, level: usize, f: &EmitField) {
    let mut text = format!("{}: ", f.name.node);
    expr(&mut text, &f.value, true);
    text.push(',');
    w.unit(level, from_to(f.name.span, f.value.span), &text);
}

/// `match` and its pattern: each link on its own line, indented below `match`.
fn match_clause(w: &mut Writer<'_>, span: Span, p: &Pattern) {
    let text = format!("match {}", element_line(INDENT.len() + 6, &p.first));
    w.unit(1, from_to(span, p.first.span), &text);
    for (l, e) in &p.rest {
        let mut head = String::new();
        link(&mut head, l);
        head.push(' ');
        let text = format!("{head}{}", element_line(2 * INDENT.len() + head.len(), e));
        w.unit(2, from_to(l.span, e.span), &text);
    }
}

/// An element of a `match` clause after `prefix_len` columns: on one line when it fits; a
/// lone step that does not has its `where` and `until` on lines of their own below it, each
/// broken before its top-level `and`s or `or`s when still too long.
fn element_line(prefix_len: usize, e: &Element) -> String {
    let mut text = String::new();
    element(&mut text, e);
    let lone_step = match e.alternatives.as_slice() {
        [Atom::Step(s)] if s.condition.is_some() || s.until.is_some() => Some(s),
        _ => None,
    };
    let Some(s) = lone_step.filter(|_| prefix_len + text.len() > WIDTH) else {
        return text;
    };
    let cond_indent = INDENT.repeat(3);
    let mut out = format!("{}: {}", s.name.node, s.stream.node);
    if let Some(q) = &s.quantifier {
        quantifier(&mut out, q);
    }
    for (kw, cond) in [("where", &s.condition), ("until", &s.until)] {
        if let Some(c) = cond {
            out.push('\n');
            out.push_str(&cond_indent);
            out.push_str(kw);
            out.push(' ');
            wrapped(&mut out, c, cond_indent.len() + kw.len() + 1, 4);
        }
    }
    out
}

/// An expression starting at column `col`; too long for the line, and an `and` (or `or`)
/// chain at the top, it is broken before each link of the chain, `indent` columns deeper.
fn wrapped(out: &mut String, e: &Expr, col: usize, level: usize) {
    let one = print_expr(e);
    let op = match &e.kind {
        ExprKind::Binary { op, .. } if matches!(op, BinaryOp::And | BinaryOp::Or) => *op,
        _ => {
            out.push_str(&one);
            return;
        }
    };
    if col + one.len() <= WIDTH {
        out.push_str(&one);
        return;
    }
    // `a and b and c` is `(a and b) and c`: the chain runs down the left operands.
    let mut rights = Vec::new();
    let mut cur = e;
    while let ExprKind::Binary { op: o, lhs, rhs } = &cur.kind {
        if *o != op {
            break;
        }
        rights.push(rhs.as_ref());
        cur = lhs;
    }
    let p = op.precedence();
    let indent = INDENT.repeat(level);
    operand(out, cur, p, false);
    let n = rights.len();
    for (i, r) in rights.into_iter().rev().enumerate() {
        out.push('\n');
        out.push_str(&indent);
        out.push_str(op.as_str());
        out.push(' ');
        operand(out, r, p + 1, i + 1 == n);
    }
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
