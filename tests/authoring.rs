//! Rule authoring from the outside: `tern test` on passing, failing and broken test files, and
//! `tern explain --input` tracing a rule event by event.
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
fn dir(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("tern-authoring-{name}-"))
        .tempdir()
        .unwrap()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A copy of the shipped congestion rule, so the test files below can live in a temp dir.
fn congestion(d: &Path) {
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/congestion.tern"),
        d.join("congestion.tern"),
    )
    .unwrap();
}

const CAMERA: &str = r#"
[defaults.flow]
district = "north"
camera_id = "cam-7"
occupancy = 40.0
cars = 12
trucks = 1
buses = 0
bikes = 0
"#;

#[test]
fn the_shipped_rules_pass_their_tests_and_all_have_some() {
    let out = tern(&["test", "rules"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("test result: ok."), "{stdout}");
    assert!(!stderr.contains("has no tests"), "{stderr}");
    for rule in [
        "cmapss",
        "congestion",
        "drift",
        "metr_la",
        "nab_machine",
        "offline",
        "secom",
        "yield",
    ] {
        assert!(
            stdout.contains(&format!("test rules/{rule}.test.toml :: ")),
            "no case ran for rules/{rule}.tern:\n{stdout}"
        );
    }
    assert!(!stdout.contains("FAILED"), "{stdout}");
}

#[test]
fn a_failing_case_shows_the_diff_and_how_far_the_pattern_got() {
    let scratch = dir("failing");
    let d = scratch.path();
    congestion(d);
    let file = d.join("congestion.test.toml");
    std::fs::write(
        &file,
        format!(
            r#"{CAMERA}
[[case]]
name = "right alert"
rule = "congestion"
start = 2024-03-01T08:00:00Z
events = [ {{ ts = "+0s", speed = 12.0 }}, {{ ts = "+30s", speed = 15.0 }}, {{ ts = "+60s", speed = 18.0 }} ]
expect = [ {{ kind = "match", key = "cam-7", fields = {{ avg_speed = 15.0 }} }} ]

[[case]]
name = "wrong average"
rule = "congestion"
start = 2024-03-01T08:00:00Z
events = [ {{ ts = "+0s", speed = 12.0 }}, {{ ts = "+30s", speed = 15.0 }}, {{ ts = "+60s", speed = 18.0 }} ]
expect = [ {{ kind = "match", key = "cam-7", fields = {{ avg_speed = 14.0 }} }} ]

[[case]]
name = "too slow for within"
rule = "congestion"
start = 2024-03-01T08:00:00Z
events = [ {{ ts = "+0s", speed = 12.0 }}, {{ ts = "+4m", speed = 15.0 }}, {{ ts = "+6m", speed = 18.0 }} ]
expect = [ {{ kind = "match", key = "cam-7" }} ]
"#
        ),
    )
    .unwrap();
    let out = tern(&["test", d.to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains(":: right alert ... ok"), "{stdout}");
    assert!(stdout.contains(":: wrong average ... FAILED"), "{stdout}");
    // The field that differs, expected then actual.
    assert!(stdout.contains("- fields.avg_speed: 14.0"), "{stdout}");
    assert!(stdout.contains("+ fields.avg_speed: 15.0"), "{stdout}");
    // The missing alert: the 08:00 run took both `slow` events and ran out of time at
    // 08:05 (within 5m); the 08:04 run got as far, later, and is the one reported.
    let how = stdout
        .lines()
        .find(|l| l.contains("how far"))
        .unwrap_or_else(|| panic!("no how-far line:\n{stdout}"));
    assert!(
        how.contains(
            "got to step `slow` (1 of 2; run #2, 2 events taken, the last at 2024-03-01T08:06:00Z)"
        ),
        "{how}"
    );
    assert!(
        how.contains("dropped at 2024-03-01T08:09:00Z: within 5m passed"),
        "{how}"
    );
    assert!(
        stdout.contains("test result: FAILED. 1 passed; 2 failed"),
        "{stdout}"
    );
}

#[test]
fn a_mistake_in_a_test_file_is_a_diagnostic_with_its_place() {
    let scratch = dir("broken");
    let d = scratch.path();
    congestion(d);
    std::fs::write(
        d.join("congestion.test.toml"),
        format!(
            "{CAMERA}\n[[case]]\nname = \"typo\"\nrule = \"congestion\"\nstart = 2024-03-01T08:00:00Z\nevents = [\n    {{ ts = \"+0s\", sped = 12.0 }},\n]\nexpect = []\n"
        ),
    )
    .unwrap();
    let out = tern(&["test", d.to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("error[E422]: stream `flow` has no field `sped`"),
        "{stderr}"
    );
    // `sped` is on line 16 (after the defaults and the case header), column 19.
    assert!(stderr.contains("congestion.test.toml:16:19"), "{stderr}");
    assert!(stderr.contains("did you mean `speed`?"), "{stderr}");
    assert!(stdout.contains("1 test file with errors"), "{stdout}");

    std::fs::write(d.join("congestion.test.toml"), "[[case]]\nnmae = \"x\"\n").unwrap();
    let out = tern(&["test", d.to_str().unwrap()]);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("error[E420]: unknown key `nmae`"),
        "{stderr}"
    );
    assert!(stderr.contains("congestion.test.toml:2:1"), "{stderr}");
    assert!(stderr.contains("did you mean `name`?"), "{stderr}");
}

fn camera_line(time: &str, speed: f64) -> String {
    format!(
        r#"{{"district":"north","camera_id":"cam-7","ts":"2024-03-01T{time}Z","speed":{speed:.1},"occupancy":40.0,"cars":10,"trucks":1,"buses":0,"bikes":0}}"#
    )
}

/// Slow readings, a fast one (negation), a run that ages out (within), and a jam that forms:
/// the file, and the directory that holds it while the test runs.
fn trace_input() -> (tempfile::TempDir, PathBuf) {
    let scratch = dir("explain");
    let d = scratch.path();
    let lines = [
        camera_line("08:00:00", 12.0),
        camera_line("08:00:30", 15.0),
        camera_line("08:01:00", 45.0),
        camera_line("08:02:00", 10.0),
        camera_line("08:08:00", 30.0),
        camera_line("08:09:00", 12.0),
        camera_line("08:09:10", 13.0),
        camera_line("08:09:20", 14.0),
    ];
    let path = d.join("cam.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    (scratch, path)
}

#[test]
fn explain_input_traces_each_run_with_reasons() {
    let (_scratch, input) = trace_input();
    let out = tern(&["explain", "congestion", "--input", input.to_str().unwrap()]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    for expected in [
        "run #1 started: the event is `slow#1`",
        "run #1 advanced: the event is `slow#2`",
        "run #1 dropped at `slow#2`: negation seen",
        "dropped at `slow#1`: within 5m passed",
        "completed at `third#1`",
        "skip past last after run #",
        "alert (match) from run #",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    let shown = stdout.replace(input.to_str().unwrap(), "cam.jsonl");
    insta::assert_snapshot!("explain_congestion_trace", shown);
}

#[test]
fn explain_input_as_json_lines() {
    let (_scratch, input) = trace_input();
    let out = tern(&[
        "explain",
        "congestion",
        "--input",
        input.to_str().unwrap(),
        "--format",
        "json",
    ]);
    assert!(out.status.success());
    let records: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let whats: Vec<&str> = records
        .iter()
        .map(|r| r["what"].as_str().unwrap())
        .collect();
    for w in [
        "event",
        "started",
        "advanced",
        "dropped",
        "completed",
        "alert",
    ] {
        assert!(whats.contains(&w), "no {w} in {whats:?}");
    }
    let negation = records
        .iter()
        .find(|r| r["reason"]["kind"] == "negation")
        .unwrap();
    assert_eq!(negation["key"], "cam-7");
    assert_eq!(negation["time"], "2024-03-01T08:01:00Z");
    let alert = records.iter().find(|r| r["what"] == "alert").unwrap();
    assert_eq!(alert["alert"]["fields"]["avg_speed"], 13.0);
    assert_eq!(alert["alert"]["event_time"], "2024-03-01T08:09:20Z");
}
