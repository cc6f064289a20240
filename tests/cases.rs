//! The behaviour suite: every `tests/cases/<name>/` holds `rule.tern`, `input.jsonl` and
//! `expected.jsonl` (alerts in order, events given by their `id` field), optionally `args`
//! (`--no-flush`). Each case replays its input through the engine and compares.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{Map, Value as Json};
use tern::compile::{self, DEFAULT_SINKS};
use tern::engine::Engine;
use tern::io::input::{JsonReader, Record};
use tern::lang::render;
use tern::lang::source::Sources;

fn case_dirs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cases");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs
}

/// Runs one case; returns the alerts as JSON values.
fn replay(dir: &Path) -> Result<Vec<Json>, String> {
    let rule =
        std::fs::read_to_string(dir.join("rule.tern")).map_err(|e| format!("rule.tern: {e}"))?;
    let input = std::fs::read_to_string(dir.join("input.jsonl"))
        .map_err(|e| format!("input.jsonl: {e}"))?;
    let args = std::fs::read_to_string(dir.join("args")).unwrap_or_default();
    let flush = !args.split_whitespace().any(|a| a == "--no-flush");
    let mut sources = Sources::new();
    let sinks: Vec<String> = DEFAULT_SINKS.iter().map(|s| s.to_string()).collect();
    let (program, diags) =
        compile::check_text(&mut sources, &[("rule.tern", &rule)], Vec::new(), &sinks);
    if diags.iter().any(|d| d.is_error()) {
        return Err(format!(
            "rule does not check:\n{}",
            render::to_text(&sources, &diags)
        ));
    }
    let program = Arc::new(program);
    // Events without `$stream` belong to the one stream read from input: the rule's, or the
    // source of the aggregate it reads.
    let stream = program
        .rules
        .first()
        .and_then(|r| r.streams.first().copied())
        .map(|s| {
            program
                .aggregates
                .iter()
                .find(|a| a.output == s)
                .map_or(s, |a| a.source)
        });
    let mut engine = Engine::new(Arc::clone(&program)).map_err(|e| e.to_string())?;
    let reader = JsonReader::new(&program, stream);
    let mut alerts = Vec::new();
    let mut emit = |a: tern::engine::alert::Alert| {
        alerts.push(serde_json::from_str::<Json>(&a.to_json(None)).unwrap())
    };
    for (i, line) in input.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match reader.line(line) {
            Ok(Record::Event(ev)) => {
                // Late events are dropped and counted, as the semantics say.
                let _ = engine.push(ev, &mut emit);
            }
            Ok(Record::Watermark(t)) => engine.set_watermark(t, &mut emit),
            Err(e) => return Err(format!("input line {}: {e}", i + 1)),
        }
    }
    if flush {
        engine.flush(&mut emit);
    }
    Ok(alerts)
}

/// The alert reduced to what expected files state: event ids per step, plus the optional members.
fn compare(expected: &Json, actual: &Json) -> Result<(), String> {
    let exp = expected
        .as_object()
        .ok_or("expected line is not an object")?;
    let kind = exp.get("kind").and_then(Json::as_str).unwrap_or("match");
    if actual["kind"] != kind {
        return Err(format!("kind: expected {kind}, got {}", actual["kind"]));
    }
    let mut ids = Map::new();
    if let Some(events) = actual["events"].as_object() {
        for (step, list) in events {
            let v: Vec<Json> = list
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| e["id"].clone())
                .collect();
            ids.insert(step.clone(), Json::Array(v));
        }
    }
    let want_events = exp
        .get("events")
        .cloned()
        .unwrap_or(Json::Object(Map::new()));
    if Json::Object(ids.clone()) != want_events {
        return Err(format!(
            "events: expected {want_events}, got {}",
            Json::Object(ids)
        ));
    }
    for member in ["key", "event_time", "fields"] {
        if let Some(want) = exp.get(member)
            && &actual[member] != want
        {
            return Err(format!("{member}: expected {want}, got {}", actual[member]));
        }
    }
    Ok(())
}

fn summary(alerts: &[Json]) -> String {
    alerts
        .iter()
        .map(|a| {
            let mut ids = Map::new();
            if let Some(events) = a["events"].as_object() {
                for (step, list) in events {
                    let v: Vec<Json> = list
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|e| e["id"].clone())
                        .collect();
                    ids.insert(step.clone(), Json::Array(v));
                }
            }
            format!(
                "  {{\"kind\":{},\"event_time\":{},\"events\":{}}}",
                a["kind"],
                a["event_time"],
                Json::Object(ids)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn behaviour_cases() {
    let dirs = case_dirs();
    let mut failures = Vec::new();
    let only = std::env::var("TERN_CASE").ok();
    let mut ran = 0;
    for dir in &dirs {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        if only.as_deref().is_some_and(|o| !name.contains(o)) {
            continue;
        }
        ran += 1;
        let expected: Vec<Json> = std::fs::read_to_string(dir.join("expected.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{name}/expected.jsonl: {e}"))
            })
            .collect();
        match replay(dir) {
            Err(e) => failures.push(format!("{name}: {e}")),
            Ok(actual) => {
                let mut problems = Vec::new();
                if actual.len() != expected.len() {
                    problems.push(format!(
                        "expected {} alerts, got {}",
                        expected.len(),
                        actual.len()
                    ));
                }
                for (i, (e, a)) in expected.iter().zip(&actual).enumerate() {
                    if let Err(p) = compare(e, a) {
                        problems.push(format!("alert {}: {p}", i + 1));
                    }
                }
                if !problems.is_empty() {
                    failures.push(format!(
                        "{name}: {}\n got:\n{}",
                        problems.join("; "),
                        summary(&actual)
                    ));
                }
            }
        }
    }
    assert!(only.is_some() || ran >= 1, "no behaviour cases found");
    assert!(
        failures.is_empty(),
        "{} of {ran} cases failed:\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn replays_are_deterministic_ids_included() {
    for dir in case_dirs() {
        let (Ok(a), Ok(b)) = (replay(&dir), replay(&dir)) else {
            continue;
        };
        let ids = |v: &[Json]| v.iter().map(|a| a["id"].clone()).collect::<Vec<_>>();
        assert_eq!(
            ids(&a),
            ids(&b),
            "{}: ids differ between two replays",
            dir.display()
        );
        let mut unique = ids(&a);
        unique.sort_by_key(|j| j.to_string());
        unique.dedup();
        assert_eq!(
            unique.len(),
            a.len(),
            "{}: two alerts share an id",
            dir.display()
        );
    }
}
