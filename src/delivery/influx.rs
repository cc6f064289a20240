//! The InfluxDB sink: one point per alert, written in batches through the InfluxDB 2 write
//! API (`POST /api/v2/write`), which InfluxDB 2 and 3, VictoriaMetrics and others accept.
//!
//! A point: measurement = the sink's `measurement` or the rule name; tags `key` (omitted for
//! a keyless rule), `severity`, `kind`, `name`; a field for every number and boolean of the
//! alert's `fields` (integers as integer fields, other numbers as floats, booleans as
//! booleans; strings, nulls, arrays and objects are left out, so a field never changes type
//! from one alert to the next), or `count=1i` when there is none; the event time in
//! nanoseconds. For example:
//!
//! ```text
//! congestion,key=cam-17,kind=match,name=congestion,severity=warning speed=12.5,vehicles=41i 1717236000000000000
//! ```
//!
//! Points are built with the influxdb2 crate's `DataPoint` and rendered to line protocol
//! once per batch; every retry sends the same bytes. The request itself is made with
//! reqwest rather than `influxdb2::Client::write_line_protocol`, because that drops the
//! response headers (no `Retry-After`) and builds its URL in a way that panics on a bad one
//! and discards a base path (a reverse proxy's prefix).
//!
//! Retries: connection errors, timeouts, 5xx, 408 and 429 are retried under the sink's
//! `retry` policy, honouring `Retry-After`; any other answer but 2xx (a malformed point,
//! a bad token, a missing bucket, a redirect) fails the whole batch at once with the
//! response, as does the last failed attempt. InfluxDB may have written the good points of a
//! batch it answered 400 to (a partial write); they go to the dead letters with the rest.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use influxdb2::models::{DataPoint, FieldValue, WriteDataPoint as _};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use secrecy::ExposeSecret as _;
use serde_json::Value as Json;
use tokio_util::sync::CancellationToken;

use super::retry::{Attempts, parse_retry_after};
use super::{Deliver, DeliverFuture, OutAlert, Outcome};
use crate::config::{InfluxConfig, RetryConfig};

/// The longest part of a response body kept in a dead letter.
const MAX_REASON_BODY: usize = 500;

/// Writes alerts as InfluxDB points (see the module documentation).
pub struct InfluxSink {
    name: String,
    http: reqwest::Client,
    /// `<url>/api/v2/write?org=..&bucket=..&precision=ns`.
    write_url: reqwest::Url,
    auth: HeaderValue,
    measurement: Option<String>,
    batch: usize,
    retry: RetryConfig,
    /// Attempts after the first, for the metrics.
    retries: u64,
}

impl InfluxSink {
    /// A sink for `config`; reads the token now, so a missing one fails at startup.
    pub fn new(name: &str, config: &InfluxConfig) -> anyhow::Result<InfluxSink> {
        let token = config
            .token
            .resolve()
            .map_err(|e| anyhow::anyhow!("sink `{name}`: InfluxDB token: {e}"))?;
        let mut auth =
            HeaderValue::from_str(&format!("Token {}", token.expose_secret())).map_err(|_| {
                anyhow::anyhow!(
                    "sink `{name}`: the InfluxDB token holds characters a header cannot"
                )
            })?;
        auth.set_sensitive(true);
        let write_url = write_url(&config.url, &config.org, &config.bucket)
            .with_context(|| format!("sink `{name}`"))?;
        // A redirect fails the batch with the 3xx in the dead letter, rather than sending
        // the points and the token somewhere the configuration does not name.
        let http = reqwest::Client::builder()
            .user_agent(concat!("tern/", env!("CARGO_PKG_VERSION")))
            .timeout(config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .with_context(|| format!("sink `{name}`: HTTP client"))?;
        Ok(InfluxSink {
            name: name.to_string(),
            http,
            write_url,
            auth,
            measurement: config.measurement.clone().filter(|m| !m.is_empty()),
            batch: config.batch.max(1),
            retry: config.retry.clone(),
            retries: 0,
        })
    }

    /// One POST of `body`: `Ok` when written, else whether to retry, why, and the server's
    /// `Retry-After`.
    async fn post(&self, body: Bytes) -> Result<(), (bool, String, Option<Duration>)> {
        let sent = self
            .http
            .post(self.write_url.clone())
            .header(AUTHORIZATION, self.auth.clone())
            .header(CONTENT_TYPE, "text/plain; charset=utf-8")
            .body(body)
            .send()
            .await;
        let response = match sent {
            Ok(r) => r,
            Err(e) => return Err((true, describe(e), None)),
        };
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, chrono::Utc::now().timestamp()));
        let text = response.text().await.unwrap_or_default();
        let retryable = status.is_server_error() || matches!(status.as_u16(), 408 | 429);
        Err((
            retryable,
            format!("InfluxDB answered {status}: {}", shorten(text.trim())),
            retry_after,
        ))
    }
}

/// The write endpoint under `base` (keeping its path, for a server behind a prefix).
fn write_url(base: &str, org: &str, bucket: &str) -> anyhow::Result<reqwest::Url> {
    let mut url = reqwest::Url::parse(base).with_context(|| format!("`{base}` is not a URL"))?;
    if !matches!(url.scheme(), "http" | "https") {
        bail!("`{base}` is not an http or https URL");
    }
    url.path_segments_mut()
        .map_err(|_| anyhow::anyhow!("`{base}` cannot be a base URL"))?
        .pop_if_empty()
        .extend(["api", "v2", "write"]);
    url.set_query(None);
    url.query_pairs_mut()
        .append_pair("org", org)
        .append_pair("bucket", bucket)
        .append_pair("precision", "ns");
    Ok(url)
}

/// An error and its causes on one line (reqwest's own message omits the cause), without the
/// URL, as for webhooks (the sink's name says where it was going).
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut text = if e.is_timeout() {
        "InfluxDB did not answer in time".to_string()
    } else {
        format!("cannot reach InfluxDB: {e}")
    };
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// At most [`MAX_REASON_BODY`] bytes of `text`, cut at a character boundary.
fn shorten(text: &str) -> String {
    if text.len() <= MAX_REASON_BODY {
        return text.to_string();
    }
    let mut end = MAX_REASON_BODY;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &text[..end])
}

/// Text as the influxdb2 crate should receive it. The crate escapes `,`, `=`, space and `"`
/// but not the backslash (so `a\` before a delimiter would escape it) and cannot represent a
/// line break at all: backslashes are doubled, which line protocol reads back as one, and
/// line breaks become spaces.
fn lp_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// The point for `alert` (see the module documentation).
fn point(alert: &OutAlert, measurement: Option<&str>) -> Result<DataPoint, String> {
    let mut p = DataPoint::builder(lp_text(measurement.unwrap_or(&alert.rule)));
    let tags = [
        ("key", alert.key_text.as_str()),
        ("severity", alert.severity.as_str()),
        ("kind", alert.kind.as_str()),
        ("name", alert.name.as_str()),
    ];
    for (tag, value) in tags {
        // Line protocol has no empty tag value.
        if !value.is_empty() {
            p = p.tag(tag, lp_text(value));
        }
    }
    let mut any = false;
    if let Json::Object(fields) = alert.parsed().get("fields").unwrap_or(&Json::Null) {
        for (name, value) in fields {
            if name.is_empty() {
                continue;
            }
            let value = match value {
                Json::Bool(b) => FieldValue::Bool(*b),
                Json::Number(n) => match n.as_i64() {
                    Some(i) => FieldValue::I64(i),
                    None => match n.as_f64() {
                        Some(f) if f.is_finite() => FieldValue::F64(f),
                        _ => continue,
                    },
                },
                _ => continue,
            };
            p = p.field(lp_text(name), value);
            any = true;
        }
    }
    if !any {
        p = p.field("count", 1i64);
    }
    p.timestamp(alert.event_time)
        .build()
        .map_err(|e| format!("cannot build the InfluxDB point: {e}"))
}

/// `alert` as one line of line protocol, newline included.
pub fn line(alert: &OutAlert, measurement: Option<&str>) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    point(alert, measurement)?
        .write_data_point_to(&mut out)
        .map_err(|e| format!("cannot render the InfluxDB point: {e}"))?;
    Ok(out)
}

impl Deliver for InfluxSink {
    fn batch_limit(&self) -> usize {
        self.batch
    }

    fn retries(&self) -> u64 {
        self.retries
    }

    fn deliver<'a>(
        &'a mut self,
        batch: &'a [Arc<OutAlert>],
        stop: &'a CancellationToken,
    ) -> DeliverFuture<'a> {
        Box::pin(async move {
            // Rendered once: every attempt sends these bytes.
            let mut body = Vec::new();
            let mut outcomes: Vec<Option<Outcome>> = Vec::with_capacity(batch.len());
            for alert in batch {
                match line(alert, self.measurement.as_deref()) {
                    Ok(l) => {
                        body.extend_from_slice(&l);
                        outcomes.push(None);
                    }
                    Err(reason) => outcomes.push(Some(Outcome::Failed {
                        reason,
                        attempts: 0,
                    })),
                }
            }
            let settled = |outcomes: Vec<Option<Outcome>>, o: Outcome| -> Vec<Outcome> {
                outcomes
                    .into_iter()
                    .map(|x| x.unwrap_or_else(|| o.clone()))
                    .collect()
            };
            if body.is_empty() {
                return outcomes.into_iter().flatten().collect();
            }
            let body = Bytes::from(body);
            let mut attempts = Attempts::new(&self.retry);
            loop {
                let attempt = attempts.start();
                let (retryable, reason, retry_after) = match self.post(body.clone()).await {
                    Ok(()) => return settled(outcomes, Outcome::Delivered),
                    Err(e) => e,
                };
                if !retryable || !attempts.may_retry() {
                    tracing::warn!(sink = %self.name, attempt, %reason, points = batch.len(),
                        "InfluxDB write failed; the batch goes to the dead letters");
                    return settled(
                        outcomes,
                        Outcome::Failed {
                            reason,
                            attempts: attempt,
                        },
                    );
                }
                tracing::warn!(sink = %self.name, attempt, %reason, ?retry_after,
                    "InfluxDB write failed; retrying");
                self.retries += 1;
                if !attempts.wait(retry_after, stop).await {
                    // The settled prefix only; the rest is written on the next start.
                    return outcomes.into_iter().map_while(|o| o).collect();
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::compile::hir::Severity;
    use crate::delivery::AlertKind;

    fn alert(key: &str, fields: &str) -> OutAlert {
        OutAlert {
            id: "a1".into(),
            rule: "congestion".into(),
            name: "congestion".into(),
            kind: AlertKind::Match,
            severity: Severity::Warning,
            key_text: key.into(),
            event_time: 1_717_236_000_000_000_000,
            emitted_at: 0,
            json: format!("{{\"id\":\"a1\",\"fields\":{fields}}}"),
        }
    }

    fn text(a: &OutAlert, m: Option<&str>) -> String {
        String::from_utf8(line(a, m).unwrap()).unwrap()
    }

    #[test]
    fn a_point_per_alert() {
        let a = alert(
            "cam-17",
            r#"{"speed":12.5,"vehicles":41,"jammed":true,"where":"A1","n":null,"o":{"x":1},"big":18446744073709551615}"#,
        );
        assert_eq!(
            text(&a, None),
            "congestion,key=cam-17,kind=match,name=congestion,severity=warning \
             big=18446744073709552000,jammed=t,speed=12.5,vehicles=41i 1717236000000000000\n"
        );
        // A float that happens to be whole stays a float field.
        assert!(text(&alert("k", r#"{"avg":42.0}"#), None).contains(" avg=42 "));
    }

    #[test]
    fn no_number_means_count_and_no_key_means_no_tag() {
        assert_eq!(
            text(&alert("", r#"{"where":"A1"}"#), Some("alerts")),
            "alerts,kind=match,name=congestion,severity=warning count=1i 1717236000000000000\n"
        );
        let mut broken = alert("k", "{}");
        broken.json = "not json".into();
        assert!(text(&broken, None).contains(" count=1i "));
    }

    #[test]
    fn delimiters_backslashes_and_line_breaks_cannot_break_the_line() {
        let a = alert("line=L1,station=3 x\\", r#"{"a b,c=\\":1,"nl\nx":2}"#);
        assert_eq!(
            text(&a, Some("m,x y")),
            "m\\,x\\ y,key=line\\=L1\\,station\\=3\\ x\\\\,kind=match,name=congestion,\
             severity=warning a\\ b\\,c\\=\\\\=1i,nl\\ x=2i 1717236000000000000\n"
        );
    }

    #[test]
    fn the_write_url_keeps_a_base_path() {
        assert_eq!(
            write_url("http://h:8086", "my org", "b&1")
                .unwrap()
                .as_str(),
            "http://h:8086/api/v2/write?org=my+org&bucket=b%261&precision=ns"
        );
        assert_eq!(
            write_url("https://h/influx/", "o", "b").unwrap().as_str(),
            "https://h/influx/api/v2/write?org=o&bucket=b&precision=ns"
        );
        assert!(write_url("h:8086", "o", "b").is_err());
        assert!(write_url("not a url", "o", "b").is_err());
    }

    #[test]
    fn long_bodies_are_shortened_on_a_character_boundary() {
        let s = "é".repeat(400);
        let short = shorten(&s);
        assert!(short.len() <= MAX_REASON_BODY + 3);
        assert!(short.ends_with("..."));
    }
}
