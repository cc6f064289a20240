//! The admin endpoint of `tern run`, through the real binary, its embedded broker and HTTP:
//! metrics scraped and parsed after a known input, the bearer token, rule reload and one
//! key's partial matches, and the refusal of an exposed endpoint without a token.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Publisher, Tern, free_port, jsonl, profile_no_lateness, run_refused, wait_until};
use serde_json::Value;

const TOKEN_VAR: &str = "TERN_TEST_ADMIN_TOKEN";
const TOKEN: &str = "admin-test-token-7f3a9c";

/// Two very high readings in a row: after one, the key holds a partial match.
const PAIR: &str = r#"
rule pair {
    from reading
    key device
    match a: reading where value > 1000.0
        next b: reading where value > 1000.0
    emit pair severity critical { first: a.seq, second: b.seq }
    to alerts
}
"#;

fn high(threshold: &str) -> String {
    format!(
        "rule high {{\n    from reading\n    key device\n    match r: reading where value > {threshold}\n    \
         emit high severity warning {{ seq: r.seq }}\n    to alerts\n}}\n"
    )
}

const T0: i64 = 1_709_280_000_000;

fn reading(device: &str, seq: i64, value: f64) -> (String, Vec<u8>) {
    (
        format!("sensors/{device}/reading"),
        format!(
            r#"{{"ts": {}, "seq": {seq}, "value": {value:?}}}"#,
            T0 + seq * 1000
        )
        .into_bytes(),
    )
}

/// A project in `dir` with the embedded broker on `mqtt` and the admin endpoint on `admin`.
fn project(dir: &Path, mqtt: u16, admin: u16) -> PathBuf {
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    std::fs::create_dir_all(dir.join("devices")).unwrap();
    std::fs::write(dir.join("devices/sensor.toml"), profile_no_lateness()).unwrap();
    std::fs::write(dir.join("rules/high.tern"), high("100.0")).unwrap();
    std::fs::write(dir.join("rules/pair.tern"), PAIR).unwrap();
    let config = format!(
        "watch_rules = false\n\n[embedded_broker]\nlisten = \"127.0.0.1:{mqtt}\"\n\n\
         [admin]\nlisten = \"127.0.0.1:{admin}\"\ntoken_env = \"{TOKEN_VAR}\"\n\n\
         [sinks.alerts]\ntype = \"file\"\npath = \"out/alerts.jsonl\"\n\n\
         [dead_letter]\nfile = \"out/dead.jsonl\"\n\n[logging]\nformat = \"json\"\n"
    );
    let path = dir.join("tern.toml");
    std::fs::write(&path, config).unwrap();
    path
}

/// Starts tern on a fresh project; returns it with an HTTP client for its admin endpoint.
fn start(dir: &Path) -> (Tern, Http, u16) {
    let (mqtt, admin) = (free_port(), free_port());
    let config = project(dir, mqtt, admin);
    let mut tern = Tern::start(dir, &config, &[(TOKEN_VAR, TOKEN)]);
    tern.wait_ready();
    (tern, Http::new(admin), mqtt)
}

/// A small blocking HTTP client over reqwest.
struct Http {
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
    base: String,
}

struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

impl Http {
    fn new(port: u16) -> Http {
        Http {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            client: reqwest::Client::new(),
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    fn call(&self, method: reqwest::Method, path: &str, token: Option<&str>) -> Reply {
        let mut request = self
            .client
            .request(method, format!("{}{path}", self.base))
            .timeout(Duration::from_secs(70));
        if let Some(t) = token {
            request = request.bearer_auth(t);
        }
        self.runtime.block_on(async {
            let response = request.send().await.unwrap();
            Reply {
                status: response.status().as_u16(),
                headers: response.headers().clone(),
                body: response.text().await.unwrap(),
            }
        })
    }

    fn get(&self, path: &str, token: Option<&str>) -> Reply {
        self.call(reqwest::Method::GET, path, token)
    }

    fn post(&self, path: &str, token: Option<&str>) -> Reply {
        self.call(reqwest::Method::POST, path, token)
    }

    /// `/metrics` once `cond` holds for it (within 10 s).
    fn metrics_when(&self, what: &str, cond: impl Fn(&Metrics) -> bool) -> Metrics {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let m = self.metrics();
            if cond(&m) {
                return m;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {what}: {m:#?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `/metrics` with the token, parsed.
    fn metrics(&self) -> Metrics {
        let r = self.get("/metrics", Some(TOKEN));
        assert_eq!(r.status, 200, "{}", r.body);
        let kind = r.headers["content-type"].to_str().unwrap();
        assert!(kind.starts_with("application/openmetrics-text"), "{kind}");
        Metrics::parse(&r.body)
    }
}

/// Samples of a Prometheus / OpenMetrics text page: series (name and sorted labels) to value.
#[derive(Debug)]
struct Metrics(BTreeMap<(String, Vec<(String, String)>), f64>);

impl Metrics {
    fn parse(text: &str) -> Metrics {
        let mut samples = BTreeMap::new();
        for line in text.lines() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let name_end = line.find(['{', ' ']).unwrap();
            let name = line[..name_end].to_string();
            let mut labels = Vec::new();
            let mut rest = &line[name_end..];
            if let Some(body) = rest.strip_prefix('{') {
                // label="value" pairs; values escape `"` and `\` with a backslash.
                let mut chars = body.char_indices().peekable();
                let mut key = String::new();
                let mut end = None;
                while let Some((i, c)) = chars.next() {
                    match c {
                        '}' => {
                            end = Some(i);
                            break;
                        }
                        ',' => {}
                        '=' => {
                            assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line}");
                            let mut value = String::new();
                            loop {
                                match chars.next().unwrap().1 {
                                    '\\' => value.push(chars.next().unwrap().1),
                                    '"' => break,
                                    c => value.push(c),
                                }
                            }
                            labels.push((std::mem::take(&mut key), value));
                        }
                        c => key.push(c),
                    }
                }
                rest = &body[end.unwrap() + 1..];
            }
            let value = rest.split_whitespace().next().unwrap();
            let value: f64 = match value {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v.parse().unwrap_or_else(|_| panic!("bad value in {line}")),
            };
            labels.sort();
            samples.insert((name, labels), value);
        }
        Metrics(samples)
    }

    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        labels.sort();
        self.0.get(&(name.to_string(), labels)).copied()
    }

    /// The value, which must be present.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no {name}{labels:?} in {self:#?}"))
    }
}

#[test]
fn metrics_count_a_known_input_and_the_token_guards_them() {
    let dir = tempfile::tempdir().unwrap();
    let (mut tern, http, mqtt) = start(dir.path());

    // 20 alert-worthy readings, 3 that are not JSON, 2 without a value, one late reading
    // and a quiet last one.
    let mut messages: Vec<(String, Vec<u8>)> =
        (1..=20).map(|s| reading("dev-1", s, 150.0)).collect();
    for i in 0..3 {
        // Distinct payloads: the same one again would be dropped as a redelivery.
        let payload = format!("{{not json {i}");
        messages.push(("sensors/dev-2/reading".into(), payload.into_bytes()));
    }
    for seq in [1, 2] {
        let payload = format!(r#"{{"ts": {}, "seq": {seq}}}"#, T0 + seq * 1000);
        messages.push(("sensors/dev-3/reading".into(), payload.into_bytes()));
    }
    messages.push(reading("dev-1", 30, 1.0));
    // Not the same payload as reading 5, which would be dropped as a redelivery.
    messages.push(reading("dev-1", 5, 151.0));
    let mut publisher = Publisher::connect(mqtt, "admin-test-pub", None);
    publisher.publish_all(&messages);

    let alerts = dir.path().join("out/alerts.jsonl");
    wait_until(Duration::from_secs(20), "20 alerts", || {
        jsonl(&alerts).len() >= 20
    });
    // The file sink wrote them and its counter moves right after; the engine may still be
    // taking the messages published after the last alert-worthy one.
    let m = http.metrics_when("every message and delivery counted", |m| {
        m.get("tern_sink_deliveries_total", &[("sink", "alerts")]) == Some(20.0)
            && m.get("tern_mqtt_messages_total", &[]) == Some(27.0)
    });
    let stream = [("stream", "reading")];
    assert_eq!(m.value("tern_mqtt_messages_total", &[]), 27.0);
    assert_eq!(m.value("tern_messages_total", &stream), 27.0);
    assert_eq!(m.value("tern_events_total", &stream), 21.0);
    assert_eq!(m.value("tern_late_events_total", &stream), 1.0);
    assert_eq!(
        m.value("tern_bad_messages_total", &[("reason", "invalid_json")]),
        3.0
    );
    assert_eq!(
        m.value("tern_bad_messages_total", &[("reason", "missing_field")]),
        2.0
    );
    assert_eq!(
        m.value("tern_bad_messages_total", &[("reason", "late")]),
        1.0
    );
    assert_eq!(m.value("tern_duplicate_messages_total", &[]), 0.0);
    let high = [("rule", "high"), ("severity", "warning")];
    assert_eq!(m.value("tern_alerts_total", &high), 20.0);
    assert_eq!(
        m.get(
            "tern_alerts_total",
            &[("rule", "pair"), ("severity", "critical")]
        ),
        Some(0.0)
    );
    let sink = [("sink", "alerts")];
    assert_eq!(m.value("tern_sink_failures_total", &sink), 0.0);
    assert_eq!(m.value("tern_sink_retries_total", &sink), 0.0);
    assert_eq!(m.value("tern_sink_queue_depth", &sink), 0.0);
    assert_eq!(m.value("tern_mqtt_connected", &[]), 1.0);
    assert_eq!(m.value("tern_mqtt_connections_total", &[]), 1.0);
    assert_eq!(m.value("tern_mqtt_reconnects_total", &[]), 0.0);
    assert!(m.value("tern_checkpoint_duration_seconds_count", &[]) >= 1.0);
    // The readings are from 2024: the watermark is far behind the wall clock.
    assert!(m.value("tern_watermark_lag_seconds", &stream) > 86_400.0);
    assert_eq!(m.value("tern_rule_keys", &[("rule", "high")]), 0.0);
    assert!(m.get("tern_events_per_second", &[]).is_some());

    // Health needs no token; everything else does, and a wrong one is refused alike.
    let health = http.get("/healthz", None);
    assert_eq!((health.status, health.body.as_str()), (200, "ok\n"));
    let ready = http.get("/readyz", None);
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert_eq!(ready.json()["state_open"], true);
    for token in [None, Some("wrong"), Some(&TOKEN[..TOKEN.len() - 1])] {
        let r = http.get("/metrics", token);
        assert_eq!(r.status, 401, "{token:?}: {}", r.body);
        assert_eq!(r.headers["www-authenticate"], "Bearer realm=\"tern\"");
        assert_eq!(http.get("/rules", token).status, 401);
        assert_eq!(http.post("/rules/reload", token).status, 401);
        assert_eq!(http.get("/rules/high/keys/dev-1", token).status, 401);
    }
    assert_eq!(http.get("/rules", Some(TOKEN)).status, 200);

    assert!(tern.stop().success());
    let log = tern.stderr_text();
    assert!(log.contains("admin request refused"), "{log}");
    assert!(!log.contains(TOKEN), "the token was logged");
}

#[test]
fn rules_reload_and_partial_matches_through_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (mut tern, http, mqtt) = start(d);

    let rules = http.get("/rules", Some(TOKEN));
    assert_eq!(rules.status, 200, "{}", rules.body);
    let names: Vec<String> = rules
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["high", "pair"]);

    // One very high reading: `pair` waits for a second one from dev-k. With no lateness the
    // rules see it as it arrives; a reading of another device follows, as traffic would.
    let mut publisher = Publisher::connect(mqtt, "admin-test-pub", None);
    publisher.publish_all(&[reading("dev-k", 1, 5000.0), reading("dev-z", 2, 1.0)]);
    let alerts = d.join("out/alerts.jsonl");
    wait_until(Duration::from_secs(20), "the high alert", || {
        jsonl(&alerts).len() == 1
    });
    let key = http.get("/rules/pair/keys/dev-k", Some(TOKEN));
    assert_eq!(key.status, 200, "{}", key.body);
    let info = key.json();
    assert_eq!(info["rule"], "pair");
    assert_eq!(info["key"], "dev-k");
    assert_eq!(
        info["partial_matches"].as_array().unwrap().len(),
        1,
        "{info}"
    );
    let none = http.get("/rules/pair/keys/dev-nobody", Some(TOKEN));
    assert_eq!(none.status, 404, "{}", none.body);
    assert_eq!(http.get("/rules/nope/keys/dev-k", Some(TOKEN)).status, 404);
    let m = http.metrics();
    assert_eq!(m.value("tern_rule_keys", &[("rule", "pair")]), 1.0);
    assert_eq!(
        m.value("tern_rule_partial_matches", &[("rule", "pair")]),
        1.0
    );

    // A changed rule is reported as changed; the other keeps its partial match.
    std::fs::write(d.join("rules/high.tern"), high("200.0")).unwrap();
    let reload = http.post("/rules/reload", Some(TOKEN));
    assert_eq!(reload.status, 200, "{}", reload.body);
    let outcome = reload.json();
    assert_eq!(outcome["outcome"], "reloaded", "{outcome}");
    assert_eq!(outcome["changed"], serde_json::json!(["high"]), "{outcome}");
    assert_eq!(outcome["kept"], serde_json::json!(["pair"]), "{outcome}");
    assert_eq!(http.get("/rules/pair/keys/dev-k", Some(TOKEN)).status, 200);
    let fingerprint = |http: &Http| {
        let rules = http.get("/rules", Some(TOKEN)).json();
        rules
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "high")
            .map(|r| r["fingerprint"].clone())
            .unwrap()
    };
    let reloaded = fingerprint(&http);

    // A broken rule set is refused with its diagnostics; the running rules go on.
    std::fs::write(
        d.join("rules/high.tern"),
        high("200.0").replace("value >", "valeu >"),
    )
    .unwrap();
    let refused = http.post("/rules/reload", Some(TOKEN));
    assert_eq!(refused.status, 422, "{}", refused.body);
    let outcome = refused.json();
    assert_eq!(outcome["outcome"], "rejected", "{outcome}");
    let diagnostics = outcome["diagnostics"].as_str().unwrap();
    assert!(diagnostics.contains("E201"), "{diagnostics}");
    assert!(diagnostics.contains("high.tern:4:"), "{diagnostics}");
    assert_eq!(fingerprint(&http), reloaded);
    // The running `high` still has the reloaded threshold: 150 is no alert, 250 is one.
    publisher.publish_all(&[
        reading("dev-j", 3, 150.0),
        reading("dev-j", 4, 250.0),
        reading("dev-z", 5, 1.0),
    ]);
    wait_until(Duration::from_secs(20), "the second high alert", || {
        jsonl(&alerts).len() == 2
    });
    assert_eq!(jsonl(&alerts)[1]["fields"]["seq"], 4);

    assert!(tern.stop().success());
}

#[test]
fn an_admin_endpoint_beyond_loopback_needs_a_token() {
    let dir = tempfile::tempdir().unwrap();
    let config = project(dir.path(), free_port(), free_port());
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text
        .replace("listen = \"127.0.0.1:", "listen = \"0.0.0.0:")
        .replace(&format!("token_env = \"{TOKEN_VAR}\"\n"), "");
    std::fs::write(&config, text).unwrap();
    let (code, err) = run_refused(dir.path(), &config);
    assert_eq!(code, Some(1));
    assert!(err.contains("error[E417]"), "{err}");
    assert!(err.contains("tern.toml:7:10"), "{err}");
    assert!(err.contains("set `token_env` or `token_file`"), "{err}");
}
