//! The InfluxDB sink against a real InfluxDB-compatible server (VictoriaMetrics, from the
//! Debian package `victoria-metrics`, started by each test on a loopback port) and against
//! small axum servers that answer what a test needs (a 400, a 503 then a 204).
//!
//! Without the `victoria-metrics` binary the VictoriaMetrics test is skipped with a printed
//! reason, except in CI (`CI` set), where it fails.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::IntoResponse;
use serde_json::{Value as Json, json};
use tern::compile::hir::Severity;
use tern::config::{InfluxConfig, RetryConfig, SecretRef, SecretSource};
use tern::delivery::influx::{InfluxSink, line};
use tern::delivery::{AlertKind, Deliver, OutAlert, Outcome};
use tokio_util::sync::CancellationToken;

/// 2024-06-01T10:00:00Z.
const T0: i64 = 1_717_236_000_000_000_000;

fn alert(
    id: &str,
    rule: &str,
    key: &str,
    kind: AlertKind,
    severity: Severity,
    event_time: i64,
    fields: Json,
) -> Arc<OutAlert> {
    let json = json!({
        "id": id, "rule": rule, "name": rule, "kind": kind.as_str(), "key": key,
        "severity": severity.as_str(), "event_time": "irrelevant here",
        "emitted_at": "irrelevant here", "fields": fields, "events": {},
    });
    Arc::new(OutAlert {
        id: id.into(),
        rule: rule.into(),
        name: rule.into(),
        kind,
        severity,
        key_text: key.into(),
        event_time,
        emitted_at: T0,
        json: json.to_string(),
    })
}

fn config(url: &str, token_file: &Path, retry: RetryConfig) -> InfluxConfig {
    InfluxConfig {
        url: url.into(),
        org: "tern org".into(),
        bucket: "alerts".into(),
        token: SecretRef {
            source: SecretSource::File(token_file.to_path_buf()),
            span: Default::default(),
        },
        measurement: None,
        timeout: Duration::from_secs(10),
        batch: 500,
        retry,
    }
}

fn token_file(dir: &Path) -> PathBuf {
    let path = dir.join("token");
    std::fs::write(&path, "s3cret-token\n").unwrap();
    path
}

fn fast_retry(max_attempts: u32) -> RetryConfig {
    RetryConfig {
        max_attempts,
        initial_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
    }
}

// ---------------------------------------------------------------- VictoriaMetrics

fn victoria_metrics_binary() -> Option<PathBuf> {
    let candidates = [
        "/usr/bin/victoria-metrics",
        "/usr/local/bin/victoria-metrics",
    ];
    let on_path = std::env::var_os("PATH").into_iter().flat_map(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("victoria-metrics"))
            .collect::<Vec<_>>()
    });
    candidates
        .iter()
        .map(PathBuf::from)
        .chain(on_path)
        .find(|p| p.is_file())
}

/// A VictoriaMetrics process on a loopback port, killed on drop.
struct Victoria {
    child: Child,
    base: String,
    log: PathBuf,
}

impl Victoria {
    async fn start(binary: &Path, dir: &Path) -> Victoria {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = dir.join("victoria-metrics.log");
        let child = Command::new(binary)
            .arg(format!(
                "-storageDataPath={}",
                dir.join("vm-data").display()
            ))
            .arg(format!("-httpListenAddr=127.0.0.1:{port}"))
            // The test's event times are fixed dates in the past.
            .arg("-retentionPeriod=100y")
            .arg("-search.latencyOffset=0")
            .arg("-search.disableCache")
            .arg("-loggerLevel=WARN")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut vm = Victoria {
            child,
            base: format!("http://127.0.0.1:{port}"),
            log,
        };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = vm.child.try_wait().unwrap() {
                panic!("victoria-metrics exited ({status}):\n{}", vm.log());
            }
            if let Ok(r) = http.get(format!("{}/health", vm.base)).send().await
                && r.status().is_success()
            {
                return vm;
            }
            assert!(
                Instant::now() < deadline,
                "victoria-metrics did not become healthy:\n{}",
                vm.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Every series whose name matches `regex`, as `/api/v1/export` lines, once there are
    /// `count` of them (ingested data becomes searchable after a flush).
    async fn export(&self, regex: &str, count: usize) -> Vec<Json> {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            http.get(format!("{}/internal/force_flush", self.base))
                .send()
                .await
                .unwrap();
            let text = http
                .get(format!("{}/api/v1/export", self.base))
                .query(&[("match[]", format!("{{__name__=~\"{regex}\"}}"))])
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let series: Vec<Json> = text
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            if series.len() >= count {
                return series;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {count} series:\n{text}\n{}",
                series.len(),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Victoria {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The series named `name` whose labels include `labels`.
fn series<'a>(all: &'a [Json], name: &str, labels: &[(&str, &str)]) -> &'a Json {
    all.iter()
        .find(|s| {
            s["metric"]["__name__"] == name && labels.iter().all(|(k, v)| s["metric"][*k] == *v)
        })
        .unwrap_or_else(|| panic!("no series {name} {labels:?} in {all:#?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn points_are_written_to_victoria_metrics_and_read_back() {
    let Some(binary) = victoria_metrics_binary() else {
        if std::env::var_os("CI").is_some() {
            panic!("victoria-metrics is not installed, and CI must run this test (.ci/setup)");
        }
        eprintln!("SKIPPED: victoria-metrics is not installed (apt-get install victoria-metrics)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let vm = Victoria::start(&binary, dir.path()).await;
    let token = token_file(dir.path());
    let mut sink = InfluxSink::new("influx", &config(&vm.base, &token, fast_retry(3))).unwrap();
    assert_eq!(sink.batch_limit(), 500);

    let t1 = T0 + 123_000_000;
    let t2 = T0 + 60_000_000_000;
    let t3 = T0 + 120_500_000_000;
    let batch = vec![
        alert(
            "a1",
            "congestion",
            "cam-17",
            AlertKind::Match,
            Severity::Warning,
            t1,
            json!({"speed": 12.5, "vehicles": 41, "jammed": true, "where": "A1"}),
        ),
        alert(
            "a2",
            "congestion",
            "line=L1,station=3",
            AlertKind::Timeout,
            Severity::Critical,
            t2,
            json!({"speed": -3.25, "jammed": false}),
        ),
        // Keyless, and nothing numeric: a `count` field, no `key` tag.
        alert(
            "a3",
            "overheat",
            "",
            AlertKind::Match,
            Severity::Info,
            t3,
            json!({"where": "hall 2"}),
        ),
    ];
    let stop = CancellationToken::new();
    let outcomes = sink.deliver(&batch, &stop).await;
    assert_eq!(outcomes, vec![Outcome::Delivered; 3]);

    // A sink with a measurement of its own.
    let mut named = config(&vm.base, &token, fast_retry(3));
    named.measurement = Some("tern_alerts".into());
    let mut named = InfluxSink::new("named", &named).unwrap();
    let outcomes = named.deliver(&batch[..1], &stop).await;
    assert_eq!(outcomes, vec![Outcome::Delivered]);

    // congestion: speed x2 (two label sets), vehicles, jammed x2; overheat: count;
    // tern_alerts: speed, vehicles, jammed.
    let all = vm
        .export("congestion_.*|overheat_.*|tern_alerts_.*", 9)
        .await;
    assert_eq!(all.len(), 9, "{all:#?}");
    let ms = |ns: i64| json!([ns / 1_000_000]);

    let a1 = [
        ("key", "cam-17"),
        ("severity", "warning"),
        ("kind", "match"),
        ("name", "congestion"),
    ];
    let s = series(&all, "congestion_speed", &a1);
    assert_eq!(s["values"], json!([12.5]));
    assert_eq!(s["timestamps"], ms(t1));
    assert_eq!(
        s["metric"].as_object().unwrap().len(),
        5,
        "only the four tags and the name: {s}"
    );
    let s = series(&all, "congestion_vehicles", &a1);
    assert_eq!(s["values"], json!([41]));
    assert_eq!(s["timestamps"], ms(t1));
    assert_eq!(series(&all, "congestion_jammed", &a1)["values"], json!([1]));

    let a2 = [
        ("key", "line=L1,station=3"),
        ("severity", "critical"),
        ("kind", "timeout"),
    ];
    let s = series(&all, "congestion_speed", &a2);
    assert_eq!(s["values"], json!([-3.25]));
    assert_eq!(s["timestamps"], ms(t2));
    assert_eq!(series(&all, "congestion_jammed", &a2)["values"], json!([0]));

    let s = series(&all, "overheat_count", &[("severity", "info")]);
    assert_eq!(s["values"], json!([1]));
    assert_eq!(s["timestamps"], ms(t3));
    assert!(s["metric"].get("key").is_none(), "no empty key tag: {s}");
    assert!(
        !all.iter()
            .any(|s| s["metric"]["__name__"] == "overheat_where"),
        "string fields are not written"
    );

    let s = series(&all, "tern_alerts_speed", &[("name", "congestion")]);
    assert_eq!(s["values"], json!([12.5]));
    assert_eq!(s["timestamps"], ms(t1));
}

// ---------------------------------------------------------------- scripted servers

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    uri: String,
    authorization: String,
    body: Vec<u8>,
}

/// A server that answers the n-th request with `script[n]` (the last answer repeats).
#[derive(Clone)]
struct Scripted {
    script: Arc<Vec<(StatusCode, Option<&'static str>, &'static str)>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

async fn scripted(
    State(s): State<Scripted>,
    uri: Uri,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> impl IntoResponse {
    let n = {
        let mut seen = s.seen.lock().unwrap();
        seen.push(Seen {
            uri: uri.to_string(),
            authorization: headers
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default(),
            body: body.to_vec(),
        });
        seen.len() - 1
    };
    let (status, retry_after, text) = s.script[n.min(s.script.len() - 1)];
    let mut response = (status, text).into_response();
    if let Some(r) = retry_after {
        response
            .headers_mut()
            .insert("retry-after", r.parse().unwrap());
    }
    response
}

async fn serve(
    script: Vec<(StatusCode, Option<&'static str>, &'static str)>,
) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let state = Scripted {
        script: Arc::new(script),
        seen: Arc::default(),
    };
    let seen = Arc::clone(&state.seen);
    let app = axum::Router::new()
        .fallback(axum::routing::post(scripted))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (format!("http://{addr}"), seen)
}

fn three() -> Vec<Arc<OutAlert>> {
    (0..3)
        .map(|i| {
            alert(
                &format!("id{i}"),
                "r",
                &format!("k{i}"),
                AlertKind::Match,
                Severity::Error,
                T0 + i,
                json!({"i": i}),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_400_fails_the_whole_batch_after_one_attempt() {
    let (url, seen) = serve(vec![(
        StatusCode::BAD_REQUEST,
        None,
        "{\"code\":\"invalid\",\"message\":\"unable to parse 'r,k=x': missing fields\"}",
    )])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut sink = InfluxSink::new(
        "influx",
        &config(&url, &token_file(dir.path()), fast_retry(5)),
    )
    .unwrap();
    let outcomes = sink.deliver(&three(), &CancellationToken::new()).await;
    assert_eq!(outcomes.len(), 3);
    for o in &outcomes {
        let Outcome::Failed { reason, attempts } = o else {
            panic!("{o:?}")
        };
        assert_eq!(*attempts, 1);
        assert!(reason.contains("400"), "{reason}");
        assert!(reason.contains("unable to parse"), "{reason}");
    }
    assert_eq!(seen.lock().unwrap().len(), 1, "a 400 is not retried");
}

#[tokio::test]
async fn retries_send_byte_identical_bodies_until_written() {
    let (url, seen) = serve(vec![
        (StatusCode::SERVICE_UNAVAILABLE, Some("0"), "busy"),
        (StatusCode::TOO_MANY_REQUESTS, Some("0"), "slow down"),
        (StatusCode::NO_CONTENT, None, ""),
    ])
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut sink = InfluxSink::new(
        "influx",
        &config(&url, &token_file(dir.path()), fast_retry(5)),
    )
    .unwrap();
    let batch = three();
    let outcomes = sink.deliver(&batch, &CancellationToken::new()).await;
    assert_eq!(outcomes, vec![Outcome::Delivered; 3]);

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    let expected: Vec<u8> = batch.iter().flat_map(|a| line(a, None).unwrap()).collect();
    for s in &seen {
        assert_eq!(
            String::from_utf8_lossy(&s.body),
            String::from_utf8_lossy(&expected)
        );
        assert_eq!(s.body, seen[0].body);
        assert_eq!(
            s.uri,
            "/api/v2/write?org=tern+org&bucket=alerts&precision=ns"
        );
        assert_eq!(s.authorization, "Token s3cret-token");
    }
    assert_eq!(
        String::from_utf8(expected).unwrap().lines().next().unwrap(),
        format!("r,key=k0,kind=match,name=r,severity=error i=0i {T0}")
    );
}

#[tokio::test]
async fn the_last_failed_attempt_fails_the_batch_and_stop_cuts_the_wait_short() {
    let (url, seen) = serve(vec![(StatusCode::BAD_GATEWAY, None, "down")]).await;
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(dir.path());
    let mut sink = InfluxSink::new("influx", &config(&url, &token, fast_retry(3))).unwrap();
    let outcomes = sink.deliver(&three(), &CancellationToken::new()).await;
    assert!(
        outcomes.iter().all(
            |o| matches!(o, Outcome::Failed { attempts: 3, reason } if reason.contains("502"))
        ),
        "{outcomes:?}"
    );
    assert_eq!(seen.lock().unwrap().len(), 3);

    // A long Retry-After (capped at max_delay, here an hour) and a stop: no outcome at all,
    // the batch stays in the outbox.
    let (url, seen) = serve(vec![(StatusCode::SERVICE_UNAVAILABLE, Some("3600"), "")]).await;
    let mut slow = fast_retry(3);
    slow.max_delay = Duration::from_secs(3600);
    let mut sink = InfluxSink::new("influx", &config(&url, &token, slow)).unwrap();
    let stop = CancellationToken::new();
    let batch = three();
    let delivering = sink.deliver(&batch, &stop);
    let cancel = stop.clone();
    let started = Instant::now();
    // Stopped once the first attempt was answered, while the sink waits to retry.
    tokio::spawn(async move {
        while seen.lock().unwrap().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        cancel.cancel();
    });
    let outcomes = tokio::time::timeout(Duration::from_secs(10), delivering)
        .await
        .expect("stop ends the wait");
    assert!(outcomes.is_empty(), "{outcomes:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn an_unreachable_server_is_retried_then_failed_and_a_missing_token_is_an_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(dir.path());
    let mut sink = InfluxSink::new(
        "influx",
        &config(&format!("http://127.0.0.1:{port}"), &token, fast_retry(2)),
    )
    .unwrap();
    let outcomes = sink.deliver(&three()[..1], &CancellationToken::new()).await;
    let [
        Outcome::Failed {
            reason,
            attempts: 2,
        },
    ] = outcomes.as_slice()
    else {
        panic!("{outcomes:?}")
    };
    assert!(reason.contains("cannot reach InfluxDB"), "{reason}");

    let missing = config(
        "http://127.0.0.1:1",
        &dir.path().join("nope"),
        fast_retry(2),
    );
    let e = InfluxSink::new("influx", &missing)
        .err()
        .expect("no token, no sink");
    assert!(format!("{e:#}").contains("sink `influx`"), "{e:#}");
}
