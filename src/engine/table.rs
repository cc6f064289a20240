//! A rule's keys with their state, found by key.
//!
//! Each key lives inside its boxed slot, beside its state, so that a bucket of the table is one
//! pointer and a control byte. A map from key to boxed state spends 25 bytes a bucket (a
//! 16-byte key, the pointer, the control byte), and the table keeps up to half its buckets
//! spare: about 42 bytes per key, against 15 here.

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;

use super::Slot;
use super::key::KeyVal;
use crate::event::Nanos;

/// Keys come from devices, so the hasher is seeded (foldhash), and fast.
type Hasher = foldhash::fast::RandomState;

/// The slots of one rule, by key.
#[derive(Default)]
pub(super) struct KeyTable {
    table: HashTable<Box<Slot>>,
    hasher: Hasher,
}

impl KeyTable {
    /// The hash `key` is found by, which the rule's timers hold in place of the key.
    pub fn hash(&self, key: &KeyVal) -> u64 {
        std::hash::BuildHasher::hash_one(&self.hasher, key)
    }

    /// The slot of `key`.
    pub fn get(&self, key: &KeyVal) -> Option<&Slot> {
        self.table
            .find(self.hash(key), |s| s.key == *key)
            .map(|s| &**s)
    }

    /// The slot of `key`, to change.
    pub fn get_mut(&mut self, key: &KeyVal) -> Option<&mut Slot> {
        let hash = self.hash(key);
        self.table
            .find_mut(hash, |s| s.key == *key)
            .map(|s| &mut **s)
    }

    /// The slot of `key` (whose hash is `hash`), or where it would go: one probe for a
    /// lookup that may insert.
    pub fn entry(&mut self, hash: u64, key: &KeyVal) -> Entry<'_, Box<Slot>> {
        let hasher = &self.hasher;
        self.table.entry(
            hash,
            |s| s.key == *key,
            |s| std::hash::BuildHasher::hash_one(hasher, &s.key),
        )
    }

    /// Puts `slot` in, in place of any slot of the same key.
    pub fn insert(&mut self, slot: Box<Slot>) {
        match self.entry(self.hash(&slot.key), &slot.key) {
            Entry::Occupied(mut o) => *o.get_mut() = slot,
            Entry::Vacant(v) => {
                v.insert(slot);
            }
        }
    }

    /// The slot whose key hashes to `hash` and whose timer is set for `deadline`: the key a
    /// timer of the rule was set for. Should two keys share the hash and the deadline, each of
    /// their two timers finds one of them, and both are served at that deadline.
    pub fn due(&mut self, hash: u64, deadline: Nanos) -> Option<&mut Slot> {
        let hasher = &self.hasher;
        self.table
            .find_mut(hash, |s| {
                s.scheduled == deadline && std::hash::BuildHasher::hash_one(hasher, &s.key) == hash
            })
            .map(|s| &mut **s)
    }

    /// Takes the slot of `key` out.
    pub fn remove(&mut self, key: &KeyVal) -> Option<Box<Slot>> {
        let hash = self.hash(key);
        self.table
            .find_entry(hash, |s| s.key == *key)
            .ok()
            .map(|o| o.remove().0)
    }

    /// Every slot, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Slot> {
        self.table.iter().map(|s| &**s)
    }

    /// Every slot, to change, in no particular order.
    #[cfg(test)]
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Slot> {
        self.table.iter_mut().map(|s| &mut **s)
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Bytes of the table itself: a pointer and a control byte per bucket, spare ones
    /// included (not the slots).
    pub fn bytes(&self) -> usize {
        self.table.capacity() * (std::mem::size_of::<Box<Slot>>() + 1)
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

    #[test]
    fn slots_are_found_replaced_and_removed_by_their_key() {
        let mut t = KeyTable::default();
        for i in 0..1_000 {
            match t.entry(t.hash(&key(i)), &key(i)) {
                Entry::Vacant(v) => {
                    let mut slot = Slot::new(key(i), KeyState::default());
                    slot.scheduled = i;
                    v.insert(slot);
                }
                Entry::Occupied(_) => panic!("{i} is new"),
            }
        }
        assert_eq!(t.len(), 1_000);
        assert!(matches!(
            t.entry(t.hash(&key(7)), &key(7)),
            Entry::Occupied(_)
        ));
        // A timer finds its key by hash and deadline; a stale timer (another deadline) finds
        // nothing.
        let h = t.hash(&key(9));
        assert_eq!(t.due(h, 9).map(|s| s.key.clone()), Some(key(9)));
        assert!(t.due(h, 8).is_none());
        assert_eq!(t.get(&key(999)).map(|s| s.scheduled), Some(999));
        t.get_mut(&key(5)).unwrap().scheduled = -5;
        let mut replaced = Slot::new(key(6), KeyState::default());
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
        assert!(t.bytes() >= 500 * 9);
    }
}
