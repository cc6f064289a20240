//! The simulator: device fleets that publish what the shipped profiles in `devices/` decode,
//! and the reproducible benchmark workload.
//!
//! - [`rng`]: seeded, portable randomness.
//! - [`device`]: device models and the payloads the shipped profiles decode.
//! - [`fleet`]: a fleet of devices and its messages in simulated time, flaws counted.
//! - [`publish`]: publishes a fleet to an MQTT broker, simulated time mapped to the wall clock.
//! - [`traffic`]: road traffic with congestion episodes (cameras, loop detectors, workload).
//! - [`workload`]: the benchmark file written by `tern simulate --out`.

pub mod device;
pub mod fleet;
pub mod publish;
pub mod rng;
pub mod traffic;
pub mod workload;
