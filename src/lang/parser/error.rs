//! The nom error type, and how a failure becomes "expected X, found Y".
//!
//! nom's own messages never reach an author: a failure either carries a finished
//! [`Diagnostic`], or names what was expected so that [`Cx::unexpected`] can describe what was
//! found instead.

use nom::error::{ErrorKind, ParseError};

use super::Cx;
use super::lex::{Tok, describe_char, is_reserved, token};
use crate::lang::codes::Code;
use crate::lang::diagnostic::Diagnostic;

/// A parse failure at a position of the input.
#[derive(Debug)]
pub(super) struct PError<'a> {
    /// The input left where the failure was detected.
    pub(super) at: &'a str,
    /// What went wrong.
    pub(super) kind: Kind,
}

/// What went wrong.
#[derive(Debug)]
pub(super) enum Kind {
    /// The input does not start with this (a description such as "an expression").
    Expected(&'static str),
    /// A finished diagnostic.
    Diag(Box<Diagnostic>),
    /// A nom combinator failed; only the position is meaningful.
    Nom,
}

impl<'a> PError<'a> {
    pub(super) fn diag(at: &'a str, d: Diagnostic) -> PError<'a> {
        PError {
            at,
            kind: Kind::Diag(Box::new(d)),
        }
    }

    pub(super) fn expected(at: &'a str, what: &'static str) -> PError<'a> {
        PError {
            at,
            kind: Kind::Expected(what),
        }
    }
}

impl<'a> ParseError<&'a str> for PError<'a> {
    fn from_error_kind(input: &'a str, _kind: ErrorKind) -> Self {
        PError {
            at: input,
            kind: Kind::Nom,
        }
    }

    fn append(_input: &'a str, _kind: ErrorKind, other: Self) -> Self {
        other
    }

    /// Of two alternatives that failed, the one that got further says more.
    fn or(self, other: Self) -> Self {
        if other.at.len() <= self.at.len() {
            other
        } else {
            self
        }
    }
}

impl<'a> Cx<'a> {
    /// The diagnostic for a failure.
    pub(super) fn explain(&self, e: PError<'a>) -> Diagnostic {
        match e.kind {
            Kind::Diag(d) => *d,
            Kind::Expected(what) => self.unexpected(e.at, what),
            Kind::Nom => self.unexpected(e.at, "something else"),
        }
    }

    /// The span of a block comment that contained `/*` and ended right before the token at
    /// `at`: the likely cause of a parse error there.
    fn nested_comment_before(&self, at: &'a str) -> Option<crate::lang::span::Span> {
        let pos = self.off(at);
        let comments = self.nested_comments.borrow();
        // Only the last comment that ends before the token can end right before it.
        let before = comments.partition_point(|c| c.end as usize <= pos);
        let comment = *comments.get(before.checked_sub(1)?)?;
        let after = self.src.get(comment.end as usize..)?;
        (self.off(self.skip_ws_lenient(after)) == pos).then_some(comment)
    }

    /// Start and end of the token at `at` (after whitespace), for labels.
    pub(super) fn token_bounds(&self, at: &'a str) -> (&'a str, &'a str) {
        let start = self.skip_ws_lenient(at);
        let (_, end) = token(start);
        (start, end)
    }

    /// "expected X, found Y" at the token that starts at `at` (after whitespace), with the
    /// hints that fit the token found. A character that starts no token at all is E100.
    pub(super) fn unexpected(&self, at: &'a str, expected: &str) -> Diagnostic {
        let (start, end) = self.token_bounds(at);
        let (tok, _) = token(start);
        let span = self.span(start, end);
        let label = format!("expected {expected}");
        let d = match tok {
            Tok::Other(c) => {
                let (span, label, note) = match stray_char(c, end) {
                    Some((width, label, note)) => (
                        crate::lang::span::Span::new(
                            span.start as usize,
                            span.end as usize + width,
                        ),
                        label.to_string(),
                        Some(note),
                    ),
                    None => (span, label, None),
                };
                let d = self.error(
                    Code::E100,
                    format!("unexpected character {}", describe_char(c)),
                    span,
                    label,
                );
                match note {
                    Some(note) => d.with_note(note),
                    None => d,
                }
            }
            _ => self.error(
                Code::E101,
                format!("expected {expected}, found {}", describe(tok)),
                span,
                label,
            ),
        };
        let d = match self.nested_comment_before(start) {
            Some(comment) => d
                .with_secondary(self.file, comment, "this comment ends at the first `*/`")
                .with_note("block comments do not nest: the inner `/*` is part of the comment, and its `*/` ends it"),
            None => d,
        };
        match tok {
            Tok::Punct("*") if end.starts_with('/') => d.with_note(
                "this `*/` closes no comment: block comments do not nest, the first `*/` ends them",
            ),
            _ => d,
        }
    }
}

/// Adds "did you mean" with `alias` (what another spelling is known to mean) or the closest
/// candidate; when there is neither, adds `list`, the note naming every valid choice.
pub(super) fn did_you_mean<'c>(
    d: Diagnostic,
    wrong: &str,
    alias: Option<&str>,
    candidates: impl IntoIterator<Item = &'c str>,
    list: &str,
) -> Diagnostic {
    match alias.or_else(|| crate::lang::suggest::closest(wrong, candidates)) {
        Some(best) => d.with_note(format!("did you mean `{best}`?")),
        None => d.with_note(list),
    }
}

/// How a token is named in "found ...".
pub(super) fn describe(tok: Tok<'_>) -> String {
    match tok {
        Tok::Word(w) if is_reserved(w) => format!("keyword `{w}`"),
        Tok::Word(w) | Tok::Number(w) => format!("`{}`", shorten(w)),
        Tok::Str => "a string".to_string(),
        Tok::Time => "a timestamp".to_string(),
        Tok::Punct(p) => format!("`{p}`"),
        Tok::Other(c) => describe_char(c),
        Tok::Eof => "end of file".to_string(),
    }
}

/// At most 40 characters of a word, for messages.
fn shorten(w: &str) -> String {
    if w.chars().count() <= 40 {
        w.to_string()
    } else {
        format!("{}…", w.chars().take(40).collect::<String>())
    }
}

/// What a stray character was probably meant to be: how many more bytes after it belong to
/// the mistake (`&&`), a label and a hint.
fn stray_char(c: char, after: &str) -> Option<(usize, &'static str, &'static str)> {
    Some(match c {
        '&' => (
            usize::from(after.starts_with('&')),
            "not an operator",
            "use `and` to combine conditions",
        ),
        '!' => (
            0,
            "not an operator",
            "use `not` to negate a condition, `!=` to compare",
        ),
        ';' => (
            0,
            "not needed",
            "clauses and fields end without `;`; remove it",
        ),
        '\'' => (
            0,
            "not a quote",
            "strings are written in double quotes: \"text\"",
        ),
        '#' => (0, "not a comment", "comments start with `//`"),
        '[' | ']' => (0, "not allowed here", "tern has no lists or indexing"),
        '$' => (0, "not allowed here", "names are written without `$`"),
        '`' => (0, "not allowed here", "names are written without backticks"),
        _ if !c.is_ascii() && c.is_alphabetic() => (
            0,
            "not allowed in a name",
            "names are made of ASCII letters, digits and `_`",
        ),
        _ if c.is_whitespace() || c == '\u{feff}' => (
            0,
            "invisible character",
            "only spaces, tabs and newlines separate tokens; delete this character",
        ),
        _ => return None,
    })
}
