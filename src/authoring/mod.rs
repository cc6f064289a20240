//! Tools for rule authors: tests beside the rules (`tern test`) and traces of what a rule
//! did with recorded events (`tern explain --input`).
//!
//! - [`spec`]: the test file format (`rules/<name>.test.toml`), read with spans so that every
//!   mistake is a diagnostic with file, line and column.
//! - [`runner`]: runs a test file's cases through an engine holding only the rules under test,
//!   with the engine's trace on.
//! - [`expect`]: expected alerts matched against actual ones (subset match, in order), and
//!   the readable diff when they disagree.
//! - [`narrate`]: the engine's trace in the rule author's words: one line per happening, run
//!   ids that follow a partial match through its life, step names as written; and, for a
//!   missing alert, how far the pattern got.

pub mod expect;
pub mod narrate;
pub mod runner;
pub mod spec;

use crate::compile::hir::{Program, StreamId};

/// A copy of `program` that runs only the named rules, and the aggregates they read (directly
/// or through other aggregates). Streams keep their ids, so events decode the same way.
pub fn only_rules(program: &Program, names: &[String]) -> Program {
    let rules: Vec<_> = program
        .rules
        .iter()
        .filter(|r| names.iter().any(|n| *n == r.name))
        .cloned()
        .collect();
    let mut needed: Vec<StreamId> = rules.iter().flat_map(|r| r.streams.clone()).collect();
    let mut keep = vec![false; program.aggregates.len()];
    // Aggregates may read other aggregates: follow sources until nothing new is needed.
    loop {
        let mut grew = false;
        for (i, a) in program.aggregates.iter().enumerate() {
            if !keep[i] && needed.contains(&a.output) {
                keep[i] = true;
                needed.push(a.source);
                grew = true;
            }
        }
        if !grew {
            break;
        }
    }
    Program {
        streams: program.streams.clone(),
        aggregates: program
            .aggregates
            .iter()
            .zip(&keep)
            .filter(|(_, k)| **k)
            .map(|(a, _)| a.clone())
            .collect(),
        rules,
        imports: program.imports.clone(),
    }
}
