//! `tern demo`: the first thing to run. An embedded MQTT broker, a simulated city and fab
//! publishing to it, the bundled `rules/` and `devices/`, and the live pipeline in-process;
//! every alert is printed as it fires, one readable line each (coloured on a terminal), and
//! POSTed, signed, to a local webhook receiver that verifies it (the rules' `webhook` sink).
//! State (the outbox) lives in a temporary directory removed at exit.
//!
//! The simulator's opening is scripted so that the bundled rules fire early: a traffic jam
//! within seconds, a gateway and a camera that go quiet, a loop-detector jam, a furnace
//! drift, then (after 75 to 90 simulated minutes) a yield drop. Simulated time runs ten
//! times faster than the clock by default: the wafer stream allows 30 s of out-of-orderness,
//! which holds every stream's event time back by as much (time advances as the minimum over
//! streams), and the yield rule needs an hour of quarter-hour windows.

use std::io::IsTerminal;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use tokio_util::sync::CancellationToken;

use super::Outcome;
use super::simulate::{cancel_on_signal, parse_duration, wall_now_ms};
use crate::config::{
    BrokerConfig, Config, LoggingConfig, MqttSinkConfig, RetryConfig, SecretRef, SecretSource,
    SinkConfig, SinkFilter, SinkKind, WebhookConfig,
};
use crate::delivery::receiver::{Receiver, ReceiverConfig, ReceiverEvent, ReceiverReport};
use crate::delivery::signing::Secret;
use crate::io::pipeline::{Pipeline, Summary};
use crate::lang::source::Sources;
use crate::sim::device::Kind;
use crate::sim::fleet::{Fleet, FleetConfig, FleetStats};
use crate::sim::publish::{Broker, Pace, PublishReport, publish};

/// Arguments of `tern demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Port of the embedded MQTT broker on 127.0.0.1 (default: a free one).
    #[arg(long)]
    pub port: Option<u16>,
    /// Simulated time runs this many times faster than the clock (1: real time).
    #[arg(long, default_value_t = 10.0)]
    pub speed: f64,
    /// Random seed of the simulation.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Rule files or directories.
    #[arg(long, default_value = "rules")]
    pub rules: Vec<PathBuf>,
    /// Directory of device profiles.
    #[arg(long, default_value = "devices")]
    pub devices: PathBuf,
    /// Stop after this long (`30s`, `5m`); default: until interrupted.
    #[arg(long)]
    pub duration: Option<String>,
}

/// Runs `tern demo`.
pub fn run(args: DemoArgs) -> anyhow::Result<Outcome> {
    // Alerts go to stdout; keep stderr for the banner, the summary and real problems. The
    // broker library reports every client that disconnects as an error: not one here.
    // Sinks the bundled rules name but the demo has no server for (influx, file) are not
    // worth a warning here.
    let level =
        std::env::var("TERN_LOG").unwrap_or_else(|_| "warn,rumqttd=off,tern::routing=error".into());
    super::run::init_logging(&LoggingConfig {
        level,
        ..LoggingConfig::default()
    });
    anyhow::ensure!(
        args.speed.is_finite() && args.speed > 0.0,
        "--speed must be a positive number"
    );
    for dir in args.rules.iter().chain([&args.devices]) {
        anyhow::ensure!(
            dir.exists(),
            "{} not found: run `tern demo` from the tern repository (it uses the bundled \
             rules/ and devices/), or pass --rules and --devices",
            dir.display()
        );
    }
    let duration = match &args.duration {
        Some(d) => Some(parse_duration(d).context("--duration")?),
        None => None,
    };
    let port = match args.port {
        Some(p) => p,
        None => TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .context("cannot find a free port for the broker")?,
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    crate::io::mqtt::embedded::start(addr, 1 << 20)?;

    let mut broker = BrokerConfig::local(addr);
    broker.client_id = "tern-demo".into();
    // Every demo starts afresh: no session to resume.
    broker.clean_session = true;
    let state = DemoState::create()?;
    let hook = HookReceiver::start(&state)?;
    let config = Config {
        rules: args.rules.clone(),
        devices: args.devices.clone(),
        broker: Some(broker),
        state_dir: state.dir.join("state"),
        // A demo's state is thrown away: no need to wait for the disk.
        state_sync: false,
        drain_timeout: Duration::from_secs(2),
        sinks: vec![hook.sink_config(), mqtt_alerts()],
        ..Config::default()
    };
    let color = std::io::stderr().is_terminal();
    let Some(pipeline) = super::prepare_pipeline(config, &Sources::new())? else {
        return Ok(Outcome::Rejected);
    };
    let pipeline = pipeline.with_tap(
        "console",
        Box::new(crate::delivery::stdout::StdoutSink::new(
            crate::config::StdoutFormat::Text,
        )),
    );

    let mut fleet = Fleet::new(FleetConfig::demo(args.seed, wall_now_ms()));
    banner(&pipeline, &fleet, addr, hook.addr, args.speed, color);
    let pace = Pace {
        speed: args.speed,
        duration,
        count: None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("tern-demo")
        .build()
        .context("cannot start the async runtime")?;
    let receiver_stop = CancellationToken::new();
    let outcome = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        let listener = tokio::net::TcpListener::from_std(hook.listener)
            .context("the webhook receiver's socket")?;
        let receiver = tokio::spawn(hook.receiver.clone().serve(listener, receiver_stop.clone()));
        let mut status = pipeline.status();
        let engine = tokio::spawn(pipeline.run(shutdown.clone()));
        // Publish only once tern listens: messages sent before it subscribed would be lost.
        let subscribed = tokio::select! {
            _ = shutdown.cancelled() => false,
            r = tokio::time::timeout(Duration::from_secs(15), status.wait_for(|s| s.subscribed)) => {
                matches!(r, Ok(Ok(_)))
            }
        };
        let published = if subscribed {
            let sim = Broker {
                host: addr.ip().to_string(),
                port,
            };
            let r = publish(&mut fleet, &sim, "tern-demo-sim", &pace, shutdown.clone(), None).await;
            shutdown.cancel();
            Some(r)
        } else {
            shutdown.cancel();
            None
        };
        let summary = engine.await.context("the pipeline task failed")?;
        receiver_stop.cancel();
        let received = receiver.await.context("the webhook receiver failed")??;
        anyhow::Ok((published, summary, received))
    });
    runtime.shutdown_background();
    drop(state);
    let (published, summary, received) = outcome?;
    let summary = summary?;
    let published = match published {
        Some(r) => r?,
        None => anyhow::bail!("the pipeline did not subscribe to the embedded broker"),
    };
    report(&published, &summary, &received);
    Ok(Outcome::Ok)
}

/// The demo's scratch directory (state, the webhook secret), removed when dropped.
struct DemoState {
    dir: PathBuf,
}

impl DemoState {
    fn create() -> anyhow::Result<DemoState> {
        let dir = std::env::temp_dir().join(format!(
            "tern-demo-{}-{}",
            std::process::id(),
            wall_now_ms()
        ));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(DemoState { dir })
    }
}

impl Drop for DemoState {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The local webhook receiver: a fresh signing secret, shared with the `webhook` sink
/// through a file, and a listening socket.
struct HookReceiver {
    addr: SocketAddr,
    listener: std::net::TcpListener,
    receiver: Receiver,
    secret_file: PathBuf,
}

impl HookReceiver {
    fn start(state: &DemoState) -> anyhow::Result<HookReceiver> {
        let key = random_key();
        let encoded = Secret::encode(&key);
        let secret_file = state.dir.join("webhook-secret");
        std::fs::write(&secret_file, &encoded).context("cannot write the demo's webhook secret")?;
        let secret = Secret::parse(&encoded).map_err(|e| anyhow::anyhow!(e))?;
        let listener = TcpListener::bind("127.0.0.1:0")
            .context("cannot open a port for the webhook receiver")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let receiver = Receiver::new(
            ReceiverConfig {
                secrets: vec![secret],
                ..ReceiverConfig::default()
            },
            |event| {
                if let ReceiverEvent::Rejected { status, reason, id } = event {
                    eprintln!(
                        "webhook receiver refused {}: {status} {reason}",
                        id.unwrap_or_default()
                    );
                }
            },
        );
        Ok(HookReceiver {
            addr,
            listener,
            receiver,
            secret_file,
        })
    }

    /// The `webhook` sink the bundled rules name, pointed at this receiver.
    fn sink_config(&self) -> SinkConfig {
        SinkConfig {
            name: "webhook".into(),
            kind: SinkKind::Webhook(WebhookConfig {
                url: format!("http://{}/alerts", self.addr),
                secret: Some(SecretRef {
                    source: SecretSource::File(self.secret_file.clone()),
                    span: Default::default(),
                }),
                timeout: Duration::from_secs(5),
                connect_timeout: Duration::from_secs(1),
                headers: Default::default(),
                retry: RetryConfig {
                    max_attempts: 20,
                    initial_delay: Duration::from_millis(100),
                    max_delay: Duration::from_secs(2),
                },
            }),
            filter: SinkFilter::default(),
        }
    }
}

/// The `mqtt` sink the bundled rules name: alerts published back to the embedded broker.
fn mqtt_alerts() -> SinkConfig {
    SinkConfig {
        name: "mqtt".into(),
        kind: SinkKind::Mqtt(MqttSinkConfig {
            topic: "alerts/{rule}/{key}".into(),
            qos: 1,
            retain: false,
            retry: RetryConfig::default(),
        }),
        filter: SinkFilter::default(),
    }
}

/// 32 random bytes from the standard library's per-process random hash keys (no extra
/// dependency for a throwaway demo secret).
fn random_key() -> Vec<u8> {
    use std::hash::{BuildHasher, Hasher};
    let mut key = Vec::with_capacity(32);
    for i in 0..4u64 {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(i);
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        key.extend_from_slice(&h.finish().to_le_bytes());
    }
    key
}

fn banner(
    pipeline: &Pipeline,
    fleet: &Fleet,
    addr: SocketAddr,
    hook: SocketAddr,
    speed: f64,
    color: bool,
) {
    let bold = |t: &str| {
        if color {
            format!("\x1b[1m{t}\x1b[0m")
        } else {
            t.to_owned()
        }
    };
    let c = fleet.config();
    // Rules on the simulated streams (directly or through an aggregate), and the others,
    // which are written for the recorded data sets.
    let program = pipeline.program();
    let simulated = |id: crate::compile::hir::StreamId| {
        let fed = |id| {
            Kind::ALL
                .iter()
                .any(|k| program.stream(id).name == k.stream())
        };
        fed(id)
            || program
                .aggregates
                .iter()
                .any(|a| a.output == id && fed(a.source))
    };
    let (live, other): (Vec<_>, Vec<_>) = program
        .rules
        .iter()
        .partition(|r| r.streams.iter().any(|s| simulated(*s)));
    let names = |rules: &[&std::sync::Arc<crate::compile::hir::Rule>]| {
        rules
            .iter()
            .map(|r| r.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let pace = if speed == 1.0 {
        "in real time".to_string()
    } else {
        format!("with simulated time running {speed}x faster than the clock")
    };
    eprintln!("{}", bold("tern demo"));
    eprintln!(
        "  MQTT broker   {addr} (watch it: mosquitto_sub -h {} -p {} -t '#' -v)",
        addr.ip(),
        addr.port()
    );
    eprintln!(
        "  simulating    {} traffic cameras, {} loop detectors, {} wafer inspection stations, \
         {} furnaces, {} gateways sending heartbeats, {pace}",
        c.cameras,
        c.detectors,
        c.lines * c.stations_per_line,
        c.furnaces,
        c.heartbeats
    );
    eprintln!(
        "  webhooks      alerts routed to `webhook` are POSTed, signed, to a local receiver at \
         http://{hook}/alerts, which verifies each signature; alerts routed to `mqtt` are \
         published to alerts/<rule>/<key> on the broker"
    );
    eprintln!("  rules         {}", names(&live));
    if !other.is_empty() {
        eprintln!(
            "                (also loaded, for recorded data sets: {})",
            names(&other)
        );
    }
    // Simulated seconds until each alert can show: its event time plus the 30 s the wafer
    // stream's lateness holds time back.
    let wall = |sim_s: f64| (sim_s / speed).ceil();
    eprintln!(
        "  expect        a traffic jam in about {} s; a gateway and a camera going quiet, a \
         loop-detector jam and a furnace drift within {} s; a yield drop after {}-{} minutes; \
         now and then a malformed or late message, dead-lettered",
        wall(35.0),
        wall(110.0),
        (wall(75.0 * 60.0) / 60.0).floor(),
        (wall(90.0 * 60.0 + 30.0) / 60.0).ceil(),
    );
    eprintln!("  Ctrl-C stops. Alerts:");
}

fn report(published: &PublishReport, summary: &Summary, received: &ReceiverReport) {
    let s: &FleetStats = &published.fleet;
    let bad: u64 = summary.engine.bad.values().sum();
    let late = summary.engine.bad.get("late").copied().unwrap_or(0);
    eprintln!();
    eprintln!("tern demo: stopped");
    eprintln!(
        "  simulator     {} messages published; on purpose: {} malformed, {} late",
        published.published,
        s.malformed_total(),
        s.late
    );
    eprintln!(
        "  tern          {} messages, {} events, {} alerts; {} dead letters ({} late, {} \
         undecodable: {})",
        summary.engine.messages,
        summary.engine.events,
        summary.engine.alerts,
        bad,
        late,
        bad - late,
        summary
            .engine
            .bad
            .iter()
            .filter(|(r, _)| **r != "late")
            .map(|(r, n)| format!("{r} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    eprintln!(
        "  webhook       {} alerts received and verified by the local receiver ({} repeats \
         answered, {} refused)",
        received.accepted, received.duplicates, received.rejected
    );
    for (name, r) in &summary.sinks {
        if r.failed > 0 || r.left > 0 {
            eprintln!(
                "  sink {name:<8} {} delivered, {} given up, {} left in the outbox",
                r.delivered, r.failed, r.left
            );
        }
    }
}
