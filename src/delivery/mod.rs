//! Alert delivery: from the durable outbox to every configured sink.
//!
//! ```text
//! engine thread --(one RocksDB write per batch: state + alerts)--> outbox
//!                                                                    |
//!                      one dispatcher task per sink, each with its own cursor
//!                      /            |             |            \
//!                   stdout        file        webhook     mqtt / influx
//! ```
//!
//! An alert enters the outbox in the same write as the state change that produced it, so it
//! survives any crash after that write. Each sink then reads the outbox at its own pace from
//! its own persisted cursor: a slow or dead sink holds back only itself. A sink is handed
//! alerts in outbox order (so in order per key) and answers each with an [`Outcome`]; one that
//! is rejected for good goes to the dead-letter sink with the last response. An entry leaves
//! the outbox once every sink has passed it.
//!
//! Sinks retry inside [`Deliver::deliver`] because what a retry is differs: a webhook retries
//! one request and honours `Retry-After`, InfluxDB retries the same rendered batch, MQTT waits
//! for the broker's PUBACK.

pub mod dispatch;
pub mod file;
pub mod influx;
pub mod mqtt;
pub mod receiver;
pub mod retry;
pub mod signing;
pub mod stdout;
pub mod webhook;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value as Json;
use tokio_util::sync::CancellationToken;

use crate::compile::hir::Severity;
use crate::engine::alert::Alert;
use crate::engine::run::FoundKind;
use crate::event::Nanos;

/// Why an alert was raised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertKind {
    /// A completed match.
    Match,
    /// A partial match whose time ran out.
    Timeout,
}

impl AlertKind {
    /// The word used in the alert JSON and in sink filters.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::Match => "match",
            AlertKind::Timeout => "timeout",
        }
    }
}

impl From<FoundKind> for AlertKind {
    fn from(k: FoundKind) -> AlertKind {
        match k {
            FoundKind::Match => AlertKind::Match,
            FoundKind::Timeout => AlertKind::Timeout,
        }
    }
}

/// An alert as the outbox stores it and every sink receives it. The JSON is rendered once,
/// when the alert enters the outbox, so every sink and every retry sends the same bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutAlert {
    /// Stable alert id (the `webhook-id`).
    pub id: String,
    /// Rule name.
    pub rule: String,
    /// Alert name from the emit clause.
    pub name: String,
    /// Match or timeout.
    pub kind: AlertKind,
    /// Severity.
    pub severity: Severity,
    /// The key as text: the value of a one-field key, `a=1,b=2` for several fields, empty for
    /// a keyless rule. For topic templates and tags.
    pub key_text: String,
    /// Time of the completing event, or the deadline that passed.
    pub event_time: Nanos,
    /// Wall-clock time the alert entered the outbox.
    pub emitted_at: Nanos,
    /// The alert JSON (product.md section 7), with `emitted_at`.
    pub json: String,
}

impl OutAlert {
    /// The outbox form of `alert`, stamped with `emitted_at`.
    pub fn new(alert: &Alert, emitted_at: Nanos) -> OutAlert {
        OutAlert {
            id: alert.id.clone(),
            rule: alert.rule.to_string(),
            name: alert.name.clone(),
            kind: alert.kind.into(),
            severity: alert.severity,
            key_text: key_text(&alert.key),
            event_time: alert.event_time,
            emitted_at,
            json: alert.to_json(Some(emitted_at)),
        }
    }

    /// The alert JSON parsed (for sinks that take it apart: text lines, InfluxDB fields).
    pub fn parsed(&self) -> Json {
        serde_json::from_str(&self.json).unwrap_or(Json::Null)
    }
}

/// A key as text (see [`OutAlert::key_text`]).
pub fn key_text(key: &Json) -> String {
    fn one(v: &Json) -> String {
        match v {
            Json::String(s) => s.clone(),
            Json::Null => String::new(),
            other => other.to_string(),
        }
    }
    match key {
        Json::Object(m) => m
            .iter()
            .map(|(k, v)| format!("{k}={}", one(v)))
            .collect::<Vec<_>>()
            .join(","),
        other => one(other),
    }
}

/// What became of one alert handed to a sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The destination has it.
    Delivered,
    /// The destination refused it for good (a 4xx other than 408/429), or every attempt
    /// failed: it goes to the dead-letter sink with `reason`.
    Failed {
        /// The last response or error, for the dead letter and the log.
        reason: String,
        /// Attempts made.
        attempts: u32,
    },
}

impl Outcome {
    /// The same outcome for `n` alerts written together (a file, stdout): all delivered, or
    /// all failed with `error` after one attempt.
    pub fn all(n: usize, written: Result<(), String>) -> Vec<Outcome> {
        match written {
            Ok(()) => vec![Outcome::Delivered; n],
            Err(reason) => vec![
                Outcome::Failed {
                    reason,
                    attempts: 1,
                };
                n
            ],
        }
    }
}

/// The future [`Deliver::deliver`] returns.
pub type DeliverFuture<'a> = Pin<Box<dyn Future<Output = Vec<Outcome>> + Send + 'a>>;

/// A destination for alerts, driven by its dispatcher.
pub trait Deliver: Send {
    /// The most alerts handed over in one call (1 for one request per alert).
    fn batch_limit(&self) -> usize {
        1
    }

    /// Delivers `batch` in order, retrying as the sink is configured to, and returns one
    /// outcome per alert, in order. It returns fewer outcomes than alerts only when `stop` is
    /// cancelled while it waits to retry: the alerts without an outcome stay in the outbox
    /// and are handed over again on the next start.
    fn deliver<'a>(
        &'a mut self,
        batch: &'a [Arc<OutAlert>],
        stop: &'a CancellationToken,
    ) -> DeliverFuture<'a>;

    /// Attempts after the first made so far, over every alert (for the metrics: the
    /// dispatcher reads it after each `deliver`). Sinks that do not retry keep the default.
    fn retries(&self) -> u64 {
        0
    }

    /// Called once when the dispatcher stops, after the last `deliver` (flush files, close
    /// connections).
    fn close(&mut self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async {})
    }
}

/// What building a network sink may need besides its own table.
pub struct BuildContext<'a> {
    /// The broker MQTT sinks publish to.
    pub broker: &'a crate::config::BrokerConfig,
    /// The broker password, if any.
    pub password: Option<&'a secrecy::SecretString>,
}

/// Builds the sink a config table describes. Files are opened and secrets read now, so a
/// path that cannot be written or a missing secret fails at startup.
pub fn build(
    config: &crate::config::SinkConfig,
    ctx: &BuildContext<'_>,
) -> anyhow::Result<Box<dyn Deliver>> {
    use crate::config::SinkKind;
    Ok(match &config.kind {
        SinkKind::Stdout { format } => Box::new(stdout::StdoutSink::new(*format)),
        SinkKind::File { path } => Box::new(file::FileSink::open(path.clone())?),
        SinkKind::Webhook(w) => Box::new(webhook::WebhookSink::new(&config.name, w)?),
        SinkKind::Influx(i) => Box::new(influx::InfluxSink::new(&config.name, i)?),
        SinkKind::Mqtt(m) => Box::new(mqtt::MqttSink::start(
            &config.name,
            m,
            ctx.broker,
            ctx.password,
        )?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_text_forms() {
        assert_eq!(key_text(&json!("cam-17")), "cam-17");
        assert_eq!(key_text(&json!(42)), "42");
        assert_eq!(key_text(&json!(null)), "");
        assert_eq!(
            key_text(&json!({"line": "L1", "station": 3})),
            "line=L1,station=3"
        );
    }
}
