//! The limit for P1: a hand-written loop over the workload file that does only P1 (three
//! strictly consecutive readings under 20 km/h within 5 minutes, per camera, skip past last)
//! with no engine: parse each line, one slot per camera in an array. `benches/replay.sh` runs
//! it beside `tern replay` and prints the ratio. `cargo bench --bench p1_baseline -- FILE`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::io::BufRead;
use std::time::Instant;

#[derive(serde::Deserialize)]
struct Reading<'a> {
    camera_id: &'a str,
    ts: i64,
    speed: f64,
}

/// Per camera: the slow run so far.
#[derive(Clone, Copy, Default)]
struct Slot {
    count: u8,
    first_ts: i64,
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        println!(
            "p1 baseline: run with `cargo bench --bench p1_baseline` (skipped under cargo test)"
        );
        return;
    }
    let input = std::env::args()
        .skip(1)
        .find(|a| a != "--bench")
        .unwrap_or_else(|| "/tmp/w5m.jsonl".into());
    let file = std::fs::File::open(&input).unwrap();
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut slots: Vec<Slot> = Vec::new();
    let (mut events, mut matches) = (0u64, 0u64);
    let mut line = String::new();
    let started = Instant::now();
    while reader.read_line(&mut line).unwrap() > 0 {
        let r: Reading = serde_json::from_str(line.trim_end()).unwrap();
        events += 1;
        let i = match index.get(r.camera_id) {
            Some(&i) => i,
            None => {
                index.insert(r.camera_id.to_owned(), slots.len());
                slots.push(Slot::default());
                slots.len() - 1
            }
        };
        let s = &mut slots[i];
        if r.speed < 20.0 {
            if s.count == 0 || r.ts - s.first_ts > 300_000 {
                // A run that outlived its 5 minutes starts again from this reading.
                *s = Slot {
                    count: 1,
                    first_ts: r.ts,
                };
            } else {
                s.count += 1;
            }
            if s.count == 3 {
                matches += 1;
                *s = Slot::default();
            }
        } else {
            s.count = 0;
        }
        line.clear();
    }
    let secs = started.elapsed().as_secs_f64();
    println!("events        {events}");
    println!("matches       {matches}");
    println!("elapsed       {secs:.3} s");
    println!("events/s      {:.0}", events as f64 / secs);
}
