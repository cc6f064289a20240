//! The benchmark workload: a reproducible file of traffic-camera readings
//! (`tern simulate --out`), one event per line, for `tern replay` and the benchmarks.
//!
//! Cameras report round-robin, about once a second each; the time between two consecutive
//! lines is jittered between half and one and a half of the mean gap, so time never goes
//! backwards in the file and each camera's readings are at least half a second apart. Speeds
//! come from [`Traffic`]: free flow with a few percent of readings in congestion episodes.
//! `benches/workload.tern` declares the matching stream.

use std::io::{self, Write};

use super::rng::Dice;
use super::traffic::{JAM_CHANCE, Traffic, push_tenths, tenths};

/// Mean time between two readings of one camera.
pub const CAMERA_PERIOD_NS: i64 = 1_000_000_000;

/// The most cameras a workload may have: beyond it the mean gap between lines falls under
/// a few nanoseconds and the jitter would stop working.
pub const MAX_KEYS: u32 = 10_000_000;

/// Output layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `{"camera_id":"cam-00042","ts":1709251200000,"speed":37.5,"occupancy":12.0}`
    Jsonl,
    /// A header `camera_id,ts,speed,occupancy`, then one row per event.
    Csv,
}

/// What to generate.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Number of cameras (keys), 1 to [`MAX_KEYS`].
    pub keys: u32,
    /// Number of events (lines, not counting a CSV header).
    pub events: u64,
    /// The random seed: the same seed gives the same bytes.
    pub seed: u64,
    /// Output layout.
    pub format: Format,
    /// Time of the first reading, in milliseconds since the epoch.
    pub start_ms: i64,
}

/// What was generated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WorkloadStats {
    /// Events written.
    pub events: u64,
    /// Events inside a congestion episode (jam or recovery).
    pub episode_events: u64,
    /// Events with a speed under 20 km/h.
    pub slow_events: u64,
    /// Time of the first event (ms since the epoch).
    pub first_ms: i64,
    /// Time of the last event (ms since the epoch).
    pub last_ms: i64,
}

/// The key of camera `i`: `cam-00042`, zero-padded to at least five digits.
pub fn camera_id(i: u32, keys: u32) -> String {
    let width = keys.saturating_sub(1).max(1).ilog10() as usize + 1;
    format!("cam-{i:0width$}", width = width.max(5))
}

/// Writes the workload to `out` (buffer it: this writes one line at a time).
pub fn write(w: &Workload, out: &mut dyn Write) -> io::Result<WorkloadStats> {
    if w.keys == 0 || w.keys > MAX_KEYS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("--keys must be between 1 and {MAX_KEYS}"),
        ));
    }
    let mut dice = Dice::new(w.seed);
    let mut sites: Vec<Traffic> = (0..w.keys).map(|_| Traffic::new(&mut dice)).collect();
    let ids: Vec<Vec<u8>> = (0..w.keys)
        .map(|i| camera_id(i, w.keys).into_bytes())
        .collect();
    let gap = (CAMERA_PERIOD_NS / i64::from(w.keys)).max(2);
    let mut stats = WorkloadStats {
        first_ms: w.start_ms,
        last_ms: w.start_ms,
        ..WorkloadStats::default()
    };
    if w.format == Format::Csv {
        out.write_all(b"camera_id,ts,speed,occupancy\n")?;
    }
    let mut line = Vec::with_capacity(128);
    let mut itoa_buf = itoa::Buffer::new();
    let mut elapsed_ns: i64 = 0;
    let mut cam = 0usize;
    for _ in 0..w.events {
        let (Some(site), Some(id)) = (sites.get_mut(cam), ids.get(cam)) else {
            break;
        };
        let r = site.step(&mut dice, JAM_CHANCE);
        let ts = w.start_ms.saturating_add(elapsed_ns / 1_000_000);
        line.clear();
        match w.format {
            Format::Jsonl => {
                line.extend_from_slice(b"{\"camera_id\":\"");
                line.extend_from_slice(id);
                line.extend_from_slice(b"\",\"ts\":");
                line.extend_from_slice(itoa_buf.format(ts).as_bytes());
                line.extend_from_slice(b",\"speed\":");
                push_tenths(&mut line, tenths(r.speed));
                line.extend_from_slice(b",\"occupancy\":");
                push_tenths(&mut line, tenths(r.occupancy));
                line.extend_from_slice(b"}\n");
            }
            Format::Csv => {
                line.extend_from_slice(id);
                line.push(b',');
                line.extend_from_slice(itoa_buf.format(ts).as_bytes());
                line.push(b',');
                push_tenths(&mut line, tenths(r.speed));
                line.push(b',');
                push_tenths(&mut line, tenths(r.occupancy));
                line.push(b'\n');
            }
        }
        out.write_all(&line)?;
        stats.events += 1;
        stats.episode_events += u64::from(r.episode);
        stats.slow_events += u64::from(tenths(r.speed) < 200);
        stats.last_ms = ts;
        cam += 1;
        if cam == sites.len() {
            cam = 0;
        }
        elapsed_ns += gap / 2 + dice.below(gap as u64 + 1) as i64;
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn generate(keys: u32, events: u64, seed: u64, format: Format) -> (Vec<u8>, WorkloadStats) {
        let mut out = Vec::new();
        let w = Workload {
            keys,
            events,
            seed,
            format,
            start_ms: 1_709_251_200_000,
        };
        let stats = write(&w, &mut out).unwrap();
        (out, stats)
    }

    #[test]
    fn camera_ids_are_padded() {
        assert_eq!(camera_id(42, 100), "cam-00042");
        assert_eq!(camera_id(7, 1), "cam-00007");
        assert_eq!(camera_id(12, 1_000_000), "cam-000012");
        assert_eq!(camera_id(99_999, 100_000), "cam-99999");
        assert_eq!(camera_id(100_000, 100_001), "cam-100000");
    }

    #[test]
    fn lines_look_like_the_documented_example() {
        let (out, _) = generate(3, 4, 1, Format::Jsonl);
        let text = String::from_utf8(out).unwrap();
        let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(first["camera_id"], "cam-00000");
        assert_eq!(first["ts"], 1_709_251_200_000i64);
        assert!(first["speed"].is_f64() && first["occupancy"].is_f64());
        assert_eq!(text.lines().count(), 4);
        assert_eq!(
            text.lines().nth(3).unwrap().split('"').nth(3),
            Some("cam-00000")
        );
    }

    #[test]
    fn csv_has_a_header_and_the_same_values() {
        let (json, _) = generate(5, 50, 9, Format::Jsonl);
        let (csv, _) = generate(5, 50, 9, Format::Csv);
        let csv = String::from_utf8(csv).unwrap();
        let mut rows = csv.lines();
        assert_eq!(rows.next(), Some("camera_id,ts,speed,occupancy"));
        for (j, c) in String::from_utf8(json).unwrap().lines().zip(rows) {
            let v: serde_json::Value = serde_json::from_str(j).unwrap();
            let expected = format!(
                "{},{},{},{}",
                v["camera_id"].as_str().unwrap(),
                v["ts"],
                v["speed"],
                v["occupancy"]
            );
            assert_eq!(c, expected);
        }
    }

    #[test]
    fn episodes_are_a_few_percent() {
        let (_, s) = generate(100, 200_000, 4, Format::Jsonl);
        let share = s.episode_events as f64 / s.events as f64;
        assert!((0.015..0.06).contains(&share), "{share}");
        assert!(s.slow_events > 0);
        // 2,000 readings per camera at about one a second.
        let span = (s.last_ms - s.first_ms) as f64 / 1000.0;
        assert!((1900.0..2100.0).contains(&span), "{span}");
    }

    #[test]
    fn bad_key_counts_are_refused() {
        let mut out = Vec::new();
        let w = Workload {
            keys: 0,
            events: 1,
            seed: 1,
            format: Format::Jsonl,
            start_ms: 0,
        };
        assert!(write(&w, &mut out).is_err());
    }
}
