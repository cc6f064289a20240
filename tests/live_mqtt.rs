//! The live pipeline against real brokers on loopback: a mosquitto process started by each
//! test (skipped with a printed reason when the binary is missing) and rumqttd in-process.
//! `tern run` runs as a child process, except where the library entry point is the subject.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::{
    Mosquitto, Publisher, Tern, alert_seqs, end_marker, free_port, jsonl, reading, run_refused,
    wait_until, write_project,
};

/// Publishes `n` readings and the end marker, and waits for `n` alerts in the file.
fn publish_and_collect(publisher: &mut Publisher, dir: &std::path::Path, n: i64) -> Vec<i64> {
    let mut msgs: Vec<_> = (1..=n).map(|seq| reading("dev-1", seq)).collect();
    msgs.push(end_marker("dev-1", n));
    publisher.publish_all(&msgs);
    let alerts = dir.join("out/alerts.jsonl");
    wait_until(Duration::from_secs(20), "every alert", || {
        jsonl(&alerts).len() >= n as usize
    });
    alert_seqs(&jsonl(&alerts))
}

#[test]
fn publish_to_alert_through_tern_run_with_mosquitto() {
    let binary = require_mosquitto!();
    for protocol in ["3.1.1", "5"] {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let _broker = Mosquitto::start(&binary, dir.path(), port, "");
        let config = write_project(
            dir.path(),
            "",
            Some(&format!(
                "host = \"127.0.0.1\"\nport = {port}\nclient_id = \"tern-e2e\"\nprotocol = \"{protocol}\"\n"
            )),
            "",
        );
        let mut tern = Tern::start(dir.path(), &config, &[]);
        tern.wait_ready();
        let mut publisher = Publisher::connect(port, "test-pub", None);
        let seqs = publish_and_collect(&mut publisher, dir.path(), 50);
        assert_eq!(seqs, (1..=50).collect::<Vec<_>>(), "MQTT {protocol}");
        let status = tern.stop();
        assert!(status.success(), "MQTT {protocol}: exit {status}");
        let log = tern.stderr_text();
        assert!(log.contains("\"stopped\""), "{log}");
        // Each alert is the rule's JSON, with its stable id.
        let alerts = jsonl(&dir.path().join("out/alerts.jsonl"));
        assert_eq!(alerts[0]["rule"], "high");
        assert_eq!(alerts[0]["key"], "dev-1");
        assert_eq!(alerts[0]["severity"], "warning");
        assert_eq!(alerts[0]["id"].as_str().unwrap().len(), 32);
        assert_eq!(alerts.len(), 50, "no alert twice");
    }
}

/// A sink that hands alerts to the test.
struct ChannelSink(std::sync::mpsc::Sender<Arc<tern::delivery::OutAlert>>);

impl tern::delivery::Deliver for ChannelSink {
    fn deliver<'a>(
        &'a mut self,
        batch: &'a [Arc<tern::delivery::OutAlert>],
        _stop: &'a tokio_util::sync::CancellationToken,
    ) -> tern::delivery::DeliverFuture<'a> {
        Box::pin(async move {
            for a in batch {
                let _ = self.0.send(Arc::clone(a));
            }
            vec![tern::delivery::Outcome::Delivered; batch.len()]
        })
    }
}

#[test]
fn publish_to_alert_in_process_on_the_embedded_rumqttd() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let path = write_project(
        dir.path(),
        "",
        None,
        &format!("[embedded_broker]\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    let mut sources = tern::lang::source::Sources::new();
    let config = tern::config::Config::load(&path, &mut sources).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let pipeline = tern::io::pipeline::Pipeline::prepare_with_sinks(
        config,
        &sources,
        vec![("alerts".to_string(), Box::new(ChannelSink(tx)) as _)],
    )
    .unwrap();
    let mut status = pipeline.status();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let running = runtime.spawn(pipeline.run(shutdown.clone()));
    runtime
        .block_on(async {
            tokio::time::timeout(Duration::from_secs(20), status.wait_for(|s| s.subscribed)).await
        })
        .expect("subscribed in time")
        .unwrap();

    let mut publisher = Publisher::connect(port, "test-pub", None);
    let mut msgs: Vec<_> = (1..=20).map(|seq| reading("dev-9", seq)).collect();
    msgs.insert(5, ("sensors/dev-9/reading".into(), b"{not json".to_vec()));
    msgs.push(end_marker("dev-9", 20));
    publisher.publish_all(&msgs);
    let mut seqs = Vec::new();
    while seqs.len() < 20 {
        let a = rx.recv_timeout(Duration::from_secs(20)).expect("an alert");
        seqs.push(a.parsed()["fields"]["seq"].as_i64().unwrap());
    }
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>());

    shutdown.cancel();
    let summary = runtime.block_on(running).unwrap().unwrap();
    assert_eq!(summary.source.received, 22);
    assert_eq!(summary.source.acked, 22);
    assert_eq!(summary.engine.events, 21);
    assert_eq!(summary.engine.alerts, 20);
    assert_eq!(summary.engine.bad.get("invalid_json"), Some(&1));
    assert_eq!(summary.dead_letters.written, 1);
    assert_eq!(
        summary.sinks,
        vec![(
            "alerts".to_string(),
            tern::delivery::dispatch::SinkReport {
                delivered: 20,
                failed: 0,
                left: 0,
            }
        )]
    );
    let dead = jsonl(&dir.path().join("out/dead.jsonl"));
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["payload"], "{not json");
    runtime.shutdown_background();
}

#[test]
fn broker_restart_mid_stream_loses_and_duplicates_nothing() {
    let binary = require_mosquitto!();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut broker = Mosquitto::start(&binary, dir.path(), port, "");
    let config = write_project(
        dir.path(),
        "",
        Some(&format!(
            "host = \"127.0.0.1\"\nport = {port}\nclient_id = \"tern-restart\"\n\
             reconnect_min = \"50ms\"\nreconnect_max = \"500ms\"\n"
        )),
        "",
    );
    let mut tern = Tern::start(dir.path(), &config, &[]);
    tern.wait_ready();

    let n = 2000;
    let mut publisher = Publisher::connect(port, "test-pub", None);
    for seq in 1..=n {
        if seq == n / 2 {
            broker.restart();
        }
        let (topic, payload) = reading("dev-1", seq);
        publisher.publish_reliably(&topic, &payload);
    }
    let (topic, payload) = end_marker("dev-1", n);
    publisher.publish_reliably(&topic, &payload);

    let alerts_path = dir.path().join("out/alerts.jsonl");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while jsonl(&alerts_path).len() < n as usize {
        if std::time::Instant::now() >= deadline {
            let seqs = alert_seqs(&jsonl(&alerts_path));
            let missing: Vec<i64> = (1..=n).filter(|s| seqs.binary_search(s).is_err()).collect();
            panic!(
                "{} alerts of {n}; missing {missing:?}\ntern:\n{}\nmosquitto:\n{}",
                seqs.len(),
                tern.stderr_text(),
                broker.log()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(tern.stop().success());
    let log = tern.stderr_text();
    assert!(
        log.contains("MQTT connection lost"),
        "tern saw no restart:\n{log}"
    );
    assert!(
        log.matches("connected to the MQTT broker").count() >= 2,
        "tern did not reconnect:\n{log}"
    );
    let seqs = alert_seqs(&jsonl(&alerts_path));
    let mut counts: BTreeMap<i64, usize> = BTreeMap::new();
    for s in &seqs {
        *counts.entry(*s).or_default() += 1;
    }
    let missing: Vec<i64> = (1..=n).filter(|s| !counts.contains_key(s)).collect();
    let twice: Vec<i64> = counts
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(s, _)| *s)
        .collect();
    assert!(missing.is_empty(), "lost: {missing:?}");
    assert!(twice.is_empty(), "duplicated: {twice:?}");
    assert_eq!(seqs.len(), n as usize);
    // Redeliveries were dropped, not dead-lettered as late.
    let dead = jsonl(&dir.path().join("out/dead.jsonl"));
    assert!(dead.is_empty(), "{dead:?}");
}

#[test]
fn malformed_messages_are_dead_lettered_and_good_ones_survive() {
    let binary = require_mosquitto!();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let _broker = Mosquitto::start(&binary, dir.path(), port, "");
    let config = write_project(
        dir.path(),
        "# A small queue: the source must stop reading, never drop.\nqueue = 16\n",
        Some(&format!(
            "host = \"127.0.0.1\"\nport = {port}\nclient_id = \"tern-bad\"\n"
        )),
        "",
    );
    let mut tern = Tern::start(dir.path(), &config, &[]);
    tern.wait_ready();

    // 1,000 good readings, with ten bad messages after each: 10,000 bad in all, five kinds.
    let topic = "sensors/dev-1/reading".to_string();
    type Make = fn(i64) -> Vec<u8>;
    let kinds: [(&str, Make); 5] = [
        ("invalid_json", |i| {
            format!("{{\"ts\": {i}, oops").into_bytes()
        }),
        ("missing_field", |i| {
            format!(r#"{{"ts": {}, "seq": {i}}}"#, common::T0).into_bytes()
        }),
        ("wrong_type", |i| {
            format!(r#"{{"ts": {}, "seq": {i}, "value": "hot"}}"#, common::T0).into_bytes()
        }),
        ("bad_timestamp", |i| {
            // Epoch milliseconds beyond what a timestamp holds.
            format!(r#"{{"ts": 9000000000000000000, "seq": {i}, "value": 1.0}}"#).into_bytes()
        }),
        ("late", |i| {
            // A day before the first reading: behind the watermark once readings flowed.
            format!(
                r#"{{"ts": {}, "seq": {i}, "value": 500.0}}"#,
                common::T0 - 86_400_000
            )
            .into_bytes()
        }),
    ];
    let good = 1000;
    let mut msgs = Vec::new();
    let mut expected: BTreeMap<&str, usize> = BTreeMap::new();
    let mut binary_payloads = 0;
    for seq in 1..=good {
        msgs.push(reading("dev-1", seq));
        for j in 0..10 {
            let i = seq * 10 + j;
            let (reason, make) = kinds[(j % 5) as usize];
            let mut payload = make(i);
            if reason == "invalid_json" && j == 0 && seq % 100 == 0 {
                // Not even UTF-8: kept as base64.
                payload = vec![0xff, 0xfe, (seq % 256) as u8];
                binary_payloads += 1;
            }
            msgs.push((topic.clone(), payload));
            *expected.entry(reason).or_default() += 1;
        }
    }
    msgs.push(end_marker("dev-1", good));
    let mut publisher = Publisher::connect(port, "test-pub", None);
    publisher.publish_all(&msgs);

    let alerts_path = dir.path().join("out/alerts.jsonl");
    let dead_path = dir.path().join("out/dead.jsonl");
    wait_until(
        Duration::from_secs(60),
        "every alert and dead letter",
        || jsonl(&alerts_path).len() >= good as usize && jsonl(&dead_path).len() >= 10_000,
    );
    assert!(tern.stop().success());
    assert_eq!(
        alert_seqs(&jsonl(&alerts_path)),
        (1..=good).collect::<Vec<_>>()
    );
    let dead = jsonl(&dead_path);
    assert_eq!(dead.len(), 10_000);
    let mut got: BTreeMap<&str, usize> = BTreeMap::new();
    for d in &dead {
        *got.entry(d["reason"].as_str().unwrap()).or_default() += 1;
        assert_eq!(d["topic"], "sensors/dev-1/reading");
        assert!(d["error"].as_str().is_some_and(|e| !e.is_empty()));
        assert!(d.get("payload").is_some() || d.get("payload_base64").is_some());
    }
    assert_eq!(got, expected);
    let base64 = dead
        .iter()
        .filter(|d| d.get("payload_base64").is_some())
        .count();
    assert_eq!(base64, binary_payloads);
    // Logged once per reason, not once per message.
    let log = tern.stderr_text();
    let warnings = log.matches("bad message dead-lettered").count();
    assert!((1..=5).contains(&warnings), "{warnings} log lines:\n{log}");
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files in `dir`.
fn make_certificates(dir: &std::path::Path) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "tern test CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf = |name: &str, eku: ExtendedKeyUsagePurpose| {
        let mut p =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        p.distinguished_name.push(DnType::CommonName, name);
        p.extended_key_usages = vec![eku];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf("broker", ExtendedKeyUsagePurpose::ServerAuth);
    let (client_cert, client_key) = leaf("tern", ExtendedKeyUsagePurpose::ClientAuth);
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), server_cert).unwrap();
    std::fs::write(dir.join("server.key"), server_key).unwrap();
    std::fs::write(dir.join("client.pem"), client_cert).unwrap();
    std::fs::write(dir.join("client.key"), client_key).unwrap();
}

#[test]
fn tls_with_client_certificate_and_password() {
    let binary = require_mosquitto!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    make_certificates(d);
    let passwords = d.join("passwords");
    std::fs::write(&passwords, "").unwrap();
    let made = std::process::Command::new("mosquitto_passwd")
        .arg("-b")
        .arg(&passwords)
        .arg("tern")
        .arg("s3cret-pw")
        .status();
    if !made.is_ok_and(|s| s.success()) {
        eprintln!("SKIPPED: mosquitto_passwd is not available");
        return;
    }
    let tls_port = free_port();
    let plain_port = free_port();
    let extra = format!(
        "allow_anonymous false\npassword_file {pw}\n\
         listener {plain_port} 127.0.0.1\n\
         listener {tls_port} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/server.pem\n\
         keyfile {d}/server.key\nrequire_certificate true\n",
        pw = passwords.display(),
        d = d.display()
    );
    let _broker = Mosquitto::start(&binary, d, plain_port, &extra);
    std::fs::write(d.join("mqtt-password"), "s3cret-pw\n").unwrap();
    let broker = format!(
        "host = \"127.0.0.1\"\nport = {tls_port}\nclient_id = \"tern-tls\"\n\
         [broker.tls]\nca_file = \"ca.pem\"\ncert_file = \"client.pem\"\nkey_file = \"client.key\"\n\
         [broker.auth]\nusername = \"tern\"\npassword_file = \"mqtt-password\"\n"
    );
    let config = write_project(d, "", Some(&broker), "");
    let mut tern = Tern::start(d, &config, &[]);
    tern.wait_ready();
    let mut publisher = Publisher::connect(plain_port, "test-pub", Some(("tern", "s3cret-pw")));
    let seqs = publish_and_collect(&mut publisher, d, 10);
    assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
    assert!(tern.stop().success());
    assert!(
        !tern.stderr_text().contains("s3cret-pw"),
        "the password was logged"
    );

    // The same broker refuses a wrong password, and tern says where to look; the secret
    // itself comes from the environment this time.
    let wrong = write_project(
        d,
        "",
        Some(&broker.replace(
            "password_file = \"mqtt-password\"",
            "password_env = \"TERN_TEST_MQTT_PASSWORD\"",
        )),
        "",
    );
    let mut tern = Tern::start(d, &wrong, &[("TERN_TEST_MQTT_PASSWORD", "not-it")]);
    tern.wait_for_log("check [broker.auth]", Duration::from_secs(20));
    assert!(tern.stop().success());
    assert!(
        !tern.stderr_text().contains("not-it"),
        "the password was logged"
    );
}

#[test]
fn bad_configuration_is_reported_with_its_location() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_project(dir.path(), "", Some("hots = \"localhost\"\n"), "");
    let (code, err) = run_refused(dir.path(), &config);
    assert_eq!(code, Some(1));
    assert!(err.contains("E411"), "{err}");
    assert!(err.contains("tern.toml:13:1"), "{err}");
    assert!(err.contains("did you mean `host`?"), "{err}");
}

#[test]
fn stops_promptly_and_cleanly_while_the_broker_is_down() {
    let binary = require_mosquitto!();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut broker = Mosquitto::start(&binary, dir.path(), port, "");
    let config = write_project(
        dir.path(),
        "",
        Some(&format!(
            "host = \"127.0.0.1\"\nport = {port}\nclient_id = \"tern-down\"\n\
             reconnect_min = \"5s\"\nreconnect_max = \"30s\"\n"
        )),
        "",
    );
    let mut tern = Tern::start(dir.path(), &config, &[]);
    tern.wait_ready();
    broker.stop();
    tern.wait_for_log("MQTT connection lost", Duration::from_secs(20));
    // tern now waits seconds before reconnecting; SIGTERM must not wait for that.
    let started = std::time::Instant::now();
    let status = tern.stop();
    assert!(status.success(), "exit {status}:\n{}", tern.stderr_text());
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert!(tern.logged("\"stopped\""), "{}", tern.stderr_text());
}
