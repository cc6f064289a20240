//! The stdout sink: one readable line per alert (coloured on a terminal), or its JSON.

use std::io::{IsTerminal, Write};
use std::sync::Arc;

use serde_json::Value as Json;
use tokio_util::sync::CancellationToken;

use super::{AlertKind, Deliver, DeliverFuture, OutAlert, Outcome};
use crate::compile::hir::Severity;
use crate::config::StdoutFormat;
use crate::engine::alert::rfc3339;

/// Writes each alert to stdout.
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

impl Deliver for StdoutSink {
    fn batch_limit(&self) -> usize {
        256
    }

    fn deliver<'a>(
        &'a mut self,
        batch: &'a [Arc<OutAlert>],
        _stop: &'a CancellationToken,
    ) -> DeliverFuture<'a> {
        Box::pin(async move {
            let mut text = String::new();
            for a in batch {
                match self.format {
                    StdoutFormat::Text => text.push_str(&format_text(a, self.color)),
                    StdoutFormat::Json => text.push_str(&a.json),
                }
                text.push('\n');
            }
            // One write under the lock, so lines never interleave with other output.
            let mut out = std::io::stdout().lock();
            // A closed stdout (a pipe whose reader left) cannot be retried into working.
            let written = out
                .write_all(text.as_bytes())
                .and_then(|()| out.flush())
                .map_err(|e| format!("cannot write to stdout: {e}"));
            Outcome::all(batch.len(), written)
        })
    }
}

/// An alert as one readable line: event time, severity, alert name, key, then the emit
/// clause's fields; coloured with ANSI escapes when `color`.
pub fn format_text(alert: &OutAlert, color: bool) -> String {
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
    let parsed = alert.parsed();
    let mut line = String::new();
    line.push_str(&paint("2", &rfc3339(alert.event_time)));
    line.push(' ');
    line.push_str(&paint(
        severity_colour,
        &format!("{:<8}", alert.severity.as_str().to_uppercase()),
    ));
    line.push(' ');
    line.push_str(&paint("1", &alert.name));
    if alert.kind == AlertKind::Timeout {
        line.push_str(" (timeout)");
    }
    match &parsed["key"] {
        Json::Null => {}
        Json::Object(m) => {
            for (k, v) in m {
                line.push_str(&format!(" {k}={}", plain(v)));
            }
        }
        k => line.push_str(&format!(" {}", plain(k))),
    }
    if let Json::Object(fields) = &parsed["fields"] {
        if !fields.is_empty() {
            line.push(' ');
            line.push_str(&paint("2", "|"));
        }
        for (k, v) in fields {
            line.push_str(&format!(" {k}={}", plain(v)));
        }
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
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::engine::alert::Alert;
    use crate::engine::run::FoundKind;
    use serde_json::json;

    pub(crate) fn alert() -> OutAlert {
        let Json::Object(fields) =
            json!({"avg_speed": 12.333333, "district": "north side", "n": 3})
        else {
            unreachable!()
        };
        let a = Alert {
            id: "abc".into(),
            rule: Arc::from("congestion"),
            name: "congestion".into(),
            kind: FoundKind::Match,
            key: json!("cam-17"),
            severity: Severity::Warning,
            event_time: 1_709_280_030_000_000_000,
            fields,
            events: serde_json::Map::new(),
        };
        OutAlert::new(&a, 0)
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
}
