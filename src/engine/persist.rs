//! The engine's state as durable records: what changed since the last write, and how to load
//! it back.
//!
//! Records (families are the store's, `keys` and `groups`):
//!
//! | family | key | value |
//! |---|---|---|
//! | `keys` | `k` rule name `\0` key | the rule's fingerprint and the key's [`KeyState`] |
//! | `keys` | `a` aggregate stream `\0` key | the aggregate's fingerprint and its open windows |
//! | `groups` | `s` stream name | the stream's schema fingerprint, newest event time, and its group's time |
//! | `groups` | `r` stream name `\0` time `\0` arrival | an event waiting in the reorder buffer |
//!
//! A record whose fingerprint no longer matches (the rule, its streams' schemas or the
//! aggregate changed) is dropped at load, and so is one whose rule or stream is gone: a changed
//! rule starts afresh, the others keep their partial matches.

use serde::{Deserialize, Serialize};

use super::key::KeyVal;
use super::run::KeyState;
use crate::event::{Nanos, Value};

/// Family of per-key records.
pub const KEYS: &str = "keys";
/// Family of per-stream records.
pub const GROUPS: &str = "groups";

/// Where changed records go (a RocksDB write batch).
pub trait StateWriter {
    /// Sets a record.
    fn put(&mut self, family: &'static str, key: Vec<u8>, value: Vec<u8>);
    /// Removes a record.
    fn delete(&mut self, family: &'static str, key: Vec<u8>);
}

/// Per (rule, key).
#[derive(Serialize, Deserialize)]
pub(super) struct KeyRecord {
    pub fingerprint: u64,
    pub state: KeyState,
}

/// Per (aggregate, key).
#[derive(Serialize, Deserialize)]
pub(super) struct AggRecord {
    pub fingerprint: u64,
    pub windows: super::window::KeyWindows,
}

/// Per stream: its own time and its group's.
#[derive(Serialize, Deserialize, Debug, Clone, Copy)]
pub(super) struct StreamRecord {
    pub schema: u64,
    pub max_seen: Option<Nanos>,
    pub forced: Nanos,
    pub now: Nanos,
    pub arrival: u64,
}

/// An event in the reorder buffer.
#[derive(Serialize, Deserialize)]
pub(super) struct BufferedRecord<'a> {
    pub schema: u64,
    pub fields: std::borrow::Cow<'a, [Value]>,
}

/// What a load found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Restored {
    /// Keys with partial matches, over all rules.
    pub keys: u64,
    /// Partial matches.
    pub runs: u64,
    /// Open aggregate windows' keys.
    pub windows: u64,
    /// Events back in reorder buffers.
    pub buffered: u64,
    /// Per rule or aggregate whose compiled form changed (or that is gone): records dropped.
    pub dropped: Vec<(String, u64)>,
}

/// What one stored record is, for `tern state`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordInfo {
    /// `rule`, `aggregate`, `stream` or `buffered`.
    pub kind: &'static str,
    /// The rule, aggregate or stream.
    pub name: String,
    /// Partial matches in a rule's key record (0 for other kinds).
    pub runs: u64,
}

/// Describes a record of the `keys` or `groups` family; `None` for one this build cannot read.
pub fn describe(key: &[u8], value: &[u8]) -> Option<RecordInfo> {
    let (tag, name, _) = split_key(key)?;
    let (kind, runs) = match tag {
        b'k' => (
            "rule",
            crate::store::decode::<KeyRecord>(value)
                .ok()?
                .state
                .runs
                .len() as u64,
        ),
        b'a' => ("aggregate", 0),
        b's' => ("stream", 0),
        b'r' => ("buffered", 0),
        _ => return None,
    };
    Some(RecordInfo {
        kind,
        name: name.to_owned(),
        runs,
    })
}

/// `tag` name `\0` rest.
pub(super) fn named_key(tag: u8, name: &str, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + name.len() + rest.len());
    k.push(tag);
    k.extend_from_slice(name.as_bytes());
    k.push(0);
    k.extend_from_slice(rest);
    k
}

/// Splits what [`named_key`] built.
pub(super) fn split_key(key: &[u8]) -> Option<(u8, &str, &[u8])> {
    let (&tag, rest) = key.split_first()?;
    let nul = rest.iter().position(|b| *b == 0)?;
    let name = std::str::from_utf8(&rest[..nul]).ok()?;
    Some((tag, name, &rest[nul + 1..]))
}

/// The key of a per-key record.
pub(super) fn key_bytes(key: &KeyVal) -> Vec<u8> {
    postcard::to_allocvec(key).unwrap_or_default()
}

/// Time and arrival, ordered as bytes the way they order as numbers.
pub(super) fn buffered_suffix(time: Nanos, arrival: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&((time as u64) ^ (1 << 63)).to_be_bytes());
    out[8..].copy_from_slice(&arrival.to_be_bytes());
    out
}

/// Reads [`buffered_suffix`].
pub(super) fn parse_buffered_suffix(b: &[u8]) -> Option<(Nanos, u64)> {
    let t: [u8; 8] = b.get(..8)?.try_into().ok()?;
    let a: [u8; 8] = b.get(8..16)?.try_into().ok()?;
    Some((
        (u64::from_be_bytes(t) ^ (1 << 63)) as Nanos,
        u64::from_be_bytes(a),
    ))
}

/// A stable fingerprint of a schema or definition (see
/// [`crate::compile::check::stable_hash`]).
pub(super) fn fingerprint<T: Serialize>(value: &T) -> u64 {
    crate::compile::check::stable_hash(value)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Key states and keys as they were stored before their containers became inline and thin
    /// and events one allocation (format 2): plain vectors and slices, an event a struct.
    mod format2 {
        use crate::compile::hir::VarId;
        use crate::engine::key::HashValue;
        use crate::engine::run::FoundKind;
        use crate::event::{Nanos, Value};

        /// Sequence numbers and run ids were 64 bits wide (postcard writes both as varints).
        #[derive(serde::Serialize, serde::Deserialize)]
        pub struct Run {
            pub state: u32,
            pub alive: u64,
            pub fresh: bool,
            pub start_seq: u64,
            pub start_time: Nanos,
            pub last_time: Nanos,
            pub tail: u32,
            pub id: u64,
            pub completed: bool,
            pub absence: bool,
        }
        #[derive(serde::Serialize, serde::Deserialize)]
        pub struct Found {
            pub kind: FoundKind,
            pub time: Nanos,
            pub tail: u32,
            pub start_seq: u64,
            pub last_seq: u64,
            pub id: u64,
        }

        #[derive(serde::Serialize, serde::Deserialize)]
        pub struct Event {
            pub stream: u32,
            pub time: Nanos,
            pub fields: Box<[Value]>,
        }
        #[derive(serde::Serialize, serde::Deserialize)]
        pub struct Entry {
            pub event: std::sync::Arc<Event>,
            pub seq: u64,
            pub var: VarId,
            pub prev: u32,
            pub anchor: u32,
            pub in_loop: bool,
            pub refs: u32,
        }

        #[derive(serde::Serialize, serde::Deserialize)]
        pub struct Buffer {
            pub entries: Vec<Entry>,
            pub free: Vec<u32>,
        }
        #[derive(serde::Serialize, serde::Deserialize)]
        pub struct KeyState {
            pub buffer: Buffer,
            pub runs: Vec<Run>,
            pub pending: Vec<Found>,
            pub next_seq: u64,
            pub next_run: u64,
        }
        #[derive(serde::Serialize, serde::Deserialize)]
        pub enum KeyVal {
            Global,
            One(HashValue),
            Many(std::sync::Arc<[HashValue]>),
        }
    }

    #[test]
    fn key_states_and_keys_are_stored_as_before_their_layout_changed() {
        use crate::compile::hir::VarId;
        use crate::engine::buffer::NIL;
        use crate::engine::key::HashValue;
        use crate::engine::run::{Found, FoundKind, Run};
        use crate::event::Event;
        use std::sync::Arc;

        let mut state = KeyState::default();
        let ev = |t| Event::new(0, t, [Value::Str("cam-1".into()), Value::Float(2.5)]);
        // Shared by two entries, as events are.
        let shared = ev(3);
        let a = state.buffer.push(ev(1), 1, VarId(0), false, NIL);
        let b = state.buffer.push(ev(2), 2, VarId(1), true, a);
        let c = state.buffer.push(shared.clone(), 3, VarId(1), true, a);
        let d = state.buffer.push(shared, 3, VarId(2), false, c);
        state.buffer.release(b);
        for (i, tail) in [a, c].into_iter().enumerate() {
            let mut run = Run::new(1 + i as u32, 3, 1, 1, tail, i as u32);
            run.fresh = i == 0;
            run.set_absence(i == 1);
            state.runs.push(run);
        }
        state.buffer.set_held(vec![Found {
            kind: FoundKind::Match,
            time: 3,
            tail: c,
            start_seq: 1,
            last_seq: 3,
            id: 7,
        }]);
        state.next_seq = 4;
        state.next_run = 2;
        let now = postcard::to_allocvec(&state).unwrap();
        let old: format2::KeyState = postcard::from_bytes(&now).unwrap();
        assert_eq!(old.runs.len(), 2);
        assert_eq!(old.buffer.free, vec![b]);
        let first = &old.buffer.entries[a as usize].event;
        assert_eq!((first.stream, first.time), (0, 1));
        assert_eq!(first.fields[1], Value::Float(2.5));
        assert_eq!(old.buffer.entries[d as usize].event.time, 3);
        assert_eq!(postcard::to_allocvec(&old).unwrap(), now);
        assert_eq!((old.runs[1].id, old.pending[0].last_seq), (1, 3));
        // A run's last time is stored, though it is its last entry's event's time now.
        assert_eq!((old.runs[0].last_time, old.runs[1].last_time), (1, 3));
        let back: KeyState = postcard::from_bytes(&now).unwrap();
        assert_eq!(postcard::to_allocvec(&back).unwrap(), now);
        assert_eq!((back.buffer.held().len(), back.buffer.live()), (1, 3));
        // A number beyond 32 bits (never written: keys are renumbered before) is refused,
        // not cut.
        let mut wide = old;
        wide.next_seq = 1 << 32;
        let bytes = postcard::to_allocvec(&wide).unwrap();
        assert!(postcard::from_bytes::<KeyState>(&bytes).is_err());
        // So is a run's state beyond 16 bits (the compiler refuses such rules).
        wide.next_seq = 4;
        let bytes = postcard::to_allocvec(&wide).unwrap();
        assert!(postcard::from_bytes::<KeyState>(&bytes).is_ok());
        wide.runs[0].state = 1 << 16;
        let bytes = postcard::to_allocvec(&wide).unwrap();
        assert!(postcard::from_bytes::<KeyState>(&bytes).is_err());

        let parts = vec![
            HashValue(Value::Str("line-3".into())),
            HashValue(Value::Int(4)),
        ];
        let key = KeyVal::Many(Arc::new(parts.clone()));
        let old = format2::KeyVal::Many(parts.into());
        assert_eq!(key_bytes(&key), postcard::to_allocvec(&old).unwrap());
        let one = format2::KeyVal::One(HashValue(Value::Str("cam-1".into())));
        let bytes = postcard::to_allocvec(&one).unwrap();
        let read: KeyVal = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(read, KeyVal::One(HashValue(Value::Str("cam-1".into()))));
        assert_eq!(
            key_bytes(&KeyVal::Global),
            postcard::to_allocvec(&format2::KeyVal::Global).unwrap()
        );
    }

    #[test]
    fn keys_round_trip_and_sort_by_time() {
        let k = named_key(b'r', "flow", &buffered_suffix(-5, 7));
        let (tag, name, rest) = split_key(&k).unwrap();
        assert_eq!((tag, name), (b'r', "flow"));
        assert_eq!(parse_buffered_suffix(rest), Some((-5, 7)));
        assert!(buffered_suffix(-5, 1) < buffered_suffix(3, 0));
        assert!(buffered_suffix(3, 0) < buffered_suffix(3, 1));
    }
}
