//! `tern simulate`: the device simulator. With `--out` it writes the reproducible benchmark
//! workload (traffic-camera readings); with `--broker` it publishes a live fleet to a broker.

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{ArgGroup, Args, ValueEnum};
use tokio_util::sync::CancellationToken;

use super::Outcome;
use crate::event::Nanos;
use crate::sim::fleet::{Fleet, FleetConfig};
use crate::sim::publish::{Broker, Pace, publish};
use crate::sim::workload::{self, Workload};

/// Workload file layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WorkloadFormat {
    /// One JSON object per line.
    Jsonl,
    /// A header row, then one row per reading.
    Csv,
}

/// Arguments of `tern simulate`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("target").required(true).args(["out", "broker"])))]
pub struct SimulateArgs {
    /// Write a reproducible workload of traffic-camera readings to this file (`-`: stdout).
    #[arg(long, conflicts_with_all = ["broker", "rate", "duration", "speed", "count", "client_id", "no_opening", "no_flaws"])]
    pub out: Option<PathBuf>,
    /// Workload: number of cameras (keys).
    #[arg(long, default_value_t = 1000, requires = "out")]
    pub keys: u32,
    /// Workload: number of readings (lines).
    #[arg(long, default_value_t = 1_000_000, requires = "out")]
    pub events: u64,
    /// Random seed: the same seed gives the same workload byte for byte, and the same fleet.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Workload layout.
    #[arg(long, value_enum, default_value_t = WorkloadFormat::Jsonl, requires = "out")]
    pub format: WorkloadFormat,
    /// Simulated time of the start (RFC 3339); default: 2024-03-01T00:00:00Z for a workload,
    /// now for a live fleet.
    #[arg(long)]
    pub start: Option<String>,
    /// Publish a live fleet to this broker (HOST:PORT).
    #[arg(long)]
    pub broker: Option<String>,
    /// Live: about this many messages per second in all (scales the number of cameras).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Live: stop after this long (`30s`, `5m`); default: until interrupted.
    #[arg(long)]
    pub duration: Option<String>,
    /// Live: simulated time runs this many times faster than the wall clock.
    #[arg(long, default_value_t = 1.0)]
    pub speed: f64,
    /// Live: stop after this many messages.
    #[arg(long)]
    pub count: Option<u64>,
    /// Live: the MQTT client id (default: tern-simulate-<process id>).
    #[arg(long)]
    pub client_id: Option<String>,
    /// Live: no scripted opening (the early jam, silences and drift that make the bundled
    /// rules fire in the first minute).
    #[arg(long)]
    pub no_opening: bool,
    /// Live: no malformed or late messages and no devices going silent (for benchmarks).
    #[arg(long)]
    pub no_flaws: bool,
}

/// Workload start when `--start` is not given.
const WORKLOAD_START: &str = "2024-03-01T00:00:00Z";

/// Runs `tern simulate`.
pub fn run(args: SimulateArgs) -> anyhow::Result<Outcome> {
    match (&args.out, &args.broker) {
        (Some(out), _) => write_workload(&args, out),
        (None, Some(broker)) => live(&args, broker),
        (None, None) => anyhow::bail!("give --out FILE or --broker HOST:PORT"),
    }
}

fn write_workload(args: &SimulateArgs, out: &PathBuf) -> anyhow::Result<Outcome> {
    let start = parse_start(args.start.as_deref().unwrap_or(WORKLOAD_START))?;
    let w = Workload {
        keys: args.keys,
        events: args.events,
        seed: args.seed,
        format: match args.format {
            WorkloadFormat::Jsonl => workload::Format::Jsonl,
            WorkloadFormat::Csv => workload::Format::Csv,
        },
        start_ms: start.div_euclid(1_000_000),
    };
    let started = Instant::now();
    let stats = if out.as_os_str() == "-" {
        let stdout = std::io::stdout();
        let mut sink = BufWriter::with_capacity(1 << 20, stdout.lock());
        let stats = workload::write(&w, &mut sink)?;
        sink.flush()?;
        stats
    } else {
        let file = std::fs::File::create(out)
            .with_context(|| format!("cannot create {}", out.display()))?;
        let mut sink = BufWriter::with_capacity(1 << 20, file);
        let stats = workload::write(&w, &mut sink)
            .with_context(|| format!("cannot write {}", out.display()))?;
        sink.flush()
            .with_context(|| format!("cannot write {}", out.display()))?;
        stats
    };
    let share = if stats.events > 0 {
        100.0 * stats.episode_events as f64 / stats.events as f64
    } else {
        0.0
    };
    eprintln!(
        "simulate: {} readings of {} cameras, {:.1}% in congestion episodes, {} under 20 km/h, \
         {} to {}, in {:.2} s",
        stats.events,
        args.keys,
        share,
        stats.slow_events,
        crate::engine::alert::rfc3339(stats.first_ms as Nanos * 1_000_000),
        crate::engine::alert::rfc3339(stats.last_ms as Nanos * 1_000_000),
        started.elapsed().as_secs_f64()
    );
    Ok(Outcome::Ok)
}

fn parse_start(text: &str) -> anyhow::Result<Nanos> {
    crate::io::input::parse_rfc3339(text)
        .with_context(|| format!("--start: {text:?} is not an RFC 3339 time"))
}

fn live(args: &SimulateArgs, broker: &str) -> anyhow::Result<Outcome> {
    super::run::init_logging(&crate::config::LoggingConfig::default());
    let broker = Broker::parse(broker)?;
    let duration = match &args.duration {
        Some(d) => Some(parse_duration(d).context("--duration")?),
        None => None,
    };
    let start = match &args.start {
        Some(s) => parse_start(s)?,
        None => wall_now_ms(),
    };
    let mut config = FleetConfig::demo(args.seed, start);
    config.opening = !args.no_opening;
    if args.no_flaws {
        config.malformed = 0.0;
        config.late = 0.0;
        config.silence = 0.0;
    }
    if let Some(rate) = args.rate {
        anyhow::ensure!(rate > 0.0, "--rate must be positive");
        config = config.with_rate(rate / args.speed);
    }
    let mut fleet = Fleet::new(config);
    let pace = Pace {
        speed: args.speed,
        duration,
        count: args.count,
    };
    let client_id = args
        .client_id
        .clone()
        .unwrap_or_else(|| format!("tern-simulate-{}", std::process::id()));
    eprintln!(
        "simulate: {} cameras, {} loop detectors, {} inspection stations, {} furnaces, {} \
         heartbeats: about {:.0} messages/s to {broker} (Ctrl-C stops)",
        fleet.config().cameras,
        fleet.config().detectors,
        fleet.config().lines * fleet.config().stations_per_line,
        fleet.config().furnaces,
        fleet.config().heartbeats,
        fleet.config().rate() * args.speed,
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        publish(&mut fleet, &broker, &client_id, &pace, shutdown, None).await
    })?;
    runtime.shutdown_background();
    let secs = report.elapsed.as_secs_f64();
    eprintln!(
        "simulate: {}; {} published in {secs:.1} s ({:.0}/s), {} acknowledged by the broker",
        report.fleet,
        report.published,
        report.published as f64 / secs.max(1e-9),
        report.acknowledged
    );
    if report.behind > Duration::from_secs(1) {
        eprintln!(
            "simulate: fell {:.1} s behind schedule: the broker or this client cannot take \
             the rate asked for",
            report.behind.as_secs_f64()
        );
    }
    Ok(Outcome::Ok)
}

/// A duration like `30s`, `5m` or `1h30m`.
pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let ns =
        crate::devices::time::parse_duration(text).map_err(|e| anyhow::anyhow!("{text:?}: {e}"))?;
    Ok(Duration::from_nanos(u64::try_from(ns).unwrap_or(0)))
}

/// The wall clock in whole milliseconds (simulated times are whole milliseconds).
pub fn wall_now_ms() -> Nanos {
    let now = chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0);
    now.div_euclid(1_000_000) * 1_000_000
}

/// Cancels `shutdown` on SIGINT or SIGTERM.
pub async fn cancel_on_signal(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            shutdown.cancel();
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
    shutdown.cancel();
}
