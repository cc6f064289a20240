//! Parser golden tests, one case per file.
//!
//! - `fixtures/parse/ok/*.tern` parse without a diagnostic; the AST is snapshotted, and every
//!   node's span must enclose the spans of the nodes inside it.
//! - `fixtures/parse/err/*.tern` give at least one error; the diagnostics are snapshotted as an
//!   author sees them.
//!
//! Run `INSTA_UPDATE=always cargo test --test parse` (or `cargo insta test --accept`) after a
//! deliberate change, and read every changed snapshot.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;

use serde_json::Value;
use tern::lang::source::Sources;
use tern::lang::{parse, render};

/// Reads a fixture into a fresh source set, named by its path from the crate root
/// (`tests/fixtures/...`).
fn load(path: &Path) -> (Sources, tern::lang::FileId) {
    let text = std::fs::read_to_string(path).unwrap();
    let full = path.display().to_string();
    let name = full
        .find("tests/fixtures/")
        .map_or(full.as_str(), |n| &full[n..])
        .to_string();
    let mut sources = Sources::new();
    let id = sources.add(name, text);
    (sources, id)
}

/// A span serialized as `"start..end"`.
fn span_of(v: &Value) -> Option<(usize, usize)> {
    let (a, b) = v.get("span")?.as_str()?.split_once("..")?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Checks that every span lies on char boundaries of `text` and inside the span of the
/// nearest enclosing node.
fn check_spans(v: &Value, text: &str, outer: Option<(usize, usize)>, path: &str) {
    match v {
        Value::Object(map) => {
            let own = span_of(v);
            if let Some((start, end)) = own {
                assert!(start <= end, "{path}: span {start}..{end} is reversed");
                assert!(
                    text.is_char_boundary(start) && text.is_char_boundary(end),
                    "{path}: span {start}..{end} splits a character"
                );
                if let Some((os, oe)) = outer {
                    assert!(
                        os <= start && end <= oe,
                        "{path}: span {start}..{end} is outside its parent's {os}..{oe}"
                    );
                }
            }
            for (k, child) in map {
                if k != "span" {
                    check_spans(child, text, own.or(outer), &format!("{path}.{k}"));
                }
            }
        }
        Value::Array(items) => {
            for (n, child) in items.iter().enumerate() {
                check_spans(child, text, outer, &format!("{path}[{n}]"));
            }
        }
        _ => {}
    }
}

#[test]
fn ok_fixtures_parse_cleanly() {
    insta::glob!("fixtures/parse/ok/*.tern", |path| {
        let (sources, id) = load(path);
        let (ast, diags) = parse(id, sources.text(id));
        assert!(
            diags.is_empty(),
            "{} should parse cleanly:\n{}",
            sources.name(id),
            render::to_text(&sources, &diags)
        );
        let tree = serde_json::to_value(&ast).unwrap();
        check_spans(&tree, sources.text(id), None, "file");
        insta::assert_yaml_snapshot!(ast);
    });
}

#[test]
fn err_fixtures_report_errors() {
    insta::glob!("fixtures/parse/err/*.tern", |path| {
        let (sources, id) = load(path);
        let (ast, diags) = parse(id, sources.text(id));
        assert!(
            diags.iter().any(|d| d.is_error()),
            "{} should have an error",
            sources.name(id)
        );
        for d in &diags {
            assert!(
                d.message.chars().next().is_some_and(|c| !c.is_uppercase())
                    && !d.message.ends_with('.'),
                "{}: headline style: {:?}",
                sources.name(id),
                d.message
            );
            let primary = d.primary().expect("every diagnostic has a primary label");
            assert!(primary.span.end as usize <= sources.text(id).len());
        }
        // What was recovered still has well-formed spans.
        let tree = serde_json::to_value(&ast).unwrap();
        check_spans(&tree, sources.text(id), None, "file");
        insta::assert_snapshot!(render::to_text(&sources, &diags));
    });
}
