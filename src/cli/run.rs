//! `tern run`: the live engine. MQTT in, alerts out, until SIGINT or SIGTERM; then it stops
//! reading, finishes the messages in flight, flushes the sinks and exits 0.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Args;
use tokio_util::sync::CancellationToken;

use super::Outcome;
use crate::config::{Config, LogFormat, LoggingConfig};
use crate::io::pipeline::Summary;
use crate::lang::render;

/// Arguments of `tern run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The configuration file (default: ./tern.toml if present, else built-in defaults: rules
    /// from rules/, profiles from devices/, an embedded broker on 127.0.0.1:1883).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// Runs `tern run`.
pub fn run(args: RunArgs) -> anyhow::Result<Outcome> {
    let color = std::io::stderr().is_terminal();
    let (config, sources) = match Config::discover(args.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            render::to_stderr(&e.sources, &e.diagnostics, color);
            return Ok(Outcome::Rejected);
        }
    };
    init_logging(&config.logging);
    let Some(pipeline) = super::prepare_pipeline(config, &sources)? else {
        return Ok(Outcome::Rejected);
    };
    let (warn_sources, warnings) = pipeline.warnings();
    if !warnings.is_empty() {
        render::to_stderr(warn_sources, warnings, color);
    }
    let p = pipeline.program();
    tracing::info!(
        rules = p.rules.len(),
        subscriptions = ?pipeline.subscriptions(),
        "starting"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("tern-io")
        .build()
        .context("cannot start the async runtime")?;
    let summary = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        pipeline.run(shutdown).await
    })?;
    log_summary(&summary);
    // rumqttd's threads have no shutdown; do not wait for them.
    runtime.shutdown_background();
    Ok(Outcome::Ok)
}

/// Cancels `shutdown` on the first SIGINT or SIGTERM; a second one exits at once.
async fn stop_on_signal(shutdown: CancellationToken) {
    let mut signals = 0;
    loop {
        wait_for_signal().await;
        signals += 1;
        if signals == 1 {
            tracing::info!("stopping (signal again to exit at once)");
            shutdown.cancel();
        } else {
            tracing::warn!("exiting without draining");
            std::process::exit(130);
        }
    }
}

/// Waits for SIGINT or SIGTERM.
#[cfg(unix)]
pub(crate) async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Waits for Ctrl-C.
#[cfg(not(unix))]
pub(crate) async fn wait_for_signal() {
    let _ = tokio::signal::ctrl_c().await;
}

fn log_summary(s: &Summary) {
    let bad: u64 = s.engine.bad.values().sum();
    tracing::info!(
        received = s.source.received,
        acknowledged = s.source.acked,
        left_to_broker = s.source.left_to_broker,
        events = s.engine.events,
        alerts = s.engine.alerts,
        duplicates = s.engine.duplicates,
        bad,
        bad_by_reason = ?s.engine.bad,
        dead_letters_written = s.dead_letters.written,
        "stopped"
    );
}

/// Sets up logging on stderr (stdout is for alerts): readable on a terminal, JSON otherwise,
/// unless the configuration says which. `TERN_LOG` overrides the configured level. Does
/// nothing if a subscriber is already installed (a caller that set up its own).
pub fn init_logging(config: &LoggingConfig) {
    let mut level = std::env::var("TERN_LOG").unwrap_or_else(|_| config.level.clone());
    if !level.contains("rumqtt") {
        // The client library is chatty at info, and the embedded broker logs every client
        // that disconnects as an error; `TERN_LOG=info,rumqttd=warn` shows them.
        level.push_str(",rumqttd=off,rumqttc=warn");
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = match config.format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().with_current_span(false).try_init()
    } else {
        builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init()
    };
}
