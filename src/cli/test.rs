//! `tern test [PATH...]`: runs the rule tests (`*.test.toml`) under the paths (default
//! `rules/`), like `cargo test`: one line per case, the failures with their diffs, a summary.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::Args;

use super::Outcome;
use crate::authoring::runner::{self, Options};
use crate::config::Config;
use crate::lang::render;

/// Arguments of `tern test`.
#[derive(Debug, Args)]
pub struct TestArgs {
    /// Test files (`*.test.toml`) or directories searched for them.
    #[arg(default_value = "rules")]
    pub paths: Vec<PathBuf>,
    /// Directory of device profiles (a test file's `devices` key overrides it).
    #[arg(long, default_value = "devices")]
    pub devices: PathBuf,
    /// tern.toml naming the sinks rules may use (default: ./tern.toml if present).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// Runs `tern test`.
pub fn run(args: TestArgs) -> anyhow::Result<Outcome> {
    let err_color = std::io::stderr().is_terminal();
    let sinks = match Config::discover(args.config.as_deref()) {
        Ok((config, _)) => config.sink_names(),
        Err(e) => {
            render::to_stderr(&e.sources, &e.diagnostics, err_color);
            return Ok(Outcome::Rejected);
        }
    };
    let files = runner::discover(&args.paths)?;
    if files.is_empty() {
        eprintln!(
            "error: no test files (*.test.toml) under {}",
            args.paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        return Ok(Outcome::Rejected);
    }
    let opts = Options {
        devices: args.devices.clone(),
        sinks,
        color: std::io::stdout().is_terminal(),
    };
    println!(
        "running the tests of {} file{}",
        files.len(),
        if files.len() == 1 { "" } else { "s" }
    );
    let (mut passed, mut failed, mut broken) = (0usize, 0usize, 0usize);
    let mut failures: Vec<(String, String)> = Vec::new();
    let mut tested_rules = Vec::new();
    for path in &files {
        let result = runner::run_file(path, &opts);
        let shown = path.display().to_string();
        if !result.diagnostics.is_empty() {
            broken += 1;
            println!("test {shown} ... FAILED (errors in the test file or its rules, below)");
            render::to_stderr(&result.sources, &result.diagnostics, err_color);
            failures.push((
                shown,
                "errors in the test file or its rules (on stderr)\n".into(),
            ));
            continue;
        }
        tested_rules.extend(result.rule_files.iter().cloned());
        for case in result.cases {
            let title = format!("{shown} :: {}", case.name);
            if case.passed {
                passed += 1;
                println!("test {title} ... ok");
            } else {
                failed += 1;
                println!("test {title} ... FAILED");
                failures.push((title, case.report));
            }
        }
    }
    for f in runner::untested(&args.paths, &tested_rules) {
        eprintln!(
            "warning: {} has no tests (add {})",
            f.display(),
            f.with_extension("test.toml").display()
        );
    }
    if !failures.is_empty() {
        println!("\nfailures:\n");
        for (title, report) in &failures {
            println!("---- {title} ----\n{report}");
        }
        println!("failures:");
        for (title, _) in &failures {
            println!("    {title}");
        }
    }
    let ok = failed == 0 && broken == 0;
    println!(
        "\ntest result: {}. {passed} passed; {failed} failed{}",
        if ok { "ok" } else { "FAILED" },
        if broken > 0 {
            format!(
                "; {broken} test file{} with errors",
                if broken == 1 { "" } else { "s" }
            )
        } else {
            String::new()
        }
    );
    Ok(if ok { Outcome::Ok } else { Outcome::Rejected })
}
