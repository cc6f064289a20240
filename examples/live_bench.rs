//! Throughput and latency of the live pipeline: mosquitto -> tern (in-process: the same
//! pipeline `tern run` runs) -> an alert sink.
//!
//! ```text
//! cargo run --release --example live_bench -- [MESSAGES] [RATE] [SECONDS] [PUBLISHERS] [FLAGS]
//! ```
//!
//! Flags: `--latency-only` skips phases 1 and 2; `--broker-only` replaces tern with a plain
//! MQTT subscriber (same QoS), to measure Mosquitto's own ceiling and latency on the same
//! machine; `--alert-every N` makes one latency reading in N an alert (default 1, all);
//! `--no-state-sync` runs tern with `state_sync = false` (no fsync per committed batch);
//! `--qos 0` publishes and subscribes the latency phase at QoS 0 instead of 1 (no
//! acknowledgements, so the broker keeps no message in flight: its own ceiling rises).
//! With `LIVE_BENCH_DUMP=1` in the environment, each latency sample goes to stderr: seq,
//! publish to alert, publish to the engine's `emitted_at` stamp, and that stamp to the sink
//! (ms; the last two by the wall clock, with tern only).
//!
//! 1. Throughput: MESSAGES readings (default 200,000) over 100 keys, published with QoS 1 by
//!    PUBLISHERS connections at once (default 4) as fast as they go, stamped with the wall
//!    clock (the stream allows 5 s of out-of-orderness); one reading in 100 makes an alert.
//!    Reports messages per second from the first publish to the last alert.
//! 2. Backlog: the same readings queued by the broker for tern's persistent session while
//!    tern is stopped; reports how fast tern drains them once started.
//! 3. Latency: RATE readings per second (default 1,000) for SECONDS (default 10) from one
//!    connection (so that event time never goes backwards: the stream allows no lateness),
//!    each reading (or one in `--alert-every`) making an alert; reports publish-to-alert p50,
//!    p99 and max of those. With no lateness, an event at the newest time on its stream is
//!    fed to the rule as it arrives: nothing can come before it any more.
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

#[global_allocator]
static ALLOCATOR: tern::alloc::Allocator = tern::alloc::Allocator;

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

/// Wall-clock stamps of each measured message, in ns since the epoch, for `LIVE_BENCH_DUMP`:
/// (published, the engine's `emitted_at`, reached the sink). The wall clock, unlike
/// `Instant`, is what `emitted_at` is stamped with, so the delay splits into the way to the
/// engine (broker, MQTT client, queue, batch) and the way from it (outbox, dispatcher).
static STAGES: Mutex<Vec<(i64, [i64; 3])>> = Mutex::new(Vec::new());

fn wall_ns() -> i64 {
    chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
}

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
            let wall = wall_ns();
            for a in batch {
                if let Some(seq) = a.parsed()["fields"]["seq"].as_i64() {
                    self.0.lock().unwrap().insert(seq, now);
                    STAGES.lock().unwrap().push((seq, [0, a.emitted_at, wall]));
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
    async fn start(
        dir: &Path,
        port: u16,
        client_id: &str,
        lateness: &str,
        sync: bool,
        qos: u8,
    ) -> Tern {
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
                "queue = 4096\nstate_sync = {sync}\nqos = {qos}\n[broker]\nhost = \"127.0.0.1\"\nport = {port}\n\
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

/// Publishes `share` readings from each of `publishers` clients at once, as fast as the
/// broker takes them (one in 100 alert-worthy when `alerts`), and waits until the broker has
/// acknowledged every one. Returns the clients, still connected.
async fn flood(
    port: u16,
    prefix: &str,
    publishers: i64,
    share: i64,
    alerts: bool,
) -> Vec<rumqttc::AsyncClient> {
    let mut tasks = Vec::new();
    for p in 0..publishers {
        let id = format!("{prefix}-{p}");
        tasks.push(tokio::spawn(async move {
            let (client, acked) = connect(port, &id);
            for i in 0..share {
                let seq = p * share + i;
                let value = if alerts && seq % 100 == 0 {
                    150.0
                } else {
                    50.0
                };
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
    clients
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

/// A plain subscriber in place of tern (`--broker-only`): records when each reading arrived.
/// It is the raw client below, so that what it measures is the broker, not a client library.
struct Plain {
    seen: Arc<Mutex<HashMap<i64, Instant>>>,
    received: Arc<AtomicU64>,
    stream: std::net::TcpStream,
}

impl Plain {
    /// Subscribes at `qos`; records the arrival of the readings whose seq is a multiple of
    /// `every` (the measured ones: recording all of them would make the map's growth, not the
    /// broker, the subscriber's worst pauses).
    async fn start(port: u16, id: &str, qos: u8, every: i64) -> Plain {
        let mut stream = raw::connect(port, id);
        raw::subscribe(&mut stream, "bench/+/reading", qos);
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let received = Arc::new(AtomicU64::new(0));
        let (s, r) = (Arc::clone(&seen), Arc::clone(&received));
        let reader = stream.try_clone().unwrap();
        std::thread::spawn(move || {
            raw::read_loop(reader, |payload| {
                let now = Instant::now();
                r.fetch_add(1, Ordering::Relaxed);
                if let Some(seq) = seq_of(payload).filter(|seq| seq % every == 0) {
                    s.lock().unwrap().insert(seq, now);
                }
            })
        });
        Plain {
            seen,
            received,
            stream,
        }
    }
}

/// The `seq` of a bench payload, without a JSON parser (the subscriber must keep up).
fn seq_of(payload: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(payload).ok()?;
    let rest = text.split("\"seq\": ").nth(1)?;
    rest.split(',').next()?.trim().parse().ok()
}

/// Latency phase: `rate` readings per second for `seconds` from one raw connection (a
/// thread of its own, writing what is due every 250 µs in one write); one in `every` is an
/// alert (value over 100). Returns (seq, write instant) of the alerting ones, and the
/// connection, to be kept open until the readings are through.
async fn paced(
    port: u16,
    id: &str,
    rate: u64,
    seconds: u64,
    every: i64,
    qos: u8,
) -> (Vec<(i64, Instant)>, std::net::TcpStream) {
    let id = id.to_owned();
    tokio::task::spawn_blocking(move || {
        use std::io::Write as _;
        let mut stream = raw::connect(port, &id);
        let reader = stream.try_clone().unwrap();
        std::thread::spawn(move || raw::read_loop(reader, |_| {}));
        let n = (rate * seconds) as i64;
        // Only this phase's stamps: the throughput phase's alerts carry the same seqs.
        STAGES.lock().unwrap().clear();
        let epoch = now_ms();
        let t0 = Instant::now() + Duration::from_millis(50);
        let due = |seq: i64| t0 + Duration::from_nanos(seq as u64 * 1_000_000_000 / rate);
        let tick = Duration::from_micros(250);
        let (mut sent, mut out, mut seq, mut packet_id) = (Vec::new(), Vec::new(), 0i64, 0u16);
        while seq < n {
            let now = Instant::now();
            if due(seq) > now {
                std::thread::sleep((due(seq) - now).max(tick));
                continue;
            }
            out.clear();
            while seq < n && due(seq) <= now {
                let alert = seq % every == 0;
                if alert {
                    sent.push((seq, now));
                    STAGES.lock().unwrap().push((seq, [wall_ns(), 0, 0]));
                }
                let value = if alert { 150.0 } else { 50.0 };
                packet_id = packet_id % u16::MAX + 1;
                // Event time = publish order in ms (ties keep arrival order).
                raw::publish(
                    &mut out,
                    &format!("bench/dev-{}/reading", seq % 100),
                    (qos > 0).then_some(packet_id),
                    &payload(epoch + seq * 1000 / rate as i64, seq, value),
                );
                seq += 1;
            }
            stream.write_all(&out).unwrap();
        }
        // A reading a minute later releases the last ones.
        out.clear();
        raw::publish(
            &mut out,
            "bench/dev-0/reading",
            (qos > 0).then_some(packet_id % u16::MAX + 1),
            &payload(epoch + n + 60_000, -1, 0.0),
        );
        stream.write_all(&out).unwrap();
        (sent, stream)
    })
    .await
    .unwrap()
}

/// Prints p50, p99 and max of publish-to-arrival.
fn report(what: &str, sent: &[(i64, Instant)], seen: &Mutex<HashMap<i64, Instant>>) {
    let mut latencies: Vec<Duration> = {
        let seen = seen.lock().unwrap();
        sent.iter()
            .filter_map(|(seq, at)| seen.get(seq).map(|t| t.saturating_duration_since(*at)))
            .collect()
    };
    if std::env::var_os("LIVE_BENCH_DUMP").is_some() {
        // seq, publish to alert, publish to the engine's stamp, that stamp to the sink (ms).
        let mut stages: HashMap<i64, [i64; 3]> = HashMap::new();
        for (seq, stamps) in STAGES.lock().unwrap().drain(..) {
            let s = stages.entry(seq).or_default();
            for (to, from) in s.iter_mut().zip(stamps) {
                *to = (*to).max(from);
            }
        }
        let ms = |ns: i64| ns as f64 / 1e6;
        for (l, (seq, _)) in latencies.iter().zip(sent) {
            let [p, e, r] = stages.get(seq).copied().unwrap_or_default();
            if e == 0 {
                // The plain subscriber of `--broker-only` has no engine stamp.
                eprintln!("{seq} {:.3}", l.as_secs_f64() * 1e3);
            } else {
                let total = l.as_secs_f64() * 1e3;
                eprintln!("{seq} {total:.3} {:.3} {:.3}", ms(e - p), ms(r - e));
            }
        }
    }
    latencies.sort();
    let pct = |p: f64| {
        let i = ((latencies.len() as f64 * p) as usize).min(latencies.len() - 1);
        latencies[i].as_secs_f64() * 1e3
    };
    println!(
        "{what}: {} measured: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        latencies.len(),
        pct(0.50),
        pct(0.99),
        pct(1.0),
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let all: Vec<String> = std::env::args().skip(1).collect();
    let flag = |f: &str| all.iter().any(|a| a == f);
    let every: i64 = all
        .iter()
        .position(|a| a == "--alert-every")
        .and_then(|i| all.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let broker_only = flag("--broker-only");
    let latency_only = flag("--latency-only");
    let sync = !flag("--no-state-sync");
    let qos: u8 = all
        .iter()
        .position(|a| a == "--qos")
        .and_then(|i| all.get(i + 1))
        .map_or(1, |q| q.parse().expect("--qos 0 or 1"));
    let args: Vec<&String> = all
        .iter()
        .enumerate()
        .filter(|(i, a)| {
            let value_of_flag =
                *i > 0 && (all[*i - 1] == "--alert-every" || all[*i - 1] == "--qos");
            !a.starts_with("--") && !value_of_flag
        })
        .map(|(_, a)| a)
        .collect();
    let arg = |i: usize, default: u64| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let messages = arg(0, 200_000) as i64;
    let rate = arg(1, 1_000).max(1);
    let seconds = arg(2, 10);
    let publishers = arg(3, 4).max(1) as i64;

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
    let share = messages / publishers;
    let total_messages = share * publishers;
    let expected = (0..total_messages).filter(|s| s % 100 == 0).count();

    if broker_only {
        // Mosquitto alone: the same publishers and QoS, a plain subscriber instead of tern.
        if !latency_only {
            let sub = Plain::start(port, "bench-plain-1", 1, i64::MAX).await;
            let start = Instant::now();
            flood(port, "bench-pub", publishers, share, false).await;
            let published = start.elapsed();
            wait_for("the subscriber", Duration::from_secs(120), || {
                sub.received.load(Ordering::Relaxed) >= total_messages as u64
            })
            .await;
            let total = start.elapsed();
            println!(
                "broker alone: {total_messages} messages from {publishers} publishers to one \
                 QoS 1 subscriber in {:.2} s = {:.0} messages/s (all at the broker after {:.2} s)",
                total.as_secs_f64(),
                total_messages as f64 / total.as_secs_f64(),
                published.as_secs_f64(),
            );
            let _ = sub.stream.shutdown(std::net::Shutdown::Both);
        }
        let sub = Plain::start(port, "bench-plain-2", qos, every).await;
        let (sent, _publisher) = paced(port, "bench-lat", rate, seconds, every, qos).await;
        let want = sent.len();
        wait_for("the subscriber", Duration::from_secs(60), || {
            sent.iter()
                .filter(|(seq, _)| sub.seen.lock().unwrap().contains_key(seq))
                .count()
                >= want
        })
        .await;
        report(
            &format!(
                "broker alone, latency: {rate} messages/s for {seconds} s from one publisher \
                 at QoS {qos}, one in {every} measured, publish to subscriber"
            ),
            &sent,
            &sub.seen,
        );
        return;
    }

    if !latency_only {
        // 1. Throughput: several publishers at once, as a fleet of gateways would.
        let tern = Tern::start(
            &dir.path().join("throughput"),
            port,
            "tern-bench-1",
            "5s",
            sync,
            1,
        )
        .await;
        let start = Instant::now();
        // Everything is at the broker before the reading that releases it all.
        let clients = flood(port, "bench-pub", publishers, share, true).await;
        let published = start.elapsed();
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

        // 2. Backlog: the broker holds MESSAGES readings for tern's session while tern is
        // away; how fast does tern work through them once it starts?
        let backlog_dir = dir.path().join("backlog");
        let tern = Tern::start(&backlog_dir, port, "tern-bench-backlog", "5s", sync, 1).await;
        tern.stop().await;
        let clients = flood(port, "bench-backlog", publishers, share, true).await;
        publish(&clients[0], 0, payload(now_ms() + 60_000, -1, 0.0)).await;
        let start = Instant::now();
        let tern = Tern::start(&backlog_dir, port, "tern-bench-backlog", "5s", sync, 1).await;
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
    }

    // 3. Latency at a fixed rate; every reading (or one in `--alert-every`) makes an alert.
    let tern = Tern::start(
        &dir.path().join("latency"),
        port,
        "tern-bench-2",
        "0s",
        sync,
        qos,
    )
    .await;
    let (sent, _publisher) = paced(port, "bench-pub-latency", rate, seconds, every, qos).await;
    let want = sent.len();
    wait_for("the latency alerts", Duration::from_secs(60), || {
        tern.alerts() >= want
    })
    .await;
    report(
        &format!(
            "latency: {rate} messages/s for {seconds} s from one publisher at QoS {qos}, \
             one in {every} an alert, state_sync {sync}: publish to alert"
        ),
        &sent,
        &tern.seen,
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

/// A minimal MQTT 3.1.1 client over a blocking socket, for the latency phase's load: rumqttc's
/// per-message work (a request channel, a task wake-up and a write per packet) made the
/// publisher and the plain subscriber take as much CPU as the broker at 50,000 messages/s on
/// this 2-core machine, so the generator, not the broker or tern, set the latency.
mod raw {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    fn remaining_length(out: &mut Vec<u8>, mut len: usize) {
        loop {
            let mut byte = (len % 128) as u8;
            len /= 128;
            if len > 0 {
                byte |= 0x80;
            }
            out.push(byte);
            if len == 0 {
                break;
            }
        }
    }

    fn string(out: &mut Vec<u8>, s: &[u8]) {
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s);
    }

    /// Connects with a clean session and no keep-alive, and waits for CONNACK.
    pub fn connect(port: u16, id: &str) -> TcpStream {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream.set_nodelay(true).unwrap();
        let mut body = Vec::new();
        string(&mut body, b"MQTT");
        body.extend_from_slice(&[4, 0x02, 0, 0]);
        string(&mut body, id.as_bytes());
        let mut connack = [0u8; 4];
        exchange(&mut stream, 0x10, &body, &mut connack);
        assert_eq!(connack, [0x20, 2, 0, 0], "CONNACK");
        stream
    }

    /// Sends one packet (`first`: its type and flags) and reads the reply's fixed size.
    fn exchange(stream: &mut TcpStream, first: u8, body: &[u8], reply: &mut [u8]) {
        let mut packet = vec![first];
        remaining_length(&mut packet, body.len());
        packet.extend_from_slice(body);
        stream.write_all(&packet).unwrap();
        stream.read_exact(reply).unwrap();
    }

    /// Appends a PUBLISH: QoS 1 with packet identifier `id`, or QoS 0 with none.
    pub fn publish(out: &mut Vec<u8>, topic: &str, id: Option<u16>, payload: &[u8]) {
        out.push(if id.is_some() { 0x32 } else { 0x30 });
        let id_len = if id.is_some() { 2 } else { 0 };
        remaining_length(out, 2 + topic.len() + id_len + payload.len());
        string(out, topic.as_bytes());
        if let Some(id) = id {
            out.extend_from_slice(&id.to_be_bytes());
        }
        out.extend_from_slice(payload);
    }

    /// Subscribes to `filter` at `qos` and waits for SUBACK.
    pub fn subscribe(stream: &mut TcpStream, filter: &str, qos: u8) {
        let mut body = vec![0, 1];
        string(&mut body, filter.as_bytes());
        body.push(qos);
        let mut suback = [0u8; 5];
        exchange(stream, 0x82, &body, &mut suback);
        assert_eq!(suback[0], 0x90, "SUBACK");
    }

    /// Reads packets until the socket closes, calling `on_publish(payload)` for each PUBLISH
    /// (acknowledging the QoS 1 ones, all of one read in one write) and ignoring the rest.
    pub fn read_loop(mut stream: TcpStream, mut on_publish: impl FnMut(&[u8])) {
        let mut writer = stream.try_clone().unwrap();
        let mut buf: Vec<u8> = Vec::with_capacity(1 << 16);
        let mut chunk = vec![0u8; 1 << 16];
        let mut acks = Vec::new();
        loop {
            let n = match stream.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            let mut at = 0;
            // Fixed header: type and flags, then the remaining length (1-4 bytes).
            while let Some(&first) = buf.get(at) {
                let (mut len, mut shift, mut i) = (0usize, 0, at + 1);
                let complete = loop {
                    let Some(&b) = buf.get(i) else { break false };
                    len |= ((b & 0x7f) as usize) << shift;
                    shift += 7;
                    i += 1;
                    if b & 0x80 == 0 {
                        break true;
                    }
                };
                if !complete || buf.len() < i + len {
                    break;
                }
                let body = &buf[i..i + len];
                if first >> 4 == 3 {
                    let qos = (first >> 1) & 3;
                    let topic = u16::from_be_bytes([body[0], body[1]]) as usize;
                    let mut start = 2 + topic;
                    if qos > 0 {
                        acks.extend_from_slice(&[0x40, 2, body[start], body[start + 1]]);
                        start += 2;
                    }
                    on_publish(&body[start..]);
                }
                at = i + len;
            }
            buf.drain(..at);
            if !acks.is_empty() {
                if writer.write_all(&acks).is_err() {
                    return;
                }
                acks.clear();
            }
        }
    }
}
