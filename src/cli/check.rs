//! `tern check [PATH...]`: parse, type-check and compile rule files.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::Outcome;
use crate::compile;
use crate::config::Config;
use crate::lang::render;

/// Diagnostic output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// For people: source lines with carets, on stderr.
    Text,
    /// For editors and CI: one JSON array on stdout.
    Json,
}

/// Arguments of `tern check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Rule files or directories (searched for *.tern).
    #[arg(default_value = "rules")]
    pub paths: Vec<PathBuf>,
    /// Directory of device profiles.
    #[arg(long, default_value = "devices")]
    pub devices: PathBuf,
    /// tern.toml whose `[sinks.*]` names rules may send to (default: ./tern.toml if present).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Output format of diagnostics.
    #[arg(long, value_enum, default_value_t = Format::Text)]
    pub format: Format,
    /// Treat warnings as errors.
    #[arg(long)]
    pub deny_warnings: bool,
}

/// Runs `tern check`.
pub fn run(args: CheckArgs) -> anyhow::Result<Outcome> {
    let sinks = match Config::discover(args.config.as_deref()) {
        Ok((config, _)) => config.sink_names(),
        Err(e) => {
            match args.format {
                Format::Json => {
                    let out: Vec<_> = e
                        .diagnostics
                        .iter()
                        .map(|d| render::to_json(&e.sources, d))
                        .collect();
                    println!("{}", serde_json::to_string_pretty(&out)?);
                }
                Format::Text => {
                    render::to_stderr(&e.sources, &e.diagnostics, std::io::stderr().is_terminal())
                }
            }
            return Ok(Outcome::Rejected);
        }
    };
    let devices = args.devices.is_dir().then_some(args.devices.as_path());
    let loaded = compile::load(&args.paths, devices, &sinks)?;
    let rejected = loaded.has_errors() || (args.deny_warnings && !loaded.diagnostics.is_empty());
    match args.format {
        Format::Json => {
            let out: Vec<_> = loaded
                .diagnostics
                .iter()
                .map(|d| render::to_json(&loaded.sources, d))
                .collect();
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        Format::Text => {
            render::to_stderr(
                &loaded.sources,
                &loaded.diagnostics,
                std::io::stderr().is_terminal(),
            );
            let errors = loaded.diagnostics.iter().filter(|d| d.is_error()).count();
            let warnings = loaded.diagnostics.len() - errors;
            let p = &loaded.program;
            if errors == 0 {
                eprintln!(
                    "ok: {} rule{}, {} aggregate{}, {} stream{} in {} file{}{}",
                    p.rules.len(),
                    plural(p.rules.len()),
                    p.aggregates.len(),
                    plural(p.aggregates.len()),
                    p.streams.len(),
                    plural(p.streams.len()),
                    loaded.rule_files.len(),
                    plural(loaded.rule_files.len()),
                    if warnings > 0 {
                        format!(", {warnings} warning{}", plural(warnings))
                    } else {
                        String::new()
                    }
                );
            } else {
                eprintln!(
                    "error: {errors} error{}{} in {} file{}",
                    plural(errors),
                    if warnings > 0 {
                        format!(", {warnings} warning{}", plural(warnings))
                    } else {
                        String::new()
                    },
                    loaded.rule_files.len(),
                    plural(loaded.rule_files.len())
                );
            }
        }
    }
    Ok(if rejected {
        Outcome::Rejected
    } else {
        Outcome::Ok
    })
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}
