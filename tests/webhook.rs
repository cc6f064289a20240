//! The webhook sink against real HTTP servers on loopback: outages, refusals, `Retry-After`,
//! exhausted retries; signatures checked by the `standardwebhooks` reference crate; and the
//! tern receiver, as a library and as `tern webhook-receiver`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use standardwebhooks::Webhook;
use tempfile::TempDir;
use tern::compile::hir::Severity;
use tern::config::{RetryConfig, SecretRef, SecretSource, WebhookConfig};
use tern::delivery::receiver::{Receiver, ReceiverConfig, ReceiverEvent, ReceiverReport};
use tern::delivery::signing::{self, Secret};
use tern::delivery::webhook::WebhookSink;
use tern::delivery::{AlertKind, Deliver, OutAlert, Outcome};
use tern::lang::span::Span;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const OTHER_SECRET: &str = "whsec_dGhpcyBpcyBhbm90aGVyIGtleQ==";

fn alert(i: usize) -> Arc<OutAlert> {
    let id = format!("{i:04}aaaabbbbccccddddeeeeffff0000");
    Arc::new(OutAlert {
        id: id.clone(),
        rule: "congestion".into(),
        name: "congestion".into(),
        kind: AlertKind::Match,
        severity: Severity::Warning,
        key_text: format!("cam-{i}"),
        event_time: 1_700_000_000_000_000_000,
        emitted_at: 1_700_000_000_000_000_000,
        json: format!(
            r#"{{"id":"{id}","rule":"congestion","name":"congestion","kind":"match","key":"cam-{i}","severity":"warning","seq":{i}}}"#
        ),
    })
}

/// A sink configuration with `secrets` in a file (one per line) and a fast retry policy.
fn make_sink(url: &str, secrets: &[&str], retry: RetryConfig) -> (WebhookSink, Option<TempDir>) {
    let dir = (!secrets.is_empty()).then(|| tempfile::tempdir().unwrap());
    let secret = dir.as_ref().map(|d| {
        let path = d.path().join("webhook-secret");
        std::fs::write(&path, secrets.join("\n") + "\n").unwrap();
        SecretRef {
            source: SecretSource::File(path),
            span: Span::default(),
        }
    });
    let config = WebhookConfig {
        url: url.into(),
        secret,
        timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
        headers: [("X-Tenant".to_owned(), "t1".to_owned())].into(),
        retry,
    };
    (WebhookSink::new("hook", &config).unwrap(), dir)
}

fn fast_retry(max_attempts: u32) -> RetryConfig {
    RetryConfig {
        max_attempts,
        initial_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
    }
}

async fn deliver_each(sink: &mut WebhookSink, alerts: &[Arc<OutAlert>]) -> Vec<Outcome> {
    let stop = CancellationToken::new();
    let mut out = Vec::new();
    for a in alerts {
        // One alert per call, as the dispatcher does with batch_limit 1.
        out.extend(sink.deliver(std::slice::from_ref(a), &stop).await);
    }
    out
}

// ---- a scripted test receiver, verifying with the standardwebhooks crate --------------------

/// One request as the test receiver saw it.
#[derive(Debug, Clone)]
struct Seen {
    id: String,
    body_id: String,
    verified: bool,
    status: u16,
    at: Instant,
    user_agent: String,
    content_type: String,
    tenant: String,
}

/// The reply to a request: status, optional Retry-After, body.
struct Reply(u16, Option<&'static str>, &'static str);

/// Decides the reply from the alert id, the how-many-th request for that id (1-based), and the
/// how-many-th request overall.
type Script = dyn Fn(&str, usize, usize) -> Reply + Send + Sync;

#[derive(Clone)]
struct Scripted {
    webhook: Arc<Webhook>,
    script: Arc<Script>,
    log: Arc<Mutex<Vec<Seen>>>,
}

async fn scripted_handler(State(s): State<Scripted>, headers: HeaderMap, body: Bytes) -> Response {
    let verified = s.webhook.verify(&body, &headers).is_ok();
    let text = |h: &str| {
        headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let id = text("webhook-id");
    let body_id = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["id"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let mut log = s.log.lock().unwrap();
    let nth_for_id = log.iter().filter(|r| r.id == id).count() + 1;
    let Reply(status, retry_after, reply_body) = (s.script)(&id, nth_for_id, log.len() + 1);
    log.push(Seen {
        id,
        body_id,
        verified,
        status,
        at: Instant::now(),
        user_agent: text("user-agent"),
        content_type: text("content-type"),
        tenant: text("x-tenant"),
    });
    drop(log);
    let mut response = (StatusCode::from_u16(status).unwrap(), reply_body).into_response();
    if let Some(ra) = retry_after {
        response
            .headers_mut()
            .insert("retry-after", HeaderValue::from_static(ra));
    }
    response
}

struct TestServer {
    url: String,
    log: Arc<Mutex<Vec<Seen>>>,
    stop: CancellationToken,
}

impl TestServer {
    fn log(&self) -> Vec<Seen> {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Serves `script` on `listener`, first dropping `drop_first` connections unanswered (a
/// receiver that is down: the sink sees a connection closed before any response).
async fn serve_script(
    listener: TcpListener,
    drop_first: usize,
    script: impl Fn(&str, usize, usize) -> Reply + Send + Sync + 'static,
) -> TestServer {
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let state = Scripted {
        webhook: Arc::new(Webhook::new(SECRET).unwrap()),
        script: Arc::new(script),
        log: Arc::clone(&log),
    };
    let app = axum::Router::new()
        .fallback(scripted_handler)
        .with_state(state);
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        for _ in 0..drop_first {
            let (conn, _) = listener.accept().await.unwrap();
            drop(conn);
        }
        axum::serve(listener, app)
            .with_graceful_shutdown(s.cancelled_owned())
            .await
            .unwrap();
    });
    TestServer {
        url: format!("http://{addr}/hooks/tern"),
        log,
        stop,
    }
}

async fn loopback() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").await.unwrap()
}

// ---- 1. outage then recovery -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_then_recovery_delivers_every_alert_once_in_order() {
    // Down (5 connections dropped), then failing (5 requests answered 503), then up.
    let server = serve_script(loopback().await, 5, |_, _, total| {
        if total <= 5 {
            Reply(503, None, "starting up")
        } else {
            Reply(200, None, "")
        }
    })
    .await;
    let (mut sink, _dir) = make_sink(&server.url, &[SECRET], fast_retry(100));
    let alerts: Vec<_> = (0..50).map(alert).collect();

    let outcomes = deliver_each(&mut sink, &alerts).await;

    assert_eq!(outcomes, vec![Outcome::Delivered; 50]);
    let log = server.log();
    let accepted: Vec<&str> = log
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| r.id.as_str())
        .collect();
    let expected: Vec<&str> = alerts.iter().map(|a| a.id.as_str()).collect();
    assert_eq!(accepted, expected, "each alert accepted once, in order");
    // The first alert took the whole outage: every 503 was a retry of it, with its id.
    let failed: Vec<&Seen> = log.iter().filter(|r| r.status == 503).collect();
    assert_eq!(failed.len(), 5);
    assert!(failed.iter().all(|r| r.id == alerts[0].id), "{failed:?}");
    for r in &log {
        assert!(r.verified, "standardwebhooks rejected a signature: {r:?}");
        assert_eq!(r.id, r.body_id, "webhook-id is the alert id");
        assert!(r.user_agent.starts_with("tern/"), "{}", r.user_agent);
        assert_eq!(r.content_type, "application/json");
        assert_eq!(r.tenant, "t1");
    }
}

// ---- 2. a refused alert ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_fails_that_alert_at_once_and_the_rest_go_through() {
    let bad = alert(3).id.clone();
    let bad_in_script = bad.clone();
    let server = serve_script(loopback().await, 0, move |id, _, _| {
        if id == bad_in_script {
            Reply(400, None, "{\"error\": \"unknown field seq\"}")
        } else {
            Reply(204, None, "")
        }
    })
    .await;
    let (mut sink, _dir) = make_sink(&server.url, &[SECRET], fast_retry(5));
    let alerts: Vec<_> = (0..6).map(alert).collect();

    let outcomes = deliver_each(&mut sink, &alerts).await;

    for (i, o) in outcomes.iter().enumerate() {
        if i == 3 {
            assert_eq!(
                o,
                &Outcome::Failed {
                    reason: "HTTP 400 Bad Request: {\"error\": \"unknown field seq\"}".into(),
                    attempts: 1
                }
            );
        } else {
            assert_eq!(o, &Outcome::Delivered, "alert {i}");
        }
    }
    assert_eq!(outcomes.len(), 6);
    assert_eq!(server.log().iter().filter(|r| r.id == bad).count(), 1);
}

// ---- 3. what is retried, and how -------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_on_429_and_503_is_honoured() {
    for status in [429, 503] {
        let server = serve_script(loopback().await, 0, move |_, nth, _| {
            if nth == 1 {
                Reply(status, Some("1"), "slow down")
            } else {
                Reply(200, None, "")
            }
        })
        .await;
        // Without the header the next try would come after at most 10 ms.
        let retry = RetryConfig {
            max_attempts: 3,
            initial_delay: Duration::from_millis(10),
            max_delay: Duration::from_secs(5),
        };
        let (mut sink, _dir) = make_sink(&server.url, &[SECRET], retry);

        let outcomes = deliver_each(&mut sink, &[alert(1)]).await;

        assert_eq!(outcomes, vec![Outcome::Delivered]);
        let log = server.log();
        assert_eq!(log.len(), 2);
        let gap = log[1].at - log[0].at;
        assert!(
            gap >= Duration::from_millis(950),
            "{status}: retried after {gap:?}"
        );
        assert!(log.iter().all(|r| r.verified));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_408_and_5xx_are_retried() {
    for status in [408, 503, 500, 502] {
        let server = serve_script(loopback().await, 0, move |_, nth, _| {
            if nth <= 2 {
                Reply(status, None, "try later")
            } else {
                Reply(200, None, "")
            }
        })
        .await;
        let (mut sink, _dir) = make_sink(&server.url, &[SECRET], fast_retry(3));
        let outcomes = deliver_each(&mut sink, &[alert(7)]).await;
        assert_eq!(outcomes, vec![Outcome::Delivered], "status {status}");
        assert_eq!(server.log().len(), 3, "status {status}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_attempts_fail_with_the_last_response() {
    let server = serve_script(loopback().await, 0, |_, nth, _| {
        if nth < 4 {
            Reply(502, None, "bad gateway")
        } else {
            Reply(500, None, "database is down")
        }
    })
    .await;
    let (mut sink, _dir) = make_sink(&server.url, &[SECRET], fast_retry(4));

    let outcomes = deliver_each(&mut sink, &[alert(2)]).await;

    assert_eq!(
        outcomes,
        vec![Outcome::Failed {
            reason: "HTTP 500 Internal Server Error: database is down".into(),
            attempts: 4
        }]
    );
    let log = server.log();
    assert_eq!(log.len(), 4);
    assert!(log.iter().all(|r| r.id == alert(2).id && r.verified));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_port_fails_after_max_attempts_with_the_connect_error() {
    // Reserve a port, then close it: nothing listens there.
    let addr: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let (mut sink, _dir) = make_sink(
        &format!("http://{addr}/services/T0/TOKEN-IN-PATH"),
        &[],
        fast_retry(3),
    );
    let outcomes = deliver_each(&mut sink, &[alert(1)]).await;
    match &outcomes[..] {
        [Outcome::Failed { reason, attempts }] => {
            assert_eq!(*attempts, 3);
            assert!(reason.starts_with("cannot connect"), "{reason}");
            // Reasons go to logs and dead letters: no URL, so no token from its path.
            assert!(!reason.contains("TOKEN-IN-PATH"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_while_waiting_to_retry_returns_the_outcomes_so_far() {
    let first = alert(0).id.clone();
    let server = serve_script(loopback().await, 0, move |id, _, _| {
        if id == first {
            Reply(200, None, "")
        } else {
            Reply(503, None, "down")
        }
    })
    .await;
    let retry = RetryConfig {
        max_attempts: 1000,
        initial_delay: Duration::from_millis(20),
        max_delay: Duration::from_millis(20),
    };
    let (mut sink, _dir) = make_sink(&server.url, &[SECRET], retry);
    let stop = CancellationToken::new();
    let batch = vec![alert(0), alert(1), alert(2)];
    let log = Arc::clone(&server.log);
    let canceller = stop.clone();
    tokio::spawn(async move {
        // Stop once the second alert has failed twice.
        let deadline = Instant::now() + Duration::from_secs(10);
        while log
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.status == 503)
            .count()
            < 2
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        canceller.cancel();
    });

    let outcomes = tokio::time::timeout(Duration::from_secs(10), sink.deliver(&batch, &stop))
        .await
        .expect("deliver returned after stop");

    assert_eq!(outcomes, vec![Outcome::Delivered]);
    assert!(server.log().iter().all(|r| r.id != alert(2).id));
}

// ---- 4. the tern receiver --------------------------------------------------------------------

struct RunningReceiver {
    url: String,
    events: Arc<Mutex<Vec<ReceiverEvent>>>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<ReceiverReport>>,
}

async fn start_receiver(secrets: &[&str]) -> RunningReceiver {
    let listener = loopback().await;
    let addr = listener.local_addr().unwrap();
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink_events = Arc::clone(&events);
    let config = ReceiverConfig {
        secrets: secrets.iter().map(|s| Secret::parse(s).unwrap()).collect(),
        ..ReceiverConfig::default()
    };
    let receiver = Receiver::new(config, move |e| sink_events.lock().unwrap().push(e));
    let stop = CancellationToken::new();
    let task = tokio::spawn(receiver.serve(listener, stop.clone()));
    RunningReceiver {
        url: format!("http://{addr}/webhook"),
        events,
        stop,
        task,
    }
}

/// POSTs `body` with the given Standard Webhooks headers; returns the status.
async fn post(url: &str, id: &str, ts: i64, signature: Option<&str>, body: &str) -> u16 {
    let client = reqwest::Client::new();
    let mut req = client
        .post(url)
        .header("webhook-id", id)
        .header("webhook-timestamp", ts.to_string())
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(sig) = signature {
        req = req.header("webhook-signature", sig);
    }
    req.send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tern_receiver_verifies_rejects_and_drops_duplicates() {
    let rx = start_receiver(&[SECRET]).await;
    let theirs = Webhook::new(SECRET).unwrap();
    let wrong = Webhook::new(OTHER_SECRET).unwrap();
    let a = alert(1);
    let body = a.json.as_str();
    let now = signing::unix_now();
    let sign =
        |wh: &Webhook, id: &str, ts: i64, body: &str| wh.sign(id, ts, body.as_bytes()).unwrap();

    // Signed with another secret, unsigned, too old, and a signed non-JSON body.
    let bad = sign(&wrong, &a.id, now, body);
    assert_eq!(post(&rx.url, &a.id, now, Some(&bad), body).await, 401);
    assert_eq!(post(&rx.url, &a.id, now, None, body).await, 401);
    let old = now - 600;
    let stale = sign(&theirs, &a.id, old, body);
    assert_eq!(post(&rx.url, &a.id, old, Some(&stale), body).await, 401);
    let not_json = sign(&theirs, "x1", now, "hello");
    assert_eq!(
        post(&rx.url, "x1", now, Some(&not_json), "hello").await,
        400
    );
    // A good one, then the same id again (a retry whose 200 was lost): 200, reported once.
    let good = sign(&theirs, &a.id, now, body);
    assert_eq!(post(&rx.url, &a.id, now, Some(&good), body).await, 200);
    let again = sign(&theirs, &a.id, now + 1, body);
    assert_eq!(post(&rx.url, &a.id, now + 1, Some(&again), body).await, 200);

    rx.stop.cancel();
    let report = rx.task.await.unwrap().unwrap();
    assert_eq!(
        report,
        ReceiverReport {
            received: 6,
            accepted: 1,
            duplicates: 1,
            rejected: 4
        }
    );
    let events = rx.events.lock().unwrap().clone();
    let statuses: Vec<u16> = events
        .iter()
        .filter_map(|e| match e {
            ReceiverEvent::Rejected { status, .. } => Some(*status),
            _ => None,
        })
        .collect();
    assert_eq!(statuses, [401, 401, 401, 400]);
    let accepted: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            ReceiverEvent::Accepted(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(accepted.len(), 1);
    assert_eq!(accepted[0].id.as_deref(), Some(a.id.as_str()));
    assert!(accepted[0].verified);
    assert_eq!(accepted[0].path, "/webhook");
    assert_eq!(accepted[0].alert["seq"], 1);
    assert!(events.contains(&ReceiverEvent::Duplicate { id: a.id.clone() }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_to_receiver_during_secret_rotation() {
    // The sink signs with the old and the new secret; the receiver already knows only the new.
    let rx = start_receiver(&[OTHER_SECRET]).await;
    let (mut sink, _dir) = make_sink(&rx.url, &[SECRET, OTHER_SECRET], fast_retry(3));
    let alerts: Vec<_> = (0..3).map(alert).collect();
    let mut outcomes = deliver_each(&mut sink, &alerts).await;
    // At-least-once: the same alert delivered twice is shown once.
    outcomes.extend(deliver_each(&mut sink, &alerts[..1]).await);
    assert_eq!(outcomes, vec![Outcome::Delivered; 4]);
    rx.stop.cancel();
    let report = rx.task.await.unwrap().unwrap();
    assert_eq!(
        (report.accepted, report.duplicates, report.rejected),
        (3, 1, 0)
    );

    // A sink signing with a secret the receiver does not know is refused for good.
    let rx = start_receiver(&[OTHER_SECRET]).await;
    let (mut sink, _dir) = make_sink(&rx.url, &[SECRET], fast_retry(3));
    let outcomes = deliver_each(&mut sink, &alerts[..1]).await;
    match &outcomes[..] {
        [
            Outcome::Failed {
                reason,
                attempts: 1,
            },
        ] => {
            assert!(
                reason.starts_with("HTTP 401 Unauthorized: signature:"),
                "{reason}"
            )
        }
        other => panic!("{other:?}"),
    }
    rx.stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tern_receiver_survives_junk() {
    let rx = start_receiver(&[SECRET]).await;
    let client = reqwest::Client::new();
    let junk_headers: [(&str, &str); 5] = [
        ("webhook-timestamp", "-99999999999999999999999"),
        ("webhook-timestamp", "9223372036854775807"),
        ("webhook-signature", "v1,"),
        ("webhook-signature", "v1,%%%% v1 , ,v1"),
        ("webhook-id", ""),
    ];
    for (h, v) in junk_headers {
        let status = client
            .post(&rx.url)
            .header("webhook-id", "j")
            .header("webhook-timestamp", signing::unix_now().to_string())
            .header("webhook-signature", "v1,AAAA")
            .header(h, v)
            .body(vec![0xff, 0x00, 0xfe])
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, 401, "{h}: {v}");
    }
    let get = client.get(&rx.url).send().await.unwrap().status();
    assert_eq!(get, 200);
    rx.stop.cancel();
    let report = rx.task.await.unwrap().unwrap();
    assert_eq!(report.rejected, 5);
}

// ---- 5. the binary ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tern_webhook_receiver_prints_verified_alerts() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tern"))
        .args([
            "webhook-receiver",
            "--listen",
            "127.0.0.1:0",
            "--secret",
            SECRET,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (err_tx, err_rx) = mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = err_tx.send(line);
        }
    });
    let (out_tx, out_rx) = mpsc::channel::<String>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = out_tx.send(line);
        }
    });
    let mut stderr_seen = Vec::new();
    let url = loop {
        let line = err_rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("no address on stderr; saw {stderr_seen:?}"));
        if let Some(addr) = line.strip_prefix("listening on ") {
            break format!("{addr}/alerts");
        }
        stderr_seen.push(line);
    };

    let a = alert(5);
    let now = signing::unix_now();
    let sig = Webhook::new(SECRET)
        .unwrap()
        .sign(&a.id, now, a.json.as_bytes())
        .unwrap();
    assert_eq!(post(&url, &a.id, now, Some(&sig), &a.json).await, 200);
    assert_eq!(post(&url, &a.id, now, Some("v1,AAAA"), &a.json).await, 401);

    let printed = out_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(
        printed,
        format!("✓ {} congestion cam-5 warning", &a.id[..12])
    );

    // SIGTERM: it stops and prints its counts.
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stopped = None;
    while stopped.is_none() && Instant::now() < deadline {
        match err_rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) if line.starts_with("stopped:") => stopped = Some(line),
            Ok(line) => stderr_seen.push(line),
            Err(_) => {}
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        stopped.as_deref(),
        Some("stopped: received 2, accepted 1, duplicates 0, rejected 1"),
        "stderr: {stderr_seen:?}"
    );
    assert!(
        stderr_seen.iter().any(|l| l.starts_with("✗ 401")),
        "{stderr_seen:?}"
    );
}
