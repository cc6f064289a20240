//! The file sink: each alert's JSON as one line, appended; flushed and synced before the
//! dispatcher moves past the alerts, so a line in the file is never lost to a crash.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use super::{Deliver, DeliverFuture, OutAlert, Outcome};

/// Appends alerts to a JSON Lines file.
#[derive(Debug)]
pub struct FileSink {
    path: PathBuf,
    file: std::fs::File,
}

impl FileSink {
    /// Opens `path` for appending (creating it and its directory if missing).
    pub fn open(path: PathBuf) -> anyhow::Result<FileSink> {
        let file = open_append(&path)?;
        Ok(FileSink { path, file })
    }
}

/// Opens a file for appending, creating it and its directory.
pub fn open_append(path: &Path) -> anyhow::Result<std::fs::File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))
}

impl Deliver for FileSink {
    fn batch_limit(&self) -> usize {
        1024
    }

    fn deliver<'a>(
        &'a mut self,
        batch: &'a [Arc<OutAlert>],
        _stop: &'a CancellationToken,
    ) -> DeliverFuture<'a> {
        Box::pin(async move {
            let mut text = String::with_capacity(batch.iter().map(|a| a.json.len() + 1).sum());
            for a in batch {
                text.push_str(&a.json);
                text.push('\n');
            }
            // One write of whole lines, then sync: the cursor moves on only after this.
            let written = self
                .file
                .write_all(text.as_bytes())
                .and_then(|()| self.file.sync_data())
                .map_err(|e| format!("cannot write {}: {e}", self.path.display()));
            Outcome::all(batch.len(), written)
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use serde_json::Value as Json;

    #[tokio::test]
    async fn appends_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out/alerts.jsonl");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "{\"earlier\":true}\n").unwrap();
        let mut sink = FileSink::open(path.clone()).unwrap();
        let a = Arc::new(crate::delivery::stdout::tests::alert());
        let out = sink
            .deliver(&[a.clone(), a.clone(), a], &CancellationToken::new())
            .await;
        assert_eq!(out, vec![Outcome::Delivered; 3]);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        let last: Json = serde_json::from_str(lines[3]).unwrap();
        assert_eq!(last["rule"], "congestion");
        assert_eq!(last["emitted_at"], "1970-01-01T00:00:00Z");
    }
}
