//! The world outside the engine: recorded input, the MQTT source, the live pipeline and the
//! dead-letter sink (alert sinks are in [`crate::delivery`]) (later: the admin API).

pub mod deadletter;
pub mod input;
pub mod mqtt;
pub mod pipeline;
