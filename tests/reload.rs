//! Hot reload through the real binary and a real broker: a changed rule file is picked up
//! while `tern run` runs; unchanged rules keep their partial matches, a changed rule starts
//! afresh, a broken rule set is refused with its diagnostics while the running one goes on,
//! a rule reading a new device profile gets its topic subscribed, and `SIGHUP` reloads when
//! watching is off.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Mosquitto, Publisher, Tern, free_port, jsonl, profile_no_lateness, wait_until};

const TEMP_PROFILE: &str = r#"
stream = "temp"
topic = "temps/{room}"
time = "ts"
key = "room"
lateness = "0s"
[fields]
ts = { type = "timestamp", format = "epoch_ms" }
celsius = "float"
"#;

/// Two high readings in a row: after one, a key holds a partial match.
const PAIR: &str = r#"
rule pair {
    from reading
    key device
    match a: reading where value > 100.0
        next b: reading where value > 100.0
    emit pair { first: a.seq, second: b.seq }
    to alerts
}
"#;

fn high(threshold: &str) -> String {
    format!(
        "rule high {{\n    from reading\n    key device\n    match r: reading where value > {threshold}\n    emit high {{ seq: r.seq }}\n    to alerts\n}}\n"
    )
}

const HOT: &str = r#"
rule hot {
    from temp
    key room
    match t: temp where celsius > 30.0
    emit hot { celsius: t.celsius }
    to alerts
}
"#;

const T0: i64 = 1_709_280_000_000;

fn reading(seq: i64, value: f64) -> (String, Vec<u8>) {
    (
        "sensors/d1/reading".into(),
        format!(
            r#"{{"ts": {}, "seq": {seq}, "value": {value}}}"#,
            T0 + seq * 1000
        )
        .into_bytes(),
    )
}

/// A quiet reading from another device half a second after `seq`: event time moves past
/// reading `seq`, so the rules see it (the watermark trails the newest event).
fn tick(seq: i64) -> (String, Vec<u8>) {
    (
        "sensors/clock/reading".into(),
        format!(
            r#"{{"ts": {}, "seq": 0, "value": 0.0}}"#,
            T0 + seq * 1000 + 500
        )
        .into_bytes(),
    )
}

fn project(dir: &Path, port: u16, watch: bool) -> std::path::PathBuf {
    std::fs::create_dir_all(dir.join("rules")).unwrap();
    std::fs::create_dir_all(dir.join("devices")).unwrap();
    std::fs::write(dir.join("devices/sensor.toml"), profile_no_lateness()).unwrap();
    std::fs::write(dir.join("rules/pair.tern"), PAIR).unwrap();
    std::fs::write(dir.join("rules/high.tern"), high("100.0")).unwrap();
    let config = format!(
        "watch_rules = {watch}\n\n[broker]\nhost = \"127.0.0.1\"\nport = {port}\nclient_id = \"tern-reload\"\n\n\
         [sinks.alerts]\ntype = \"file\"\npath = \"out/alerts.jsonl\"\n\n\
         [dead_letter]\nfile = \"out/dead.jsonl\"\n\n[logging]\nformat = \"json\"\n"
    );
    let path = dir.join("tern.toml");
    std::fs::write(&path, config).unwrap();
    path
}

/// `(rule, the alert's fields)` of every alert so far.
fn alerts(dir: &Path) -> Vec<(String, serde_json::Value)> {
    jsonl(&dir.join("out/alerts.jsonl"))
        .into_iter()
        .map(|a| (a["rule"].as_str().unwrap().to_owned(), a["fields"].clone()))
        .collect()
}

/// Waits until the alerts so far satisfy `done`, and returns them.
fn wait_for(
    dir: &Path,
    tern: &Tern,
    what: &str,
    done: impl Fn(&[(String, serde_json::Value)]) -> bool,
) -> Vec<(String, serde_json::Value)> {
    let mut last = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        last = alerts(dir);
        if done(&last) {
            return last;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("no {what}: {last:?}\ntern:\n{}", tern.stderr_text());
}

/// True when `rule` fired for reading `seq` (`high`) or completed with it (`pair`).
fn fired(alerts: &[(String, serde_json::Value)], rule: &str, seq: i64) -> bool {
    alerts
        .iter()
        .any(|(r, f)| r == rule && (f["seq"] == seq || f["second"] == seq))
}

fn wait_for_reloads(tern: &Tern, n: usize) {
    wait_until(Duration::from_secs(20), "a reload", || {
        tern.count_logged("rules reloaded") >= n
    });
}

#[test]
fn watched_rule_files_reload_keeping_unchanged_rules_state() {
    let binary = require_mosquitto!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    let _broker = Mosquitto::start(&binary, d, port, "");
    let config = project(d, port, true);
    let mut tern = Tern::start(d, &config, &[]);
    tern.wait_ready();
    let mut publisher = Publisher::connect(port, "test-pub", None);

    // One high reading: `high` fires, `pair` holds a partial match for d1.
    publisher.publish_all(&[reading(1, 150.0), tick(1)]);
    wait_for(d, &tern, "high 1", |a| fired(a, "high", 1));

    // `high` changes; `pair` does not.
    std::fs::write(d.join("rules/high.tern"), high("200.0")).unwrap();
    wait_for_reloads(&tern, 1);
    let log = tern.stderr_text();
    let line = log.lines().find(|l| l.contains("rules reloaded")).unwrap();
    assert!(
        line.contains("high") && line.contains("\"cause\":\"watch\""),
        "{line}"
    );

    // The second reading completes `pair`'s match begun before the reload, and the new
    // threshold keeps `high` quiet.
    publisher.publish_all(&[reading(2, 150.0), tick(2)]);
    let got = wait_for(d, &tern, "pair 1-2", |a| fired(a, "pair", 2));
    assert!(
        got.iter().any(|(r, f)| r == "pair" && f["first"] == 1),
        "{got:?}"
    );

    // A broken rule set is refused with its diagnostic; the running one continues.
    std::fs::write(
        d.join("rules/high.tern"),
        "rule high {\n    from reading\n    match r: reading where value >\n}\n",
    )
    .unwrap();
    wait_until(Duration::from_secs(20), "the refusal", || {
        tern.logged("the new rules have errors")
    });
    let log = tern.stderr_text();
    assert!(
        log.contains("high.tern:4:1"),
        "the diagnostic names file and line: {log}"
    );
    publisher.publish_all(&[reading(3, 250.0), tick(3)]);
    wait_for(d, &tern, "high 3 under the running rules", |a| {
        fired(a, "high", 3)
    });

    // A rule on a new device profile: its topic is subscribed without a restart.
    std::fs::write(d.join("devices/temp.toml"), TEMP_PROFILE).unwrap();
    std::fs::write(d.join("rules/hot.tern"), HOT).unwrap();
    std::fs::write(d.join("rules/high.tern"), high("200.0")).unwrap();
    wait_for_reloads(&tern, 2);
    wait_until(Duration::from_secs(20), "the new subscription", || {
        tern.logged("subscriptions follow the reloaded rules")
    });
    // The SUBACK may trail the log line: publish until the alert shows.
    let mut n = 0;
    wait_until(
        Duration::from_secs(20),
        "an alert from the new rule",
        || {
            n += 1;
            publisher.publish_all(&[(
                format!("temps/r{n}"),
                format!(r#"{{"ts": {}, "celsius": 35.5}}"#, T0 + n * 1000).into_bytes(),
            )]);
            std::thread::sleep(Duration::from_millis(100));
            alerts(d).iter().any(|(r, _)| r == "hot")
        },
    );
    assert!(tern.stop().success());
}

#[test]
fn sighup_reloads_when_watching_is_off() {
    let binary = require_mosquitto!();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    let _broker = Mosquitto::start(&binary, d, port, "");
    let config = project(d, port, false);
    let mut tern = Tern::start(d, &config, &[]);
    tern.wait_ready();
    let mut publisher = Publisher::connect(port, "test-pub", None);

    std::fs::write(d.join("rules/high.tern"), high("200.0")).unwrap();
    // Not watched: the old threshold still applies.
    publisher.publish_all(&[reading(1, 150.0), tick(1)]);
    wait_for(d, &tern, "high 1", |a| fired(a, "high", 1));
    assert_eq!(tern.count_logged("rules reloaded"), 0);

    let status = std::process::Command::new("kill")
        .args(["-HUP", &tern.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    wait_for_reloads(&tern, 1);
    assert!(
        tern.logged("\"cause\":\"SIGHUP\""),
        "{}",
        tern.stderr_text()
    );
    // Now 150 is below the threshold: only `pair` fires (its match began before the reload).
    publisher.publish_all(&[reading(2, 150.0), reading(3, 250.0), tick(3)]);
    let got = wait_for(d, &tern, "high 3", |a| fired(a, "high", 3));
    assert!(fired(&got, "pair", 2), "{got:?}");
    assert!(
        !fired(&got, "high", 2),
        "150 is under the reloaded threshold: {got:?}"
    );

    // A comment changes nothing the engine runs: it is kept as it is, with the partial
    // match reading 3 began.
    let pair = std::fs::read_to_string(d.join("rules/pair.tern")).unwrap();
    std::fs::write(
        d.join("rules/pair.tern"),
        format!("// two in a row\n{pair}"),
    )
    .unwrap();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &tern.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    wait_for_reloads(&tern, 2);
    publisher.publish_all(&[reading(4, 150.0), tick(4)]);
    let got = wait_for(d, &tern, "pair 3-4", |a| fired(a, "pair", 4));
    assert!(
        got.iter()
            .any(|(r, f)| r == "pair" && f["first"] == 3 && f["second"] == 4),
        "{got:?}"
    );
    assert!(tern.stop().success());
}
