//! Typed values and events: what device profiles produce and rules read.
//!
//! An event is a row of values indexed by field position in its stream's schema; no field is
//! ever looked up by name on the hot path.

use arcstr::ArcStr;
use std::alloc::Layout;
use std::mem::ManuallyDrop;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};

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

/// A value borrowed: what a scanner reads from a line before (or instead of) owning it, and
/// what an event's values are read as. Serializes as the [`Value`] it borrows.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(rename = "Value")]
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
    /// The value as a float, for numbers.
    pub fn as_f64(self) -> Option<f64> {
        match self {
            ValueRef::Int(i) => Some(i as f64),
            ValueRef::Float(f) => Some(f),
            _ => None,
        }
    }

    /// The owned value (a string copied).
    #[inline]
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
            ValueRef::Str(s) => hash_text(s.as_bytes(), h),
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

/// Feeds a string value's text to a hasher, as [`ValueRef::hash_into`] does; its bytes are
/// enough, so that text read from a line hashes without being made a `str` first.
pub fn hash_text<H: std::hash::Hasher>(text: &[u8], h: &mut H) {
    h.write_u8(4);
    h.write(text);
    // What `str`'s own hash adds, so that "ab","c" and "a","bc" differ as keys.
    h.write_u8(0xff);
}

/// `bytes` as a string if they are UTF-8: how a scanner reads string values from a line.
/// Keys and labels are nearly always ASCII, which a word-at-a-time test settles in a
/// fraction of the time of the general check (byte by byte through a short string).
#[inline(always)]
pub fn utf8(bytes: &[u8]) -> Option<&str> {
    if bytes.is_ascii() {
        // SAFETY: ASCII is UTF-8.
        Some(unsafe { std::str::from_utf8_unchecked(bytes) })
    } else {
        std::str::from_utf8(bytes).ok()
    }
}

/// An event of one stream: its time and its field values in schema order.
///
/// One reference-counted block holds a 14-byte header (time, count, stream, length), the
/// values' kinds (four bits each: the first four fill the header's 16 bytes), then the
/// values, 8 bytes each (a string as a pointer to its shared text). An event costs one
/// allocation to build and one to free however many rules and keys share it, and cloning it
/// is a count increment. The handle is one pointer wide. Every key holding a partial match
/// keeps an event, so the block is kept small: a value's kind takes four bits, and the count
/// 16 (a clone past half of that copies the event instead), so that an event of four values
/// is 48 bytes, where a generic thin `Arc` spends 32 on its header alone.
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

/// The start of an event's block; the tags go on past it, and the values follow them.
#[repr(C)]
struct Head {
    time: Nanos,
    count: AtomicU16,
    /// Streams and fields are at most [`MAX_STREAMS`] and [`MAX_FIELDS`] (the checker's E225).
    stream: u16,
    len: u16,
    /// The first of the tags, two a byte (value `i` in byte `i / 2`, low half first); those
    /// of values past the fourth go on after the header.
    tags: [u8; 2],
}

/// The most streams a program may declare: an event stores its stream in 16 bits.
pub const MAX_STREAMS: usize = u16::MAX as usize;
/// The most fields a stream may have: an event stores its length in 16 bits.
pub const MAX_FIELDS: usize = u16::MAX as usize;

/// A value's kind, in its four-bit tag.
mod tag {
    pub const NULL: u8 = 0;
    pub const BOOL: u8 = 1;
    pub const INT: u8 = 2;
    pub const FLOAT: u8 = 3;
    pub const STR: u8 = 4;
    pub const TIMESTAMP: u8 = 5;
    pub const DURATION: u8 = 6;
}

/// One value's 8 bytes: a number's bits, or a string. Which one is in the value's tag.
#[repr(C)]
union Slot {
    bits: u64,
    text: ManuallyDrop<ArcStr>,
}

const _: () = assert!(std::mem::size_of::<Head>() == 16);
const _: () = assert!(std::mem::size_of::<Slot>() == 8);
const _: () = assert!(std::mem::align_of::<Slot>() <= std::mem::align_of::<Head>());

/// Past this many handles a clone copies the event rather than share it: the count is 16
/// bits, and handles beyond a few hundred are rare (one per rule, key and window holding it).
const MAX_SHARED: u16 = u16::MAX / 2;

/// Bytes of the tags of `len` values, two a byte.
fn tags_len(len: usize) -> usize {
    len.div_ceil(2)
}

/// Bytes between the header and the values: the tags that do not fit in the header, rounded up
/// to a multiple of 8 so that the values are aligned.
fn rest_len(len: usize) -> usize {
    tags_len(len).saturating_sub(2).next_multiple_of(8)
}

/// Tag `i` (null past the tags).
#[inline]
fn tag_of(tags: &[u8], i: usize) -> u8 {
    tags.get(i / 2)
        .map_or(tag::NULL, |b| (b >> (4 * (i & 1))) & 0xF)
}

/// The value a tag and a slot hold.
fn read(tag: u8, slot: &Slot) -> ValueRef<'_> {
    // SAFETY: the tag says which field of the slot was written; a string stays alive while
    // the slot does.
    unsafe {
        match tag {
            tag::BOOL => ValueRef::Bool(slot.bits != 0),
            tag::INT => ValueRef::Int(slot.bits as i64),
            tag::FLOAT => ValueRef::Float(f64::from_bits(slot.bits)),
            tag::STR => ValueRef::Str(slot.text.as_str()),
            tag::TIMESTAMP => ValueRef::Timestamp(slot.bits as i64),
            tag::DURATION => ValueRef::Duration(slot.bits as i64),
            _ => ValueRef::Null,
        }
    }
}

/// The string a tag and a slot hold, if they hold one.
fn text(tag: u8, slot: &Slot) -> Option<&ArcStr> {
    // SAFETY: the tag says the slot holds a string.
    (tag == tag::STR).then(|| unsafe { &*slot.text })
}

/// The value a tag and a slot hold, owned: a string is shared, not copied.
fn own(tag: u8, slot: &Slot) -> Value {
    match text(tag, slot) {
        Some(s) => Value::Str(s.clone()),
        None => read(tag, slot).to_value(),
    }
}

/// Writes `v` over a slot whose tag is `tag`, dropping the string it held; returns the new tag.
fn put(tag: u8, slot: &mut Slot, v: Value) -> u8 {
    if tag == tag::STR {
        // SAFETY: the tag says the slot holds a string, dropped once: the caller writes the
        // tag returned below over it.
        unsafe { ManuallyDrop::drop(&mut slot.text) }
    }
    let (t, bits) = match v {
        Value::Null => (tag::NULL, 0),
        Value::Bool(b) => (tag::BOOL, u64::from(b)),
        Value::Int(i) => (tag::INT, i as u64),
        Value::Float(f) => (tag::FLOAT, f.to_bits()),
        Value::Timestamp(t) => (tag::TIMESTAMP, t as u64),
        Value::Duration(d) => (tag::DURATION, d as u64),
        Value::Str(s) => {
            *slot = Slot {
                text: ManuallyDrop::new(s),
            };
            return tag::STR;
        }
    };
    *slot = Slot { bits };
    t
}

/// An event's values while only one handle holds it: read and written in place.
pub struct Fields<'a> {
    tags: &'a mut [u8],
    slots: &'a mut [Slot],
}

impl Fields<'_> {
    /// The number of values.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Value `i`.
    pub fn get(&self, i: usize) -> Option<ValueRef<'_>> {
        let slot = self.slots.get(i)?;
        Some(read(tag_of(self.tags, i), slot))
    }

    /// Sets value `i` (past the end: nothing).
    #[inline]
    pub fn set(&mut self, i: usize, v: Value) {
        if let (Some(s), Some(byte)) = (self.slots.get_mut(i), self.tags.get_mut(i / 2)) {
            let shift = 4 * (i & 1);
            let t = put((*byte >> shift) & 0xF, s, v);
            *byte = (*byte & !(0xF << shift)) | (t << shift);
        }
    }

    /// Value `i` if it is a string, shared.
    pub fn str_at(&self, i: usize) -> Option<&ArcStr> {
        let slot = self.slots.get(i)?;
        text(tag_of(self.tags, i), slot)
    }

    /// Every value null again.
    fn clear(&mut self) {
        for (i, s) in self.slots.iter_mut().enumerate() {
            if tag_of(self.tags, i) == tag::STR {
                // SAFETY: the tag says the slot holds a string, dropped once: every tag is
                // null below.
                unsafe { ManuallyDrop::drop(&mut s.text) }
            }
        }
        self.tags.fill(0);
    }
}

impl Event {
    /// An event of stream `stream` at `time` with these values in schema order.
    pub fn new<I>(stream: u32, time: Nanos, fields: I) -> Event
    where
        I: IntoIterator<Item = Value, IntoIter: ExactSizeIterator>,
    {
        let fields = fields.into_iter();
        let mut event = Event::nulls(stream, fields.len(), time);
        if let Some((mut values, _, _)) = event.unique_mut() {
            // Every value is null already, so a short iterator leaves nulls; a long one is cut.
            for (i, v) in fields.enumerate().take(values.len()) {
                values.set(i, v);
            }
        }
        event
    }

    fn layout(len: usize) -> Layout {
        let size = std::mem::size_of::<Head>() + rest_len(len) + len * std::mem::size_of::<Slot>();
        // Not reached: `len` is at most 65,535, about 600 KiB.
        Layout::from_size_align(size, std::mem::align_of::<Head>())
            .unwrap_or_else(|_| std::process::abort())
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
        // SAFETY: the block is fresh, sized and aligned for the header, the tags and `len`
        // values; all-zero tags and slots are nulls.
        unsafe {
            head.as_ptr().write(Head {
                time,
                count: AtomicU16::new(1),
                stream: stream as u16,
                len: len as u16,
                tags: [0; 2],
            });
            let rest = layout.size() - std::mem::size_of::<Head>();
            head.as_ptr().add(1).cast::<u8>().write_bytes(0, rest);
        }
        Event(head)
    }

    fn head(&self) -> &Head {
        // SAFETY: the block lives while any handle does.
        unsafe { self.0.as_ref() }
    }

    /// The tags (two a byte), and the values.
    fn tags_and_slots(&self) -> (&[u8], &[Slot]) {
        let len = usize::from(self.head().len);
        let head = self.0.as_ptr();
        // SAFETY: the tags start in the header and go on past it, and `len` values follow
        // them, all written when the block was made. The pointers derive from the block's.
        unsafe {
            let tags = std::ptr::addr_of!((*head).tags).cast::<u8>();
            let slots = head.add(1).cast::<u8>().add(rest_len(len)).cast::<Slot>();
            (
                std::slice::from_raw_parts(tags, tags_len(len)),
                std::slice::from_raw_parts(slots, len),
            )
        }
    }

    /// Tag `i` and value `i`'s slot.
    #[inline]
    fn slot(&self, i: usize) -> Option<(u8, &Slot)> {
        let (tags, slots) = self.tags_and_slots();
        let slot = slots.get(i)?;
        Some((tag_of(tags, i), slot))
    }

    /// Every value's tag and slot, in order.
    fn tagged(&self) -> impl ExactSizeIterator<Item = (u8, &Slot)> {
        let (tags, slots) = self.tags_and_slots();
        slots
            .iter()
            .enumerate()
            .map(move |(i, s)| (tag_of(tags, i), s))
    }

    /// The values and the header's stream and time, if this handle is the only one.
    fn unique_mut(&mut self) -> Option<(Fields<'_>, &mut u16, &mut Nanos)> {
        if self.head().count.load(Ordering::Acquire) != 1 {
            return None;
        }
        // SAFETY: the only handle.
        Some(unsafe { self.parts() })
    }

    /// The values and the header's stream and time, to write.
    ///
    /// # Safety
    /// No other handle may use the block meanwhile: the count is one, or this is the last
    /// handle's drop.
    unsafe fn parts(&mut self) -> (Fields<'_>, &mut u16, &mut Nanos) {
        let len = usize::from(self.head().len);
        // SAFETY: nothing else reads the block (the caller's promise), and it is borrowed
        // mutably. The tags, the values and the header's fields do not overlap.
        unsafe {
            let head = self.0.as_ptr();
            let tags = std::ptr::addr_of_mut!((*head).tags).cast::<u8>();
            let slots = head.add(1).cast::<u8>().add(rest_len(len)).cast::<Slot>();
            (
                Fields {
                    tags: std::slice::from_raw_parts_mut(tags, tags_len(len)),
                    slots: std::slice::from_raw_parts_mut(slots, len),
                },
                &mut (*head).stream,
                &mut (*head).time,
            )
        }
    }

    /// Builds an event of `len` values in place, with no allocation but the event's own:
    /// `fill` writes the values (all `Null` to begin with) and returns the event time, or an
    /// error to give up.
    pub fn build<E>(
        stream: u32,
        len: usize,
        fill: impl FnOnce(&mut Fields<'_>) -> Result<Nanos, E>,
    ) -> Result<Event, E> {
        let mut event = match SPARE.take() {
            Some(spare) if spare.len() == len => spare,
            _ => Event::nulls(stream, len, 0),
        };
        match event.unique_mut() {
            Some((mut values, s, t)) => {
                // A recycled block still holds its old values.
                values.clear();
                *s = stream as u16;
                *t = fill(&mut values)?;
                Ok(event)
            }
            // Not reached: a new or recycled event has no other handle.
            None => {
                let mut fresh = Event::nulls(stream, len, 0);
                // SAFETY: a new block has one handle.
                let (mut values, _, t) = unsafe { fresh.parts() };
                *t = fill(&mut values)?;
                Ok(fresh)
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
    pub fn unique_fields<U>(&mut self, f: impl FnOnce(&mut Fields<'_>) -> U) -> Option<U> {
        self.unique_mut().map(|(mut values, _, _)| f(&mut values))
    }

    /// Moves the event to stream `stream` (a device profile's events belong to the program's
    /// stream of that name); copies it only if it is shared.
    pub fn set_stream(&mut self, stream: u32) {
        match self.unique_mut() {
            Some((_, s, _)) => *s = stream as u16,
            None => *self = Event::new(stream, self.time(), self.to_values()),
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

    /// The number of values (the stream's fields).
    pub fn len(&self) -> usize {
        usize::from(self.head().len)
    }

    /// True for an event without values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Value `i` (field `i` of the stream's schema), borrowed.
    #[inline]
    pub fn get(&self, i: usize) -> Option<ValueRef<'_>> {
        self.slot(i).map(|(t, s)| read(t, s))
    }

    /// Value `i`, owned (a string shared, not copied); null past the end.
    pub fn value(&self, i: usize) -> Value {
        self.slot(i).map_or(Value::Null, |(t, s)| own(t, s))
    }

    /// Value `i` if it is a string, shared.
    pub fn str_at(&self, i: usize) -> Option<&ArcStr> {
        self.slot(i).and_then(|(t, s)| text(t, s))
    }

    /// The values in schema order, borrowed.
    pub fn values(&self) -> impl ExactSizeIterator<Item = ValueRef<'_>> {
        self.tagged().map(|(t, s)| read(t, s))
    }

    /// The values in schema order, owned (for cold paths: one allocation).
    pub fn to_values(&self) -> Vec<Value> {
        self.tagged().map(|(t, s)| own(t, s)).collect()
    }

    /// The event's address: equal for handles sharing one event.
    pub fn address(&self) -> *const std::ffi::c_void {
        self.0.as_ptr().cast_const().cast()
    }

    /// Bytes of the event's block (header, tags and values; not the strings), as the
    /// allocator's size class.
    pub fn heap_bytes(&self) -> usize {
        crate::alloc::block_size(Event::layout(self.len()).size())
    }
}

impl Clone for Event {
    fn clone(&self) -> Event {
        // Relaxed, as `Arc` does: a new handle is made from an existing one, which keeps the
        // block alive, and publishing the handle to another thread synchronizes by itself.
        // Between the check and the increment other threads may add theirs, a handful where
        // the margin is half the count's range.
        if self.head().count.load(Ordering::Relaxed) >= MAX_SHARED {
            return Event::new(self.stream(), self.time(), self.to_values());
        }
        if self.head().count.fetch_add(1, Ordering::Relaxed) == u16::MAX {
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
        let len = self.len();
        // SAFETY: the last handle.
        unsafe { self.parts() }.0.clear();
        // SAFETY: the last handle, its strings dropped above: the block is freed with the
        // layout it was allocated with.
        unsafe { std::alloc::dealloc(self.0.as_ptr().cast(), Event::layout(len)) }
    }
}

impl PartialEq for Event {
    fn eq(&self, o: &Event) -> bool {
        self.0 == o.0
            || (self.stream() == o.stream()
                && self.time() == o.time()
                && self.values().eq(o.values()))
    }
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Event")
            .field("stream", &self.stream())
            .field("time", &self.time())
            .field("fields", &self.values().collect::<Vec<_>>())
            .finish()
    }
}

/// An event's values, serialized as the sequence of [`Value`]s they were.
struct Values<'a>(&'a Event);

impl Serialize for Values<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.values())
    }
}

/// The serialized form, the same as before events became one allocation: a struct of stream,
/// time and the values, so stored state and traces read as they did.
#[derive(Serialize)]
#[serde(rename = "Event")]
struct EventOut<'a> {
    stream: u32,
    time: Nanos,
    fields: Values<'a>,
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
            fields: Values(self),
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
    fn text_is_accepted_exactly_when_it_is_utf8() {
        let cases: [&[u8]; 9] = [
            b"",
            b"cam-00042",
            b"a string longer than two machine words, all of it ascii",
            "caf\u{e9}".as_bytes(),
            "\u{1f6a6} lights at n\u{b0}7, a long line past the word-sized prefix".as_bytes(),
            b"caf\xe9",
            b"\xff",
            b"ascii up to the very last byte of this string, then \xc3",
            b"\xed\xa0\x80 a surrogate",
        ];
        for bytes in cases {
            assert_eq!(utf8(bytes), std::str::from_utf8(bytes).ok(), "{bytes:?}");
        }
    }

    #[test]
    fn a_recycled_event_is_rebuilt_in_its_block_only_when_nothing_else_holds_it() {
        let build = |stream, x: i64| {
            Event::build(stream, 2, |v| {
                v.set(1, Value::Int(x));
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
            assert!(
                (0..v.len()).all(|i| v.get(i) == Some(ValueRef::Null)),
                "stale values"
            );
            v.set(0, Value::Str("k".into()));
            Ok::<_, ()>(20)
        })
        .unwrap();
        assert_eq!(second.address(), block);
        assert_eq!(
            (second.stream(), second.time(), second.to_values()),
            (3, 20, vec![Value::Str("k".into()), Value::Null])
        );
        // Shared: not recycled, and the holder's event is untouched.
        let held = second.clone();
        second.recycle();
        let third = build(1, 30);
        assert_ne!(third.address(), block);
        assert_eq!(held.value(0), Value::Str("k".into()));
        // Another length: a new block; the spare is dropped, not reused wrongly.
        third.recycle();
        let longer = Event::build(1, 3, |_| Ok::<_, ()>(40)).unwrap();
        assert_eq!(
            longer.to_values(),
            vec![Value::Null, Value::Null, Value::Null]
        );
        // A fill that gives up leaves nothing half-built behind for the next one.
        longer.recycle();
        assert!(
            Event::build(1, 3, |v| {
                v.set(0, Value::Int(1));
                Err::<Nanos, _>(())
            })
            .is_err()
        );
        let next = Event::build(1, 3, |v| {
            assert!(
                (0..v.len()).all(|i| v.get(i) == Some(ValueRef::Null)),
                "stale values"
            );
            Ok::<_, ()>(50)
        })
        .unwrap();
        assert_eq!(next.time(), 50);
    }

    #[test]
    fn an_event_is_built_in_place_and_edited_only_while_unshared() {
        let mut e = Event::build(2, 3, |v| {
            v.set(0, Value::Str("cam-1".into()));
            v.set(2, Value::Timestamp(7));
            Ok::<_, ()>(7)
        })
        .unwrap();
        assert_eq!((e.stream(), e.time()), (2, 7));
        assert_eq!(e.value(1), Value::Null);
        assert_eq!(
            Event::build(2, 3, |_| Err::<Nanos, _>("no time")),
            Err("no time")
        );

        assert_eq!(e.unique_fields(|v| v.set(1, Value::Int(1))), Some(()));
        let shared = e.clone();
        assert_eq!(e.address(), shared.address());
        assert_eq!(e.unique_fields(|v| v.set(1, Value::Int(2))), None);
        assert_eq!(shared.value(1), Value::Int(1));

        // Moving a shared event to another stream copies it, leaving the other handle alone.
        e.set_stream(5);
        assert_eq!((e.stream(), shared.stream()), (5, 2));
        assert_ne!(e.address(), shared.address());
        assert_eq!(e.to_values(), shared.to_values());
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
                    assert_eq!(mine.value(1), Value::Int(4));
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
    fn a_clone_past_the_counts_half_copies_the_event() {
        let label = ArcStr::from(String::from("a string no literal shares"));
        let event = Event::new(4, 8, [Value::Int(1), Value::Str(label.clone())]);
        let handles: Vec<Event> = (0..usize::from(MAX_SHARED) + 10)
            .map(|_| event.clone())
            .collect();
        let shared = handles
            .iter()
            .filter(|h| h.address() == event.address())
            .count();
        assert_eq!(shared, usize::from(MAX_SHARED) - 1, "the rest are copies");
        let copy = &handles[handles.len() - 1];
        assert_ne!(copy.address(), event.address());
        assert_eq!((copy.stream(), copy.time()), (4, 8));
        assert_eq!(copy, &event);
        assert_eq!(ArcStr::strong_count(&label), Some(2 + 11));
        drop(handles);
        assert_eq!(ArcStr::strong_count(&label), Some(2));
        assert_eq!(event.clone().address(), event.address(), "shared again");
    }

    #[test]
    fn stored_events_beyond_16_bit_streams_or_lengths_are_refused() {
        let json = |stream: u64, n: usize| serde_json::json!({"stream": stream, "time": 1, "fields": vec!["Null"; n]});
        let widest = serde_json::from_value::<Event>(json(65_535, 65_535)).unwrap();
        assert_eq!((widest.stream(), widest.len()), (65_535, 65_535));
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
        // The header (with the tags of up to four values), 8 bytes per value: 32 bytes.
        assert_eq!(Event::layout(2).size(), 16 + 2 * 8);
        assert_eq!(e.heap_bytes(), 32);
        // Four values, as a camera's reading: 48 bytes, a size class of mimalloc's.
        assert_eq!(crate::alloc::block_size(Event::layout(4).size()), 48);
    }

    #[test]
    fn values_of_every_kind_read_back_as_written_and_serialize_as_values() {
        let text = ArcStr::from(String::from("shared text"));
        let all = vec![
            Value::Null,
            Value::Bool(true),
            Value::Bool(false),
            Value::Int(-7),
            Value::Float(-0.5),
            Value::Float(f64::MAX),
            Value::Str(text.clone()),
            Value::Timestamp(-1),
            Value::Duration(i64::MAX),
        ];
        let mut e = Event::new(2, 5, all.clone());
        assert_eq!(e.to_values(), all);
        assert_eq!(e.values().map(ValueRef::to_value).collect::<Vec<_>>(), all);
        // Five tags past the header's four, two a byte, rounded up to 8 bytes.
        assert_eq!(Event::layout(9).size(), 16 + 8 + 9 * 8);
        // Read owned, a string is shared, not copied; borrowed, it is the same text.
        assert!(e.str_at(6).is_some_and(|s| ArcStr::ptr_eq(s, &text)));
        assert!(matches!(e.value(6), Value::Str(s) if ArcStr::ptr_eq(&s, &text)));
        assert_eq!(e.get(6), Some(ValueRef::Str("shared text")));
        assert_eq!(
            (e.get(9), e.value(9), e.str_at(5)),
            (None, Value::Null, None)
        );
        // The same JSON and postcard bytes as the values themselves.
        assert_eq!(
            serde_json::to_value(&e).unwrap()["fields"],
            serde_json::to_value(&all).unwrap()
        );
        let back: Event = postcard::from_bytes(&postcard::to_allocvec(&e).unwrap()).unwrap();
        assert_eq!(back, e);
        // Overwriting or dropping a string lets go of it.
        drop(all);
        assert_eq!(ArcStr::strong_count(&text), Some(2));
        e.unique_fields(|v| v.set(6, Value::Int(1)));
        assert_eq!(ArcStr::strong_count(&text), Some(1));
        e.unique_fields(|v| v.set(0, Value::Str(text.clone())));
        assert_eq!(ArcStr::strong_count(&text), Some(2));
        drop(e);
        assert_eq!(ArcStr::strong_count(&text), Some(1));
    }

    fn any_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::Int),
            any::<f64>().prop_map(Value::Float),
            "[a-z]{0,12}".prop_map(|s| Value::Str(ArcStr::from(s))),
            any::<i64>().prop_map(Value::Timestamp),
            any::<i64>().prop_map(Value::Duration),
        ]
    }

    proptest::proptest! {
        /// An event reads back what was written, through every way in and out, against a
        /// plain vector of values: built, overwritten in place, recycled, shared and copied.
        #[test]
        fn an_event_holds_what_a_vector_of_values_would(
            first in proptest::collection::vec(any_value(), 0..12),
            edits in proptest::collection::vec((0usize..12, any_value()), 0..24),
        ) {
            use proptest::prop_assert_eq;
            let same = |e: &Event, model: &[Value]| {
                // Floats by their bits: NaN is a value like any other here.
                let bits = |v: &[Value]| format!("{:?}", v.iter().map(|v| match v {
                    Value::Float(f) => format!("f{}", f.to_bits()),
                    other => format!("{other:?}"),
                }).collect::<Vec<_>>());
                bits(&e.to_values()) == bits(model)
                    && e.len() == model.len()
                    && e.values().len() == model.len()
            };
            let mut model = first.clone();
            let mut e = Event::build(1, first.len(), |v| {
                for (i, x) in first.iter().enumerate() {
                    v.set(i, x.clone());
                }
                Ok::<_, ()>(9)
            }).unwrap();
            prop_assert_eq!(e.time(), 9);
            proptest::prop_assert!(same(&e, &model));
            for (i, v) in edits {
                e.unique_fields(|f| f.set(i, v.clone()));
                if let Some(slot) = model.get_mut(i) {
                    *slot = v;
                }
                proptest::prop_assert!(same(&e, &model));
            }
            let shared = e.clone();
            let mut moved = e.clone();
            moved.set_stream(3);
            prop_assert_eq!((moved.stream(), shared.stream()), (3, 1));
            proptest::prop_assert!(same(&moved, &model) && same(&shared, &model));
            let back: Event = postcard::from_bytes(&postcard::to_allocvec(&e).unwrap()).unwrap();
            proptest::prop_assert!(same(&back, &model));
            drop((e, shared));
            moved.recycle();
            // The recycled block is reused only for as many values, and comes back null.
            let again = Event::build(2, model.len(), |v| {
                prop_assert_eq!((0..v.len()).filter(|i| v.get(*i) != Some(ValueRef::Null)).count(), 0);
                Ok(1)
            }).unwrap();
            proptest::prop_assert!(same(&again, &vec![Value::Null; model.len()]));
        }
    }
}
