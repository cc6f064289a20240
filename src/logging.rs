//! Logs on stderr through `tracing`: readable text on a terminal, one JSON object per line
//! otherwise, and rate-limited so that a flood (a bad device, a sink down, a broker that
//! refuses every connection) cannot drown the rest.
//!
//! The limit is per kind of message: per log statement (its callsite) and the values of its
//! `reason` and `sink` fields when it has them. Each kind may log [`BURST`] lines per
//! [`WINDOW`]; further ones are counted, and once the window is over one line says how many
//! were suppressed (`"suppressed similar log messages"`, with `suppressed`, the level and the
//! first suppressed message). Debug and trace lines are never limited: they are asked for.
//!
//! Bad messages keep their own, stricter limit (one line per reason per minute, saying how
//! many were not logged: [`crate::io::deadletter::BadMessages`]).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::IsTerminal;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tracing::callsite::Identifier;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt as _};
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::{LogFormat, LoggingConfig};

/// Lines of one kind let through per window.
pub const BURST: u32 = 10;

/// The window of the rate limit.
pub const WINDOW: Duration = Duration::from_secs(60);

/// The target of the summary lines (never limited themselves).
const TARGET: &str = "tern::logging";

/// Kinds tracked at most; beyond, new kinds are keyed by their callsite alone.
const MAX_KINDS: usize = 4096;

/// Longest field value that is part of a kind (longer ones are free text, not a reason).
const MAX_KEY_VALUE: usize = 64;

static LIMITER: OnceLock<Arc<RateLimit>> = OnceLock::new();

/// Sets up logging on stderr (stdout is for alerts): readable on a terminal, JSON otherwise,
/// unless the configuration says which; rate-limited as the module docs say. `TERN_LOG`
/// overrides the configured level. Does nothing if a subscriber is already installed (a
/// caller that set up its own).
pub fn init(config: &LoggingConfig) {
    let mut level = std::env::var("TERN_LOG").unwrap_or_else(|_| config.level.clone());
    if !level.contains("rumqtt") {
        // The client library is chatty at info, and the embedded broker logs every client
        // that disconnects as an error; `TERN_LOG=info,rumqttd=warn` shows them.
        level.push_str(",rumqttd=off,rumqttc=warn");
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = match config.format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let limiter = Arc::new(RateLimit::new(BURST, WINDOW));
    let base = tracing_subscriber::registry()
        .with(filter)
        .with(RateLimitLayer(Arc::clone(&limiter)));
    let installed = if json {
        base.with(
            tracing_subscriber::fmt::layer()
                .json()
                .with_current_span(false)
                .with_writer(std::io::stderr),
        )
        .try_init()
    } else {
        base.with(
            tracing_subscriber::fmt::layer()
                .with_ansi(std::io::stderr().is_terminal())
                .with_writer(std::io::stderr),
        )
        .try_init()
    };
    if installed.is_ok() && LIMITER.set(Arc::clone(&limiter)).is_ok() {
        // Summaries of windows that ended are written every few seconds, so the count of a
        // flood that stopped is not lost.
        let _ = std::thread::Builder::new()
            .name("tern-log-flush".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_secs(5));
                    emit(limiter.flush(Instant::now(), false));
                }
            });
    }
}

/// Writes the summaries of every window with suppressed lines, ended or not (at exit).
pub fn flush() {
    if let Some(limiter) = LIMITER.get() {
        emit(limiter.flush(Instant::now(), true));
    }
}

/// A [`Layer`] that drops the lines [`RateLimit`] refuses, for every layer after it.
#[derive(Debug, Clone)]
pub struct RateLimitLayer(pub Arc<RateLimit>);

impl<S: Subscriber> Layer<S> for RateLimitLayer {
    fn event_enabled(&self, event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
        self.0.allow(event, Instant::now())
    }
}

/// Per kind of message, how many lines passed and were suppressed in the current window.
#[derive(Debug)]
pub struct RateLimit {
    burst: u32,
    window: Duration,
    kinds: Mutex<HashMap<Kind, Window>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Kind {
    callsite: Identifier,
    fields: Option<String>,
}

#[derive(Debug)]
struct Window {
    start: Instant,
    passed: u32,
    suppressed: u64,
    level: Level,
    /// `file:line` of the statement.
    place: String,
    /// The first suppressed line's message.
    example: String,
    /// Lines suppressed in windows already over, and the first one's message: the summary
    /// the next [`RateLimit::flush`] writes.
    owed: Option<(u64, String)>,
}

impl Window {
    /// Ends the window at `now`; what it suppressed is owed a summary.
    fn restart(&mut self, now: Instant) {
        if self.suppressed > 0 {
            let example = std::mem::take(&mut self.example);
            let owed = self.owed.get_or_insert((0, example));
            owed.0 += self.suppressed;
        }
        self.start = now;
        self.passed = 0;
        self.suppressed = 0;
    }
}

/// One summary line to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Lines suppressed.
    pub suppressed: u64,
    /// Their level.
    pub level: Level,
    /// `file:line` of the statement.
    pub place: String,
    /// The first suppressed line's message.
    pub example: String,
}

impl RateLimit {
    /// `burst` lines of each kind per `window`.
    pub fn new(burst: u32, window: Duration) -> RateLimit {
        RateLimit {
            burst,
            window,
            kinds: Mutex::new(HashMap::new()),
        }
    }

    /// True when `event`, at `now`, may be written.
    pub fn allow(&self, event: &Event<'_>, now: Instant) -> bool {
        let meta = event.metadata();
        if *meta.level() > Level::INFO || meta.target() == TARGET {
            return true;
        }
        let mut fields = KeyFields::default();
        event.record(&mut fields);
        let mut kinds = self.kinds.lock().unwrap_or_else(|e| e.into_inner());
        let mut kind = Kind {
            callsite: meta.callsite(),
            fields: fields.key,
        };
        if kinds.len() >= MAX_KINDS && !kinds.contains_key(&kind) {
            kind.fields = None;
        }
        let w = kinds.entry(kind).or_insert_with(|| Window {
            start: now,
            passed: 0,
            suppressed: 0,
            level: *meta.level(),
            place: format!(
                "{}:{}",
                meta.file().unwrap_or("?"),
                meta.line().unwrap_or_default()
            ),
            example: String::new(),
            owed: None,
        });
        if now.saturating_duration_since(w.start) >= self.window {
            w.restart(now);
        }
        if w.passed < self.burst {
            w.passed += 1;
            true
        } else {
            if w.suppressed == 0 {
                w.example = fields.message;
            }
            w.suppressed += 1;
            false
        }
    }

    /// Ends every window that is over (all of them with `all`), returning a summary for
    /// each that suppressed lines; forgets kinds that have been quiet for a window.
    pub fn flush(&self, now: Instant, all: bool) -> Vec<Summary> {
        let mut out = Vec::new();
        let mut kinds = self.kinds.lock().unwrap_or_else(|e| e.into_inner());
        kinds.retain(|_, w| {
            let over = now.saturating_duration_since(w.start) >= self.window;
            if over || (all && w.suppressed > 0) {
                w.restart(now);
            }
            match w.owed.take() {
                Some((suppressed, example)) => {
                    out.push(Summary {
                        suppressed,
                        level: w.level,
                        place: w.place.clone(),
                        example,
                    });
                    true
                }
                // Quiet for a whole window: forgotten.
                None => !over,
            }
        });
        out.sort_by(|a, b| a.place.cmp(&b.place));
        out
    }
}

/// Writes summary lines.
fn emit(summaries: Vec<Summary>) {
    for s in summaries {
        let level = s.level.as_str();
        if s.level == Level::ERROR {
            tracing::error!(target: TARGET, suppressed = s.suppressed, level, at = %s.place,
                example = %s.example, "suppressed similar log messages");
        } else {
            tracing::warn!(target: TARGET, suppressed = s.suppressed, level, at = %s.place,
                example = %s.example, "suppressed similar log messages");
        }
    }
}

/// The fields that make a line's kind, and its message.
#[derive(Default)]
struct KeyFields {
    key: Option<String>,
    message: String,
}

impl KeyFields {
    fn add(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => {
                self.message.clear();
                self.message.push_str(value);
            }
            "reason" | "sink" if value.len() <= MAX_KEY_VALUE => {
                let key = self.key.get_or_insert_with(String::new);
                let _ = write!(key, "{}={value};", field.name());
            }
            _ => {}
        }
    }
}

impl Visit for KeyFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.add(field, value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if matches!(field.name(), "message" | "reason" | "sink") {
            let text = format!("{value:?}");
            self.add(field, &text);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use std::io::Write;

    /// Collects what the fmt layer writes.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Buffer {
        fn lines(&self) -> Vec<serde_json::Value> {
            String::from_utf8(self.0.lock().unwrap().clone())
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        }
    }

    #[test]
    fn a_flood_is_cut_to_a_burst_and_one_summary_per_kind() {
        let limiter = Arc::new(RateLimit::new(3, Duration::from_secs(60)));
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::registry()
            .with(RateLimitLayer(Arc::clone(&limiter)))
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(move || writer.clone()),
            );
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..100 {
                // Two kinds from one statement: the reason is part of the kind.
                let reason = if i % 2 == 0 { "timeout" } else { "refused" };
                tracing::warn!(sink = "hook", reason, attempt = i, "delivery failed");
                tracing::debug!(i, "never limited");
            }
            for i in 0..5 {
                tracing::error!(i, "a different statement");
            }
            // Nothing is suppressed from a kind under its burst; the others owe a summary.
            emit(limiter.flush(Instant::now(), true));
        });
        let lines = buffer.lines();
        let count = |msg: &str| {
            lines
                .iter()
                .filter(|l| l["fields"]["message"] == msg)
                .count()
        };
        assert_eq!(count("delivery failed"), 6, "3 per reason");
        assert_eq!(count("a different statement"), 3);
        let summaries: Vec<&serde_json::Value> = lines
            .iter()
            .filter(|l| l["fields"]["message"] == "suppressed similar log messages")
            .collect();
        let mut counts: Vec<(u64, String)> = summaries
            .iter()
            .map(|s| {
                (
                    s["fields"]["suppressed"].as_u64().unwrap(),
                    s["fields"]["example"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        counts.sort();
        assert_eq!(
            counts,
            [
                (2, "a different statement".to_string()),
                (47, "delivery failed".to_string()),
                (47, "delivery failed".to_string())
            ]
        );
        let of_errors = summaries
            .iter()
            .find(|s| s["fields"]["example"] == "a different statement")
            .unwrap();
        assert_eq!(of_errors["level"], "ERROR");
        assert!(
            of_errors["fields"]["at"]
                .as_str()
                .unwrap()
                .starts_with("src/logging.rs:")
        );
    }

    #[test]
    fn a_window_over_lets_lines_through_again() {
        let limiter = RateLimit::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        let decisions = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&decisions);
        let limiter = Arc::new(limiter);
        let l = Arc::clone(&limiter);
        // A layer that asks the limiter at chosen times.
        struct At(Arc<RateLimit>, Arc<Mutex<Vec<bool>>>, Arc<Mutex<Instant>>);
        impl<S: Subscriber> Layer<S> for At {
            fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
                let now = *self.2.lock().unwrap();
                self.1.lock().unwrap().push(self.0.allow(event, now));
            }
        }
        let clock = Arc::new(Mutex::new(t0));
        let subscriber = tracing_subscriber::registry().with(At(l, seen, Arc::clone(&clock)));
        tracing::subscriber::with_default(subscriber, || {
            for minute in [0u64, 0, 0, 61, 61, 61] {
                *clock.lock().unwrap() = t0 + Duration::from_secs(minute);
                tracing::info!("tick");
            }
        });
        // The third line of the first minute is suppressed; a minute later lines pass
        // again, and the next flush owes one summary for the first minute.
        assert_eq!(
            *decisions.lock().unwrap(),
            [true, true, false, true, true, false]
        );
        let summaries = limiter.flush(t0 + Duration::from_secs(62), false);
        assert_eq!(
            summaries.iter().map(|s| s.suppressed).collect::<Vec<_>>(),
            [1]
        );
        assert_eq!(summaries[0].example, "tick");
        // The second minute's suppressed line is owed once that window is over.
        assert!(
            limiter
                .flush(t0 + Duration::from_secs(62), false)
                .is_empty()
        );
        let summaries = limiter.flush(t0 + Duration::from_secs(121), false);
        assert_eq!(summaries[0].suppressed, 1);
        // A kind quiet for a whole window is forgotten.
        assert!(
            limiter
                .flush(t0 + Duration::from_secs(300), false)
                .is_empty()
        );
        assert!(limiter.kinds.lock().unwrap().is_empty());
    }
}
