//! `tern fmt`: canonical text that keeps the meaning and the comments, and is a fixpoint.
//!
//! - Every rule file of the repository (rules/, behaviour cases, parser, checker and compiler
//!   fixtures) formats to text that parses to the same AST (spans aside) with the same
//!   comments, and formatting that text again changes nothing.
//! - The bundled rules are formatted already.
//! - A file with comments in every place is snapshotted.
//! - Random line comments added to the fixtures survive formatting.
//! - The command: `--check` lists and exits 1 without writing; without it files are rewritten;
//!   a file with parse errors is reported and left untouched.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

use proptest::prelude::*;
use tern::lang::diagnostic::FileId;
use tern::lang::print::{format_source, shape};
use tern::lang::source::Sources;
use tern::lang::{parse, render};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.tern` file under `dir`, recursively, sorted.
fn tern_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "tern") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The files that parse without errors: what `tern fmt` formats (read once per run).
fn parsing_files() -> &'static [(PathBuf, String)] {
    static FILES: std::sync::OnceLock<Vec<(PathBuf, String)>> = std::sync::OnceLock::new();
    FILES.get_or_init(read_parsing_files)
}

fn read_parsing_files() -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    for dir in ["rules", "tests/cases", "tests/fixtures", "examples"] {
        let dir = root().join(dir);
        if !dir.is_dir() {
            continue;
        }
        for p in tern_files(&dir) {
            let text = std::fs::read_to_string(&p).unwrap();
            let (_, diags) = parse(FileId(0), &text);
            if diags.iter().all(|d| !d.is_error()) {
                files.push((p, text));
            }
        }
    }
    files
}

fn comments(text: &str) -> Vec<String> {
    let (ast, _) = parse(FileId(0), text);
    ast.trivia.comments.into_iter().map(|c| c.text).collect()
}

fn format(name: &str, text: &str) -> String {
    match format_source(FileId(0), text) {
        Ok(t) => t,
        Err(diags) => {
            let mut sources = Sources::new();
            sources.add(name, text);
            panic!(
                "{name} does not format:\n{}",
                render::to_text(&sources, &diags)
            );
        }
    }
}

/// Formats `text` and checks the result means the same, keeps every comment and is a fixpoint.
fn assert_formats_faithfully(name: &str, text: &str) -> String {
    let once = format(name, text);
    let (before, _) = parse(FileId(0), text);
    let (after, diags) = parse(FileId(0), &once);
    assert!(
        diags.is_empty(),
        "{name}: formatted text has errors:\n{once}"
    );
    assert_eq!(
        shape(&before),
        shape(&after),
        "{name}: meaning changed:\n{once}"
    );
    assert_eq!(
        comments(text),
        comments(&once),
        "{name}: comments changed:\n{once}"
    );
    let twice = format(name, &once);
    assert_eq!(once, twice, "{name}: formatting is not a fixpoint");
    once
}

#[test]
fn every_rule_file_formats_faithfully_and_idempotently() {
    let files = parsing_files();
    assert!(files.len() > 50, "found only {} rule files", files.len());
    for (path, text) in files {
        assert_formats_faithfully(&path.display().to_string(), text);
    }
}

#[test]
fn bundled_rules_are_formatted() {
    for path in tern_files(&root().join("rules")) {
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            format(&path.display().to_string(), &text),
            text,
            "{} is not formatted: run `tern fmt rules`",
            path.display()
        );
        assert!(
            !comments(&text).is_empty(),
            "{} lost its comments",
            path.display()
        );
    }
}

#[test]
fn comments_stay_next_to_their_code() {
    let text = std::fs::read_to_string(root().join("tests/fixtures/fmt/comments.tern")).unwrap();
    let formatted = assert_formats_faithfully("comments.tern", &text);
    insta::assert_snapshot!(formatted);
}

fn cases(default: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(cases(64))]

    /// Line comments at the end of random lines, and block comments at the start of random
    /// lines, of any file that formats: all of them come back, and the result is a fixpoint.
    #[test]
    fn added_comments_survive(
        pick in any::<prop::sample::Index>(),
        marks in prop::collection::vec((any::<prop::sample::Index>(), any::<bool>()), 1..8),
    ) {
        let files = parsing_files();
        let (path, text) = &files[pick.index(files.len())];
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        prop_assume!(!lines.is_empty());
        for (n, (at, block)) in marks.iter().enumerate() {
            let i = at.index(lines.len());
            if *block {
                lines[i] = format!("/* b{n} */ {}", lines[i]);
            } else {
                lines[i] = format!("{} // c{n}", lines[i]);
            }
        }
        let edited = lines.join("\n");
        let (_, diags) = parse(FileId(0), &edited);
        // A mark inside a string or a block comment may break the file: not a case here.
        prop_assume!(diags.is_empty());
        assert_formats_faithfully(&path.display().to_string(), &edited);
    }
}

// --------------------------------------------------------------------------------- command

fn tern(args: &[&str], dir: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tern"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

const UGLY: &str = "rule r { from flow key camera_id\n  match a: flow where speed<20.0 // slow\n emit {camera: key} }\n";
const PRETTY: &str = "rule r {\n    from flow\n    key camera_id\n    match a: flow where speed < 20.0 // slow\n    emit {\n        camera: key,\n    }\n}\n";

#[test]
fn check_lists_unformatted_files_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    std::fs::write(dir.path().join("rules/ugly.tern"), UGLY).unwrap();
    std::fs::write(dir.path().join("rules/pretty.tern"), PRETTY).unwrap();
    let out = tern(&["fmt", "--check", "rules"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let listed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        listed.trim(),
        Path::new("rules").join("ugly.tern").display().to_string()
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("rules/ugly.tern")).unwrap(),
        UGLY
    );
}

#[test]
fn fmt_rewrites_in_place_and_then_check_passes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("rules")).unwrap();
    let path = dir.path().join("rules/ugly.tern");
    std::fs::write(&path, UGLY).unwrap();
    let out = tern(&["fmt"], dir.path());
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), PRETTY);
    // No temporary file is left behind.
    let names: Vec<_> = std::fs::read_dir(dir.path().join("rules"))
        .unwrap()
        .collect();
    assert_eq!(names.len(), 1);
    let out = tern(&["fmt", "--check"], dir.path());
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty());
}

#[test]
fn files_with_parse_errors_are_reported_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let broken = "rule r {\n    from flow\n    match a: flow where speed = 20.0\n}\n";
    let path = dir.path().join("broken.tern");
    std::fs::write(&path, broken).unwrap();
    let ugly = dir.path().join("ugly.tern");
    std::fs::write(&ugly, UGLY).unwrap();
    let out = tern(&["fmt", "broken.tern", "ugly.tern"], dir.path());
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("E113") && stderr.contains("broken.tern:3:"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), broken);
    // The other file is still formatted.
    assert_eq!(std::fs::read_to_string(&ugly).unwrap(), PRETTY);
}
