//! The metrics of `tern run`, exposed by the admin endpoint as Prometheus (OpenMetrics) text.
//! Every name, label and type is listed in `docs/operations.md`.
//!
//! The hot path pays one atomic add per message: the engine thread asks once for a handle
//! per stream ([`Metrics::stream`]), per bad-message reason, per rule and per sink, keeps
//! it, and only increments it. No label string is hashed per event. Handles of the same name
//! share their atomics, so asking again (after a rule reload) continues the same series.
//!
//! A few values are not counted but read when scraped ([`Metrics::refresh`]): the lag of
//! each stream's watermark behind the wall clock (the engine thread stores each watermark
//! after every commit), events per second over the last ten seconds (from the samples a
//! background task takes every second, [`Metrics::sample`]), and per rule the keys and
//! partial matches held (the admin endpoint asks the engine thread, see
//! [`Metrics::set_rules`]).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use prometheus_client::encoding::text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::compile::hir::Severity;
use crate::event::Nanos;
use crate::io::control::RuleInfo;
use crate::io::mqtt::SourceStatus;

/// The content type of [`Metrics::encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// How far back [`Metrics::refresh`] looks for events per second.
const RATE_WINDOW: std::time::Duration = std::time::Duration::from_secs(10);

type One = [(&'static str, String); 1];
type Two = [(&'static str, String); 2];
type FloatGauge = Gauge<f64, AtomicU64>;

/// The handles of one stream, kept by the engine thread.
#[derive(Debug, Clone, Default)]
pub struct StreamMetrics {
    /// Messages a device profile of this stream claimed (decoded or not).
    pub messages: Counter,
    /// Events the engine accepted.
    pub events: Counter,
    /// Events behind the watermark, dead-lettered.
    pub late: Counter,
    /// The stream's watermark (ns since the epoch), `Nanos::MIN` while it has none.
    pub watermark: Arc<AtomicI64>,
}

impl StreamMetrics {
    /// Records the stream's watermark; the lag is computed from it when scraped.
    pub fn set_watermark(&self, watermark: Nanos) {
        self.watermark.store(watermark, Ordering::Relaxed);
    }
}

/// The handles of one sink, kept by its dispatcher.
#[derive(Debug, Clone, Default)]
pub struct SinkMetrics {
    /// Alerts delivered.
    pub delivered: Counter,
    /// Attempts after the first, delivered or not in the end.
    pub retries: Counter,
    /// Alerts given up on (dead-lettered).
    pub failures: Counter,
    /// Alerts in the outbox the sink has not passed yet.
    pub queue: Gauge,
}

/// The registry and every family in it; shared as `Arc<Metrics>`.
pub struct Metrics {
    registry: Registry,
    mqtt_messages: Counter,
    duplicates: Counter,
    messages: Family<One, Counter>,
    events: Family<One, Counter>,
    late: Family<One, Counter>,
    bad: Family<One, Counter>,
    alerts: Family<Two, Counter>,
    rule_keys: Family<One, Gauge>,
    rule_partial_matches: Family<One, Gauge>,
    sink_delivered: Family<One, Counter>,
    sink_retries: Family<One, Counter>,
    sink_failures: Family<One, Counter>,
    sink_queue: Family<One, Gauge>,
    watermark_lag: Family<One, FloatGauge>,
    events_per_second: FloatGauge,
    checkpoint: Histogram,
    mqtt_connected: Gauge,
    mqtt_connections: Counter,
    mqtt_reconnects: Counter,
    mqtt_sessions_lost: Counter,
    state_open: AtomicBool,
    streams: Mutex<HashMap<String, StreamMetrics>>,
    rules_seen: Mutex<Vec<String>>,
    samples: Mutex<VecDeque<(Instant, u64)>>,
    source_seen: Mutex<SourceStatus>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// A registry with every tern metric registered (series appear as handles are taken).
    pub fn new() -> Metrics {
        let mut r = Registry::default();
        let build = Family::<One, Gauge>::default();
        build
            .get_or_create(&[("version", env!("CARGO_PKG_VERSION").to_owned())])
            .set(1);
        r.register(
            "tern_build_info",
            "The running tern version (always 1)",
            build,
        );
        let mqtt_messages = Counter::default();
        r.register(
            "tern_mqtt_messages",
            "Messages the engine took from the MQTT source",
            mqtt_messages.clone(),
        );
        let duplicates = Counter::default();
        r.register(
            "tern_duplicate_messages",
            "Redelivered messages dropped by the dedupe window",
            duplicates.clone(),
        );
        let messages = Family::default();
        r.register(
            "tern_messages",
            "Messages claimed by a device profile of the stream, decoded or not",
            messages.clone(),
        );
        let events = Family::default();
        r.register("tern_events", "Events the engine accepted", events.clone());
        let late = Family::default();
        r.register(
            "tern_late_events",
            "Events behind their stream's watermark (dead-lettered)",
            late.clone(),
        );
        let bad = Family::default();
        r.register(
            "tern_bad_messages",
            "Messages dead-lettered, by reason",
            bad.clone(),
        );
        let alerts = Family::default();
        r.register(
            "tern_alerts",
            "Alerts emitted, by rule and severity",
            alerts.clone(),
        );
        let rule_keys = Family::default();
        r.register(
            "tern_rule_keys",
            "Keys holding partial matches, by rule (read when scraped)",
            rule_keys.clone(),
        );
        let rule_partial_matches = Family::default();
        r.register(
            "tern_rule_partial_matches",
            "Partial matches alive, by rule (read when scraped)",
            rule_partial_matches.clone(),
        );
        let sink_delivered = Family::default();
        r.register(
            "tern_sink_deliveries",
            "Alerts a sink delivered",
            sink_delivered.clone(),
        );
        let sink_retries = Family::default();
        r.register(
            "tern_sink_retries",
            "Delivery attempts after the first",
            sink_retries.clone(),
        );
        let sink_failures = Family::default();
        r.register(
            "tern_sink_failures",
            "Alerts a sink gave up on (dead-lettered)",
            sink_failures.clone(),
        );
        let sink_queue = Family::default();
        r.register(
            "tern_sink_queue_depth",
            "Alerts in the outbox that the sink has not passed yet",
            sink_queue.clone(),
        );
        let watermark_lag = Family::default();
        r.register_with_unit(
            "tern_watermark_lag",
            "Wall clock minus the stream's watermark (read when scraped)",
            Unit::Seconds,
            watermark_lag.clone(),
        );
        let events_per_second = FloatGauge::default();
        r.register(
            "tern_events_per_second",
            "Events accepted per second over the last 10 seconds",
            events_per_second.clone(),
        );
        // 0.5 ms to about 8 s: a commit is one (synced) RocksDB write.
        let checkpoint = Histogram::new(exponential_buckets(0.0005, 2.0, 15));
        r.register_with_unit(
            "tern_checkpoint_duration",
            "Time to write a batch's state and alerts (one RocksDB write)",
            Unit::Seconds,
            checkpoint.clone(),
        );
        let mqtt_connected = Gauge::default();
        r.register(
            "tern_mqtt_connected",
            "1 while connected to the broker and subscribed",
            mqtt_connected.clone(),
        );
        let mqtt_connections = Counter::default();
        r.register(
            "tern_mqtt_connections",
            "Successful connections to the broker",
            mqtt_connections.clone(),
        );
        let mqtt_reconnects = Counter::default();
        r.register(
            "tern_mqtt_reconnects",
            "Connections after the first",
            mqtt_reconnects.clone(),
        );
        let mqtt_sessions_lost = Counter::default();
        r.register(
            "tern_mqtt_sessions_lost",
            "Reconnections on which the broker had lost tern's session",
            mqtt_sessions_lost.clone(),
        );
        Metrics {
            registry: r,
            mqtt_messages,
            duplicates,
            messages,
            events,
            late,
            bad,
            alerts,
            rule_keys,
            rule_partial_matches,
            sink_delivered,
            sink_retries,
            sink_failures,
            sink_queue,
            watermark_lag,
            events_per_second,
            checkpoint,
            mqtt_connected,
            mqtt_connections,
            mqtt_reconnects,
            mqtt_sessions_lost,
            state_open: AtomicBool::new(false),
            streams: Mutex::new(HashMap::new()),
            rules_seen: Mutex::new(Vec::new()),
            samples: Mutex::new(VecDeque::new()),
            source_seen: Mutex::new(SourceStatus::default()),
        }
    }

    /// The handles of stream `name` (the same atomics every time for the same name).
    pub fn stream(&self, name: &str) -> StreamMetrics {
        let mut streams = lock(&self.streams);
        if let Some(s) = streams.get(name) {
            return s.clone();
        }
        let label = [("stream", name.to_owned())];
        let s = StreamMetrics {
            messages: self.messages.get_or_create_owned(&label),
            events: self.events.get_or_create_owned(&label),
            late: self.late.get_or_create_owned(&label),
            watermark: Arc::new(AtomicI64::new(Nanos::MIN)),
        };
        streams.insert(name.to_owned(), s.clone());
        s
    }

    /// The counter of bad messages of `reason`.
    pub fn bad(&self, reason: &str) -> Counter {
        self.bad
            .get_or_create_owned(&[("reason", reason.to_owned())])
    }

    /// Messages taken from the source (every one, claimed or not).
    pub fn mqtt_messages(&self) -> Counter {
        self.mqtt_messages.clone()
    }

    /// Redelivered messages dropped.
    pub fn duplicates(&self) -> Counter {
        self.duplicates.clone()
    }

    /// The counter of alerts of rule `name` at `severity`.
    pub fn alerts(&self, rule: &str, severity: Severity) -> Counter {
        self.alerts.get_or_create_owned(&[
            ("rule", rule.to_owned()),
            ("severity", severity_word(severity).to_owned()),
        ])
    }

    /// The handles of sink `name`.
    pub fn sink(&self, name: &str) -> SinkMetrics {
        let label = [("sink", name.to_owned())];
        SinkMetrics {
            delivered: self.sink_delivered.get_or_create_owned(&label),
            retries: self.sink_retries.get_or_create_owned(&label),
            failures: self.sink_failures.get_or_create_owned(&label),
            queue: self.sink_queue.get_or_create_owned(&label),
        }
    }

    /// The histogram of checkpoint (commit) durations, in seconds.
    pub fn checkpoint(&self) -> Histogram {
        self.checkpoint.clone()
    }

    /// Says whether the state directory is open (for `/readyz`).
    pub fn set_state_open(&self, open: bool) {
        self.state_open.store(open, Ordering::Relaxed);
    }

    /// True while the state directory is open.
    pub fn state_open(&self) -> bool {
        self.state_open.load(Ordering::Relaxed)
    }

    /// Follows the MQTT source's connection state: the connected gauge, and the counters
    /// moved on by what changed since the last call.
    pub fn observe_source(&self, now: &SourceStatus) {
        let mut seen = lock(&self.source_seen);
        self.mqtt_connected
            .set(i64::from(now.connected && now.subscribed));
        let new = now.connects.saturating_sub(seen.connects);
        if new > 0 {
            self.mqtt_connections.inc_by(new);
            // Every connection but a run's first is a reconnection.
            let first = u64::from(seen.connects == 0);
            self.mqtt_reconnects.inc_by(new - first);
        }
        self.mqtt_sessions_lost
            .inc_by(now.sessions_lost.saturating_sub(seen.sessions_lost));
        *seen = now.clone();
    }

    /// Sets the per-rule gauges from the engine's answer; rules no longer running lose
    /// their series.
    pub fn set_rules(&self, rules: &[RuleInfo]) {
        let mut seen = lock(&self.rules_seen);
        for gone in seen.iter().filter(|n| !rules.iter().any(|r| &r.name == *n)) {
            let label = [("rule", gone.clone())];
            self.rule_keys.remove(&label);
            self.rule_partial_matches.remove(&label);
        }
        seen.clear();
        for r in rules {
            let label = [("rule", r.name.clone())];
            self.rule_keys
                .get_or_create(&label)
                .set(i64::try_from(r.keys).unwrap_or(i64::MAX));
            self.rule_partial_matches
                .get_or_create(&label)
                .set(i64::try_from(r.partial_matches).unwrap_or(i64::MAX));
            seen.push(r.name.clone());
        }
    }

    /// Events accepted so far, over every stream.
    pub fn events_total(&self) -> u64 {
        lock(&self.streams).values().map(|s| s.events.get()).sum()
    }

    /// Takes one sample of the event count (every second, from a background task) for
    /// events per second.
    pub fn sample(&self, at: Instant) {
        let total = self.events_total();
        let mut samples = lock(&self.samples);
        samples.push_back((at, total));
        while samples.len() > 2
            && samples
                .get(1)
                .is_some_and(|(t, _)| at.saturating_duration_since(*t) >= RATE_WINDOW)
        {
            samples.pop_front();
        }
    }

    /// Updates what is computed rather than counted: watermark lags against the wall clock
    /// `now`, and events per second from the samples.
    pub fn refresh(&self, now: Nanos) {
        for (name, s) in lock(&self.streams).iter() {
            let w = s.watermark.load(Ordering::Relaxed);
            if w != Nanos::MIN {
                let lag = now.saturating_sub(w) as f64 / 1e9;
                self.watermark_lag
                    .get_or_create(&[("stream", name.clone())])
                    .set(lag.max(0.0));
            }
        }
        let samples = lock(&self.samples);
        if let (Some((t0, n0)), Some((t1, n1))) = (samples.front(), samples.back()) {
            let secs = t1.saturating_duration_since(*t0).as_secs_f64();
            if secs > 0.0 {
                self.events_per_second
                    .set(n1.saturating_sub(*n0) as f64 / secs);
            }
        }
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8192);
        // Writing into a String cannot fail.
        let _ = text::encode(&mut out, &self.registry);
        out
    }
}

/// The handles the engine thread keeps: per stream by stream id, per reason and per rule
/// as they come up. Rebuilt for each program ([`EngineMetrics::for_program`]) since a
/// reload may number the streams differently.
pub struct EngineMetrics {
    metrics: Arc<Metrics>,
    mqtt_messages: Counter,
    duplicates: Counter,
    streams: Vec<StreamMetrics>,
    bad: Vec<(&'static str, Counter)>,
    /// Per rule, its alert counters by severity (taken as they come up).
    rules: HashMap<Arc<str>, [Option<Counter>; 4]>,
    checkpoint: Histogram,
}

impl EngineMetrics {
    /// Handles in `metrics` for the streams of `program`.
    pub fn new(metrics: Arc<Metrics>, program: &crate::compile::hir::Program) -> EngineMetrics {
        let mut m = EngineMetrics {
            mqtt_messages: metrics.mqtt_messages(),
            duplicates: metrics.duplicates(),
            checkpoint: metrics.checkpoint(),
            streams: Vec::new(),
            bad: Vec::new(),
            rules: HashMap::new(),
            metrics,
        };
        m.for_program(program);
        m
    }

    /// Takes the handles of `program`'s streams, and of its rules at the severities they
    /// declare, so that their series show 0 before the first alert (by name: a series goes
    /// on across reloads).
    pub fn for_program(&mut self, program: &crate::compile::hir::Program) {
        self.streams = program
            .streams
            .iter()
            .map(|s| self.metrics.stream(&s.name))
            .collect();
        for rule in &program.rules {
            let name: Arc<str> = Arc::from(rule.name.as_str());
            let declared = std::iter::once(&rule.emit).chain(rule.on_timeout.as_ref());
            for emit in declared {
                self.counter(&name, emit.severity);
            }
        }
    }

    fn counter(&mut self, rule: &Arc<str>, severity: Severity) -> &Counter {
        let slots = self.rules.entry(Arc::clone(rule)).or_default();
        slots[severity_index(severity)].get_or_insert_with(|| self.metrics.alerts(rule, severity))
    }

    /// One message taken from the source.
    pub fn message(&self) {
        self.mqtt_messages.inc();
    }

    /// One redelivery dropped.
    pub fn duplicate(&self) {
        self.duplicates.inc();
    }

    /// One message claimed by a profile of stream `stream` (its id).
    pub fn claimed(&self, stream: u32) {
        if let Some(s) = self.streams.get(stream as usize) {
            s.messages.inc();
        }
    }

    /// One event of `stream` accepted.
    pub fn event(&self, stream: u32) {
        if let Some(s) = self.streams.get(stream as usize) {
            s.events.inc();
        }
    }

    /// One late event of `stream`.
    pub fn late(&self, stream: u32) {
        if let Some(s) = self.streams.get(stream as usize) {
            s.late.inc();
        }
    }

    /// One bad message of `reason`.
    pub fn bad(&mut self, reason: &'static str) {
        match self.bad.iter().find(|(r, _)| *r == reason) {
            Some((_, c)) => {
                c.inc();
            }
            None => {
                let c = self.metrics.bad(reason);
                c.inc();
                self.bad.push((reason, c));
            }
        }
    }

    /// One alert of `rule`.
    pub fn alert(&mut self, rule: &Arc<str>, severity: Severity) {
        self.counter(rule, severity).inc();
    }

    /// One checkpoint (commit) that took `took`.
    pub fn checkpoint(&self, took: std::time::Duration) {
        self.checkpoint.observe(took.as_secs_f64());
    }

    /// Stores each stream's watermark, `watermark(stream id)`.
    pub fn watermarks(&self, watermark: impl Fn(u32) -> Nanos) {
        for (i, s) in self.streams.iter().enumerate() {
            s.set_watermark(watermark(i as u32));
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded values are plain numbers and handles: usable after a panic elsewhere.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn severity_index(s: Severity) -> usize {
    match s {
        Severity::Info => 0,
        Severity::Warning => 1,
        Severity::Error => 2,
        Severity::Critical => 3,
    }
}

fn severity_word(s: Severity) -> &'static str {
    match s {
        Severity::Info => "info",
        Severity::Warning => "warning",
        Severity::Error => "error",
        Severity::Critical => "critical",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn line<'a>(text: &'a str, start: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(start))
    }

    #[test]
    fn handles_of_one_name_share_their_series() {
        let m = Metrics::new();
        let a = m.stream("flow");
        let b = m.stream("flow");
        a.events.inc();
        b.events.inc_by(2);
        m.alerts("congestion", Severity::Warning).inc();
        m.alerts("congestion", Severity::Warning).inc();
        m.bad("invalid_json").inc();
        m.sink("webhook").retries.inc();
        let text = m.encode();
        assert_eq!(
            line(&text, "tern_events_total{stream=\"flow\"}"),
            Some("tern_events_total{stream=\"flow\"} 3")
        );
        assert_eq!(
            line(
                &text,
                "tern_alerts_total{rule=\"congestion\",severity=\"warning\"}"
            ),
            Some("tern_alerts_total{rule=\"congestion\",severity=\"warning\"} 2")
        );
        assert!(!text.contains("severity=\"info\""));
        assert!(text.contains("tern_bad_messages_total{reason=\"invalid_json\"} 1"));
        assert!(text.contains("tern_sink_retries_total{sink=\"webhook\"} 1"));
        assert!(text.contains("# TYPE tern_checkpoint_duration_seconds histogram"));
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn computed_values_are_set_when_scraped() {
        let m = Metrics::new();
        let s = m.stream("flow");
        let t0 = Instant::now();
        m.sample(t0);
        s.events.inc_by(50);
        m.sample(t0 + std::time::Duration::from_secs(5));
        s.set_watermark(10_000_000_000);
        m.refresh(12_500_000_000);
        let text = m.encode();
        assert!(
            text.contains("tern_watermark_lag_seconds{stream=\"flow\"} 2.5"),
            "{text}"
        );
        assert!(text.contains("tern_events_per_second 10.0"), "{text}");
        // A stream without a watermark has no lag series.
        m.stream("quiet");
        m.refresh(12_500_000_000);
        assert!(!m.encode().contains("stream=\"quiet\"} 0.0"));
    }

    #[test]
    fn connection_counters_follow_the_source() {
        let m = Metrics::new();
        let mut s = SourceStatus {
            connected: true,
            subscribed: true,
            connects: 1,
            sessions_lost: 0,
        };
        m.observe_source(&s);
        s.connected = false;
        s.subscribed = false;
        m.observe_source(&s);
        s.connected = true;
        s.subscribed = true;
        s.connects = 3;
        s.sessions_lost = 1;
        m.observe_source(&s);
        let text = m.encode();
        assert!(text.contains("tern_mqtt_connections_total 3"), "{text}");
        assert!(text.contains("tern_mqtt_reconnects_total 2"), "{text}");
        assert!(text.contains("tern_mqtt_sessions_lost_total 1"), "{text}");
        assert!(text.contains("tern_mqtt_connected 1"), "{text}");
    }
}
