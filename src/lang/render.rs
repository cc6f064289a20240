//! Turns diagnostics into text for people (codespan-reporting) or JSON for tools.
//! The only module that knows the rendering crate.

use codespan_reporting::diagnostic::{Diagnostic as CsDiagnostic, Label as CsLabel, LabelStyle};
use codespan_reporting::files::SimpleFiles;
use codespan_reporting::term::{self, Config};
use serde::Serialize;

use super::diagnostic::{Diagnostic, Level};
use super::source::Sources;

fn files(sources: &Sources) -> SimpleFiles<&str, &str> {
    let mut files = SimpleFiles::new();
    for (_, src) in sources.iter() {
        files.add(src.name.as_str(), src.text.as_str());
    }
    files
}

fn convert(d: &Diagnostic) -> CsDiagnostic<usize> {
    let base = match d.level {
        Level::Error => CsDiagnostic::error(),
        Level::Warning => CsDiagnostic::warning(),
    };
    base.with_code(d.code.as_str())
        .with_message(&d.message)
        .with_labels(
            d.labels
                .iter()
                .map(|l| {
                    let style = if l.primary {
                        LabelStyle::Primary
                    } else {
                        LabelStyle::Secondary
                    };
                    CsLabel::new(style, l.file.0, l.span.range()).with_message(&l.message)
                })
                .collect(),
        )
        .with_notes(d.notes.iter().map(|n| format!("help: {n}")).collect())
}

/// Renders diagnostics as plain text, the form golden tests compare.
pub fn to_text(sources: &Sources, diagnostics: &[Diagnostic]) -> String {
    let files = files(sources);
    let config = Config::default();
    let mut out = String::new();
    for d in diagnostics {
        match term::emit_into_string(&config, &files, &convert(d)) {
            Ok(text) => out.push_str(&text),
            // A span outside its file is a bug in tern, but the author must still see the
            // message: fall back to the headline.
            Err(_) => out.push_str(&format!(
                "{}[{}]: {}\n",
                level_word(d.level),
                d.code.as_str(),
                d.message
            )),
        }
    }
    out
}

/// Renders diagnostics to stderr, in colour when stderr is a terminal.
pub fn to_stderr(sources: &Sources, diagnostics: &[Diagnostic], color: bool) {
    use codespan_reporting::term::termcolor::{ColorChoice, StandardStream};
    let choice = if color {
        ColorChoice::Auto
    } else {
        ColorChoice::Never
    };
    let stream = StandardStream::stderr(choice);
    let mut lock = stream.lock();
    let files = files(sources);
    let config = Config::default();
    for d in diagnostics {
        if term::emit_to_write_style(&mut lock, &config, &files, &convert(d)).is_err() {
            eprintln!(
                "{}[{}]: {}",
                level_word(d.level),
                d.code.as_str(),
                d.message
            );
        }
    }
}

fn level_word(level: Level) -> &'static str {
    match level {
        Level::Error => "error",
        Level::Warning => "warning",
    }
}

/// A diagnostic as editors and CI read it (`tern check --format json`).
#[derive(Serialize)]
pub struct JsonDiagnostic<'a> {
    /// File name as shown to the user.
    pub file: &'a str,
    /// 1-based line of the primary span's start.
    pub line: usize,
    /// 1-based column (in characters) of the primary span's start.
    pub column: usize,
    /// 1-based line of the primary span's end.
    pub end_line: usize,
    /// 1-based column of the primary span's end.
    pub end_column: usize,
    /// "error" or "warning".
    pub severity: Level,
    /// Stable code.
    pub code: &'a str,
    /// Headline.
    pub message: &'a str,
    /// Every label with its position.
    pub labels: Vec<JsonLabel<'a>>,
    /// Hints.
    pub notes: &'a [String],
}

/// A label with resolved positions.
#[derive(Serialize)]
pub struct JsonLabel<'a> {
    /// File name.
    pub file: &'a str,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// Byte offsets `[start, end)`.
    pub span: [u32; 2],
    /// The label text.
    pub message: &'a str,
    /// Primary or secondary.
    pub primary: bool,
}

/// Resolves positions for JSON output.
pub fn to_json<'a>(sources: &'a Sources, d: &'a Diagnostic) -> JsonDiagnostic<'a> {
    let (file, start, end) = match d.primary() {
        Some(l) => (l.file, l.span.start as usize, l.span.end as usize),
        None => (Default::default(), 0, 0),
    };
    let (line, column) = sources.line_col(file, start);
    let (end_line, end_column) = sources.line_col(file, end);
    JsonDiagnostic {
        file: sources.name(file),
        line,
        column,
        end_line,
        end_column,
        severity: d.level,
        code: d.code.as_str(),
        message: &d.message,
        labels: d
            .labels
            .iter()
            .map(|l| {
                let (line, column) = sources.line_col(l.file, l.span.start as usize);
                JsonLabel {
                    file: sources.name(l.file),
                    line,
                    column,
                    span: [l.span.start, l.span.end],
                    message: &l.message,
                    primary: l.primary,
                }
            })
            .collect(),
        notes: &d.notes,
    }
}
