//! Name, type and shape checking: rendered diagnostics of every fixture in
//! `tests/fixtures/check/err/` are golden-tested, and the shipped rules check clean.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use tern::compile::{self, DEFAULT_SINKS};
use tern::lang::render;
use tern::lang::source::Sources;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn sinks() -> Vec<String> {
    DEFAULT_SINKS.iter().map(|s| s.to_string()).collect()
}

#[test]
fn check_error_fixtures() {
    let dir = root().join("tests/fixtures/check/err");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(files.len() >= 15, "expected the check fixtures");
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        let mut sources = Sources::new();
        // Relative to the crate root (cargo runs tests there): snapshots hold no machine paths.
        let (profiles, device_diags) = tern::devices::load_dir(Path::new("devices"), &mut sources);
        assert!(device_diags.is_empty(), "devices/ must load cleanly");
        let streams = profiles.iter().map(|p| p.schema().clone()).collect();
        let (_, diags) = compile::check_text(
            &mut sources,
            &[(&format!("tests/fixtures/check/err/{name}"), &text)],
            streams,
            &sinks(),
        );
        assert!(!diags.is_empty(), "{name}: expected a diagnostic");
        // Every diagnostic points into a file with a primary label.
        for d in &diags {
            assert!(
                d.primary().is_some(),
                "{name}: {} has no primary label",
                d.code.as_str()
            );
        }
        let rendered = render::to_text(&sources, &diags);
        insta::with_settings!({ snapshot_path => "snapshots/check", prepend_module_to_snapshot => false }, {
            insta::assert_snapshot!(name.trim_end_matches(".tern"), rendered);
        });
    }
}

#[test]
fn shipped_rules_check_clean() {
    let loaded = compile::load(
        &[root().join("rules")],
        Some(Path::new(&root().join("devices"))),
        &sinks(),
    )
    .unwrap();
    let text = render::to_text(&loaded.sources, &loaded.diagnostics);
    assert!(
        loaded.diagnostics.is_empty(),
        "rules/ must check without diagnostics:\n{text}"
    );
    assert!(
        loaded.program.rules.len() >= 6,
        "the shipped rules are all there"
    );
}

#[test]
fn a_stream_wider_than_an_event_can_hold_is_refused_with_e225() {
    // An event stores its length in 16 bits: 65,535 fields is the widest stream. The wide
    // schema is built from a small declared one (a rule file this wide parses slowly in
    // debug builds) and passed in as a device profile's stream, as a loaded profile would be.
    let mut sources = Sources::new();
    let (program, diags) = compile::check_text(
        &mut sources,
        &[(
            "narrow.tern",
            "stream wide {\n    f0: int,\n    ts: timestamp,\n    time ts\n}\n",
        )],
        Vec::new(),
        &sinks(),
    );
    assert!(diags.is_empty(), "{diags:?}");
    let codes = |fields: usize| {
        let mut wide = program.streams[0].clone();
        let template = wide.fields[0].clone();
        while wide.fields.len() < fields {
            let mut f = template.clone();
            f.name = format!("f{}", wide.fields.len());
            wide.fields.push(f);
        }
        let mut sources = Sources::new();
        let (_, diags) = compile::check_text(&mut sources, &[], vec![wide], &sinks());
        diags
            .iter()
            .map(|d| (d.code.as_str().to_string(), d.message.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(codes(65_535), Vec::new(), "65,535 fields fit");
    let refused = codes(65_536);
    assert!(
        refused
            .iter()
            .any(|(c, m)| c == "E225" && m.contains("65536 fields")),
        "{refused:?}"
    );
}
