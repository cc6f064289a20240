//! Batch equals stream: a live `tern run` and a `tern record` capture of the same simulated
//! traffic, replayed with `tern replay --format capture`, give the same alerts, ids included.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use tern::sim::fleet::{Fleet, FleetConfig};
use tern::sim::publish::{Broker, Pace, publish};
use tokio_util::sync::CancellationToken;

const TERN: &str = env!("CARGO_BIN_EXE_tern");
const DEADLINE: Duration = Duration::from_secs(60);

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("record_replay")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process whose stderr is read line by line on a thread.
struct Proc {
    name: &'static str,
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    fn spawn(name: &'static str, cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Proc {
            name,
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a stderr line containing `needle`.
    fn wait_for(&mut self, needle: &str) {
        let deadline = Instant::now() + DEADLINE;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = line.contains(needle);
                    self.seen.push(line);
                    if found {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        panic!(
            "{} never printed {needle:?}; its stderr:\n{}",
            self.name,
            self.seen.join("\n")
        );
    }

    /// Waits for the process to exit successfully.
    fn wait_success(&mut self) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.seen.extend(self.lines.try_iter());
                assert!(
                    status.success(),
                    "{} failed ({status}); its stderr:\n{}",
                    self.name,
                    self.seen.join("\n")
                );
                return;
            }
            assert!(Instant::now() < deadline, "{} did not exit", self.name);
            // Waiting on a child's exit has no blocking form with a timeout in std: read its
            // stderr in the meantime, which also returns as soon as it closes.
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(100)) {
                self.seen.push(line);
            }
        }
    }

    fn terminate(&mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_alerts(files: &[PathBuf]) -> BTreeMap<String, Json> {
    let mut alerts = BTreeMap::new();
    for f in files {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        for line in text.lines() {
            let mut a: Json = serde_json::from_str(line).unwrap();
            a.as_object_mut().unwrap().remove("emitted_at");
            let id = a["id"].as_str().unwrap().to_string();
            // A rule sending to several sinks writes the same alert to each.
            if let Some(prev) = alerts.insert(id.clone(), a.clone()) {
                assert_eq!(prev, a, "two sinks got different alerts with id {id}");
            }
        }
    }
    alerts
}

/// One topic per device profile the fleet publishes to, for the end markers.
const MARKER_TOPICS: [&str; 5] = [
    "city/end/camera/end-marker/flow",
    "city/end/loop/end-marker",
    "fab/end/station/end-marker/inspection",
    "plant/end/furnace/end-marker/telemetry",
    "devices/end-marker/heartbeat",
];

#[test]
fn a_recorded_live_run_replays_to_the_same_alerts() {
    let dir = scratch("same_alerts");
    let port = free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    tern::io::mqtt::embedded::start(addr, 1 << 20).unwrap();

    let sinks = ["webhook", "mqtt", "influx", "file"];
    let mut config = format!(
        "rules = [{rules:?}]\ndevices = {devices:?}\n\n[broker]\nhost = \"127.0.0.1\"\n\
         port = {port}\nclient_id = \"tern-record-replay\"\n\n[dead_letter]\nfile = \"dead.jsonl\"\n",
        rules = repo("rules").display().to_string(),
        devices = repo("devices").display().to_string(),
    );
    for s in sinks {
        config.push_str(&format!(
            "\n[sinks.{s}]\ntype = \"file\"\npath = \"alerts-{s}.jsonl\"\n"
        ));
    }
    std::fs::write(dir.join("tern.toml"), config).unwrap();

    // The traffic: ten minutes of the demo fleet (fewer cameras), with more flawed messages
    // than usual, at a hundred times the speed of the clock: 6 s.
    //
    // Not faster: the broker (rumqttd) keeps order within a subscription but not across
    // them, and a stream whose first messages arrive after another stream has moved time on
    // has them counted late (a stream's watermark never lags the engine's time). In a burst
    // the two subscribers (tern run, tern record) could see different interleavings.
    let mut fleet_config = FleetConfig::demo(5, 1_709_280_000_000_000_000);
    fleet_config.cameras = 3;
    fleet_config.malformed = 0.01;
    fleet_config.late = 0.01;
    let messages: u64 = 4000;
    let total = messages + MARKER_TOPICS.len() as u64;

    let mut record = Proc::spawn(
        "tern record",
        Command::new(TERN)
            .args(["record", "--broker", &format!("127.0.0.1:{port}"), "--out"])
            .arg(dir.join("capture.jsonl"))
            .arg("--devices")
            .arg(repo("devices"))
            .args(["--count", &total.to_string()]),
    );
    let mut run = Proc::spawn(
        "tern run",
        Command::new(TERN)
            .args(["run", "--config"])
            .arg(dir.join("tern.toml"))
            .current_dir(&dir),
    );
    record.wait_for("record: subscribed");
    run.wait_for("subscribed");

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut fleet = Fleet::new(fleet_config);
    let broker = Broker::parse(&format!("127.0.0.1:{port}")).unwrap();
    let pace = Pace {
        speed: 100.0,
        duration: None,
        count: Some(messages),
    };
    let report = runtime
        .block_on(publish(
            &mut fleet,
            &broker,
            "sim",
            &pace,
            CancellationToken::new(),
            None,
        ))
        .unwrap();
    assert_eq!(report.published, messages);
    assert_eq!(report.acknowledged, messages);
    let stats = report.fleet;
    assert!(stats.late > 0 && stats.malformed_total() > 0, "{stats}");

    // The broker keeps order per subscription, not across them: one marker per profile
    // topic says everything before it on that topic has gone through.
    runtime.block_on(async {
        let opts = rumqttc::MqttOptions::new("markers", "127.0.0.1", port);
        let (client, mut events) = rumqttc::AsyncClient::new(opts, 16);
        for t in MARKER_TOPICS {
            client
                .publish(t, rumqttc::QoS::AtLeastOnce, false, b"end of test".to_vec())
                .await
                .unwrap();
        }
        let mut acked = 0;
        while acked < MARKER_TOPICS.len() {
            if let rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)) =
                tokio::time::timeout(DEADLINE, events.poll())
                    .await
                    .unwrap()
                    .unwrap()
            {
                acked += 1;
            }
        }
    });

    record.wait_success();
    let dead = dir.join("dead.jsonl");
    let deadline = Instant::now() + DEADLINE;
    loop {
        let text = std::fs::read_to_string(&dead).unwrap_or_default();
        if text.matches("end-marker").count() == MARKER_TOPICS.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "tern run did not get every marker"
        );
        // The dead-letter file is the only sign of progress tern run gives; poll it.
        std::thread::sleep(Duration::from_millis(50));
    }
    run.terminate();
    run.wait_success();

    let live = read_alerts(&sinks.map(|s| dir.join(format!("alerts-{s}.jsonl"))));
    let out = Command::new(TERN)
        .args([
            "replay",
            "--format",
            "capture",
            "--no-flush",
            "--no-emitted-at",
            "--rules",
        ])
        .arg(repo("rules"))
        .arg("--devices")
        .arg(repo("devices"))
        .arg("--config")
        .arg(dir.join("tern.toml"))
        .arg("--input")
        .arg(dir.join("capture.jsonl"))
        .arg("--dead-letter")
        .arg(dir.join("replay-dead.jsonl"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(dir.join("replay.jsonl"), &out.stdout).unwrap();
    let replayed = read_alerts(&[dir.join("replay.jsonl")]);

    let rules: BTreeMap<&str, usize> = live.values().fold(BTreeMap::new(), |mut m, a| {
        *m.entry(a["rule"].as_str().unwrap()).or_default() += 1;
        m
    });
    for rule in [
        "congestion",
        "device_offline",
        "camera_silent",
        "detector_congestion",
        "furnace_drift",
    ] {
        assert!(rules.contains_key(rule), "no {rule} alert live: {rules:?}");
    }
    let only_live: Vec<_> = live.keys().filter(|k| !replayed.contains_key(*k)).collect();
    let only_replay: Vec<_> = replayed.keys().filter(|k| !live.contains_key(*k)).collect();
    assert!(
        only_live.is_empty() && only_replay.is_empty(),
        "live only: {only_live:?}\nreplay only: {only_replay:?}"
    );
    assert_eq!(live, replayed);

    // The flawed messages are dead-lettered live for the reasons the simulator meant.
    let text = std::fs::read_to_string(&dead).unwrap();
    let letters: Vec<Json> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let late = letters.iter().filter(|l| l["reason"] == "late").count() as u64;
    assert_eq!(late, stats.late);
    assert_eq!(
        letters.len() as u64,
        stats.late + stats.malformed_total() + MARKER_TOPICS.len() as u64
    );
    let replay_dead = std::fs::read_to_string(dir.join("replay-dead.jsonl")).unwrap();
    assert_eq!(replay_dead.lines().count(), letters.len());
    let capture = std::fs::read_to_string(dir.join("capture.jsonl")).unwrap();
    assert_eq!(capture.lines().count() as u64, total);
}
