//! `tern explain RULE`: the compiled NFA of a rule, as text or Graphviz DOT; with `--input`,
//! a trace of what the rule did with each recorded event.

use std::collections::VecDeque;
use std::io::{BufWriter, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, ValueEnum};

use super::Outcome;
use super::replay::InputFormat;
use crate::authoring::{self, narrate};
use crate::compile::nfa;
use crate::engine::Engine;
use crate::engine::alert::Alert;
use crate::io::input::{self, BadLine, Record};

/// Output format of `tern explain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExplainFormat {
    /// States and their waits, one per line; with `--input`, the trace for people.
    Text,
    /// Graphviz DOT (`tern explain r --format dot | dot -Tsvg > r.svg`).
    Dot,
    /// With `--input`: the trace as JSON Lines, one record per happening.
    Json,
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
    /// Recorded events to trace the rule over (as `tern replay --input`; `-` reads stdin).
    #[arg(long)]
    pub input: Option<String>,
    /// Format of the input.
    #[arg(long, value_enum, default_value_t = InputFormat::Jsonl)]
    pub input_format: InputFormat,
    /// Stream of input events without `$stream` (default: the only stream the rule reads).
    #[arg(long)]
    pub stream: Option<String>,
    /// Only this key (its value, or its JSON for a key of several fields).
    #[arg(long)]
    pub key: Option<String>,
    /// Stop time at the latest event instead of advancing it to the end.
    #[arg(long)]
    pub no_flush: bool,
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
    if args.input.is_some() {
        if args.format == ExplainFormat::Dot {
            eprintln!("error: --input traces as text or json, not dot");
            return Ok(Outcome::Failed);
        }
        return trace(&args, &loaded);
    }
    let nfa = nfa::compile(Arc::clone(rule))?;
    let name = |s: crate::compile::hir::StreamId| program.stream(s).name.clone();
    match args.format {
        ExplainFormat::Text => print!("{}", nfa.to_text(&name)),
        ExplainFormat::Dot => print!("{}", nfa.to_dot(&name)),
        ExplainFormat::Json => {
            eprintln!("error: --format json is the trace's format: give --input FILE");
            return Ok(Outcome::Failed);
        }
    }
    Ok(Outcome::Ok)
}

/// Replays the input through an engine holding only the rule (and the aggregates it reads)
/// and prints, event by event, what the rule's runs did.
fn trace(args: &ExplainArgs, loaded: &crate::compile::Loaded) -> anyhow::Result<Outcome> {
    let input_name = args.input.as_deref().unwrap_or("-");
    let program = Arc::new(authoring::only_rules(
        &loaded.program,
        std::slice::from_ref(&args.rule),
    ));
    let mut engine = Engine::new(Arc::clone(&program))?;
    engine.enable_trace();
    let default_stream = match &args.stream {
        Some(name) => Some(
            program
                .stream_id(name)
                .with_context(|| format!("unknown stream `{name}`"))?,
        ),
        None => program.sole_input(),
    };
    let reader: Box<dyn Read> = if input_name == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(
            std::fs::File::open(input_name).with_context(|| format!("cannot open {input_name}"))?,
        )
    };
    let mut printer = Printer {
        out: Box::new(BufWriter::new(std::io::stdout().lock())),
        narrator: narrate::Narrator::new(Arc::clone(&program)),
        json: args.format == ExplainFormat::Json,
        key: args.key.clone(),
        alerts: 0,
        events: 0,
    };
    if !printer.json {
        writeln!(
            printer.out,
            "trace of rule `{}` over {input_name} (step names as in `tern explain {}`)",
            args.rule, args.rule
        )?;
    }
    let json_reader = input::JsonReader::new(&program, default_stream);
    let feed = |line_no: u64,
                rec: Result<Record, BadLine>,
                engine: &mut Engine,
                printer: &mut Printer|
     -> anyhow::Result<()> {
        let mut got = VecDeque::new();
        match rec {
            Ok(Record::Event(ev)) => {
                if let Err(late) = engine.push(ev, &mut |a| got.push_back(a)) {
                    printer.note(line_no, &late.to_string(), "late")?;
                }
            }
            Ok(Record::Watermark(t)) => engine.set_watermark(t, &mut |a| got.push_back(a)),
            Err(e) => printer.note(line_no, &e.to_string(), e.reason())?,
        }
        printer.print(engine, &mut got)
    };
    match args.input_format {
        InputFormat::Csv => {
            let stream = default_stream
                .context("CSV input needs --stream when the rule reads several streams")?;
            for (line_no, rec) in input::csv_records(&program, stream, reader) {
                feed(line_no, rec, &mut engine, &mut printer)?;
            }
        }
        InputFormat::Jsonl | InputFormat::Capture => {
            let mut lines = input::Lines::new(reader);
            while let Some((i, line)) = lines.next_line().context("cannot read input")? {
                if input::is_blank(line) {
                    continue;
                }
                let rec = match input::line_text(line) {
                    Ok(l) if args.input_format == InputFormat::Capture => {
                        input::capture(&program, &loaded.profiles, l)
                    }
                    Ok(l) => json_reader.line(l),
                    Err(e) => Err(e),
                };
                feed(i, rec, &mut engine, &mut printer)?;
            }
        }
    }
    if !args.no_flush {
        if !printer.json {
            writeln!(printer.out, "end of input: time advances to the end")?;
        }
        let mut got = VecDeque::new();
        engine.flush(&mut |a| got.push_back(a));
        printer.print(&mut engine, &mut got)?;
    }
    if !printer.json {
        writeln!(
            printer.out,
            "{} event{} for `{}`, {} alert{}",
            printer.events,
            if printer.events == 1 { "" } else { "s" },
            args.rule,
            printer.alerts,
            if printer.alerts == 1 { "" } else { "s" }
        )?;
    }
    printer.out.flush()?;
    Ok(Outcome::Ok)
}

struct Printer {
    out: Box<dyn Write>,
    narrator: narrate::Narrator,
    json: bool,
    key: Option<String>,
    alerts: usize,
    events: usize,
}

impl Printer {
    fn print(&mut self, engine: &mut Engine, got: &mut VecDeque<Alert>) -> anyhow::Result<()> {
        let records = engine.take_trace();
        for line in self.narrator.lines(&records, got) {
            if let Some(k) = &self.key {
                let text = match &line.key {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                if *k != text {
                    continue;
                }
            }
            if line.json.get("what").and_then(|w| w.as_str()) == Some("alert") {
                self.alerts += 1;
            }
            if line.json.get("what").and_then(|w| w.as_str()) == Some("event") {
                self.events += 1;
            }
            if self.json {
                writeln!(self.out, "{}", line.json)?;
            } else if line.header {
                writeln!(self.out, "{}", line.text)?;
            } else {
                writeln!(self.out, "  {}", line.text)?;
            }
        }
        Ok(())
    }

    fn note(&mut self, line_no: u64, why: &str, reason: &str) -> anyhow::Result<()> {
        if self.json {
            let j = serde_json::json!({"what": "rejected", "line": line_no, "reason": reason, "text": why});
            writeln!(self.out, "{j}")?;
        } else {
            writeln!(
                self.out,
                "input line {line_no}: {why} (not fed to the rule)"
            )?;
        }
        Ok(())
    }
}
