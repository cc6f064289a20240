//! Hot reload: loading a rule set, watching its files, and deciding what a reload changes.
//!
//! A reload reads every rule file and device profile again and checks them as a whole, off
//! the engine thread. Only a set without errors reaches the engine, which swaps it in between
//! two batches (see [`crate::io::pipeline`]); otherwise the running set continues and the
//! diagnostics are logged and returned.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::compile::hir::Program;
use crate::devices::Profile;
use crate::io::control::{Handle, ReloadOutcome, ReloadReport};
use crate::lang::diagnostic::Diagnostic;
use crate::lang::source::Sources;

/// A checked rule set and the device profiles of the streams it reads.
pub struct RuleSet {
    /// The checked program.
    pub program: Arc<Program>,
    /// Profiles of the streams the program reads, carrying the program's stream ids.
    pub profiles: Vec<Profile>,
    /// The files read, for rendering diagnostics.
    pub sources: Sources,
    /// Warnings (there are no errors in a loaded set).
    pub warnings: Vec<Diagnostic>,
    /// Per rule, the file and line that define it.
    pub places: Places,
}

/// Rule name to the file and (1-based) line of its definition.
pub type Places = HashMap<String, (String, u32)>;

/// Why a rule set could not be loaded.
pub enum LoadFailure {
    /// It has errors; render them against `sources`.
    Rejected {
        /// The files the diagnostics point into.
        sources: Sources,
        /// What is wrong.
        diagnostics: Vec<Diagnostic>,
    },
    /// A file could not be read.
    Failed(anyhow::Error),
}

impl LoadFailure {
    /// The failure as a reload answer.
    pub fn outcome(&self) -> ReloadOutcome {
        match self {
            LoadFailure::Rejected {
                sources,
                diagnostics,
            } => ReloadOutcome::Rejected {
                diagnostics: crate::lang::render::to_text(sources, diagnostics),
                errors: diagnostics.iter().filter(|d| d.is_error()).count(),
            },
            LoadFailure::Failed(e) => ReloadOutcome::Failed {
                error: format!("{e:#}"),
            },
        }
    }
}

/// Where a rule set comes from: what `tern.toml` says, fixed for the life of the process.
#[derive(Debug, Clone)]
pub struct Loader {
    /// Rule files and directories.
    pub rules: Vec<PathBuf>,
    /// The device profile directory.
    pub devices: PathBuf,
    /// Sink names rules may send to.
    pub sinks: Vec<String>,
}

impl Loader {
    /// Reads and checks the rule files and device profiles.
    pub fn load(&self) -> Result<RuleSet, LoadFailure> {
        let devices = self.devices.is_dir().then_some(self.devices.as_path());
        let loaded = crate::compile::load(&self.rules, devices, &self.sinks)
            .context("cannot load the rules")
            .map_err(LoadFailure::Failed)?;
        if loaded.has_errors() {
            return Err(LoadFailure::Rejected {
                sources: loaded.sources,
                diagnostics: loaded.diagnostics,
            });
        }
        let program = Arc::new(loaded.program);
        let used = program.input_streams();
        let profiles = loaded
            .profiles
            .into_iter()
            .filter_map(|mut p| {
                let id = program.stream_id(&p.stream_name)?;
                used.contains(&id).then(|| {
                    p.set_stream_index(id.0);
                    p
                })
            })
            .collect();
        let places = program
            .rules
            .iter()
            .map(|r| {
                let (line, _) = loaded
                    .sources
                    .line_col(r.origin.file, r.origin.span.start as usize);
                let file = loaded.sources.name(r.origin.file).to_owned();
                (
                    r.name.clone(),
                    (file, u32::try_from(line).unwrap_or(u32::MAX)),
                )
            })
            .collect();
        Ok(RuleSet {
            program,
            profiles,
            places,
            sources: loaded.sources,
            warnings: loaded.diagnostics,
        })
    }

    /// What the watcher looks at: every file under the rule paths and the profile directory,
    /// with its size and modification time.
    fn snapshot(&self) -> BTreeMap<PathBuf, (u64, Option<SystemTime>)> {
        let mut files = BTreeMap::new();
        for path in self.rules.iter().chain(std::iter::once(&self.devices)) {
            collect(path, &mut files, 0);
        }
        files
    }
}

fn collect(path: &Path, out: &mut BTreeMap<PathBuf, (u64, Option<SystemTime>)>, depth: u32) {
    let Ok(meta) = std::fs::metadata(path) else {
        return;
    };
    if meta.is_dir() {
        // Deep enough for `rules/lib/...`; a symlink loop stops here.
        if depth > 8 {
            return;
        }
        if let Ok(entries) = std::fs::read_dir(path) {
            for entry in entries.flatten() {
                collect(&entry.path(), out, depth + 1);
            }
        }
    } else {
        out.insert(path.to_owned(), (meta.len(), meta.modified().ok()));
    }
}

/// The topic filters to subscribe to: one per profile.
pub fn subscriptions(profiles: &[Profile]) -> Vec<String> {
    let mut filters: Vec<String> = Vec::new();
    for p in profiles {
        let f = p.subscription_filter();
        if !filters.contains(&f) {
            filters.push(f);
        }
    }
    filters
}

/// Compares the rules of two programs by name and fingerprint. `keys` is left for the caller.
pub fn compare(old: &Program, new: &Program) -> ReloadReport {
    let before: HashMap<&str, u64> = old
        .rules
        .iter()
        .map(|r| (r.name.as_str(), r.fingerprint))
        .collect();
    let mut report = ReloadReport::default();
    for r in &new.rules {
        match before.get(r.name.as_str()) {
            None => report.added.push(r.name.clone()),
            Some(&f) if f != r.fingerprint => report.changed.push(r.name.clone()),
            Some(_) => report.kept.push(r.name.clone()),
        }
    }
    let after: HashSet<&str> = new.rules.iter().map(|r| r.name.as_str()).collect();
    report.removed = old
        .rules
        .iter()
        .filter(|r| !after.contains(r.name.as_str()))
        .map(|r| r.name.clone())
        .collect();
    report
}

/// Logs how a reload ended, once, whatever triggered it.
pub fn log_outcome(cause: &str, outcome: &ReloadOutcome) {
    match outcome {
        ReloadOutcome::Reloaded(r) => tracing::info!(
            cause,
            added = ?r.added,
            removed = ?r.removed,
            changed = ?r.changed,
            kept = r.kept.len(),
            keys = r.keys,
            paused_ms = r.paused_ms,
            "rules reloaded"
        ),
        ReloadOutcome::Rejected {
            diagnostics,
            errors,
        } => tracing::error!(
            cause,
            errors,
            "the new rules have errors; the running rules continue:\n{}",
            diagnostics.trim_end()
        ),
        ReloadOutcome::Failed { error } => tracing::error!(
            cause,
            error = %error,
            "cannot reload the rules; the running rules continue"
        ),
    }
}

/// Reloads through `handle` whenever a rule file or device profile changes. Files are polled
/// every `every` (portable, and cheap for a few dozen files); a change is acted on once the
/// files have stayed the same for one more poll, so an editor's save in several writes
/// reloads once.
pub async fn watch(loader: Loader, every: Duration, handle: Handle, shutdown: CancellationToken) {
    let snap = |l: Loader| async move {
        tokio::task::spawn_blocking(move || l.snapshot())
            .await
            .unwrap_or_default()
    };
    let mut running = snap(loader.clone()).await;
    let mut seen = running.clone();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = snap(loader.clone()).await;
        if now == running {
            seen = now;
            continue;
        }
        if now != seen {
            // Still changing: wait for it to settle.
            seen = now;
            continue;
        }
        running = now;
        if handle.reload("watch").await.is_err() {
            return;
        }
    }
}

/// Reloads through `handle` on every `SIGHUP`.
#[cfg(unix)]
pub async fn on_sighup(handle: Handle, shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP: reload with the admin API or by editing the files");
            return;
        }
    };
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => return,
            got = hup.recv() => if got.is_none() { return },
        }
        if handle.reload("SIGHUP").await.is_err() {
            return;
        }
    }
}

/// Without Unix signals there is no `SIGHUP`.
#[cfg(not(unix))]
pub async fn on_sighup(_handle: Handle, _shutdown: CancellationToken) {}
