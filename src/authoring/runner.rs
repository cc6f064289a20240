//! Runs test files: loads the rules each names, runs every case through an engine holding
//! only the case's rules (trace on), and compares the alerts with the expectations.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value as Json;

use super::expect::{self, Comparison};
use super::narrate::{Narrator, key_text};
use super::spec::{self, Case, Item};
use crate::compile;
use crate::engine::Engine;
use crate::engine::alert::Alert;
use crate::lang::diagnostic::{Diagnostic, FileId};
use crate::lang::source::Sources;
use crate::lang::span::Span;

/// Every `*.test.toml` under the paths (a path that is a file is taken as it is), sorted.
pub fn discover(paths: &[PathBuf]) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for path in paths {
        let meta = std::fs::metadata(path)
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        if meta.is_file() {
            out.push(path.clone());
            continue;
        }
        let mut stack = vec![path.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir)? {
                let p = entry?.path();
                if p.is_dir() {
                    stack.push(p);
                } else if is_test_file(&p) {
                    out.push(p);
                }
            }
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn is_test_file(p: &Path) -> bool {
    p.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(".test.toml") && !n.starts_with('.'))
}

/// Rule files (`*.tern`) under the paths that no test file names: they ship without tests.
pub fn untested(paths: &[PathBuf], tested: &[PathBuf]) -> Vec<PathBuf> {
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let tested: Vec<PathBuf> = tested.iter().map(|p| canon(p)).collect();
    let mut out = Vec::new();
    for p in paths.iter().filter(|p| p.is_dir()) {
        if let Ok(files) = compile::rule_files(p) {
            out.extend(files.into_iter().filter(|f| !tested.contains(&canon(f))));
        }
    }
    out
}

/// What the caller gives every test file.
pub struct Options {
    /// Device profile directory (a test file's `devices` overrides it).
    pub devices: PathBuf,
    /// Sink names rules may use.
    pub sinks: Vec<String>,
    /// ANSI colours in failure reports.
    pub color: bool,
}

/// The result of one case.
pub struct CaseResult {
    /// The case's name.
    pub name: String,
    /// Passed.
    pub passed: bool,
    /// For a failure: what went wrong, for people.
    pub report: String,
}

/// The result of one test file.
pub struct FileResult {
    /// The test file.
    pub path: PathBuf,
    /// Every file read (test file, rule files, profiles, events files), for diagnostics.
    pub sources: Sources,
    /// Problems in the test file or its rules: then no case ran.
    pub diagnostics: Vec<Diagnostic>,
    /// The rule files it loaded.
    pub rule_files: Vec<PathBuf>,
    /// Each case, in file order.
    pub cases: Vec<CaseResult>,
}

/// Reads, checks and runs one test file.
pub fn run_file(path: &Path, opts: &Options) -> FileResult {
    let mut result = FileResult {
        path: path.to_path_buf(),
        sources: Sources::new(),
        diagnostics: Vec::new(),
        rule_files: Vec::new(),
        cases: Vec::new(),
    };
    let tf = match spec::read(path, &mut result.sources) {
        Ok(tf) => tf,
        Err(d) => {
            result.diagnostics = d;
            return result;
        }
    };
    for (rf, at) in &tf.rule_files {
        if !rf.is_file() {
            let d = Diagnostic::error(
                crate::lang::codes::Code::E424,
                format!("rule file {} not found", rf.display()),
                tf.file,
                *at,
                "the rules under test",
            )
            .with_note(
                "a test file tests the sibling <name>.tern unless it names others: rule_files = [\"x.tern\"]",
            );
            result.diagnostics.push(d);
        }
    }
    if !result.diagnostics.is_empty() {
        return result;
    }
    result.rule_files = tf.rule_files.iter().map(|(p, _)| p.clone()).collect();
    let devices = tf.devices.clone().unwrap_or_else(|| opts.devices.clone());
    let devices = devices.is_dir().then_some(devices);
    let loaded = match compile::load(&result.rule_files, devices.as_deref(), &opts.sinks) {
        Ok(l) => l,
        Err(e) => {
            let d = Diagnostic::error(
                crate::lang::codes::Code::E424,
                e.to_string(),
                tf.file,
                Span::default(),
                "while loading the rules of this test file",
            );
            result.diagnostics.push(d);
            return result;
        }
    };
    // The test file comes first in `sources`; the loaded rule files follow under new ids.
    let offset = result.sources.iter().count();
    for (_, src) in loaded.sources.iter() {
        result.sources.add(src.name.clone(), src.text.clone());
    }
    if loaded.has_errors() {
        result.diagnostics = loaded
            .diagnostics
            .into_iter()
            .filter(Diagnostic::is_error)
            .map(|mut d| {
                for l in &mut d.labels {
                    l.file = FileId(l.file.0 + offset);
                }
                d
            })
            .collect();
        return result;
    }
    let (cases, diagnostics) = spec::cases(&tf, &loaded.program, &mut result.sources);
    if !diagnostics.is_empty() {
        result.diagnostics = diagnostics;
        return result;
    }
    for case in &cases {
        result
            .cases
            .push(run_case(case, &result.sources, opts.color));
    }
    result
}

/// What a case produced.
pub struct Outcome {
    /// Alerts, in order.
    pub alerts: Vec<Alert>,
    /// The same as JSON, as sinks get them (without `emitted_at`).
    pub json: Vec<Json>,
    /// Events that came behind the watermark and were dropped: where written, and why.
    pub late: Vec<(FileId, Span, String)>,
    /// The trace, narrated: how far each rule got per key.
    pub narrator: Narrator,
}

/// Feeds a case's events through an engine holding only its rules.
pub fn execute(case: &Case) -> anyhow::Result<Outcome> {
    let mut engine = Engine::new(Arc::clone(&case.program))?;
    engine.enable_trace();
    let mut narrator = Narrator::new(Arc::clone(&case.program));
    let mut alerts = Vec::new();
    let mut late = Vec::new();
    let mut got: VecDeque<Alert> = VecDeque::new();
    for inp in &case.input {
        match &inp.item {
            Item::Event(e) => {
                if let Err(l) = engine.push(e.clone(), &mut |a| got.push_back(a)) {
                    late.push((inp.file, inp.span, l.to_string()));
                }
            }
            Item::Watermark(t) => engine.set_watermark(*t, &mut |a| got.push_back(a)),
        }
        alerts.extend(got.iter().cloned());
        narrator.lines(&engine.take_trace(), &mut got);
        got.clear();
    }
    if case.flush {
        engine.flush(&mut |a| got.push_back(a));
        alerts.extend(got.iter().cloned());
        narrator.lines(&engine.take_trace(), &mut got);
    }
    let json = alerts
        .iter()
        .map(|a| serde_json::from_str(&a.to_json(None)).unwrap_or(Json::Null))
        .collect();
    Ok(Outcome {
        alerts,
        json,
        late,
        narrator,
    })
}

fn run_case(case: &Case, sources: &Sources, color: bool) -> CaseResult {
    let outcome = match execute(case) {
        Ok(o) => o,
        Err(e) => {
            return CaseResult {
                name: case.name.clone(),
                passed: false,
                report: format!("the rules could not be compiled: {e:#}\n"),
            };
        }
    };
    let cmp = expect::compare(&case.expect, &case.expect_none, &outcome.json);
    let passed = cmp.passed(case.allow_others);
    let report = if passed {
        String::new()
    } else {
        report(case, &outcome, &cmp, sources, color)
    };
    CaseResult {
        name: case.name.clone(),
        passed,
        report,
    }
}

struct Paint(bool);

impl Paint {
    fn red(&self, s: &str) -> String {
        if self.0 {
            format!("\x1b[31m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
    fn green(&self, s: &str) -> String {
        if self.0 {
            format!("\x1b[32m{s}\x1b[0m")
        } else {
            s.to_string()
        }
    }
}

fn place(sources: &Sources, file: FileId, span: Span) -> String {
    let (line, col) = sources.line_col(file, span.start as usize);
    format!("{}:{line}:{col}", sources.name(file))
}

/// One alert on one line: `congestion match key cam-7 at 2024-...: {fields}`.
pub fn alert_line(a: &Json) -> String {
    let s = |k: &str| a.get(k).and_then(Json::as_str).unwrap_or("?").to_string();
    format!(
        "{} {} {} at {}: {}",
        s("rule"),
        s("kind"),
        key_text(a.get("key").unwrap_or(&Json::Null)),
        s("event_time"),
        a.get("fields").unwrap_or(&Json::Null)
    )
}

/// The failure report of a case: each expectation with its fate, the closest alert's
/// differences, how far the pattern got for a missing alert, and unexpected alerts.
fn report(case: &Case, o: &Outcome, cmp: &Comparison, sources: &Sources, color: bool) -> String {
    let p = Paint(color);
    let mut r = String::new();
    let n = o.json.len();
    let _ = writeln!(
        r,
        "expected {} alert{}{}, got {n}",
        case.expect.len(),
        if case.expect.len() == 1 { "" } else { "s" },
        if case.allow_others {
            " (others allowed)"
        } else {
            ""
        }
    );
    let unmatched: Vec<usize> = cmp.unexpected.clone();
    let mut previous: Option<usize> = None;
    for (i, (e, m)) in case.expect.iter().zip(&cmp.matched).enumerate() {
        let at = place(sources, e.file, e.span);
        match m {
            Some(j) => {
                let _ = writeln!(r, "  ok       expect[{}] ({at}) is alert {}", i + 1, j + 1);
                previous = Some(*j);
            }
            None => {
                let _ = writeln!(
                    r,
                    "  {}  expect[{}] ({at}): {}",
                    p.red("MISSING"),
                    i + 1,
                    Json::Object(e.alert.clone())
                );
                missing(&mut r, case, o, e, &unmatched, previous, &p);
            }
        }
    }
    if !case.allow_others {
        for &j in &cmp.unexpected {
            let _ = writeln!(
                r,
                "  {}  alert {}: {}",
                p.red("UNEXPECTED"),
                j + 1,
                alert_line(&o.json[j])
            );
        }
    }
    for &(i, j) in &cmp.unwanted {
        let e = &case.expect_none[i];
        let _ = writeln!(
            r,
            "  {}  alert {} matches expect_none[{}] ({}): {}",
            p.red("UNWANTED"),
            j + 1,
            i + 1,
            place(sources, e.file, e.span),
            alert_line(&o.json[j])
        );
    }
    for (file, span, why) in &o.late {
        let _ = writeln!(
            r,
            "  note: the event at {} was dropped: {why}",
            place(sources, *file, *span)
        );
    }
    if n > 0 {
        let _ = writeln!(r, "  alerts:");
        for (j, a) in o.json.iter().enumerate() {
            let _ = writeln!(r, "    {}. {}", j + 1, alert_line(a));
        }
    } else {
        let _ = writeln!(r, "  no alerts");
    }
    r
}

/// Explains a missing alert: the closest actual alert and how it differs, an order problem,
/// and how far the pattern got.
fn missing(
    r: &mut String,
    case: &Case,
    o: &Outcome,
    e: &spec::Expect,
    unmatched: &[usize],
    previous: Option<usize>,
    p: &Paint,
) {
    let want = Json::Object(e.alert.clone());
    let closest = expect::closest(&e.alert, &o.json, unmatched);
    let near = closest.is_some();
    if let Some((j, diffs)) = closest {
        let _ = writeln!(
            r,
            "           closest is alert {}, which differs in:",
            j + 1
        );
        for d in diffs {
            let _ = writeln!(
                r,
                "             {}",
                p.red(&format!("- {}: {}", d.path, d.expected))
            );
            let actual = d
                .actual
                .map_or_else(|| "(absent)".to_string(), |a| a.to_string());
            let _ = writeln!(
                r,
                "             {}",
                p.green(&format!("+ {}: {actual}", d.path))
            );
        }
    }
    if let Some(j) = (0..o.json.len()).find(|&j| expect::matches(&want, &o.json[j]))
        && previous.is_some_and(|prev| j <= prev)
    {
        let _ = writeln!(
            r,
            "           alert {} matches it, but comes before the alert of the expectation above: expectations are matched in order",
            j + 1
        );
    }
    if near {
        // The pattern did match; the differences above say what is off.
        return;
    }
    let rules: Vec<String> = match e.alert.get("rule").and_then(Json::as_str) {
        Some(rule) => vec![rule.to_string()],
        None => case.rules.clone(),
    };
    for rule in rules {
        let keys = match e.alert.get("key") {
            Some(k) => vec![k.clone()],
            None => o.narrator.keys_of(&rule),
        };
        if keys.is_empty() {
            let _ = writeln!(r, "           how far: no event reached rule `{rule}`");
        }
        for k in keys.iter().take(5) {
            let _ = writeln!(
                r,
                "           how far (`{rule}`): {}",
                o.narrator.how_far(&rule, k)
            );
        }
        if keys.len() > 5 {
            let _ = writeln!(r, "           ... and {} more keys", keys.len() - 5);
        }
    }
}
