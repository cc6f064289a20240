//! A list that holds one item inline and spills to a vector beyond that.
//!
//! Most keys hold one run. `SmallVec<[T; 1]>` keeps that one inline too, but adds a capacity
//! word; this list instead tells its three shapes apart by a spare value of the item itself (a
//! `bool` field is enough), so it is no larger than the item (or a vector, whichever is
//! larger): 8 bytes less per key. The buffer's entries do the same in their own way
//! (`buffer.rs`), with the free list and held matches beside a spilled vector.

use serde::{Deserialize, Serialize};

/// A list of `T` holding its first item inline. Serialized as a sequence, like a vector.
#[derive(Clone, Debug)]
pub struct Inline<T>(Repr<T>);

#[derive(Clone, Debug)]
enum Repr<T> {
    Empty,
    One(T),
    /// Spilled; kept (with its capacity) when it shrinks, as a vector would be.
    Many(Vec<T>),
}

impl<T> Default for Inline<T> {
    fn default() -> Self {
        Inline(Repr::Empty)
    }
}

impl<T> Inline<T> {
    /// An empty list (no allocation).
    pub const fn new() -> Self {
        Inline(Repr::Empty)
    }

    /// The items.
    pub fn as_slice(&self) -> &[T] {
        match &self.0 {
            Repr::Empty => &[],
            Repr::One(t) => std::slice::from_ref(t),
            Repr::Many(v) => v,
        }
    }

    /// The items, mutable.
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        match &mut self.0 {
            Repr::Empty => &mut [],
            Repr::One(t) => std::slice::from_mut(t),
            Repr::Many(v) => v,
        }
    }

    /// Appends an item; the second one moves both to a vector.
    pub fn push(&mut self, item: T) {
        match &mut self.0 {
            Repr::Many(v) if v.capacity() > 0 => v.push(item),
            Repr::Empty | Repr::Many(_) => self.0 = Repr::One(item),
            Repr::One(_) => {
                let Repr::One(first) = std::mem::replace(&mut self.0, Repr::Empty) else {
                    return;
                };
                self.0 = Repr::Many(vec![first, item]);
            }
        }
    }

    /// Appends every item of `items`.
    pub fn extend(&mut self, items: impl IntoIterator<Item = T>) {
        for item in items {
            self.push(item);
        }
    }

    /// Removes the item at `index`, replacing it by the last; `None` out of bounds.
    pub fn swap_remove(&mut self, index: usize) -> Option<T> {
        match &mut self.0 {
            Repr::Many(v) if index < v.len() => Some(v.swap_remove(index)),
            Repr::One(_) if index == 0 => match std::mem::replace(&mut self.0, Repr::Empty) {
                Repr::One(t) => Some(t),
                _ => None,
            },
            _ => None,
        }
    }

    /// Keeps the items for which `keep` is true.
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        match &mut self.0 {
            Repr::Empty => {}
            Repr::One(t) => {
                if !keep(t) {
                    self.0 = Repr::Empty;
                }
            }
            Repr::Many(v) => v.retain(|t| keep(t)),
        }
    }

    /// Removes every item, keeping a spilled vector's capacity.
    pub fn clear(&mut self) {
        match &mut self.0 {
            Repr::Many(v) => v.clear(),
            _ => self.0 = Repr::Empty,
        }
    }

    /// Removes and yields every item, keeping a spilled vector's capacity.
    pub fn drain(&mut self) -> std::iter::Chain<std::option::IntoIter<T>, std::vec::Drain<'_, T>> {
        let first = match std::mem::replace(&mut self.0, Repr::Many(Vec::new())) {
            Repr::One(t) => Some(t),
            Repr::Empty => None,
            Repr::Many(v) => {
                self.0 = Repr::Many(v);
                None
            }
        };
        match &mut self.0 {
            Repr::Many(v) => first.into_iter().chain(v.drain(..)),
            // Just set to `Many` above.
            _ => unreachable!("set to a vector above"),
        }
    }

    /// True once the items have moved to a vector (with an allocation).
    pub fn spilled(&self) -> bool {
        matches!(&self.0, Repr::Many(v) if v.capacity() > 0)
    }

    /// How many items fit without allocating.
    pub fn capacity(&self) -> usize {
        match &self.0 {
            Repr::Many(v) => v.capacity().max(1),
            _ => 1,
        }
    }

    /// Frees spare capacity; one item or none goes back inline.
    pub fn shrink_to_fit(&mut self) {
        if let Repr::Many(v) = &mut self.0 {
            if v.len() <= 1 {
                self.0 = match v.pop() {
                    Some(t) => Repr::One(t),
                    None => Repr::Empty,
                };
            } else {
                v.shrink_to_fit();
            }
        }
    }

    /// Heap bytes: none until spilled.
    pub fn heap_bytes(&self) -> usize {
        match &self.0 {
            Repr::Many(v) => crate::alloc::block_size(v.capacity() * std::mem::size_of::<T>()),
            _ => 0,
        }
    }
}

impl<T> std::ops::Deref for Inline<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.as_slice()
    }
}

impl<T> std::ops::DerefMut for Inline<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        self.as_mut_slice()
    }
}

impl<'a, T> IntoIterator for &'a Inline<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.as_slice().iter()
    }
}

impl<T> From<Vec<T>> for Inline<T> {
    fn from(mut v: Vec<T>) -> Self {
        Inline(match v.len() {
            0 => Repr::Empty,
            1 => match v.pop() {
                Some(t) => Repr::One(t),
                None => Repr::Empty,
            },
            _ => Repr::Many(v),
        })
    }
}

impl<T: Serialize> Serialize for Inline<T> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.as_slice().serialize(s)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Inline<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::<T>::deserialize(d).map(Inline::from)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
    struct Item {
        n: u64,
        flag: bool,
    }

    fn item(n: u64) -> Item {
        Item {
            n,
            flag: n.is_multiple_of(2),
        }
    }

    #[test]
    fn the_list_is_no_larger_than_its_item_or_a_vector() {
        assert_eq!(std::mem::size_of::<Inline<Item>>(), 24);
        #[derive(Clone)]
        #[allow(dead_code)]
        struct Wide([u64; 6], bool);
        assert_eq!(std::mem::size_of::<Inline<Wide>>(), 56);
    }

    #[test]
    fn it_behaves_as_a_vector_and_serializes_as_one() {
        let mut list = Inline::new();
        let mut vec = Vec::new();
        let check = |list: &Inline<Item>, vec: &Vec<Item>| {
            assert_eq!(list.as_slice(), vec.as_slice());
            assert_eq!(
                postcard::to_allocvec(list).unwrap(),
                postcard::to_allocvec(vec).unwrap()
            );
            let back: Inline<Item> =
                postcard::from_bytes(&postcard::to_allocvec(vec).unwrap()).unwrap();
            assert_eq!(back.as_slice(), vec.as_slice());
        };
        check(&list, &vec);
        assert!(!list.spilled());
        list.push(item(1));
        vec.push(item(1));
        check(&list, &vec);
        assert!(!list.spilled() && list.heap_bytes() == 0);
        list.extend([item(2), item(3), item(4)]);
        vec.extend([item(2), item(3), item(4)]);
        check(&list, &vec);
        assert!(list.spilled());
        assert_eq!(list.swap_remove(0), Some(vec.swap_remove(0)));
        assert_eq!(list.swap_remove(9), None);
        check(&list, &vec);
        list.retain(|i| i.n != 3);
        vec.retain(|i| i.n != 3);
        check(&list, &vec);
        list.as_mut_slice().sort_by_key(|i| i.n);
        vec.sort_by_key(|i| i.n);
        check(&list, &vec);
        let drained: Vec<Item> = list.drain().collect();
        assert_eq!(drained, std::mem::take(&mut vec));
        check(&list, &vec);
        assert!(list.spilled(), "a drained vector keeps its capacity");
        list.push(item(5));
        list.shrink_to_fit();
        assert!(!list.spilled());
        assert_eq!(list.as_slice(), [item(5)]);
        // Draining a single inline item leaves an empty list that takes the next one inline.
        assert_eq!(list.drain().collect::<Vec<_>>(), [item(5)]);
        list.push(item(6));
        assert!(!list.spilled());
        assert_eq!(list.swap_remove(0), Some(item(6)));
        assert_eq!(list.swap_remove(0), None);
        assert!(list.is_empty());
        list.push(item(7));
        list.clear();
        assert!(list.is_empty() && !list.spilled());
    }
}
