//! The benchmark suite (divan): each part of the engine alone, on data the suite generates
//! in memory (no file needed).
//!
//! ```sh
//! cargo bench --bench suite                 # everything, a minute or two
//! cargo bench --bench suite -- nfa_step     # one group
//! ```
//!
//! - `parse_compile`: parse, check and compile every file of `rules/` (against `devices/`),
//!   NFAs included.
//! - `nfa_step`: P1, P2, P3 (`benches/p*.tern`) over 500,000 decoded workload events
//!   (10,000 cameras, `tern simulate`'s generator, seed 7): the engine alone, no decoding.
//! - `json_decode`: the same 500,000 lines through `JsonReader`, no engine.
//! - `mix`: `benches/mix.tern`, 20 rules over 3 streams and 100,000 keys, 600,000 events.
//! - `rocksdb_commit`: one state write as `tern run` and `tern replay --state` make it every
//!   1024 events (the key records P2 changed over 1024 events on 10,000 keys), with and
//!   without waiting for the disk.
//!
//! `cargo test --all-targets` runs this binary without `--bench`: it then returns at once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use divan::Bencher;
use divan::counter::ItemsCount;
use tern::compile::hir::Program;
use tern::compile::{self, DEFAULT_SINKS};
use tern::engine::Engine;
use tern::event::Event;
use tern::io::input::{JsonReader, Record};
use tern::sim::rng::Dice;
use tern::sim::workload::{self, Format, Workload};

// The allocator the `tern` binary runs with, so that figures compare.
#[global_allocator]
static ALLOCATOR: tern::alloc::Allocator = tern::alloc::Allocator;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!("suite: run with `cargo bench --bench suite` (skipped under cargo test)");
        return;
    }
    divan::main();
}

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn sinks() -> Vec<String> {
    DEFAULT_SINKS.iter().map(|s| s.to_string()).collect()
}

fn program(files: &[&str], devices: bool) -> Arc<Program> {
    let paths: Vec<PathBuf> = files.iter().map(|f| repo(f)).collect();
    let dir = repo("devices");
    let loaded = compile::load(&paths, devices.then_some(dir.as_path()), &sinks()).unwrap();
    assert!(!loaded.has_errors(), "{files:?} do not check");
    Arc::new(loaded.program)
}

fn pattern(p: &str) -> Arc<Program> {
    program(
        &["benches/workload.tern", &format!("benches/{p}.tern")],
        false,
    )
}

const WORKLOAD_EVENTS: u64 = 500_000;

/// The benchmark workload's lines, generated in memory.
static WORKLOAD: LazyLock<Vec<u8>> = LazyLock::new(|| {
    let mut out = Vec::with_capacity(WORKLOAD_EVENTS as usize * 80);
    let w = Workload {
        keys: 10_000,
        events: WORKLOAD_EVENTS,
        seed: 7,
        format: Format::Jsonl,
        start_ms: 1_709_251_200_000,
    };
    workload::write(&w, &mut out).unwrap();
    out
});

fn lines(bytes: &[u8]) -> impl Iterator<Item = &str> {
    std::str::from_utf8(bytes)
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
}

fn decode_all(program: &Program, stream: Option<&str>, bytes: &[u8]) -> Vec<Event> {
    let stream = stream.map(|s| program.stream_id(s).unwrap());
    let reader = JsonReader::new(program, stream);
    lines(bytes)
        .map(|l| match reader.line(l).unwrap() {
            Record::Event(e) => e,
            Record::Watermark(_) => panic!("no watermarks in generated events"),
        })
        .collect()
}

/// The workload decoded, once (P1, P2 and P3 share the stream declaration).
static EVENTS: LazyLock<Vec<Event>> =
    LazyLock::new(|| decode_all(&pattern("p1"), Some("cam"), &WORKLOAD));

fn run(program: &Arc<Program>, events: Vec<Event>) -> Engine {
    let mut engine = Engine::new(Arc::clone(program)).unwrap();
    let mut alerts = 0u64;
    let mut out = |_a: tern::engine::alert::Alert| alerts += 1;
    for e in events {
        let _ = engine.push(e, &mut out);
    }
    engine.flush(&mut out);
    divan::black_box(alerts);
    engine
}

#[divan::bench(sample_count = 10, sample_size = 1)]
fn parse_compile() -> Engine {
    // Every rule file of rules/, with the device profiles they import.
    let program = program(&["rules"], true);
    Engine::new(program).unwrap()
}

#[divan::bench(args = ["p1", "p2", "p3"], sample_count = 5, sample_size = 1)]
fn nfa_step(bencher: Bencher, p: &str) {
    let program = pattern(p);
    let events = &*EVENTS;
    bencher
        .counter(ItemsCount::new(events.len()))
        .with_inputs(|| events.clone())
        .bench_local_values(|events| run(&program, events));
}

#[divan::bench(sample_count = 5, sample_size = 1)]
fn json_decode(bencher: Bencher) {
    let program = pattern("p1");
    let stream = program.stream_id("cam");
    let bytes = &*WORKLOAD;
    bencher
        .counter(ItemsCount::new(WORKLOAD_EVENTS))
        .bench_local(|| {
            let reader = JsonReader::new(&program, stream);
            let mut n = 0usize;
            for l in lines(bytes) {
                if reader.line(l).is_ok() {
                    n += 1;
                }
            }
            n
        });
}

const MIX_EVENTS: usize = 600_000;
const CAMERAS: usize = 60_000;
const METERS: usize = 30_000;
const DOORS: usize = 10_000;

/// Events of the three streams of benches/mix.tern: cameras report every second, meters
/// every 2 s, doors every 10 s, round-robin within each stream, interleaved in time order.
fn mix_lines() -> Vec<u8> {
    use std::io::Write;
    let mut dice = Dice::new(11);
    let mut out = Vec::with_capacity(MIX_EVENTS * 90);
    // Per-key state: a camera in a jam, a meter's load, a door open and its temperature.
    let mut jam = vec![false; CAMERAS];
    let mut load = vec![1500.0f64; METERS];
    let mut door = vec![(false, 20.0f64); DOORS];
    // Events per second: 60,000 + 15,000 + 1,000; one line every 1/76,000 s.
    let per_s = CAMERAS + METERS / 2 + DOORS / 10;
    let (mut c, mut m, mut d) = (0usize, 0usize, 0usize);
    let start_ms = 1_709_251_200_000i64;
    for i in 0..MIX_EVENTS {
        let ts = start_ms + (i as i64 * 1000) / per_s as i64;
        let pick = i % per_s;
        if pick < CAMERAS {
            let k = c % CAMERAS;
            c += 1;
            if dice.chance(if jam[k] { 0.1 } else { 0.01 }) {
                jam[k] = !jam[k];
            }
            let speed = if jam[k] {
                dice.range(2.0, 25.0)
            } else {
                dice.range(35.0, 95.0)
            };
            let occ = if jam[k] {
                dice.range(60.0, 99.0)
            } else {
                dice.range(2.0, 40.0)
            };
            writeln!(
                out,
                r#"{{"$stream":"cam","camera_id":"cam-{k:05}","ts":{ts},"speed":{speed:.1},"occupancy":{occ:.1}}}"#
            )
            .unwrap();
        } else if pick < CAMERAS + METERS / 2 {
            let k = m % METERS;
            m += 1;
            load[k] = (load[k] + dice.normal(0.0, 400.0)).clamp(0.0, 6000.0);
            let volts = dice.normal(228.0, 6.0);
            let watts = load[k];
            writeln!(
                out,
                r#"{{"$stream":"meter","meter_id":"m-{k:05}","ts":{ts},"watts":{watts:.1},"volts":{volts:.1}}}"#
            )
            .unwrap();
        } else {
            let k = d % DOORS;
            d += 1;
            let (open, temp) = &mut door[k];
            if dice.chance(0.2) {
                *open = !*open;
            }
            *temp = (*temp + dice.normal(0.0, 3.0)).clamp(-10.0, 45.0);
            writeln!(
                out,
                r#"{{"$stream":"door","door_id":"d-{k:05}","ts":{ts},"open":{open},"temp":{temp:.1}}}"#
            )
            .unwrap();
        }
    }
    out
}

static MIX: LazyLock<(Arc<Program>, Vec<Event>)> = LazyLock::new(|| {
    let program = program(&["benches/mix.tern"], false);
    let events = decode_all(&program, None, &mix_lines());
    (program, events)
});

#[divan::bench(sample_count = 3, sample_size = 1)]
fn mix(bencher: Bencher) {
    let (program, events) = &*MIX;
    bencher
        .counter(ItemsCount::new(events.len()))
        .with_inputs(|| events.clone())
        .bench_local_values(|events| run(program, events));
}

/// The key records P2 changed over 1024 events, after 100,000 events on 10,000 keys: what
/// one state write holds.
static COMMIT: LazyLock<tern::store::Ops> = LazyLock::new(|| {
    let program = pattern("p2");
    let mut engine = Engine::new(program).unwrap();
    engine.track_changes();
    let mut ops = tern::store::Ops::default();
    let mut out = |_a: tern::engine::alert::Alert| {};
    for (i, e) in EVENTS.iter().take(100_000 + 1024).enumerate() {
        let _ = engine.push(e.clone(), &mut out);
        if i + 1 == 100_000 {
            engine.persist(&mut ops).unwrap();
            ops.clear();
        }
    }
    engine.persist(&mut ops).unwrap();
    ops
});

#[divan::bench(args = [false, true], sample_count = 50)]
fn rocksdb_commit(bencher: Bencher, sync: bool) {
    let dir = tempfile::tempdir().unwrap();
    let store = tern::store::Store::open(dir.path(), sync).unwrap();
    let ops = &*COMMIT;
    bencher.counter(ItemsCount::new(ops.len())).bench_local(|| {
        let mut batch = store.batch();
        batch.apply(ops).unwrap();
        store.write(batch).unwrap();
    });
}
