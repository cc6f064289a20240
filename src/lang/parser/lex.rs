//! The lexical layer: whitespace and comments, tokens, names, and literals (numbers,
//! durations, timestamps, strings).
//!
//! [`token`] cuts the next token loosely and never fails; the parser peeks with it to choose
//! a branch, to say what it found in a diagnostic, and to skip ahead when recovering. The
//! literal parsers then read a token exactly, reporting what is wrong inside it while keeping
//! its extent, so one bad literal is one diagnostic.

use nom::Parser;
use nom::bytes::complete::{tag, take_till, take_until, take_while};
use nom::character::complete::{multispace0, one_of, satisfy};
use nom::combinator::{opt, recognize};

use super::error::PError;
use super::{Cx, PResult};
use crate::lang::ast::{self, RESERVED};
use crate::lang::codes::Code;
use crate::lang::span::{Span, Spanned};

/// Words that start a top-level item.
pub(super) const ITEM_KEYWORDS: &[&str] = &["stream", "aggregate", "rule", "import"];

/// Words that start a clause of a rule.
pub(super) const CLAUSE_KEYWORDS: &[&str] =
    &["from", "key", "match", "within", "skip", "emit", "on", "to"];

/// Duration units and their length in milliseconds.
pub(super) const UNITS: [(&str, i64); 5] = [
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
];

/// Punctuation, longest first so that `->` is not read as `-`.
const PUNCT: &[&str] = &[
    "->", "==", "!=", "<=", ">=", "??", "::", "{", "}", "(", ")", ",", ":", "?", "+", "-", "*",
    "/", "%", ".", "|", "<", ">", "=",
];

/// True for the characters a name starts with.
pub(super) fn is_ident_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_'
}

/// True for the characters a name continues with.
pub(super) fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// True for the words that can never be names.
pub(super) fn is_reserved(word: &str) -> bool {
    RESERVED.contains(&word)
}

/// A character as messages show it: invisible ones by code point.
pub(super) fn describe_char(c: char) -> String {
    if c.is_whitespace() || c.is_control() || c == '\u{feff}' {
        format!("U+{:04X}", u32::from(c))
    } else {
        format!("`{c}`")
    }
}

/// A token, cut loosely.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Tok<'a> {
    /// A name or keyword.
    Word(&'a str),
    /// An int, float or duration, with whatever letters stick to it.
    Number(&'a str),
    /// A string literal, possibly unterminated.
    Str,
    /// `@` and what looks like a timestamp after it.
    Time,
    /// Punctuation.
    Punct(&'static str),
    /// A character that starts no token.
    Other(char),
    /// The end of the input.
    Eof,
}

/// The token at the very start of `i` (no whitespace skipped) and the input after it.
/// Never fails, and consumes at least one character unless `i` is empty.
pub(super) fn token(i: &str) -> (Tok<'_>, &str) {
    let Some(c) = i.chars().next() else {
        return (Tok::Eof, i);
    };
    if is_ident_start(c) {
        let n = i.find(|c| !is_ident_char(c)).unwrap_or(i.len());
        return (Tok::Word(&i[..n]), &i[n..]);
    }
    if c.is_ascii_digit() {
        let n = number_len(i);
        return (Tok::Number(&i[..n]), &i[n..]);
    }
    if c == '"' {
        return (Tok::Str, &i[string_len(i)..]);
    }
    if c == '@' {
        let body = match timestamp_len(&i[1..]) {
            0 => word_len(&i[1..]),
            n => n,
        };
        return (Tok::Time, &i[1 + body..]);
    }
    for p in PUNCT {
        if let Some(rest) = i.strip_prefix(p) {
            return (Tok::Punct(p), rest);
        }
    }
    (Tok::Other(c), &i[c.len_utf8()..])
}

/// The comments and blank lines of a source, found with the same rules as the parser's
/// whitespace skipping (so a `//` inside a string is no comment).
pub(super) fn trivia(src: &str) -> ast::Trivia {
    let mut comments = Vec::new();
    let mut i = src.strip_prefix('\u{feff}').unwrap_or(src);
    let off = |rest: &str| src.len() - rest.len();
    loop {
        i = i.trim_start_matches(|c: char| c.is_whitespace());
        if i.is_empty() {
            break;
        }
        let (len, is_comment) = if i.starts_with("//") {
            (i.find('\n').unwrap_or(i.len()), true)
        } else if let Some(body) = i.strip_prefix("/*") {
            (body.find("*/").map_or(i.len(), |n| n + 4), true)
        } else {
            let (_, rest) = token(i);
            (i.len() - rest.len(), false)
        };
        if is_comment {
            let start = off(i);
            let line_start = src[..start].rfind('\n').map_or(0, |n| n + 1);
            let own_line = src[line_start..start]
                .chars()
                .all(|c| c == ' ' || c == '\t' || c == '\u{feff}');
            let text = &i[..len];
            let text = if text.starts_with("//") {
                text.trim_end()
            } else {
                text
            };
            comments.push(ast::Comment {
                text: text.to_string(),
                span: Span::new(start, start + len),
                own_line,
            });
        }
        if len == 0 {
            // `token` consumes a character of any non-empty input; never loop in place.
            break;
        }
        i = &i[len..];
    }
    let mut blank_lines = Vec::new();
    let mut start = 0;
    let mut next_comment = comments.iter().peekable();
    for line in src.split_inclusive('\n') {
        while next_comment
            .peek()
            .is_some_and(|c| (c.span.end as usize) <= start)
        {
            next_comment.next();
        }
        let inside_comment = next_comment
            .peek()
            .is_some_and(|c| (c.span.start as usize) < start);
        if line.trim().is_empty() && !inside_comment && start > 0 {
            blank_lines.push(u32::try_from(start).unwrap_or(u32::MAX));
        }
        start += line.len();
    }
    ast::Trivia {
        comments,
        blank_lines,
    }
}

/// `digit { digit | "_" }`
fn digits(i: &str) -> PResult<'_, &str> {
    recognize((
        satisfy(|c| c.is_ascii_digit()),
        take_while(|c: char| c.is_ascii_digit() || c == '_'),
    ))
    .parse(i)
}

/// `"." int`
fn fraction(i: &str) -> PResult<'_, &str> {
    recognize((tag("."), digits)).parse(i)
}

/// `( "e" | "E" ) [ "+" | "-" ] int`
fn exponent(i: &str) -> PResult<'_, &str> {
    recognize((one_of("eE"), opt(one_of("+-")), digits)).parse(i)
}

/// The run of name characters at the start of `i`.
fn word_len(i: &str) -> usize {
    i.find(|c| !is_ident_char(c)).unwrap_or(i.len())
}

/// Length of the number token at the start of `i`: digits, an optional fraction and
/// exponent, and any name characters stuck to it (duration units, or mistakes).
fn number_len(i: &str) -> usize {
    let Ok((mut rest, _)) = digits(i) else {
        return 0;
    };
    if let Ok((r, _)) = fraction(rest) {
        rest = r;
    }
    if let Ok((r, _)) = exponent(rest) {
        rest = r;
    }
    i.len() - rest.len() + word_len(rest)
}

/// Length of the string token at the start of `i` (which is `"`): up to and including the
/// closing quote, or up to the end of the line when there is none.
fn string_len(i: &str) -> usize {
    let mut escaped = false;
    for (n, c) in i.char_indices().skip(1) {
        match c {
            '\n' => return n,
            '"' if !escaped => return n + 1,
            '\\' if !escaped => escaped = true,
            _ => escaped = false,
        }
    }
    i.len()
}

/// Length of what looks like an RFC 3339 timestamp at the start of `i`: a date, then
/// optionally `T` and a time with an offset. Stops early enough that
/// `@2024-03-01T08:00:00Z-5m` leaves `-5m` to the expression.
fn timestamp_len(i: &str) -> usize {
    let date = i
        .find(|c: char| !(c.is_ascii_digit() || c == '-'))
        .unwrap_or(i.len());
    match i[date..].strip_prefix(['T', 't']) {
        Some(rest) => date + 1 + time_len(rest),
        None => date,
    }
}

/// Length of a time of day and its offset at the start of `i`: `08:00:00.5+01:00`.
fn time_len(i: &str) -> usize {
    let mut n = i
        .find(|c: char| !(c.is_ascii_digit() || c == ':' || c == '.'))
        .unwrap_or(i.len());
    let rest = &i[n..];
    if rest.starts_with(['Z', 'z']) {
        n += 1;
    } else if rest.starts_with(['+', '-']) && rest[1..].starts_with(|c: char| c.is_ascii_digit()) {
        n += 1;
        n += i[n..]
            .find(|c: char| !(c.is_ascii_digit() || c == ':'))
            .unwrap_or(i.len() - n);
    }
    n
}

/// True when `i` starts with a space and a time of day (`" 08:"`), as in a timestamp
/// written with a space between date and time.
fn spaced_time(i: &str) -> bool {
    let b = i.as_bytes();
    b.len() >= 4 && b[0] == b' ' && b[1].is_ascii_digit() && b[2].is_ascii_digit() && b[3] == b':'
}

/// A number literal as read.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Num {
    /// `42`
    Int(i64),
    /// `4.2`
    Float(f64),
    /// `30s`, in milliseconds.
    Duration(i64),
}

/// The next token, with where it starts and what follows it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Peek<'a> {
    /// The token.
    pub(super) tok: Tok<'a>,
    /// The input at the token.
    pub(super) at: &'a str,
    /// The input after the token.
    pub(super) after: &'a str,
}

impl<'a> Peek<'a> {
    /// True when the token is the word `w`.
    pub(super) fn is_word(&self, w: &str) -> bool {
        self.tok == Tok::Word(w)
    }

    /// True when the token is the punctuation `p`.
    pub(super) fn is_punct(&self, p: &str) -> bool {
        matches!(self.tok, Tok::Punct(q) if q == p)
    }
}

impl<'a> Cx<'a> {
    /// Skips whitespace and comments. An unterminated block comment swallows the rest of the
    /// file; it is reported once and parsing goes on at the end.
    pub(super) fn ws(&self, i: &'a str) -> &'a str {
        self.skip_ws(i, true)
    }

    /// Skips whitespace and comments without reporting anything (for recovery and labels).
    pub(super) fn skip_ws_lenient(&self, i: &'a str) -> &'a str {
        self.skip_ws(i, false)
    }

    fn skip_ws(&self, mut i: &'a str, report: bool) -> &'a str {
        loop {
            let Ok((rest, _)) = multispace0::<_, PError<'a>>(i) else {
                return i;
            };
            if let Ok((r, _)) =
                (tag::<_, _, PError<'a>>("//"), take_till(|c| c == '\n')).parse(rest)
            {
                i = r;
                continue;
            }
            if let Some(body) = rest.strip_prefix("/*") {
                match take_until::<_, _, PError<'a>>("*/").parse(body) {
                    Ok((r, inside)) => {
                        i = &r[2..];
                        if report && inside.contains("/*") {
                            let span = self.span(rest, i);
                            // Comments are met in order (peeks only look ahead), so the
                            // list stays sorted and a comment seen again is the last one.
                            let mut nested = self.nested_comments.borrow_mut();
                            if nested.last().is_none_or(|last| last.start < span.start) {
                                nested.push(span);
                            }
                        }
                    }
                    Err(_) => {
                        let end = &rest[rest.len()..];
                        if report {
                            self.swallowed.set(true);
                            let start = self.off(rest);
                            self.report(
                                self.error(
                                    Code::E103,
                                    "unterminated block comment",
                                    Span::new(start, start + 2),
                                    "this comment is never closed",
                                )
                                .with_note("close it with `*/`; block comments do not nest"),
                            );
                        }
                        return end;
                    }
                }
                continue;
            }
            return rest;
        }
    }

    /// The next token after whitespace.
    pub(super) fn peek(&self, i: &'a str) -> Peek<'a> {
        let at = self.ws(i);
        let (tok, after) = token(at);
        Peek { tok, at, after }
    }

    /// Span of a peeked token.
    pub(super) fn peek_span(&self, p: &Peek<'a>) -> Span {
        self.span(p.at, p.after)
    }

    /// Consumes the punctuation `p` if it comes next.
    pub(super) fn eat_punct(&self, i: &'a str, p: &str) -> Option<(&'a str, Span)> {
        let next = self.peek(i);
        next.is_punct(p)
            .then(|| (next.after, self.peek_span(&next)))
    }

    /// Consumes the word `w` if it comes next.
    pub(super) fn eat_word(&self, i: &'a str, w: &str) -> Option<(&'a str, Span)> {
        let next = self.peek(i);
        next.is_word(w).then(|| (next.after, self.peek_span(&next)))
    }

    /// Requires the punctuation `p`; `expected` describes it for the error.
    pub(super) fn expect_punct(&self, i: &'a str, p: &str, expected: &str) -> PResult<'a, Span> {
        match self.eat_punct(i, p) {
            Some(ok) => Ok(ok),
            None => self.fail(i, self.unexpected(i, expected)),
        }
    }

    /// Requires the word `w`; `expected` describes it for the error.
    pub(super) fn expect_word(&self, i: &'a str, w: &str, expected: &str) -> PResult<'a, Span> {
        match self.eat_word(i, w) {
            Some(ok) => Ok(ok),
            None => self.fail(i, self.unexpected(i, expected)),
        }
    }

    /// A name (a word that is not reserved), if one comes next.
    pub(super) fn ident(&self, i: &'a str) -> Option<(&'a str, ast::Ident)> {
        let next = self.peek(i);
        match next.tok {
            Tok::Word(w) if !is_reserved(w) => Some((
                next.after,
                Spanned::new(self.peek_span(&next), w.to_string()),
            )),
            _ => None,
        }
    }

    /// A required name; `what` says which ("a stream name"). A reserved word followed by one
    /// of `follow` clearly stands where a name goes: it is accepted and reported (E108).
    pub(super) fn parse_name(
        &self,
        i: &'a str,
        what: &'static str,
        follow: &[&str],
    ) -> PResult<'a, ast::Ident> {
        if let Some(ok) = self.ident(i) {
            return Ok(ok);
        }
        let next = self.peek(i);
        if let Tok::Word(w) = next.tok {
            let then = self.peek(next.after);
            let fits = match then.tok {
                Tok::Punct(p) => follow.contains(&p),
                Tok::Word(v) => follow.contains(&v),
                _ => false,
            };
            if fits {
                let span = self.peek_span(&next);
                self.report(self.reserved_as_name(w, span, what));
                return Ok((next.after, Spanned::new(span, w.to_string())));
            }
        }
        self.fail(i, self.unexpected(i, what))
    }

    /// E108 for a reserved word standing where a name goes.
    pub(super) fn reserved_as_name(
        &self,
        word: &str,
        span: Span,
        what: &str,
    ) -> crate::lang::Diagnostic {
        let what = what.split(" after ").next().unwrap_or(what);
        self.error(
            Code::E108,
            format!("reserved word `{word}` used as {what}"),
            span,
            format!("`{word}` is a keyword"),
        )
        .with_note("keywords cannot be names; pick another name")
    }

    /// A number literal; `i` starts with a digit. Mistakes inside the token are reported and
    /// the token is consumed anyway, with a placeholder value.
    pub(super) fn parse_number(&self, i: &'a str) -> (&'a str, Num, Span) {
        let start = i;
        let Ok((mut rest, _)) = digits(i) else {
            // Callers peek for a digit first; treat anything else as an empty int.
            return (i, Num::Int(0), self.span(i, i));
        };
        let mut is_float = false;
        if let Ok((r, _)) = fraction(rest) {
            rest = r;
            is_float = true;
        }
        if let Ok((r, _)) = exponent(rest) {
            rest = r;
            is_float = true;
        }
        let numeral = &start[..start.len() - rest.len()];
        let tail = word_len(rest);
        if tail > 0 {
            let end = &rest[tail..];
            let span = self.span(start, end);
            if is_float {
                self.report(self.fractional_duration(numeral, &rest[..tail], span));
                return (end, Num::Duration(0), span);
            }
            return match self.duration_parts(&start[..start.len() - end.len()], span) {
                Some(millis) => (end, Num::Duration(millis), span),
                None => (end, Num::Duration(0), span),
            };
        }
        let span = self.span(start, rest);
        let clean: String = numeral.chars().filter(|c| *c != '_').collect();
        if is_float {
            return match clean.parse::<f64>() {
                Ok(v) if v.is_finite() => (rest, Num::Float(v), span),
                _ => {
                    self.report(
                        self.error(
                            Code::E105,
                            "float literal out of range",
                            span,
                            "too large for a 64-bit float",
                        )
                        .with_note("the largest float is about 1.8e308"),
                    );
                    (rest, Num::Float(0.0), span)
                }
            };
        }
        let value = match clean.parse::<i64>() {
            Ok(v) => v,
            Err(_) => {
                self.report(
                    self.error(
                        Code::E105,
                        "integer literal out of range",
                        span,
                        "too large for a 64-bit int",
                    )
                    .with_note(format!(
                        "ints range from {} to {}; use a float for larger values",
                        i64::MIN,
                        i64::MAX
                    )),
                );
                0
            }
        };
        if let Some((end, millis, unit)) = self.spaced_unit(rest, value) {
            let span = self.span(start, end);
            self.report(
                self.error(
                    Code::E106,
                    "space between a number and its unit",
                    span,
                    "a duration is written without spaces",
                )
                .with_note(format!("write `{value}{unit}`")),
            );
            return (end, Num::Duration(millis), span);
        }
        (rest, Num::Int(value), span)
    }

    /// `5 m`: an int, spaces on the same line, then a bare unit. Never valid otherwise, so it
    /// can only be a duration with a stray space.
    fn spaced_unit(&self, rest: &'a str, value: i64) -> Option<(&'a str, i64, &'static str)> {
        let after_spaces = rest.trim_start_matches([' ', '\t']);
        if after_spaces.len() == rest.len() {
            return None;
        }
        let (tok, end) = token(after_spaces);
        let Tok::Word(w) = tok else { return None };
        let (unit, ms) = UNITS.iter().find(|(u, _)| *u == w)?;
        // `a: 5 m: 3` is a missing comma before a field named `m`, not a duration.
        if self.peek(end).is_punct(":") {
            return None;
        }
        Some((end, value.checked_mul(*ms).unwrap_or(0), unit))
    }

    /// E106 for `1.5s` and `1e3ms`.
    fn fractional_duration(
        &self,
        numeral: &str,
        unit: &str,
        span: Span,
    ) -> crate::lang::Diagnostic {
        let Some((_, ms)) = UNITS.iter().find(|(u, _)| *u == unit) else {
            return self.unknown_unit(unit, span);
        };
        let d = self.error(
            Code::E106,
            "duration with a fractional part",
            span,
            "a duration is a whole number of units",
        );
        let clean: String = numeral.chars().filter(|c| *c != '_').collect();
        let millis = clean.parse::<f64>().map(|v| v * *ms as f64);
        match millis {
            Ok(m) if m.fract() == 0.0 && m.abs() < 1e15 => d.with_note(format!(
                "write `{}`",
                crate::lang::print::format_duration(m as i64)
            )),
            _ => d.with_note("write it in a smaller unit, such as `1500ms` for 1.5 s"),
        }
    }

    /// E106 for an unknown unit, with the unit the author probably meant.
    fn unknown_unit(&self, unit: &str, span: Span) -> crate::lang::Diagnostic {
        let d = self.error(
            Code::E106,
            format!("unknown duration unit `{unit}`"),
            span,
            "not a duration unit",
        );
        let meant = match unit {
            "min" | "mins" | "minute" | "minutes" | "M" => Some("m"),
            "sec" | "secs" | "second" | "seconds" | "S" => Some("s"),
            "hr" | "hrs" | "hour" | "hours" | "H" => Some("h"),
            "day" | "days" | "D" => Some("d"),
            "msec" | "msecs" | "millis" | "milliseconds" | "MS" => Some("ms"),
            _ => None,
        };
        let d = match meant {
            Some(u) => d.with_note(format!("did you mean `{u}`?")),
            None if matches!(unit, "us" | "ns" | "µs") => {
                d.with_note("durations have millisecond precision")
            }
            None => d,
        };
        d.with_note("units are `ms`, `s`, `m` (minutes), `h` and `d`, as in `1h30m`")
    }

    /// Reads `1h30m`-style parts; reports and returns `None` on a mistake.
    fn duration_parts(&self, text: &str, span: Span) -> Option<i64> {
        let mut total: i64 = 0;
        let mut rest = text;
        let base = span.start as usize;
        let part_span = |from: &str, to: &str| {
            Span::new(base + text.len() - from.len(), base + text.len() - to.len())
        };
        while !rest.is_empty() {
            let Ok((after_digits, n)) = digits(rest) else {
                // Only reachable after a unit followed by something odd.
                self.report(self.unknown_unit(rest, part_span(rest, "")));
                return None;
            };
            let unit_len = after_digits
                .find(|c: char| !(c.is_ascii_alphabetic() || c == '_'))
                .unwrap_or(after_digits.len());
            let unit = &after_digits[..unit_len];
            let after_unit = &after_digits[unit_len..];
            if unit.is_empty() {
                self.report(
                    self.error(
                        Code::E106,
                        format!("missing unit after `{n}`"),
                        part_span(rest, after_digits),
                        "every part of a duration needs a unit",
                    )
                    .with_note("units are `ms`, `s`, `m` (minutes), `h` and `d`, as in `1h30m`"),
                );
                return None;
            }
            let Some((_, ms)) = UNITS.iter().find(|(u, _)| *u == unit) else {
                self.report(self.unknown_unit(unit, part_span(after_digits, after_unit)));
                return None;
            };
            let clean: String = n.chars().filter(|c| *c != '_').collect();
            let part = clean
                .parse::<i64>()
                .ok()
                .and_then(|v| v.checked_mul(*ms))
                .and_then(|v| total.checked_add(v));
            match part {
                Some(t) => total = t,
                None => {
                    self.report(
                        self.error(
                            Code::E106,
                            "duration out of range",
                            span,
                            "too long for 64-bit milliseconds",
                        )
                        .with_note("the longest duration is about 292 million years"),
                    );
                    return None;
                }
            }
            rest = after_unit;
        }
        Some(total)
    }

    /// A required duration; `after` names what it follows, for the error.
    pub(super) fn parse_duration(
        &self,
        i: &'a str,
        after: &str,
    ) -> PResult<'a, Spanned<ast::Duration>> {
        let next = self.peek(i);
        if let Tok::Number(text) = next.tok {
            let (rest, num, span) = self.parse_number(next.at);
            let millis = match num {
                Num::Duration(ms) => ms,
                Num::Int(_) | Num::Float(_) => {
                    self.report(
                        self.error(
                            Code::E106,
                            format!("missing unit after `{text}`"),
                            span,
                            "a duration needs a unit",
                        )
                        .with_note(format!(
                            "write `{text}s`, `{text}m`, ...: units are `ms`, `s`, `m` (minutes), `h` and `d`"
                        )),
                    );
                    0
                }
            };
            return Ok((rest, Spanned::new(span, ast::Duration { millis })));
        }
        let expected = format!("a duration (such as `30s`) after {after}");
        let d = self.unexpected(i, &expected);
        let d = if next.is_punct("-") {
            d.with_note("durations cannot be negative")
        } else {
            d
        };
        self.fail(i, d)
    }

    /// A string literal; `i` starts with `"`. Bad escapes and a missing closing quote are
    /// reported; the string keeps what could be read.
    pub(super) fn parse_string(&self, i: &'a str) -> (&'a str, Spanned<String>) {
        let start = self.off(i);
        let mut out = String::new();
        let mut chars = i.char_indices().skip(1).peekable();
        let unterminated = |end: usize, eof: bool| {
            let label = if eof {
                "this string is not closed before the end of the file"
            } else {
                "this string is not closed before the end of the line"
            };
            self.error(
                Code::E102,
                "unterminated string",
                Span::new(start, start + end),
                label,
            )
            .with_note(
                "add the closing `\"`; strings cannot span lines (write `\\n` for a line break)",
            )
        };
        while let Some((n, c)) = chars.next() {
            match c {
                '"' => {
                    let end = n + 1;
                    return (&i[end..], Spanned::new(Span::new(start, start + end), out));
                }
                '\n' => {
                    let end = if i[..n].ends_with('\r') { n - 1 } else { n };
                    self.report(unterminated(end, false));
                    self.unterminated_string_end.set(Some(start + end));
                    return (&i[n..], Spanned::new(Span::new(start, start + end), out));
                }
                '\\' => {
                    let Some(&(m, e)) = chars.peek() else { break };
                    let simple = match e {
                        '"' => Some('"'),
                        '\\' => Some('\\'),
                        'n' => Some('\n'),
                        't' => Some('\t'),
                        'r' => Some('\r'),
                        _ => None,
                    };
                    if let Some(ch) = simple {
                        chars.next();
                        out.push(ch);
                    } else if e == 'u' {
                        chars.next();
                        let (len, ch) = self.unicode_escape(&i[m + 1..], start + n);
                        out.extend(ch);
                        // Skip what the escape used; it is all ASCII.
                        for _ in 0..len {
                            chars.next();
                        }
                    } else if e == '\n' || e == '\r' {
                        // A backslash at the end of a line: the string is not closed.
                        continue;
                    } else {
                        chars.next();
                        let esc_span = Span::new(start + n, start + m + e.len_utf8());
                        self.report(
                            self.error(
                                Code::E104,
                                format!("unknown escape `\\{e}`"),
                                esc_span,
                                "not a valid escape",
                            )
                            .with_note(
                                "valid escapes are `\\\"`, `\\\\`, `\\n`, `\\t`, `\\r` and `\\u{…}`; write `\\\\` for a backslash",
                            ),
                        );
                        out.push(e);
                    }
                }
                c => out.push(c),
            }
        }
        self.report(unterminated(i.len(), true));
        self.swallowed.set(true);
        (
            &i[i.len()..],
            Spanned::new(Span::new(start, start + i.len()), out),
        )
    }

    /// The part of `\u{…}` after the `u`, at `i`; `backslash` is the offset of the `\`.
    /// Returns how many bytes it used and the character, reporting a malformed escape.
    fn unicode_escape(&self, i: &str, backslash: usize) -> (usize, Option<char>) {
        let bad = |len: usize, msg: &str, label: &str| {
            self.error(
                Code::E104,
                msg.to_string(),
                Span::new(backslash, backslash + 2 + len),
                label.to_string(),
            )
            .with_note("write a code point as `\\u{1F600}`: 1 to 6 hex digits in braces")
        };
        let Some(body) = i.strip_prefix('{') else {
            self.report(bad(0, "invalid unicode escape", "expected `{` after `\\u`"));
            return (0, None);
        };
        let hex = body
            .find(|c: char| !c.is_ascii_hexdigit())
            .unwrap_or(body.len());
        if !body[hex..].starts_with('}') {
            let used = 1 + hex;
            self.report(bad(
                used,
                "invalid unicode escape",
                "expected hex digits and `}`",
            ));
            return (used, None);
        }
        let used = 2 + hex;
        if hex == 0 || hex > 6 {
            self.report(bad(
                used,
                "invalid unicode escape",
                "expected 1 to 6 hex digits",
            ));
            return (used, None);
        }
        match u32::from_str_radix(&body[..hex], 16)
            .ok()
            .and_then(char::from_u32)
        {
            Some(c) => (used, Some(c)),
            None => {
                self.report(bad(
                    used,
                    "invalid unicode escape",
                    "not a Unicode scalar value",
                ));
                (used, None)
            }
        }
    }

    /// A timestamp literal; `i` starts with `@`. Returns nanoseconds since the epoch (UTC);
    /// a malformed timestamp is reported and read as 0.
    pub(super) fn parse_timestamp(&self, i: &'a str) -> (&'a str, i64, Span) {
        let body_len = timestamp_len(&i[1..]);
        let body = &i[1..1 + body_len];
        let rest = &i[1 + body_len..];
        let example = "write RFC 3339 date and time with an offset: `@2024-03-01T08:00:00Z`";
        if !body.is_empty() && !body.contains(['T', 't']) && spaced_time(rest) {
            let time = 1 + time_len(&rest[1..]);
            let end = &rest[time..];
            let span = self.span(i, end);
            self.report(
                self.error(
                    Code::E107,
                    "space inside a timestamp",
                    span,
                    "a timestamp is written without spaces",
                )
                .with_note(format!(
                    "join date and time with `T`: `@{body}T{}`",
                    &rest[1..time]
                )),
            );
            return (end, 0, span);
        }
        let span = self.span(i, rest);
        if body.is_empty() {
            let rest = &i[1 + word_len(&i[1..])..];
            let span = self.span(i, rest);
            self.report(
                self.error(
                    Code::E107,
                    "expected a timestamp after `@`",
                    span,
                    "not a timestamp",
                )
                .with_note(example),
            );
            return (rest, 0, span);
        }
        match chrono::DateTime::parse_from_rfc3339(body) {
            Ok(t) => match t.timestamp_nanos_opt() {
                Some(nanos) => (rest, nanos, span),
                None => {
                    self.report(
                        self.error(
                            Code::E107,
                            "timestamp out of range",
                            span,
                            "too far from 1970 for nanosecond precision",
                        )
                        .with_note("timestamps must lie between 1677-09-22 and 2262-04-11"),
                    );
                    (rest, 0, span)
                }
            },
            Err(e) => {
                let label = if !body.contains(['T', 't']) {
                    "missing the time of day".to_string()
                } else if !(body.ends_with(['Z', 'z'])
                    || body
                        .rsplit(['T', 't'])
                        .next()
                        .is_some_and(|t| t.contains(['+', '-'])))
                {
                    "missing the UTC offset (`Z` for UTC)".to_string()
                } else {
                    use chrono::format::ParseErrorKind;
                    match e.kind() {
                        ParseErrorKind::OutOfRange => "a date or time field is out of range",
                        ParseErrorKind::TooShort => "this timestamp is incomplete",
                        ParseErrorKind::TooLong => "unexpected characters at the end",
                        _ => "not an RFC 3339 timestamp",
                    }
                    .to_string()
                };
                self.report(
                    self.error(Code::E107, "invalid timestamp", span, label)
                        .with_note(example),
                );
                (rest, 0, span)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::lang::diagnostic::FileId;

    fn number(src: &str) -> (Num, Vec<Code>, usize) {
        let cx = Cx::new(FileId(0), src);
        let (rest, num, _) = cx.parse_number(src);
        let codes = cx.diags.into_inner().into_iter().map(|d| d.code).collect();
        (num, codes, src.len() - rest.len())
    }

    fn string(src: &str) -> (String, Vec<Code>) {
        let cx = Cx::new(FileId(0), src);
        let (_, s) = cx.parse_string(src);
        (
            s.node,
            cx.diags.into_inner().into_iter().map(|d| d.code).collect(),
        )
    }

    fn timestamp(src: &str) -> (i64, Vec<(Code, String)>) {
        let cx = Cx::new(FileId(0), src);
        let (_, t, _) = cx.parse_timestamp(src);
        let diags = cx.diags.into_inner();
        (
            t,
            diags
                .into_iter()
                .map(|d| (d.code, d.labels[0].message.clone()))
                .collect(),
        )
    }

    #[test]
    fn ints_allow_separators_and_report_overflow() {
        assert_eq!(number("1_000_000"), (Num::Int(1_000_000), vec![], 9));
        assert_eq!(number("9223372036854775807").0, Num::Int(i64::MAX));
        assert_eq!(number("9223372036854775808").1, [Code::E105]);
        assert_eq!(number("12 + 3"), (Num::Int(12), vec![], 2));
    }

    #[test]
    fn durations_sum_their_parts() {
        assert_eq!(number("1h30m"), (Num::Duration(5_400_000), vec![], 5));
        assert_eq!(number("500ms"), (Num::Duration(500), vec![], 5));
        assert_eq!(number("5m"), (Num::Duration(300_000), vec![], 2));
        assert_eq!(number("1d2h3m4s5ms").0, Num::Duration(93_784_005));
        assert_eq!(number("1_000ms").0, Num::Duration(1000));
    }

    #[test]
    fn bad_durations_are_e106() {
        for src in [
            "5min",
            "1h30",
            "5x",
            "1.5s",
            "5m_",
            "2e",
            "9999999999999999d",
        ] {
            let (num, codes, len) = number(src);
            assert_eq!(codes, [Code::E106], "{src}");
            assert_eq!(num, Num::Duration(0), "{src}");
            assert_eq!(len, src.len(), "{src} is consumed whole");
        }
        // A space between number and unit, on one line.
        let (num, codes, len) = number("5 m)");
        assert_eq!(
            (num, codes, len),
            (Num::Duration(300_000), vec![Code::E106], 3)
        );
        // Not when the unit is a field name after a missing comma, nor across lines.
        assert_eq!(number("5 m: 3").0, Num::Int(5));
        assert_eq!(number("5\nm").0, Num::Int(5));
    }

    #[test]
    fn fractional_durations_suggest_smaller_units() {
        let cx = Cx::new(FileId(0), "1.5s");
        cx.parse_number("1.5s");
        let d = cx.diags.into_inner();
        assert_eq!(d[0].notes, ["write `1s500ms`"]);
    }

    #[test]
    fn floats_need_digits_on_both_sides_of_the_dot() {
        assert_eq!(number("1.5"), (Num::Float(1.5), vec![], 3));
        assert_eq!(number("1e3"), (Num::Float(1000.0), vec![], 3));
        assert_eq!(number("2.5E-3"), (Num::Float(0.0025), vec![], 6));
        assert_eq!(number("1_0.2_5"), (Num::Float(10.25), vec![], 7));
        // `1.x` is a field access on 1, `1.` leaves the dot alone.
        assert_eq!(number("1.x"), (Num::Int(1), vec![], 1));
        assert_eq!(number("1."), (Num::Int(1), vec![], 1));
        assert_eq!(number("1e999").1, [Code::E105]);
    }

    #[test]
    fn strings_resolve_escapes() {
        assert_eq!(string(r#""a\"b\\c\nd\te\r""#).0, "a\"b\\c\nd\te\r");
        assert_eq!(string(r#""\u{48}\u{1F600}""#).0, "H\u{1F600}");
        assert_eq!(string("\"héllo\"").0, "héllo");
    }

    #[test]
    fn bad_strings_are_reported() {
        assert_eq!(string(r#""\d""#), ("d".to_string(), vec![Code::E104]));
        assert_eq!(string(r#""\u{D800}""#).1, [Code::E104]);
        assert_eq!(string(r#""\u{110000}""#).1, [Code::E104]);
        assert_eq!(string(r#""\u{}""#).1, [Code::E104]);
        assert_eq!(string(r#""\u41""#).1, [Code::E104]);
        assert_eq!(string(r#""\u{1234567}""#).1, [Code::E104]);
        assert_eq!(string("\"abc\nx\"").1, [Code::E102]);
        assert_eq!(string("\"abc").1, [Code::E102]);
        assert_eq!(string("\"abc\\").1, [Code::E102]);
        assert_eq!(string("\"é\\").1, [Code::E102]);
    }

    #[test]
    fn timestamps_are_utc_nanoseconds() {
        assert_eq!(timestamp("@1970-01-01T00:00:00Z").0, 0);
        assert_eq!(timestamp("@1970-01-01T00:00:01.5Z").0, 1_500_000_000);
        assert_eq!(timestamp("@1970-01-01T01:00:00+01:00").0, 0);
        assert_eq!(
            timestamp("@2024-03-01T08:00:00.000000001Z").0,
            1_709_280_000_000_000_001
        );
    }

    #[test]
    fn bad_timestamps_say_what_is_missing() {
        assert_eq!(timestamp("@2024-03-01").1[0].1, "missing the time of day");
        assert_eq!(
            timestamp("@2024-03-01T08:00:00").1[0].1,
            "missing the UTC offset (`Z` for UTC)"
        );
        assert_eq!(timestamp("@2024-13-01T08:00:00Z").1[0].0, Code::E107);
        assert_eq!(timestamp("@").1[0].0, Code::E107);
        assert_eq!(
            timestamp("@2500-01-01T00:00:00Z").1[0].1,
            "too far from 1970 for nanosecond precision"
        );
        let (_, diags) = timestamp("@2024-03-01 08:00:00Z");
        assert_eq!(diags[0].1, "a timestamp is written without spaces");
    }

    #[test]
    fn timestamps_stop_before_arithmetic() {
        let src = "@2024-03-01T08:00:00Z-5m";
        let (tok, rest) = token(src);
        assert_eq!((tok, rest), (Tok::Time, "-5m"));
        let src = "@2024-03-01T08:00:00+01:00-5m";
        assert_eq!(token(src).1, "-5m");
    }

    #[test]
    fn comments_are_whitespace() {
        let cx = Cx::new(FileId(0), "");
        assert_eq!(cx.ws("  // a\n /* b\n c */ x"), "x");
        assert_eq!(cx.ws("/**/x"), "x");
    }

    #[test]
    fn tokens_never_split_chars() {
        for src in ["é", "\u{feff}", "😀x", "\"é", "@é", "1é"] {
            let (_, rest) = token(src);
            assert!(rest.len() < src.len());
        }
    }
}
