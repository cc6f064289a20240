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

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tern-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
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
    let bad = tmp("bad.tern");
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

fn workload(format: &str) -> PathBuf {
    let path = tmp(&format!("w.{format}"));
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
    let jsonl = workload("jsonl");
    let first = replay(&jsonl, "jsonl");
    assert!(
        first.lines().count() > 10,
        "the workload should make the P rules fire"
    );
    assert_eq!(first, replay(&jsonl, "jsonl"), "same input, same output");
    let csv = workload("csv");
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
