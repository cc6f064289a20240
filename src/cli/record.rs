//! `tern record`: captures a broker's traffic in the replay capture format, one message per
//! line: `{"topic": "...", "payload": <JSON, or the text when it is not JSON>, "retain": b}`.
//! `tern replay --format capture` decodes such a file exactly as `tern run` decodes the live
//! messages.

use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeFilter};
use serde_json::{Map, Value as Json};
use tokio_util::sync::CancellationToken;

use super::Outcome;
use super::simulate::{cancel_on_signal, parse_duration};
use crate::io::mqtt::backoff::Backoff;
use crate::lang::source::Sources;
use crate::sim::publish::Broker;

/// Arguments of `tern record`.
#[derive(Debug, Args)]
pub struct RecordArgs {
    /// The broker to record (HOST:PORT).
    #[arg(long)]
    pub broker: String,
    /// Where to write the capture (`-`: stdout).
    #[arg(long)]
    pub out: PathBuf,
    /// Topic filters to subscribe to (default: every device profile's filter).
    #[arg(long = "topic", value_name = "FILTER")]
    pub topics: Vec<String>,
    /// Directory of device profiles, for the default filters.
    #[arg(long, default_value = "devices")]
    pub devices: PathBuf,
    /// Stop after this many messages.
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop after this long (`30s`, `5m`).
    #[arg(long)]
    pub duration: Option<String>,
    /// The MQTT client id (default: tern-record-<process id>).
    #[arg(long)]
    pub client_id: Option<String>,
}

/// One captured message as a line of the capture format (without the newline). A payload
/// that parses as JSON is kept as JSON, unless it is a bare JSON string: that is kept as
/// its text, so that replay hands the decoder the same bytes.
pub fn capture_line(topic: &str, payload: &[u8], retain: bool) -> String {
    let text = String::from_utf8_lossy(payload);
    let payload = match serde_json::from_slice::<Json>(payload) {
        Ok(Json::String(_)) | Err(_) => Json::String(text.into_owned()),
        Ok(json) => json,
    };
    let mut m = Map::new();
    m.insert("topic".into(), Json::String(topic.to_string()));
    m.insert("payload".into(), payload);
    m.insert("retain".into(), Json::Bool(retain));
    Json::Object(m).to_string()
}

/// Runs `tern record`.
pub fn run(args: RecordArgs) -> anyhow::Result<Outcome> {
    super::run::init_logging(&crate::config::LoggingConfig::default());
    let broker = Broker::parse(&args.broker)?;
    let duration = match &args.duration {
        Some(d) => Some(parse_duration(d).context("--duration")?),
        None => None,
    };
    let filters = if args.topics.is_empty() {
        let mut sources = Sources::new();
        let (profiles, _) = crate::devices::load_dir(&args.devices, &mut sources);
        let mut filters: Vec<String> = profiles.iter().map(|p| p.subscription_filter()).collect();
        filters.sort();
        filters.dedup();
        anyhow::ensure!(
            !filters.is_empty(),
            "no device profiles in {}: give --topic FILTER or --devices DIR",
            args.devices.display()
        );
        filters
    } else {
        args.topics.clone()
    };
    let out: Box<dyn Write + Send> = if args.out.as_os_str() == "-" {
        Box::new(std::io::stdout())
    } else {
        Box::new(
            std::fs::File::create(&args.out)
                .with_context(|| format!("cannot create {}", args.out.display()))?,
        )
    };
    let mut out = BufWriter::with_capacity(1 << 16, out);
    let client_id = args
        .client_id
        .clone()
        .unwrap_or_else(|| format!("tern-record-{}", std::process::id()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let recorded = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(cancel_on_signal(shutdown.clone()));
        let limits = Limits {
            count: args.count,
            duration,
        };
        record(&broker, &client_id, &filters, &mut out, limits, shutdown).await
    });
    runtime.shutdown_background();
    let flushed = out.flush().context("cannot write the capture");
    let recorded = recorded?;
    flushed?;
    eprintln!(
        "record: {recorded} messages written to {}",
        args.out.display()
    );
    Ok(Outcome::Ok)
}

struct Limits {
    count: Option<u64>,
    duration: Option<Duration>,
}

async fn record(
    broker: &Broker,
    client_id: &str,
    filters: &[String],
    out: &mut impl Write,
    limits: Limits,
    shutdown: CancellationToken,
) -> anyhow::Result<u64> {
    let mut opts = MqttOptions::new(client_id, broker.host.clone(), broker.port);
    opts.set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true)
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::new(opts, 64);
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    let deadline = tokio::time::sleep(limits.duration.unwrap_or(Duration::MAX));
    tokio::pin!(deadline);
    let mut flush = tokio::time::interval(Duration::from_millis(200));
    let mut recorded = 0u64;
    let mut announced = false;
    if limits.count == Some(0) {
        return Ok(0);
    }
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = &mut deadline, if limits.duration.is_some() => break,
            _ = flush.tick() => out.flush().context("cannot write the capture")?,
            polled = events.poll() => match polled {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    backoff.reset();
                    // A clean session forgets subscriptions: subscribe on every connection.
                    let subs = filters
                        .iter()
                        .map(|f| SubscribeFilter::new(f.clone(), QoS::AtLeastOnce));
                    client
                        .try_subscribe_many(subs)
                        .context("cannot queue the subscriptions")?;
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if !announced {
                        announced = true;
                        eprintln!("record: subscribed to {} on {broker}", filters.join(" "));
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let line = capture_line(&p.topic, &p.payload, p.retain);
                    writeln!(out, "{line}").context("cannot write the capture")?;
                    recorded += 1;
                    if limits.count.is_some_and(|n| recorded >= n) {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(broker = %broker, error = %e, retry_in = ?delay, "record: MQTT connection failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            },
        }
    }
    let _ = client.try_disconnect();
    Ok(recorded)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn payloads_are_kept_as_json_or_as_text() {
        assert_eq!(
            capture_line("a/b", br#"{"ts": 1, "v": 2.50}"#, false),
            r#"{"topic":"a/b","payload":{"ts":1,"v":2.5},"retain":false}"#
        );
        assert_eq!(
            capture_line("a/b", b"{\"ts\": 1, \"v\"", true),
            r#"{"topic":"a/b","payload":"{\"ts\": 1, \"v\"","retain":true}"#
        );
        // A bare JSON string stays text: replay must see the quotes the device sent.
        assert_eq!(
            capture_line("a", br#""on""#, false),
            r#"{"topic":"a","payload":"\"on\"","retain":false}"#
        );
        assert_eq!(
            capture_line("a", b"42", false),
            r#"{"topic":"a","payload":42,"retain":false}"#
        );
    }
}
