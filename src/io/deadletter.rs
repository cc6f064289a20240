//! Bad messages: a message that does not become an event is counted per reason, logged at
//! most once per reason per minute, and written with its raw payload to the dead-letter sink
//! (a JSON Lines file, an MQTT topic, or both). Nothing is dropped silently.
//!
//! An alert a sink gave up on (a webhook answering 400, every retry failed) is a dead letter
//! too, with the sink, the attempts and the last response ([`AlertLetter`]).
//!
//! A message's dead letter is also a valid capture line (`topic` and `payload`), so once the cause is
//! fixed the file can be replayed with `tern replay --format capture`.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Map, Value as Json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::engine::alert::rfc3339;
use crate::event::Nanos;
use crate::io::mqtt::Publisher;

/// Why a message did not become an event, beyond [`crate::devices::DecodeError::reason`].
pub mod reason {
    /// No device profile's topic template matches the topic.
    pub const NO_PROFILE: &str = "no_profile";
    /// The event's time is not after its stream's watermark.
    pub const LATE: &str = "late";
}

/// One rejected message.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// Wall-clock time tern received it.
    pub received_at: Nanos,
    /// Stable reason (`invalid_json`, `missing_field`, `late`, `no_profile`, ...).
    pub reason: &'static str,
    /// What exactly was wrong.
    pub message: String,
    /// The MQTT topic.
    pub topic: String,
    /// The raw payload.
    pub payload: Bytes,
    /// The message's retain flag.
    pub retain: bool,
    /// The profile that claimed the topic, if any.
    pub profile: Option<String>,
}

impl DeadLetter {
    /// One JSON line. The payload is text when it is UTF-8 (`payload`), base64 otherwise
    /// (`payload_base64`).
    pub fn to_json(&self) -> String {
        let mut m = Map::new();
        m.insert(
            "received_at".into(),
            Json::String(rfc3339(self.received_at)),
        );
        m.insert("reason".into(), Json::String(self.reason.into()));
        m.insert("error".into(), Json::String(self.message.clone()));
        m.insert("topic".into(), Json::String(self.topic.clone()));
        match std::str::from_utf8(&self.payload) {
            Ok(text) => m.insert("payload".into(), Json::String(text.into())),
            Err(_) => m.insert(
                "payload_base64".into(),
                Json::String(base64::engine::general_purpose::STANDARD.encode(&self.payload)),
            ),
        };
        if self.retain {
            m.insert("retain".into(), Json::Bool(true));
        }
        if let Some(p) = &self.profile {
            m.insert("profile".into(), Json::String(p.clone()));
        }
        Json::Object(m).to_string()
    }
}

/// An alert a sink could not deliver.
#[derive(Debug, Clone)]
pub struct AlertLetter {
    /// Wall-clock time the sink gave up.
    pub failed_at: Nanos,
    /// The sink's name.
    pub sink: String,
    /// Attempts made.
    pub attempts: u32,
    /// The last response or error.
    pub reason: String,
    /// The alert.
    pub alert: std::sync::Arc<crate::delivery::OutAlert>,
}

impl AlertLetter {
    /// One JSON line: `reason` is `undeliverable`, `error` the last response, `alert` the
    /// alert JSON as the sink would have received it.
    pub fn to_json(&self) -> String {
        let mut m = Map::new();
        m.insert("failed_at".into(), Json::String(rfc3339(self.failed_at)));
        m.insert("reason".into(), Json::String("undeliverable".into()));
        m.insert("error".into(), Json::String(self.reason.clone()));
        m.insert("sink".into(), Json::String(self.sink.clone()));
        m.insert("attempts".into(), Json::from(self.attempts));
        m.insert("alert".into(), self.alert.parsed());
        Json::Object(m).to_string()
    }
}

/// What the dead-letter sink writes.
#[derive(Debug)]
pub enum Letter {
    /// A message that did not become an event.
    Message(DeadLetter),
    /// An alert a sink gave up on; the sender, if any, learns when it is written.
    Alert(AlertLetter, Option<tokio::sync::oneshot::Sender<()>>),
}

impl Letter {
    /// The JSON line.
    pub fn to_json(&self) -> String {
        match self {
            Letter::Message(m) => m.to_json(),
            Letter::Alert(a, _) => a.to_json(),
        }
    }
}

/// Counts bad messages per reason and decides when one is worth a log line: the first of a
/// reason, then at most one per reason per `interval`, saying how many were not shown.
#[derive(Debug)]
pub struct BadMessages {
    interval: Nanos,
    counts: BTreeMap<&'static str, u64>,
    /// Per reason: when it was last logged, and how many came since.
    logged: HashMap<&'static str, (Nanos, u64)>,
}

impl Default for BadMessages {
    fn default() -> Self {
        BadMessages::new(Duration::from_secs(60))
    }
}

impl BadMessages {
    /// Logs each reason at most once per `interval`.
    pub fn new(interval: Duration) -> BadMessages {
        BadMessages {
            interval: i64::try_from(interval.as_nanos()).unwrap_or(i64::MAX),
            counts: BTreeMap::new(),
            logged: HashMap::new(),
        }
    }

    /// Counts one bad message at wall time `now`; returns how many of this reason were not
    /// logged since the last log line when this one should be logged, `None` otherwise.
    pub fn record(&mut self, reason: &'static str, now: Nanos) -> Option<u64> {
        *self.counts.entry(reason).or_default() += 1;
        match self.logged.get_mut(reason) {
            None => {
                self.logged.insert(reason, (now, 0));
                Some(0)
            }
            Some((last, suppressed)) => {
                if now.saturating_sub(*last) >= self.interval {
                    let n = *suppressed;
                    *last = now;
                    *suppressed = 0;
                    Some(n)
                } else {
                    *suppressed += 1;
                    None
                }
            }
        }
    }

    /// Counts one bad message and logs it when [`BadMessages::record`] says so.
    pub fn report(&mut self, letter: &DeadLetter) {
        if let Some(suppressed) = self.record(letter.reason, letter.received_at) {
            tracing::warn!(
                reason = letter.reason,
                topic = %letter.topic,
                error = %letter.message,
                not_logged_since = suppressed,
                "bad message dead-lettered (logged at most once a minute per reason)"
            );
        }
    }

    /// Count per reason so far.
    pub fn counts(&self) -> &BTreeMap<&'static str, u64> {
        &self.counts
    }

    /// Total over every reason.
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }
}

/// What the dead-letter sink wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DeadLetterReport {
    /// Lines written to the file.
    pub written: u64,
    /// Messages published to the topic.
    pub published: u64,
    /// Letters that could not be written or published.
    pub failed: u64,
}

/// Where dead letters go: a file, a topic (through a [`Publisher`]), both, or neither (then
/// they are only counted and logged).
pub struct DeadLetterSink {
    file: Option<std::fs::File>,
    topic: Option<(Publisher, String)>,
}

impl DeadLetterSink {
    /// A sink appending to `file` (opened now, so a path that cannot be written fails at
    /// startup) and publishing to `topic`.
    pub fn new(
        file: Option<&std::path::Path>,
        topic: Option<(Publisher, String)>,
    ) -> anyhow::Result<DeadLetterSink> {
        let file = file.map(crate::delivery::file::open_append).transpose()?;
        Ok(DeadLetterSink { file, topic })
    }

    /// Writes every letter until `letters` closes. On `shutdown`, publishes still waiting
    /// for the broker are given a few seconds, then counted as failed; the file gets every
    /// letter.
    pub async fn run(
        self,
        mut letters: mpsc::Receiver<Letter>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<DeadLetterReport> {
        let mut file = self
            .file
            .map(|f| std::io::BufWriter::with_capacity(1 << 16, f));
        let mut report = DeadLetterReport::default();
        while let Some(letter) = letters.recv().await {
            let mut batch = vec![letter];
            while let Ok(l) = letters.try_recv() {
                batch.push(l);
                if batch.len() >= 1024 {
                    break;
                }
            }
            for letter in &batch {
                let line = letter.to_json();
                if let Some(f) = file.as_mut() {
                    match writeln!(f, "{line}") {
                        Ok(()) => report.written += 1,
                        Err(e) => {
                            report.failed += 1;
                            tracing::error!(error = %e, "cannot write a dead letter");
                        }
                    }
                }
                if let Some((publisher, topic)) = &self.topic {
                    let wait = if shutdown.is_cancelled() {
                        Duration::from_secs(2)
                    } else {
                        Duration::MAX
                    };
                    match publisher.publish(topic, line.into_bytes(), wait).await {
                        Ok(()) => report.published += 1,
                        Err(e) => {
                            report.failed += 1;
                            tracing::error!(error = %e, "cannot publish a dead letter");
                        }
                    }
                }
            }
            if let Some(f) = file.as_mut()
                && let Err(e) = f.flush().and_then(|()| {
                    // An alert's dead letter replaces its place in the outbox: make it as
                    // durable as the outbox was before telling the dispatcher.
                    if batch.iter().any(|l| matches!(l, Letter::Alert(..))) {
                        f.get_ref().sync_data()
                    } else {
                        Ok(())
                    }
                })
            {
                tracing::error!(error = %e, "cannot write dead letters");
            }
            for letter in batch {
                if let Letter::Alert(_, Some(written)) = letter {
                    let _ = written.send(());
                }
            }
        }
        if let Some(mut f) = file {
            f.flush()
                .and_then(|()| f.get_ref().sync_data())
                .context("cannot flush the dead-letter file")?;
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn letter(payload: &[u8]) -> DeadLetter {
        DeadLetter {
            received_at: 0,
            reason: "invalid_json",
            message: "payload is not valid JSON".into(),
            topic: "devices/d1/heartbeat".into(),
            payload: Bytes::copy_from_slice(payload),
            retain: false,
            profile: Some("heartbeat".into()),
        }
    }

    #[test]
    fn payload_is_text_or_base64() {
        let text: Json = serde_json::from_str(&letter(b"{oops").to_json()).unwrap();
        assert_eq!(text["payload"], "{oops");
        assert_eq!(text["reason"], "invalid_json");
        assert_eq!(text["received_at"], "1970-01-01T00:00:00Z");
        let bin: Json = serde_json::from_str(&letter(&[0xff, 0x00, 0x41]).to_json()).unwrap();
        assert_eq!(bin["payload_base64"], "/wBB");
        assert!(bin.get("payload").is_none());
    }

    #[test]
    fn logs_once_per_reason_per_interval() {
        let mut bad = BadMessages::new(Duration::from_secs(60));
        let s = 1_000_000_000;
        assert_eq!(bad.record("late", 0), Some(0));
        assert_eq!(bad.record("late", 10 * s), None);
        assert_eq!(bad.record("invalid_json", 10 * s), Some(0));
        assert_eq!(bad.record("late", 59 * s), None);
        assert_eq!(bad.record("late", 60 * s), Some(2));
        assert_eq!(bad.record("late", 61 * s), None);
        assert_eq!(bad.counts()["late"], 5);
        assert_eq!(bad.total(), 6);
    }
}
