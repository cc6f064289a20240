//! Throughput and latency of the live pipeline: mosquitto -> tern (in-process: the same
//! pipeline `tern run` runs) -> an alert sink.
//!
//! ```text
//! cargo run --release --example live_bench -- [MESSAGES] [RATE] [SECONDS] [PUBLISHERS]
//! ```
//!
//! 1. Throughput: MESSAGES readings (default 200,000) over 100 keys, published with QoS 1 by
//!    PUBLISHERS connections at once (default 4) as fast as they go, stamped with the wall
//!    clock (the stream allows 5 s of out-of-orderness); one reading in 100 makes an alert.
//!    Reports messages per second from the first publish to the last alert.
//! 2. Backlog: the same readings queued by the broker for tern's persistent session while
//!    tern is stopped; reports how fast tern drains them once started.
//! 3. Latency: RATE readings per second (default 1,000) for SECONDS (default 10) from one
//!    connection, each making an alert; reports publish-to-alert p50, p99 and max. An event
//!    is released to the rule once a later event arrives on its stream (the watermark is the
//!    newest time minus 1 ns), so the figure includes one inter-arrival gap (1/RATE).
//!
//! Each phase runs its own tern (its own client id and rules), since one engine has one event
//! clock for all its streams. Needs `mosquitto` (on PATH or in /usr/sbin); starts it on a free
//! port with `max_inflight_messages 1000`: with mosquitto's default of 20 unacknowledged
//! messages per client, and tern acknowledging only once the engine applied a message, the
//! broker would wait for tern's acks far more often.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tern::delivery::{Deliver, DeliverFuture, OutAlert, Outcome};
use tern::io::pipeline::{Pipeline, Summary};
use tokio_util::sync::CancellationToken;

const PROFILE: &str = r#"
stream = "reading"
topic = "bench/{device}/reading"
time = "ts"
key = "device"
lateness = "LATENESS"
[fields]
ts = { type = "timestamp", format = "epoch_ms" }
seq = "int"
value = "float"
"#;

const RULE: &str = r#"
rule high {
    from reading
    key device
    match r: reading where value > 100.0
    emit high severity warning { device: key, seq: r.seq }
    to bench
}
"#;

/// Records when each alert (by seq) reached the sink.
struct TimingSink(Arc<Mutex<HashMap<i64, Instant>>>);

impl Deliver for TimingSink {
    fn batch_limit(&self) -> usize {
        256
    }

    fn deliver<'a>(
        &'a mut self,
        batch: &'a [Arc<OutAlert>],
        _stop: &'a CancellationToken,
    ) -> DeliverFuture<'a> {
        Box::pin(async move {
            let now = Instant::now();
            for a in batch {
                if let Some(seq) = a.parsed()["fields"]["seq"].as_i64() {
                    self.0.lock().unwrap().insert(seq, now);
                }
            }
            vec![Outcome::Delivered; batch.len()]
        })
    }
}

/// A tern pipeline running in this process.
struct Tern {
    seen: Arc<Mutex<HashMap<i64, Instant>>>,
    shutdown: CancellationToken,
    running: tokio::task::JoinHandle<anyhow::Result<Summary>>,
}

impl Tern {
    /// Starts tern on the broker at `port` with the bench rule and a profile allowing
    /// `lateness`, and waits until it has subscribed.
    async fn start(dir: &Path, port: u16, client_id: &str, lateness: &str) -> Tern {
        std::fs::create_dir_all(dir.join("rules")).unwrap();
        std::fs::create_dir_all(dir.join("devices")).unwrap();
        std::fs::write(dir.join("rules/bench.tern"), RULE).unwrap();
        std::fs::write(
            dir.join("devices/bench.toml"),
            PROFILE.replace("LATENESS", lateness),
        )
        .unwrap();
        std::fs::write(
            dir.join("tern.toml"),
            format!(
                "queue = 4096\n[broker]\nhost = \"127.0.0.1\"\nport = {port}\n\
                 client_id = \"{client_id}\"\n[logging]\nlevel = \"warn\"\n"
            ),
        )
        .unwrap();
        let mut sources = tern::lang::source::Sources::new();
        let config = tern::config::Config::load(&dir.join("tern.toml"), &mut sources).unwrap();
        tern::cli::run::init_logging(&config.logging);
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let sink = Box::new(TimingSink(Arc::clone(&seen)));
        let pipeline =
            Pipeline::prepare_with_sinks(config, &sources, vec![("bench".into(), sink as _)])
                .unwrap();
        let mut status = pipeline.status();
        let shutdown = CancellationToken::new();
        let running = tokio::spawn(pipeline.run(shutdown.clone()));
        status.wait_for(|s| s.subscribed).await.unwrap();
        Tern {
            seen,
            shutdown,
            running,
        }
    }

    fn alerts(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    async fn stop(self) -> Summary {
        self.shutdown.cancel();
        self.running.await.unwrap().unwrap()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn payload(ts: i64, seq: i64, value: f64) -> Vec<u8> {
    format!(r#"{{"ts": {ts}, "seq": {seq}, "value": {value}}}"#).into_bytes()
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A QoS 1 publisher whose event loop runs in a task until the broker goes away, counting
/// the broker's acknowledgements.
fn connect(port: u16, id: &str) -> (rumqttc::AsyncClient, Arc<AtomicU64>) {
    let mut opts = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
    opts.set_inflight(1000)
        .set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = rumqttc::AsyncClient::new(opts, 10_000);
    let acked = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&acked);
    tokio::spawn(async move {
        while let Ok(event) = events.poll().await {
            if let rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)) = event {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    (client, acked)
}

async fn publish(client: &rumqttc::AsyncClient, device: i64, body: Vec<u8>) {
    client
        .publish(
            format!("bench/dev-{device}/reading"),
            rumqttc::QoS::AtLeastOnce,
            false,
            body,
        )
        .await
        .unwrap();
}

async fn wait_for(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, default: u64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let messages = arg(1, 200_000) as i64;
    let rate = arg(2, 1_000).max(1);
    let seconds = arg(3, 10);
    let publishers = arg(4, 4).max(1) as i64;

    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let conf = dir.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 1000\n\
             max_queued_messages 0\n"
        ),
    )
    .unwrap();
    let binary = ["/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .unwrap_or("mosquitto");
    let _mosquitto = KillOnDrop(
        Command::new(binary)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto"),
    );
    wait_for("mosquitto", Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .await;

    // 1. Throughput: several publishers at once, as a fleet of gateways would.
    let tern = Tern::start(&dir.path().join("throughput"), port, "tern-bench-1", "5s").await;
    let share = messages / publishers;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for p in 0..publishers {
        tasks.push(tokio::spawn(async move {
            let (client, acked) = connect(port, &format!("bench-pub-{p}"));
            for i in 0..share {
                let seq = p * share + i;
                let value = if seq % 100 == 0 { 150.0 } else { 50.0 };
                publish(&client, seq % 100, payload(now_ms(), seq, value)).await;
            }
            // Everything is at the broker before the reading that releases it all.
            while acked.load(Ordering::Relaxed) < share as u64 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            client
        }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    let published = start.elapsed();
    let total_messages = share * publishers;
    let expected = (0..total_messages).filter(|s| s % 100 == 0).count();
    // A reading a minute later moves event time past every other one.
    publish(&clients[0], 0, payload(now_ms() + 60_000, -1, 0.0)).await;
    wait_for("the throughput alerts", Duration::from_secs(120), || {
        tern.alerts() >= expected
    })
    .await;
    let total = start.elapsed();
    let summary = tern.stop().await;
    println!(
        "throughput: {total_messages} messages from {publishers} publishers in {:.2} s = {:.0} \
         messages/s through tern (all at the broker after {:.2} s); {expected} alerts; \
         tern received {}, acknowledged {}, dead-lettered {}",
        total.as_secs_f64(),
        total_messages as f64 / total.as_secs_f64(),
        published.as_secs_f64(),
        summary.source.received,
        summary.source.acked,
        summary.engine.bad.values().sum::<u64>(),
    );

    // 2. Backlog: the broker holds MESSAGES readings for tern's session while tern is away;
    // how fast does tern work through them once it starts?
    let backlog_dir = dir.path().join("backlog");
    let tern = Tern::start(&backlog_dir, port, "tern-bench-backlog", "5s").await;
    tern.stop().await;
    let mut tasks = Vec::new();
    for p in 0..publishers {
        tasks.push(tokio::spawn(async move {
            let (client, acked) = connect(port, &format!("bench-backlog-{p}"));
            for i in 0..share {
                let seq = p * share + i;
                let value = if seq % 100 == 0 { 150.0 } else { 50.0 };
                publish(&client, seq % 100, payload(now_ms(), seq, value)).await;
            }
            while acked.load(Ordering::Relaxed) < share as u64 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            client
        }));
    }
    let mut clients = Vec::new();
    for t in tasks {
        clients.push(t.await.unwrap());
    }
    publish(&clients[0], 0, payload(now_ms() + 60_000, -1, 0.0)).await;
    let start = Instant::now();
    let tern = Tern::start(&backlog_dir, port, "tern-bench-backlog", "5s").await;
    wait_for("the backlog alerts", Duration::from_secs(120), || {
        tern.alerts() >= expected
    })
    .await;
    let total = start.elapsed();
    let summary = tern.stop().await;
    println!(
        "backlog: {} queued messages drained in {:.2} s = {:.0} messages/s through tern",
        summary.source.received,
        total.as_secs_f64(),
        summary.source.received as f64 / total.as_secs_f64(),
    );

    // 3. Latency at a fixed rate from one publisher; every reading makes an alert.
    let tern = Tern::start(&dir.path().join("latency"), port, "tern-bench-2", "0s").await;
    let (client, _acked) = connect(port, "bench-pub-latency");
    let n = (rate * seconds) as i64;
    let gap = Duration::from_nanos(1_000_000_000 / rate);
    let epoch = now_ms();
    let mut sent_at = Vec::with_capacity(n as usize);
    let t0 = tokio::time::Instant::now();
    for seq in 0..n {
        tokio::time::sleep_until(t0 + gap * seq as u32).await;
        sent_at.push((seq, Instant::now()));
        publish(&client, seq % 100, payload(epoch + seq, seq, 150.0)).await;
    }
    publish(&client, 0, payload(epoch + n + 60_000, -1, 0.0)).await;
    wait_for("the latency alerts", Duration::from_secs(60), || {
        tern.alerts() >= n as usize
    })
    .await;
    let mut latencies: Vec<Duration> = {
        let seen = tern.seen.lock().unwrap();
        sent_at
            .iter()
            .filter_map(|(seq, at)| seen.get(seq).map(|t| t.saturating_duration_since(*at)))
            .collect()
    };
    latencies.sort();
    let pct = |p: f64| {
        let i = ((latencies.len() as f64 * p) as usize).min(latencies.len() - 1);
        latencies[i].as_secs_f64() * 1e3
    };
    println!(
        "latency: {rate} messages/s for {seconds} s, {} alerts: publish to alert p50 {:.2} ms, \
         p99 {:.2} ms, max {:.2} ms (includes one inter-arrival gap of {:.2} ms)",
        latencies.len(),
        pct(0.50),
        pct(0.99),
        pct(1.0),
        gap.as_secs_f64() * 1e3
    );
    tern.stop().await;
}

/// Stops the broker however `main` ends (a failed assertion included).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
