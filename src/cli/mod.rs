//! The command line: one module per subcommand. `main` maps outcomes to exit codes
//! (0 success, 1 the input was rejected, 2 usage or I/O error), as product.md section 5 says.

pub mod check;
pub mod demo;
pub mod explain;
pub mod fmt;
pub mod record;
pub mod replay;
pub mod run;
pub mod simulate;
pub mod state;
pub mod test;
pub mod webhook_receiver;

use std::process::ExitCode;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::compile::{self, Loaded};
use crate::config::Config;
use crate::lang::render;

/// tern: complex event processing and rules for IoT.
#[derive(Debug, Parser)]
#[command(name = "tern", version, about, propagate_version = true)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Parse, type-check and compile rule files against the device profiles.
    Check(check::CheckArgs),
    /// Evaluate rules over recorded events in event time; alerts as JSONL on stdout.
    Replay(replay::ReplayArgs),
    /// Print a rule's compiled NFA as text or Graphviz DOT; with --input, trace it over events.
    Explain(explain::ExplainArgs),
    /// Run the rule tests (`*.test.toml`): events in, expected alerts out.
    Test(test::TestArgs),
    /// Rewrite rule files in canonical form (comments kept); `--check` only lists them.
    Fmt(fmt::FmtArgs),
    /// Run the live engine: MQTT in, alerts out, until SIGINT or SIGTERM.
    Run(run::RunArgs),
    /// Simulate devices: a reproducible workload file, or a live fleet published to a broker.
    Simulate(simulate::SimulateArgs),
    /// Capture a broker's messages in the replay capture format.
    Record(record::RecordArgs),
    /// Embedded broker, simulated devices, the bundled rules: alerts as they fire.
    Demo(demo::DemoArgs),
    /// Show what a state directory holds: per rule keys, partial matches, bytes; the outbox.
    State(state::StateArgs),
    /// Receive alert webhooks, verify their signatures and print them (to test a setup).
    WebhookReceiver(webhook_receiver::ReceiverArgs),
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Everything was fine.
    Ok,
    /// The input was rejected (diagnostics, failing tests).
    Rejected,
    /// Bad usage or an I/O error.
    Failed,
}

impl From<Outcome> for ExitCode {
    fn from(o: Outcome) -> ExitCode {
        match o {
            Outcome::Ok => ExitCode::SUCCESS,
            Outcome::Rejected => ExitCode::from(1),
            Outcome::Failed => ExitCode::from(2),
        }
    }
}

/// Entry point of the `tern` binary.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    ExitCode::SUCCESS
                }
                _ => ExitCode::from(2),
            };
        }
    };
    run(cli).into()
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Outcome {
    let result = match cli.command {
        Command::Check(args) => check::run(args),
        Command::Replay(args) => replay::run(args),
        Command::Explain(args) => explain::run(args),
        Command::Test(args) => test::run(args),
        Command::Fmt(args) => fmt::run(args),
        Command::Run(args) => run::run(args),
        Command::Simulate(args) => simulate::run(args),
        Command::Record(args) => record::run(args),
        Command::Demo(args) => demo::run(args),
        Command::WebhookReceiver(args) => webhook_receiver::run(args),
        Command::State(args) => state::run(args),
    };
    match result {
        Ok(outcome) => outcome,
        Err(e) => {
            eprintln!("error: {e:#}");
            Outcome::Failed
        }
    }
}

/// Loads and checks rule files for a command that runs them (replay, explain). Problems in
/// tern.toml or in the rules are rendered on stderr as diagnostics; `None` means the input
/// was rejected (exit 1).
pub fn load_rules(
    rules: &[String],
    devices: &Path,
    config: Option<&Path>,
) -> anyhow::Result<Option<Loaded>> {
    let color = std::io::stderr().is_terminal();
    let sinks = match Config::discover(config) {
        Ok((config, _)) => config.sink_names(),
        Err(e) => {
            render::to_stderr(&e.sources, &e.diagnostics, color);
            return Ok(None);
        }
    };
    let devices = devices.is_dir().then_some(devices);
    let paths: Vec<PathBuf> = rules.iter().map(PathBuf::from).collect();
    let loaded = compile::load(&paths, devices, &sinks)?;
    if loaded.has_errors() {
        render::to_stderr(&loaded.sources, &loaded.diagnostics, color);
        return Ok(None);
    }
    Ok(Some(loaded))
}

/// Prepares the live pipeline (rules, devices, sinks); problems are rendered on stderr as
/// diagnostics, and `None` means the input was rejected (exit 1).
pub fn prepare_pipeline(
    config: crate::config::Config,
    sources: &crate::lang::source::Sources,
) -> anyhow::Result<Option<crate::io::pipeline::Pipeline>> {
    use crate::io::pipeline::{Pipeline, StartError};
    match Pipeline::prepare(config, sources) {
        Ok(p) => Ok(Some(p)),
        Err(StartError::Rejected {
            sources,
            diagnostics,
        }) => {
            render::to_stderr(&sources, &diagnostics, std::io::stderr().is_terminal());
            Ok(None)
        }
        Err(StartError::Failed(e)) => Err(e),
    }
}
