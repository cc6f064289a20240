//! `tern state --dir DIR`: what a state directory holds, per rule: keys, partial matches,
//! bytes; the events waiting in reorder buffers; the outbox and each sink's place in it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Args;

use super::Outcome;
use crate::engine::persist::{self, GROUPS, KEYS};
use crate::store::{Store, cf};

/// Arguments of `tern state`.
#[derive(Debug, Args)]
pub struct StateArgs {
    /// The state directory (`state_dir` of tern.toml).
    #[arg(long, default_value = "state")]
    pub dir: PathBuf,
}

/// Counts for one rule, aggregate or stream.
#[derive(Debug, Default, Clone, Copy)]
struct Usage {
    records: u64,
    runs: u64,
    bytes: u64,
}

/// Prints the summary.
pub fn run(args: StateArgs) -> anyhow::Result<Outcome> {
    anyhow::ensure!(
        args.dir.join("CURRENT").exists(),
        "{} is not a tern state directory",
        args.dir.display()
    );
    // Read-only: works while `tern run` holds the directory.
    let store = Store::open_read_only(&args.dir)?;
    let mut by: BTreeMap<(&'static str, String), Usage> = BTreeMap::new();
    let mut unreadable = 0u64;
    for family in [KEYS, GROUPS] {
        for (k, v) in store.scan(family)? {
            match persist::describe(&k, &v) {
                Some(info) => {
                    let u = by.entry((info.kind, info.name)).or_default();
                    u.records += 1;
                    u.runs += info.runs;
                    u.bytes += (k.len() + v.len()) as u64;
                }
                None => unreadable += 1,
            }
        }
    }
    println!("state directory {}", args.dir.display());
    println!(
        "{:<10} {:<28} {:>10} {:>16} {:>12}",
        "kind", "name", "keys", "partial matches", "bytes"
    );
    for ((kind, name), u) in &by {
        if *kind == "stream" {
            continue;
        }
        let (keys, what) = match *kind {
            "buffered" => (format!("{} events", u.records), "reorder".to_string()),
            _ => (u.records.to_string(), kind.to_string()),
        };
        println!(
            "{what:<10} {name:<28} {keys:>10} {:>16} {:>12}",
            if *kind == "rule" {
                u.runs.to_string()
            } else {
                "-".into()
            },
            u.bytes
        );
    }
    let next = store.outbox_next()?;
    let cursors = store.cursors()?;
    let slowest = cursors.iter().map(|(_, c)| *c).min().unwrap_or(next);
    println!(
        "outbox     {} alerts written so far, {} waiting for a sink",
        next,
        next.saturating_sub(slowest)
    );
    for (sink, c) in &cursors {
        println!("  sink {sink:<20} {} behind", next.saturating_sub(*c));
    }
    let dedupe = store.scan(cf::DEDUPE)?.len();
    println!("dedupe     {dedupe} recent messages remembered");
    if unreadable > 0 {
        println!("({unreadable} records this build cannot read)");
    }
    Ok(Outcome::Ok)
}
