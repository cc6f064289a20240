//! The live pipeline behind `tern run` (and `tern demo`):
//!
//! ```text
//! MQTT source --queue--> engine thread: dedupe, route + decode, Engine::push
//!      ^                        |  alerts --> outbox (RocksDB) --> one dispatcher per sink
//!      |                        |  bad messages --> dead-letter sink
//!      +---- applied seq -------+  (acks in arrival order once durable)
//! ```
//!
//! The engine is synchronous and owns all per-key state, so it runs on one dedicated thread
//! fed by a bounded channel. After each batch it commits: the batch's alerts are staged in
//! the outbox, where the sinks see them at once, and written with the state they came from
//! in one synced RocksDB write; only then is the highest sequence number applied published,
//! which lets the source acknowledge those messages. Sinks read the outbox on their own (see
//! [`crate::delivery`]). A ticker wakes the engine thread every second so that streams
//! quiet for longer than their `idle` timeout advance in time from the wall clock; the clock
//! is injected ([`Clock`]) so that tests control it.
//!
//! Shutdown: the caller cancels the token; the source stops forwarding and drains; the engine
//! thread applies everything queued and exits when its queue closes; then the sinks deliver
//! what the outbox holds for up to `drain_timeout`, and what is left waits in the outbox for
//! the next start. Pending absences are not fired: the next run continues from the broker's
//! queue.

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
use crate::delivery::dispatch::{self, Outbox, Route, SinkReport};
use crate::delivery::{self, Deliver, OutAlert};
use crate::devices::Profile;
use crate::engine::Engine;
use crate::engine::alert::Alert;
use crate::engine::persist::{self, StateWriter};
use crate::event::Nanos;
use crate::io::control::{Handle, KeyError, KeyInfo, ReloadOutcome, Request, RuleInfo};
use crate::io::deadletter::{
    self, BadMessages, DeadLetter, DeadLetterReport, DeadLetterSink, Letter,
};
use crate::io::mqtt::{self, Inbound, MqttSource, Publisher, SourceReport, SourceStatus};
use crate::io::reload::{self, LoadFailure, Loader, RuleSet};
use crate::lang::diagnostic::Diagnostic;
use crate::lang::source::Sources;
use crate::metrics::{EngineMetrics, Metrics};
use crate::store::{Ops, Store};

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
    loader: Loader,
    places: reload::Places,
    password: Option<SecretString>,
    warnings: (Sources, Vec<Diagnostic>),
    extra_sinks: Vec<(String, Box<dyn Deliver>)>,
    taps: Vec<(String, Box<dyn Deliver>)>,
    clock: Arc<dyn Clock>,
    status: watch::Sender<SourceStatus>,
    control: Handle,
    requests: mpsc::Receiver<Request>,
    metrics: Arc<Metrics>,
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
        extra_sinks: Vec<(String, Box<dyn Deliver>)>,
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
        let mut sink_names = config.sink_names();
        for (name, _) in &extra_sinks {
            if !sink_names.contains(name) {
                sink_names.push(name.clone());
            }
        }
        let loader = Loader {
            rules: config.rules.clone(),
            devices: config.devices.clone(),
            sinks: sink_names,
        };
        let set = match loader.load() {
            Ok(set) => set,
            Err(LoadFailure::Rejected {
                sources,
                diagnostics,
            }) => {
                return Err(StartError::Rejected {
                    sources,
                    diagnostics,
                });
            }
            Err(LoadFailure::Failed(e)) => return Err(StartError::Failed(e)),
        };
        let (control, requests) = Handle::new();
        Ok(Pipeline {
            config,
            program: set.program,
            profiles: set.profiles,
            loader,
            places: set.places,
            password,
            warnings: (set.sources, set.warnings),
            extra_sinks,
            taps: Vec::new(),
            clock: Arc::new(SystemClock),
            status: watch::Sender::new(SourceStatus::default()),
            control,
            requests,
            metrics: Arc::new(Metrics::new()),
        })
    }

    /// Adds a sink that receives every rule's alerts whatever the rules' `to` says (the
    /// demo's console). It has its own place in the outbox under `name`.
    pub fn with_tap(mut self, name: &str, sink: Box<dyn Deliver>) -> Pipeline {
        self.taps.push((name.to_owned(), sink));
        self
    }

    /// Counts into `metrics` (the admin endpoint's registry) instead of a registry of its
    /// own.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Pipeline {
        self.metrics = metrics;
        self
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
        reload::subscriptions(&self.profiles)
    }

    /// Watches the source's connection (connected, subscribed): ready once subscribed.
    pub fn status(&self) -> watch::Receiver<SourceStatus> {
        self.status.subscribe()
    }

    /// Sends requests (reload, rules, a key's partial matches) to the running pipeline.
    pub fn handle(&self) -> Handle {
        self.control.clone()
    }

    /// The broker the source connects to (the embedded one without `[broker]`).
    pub fn broker(&self) -> BrokerConfig {
        self.config
            .broker
            .clone()
            .unwrap_or_else(|| BrokerConfig::local(self.config.embedded_broker.listen))
    }

    /// Runs until `shutdown` is cancelled, then drains and flushes (see the module docs).
    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<Summary> {
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
        let (filters_tx, filters_rx) = watch::channel(filters.clone());
        let source = MqttSource::new(
            broker.clone(),
            self.password.clone(),
            filters,
            self.config.qos,
            self.config.queue,
        )?
        .with_status(self.status.clone())
        .with_filter_updates(filters_rx);

        // Everything that can fail at startup (state, files, TLS) is opened before any task
        // starts.
        let state_dir = self.config.state_dir.clone();
        let sync = self.config.state_sync;
        let store = Arc::new(
            tokio::task::spawn_blocking(move || Store::open(&state_dir, sync))
                .await
                .context("opening the state directory")??,
        );
        self.metrics.set_state_open(true);
        let ctx = delivery::BuildContext {
            broker: &broker,
            password: self.password.as_ref(),
        };
        let (routing, mut sinks) = plan_sinks(
            &self.config,
            &self.program,
            self.extra_sinks,
            self.taps,
            &ctx,
        )?;
        let places = std::mem::take(&mut self.places);
        let routes = routing.routes(&self.program);
        // Outbox entries of a format-1 directory carry no sinks: they follow today's rules.
        for (route, _) in &mut sinks {
            route.rules = routes
                .iter()
                .filter(|(_, to)| to.contains(&route.name))
                .map(|(rule, _)| rule.clone())
                .collect();
        }
        let names: Vec<String> = sinks.iter().map(|(r, _)| r.name.clone()).collect();
        let outbox = Arc::new(
            Outbox::open(Arc::clone(&store), &names, self.config.outbox_capacity)?
                .with_metrics(&self.metrics, &names),
        );
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

        // Dead letters.
        let (dead_tx, dead_rx) = mpsc::channel(4096);
        let dead_task = tokio::spawn(dead_letters.run(dead_rx, shutdown.clone()));

        // One dispatcher per sink.
        let drain = CancellationToken::new();
        let stop = CancellationToken::new();
        let mut sink_tasks = Vec::new();
        for (index, (route, sink)) in sinks.into_iter().enumerate() {
            let clock = Arc::clone(&self.clock);
            let name = route.name.clone();
            let task = tokio::spawn(dispatch::run(
                Arc::clone(&outbox),
                index,
                route,
                sink,
                dead_tx.clone(),
                Arc::new(move || clock.now()),
                drain.clone(),
                stop.clone(),
            ));
            sink_tasks.push((name, task));
        }

        // The engine thread.
        let (in_tx, in_rx) = mpsc::channel(self.config.queue);
        let (applied_tx, applied_rx) = watch::channel(0u64);
        let mut worker = Worker::new(
            Arc::clone(&self.program),
            self.profiles,
            Arc::clone(&self.clock),
            self.config.dedupe_window,
            routes,
            Arc::clone(&outbox),
            dead_tx,
            applied_tx,
        )?
        .with_shutdown(shutdown.clone())
        .with_places(places)
        .with_metrics(Arc::clone(&self.metrics));
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("tern-engine".into())
            .spawn(move || {
                worker.run(in_rx);
                let _ = done_tx.send(worker.report());
            })
            .context("cannot start the engine thread")?;

        // Reloads and questions from SIGHUP, the file watcher and the admin API.
        let requests = tokio::spawn(serve_requests(
            self.requests,
            self.loader.clone(),
            routing,
            in_tx.clone(),
            filters_tx,
            shutdown.clone(),
        ));
        tokio::spawn(reload::on_sighup(self.control.clone(), shutdown.clone()));
        if self.config.watch_rules {
            tokio::spawn(reload::watch(
                self.loader.clone(),
                Duration::from_secs(1),
                self.control.clone(),
                shutdown.clone(),
            ));
        }

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
        let _ = requests.await;
        let engine = done_rx.await.context("the engine thread failed")?;

        // The sinks deliver what the outbox holds, for a while.
        drain.cancel();
        let drain_timeout = self.config.drain_timeout;
        let give_up = stop.clone();
        let stopper = tokio::spawn(async move {
            tokio::time::sleep(drain_timeout).await;
            give_up.cancel();
        });
        let mut sink_reports = Vec::new();
        for (name, task) in sink_tasks {
            match task.await {
                Ok(Ok(r)) => {
                    if r.left > 0 {
                        tracing::warn!(sink = %name, alerts = r.left,
                            "alerts not delivered before shutdown wait in the outbox for the next start");
                    }
                    sink_reports.push((name, r));
                }
                Ok(Err(e)) => {
                    tracing::error!(sink = %name, error = %format!("{e:#}"), "sink failed");
                }
                Err(e) => tracing::error!(sink = %name, error = %e, "sink task failed"),
            }
        }
        stopper.abort();
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
        drop(outbox);
        self.metrics.set_state_open(false);
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
    /// Alerts of rules that no configured sink receives (counted, not stored).
    pub undelivered: u64,
    /// Alerts written to the outbox.
    pub stored: u64,
}

/// Where each rule's alerts go: rule name to sink names.
pub type Routes = HashMap<String, Arc<[String]>>;

/// The sinks of a run, which stay for its whole life, and how rules map onto them. A reload
/// recomputes the routes for its rules against the same sinks.
#[derive(Debug, Clone)]
pub struct Routing {
    /// Configured and caller-given sinks, in order.
    sinks: Vec<String>,
    /// Sinks that receive every rule (the demo's console).
    taps: Vec<String>,
    /// No sink was configured: every alert goes to stdout.
    nothing_configured: bool,
    /// A `stdout` sink runs, configured or not.
    stdout: bool,
}

impl Routing {
    /// Rule name to the sinks it sends to. Rules name sinks in `to` (every configured sink
    /// without it). A name that is not a sink is warned about here.
    pub fn routes(&self, program: &Program) -> Routes {
        let mut routes = Routes::new();
        let mut missing: BTreeMap<String, Vec<&str>> = BTreeMap::new();
        let mut nowhere = Vec::new();
        for rule in &program.rules {
            let named: Vec<String> = if self.nothing_configured {
                vec!["stdout".into()]
            } else if rule.sinks.is_empty() {
                self.sinks.clone()
            } else {
                rule.sinks.clone()
            };
            let mut to: Vec<String> = Vec::new();
            for name in named {
                if self.sinks.contains(&name) || (name == "stdout" && self.stdout) {
                    if !to.contains(&name) {
                        to.push(name);
                    }
                } else {
                    missing.entry(name).or_default().push(&rule.name);
                }
            }
            if to.is_empty() {
                nowhere.push(rule.name.as_str());
            }
            for tap in &self.taps {
                if !to.contains(tap) {
                    to.push(tap.clone());
                }
            }
            if !to.is_empty() {
                routes.insert(rule.name.clone(), to.into());
            }
        }
        for (sink, rules) in &missing {
            tracing::warn!(
                target: "tern::routing",
                sink = %sink,
                rules = %rules.join(", "),
                "rules send to a sink that tern.toml does not configure: those alerts are not sent there"
            );
        }
        if !nowhere.is_empty() {
            tracing::warn!(
                target: "tern::routing",
                rules = %nowhere.join(", "),
                "no configured sink receives these rules' alerts: they are counted, not delivered"
            );
        }
        routes
    }
}

/// Sinks to start, each with its dispatcher's route.
type Sinks = Vec<(Route, Box<dyn Deliver>)>;

/// Builds the sinks to start. `stdout` works without configuration when a rule names it;
/// without any configured sink every alert goes to it.
fn plan_sinks(
    config: &Config,
    program: &Program,
    extra: Vec<(String, Box<dyn Deliver>)>,
    taps: Vec<(String, Box<dyn Deliver>)>,
    ctx: &delivery::BuildContext<'_>,
) -> anyhow::Result<(Routing, Sinks)> {
    let mut sinks: Sinks = Vec::new();
    let route = |name: &str, filter| Route {
        name: name.to_owned(),
        rules: HashSet::new(),
        filter,
    };
    for s in &config.sinks {
        if extra.iter().any(|(n, _)| *n == s.name) {
            continue;
        }
        let built = delivery::build(s, ctx).with_context(|| format!("sink `{}`", s.name))?;
        sinks.push((route(&s.name, s.filter.clone()), built));
    }
    for (name, sink) in extra {
        let filter = config
            .sink(&name)
            .map(|s| s.filter.clone())
            .unwrap_or_default();
        sinks.push((route(&name, filter), sink));
    }
    let nothing_configured = sinks.is_empty();
    let configured: Vec<String> = sinks.iter().map(|(r, _)| r.name.clone()).collect();
    let named_stdout = nothing_configured
        || program
            .rules
            .iter()
            .any(|r| r.sinks.iter().any(|s| s == "stdout"));
    let stdout = configured.iter().any(|n| n == "stdout") || named_stdout;
    if !configured.iter().any(|n| n == "stdout") && named_stdout {
        sinks.push((
            route("stdout", Default::default()),
            Box::new(delivery::stdout::StdoutSink::new(StdoutFormat::Text)),
        ));
    }
    let mut tap_names = Vec::new();
    for (name, sink) in taps {
        tap_names.push(name.clone());
        sinks.push((route(&name, Default::default()), sink));
    }
    let routing = Routing {
        sinks: configured,
        taps: tap_names,
        nothing_configured,
        stdout,
    };
    Ok((routing, sinks))
}

/// What the engine thread receives.
#[derive(Debug)]
pub enum Input {
    /// A message from the broker.
    Message(Inbound),
    /// Time to check idle streams.
    Tick,
    /// Run a new rule set, between two batches.
    Reload(Box<Swap>),
    /// Answer a question about the running rules.
    Query(Request),
}

/// A checked rule set on its way to the engine thread.
pub struct Swap {
    /// The rules and profiles.
    pub set: RuleSet,
    /// Where the new rules' alerts go.
    pub routes: Routes,
    /// Where the answer goes.
    pub reply: tokio::sync::oneshot::Sender<ReloadOutcome>,
}

impl std::fmt::Debug for Swap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Swap")
            .field("rules", &self.set.program.rules.len())
            .finish_non_exhaustive()
    }
}

/// Serves [`Request`]s until `shutdown`: a reload is loaded and checked here, off the engine
/// thread, and only a valid set is sent on; questions go to the engine thread as they are.
async fn serve_requests(
    mut requests: mpsc::Receiver<Request>,
    loader: Loader,
    routing: Routing,
    engine: mpsc::Sender<Input>,
    filters: watch::Sender<Vec<String>>,
    shutdown: CancellationToken,
) {
    loop {
        let request = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            r = requests.recv() => match r {
                Some(r) => r,
                None => return,
            },
        };
        let (cause, reply) = match request {
            Request::Reload { cause, reply } => (cause, reply),
            question => {
                if engine.send(Input::Query(question)).await.is_err() {
                    return;
                }
                continue;
            }
        };
        let l = loader.clone();
        let loaded = match tokio::task::spawn_blocking(move || l.load()).await {
            Ok(loaded) => loaded,
            Err(e) => Err(LoadFailure::Failed(anyhow::anyhow!(
                "the loader failed: {e}"
            ))),
        };
        let set = match loaded {
            Ok(set) => set,
            Err(failure) => {
                let outcome = failure.outcome();
                reload::log_outcome(cause, &outcome);
                let _ = reply.send(outcome);
                continue;
            }
        };
        if !set.warnings.is_empty() {
            let text = crate::lang::render::to_text(&set.sources, &set.warnings);
            tracing::warn!(cause, "the new rules have warnings:\n{}", text.trim_end());
        }
        let routes = routing.routes(&set.program);
        let subscriptions = reload::subscriptions(&set.profiles);
        let (done, answer) = tokio::sync::oneshot::channel();
        let swap = Swap {
            set,
            routes,
            reply: done,
        };
        if engine.send(Input::Reload(Box::new(swap))).await.is_err() {
            return;
        }
        let Ok(outcome) = answer.await else { return };
        reload::log_outcome(cause, &outcome);
        if matches!(outcome, ReloadOutcome::Reloaded(_)) {
            filters.send_if_modified(|f| {
                let changed = *f != subscriptions;
                *f = subscriptions;
                changed
            });
        }
        let _ = reply.send(outcome);
    }
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
    /// State changes of the current batch.
    ops: Ops,
    idle: Vec<IdleStream>,
    /// Where each rule's alerts go; a rule missing here is counted, not delivered.
    routes: Routes,
    outbox: Arc<Outbox>,
    dead: mpsc::Sender<Letter>,
    applied: watch::Sender<u64>,
    last_seq: u64,
    bad: BadMessages,
    duplicates_log: BadMessages,
    report: WorkerReport,
    alerts: Vec<Alert>,
    /// Per rule, the file and line that define it (for `GET /rules`).
    places: reload::Places,
    /// Alerts per rule since it started running.
    alerts_by_rule: HashMap<Arc<str>, u64>,
    /// Events counted by engines replaced by reloads.
    events_before: u64,
    /// Alerts of the current batch with their sinks, for the outbox.
    staged: Vec<(OutAlert, Arc<[String]>)>,
    shutdown: CancellationToken,
    metrics: EngineMetrics,
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
        outbox: Arc<Outbox>,
        dead: mpsc::Sender<Letter>,
        applied: watch::Sender<u64>,
    ) -> anyhow::Result<Worker> {
        let idle: Vec<IdleStream> = program
            .streams
            .iter()
            .map(|s| IdleStream {
                idle: s.idle,
                lateness: s.lateness,
                max_time: None,
                last_arrival: 0,
            })
            .collect();
        let metrics = EngineMetrics::new(Arc::new(Metrics::new()), &program);
        let store = Arc::clone(outbox.store());
        let engine = open_engine(program, &store)?;
        // The messages the last run applied, so the broker's redeliveries of them are
        // dropped.
        let mut stale = Ops::default();
        let dedupe = Dedupe::load(
            dedupe_window,
            store.scan(crate::store::cf::DEDUPE)?,
            &mut stale,
        );
        if !stale.is_empty() {
            let mut batch = store.batch();
            batch.apply(&stale)?;
            store.write(batch)?;
        }
        let now = clock.now();
        let mut idle: Vec<IdleStream> = idle;
        for (i, s) in idle.iter_mut().enumerate() {
            s.max_time = engine.newest(StreamId(i as u32));
            s.last_arrival = now;
        }
        Ok(Worker {
            engine,
            profiles,
            clock,
            dedupe,
            ops: Ops::default(),
            idle,
            routes,
            outbox,
            dead,
            applied,
            last_seq: 0,
            bad: BadMessages::default(),
            duplicates_log: BadMessages::default(),
            report: WorkerReport::default(),
            alerts: Vec::new(),
            places: reload::Places::new(),
            alerts_by_rule: HashMap::new(),
            events_before: 0,
            staged: Vec::new(),
            shutdown: CancellationToken::new(),
            metrics,
        })
    }

    /// Counts into `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Worker {
        self.metrics = EngineMetrics::new(metrics, self.engine.program());
        self
    }

    /// Names the file and line of each rule, for the rules a request lists.
    pub fn with_places(mut self, places: reload::Places) -> Worker {
        self.places = places;
        self
    }

    /// Lets the worker know when the pipeline shuts down: the outbox's size cap then no
    /// longer holds it back, since intake has stopped anyway.
    pub fn with_shutdown(mut self, shutdown: CancellationToken) -> Worker {
        self.shutdown = shutdown;
        self
    }

    /// Takes inputs until the queue closes. After each batch: commit, then report the
    /// messages applied so the source acknowledges them.
    pub fn run(&mut self, mut queue: mpsc::Receiver<Input>) {
        let mut full_since: Option<std::time::Instant> = None;
        loop {
            // A full outbox holds the engine back, and through its queue the broker.
            while !self.shutdown.is_cancelled()
                && !self.outbox.wait_for_room(Duration::from_secs(1))
            {
                if full_since.is_none() {
                    tracing::warn!(
                        pending = self.outbox.pending(),
                        "the outbox is full: reading from the broker pauses until the sinks catch up"
                    );
                    full_since = Some(std::time::Instant::now());
                }
            }
            if let Some(since) = full_since.take() {
                tracing::info!(paused = ?since.elapsed(), "the outbox has room again: reading resumes");
            }
            let Some(first) = queue.blocking_recv() else {
                break;
            };
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

    /// Stages the batch's alerts, where the sinks take them at once, writes them with the
    /// state they came from (one synced write), then lets the source acknowledge the batch's
    /// messages. A failed write is retried: acknowledging without it could lose the alerts.
    fn commit(&mut self) {
        let started = std::time::Instant::now();
        if let Err(e) = self.engine.persist(&mut self.ops) {
            // Encoding state cannot fail for values the engine built; if it does, the alerts
            // and acknowledgements still go ahead, and the state is as after a crash.
            tracing::error!(error = %format!("{e:#}"), "cannot encode engine state");
        }
        self.dedupe.persist(&mut self.ops);
        // Delivering before the write is durable keeps the fsync off every alert's way out
        // (see `crate::delivery::dispatch`).
        let alerts = self.outbox.stage(std::mem::take(&mut self.staged));
        if !alerts.is_empty() || !self.ops.is_empty() {
            let mut failures = 0u32;
            loop {
                let store = self.outbox.store();
                let mut batch = store.batch();
                let written = batch
                    .apply(&self.ops)
                    .and_then(|()| Outbox::put(&mut batch, &alerts))
                    .and_then(|()| store.write(batch));
                match written {
                    Ok(()) => break,
                    Err(e) => {
                        failures += 1;
                        if failures == 1 || failures.is_multiple_of(60) {
                            tracing::error!(error = %format!("{e:#}"), failures,
                                "cannot write state and alerts; retrying every second, nothing is acknowledged meanwhile");
                        }
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            }
            self.ops.clear();
            self.metrics.checkpoint(started.elapsed());
            if let Some(last) = alerts.last() {
                self.report.stored += alerts.len() as u64;
                tracing::debug!(
                    alerts = alerts.len(),
                    stored = self.report.stored,
                    "alerts written to the outbox"
                );
                self.outbox.committed(last.seq + 1);
            }
        }
        self.applied.send_if_modified(|v| {
            let changed = *v != self.last_seq;
            *v = self.last_seq;
            changed
        });
        let engine = &self.engine;
        self.metrics
            .watermarks(|stream| engine.watermark(StreamId(stream)));
    }

    /// Handles one input.
    pub fn handle(&mut self, input: Input) {
        match input {
            Input::Message(m) => self.message(m),
            Input::Tick => self.tick(),
            Input::Reload(swap) => {
                let Swap { set, routes, reply } = *swap;
                let outcome = self.swap(set, routes);
                let _ = reply.send(outcome);
            }
            Input::Query(request) => self.answer(request),
        }
    }

    /// Replaces the running rules with `set`. Everything before is committed first, then
    /// the new engine loads its state from the store as a restart would: a rule whose
    /// fingerprint is unchanged keeps its partial matches, a changed or removed one loses
    /// them (one log line each), a new one starts empty.
    fn swap(&mut self, set: RuleSet, routes: Routes) -> ReloadOutcome {
        let started = std::time::Instant::now();
        self.commit();
        let mut report = reload::compare(self.engine.program(), &set.program);
        if self.engine.runs_same_as(&set.program) {
            // Nothing the engine runs changed (a comment, a profile's topic, a rule's sinks):
            // keep it, state and all, and swap what lives around it.
            self.profiles = set.profiles;
            self.routes = routes;
            self.places = set.places;
            report.keys = self.engine.stats().keys;
            report.paused_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            return ReloadOutcome::Reloaded(report);
        }
        let store = Arc::clone(self.outbox.store());
        // The old engine goes before the new one loads, so the two never take memory at
        // once: everything it holds is in the store, committed above.
        let empty = Arc::new(Program {
            streams: Vec::new(),
            aggregates: Vec::new(),
            rules: Vec::new(),
            imports: Vec::new(),
        });
        let old = match Engine::new(empty) {
            Ok(e) => std::mem::replace(&mut self.engine, e),
            Err(e) => {
                return ReloadOutcome::Failed {
                    error: format!("{e:#}"),
                };
            }
        };
        let old_program = Arc::clone(old.program());
        self.events_before += old.stats().events;
        drop(old);
        let engine = match open_engine(Arc::clone(&set.program), &store) {
            Ok(e) => e,
            Err(e) => {
                // Back to the rules that ran, from the same state.
                match open_engine(old_program, &store) {
                    Ok(back) => self.engine = back,
                    Err(again) => tracing::error!(error = %format!("{again:#}"),
                        "cannot load the running rules' state back: they start afresh"),
                }
                return ReloadOutcome::Failed {
                    error: format!("{e:#}"),
                };
            }
        };
        // Idle tracking follows streams by name: their ids may differ in the new program.
        let now = self.clock.now();
        let idle = set
            .program
            .streams
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let last_arrival = old_program
                    .stream_id(&s.name)
                    .and_then(|old| self.idle.get(old.0 as usize))
                    .map_or(now, |o| o.last_arrival);
                IdleStream {
                    idle: s.idle,
                    lateness: s.lateness,
                    max_time: engine.newest(StreamId(i as u32)),
                    last_arrival,
                }
            })
            .collect();
        self.engine = engine;
        self.metrics.for_program(self.engine.program());
        self.idle = idle;
        self.profiles = set.profiles;
        self.routes = routes;
        self.places = set.places;
        self.alerts_by_rule.clear();
        report.keys = self.engine.stats().keys;
        report.paused_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        ReloadOutcome::Reloaded(report)
    }

    /// Answers a question about the running rules.
    fn answer(&mut self, request: Request) {
        match request {
            Request::Rules { reply } => {
                let _ = reply.send(self.rules());
            }
            Request::Key { rule, key, reply } => {
                let _ = reply.send(self.key(&rule, &key));
            }
            Request::Reload { reply, .. } => {
                // Reloads are loaded by the request server, which sends a `Swap`.
                let _ = reply.send(ReloadOutcome::Failed {
                    error: "a reload must go through the request server".into(),
                });
            }
        }
    }

    fn rules(&self) -> Vec<RuleInfo> {
        let program = self.engine.program();
        program
            .rules
            .iter()
            .map(|r| {
                let keys = self.engine.keys_of(&r.name).unwrap_or_default();
                let (file, line) = self.places.get(&r.name).cloned().unwrap_or_default();
                RuleInfo {
                    name: r.name.clone(),
                    file,
                    line,
                    streams: r
                        .streams
                        .iter()
                        .map(|s| program.stream(*s).name.clone())
                        .collect(),
                    sinks: self
                        .routes
                        .get(&r.name)
                        .map(|s| s.to_vec())
                        .unwrap_or_default(),
                    keys: keys.iter().filter(|(_, s)| !s.runs.is_empty()).count() as u64,
                    partial_matches: keys.iter().map(|(_, s)| s.runs.len() as u64).sum(),
                    alerts: self
                        .alerts_by_rule
                        .get(r.name.as_str())
                        .copied()
                        .unwrap_or(0),
                    fingerprint: format!("{:016x}", r.fingerprint),
                }
            })
            .collect()
    }

    fn key(&self, rule: &str, key: &str) -> Result<KeyInfo, KeyError> {
        let program = self.engine.program();
        let Some(r) = program.rule(rule) else {
            return Err(KeyError::NoRule(rule.to_owned()));
        };
        let keys = self.engine.keys_of(rule).unwrap_or_default();
        let found = keys
            .iter()
            .find(|(k, _)| delivery::key_text(&k.to_json(&r.key_names)) == key);
        let Some((_, state)) = found else {
            return Err(KeyError::NoKey {
                rule: rule.to_owned(),
                key: key.to_owned(),
            });
        };
        let nfa = self.engine.nfa(rule);
        let partial_matches = state
            .runs
            .iter()
            .map(|run| {
                let step = nfa.map(|n| n.state_name(run.state())).unwrap_or_default();
                let events: Vec<serde_json::Value> = state
                    .buffer
                    .chain(run.tail)
                    .into_iter()
                    .map(|e| {
                        serde_json::json!({
                            "step": r.vars.get(e.var.0 as usize).map(|v| v.name.as_str()),
                            "time": crate::engine::alert::rfc3339(e.event.time()),
                        })
                    })
                    .collect();
                serde_json::json!({
                    "id": run.id,
                    "step": step,
                    "started": crate::engine::alert::rfc3339(run.start_time),
                    "last_event": crate::engine::alert::rfc3339(state.last_time(run)),
                    "events": events,
                })
            })
            .collect();
        Ok(KeyInfo {
            rule: rule.to_owned(),
            key: key.to_owned(),
            partial_matches,
            pending_matches: state.buffer.held().len(),
            buffered_events: state.buffer.live(),
        })
    }

    fn message(&mut self, m: Inbound) {
        let now = self.clock.now();
        self.report.messages += 1;
        self.metrics.message();
        self.last_seq = m.seq;
        if !self.dedupe.first_time(&m.topic, &m.payload) {
            self.report.duplicates += 1;
            self.metrics.duplicate();
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
        self.metrics.claimed(profile.stream_index());
        let event = match profile.decode_matched(&captures, &m.payload, m.retain) {
            Ok(e) => e,
            Err(e) => {
                let name = Some(profile.name.clone());
                self.dead_letter(&m, now, e.reason(), e.to_string(), name);
                return;
            }
        };
        let stream = event.stream() as usize;
        let time = event.time();
        let alerts = &mut self.alerts;
        match self.engine.push(event, &mut |a| alerts.push(a)) {
            Ok(()) => {
                self.metrics.event(stream as u32);
                if let Some(s) = self.idle.get_mut(stream) {
                    s.max_time = Some(s.max_time.map_or(time, |t| t.max(time)));
                    s.last_arrival = now;
                }
            }
            Err(late) => {
                self.metrics.late(stream as u32);
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
            self.metrics.alert(&alert.rule, alert.severity);
            *self
                .alerts_by_rule
                .entry(Arc::clone(&alert.rule))
                .or_default() += 1;
            let Some(to) = self.routes.get(&*alert.rule) else {
                self.report.undelivered += 1;
                continue;
            };
            self.staged
                .push((OutAlert::new(&alert, now), Arc::clone(to)));
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
        self.metrics.bad(reason);
        if self.dead.blocking_send(Letter::Message(letter)).is_err() {
            tracing::error!(reason, topic = %m.topic, "the dead-letter sink has stopped");
        }
    }

    /// What the worker did so far.
    pub fn report(&self) -> WorkerReport {
        let stats = self.engine.stats();
        WorkerReport {
            events: self.events_before + stats.events,
            bad: self.bad.counts().clone(),
            ..self.report.clone()
        }
    }
}

/// An engine for `program` with the state the store holds for it: partial matches,
/// buffered events, watermarks. Records of rules and streams that changed or are gone are
/// deleted, with a log line each.
fn open_engine(program: Arc<Program>, store: &Store) -> anyhow::Result<Engine> {
    let mut engine = Engine::new(program).context("cannot compile the rules")?;
    engine.track_changes();
    let mut stale = Ops::default();
    let restored = engine.restore(
        store.scan(persist::KEYS)?,
        store.scan(persist::GROUPS)?,
        &mut stale,
    );
    if !stale.is_empty() {
        let mut batch = store.batch();
        batch.apply(&stale)?;
        store.write(batch)?;
    }
    for (what, records) in &restored.dropped {
        tracing::info!(rule = %what, records,
            "state of a rule or stream that changed (or is gone) was dropped: it starts afresh");
    }
    if restored.keys + restored.buffered + restored.windows > 0 {
        tracing::info!(
            keys = restored.keys,
            partial_matches = restored.runs,
            buffered_events = restored.buffered,
            windows = restored.windows,
            "state restored"
        );
    }
    Ok(engine)
}

/// Remembers the last `capacity` messages (topic and payload, hashed) to drop redeliveries:
/// after a reconnect, or a restart, the broker sends again what it had not seen acknowledged,
/// and some of it was applied already. A device reading carries its time, so the same payload
/// on the same topic is the same reading. The window is stored with the state it belongs to
/// (one record per message, by a running number), so it survives a crash.
struct Dedupe {
    capacity: usize,
    seen: HashSet<u64>,
    order: VecDeque<(u64, u64)>,
    next: u64,
    added: Vec<(u64, u64)>,
    evicted: Vec<u64>,
}

impl Dedupe {
    fn new(capacity: usize) -> Dedupe {
        Dedupe {
            capacity,
            seen: HashSet::with_capacity(capacity.min(1 << 16)),
            order: VecDeque::with_capacity(capacity.min(1 << 16)),
            next: 0,
            added: Vec::new(),
            evicted: Vec::new(),
        }
    }

    /// The window as stored (records in number order); records beyond the capacity are
    /// deleted through `stale`.
    fn load(
        capacity: usize,
        records: Vec<(Vec<u8>, Vec<u8>)>,
        stale: &mut dyn StateWriter,
    ) -> Dedupe {
        let mut d = Dedupe::new(capacity);
        let parsed: Vec<(u64, u64)> = records
            .iter()
            .filter_map(|(k, v)| {
                let n = u64::from_be_bytes(k.as_slice().try_into().ok()?);
                let h = u64::from_be_bytes(v.as_slice().try_into().ok()?);
                Some((n, h))
            })
            .collect();
        let keep_from = parsed.len().saturating_sub(capacity);
        for (i, (n, h)) in parsed.into_iter().enumerate() {
            d.next = d.next.max(n + 1);
            if i < keep_from {
                stale.delete(crate::store::cf::DEDUPE, n.to_be_bytes().to_vec());
            } else {
                d.seen.insert(h);
                d.order.push_back((n, h));
            }
        }
        d
    }

    /// True the first time a message is seen within the window.
    fn first_time(&mut self, topic: &str, payload: &[u8]) -> bool {
        if self.capacity == 0 {
            return true;
        }
        // A fixed seed: the window outlives the process.
        let mut h = std::hash::BuildHasher::build_hasher(
            &foldhash::quality::FixedState::with_seed(0x7465_726e),
        );
        topic.hash(&mut h);
        payload.hash(&mut h);
        let key = h.finish();
        if !self.seen.insert(key) {
            return false;
        }
        let n = self.next;
        self.next += 1;
        self.order.push_back((n, key));
        self.added.push((n, key));
        if self.order.len() > self.capacity
            && let Some((old_n, old)) = self.order.pop_front()
        {
            self.seen.remove(&old);
            self.evicted.push(old_n);
        }
        true
    }

    /// Moves the window's changes into `w`.
    fn persist(&mut self, w: &mut dyn StateWriter) {
        let family = crate::store::cf::DEDUPE;
        for n in self.evicted.drain(..) {
            w.delete(family, n.to_be_bytes().to_vec());
        }
        for (n, h) in self.added.drain(..) {
            w.put(family, n.to_be_bytes().to_vec(), h.to_be_bytes().to_vec());
        }
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
        outbox: Arc<Outbox>,
        read: u64,
        dead: mpsc::Receiver<Letter>,
        applied: watch::Receiver<u64>,
        seq: u64,
        _dir: tempfile::TempDir,
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
        let (dead_tx, dead) = mpsc::channel(64);
        let (applied_tx, applied) = watch::channel(0);
        let to: Arc<[String]> = vec!["test".to_string()].into();
        let routes = program
            .rules
            .iter()
            .map(|r| (r.name.clone(), Arc::clone(&to)))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), false).unwrap());
        let outbox = Arc::new(Outbox::open(store, &["test".to_string()], 1000).unwrap());
        let worker = Worker::new(
            program,
            vec![profile],
            clock.clone(),
            100,
            routes,
            Arc::clone(&outbox),
            dead_tx,
            applied_tx,
        )
        .unwrap();
        Harness {
            worker,
            clock,
            outbox,
            read: 0,
            dead,
            applied,
            seq: 0,
            _dir: dir,
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

        /// Commits, then reads what the outbox gained.
        fn alert_names(&mut self) -> Vec<String> {
            self.worker.commit();
            let mut out = Vec::new();
            for e in self.outbox.store().outbox_read(self.read, 1000).unwrap() {
                self.read = e.seq + 1;
                let a = e.alert;
                let key: serde_json::Value = a.parsed()["key"].clone();
                out.push(format!("{} {key}", a.name));
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
        // d2's deadline is t0 + 40 s. After 31 s of quiet, time is 1 s short of it. After
        // 32 s it is 1 ns short (a watermark is the newest time minus lateness minus 1 ns),
        // which decides it: a reading from now on is at the deadline or after, and a
        // deadline fires before the events of its instant.
        h.clock.advance(Duration::from_secs(1));
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
            let Letter::Message(l) = l else {
                panic!("an alert dead-lettered")
            };
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
