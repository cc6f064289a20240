//! AST to checked rules: names resolved against stream declarations and device profiles,
//! expressions typed, pattern shape and boundedness checked.
//!
//! Stages, each with its own types: `lang::ast` (as written) → [`hir`] (resolved and typed,
//! built by [`check`]) → the NFA (built by the engine's compiler from the HIR). Imported rhai
//! scripts are compiled once by [`script`] while checking; typed calls hold their functions.

pub mod check;
pub mod expr;
pub mod hir;
pub mod nfa;
pub mod schema;
pub mod script;

use std::path::{Path, PathBuf};

use crate::lang::diagnostic::{Diagnostic, FileId};
use crate::lang::source::Sources;

/// Sink names every rule may use when no configuration names others.
pub const DEFAULT_SINKS: &[&str] = &["stdout", "file", "webhook", "mqtt", "influx"];

/// A loaded and checked rule set, with everything needed to report on it.
pub struct Loaded {
    /// Every file read (rule files, device profiles).
    pub sources: Sources,
    /// The checked program (rules with errors left out).
    pub program: hir::Program,
    /// Every diagnostic, in file order.
    pub diagnostics: Vec<Diagnostic>,
    /// The rule files read.
    pub rule_files: Vec<FileId>,
    /// The device profiles loaded (decoders for live and captured messages).
    pub profiles: Vec<crate::devices::Profile>,
}

impl Loaded {
    /// True when some diagnostic is an error.
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

/// An I/O failure while reading rule files.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A path given could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Every `.tern` file under `path` (itself if it is a file), sorted.
pub fn rule_files(path: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let meta = std::fs::metadata(path).map_err(|source| LoadError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if meta.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let entries = std::fs::read_dir(&dir).map_err(|source| LoadError::Read {
            path: dir.clone(),
            source,
        })?;
        for entry in entries {
            let entry = entry.map_err(|source| LoadError::Read {
                path: dir.clone(),
                source,
            })?;
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|e| e == "tern") {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Reads, parses and checks rule files against the device profiles in `devices_dir`.
pub fn load(
    paths: &[PathBuf],
    devices_dir: Option<&Path>,
    sinks: &[String],
) -> Result<Loaded, LoadError> {
    let mut sources = Sources::new();
    let mut diagnostics = Vec::new();
    let mut device_streams = Vec::new();
    let mut profiles = Vec::new();
    if let Some(dir) = devices_dir {
        let (loaded, diags) = crate::devices::load_dir(dir, &mut sources);
        diagnostics.extend(diags);
        device_streams.extend(loaded.iter().map(|p| p.schema().clone()));
        profiles = loaded;
    }
    let mut files = Vec::new();
    let mut rule_files_read = Vec::new();
    for path in paths {
        for file in rule_files(path)? {
            let id = sources.read(&file).map_err(|source| LoadError::Read {
                path: file.clone(),
                source,
            })?;
            let (ast, diags) = crate::lang::parse(id, sources.text(id));
            let ast = without_broken_items(ast, &diags);
            diagnostics.extend(diags);
            files.push((id, ast));
            rule_files_read.push(id);
        }
    }
    let (program, diags) = check::check(
        &mut sources,
        &files,
        check::Environment {
            device_streams,
            sinks,
        },
    );
    diagnostics.extend(diags);
    Ok(Loaded {
        sources,
        program,
        diagnostics,
        rule_files: rule_files_read,
        profiles,
    })
}

/// Parses and checks rule source text held in memory (tests, editors).
pub fn check_text(
    sources: &mut Sources,
    texts: &[(&str, &str)],
    device_streams: Vec<schema::StreamSchema>,
    sinks: &[String],
) -> (hir::Program, Vec<Diagnostic>) {
    let mut diagnostics = Vec::new();
    let mut files = Vec::new();
    for (name, text) in texts {
        let id = sources.add(*name, *text);
        let (ast, diags) = crate::lang::parse(id, sources.text(id));
        let ast = without_broken_items(ast, &diags);
        diagnostics.extend(diags);
        files.push((id, ast));
    }
    let (program, diags) = check::check(
        sources,
        &files,
        check::Environment {
            device_streams,
            sinks,
        },
    );
    diagnostics.extend(diags);
    (program, diagnostics)
}

/// Drops the rules and aggregates that contain a parse error: checking what the parser could
/// salvage of them would report follow-on errors ("no `match` clause") for one mistake.
/// Stream declarations and imports stay, so the rest of the file still resolves.
fn without_broken_items(
    mut ast: crate::lang::ast::File,
    diags: &[Diagnostic],
) -> crate::lang::ast::File {
    use crate::lang::ast::Item;
    let errors: Vec<u32> = diags
        .iter()
        .filter(|d| d.is_error())
        .filter_map(|d| d.primary().map(|l| l.span.start))
        .collect();
    if errors.is_empty() {
        return ast;
    }
    ast.items.retain(|item| {
        let span = match item {
            Item::Rule(r) => r.span,
            Item::Aggregate(a) => a.span,
            Item::Stream(_) | Item::Import(_) => return true,
        };
        !errors.iter().any(|&e| e >= span.start && e <= span.end)
    });
    ast
}
