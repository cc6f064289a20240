//! One diagnostic type for every stage: what went wrong, where, and how to fix it.

use serde::Serialize;

use super::codes::Code;
use super::span::Span;

/// Index of a source file in a [`crate::lang::source::Sources`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Default)]
pub struct FileId(pub usize);

/// Error or warning.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// The file is rejected.
    Error,
    /// The file is accepted, but something is probably wrong.
    Warning,
}

/// A span in a file with a message.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Label {
    /// The file the span is in.
    pub file: FileId,
    /// The spanned text.
    pub span: Span,
    /// Says what is wrong here (primary) or why (secondary).
    pub message: String,
    /// The first primary label is where the diagnostic is reported.
    pub primary: bool,
}

/// A message for a rule author, with a stable code, labelled spans and hints.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Diagnostic {
    /// Error or warning.
    pub level: Level,
    /// Stable code from the registry.
    pub code: Code,
    /// Lowercase headline without a trailing period.
    pub message: String,
    /// Labelled spans; the first primary one is the location.
    pub labels: Vec<Label>,
    /// Hints: how to fix it, "did you mean".
    pub notes: Vec<String>,
}

impl Diagnostic {
    /// An error at `span` in `file`, with `label` under the span.
    pub fn error(
        code: Code,
        message: impl Into<String>,
        file: FileId,
        span: Span,
        label: impl Into<String>,
    ) -> Diagnostic {
        Diagnostic {
            level: Level::Error,
            code,
            message: message.into(),
            labels: vec![Label {
                file,
                span,
                message: label.into(),
                primary: true,
            }],
            notes: Vec::new(),
        }
    }

    /// A warning at `span` in `file`.
    pub fn warning(
        code: Code,
        message: impl Into<String>,
        file: FileId,
        span: Span,
        label: impl Into<String>,
    ) -> Diagnostic {
        Diagnostic {
            level: Level::Warning,
            ..Diagnostic::error(code, message, file, span, label)
        }
    }

    /// Adds a secondary label: context for the primary one.
    pub fn with_secondary(
        mut self,
        file: FileId,
        span: Span,
        message: impl Into<String>,
    ) -> Diagnostic {
        self.labels.push(Label {
            file,
            span,
            message: message.into(),
            primary: false,
        });
        self
    }

    /// Adds a hint.
    pub fn with_note(mut self, note: impl Into<String>) -> Diagnostic {
        self.notes.push(note.into());
        self
    }

    /// Adds `did you mean "x"?` when a close candidate exists.
    pub fn with_suggestion<'a>(
        self,
        wrong: &str,
        candidates: impl IntoIterator<Item = &'a str>,
    ) -> Diagnostic {
        match super::suggest::closest(wrong, candidates) {
            Some(best) => self.with_note(format!("did you mean `{best}`?")),
            None => self,
        }
    }

    /// The primary label (every diagnostic has one).
    pub fn primary(&self) -> Option<&Label> {
        self.labels.iter().find(|l| l.primary)
    }

    /// True for errors.
    pub fn is_error(&self) -> bool {
        self.level == Level::Error
    }
}
