//! Alert delivery end to end: `tern run` as a child process, a mosquitto broker, and a
//! webhook receiver in the test that verifies every request with the `standardwebhooks`
//! crate. The receiver is down while alerts fire, tern is killed with SIGKILL meanwhile, and
//! once tern is back and the receiver is up every alert arrives, each id accepted once.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use common::{Mosquitto, Publisher, Tern, end_marker, free_port, reading, wait_until};

/// What the test receiver saw.
#[derive(Default)]
struct Seen {
    /// Every verified request: (webhook-id, key, seq) in arrival order.
    requests: Vec<(String, String, i64)>,
    /// Requests whose signature did not verify.
    bad_signatures: u64,
    /// Alerts accepted, by id, in first-arrival order.
    accepted: Vec<String>,
}

/// A webhook receiver verifying with `standardwebhooks`, accepting each id once.
struct Receiver {
    seen: Arc<Mutex<Seen>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Receiver {
    fn start(addr: SocketAddr, secret: &str, seen: Arc<Mutex<Seen>>) -> Receiver {
        let webhook = Arc::new(standardwebhooks::Webhook::new(secret).unwrap());
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let state = Arc::clone(&seen);
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
                ready_tx.send(()).unwrap();
                let app = axum::Router::new().route(
                    "/hook",
                    axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                        let webhook = Arc::clone(&webhook);
                        let state = Arc::clone(&state);
                        async move {
                            let mut seen = state.lock().unwrap();
                            if webhook.verify(&body, &headers).is_err() {
                                seen.bad_signatures += 1;
                                return StatusCode::UNAUTHORIZED;
                            }
                            let id = headers["webhook-id"].to_str().unwrap().to_owned();
                            let alert: serde_json::Value = serde_json::from_slice(&body).unwrap();
                            assert_eq!(alert["id"], id.as_str(), "webhook-id is the alert id");
                            seen.requests.push((
                                id.clone(),
                                alert["key"].as_str().unwrap().to_owned(),
                                alert["fields"]["seq"].as_i64().unwrap(),
                            ));
                            if !seen.accepted.contains(&id) {
                                seen.accepted.push(id);
                            }
                            StatusCode::NO_CONTENT
                        }
                    }),
                );
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stop_rx.await;
                    })
                    .await
                    .unwrap();
            });
        });
        ready_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        Receiver {
            seen,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = &self.seen;
    }
}

/// The project: the common profile and rule, alerts to a webhook at `hook_port`.
fn write_project(dir: &Path, broker_port: u16, hook_port: u16) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    std::fs::create_dir_all(dir.join("devices")).unwrap();
    std::fs::write(dir.join("rules/high.tern"), common::RULE).unwrap();
    std::fs::write(dir.join("rules/climb.tern"), CLIMB).unwrap();
    std::fs::write(dir.join("devices/sensor.toml"), common::PROFILE).unwrap();
    let conf = format!(
        r#"
[broker]
host = "127.0.0.1"
port = {broker_port}
client_id = "tern-delivery"

[sinks.alerts]
type = "webhook"
url = "http://127.0.0.1:{hook_port}/hook"
secret_env = "HOOK_SECRET"
connect_timeout = "200ms"
timeout = "2s"
retry = {{ max_attempts = 1000, initial_delay = "50ms", max_delay = "300ms" }}

[dead_letter]
file = "out/dead.jsonl"

[logging]
format = "json"
"#
    );
    let path = dir.join("tern.toml");
    std::fs::write(&path, conf).unwrap();
    path
}

/// Partial matches that span many messages, so a crash has state to lose.
const CLIMB: &str = r#"
rule climb {
    from reading
    key device
    match a: reading
        next b: reading where value > a.value
        next c: reading where value > b.value
    within 1h
    skip past last
    emit climb severity info { device: key, seq: c.seq }
    to alerts
}
"#;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[test]
fn webhook_outage_and_kill_9_lose_no_alert() {
    let binary = require_mosquitto!();
    let dir = tempfile::tempdir().unwrap();
    let broker_port = free_port();
    let hook_port = free_port();
    let _broker = Mosquitto::start(&binary, dir.path(), broker_port, "");
    let config = write_project(dir.path(), broker_port, hook_port);
    let env = [
        ("HOOK_SECRET", SECRET),
        ("TERN_LOG", "info,tern::io::pipeline=debug"),
    ];

    // The receiver is down: alerts fire, enter the outbox, and wait there.
    let mut tern = Tern::start(dir.path(), &config, &env);
    tern.wait_ready();
    let mut publisher = Publisher::connect(broker_port, "test-pub", None);
    let n = 30;
    let mut msgs: Vec<_> = (1..=n).map(|seq| reading("dev-1", seq)).collect();
    msgs.extend((1..=n).map(|seq| reading("dev-2", seq)));
    msgs.push(end_marker("dev-1", n));
    msgs.push(end_marker("dev-2", n));
    publisher.publish_all(&msgs);
    // `climb` never fires on the common readings (all the same value): only `high` counts.
    // Kill once every alert is in the outbox. (Readings acknowledged while still waiting in
    // the reorder buffer are durable only once per-key state is; until then a kill before
    // the end markers would lose them.)
    tern.wait_for_log(&format!("\"stored\":{}", 2 * n), Duration::from_secs(30));
    tern.kill();

    // Back up, with the receiver listening: everything arrives.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let _receiver = Receiver::start(
        SocketAddr::from(([127, 0, 0, 1], hook_port)),
        SECRET,
        Arc::clone(&seen),
    );
    let mut tern = Tern::start(dir.path(), &config, &env);
    wait_until(
        Duration::from_secs(60),
        "every alert at the receiver",
        || seen.lock().unwrap().accepted.len() >= 2 * n as usize,
    );
    let status = tern.stop();
    assert!(status.success(), "{}", tern.stderr_text());

    let seen = seen.lock().unwrap();
    assert_eq!(seen.bad_signatures, 0);
    assert_eq!(
        seen.accepted.len(),
        2 * n as usize,
        "each alert accepted once"
    );
    let ids: BTreeSet<&String> = seen.accepted.iter().collect();
    assert_eq!(ids.len(), 2 * n as usize);
    // In order per key: per device, first arrivals are 1..=n in order.
    for device in ["dev-1", "dev-2"] {
        let mut first = BTreeSet::new();
        let order: Vec<i64> = seen
            .requests
            .iter()
            .filter(|(id, key, _)| key == device && first.insert(id.clone()))
            .map(|(_, _, seq)| *seq)
            .collect();
        assert_eq!(order, (1..=n).collect::<Vec<_>>(), "{device}");
    }
    assert!(
        !dir.path().join("out/dead.jsonl").exists()
            || std::fs::read_to_string(dir.path().join("out/dead.jsonl"))
                .unwrap()
                .is_empty(),
        "nothing dead-lettered"
    );
}

/// A reading whose value goes up and down, so `climb` has partial matches to keep.
fn wavy(device: &str, seq: i64) -> (String, Vec<u8>) {
    let value = 50 + (seq * 37 + device.len() as i64 * 11) % 100;
    (
        format!("sensors/{device}/reading"),
        format!(
            r#"{{"ts": {}, "seq": {seq}, "value": {value}.5}}"#,
            common::T0 + seq * 1000
        )
        .into_bytes(),
    )
}

#[test]
fn kill_9_at_twenty_moments_gives_the_alerts_of_an_uninterrupted_run() {
    let binary = require_mosquitto!();
    let dir = tempfile::tempdir().unwrap();
    let broker_port = free_port();
    let hook_port = free_port();
    let _broker = Mosquitto::start(&binary, dir.path(), broker_port, "");
    let config = write_project(dir.path(), broker_port, hook_port);
    let env = [("HOOK_SECRET", SECRET)];
    let seen = Arc::new(Mutex::new(Seen::default()));
    let _receiver = Receiver::start(
        SocketAddr::from(([127, 0, 0, 1], hook_port)),
        SECRET,
        Arc::clone(&seen),
    );

    // The input, and what an uninterrupted run makes of it (`tern replay` of the same
    // messages through the same profiles and rules).
    let devices = ["dev-a", "dev-bb", "dev-ccc"];
    let per_device = 200;
    let mut msgs = Vec::new();
    for seq in 1..=per_device {
        for d in devices {
            msgs.push(wavy(d, seq));
        }
    }
    for d in devices {
        msgs.push(end_marker(d, per_device));
    }
    let capture: String = msgs
        .iter()
        .map(|(t, p)| {
            serde_json::json!({"topic": t, "payload": String::from_utf8_lossy(p)}).to_string()
                + "\n"
        })
        .collect();
    std::fs::write(dir.path().join("capture.jsonl"), capture).unwrap();
    let replay = std::process::Command::new(env!("CARGO_BIN_EXE_tern"))
        .current_dir(dir.path())
        .args([
            "replay",
            "--rules",
            "rules",
            "--devices",
            "devices",
            "--format",
            "capture",
        ])
        .args(["--input", "capture.jsonl", "--no-flush"])
        .output()
        .unwrap();
    assert!(
        replay.status.success(),
        "{}",
        String::from_utf8_lossy(&replay.stderr)
    );
    let expected: BTreeSet<String> = String::from_utf8(replay.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert!(expected.len() > 300, "{} alerts expected", expected.len());

    // Publish in chunks of varying size; after each chunk, kill tern at once (mid-batch,
    // as like as not) and start it again. The broker keeps the session in between.
    let mut tern = Tern::start(dir.path(), &config, &env);
    tern.wait_ready();
    let mut publisher = Publisher::connect(broker_port, "test-pub", None);
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = |bound: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % bound
    };
    let mut sent = 0;
    let mut kills = 0;
    while sent < msgs.len() {
        let chunk = (10 + next(50) as usize).min(msgs.len() - sent);
        publisher.publish_all(&msgs[sent..sent + chunk]);
        sent += chunk;
        if kills < 20 {
            // Jitter, so the kill falls at a different point of tern's work each time.
            std::thread::sleep(Duration::from_millis(next(30)));
            tern.kill();
            kills += 1;
            tern = Tern::start(dir.path(), &config, &env);
        }
    }
    assert_eq!(kills, 20, "the input was too short for 20 kills");
    wait_until(
        Duration::from_secs(90),
        "every alert at the receiver",
        || seen.lock().unwrap().accepted.len() >= expected.len(),
    );
    let status = tern.stop();
    assert!(status.success(), "{}", tern.stderr_text());
    let seen = seen.lock().unwrap();
    assert_eq!(seen.bad_signatures, 0);
    let got: BTreeSet<String> = seen.accepted.iter().cloned().collect();
    assert_eq!(got.len(), seen.accepted.len(), "each id accepted once");
    let missing: Vec<_> = expected.difference(&got).collect();
    let extra: Vec<_> = got.difference(&expected).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{} missing, {} extra (of {})",
        missing.len(),
        extra.len(),
        expected.len()
    );
}
