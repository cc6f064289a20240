//! One face for rumqttc's MQTT 3.1.1 and MQTT 5 clients: the source and the publisher are
//! written once against [`Client`] and [`EventLoop`], and the `protocol` switch picks the
//! implementation.

use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5;
use secrecy::{ExposeSecret as _, SecretString};

use crate::config::{BrokerConfig, Protocol};

/// Handle that queues requests (acks, subscriptions, publishes) for the event loop.
#[derive(Clone)]
pub enum Client {
    /// MQTT 3.1.1.
    V4(rumqttc::AsyncClient),
    /// MQTT 5.
    V5(v5::AsyncClient),
}

/// The connection: rumqttc's event loop, which does all network I/O when polled.
pub enum EventLoop {
    /// MQTT 3.1.1.
    V4(Box<rumqttc::EventLoop>),
    /// MQTT 5.
    V5(Box<v5::EventLoop>),
}

/// A message received from the broker.
#[derive(Debug, Clone)]
pub struct Received {
    /// Topic name.
    pub topic: String,
    /// Payload, as received.
    pub payload: Bytes,
    /// QoS it was delivered with.
    pub qos: u8,
    /// Packet id (0 for QoS 0).
    pub pkid: u16,
    /// Retain flag.
    pub retain: bool,
    /// Redelivery flag.
    pub dup: bool,
}

/// What one poll of the event loop produced, reduced to what tern acts on.
#[derive(Debug)]
pub enum Polled {
    /// Connected; `session_present` says whether the broker kept the session.
    ConnAck {
        /// The broker resumed the previous session (its subscriptions still hold).
        session_present: bool,
    },
    /// A message.
    Publish(Received),
    /// A subscription answered; `refused` filters were rejected by the broker.
    SubAck {
        /// Count of refused filters in this SUBACK.
        refused: usize,
    },
    /// The broker acknowledged a QoS 1 publish of ours.
    PubAck,
    /// An acknowledgement of ours went out on the wire.
    AckSent,
    /// Our DISCONNECT went out.
    DisconnectSent,
    /// Anything else (pings, outgoing publishes, ...).
    Other,
}

/// A request that could not be queued because the request channel is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the MQTT request queue is full")]
pub struct Full;

/// Options shared by the source and the publisher.
pub struct Options<'a> {
    /// Broker settings.
    pub broker: &'a BrokerConfig,
    /// Client id to connect with.
    pub client_id: String,
    /// The password, when `[broker.auth]` is set.
    pub password: Option<&'a SecretString>,
    /// Acks are sent by tern, not by rumqttc on receipt.
    pub manual_acks: bool,
    /// Request channel capacity.
    pub capacity: usize,
    /// MQTT 5 receive maximum: QoS 1 messages the broker may have unacknowledged with us.
    pub receive_maximum: Option<u16>,
    /// TLS configuration (already built, so file errors surface at startup).
    pub tls: Option<std::sync::Arc<rustls::ClientConfig>>,
}

/// Creates a client and its (not yet connected) event loop.
pub fn new(o: Options<'_>) -> (Client, EventLoop) {
    let b = o.broker;
    let transport = |tls: &Option<std::sync::Arc<rustls::ClientConfig>>| match tls {
        Some(c) => rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Rustls(
            std::sync::Arc::clone(c),
        )),
        None => rumqttc::Transport::tcp(),
    };
    let user = b.auth.as_ref().map(|a| a.username.clone());
    match b.protocol {
        Protocol::V311 => {
            let mut opts = rumqttc::MqttOptions::new(o.client_id, b.host.clone(), b.port);
            opts.set_keep_alive(b.keep_alive)
                .set_clean_session(b.clean_session)
                .set_max_packet_size(b.max_packet_size, b.max_packet_size)
                .set_inflight(b.inflight)
                .set_manual_acks(o.manual_acks)
                .set_request_channel_capacity(o.capacity)
                .set_transport(transport(&o.tls));
            if let (Some(user), Some(pw)) = (user, o.password) {
                opts.set_credentials(user, pw.expose_secret());
            }
            let (client, mut events) = rumqttc::AsyncClient::new(opts, o.capacity);
            let mut net = events.network_options();
            net.set_connection_timeout(b.connect_timeout.as_secs().max(1));
            events.set_network_options(net);
            (Client::V4(client), EventLoop::V4(Box::new(events)))
        }
        Protocol::V5 => {
            let mut opts = v5::MqttOptions::new(o.client_id, b.host.clone(), b.port);
            let expiry = u32::try_from(b.session_expiry.as_secs()).unwrap_or(u32::MAX);
            opts.set_keep_alive(b.keep_alive)
                .set_clean_start(b.clean_session)
                .set_max_packet_size(Some(u32::try_from(b.max_packet_size).unwrap_or(u32::MAX)))
                .set_outgoing_inflight_upper_limit(b.inflight)
                .set_manual_acks(o.manual_acks)
                .set_request_channel_capacity(o.capacity)
                .set_connection_timeout(b.connect_timeout.as_secs().max(1))
                .set_transport(transport(&o.tls));
            if !b.clean_session {
                // In MQTT 5 a session ends with the connection unless it has an expiry.
                opts.set_session_expiry_interval(Some(expiry));
            }
            if o.receive_maximum.is_some() {
                opts.set_receive_maximum(o.receive_maximum);
            }
            if let (Some(user), Some(pw)) = (user, o.password) {
                opts.set_credentials(user, pw.expose_secret());
            }
            let (client, events) = v5::AsyncClient::new(opts, o.capacity);
            (Client::V5(client), EventLoop::V5(Box::new(events)))
        }
    }
}

fn qos4(q: u8) -> rumqttc::QoS {
    match q {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    }
}

fn qos5(q: u8) -> v5::mqttbytes::QoS {
    match q {
        0 => v5::mqttbytes::QoS::AtMostOnce,
        1 => v5::mqttbytes::QoS::AtLeastOnce,
        _ => v5::mqttbytes::QoS::ExactlyOnce,
    }
}

impl Client {
    /// Queues the acknowledgement of a received message (nothing for QoS 0).
    pub fn try_ack(&self, qos: u8, pkid: u16) -> Result<(), Full> {
        match self {
            Client::V4(c) => {
                let mut p = rumqttc::Publish::new("", qos4(qos), Vec::new());
                p.pkid = pkid;
                c.try_ack(&p).map_err(|_| Full)
            }
            Client::V5(c) => {
                let mut p = v5::mqttbytes::v5::Publish::new("", qos5(qos), Vec::new(), None);
                p.pkid = pkid;
                c.try_ack(&p).map_err(|_| Full)
            }
        }
    }

    /// Queues one SUBSCRIBE for every filter.
    pub fn try_subscribe(&self, filters: &[String], qos: u8) -> Result<(), Full> {
        match self {
            Client::V4(c) => c
                .try_subscribe_many(
                    filters
                        .iter()
                        .map(|f| rumqttc::SubscribeFilter::new(f.clone(), qos4(qos))),
                )
                .map_err(|_| Full),
            Client::V5(c) => c
                .try_subscribe_many(
                    filters
                        .iter()
                        .map(|f| v5::mqttbytes::v5::Filter::new(f.clone(), qos5(qos))),
                )
                .map_err(|_| Full),
        }
    }

    /// Queues a publish, waiting up to `wait` for room in the request channel.
    pub async fn publish(
        &self,
        topic: &str,
        payload: Vec<u8>,
        qos: u8,
        retain: bool,
        wait: Duration,
    ) -> Result<(), Full> {
        let send = async {
            match self {
                Client::V4(c) => c.publish(topic, qos4(qos), retain, payload).await.is_ok(),
                Client::V5(c) => c.publish(topic, qos5(qos), retain, payload).await.is_ok(),
            }
        };
        match tokio::time::timeout(wait, send).await {
            Ok(true) => Ok(()),
            _ => Err(Full),
        }
    }

    /// Queues a DISCONNECT.
    pub fn try_disconnect(&self) -> Result<(), Full> {
        match self {
            Client::V4(c) => c.try_disconnect().map_err(|_| Full),
            Client::V5(c) => c.try_disconnect().map_err(|_| Full),
        }
    }
}

impl EventLoop {
    /// Polls the connection once: connects if needed, else reads or writes one packet.
    /// An error means the connection is gone; polling again reconnects at once, so the
    /// caller waits first.
    pub async fn poll(&mut self) -> Result<Polled, String> {
        match self {
            EventLoop::V4(e) => {
                use rumqttc::{Event, Outgoing, Packet};
                match e.poll().await.map_err(|e| describe4(&e))? {
                    Event::Incoming(Packet::ConnAck(c)) => Ok(Polled::ConnAck {
                        session_present: c.session_present,
                    }),
                    Event::Incoming(Packet::Publish(p)) => Ok(Polled::Publish(Received {
                        topic: p.topic,
                        payload: p.payload,
                        qos: p.qos as u8,
                        pkid: p.pkid,
                        retain: p.retain,
                        dup: p.dup,
                    })),
                    Event::Incoming(Packet::SubAck(s)) => Ok(Polled::SubAck {
                        refused: s
                            .return_codes
                            .iter()
                            .filter(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                            .count(),
                    }),
                    Event::Incoming(Packet::PubAck(_)) => Ok(Polled::PubAck),
                    Event::Outgoing(Outgoing::PubAck(_) | Outgoing::PubRec(_)) => {
                        Ok(Polled::AckSent)
                    }
                    Event::Outgoing(Outgoing::Disconnect) => Ok(Polled::DisconnectSent),
                    _ => Ok(Polled::Other),
                }
            }
            EventLoop::V5(e) => {
                use rumqttc::Outgoing;
                use v5::Event;
                use v5::mqttbytes::v5::Packet;
                match e.poll().await.map_err(|e| e.to_string())? {
                    Event::Incoming(Packet::ConnAck(c)) => Ok(Polled::ConnAck {
                        session_present: c.session_present,
                    }),
                    Event::Incoming(Packet::Publish(p)) => Ok(Polled::Publish(Received {
                        topic: String::from_utf8_lossy(&p.topic).into_owned(),
                        payload: p.payload,
                        qos: p.qos as u8,
                        pkid: p.pkid,
                        retain: p.retain,
                        dup: p.dup,
                    })),
                    Event::Incoming(Packet::SubAck(s)) => Ok(Polled::SubAck {
                        refused: s
                            .return_codes
                            .iter()
                            .filter(|c| {
                                !matches!(c, v5::mqttbytes::v5::SubscribeReasonCode::Success(_))
                            })
                            .count(),
                    }),
                    Event::Incoming(Packet::PubAck(_)) => Ok(Polled::PubAck),
                    Event::Outgoing(Outgoing::PubAck(_) | Outgoing::PubRec(_)) => {
                        Ok(Polled::AckSent)
                    }
                    Event::Outgoing(Outgoing::Disconnect) => Ok(Polled::DisconnectSent),
                    _ => Ok(Polled::Other),
                }
            }
        }
    }
}

/// A connection error with a hint for the usual causes.
fn describe4(e: &rumqttc::ConnectionError) -> String {
    use rumqttc::{ConnectReturnCode, ConnectionError};
    match e {
        ConnectionError::ConnectionRefused(
            ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized,
        ) => format!("{e} (check [broker.auth])"),
        ConnectionError::MqttState(rumqttc::StateError::Deserialization(
            rumqttc::Error::PayloadSizeLimitExceeded(n),
        )) => format!(
            "a message of {n} bytes is larger than max_packet_size; MQTT 3.1.1 cannot refuse \
             one message, so the connection drops (raise [broker] max_packet_size, or use \
             protocol = \"5\" so the broker discards oversize messages)"
        ),
        _ => e.to_string(),
    }
}
