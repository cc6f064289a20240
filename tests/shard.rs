//! Sharded replay (`tern replay --workers N`): keys spread over N engines give exactly the
//! alerts of one engine, ids included, on the benchmark workload and on the bundled rules
//! over a simulated fleet (late and malformed messages included).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use tern::cli::record::capture_line;
use tern::sim::fleet::{Fleet, FleetConfig};

const TERN: &str = env!("CARGO_BIN_EXE_tern");

fn repo(p: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(p)
        .to_string_lossy()
        .into_owned()
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("shard")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A replay's output: alert lines sorted, and its stderr.
struct Replay {
    alerts: Vec<String>,
    stderr: String,
}

impl Replay {
    /// A counter of `--stats` (`events`, `alerts`, `late`).
    fn stat(&self, name: &str) -> u64 {
        self.stderr
            .lines()
            .find_map(|l| {
                let mut it = l.split_whitespace();
                (it.next() == Some(name)).then(|| it.next().unwrap().parse().unwrap())
            })
            .unwrap_or_else(|| panic!("no `{name}` in stats:\n{}", self.stderr))
    }
}

fn replay(args: &[&str], workers: u16) -> Replay {
    let out = Command::new(TERN)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg("replay")
        .args(args)
        .args([
            "--no-emitted-at",
            "--stats",
            "--workers",
            &workers.to_string(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "replay failed: {stderr}");
    Replay {
        alerts: sorted_lines(out.stdout),
        stderr,
    }
}

/// A replay's alerts, one per line, sorted.
fn sorted_lines(stdout: Vec<u8>) -> Vec<String> {
    let mut lines: Vec<String> = String::from_utf8(stdout)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    lines.sort();
    lines
}

/// Replays with 1, 2 and 4 workers and requires the same alerts and counters; returns the
/// single worker's replay.
fn same_with_workers(args: &[&str], sharded: bool) -> Replay {
    let one = replay(args, 1);
    assert!(!one.alerts.is_empty(), "nothing to compare: no alerts");
    for workers in [2, 4] {
        let n = replay(args, workers);
        assert_eq!(
            n.stderr.contains("workers: 1 ("),
            !sharded,
            "sharding {}expected with {workers} workers:\n{}",
            if sharded { "" } else { "not " },
            n.stderr
        );
        assert_eq!(
            one.alerts.len(),
            n.alerts.len(),
            "{workers} workers: alert count differs"
        );
        for (a, b) in one.alerts.iter().zip(&n.alerts) {
            assert_eq!(a, b, "{workers} workers: alerts differ");
        }
        for stat in ["events", "alerts", "late"] {
            assert_eq!(
                one.stat(stat),
                n.stat(stat),
                "{workers} workers: `{stat}` differs"
            );
        }
    }
    one
}

fn workload(dir: &Path) -> String {
    let file = dir.join("w.jsonl");
    let status = Command::new(TERN)
        .args(["simulate", "--out"])
        .arg(&file)
        .args(["--keys", "200", "--events", "50000", "--seed", "3"])
        .output()
        .unwrap();
    assert!(status.status.success());
    file.to_string_lossy().into_owned()
}

#[test]
fn benchmark_patterns_give_the_same_alerts_on_any_number_of_workers() {
    let dir = scratch("bench");
    let input = workload(&dir);
    let rules = [
        repo("benches/workload.tern"),
        repo("benches/p1.tern"),
        repo("benches/p2.tern"),
        repo("benches/p3.tern"),
    ];
    let mut args: Vec<&str> = vec!["--input", &input, "--rules"];
    args.extend(rules.iter().map(String::as_str));
    let one = same_with_workers(&args, true);
    // P3 is an absence per camera: every one of the 200 cameras fires at the end.
    assert!(one.alerts.iter().filter(|a| a.contains("\"p3\"")).count() >= 200);
}

#[test]
fn time_stopped_at_the_last_event_is_the_same_on_every_worker() {
    // Without the final flush, what comes out depends on how far event time went: a worker
    // that saw only its own keys' events must still release and time out everything the
    // global time passed, and nothing more (P2's matches complete only when time passes
    // the next reading; P3's absences stay pending).
    let dir = scratch("no_flush");
    let input = workload(&dir);
    let rules = [
        repo("benches/workload.tern"),
        repo("benches/p2.tern"),
        repo("benches/p3.tern"),
    ];
    let mut args: Vec<&str> = vec!["--input", &input, "--no-flush", "--rules"];
    args.extend(rules.iter().map(String::as_str));
    same_with_workers(&args, true);
}

#[test]
fn explicit_watermarks_reach_every_worker() {
    // Lateness is decided globally: the workload with a `$watermark` every 1,000 lines, set
    // ahead of the data, makes some readings late; every worker count agrees on which.
    let dir = scratch("watermarks");
    let input = workload(&dir);
    let text = std::fs::read_to_string(&input).unwrap();
    let with = dir.join("wm.jsonl");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&with).unwrap());
    for (i, line) in text.lines().enumerate() {
        writeln!(f, "{line}").unwrap();
        if i % 1000 == 999 {
            let ts: i64 = line
                .split("\"ts\":")
                .nth(1)
                .and_then(|r| r.split([',', '}']).next())
                .unwrap()
                .parse()
                .unwrap();
            // Half a second ahead: the next readings of a few cameras are behind it.
            writeln!(f, "{{\"$watermark\": {}}}", ts + 500).unwrap();
        }
    }
    drop(f);
    let with = with.to_string_lossy().into_owned();
    let rules = [
        repo("benches/workload.tern"),
        repo("benches/p1.tern"),
        repo("benches/p3.tern"),
    ];
    let mut args: Vec<&str> = vec!["--input", &with, "--rules"];
    args.extend(rules.iter().map(String::as_str));
    let one = same_with_workers(&args, true);
    assert!(one.stat("late") > 0, "the watermarks made nothing late");
}

#[test]
fn rejected_lines_reach_the_dead_letter_file_as_from_one_engine() {
    // The workers split JSON Lines themselves, a block of about 1 MiB at a time: bad,
    // blank, late and CRLF lines spread over many blocks, and a last line without its
    // newline, give one engine's dead letters, line numbers and all, in the same order.
    let dir = scratch("dead_letters");
    let input = workload(&dir);
    let text = std::fs::read_to_string(&input).unwrap();
    let messy = dir.join("messy.jsonl");
    let mut out = String::new();
    for (i, line) in text.lines().enumerate() {
        match i % 997 {
            5 => out.push_str("not json\n"),
            6 => out.push_str("\n   \n"),
            7 => out.push_str(
                "{\"camera_id\":\"cam-00001\",\"ts\":\"soon\",\"speed\":1.0,\"occupancy\":1.0}\n",
            ),
            // Long before anything read so far: late.
            8 => out.push_str(
                "{\"camera_id\":\"cam-00002\",\"ts\":1000,\"speed\":1.0,\"occupancy\":1.0}\n",
            ),
            9 => {
                out.push_str(line);
                out.push_str("\r\n");
                continue;
            }
            _ => {}
        }
        out.push_str(line);
        out.push('\n');
    }
    out.push_str("{\"camera_id\":\"cam-00003\",\"ts\":1,\"speed\":1.0}");
    assert!(out.len() > 3 << 20, "too few blocks: {}", out.len());
    std::fs::write(&messy, out).unwrap();
    let messy = messy.to_string_lossy().into_owned();
    let workload = repo("benches/workload.tern");
    let p1 = repo("benches/p1.tern");
    let dead = |workers: u16| {
        let file = dir.join(format!("dead-{workers}.jsonl"));
        let path = file.to_string_lossy().into_owned();
        let args = [
            "--input",
            &messy,
            "--rules",
            &workload,
            &p1,
            "--dead-letter",
            &path,
        ];
        let run = replay(&args, workers);
        (run, std::fs::read_to_string(&file).unwrap())
    };
    let (one, letters) = dead(1);
    let reasons = |s: &str| {
        s.lines()
            .filter(|l| l.starts_with("rejected"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert!(one.stat("late") > 40, "{}", one.stderr);
    // Per 997 lines, a line of no JSON and one of a bad time; the last line lacks a field.
    assert_eq!(
        letters.lines().count() as u64,
        one.stat("late") + 2 * 51 + 1,
        "{letters}"
    );
    assert!(letters.contains("\"line\":6,"), "{letters}");
    for workers in [2, 3] {
        let (n, got) = dead(workers);
        assert_eq!(n.alerts, one.alerts, "{workers} workers: alerts differ");
        assert_eq!(
            reasons(&n.stderr),
            reasons(&one.stderr),
            "{workers} workers"
        );
        assert_eq!(got, letters, "{workers} workers: dead letters differ");
    }
    // Through a pipe, whose reads return a few KiB at a time, the blocks are the same.
    let file = dir.join("dead-pipe.jsonl");
    let mut child = Command::new(TERN)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["replay", "--input", "-", "--rules", &workload, &p1])
        .args(["--no-emitted-at", "--workers", "2", "--dead-letter"])
        .arg(&file)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let bytes = std::fs::read(&messy).unwrap();
    let writer = std::thread::spawn(move || {
        for chunk in bytes.chunks(7919) {
            stdin.write_all(chunk).unwrap();
        }
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        sorted_lines(out.stdout),
        one.alerts,
        "through a pipe: alerts differ"
    );
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        letters,
        "through a pipe: dead letters differ"
    );
}

#[test]
fn bundled_rules_over_a_simulated_fleet_give_the_same_alerts() {
    // Captures of the demo fleet (cameras, detectors, lines, furnaces, heartbeats, with late
    // and malformed messages) for 40 simulated minutes, decoded by the device profiles.
    let dir = scratch("fleet");
    let start = 1_709_251_200_000_000_000; // 2024-03-01T00:00:00Z
    let mut fleet = Fleet::new(FleetConfig::demo(11, start));
    let file = dir.join("capture.jsonl");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
    for m in fleet.until(start + 40 * 60 * 1_000_000_000) {
        writeln!(f, "{}", capture_line(&m.topic, &m.payload, false)).unwrap();
    }
    drop(f);
    let file = file.to_string_lossy().into_owned();
    let rules = repo("rules");
    let devices = repo("devices");
    let args = [
        "--input",
        &file,
        "--format",
        "capture",
        "--rules",
        &rules,
        "--devices",
        &devices,
    ];
    let one = same_with_workers(&args, true);
    assert!(
        one.stat("late") > 0,
        "the fleet's late copies were not late"
    );
}

#[test]
fn a_rule_without_a_key_runs_on_one_worker_and_says_why() {
    let dir = scratch("global");
    let input = workload(&dir);
    let rule = dir.join("global.tern");
    std::fs::write(
        &rule,
        "rule any_jam {\n    from cam\n    match a: cam where speed < 5.0\n    emit jam { speed: a.speed }\n}\n",
    )
    .unwrap();
    let rule = rule.to_string_lossy().into_owned();
    let workload = repo("benches/workload.tern");
    let args = ["--input", &input, "--rules", &workload, &rule];
    let n = replay(&args, 2);
    assert!(
        n.stderr
            .contains("workers: 1 (keys cannot be sharded: rule `any_jam` has no key"),
        "{}",
        n.stderr
    );
    assert_eq!(n.alerts, replay(&args, 1).alerts);
}
