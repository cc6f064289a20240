//! Alert sinks: where alerts go once the engine has emitted them.
//!
//! Each sink is a task fed by its own bounded channel ([`AlertSink::run`]). The pipeline sends
//! every alert to the sinks its rule names; a slow sink fills its channel and so slows the
//! engine down, and with it the MQTT source: back-pressure, never a dropped alert. A sink
//! stops when its channel closes (the pipeline has drained) after flushing what it holds.
//!
//! Here: `stdout` (one readable line, colour on a terminal, or JSON) and `file` (JSON Lines).
//! Webhook, MQTT and InfluxDB sinks implement the same trait.

use std::future::Future;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::Context as _;
use serde_json::Value as Json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::compile::hir::Severity;
use crate::config::{SinkConfig, SinkKind, StdoutFormat};
use crate::engine::alert::{Alert, rfc3339};
use crate::engine::run::FoundKind;
use crate::event::Nanos;

/// An alert as every sink receives it: built once, shared by all of them, so each sink sees
/// the same `emitted_at` and the same JSON.
#[derive(Debug)]
pub struct Emitted {
    /// The alert.
    pub alert: Alert,
    /// Wall-clock time it left the engine.
    pub emitted_at: Nanos,
    /// The alert JSON (product.md section 7), with `emitted_at`.
    pub json: String,
}

impl Emitted {
    /// Wraps an alert stamped with `emitted_at`.
    pub fn new(alert: Alert, emitted_at: Nanos) -> Emitted {
        let json = alert.to_json(Some(emitted_at));
        Emitted {
            alert,
            emitted_at,
            json,
        }
    }
}

/// What a sink did before it stopped.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SinkReport {
    /// Alerts delivered.
    pub delivered: u64,
    /// Alerts that could not be delivered.
    pub failed: u64,
}

/// The future a sink runs as.
pub type SinkFuture = Pin<Box<dyn Future<Output = anyhow::Result<SinkReport>> + Send>>;

/// A destination for alerts.
pub trait AlertSink: Send {
    /// Delivers every alert received on `alerts` until the channel closes, then flushes and
    /// returns. `shutdown` tells a sink that retries (webhook, MQTT) to stop waiting and keep
    /// what it could not deliver for the next start; sinks that cannot fail ignore it.
    fn run(
        self: Box<Self>,
        alerts: mpsc::Receiver<Arc<Emitted>>,
        shutdown: CancellationToken,
    ) -> SinkFuture;
}

/// Builds the sink a config table describes (opening its file, so that a path that cannot be
/// written fails at startup); `None` for types whose delivery this build does not have yet
/// (webhook, MQTT, InfluxDB).
pub fn build(config: &SinkConfig) -> anyhow::Result<Option<Box<dyn AlertSink>>> {
    Ok(match &config.kind {
        SinkKind::Stdout { format } => Some(Box::new(StdoutSink::new(*format))),
        SinkKind::File { path } => Some(Box::new(FileSink::open(path.clone())?)),
        SinkKind::Webhook(_) | SinkKind::Mqtt(_) | SinkKind::Influx(_) => None,
    })
}

/// Writes each alert to stdout: a readable line (coloured on a terminal) or its JSON.
#[derive(Debug, Clone)]
pub struct StdoutSink {
    format: StdoutFormat,
    color: bool,
}

impl StdoutSink {
    /// A stdout sink; colour when stdout is a terminal.
    pub fn new(format: StdoutFormat) -> StdoutSink {
        StdoutSink {
            format,
            color: std::io::stdout().is_terminal(),
        }
    }
}

impl AlertSink for StdoutSink {
    fn run(
        self: Box<Self>,
        mut alerts: mpsc::Receiver<Arc<Emitted>>,
        _shutdown: CancellationToken,
    ) -> SinkFuture {
        Box::pin(async move {
            let mut report = SinkReport::default();
            while let Some(e) = alerts.recv().await {
                let line = match self.format {
                    StdoutFormat::Text => format_text(&e.alert, self.color),
                    StdoutFormat::Json => e.json.clone(),
                };
                // One write per line under the lock, so lines never interleave with logs
                // written to stdout by others.
                let mut out = std::io::stdout().lock();
                match writeln!(out, "{line}").and_then(|()| out.flush()) {
                    Ok(()) => report.delivered += 1,
                    Err(e) => {
                        report.failed += 1;
                        tracing::error!(error = %e, "cannot write an alert to stdout");
                    }
                }
            }
            Ok(report)
        })
    }
}

/// Appends each alert's JSON as one line to a file, flushing whenever no more alerts are
/// waiting.
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
pub fn open_append(path: &std::path::Path) -> anyhow::Result<std::fs::File> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))
}

impl AlertSink for FileSink {
    fn run(
        self: Box<Self>,
        mut alerts: mpsc::Receiver<Arc<Emitted>>,
        _shutdown: CancellationToken,
    ) -> SinkFuture {
        Box::pin(async move {
            let FileSink { path, file } = *self;
            let mut out = std::io::BufWriter::with_capacity(1 << 16, file);
            let mut report = SinkReport::default();
            let mut unflushed = 0u64;
            while let Some(e) = alerts.recv().await {
                let mut batch = vec![e];
                while let Ok(e) = alerts.try_recv() {
                    batch.push(e);
                    if batch.len() >= 1024 {
                        break;
                    }
                }
                for e in &batch {
                    match writeln!(out, "{}", e.json) {
                        Ok(()) => unflushed += 1,
                        Err(err) => {
                            report.failed += 1;
                            tracing::error!(path = %path.display(), error = %err, "cannot write an alert");
                        }
                    }
                }
                match out.flush() {
                    Ok(()) => report.delivered += unflushed,
                    Err(err) => {
                        report.failed += unflushed;
                        tracing::error!(path = %path.display(), error = %err, "cannot write alerts");
                    }
                }
                unflushed = 0;
            }
            out.flush()
                .and_then(|()| out.get_ref().sync_data())
                .with_context(|| format!("cannot flush {}", path.display()))?;
            Ok(report)
        })
    }
}

/// An alert as one readable line: event time, severity, alert name, key, then the emit
/// clause's fields; coloured with ANSI escapes when `color`.
pub fn format_text(alert: &Alert, color: bool) -> String {
    let paint = |code: &str, text: &str| {
        if color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    };
    let severity_colour = match alert.severity {
        Severity::Critical => "1;31",
        Severity::Error => "31",
        Severity::Warning => "33",
        Severity::Info => "36",
    };
    let mut line = String::new();
    line.push_str(&paint("2", &rfc3339(alert.event_time)));
    line.push(' ');
    line.push_str(&paint(
        severity_colour,
        &format!("{:<8}", alert.severity.as_str().to_uppercase()),
    ));
    line.push(' ');
    line.push_str(&paint("1", &alert.name));
    if alert.kind == FoundKind::Timeout {
        line.push_str(" (timeout)");
    }
    match &alert.key {
        Json::Null => {}
        Json::Object(m) => {
            for (k, v) in m {
                line.push_str(&format!(" {k}={}", plain(v)));
            }
        }
        k => line.push_str(&format!(" {}", plain(k))),
    }
    if !alert.fields.is_empty() {
        line.push(' ');
        line.push_str(&paint("2", "|"));
    }
    for (k, v) in &alert.fields {
        line.push_str(&format!(" {k}={}", plain(v)));
    }
    line
}

/// A JSON value for people: strings bare unless they need quotes, floats rounded.
fn plain(v: &Json) -> String {
    match v {
        Json::String(s) if !s.is_empty() && !s.contains([' ', '=', '"']) => s.clone(),
        Json::Number(n) => match n.as_f64() {
            Some(f) if !(n.is_i64() || n.is_u64()) => {
                let s = format!("{f:.3}");
                s.trim_end_matches('0').trim_end_matches('.').to_owned()
            }
            _ => n.to_string(),
        },
        Json::Null => "-".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use serde_json::json;

    fn alert() -> Alert {
        let Json::Object(fields) =
            json!({"avg_speed": 12.333333, "district": "north side", "n": 3})
        else {
            unreachable!()
        };
        Alert {
            id: "abc".into(),
            rule: Arc::from("congestion"),
            name: "congestion".into(),
            kind: FoundKind::Match,
            key: json!("cam-17"),
            severity: Severity::Warning,
            event_time: 1_709_280_030_000_000_000,
            fields,
            events: serde_json::Map::new(),
        }
    }

    #[test]
    fn text_line_is_readable() {
        assert_eq!(
            format_text(&alert(), false),
            "2024-03-01T08:00:30Z WARNING  congestion cam-17 | avg_speed=12.333 district=\"north side\" n=3"
        );
        let coloured = format_text(&alert(), true);
        assert!(coloured.contains("\x1b[33mWARNING "), "{coloured:?}");
    }

    #[tokio::test]
    async fn file_sink_appends_json_lines_and_flushes_on_close() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out/alerts.jsonl");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "{\"earlier\":true}\n").unwrap();
        let (tx, rx) = mpsc::channel(4);
        let task = tokio::spawn(
            Box::new(FileSink::open(path.clone()).unwrap()).run(rx, CancellationToken::new()),
        );
        for t in 0..3 {
            tx.send(Arc::new(Emitted::new(alert(), t))).await.unwrap();
        }
        drop(tx);
        let report = task.await.unwrap().unwrap();
        assert_eq!(
            report,
            SinkReport {
                delivered: 3,
                failed: 0
            }
        );
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        let last: Json = serde_json::from_str(lines[3]).unwrap();
        assert_eq!(last["emitted_at"], "1970-01-01T00:00:00.000000002Z");
        assert_eq!(last["rule"], "congestion");
    }
}
