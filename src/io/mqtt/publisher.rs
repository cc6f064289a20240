//! A publishing connection, separate from the source's: dead letters (and, later, alerts)
//! must flow even while the source has stopped reading because the engine is busy, and the
//! source's acknowledgements must never wait behind a burst of publishes.

use std::time::Duration;

use anyhow::Context as _;
use secrecy::SecretString;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use super::client::{self, Client, Full, Polled};
use crate::config::BrokerConfig;

/// Publishes QoS 1 messages on its own connection (client id `<client_id>-out`, persistent
/// session, so messages in flight when the connection drops are sent again).
#[derive(Clone)]
pub struct Publisher {
    client: Client,
    qos: u8,
}

impl Publisher {
    /// Starts the connection task. It runs until [`Publisher::close`] has been called and the
    /// DISCONNECT is out, or until `abort` is cancelled.
    pub fn start(
        broker: &BrokerConfig,
        password: Option<&SecretString>,
        abort: CancellationToken,
    ) -> anyhow::Result<(Publisher, JoinHandle<()>)> {
        let tls = match &broker.tls {
            Some(t) => Some(super::tls::client_config(t).context("TLS for [broker]")?),
            None => None,
        };
        let (client, mut events) = client::new(client::Options {
            broker,
            client_id: format!("{}-out", broker.client_id),
            password,
            manual_acks: false,
            capacity: 1024,
            receive_maximum: None,
            tls,
        });
        let mut backoff = Backoff::new(broker.reconnect_min, broker.reconnect_max);
        let target = format!("{}:{}", broker.host, broker.port);
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    biased;
                    _ = abort.cancelled() => break,
                    polled = events.poll() => match polled {
                        Ok(Polled::ConnAck { .. }) => {
                            backoff.reset();
                            tracing::debug!(broker = %target, "publisher connected");
                        }
                        Ok(Polled::DisconnectSent) => break,
                        Ok(_) => {}
                        Err(e) => {
                            let delay = backoff.next_delay();
                            tracing::warn!(broker = %target, error = %e, retry_in = ?delay,
                                "MQTT publishing connection failed");
                            tokio::select! {
                                _ = abort.cancelled() => break,
                                _ = tokio::time::sleep(delay) => {}
                            }
                        }
                    }
                }
            }
        });
        Ok((Publisher { client, qos: 1 }, task))
    }

    /// Queues a message, waiting up to `wait` while the connection is backed up.
    pub async fn publish(&self, topic: &str, payload: Vec<u8>, wait: Duration) -> Result<(), Full> {
        self.client
            .publish(topic, payload, self.qos, false, wait)
            .await
    }

    /// Queues the DISCONNECT, after every publish queued so far.
    pub fn close(&self) {
        let _ = self.client.try_disconnect();
    }
}
