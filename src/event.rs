//! Typed values and events: what device profiles produce and rules read.
//!
//! An event is a row of values indexed by field position in its stream's schema; no field is
//! ever looked up by name on the hot path.

use arcstr::ArcStr;

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
    /// `string`; shared, since the same key or label repeats across many events, and one
    /// pointer wide, so that a value takes 16 bytes.
    Str(ArcStr),
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

    /// The value borrowed.
    pub fn borrowed(&self) -> ValueRef<'_> {
        match self {
            Value::Null => ValueRef::Null,
            Value::Bool(b) => ValueRef::Bool(*b),
            Value::Int(i) => ValueRef::Int(*i),
            Value::Float(f) => ValueRef::Float(*f),
            Value::Str(s) => ValueRef::Str(s),
            Value::Timestamp(t) => ValueRef::Timestamp(*t),
            Value::Duration(d) => ValueRef::Duration(*d),
        }
    }
}

/// A value borrowed: what a scanner reads from a line before (or instead of) owning it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ValueRef<'a> {
    /// Missing or null.
    Null,
    /// `bool`
    Bool(bool),
    /// `int`
    Int(i64),
    /// `float`
    Float(f64),
    /// `string`
    Str(&'a str),
    /// `timestamp`
    Timestamp(Nanos),
    /// `duration`
    Duration(Nanos),
}

impl ValueRef<'_> {
    /// The owned value.
    pub fn to_value(self) -> Value {
        match self {
            ValueRef::Null => Value::Null,
            ValueRef::Bool(b) => Value::Bool(b),
            ValueRef::Int(i) => Value::Int(i),
            ValueRef::Float(f) => Value::Float(f),
            ValueRef::Str(s) => Value::Str(ArcStr::from(s)),
            ValueRef::Timestamp(t) => Value::Timestamp(t),
            ValueRef::Duration(d) => Value::Duration(d),
        }
    }

    /// Feeds the value to a hasher so that equal values (floats by their bits) hash alike
    /// whether borrowed from a line or owned by an event (or a key: [`HashValue`] hashes
    /// through this too).
    ///
    /// [`HashValue`]: crate::engine::key::HashValue
    pub fn hash_into<H: std::hash::Hasher>(self, h: &mut H) {
        match self {
            ValueRef::Null => h.write_u8(0),
            ValueRef::Bool(b) => {
                h.write_u8(1);
                h.write_u8(b as u8);
            }
            ValueRef::Int(i) => {
                h.write_u8(2);
                h.write_i64(i);
            }
            ValueRef::Float(f) => {
                h.write_u8(3);
                h.write_u64(f.to_bits());
            }
            ValueRef::Str(s) => {
                h.write_u8(4);
                std::hash::Hash::hash(s, h);
            }
            ValueRef::Timestamp(t) => {
                h.write_u8(5);
                h.write_i64(t);
            }
            ValueRef::Duration(d) => {
                h.write_u8(6);
                h.write_i64(d);
            }
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
