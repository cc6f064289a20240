//! The parser: rule text to [`ast::File`], following `grammar/tern.ebnf` rule by rule.
//!
//! Built from nom 8 combinators over `&str`. Spans are byte offsets computed from what is left
//! of the input (`src.len() - rest.len()`); every token parser skips the whitespace and
//! comments *before* its token, so spans never include them.
//!
//! The parser is predictive: it picks each branch by peeking at the next token, so no
//! construct is parsed twice and the run time stays linear. Nesting (parentheses, groups,
//! prefix operators) is capped at [`MAX_NESTING`] and expression trees at [`MAX_EXPR_DEPTH`],
//! so no input can exhaust the stack, here or in the code that later walks the AST.
//!
//! Mistakes come in two kinds:
//! - a *recoverable* one has an obvious extent and fix (a bad escape, `=` for `==`, a reserved
//!   word used as a name, a duration with an unknown unit): it is recorded and parsing goes
//!   on as if the author had written the fix, so it costs one diagnostic and no more;
//! - any other failure aborts the innermost clause (or stream member, or item): the parser
//!   records it and resynchronises at the next clause keyword inside a rule, or at the next
//!   item keyword at the top level.
//!
//! The items returned include those that recovered from errors, holding what could be read;
//! a file with errors should not be taken further than reporting.
//!
//! Layout: `error` (the nom error type and "expected X, found Y"), `lex` (whitespace, comments,
//! tokens, literals), `expr`, `pattern`, `item` (imports, streams, aggregates, rules).

mod error;
mod expr;
mod item;
mod lex;
mod pattern;

use std::cell::{Cell, RefCell};

use super::ast;
use super::codes::Code;
use super::diagnostic::{Diagnostic, FileId};
use super::span::Span;
use error::PError;

/// How deeply parentheses, groups and prefix operators may nest.
pub const MAX_NESTING: u32 = 64;

/// How deep an expression tree may grow, counting chains of binary operators
/// (`a + b + c` is two levels deep).
pub const MAX_EXPR_DEPTH: u32 = 256;

/// How many diagnostics one file reports at most: past this, the first ones are what
/// matters and the rest is mostly noise that makes output slow to render and to read.
pub const MAX_DIAGNOSTICS: usize = 100;

/// What every parser returns: the rest of the input and a value, or why it failed.
type PResult<'a, T> = nom::IResult<&'a str, T, PError<'a>>;

/// Parses one rule file. Never panics; returns every item it could read and every mistake it
/// found, sorted by position.
pub fn parse(file: FileId, src: &str) -> (ast::File, Vec<Diagnostic>) {
    let cx = Cx::new(file, src);
    let items = cx.parse_file();
    let swallowed = cx.swallowed.get();
    let mut diagnostics = cx.diags.into_inner();
    if swallowed {
        // The closing delimiters are inside the comment or string that ran to the end of
        // the file; that one is reported already.
        diagnostics.retain(|d| {
            d.code != Code::E109
                || d.primary()
                    .is_none_or(|l| (l.span.start as usize) < src.len())
        });
    }
    diagnostics.sort_by_key(|d| d.primary().map(|l| l.span.start));
    diagnostics.dedup();
    if diagnostics.len() > MAX_DIAGNOSTICS {
        let hidden = diagnostics.len() - MAX_DIAGNOSTICS;
        diagnostics.truncate(MAX_DIAGNOSTICS);
        if let Some(last) = diagnostics.pop() {
            diagnostics.push(last.with_note(format!(
                "{hidden} more problems in this file are not shown; fix these first"
            )));
        }
    }
    let trivia = lex::trivia(src);
    (ast::File { items, trivia }, diagnostics)
}

/// Parsing state shared by every parser function: the source, the diagnostics recorded so far
/// and the current nesting depth.
struct Cx<'a> {
    src: &'a str,
    file: FileId,
    diags: RefCell<Vec<Diagnostic>>,
    depth: Cell<u32>,
    /// Set when an unterminated block comment or string swallowed the rest of the file: the
    /// unclosed delimiters that follow from it are not worth a second diagnostic.
    swallowed: Cell<bool>,
    /// Block comments with a `/*` inside: a likely cause of errors right after them.
    nested_comments: RefCell<Vec<Span>>,
    /// End of the last string that ran to the end of its line: a missing `,` or `}` after it
    /// was swallowed by it, and is not reported again.
    unterminated_string_end: Cell<Option<usize>>,
    /// Byte offset where each line starts.
    line_starts: Vec<usize>,
    /// Byte offset of each line's first character that is not a space or tab.
    line_firsts: Vec<usize>,
}

impl<'a> Cx<'a> {
    fn new(file: FileId, src: &'a str) -> Cx<'a> {
        let mut line_starts = vec![0];
        line_starts.extend(src.match_indices('\n').map(|(n, _)| n + 1));
        let line_firsts = line_starts
            .iter()
            .map(|&start| {
                let line = &src[start..];
                start + (line.len() - line.trim_start_matches([' ', '\t', '\r']).len())
            })
            .collect();
        Cx {
            src,
            file,
            diags: RefCell::new(Vec::new()),
            depth: Cell::new(0),
            swallowed: Cell::new(false),
            nested_comments: RefCell::new(Vec::new()),
            unterminated_string_end: Cell::new(None),
            line_starts,
            line_firsts,
        }
    }

    /// True when only spaces and tabs precede `at` on its line.
    fn first_on_line(&self, at: &'a str) -> bool {
        let off = self.off(at);
        let line = self
            .line_starts
            .partition_point(|&s| s <= off)
            .saturating_sub(1);
        self.line_firsts.get(line) == Some(&off)
    }

    /// Byte offset of a suffix of the source.
    fn off(&self, rest: &'a str) -> usize {
        self.src.len().saturating_sub(rest.len())
    }

    /// The span from the start of `from` to the start of `to` (both suffixes of the source).
    fn span(&self, from: &'a str, to: &'a str) -> Span {
        Span::new(self.off(from), self.off(to))
    }

    /// The text of a span (empty if the span is not on char boundaries, which never happens
    /// for spans the parser made).
    fn text(&self, span: Span) -> &'a str {
        self.src.get(span.range()).unwrap_or("")
    }

    /// Records a mistake the parser recovered from.
    fn report(&self, d: Diagnostic) {
        self.diags.borrow_mut().push(d);
    }

    /// An error diagnostic in this file.
    fn error(
        &self,
        code: Code,
        message: impl Into<String>,
        span: Span,
        label: impl Into<String>,
    ) -> Diagnostic {
        Diagnostic::error(code, message, self.file, span, label)
    }

    /// Fails without backtracking, with a finished diagnostic. `at` is where parsing stopped,
    /// which is where recovery starts looking for a place to resume.
    fn fail<T>(&self, at: &'a str, d: Diagnostic) -> PResult<'a, T> {
        Err(nom::Err::Failure(PError::diag(at, d)))
    }

    /// Fails and lets the caller try something else; `what` names what was expected here.
    fn backtrack<T>(&self, at: &'a str, what: &'static str) -> PResult<'a, T> {
        Err(nom::Err::Error(PError::expected(at, what)))
    }

    /// Runs `f` one nesting level deeper, failing at `at` when the limit is reached.
    fn nested<T>(&self, at: &'a str, f: impl FnOnce() -> PResult<'a, T>) -> PResult<'a, T> {
        let depth = self.depth.get();
        if depth >= MAX_NESTING {
            let (start, end) = self.token_bounds(at);
            return self.fail(
                at,
                self.error(
                    Code::E101,
                    "nesting too deep",
                    self.span(start, end),
                    format!("more than {MAX_NESTING} levels of nesting"),
                )
                .with_note("split the expression or pattern into simpler parts"),
            );
        }
        self.depth.set(depth + 1);
        let out = f();
        self.depth.set(depth);
        out
    }

    /// Turns a failure into the diagnostic an author sees.
    fn diagnostic(&self, e: nom::Err<PError<'a>>) -> Diagnostic {
        match e {
            nom::Err::Error(e) | nom::Err::Failure(e) => self.explain(e),
            // Only streaming parsers ask for more input; ours are all complete.
            nom::Err::Incomplete(_) => self.unexpected(&self.src[self.src.len()..], "more input"),
        }
    }

    /// Records a failure and returns where it stopped.
    fn report_failure(&self, e: nom::Err<PError<'a>>) -> &'a str {
        let at = match &e {
            nom::Err::Error(e) | nom::Err::Failure(e) => e.at,
            nom::Err::Incomplete(_) => &self.src[self.src.len()..],
        };
        self.report(self.diagnostic(e));
        at
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn errors(src: &str) -> Vec<(Code, String)> {
        let (_, diags) = parse(FileId(0), src);
        diags
            .into_iter()
            .map(|d| (d.code, d.message))
            .collect::<Vec<_>>()
    }

    #[test]
    fn empty_and_comment_only_files_parse() {
        for src in ["", "  \n\t", "// nothing\n/* at all */", "\u{feff}// bom"] {
            let (file, diags) = parse(FileId(0), src);
            assert!(file.items.is_empty());
            assert!(diags.is_empty(), "{src:?}: {diags:?}");
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let src = format!(
            "rule r {{ match a: s where {}x{} }}",
            "(".repeat(10_000),
            ")".repeat(10_000)
        );
        let errs = errors(&src);
        assert!(
            errs.iter().any(|(_, m)| m == "nesting too deep"),
            "{errs:?}"
        );
    }

    #[test]
    fn long_operator_chains_are_capped() {
        let src = format!("rule r {{ match a: s where x{} }}", " + x".repeat(100_000));
        let errs = errors(&src);
        assert!(
            errs.iter().any(|(_, m)| m == "expression too long"),
            "{errs:?}"
        );
        let ok = format!("rule r {{ match a: s where x{} }}", " + x".repeat(200));
        assert!(errors(&ok).is_empty());
    }

    #[test]
    fn deep_prefix_operators_are_capped() {
        let src = format!("rule r {{ match a: s where {}x }}", "not -".repeat(50_000));
        assert!(!errors(&src).is_empty());
    }

    #[test]
    fn each_bad_clause_gets_its_own_diagnostic() {
        let src = "rule r {\n  from\n  key a,\n  match a: s where\n  within 5\n  skip sideways\n  emit {}\n}\nrule ok { from s }";
        let (file, diags) = parse(FileId(0), src);
        let codes: Vec<_> = diags.iter().map(|d| d.code).collect();
        assert_eq!(
            codes,
            [Code::E101, Code::E101, Code::E101, Code::E106, Code::E115],
            "{diags:#?}"
        );
        assert_eq!(file.items.len(), 2);
    }
}
