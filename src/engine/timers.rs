//! A rule's timers: deadlines with their keys' hashes, fired in (deadline, scheduling) order.
//!
//! Deadlines fall into buckets of about 8.6 seconds (2^33 ns). Only the earliest bucket is kept
//! sorted; a later one is appended to as deadlines are scheduled, and sorted once, when it
//! comes up. The sort is stable and a bucket holds its entries in the order they were
//! scheduled, so equal deadlines fire in that order with no counter stored per entry; and as
//! a bucket's number is its map key, an entry needs only its deadline's 33 bits within the
//! bucket. With a key's 31-bit hash beside them, an entry is 8 bytes (a binary heap's entry of
//! deadline, counter and key took 32), and scheduling, which mostly appends to a later bucket,
//! touches no other entry.
//!
//! A later bucket is a list of chunks that double from 2 entries up to [`CHUNK`] and then
//! stay at that size: a bucket of a few timers wastes no more than a vector would, and a
//! large one at most a chunk's room rather than up to half of a vector that doubles. It
//! becomes one vector of exactly its length when it comes up.

use std::collections::{BTreeMap, VecDeque};

use crate::event::Nanos;

/// Deadlines `d` with equal `d >> BUCKET_SHIFT` share a bucket (2^33 ns, about 8.6 s).
const BUCKET_SHIFT: u32 = 33;

/// Bits of a timer's key: the rest of its 64 hold the deadline within its bucket.
const KEY_BITS: u32 = 64 - BUCKET_SHIFT;

/// The keys a timer can hold: those below 2^31 (a key's hash is cut to this).
pub const KEY_MASK: u32 = (1 << KEY_BITS) - 1;

/// Entries in the largest chunk of a later bucket (256 bytes).
const CHUNK: usize = 32;

/// A timer as stored: the deadline within its bucket in the high 33 bits, the key in the low
/// 31, so that entries of one bucket compare by deadline first.
type Packed = u64;

/// A later bucket: its entries in scheduling order, in chunks.
type Chunks = Vec<Vec<Packed>>;

fn pack(deadline: Nanos, key: u32) -> Packed {
    let within = deadline as u64 & ((1 << BUCKET_SHIFT) - 1);
    (within << KEY_BITS) | u64::from(key & KEY_MASK)
}

/// The entry's deadline within its bucket: what entries of one bucket are ordered by.
fn within(entry: Packed) -> u64 {
    entry >> KEY_BITS
}

fn unpack(bucket: i64, entry: Packed) -> (Nanos, u32) {
    (
        (bucket << BUCKET_SHIFT) | within(entry) as i64,
        entry as u32 & KEY_MASK,
    )
}

/// Timers of one rule; see the module's documentation.
#[derive(Debug, Default)]
pub struct Timers {
    /// The earliest bucket, sorted by deadline (equal ones in scheduling order).
    head: VecDeque<Packed>,
    /// The number of the bucket in `head`, while it holds entries.
    head_bucket: Option<i64>,
    /// The other buckets by number, each in scheduling order.
    later: BTreeMap<i64, Chunks>,
}

impl Timers {
    /// Schedules `key` (its low 31 bits) at `deadline`, after every timer already scheduled
    /// at that deadline.
    pub fn push(&mut self, deadline: Nanos, key: u32) {
        let bucket = deadline >> BUCKET_SHIFT;
        let entry = pack(deadline, key);
        match self.head_bucket {
            Some(head) if bucket == head => {
                let at = self.head.partition_point(|e| within(*e) <= within(entry));
                self.head.insert(at, entry);
            }
            Some(head) if bucket < head => {
                // An earlier bucket: the head goes back among the others. It is sorted, and
                // anything scheduled into its bucket from now on comes after all of it, so
                // sorting it again when it comes up keeps equal deadlines in order.
                let returned = Vec::from(std::mem::take(&mut self.head));
                self.later.insert(head, vec![returned]);
                self.head = VecDeque::from(vec![entry]);
                self.head_bucket = Some(bucket);
            }
            Some(_) => append(self.later.entry(bucket).or_default(), entry),
            None => {
                append(self.later.entry(bucket).or_default(), entry);
                self.take_next_bucket();
            }
        }
    }

    /// The earliest timer: its deadline and key.
    pub fn peek(&self) -> Option<(Nanos, u32)> {
        Some(unpack(self.head_bucket?, *self.head.front()?))
    }

    /// Removes the earliest timer.
    pub fn pop(&mut self) -> Option<(Nanos, u32)> {
        let bucket = self.head_bucket?;
        let first = unpack(bucket, self.head.pop_front()?);
        if self.head.is_empty() {
            self.head_bucket = None;
            self.take_next_bucket();
        }
        Some(first)
    }

    /// Bytes held for entries, with the spare capacity of each bucket.
    pub fn heap_bytes(&self) -> usize {
        let entry = std::mem::size_of::<Packed>();
        // A B-tree node holds up to 11 buckets: about a word and a vector each.
        let per_bucket = std::mem::size_of::<(i64, Chunks)>() + 8;
        let per_chunk = std::mem::size_of::<Vec<Packed>>();
        let later = self.later.values().map(|chunks| {
            per_bucket
                + chunks.capacity() * per_chunk
                + chunks.iter().map(|c| c.capacity() * entry).sum::<usize>()
        });
        self.head.capacity() * entry + later.sum::<usize>()
    }

    /// Makes the earliest of the later buckets the head (when the head is empty).
    fn take_next_bucket(&mut self) {
        if let Some((bucket, chunks)) = self.later.pop_first() {
            let mut entries = match <[_; 1]>::try_from(chunks) {
                Ok([one]) => one,
                Err(chunks) => {
                    let mut all = Vec::with_capacity(chunks.iter().map(Vec::len).sum());
                    chunks.into_iter().for_each(|c| all.extend(c));
                    all
                }
            };
            // Stable, and by deadline alone: equal deadlines stay in the order they were
            // scheduled, whatever their keys.
            entries.sort_by_key(|e| within(*e));
            self.head = VecDeque::from(entries);
            self.head_bucket = Some(bucket);
        }
    }
}

/// Appends to a later bucket: into its last chunk while it has room, else into a new chunk
/// twice the last one's size, up to [`CHUNK`].
fn append(chunks: &mut Chunks, entry: Packed) {
    match chunks.last_mut() {
        Some(last) if last.len() < last.capacity() => last.push(entry),
        last => {
            let size = last.map_or(2, |c| c.capacity() * 2).min(CHUNK);
            let mut chunk = Vec::with_capacity(size);
            chunk.push(entry);
            // The list of chunks grows one at a time while short: most buckets of a sparse
            // rule hold a chunk or two, and a doubling list would start at four.
            if chunks.len() < 4 {
                chunks.reserve_exact(1);
            }
            chunks.push(chunk);
        }
    }
}

/// What the tests check the buckets against (the engine needs neither).
#[cfg(test)]
impl Timers {
    /// Timers scheduled and not yet popped.
    fn len(&self) -> usize {
        let later = self.later.values().flatten().map(Vec::len);
        self.head.len() + later.sum::<usize>()
    }

    /// True when no timer is scheduled (the head is empty only when every bucket is).
    fn is_empty(&self) -> bool {
        self.head.is_empty()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::cmp::Reverse;
    use std::collections::BinaryHeap;

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Op {
        Push(Nanos),
        Pop,
    }

    fn op() -> impl Strategy<Value = Op> {
        // Deadlines within a few buckets of each other (and of zero, where the bucket number
        // changes sign), with many ties.
        let near = (-3i64..6).prop_flat_map(|b| {
            (0i64..4).prop_map(move |k| (b << BUCKET_SHIFT) + k * (1 << (BUCKET_SHIFT - 2)))
        });
        prop_oneof![
            3 => near.prop_map(Op::Push),
            1 => (i64::MIN / 2..i64::MAX / 2).prop_map(Op::Push),
            3 => Just(Op::Pop),
        ]
    }

    proptest! {
        /// Fires in exactly the order of a binary heap ordered by (deadline, scheduling).
        #[test]
        fn timers_fire_in_deadline_then_scheduling_order(ops in prop::collection::vec(op(), 0..300)) {
            let mut timers = Timers::default();
            let mut heap = BinaryHeap::new();
            for (seq, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Push(d) => {
                        // Keys past 31 bits are cut: scheduling order, not the key, breaks ties.
                        let key = (seq as u32).wrapping_mul(0x9E37_79B9);
                        timers.push(d, key);
                        heap.push(Reverse((d, seq, key & KEY_MASK)));
                    }
                    Op::Pop => prop_assert_eq!(timers.pop(), heap.pop().map(|Reverse((d, _, k))| (d, k))),
                }
                prop_assert_eq!(timers.peek(), heap.peek().map(|Reverse((d, _, k))| (*d, *k)));
                prop_assert_eq!(timers.len(), heap.len());
                prop_assert_eq!(timers.is_empty(), heap.is_empty());
            }
            while let Some(Reverse((d, _, k))) = heap.pop() {
                prop_assert_eq!(timers.pop(), Some((d, k)));
            }
            prop_assert_eq!(timers.pop(), None);
        }
    }

    #[test]
    fn equal_deadlines_fire_in_scheduling_order_across_a_returned_head() {
        let bucket = 1 << BUCKET_SHIFT;
        let mut t = Timers::default();
        // Keys in descending order, so that ordering by key would be caught.
        t.push(5 * bucket, 90);
        t.push(5 * bucket, 80);
        // An earlier bucket sends the head back; later entries of its bucket follow it.
        t.push(2 * bucket, 99);
        t.push(5 * bucket, 70);
        t.push(5 * bucket - 1, 98);
        t.push(5 * bucket, 60);
        let order: Vec<_> = std::iter::from_fn(|| t.pop()).collect();
        assert_eq!(
            order,
            [
                (2 * bucket, 99),
                (5 * bucket - 1, 98),
                (5 * bucket, 90),
                (5 * bucket, 80),
                (5 * bucket, 70),
                (5 * bucket, 60)
            ]
        );
        assert!(t.is_empty());
    }

    #[test]
    fn bytes_count_every_entry_and_little_spare() {
        let mut t = Timers::default();
        // 10,000 deadlines over 30 s, as 10,000 keys with a 30 s `within` would hold.
        for i in 0..10_000u32 {
            t.push(i64::from(i) * 3_000_000, i);
        }
        let entry = std::mem::size_of::<Packed>();
        assert_eq!(entry, 8);
        assert_eq!(t.len(), 10_000);
        assert!(t.heap_bytes() >= 10_000 * entry, "{}", t.heap_bytes());
        // The chunks' room and their bookkeeping (half an 8-byte entry at most),
        // where a doubling vector could leave up to half its room empty.
        assert!(t.heap_bytes() <= 15_000 * entry, "{}", t.heap_bytes());
    }
}
