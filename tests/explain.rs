//! Golden NFA dumps: every rule in `tests/fixtures/compile/` compiled, as `tern explain`
//! prints it (text and DOT).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Arc;

use tern::compile::{self, DEFAULT_SINKS, nfa};
use tern::lang::render;

#[test]
fn nfa_dumps() {
    let sinks: Vec<String> = DEFAULT_SINKS.iter().map(|s| s.to_string()).collect();
    let files = compile::rule_files(Path::new("tests/fixtures/compile")).unwrap();
    assert!(files.len() >= 4);
    for file in files {
        let loaded = compile::load(
            std::slice::from_ref(&file),
            Some(Path::new("devices")),
            &sinks,
        )
        .unwrap();
        assert!(
            loaded.diagnostics.is_empty(),
            "{}:\n{}",
            file.display(),
            render::to_text(&loaded.sources, &loaded.diagnostics)
        );
        let program = &loaded.program;
        let name = |s| program.stream(s).name.clone();
        for rule in &program.rules {
            let nfa = nfa::compile(Arc::clone(rule)).unwrap();
            let dump = format!("{}\n{}", nfa.to_text(&name), nfa.to_dot(&name));
            insta::with_settings!({ snapshot_path => "snapshots/explain", prepend_module_to_snapshot => false }, {
                insta::assert_snapshot!(rule.name.clone(), dump);
            });
        }
    }
}
