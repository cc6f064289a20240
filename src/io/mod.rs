//! The world outside the engine: recorded input, the MQTT source, the live pipeline and the
//! dead-letter sink (alert sinks are in [`crate::delivery`]) and the requests a running pipeline answers.

pub mod control;
pub mod deadletter;
pub mod input;
pub mod mqtt;
pub mod pipeline;
pub mod reload;
pub mod shard;
