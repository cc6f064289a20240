//! A webhook receiver that checks what tern sends: signatures (Standard Webhooks), bodies
//! that are JSON objects, and at-least-once delivery turned into exactly-once by dropping
//! repeated `webhook-id`s. `tern webhook-receiver` and `tern demo` run it, so an integrator
//! can try a configuration before pointing it at their own endpoint.
//!
//! Every POST, whatever its path, is one alert. The answers: 200 for an accepted alert and
//! for a duplicate (the sender must stop retrying it), 401 for a missing or wrong signature
//! while secrets are configured, 400 for a body that is not a JSON object, 413 for one over
//! the size limit. A GET answers 200 with a line of text, as a health check.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header::CONTENT_LENGTH;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::Value as Json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::signing::{self, HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, Secret, Verifier};

/// How the receiver checks requests.
#[derive(Debug, Clone)]
pub struct ReceiverConfig {
    /// Secrets a signature may match (any of them); empty accepts unsigned requests.
    pub secrets: Vec<Secret>,
    /// How far `webhook-timestamp` may be from this machine's clock.
    pub tolerance: Duration,
    /// Largest body accepted, in bytes.
    pub max_body: usize,
    /// How many recent ids are remembered to recognise duplicates.
    pub remember: usize,
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        ReceiverConfig {
            secrets: Vec::new(),
            tolerance: signing::DEFAULT_TOLERANCE,
            max_body: 1 << 20,
            remember: 100_000,
        }
    }
}

/// An accepted alert.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// `webhook-id`, or the body's `id` when the header is absent (unsigned requests).
    pub id: Option<String>,
    /// The request path.
    pub path: String,
    /// True when a signature was checked and matched.
    pub verified: bool,
    /// The body as sent.
    pub body: String,
    /// The body parsed (a JSON object).
    pub alert: Json,
}

/// What the receiver did with one POST; handed to the caller's callback.
#[derive(Debug, Clone, PartialEq)]
pub enum ReceiverEvent {
    /// A new alert.
    Accepted(Received),
    /// An id seen before: answered 200 so the sender stops, not handed on again.
    Duplicate {
        /// The repeated id.
        id: String,
    },
    /// Refused.
    Rejected {
        /// The HTTP status answered.
        status: u16,
        /// Why, for the integrator.
        reason: String,
        /// `webhook-id`, when present.
        id: Option<String>,
    },
}

/// Counts of POST requests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReceiverReport {
    /// Requests received.
    pub received: u64,
    /// New alerts accepted.
    pub accepted: u64,
    /// Repeated ids (answered 200).
    pub duplicates: u64,
    /// Requests refused (401, 400, 413).
    pub rejected: u64,
}

#[derive(Default)]
struct Counters {
    received: AtomicU64,
    accepted: AtomicU64,
    duplicates: AtomicU64,
    rejected: AtomicU64,
}

/// Recently accepted ids, oldest first out.
struct Seen {
    set: HashSet<String>,
    order: VecDeque<String>,
    capacity: usize,
}

impl Seen {
    /// Records `id`; false when it was already there.
    fn insert(&mut self, id: &str) -> bool {
        if self.set.contains(id) {
            return false;
        }
        if self.capacity == 0 {
            return true;
        }
        while self.order.len() >= self.capacity {
            match self.order.pop_front() {
                Some(old) => {
                    self.set.remove(&old);
                }
                None => break,
            }
        }
        self.set.insert(id.to_owned());
        self.order.push_back(id.to_owned());
        true
    }
}

type Callback = dyn Fn(ReceiverEvent) + Send + Sync;

struct Inner {
    verifier: Verifier,
    max_body: usize,
    seen: Mutex<Seen>,
    counters: Counters,
    on_event: Box<Callback>,
}

/// The receiver's state: verification, duplicate detection, counters. Cheap to clone.
#[derive(Clone)]
pub struct Receiver {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Receiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver")
            .field("report", &self.report())
            .finish_non_exhaustive()
    }
}

impl Receiver {
    /// A receiver checking requests as `config` says and handing every outcome to `on_event`
    /// (called on the request's task: keep it short).
    pub fn new(
        config: ReceiverConfig,
        on_event: impl Fn(ReceiverEvent) + Send + Sync + 'static,
    ) -> Receiver {
        Receiver {
            inner: Arc::new(Inner {
                verifier: Verifier::new(config.secrets).with_tolerance(config.tolerance),
                max_body: config.max_body,
                seen: Mutex::new(Seen {
                    set: HashSet::new(),
                    order: VecDeque::new(),
                    capacity: config.remember,
                }),
                counters: Counters::default(),
                on_event: Box::new(on_event),
            }),
        }
    }

    /// The counts so far.
    pub fn report(&self) -> ReceiverReport {
        let c = &self.inner.counters;
        ReceiverReport {
            received: c.received.load(Ordering::Relaxed),
            accepted: c.accepted.load(Ordering::Relaxed),
            duplicates: c.duplicates.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
        }
    }

    /// True when signatures are checked.
    pub fn verifies(&self) -> bool {
        !self.inner.verifier.is_empty()
    }

    /// The HTTP routes (every path), to mount in another server or serve.
    pub fn router(&self) -> Router {
        Router::new().fallback(handle).with_state(self.clone())
    }

    /// Serves on `listener` until `shutdown`, then waits for requests in flight and returns
    /// the counts.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<ReceiverReport> {
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
            .context("webhook receiver")?;
        Ok(self.report())
    }

    fn reject(&self, status: StatusCode, reason: String, id: Option<String>) -> Response {
        self.inner.counters.rejected.fetch_add(1, Ordering::Relaxed);
        (self.inner.on_event)(ReceiverEvent::Rejected {
            status: status.as_u16(),
            reason: reason.clone(),
            id,
        });
        (status, format!("{reason}\n")).into_response()
    }

    /// One POST: verify, parse, de-duplicate, hand on.
    async fn post(&self, uri: &Uri, headers: &HeaderMap, body: Body) -> Response {
        self.inner.counters.received.fetch_add(1, Ordering::Relaxed);
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let header_id = header(HEADER_ID).map(str::to_owned);
        let declared = header(CONTENT_LENGTH.as_str()).and_then(|v| v.parse::<u64>().ok());
        let limit = self.inner.max_body;
        if declared.is_some_and(|n| n > limit as u64) {
            return self.reject(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("body larger than {limit} bytes"),
                header_id,
            );
        }
        let bytes: Bytes = match axum::body::to_bytes(body, limit).await {
            Ok(b) => b,
            Err(e) => {
                return self.reject(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("cannot read a body of at most {limit} bytes: {e}"),
                    header_id,
                );
            }
        };
        let verified = !self.inner.verifier.is_empty();
        if verified
            && let Err(why) = self.inner.verifier.verify(
                header(HEADER_ID),
                header(HEADER_TIMESTAMP),
                header(HEADER_SIGNATURE),
                &bytes,
                signing::unix_now(),
            )
        {
            return self.reject(
                StatusCode::UNAUTHORIZED,
                format!("signature: {why}"),
                header_id,
            );
        }
        let alert: Json = match serde_json::from_slice(&bytes) {
            Ok(v @ Json::Object(_)) => v,
            Ok(_) => {
                return self.reject(
                    StatusCode::BAD_REQUEST,
                    "the body is JSON but not an object".into(),
                    header_id,
                );
            }
            Err(e) => {
                return self.reject(
                    StatusCode::BAD_REQUEST,
                    format!("the body is not JSON: {e}"),
                    header_id,
                );
            }
        };
        let id = header_id.or_else(|| alert.get("id").and_then(Json::as_str).map(str::to_owned));
        if let Some(id) = &id {
            let new = self
                .inner
                .seen
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .insert(id);
            if !new {
                self.inner
                    .counters
                    .duplicates
                    .fetch_add(1, Ordering::Relaxed);
                (self.inner.on_event)(ReceiverEvent::Duplicate { id: id.clone() });
                return (StatusCode::OK, "{\"status\":\"duplicate\"}\n").into_response();
            }
        }
        self.inner.counters.accepted.fetch_add(1, Ordering::Relaxed);
        (self.inner.on_event)(ReceiverEvent::Accepted(Received {
            id,
            path: uri.path().to_owned(),
            verified,
            body: String::from_utf8_lossy(&bytes).into_owned(),
            alert,
        }));
        (StatusCode::OK, "{\"status\":\"accepted\"}\n").into_response()
    }
}

async fn handle(
    State(receiver): State<Receiver>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match method {
        Method::POST => receiver.post(&uri, &headers, body).await,
        Method::GET | Method::HEAD => (
            StatusCode::OK,
            "tern webhook receiver: POST alerts to any path\n",
        )
            .into_response(),
        _ => (StatusCode::METHOD_NOT_ALLOWED, "POST alerts here\n").into_response(),
    }
}

/// Serves a receiver with `config` on `listener` until `shutdown`; every outcome goes to
/// `on_event`. Returns the counts.
pub async fn serve(
    listener: TcpListener,
    config: ReceiverConfig,
    on_event: impl Fn(ReceiverEvent) + Send + Sync + 'static,
    shutdown: CancellationToken,
) -> anyhow::Result<ReceiverReport> {
    Receiver::new(config, on_event)
        .serve(listener, shutdown)
        .await
}

/// Binds `addr` (port 0 picks a free one) and returns the listener with its actual address.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    let local = listener
        .local_addr()
        .with_context(|| format!("cannot listen on {addr}"))?;
    Ok((listener, local))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn seen_ids_are_bounded_and_forget_the_oldest() {
        let mut seen = Seen {
            set: HashSet::new(),
            order: VecDeque::new(),
            capacity: 2,
        };
        assert!(seen.insert("a"));
        assert!(!seen.insert("a"));
        assert!(seen.insert("b"));
        assert!(seen.insert("c"));
        assert_eq!(seen.set.len(), 2);
        // "a" was forgotten, "c" was not.
        assert!(seen.insert("a"));
        assert!(!seen.insert("c"));
    }
}
