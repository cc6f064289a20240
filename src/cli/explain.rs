//! `tern explain RULE`: the compiled NFA of a rule, as text or Graphviz DOT.

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, ValueEnum};

use super::Outcome;
use crate::compile::nfa;

/// Output format of `tern explain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExplainFormat {
    /// States and their waits, one per line.
    Text,
    /// Graphviz DOT (`tern explain r --format dot | dot -Tsvg > r.svg`).
    Dot,
}

/// Arguments of `tern explain`.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The rule's name.
    pub rule: String,
    /// Rule files or directories.
    #[arg(long, num_args = 1.., default_values_t = [String::from("rules")])]
    pub rules: Vec<String>,
    /// Directory of device profiles.
    #[arg(long, default_value = "devices")]
    pub devices: PathBuf,
    /// tern.toml naming the sinks rules may use.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = ExplainFormat::Text)]
    pub format: ExplainFormat,
}

/// Runs `tern explain`.
pub fn run(args: ExplainArgs) -> anyhow::Result<Outcome> {
    let Some(loaded) = super::load_rules(&args.rules, &args.devices, args.config.as_deref())?
    else {
        return Ok(Outcome::Rejected);
    };
    let program = &loaded.program;
    let Some(rule) = program.rule(&args.rule) else {
        let names: Vec<&str> = program.rules.iter().map(|r| r.name.as_str()).collect();
        let hint = crate::lang::suggest::closest(&args.rule, names.iter().copied())
            .map(|b| format!(" (did you mean `{b}`?)"))
            .unwrap_or_default();
        eprintln!(
            "error: no rule named `{}`{hint}; rules: {}",
            args.rule,
            names.join(", ")
        );
        return Ok(Outcome::Failed);
    };
    let nfa = nfa::compile(Arc::clone(rule))?;
    let name = |s: crate::compile::hir::StreamId| program.stream(s).name.clone();
    match args.format {
        ExplainFormat::Text => print!("{}", nfa.to_text(&name)),
        ExplainFormat::Dot => print!("{}", nfa.to_dot(&name)),
    }
    Ok(Outcome::Ok)
}
