//! A rule's keys with their state, found by key.
//!
//! Each key lives inside its slot, beside its state, and the slots live in a slab of chunks,
//! so that a bucket of the table is a 32-bit index and a control byte, and a slot takes its
//! own size rather than the allocator's next size class. A map from key to boxed state spent
//! 25 bytes a bucket (a 16-byte key, the pointer, the control byte), and the table keeps up to
//! half its buckets spare: about 42 bytes per key, against about 8 here. Keys that leave give
//! their slots back: to the next key, and to the allocator once most of the slab is empty.

use hashbrown::HashTable;

use super::Slot;
use super::key::KeyVal;
use crate::event::Nanos;

/// Keys come from devices, so the hasher is seeded (foldhash), and fast.
type Hasher = foldhash::fast::RandomState;

/// The slots of one rule, by key.
#[derive(Default)]
pub(super) struct KeyTable {
    /// Indices into `slab`, placed by their keys' hashes.
    table: HashTable<u32>,
    slab: Slab,
    hasher: Hasher,
}

/// The table's 64-bit hash from a key's 31-bit one: the low bits place a key, the top seven
/// are its bucket's control byte, and both come from the 31.
fn spread(hash: u32) -> u64 {
    u64::from(hash) | (u64::from(hash) << 33)
}

/// A key's 31-bit hash: the high bits of the hasher's 64, as a timer holds it.
fn hash_of(hasher: &Hasher, key: &KeyVal) -> u32 {
    (std::hash::BuildHasher::hash_one(hasher, key) >> 33) as u32
}

impl KeyTable {
    /// The hash `key` is found by, which the rule's timers hold in place of the key: 31 bits,
    /// so that a timer is 8 bytes.
    pub fn hash(&self, key: &KeyVal) -> u32 {
        hash_of(&self.hasher, key)
    }

    /// Where the slot of `key` (whose hash is `hash`) is, if it has one.
    pub fn find(&self, hash: u32, key: &KeyVal) -> Option<u32> {
        let slab = &self.slab;
        self.table
            .find(spread(hash), |&i| {
                slab.get(i).is_some_and(|s| s.key == *key)
            })
            .copied()
    }

    /// Adds the slot of a key not in the table, whose hash is `hash`; returns where it is.
    pub fn add(&mut self, hash: u32, slot: Slot) -> u32 {
        let at = self.slab.insert(slot);
        let (slab, hasher) = (&self.slab, &self.hasher);
        self.table.insert_unique(spread(hash), at, |&i| {
            slab.get(i).map_or(0, |s| spread(hash_of(hasher, &s.key)))
        });
        at
    }

    /// The slot at `at`, as [`KeyTable::find`] or [`KeyTable::add`] gave it.
    pub fn at_mut(&mut self, at: u32) -> Option<&mut Slot> {
        self.slab.get_mut(at)
    }

    /// Takes out the slot at `at`, whose key's hash is `hash`.
    pub fn remove_at(&mut self, hash: u32, at: u32) -> Option<Slot> {
        self.table
            .find_entry(spread(hash), |&i| i == at)
            .ok()?
            .remove();
        let slot = self.slab.remove(at);
        if self.table.is_empty() {
            // A rule with no keys left holds nothing.
            self.slab = Slab::default();
        } else if self.slab.capacity >= COMPACT_FROM && self.table.len() * 4 <= self.slab.capacity {
            self.compact();
        }
        slot
    }

    /// Moves the slots into a slab of their number, so that keys that left give their memory
    /// back: once three quarters of the slab are empty, which makes the cost, one move per
    /// slot, at most a third of a move per key removed since the slab was last that full.
    /// Timers hold keys' hashes, not positions, so only the table's indices change.
    fn compact(&mut self) {
        let mut slab = Slab::default();
        for at in self.table.iter_mut() {
            if let Some(slot) = self.slab.take(*at) {
                *at = slab.insert(slot);
            }
        }
        self.slab = slab;
    }

    /// The slot of `key`.
    pub fn get(&self, key: &KeyVal) -> Option<&Slot> {
        self.slab.get(self.find(self.hash(key), key)?)
    }

    /// The slot of `key`, to change.
    pub fn get_mut(&mut self, key: &KeyVal) -> Option<&mut Slot> {
        let at = self.find(self.hash(key), key)?;
        self.slab.get_mut(at)
    }

    /// Puts `slot` in, in place of any slot of the same key.
    pub fn insert(&mut self, slot: Slot) {
        let hash = self.hash(&slot.key);
        match self
            .find(hash, &slot.key)
            .and_then(|at| self.slab.get_mut(at))
        {
            Some(old) => *old = slot,
            None => {
                self.add(hash, slot);
            }
        }
    }

    /// The slot whose key hashes to `hash` and whose timer is set for `deadline`: the key a
    /// timer of the rule was set for. Should two keys share the hash and the deadline, each of
    /// their two timers finds one of them, and both are served at that deadline.
    pub fn due(&self, hash: u32, deadline: Nanos) -> Option<u32> {
        let (slab, hasher) = (&self.slab, &self.hasher);
        self.table
            .find(spread(hash), |&i| {
                slab.get(i)
                    .is_some_and(|s| s.scheduled == deadline && hash_of(hasher, &s.key) == hash)
            })
            .copied()
    }

    /// Takes the slot of `key` out.
    pub fn remove(&mut self, key: &KeyVal) -> Option<Slot> {
        let hash = self.hash(key);
        let at = self.find(hash, key)?;
        self.remove_at(hash, at)
    }

    /// Every slot, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Slot> {
        self.slab.chunks.iter().flatten().flatten()
    }

    /// Every slot, to change, in no particular order.
    #[cfg(test)]
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Slot> {
        self.slab.chunks.iter_mut().flatten().flatten()
    }

    /// Keys held.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Bytes of the table and its slots (not what the slots point to): an index and a
    /// control byte per bucket, spare ones included, and the slab's chunks as allocated.
    pub fn bytes(&self) -> usize {
        buckets(self.table.capacity()) * (std::mem::size_of::<u32>() + 1) + self.slab.bytes()
    }
}

/// The buckets of a table that holds up to `capacity` keys: one spare below 8 buckets, and
/// 7 keys in 8 from there on.
fn buckets(capacity: usize) -> usize {
    match capacity {
        0 => 0,
        1..7 => capacity + 1,
        _ => capacity / 7 * 8,
    }
}

/// Slabs of fewer slots are not compacted: a few empty slots cost less than moving the rest.
const COMPACT_FROM: usize = 1024;

/// Bits of a slot's index that place it within its chunk; the rest number the chunk.
const PLACE_BITS: u32 = 10;

/// Bytes of a full chunk: large enough that a chunk's own overhead is nothing, small enough
/// that the last one's spare room is little beside a rule of many keys.
const CHUNK_BYTES: usize = 16 * 1024;

/// Slots in chunks that never move or grow, by a 32-bit index. The first chunks are small
/// (4 slots, then twice as many each time up to [`CHUNK_BYTES`]), so a rule of a few keys
/// holds a few slots; a freed slot is reused by the next key.
#[derive(Default)]
struct Slab {
    chunks: Vec<Vec<Option<Slot>>>,
    /// Indices of slots emptied since, reused first.
    free: Vec<u32>,
    /// Slots of all the chunks, full or not.
    capacity: usize,
}

// A slot's absence costs no space: its key's kind has spare values.
const _: () = assert!(std::mem::size_of::<Option<Slot>>() == std::mem::size_of::<Slot>());

impl Slab {
    /// Slots in chunk `n`.
    fn chunk_len(n: usize) -> usize {
        let full = (CHUNK_BYTES / std::mem::size_of::<Option<Slot>>()).min(1 << PLACE_BITS);
        (4usize << n.min(16)).min(full)
    }

    fn place(at: u32) -> (usize, usize) {
        (
            (at >> PLACE_BITS) as usize,
            (at & ((1 << PLACE_BITS) - 1)) as usize,
        )
    }

    fn get(&self, at: u32) -> Option<&Slot> {
        let (chunk, place) = Slab::place(at);
        self.chunks.get(chunk)?.get(place)?.as_ref()
    }

    fn get_mut(&mut self, at: u32) -> Option<&mut Slot> {
        let (chunk, place) = Slab::place(at);
        self.chunks.get_mut(chunk)?.get_mut(place)?.as_mut()
    }

    fn insert(&mut self, slot: Slot) -> u32 {
        if let Some(at) = self.free.pop() {
            let (chunk, place) = Slab::place(at);
            if let Some(s) = self.chunks.get_mut(chunk).and_then(|c| c.get_mut(place)) {
                *s = Some(slot);
                return at;
            }
        }
        let n = self.chunks.len();
        match self.chunks.last_mut() {
            Some(last) if last.len() < Slab::chunk_len(n - 1) => {
                last.push(Some(slot));
                (((n - 1) as u32) << PLACE_BITS) | (last.len() - 1) as u32
            }
            _ => {
                let mut chunk = Vec::with_capacity(Slab::chunk_len(n));
                chunk.push(Some(slot));
                self.capacity += Slab::chunk_len(n);
                self.chunks.push(chunk);
                // 2^22 chunks of 585 slots or more: billions of keys, far past memory.
                (n as u32) << PLACE_BITS
            }
        }
    }

    fn remove(&mut self, at: u32) -> Option<Slot> {
        let slot = self.take(at)?;
        self.free.push(at);
        Some(slot)
    }

    /// Takes the slot at `at` out without noting its place as free (the slab is going).
    fn take(&mut self, at: u32) -> Option<Slot> {
        let (chunk, place) = Slab::place(at);
        self.chunks.get_mut(chunk)?.get_mut(place)?.take()
    }

    fn bytes(&self) -> usize {
        let slot = std::mem::size_of::<Option<Slot>>();
        let chunks = self
            .chunks
            .iter()
            .map(|c| crate::alloc::block_size(c.capacity() * slot))
            .sum::<usize>();
        chunks
            + self.chunks.capacity() * std::mem::size_of::<Vec<Option<Slot>>>()
            + self.free.capacity() * std::mem::size_of::<u32>()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::super::key::HashValue;
    use super::super::run::KeyState;
    use super::*;
    use crate::event::Value;

    fn key(i: i64) -> KeyVal {
        KeyVal::One(HashValue(Value::Int(i)))
    }

    fn slot(i: i64) -> Slot {
        let mut slot = Slot::new(key(i), KeyState::default());
        slot.scheduled = i;
        slot
    }

    #[test]
    fn slots_are_found_replaced_and_removed_by_their_key() {
        let mut t = KeyTable::default();
        for i in 0..1_000 {
            let h = t.hash(&key(i));
            assert_eq!(t.find(h, &key(i)), None, "{i} is new");
            let at = t.add(h, slot(i));
            assert_eq!(t.find(h, &key(i)), Some(at));
        }
        assert_eq!(t.len(), 1_000);
        // A timer finds its key by hash and deadline; a stale timer (another deadline) finds
        // nothing.
        let h = t.hash(&key(9));
        let at = t.due(h, 9).unwrap();
        assert_eq!(t.at_mut(at).map(|s| s.key.clone()), Some(key(9)));
        assert!(t.due(h, 8).is_none());
        assert_eq!(t.get(&key(999)).map(|s| s.scheduled), Some(999));
        t.get_mut(&key(5)).unwrap().scheduled = -5;
        let mut replaced = slot(6);
        replaced.scheduled = -6;
        t.insert(replaced);
        assert_eq!(t.len(), 1_000);
        assert_eq!(
            (
                t.get(&key(5)).unwrap().scheduled,
                t.get(&key(6)).unwrap().scheduled
            ),
            (-5, -6)
        );
        for i in (0..1_000).step_by(2) {
            assert_eq!(t.remove(&key(i)).map(|s| s.key), Some(key(i)));
        }
        assert!(t.remove(&key(0)).is_none());
        assert!(t.get(&key(4)).is_none());
        assert_eq!(t.len(), 500);
        assert!(
            t.iter()
                .all(|s| matches!(&s.key, KeyVal::One(HashValue(Value::Int(i))) if i % 2 == 1))
        );
        assert_eq!(t.iter().count(), 500);
        // Removed slots are reused before the slab grows.
        let grown = t.slab.bytes();
        for i in (0..1_000).step_by(2) {
            t.insert(slot(i));
        }
        assert_eq!(
            (t.len(), t.iter().count(), t.slab.bytes()),
            (1_000, 1_000, grown)
        );
        assert!(
            (0..1_000)
                .step_by(2)
                .all(|i| t.get(&key(i)).is_some_and(|s| s.scheduled == i))
        );
        assert_eq!(t.get(&key(5)).map(|s| s.scheduled), Some(-5));
        // By position: found, and taken out only under its own hash.
        let h = t.hash(&key(3));
        let at = t.find(h, &key(3)).unwrap();
        assert!(t.remove_at(t.hash(&key(4)), at).is_none());
        assert_eq!(t.remove_at(h, at).map(|s| s.key), Some(key(3)));
        assert_eq!(t.find(h, &key(3)), None);
    }

    #[test]
    fn a_slot_takes_its_own_size_and_an_empty_table_holds_nothing() {
        let mut t = KeyTable::default();
        assert_eq!(t.bytes(), 0);
        for i in 0..10_000 {
            t.insert(slot(i));
        }
        let size = std::mem::size_of::<Slot>();
        let per_key = t.bytes() as f64 / 10_000.0;
        // The slots at their size, the chunks' spare room (less than a 16 KiB chunk) and the
        // table's index and control byte per bucket (16,384 buckets).
        assert!(per_key >= (size + 8) as f64, "{per_key}");
        assert!(per_key <= (size + 8) as f64 + 8.0, "{per_key}");
        // A few keys hold a few slots.
        let mut few = KeyTable::default();
        few.insert(slot(1));
        assert!(few.bytes() < 8 * size, "{}", few.bytes());
        for i in 0..10_000 {
            assert!(t.remove(&key(i)).is_some());
        }
        assert_eq!((t.len(), t.bytes()), (0, buckets(t.table.capacity()) * 5));
    }

    #[test]
    fn keys_that_leave_give_their_slots_back() {
        let mut t = KeyTable::default();
        for i in 0..10_000 {
            t.insert(slot(i));
        }
        let slab = t.slab.bytes();
        // Nine in ten leave, in no order the slab was filled in.
        for i in (0..10_000).filter(|i| i % 10 != 3) {
            assert!(t.remove(&key(i)).is_some());
        }
        assert_eq!(t.len(), 1_000);
        // Compacted when a quarter was left (2,500 keys), not since.
        assert!(t.slab.bytes() * 3 < slab, "{} of {slab}", t.slab.bytes());
        assert!(t.slab.capacity < 4 * 1_000, "{}", t.slab.capacity);
        // Those left are found where the table says, with their state.
        assert!((0..10_000).all(|i| {
            let found = t.get(&key(i)).map(|s| s.scheduled);
            found == (i % 10 == 3).then_some(i)
        }));
        assert_eq!(t.iter().count(), 1_000);
        for i in (3..10_000).step_by(10) {
            let h = t.hash(&key(i));
            let at = t.find(h, &key(i)).unwrap();
            assert_eq!(t.remove_at(h, at).map(|s| s.scheduled), Some(i));
        }
        assert_eq!((t.len(), t.slab.bytes()), (0, 0));
    }
}
