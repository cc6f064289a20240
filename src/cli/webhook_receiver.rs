//! `tern webhook-receiver`: receives alert webhooks, verifies their signatures, prints them.
//!
//! A tool for integrators: point a webhook sink at it to see what tern sends and whether the
//! secrets agree, before wiring the real endpoint. Accepted alerts go to stdout (one line
//! each, readable or JSON); refusals and the final counts go to stderr.

use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use clap::Args;
use serde_json::Value as Json;
use tokio_util::sync::CancellationToken;

use super::Outcome;
use crate::delivery::key_text;
use crate::delivery::receiver::{self, ReceiverConfig, ReceiverEvent, ReceiverReport};
use crate::delivery::signing::{Secret, parse_secrets};

/// Arguments of `tern webhook-receiver`.
#[derive(Debug, Args)]
pub struct ReceiverArgs {
    /// Address to listen on (port 0 picks a free port; the address is printed on stderr).
    #[arg(long, default_value = "127.0.0.1:8787")]
    pub listen: SocketAddr,
    /// A signing secret (`whsec_<base64>`, or raw text used as bytes); repeat it, or give
    /// several separated by spaces, to accept any of them. Visible in `ps`: prefer
    /// --secret-env or --secret-file outside a test.
    #[arg(long, value_name = "VALUE")]
    pub secret: Vec<String>,
    /// An environment variable holding one or more secrets.
    #[arg(long, value_name = "VAR")]
    pub secret_env: Option<String>,
    /// A file holding one or more secrets (whitespace or newline separated).
    #[arg(long, value_name = "PATH")]
    pub secret_file: Option<PathBuf>,
    /// Also append each accepted alert's JSON, one per line, to this file.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Print accepted alerts as JSON lines instead of readable lines.
    #[arg(long)]
    pub json: bool,
}

/// Runs the receiver until SIGINT or SIGTERM.
pub fn run(args: ReceiverArgs) -> anyhow::Result<Outcome> {
    let secrets = secrets(&args)?;
    if secrets.is_empty() {
        eprintln!(
            "warning: no secret given (--secret, --secret-env, --secret-file): signatures are NOT verified"
        );
    }
    let out = match &args.out {
        Some(path) => Some(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open {}", path.display()))?,
        ),
        None => None,
    };
    let printer = Arc::new(Mutex::new(Printer {
        json: args.json,
        color: std::io::stdout().is_terminal(),
        out,
    }));
    let n_secrets = secrets.len();
    let config = ReceiverConfig {
        secrets,
        ..ReceiverConfig::default()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let report = runtime.block_on(async {
        let (listener, addr) = receiver::bind(args.listen).await?;
        eprintln!("listening on http://{addr}");
        if n_secrets > 0 {
            eprintln!("verifying signatures with {n_secrets} secret(s)");
        }
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        let p = Arc::clone(&printer);
        receiver::serve(
            listener,
            config,
            move |event| {
                p.lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .event(&event);
            },
            shutdown,
        )
        .await
    })?;
    print_report(&report);
    Ok(Outcome::Ok)
}

/// Every secret the arguments name, in order.
fn secrets(args: &ReceiverArgs) -> anyhow::Result<Vec<Secret>> {
    let mut all = Vec::new();
    for value in &args.secret {
        all.extend(parse_secrets(value).map_err(|e| anyhow::anyhow!("--secret: {e}"))?);
    }
    if let Some(var) = &args.secret_env {
        let text = std::env::var(var).map_err(|_| {
            anyhow::anyhow!("--secret-env: environment variable `{var}` is not set")
        })?;
        all.extend(parse_secrets(&text).map_err(|e| anyhow::anyhow!("--secret-env {var}: {e}"))?);
    }
    if let Some(path) = &args.secret_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("--secret-file: cannot read {}", path.display()))?;
        all.extend(
            parse_secrets(&text)
                .map_err(|e| anyhow::anyhow!("--secret-file {}: {e}", path.display()))?,
        );
    }
    Ok(all)
}

/// Writes events: accepted alerts on stdout (and `--out`), the rest on stderr.
struct Printer {
    json: bool,
    color: bool,
    out: Option<File>,
}

impl Printer {
    fn event(&mut self, event: &ReceiverEvent) {
        match event {
            ReceiverEvent::Accepted(r) => {
                let line = one_line_json(&r.body, &r.alert);
                let text = if self.json {
                    line.clone()
                } else {
                    readable(r.id.as_deref(), &r.alert, self.color)
                };
                let mut stdout = std::io::stdout().lock();
                // A closed stdout must not stop the receiver answering.
                let _ = writeln!(stdout, "{text}");
                let _ = stdout.flush();
                if let Some(f) = &mut self.out
                    && let Err(e) = writeln!(f, "{line}")
                {
                    eprintln!("warning: cannot write to --out: {e}");
                }
            }
            ReceiverEvent::Duplicate { id } => {
                eprintln!("duplicate {}: answered 200, not printed again", short(id));
            }
            ReceiverEvent::Rejected { status, reason, id } => {
                eprintln!(
                    "✗ {status} {}: {reason}",
                    id.as_deref().map_or("-", |i| short(i))
                );
            }
        }
    }
}

/// The alert JSON on one line: as sent when it already is one line, else compacted.
fn one_line_json(body: &str, alert: &Json) -> String {
    let body = body.trim();
    if body.contains(['\n', '\r']) {
        alert.to_string()
    } else {
        body.to_owned()
    }
}

/// `✓ <id-short> <rule> <key> <severity>`, with the kind when it is a timeout.
fn readable(id: Option<&str>, alert: &Json, color: bool) -> String {
    let text = |field: &str| match alert.get(field) {
        Some(Json::String(s)) if !s.is_empty() => s.clone(),
        Some(Json::Null) | None => "-".to_owned(),
        Some(other) => other.to_string(),
    };
    let key = match alert.get("key") {
        Some(k) => match key_text(k) {
            s if s.is_empty() => "-".to_owned(),
            s => s,
        },
        None => "-".to_owned(),
    };
    let mark = if color { "\x1b[32m✓\x1b[0m" } else { "✓" };
    let mut line = format!(
        "{mark} {} {} {key} {}",
        id.map_or("-", short),
        text("rule"),
        text("severity")
    );
    if alert.get("kind").and_then(Json::as_str) == Some("timeout") {
        line.push_str(" timeout");
    }
    line
}

/// The first 12 characters of an id (tern's ids are 32 hex digits).
fn short(id: &str) -> &str {
    match id.char_indices().nth(12) {
        Some((i, _)) => &id[..i],
        None => id,
    }
}

fn print_report(r: &ReceiverReport) {
    eprintln!(
        "stopped: received {}, accepted {}, duplicates {}, rejected {}",
        r.received, r.accepted, r.duplicates, r.rejected
    );
}

/// Cancels `shutdown` on the first SIGINT or SIGTERM; a second one exits at once.
async fn stop_on_signal(shutdown: CancellationToken) {
    super::run::wait_for_signal().await;
    shutdown.cancel();
    super::run::wait_for_signal().await;
    std::process::exit(130);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use serde_json::json;

    #[test]
    fn readable_lines() {
        let a = json!({"id": "0123456789abcdef0123", "rule": "congestion", "key": "cam-17",
                       "severity": "warning", "kind": "match"});
        assert_eq!(
            readable(Some("0123456789abcdef0123"), &a, false),
            "✓ 0123456789ab congestion cam-17 warning"
        );
        let t = json!({"rule": "stuck", "key": {"line": "L1", "station": 3},
                       "severity": "error", "kind": "timeout"});
        assert_eq!(
            readable(None, &t, false),
            "✓ - stuck line=L1,station=3 error timeout"
        );
        assert_eq!(readable(Some("é"), &json!({}), false), "✓ é - - -");
    }

    #[test]
    fn json_lines_stay_one_line() {
        let v = json!({"a": 1});
        assert_eq!(one_line_json("{\"a\": 1}\n", &v), "{\"a\": 1}");
        assert_eq!(one_line_json("{\n  \"a\": 1\n}", &v), "{\"a\":1}");
    }
}
