//! The webhook sink: one signed HTTP POST per alert, Standard Webhooks style.
//!
//! Every attempt sends the same body with the same `webhook-id` (the alert id), so a receiver
//! can drop duplicates; `webhook-timestamp` is the time of the attempt and the signature is
//! computed again for it, so a retry an hour later still passes a receiver's 5-minute window.
//!
//! What is retried: connection errors, timeouts, 408, 429 and 5xx (`Retry-After` honoured on
//! 429 and 503, capped at the policy's `max_delay`). Any other 4xx means the receiver will
//! never take this alert: it fails at once and goes to the dead-letter sink with the response.
//! Redirects are not followed (a POST body must not silently become a GET elsewhere), so a
//! 3xx fails at once as well.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use reqwest::{Client, StatusCode, Url};
use tokio_util::sync::CancellationToken;

use super::retry::{Attempts, parse_retry_after};
use super::signing::{self, HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, Secret};
use super::{Deliver, DeliverFuture, OutAlert, Outcome};
use crate::config::{RetryConfig, WebhookConfig};

/// How much of an error response's body goes into the dead letter's reason.
const REASON_BODY_BYTES: usize = 512;
/// A success response's body is read up to this much so the connection can be reused; a
/// longer one is dropped with its connection.
const DRAIN_BYTES: usize = 64 * 1024;

/// POSTs each alert to one URL.
pub struct WebhookSink {
    name: String,
    url: Url,
    client: Client,
    headers: HeaderMap,
    secrets: Vec<Secret>,
    retry: RetryConfig,
    /// Attempts after the first, for the metrics.
    retries: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for WebhookSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSink")
            .field("name", &self.name)
            // Only the origin: hook URLs often carry a token in the path.
            .field("url", &self.url.origin().ascii_serialization())
            .field("signed", &!self.secrets.is_empty())
            .finish_non_exhaustive()
    }
}

/// What one attempt came to.
enum Attempt {
    Delivered,
    /// The receiver refused the alert for good.
    Refused(String),
    /// Worth another try, after `retry_after` if the server said.
    Retry {
        reason: String,
        retry_after: Option<Duration>,
    },
}

impl WebhookSink {
    /// The sink `name` as configured: resolves the secrets (none configured means unsigned
    /// requests, with a warning) and builds the HTTP client. Fails on a bad URL or header,
    /// or on a configured secret that cannot be read.
    pub fn new(name: &str, config: &WebhookConfig) -> anyhow::Result<WebhookSink> {
        let url = Url::parse(&config.url)
            .with_context(|| format!("sink `{name}`: invalid url `{}`", config.url))?;
        if !matches!(url.scheme(), "http" | "https") {
            bail!(
                "sink `{name}`: the url must be http or https, not `{}`",
                url.scheme()
            );
        }
        let secrets = match &config.secret {
            Some(source) => {
                let text = source
                    .resolve()
                    .map_err(|e| anyhow::anyhow!("sink `{name}`: signing secret: {e}"))?;
                signing::parse_secrets(secrecy::ExposeSecret::expose_secret(&text))
                    .map_err(|e| anyhow::anyhow!("sink `{name}`: signing secret: {e}"))?
            }
            None => {
                tracing::warn!(
                    sink = name,
                    "webhook requests are not signed: no secret_env or secret_file configured"
                );
                Vec::new()
            }
        };
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for (k, v) in &config.headers {
            let key = HeaderName::from_bytes(k.as_bytes())
                .with_context(|| format!("sink `{name}`: invalid header name `{k}`"))?;
            if [HEADER_ID, HEADER_TIMESTAMP, HEADER_SIGNATURE].contains(&key.as_str()) {
                bail!("sink `{name}`: header `{k}` is set by tern on every request");
            }
            let mut value = HeaderValue::from_str(v)
                .with_context(|| format!("sink `{name}`: invalid value for header `{k}`"))?;
            // Often an Authorization token: keep it out of debug output.
            value.set_sensitive(true);
            headers.insert(key, value);
        }
        let client = Client::builder()
            .user_agent(concat!("tern/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(config.connect_timeout)
            .timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .with_context(|| format!("sink `{name}`: cannot build the HTTP client"))?;
        Ok(WebhookSink {
            name: name.to_owned(),
            url,
            client,
            headers,
            secrets,
            retry: config.retry.clone(),
            retries: Default::default(),
        })
    }

    /// The sink's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// True when requests carry a `webhook-signature`.
    pub fn is_signed(&self) -> bool {
        !self.secrets.is_empty()
    }

    /// Delivers one alert with retries; `None` when `stop` came while waiting to retry.
    async fn deliver_one(&self, alert: &OutAlert, stop: &CancellationToken) -> Option<Outcome> {
        let mut attempts = Attempts::new(&self.retry);
        loop {
            let n = attempts.start();
            let (reason, retry_after) = match self.attempt(alert).await {
                Attempt::Delivered => return Some(Outcome::Delivered),
                Attempt::Refused(reason) => {
                    tracing::warn!(
                        sink = %self.name,
                        alert = %alert.id,
                        attempt = n,
                        %reason,
                        "webhook refused the alert; not retrying"
                    );
                    return Some(Outcome::Failed {
                        reason,
                        attempts: n,
                    });
                }
                Attempt::Retry {
                    reason,
                    retry_after,
                } => (reason, retry_after),
            };
            if !attempts.may_retry() {
                tracing::warn!(
                    sink = %self.name,
                    alert = %alert.id,
                    attempt = n,
                    %reason,
                    "webhook attempt failed; no attempts left"
                );
                return Some(Outcome::Failed {
                    reason,
                    attempts: n,
                });
            }
            let delay = attempts.next_delay(retry_after);
            tracing::warn!(
                sink = %self.name,
                alert = %alert.id,
                attempt = n,
                delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                %reason,
                "webhook attempt failed; retrying"
            );
            self.retries
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tokio::select! {
                biased;
                _ = stop.cancelled() => return None,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One POST.
    async fn attempt(&self, alert: &OutAlert) -> Attempt {
        let mut headers = self.headers.clone();
        let now = signing::unix_now();
        let body = alert.json.as_bytes();
        match HeaderValue::from_str(&alert.id) {
            Ok(v) => headers.insert(HEADER_ID, v),
            Err(_) => {
                return Attempt::Refused(format!(
                    "alert id `{}` cannot be sent as a header",
                    alert.id.escape_default()
                ));
            }
        };
        headers.insert(HEADER_TIMESTAMP, HeaderValue::from(now));
        if !self.secrets.is_empty() {
            let sig = signing::sign(&self.secrets, &alert.id, now, body);
            match HeaderValue::from_str(&sig) {
                Ok(v) => headers.insert(HEADER_SIGNATURE, v),
                // base64 and "v1," only: cannot happen, but a refusal beats a panic.
                Err(_) => return Attempt::Refused("signature is not a valid header".into()),
            };
        }
        let request = self
            .client
            .post(self.url.clone())
            .headers(headers)
            .body(alert.json.clone());
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                return Attempt::Retry {
                    reason: describe_error(e),
                    retry_after: None,
                };
            }
        };
        let status = response.status();
        if status.is_success() {
            let _ = read_prefix(response, DRAIN_BYTES).await;
            return Attempt::Delivered;
        }
        let retry_after = if matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, signing::unix_now()))
        } else {
            None
        };
        let body = read_prefix(response, REASON_BODY_BYTES).await;
        let reason = describe_status(status, &body);
        if is_retryable(status) {
            Attempt::Retry {
                reason,
                retry_after,
            }
        } else {
            Attempt::Refused(reason)
        }
    }
}

/// 408, 429 and 5xx are worth retrying; any other status will not change by itself.
fn is_retryable(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
        || status.is_server_error()
}

/// `HTTP 400 Bad Request: <start of the body>`, on one line.
fn describe_status(status: StatusCode, body: &[u8]) -> String {
    let mut reason = format!("HTTP {}", status.as_u16());
    if let Some(text) = status.canonical_reason() {
        reason.push(' ');
        reason.push_str(text);
    }
    if status.is_redirection() {
        reason.push_str(" (redirects are not followed: configure the final URL)");
    }
    let body = String::from_utf8_lossy(&body[..body.len().min(REASON_BODY_BYTES)]);
    let body: String = body
        .split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    if !body.is_empty() {
        reason.push_str(": ");
        reason.push_str(&body);
    }
    reason
}

/// A request error with its causes ("connection refused" is in a source, not the top), and
/// without the URL: the reason goes to logs and dead letters, and hook URLs often carry a
/// token in the path (the sink's name says where it was going).
fn describe_error(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = if e.is_timeout() {
        "request timed out".to_owned()
    } else if e.is_connect() {
        "cannot connect".to_owned()
    } else {
        "request failed".to_owned()
    };
    let mut source: Option<&dyn std::error::Error> = Some(&e);
    while let Some(s) = source {
        let msg = s.to_string();
        if !text.contains(&msg) {
            text.push_str(": ");
            text.push_str(&msg);
        }
        source = s.source();
    }
    text
}

/// Up to `limit` bytes of a response body; an error mid-body ends it early.
async fn read_prefix(mut response: reqwest::Response, limit: usize) -> Vec<u8> {
    let mut out = Vec::new();
    while out.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let take = chunk.len().min(limit - out.len());
                out.extend_from_slice(&chunk[..take]);
            }
            Ok(None) | Err(_) => break,
        }
    }
    out
}

impl Deliver for WebhookSink {
    fn retries(&self) -> u64 {
        self.retries.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn deliver<'a>(
        &'a mut self,
        batch: &'a [Arc<OutAlert>],
        stop: &'a CancellationToken,
    ) -> DeliverFuture<'a> {
        Box::pin(async move {
            let mut outcomes = Vec::with_capacity(batch.len());
            for alert in batch {
                match self.deliver_one(alert, stop).await {
                    Some(outcome) => outcomes.push(outcome),
                    None => break,
                }
            }
            outcomes
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::config::{SecretRef, SecretSource};

    fn config(url: &str) -> WebhookConfig {
        WebhookConfig {
            url: url.into(),
            secret: None,
            timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(1),
            headers: Default::default(),
            retry: RetryConfig::default(),
        }
    }

    #[test]
    fn builds_an_https_client_without_a_process_wide_crypto_provider() {
        // reqwest's `rustls-tls-native-roots` brings ring and uses it when no provider is
        // installed; this would fail (or panic) if that changed.
        let sink = WebhookSink::new("hook", &config("https://example.invalid/alerts")).unwrap();
        assert!(!sink.is_signed());
    }

    #[test]
    fn bad_configuration_is_an_error_naming_the_sink() {
        let e = WebhookSink::new("hook", &config("not a url")).unwrap_err();
        assert!(format!("{e:#}").contains("sink `hook`"), "{e:#}");
        assert!(WebhookSink::new("hook", &config("ftp://x/")).is_err());
        let mut c = config("http://127.0.0.1:1/");
        c.headers.insert("bad header".into(), "x".into());
        assert!(WebhookSink::new("hook", &c).is_err());
        let mut c = config("http://127.0.0.1:1/");
        c.headers.insert("Webhook-Id".into(), "x".into());
        assert!(WebhookSink::new("hook", &c).is_err());
        let mut c = config("http://127.0.0.1:1/");
        c.secret = Some(SecretRef {
            source: SecretSource::Env("TERN_TEST_SURELY_UNSET_SECRET_VAR".into()),
            span: Default::default(),
        });
        let e = WebhookSink::new("hook", &c).unwrap_err();
        assert!(format!("{e:#}").contains("is not set"), "{e:#}");
    }

    #[test]
    fn secrets_from_a_file_with_several_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "whsec_dGhpcmQ=\nwhsec_b2xk\n").unwrap();
        let mut c = config("http://127.0.0.1:1/");
        c.secret = Some(SecretRef {
            source: SecretSource::File(path),
            span: Default::default(),
        });
        let sink = WebhookSink::new("hook", &c).unwrap();
        assert_eq!(sink.secrets.len(), 2);
    }

    #[test]
    fn status_classes_and_reasons() {
        for (code, retry) in [
            (400, false),
            (401, false),
            (404, false),
            (408, true),
            (410, false),
            (429, true),
            (500, true),
            (502, true),
            (503, true),
            (301, false),
        ] {
            assert_eq!(
                is_retryable(StatusCode::from_u16(code).unwrap()),
                retry,
                "{code}"
            );
        }
        assert_eq!(
            describe_status(StatusCode::BAD_REQUEST, b"{\"error\":\n  \"no\"}\n"),
            "HTTP 400 Bad Request: {\"error\": \"no\"}"
        );
        assert_eq!(
            describe_status(StatusCode::NOT_FOUND, b""),
            "HTTP 404 Not Found"
        );
        let long = vec![b'x'; 2000];
        let r = describe_status(StatusCode::BAD_REQUEST, &long);
        assert_eq!(r.len(), "HTTP 400 Bad Request: ".len() + REASON_BODY_BYTES);
        // Invalid UTF-8 (a body cut in the middle of a character) does not panic.
        let r = describe_status(StatusCode::from_u16(499).unwrap(), &[0xe2, 0x82]);
        assert!(r.starts_with("HTTP 499"), "{r}");
    }
}
