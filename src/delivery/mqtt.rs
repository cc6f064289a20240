//! The MQTT sink: each alert's JSON published to a topic rendered from a template, on a
//! connection of its own, and reported delivered only once the broker has acknowledged it.
//!
//! - **Connection.** Client id `<client_id>-alerts-<sink name>` (two MQTT sinks must not take
//!   over each other's session), always a persistent session, reconnecting with the same
//!   backoff as the source. A task polls the connection all the time, so keep-alives flow
//!   between batches.
//! - **At least once.** A batch is published through a window of [`WINDOW`] messages; an
//!   alert is `Delivered` when its PUBACK arrives (QoS 1), its PUBCOMP (QoS 2), or when it is
//!   written (QoS 0). Acknowledgements are matched by packet id: rumqttc hands out ids as it
//!   takes publishes from its queue, in order, and reports each with the id it gave, so the
//!   n-th fresh id reported belongs to the n-th publish queued; an id already waiting for its
//!   acknowledgement is a resend after a reconnect.
//! - **Broker away.** Nothing is queued while disconnected. On reconnect with the session
//!   kept, rumqttc sends again what was in flight; with the session lost, everything not yet
//!   acknowledged is published again (the broker may then see some twice). `deliver` waits as
//!   long as it takes: the outbox holds the alerts, so a broker that is down never
//!   dead-letters anything. Only `stop` ends the wait, returning the acknowledged prefix.
//! - **Refusals.** An alert is `Failed` (dead-lettered) only when it cannot be sent at all
//!   (a packet larger than `[broker] max_packet_size`) or an MQTT 5 broker refuses it in its
//!   PUBACK/PUBREC: at once for a refusal that will not change (not authorized, invalid
//!   topic or payload), after the sink's `retry` policy for one that may pass (quota
//!   exceeded, packet id in use, unspecified error).
//! - **Window.** 16 publishes in flight at most (and never more than `[broker] inflight`):
//!   rumqttc gives packet ids in a cycle as long as its in-flight limit, and sends the whole
//!   backlog at once when it resumes a session, so a window within the limit (and within
//!   mosquitto's default receive maximum of 20) keeps ids from colliding.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use secrecy::SecretString;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::retry::Attempts;
use super::{Deliver, DeliverFuture, OutAlert, Outcome};
use crate::config::{BrokerConfig, MqttSinkConfig, Protocol, RetryConfig};
use crate::io::mqtt::backoff::Backoff;
use crate::io::mqtt::client::{self, Client, Outbound, Refused};

/// Most publishes waiting for their acknowledgement at once.
pub const WINDOW: usize = 16;

/// Alerts handed over in one `deliver`.
const BATCH: usize = 64;

/// How long `close` waits for the DISCONNECT to go out.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// The placeholders a topic template may hold.
pub const PLACEHOLDERS: [&str; 4] = ["rule", "name", "key", "severity"];

/// The topic for `alert` under `template`: `{rule}`, `{name}`, `{key}` and `{severity}` are
/// replaced by one topic level each (see [`topic_level`]); any other text, braces included,
/// stays as written.
pub fn render_topic(template: &str, alert: &OutAlert) -> String {
    let mut out = String::with_capacity(template.len() + alert.key_text.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let value = after.find('}').and_then(|close| {
            let value = match &after[..close] {
                "rule" => alert.rule.as_str(),
                "name" => alert.name.as_str(),
                "key" => alert.key_text.as_str(),
                "severity" => alert.severity.as_str(),
                _ => return None,
            };
            Some((value, close))
        });
        match value {
            Some((value, close)) => {
                out.push_str(&topic_level(value));
                rest = &after[close + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// A value as one topic level: the characters MQTT gives a meaning (`+`, `#`, `/`) and NUL
/// become `_`, and an empty value is `_`, so a value never adds a level, a wildcard or an
/// empty level.
pub fn topic_level(value: &str) -> String {
    if value.is_empty() {
        return "_".into();
    }
    value
        .chars()
        .map(|c| match c {
            '+' | '#' | '/' | '\0' => '_',
            c => c,
        })
        .collect()
}

/// The size of a PUBLISH packet as rumqttc counts it against the packet size limit.
fn publish_size(topic: usize, payload: usize, qos: u8, v5: bool) -> usize {
    let remaining = 2 + topic + if qos > 0 { 2 } else { 0 } + usize::from(v5) + payload;
    let length_bytes = match remaining {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    };
    1 + length_bytes + remaining
}

/// Publishes alerts and tracks the broker's acknowledgements (see the module documentation).
pub struct MqttSink {
    name: String,
    template: String,
    max_packet_size: usize,
    v5: bool,
    shared: Arc<Shared>,
    driver: Option<JoinHandle<()>>,
    abort: CancellationToken,
}

/// What the sink and its connection task share.
struct Shared {
    client: Client,
    qos: u8,
    retain: bool,
    window: usize,
    retry: RetryConfig,
    tracker: Mutex<Tracker>,
    /// Signalled whenever the tracker changed in a way `deliver` waits for.
    changed: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Tracker> {
        self.tracker.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues what the window allows, through the client.
    fn pump(&self, t: &mut Tracker) {
        let (qos, retain) = (self.qos, self.retain);
        t.pump(self.window, Instant::now(), &mut |topic, payload| {
            self.client
                .try_publish(topic, payload.clone(), qos, retain)
                .is_ok()
        });
    }
}

impl MqttSink {
    /// Starts the sink's connection (in the current Tokio runtime). `password` is the
    /// resolved `[broker.auth]` password. Fails when there is no runtime or a TLS file of
    /// `[broker.tls]` is unusable.
    pub fn start(
        name: &str,
        config: &MqttSinkConfig,
        broker: &BrokerConfig,
        password: Option<&SecretString>,
    ) -> anyhow::Result<MqttSink> {
        let runtime = tokio::runtime::Handle::try_current()
            .context("the MQTT sink must be started inside the Tokio runtime")?;
        let tls = match &broker.tls {
            Some(t) => Some(
                crate::io::mqtt::tls::client_config(t)
                    .with_context(|| format!("sink `{name}`: TLS for [broker]"))?,
            ),
            None => None,
        };
        // Resends after a reconnect need the session; the source's choice is its own.
        let mut session = broker.clone();
        session.clean_session = false;
        let window = WINDOW.min(usize::from(broker.inflight).max(1));
        let (client, events) = client::new(client::Options {
            broker: &session,
            client_id: format!("{}-alerts-{name}", broker.client_id),
            password,
            manual_acks: false,
            // The window, plus room for the DISCONNECT: a publish never waits for room.
            capacity: window * 2 + 4,
            receive_maximum: None,
            tls,
        });
        let shared = Arc::new(Shared {
            client,
            qos: config.qos.min(2),
            retain: config.retain,
            window,
            retry: config.retry.clone(),
            tracker: Mutex::new(Tracker::default()),
            changed: Notify::new(),
        });
        let abort = CancellationToken::new();
        let driver = runtime.spawn(drive(
            events,
            Arc::clone(&shared),
            Backoff::new(broker.reconnect_min, broker.reconnect_max),
            abort.clone(),
            name.to_string(),
            format!("{}:{}", broker.host, broker.port),
        ));
        Ok(MqttSink {
            name: name.to_string(),
            template: config.topic.clone(),
            max_packet_size: broker.max_packet_size,
            v5: broker.protocol == Protocol::V5,
            shared,
            driver: Some(driver),
            abort,
        })
    }

    /// True while the sink's connection is up.
    pub fn connected(&self) -> bool {
        self.shared.lock().connected
    }

    /// The slot for one alert, already failed when it cannot be published at all.
    fn slot(&self, alert: &OutAlert) -> Slot {
        let topic = render_topic(&self.template, alert);
        let payload = Bytes::from(alert.json.clone().into_bytes());
        let size = publish_size(topic.len(), payload.len(), self.shared.qos, self.v5);
        let unsendable = if topic.len() > usize::from(u16::MAX) {
            Some(format!(
                "the topic is {} bytes long; MQTT allows 65535",
                topic.len()
            ))
        } else if size > self.max_packet_size {
            Some(format!(
                "the message is a packet of {size} bytes, larger than [broker] \
                 max_packet_size ({})",
                self.max_packet_size
            ))
        } else {
            None
        };
        let state = match unsendable {
            Some(reason) => {
                tracing::warn!(sink = %self.name, alert = %alert.id, %reason,
                    "alert cannot be published");
                SlotState::Done(Outcome::Failed {
                    reason,
                    attempts: 0,
                })
            }
            None => SlotState::Waiting { not_before: None },
        };
        Slot {
            topic,
            payload,
            state,
            sends: 0,
            refusals: None,
        }
    }
}

impl Deliver for MqttSink {
    fn batch_limit(&self) -> usize {
        BATCH
    }

    fn retries(&self) -> u64 {
        self.shared.lock().retries
    }

    fn deliver<'a>(
        &'a mut self,
        batch: &'a [Arc<OutAlert>],
        stop: &'a CancellationToken,
    ) -> DeliverFuture<'a> {
        Box::pin(async move {
            if batch.is_empty() || stop.is_cancelled() {
                return Vec::new();
            }
            let slots: Vec<Slot> = batch.iter().map(|a| self.slot(a)).collect();
            self.shared.lock().begin(slots);
            loop {
                let wake = {
                    let mut t = self.shared.lock();
                    if t.all_done() {
                        return t.finish();
                    }
                    self.shared.pump(&mut t);
                    t.next_retry()
                };
                let retry_due = async {
                    match wake {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    biased;
                    _ = stop.cancelled() => return self.shared.lock().finish(),
                    _ = self.shared.changed.notified() => {}
                    _ = retry_due => {}
                }
            }
        })
    }

    fn close(&mut self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let Some(mut driver) = self.driver.take() else {
                return;
            };
            // The DISCONNECT goes out after every publish already queued; without a
            // connection there is nothing to say goodbye to.
            if !self.connected() || self.shared.client.try_disconnect().is_err() {
                self.abort.cancel();
            }
            if tokio::time::timeout(CLOSE_TIMEOUT, &mut driver)
                .await
                .is_err()
            {
                self.abort.cancel();
                let _ = driver.await;
            }
        })
    }
}

impl Drop for MqttSink {
    fn drop(&mut self) {
        self.abort.cancel();
    }
}

/// The connection task: polls without pause (never cancelling a poll midway, which could lose
/// a request rumqttc had taken), feeds every event to the tracker, and waits a backoff delay
/// after a failure.
async fn drive(
    mut events: client::EventLoop,
    shared: Arc<Shared>,
    mut backoff: Backoff,
    abort: CancellationToken,
    sink: String,
    target: String,
) {
    let mut failures = 0u32;
    loop {
        let polled = tokio::select! {
            biased;
            _ = abort.cancelled() => break,
            polled = events.poll_outbound() => polled,
        };
        match polled {
            Ok(Outbound::DisconnectSent) => break,
            Ok(event) => {
                if let Outbound::ConnAck { session_present } = event {
                    backoff.reset();
                    failures = 0;
                    tracing::info!(sink = %sink, broker = %target, session_present,
                        "MQTT alert sink connected");
                }
                let mut t = shared.lock();
                t.apply(event, &shared.retry, Instant::now());
                shared.pump(&mut t);
                drop(t);
                shared.changed.notify_one();
            }
            Err(error) => {
                {
                    // Under the lock, so no publish is queued between rumqttc's cleanup and
                    // `connected` turning false.
                    let mut t = shared.lock();
                    t.connected = false;
                    for event in events.salvage() {
                        t.apply(event, &shared.retry, Instant::now());
                    }
                    t.connected = false;
                }
                shared.changed.notify_one();
                let delay = backoff.next_delay();
                failures = failures.saturating_add(1);
                if failures == 1 {
                    tracing::warn!(sink = %sink, broker = %target, %error, retry_in = ?delay,
                        "MQTT alert sink disconnected; alerts wait in the outbox");
                } else {
                    tracing::debug!(sink = %sink, broker = %target, %error, retry_in = ?delay,
                        "MQTT alert sink still cannot connect");
                }
                tokio::select! {
                    _ = abort.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    shared.lock().connected = false;
    shared.changed.notify_one();
}

/// One alert of the batch being delivered.
#[derive(Debug)]
struct Slot {
    topic: String,
    payload: Bytes,
    state: SlotState,
    /// Times it was queued for publishing.
    sends: u32,
    /// Refusals that may pass, counted against the retry policy.
    refusals: Option<Attempts>,
}

#[derive(Debug)]
enum SlotState {
    /// To be published (again), not before the given time.
    Waiting { not_before: Option<Instant> },
    /// Queued or in flight.
    Sent,
    /// Settled.
    Done(Outcome),
}

/// A publish of ours, by batch and position. Publishes of an abandoned batch keep their
/// tickets until acknowledged, so their packet ids are not mistaken for fresh ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ticket {
    job: u64,
    index: usize,
}

/// Which alert each publish in flight belongs to.
#[derive(Debug, Default)]
struct Tracker {
    connected: bool,
    /// The current batch's number.
    job: u64,
    slots: Vec<Slot>,
    /// Queued publishes rumqttc has not reported sending yet, oldest first.
    unassigned: VecDeque<Ticket>,
    /// Publishes sent and not acknowledged, by packet id.
    inflight: HashMap<u16, Ticket>,
    /// Publishes after an alert's first (after a reconnect or a refusal), for the metrics.
    retries: u64,
}

impl Tracker {
    /// Starts a batch.
    fn begin(&mut self, slots: Vec<Slot>) {
        self.job += 1;
        self.slots = slots;
    }

    fn all_done(&self) -> bool {
        self.slots
            .iter()
            .all(|s| matches!(s.state, SlotState::Done(_)))
    }

    /// Ends the batch: the outcomes of its settled prefix (all of them once all are
    /// settled). Publishes still in flight belong to no batch from here on.
    fn finish(&mut self) -> Vec<Outcome> {
        let mut outcomes = Vec::with_capacity(self.slots.len());
        for slot in &self.slots {
            self.retries += u64::from(slot.sends.saturating_sub(1));
        }
        for slot in self.slots.drain(..) {
            match slot.state {
                SlotState::Done(o) => outcomes.push(o),
                _ => break,
            }
        }
        self.slots.clear();
        self.job += 1;
        outcomes
    }

    /// When the earliest refused alert may be published again.
    fn next_retry(&self) -> Option<Instant> {
        self.slots
            .iter()
            .filter_map(|s| match s.state {
                SlotState::Waiting { not_before } => not_before,
                _ => None,
            })
            .min()
    }

    /// Queues waiting alerts, in order, while connected and the window has room. `send`
    /// queues one publish and says whether it was taken.
    fn pump(&mut self, window: usize, now: Instant, send: &mut dyn FnMut(&str, &Bytes) -> bool) {
        if !self.connected {
            return;
        }
        for index in 0..self.slots.len() {
            if self.unassigned.len() + self.inflight.len() >= window {
                return;
            }
            let slot = &mut self.slots[index];
            let due = match slot.state {
                SlotState::Waiting { not_before } => not_before.is_none_or(|t| t <= now),
                _ => false,
            };
            if !due {
                continue;
            }
            if !send(&slot.topic, &slot.payload) {
                return;
            }
            slot.state = SlotState::Sent;
            slot.sends = slot.sends.saturating_add(1);
            self.unassigned.push_back(Ticket {
                job: self.job,
                index,
            });
        }
    }

    /// Takes one event of the connection into account (queues nothing).
    fn apply(&mut self, event: Outbound, retry: &RetryConfig, now: Instant) {
        match event {
            Outbound::ConnAck { session_present } => {
                self.connected = true;
                if !session_present {
                    self.session_lost();
                }
            }
            Outbound::Sent { pkid } => {
                if pkid != 0 && self.inflight.contains_key(&pkid) {
                    return; // sent again on a resumed session
                }
                let Some(ticket) = self.unassigned.pop_front() else {
                    tracing::debug!(pkid, "MQTT sink: a publish that is not ours was sent");
                    return;
                };
                if pkid == 0 {
                    self.settle(ticket, None, retry, now);
                } else {
                    self.inflight.insert(pkid, ticket);
                }
            }
            Outbound::Acked { pkid, refused }
            | Outbound::Received {
                pkid,
                refused: refused @ Some(_),
            } => {
                if let Some(ticket) = self.inflight.remove(&pkid) {
                    self.settle(ticket, refused, retry, now);
                }
            }
            Outbound::Completed { pkid } => {
                if let Some(ticket) = self.inflight.remove(&pkid) {
                    self.settle(ticket, None, retry, now);
                }
            }
            Outbound::Received { refused: None, .. }
            | Outbound::DisconnectSent
            | Outbound::Other => {}
        }
    }

    /// The broker kept nothing, and rumqttc dropped what it would have sent again: every
    /// alert not yet acknowledged is published anew.
    fn session_lost(&mut self) {
        self.unassigned.clear();
        self.inflight.clear();
        for slot in &mut self.slots {
            if matches!(slot.state, SlotState::Sent) {
                slot.state = SlotState::Waiting { not_before: None };
            }
        }
    }

    fn settle(
        &mut self,
        ticket: Ticket,
        refused: Option<Refused>,
        retry: &RetryConfig,
        now: Instant,
    ) {
        if ticket.job != self.job {
            return;
        }
        let Some(slot) = self.slots.get_mut(ticket.index) else {
            return;
        };
        slot.state = match refused {
            None => SlotState::Done(Outcome::Delivered),
            Some(r) => {
                // These may pass; the others will not change by asking again.
                let passing = matches!(r.code, 0x80 | 0x91 | 0x97);
                let attempts = slot.refusals.get_or_insert_with(|| Attempts::new(retry));
                attempts.start();
                if passing && attempts.may_retry() {
                    let delay = attempts.next_delay(None);
                    tracing::warn!(reason = %r.reason, retry_in = ?delay,
                        "the MQTT broker refused an alert; publishing it again later");
                    SlotState::Waiting {
                        not_before: Some(now + delay),
                    }
                } else {
                    SlotState::Done(Outcome::Failed {
                        reason: format!(
                            "the broker refused the message: {} (MQTT 5 reason code 0x{:02x})",
                            r.reason, r.code
                        ),
                        attempts: slot.sends,
                    })
                }
            }
        };
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::compile::hir::Severity;
    use crate::delivery::AlertKind;

    fn alert(key: &str) -> OutAlert {
        OutAlert {
            id: format!("id-{key}"),
            rule: "congestion".into(),
            name: "jam".into(),
            kind: AlertKind::Match,
            severity: Severity::Warning,
            key_text: key.into(),
            event_time: 1,
            emitted_at: 2,
            json: format!("{{\"key\":\"{key}\"}}"),
        }
    }

    #[test]
    fn topics_are_rendered_one_level_per_placeholder() {
        let a = alert("cam/17+#");
        assert_eq!(
            render_topic("alerts/{rule}/{name}/{severity}/{key}", &a),
            "alerts/congestion/jam/warning/cam_17__"
        );
        assert_eq!(render_topic("alerts/{key}", &alert("")), "alerts/_");
        assert_eq!(
            render_topic("a/{key}/{unknown}/{", &alert("line=L1,station=3")),
            "a/line=L1,station=3/{unknown}/{"
        );
        assert_eq!(render_topic("plain", &a), "plain");
        assert_eq!(render_topic("{key}{key}", &alert("x")), "xx");
    }

    #[test]
    fn packet_size_counts_like_rumqttc() {
        // 2 + 1 topic + 2 pkid + 3 payload = 8 remaining, one length byte, one header byte.
        assert_eq!(publish_size(1, 3, 1, false), 10);
        assert_eq!(publish_size(1, 3, 0, false), 8);
        assert_eq!(publish_size(1, 3, 1, true), 11);
        assert_eq!(publish_size(0, 124, 1, false), 1 + 2 + 128);
    }

    fn slot(n: usize) -> Slot {
        Slot {
            topic: format!("t/{n}"),
            payload: Bytes::from(vec![n as u8]),
            state: SlotState::Waiting { not_before: None },
            sends: 0,
            refusals: None,
        }
    }

    fn policy() -> RetryConfig {
        RetryConfig {
            max_attempts: 2,
            initial_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(20),
        }
    }

    /// A tracker with `n` alerts, connected, and the topics it queued.
    fn tracker(n: usize) -> Tracker {
        let mut t = Tracker::default();
        t.apply(
            Outbound::ConnAck {
                session_present: false,
            },
            &policy(),
            Instant::now(),
        );
        t.begin((0..n).map(slot).collect());
        t
    }

    fn pump(t: &mut Tracker, window: usize) -> Vec<String> {
        let mut sent = Vec::new();
        t.pump(window, Instant::now(), &mut |topic, _| {
            sent.push(topic.to_string());
            true
        });
        sent
    }

    fn ev(t: &mut Tracker, e: Outbound) {
        t.apply(e, &policy(), Instant::now());
    }

    fn delivered(t: &Tracker) -> Vec<bool> {
        t.slots
            .iter()
            .map(|s| matches!(s.state, SlotState::Done(Outcome::Delivered)))
            .collect()
    }

    #[test]
    fn acks_are_matched_by_packet_id_within_the_window() {
        let mut t = tracker(3);
        assert_eq!(pump(&mut t, 2), ["t/0", "t/1"]);
        ev(&mut t, Outbound::Sent { pkid: 7 });
        ev(&mut t, Outbound::Sent { pkid: 8 });
        ev(
            &mut t,
            Outbound::Acked {
                pkid: 8,
                refused: None,
            },
        );
        assert_eq!(delivered(&t), [false, true, false]);
        assert_eq!(pump(&mut t, 2), ["t/2"]);
        ev(&mut t, Outbound::Sent { pkid: 9 });
        ev(
            &mut t,
            Outbound::Acked {
                pkid: 7,
                refused: None,
            },
        );
        // Someone else's ack changes nothing.
        ev(
            &mut t,
            Outbound::Acked {
                pkid: 99,
                refused: None,
            },
        );
        assert_eq!(delivered(&t), [true, true, false]);
        ev(
            &mut t,
            Outbound::Acked {
                pkid: 9,
                refused: None,
            },
        );
        assert!(t.all_done());
        assert_eq!(t.finish(), vec![Outcome::Delivered; 3]);
    }

    #[test]
    fn a_resumed_session_resends_and_a_lost_one_republishes() {
        let mut t = tracker(3);
        assert_eq!(pump(&mut t, 16).len(), 3);
        ev(&mut t, Outbound::Sent { pkid: 1 });
        // Disconnected: nothing is queued until the CONNACK.
        t.connected = false;
        assert!(pump(&mut t, 16).is_empty());
        // Resumed: rumqttc sends pkid 1 again, then the two it had not sent yet.
        ev(
            &mut t,
            Outbound::ConnAck {
                session_present: true,
            },
        );
        assert!(pump(&mut t, 16).is_empty(), "nothing to publish again");
        ev(&mut t, Outbound::Sent { pkid: 1 });
        ev(&mut t, Outbound::Sent { pkid: 2 });
        ev(&mut t, Outbound::Sent { pkid: 3 });
        ev(
            &mut t,
            Outbound::Acked {
                pkid: 1,
                refused: None,
            },
        );
        assert_eq!(delivered(&t), [true, false, false]);
        // Lost: the two unacknowledged are published again and get fresh ids.
        t.connected = false;
        ev(
            &mut t,
            Outbound::ConnAck {
                session_present: false,
            },
        );
        assert_eq!(pump(&mut t, 16), ["t/1", "t/2"]);
        ev(&mut t, Outbound::Sent { pkid: 4 });
        ev(&mut t, Outbound::Sent { pkid: 5 });
        // A late ack of the old pkid 2 (an id the tracker no longer knows) is ignored.
        ev(
            &mut t,
            Outbound::Acked {
                pkid: 2,
                refused: None,
            },
        );
        assert_eq!(delivered(&t), [true, false, false]);
        ev(
            &mut t,
            Outbound::Acked {
                pkid: 4,
                refused: None,
            },
        );
        ev(
            &mut t,
            Outbound::Acked {
                pkid: 5,
                refused: None,
            },
        );
        assert_eq!(t.finish(), vec![Outcome::Delivered; 3]);
        assert!(t.inflight.is_empty() && t.unassigned.is_empty());
    }

    #[test]
    fn refusals_fail_at_once_or_after_the_retry_policy() {
        let mut t = tracker(2);
        pump(&mut t, 16);
        ev(&mut t, Outbound::Sent { pkid: 1 });
        ev(&mut t, Outbound::Sent { pkid: 2 });
        let refused = |code: u8, reason: &str| {
            Some(Refused {
                code,
                reason: reason.into(),
            })
        };
        ev(
            &mut t,
            Outbound::Acked {
                pkid: 1,
                refused: refused(0x87, "NotAuthorized"),
            },
        );
        ev(
            &mut t,
            Outbound::Acked {
                pkid: 2,
                refused: refused(0x97, "QuotaExceeded"),
            },
        );
        let SlotState::Done(Outcome::Failed { reason, attempts }) = &t.slots[0].state else {
            panic!("{:?}", t.slots[0].state)
        };
        assert!(
            reason.contains("NotAuthorized") && reason.contains("0x87"),
            "{reason}"
        );
        assert_eq!(*attempts, 1);
        // Quota exceeded: published again once due (policy: 2 attempts), then failed.
        let due = t.next_retry().expect("a retry is scheduled");
        let mut sent = Vec::new();
        t.pump(16, due, &mut |topic, _| {
            sent.push(topic.to_string());
            true
        });
        assert_eq!(sent, ["t/1"]);
        ev(&mut t, Outbound::Sent { pkid: 3 });
        ev(
            &mut t,
            Outbound::Acked {
                pkid: 3,
                refused: refused(0x97, "QuotaExceeded"),
            },
        );
        let outcomes = t.finish();
        assert!(
            matches!(&outcomes[1], Outcome::Failed { attempts: 2, .. }),
            "{outcomes:?}"
        );
    }

    #[test]
    fn an_abandoned_batch_keeps_its_ids_out_of_the_next() {
        let mut t = tracker(2);
        pump(&mut t, 16);
        ev(&mut t, Outbound::Sent { pkid: 1 });
        // Stopped with both in flight, one of them not even reported sent.
        assert!(t.finish().is_empty());
        t.begin(vec![slot(5)]);
        assert_eq!(pump(&mut t, 16), ["t/5"]);
        ev(&mut t, Outbound::Sent { pkid: 2 }); // the old second publish
        ev(&mut t, Outbound::Sent { pkid: 3 }); // ours
        ev(
            &mut t,
            Outbound::Acked {
                pkid: 2,
                refused: None,
            },
        );
        ev(
            &mut t,
            Outbound::Acked {
                pkid: 1,
                refused: None,
            },
        );
        assert!(!t.all_done());
        ev(
            &mut t,
            Outbound::Acked {
                pkid: 3,
                refused: None,
            },
        );
        assert_eq!(t.finish(), vec![Outcome::Delivered]);
    }

    #[test]
    fn qos0_is_delivered_when_written_and_qos2_when_completed() {
        let mut t = tracker(2);
        pump(&mut t, 16);
        ev(&mut t, Outbound::Sent { pkid: 0 });
        assert_eq!(delivered(&t), [true, false]);
        ev(&mut t, Outbound::Sent { pkid: 4 });
        ev(
            &mut t,
            Outbound::Received {
                pkid: 4,
                refused: None,
            },
        );
        assert_eq!(delivered(&t), [true, false]);
        ev(&mut t, Outbound::Completed { pkid: 4 });
        assert_eq!(delivered(&t), [true, true]);
    }
}
