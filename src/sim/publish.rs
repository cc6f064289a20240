//! Publishes a [`Fleet`] to an MQTT broker (QoS 1), mapping simulated time to the wall
//! clock: a message due `d` after the fleet's start goes out `d / speed` after publishing
//! began.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::fleet::{Fleet, FleetStats};
use crate::io::mqtt::backoff::Backoff;

/// A broker address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broker {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl Broker {
    /// Parses `HOST:PORT`, or `HOST` for port 1883.
    pub fn parse(text: &str) -> anyhow::Result<Broker> {
        let text = text.trim();
        let (host, port) = match text.rsplit_once(':') {
            // An IPv6 address without a port has colons too: require brackets for those.
            Some((host, port)) if !host.contains(':') || host.ends_with(']') => (
                host.trim_start_matches('[').trim_end_matches(']'),
                port.parse::<u16>()
                    .with_context(|| format!("{text:?}: the port must be a number"))?,
            ),
            _ => (text, 1883),
        };
        anyhow::ensure!(!host.is_empty(), "{text:?}: expected HOST:PORT");
        Ok(Broker {
            host: host.to_string(),
            port,
        })
    }
}

impl std::fmt::Display for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// How fast and how long to publish.
#[derive(Debug, Clone)]
pub struct Pace {
    /// Simulated time runs this many times faster than the wall clock (must be positive).
    pub speed: f64,
    /// Stop after this much wall time.
    pub duration: Option<Duration>,
    /// Stop after this many messages.
    pub count: Option<u64>,
}

/// What a publishing run did.
#[derive(Debug, Clone, Default)]
pub struct PublishReport {
    /// The fleet's counters.
    pub fleet: FleetStats,
    /// Messages handed to the client.
    pub published: u64,
    /// Messages the broker acknowledged.
    pub acknowledged: u64,
    /// Wall time spent publishing.
    pub elapsed: Duration,
    /// How far behind its schedule the publisher fell at worst (the broker or the client
    /// could not take the rate).
    pub behind: Duration,
}

/// Publishes `fleet` to `broker` as client `client_id` until `shutdown`, or until the pace's
/// duration (wall time, whether or not the publisher kept up) or count is reached; then waits (up to ten seconds) for the broker to
/// acknowledge every message and disconnects. `progress` gets the fleet's counters about
/// once a second.
pub async fn publish(
    fleet: &mut Fleet,
    broker: &Broker,
    client_id: &str,
    pace: &Pace,
    shutdown: CancellationToken,
    progress: Option<&watch::Sender<FleetStats>>,
) -> anyhow::Result<PublishReport> {
    anyhow::ensure!(
        pace.speed.is_finite() && pace.speed > 0.0,
        "--speed must be a positive number"
    );
    let mut opts = MqttOptions::new(client_id, broker.host.clone(), broker.port);
    opts.set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true)
        .set_inflight(1000)
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::new(opts, 4096);
    let (acked_tx, mut acked) = watch::channel(0u64);
    let connected = Arc::new(AtomicBool::new(false));
    let abort = CancellationToken::new();
    let connection = {
        let abort = abort.clone();
        let connected = Arc::clone(&connected);
        let target = broker.to_string();
        tokio::spawn(async move {
            let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
            loop {
                let polled = tokio::select! {
                    biased;
                    _ = abort.cancelled() => break,
                    p = events.poll() => p,
                };
                match polled {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        backoff.reset();
                        connected.store(true, Ordering::Relaxed);
                        tracing::info!(broker = %target, "simulator connected");
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        acked_tx.send_modify(|n| *n += 1);
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => break,
                    Ok(_) => {}
                    Err(e) => {
                        connected.store(false, Ordering::Relaxed);
                        let delay = backoff.next_delay();
                        tracing::warn!(broker = %target, error = %e, retry_in = ?delay,
                            "simulator: MQTT connection failed");
                        tokio::select! {
                            _ = abort.cancelled() => break,
                            _ = tokio::time::sleep(delay) => {}
                        }
                    }
                }
            }
        })
    };

    let began = Instant::now();
    let sim_start = fleet.config().start;
    let stop_at = pace.duration.map(|d| began + d);
    // Without a duration the deadline is never polled.
    let deadline = tokio::time::sleep_until(stop_at.unwrap_or(began));
    tokio::pin!(deadline);
    let mut published = 0u64;
    let mut last_progress = began;
    let mut behind = Duration::ZERO;
    loop {
        if pace.count.is_some_and(|n| published >= n) {
            break;
        }
        let offset = fleet.peek_time().saturating_sub(sim_start).max(0) as f64 / pace.speed;
        let due = began + Duration::from_nanos(offset.min(u64::MAX as f64) as u64);
        let now = Instant::now();
        if due > now {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                _ = &mut deadline, if stop_at.is_some() => break,
                _ = tokio::time::sleep_until(due) => {}
            }
        } else if shutdown.is_cancelled() || stop_at.is_some_and(|s| now >= s) {
            break;
        } else {
            behind = behind.max(now - due);
        }
        let m = fleet.next_message();
        let sent = tokio::select! {
            biased;
            _ = shutdown.cancelled() => None,
            _ = &mut deadline, if stop_at.is_some() => None,
            r = client.publish(m.topic, QoS::AtLeastOnce, false, m.payload) => Some(r),
        };
        match sent {
            Some(Ok(())) => published += 1,
            Some(Err(e)) => anyhow::bail!("cannot publish: {e}"),
            None => break,
        }
        if let Some(p) = progress
            && last_progress.elapsed() >= Duration::from_secs(1)
        {
            last_progress = Instant::now();
            p.send_replace(fleet.stats().clone());
        }
    }
    let elapsed = began.elapsed();
    if let Some(p) = progress {
        p.send_replace(fleet.stats().clone());
    }

    // Let the broker acknowledge what is in flight, then say goodbye.
    let settled =
        tokio::time::timeout(Duration::from_secs(10), acked.wait_for(|n| *n >= published))
            .await
            .is_ok_and(|r| r.is_ok());
    if !settled {
        tracing::warn!(
            published,
            acknowledged = *acked.borrow(),
            "simulator: the broker did not acknowledge every message"
        );
    }
    let _ = client.disconnect().await;
    if tokio::time::timeout(Duration::from_secs(5), connection)
        .await
        .is_err()
    {
        abort.cancel();
    }
    let acknowledged = *acked.borrow();
    Ok(PublishReport {
        fleet: fleet.stats().clone(),
        published,
        acknowledged,
        elapsed,
        behind,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn broker_addresses_parse() {
        let b = Broker::parse("127.0.0.1:1884").unwrap();
        assert_eq!((b.host.as_str(), b.port), ("127.0.0.1", 1884));
        assert_eq!(Broker::parse("mqtt.local").unwrap().port, 1883);
        let v6 = Broker::parse("[::1]:2000").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 2000));
        assert_eq!(Broker::parse("::1").unwrap().host, "::1");
        assert!(Broker::parse("host:port").is_err());
        assert!(Broker::parse(":1883").is_err());
    }
}
