//! Engine throughput without decoding: a workload file is decoded into memory a chunk at a
//! time, and each chunk is fed to the engine and timed. `cargo bench --bench engine -- FILE RULES...`
//! (defaults: /tmp/w5m.jsonl and benches/p1.tern, p2, p3 each in turn).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use tern::compile::{self, DEFAULT_SINKS};
use tern::engine::Engine;
use tern::io::input::{JsonReader, Record};

// The allocator the `tern` binary runs with, so that figures compare.
#[global_allocator]
static ALLOCATOR: tern::alloc::Allocator = tern::alloc::Allocator;

/// Events decoded ahead of each timed stretch.
const CHUNK: usize = 1024;

fn main() {
    // `cargo test --all-targets` runs bench binaries too, without `--bench`: measure only
    // under `cargo bench`, where the generated workload is expected to exist.
    if !std::env::args().any(|a| a == "--bench") {
        println!("engine bench: run with `cargo bench --bench engine` (skipped under cargo test)");
        return;
    }
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let input = args
        .first()
        .cloned()
        .unwrap_or_else(|| "/tmp/w5m.jsonl".into());
    let rules: Vec<String> = if args.len() > 1 {
        args[1..].to_vec()
    } else {
        vec![
            "benches/p1.tern".into(),
            "benches/p2.tern".into(),
            "benches/p3.tern".into(),
        ]
    };
    let sinks: Vec<String> = DEFAULT_SINKS.iter().map(|s| s.to_string()).collect();
    for rule in rules {
        let loaded = compile::load(
            &[PathBuf::from("benches/workload.tern"), PathBuf::from(&rule)],
            None,
            &sinks,
        )
        .unwrap();
        assert!(!loaded.has_errors(), "{rule} does not check");
        let program = Arc::new(loaded.program);
        let stream = program.stream_id("cam").unwrap();
        let reader = JsonReader::new(&program, Some(stream));
        let file = std::fs::File::open(&input)
            .unwrap_or_else(|e| panic!("{input}: {e} (make it with tern simulate)"));
        // Events are decoded a chunk at a time, untimed, and the chunk is then timed through
        // the engine: the events are in memory (and in cache, as after a network read), not
        // 5 million scattered allocations whose cache misses would be charged to the engine.
        let mut lines = std::io::BufReader::new(file).lines();
        let mut engine = Engine::new(Arc::clone(&program)).unwrap();
        let mut alerts = 0u64;
        let mut emit = |_a: tern::engine::alert::Alert| alerts += 1;
        let (mut decode, mut run, mut n) = (0.0f64, 0.0f64, 0usize);
        let mut chunk = Vec::with_capacity(CHUNK);
        loop {
            let t0 = Instant::now();
            chunk.extend(lines.by_ref().take(CHUNK).map(
                |l| match reader.line(&l.unwrap()).unwrap() {
                    Record::Event(e) => e,
                    Record::Watermark(_) => panic!("no watermarks in workloads"),
                },
            ));
            decode += t0.elapsed().as_secs_f64();
            if chunk.is_empty() {
                break;
            }
            n += chunk.len();
            let t1 = Instant::now();
            for e in chunk.drain(..) {
                engine.push(e, &mut emit).unwrap();
            }
            run += t1.elapsed().as_secs_f64();
        }
        let t1 = Instant::now();
        engine.flush(&mut emit);
        run += t1.elapsed().as_secs_f64();
        println!(
            "{rule}: {n} events, {alerts} alerts; decode {:.0} ev/s; engine {:.0} ev/s; peak partial {}",
            n as f64 / decode,
            n as f64 / run,
            engine.stats().peak_runs
        );
    }
}
