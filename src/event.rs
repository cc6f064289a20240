//! Typed values and events: what device profiles produce and rules read.
//!
//! An event is a row of values indexed by field position in its stream's schema; no field is
//! ever looked up by name on the hot path.

use arcstr::ArcStr;
use triomphe::ThinArc;

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
///
/// One reference-counted allocation holds the header and the values, so an event costs one
/// allocation to build and one to free however many rules and keys share it, and cloning it
/// is a count increment. The handle is one pointer wide.
#[derive(Clone, PartialEq)]
pub struct Event(ThinArc<Head, Value>);

thread_local! {
    /// One event handed back by [`Event::recycle`], for the next [`Event::build`].
    static SPARE: std::cell::Cell<Option<Event>> = const { std::cell::Cell::new(None) };
}

/// What an event holds besides its values.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Head {
    stream: u32,
    time: Nanos,
}

impl Event {
    /// An event of stream `stream` at `time` with these values in schema order.
    pub fn new<I>(stream: u32, time: Nanos, fields: I) -> Event
    where
        I: IntoIterator<Item = Value, IntoIter: ExactSizeIterator>,
    {
        Event(ThinArc::from_header_and_iter(
            Head { stream, time },
            fields.into_iter(),
        ))
    }

    /// Builds an event of `len` values in place, with no allocation but the event's own:
    /// `fill` writes the values (all `Null` to begin with) and returns the event time, or an
    /// error to give up.
    pub fn build<E>(
        stream: u32,
        len: usize,
        fill: impl FnOnce(&mut [Value]) -> Result<Nanos, E>,
    ) -> Result<Event, E> {
        let spare = SPARE.take().filter(|spare| spare.fields().len() == len);
        let recycled = spare.is_some();
        let mut event = spare.unwrap_or_else(|| {
            Event(ThinArc::from_header_and_iter(
                Head { stream, time: 0 },
                std::iter::repeat_n(Value::Null, len),
            ))
        });
        let mut fill = Some(fill);
        let filled = event.0.with_arc_mut(|arc| {
            let inner = triomphe::Arc::get_mut(arc)?;
            let fill = fill.take()?;
            if recycled {
                // It still holds its old stream and values.
                inner.header_mut().stream = stream;
                inner.slice_mut().fill(Value::Null);
            }
            Some(fill(inner.slice_mut()).map(|time| inner.header_mut().time = time))
        });
        match (filled, fill) {
            (Some(filled), _) => filled.map(|()| event),
            // Not reached: a new or recycled event has no other reference. Filled on the
            // side instead.
            (None, Some(fill)) => {
                let mut values = vec![Value::Null; len];
                let time = fill(&mut values)?;
                Ok(Event::new(stream, time, values))
            }
            (None, None) => Ok(event),
        }
    }

    /// Hands back an event its user is done with. If nothing else holds it, the next
    /// [`Event::build`] of as many values on this thread fills the same block: most events
    /// start no match and are dropped as soon as the engine has seen them, and a block just
    /// written is in cache where a fresh one is a miss on its first write (and a trip
    /// through the allocator both ways).
    pub fn recycle(self) {
        if self.0.with_arc(|arc| arc.is_unique()) {
            // Whatever was kept before is dropped here.
            SPARE.set(Some(self));
        }
    }

    /// Runs `f` on the values if this is the only reference to the event (to edit one
    /// before sharing it); `None` if it is shared.
    pub fn unique_fields<U>(&mut self, f: impl FnOnce(&mut [Value]) -> U) -> Option<U> {
        self.0
            .with_arc_mut(|arc| triomphe::Arc::get_mut(arc).map(|inner| f(inner.slice_mut())))
    }

    /// Moves the event to stream `stream` (a device profile's events belong to the program's
    /// stream of that name); copies it only if it is shared.
    pub fn set_stream(&mut self, stream: u32) {
        let set = self.0.with_arc_mut(|arc| {
            triomphe::Arc::get_mut(arc).map(|inner| inner.header_mut().stream = stream)
        });
        if set.is_none() {
            *self = Event::new(stream, self.time(), self.fields().iter().cloned());
        }
    }

    /// Index of the stream in the loaded program.
    pub fn stream(&self) -> u32 {
        self.0.header.header.stream
    }

    /// Event time (the schema's time field), nanoseconds since the epoch.
    pub fn time(&self) -> Nanos {
        self.0.header.header.time
    }

    /// Field values in schema order.
    pub fn fields(&self) -> &[Value] {
        &self.0.slice
    }

    /// The event's address: equal for handles sharing one event.
    pub fn address(&self) -> *const std::ffi::c_void {
        self.0.ptr()
    }

    /// Bytes of the event's allocation (header, count and values; not the strings).
    pub fn heap_bytes(&self) -> usize {
        // The count, the header with the length, then the values.
        std::mem::size_of::<usize>()
            + std::mem::size_of::<triomphe::HeaderWithLength<Head>>()
            + std::mem::size_of_val(self.fields())
    }
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Event")
            .field("stream", &self.stream())
            .field("time", &self.time())
            .field("fields", &self.fields())
            .finish()
    }
}

/// The serialized form, the same as before events became one allocation: a struct of stream,
/// time and the values, so stored state and traces read as they did.
#[derive(Serialize)]
#[serde(rename = "Event")]
struct EventOut<'a> {
    stream: u32,
    time: Nanos,
    fields: &'a [Value],
}

#[derive(serde::Deserialize)]
#[serde(rename = "Event")]
struct EventIn {
    stream: u32,
    time: Nanos,
    fields: Vec<Value>,
}

impl Serialize for Event {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        EventOut {
            stream: self.stream(),
            time: self.time(),
            fields: self.fields(),
        }
        .serialize(s)
    }
}

impl<'de> serde::Deserialize<'de> for Event {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Event, D::Error> {
        let e = EventIn::deserialize(d)?;
        Ok(Event::new(e.stream, e.time, e.fields))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_recycled_event_is_rebuilt_in_its_block_only_when_nothing_else_holds_it() {
        let build = |stream, x: i64| {
            Event::build(stream, 2, |v| {
                v[1] = Value::Int(x);
                Ok::<_, ()>(x)
            })
            .unwrap()
        };
        let first = build(1, 10);
        let block = first.address();
        first.recycle();
        // Same length: the same block, with the new stream, time and values (the field the
        // fill left alone is null again, not the old one).
        let second = Event::build(3, 2, |v| {
            assert!(v.iter().all(Value::is_null), "stale values: {v:?}");
            v[0] = Value::Str("k".into());
            Ok::<_, ()>(20)
        })
        .unwrap();
        assert_eq!(second.address(), block);
        assert_eq!(
            (second.stream(), second.time(), second.fields()),
            (3, 20, &[Value::Str("k".into()), Value::Null][..])
        );
        // Shared: not recycled, and the holder's event is untouched.
        let held = second.clone();
        second.recycle();
        let third = build(1, 30);
        assert_ne!(third.address(), block);
        assert_eq!(held.fields()[0], Value::Str("k".into()));
        // Another length: a new block; the spare is dropped, not reused wrongly.
        third.recycle();
        let longer = Event::build(1, 3, |_| Ok::<_, ()>(40)).unwrap();
        assert_eq!(
            longer.fields(),
            &[Value::Null, Value::Null, Value::Null][..]
        );
        // A fill that gives up leaves nothing half-built behind for the next one.
        longer.recycle();
        assert!(
            Event::build(1, 3, |v| {
                v[0] = Value::Int(1);
                Err::<Nanos, _>(())
            })
            .is_err()
        );
        let next = Event::build(1, 3, |v| {
            assert!(v.iter().all(Value::is_null), "stale values: {v:?}");
            Ok::<_, ()>(50)
        })
        .unwrap();
        assert_eq!(next.time(), 50);
    }

    #[test]
    fn an_event_is_built_in_place_and_edited_only_while_unshared() {
        let mut e = Event::build(2, 3, |v| {
            v[0] = Value::Str("cam-1".into());
            v[2] = Value::Timestamp(7);
            Ok::<_, ()>(7)
        })
        .unwrap();
        assert_eq!((e.stream(), e.time()), (2, 7));
        assert_eq!(e.fields()[1], Value::Null);
        assert_eq!(
            Event::build(2, 3, |_| Err::<Nanos, _>("no time")),
            Err("no time")
        );

        assert_eq!(e.unique_fields(|v| v[1] = Value::Int(1)), Some(()));
        let shared = e.clone();
        assert_eq!(e.address(), shared.address());
        assert_eq!(e.unique_fields(|v| v[1] = Value::Int(2)), None);
        assert_eq!(shared.fields()[1], Value::Int(1));

        // Moving a shared event to another stream copies it, leaving the other handle alone.
        e.set_stream(5);
        assert_eq!((e.stream(), shared.stream()), (5, 2));
        assert_ne!(e.address(), shared.address());
        assert_eq!(e.fields(), shared.fields());
        let before = e.address();
        e.set_stream(6);
        assert_eq!((e.stream(), e.address()), (6, before));
    }

    #[test]
    fn an_event_serializes_as_a_struct_of_stream_time_and_fields() {
        let e = Event::new(1, 9, [Value::Float(2.5), Value::Null]);
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"stream": 1, "time": 9, "fields": [{"Float": 2.5}, "Null"]})
        );
        let back: Event = serde_json::from_value(json).unwrap();
        assert_eq!(back, e);
        let bytes = postcard::to_allocvec(&e).unwrap();
        assert_eq!(postcard::from_bytes::<Event>(&bytes).unwrap(), e);
        assert_eq!(e.heap_bytes(), 8 + 24 + 2 * 16);
    }
}
