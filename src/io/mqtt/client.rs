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

/// What one poll of a publishing connection produced: what tracking the broker's
/// acknowledgements of our own publishes needs (see [`EventLoop::poll_outbound`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    /// Connected; `session_present` says whether the broker kept the session, and with it the
    /// publishes rumqttc sends again.
    ConnAck {
        /// The broker resumed the previous session.
        session_present: bool,
    },
    /// A publish was written with this packet id (0 for QoS 0). Publishes are taken from the
    /// request queue in order; one sent again after a reconnect keeps its packet id.
    Sent {
        /// Packet id.
        pkid: u16,
    },
    /// PUBACK (QoS 1).
    Acked {
        /// Packet id.
        pkid: u16,
        /// MQTT 5: the broker refused the message.
        refused: Option<Refused>,
    },
    /// PUBREC (QoS 2, first half).
    Received {
        /// Packet id.
        pkid: u16,
        /// MQTT 5: the broker refused the message.
        refused: Option<Refused>,
    },
    /// PUBCOMP (QoS 2, done).
    Completed {
        /// Packet id.
        pkid: u16,
    },
    /// Our DISCONNECT went out.
    DisconnectSent,
    /// Anything else.
    Other,
}

/// An MQTT 5 PUBACK or PUBREC reason code other than success.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The reason code as on the wire (0x80 and up).
    pub code: u8,
    /// Its name, and the broker's reason string when it sent one.
    pub reason: String,
}

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
            if let Some(n) = b.receive_buffer {
                net.set_tcp_recv_buffer_size(n);
            }
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
            if let Some(n) = b.receive_buffer {
                let mut net = opts.network_options();
                net.set_tcp_recv_buffer_size(n);
                opts.set_network_options(net);
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

    /// Queues one UNSUBSCRIBE per filter.
    pub fn try_unsubscribe(&self, filters: &[String]) -> Result<(), Full> {
        for f in filters {
            match self {
                Client::V4(c) => c.try_unsubscribe(f.clone()).map_err(|_| Full)?,
                Client::V5(c) => c.try_unsubscribe(f.clone()).map_err(|_| Full)?,
            }
        }
        Ok(())
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

    /// Queues a publish without waiting; `Err` when the request queue is full or the topic
    /// holds a wildcard.
    pub fn try_publish(
        &self,
        topic: &str,
        payload: Bytes,
        qos: u8,
        retain: bool,
    ) -> Result<(), Full> {
        match self {
            Client::V4(c) => c
                .try_publish(topic, qos4(qos), retain, payload.to_vec())
                .map_err(|_| Full),
            Client::V5(c) => c
                .try_publish(topic, qos5(qos), retain, payload)
                .map_err(|_| Full),
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

impl EventLoop {
    /// Polls a publishing connection once, like [`EventLoop::poll`], reporting what tracking
    /// our publishes needs. On an error, call [`EventLoop::salvage`] before polling again.
    pub async fn poll_outbound(&mut self) -> Result<Outbound, String> {
        match self {
            EventLoop::V4(e) => {
                let event = e.poll().await.map_err(|e| describe4(&e))?;
                Ok(outbound4(event))
            }
            EventLoop::V5(e) => {
                let event = e.poll().await.map_err(|e| e.to_string())?;
                Ok(outbound5(event))
            }
        }
    }

    /// After a failed poll: returns the events rumqttc had buffered but not yet handed out
    /// (they happened before the failure), and moves the requests still in the request queue
    /// to rumqttc's list for the next connection, behind the publishes it sends again there.
    /// rumqttc did the same when the poll failed, but a publish may have been queued since;
    /// after this call, that list holds every publish queued so far, and a lost session
    /// (a CONNACK without `session_present`) drops exactly those.
    pub fn salvage(&mut self) -> Vec<Outbound> {
        match self {
            EventLoop::V4(e) => {
                let events = e.state.events.drain(..).map(outbound4).collect();
                e.clean();
                events
            }
            EventLoop::V5(e) => {
                let events = e.state.events.drain(..).map(outbound5).collect();
                e.clean();
                events
            }
        }
    }
}

fn outbound4(event: rumqttc::Event) -> Outbound {
    use rumqttc::{Event, Outgoing, Packet};
    match event {
        Event::Incoming(Packet::ConnAck(c)) => Outbound::ConnAck {
            session_present: c.session_present,
        },
        Event::Outgoing(Outgoing::Publish(pkid)) => Outbound::Sent { pkid },
        Event::Incoming(Packet::PubAck(a)) => Outbound::Acked {
            pkid: a.pkid,
            refused: None,
        },
        Event::Incoming(Packet::PubRec(r)) => Outbound::Received {
            pkid: r.pkid,
            refused: None,
        },
        Event::Incoming(Packet::PubComp(c)) => Outbound::Completed { pkid: c.pkid },
        Event::Outgoing(Outgoing::Disconnect) => Outbound::DisconnectSent,
        _ => Outbound::Other,
    }
}

fn outbound5(event: v5::Event) -> Outbound {
    use rumqttc::Outgoing;
    use v5::Event;
    use v5::mqttbytes::v5::{Packet, PubAckReason as A, PubRecReason as R};
    let refused = |code: u8, name: &str, text: Option<String>| {
        Some(Refused {
            code,
            reason: match text {
                Some(t) => format!("{name}: {t}"),
                None => name.to_string(),
            },
        })
    };
    match event {
        Event::Incoming(Packet::ConnAck(c)) => Outbound::ConnAck {
            session_present: c.session_present,
        },
        Event::Outgoing(Outgoing::Publish(pkid)) => Outbound::Sent { pkid },
        Event::Incoming(Packet::PubAck(a)) => {
            let text = a.properties.and_then(|p| p.reason_string);
            let code = match a.reason {
                A::Success | A::NoMatchingSubscribers => None,
                A::UnspecifiedError => Some(0x80),
                A::ImplementationSpecificError => Some(0x83),
                A::NotAuthorized => Some(0x87),
                A::TopicNameInvalid => Some(0x90),
                A::PacketIdentifierInUse => Some(0x91),
                A::QuotaExceeded => Some(0x97),
                A::PayloadFormatInvalid => Some(0x99),
            };
            Outbound::Acked {
                pkid: a.pkid,
                refused: code.and_then(|c| refused(c, &format!("{:?}", a.reason), text)),
            }
        }
        Event::Incoming(Packet::PubRec(r)) => {
            let text = r.properties.and_then(|p| p.reason_string);
            let code = match r.reason {
                R::Success | R::NoMatchingSubscribers => None,
                R::UnspecifiedError => Some(0x80),
                R::ImplementationSpecificError => Some(0x83),
                R::NotAuthorized => Some(0x87),
                R::TopicNameInvalid => Some(0x90),
                R::PacketIdentifierInUse => Some(0x91),
                R::QuotaExceeded => Some(0x97),
                R::PayloadFormatInvalid => Some(0x99),
            };
            Outbound::Received {
                pkid: r.pkid,
                refused: code.and_then(|c| refused(c, &format!("{:?}", r.reason), text)),
            }
        }
        Event::Incoming(Packet::PubComp(c)) => Outbound::Completed { pkid: c.pkid },
        Event::Outgoing(Outgoing::Disconnect) => Outbound::DisconnectSent,
        _ => Outbound::Other,
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
