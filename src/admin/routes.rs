//! The admin endpoints (reference: `docs/operations.md`).
//!
//! | method and path | token | answer |
//! |---|---|---|
//! | `GET /healthz` | no | 200 while the process serves requests |
//! | `GET /readyz` | no | 200 when connected and subscribed to the broker with the state open, else 503 |
//! | `GET /metrics` | yes | Prometheus (OpenMetrics) text |
//! | `GET /rules` | yes | the running rules, with keys, partial matches and alerts |
//! | `POST /rules/reload` | yes | reloads the rule files: 200 reloaded, 422 rejected (diagnostics) |
//! | `GET /rules/{name}/keys/{key}` | yes | one key's partial matches: 200, or 404 |
//!
//! Requests to the engine thread wait at most a few seconds: an engine paused by a full
//! outbox answers 503 rather than holding the connection.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use super::AppState;
use super::auth::Authorized;
use crate::io::control::{KeyError, ReloadOutcome};
use crate::io::pipeline::{Clock as _, SystemClock};

/// How long `/metrics` waits for the engine's per-rule numbers before it answers with the
/// last ones it had.
const RULES_FOR_METRICS: Duration = Duration::from_secs(2);

/// How long the rule endpoints wait for the engine thread.
const ENGINE_ANSWER: Duration = Duration::from_secs(10);

/// How long a reload may take (it reads and compiles every rule file).
const RELOAD_ANSWER: Duration = Duration::from_secs(60);

/// The router of every endpoint.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/rules", get(rules))
        .route("/rules/reload", post(reload))
        .route("/rules/{name}/keys/{key}", get(key))
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let status = state.status.borrow().clone();
    let state_open = state.metrics.state_open();
    let ready = status.connected && status.subscribed && state_open;
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "ready": ready,
        "broker_connected": status.connected,
        "subscribed": status.subscribed,
        "state_open": state_open,
    });
    (code, Json(body)).into_response()
}

async fn metrics(_: Authorized, State(state): State<Arc<AppState>>) -> Response {
    match tokio::time::timeout(RULES_FOR_METRICS, state.handle.rules()).await {
        Ok(Ok(rules)) => state.metrics.set_rules(&rules),
        Ok(Err(_)) => {}
        Err(_) => {
            tracing::debug!("the engine did not answer in time: per-rule gauges are stale")
        }
    }
    state.metrics.refresh(SystemClock.now());
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        state.metrics.encode(),
    )
        .into_response()
}

async fn rules(_: Authorized, State(state): State<Arc<AppState>>) -> Response {
    match tokio::time::timeout(ENGINE_ANSWER, state.handle.rules()).await {
        Ok(Ok(rules)) => Json(rules).into_response(),
        Ok(Err(_)) => stopped(),
        Err(_) => busy(),
    }
}

async fn reload(_: Authorized, State(state): State<Arc<AppState>>) -> Response {
    match tokio::time::timeout(RELOAD_ANSWER, state.handle.reload("api")).await {
        Ok(Ok(outcome)) => {
            let code = match &outcome {
                ReloadOutcome::Reloaded(_) => StatusCode::OK,
                ReloadOutcome::Rejected { .. } => StatusCode::UNPROCESSABLE_ENTITY,
                ReloadOutcome::Failed { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            };
            (code, Json(outcome)).into_response()
        }
        Ok(Err(_)) => stopped(),
        Err(_) => busy(),
    }
}

async fn key(
    _: Authorized,
    State(state): State<Arc<AppState>>,
    Path((rule, key)): Path<(String, String)>,
) -> Response {
    match tokio::time::timeout(ENGINE_ANSWER, state.handle.key(&rule, &key)).await {
        Ok(Ok(Ok(info))) => Json(info).into_response(),
        Ok(Ok(Err(e))) => {
            let what = match e {
                KeyError::NoRule(_) => "no_rule",
                KeyError::NoKey { .. } => "no_key",
            };
            error(StatusCode::NOT_FOUND, what, &e.to_string())
        }
        Ok(Err(_)) => stopped(),
        Err(_) => busy(),
    }
}

fn error(code: StatusCode, what: &str, message: &str) -> Response {
    (code, Json(json!({ "error": what, "message": message }))).into_response()
}

fn stopped() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "stopped",
        "the pipeline is not running",
    )
}

fn busy() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "busy",
        "the engine did not answer in time (is the outbox full?); try again",
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::admin::Admin;
    use crate::io::control::{Handle, KeyInfo, ReloadReport, Request, RuleInfo};
    use crate::io::mqtt::SourceStatus;
    use crate::metrics::Metrics;
    use tokio::sync::watch;
    use tokio_util::sync::CancellationToken;

    fn rule_info(name: &str) -> RuleInfo {
        RuleInfo {
            name: name.into(),
            file: "rules/r.tern".into(),
            line: 1,
            streams: vec!["reading".into()],
            sinks: vec!["alerts".into()],
            keys: 2,
            partial_matches: 3,
            alerts: 4,
            fingerprint: "f".into(),
        }
    }

    /// Answers the engine's side of the channel as a pipeline would.
    async fn serve_requests(mut rx: tokio::sync::mpsc::Receiver<Request>) {
        while let Some(r) = rx.recv().await {
            match r {
                Request::Rules { reply } => {
                    let _ = reply.send(vec![rule_info("high")]);
                }
                Request::Reload { cause, reply } => {
                    assert_eq!(cause, "api");
                    let _ = reply.send(ReloadOutcome::Reloaded(ReloadReport {
                        changed: vec!["high".into()],
                        ..ReloadReport::default()
                    }));
                }
                Request::Key { rule, key, reply } => {
                    let answer = if rule != "high" {
                        Err(KeyError::NoRule(rule))
                    } else if key != "dev/1" {
                        Err(KeyError::NoKey { rule, key })
                    } else {
                        Ok(KeyInfo {
                            rule,
                            key,
                            partial_matches: vec![json!({"a": 1})],
                            pending_matches: 0,
                            buffered_events: 1,
                        })
                    };
                    let _ = reply.send(answer);
                }
            }
        }
    }

    /// A request over a real connection; the status and the body.
    async fn call(
        client: &reqwest::Client,
        method: reqwest::Method,
        url: String,
        token: Option<&str>,
    ) -> (u16, String) {
        let mut req = client.request(method, url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    #[tokio::test]
    async fn endpoints_answer_through_the_handle_and_check_the_token() {
        let (handle, rx) = Handle::new();
        tokio::spawn(serve_requests(rx));
        let metrics = Arc::new(Metrics::new());
        let (status_tx, status) = watch::channel(SourceStatus::default());
        let admin = Admin::bind(
            "127.0.0.1:0".parse().unwrap(),
            Some(secrecy::SecretString::from("tok")),
            Arc::clone(&metrics),
            handle,
            status,
        )
        .await
        .unwrap();
        let base = format!("http://{}", admin.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(admin.run(shutdown.clone()));
        let c = reqwest::Client::new();
        let get = reqwest::Method::GET;

        assert_eq!(
            call(&c, get.clone(), format!("{base}/healthz"), None).await,
            (200, "ok\n".into())
        );
        let (code, body) = call(&c, get.clone(), format!("{base}/readyz"), None).await;
        assert_eq!(code, 503, "{body}");
        status_tx.send_modify(|s| {
            s.connected = true;
            s.subscribed = true;
            s.connects = 1;
        });
        metrics.set_state_open(true);
        let (code, body) = call(&c, get.clone(), format!("{base}/readyz"), None).await;
        assert_eq!(code, 200, "{body}");

        for token in [None, Some("wrong"), Some("to")] {
            let (code, _) = call(&c, get.clone(), format!("{base}/metrics"), token).await;
            assert_eq!(code, 401, "{token:?}");
        }
        let (code, body) = call(&c, get.clone(), format!("{base}/metrics"), Some("tok")).await;
        assert_eq!(code, 200);
        assert!(body.contains("tern_rule_keys{rule=\"high\"} 2"), "{body}");
        assert!(
            body.contains("tern_rule_partial_matches{rule=\"high\"} 3"),
            "{body}"
        );

        let (code, body) = call(&c, get.clone(), format!("{base}/rules"), Some("tok")).await;
        assert_eq!(code, 200);
        let rules: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(rules[0]["name"], "high");
        let (code, body) = call(
            &c,
            reqwest::Method::POST,
            format!("{base}/rules/reload"),
            Some("tok"),
        )
        .await;
        assert_eq!(code, 200);
        let outcome: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(outcome["outcome"], "reloaded");
        assert_eq!(outcome["changed"], json!(["high"]));
        let (code, _) = call(&c, get.clone(), format!("{base}/rules/reload"), Some("tok")).await;
        assert_eq!(code, 405);

        // A key with a slash travels percent-encoded.
        let url = format!("{base}/rules/high/keys/dev%2F1");
        let (code, body) = call(&c, get.clone(), url, Some("tok")).await;
        assert_eq!(code, 200, "{body}");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&body).unwrap()["partial_matches"],
            json!([{"a": 1}])
        );
        let url = format!("{base}/rules/high/keys/other");
        let (code, body) = call(&c, get.clone(), url, Some("tok")).await;
        assert_eq!(code, 404);
        assert!(body.contains("no_key"), "{body}");
        let url = format!("{base}/rules/nope/keys/dev");
        assert_eq!(call(&c, get.clone(), url, None).await.0, 401);

        shutdown.cancel();
        server.await.unwrap().unwrap();
    }
}
