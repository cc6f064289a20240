//! The `tern` binary as users run it: exit codes, JSON diagnostics, replay formats agreeing,
//! and replays that repeat byte for byte.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tern(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap()
}

/// A directory of the test's own, removed when the test ends.
fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("tern-cli-")
        .tempdir()
        .unwrap()
}

#[test]
fn check_passes_on_the_shipped_rules() {
    let out = tern(&["check"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("ok: "));
}

#[test]
fn check_reports_json_for_editors_and_exits_1() {
    let dir = scratch();
    let bad = dir.path().join("bad.tern");
    std::fs::write(&bad, "rule r {\n    from flow\n    key camera_id\n    match a: flow where sped < 20\n    within 5m\n}\n").unwrap();
    let out = tern(&["check", "--format", "json", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let diags: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let d = &diags[0];
    assert_eq!(d["code"], "E201");
    assert_eq!(d["severity"], "error");
    assert_eq!(
        (d["line"].as_u64(), d["column"].as_u64()),
        (Some(4), Some(25))
    );
    assert!(d["notes"][0].as_str().unwrap().contains("speed"), "{d}");
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(tern(&["replay"]).status.code(), Some(2));
    assert_eq!(tern(&["check", "no/such/dir"]).status.code(), Some(2));
}

fn workload(dir: &Path, format: &str) -> PathBuf {
    let path = dir.join(format!("w.{format}"));
    let out = tern(&[
        "simulate",
        "--out",
        path.to_str().unwrap(),
        "--keys",
        "40",
        "--events",
        "20000",
        "--seed",
        "11",
        "--format",
        format,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

fn replay(input: &Path, format: &str) -> String {
    let out = tern(&[
        "replay",
        "--rules",
        "benches/workload.tern",
        "benches/p1.tern",
        "benches/p2.tern",
        "benches/p3.tern",
        "--input",
        input.to_str().unwrap(),
        "--format",
        format,
        "--no-emitted-at",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn replay_repeats_byte_for_byte_and_csv_equals_jsonl() {
    let dir = scratch();
    let jsonl = workload(dir.path(), "jsonl");
    let first = replay(&jsonl, "jsonl");
    assert!(
        first.lines().count() > 10,
        "the workload should make the P rules fire"
    );
    assert_eq!(first, replay(&jsonl, "jsonl"), "same input, same output");
    let csv = workload(dir.path(), "csv");
    assert_eq!(
        first,
        replay(&csv, "csv"),
        "CSV and JSONL give the same alerts, ids included"
    );
}

#[test]
fn explain_prints_text_and_dot() {
    let text = tern(&["explain", "congestion"]);
    assert!(text.status.success());
    assert!(String::from_utf8_lossy(&text.stdout).starts_with("rule congestion"));
    let dot = tern(&["explain", "congestion", "--format", "dot"]);
    assert!(String::from_utf8_lossy(&dot.stdout).starts_with("digraph \"congestion\""));
    let missing = tern(&["explain", "congeston"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("did you mean `congestion`"));
}

#[test]
fn a_line_that_is_not_utf8_is_dead_lettered_and_the_replay_goes_on() {
    // The workload with one line's bytes broken halfway through the file, and CRLF endings.
    let dir = scratch();
    let text = std::fs::read_to_string(workload(dir.path(), "jsonl")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let broken = lines.len() / 2;
    let mut bytes = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if i == broken {
            bytes.extend_from_slice(&l.as_bytes()[..20]);
            bytes.push(0xff);
        } else {
            bytes.extend_from_slice(l.as_bytes());
        }
        bytes.extend_from_slice(b"\r\n");
    }
    let input = dir.path().join("not-utf8.jsonl");
    std::fs::write(&input, &bytes).unwrap();
    let dead = dir.path().join("not-utf8-dead.jsonl");
    let args = |input: &Path, dead: &Path| {
        tern(&[
            "replay",
            "--rules",
            "benches/workload.tern",
            "benches/p3.tern",
            "--input",
            input.to_str().unwrap(),
            "--dead-letter",
            dead.to_str().unwrap(),
            "--no-emitted-at",
            "--stats",
        ])
    };
    let out = args(&input, &dead);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "line {}: invalid JSON: not UTF-8 (byte 21)",
            broken + 1
        )),
        "{stderr}"
    );
    let letters: Vec<serde_json::Value> = std::fs::read_to_string(&dead)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["line"], broken as u64 + 1);
    assert_eq!(letters[0]["reason"], "invalid_json");
    assert!(letters[0]["input"].as_str().unwrap().ends_with('\u{fffd}'));
    // Every other line counts as an event: the same as the file without the broken line.
    let events = |stderr: &str| -> u64 {
        stderr
            .lines()
            .find_map(|l| l.strip_prefix("events ")?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no events count in {stderr}"))
    };
    let whole = dir.path().join("not-utf8-whole.jsonl");
    let mut without: Vec<&str> = lines.clone();
    without.remove(broken);
    std::fs::write(&whole, without.join("\n")).unwrap();
    let reference = args(&whole, &dir.path().join("not-utf8-dead2.jsonl"));
    assert_eq!(
        events(&stderr),
        events(&String::from_utf8_lossy(&reference.stderr))
    );
    assert_eq!(out.stdout, reference.stdout);
}
