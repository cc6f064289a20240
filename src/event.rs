//! Typed values and events: what device profiles produce and rules read.
//!
//! An event is a row of values indexed by field position in its stream's schema; no field is
//! ever looked up by name on the hot path.

use arcstr::ArcStr;
use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

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
/// One reference-counted block holds a 16-byte header (count, stream, length, time) and the
/// values, so an event costs one allocation to build and one to free however many rules and
/// keys share it, and cloning it is a count increment. The handle is one pointer wide. The
/// count is our own, 32 bits wide beside 16-bit stream and length, where a generic thin
/// `Arc` spends 32 bytes on its header: every key holding a partial match keeps an event.
pub struct Event(NonNull<Head>);

// SAFETY: the values are `Send + Sync` (`ArcStr` is), the count is atomic, and a value is
// written only through `&mut Event` while the count is one.
unsafe impl Send for Event {}
// SAFETY: as for `Send`: shared handles only read.
unsafe impl Sync for Event {}

thread_local! {
    /// One event handed back by [`Event::recycle`], for the next [`Event::build`].
    static SPARE: std::cell::Cell<Option<Event>> = const { std::cell::Cell::new(None) };
}

/// The start of an event's block; its values follow it.
#[repr(C)]
struct Head {
    count: AtomicU32,
    /// Streams and fields are at most [`MAX_STREAMS`] and [`MAX_FIELDS`] (the checker's E225).
    stream: u16,
    len: u16,
    time: Nanos,
}

/// The most streams a program may declare: an event stores its stream in 16 bits.
pub const MAX_STREAMS: usize = u16::MAX as usize;
/// The most fields a stream may have: an event stores its length in 16 bits.
pub const MAX_FIELDS: usize = u16::MAX as usize;

// The values start right after the header, aligned.
const _: () = assert!(std::mem::size_of::<Head>() == 16);
const _: () = assert!(std::mem::size_of::<Head>().is_multiple_of(std::mem::align_of::<Value>()));
const _: () = assert!(std::mem::align_of::<Value>() <= std::mem::align_of::<Head>());

/// Past this many handles a clone aborts, as `Arc` does, rather than let the count wrap.
const MAX_COUNT: u32 = u32::MAX / 2;

impl Event {
    /// An event of stream `stream` at `time` with these values in schema order.
    pub fn new<I>(stream: u32, time: Nanos, fields: I) -> Event
    where
        I: IntoIterator<Item = Value, IntoIter: ExactSizeIterator>,
    {
        let fields = fields.into_iter();
        let mut event = Event::nulls(stream, fields.len(), time);
        // Every value is a null already, so a short iterator leaves nulls; a long one is cut.
        for (slot, v) in event.values_mut().iter_mut().zip(fields) {
            *slot = v;
        }
        event
    }

    /// A new block of `len` nulls, counted once.
    fn nulls(stream: u32, len: usize, time: Nanos) -> Event {
        // Streams and lengths beyond 16 bits are rejected by the checker and by the stored
        // state's reader; cut here too, so the block's layout always matches its header.
        let len = len.min(MAX_FIELDS);
        let layout = Event::layout(len);
        // SAFETY: the layout is never zero-sized (the header is 16 bytes).
        let block = unsafe { std::alloc::alloc(layout) }.cast::<Head>();
        let Some(head) = NonNull::new(block) else {
            std::alloc::handle_alloc_error(layout)
        };
        // SAFETY: the block is fresh, sized and aligned for the header and `len` values.
        unsafe {
            head.as_ptr().write(Head {
                count: AtomicU32::new(1),
                stream: stream as u16,
                len: len as u16,
                time,
            });
            let values = head.as_ptr().add(1).cast::<Value>();
            for i in 0..len {
                values.add(i).write(Value::Null);
            }
        }
        Event(head)
    }

    fn layout(len: usize) -> Layout {
        let size = std::mem::size_of::<Head>() + len * std::mem::size_of::<Value>();
        // Not reached: `len` is at most 65,535, about 1 MiB of values.
        Layout::from_size_align(size, std::mem::align_of::<Head>())
            .unwrap_or_else(|_| std::process::abort())
    }

    fn head(&self) -> &Head {
        // SAFETY: the block lives while any handle does.
        unsafe { self.0.as_ref() }
    }

    /// The values and the header's stream and time, if this handle is the only one.
    fn unique_mut(&mut self) -> Option<(&mut [Value], &mut u16, &mut Nanos)> {
        if self.head().count.load(Ordering::Acquire) != 1 {
            return None;
        }
        let len = usize::from(self.head().len);
        // SAFETY: the only handle, borrowed mutably: nothing else reads the block. The values
        // and the header's fields do not overlap.
        unsafe {
            let head = self.0.as_ptr();
            let values = std::slice::from_raw_parts_mut(head.add(1).cast::<Value>(), len);
            Some((values, &mut (*head).stream, &mut (*head).time))
        }
    }

    /// The values of a block only this function's caller holds (just made).
    fn values_mut(&mut self) -> &mut [Value] {
        match self.unique_mut() {
            Some((values, _, _)) => values,
            None => &mut [],
        }
    }

    /// Builds an event of `len` values in place, with no allocation but the event's own:
    /// `fill` writes the values (all `Null` to begin with) and returns the event time, or an
    /// error to give up.
    pub fn build<E>(
        stream: u32,
        len: usize,
        fill: impl FnOnce(&mut [Value]) -> Result<Nanos, E>,
    ) -> Result<Event, E> {
        let mut event = match SPARE.take() {
            Some(mut spare) if spare.fields().len() == len => {
                // It still holds its old values.
                spare.values_mut().fill(Value::Null);
                spare
            }
            _ => Event::nulls(stream, len, 0),
        };
        match event.unique_mut() {
            Some((values, s, t)) => {
                *s = stream as u16;
                *t = fill(values)?;
                Ok(event)
            }
            // Not reached: a new or recycled event has no other handle.
            None => {
                let mut values = vec![Value::Null; len];
                let time = fill(&mut values)?;
                Ok(Event::new(stream, time, values))
            }
        }
    }

    /// Hands back an event its user is done with. If nothing else holds it, the next
    /// [`Event::build`] of as many values on this thread fills the same block: most events
    /// start no match and are dropped as soon as the engine has seen them, and a block just
    /// written is in cache where a fresh one is a miss on its first write (and a trip
    /// through the allocator both ways).
    pub fn recycle(self) {
        if self.head().count.load(Ordering::Acquire) == 1 {
            // Whatever was kept before is dropped here.
            SPARE.set(Some(self));
        }
    }

    /// Runs `f` on the values if this is the only reference to the event (to edit one
    /// before sharing it); `None` if it is shared.
    pub fn unique_fields<U>(&mut self, f: impl FnOnce(&mut [Value]) -> U) -> Option<U> {
        self.unique_mut().map(|(values, _, _)| f(values))
    }

    /// Moves the event to stream `stream` (a device profile's events belong to the program's
    /// stream of that name); copies it only if it is shared.
    pub fn set_stream(&mut self, stream: u32) {
        match self.unique_mut() {
            Some((_, s, _)) => *s = stream as u16,
            None => *self = Event::new(stream, self.time(), self.fields().iter().cloned()),
        }
    }

    /// Index of the stream in the loaded program.
    pub fn stream(&self) -> u32 {
        u32::from(self.head().stream)
    }

    /// Event time (the schema's time field), nanoseconds since the epoch.
    pub fn time(&self) -> Nanos {
        self.head().time
    }

    /// Field values in schema order.
    pub fn fields(&self) -> &[Value] {
        let len = usize::from(self.head().len);
        // SAFETY: `len` values follow the header, all written when the block was made.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr().add(1).cast::<Value>(), len) }
    }

    /// The event's address: equal for handles sharing one event.
    pub fn address(&self) -> *const std::ffi::c_void {
        self.0.as_ptr().cast_const().cast()
    }

    /// Bytes of the event's allocation (header and values; not the strings).
    pub fn heap_bytes(&self) -> usize {
        Event::layout(self.fields().len()).size()
    }
}

impl Clone for Event {
    fn clone(&self) -> Event {
        // Relaxed, as `Arc` does: a new handle is made from an existing one, which keeps the
        // block alive, and publishing the handle to another thread synchronizes by itself.
        if self.head().count.fetch_add(1, Ordering::Relaxed) > MAX_COUNT {
            std::process::abort();
        }
        Event(self.0)
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        if self.head().count.fetch_sub(1, Ordering::Release) != 1 {
            return;
        }
        // Every other handle's use of the block happens before it is freed.
        std::sync::atomic::fence(Ordering::Acquire);
        let len = usize::from(self.head().len);
        // SAFETY: the last handle: the values are dropped once and the block freed with the
        // layout it was allocated with.
        unsafe {
            let values = self.0.as_ptr().add(1).cast::<Value>();
            std::ptr::drop_in_place(std::ptr::slice_from_raw_parts_mut(values, len));
            std::alloc::dealloc(self.0.as_ptr().cast(), Event::layout(len));
        }
    }
}

impl PartialEq for Event {
    fn eq(&self, o: &Event) -> bool {
        self.0 == o.0
            || (self.stream() == o.stream()
                && self.time() == o.time()
                && self.fields() == o.fields())
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
        if e.stream as usize > MAX_STREAMS || e.fields.len() > MAX_FIELDS {
            return Err(serde::de::Error::custom(format!(
                "event of stream {} with {} fields: beyond 16 bits",
                e.stream,
                e.fields.len()
            )));
        }
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
    fn the_last_handle_on_any_thread_drops_the_values_once() {
        let label = ArcStr::from(String::from("a string no literal shares"));
        assert_eq!(ArcStr::strong_count(&label), Some(1));
        let event = Event::new(7, 3, [Value::Str(label.clone()), Value::Int(4)]);
        assert_eq!(ArcStr::strong_count(&label), Some(2));
        std::thread::scope(|s| {
            for _ in 0..4 {
                let mine = event.clone();
                s.spawn(move || {
                    let mut held = Vec::new();
                    for i in 0..2_000 {
                        held.push(mine.clone());
                        if i % 3 == 0 {
                            held.clear();
                        }
                    }
                    assert_eq!(mine.fields()[1], Value::Int(4));
                });
            }
        });
        let mut last = event.clone();
        assert_eq!(last.unique_fields(|_| ()), None, "two handles left");
        drop(event);
        assert_eq!(last.unique_fields(|v| v.len()), Some(2), "one handle left");
        assert_eq!(
            ArcStr::strong_count(&label),
            Some(2),
            "the value is still held"
        );
        drop(last);
        assert_eq!(
            ArcStr::strong_count(&label),
            Some(1),
            "dropped with the last handle"
        );
    }

    #[test]
    fn stored_events_beyond_16_bit_streams_or_lengths_are_refused() {
        let json = |stream: u64, n: usize| serde_json::json!({"stream": stream, "time": 1, "fields": vec!["Null"; n]});
        let widest = serde_json::from_value::<Event>(json(65_535, 65_535)).unwrap();
        assert_eq!((widest.stream(), widest.fields().len()), (65_535, 65_535));
        assert!(serde_json::from_value::<Event>(json(65_536, 1)).is_err());
        assert!(serde_json::from_value::<Event>(json(1, 65_536)).is_err());
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
        assert_eq!(e.heap_bytes(), 16 + 2 * 16);
    }
}
