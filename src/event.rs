//! Typed values and events: what device profiles produce and rules read.
//!
//! An event is a row of values indexed by field position in its stream's schema; no field is
//! ever looked up by name on the hot path.

use std::sync::Arc;

use serde::Serialize;

/// Nanoseconds since the Unix epoch, UTC.
pub type Nanos = i64;

/// One field value.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub enum Value {
    /// Missing or null.
    Null,
    /// `bool`
    Bool(bool),
    /// `int`
    Int(i64),
    /// `float`
    Float(f64),
    /// `string`; shared, since the same key or label repeats across many events.
    Str(Arc<str>),
    /// `timestamp` in nanoseconds since the epoch.
    Timestamp(Nanos),
    /// `duration` in nanoseconds.
    Duration(Nanos),
}

impl Value {
    /// True for `Null`.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The value as a float, for numbers.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::Int(i) => Some(i as f64),
            Value::Float(f) => Some(f),
            _ => None,
        }
    }
}

/// An event of one stream: its time and its field values in schema order.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct Event {
    /// Index of the stream in the loaded program.
    pub stream: u32,
    /// Event time (the schema's time field), nanoseconds since the epoch.
    pub time: Nanos,
    /// Field values in schema order.
    pub fields: Box<[Value]>,
}
