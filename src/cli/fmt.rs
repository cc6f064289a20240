//! `tern fmt [PATH...] [--check]`: rewrites rule files in canonical form, comments kept.
//!
//! Each file is rewritten in place, atomically (a temporary file beside it, then a rename),
//! and only when its text changes. A file with parse errors is reported and left untouched.
//! With `--check` nothing is written: the files that would change are listed on stdout and
//! the exit status is 1 if there are any, as `rustfmt --check` does.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;

use super::Outcome;
use crate::compile;
use crate::lang::print::format_source;
use crate::lang::render;
use crate::lang::source::Sources;

/// Arguments of `tern fmt`.
#[derive(Debug, Args)]
pub struct FmtArgs {
    /// Rule files or directories (searched for *.tern).
    #[arg(default_value = "rules")]
    pub paths: Vec<PathBuf>,
    /// Write nothing: list the files that are not formatted, and exit 1 if there are any.
    #[arg(long)]
    pub check: bool,
}

/// Runs `tern fmt`.
pub fn run(args: FmtArgs) -> anyhow::Result<Outcome> {
    let mut files = Vec::new();
    for path in &args.paths {
        files.extend(compile::rule_files(path)?);
    }
    let mut sources = Sources::new();
    let mut diagnostics = Vec::new();
    let mut unformatted = false;
    for path in &files {
        let id = sources
            .read(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let text = sources.text(id);
        match format_source(id, text) {
            Err(diags) => diagnostics.extend(diags),
            Ok(formatted) if formatted == text => {}
            Ok(formatted) => {
                unformatted = true;
                if args.check {
                    println!("{}", path.display());
                } else {
                    write_atomically(path, &formatted)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                }
            }
        }
    }
    if !diagnostics.is_empty() {
        render::to_stderr(&sources, &diagnostics, std::io::stderr().is_terminal());
        return Ok(Outcome::Rejected);
    }
    Ok(if args.check && unformatted {
        Outcome::Rejected
    } else {
        Outcome::Ok
    })
}

/// Replaces a file's contents so that a reader sees the old text or the new one, never a
/// mix: a temporary file in the same directory, with the old file's permissions, renamed
/// over it.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map_or_else(|| "rules.tern".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.fmt-{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        if let Ok(meta) = std::fs::metadata(path) {
            std::fs::set_permissions(&tmp, meta.permissions())?;
        }
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
