//! The admin HTTP endpoint of `tern run`: health and readiness for orchestrators, metrics for
//! Prometheus, and the running rules (list, reload, one key's partial matches) for operators.
//! `docs/operations.md` is the reference.
//!
//! - [`auth`]: the bearer token, compared in constant time. Every endpoint but `/healthz` and
//!   `/readyz` requires it when one is configured; without one, `tern.toml` may only put the
//!   endpoint on a loopback address (E417).
//! - [`routes`]: the endpoints. Rule requests go to the engine thread through the pipeline's
//!   [`Handle`] and are answered between two batches of messages.
//!
//! The server is a config-plus-runtime pair like the other I/O components: [`Admin::bind`]
//! opens the socket (so a taken port fails at startup), [`Admin::run`] serves until
//! shutdown, and alongside samples the event rate and follows the MQTT source for the
//! metrics.

pub mod auth;
pub mod routes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use secrecy::SecretString;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::io::control::Handle;
use crate::io::mqtt::SourceStatus;
use crate::metrics::Metrics;

/// What the endpoints read: shared by every request.
pub struct AppState {
    /// The bearer token, if one is configured.
    pub token: Option<auth::Token>,
    /// The registry `/metrics` encodes.
    pub metrics: Arc<Metrics>,
    /// Requests to the engine thread.
    pub handle: Handle,
    /// The MQTT source's connection, for `/readyz`.
    pub status: watch::Receiver<SourceStatus>,
}

/// The admin endpoint, bound and ready to serve.
pub struct Admin {
    listener: TcpListener,
    state: Arc<AppState>,
}

impl Admin {
    /// Binds `listen` (port 0 picks a free port: see [`Admin::local_addr`]).
    pub async fn bind(
        listen: SocketAddr,
        token: Option<SecretString>,
        metrics: Arc<Metrics>,
        handle: Handle,
        status: watch::Receiver<SourceStatus>,
    ) -> std::io::Result<Admin> {
        let listener = TcpListener::bind(listen).await?;
        Ok(Admin {
            listener,
            state: Arc::new(AppState {
                token: token.map(auth::Token::new),
                metrics,
                handle,
                status,
            }),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown`; meanwhile samples the event count every second and
    /// follows the source's connection for the metrics.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let app = routes::router(Arc::clone(&self.state))
            .into_make_service_with_connect_info::<SocketAddr>();
        let server = axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown.clone().cancelled_owned());
        let metrics = Arc::clone(&self.state.metrics);
        let mut status = self.state.status.clone();
        let background = async move {
            let mut every = tokio::time::interval(Duration::from_secs(1));
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut watching = true;
            loop {
                tokio::select! {
                    _ = every.tick() => metrics.sample(Instant::now()),
                    changed = status.changed(), if watching => match changed {
                        Ok(()) => metrics.observe_source(&status.borrow_and_update()),
                        Err(_) => watching = false,
                    },
                }
            }
        };
        tokio::select! {
            served = server => served.context("the admin endpoint failed"),
            () = background => Ok(()),
        }
    }
}
