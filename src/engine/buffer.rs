//! The shared match buffer of one key: matched events as a forest of back-linked entries.
//!
//! Runs that branch from a common prefix share its entries (as SASE+ and FlinkCEP's shared
//! buffer do), so a loop over n events stores n entries however many runs extend it. Entries
//! are reference-counted by the runs and entries that point at them, and their slots reused.

use thin_vec::ThinVec;

use crate::compile::hir::VarId;
use crate::event::Event;

use super::inline::Inline;

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
/// state, with no allocation of its own), and the free list, rarely used, is one pointer wide.
/// Both serialize as the vectors they replaced, so the stored format is unchanged.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct Buffer {
    entries: Inline<Entry>,
    free: ThinVec<u32>,
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
        match self.free.pop() {
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
            self.free.push(idx);
            idx = prev;
        }
        if self.free.len() == self.entries.len() {
            // Nothing live: drop the entries but keep their slots until the end of the step
            // ([`Buffer::trim`]), so a run that ends and one that starts on the same event
            // reuse the slot instead of freeing and allocating it; the free list (cold memory
            // of its own) is not needed for an empty buffer.
            self.entries.clear();
            self.free = ThinVec::new();
        }
    }

    /// Gives the memory back when nothing is live, so an idle key costs nothing.
    pub fn trim(&mut self) {
        if self.free.len() == self.entries.len() && self.entries.spilled() {
            self.entries = Inline::new();
            self.free = ThinVec::new();
        }
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
        self.entries.len() - self.free.len()
    }

    /// Heap bytes held beyond the inline entry (approximate: entries and their free list, not
    /// the shared events).
    pub fn heap_bytes(&self) -> usize {
        self.entries.heap_bytes() + thin_vec_bytes(&self.free)
    }
}

/// Heap bytes of a thin vector: its header (length and capacity) and items, none while empty.
pub(super) fn thin_vec_bytes<T>(v: &ThinVec<T>) -> usize {
    if v.capacity() > 0 {
        16 + v.capacity() * std::mem::size_of::<T>()
    } else {
        0
    }
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
}
