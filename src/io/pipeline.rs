//! The live pipeline behind `tern run` (and `tern demo`):
//!
//! ```text
//! MQTT source --queue--> engine thread: dedupe, route + decode, Engine::push --> alert sinks
//!      ^                        |  bad messages --> dead-letter sink
//!      +---- applied seq -------+  (acks in arrival order once applied)
//! ```
//!
//! The engine is synchronous and owns all per-key state, so it runs on one dedicated thread
//! fed by a bounded channel. After each batch it commits (the seam where durable state will
//! be written) and then publishes the highest sequence number applied, which lets the source
//! acknowledge those messages. A ticker wakes the engine thread every second so that streams
//! quiet for longer than their `idle` timeout advance in time from the wall clock; the clock
//! is injected ([`Clock`]) so that tests control it.
//!
//! Shutdown: the caller cancels the token; the source stops forwarding and drains; the engine
//! thread applies everything queued and exits when its queue closes; then every sink flushes.
//! Pending absences are not fired: the next run continues from the broker's queue.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use secrecy::SecretString;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::compile::hir::{Program, StreamId};
use crate::config::{BrokerConfig, Config, StdoutFormat};
use crate::devices::Profile;
use crate::engine::Engine;
use crate::engine::alert::Alert;
use crate::event::Nanos;
use crate::io::deadletter::{self, BadMessages, DeadLetter, DeadLetterReport, DeadLetterSink};
use crate::io::mqtt::{self, Inbound, MqttSource, Publisher, SourceReport, SourceStatus};
use crate::io::sink::{self, AlertSink, Emitted, SinkReport};
use crate::lang::diagnostic::Diagnostic;
use crate::lang::source::Sources;

/// Wall-clock time, injected so that tests decide what "now" is.
pub trait Clock: Send + Sync {
    /// Nanoseconds since the Unix epoch.
    fn now(&self) -> Nanos;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Nanos {
        chrono::Utc::now()
            .timestamp_nanos_opt()
            .unwrap_or(Nanos::MAX)
    }
}

/// A clock that moves only when told (tests, simulations).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    /// A clock showing `now`.
    pub fn new(now: Nanos) -> ManualClock {
        ManualClock(AtomicI64::new(now))
    }

    /// Sets the time.
    pub fn set(&self, now: Nanos) {
        self.0.store(now, Ordering::SeqCst);
    }

    /// Moves the time forward.
    pub fn advance(&self, by: Duration) {
        let by = i64::try_from(by.as_nanos()).unwrap_or(i64::MAX);
        self.0.fetch_add(by, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Nanos {
        self.0.load(Ordering::SeqCst)
    }
}

/// Why the pipeline did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Rules, profiles or the configuration have errors; render them against `sources`.
    #[error("{}", crate::lang::render::to_text(sources, diagnostics).trim_end())]
    Rejected {
        /// The files the diagnostics point into.
        sources: Sources,
        /// What is wrong.
        diagnostics: Vec<Diagnostic>,
    },
    /// Anything else (I/O).
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// A live pipeline, checked and ready to run.
pub struct Pipeline {
    config: Config,
    program: Arc<Program>,
    profiles: Vec<Profile>,
    password: Option<SecretString>,
    warnings: (Sources, Vec<Diagnostic>),
    extra_sinks: Vec<(String, Box<dyn AlertSink>)>,
    clock: Arc<dyn Clock>,
    status: watch::Sender<SourceStatus>,
}

impl Pipeline {
    /// Loads and checks the rules and device profiles the configuration names, and reads the
    /// secrets it names. `config_sources` holds the configuration file, for diagnostics.
    pub fn prepare(config: Config, config_sources: &Sources) -> Result<Pipeline, StartError> {
        Pipeline::prepare_with_sinks(config, config_sources, Vec::new())
    }

    /// As [`Pipeline::prepare`], with sinks delivered by the caller (`tern demo`'s webhook
    /// receiver, tests): rules may name them in `to`, and one named like a configured sink
    /// replaces it.
    pub fn prepare_with_sinks(
        config: Config,
        config_sources: &Sources,
        extra_sinks: Vec<(String, Box<dyn AlertSink>)>,
    ) -> Result<Pipeline, StartError> {
        let secret_errors = config.check_secrets();
        if !secret_errors.is_empty() {
            return Err(StartError::Rejected {
                sources: config_sources.clone(),
                diagnostics: secret_errors,
            });
        }
        let password = match config.broker.as_ref().and_then(|b| b.auth.as_ref()) {
            Some(auth) => Some(
                auth.password
                    .resolve()
                    .map_err(|why| StartError::Rejected {
                        sources: config_sources.clone(),
                        diagnostics: vec![auth.password.diagnostic(config.file, &why)],
                    })?,
            ),
            None => None,
        };
        let devices = config.devices.is_dir().then_some(config.devices.as_path());
        let mut sink_names = config.sink_names();
        for (name, _) in &extra_sinks {
            if !sink_names.contains(name) {
                sink_names.push(name.clone());
            }
        }
        let loaded = crate::compile::load(&config.rules, devices, &sink_names)
            .context("cannot load the rules")?;
        if loaded.has_errors() {
            return Err(StartError::Rejected {
                sources: loaded.sources,
                diagnostics: loaded.diagnostics,
            });
        }
        let program = Arc::new(loaded.program);
        let mut profile_sources = Sources::new();
        let (all, _) = match devices {
            Some(d) => crate::devices::load_dir(d, &mut profile_sources),
            None => (Vec::new(), Vec::new()),
        };
        let used = streams_read(&program);
        let profiles = all
            .into_iter()
            .filter_map(|mut p| {
                let id = program.stream_id(&p.stream_name)?;
                used.contains(&id).then(|| {
                    p.set_stream_index(id.0);
                    p
                })
            })
            .collect();
        Ok(Pipeline {
            config,
            program,
            profiles,
            password,
            warnings: (loaded.sources, loaded.diagnostics),
            extra_sinks,
            clock: Arc::new(SystemClock),
            status: watch::Sender::new(SourceStatus::default()),
        })
    }

    /// Uses `clock` for idle streams and `emitted_at`.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Pipeline {
        self.clock = clock;
        self
    }

    /// The checked program.
    pub fn program(&self) -> &Arc<Program> {
        &self.program
    }

    /// Warnings from loading the rules, with the files they point into.
    pub fn warnings(&self) -> (&Sources, &[Diagnostic]) {
        (&self.warnings.0, &self.warnings.1)
    }

    /// The topic filters the source subscribes to: one per device profile a rule reads.
    pub fn subscriptions(&self) -> Vec<String> {
        let mut filters: Vec<String> = Vec::new();
        for p in &self.profiles {
            let f = p.subscription_filter();
            if !filters.contains(&f) {
                filters.push(f);
            }
        }
        filters
    }

    /// Watches the source's connection (connected, subscribed): ready once subscribed.
    pub fn status(&self) -> watch::Receiver<SourceStatus> {
        self.status.subscribe()
    }

    /// The broker the source connects to (the embedded one without `[broker]`).
    pub fn broker(&self) -> BrokerConfig {
        self.config
            .broker
            .clone()
            .unwrap_or_else(|| BrokerConfig::local(self.config.embedded_broker.listen))
    }

    /// Runs until `shutdown` is cancelled, then drains and flushes (see the module docs).
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<Summary> {
        let broker = self.broker();
        if self.config.broker.is_none() {
            let listen = self.config.embedded_broker.listen;
            let max = broker.max_packet_size;
            tokio::task::spawn_blocking(move || mqtt::embedded::start(listen, max))
                .await
                .context("embedded broker")??;
        }
        let filters = self.subscriptions();
        if filters.is_empty() {
            tracing::warn!("no rule reads a stream from a device profile: nothing to subscribe to");
        }
        let source = MqttSource::new(
            broker.clone(),
            self.password.clone(),
            filters,
            self.config.qos,
            self.config.queue,
        )?
        .with_status(self.status.clone());

        // Everything that can fail at startup (files, TLS) is opened before any task starts.
        let (sinks, routes) = plan_sinks(&self.config, &self.program, self.extra_sinks)?;
        let publisher_abort = CancellationToken::new();
        let mut publisher_task = None;
        let topic = match &self.config.dead_letter.topic {
            Some(topic) => {
                let (p, task) =
                    Publisher::start(&broker, self.password.as_ref(), publisher_abort.clone())?;
                publisher_task = Some((p.clone(), task));
                Some((p, topic.clone()))
            }
            None => None,
        };
        let dead_letters = match DeadLetterSink::new(self.config.dead_letter.file.as_deref(), topic)
        {
            Ok(d) => d,
            Err(e) => {
                publisher_abort.cancel();
                return Err(e.context("the dead-letter file"));
            }
        };

        // Alert sinks.
        let sink_shutdown = CancellationToken::new();
        let mut sink_senders = Vec::new();
        let mut sink_tasks = Vec::new();
        for (name, sink) in sinks {
            let (tx, rx) = mpsc::channel(1024);
            sink_senders.push((name.clone(), tx));
            sink_tasks.push((name, tokio::spawn(sink.run(rx, sink_shutdown.clone()))));
        }

        // Dead letters.
        let (dead_tx, dead_rx) = mpsc::channel(4096);
        let dead_task = tokio::spawn(dead_letters.run(dead_rx, shutdown.clone()));

        // The engine thread.
        let (in_tx, in_rx) = mpsc::channel(self.config.queue);
        let (applied_tx, applied_rx) = watch::channel(0u64);
        let mut worker = Worker::new(
            Arc::clone(&self.program),
            self.profiles,
            Arc::clone(&self.clock),
            self.config.dedupe_window,
            routes,
            sink_senders,
            dead_tx,
            applied_tx,
        )?;
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("tern-engine".into())
            .spawn(move || {
                worker.run(in_rx);
                let _ = done_tx.send(worker.report());
            })
            .context("cannot start the engine thread")?;

        // Idle ticker.
        let tick_tx = in_tx.clone();
        let tick_shutdown = shutdown.clone();
        let ticker = tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    biased;
                    _ = tick_shutdown.cancelled() => break,
                    _ = every.tick() => {
                        if tick_tx.send(Input::Tick).await.is_err() {
                            break;
                        }
                    }
                }
            }
        });

        // The source feeds the engine thread until shutdown, then drains.
        let source_result = source.run(in_tx, applied_rx, shutdown.clone()).await;
        if source_result.is_err() {
            shutdown.cancel();
        }
        let _ = ticker.await;
        let engine = done_rx.await.context("the engine thread failed")?;
        let mut sink_reports = Vec::new();
        for (name, task) in sink_tasks {
            match task.await {
                Ok(Ok(r)) => sink_reports.push((name, r)),
                Ok(Err(e)) => {
                    tracing::error!(sink = %name, error = %format!("{e:#}"), "sink failed");
                }
                Err(e) => tracing::error!(sink = %name, error = %e, "sink task failed"),
            }
        }
        sink_shutdown.cancel();
        let dead_letters = match dead_task.await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::error!(error = %format!("{e:#}"), "dead-letter sink failed");
                DeadLetterReport::default()
            }
            Err(e) => {
                tracing::error!(error = %e, "dead-letter task failed");
                DeadLetterReport::default()
            }
        };
        if let Some((p, task)) = publisher_task {
            p.close();
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                publisher_abort.cancel();
            }
        }
        let source = source_result?;
        Ok(Summary {
            source,
            engine,
            sinks: sink_reports,
            dead_letters,
        })
    }
}

/// Checks `config` and runs its pipeline until `shutdown`: `tern run` as a library call.
pub async fn run(
    config: Config,
    config_sources: &Sources,
    shutdown: CancellationToken,
) -> Result<Summary, StartError> {
    let pipeline = Pipeline::prepare(config, config_sources)?;
    Ok(pipeline.run(shutdown).await?)
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The MQTT source.
    pub source: SourceReport,
    /// The engine thread.
    pub engine: WorkerReport,
    /// Each sink, by name.
    pub sinks: Vec<(String, SinkReport)>,
    /// The dead-letter sink.
    pub dead_letters: DeadLetterReport,
}

/// What the engine thread did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkerReport {
    /// Messages taken from the queue.
    pub messages: u64,
    /// Events the engine accepted.
    pub events: u64,
    /// Alerts emitted.
    pub alerts: u64,
    /// Redelivered messages dropped as duplicates.
    pub duplicates: u64,
    /// Bad messages per reason (all dead-lettered).
    pub bad: BTreeMap<&'static str, u64>,
    /// Alert deliveries that found no sink (a rule naming only unconfigured sinks, a sink
    /// that stopped).
    pub undelivered: u64,
}

/// Streams whose events the program reads from outside (not aggregate outputs).
fn streams_read(program: &Program) -> HashSet<StreamId> {
    let mut used: HashSet<StreamId> = program
        .rules
        .iter()
        .flat_map(|r| r.streams.iter().copied())
        .collect();
    used.extend(program.aggregates.iter().map(|a| a.source));
    for a in &program.aggregates {
        used.remove(&a.output);
    }
    used
}

/// The sinks to start and, per rule, the indices of the sinks its alerts go to.
///
/// Rules name sinks in `to` (every configured sink without it). `stdout` works without
/// configuration; without any configured sink every alert goes to stdout. A name that is
/// configured with a type this build cannot deliver yet, or not configured at all, is warned
/// about once here.
fn plan_sinks(
    config: &Config,
    program: &Program,
    extra: Vec<(String, Box<dyn AlertSink>)>,
) -> anyhow::Result<(NamedSinks, Routes)> {
    let mut sinks: Vec<(String, Box<dyn AlertSink>)> = Vec::new();
    for s in &config.sinks {
        if extra.iter().any(|(n, _)| *n == s.name) {
            continue;
        }
        match sink::build(s).with_context(|| format!("sink `{}`", s.name))? {
            Some(built) => sinks.push((s.name.clone(), built)),
            None => tracing::warn!(
                sink = %s.name,
                r#type = s.kind.type_name(),
                "this sink type is not delivered by this version of tern: alerts routed to it are not sent"
            ),
        }
    }
    sinks.extend(extra);
    let nothing_configured = sinks.is_empty();
    let mut routes = HashMap::new();
    let mut missing: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    let mut nowhere = Vec::new();
    for rule in &program.rules {
        let mut targets = Vec::new();
        let names: Vec<String> = if nothing_configured {
            vec!["stdout".into()]
        } else if rule.sinks.is_empty() {
            sinks.iter().map(|(n, _)| n.clone()).collect()
        } else {
            rule.sinks.clone()
        };
        for name in names {
            let index = match sinks.iter().position(|(n, _)| *n == name) {
                Some(i) => Some(i),
                None if name == "stdout" => {
                    sinks.push((
                        "stdout".into(),
                        Box::new(sink::StdoutSink::new(StdoutFormat::Text)),
                    ));
                    Some(sinks.len() - 1)
                }
                None => None,
            };
            match index {
                Some(i) => targets.push(i),
                // Configured sinks that cannot deliver were warned about above.
                None if config.sink(&name).is_some() => {}
                None => missing.entry(name).or_default().push(&rule.name),
            }
        }
        if targets.is_empty() {
            nowhere.push(rule.name.as_str());
        }
        routes.insert(Arc::from(rule.name.as_str()), targets);
    }
    for (sink, rules) in &missing {
        tracing::warn!(
            sink = %sink,
            rules = %rules.join(", "),
            "rules send to a sink that tern.toml does not configure: those alerts are not sent there"
        );
    }
    if !nowhere.is_empty() {
        tracing::warn!(
            rules = %nowhere.join(", "),
            "no configured sink receives these rules' alerts: they are counted, not delivered"
        );
    }
    Ok((sinks, routes))
}

/// Sinks with their names, in start order.
type NamedSinks = Vec<(String, Box<dyn AlertSink>)>;

/// Per rule name, the indices of the sinks its alerts go to.
type Routes = HashMap<Arc<str>, Vec<usize>>;

/// What the engine thread receives.
#[derive(Debug)]
pub enum Input {
    /// A message from the broker.
    Message(Inbound),
    /// Time to check idle streams.
    Tick,
}

impl From<Inbound> for Input {
    fn from(m: Inbound) -> Input {
        Input::Message(m)
    }
}

/// Per stream: when it last had an event, for the idle timeout.
#[derive(Debug, Clone, Copy)]
struct IdleStream {
    idle: Nanos,
    lateness: Nanos,
    /// Largest event time seen.
    max_time: Option<Nanos>,
    /// Wall time of the last event.
    last_arrival: Nanos,
}

/// The engine thread's state: everything between the queue and the sinks.
pub struct Worker {
    engine: Engine,
    profiles: Vec<Profile>,
    clock: Arc<dyn Clock>,
    dedupe: Dedupe,
    idle: Vec<IdleStream>,
    routes: Routes,
    sinks: Vec<(String, mpsc::Sender<Arc<Emitted>>)>,
    dead: mpsc::Sender<DeadLetter>,
    applied: watch::Sender<u64>,
    last_seq: u64,
    bad: BadMessages,
    duplicates_log: BadMessages,
    report: WorkerReport,
    alerts: Vec<Alert>,
    /// Sinks found stopped (logged once each).
    stopped_sinks: HashSet<usize>,
}

impl Worker {
    /// A worker for `program`; `profiles` must carry the program's stream ids.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        program: Arc<Program>,
        profiles: Vec<Profile>,
        clock: Arc<dyn Clock>,
        dedupe_window: usize,
        routes: Routes,
        sinks: Vec<(String, mpsc::Sender<Arc<Emitted>>)>,
        dead: mpsc::Sender<DeadLetter>,
        applied: watch::Sender<u64>,
    ) -> anyhow::Result<Worker> {
        let idle = program
            .streams
            .iter()
            .map(|s| IdleStream {
                idle: s.idle,
                lateness: s.lateness,
                max_time: None,
                last_arrival: 0,
            })
            .collect();
        let engine = Engine::new(program).context("cannot compile the rules")?;
        Ok(Worker {
            engine,
            profiles,
            clock,
            dedupe: Dedupe::new(dedupe_window),
            idle,
            routes,
            sinks,
            dead,
            applied,
            last_seq: 0,
            bad: BadMessages::default(),
            duplicates_log: BadMessages::default(),
            report: WorkerReport::default(),
            alerts: Vec::new(),
            stopped_sinks: HashSet::new(),
        })
    }

    /// Takes inputs until the queue closes. After each batch: commit, then report the
    /// messages applied so the source acknowledges them.
    pub fn run(&mut self, mut queue: mpsc::Receiver<Input>) {
        while let Some(first) = queue.blocking_recv() {
            self.handle(first);
            for _ in 0..1024 {
                match queue.try_recv() {
                    Ok(input) => self.handle(input),
                    Err(_) => break,
                }
            }
            self.commit();
        }
        self.commit();
    }

    /// The seam for durable state: once per-key state and the outbox are persisted, they
    /// are written here, before any message of the batch is acknowledged.
    fn commit(&mut self) {
        self.applied.send_if_modified(|v| {
            let changed = *v != self.last_seq;
            *v = self.last_seq;
            changed
        });
    }

    /// Handles one input.
    pub fn handle(&mut self, input: Input) {
        match input {
            Input::Message(m) => self.message(m),
            Input::Tick => self.tick(),
        }
    }

    fn message(&mut self, m: Inbound) {
        let now = self.clock.now();
        self.report.messages += 1;
        self.last_seq = m.seq;
        if !self.dedupe.first_time(&m.topic, &m.payload) {
            self.report.duplicates += 1;
            if let Some(n) = self.duplicates_log.record("duplicate", now) {
                tracing::info!(topic = %m.topic, not_logged_since = n, "dropped a redelivered message (logged at most once a minute)");
            }
            return;
        }
        let Some((index, captures)) = crate::devices::route(&self.profiles, &m.topic) else {
            let message = format!("no device profile claims topic `{}`", m.topic);
            self.dead_letter(&m, now, deadletter::reason::NO_PROFILE, message, None);
            return;
        };
        let profile = &self.profiles[index];
        let event = match profile.decode_matched(&captures, &m.payload, m.retain) {
            Ok(e) => e,
            Err(e) => {
                let name = Some(profile.name.clone());
                self.dead_letter(&m, now, e.reason(), e.to_string(), name);
                return;
            }
        };
        let stream = event.stream as usize;
        let time = event.time;
        let alerts = &mut self.alerts;
        match self.engine.push(event, &mut |a| alerts.push(a)) {
            Ok(()) => {
                if let Some(s) = self.idle.get_mut(stream) {
                    s.max_time = Some(s.max_time.map_or(time, |t| t.max(time)));
                    s.last_arrival = now;
                }
            }
            Err(late) => {
                let name = Some(self.profiles[index].name.clone());
                self.dead_letter(&m, now, deadletter::reason::LATE, late.to_string(), name);
            }
        }
        self.dispatch(now);
    }

    /// Advances time for streams silent longer than their idle timeout: each such stream's
    /// time moves on from its last event by the wall time elapsed since (minus its lateness,
    /// as any watermark). Streams still receiving events hold time back to their watermark,
    /// so none of their events become late.
    pub fn tick(&mut self) {
        let now = self.clock.now();
        // Each group of streams keeps its own event time: advance the groups that have an
        // idle stream, each to the least of its streams' times.
        let groups: Vec<Vec<StreamId>> = self.engine.groups().to_vec();
        let mut advanced = false;
        for (g, streams) in groups.iter().enumerate() {
            let mut target: Option<Nanos> = None;
            let mut any_idle = false;
            for stream in streams {
                let Some(s) = self.idle.get(stream.0 as usize) else {
                    continue;
                };
                let Some(max) = s.max_time else { continue };
                let quiet = now.saturating_sub(s.last_arrival);
                let t = if s.idle > 0 && quiet >= s.idle {
                    any_idle = true;
                    max.saturating_add(quiet)
                        .saturating_sub(s.lateness)
                        .saturating_sub(1)
                } else {
                    self.engine.watermark(*stream)
                };
                target = Some(target.map_or(t, |x: Nanos| x.min(t)));
            }
            if let (true, Some(t)) = (any_idle, target) {
                let alerts = &mut self.alerts;
                self.engine.advance_group(g, t, &mut |a| alerts.push(a));
                advanced = true;
            }
        }
        if advanced {
            self.dispatch(now);
        }
    }

    fn dispatch(&mut self, now: Nanos) {
        for alert in self.alerts.drain(..) {
            self.report.alerts += 1;
            let targets = self.routes.get(&alert.rule).map_or(&[][..], |t| &t[..]);
            if targets.is_empty() {
                self.report.undelivered += 1;
                continue;
            }
            let emitted = Arc::new(Emitted::new(alert, now));
            for &i in targets {
                let Some((name, tx)) = self.sinks.get(i) else {
                    continue;
                };
                if tx.blocking_send(Arc::clone(&emitted)).is_err() {
                    self.report.undelivered += 1;
                    if self.stopped_sinks.insert(i) {
                        tracing::error!(sink = %name, "the sink has stopped: its alerts are counted as undelivered");
                    }
                }
            }
        }
    }

    fn dead_letter(
        &mut self,
        m: &Inbound,
        now: Nanos,
        reason: &'static str,
        message: String,
        profile: Option<String>,
    ) {
        let letter = DeadLetter {
            received_at: now,
            reason,
            message,
            topic: m.topic.clone(),
            payload: m.payload.clone(),
            retain: m.retain,
            profile,
        };
        self.bad.report(&letter);
        if self.dead.blocking_send(letter).is_err() {
            tracing::error!(reason, topic = %m.topic, "the dead-letter sink has stopped");
        }
    }

    /// What the worker did so far.
    pub fn report(&self) -> WorkerReport {
        let stats = self.engine.stats();
        WorkerReport {
            events: stats.events,
            bad: self.bad.counts().clone(),
            ..self.report.clone()
        }
    }
}

/// Remembers the last `capacity` messages (topic and payload, hashed) to drop redeliveries:
/// after a reconnect the broker sends again what it had not seen acknowledged, and some of it
/// was applied already. A device reading carries its time, so the same payload on the same
/// topic is the same reading.
struct Dedupe {
    capacity: usize,
    seen: HashSet<u64>,
    order: VecDeque<u64>,
}

impl Dedupe {
    fn new(capacity: usize) -> Dedupe {
        Dedupe {
            capacity,
            seen: HashSet::with_capacity(capacity.min(1 << 16)),
            order: VecDeque::with_capacity(capacity.min(1 << 16)),
        }
    }

    /// True the first time a message is seen within the window.
    fn first_time(&mut self, topic: &str, payload: &[u8]) -> bool {
        if self.capacity == 0 {
            return true;
        }
        let mut h = std::hash::DefaultHasher::new();
        topic.hash(&mut h);
        payload.hash(&mut h);
        let key = h.finish();
        if !self.seen.insert(key) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > self.capacity
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::lang::source::Sources;
    use bytes::Bytes;

    const PROFILE: &str = r#"
stream = "heartbeat"
topic = "devices/{device_id}/heartbeat"
time = "ts"
key = "device_id"
lateness = "2s"
idle = "30s"
[fields]
ts = { type = "timestamp", format = "epoch_ms" }
battery = "float?"
"#;

    const RULES: &str = r#"
rule device_offline {
    from heartbeat
    key device_id
    match seen: heartbeat
        not followed by heartbeat
    within 30s
    emit device_offline severity critical { device: key }
}
rule low_battery {
    from heartbeat
    key device_id
    match a: heartbeat where battery < 0.1
    emit low_battery severity warning { device: key, battery: a.battery }
    to stdout
}
"#;

    struct Harness {
        worker: Worker,
        clock: Arc<ManualClock>,
        alerts: mpsc::Receiver<Arc<Emitted>>,
        dead: mpsc::Receiver<DeadLetter>,
        applied: watch::Receiver<u64>,
        seq: u64,
    }

    fn harness() -> Harness {
        let mut sources = Sources::new();
        let file = sources.add("heartbeat.toml", PROFILE);
        let (profile, diags) = crate::devices::load_source(file, &mut sources, "heartbeat", None);
        assert!(diags.is_empty(), "{diags:?}");
        let mut profile = profile.unwrap();
        let (program, diags) = crate::compile::check_text(
            &mut sources,
            &[("rules.tern", RULES)],
            vec![profile.schema().clone()],
            &["stdout".to_string()],
        );
        assert!(diags.iter().all(|d| !d.is_error()), "{diags:?}");
        profile.set_stream_index(program.stream_id("heartbeat").unwrap().0);
        let program = Arc::new(program);
        let clock = Arc::new(ManualClock::new(1_000 * 1_000_000_000));
        let (alert_tx, alerts) = mpsc::channel(64);
        let (dead_tx, dead) = mpsc::channel(64);
        let (applied_tx, applied) = watch::channel(0);
        let routes = program
            .rules
            .iter()
            .map(|r| (Arc::from(r.name.as_str()), vec![0]))
            .collect();
        let worker = Worker::new(
            program,
            vec![profile],
            clock.clone(),
            100,
            routes,
            vec![("test".into(), alert_tx)],
            dead_tx,
            applied_tx,
        )
        .unwrap();
        Harness {
            worker,
            clock,
            alerts,
            dead,
            applied,
            seq: 0,
        }
    }

    impl Harness {
        fn send(&mut self, topic: &str, payload: &str) {
            self.seq += 1;
            self.worker.handle(Input::Message(Inbound {
                seq: self.seq,
                topic: topic.into(),
                payload: Bytes::copy_from_slice(payload.as_bytes()),
                retain: false,
            }));
        }

        fn alert_names(&mut self) -> Vec<String> {
            let mut out = Vec::new();
            while let Ok(a) = self.alerts.try_recv() {
                out.push(format!("{} {}", a.alert.name, a.alert.key));
            }
            out
        }
    }

    #[test]
    fn idle_stream_advances_with_the_injected_clock() {
        let mut h = harness();
        let t0 = 1_709_280_000_000i64;
        h.send("devices/d1/heartbeat", &format!(r#"{{"ts": {t0}}}"#));
        h.send(
            "devices/d2/heartbeat",
            &format!(r#"{{"ts": {}}}"#, t0 + 10_000),
        );
        h.worker.tick();
        assert!(h.alert_names().is_empty());
        // d1's deadline is t0 + 30 s. Quiet for 29 s: not idle yet.
        h.clock.advance(Duration::from_secs(29));
        h.worker.tick();
        assert!(h.alert_names().is_empty());
        // Idle at 30 s: time moves to t0 + 10 s + 30 s - 2 s lateness: only d1 is overdue.
        h.clock.advance(Duration::from_secs(1));
        h.worker.tick();
        assert_eq!(h.alert_names(), ["device_offline \"d1\""]);
        // d2's deadline is t0 + 40 s. After 32 s of quiet, time is 1 ns short of it (a
        // watermark is the newest time minus lateness minus 1 ns); after 33 s it is past.
        h.clock.advance(Duration::from_secs(2));
        h.worker.tick();
        assert!(h.alert_names().is_empty());
        h.clock.advance(Duration::from_secs(1));
        h.worker.tick();
        assert_eq!(h.alert_names(), ["device_offline \"d2\""]);
        h.clock.advance(Duration::from_secs(60));
        h.worker.tick();
        assert!(h.alert_names().is_empty());
    }

    #[test]
    fn bad_late_and_duplicate_messages() {
        let mut h = harness();
        let t0 = 1_709_280_000_000i64;
        h.send(
            "devices/d1/heartbeat",
            &format!(r#"{{"ts": {t0}, "battery": 0.05}}"#),
        );
        // The same message again (a redelivery): dropped, so no second alert.
        h.send(
            "devices/d1/heartbeat",
            &format!(r#"{{"ts": {t0}, "battery": 0.05}}"#),
        );
        h.send("devices/d1/heartbeat", "{not json");
        h.send("devices/d1/heartbeat", r#"{"battery": 0.5}"#);
        h.send("elsewhere/d1", "{}");
        // Event time moves 60 s on: the first reading is released (low battery) and its
        // absence bound has passed (offline).
        h.send(
            "devices/d1/heartbeat",
            &format!(r#"{{"ts": {}}}"#, t0 + 60_000),
        );
        h.send(
            "devices/d1/heartbeat",
            &format!(r#"{{"ts": {t0}, "battery": 0.5}}"#),
        );
        h.worker.commit();
        assert_eq!(*h.applied.borrow(), 7);
        let mut reasons = Vec::new();
        while let Ok(l) = h.dead.try_recv() {
            reasons.push(l.reason);
        }
        assert_eq!(
            reasons,
            ["invalid_json", "missing_field", "no_profile", "late"]
        );
        let r = h.worker.report();
        assert_eq!(r.messages, 7);
        assert_eq!(r.duplicates, 1);
        assert_eq!(r.events, 2);
        assert_eq!(r.bad.values().sum::<u64>(), 4);
        assert_eq!(
            h.alert_names(),
            ["low_battery \"d1\"", "device_offline \"d1\""]
        );
    }

    #[test]
    fn dedupe_window_forgets_old_messages() {
        let mut d = Dedupe::new(2);
        assert!(d.first_time("t", b"a"));
        assert!(!d.first_time("t", b"a"));
        assert!(d.first_time("u", b"a"));
        assert!(d.first_time("t", b"b"));
        assert!(d.first_time("t", b"a"));
        let mut off = Dedupe::new(0);
        assert!(off.first_time("t", b"a") && off.first_time("t", b"a"));
    }
}
