//! The embedded broker (rumqttd) that `tern run` starts when no `[broker]` is configured, so
//! a gateway can publish straight to tern.

use std::collections::HashMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// Starts rumqttd on `listen` (MQTT 3.1.1) and waits until it accepts connections.
///
/// rumqttd has no shutdown: its threads end with the process. It binds the address itself
/// and does not report a failure to bind, so the address is tried first.
pub fn start(listen: SocketAddr, max_packet_size: usize) -> anyhow::Result<()> {
    TcpListener::bind(listen).map(drop).with_context(|| {
        format!(
            "cannot start the embedded broker on {listen}: the address is in use or not \
                 local (configure [broker] to use another broker, or [embedded_broker] listen)"
        )
    })?;
    let mut broker = rumqttd::Broker::new(config(listen, max_packet_size));
    std::thread::Builder::new()
        .name("tern-broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "the embedded broker stopped");
            }
        })
        .context("cannot start the embedded broker thread")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if probe(listen).is_ok() {
            tracing::info!(address = %listen, "embedded MQTT broker listening");
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("the embedded broker did not start listening on {listen}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Connects to the broker as MQTT 3.1.1 and disconnects cleanly (a bare TCP connect would be
/// logged by the broker as a failed client).
fn probe(addr: SocketAddr) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200))?;
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    let id = b"tern-probe";
    // CONNECT: protocol "MQTT" level 4, clean session, keep-alive 10 s, client id.
    let mut connect = vec![0x10, (10 + 2 + id.len()) as u8];
    connect.extend_from_slice(&[
        0,
        4,
        b'M',
        b'Q',
        b'T',
        b'T',
        4,
        0x02,
        0,
        10,
        0,
        id.len() as u8,
    ]);
    connect.extend_from_slice(id);
    s.write_all(&connect)?;
    let mut connack = [0u8; 4];
    s.read_exact(&mut connack)?;
    if connack[0] != 0x20 || connack[3] != 0 {
        return Err(std::io::Error::other(
            "not an MQTT broker accepting connections",
        ));
    }
    // DISCONNECT.
    s.write_all(&[0xe0, 0])
}

/// The rumqttd configuration, built in code: one MQTT 3.1.1 listener, in-memory commit logs
/// small enough for a gateway.
fn config(listen: SocketAddr, max_packet_size: usize) -> rumqttd::Config {
    let connections = rumqttd::ConnectionSettings {
        connection_timeout_ms: 60_000,
        max_payload_size: max_packet_size,
        max_inflight_count: 100,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    let server = rumqttd::ServerSettings {
        name: "tern-v4".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 1,
        connections,
    };
    rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: 10_010,
            max_outgoing_packet_count: 200,
            max_segment_size: 16 << 20,
            max_segment_count: 4,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("1".to_string(), server)])),
        ..Default::default()
    }
}
