//! Durable engine state: a run stopped at any point, its state written to RocksDB and loaded
//! by a fresh engine, then continued, gives exactly the alerts (same ids, same order) of a run
//! that was never stopped. The rules cover loops with iterative conditions, absences, whole-
//! match bounds, skip strategies and a window aggregate feeding a rule; the input is the
//! benchmark workload with some events shuffled out of order (the reorder buffer is state too).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::sync::Arc;

use tern::compile::hir::Program;
use tern::engine::Engine;
use tern::engine::alert::Alert;
use tern::engine::persist::{GROUPS, KEYS};
use tern::event::Event;
use tern::io::input::{JsonReader, Record};
use tern::store::{Ops, Store};

const EXTRA: &str = r#"
aggregate cam_minute from cam {
    key camera_id
    window sliding 2m every 1m
    select { n: count(), slowest: min(speed), mean: avg(speed) }
}

rule slow_minutes {
    from cam_minute
    key camera_id
    match a: cam_minute where mean < 70.0
        next b: cam_minute where mean < a.mean
    within 3m
    emit slow_minutes { camera: key, first: a.mean, second: b.mean, n: b.n }
}

rule slow_then_quiet {
    from cam
    key camera_id
    match s: cam{2,} where speed < 25.0
        followed by f: cam where speed > 60.0
    within 40s
    skip to next
    on timeout emit slow_timeout { camera: key, readings: count(s) }
    emit slow_then_fast { camera: key, readings: count(s), fast: f.speed }
}
"#;

fn program(dir: &std::path::Path) -> Arc<Program> {
    let extra = dir.join("extra.tern");
    // The workload's stream, with room for reordering.
    let workload = std::fs::read_to_string("benches/workload.tern")
        .unwrap()
        .replace("    time ts\n", "    time ts\n    lateness 5s\n");
    std::fs::write(dir.join("workload.tern"), workload).unwrap();
    std::fs::write(&extra, EXTRA).unwrap();
    let mut paths: Vec<PathBuf> = vec![dir.join("workload.tern"), extra];
    for p in ["p1", "p2", "p3"] {
        paths.push(PathBuf::from(format!("benches/{p}.tern")));
    }
    let loaded = tern::compile::load(&paths, None, &["stdout".to_string()]).unwrap();
    assert!(!loaded.has_errors(), "{:?}", loaded.diagnostics);
    Arc::new(loaded.program)
}

fn events(program: &Program) -> Vec<Event> {
    let w = tern::sim::workload::Workload {
        keys: 40,
        events: 12_000,
        seed: 11,
        format: tern::sim::workload::Format::Jsonl,
        start_ms: 1_709_251_200_000,
    };
    let mut bytes = Vec::new();
    tern::sim::workload::write(&w, &mut bytes).unwrap();
    let reader = JsonReader::new(program, program.stream_id("cam"));
    let mut out: Vec<Event> = String::from_utf8(bytes)
        .unwrap()
        .lines()
        .filter_map(|l| match reader.line(l) {
            Ok(Record::Event(e)) => Some(e),
            _ => None,
        })
        .collect();
    // Some disorder within the lateness: swap neighbours now and then.
    for i in (0..out.len().saturating_sub(1)).step_by(7) {
        out.swap(i, i + 1);
    }
    out
}

fn ids(alerts: &[Alert]) -> Vec<String> {
    alerts
        .iter()
        .map(|a| format!("{} {} {}", a.rule, a.id, a.event_time))
        .collect()
}

/// Pushes events, writing state every `batch` events as the live pipeline does.
fn feed(engine: &mut Engine, events: &[Event], store: &Store, batch: usize, out: &mut Vec<Alert>) {
    let mut ops = Ops::default();
    for chunk in events.chunks(batch) {
        for e in chunk {
            let _ = engine.push(e.clone(), &mut |a| out.push(a));
        }
        engine.persist(&mut ops).unwrap();
        let mut b = store.batch();
        b.apply(&ops).unwrap();
        store.write(b).unwrap();
        ops.clear();
    }
}

fn reload(program: &Arc<Program>, store: &Store) -> Engine {
    let mut engine = Engine::new(Arc::clone(program)).unwrap();
    engine.track_changes();
    let mut stale = Ops::default();
    let restored = engine.restore(
        store.scan(KEYS).unwrap(),
        store.scan(GROUPS).unwrap(),
        &mut stale,
    );
    assert!(restored.dropped.is_empty(), "{restored:?}");
    engine
}

#[test]
fn a_run_stopped_anywhere_and_reloaded_gives_the_same_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let program = program(dir.path());
    let events = events(&program);

    let mut whole = Engine::new(Arc::clone(&program)).unwrap();
    let mut expected = Vec::new();
    for e in &events {
        let _ = whole.push(e.clone(), &mut |a| expected.push(a));
    }
    whole.flush(&mut |a| expected.push(a));
    let expected = ids(&expected);
    let rules: std::collections::BTreeSet<&str> = expected
        .iter()
        .filter_map(|s| s.split(' ').next())
        .collect();
    assert!(
        rules.len() >= 5,
        "the workload should fire most rules, fired only {rules:?}"
    );

    for (n, cut) in [1usize, 999, 3_001, 5_555, 8_000, 11_999]
        .into_iter()
        .enumerate()
    {
        let state = dir.path().join(format!("state-{n}"));
        let mut got = Vec::new();
        {
            let store = Store::open(&state, false).unwrap();
            let mut first = Engine::new(Arc::clone(&program)).unwrap();
            first.track_changes();
            feed(&mut first, &events[..cut], &store, 97, &mut got);
        }
        // A new process: only what is in RocksDB survives.
        let store = Store::open(&state, false).unwrap();
        let mut second = reload(&program, &store);
        feed(&mut second, &events[cut..], &store, 97, &mut got);
        second.flush(&mut |a| got.push(a));
        assert_eq!(ids(&got), expected, "stopped after {cut} events");
    }
}

#[test]
fn a_changed_rule_loses_only_its_own_state() {
    let dir = tempfile::tempdir().unwrap();
    let program = program(dir.path());
    let events = events(&program);
    let store = Store::open(&dir.path().join("state"), false).unwrap();
    let mut first = Engine::new(Arc::clone(&program)).unwrap();
    first.track_changes();
    feed(&mut first, &events[..6_000], &store, 200, &mut Vec::new());
    let before = store.usage(KEYS).unwrap();
    assert!(before.iter().any(|(n, _, _)| n == "k:p2"), "{before:?}");

    // Change p2's bound; every other rule is the same.
    let p2 = std::fs::read_to_string("benches/p2.tern")
        .unwrap()
        .replace("within 5m", "within 6m");
    std::fs::write(dir.path().join("p2.tern"), p2).unwrap();
    let mut paths: Vec<PathBuf> = vec![
        dir.path().join("workload.tern"),
        dir.path().join("extra.tern"),
    ];
    paths.push(PathBuf::from("benches/p1.tern"));
    paths.push(dir.path().join("p2.tern"));
    paths.push(PathBuf::from("benches/p3.tern"));
    let loaded = tern::compile::load(&paths, None, &["stdout".to_string()]).unwrap();
    let changed = Arc::new(loaded.program);
    let mut engine = Engine::new(changed).unwrap();
    let mut stale = Ops::default();
    let restored = engine.restore(
        store.scan(KEYS).unwrap(),
        store.scan(GROUPS).unwrap(),
        &mut stale,
    );
    let dropped: Vec<&str> = restored.dropped.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(dropped, ["p2"]);
    assert!(restored.keys > 0 && restored.buffered > 0, "{restored:?}");
    let mut b = store.batch();
    b.apply(&stale).unwrap();
    store.write(b).unwrap();
    let after = store.usage(KEYS).unwrap();
    assert!(!after.iter().any(|(n, _, _)| n == "k:p2"), "{after:?}");
    assert_eq!(
        after.iter().find(|(n, _, _)| n == "k:p1"),
        before.iter().find(|(n, _, _)| n == "k:p1")
    );
}

#[test]
fn tern_state_reports_keys_and_partial_matches_per_rule() {
    let dir = tempfile::tempdir().unwrap();
    let program = program(dir.path());
    let events = events(&program);
    let state = dir.path().join("state");
    {
        let store = Store::open(&state, false).unwrap();
        let mut engine = Engine::new(Arc::clone(&program)).unwrap();
        engine.track_changes();
        feed(&mut engine, &events[..5_000], &store, 100, &mut Vec::new());
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["state", "--dir"])
        .arg(&state)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    // p3 (an absence) holds one partial match for every camera: 40.
    let p3 = text
        .lines()
        .find(|l| l.starts_with("rule") && l.contains(" p3 "))
        .unwrap_or_else(|| panic!("{text}"));
    let cols: Vec<&str> = p3.split_whitespace().collect();
    assert_eq!(&cols[2..4], ["40", "40"], "{p3}");
    assert!(text.contains("reorder    cam"), "{text}");
    let missing = std::process::Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(["state", "--dir"])
        .arg(dir.path().join("nowhere"))
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
}

#[test]
fn replay_with_a_state_directory_continues_where_the_last_one_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let tern = env!("CARGO_BIN_EXE_tern");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(tern)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let input = dir.path().join("w.jsonl");
    let input_s = input.to_str().unwrap();
    run(&[
        "simulate", "--out", input_s, "--keys", "30", "--events", "8000", "--seed", "3",
    ]);
    let text = std::fs::read_to_string(&input).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let (a, b) = lines.split_at(4_321);
    let first = dir.path().join("a.jsonl");
    let second = dir.path().join("b.jsonl");
    std::fs::write(&first, a.join("\n")).unwrap();
    std::fs::write(&second, b.join("\n")).unwrap();
    let rules = [
        "--rules",
        "benches/workload.tern",
        "benches/p1.tern",
        "benches/p2.tern",
        "benches/p3.tern",
    ];
    let ids = |out: String| -> Vec<String> {
        out.lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };
    let mut whole_args = rules.to_vec();
    whole_args.extend(["--input", input_s]);
    let whole = ids(run(&[&["replay"], &whole_args[..]].concat()));
    let state = dir.path().join("state");
    let state_s = state.to_str().unwrap();
    let mut got = Vec::new();
    for (part, flush) in [(&first, false), (&second, true)] {
        let mut args = vec!["replay"];
        args.extend(rules);
        args.extend(["--input", part.to_str().unwrap(), "--state", state_s]);
        if !flush {
            args.push("--no-flush");
        }
        got.extend(ids(run(&args)));
    }
    assert!(whole.len() > 50, "{}", whole.len());
    assert_eq!(got, whole);
}
