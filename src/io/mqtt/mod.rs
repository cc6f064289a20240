//! The MQTT source: subscribes to the device profiles' topics and hands each message to the
//! pipeline, acknowledging it only once the engine has applied it.
//!
//! - **Session.** A stable client id and a persistent session (`clean_session = false`), so the
//!   broker queues QoS 1 messages while tern is away. The first connection of a run always
//!   subscribes (profiles may have changed); a reconnect subscribes again only when the CONNACK
//!   says the broker lost the session.
//! - **Acknowledgements.** Manual, in arrival order (MQTT 3.1.1 section 4.6), once the engine
//!   reports the message applied through the `applied` watch (the highest sequence number
//!   done). That is the seam for durable state: the engine commits, then publishes `applied`.
//!   Acks still owed when a connection drops are not sent on the next one (a packet id may
//!   then name another message); the broker redelivers those messages and the pipeline drops
//!   them as duplicates.
//! - **Back-pressure.** The queue to the engine is bounded; when it is full the source stops
//!   taking events from the connection's poller (a task of its own, handing over one event at
//!   a time), which then stops polling, so the broker holds the messages. Nothing is dropped.
//! - **Reconnects.** rumqttc reconnects on the next poll, immediately; the source waits an
//!   exponential backoff with jitter first, and resets it after a CONNACK.
//! - **Shutdown.** Stop forwarding, wait until every forwarded message is applied and acked,
//!   send DISCONNECT. Messages read after the stop are neither forwarded nor acknowledged: the
//!   broker delivers them again next time.

pub mod backoff;
pub mod client;
pub mod embedded;
pub mod publisher;
pub mod tls;

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use secrecy::SecretString;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::BrokerConfig;
use backoff::Backoff;
use client::{Client, Polled};
pub use publisher::Publisher;

/// A message on its way to the engine.
#[derive(Debug, Clone)]
pub struct Inbound {
    /// Arrival number, from 1, increasing across reconnects.
    pub seq: u64,
    /// Topic name.
    pub topic: String,
    /// Raw payload.
    pub payload: Bytes,
    /// Retain flag.
    pub retain: bool,
}

/// The source's connection state, for readiness checks and the admin API.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceStatus {
    /// Connected to the broker.
    pub connected: bool,
    /// Connected and every subscription is in place.
    pub subscribed: bool,
    /// Successful connections so far.
    pub connects: u64,
    /// Connections on which the broker had lost our session.
    pub sessions_lost: u64,
}

/// What the source did, reported when it stops.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SourceReport {
    /// Messages received from the broker.
    pub received: u64,
    /// Messages handed to the engine.
    pub forwarded: u64,
    /// Acknowledgements written to the broker.
    pub acked: u64,
    /// Connection failures.
    pub disconnects: u64,
    /// Messages read during shutdown and left for the broker to deliver again.
    pub left_to_broker: u64,
}

/// An ack owed to the broker once the engine has applied message `seq`.
#[derive(Debug, Clone, Copy)]
struct Owed {
    seq: u64,
    qos: u8,
    pkid: u16,
}

/// Configuration and runtime of the MQTT source.
pub struct MqttSource {
    broker: BrokerConfig,
    password: Option<SecretString>,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    filters: Vec<String>,
    qos: u8,
    queue: usize,
    drain_timeout: Duration,
    status: watch::Sender<SourceStatus>,
    filter_updates: Option<watch::Receiver<Vec<String>>>,
}

impl MqttSource {
    /// A source subscribing to `filters` with `qos`; `queue` is the capacity of the channel
    /// it will feed. Reads the TLS files now, so a bad one fails at startup.
    pub fn new(
        broker: BrokerConfig,
        password: Option<SecretString>,
        filters: Vec<String>,
        qos: u8,
        queue: usize,
    ) -> anyhow::Result<MqttSource> {
        let tls = match &broker.tls {
            Some(t) => Some(tls::client_config(t).context("TLS for [broker]")?),
            None => None,
        };
        Ok(MqttSource {
            broker,
            password,
            tls,
            filters,
            qos,
            queue,
            drain_timeout: Duration::from_secs(30),
            status: watch::Sender::new(SourceStatus::default()),
            filter_updates: None,
        })
    }

    /// Watches the connection state.
    pub fn status(&self) -> watch::Receiver<SourceStatus> {
        self.status.subscribe()
    }

    /// Reports the connection state on `status` instead of a channel of its own.
    pub fn with_status(mut self, status: watch::Sender<SourceStatus>) -> MqttSource {
        self.status = status;
        self
    }

    /// Follows `updates` for the filters to subscribe to (a rule reload may read other
    /// profiles): new filters are subscribed, dropped ones unsubscribed.
    pub fn with_filter_updates(mut self, updates: watch::Receiver<Vec<String>>) -> MqttSource {
        self.filter_updates = Some(updates);
        self
    }

    /// Runs until `shutdown`, then drains: see the module documentation. `applied` carries
    /// the highest sequence number the engine has applied.
    pub async fn run<T: From<Inbound> + Send>(
        mut self,
        out: mpsc::Sender<T>,
        mut applied: watch::Receiver<u64>,
        shutdown: CancellationToken,
    ) -> anyhow::Result<SourceReport> {
        let (client, events) = client::new(client::Options {
            broker: &self.broker,
            client_id: self.broker.client_id.clone(),
            password: self.password.as_ref(),
            manual_acks: true,
            // Room for every ack that can be owed (a broker has at most 65,535 packet ids
            // unacknowledged with us), so an ack never waits for room.
            capacity: self.queue + usize::from(u16::MAX),
            receive_maximum: Some(u16::try_from(self.queue.clamp(16, 65_535)).unwrap_or(u16::MAX)),
            tls: self.tls.clone(),
        });
        let target = format!("{}:{}", self.broker.host, self.broker.port);
        // The event loop is polled by a task of its own and never cancelled mid-poll (a
        // cancelled poll could lose a request it had taken, an ack among them). The channel
        // holds one event: while the engine's queue is full, the poller stops too.
        let (polled_tx, mut polled) = mpsc::channel(1);
        let backoff = Backoff::new(self.broker.reconnect_min, self.broker.reconnect_max);
        let poller = tokio::spawn(poll_loop(events, backoff, polled_tx));
        let updates = self.filter_updates.take();
        let result = self
            .drive(
                &client,
                &mut polled,
                &out,
                &mut applied,
                updates,
                &shutdown,
                &target,
            )
            .await;
        poller.abort();
        self.status.send_modify(|s| {
            s.connected = false;
            s.subscribed = false;
        });
        result
    }

    /// The source's loop: one `select!` over shutdown, the engine's progress and the
    /// connection's events.
    #[allow(clippy::too_many_arguments)]
    async fn drive<T: From<Inbound> + Send>(
        &self,
        client: &Client,
        polled: &mut mpsc::Receiver<Result<Polled, (String, Duration)>>,
        out: &mpsc::Sender<T>,
        applied: &mut watch::Receiver<u64>,
        mut updates: Option<watch::Receiver<Vec<String>>>,
        shutdown: &CancellationToken,
        target: &str,
    ) -> anyhow::Result<SourceReport> {
        let mut report = SourceReport::default();
        let mut filters = self.filters.clone();
        let mut owed: VecDeque<Owed> = VecDeque::new();
        let mut seq = 0u64;
        let mut done = 0u64;
        let mut first_connect = true;
        let mut stopping = false;
        let mut engine_gone = false;
        let mut disconnecting = false;
        let drain_deadline = tokio::time::sleep(Duration::MAX);
        tokio::pin!(drain_deadline);

        loop {
            if stopping && !disconnecting && (engine_gone || (done >= seq && owed.is_empty())) {
                // Every forwarded message is applied and its ack queued before this.
                disconnecting = client.try_disconnect().is_ok();
            }
            tokio::select! {
                biased;
                _ = shutdown.cancelled(), if !stopping => {
                    stopping = true;
                    drain_deadline.as_mut().reset(tokio::time::Instant::now() + self.drain_timeout);
                    tracing::info!(in_flight = seq - done, "MQTT source stopping: finishing in-flight messages");
                    if !self.status.borrow().connected {
                        // Nothing can be acknowledged without a connection; the broker
                        // redelivers.
                        break;
                    }
                }
                _ = &mut drain_deadline, if stopping => {
                    tracing::warn!(unapplied = seq - done, "MQTT source: drain timed out; the broker will redeliver what was not acknowledged");
                    break;
                }
                Some(new) = next_filters(&mut updates) => {
                    let added: Vec<String> = new.iter().filter(|f| !filters.contains(f)).cloned().collect();
                    let removed: Vec<String> = filters.iter().filter(|f| !new.contains(f)).cloned().collect();
                    filters = new;
                    if self.status.borrow().connected {
                        // Without a connection, the next CONNACK subscribes to `filters`
                        // if the session is gone; a kept session keeps its old ones, which
                        // the dead-letter sink then reports as unclaimed topics.
                        if (!added.is_empty() && client.try_subscribe(&added, self.qos).is_err())
                            || (!removed.is_empty() && client.try_unsubscribe(&removed).is_err())
                        {
                            anyhow::bail!("cannot queue the subscription changes");
                        }
                    }
                    tracing::info!(?added, ?removed, "subscriptions follow the reloaded rules");
                }
                changed = applied.changed(), if !engine_gone => match changed {
                    Ok(()) => done = *applied.borrow_and_update(),
                    Err(_) => {
                        engine_gone = true;
                        if !stopping {
                            anyhow::bail!("the engine stopped");
                        }
                    }
                },
                event = polled.recv() => match event {
                    None => anyhow::bail!("the MQTT event loop stopped"),
                    Some(Ok(Polled::ConnAck { session_present })) => {
                        let mut status = self.status.borrow().clone();
                        status.connected = true;
                        status.connects += 1;
                        if !session_present && !first_connect && !self.broker.clean_session {
                            status.sessions_lost += 1;
                            tracing::warn!(broker = %target, "the broker lost tern's session: subscribing again (messages published meanwhile are gone unless retained)");
                        }
                        let subscribe = first_connect || !session_present;
                        if subscribe && !filters.is_empty() {
                            if client.try_subscribe(&filters, self.qos).is_err() {
                                anyhow::bail!("cannot queue the subscriptions");
                            }
                        } else {
                            status.subscribed = true;
                        }
                        tracing::info!(broker = %target, session_present, "connected to the MQTT broker");
                        first_connect = false;
                        self.status.send_replace(status);
                    }
                    Some(Ok(Polled::SubAck { refused })) => {
                        if refused > 0 {
                            tracing::error!(refused, "the broker refused subscriptions (check its ACLs): their messages will not arrive");
                        }
                        tracing::info!(?filters, qos = self.qos, "subscribed");
                        self.status.send_modify(|s| s.subscribed = true);
                    }
                    Some(Ok(Polled::Publish(msg))) => {
                        report.received += 1;
                        if stopping || engine_gone {
                            report.left_to_broker += 1;
                            continue;
                        }
                        let inbound = Inbound {
                            seq: seq + 1,
                            topic: msg.topic,
                            payload: msg.payload,
                            retain: msg.retain,
                        };
                        // Back-pressure: while the queue is full, nothing more is read.
                        let sent = tokio::select! {
                            biased;
                            _ = shutdown.cancelled() => None,
                            r = out.send(T::from(inbound)) => Some(r.is_ok()),
                        };
                        match sent {
                            Some(true) => {
                                seq += 1;
                                report.forwarded += 1;
                                if msg.qos > 0 {
                                    owed.push_back(Owed { seq, qos: msg.qos, pkid: msg.pkid });
                                }
                            }
                            Some(false) => anyhow::bail!("the engine stopped"),
                            None => report.left_to_broker += 1,
                        }
                    }
                    Some(Ok(Polled::AckSent)) => report.acked += 1,
                    Some(Ok(Polled::DisconnectSent)) => break,
                    Some(Ok(Polled::PubAck | Polled::Other)) => {}
                    Some(Err((error, retry_in))) => {
                        report.disconnects += 1;
                        let was_connected = self.status.borrow().connected;
                        self.status.send_modify(|s| {
                            s.connected = false;
                            s.subscribed = false;
                        });
                        if stopping {
                            break;
                        }
                        // The broker redelivers these; acking them on a new connection could
                        // ack another message that got the same packet id.
                        owed.clear();
                        if was_connected {
                            tracing::warn!(broker = %target, %error, ?retry_in, "MQTT connection lost");
                        } else {
                            tracing::warn!(broker = %target, %error, ?retry_in, "cannot connect to the MQTT broker");
                        }
                    }
                },
            }
            flush_acks(client, &mut owed, done);
        }
        Ok(report)
    }
}

/// Polls the event loop forever, handing each event over; after a failure, waits a backoff
/// delay before the next poll (which reconnects), and tells how long.
async fn poll_loop(
    mut events: client::EventLoop,
    mut backoff: Backoff,
    out: mpsc::Sender<Result<Polled, (String, Duration)>>,
) {
    loop {
        match events.poll().await {
            Ok(event) => {
                if matches!(event, Polled::ConnAck { .. }) {
                    backoff.reset();
                }
                if out.send(Ok(event)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                let delay = backoff.next_delay();
                if out.send(Err((e, delay))).await.is_err() {
                    return;
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Queues the acks of every applied message, in arrival order; stops at the first that does
/// not fit (it is tried again after the next poll).
fn flush_acks(client: &Client, owed: &mut VecDeque<Owed>, done: u64) {
    while let Some(front) = owed.front() {
        if front.seq > done || client.try_ack(front.qos, front.pkid).is_err() {
            break;
        }
        owed.pop_front();
    }
}

/// The next set of filters from `updates`; pending forever without updates or once the
/// sender is gone.
async fn next_filters(updates: &mut Option<watch::Receiver<Vec<String>>>) -> Option<Vec<String>> {
    let Some(rx) = updates else {
        return std::future::pending().await;
    };
    if rx.changed().await.is_err() {
        *updates = None;
        return std::future::pending().await;
    }
    Some(rx.borrow_and_update().clone())
}
