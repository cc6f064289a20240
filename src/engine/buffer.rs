//! The shared match buffer of one key: matched events as a forest of back-linked entries.
//!
//! Runs that branch from a common prefix share its entries (as SASE+ and FlinkCEP's shared
//! buffer do), so a loop over n events stores n entries however many runs extend it. Entries
//! are reference-counted by the runs and entries that point at them, and their slots reused.

use crate::compile::hir::VarId;
use crate::event::{Event, Nanos};

use super::inline::Inline;
use super::run::Found;

/// "No entry": the end of a chain.
pub const NIL: u32 = u32::MAX;

/// One matched event in one position of a run.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    /// The event (shared with every rule and key that holds it).
    pub event: Event,
    /// The key's sequence number of the event.
    pub seq: super::run::Seq,
    /// The step variable the event was taken by.
    pub var: VarId,
    /// The entry taken before this one in the same run, or `NIL`.
    pub prev: u32,
    /// The nearest earlier entry taken by a single-event step (skipping loop entries), or
    /// `NIL`: reading `first.speed` from the end of a long loop is then O(steps), not O(events).
    pub anchor: u32,
    /// The entry was taken by a loop.
    pub in_loop: bool,
    refs: u32,
}

/// All entries of one key. Most keys hold one entry at a time: it lives inline (in the key's
/// state, with no allocation of its own). The free list and the key's held-back matches, both
/// rarely used, share one pointer, allocated only while either holds something. The buffer
/// serializes as its entries and free list, the key's state the held matches beside it, as
/// before they shared the pointer.
#[derive(Debug, Default, Clone)]
pub struct Buffer {
    entries: Inline<Entry>,
    side: Option<Box<Side>>,
}

/// What a buffer keeps aside: free entries, and the key's held-back matches.
#[derive(Debug, Default, Clone)]
struct Side {
    free: Vec<u32>,
    held: Vec<Found>,
}

impl Buffer {
    /// Adds an entry after `prev` (taking a reference on it); the new entry starts with one
    /// reference, owned by the caller.
    pub fn push(
        &mut self,
        event: Event,
        seq: super::run::Seq,
        var: VarId,
        in_loop: bool,
        prev: u32,
    ) -> u32 {
        let anchor = if prev == NIL {
            NIL
        } else {
            self.retain(prev);
            let p = &self.entries[prev as usize];
            if p.in_loop { p.anchor } else { prev }
        };
        let entry = Entry {
            event,
            seq,
            var,
            prev,
            anchor,
            in_loop,
            refs: 1,
        };
        match self.side.as_mut().and_then(|s| s.free.pop()) {
            Some(i) => {
                self.entries[i as usize] = entry;
                i
            }
            None => {
                self.entries.push(entry);
                (self.entries.len() - 1) as u32
            }
        }
    }

    /// Takes another reference on an entry.
    pub fn retain(&mut self, idx: u32) {
        if idx != NIL {
            self.entries[idx as usize].refs += 1;
        }
    }

    /// Drops a reference; frees the entry (and, in turn, its predecessors) at zero.
    pub fn release(&mut self, mut idx: u32) {
        while idx != NIL {
            let e = &mut self.entries[idx as usize];
            e.refs -= 1;
            if e.refs > 0 {
                return;
            }
            let prev = e.prev;
            self.side.get_or_insert_default().free.push(idx);
            idx = prev;
        }
        if self.free_len() == self.entries.len() {
            // Nothing live: drop the entries but keep their slots until the end of the step
            // ([`Buffer::trim`]), so a run that ends and one that starts on the same event
            // reuse the slot instead of freeing and allocating it; the free list (cold memory
            // of its own) is not needed for an empty buffer.
            self.entries.clear();
            self.drop_free();
        }
    }

    /// Gives the memory back when nothing is live, so an idle key costs nothing.
    pub fn trim(&mut self) {
        if self.free_len() == self.entries.len() && self.entries.spilled() {
            self.entries = Inline::new();
            self.drop_free();
        }
    }

    fn free_len(&self) -> usize {
        self.side.as_ref().map_or(0, |s| s.free.len())
    }

    /// Forgets the free list, and the side with it when no match is held.
    fn drop_free(&mut self) {
        if let Some(side) = &mut self.side {
            if side.held.is_empty() {
                self.side = None;
            } else {
                side.free = Vec::new();
            }
        }
    }

    /// The key's held-back matches.
    pub fn held(&self) -> &[Found] {
        self.side.as_ref().map_or(&[], |s| &s.held)
    }

    /// Takes the held-back matches out (to change them beside the entries); give them back
    /// with [`Buffer::set_held`].
    pub fn take_held(&mut self) -> Vec<Found> {
        self.side
            .as_mut()
            .map(|s| std::mem::take(&mut s.held))
            .unwrap_or_default()
    }

    /// Sets the held-back matches; no allocation while there are none.
    pub fn set_held(&mut self, held: Vec<Found>) {
        match &mut self.side {
            Some(side) if held.is_empty() && side.free.is_empty() => self.side = None,
            Some(side) => side.held = held,
            None if held.is_empty() => {}
            None => {
                self.side = Some(Box::new(Side {
                    free: Vec::new(),
                    held,
                }))
            }
        }
    }

    /// The time of the event at `idx`, or `otherwise` for `NIL`.
    pub fn time_of(&self, idx: u32, otherwise: Nanos) -> Nanos {
        // `get`: a run read back from the store is not trusted to point into the buffer.
        self.entries
            .get(idx as usize)
            .map_or(otherwise, |e| e.event.time())
    }

    /// The entry at `idx`.
    pub fn entry(&self, idx: u32) -> &Entry {
        &self.entries[idx as usize]
    }

    /// The chain ending at `tail`, oldest first.
    pub fn chain(&self, mut tail: u32) -> Vec<&Entry> {
        let mut out = Vec::new();
        while tail != NIL {
            let e = self.entry(tail);
            out.push(e);
            tail = e.prev;
        }
        out.reverse();
        out
    }

    /// Every entry's sequence number, free entries' included, for renumbering.
    pub fn seqs_mut(&mut self) -> impl Iterator<Item = &mut super::run::Seq> {
        self.entries.iter_mut().map(|e| &mut e.seq)
    }

    /// Live entries.
    pub fn live(&self) -> usize {
        self.entries.len() - self.free_len()
    }

    /// Heap bytes held beyond the inline entry (approximate: entries, the free list and the
    /// held matches, not the shared events).
    pub fn heap_bytes(&self) -> usize {
        use crate::alloc::block_size;
        let vec = |bytes: usize| if bytes == 0 { 0 } else { block_size(bytes) };
        let side = self.side.as_ref().map_or(0, |s| {
            block_size(std::mem::size_of::<Side>())
                + vec(s.free.capacity() * std::mem::size_of::<u32>())
                + vec(s.held.capacity() * std::mem::size_of::<Found>())
        });
        self.entries.heap_bytes() + side
    }

    /// The buffer as stored: its entries and free list (the held matches are stored with the
    /// key's state).
    pub(super) fn stored(&self) -> StoredBuffer<'_> {
        StoredBuffer {
            entries: &self.entries,
            free: self.side.as_ref().map_or(&[], |s| &s.free),
        }
    }

    /// The buffer read back, with the key's held matches.
    pub(super) fn from_stored(stored: ReadBuffer, held: Vec<Found>) -> Buffer {
        let mut buffer = Buffer {
            entries: stored.entries,
            side: None,
        };
        if !stored.free.is_empty() {
            buffer.side = Some(Box::new(Side {
                free: stored.free,
                held: Vec::new(),
            }));
        }
        buffer.set_held(held);
        buffer
    }
}

/// How a buffer is written: as the struct of two vectors it was.
#[derive(serde::Serialize)]
#[serde(rename = "Buffer")]
pub(super) struct StoredBuffer<'a> {
    entries: &'a Inline<Entry>,
    free: &'a [u32],
}

/// How a buffer is read.
#[derive(serde::Deserialize)]
#[serde(rename = "Buffer")]
pub(super) struct ReadBuffer {
    entries: Inline<Entry>,
    free: Vec<u32>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn ev(t: i64) -> Event {
        Event::new(0, t, [])
    }

    #[test]
    fn branches_share_their_prefix_and_free_it_last() {
        let mut b = Buffer::default();
        let a = b.push(ev(1), 1, VarId(0), false, NIL);
        let x = b.push(ev(2), 2, VarId(1), true, a);
        let y = b.push(ev(3), 3, VarId(1), true, a);
        let z = b.push(ev(4), 4, VarId(1), true, y);
        assert_eq!(
            b.entry(z).anchor,
            a,
            "loop entries point past themselves to the last step"
        );
        b.release(z);
        assert_eq!(b.live(), 3);
        b.release(a); // the run that stayed at `a` ends
        assert_eq!(b.live(), 3, "a is still shared by two branches");
        b.release(x);
        assert_eq!(b.live(), 2);
        assert_eq!(
            b.chain(y).iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![1, 3]
        );
        b.release(y);
        assert_eq!(b.live(), 0);
        b.trim();
        assert_eq!(b.heap_bytes(), 0, "an empty buffer holds no memory");
    }

    #[test]
    fn free_entries_and_held_matches_share_one_allocation_while_either_is_used() {
        use super::super::run::FoundKind;
        let held = |tail| Found {
            kind: FoundKind::Match,
            time: 0,
            tail,
            start_seq: 0,
            last_seq: 0,
            id: 0,
        };
        let mut b = Buffer::default();
        let a = b.push(ev(1), 1, VarId(0), false, NIL);
        assert!(b.side.is_none(), "one entry, nothing aside");
        let x = b.push(ev(2), 2, VarId(1), false, a);
        b.retain(x);
        b.set_held(vec![held(x)]);
        b.release(x);
        assert!(b.side.is_some());
        let y = b.push(ev(3), 3, VarId(1), false, a);
        b.release(y);
        assert_eq!((b.live(), b.held().len()), (2, 1), "y is free, x held");
        let side = b.heap_bytes() - b.entries.heap_bytes();
        assert!(side >= std::mem::size_of::<Side>() + 4, "{side}");
        // Taken out and given back, the matches are kept; given back none, and with a free
        // entry left, the side stays for the free list.
        let taken = b.take_held();
        assert_eq!(taken.len(), 1);
        b.set_held(Vec::new());
        assert!(b.side.is_some(), "y's slot is still on the free list");
        assert_eq!(
            b.push(ev(4), 4, VarId(1), false, a),
            y,
            "the free slot is reused"
        );
        b.set_held(Vec::new());
        assert!(b.side.is_none(), "nothing free, nothing held");
        b.set_held(taken);
        assert_eq!(b.held().len(), 1);
        // Every entry freed: the free list goes, the held match stays.
        b.release(x);
        b.release(y);
        b.release(a);
        assert_eq!(b.live(), 0);
        assert_eq!(b.held().len(), 1);
        assert!(b.side.as_ref().is_some_and(|s| s.free.is_empty()));
    }
}
