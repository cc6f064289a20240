//! The world outside the engine: recorded input, and later MQTT, sinks and the admin API.

pub mod input;
