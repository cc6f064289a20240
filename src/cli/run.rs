//! `tern run`: the live engine. MQTT in, alerts out, until SIGINT or SIGTERM; then it stops
//! reading, finishes the messages in flight, flushes the sinks and exits 0. The admin
//! endpoint (health, metrics, rules: `docs/operations.md`) runs beside the pipeline.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use tokio_util::sync::CancellationToken;

use super::Outcome;
use crate::admin::Admin;
use crate::config::{AdminConfig, Config};
use crate::io::pipeline::{Pipeline, Summary};
use crate::lang::render;
use crate::metrics::Metrics;

pub use crate::logging::init as init_logging;

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
    let admin = config.admin.clone();
    let file = config.file;
    let Some(pipeline) = super::prepare_pipeline(config, &sources)? else {
        return Ok(Outcome::Rejected);
    };
    // Checked with the other secrets when the pipeline was prepared; read it now.
    let token = match admin.token.as_ref().filter(|_| admin.enabled) {
        Some(t) => match t.resolve() {
            Ok(token) => Some(token),
            Err(why) => {
                render::to_stderr(&sources, &[t.diagnostic(file, &why)], color);
                return Ok(Outcome::Rejected);
            }
        },
        None => None,
    };
    let metrics = Arc::new(Metrics::new());
    let pipeline = pipeline.with_metrics(Arc::clone(&metrics));
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
        // The admin endpoint outlives the pipeline's drain, so health checks and metrics
        // answer while sinks deliver what is left.
        let admin_stop = CancellationToken::new();
        let admin_task = start_admin(&admin, token, Arc::clone(&metrics), &pipeline)
            .await?
            .map(|a| tokio::spawn(a.run(admin_stop.clone())));
        let summary = pipeline.run(shutdown).await;
        admin_stop.cancel();
        if let Some(mut task) = admin_task
            && tokio::time::timeout(Duration::from_secs(2), &mut task)
                .await
                .is_err()
        {
            // A client holding its connection open does not delay the exit.
            task.abort();
        }
        summary
    })?;
    log_summary(&summary);
    crate::logging::flush();
    // rumqttd's threads have no shutdown; do not wait for them.
    runtime.shutdown_background();
    Ok(Outcome::Ok)
}

/// Binds the admin endpoint. An address written in tern.toml that cannot be bound stops
/// tern; the default one is best effort (another tern on the machine may hold it).
async fn start_admin(
    config: &AdminConfig,
    token: Option<secrecy::SecretString>,
    metrics: Arc<Metrics>,
    pipeline: &Pipeline,
) -> anyhow::Result<Option<Admin>> {
    if !config.enabled {
        return Ok(None);
    }
    let has_token = token.is_some();
    match Admin::bind(
        config.listen,
        token,
        metrics,
        pipeline.handle(),
        pipeline.status(),
    )
    .await
    {
        Ok(admin) => {
            let address = admin.local_addr().unwrap_or(config.listen);
            tracing::info!(%address, token = has_token, "admin endpoint listening");
            if !has_token {
                tracing::info!(
                    "the admin endpoint has no token: every local process may use it \
                     (set [admin] token_env or token_file on a shared machine)"
                );
            }
            Ok(Some(admin))
        }
        Err(e) if config.listen_set => Err(e).with_context(|| {
            format!(
                "cannot listen on {} for the admin endpoint ([admin] listen)",
                config.listen
            )
        }),
        Err(e) => {
            tracing::warn!(address = %config.listen, error = %e,
                "cannot listen on the default admin address: running without the admin \
                 endpoint (set [admin] listen to choose another)");
            Ok(None)
        }
    }
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
