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
/// gap). 24 bytes, a list's: the index and the list it goes with are boxed together.
#[derive(Debug)]
pub(crate) enum Keyed<K, V> {
    /// Up to [`SMALL`] entries (and down to [`SMALL`] / 2 once indexed), scanned.
    Small(Vec<(K, V)>),
    /// More: the list and its index.
    Large(Box<Large<K, V>>),
}

/// A large [`Keyed`]: the list, and where each key is in it.
#[derive(Debug)]
pub(crate) struct Large<K, V> {
    list: Vec<(K, V)>,
    index: HashMap<K, usize>,
}

impl<K, V> Default for Keyed<K, V> {
    fn default() -> Self {
        Keyed::Small(Vec::new())
    }
}

impl<K: Eq + Hash + Clone, V> Keyed<K, V> {
    fn list(&self) -> &Vec<(K, V)> {
        match self {
            Keyed::Small(list) => list,
            Keyed::Large(large) => &large.list,
        }
    }

    fn list_mut(&mut self) -> &mut Vec<(K, V)> {
        match self {
            Keyed::Small(list) => list,
            Keyed::Large(large) => &mut large.list,
        }
    }

    /// How many entries there are.
    pub fn len(&self) -> usize {
        self.list().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.list().is_empty()
    }

    fn position<Q>(&self, key: &Q) -> Option<usize>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        match self {
            Keyed::Small(list) => list.iter().position(|(k, _)| k.borrow() == key),
            Keyed::Large(large) => large.index.get(key).copied(),
        }
    }

    /// The value of `key`, if there is one.
    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.position(key).map(|i| &self.list()[i].1)
    }

    /// The value of `key`, if there is one, to change it.
    pub fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.position(key).map(|i| &mut self.list_mut()[i].1)
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
            return Some(std::mem::replace(&mut self.list_mut()[i].1, value));
        }
        match self {
            Keyed::Small(list) => {
                if list.len() == list.capacity() {
                    // Grown by half rather than doubled, and from one: a list of one
                    // holds one.
                    list.reserve_exact((list.len() / 2).max(1));
                }
                list.push((key, value));
                if list.len() > SMALL {
                    let list = std::mem::take(list);
                    let index = list.iter().enumerate().map(|(i, (k, _))| (k.clone(), i)).collect();
                    *self = Keyed::Large(Box::new(Large { list, index }));
                }
            }
            Keyed::Large(large) => {
                if large.list.len() == large.list.capacity() {
                    large.list.reserve_exact(large.list.len() / 2);
                }
                large.index.insert(key.clone(), large.list.len());
                large.list.push((key, value));
            }
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
        let v = match self {
            Keyed::Small(list) => list.swap_remove(i).1,
            Keyed::Large(large) => {
                let (k, v) = large.list.swap_remove(i);
                large.index.remove::<K>(&k);
                if let Some((moved, _)) = large.list.get(i) {
                    large.index.insert(moved.clone(), i);
                }
                if large.list.len() <= SMALL / 2 {
                    *self = Keyed::Small(std::mem::take(&mut large.list));
                }
                v
            }
        };
        // A list that emptied out (a crowd left the channel) gives its memory back.
        let list = self.list_mut();
        if list.capacity() > 2 * list.len() + 4 {
            list.shrink_to(list.len() + list.len() / 2);
        }
        Some(v)
    }

    /// The entries, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.list().iter().map(|(k, v)| (k, v))
    }

    /// The keys, in no particular order.
    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.list().iter().map(|(k, _)| k)
    }

    /// The values, in no particular order.
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.list().iter().map(|(_, v)| v)
    }

    /// The values, in no particular order, to change them.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut V> {
        self.list_mut().iter_mut().map(|(_, v)| v)
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
        assert!(matches!(&m, Keyed::Small(list) if list.capacity() == 1));
    }

    #[test]
    fn it_takes_a_lists_room() {
        assert_eq!(std::mem::size_of::<Keyed<u64, [u8; 64]>>(), std::mem::size_of::<Vec<(u64, [u8; 64])>>());
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
                if let Keyed::Large(large) = &m {
                    prop_assert_eq!(large.index.len(), large.list.len());
                    for (k, i) in large.index.iter() {
                        prop_assert_eq!(&large.list[*i].0, k);
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
