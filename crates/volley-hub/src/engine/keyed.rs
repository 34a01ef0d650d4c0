//! A map kept as a plain list while it is small, for the hub's per-channel and
//! per-client tables.
//!
//! Most channels have one subscriber on a node and most clients one or two
//! subscriptions, and a `HashMap` allocates room for four entries and its control bytes
//! from the first one (about 350 bytes for a subscriber). A [`Keyed`] holds exactly what
//! it needs while it is small, scans it to find a key, and builds an index once it
//! grows past [`SMALL`] entries, so that a channel with a hundred thousand subscribers
//! still finds and removes one at once. Iteration goes over the list, in one piece.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;

/// Up to this many entries, a lookup scans the list; above, an index is kept.
const SMALL: usize = 8;

/// A map from `K` to `V`: a list, with an index by key once it is large. The order of
/// iteration is not the order of insertion (a removal moves the last entry into the
/// gap).
#[derive(Debug)]
pub(crate) struct Keyed<K, V> {
    list: Vec<(K, V)>,
    // Boxed on purpose: a pointer's room in every small map, a hash map's (48 bytes)
    // only in the large ones.
    #[allow(clippy::box_collection)]
    index: Option<Box<HashMap<K, usize>>>,
}

impl<K, V> Default for Keyed<K, V> {
    fn default() -> Self {
        Keyed { list: Vec::new(), index: None }
    }
}

impl<K: Eq + Hash + Clone, V> Keyed<K, V> {
    /// How many entries there are.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    fn position<Q>(&self, key: &Q) -> Option<usize>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        match &self.index {
            Some(index) => index.get(key).copied(),
            None => self.list.iter().position(|(k, _)| k.borrow() == key),
        }
    }

    /// The value of `key`, if there is one.
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.position(key).map(|i| &self.list[i].1)
    }

    /// The value of `key`, if there is one, to change it.
    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.position(key).map(|i| &mut self.list[i].1)
    }

    /// Whether `key` has a value.
    pub fn contains_key<Q>(&self, key: &Q) -> bool
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.position(key).is_some()
    }

    /// Sets the value of `key`; returns the one it replaced.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        if let Some(i) = self.position(&key) {
            return Some(std::mem::replace(&mut self.list[i].1, value));
        }
        if self.list.len() == self.list.capacity() {
            // Grown by half rather than doubled, and from one: a list of one holds one.
            self.list.reserve_exact((self.list.len() / 2).max(1));
        }
        let i = self.list.len();
        if let Some(index) = &mut self.index {
            index.insert(key.clone(), i);
        }
        self.list.push((key, value));
        if self.index.is_none() && self.list.len() > SMALL {
            let index = self.list.iter().enumerate().map(|(i, (k, _))| (k.clone(), i)).collect();
            self.index = Some(Box::new(index));
        }
        None
    }

    /// Removes `key`; returns its value.
    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        let i = self.position(key)?;
        let (k, v) = self.list.swap_remove(i);
        if let Some(index) = &mut self.index {
            index.remove::<K>(&k);
            if let Some((moved, _)) = self.list.get(i) {
                index.insert(moved.clone(), i);
            }
            if self.list.len() <= SMALL / 2 {
                self.index = None;
            }
        }
        // A list that emptied out (a crowd left the channel) gives its memory back.
        if self.list.capacity() > 2 * self.list.len() + 4 {
            self.list.shrink_to(self.list.len() + self.list.len() / 2);
        }
        Some(v)
    }

    /// The entries, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.list.iter().map(|(k, v)| (k, v))
    }

    /// The keys, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.list.iter().map(|(k, _)| k)
    }

    /// The values, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.list.iter().map(|(_, v)| v)
    }

    /// The values, in no particular order, to change them.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.list.iter_mut().map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_single_entry_takes_room_for_one() {
        let mut m: Keyed<u64, [u8; 64]> = Keyed::default();
        m.insert(7, [0; 64]);
        assert_eq!(m.list.capacity(), 1);
        assert!(m.index.is_none());
    }

    proptest! {
        /// Any sequence of inserts and removes leaves it equal to a `HashMap` that went
        /// through the same, across the switch to an index and back.
        #[test]
        fn behaves_as_a_hash_map(ops in prop::collection::vec((any::<bool>(), 0u8..40, any::<u16>()), 0..400)) {
            let mut m: Keyed<String, u16> = Keyed::default();
            let mut reference = HashMap::new();
            for (insert, key, value) in ops {
                let key = key.to_string();
                if insert {
                    prop_assert_eq!(m.insert(key.clone(), value), reference.insert(key, value));
                } else {
                    prop_assert_eq!(m.remove(key.as_str()), reference.remove(&key));
                }
                prop_assert_eq!(m.len(), reference.len());
                for (k, v) in &reference {
                    prop_assert_eq!(m.get(k.as_str()), Some(v));
                }
                if let Some(index) = &m.index {
                    for (k, i) in index.iter() {
                        prop_assert_eq!(&m.list[*i].0, k);
                    }
                }
            }
            let mut all: Vec<_> = m.iter().map(|(k, v)| (k.clone(), *v)).collect();
            all.sort();
            let mut expected: Vec<_> = reference.into_iter().collect();
            expected.sort();
            prop_assert_eq!(all, expected);
        }
    }
}
