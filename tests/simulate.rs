//! `tern simulate`: the benchmark workload is reproducible, in time order per camera, and
//! replays; the live fleet publishes what the shipped device profiles decode.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

const TERN: &str = env!("CARGO_BIN_EXE_tern");

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("simulate")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn simulate(out: &Path, extra: &[&str]) {
    let status = Command::new(TERN)
        .arg("simulate")
        .arg("--out")
        .arg(out)
        .args(extra)
        .status()
        .unwrap();
    assert!(status.success(), "tern simulate failed: {status}");
}

#[test]
fn the_same_seed_gives_the_same_bytes_and_another_seed_does_not() {
    let dir = scratch("seed");
    let args = ["--keys", "50", "--events", "20000"];
    simulate(
        &dir.join("a.jsonl"),
        &[&args[..], &["--seed", "42"]].concat(),
    );
    simulate(
        &dir.join("b.jsonl"),
        &[&args[..], &["--seed", "42"]].concat(),
    );
    simulate(
        &dir.join("c.jsonl"),
        &[&args[..], &["--seed", "43"]].concat(),
    );
    let a = std::fs::read(dir.join("a.jsonl")).unwrap();
    let b = std::fs::read(dir.join("b.jsonl")).unwrap();
    let c = std::fs::read(dir.join("c.jsonl")).unwrap();
    assert_eq!(a.iter().filter(|b| **b == b'\n').count(), 20_000);
    assert!(a == b, "same seed, different bytes");
    assert!(a != c, "different seeds, same bytes");
}

#[test]
fn time_never_goes_back_and_each_camera_moves_forward() {
    let dir = scratch("order");
    let file = dir.join("w.jsonl");
    simulate(
        &file,
        &[
            "--keys",
            "200",
            "--events",
            "50000",
            "--start",
            "2024-06-01T12:00:00+02:00",
        ],
    );
    let text = std::fs::read_to_string(&file).unwrap();
    let mut last_global = i64::MIN;
    let mut last: HashMap<String, i64> = HashMap::new();
    let mut slow = 0;
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let cam = v["camera_id"].as_str().unwrap().to_string();
        let ts = v["ts"].as_i64().unwrap();
        let speed = v["speed"].as_f64().unwrap();
        let occupancy = v["occupancy"].as_f64().unwrap();
        assert!((0.0..=130.0).contains(&speed) && (0.0..=100.0).contains(&occupancy));
        slow += usize::from(speed < 20.0);
        assert!(ts >= last_global, "time went back at {line}");
        last_global = ts;
        if let Some(prev) = last.insert(cam, ts) {
            assert!(ts > prev, "a camera's time did not increase at {line}");
        }
    }
    assert_eq!(last.len(), 200);
    assert_eq!(
        text.lines()
            .next()
            .map(|l| l.contains("\"ts\":1717236000000")),
        Some(true),
        "--start sets the first time"
    );
    // A few percent of readings are slow: enough for patterns to fire, far from all.
    assert!((200..5000).contains(&slow), "{slow} slow readings");
}

#[test]
fn replay_reads_the_workload_and_congestion_fires() {
    let dir = scratch("replay");
    let rule = dir.join("congestion.tern");
    std::fs::write(
        &rule,
        "rule congestion {\n  from cam\n  key camera_id\n  match slow: cam{2} where speed < 20.0\n    \
         not followed by cam where speed > 40.0\n    followed by third: cam where speed < 20.0\n  \
         within 5m\n  skip past last\n  emit congestion severity warning { camera: key }\n  to stdout\n}\n",
    )
    .unwrap();
    for format in ["jsonl", "csv"] {
        let file = dir.join(format!("w.{format}"));
        simulate(
            &file,
            &["--keys", "100", "--events", "30000", "--format", format],
        );
        let out = Command::new(TERN)
            .args(["replay", "--rules"])
            .arg(repo("benches/workload.tern"))
            .arg(&rule)
            .args(["--format", format, "--stats", "--no-emitted-at", "--input"])
            .arg(&file)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("events        30000"), "{format}: {stderr}");
        assert!(stderr.contains("late          0"), "{format}: {stderr}");
        let alerts = String::from_utf8_lossy(&out.stdout).lines().count();
        // 300 readings per camera with a jam starting on 0.4 % of them: roughly one or two
        // jams per camera, each giving an alert per three slow readings.
        assert!((30..1000).contains(&alerts), "{format}: {alerts} alerts");
    }
}

mod fleet {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use tern::compile;
    use tern::devices::{Profile, load_dir};
    use tern::engine::Engine;
    use tern::lang::source::Sources;
    use tern::sim::device::Kind;
    use tern::sim::fleet::{Flaw, Fleet, FleetConfig};

    use super::repo;

    const START: i64 = 1_709_280_000_000_000_000; // 2024-03-01T08:00:00Z
    const SECOND: i64 = 1_000_000_000;

    fn profiles() -> Vec<Profile> {
        let mut sources = Sources::new();
        let (profiles, diags) = load_dir(&repo("devices"), &mut sources);
        assert!(diags.is_empty(), "{diags:?}");
        profiles
    }

    #[test]
    fn every_message_decodes_except_the_malformed_ones() {
        let profiles = profiles();
        let mut config = FleetConfig::demo(7, START);
        config.malformed = 0.02;
        config.late = 0.01;
        let mut fleet = Fleet::new(config);
        let messages = fleet.until(START + 20 * 60 * SECOND);
        let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
        let mut kinds: BTreeMap<Kind, u64> = BTreeMap::new();
        let mut newest: BTreeMap<String, i64> = BTreeMap::new();
        let mut late_seen = 0;
        let mut last_at = i64::MIN;
        for m in &messages {
            assert!(m.at >= last_at, "messages out of order");
            last_at = m.at;
            let (i, _) = tern::devices::route(&profiles, &m.topic)
                .unwrap_or_else(|| panic!("no profile claims {}", m.topic));
            let profile = &profiles[i];
            assert_eq!(profile.name, m.kind.profile(), "{}", m.topic);
            let decoded = profile.decode(&m.topic, &m.payload, false);
            *kinds.entry(m.kind).or_default() += 1;
            match (m.flaw, decoded) {
                (Flaw::Malformed(how), Ok(e)) => panic!(
                    "{how:?} decoded: {} {} -> {e:?}",
                    m.topic,
                    String::from_utf8_lossy(&m.payload)
                ),
                (Flaw::Malformed(_), Err(e)) => {
                    *reasons.entry(e.reason().to_string()).or_default() += 1
                }
                (_, Err(e)) => panic!("{} {}: {e}", m.topic, String::from_utf8_lossy(&m.payload)),
                (Flaw::Late, Ok(e)) => {
                    late_seen += 1;
                    let newest = newest
                        .get(&profile.stream_name)
                        .copied()
                        .unwrap_or(i64::MIN);
                    assert!(
                        e.time() < newest - 30 * SECOND,
                        "a late copy is not late enough"
                    );
                }
                (Flaw::None, Ok(e)) => {
                    assert_eq!(
                        e.time(),
                        m.at,
                        "{} {}",
                        m.topic,
                        String::from_utf8_lossy(&m.payload)
                    );
                    let n = newest
                        .entry(profile.stream_name.clone())
                        .or_insert(e.time());
                    *n = (*n).max(e.time());
                }
            }
        }
        let stats = fleet.stats();
        assert_eq!(stats.messages, messages.len() as u64);
        assert_eq!(stats.late, late_seen);
        assert_eq!(reasons.values().sum::<u64>(), stats.malformed_total());
        assert!(late_seen > 10, "{late_seen} late copies");
        // Each way of spoiling a message shows up, and ends in a decode reason.
        assert_eq!(stats.malformed.len(), 4, "{:?}", stats.malformed);
        assert!(reasons.contains_key("invalid_json"), "{reasons:?}");
        assert!(reasons.len() >= 3, "{reasons:?}");
        // Every kind of device publishes.
        assert_eq!(kinds.len(), 5, "{kinds:?}");
    }

    /// The bundled rules, fed the fleet's messages in event time as the live pipeline would
    /// (same decoding, same engine): every demo rule fires, and the early ones early.
    #[test]
    fn the_bundled_rules_fire_on_the_scripted_opening() {
        let loaded = compile::load(
            &[repo("rules")],
            Some(&repo("devices")),
            &compile::DEFAULT_SINKS
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .unwrap();
        assert!(!loaded.has_errors());
        let program = Arc::new(loaded.program);
        let mut engine = Engine::new(Arc::clone(&program)).unwrap();
        let profiles = profiles();
        // Fewer cameras than the demo: the two scripted ones and one more keep it quick.
        let mut config = FleetConfig::demo(1, START);
        config.cameras = 3;
        let mut fleet = Fleet::new(config);
        let mut first: BTreeMap<String, i64> = BTreeMap::new();
        let mut count: BTreeMap<String, u64> = BTreeMap::new();
        let mut late = 0;
        let mut record = |a: tern::engine::alert::Alert| {
            first
                .entry(a.rule.to_string())
                .or_insert(a.event_time - START);
            *count.entry(a.rule.to_string()).or_default() += 1;
        };
        // The opening's yield drop is reported when the fourth low quarter-hour closes.
        let end = START + 80 * 60 * SECOND;
        while fleet.peek_time() <= end {
            let m = fleet.next_message();
            let (i, _) = tern::devices::route(&profiles, &m.topic).unwrap();
            let Ok(mut event) = profiles[i].decode(&m.topic, &m.payload, false) else {
                assert!(matches!(m.flaw, Flaw::Malformed(_)));
                continue;
            };
            event.set_stream(program.stream_id(&profiles[i].stream_name).unwrap().0);
            if engine.push(event, &mut record).is_err() {
                assert_eq!(
                    m.flaw,
                    Flaw::Late,
                    "{} {}",
                    m.topic,
                    String::from_utf8_lossy(&m.payload)
                );
                late += 1;
            } else {
                assert_ne!(m.flaw, Flaw::Late, "a late copy was accepted");
            }
        }
        assert_eq!(late, fleet.stats().late);
        let at = |rule: &str| {
            first
                .get(rule)
                .copied()
                .unwrap_or_else(|| panic!("{rule} never fired: {first:?} {count:?}"))
                / SECOND
        };
        eprintln!("first alerts (s after the start, event time): {first:?}\ncounts: {count:?}");
        assert!(at("congestion") <= 8, "{first:?}");
        assert!(at("device_offline") <= 40, "{first:?}");
        assert!(at("camera_silent") <= 70, "{first:?}");
        assert!(at("detector_congestion") <= 90, "{first:?}");
        assert!(at("furnace_drift") <= 90, "{first:?}");
        assert_eq!(at("yield_drop"), 75 * 60, "{first:?}");
    }
}

/// `tern demo` shows its first alerts within seconds, and stops cleanly on SIGINT.
#[test]
fn the_demo_prints_alerts_within_seconds() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    let mut child = Command::new(TERN)
        .args(["demo", "--port", &free_port().to_string()])
        .current_dir(repo(""))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let started = Instant::now();
    let mut seen = Vec::new();
    let wanted = ["congestion", "device_offline", "camera_offline"];
    while !wanted
        .iter()
        .all(|w| seen.iter().any(|l: &String| l.contains(w)))
    {
        let left = Duration::from_secs(90).saturating_sub(started.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "the demo did not show {wanted:?}; it printed:\n{}",
                    seen.join("\n")
                );
            }
        }
    }
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("tern demo: stopped"), "{stderr}");
    // Each alert is one readable line: time, severity, alert name, key, fields.
    let first = seen.first().unwrap();
    assert!(
        first.contains("WARNING  congestion cam-001 | camera=cam-001"),
        "{first}"
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
