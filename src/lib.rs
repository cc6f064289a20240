//! tern: complex event processing and rules for IoT.
//!
//! MQTT readings are decoded by device profiles into typed events, matched per key and in
//! event time against patterns compiled to NFAs, and turned into alerts for webhooks, MQTT
//! and InfluxDB. See `README.md` for the tour and `docs/` for the details.
//!
//! # Layout
//!
//! Modules follow the data, and dependencies point one way: `cli` uses everything, `compile`
//! uses `lang`, and `lang` uses nothing of tern.
//!
//! - [`lang`]: text to AST: spans, the AST, the nom parser, the printer, diagnostics.
//! - [`event`]: typed values and events, indexed by field position.
//! - [`compile`]: AST to checked rules: name resolution and types against streams and devices.
//! - [`engine`]: per-key NFA evaluation in event time: runs, shared buffer, timers, windows.
//! - [`devices`]: device profiles (`devices/*.toml`): the streams they declare.
//! - [`io`]: the world outside the engine: recorded input for replay, the MQTT source, the
//!   live pipeline, alert sinks and the dead-letter sink.
//! - [`delivery`]: the alert outbox's dispatchers and the sinks: stdout, file, webhook
//!   (Standard Webhooks), MQTT, InfluxDB; and the webhook receiver.
//! - [`sim`]: simulated device fleets and the reproducible benchmark workload.
//! - [`store`]: durable state in RocksDB: the alert outbox and sink cursors, per-key state.
//! - [`config`]: `tern.toml`: broker, sinks, dead letters, logging (validated, with diagnostics).
//! - [`admin`]: the admin HTTP endpoint of `tern run`: health, readiness, metrics, rules.
//! - [`metrics`]: the metrics registry, with handles the hot path increments.
//! - [`logging`]: logs on stderr (text or JSON), rate-limited per kind of message.
//! - [`authoring`]: rule tests (`tern test`) and traces of a rule over recorded events
//!   (`tern explain --input`).
//! - [`cli`]: one module per subcommand.
//! - [`alloc`]: the global allocator (mimalloc); with [`event`] (its own reference-counted
//!   block, its ASCII check of string values), the only `unsafe` code.

pub mod admin;
// One of two modules with `unsafe`: the global allocator's calls into mimalloc.
#[allow(unsafe_code)]
pub mod alloc;
pub mod authoring;
pub mod cli;
pub mod compile;
pub mod config;
pub mod delivery;
pub mod devices;
pub mod engine;
// The other module with `unsafe`: an event's block, header and values in one allocation
// with a 16-bit count (docs/performance.md, "Memory"), and string values read from ASCII
// without the general UTF-8 check.
#[allow(unsafe_code)]
pub mod event;
pub mod io;
pub mod lang;
pub mod logging;
pub mod metrics;
pub mod sandbox;
pub mod sim;
pub mod store;
