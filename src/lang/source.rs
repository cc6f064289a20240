//! The set of source files a run has read, so diagnostics can show their lines.

use std::path::{Path, PathBuf};

use super::diagnostic::FileId;
use super::span::line_col;

/// One source file: its display name and text.
#[derive(Clone, Debug)]
pub struct Source {
    /// Path as the user gave it (shown in diagnostics).
    pub name: String,
    /// Where it was read from; `None` for text that came from elsewhere (tests, stdin).
    pub path: Option<PathBuf>,
    /// The whole text.
    pub text: String,
}

/// Every file read so far, indexed by [`FileId`].
#[derive(Clone, Debug, Default)]
pub struct Sources {
    files: Vec<Source>,
}

impl Sources {
    /// An empty set.
    pub fn new() -> Sources {
        Sources::default()
    }

    /// Adds text under a display name.
    pub fn add(&mut self, name: impl Into<String>, text: impl Into<String>) -> FileId {
        self.files.push(Source {
            name: name.into(),
            path: None,
            text: text.into(),
        });
        FileId(self.files.len() - 1)
    }

    /// Reads a file and adds it.
    pub fn read(&mut self, path: &Path) -> std::io::Result<FileId> {
        let text = std::fs::read_to_string(path)?;
        let id = self.add(path.display().to_string(), text);
        if let Some(src) = self.files.last_mut() {
            src.path = Some(path.to_path_buf());
        }
        Ok(id)
    }

    /// The file with this id.
    pub fn get(&self, id: FileId) -> Option<&Source> {
        self.files.get(id.0)
    }

    /// Display name of a file ("<unknown>" for a bad id).
    pub fn name(&self, id: FileId) -> &str {
        self.get(id).map_or("<unknown>", |s| s.name.as_str())
    }

    /// Text of a file ("" for a bad id).
    pub fn text(&self, id: FileId) -> &str {
        self.get(id).map_or("", |s| s.text.as_str())
    }

    /// 1-based line and column of a byte offset.
    pub fn line_col(&self, id: FileId, offset: usize) -> (usize, usize) {
        line_col(self.text(id), offset)
    }

    /// Every file with its id.
    pub fn iter(&self) -> impl Iterator<Item = (FileId, &Source)> {
        self.files.iter().enumerate().map(|(i, s)| (FileId(i), s))
    }
}
