//! The shared match buffer of one key: matched events as a forest of back-linked entries.
//!
//! Runs that branch from a common prefix share its entries (as SASE+ and FlinkCEP's shared
//! buffer do), so a loop over n events stores n entries however many runs extend it. Entries
//! are reference-counted by the runs and entries that point at them, and their slots reused.

use crate::compile::hir::VarId;
use crate::event::{Event, Nanos};

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
/// state, with no allocation of its own), and the buffer is no larger than the entry (its
/// shapes told apart by spare values of `in_loop`). Beyond one entry, the entries, their free
/// list and the key's held-back matches (rarely any) are allocated together, one pointer
/// wide. The buffer serializes as its entries and free list, the key's state the held
/// matches beside it, as before they were kept together.
#[derive(Debug, Default, Clone)]
pub struct Buffer(Repr);

#[derive(Debug, Default, Clone)]
enum Repr {
    #[default]
    Empty,
    One(Entry),
    Many(Box<Spilled>),
}

/// A buffer beyond one entry, or holding matches back.
#[derive(Debug, Default, Clone)]
struct Spilled {
    entries: Vec<Entry>,
    /// Entries no run holds, reused first.
    free: Vec<u32>,
    held: Vec<Found>,
}

impl Buffer {
    fn entries(&self) -> &[Entry] {
        match &self.0 {
            Repr::Empty => &[],
            Repr::One(e) => std::slice::from_ref(e),
            Repr::Many(s) => &s.entries,
        }
    }

    fn entries_mut(&mut self) -> &mut [Entry] {
        match &mut self.0 {
            Repr::Empty => &mut [],
            Repr::One(e) => std::slice::from_mut(e),
            Repr::Many(s) => &mut s.entries,
        }
    }

    /// The buffer spilled: its one entry (if any) moved out to the allocation.
    fn spill(&mut self) -> &mut Spilled {
        if !matches!(self.0, Repr::Many(_)) {
            let entries = match std::mem::take(&mut self.0) {
                Repr::One(e) => vec![e],
                _ => Vec::new(),
            };
            self.0 = Repr::Many(Box::new(Spilled {
                entries,
                ..Spilled::default()
            }));
        }
        match &mut self.0 {
            Repr::Many(s) => s,
            _ => unreachable!("spilled above"),
        }
    }

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
            let p = &self.entries()[prev as usize];
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
        if let Repr::Empty = self.0 {
            self.0 = Repr::One(entry);
            return 0;
        }
        let s = self.spill();
        match s.free.pop() {
            Some(i) => {
                s.entries[i as usize] = entry;
                i
            }
            None => {
                s.entries.push(entry);
                (s.entries.len() - 1) as u32
            }
        }
    }

    /// Takes another reference on an entry.
    pub fn retain(&mut self, idx: u32) {
        if idx != NIL {
            self.entries_mut()[idx as usize].refs += 1;
        }
    }

    /// Drops a reference; frees the entry (and, in turn, its predecessors) at zero.
    pub fn release(&mut self, mut idx: u32) {
        while idx != NIL {
            let e = &mut self.entries_mut()[idx as usize];
            e.refs -= 1;
            if e.refs > 0 {
                return;
            }
            let prev = e.prev;
            match &mut self.0 {
                Repr::Many(s) => s.free.push(idx),
                // The one entry freed: nothing is live.
                _ => {
                    self.0 = Repr::Empty;
                    return;
                }
            }
            idx = prev;
        }
        if let Repr::Many(s) = &mut self.0
            && s.free.len() == s.entries.len()
        {
            // Nothing live: drop the entries but keep their room until the end of the step
            // ([`Buffer::trim`]), so a run that ends and one that starts on the same event
            // reuse it instead of freeing and allocating; the free list (cold memory of its
            // own) is not needed for an empty buffer.
            s.entries.clear();
            s.free = Vec::new();
        }
    }

    /// Gives the memory back when nothing is live, so an idle key costs nothing.
    pub fn trim(&mut self) {
        if let Repr::Many(s) = &self.0
            && s.free.len() == s.entries.len()
            && s.held.is_empty()
        {
            self.0 = Repr::Empty;
        }
    }

    fn free_len(&self) -> usize {
        match &self.0 {
            Repr::Many(s) => s.free.len(),
            _ => 0,
        }
    }

    /// The key's held-back matches.
    pub fn held(&self) -> &[Found] {
        match &self.0 {
            Repr::Many(s) => &s.held,
            _ => &[],
        }
    }

    /// Takes the held-back matches out (to change them beside the entries); give them back
    /// with [`Buffer::set_held`].
    pub fn take_held(&mut self) -> Vec<Found> {
        match &mut self.0 {
            Repr::Many(s) => std::mem::take(&mut s.held),
            _ => Vec::new(),
        }
    }

    /// Sets the held-back matches; no allocation while there are none.
    pub fn set_held(&mut self, held: Vec<Found>) {
        match &mut self.0 {
            Repr::Many(s) => s.held = held,
            _ if held.is_empty() => {}
            _ => self.spill().held = held,
        }
    }

    /// The time of the event at `idx`, or `otherwise` for `NIL`.
    pub fn time_of(&self, idx: u32, otherwise: Nanos) -> Nanos {
        // `get`: a run read back from the store is not trusted to point into the buffer.
        self.entries()
            .get(idx as usize)
            .map_or(otherwise, |e| e.event.time())
    }

    /// The entry at `idx`.
    pub fn entry(&self, idx: u32) -> &Entry {
        &self.entries()[idx as usize]
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
        self.entries_mut().iter_mut().map(|e| &mut e.seq)
    }

    /// Live entries.
    pub fn live(&self) -> usize {
        self.entries().len() - self.free_len()
    }

    /// Heap bytes held beyond the inline entry (approximate: entries, the free list and the
    /// held matches, not the shared events).
    pub fn heap_bytes(&self) -> usize {
        use crate::alloc::block_size;
        let vec = |bytes: usize| if bytes == 0 { 0 } else { block_size(bytes) };
        match &self.0 {
            Repr::Many(s) => {
                block_size(std::mem::size_of::<Spilled>())
                    + vec(s.entries.capacity() * std::mem::size_of::<Entry>())
                    + vec(s.free.capacity() * std::mem::size_of::<u32>())
                    + vec(s.held.capacity() * std::mem::size_of::<Found>())
            }
            _ => 0,
        }
    }

    /// The buffer as stored: its entries and free list (the held matches are stored with the
    /// key's state).
    pub(super) fn stored(&self) -> StoredBuffer<'_> {
        StoredBuffer {
            entries: self.entries(),
            free: match &self.0 {
                Repr::Many(s) => &s.free,
                _ => &[],
            },
        }
    }

    /// The buffer read back, with the key's held matches.
    pub(super) fn from_stored(stored: ReadBuffer, held: Vec<Found>) -> Buffer {
        let ReadBuffer { mut entries, free } = stored;
        if free.is_empty() && held.is_empty() && entries.len() <= 1 {
            return Buffer(entries.pop().map_or(Repr::Empty, Repr::One));
        }
        Buffer(Repr::Many(Box::new(Spilled {
            entries,
            free,
            held,
        })))
    }
}

/// How a buffer is written: as the struct of two vectors it was.
#[derive(serde::Serialize)]
#[serde(rename = "Buffer")]
pub(super) struct StoredBuffer<'a> {
    entries: &'a [Entry],
    free: &'a [u32],
}

/// How a buffer is read.
#[derive(serde::Deserialize)]
#[serde(rename = "Buffer")]
pub(super) struct ReadBuffer {
    entries: Vec<Entry>,
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
    fn one_entry_is_inline_and_more_share_one_allocation_with_the_held_matches() {
        use super::super::run::FoundKind;
        let held = |tail| Found {
            kind: FoundKind::Match,
            time: 0,
            tail,
            start_seq: 0,
            last_seq: 0,
            id: 0,
        };
        assert_eq!(
            std::mem::size_of::<Buffer>(),
            std::mem::size_of::<Entry>(),
            "no larger than its entry"
        );
        let mut b = Buffer::default();
        let a = b.push(ev(1), 1, VarId(0), false, NIL);
        assert!(matches!(b.0, Repr::One(_)), "one entry, inline");
        assert_eq!(b.heap_bytes(), 0);
        // A held match spills even a single entry.
        b.retain(a);
        b.set_held(vec![held(a)]);
        assert!(matches!(b.0, Repr::Many(_)));
        assert_eq!((b.live(), b.entry(a).seq), (1, 1));
        let mut taken = b.take_held();
        b.release(taken.pop().unwrap().tail);
        b.set_held(Vec::new());
        let x = b.push(ev(2), 2, VarId(1), false, a);
        b.retain(x);
        b.set_held(vec![held(x)]);
        b.release(x);
        let y = b.push(ev(3), 3, VarId(1), false, a);
        b.release(y);
        assert_eq!((b.live(), b.held().len()), (2, 1), "y is free, x held");
        assert!(
            b.heap_bytes() >= std::mem::size_of::<Spilled>() + 3 * std::mem::size_of::<Entry>(),
            "{}",
            b.heap_bytes()
        );
        assert_eq!(
            b.push(ev(4), 4, VarId(1), false, a),
            y,
            "the free slot is reused"
        );
        // Every entry freed: the entries go, the held match stays until it is taken.
        b.release(x);
        b.release(y);
        b.release(a);
        assert_eq!((b.live(), b.held().len()), (0, 1));
        b.trim();
        assert_eq!(b.held().len(), 1, "kept while held");
        b.take_held();
        b.trim();
        assert!(matches!(b.0, Repr::Empty));
        assert_eq!(b.heap_bytes(), 0);
        // The one entry freed empties the buffer at once.
        let only = b.push(ev(5), 5, VarId(0), false, NIL);
        b.release(only);
        assert!(matches!(b.0, Repr::Empty));
    }
}
