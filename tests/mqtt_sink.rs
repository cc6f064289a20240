//! The MQTT sink against real brokers on loopback: the embedded rumqttd, and mosquitto
//! processes (skipped with a printed reason when the binary is missing) that are stopped and
//! started again under the sink, or refuse a publish (MQTT 5 ACL).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Mosquitto, free_port};
use serde_json::json;
use tern::compile::hir::Severity;
use tern::config::{BrokerConfig, MqttSinkConfig, Protocol, RetryConfig};
use tern::delivery::mqtt::MqttSink;
use tern::delivery::{AlertKind, Deliver, OutAlert, Outcome};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn alert(seq: usize, key: &str) -> Arc<OutAlert> {
    let json = json!({
        "id": format!("id-{seq}"), "rule": "congestion", "name": "jam", "kind": "match",
        "key": key, "severity": "warning", "event_time": "2024-06-01T10:00:00Z",
        "emitted_at": "2024-06-01T10:00:01Z", "fields": {"seq": seq}, "events": {},
    });
    Arc::new(OutAlert {
        id: format!("id-{seq}"),
        rule: "congestion".into(),
        name: "jam".into(),
        kind: AlertKind::Match,
        severity: Severity::Warning,
        key_text: key.into(),
        event_time: 1_717_236_000_000_000_000,
        emitted_at: 1_717_236_001_000_000_000,
        json: json.to_string(),
    })
}

fn sink_config(topic: &str) -> MqttSinkConfig {
    MqttSinkConfig {
        topic: topic.into(),
        qos: 1,
        retain: false,
        retry: RetryConfig {
            max_attempts: 3,
            initial_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(50),
        },
    }
}

fn broker(port: u16, protocol: Protocol) -> BrokerConfig {
    let mut b = BrokerConfig::local(SocketAddr::from(([127, 0, 0, 1], port)));
    b.client_id = "tern-test".into();
    b.protocol = protocol;
    b.reconnect_min = Duration::from_millis(50);
    b.reconnect_max = Duration::from_millis(500);
    b
}

/// A message as the subscriber received it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Got {
    /// The alert id in the payload.
    id: String,
    topic: String,
    payload: String,
    qos: u8,
}

/// A subscriber on `alerts/#` (QoS 1, persistent session), reconnecting whenever the broker
/// goes away; returns once subscribed.
async fn subscribe(port: u16, id: &str) -> mpsc::UnboundedReceiver<Got> {
    let mut opts = rumqttc::MqttOptions::new(id, "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30))
        .set_clean_session(false)
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = rumqttc::AsyncClient::new(opts, 100);
    client
        .subscribe("alerts/#", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _client = client;
        let mut subscribed_tx = Some(subscribed_tx);
        loop {
            match events.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_))) => {
                    if let Some(s) = subscribed_tx.take() {
                        let _ = s.send(());
                    }
                }
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    let payload: serde_json::Value = serde_json::from_slice(&p.payload).unwrap();
                    let got = Got {
                        id: payload["id"].as_str().unwrap().to_string(),
                        topic: p.topic.clone(),
                        payload: String::from_utf8(p.payload.to_vec()).unwrap(),
                        qos: p.qos as u8,
                    };
                    if tx.send(got).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                // The broker is away (a test stopped it): try again shortly.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), subscribed)
        .await
        .expect("subscribed in time")
        .unwrap();
    rx
}

/// Receives until `done` holds for what arrived, or fails after `timeout`.
async fn receive_until(
    rx: &mut mpsc::UnboundedReceiver<Got>,
    got: &mut Vec<Got>,
    timeout: Duration,
    done: impl Fn(&[Got]) -> bool,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !done(got) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(g)) => got.push(g),
            Ok(None) => panic!("the subscriber stopped"),
            Err(_) => panic!("timed out; received {got:#?}"),
        }
    }
}

/// The alert ids among the messages received.
fn ids(got: &[Got]) -> BTreeSet<String> {
    got.iter().map(|g| g.id.clone()).collect()
}

async fn wait_for(what: &str, timeout: Duration, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_arrive_on_their_topics_through_the_embedded_broker() {
    let port = free_port();
    tern::io::mqtt::embedded::start(SocketAddr::from(([127, 0, 0, 1], port)), 1 << 20).unwrap();
    let mut rx = subscribe(port, "test-sub").await;

    let mut b = broker(port, Protocol::V311);
    b.max_packet_size = 4096;
    let mut sink = MqttSink::start(
        "mqtt",
        &sink_config("alerts/{rule}/{severity}/{key}"),
        &b,
        None,
    )
    .unwrap();
    assert_eq!(sink.batch_limit(), 64);
    let stop = CancellationToken::new();

    // More than the window of 16, with keys that need care in a topic.
    let keys = ["cam-17", "cam/1+#", "", "line=L1,station=3"];
    let batch: Vec<_> = (0..40).map(|i| alert(i, keys[i % keys.len()])).collect();
    let outcomes = sink.deliver(&batch, &stop).await;
    assert_eq!(outcomes, vec![Outcome::Delivered; 40]);

    let mut got = Vec::new();
    receive_until(&mut rx, &mut got, Duration::from_secs(10), |g| {
        g.len() >= 40
    })
    .await;
    let by_id: BTreeMap<String, &Got> = got.iter().map(|g| (g.id.clone(), g)).collect();
    assert_eq!(by_id.len(), 40, "each alert once: {got:#?}");
    let rendered = [
        "alerts/congestion/warning/cam-17",
        "alerts/congestion/warning/cam_1__",
        "alerts/congestion/warning/_",
        "alerts/congestion/warning/line=L1,station=3",
    ];
    for (i, a) in batch.iter().enumerate() {
        let g = by_id[&a.id];
        assert_eq!(g.topic, rendered[i % rendered.len()]);
        assert_eq!(g.payload, a.json, "the exact alert JSON");
        assert_eq!(g.qos, 1);
    }

    // A message larger than max_packet_size is dead-lettered at once; its neighbours go.
    let mut big = (*alert(100, "big")).clone();
    big.json = format!("{{\"id\":\"id-100\",\"pad\":\"{}\"}}", "x".repeat(5000));
    let batch = vec![alert(99, "a"), Arc::new(big), alert(101, "b")];
    let outcomes = sink.deliver(&batch, &stop).await;
    assert_eq!(outcomes[0], Outcome::Delivered);
    assert!(
        matches!(&outcomes[1], Outcome::Failed { reason, attempts: 0 } if reason.contains("max_packet_size")),
        "{outcomes:?}"
    );
    assert_eq!(outcomes[2], Outcome::Delivered);
    got.clear();
    receive_until(&mut rx, &mut got, Duration::from_secs(10), |g| g.len() >= 2).await;
    assert_eq!(ids(&got), BTreeSet::from(["id-99".into(), "id-101".into()]));

    tokio::time::timeout(Duration::from_secs(10), sink.close())
        .await
        .expect("close is prompt");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_wait_for_a_stopped_broker_and_are_all_delivered_after_its_restart() {
    let binary = require_mosquitto!();
    for protocol in [Protocol::V311, Protocol::V5] {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut mosquitto = Mosquitto::start(&binary, dir.path(), port, "");
        let mut rx = subscribe(port, &format!("sub-{protocol:?}")).await;
        let mut sink = MqttSink::start(
            "mqtt",
            &sink_config("alerts/{rule}/{key}"),
            &broker(port, protocol),
            None,
        )
        .unwrap();
        let stop = CancellationToken::new();
        let mut got = Vec::new();

        // Up: delivered, and received.
        let first: Vec<_> = (0..5).map(|i| alert(i, "dev-1")).collect();
        assert_eq!(
            sink.deliver(&first, &stop).await,
            vec![Outcome::Delivered; 5]
        );
        receive_until(&mut rx, &mut got, Duration::from_secs(10), |g| g.len() >= 5).await;

        // Down: deliver waits; nothing is dead-lettered.
        mosquitto.stop();
        wait_for("the sink to notice", Duration::from_secs(10), || {
            !sink.connected()
        })
        .await;
        let second: Vec<_> = (5..30).map(|i| alert(i, "dev-2")).collect();
        let task = tokio::spawn({
            let second = second.clone();
            async move {
                let outcomes = sink.deliver(&second, &CancellationToken::new()).await;
                (sink, outcomes)
            }
        });
        // Not a synchronisation: an observation window in which deliver must not finish.
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(
            !task.is_finished(),
            "{protocol:?}: deliver returned while the broker was down"
        );

        // Back: everything delivered, and the subscriber's session receives it all.
        mosquitto.restart();
        let (mut sink, outcomes) = tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("delivered once the broker is back")
            .unwrap();
        assert_eq!(outcomes, vec![Outcome::Delivered; 25], "{protocol:?}");
        let want: BTreeSet<String> = (0..30).map(|i| format!("id-{i}")).collect();
        receive_until(&mut rx, &mut got, Duration::from_secs(20), |g| {
            ids(g) == want
        })
        .await;

        // Stopped while a batch is in flight (one larger than a dispatcher hands over, so
        // the stop lands mid-batch): whatever is sent again, every alert is delivered and
        // received.
        let third: Vec<_> = (30..330).map(|i| alert(i, "dev-3")).collect();
        let task = tokio::spawn({
            let third = third.clone();
            async move {
                let outcomes = sink.deliver(&third, &CancellationToken::new()).await;
                (sink, outcomes)
            }
        });
        receive_until(&mut rx, &mut got, Duration::from_secs(10), |g| {
            g.iter().any(|g| g.id == "id-30")
        })
        .await;
        mosquitto.stop();
        mosquitto.restart();
        let (mut sink, outcomes) = tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("delivered once the broker is back")
            .unwrap();
        assert_eq!(outcomes, vec![Outcome::Delivered; 300], "{protocol:?}");
        let want: BTreeSet<String> = (0..330).map(|i| format!("id-{i}")).collect();
        receive_until(&mut rx, &mut got, Duration::from_secs(20), |g| {
            ids(g) == want
        })
        .await;
        assert!(got.iter().all(|g| g.qos == 1));

        // Stopped while a batch is in flight, and back without its sessions: rumqttc drops
        // what it would have sent again, so the sink must publish it anew.
        let fourth: Vec<_> = (330..830).map(|i| alert(i, "dev-4")).collect();
        let task = tokio::spawn({
            let fourth = fourth.clone();
            async move {
                let outcomes = sink.deliver(&fourth, &CancellationToken::new()).await;
                (sink, outcomes)
            }
        });
        receive_until(&mut rx, &mut got, Duration::from_secs(10), |g| {
            g.iter().any(|g| g.id == "id-330")
        })
        .await;
        mosquitto.stop();
        std::fs::remove_file(dir.path().join("mosquitto-data/mosquitto.db")).unwrap();
        mosquitto.restart();
        let (mut sink, outcomes) = tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("delivered on the new session")
            .unwrap();
        assert_eq!(outcomes, vec![Outcome::Delivered; 500], "{protocol:?}");

        tokio::time::timeout(Duration::from_secs(10), sink.close())
            .await
            .expect("close is prompt");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_the_broker_refuses_is_failed_and_the_rest_delivered() {
    let binary = require_mosquitto!();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let acl = dir.path().join("acl");
    std::fs::write(&acl, "topic readwrite alerts/ok/#\ntopic read alerts/#\n").unwrap();
    let _mosquitto = Mosquitto::start(
        &binary,
        dir.path(),
        port,
        &format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\nacl_file {}\n",
            acl.display()
        ),
    );
    let mut rx = subscribe(port, "sub-acl").await;
    let mut sink = MqttSink::start(
        "mqtt",
        &sink_config("alerts/{key}/{rule}"),
        &broker(port, Protocol::V5),
        None,
    )
    .unwrap();
    let batch = vec![alert(1, "ok"), alert(2, "denied"), alert(3, "ok")];
    let outcomes = sink.deliver(&batch, &CancellationToken::new()).await;
    assert_eq!(outcomes[0], Outcome::Delivered);
    assert!(
        matches!(&outcomes[1], Outcome::Failed { reason, attempts: 1 }
            if reason.contains("NotAuthorized") && reason.contains("0x87")),
        "{outcomes:?}"
    );
    assert_eq!(outcomes[2], Outcome::Delivered);
    let mut got = Vec::new();
    receive_until(&mut rx, &mut got, Duration::from_secs(10), |g| g.len() >= 2).await;
    assert_eq!(ids(&got), BTreeSet::from(["id-1".into(), "id-3".into()]));
    assert!(got.iter().all(|g| g.topic == "alerts/ok/congestion"));
}
