//! User functions in rhai: checked by `tern check` (names, arities, argument types, scripts
//! that do not compile), called by the engine with values converted both ways, failures
//! counted and read as unknown, and an endless loop that cannot stall the engine.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use serde_json::{Value as Json, json};
use tern::compile::{self, DEFAULT_SINKS, Loaded};
use tern::engine::Engine;
use tern::io::input::{JsonReader, Record};
use tern::lang::render;

const UNITS: &str = r#"// Unit conversions and labels.
fn mph(kmh) { kmh / 1.609344 }
fn round1(x) { (x * 10.0).round() / 10.0 }
fn tag(label) { if label == () { "none" } else { "label:" + label } }
fn mph(kmh, digits) { kmh }
private fn helper() { 1 }
"#;

const MISC: &str = r#"fn is_sensor(s) { s.starts_with("s-") }
fn spin(x) { loop {} }
fn broken(x) { x.no_such_method() }
fn list(x) { [x] }
"#;

const STREAM: &str = "stream reading {
    sensor: string,
    ts: timestamp,
    kmh: float,
    label: string?,
    time ts
}
";

/// A directory with `rules/lib/*.rhai` and the given rule files.
fn project(rules: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("rules/lib");
    std::fs::create_dir_all(&lib).unwrap();
    std::fs::write(lib.join("units.rhai"), UNITS).unwrap();
    std::fs::write(lib.join("misc.rhai"), MISC).unwrap();
    std::fs::write(lib.join("broken.rhai"), "fn f(x) {\n    x +\n}\n").unwrap();
    for (name, text) in rules {
        std::fs::write(dir.path().join("rules").join(name), text).unwrap();
    }
    dir
}

fn load(dir: &Path) -> Loaded {
    let sinks: Vec<String> = DEFAULT_SINKS.iter().map(|s| s.to_string()).collect();
    compile::load(&[dir.join("rules")], None, &sinks).unwrap()
}

fn load_clean(dir: &Path) -> Loaded {
    let loaded = load(dir);
    assert!(
        !loaded.has_errors(),
        "{}",
        render::to_text(&loaded.sources, &loaded.diagnostics)
    );
    loaded
}

/// The rendered diagnostics, with the temporary directory's path taken out.
fn diagnostics(dir: &Path) -> String {
    let loaded = load(dir);
    render::to_text(&loaded.sources, &loaded.diagnostics)
        .replace(&dir.display().to_string(), "<dir>")
}

fn events(n: usize) -> String {
    (0..n)
        .map(|i| {
            let label = if i % 2 == 0 {
                json!("north")
            } else {
                Json::Null
            };
            json!({
                "sensor": if i % 3 == 2 { "x-9" } else { "s-1" },
                "ts": format!("2024-03-01T08:00:{i:02}Z"),
                "kmh": 100.0 + i as f64,
                "label": label,
            })
            .to_string()
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Replays JSON lines through the loaded rules: the alerts, and the engine afterwards.
fn replay(loaded: &Loaded, input: &str) -> (Vec<Json>, Engine) {
    let program = Arc::new(loaded.program.clone());
    let mut engine = Engine::new(Arc::clone(&program)).unwrap();
    let reader = JsonReader::new(&program, program.stream_id("reading"));
    let mut alerts = Vec::new();
    let mut emit = |a: tern::engine::alert::Alert| {
        alerts.push(serde_json::from_str::<Json>(&a.to_json(None)).unwrap())
    };
    for line in input.lines() {
        match reader.line(line).unwrap() {
            Record::Event(ev) => engine.push(ev, &mut emit).unwrap(),
            Record::Watermark(t) => engine.set_watermark(t, &mut emit),
        }
    }
    engine.flush(&mut emit);
    (alerts, engine)
}

fn errors_of(engine: &Engine, function: &str) -> u64 {
    engine
        .script_errors()
        .iter()
        .filter(|e| e.function == function)
        .map(|e| e.errors)
        .sum()
}

// ------------------------------------------------------------------------------ checking

#[test]
fn check_reports_unknown_functions_arity_and_argument_types() {
    let rule = format!(
        "{STREAM}
import \"lib/units.rhai\" as units
import \"lib/misc.rhai\"

rule bad {{
    from reading
    key sensor
    match r: reading
        where units::mhp(kmh) > 1.0
            and units::mph() > 1.0
            and is_sensr(sensor)
            and is_sensor(sensor, 1)
            and units::mph(ts) > 1.0
            and units::helper() == 1
    emit {{ x: units::round1(r.kmh, 2) }}
}}
"
    );
    let dir = project(&[("bad.tern", &rule)]);
    insta::assert_snapshot!(diagnostics(dir.path()));
}

#[test]
fn a_script_that_does_not_compile_is_reported_at_its_line_and_column() {
    let rule = format!(
        "{STREAM}
import \"lib/broken.rhai\" as b

rule uses_broken {{
    from reading
    key sensor
    match r: reading where b::f(kmh) > 1.0
    emit {{}}
}}
"
    );
    let dir = project(&[("r.tern", &rule)]);
    let text = diagnostics(dir.path());
    assert!(text.contains("E223"), "{text}");
    assert!(text.contains("broken.rhai:3:1"), "{text}");
    insta::assert_snapshot!(text);
}

// ------------------------------------------------------------------------------- running

const FAST: &str = "import \"lib/units.rhai\" as units
import \"lib/misc.rhai\"

rule fast {
    from reading
    key sensor
    match r: reading where units::mph(kmh) > 62.5 and is_sensor(sensor)
    emit fast {
        sensor: key,
        mph: units::round1(units::mph(r.kmh)),
        tag: units::tag(r.label),
        bad: broken(r.kmh),
        list: list(1),
    }
}
";

#[test]
fn functions_run_in_conditions_and_emit_fields() {
    let dir = project(&[("stream.tern", STREAM), ("fast.tern", FAST)]);
    let loaded = load_clean(dir.path());
    let (alerts, engine) = replay(&loaded, &events(6));
    // 100..105 km/h: mph over 62.5 from 101 km/h on (62.76 mph); sensor x-9 (events 2 and
    // 5) is not a sensor by `is_sensor`; even events have a label.
    let got: Vec<(Json, Json, Json, Json, Json)> = alerts
        .iter()
        .map(|a| {
            let f = &a["fields"];
            (
                f["sensor"].clone(),
                f["mph"].clone(),
                f["tag"].clone(),
                f["bad"].clone(),
                f["list"].clone(),
            )
        })
        .collect();
    let n = Json::Null;
    assert_eq!(
        got,
        [
            (
                json!("s-1"),
                json!(62.8),
                json!("none"),
                n.clone(),
                n.clone()
            ),
            (
                json!("s-1"),
                json!(64.0),
                json!("none"),
                n.clone(),
                n.clone()
            ),
            (
                json!("s-1"),
                json!(64.6),
                json!("label:north"),
                n.clone(),
                n.clone()
            ),
        ]
    );
    assert_eq!(errors_of(&engine, "broken"), 3, "one failure per alert");
    assert_eq!(errors_of(&engine, "list"), 3, "arrays are not a tern type");
    assert_eq!(errors_of(&engine, "mph"), 0);
}

#[test]
fn an_endless_loop_fails_its_call_and_the_engine_goes_on() {
    let rules = "import \"lib/misc.rhai\"

rule spinning {
    from reading
    key sensor
    match r: reading where spin(kmh)
    emit { sensor: key }
}

rule plain {
    from reading
    key sensor
    match r: reading where kmh > 0.0
    emit { sensor: key }
}
";
    let dir = project(&[("stream.tern", STREAM), ("spin.tern", rules)]);
    let loaded = load_clean(dir.path());
    // No timing assertion: that this returns at all is the point (the test harness's
    // timeout is the backstop); each call stops at the operation limit.
    let (alerts, engine) = replay(&loaded, &events(4));
    let rules: Vec<&str> = alerts.iter().map(|a| a["rule"].as_str().unwrap()).collect();
    assert_eq!(rules, ["plain"; 4], "the spinning condition is false");
    assert_eq!(errors_of(&engine, "spin"), 4, "every call counted");
}

#[test]
fn replay_stats_print_script_errors() {
    let rules = "import \"lib/misc.rhai\"

rule tagged {
    from reading
    key sensor
    match r: reading
    emit { sensor: key, bad: broken(r.kmh) }
}
";
    let dir = project(&[("stream.tern", STREAM), ("r.tern", rules)]);
    std::fs::write(dir.path().join("in.jsonl"), events(3)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args([
            "replay", "--rules", "rules", "--input", "in.jsonl", "--stats",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let alerts: Vec<Json> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(alerts.len(), 3);
    assert!(alerts.iter().all(|a| a["fields"]["bad"].is_null()));
    assert!(
        stderr.contains("script errors 3 (lib/misc.rhai: broken)"),
        "{stderr}"
    );
}

// --------------------------------------------------------------------------- fingerprints

#[test]
fn a_rule_calling_a_script_changes_fingerprint_with_the_script() {
    let rules = "import \"lib/units.rhai\" as units

rule calls {
    from reading
    key sensor
    match r: reading where units::mph(kmh) > 60.0
    emit {}
}

rule does_not {
    from reading
    key sensor
    match r: reading where kmh > 60.0
    emit {}
}
";
    let dir = project(&[("stream.tern", STREAM), ("r.tern", rules)]);
    let fingerprints = |dir: &Path| -> (u64, u64) {
        let loaded = load_clean(dir);
        let p = &loaded.program;
        (
            p.rule("calls").unwrap().fingerprint,
            p.rule("does_not").unwrap().fingerprint,
        )
    };
    let before = fingerprints(dir.path());
    assert_eq!(fingerprints(dir.path()), before, "stable across loads");
    let units: PathBuf = dir.path().join("rules/lib/units.rhai");
    std::fs::write(&units, format!("{UNITS}\nfn extra() {{ 2 }}\n")).unwrap();
    let after = fingerprints(dir.path());
    assert_ne!(after.0, before.0, "the calling rule changed");
    assert_eq!(after.1, before.1, "the other rule did not");
}

// -------------------------------------------------------------------------------- example

#[test]
fn the_example_rule_with_user_functions_runs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let sinks: Vec<String> = DEFAULT_SINKS.iter().map(|s| s.to_string()).collect();
    let loaded = compile::load(
        &[root.join("examples/rules")],
        Some(&root.join("devices")),
        &sinks,
    )
    .unwrap();
    assert!(
        !loaded.has_errors(),
        "{}",
        render::to_text(&loaded.sources, &loaded.diagnostics)
    );
    let program = Arc::new(loaded.program.clone());
    let mut engine = Engine::new(Arc::clone(&program)).unwrap();
    let reader = JsonReader::new(&program, program.stream_id("flow"));
    let mut alerts = Vec::new();
    let mut emit = |a: tern::engine::alert::Alert| alerts.push(a);
    // (hour, km/h): fast outside rush hour, slow in it, fast in it.
    for (i, (hour, kmh)) in [(12, 150.0), (8, 100.0), (17, 140.0)].iter().enumerate() {
        let line = json!({
            "district": "north", "camera_id": "cam-1",
            "ts": format!("2024-03-01T{hour:02}:00:0{i}Z"), "speed": kmh, "occupancy": 10.0,
            "cars": 1, "trucks": 0, "buses": 0, "bikes": 0,
        });
        if let Record::Event(ev) = reader.line(&line.to_string()).unwrap() {
            let _ = engine.push(ev, &mut emit);
        }
    }
    engine.flush(&mut emit);
    let mph: Vec<Json> = alerts.iter().map(|a| a.fields["mph"].clone()).collect();
    assert_eq!(mph, [json!(140.0 / 1.609344)]);
    assert!(engine.script_errors().iter().all(|e| e.errors == 0));
}
