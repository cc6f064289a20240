//! The world outside the engine: recorded input, the MQTT source, the live pipeline, alert
//! sinks and the dead-letter sink (later: the admin API).

pub mod deadletter;
pub mod input;
pub mod mqtt;
pub mod pipeline;
pub mod sink;
