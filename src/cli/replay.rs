//! `tern replay`: evaluates rules over recorded events in event time; alerts as JSONL.

use std::io::{BufWriter, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use clap::{Args, ValueEnum};

use super::Outcome;
use crate::compile::hir::Program;
use crate::engine::Engine;
use crate::engine::alert::Alert;
use crate::io::input::{self, BadLine, Record};
use crate::io::shard::Rejected;

/// Input format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InputFormat {
    /// JSON Lines of events (`$stream` picks the stream) and `$watermark` lines.
    Jsonl,
    /// JSON Lines of MQTT captures (`{"topic", "payload"}`), decoded by the device profiles.
    Capture,
    /// CSV with a header row naming the stream's fields.
    Csv,
}

/// Arguments of `tern replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Rule files or directories.
    #[arg(long, num_args = 1.., default_values_t = [String::from("rules")])]
    pub rules: Vec<String>,
    /// The recorded input; `-` reads stdin.
    #[arg(long)]
    pub input: String,
    /// Input format.
    #[arg(long, value_enum, default_value_t = InputFormat::Jsonl)]
    pub format: InputFormat,
    /// Stream of events without `$stream` (default: the only stream the rules read).
    #[arg(long)]
    pub stream: Option<String>,
    /// Directory of device profiles.
    #[arg(long, default_value = "devices")]
    pub devices: PathBuf,
    /// tern.toml naming the sinks rules may use.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Stop time at the latest event instead of advancing it to the end.
    #[arg(long)]
    pub no_flush: bool,
    /// Print events, alerts, late events, events/s and peak state on stderr.
    #[arg(long)]
    pub stats: bool,
    /// Write rejected and late lines here as JSONL with their reason.
    #[arg(long)]
    pub dead_letter: Option<PathBuf>,
    /// Leave `emitted_at` out, so outputs compare byte for byte.
    #[arg(long)]
    pub no_emitted_at: bool,
    /// Keep engine state in this RocksDB state directory, written every 1024 events as
    /// `tern run` does (a later replay with the same directory continues from it).
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// With `--state`: wait for the disk on every write, as `tern run` does by default.
    #[arg(long)]
    pub state_sync: bool,
    /// Engine threads: keys are sharded across them by a hash of the key; they split and
    /// decode the input between them (docs/performance.md, "Scaling"). Falls back to 1,
    /// saying why, when the rules' keys do not allow it.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub workers: u16,
}

/// The engine(s) a replay feeds: one on this thread, or N sharded by key.
enum Runner {
    One(Box<Engine>),
    Sharded(Box<crate::io::shard::Sharded>),
}

/// Engine state written to a state directory every [`Durable::EVERY`] events.
struct Durable {
    store: crate::store::Store,
    ops: crate::store::Ops,
    since: usize,
}

impl Durable {
    const EVERY: usize = 1024;

    fn open(dir: &std::path::Path, sync: bool, engine: &mut Engine) -> anyhow::Result<Durable> {
        use crate::engine::persist::{GROUPS, KEYS};
        let store = crate::store::Store::open(dir, sync)?;
        engine.track_changes();
        let mut ops = crate::store::Ops::default();
        let restored = engine.restore(store.scan(KEYS)?, store.scan(GROUPS)?, &mut ops);
        if restored.keys + restored.buffered > 0 {
            eprintln!(
                "state: {} keys with {} partial matches and {} buffered events restored",
                restored.keys, restored.runs, restored.buffered
            );
        }
        let mut d = Durable {
            store,
            ops,
            since: 0,
        };
        d.write()?;
        Ok(d)
    }

    fn tick(&mut self, engine: &mut Engine) -> anyhow::Result<()> {
        self.since += 1;
        if self.since >= Self::EVERY {
            self.checkpoint(engine)?;
        }
        Ok(())
    }

    fn checkpoint(&mut self, engine: &mut Engine) -> anyhow::Result<()> {
        self.since = 0;
        engine.persist(&mut self.ops)?;
        self.write()
    }

    fn write(&mut self) -> anyhow::Result<()> {
        if self.ops.is_empty() {
            return Ok(());
        }
        let mut batch = self.store.batch();
        batch.apply(&self.ops)?;
        self.store.write(batch)?;
        self.ops.clear();
        Ok(())
    }
}

/// Runs `tern replay`.
pub fn run(args: ReplayArgs) -> anyhow::Result<Outcome> {
    let Some(loaded) = super::load_rules(&args.rules, &args.devices, args.config.as_deref())?
    else {
        return Ok(Outcome::Rejected);
    };
    let profiles = loaded.profiles;
    let program = Arc::new(loaded.program);
    let default_stream = match &args.stream {
        Some(name) => Some(
            program
                .stream_id(name)
                .with_context(|| format!("unknown stream `{name}`"))?,
        ),
        None => program.sole_input(),
    };

    // Unbuffered: CSV buffers in its reader, and JSON Lines are read a block at a time.
    let reader: Box<dyn Read> = if args.input == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(
            std::fs::File::open(&args.input)
                .with_context(|| format!("cannot open {}", args.input))?,
        )
    };
    let stdout = std::io::stdout();
    let mut out = BufWriter::with_capacity(1 << 16, stdout.lock());
    let mut dead: Option<BufWriter<std::fs::File>> = match &args.dead_letter {
        Some(p) => Some(BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => None,
    };
    let mut write_error: Option<std::io::Error> = None;
    let stamp = !args.no_emitted_at;
    let mut emit = |a: Alert| {
        let emitted = stamp.then(|| chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0));
        if let Err(e) = writeln!(out, "{}", a.to_json(emitted)) {
            write_error.get_or_insert(e);
        }
    };
    let mut rejected: std::collections::BTreeMap<&'static str, u64> = Default::default();
    let mut reported = std::collections::HashSet::new();
    let mut reject = |line_no: u64,
                      line: &[u8],
                      err: &dyn std::fmt::Display,
                      reason: &'static str| {
        *rejected.entry(reason).or_default() += 1;
        if reported.insert(reason) {
            eprintln!(
                "warning: line {line_no}: {err} (further `{reason}` lines are counted, not shown)"
            );
        }
        if let Some(d) = dead.as_mut() {
            let rec = serde_json::json!({"line": line_no, "reason": reason, "error": err.to_string(), "input": String::from_utf8_lossy(line)});
            let _ = writeln!(d, "{rec}");
        }
    };
    let mut runner = start_runner(&args, &program, default_stream)?;
    let mut durable = match (&args.state, &mut runner) {
        (Some(dir), Runner::One(engine)) => Some(Durable::open(dir, args.state_sync, engine)?),
        _ => None,
    };
    let started = Instant::now();
    let json_reader = input::JsonReader::new(&program, default_stream);
    // `rec: None` is a JSON line not decoded yet.
    let mut feed = |line_no: u64,
                    line: &[u8],
                    rec: Option<Result<Record, BadLine>>,
                    runner: &mut Runner,
                    emit: &mut dyn FnMut(Alert)|
     -> anyhow::Result<()> {
        let engine = match runner {
            Runner::One(engine) => engine,
            Runner::Sharded(s) => {
                // Rejects come back from the workers with their epoch.
                let mut rejects =
                    |n: u64, l: &[u8], why: Rejected| reject(n, l, &why, why.reason());
                // JSON Lines do not come here: the workers read them (`read_lines`).
                return match rec.unwrap_or_else(|| json_reader.bytes(line)) {
                    Ok(Record::Event(ev)) => s.push(line_no, line, ev, emit, &mut rejects),
                    Ok(Record::Watermark(t)) => s.set_watermark(line_no, t, emit, &mut rejects),
                    Err(e) => {
                        reject(line_no, line, &e, e.reason());
                        Ok(())
                    }
                };
            }
        };
        match rec.unwrap_or_else(|| json_reader.bytes(line)) {
            Ok(Record::Event(ev)) => {
                if let Err(late) = engine.push(ev, emit) {
                    reject(line_no, line, &late, "late");
                }
            }
            Ok(Record::Watermark(t)) => engine.set_watermark(t, emit),
            Err(e) => reject(line_no, line, &e, e.reason()),
        }
        if let Some(d) = durable.as_mut() {
            d.tick(engine)?;
        }
        Ok(())
    };
    if let (InputFormat::Jsonl, Runner::Sharded(s)) = (args.format, &mut runner) {
        // The workers split the lines themselves.
        let mut rejects = |n: u64, l: &[u8], why: Rejected| reject(n, l, &why, why.reason());
        s.read_lines(reader, &mut emit, &mut rejects)?;
    } else {
        match args.format {
            InputFormat::Csv => {
                let stream = default_stream
                    .context("CSV input needs --stream when the rules read several streams")?;
                for (line_no, rec) in input::csv_records(&program, stream, reader) {
                    feed(line_no, b"", Some(rec), &mut runner, &mut emit)?;
                }
            }
            InputFormat::Jsonl | InputFormat::Capture => {
                let mut lines = input::Lines::new(reader);
                while let Some((i, line)) = lines.next_line().context("cannot read input")? {
                    if input::is_blank(line) {
                        continue;
                    }
                    // JSON Lines are checked for UTF-8 by the decoder, string by string.
                    let rec = (args.format == InputFormat::Capture).then(|| {
                        input::line_text(line).and_then(|l| input::capture(&program, &profiles, l))
                    });
                    feed(i, line, rec, &mut runner, &mut emit)?;
                }
            }
        }
    }
    let (stats, engine) = match runner {
        Runner::One(mut engine) => {
            if !args.no_flush {
                engine.flush(&mut emit);
            }
            if let Some(d) = durable.as_mut() {
                d.checkpoint(&mut engine)?;
            }
            (engine.stats(), Some(engine))
        }
        Runner::Sharded(sharded) => {
            let mut rejects = |n: u64, l: &[u8], why: Rejected| reject(n, l, &why, why.reason());
            let s = sharded.finish(!args.no_flush, &mut emit, &mut rejects)?;
            let mut stats = s.engine;
            stats.late += s.late;
            (stats, None)
        }
    };
    out.flush()?;
    if let Some(e) = write_error {
        return Err(e).context("cannot write alerts");
    }
    if let Some(d) = dead.as_mut() {
        d.flush()?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    if args.stats {
        let s = stats;
        let rate = if elapsed > 0.0 {
            s.events as f64 / elapsed
        } else {
            0.0
        };
        eprintln!("events        {}", s.events);
        eprintln!("alerts        {}", s.alerts);
        eprintln!("late          {}", s.late);
        for (reason, n) in &rejected {
            if *reason != "late" {
                eprintln!("rejected      {n} ({reason})");
            }
        }
        eprintln!("elapsed       {elapsed:.3} s");
        eprintln!("events/s      {rate:.0}");
        eprintln!("peak partial  {}", s.peak_runs);
        for e in program.script_errors().iter().filter(|e| e.errors > 0) {
            eprintln!("script errors {} ({}: {})", e.errors, e.script, e.function);
        }
        if let Some(engine) = engine.as_deref()
            && args.no_flush
            && s.keys > 0
        {
            // Pending state at the end: what a live engine would hold for these keys.
            let bytes = engine.state_bytes();
            eprintln!("keys pending  {}", s.keys);
            eprintln!("state bytes   {bytes} ({} per key)", bytes as u64 / s.keys);
        }
        if let Some(rss) = peak_rss_kib() {
            eprintln!("peak RSS      {:.1} MiB", rss as f64 / 1024.0);
        }
    }
    Ok(Outcome::Ok)
}

/// One engine, or `--workers` engines sharded by key when the rules allow it (otherwise one,
/// with a line on stderr saying why).
fn start_runner(
    args: &ReplayArgs,
    program: &Arc<Program>,
    default_stream: Option<crate::compile::hir::StreamId>,
) -> anyhow::Result<Runner> {
    let workers = usize::from(args.workers);
    let single = || -> anyhow::Result<Runner> {
        Ok(Runner::One(Box::new(Engine::new(Arc::clone(program))?)))
    };
    if workers <= 1 {
        return single();
    }
    if args.state.is_some() {
        eprintln!("workers: 1 (--state keeps one engine's state; sharded state is not supported)");
        return single();
    }
    match crate::io::shard::Router::plan(program, workers) {
        Ok(router) => Ok(Runner::Sharded(Box::new(crate::io::shard::Sharded::start(
            Arc::clone(program),
            router,
            default_stream,
        )?))),
        Err(why) => {
            eprintln!("workers: 1 (keys cannot be sharded: {why})");
            single()
        }
    }
}

/// Peak resident set size of this process, from /proc (Linux).
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}
