//! The connected clients of this node by user, as the limits and the server API reach
//! them (a user's connections, all of them, how many users).
//!
//! Most users have one connection on a node: each user's first is in one table, of
//! 24-byte entries (the name, boxed, and the connection), and only users with several
//! have the others in a second. As a hash table is 60–90% full, that is about 35 bytes
//! of table per user, where a `String` key and a list per user took about 140 with the
//! list's block.

use std::collections::HashMap;
use std::sync::Arc;

use super::client::ClientShared;
use super::keyed::Keyed;
use super::Connected;

/// The connections of this node, by user (anonymous ones under "", Pusher's under the
/// keys their sessions register with).
#[derive(Default)]
pub(crate) struct Users {
    /// Each user's first connection.
    first: HashMap<Box<str>, Connected>,
    /// The others, of the users with several, by the client's `seq`.
    more: HashMap<Box<str>, Keyed<u64, Connected>>,
}

impl Users {
    /// How many users have connections here.
    pub fn len(&self) -> usize {
        self.first.len()
    }

    /// How many connections `user` has here.
    pub fn count(&self, user: &str) -> usize {
        usize::from(self.first.contains_key(user)) + self.more.get(user).map_or(0, Keyed::len)
    }

    /// The connections of `user`.
    pub fn get(&self, user: &str) -> impl Iterator<Item = &Connected> {
        self.first.get(user).into_iter().chain(self.more.get(user).into_iter().flat_map(Keyed::values))
    }

    /// Every connection, with its user.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Connected)> {
        let first = self.first.iter().map(|(user, c)| (&**user, c));
        first.chain(self.more.iter().flat_map(|(user, m)| m.values().map(move |c| (&**user, c))))
    }

    /// Adds a connection of `user`.
    pub fn insert(&mut self, user: &str, client: Arc<ClientShared>) {
        let c = Connected { client };
        if !self.first.contains_key(user) {
            self.first.insert(user.into(), c);
        } else if let Some(m) = self.more.get_mut(user) {
            m.insert(c.client.seq, c);
        } else {
            let mut m = Keyed::default();
            m.insert(c.client.seq, c);
            self.more.insert(user.into(), m);
        }
    }

    /// Removes the connection `seq` of `user`, and the user with its last.
    pub fn remove(&mut self, user: &str, seq: u64) {
        let Some(first) = self.first.get_mut(user) else { return };
        if first.client.seq == seq {
            // Another of the user's, if any, takes its place.
            match self.more.get_mut(user) {
                Some(m) => {
                    let next = *m.keys().next().expect("never kept empty");
                    *first = m.remove(&next).expect("there");
                    if m.is_empty() {
                        self.more.remove(user);
                    }
                }
                None => {
                    self.first.remove(user);
                }
            }
        } else if let Some(m) = self.more.get_mut(user) {
            m.remove(&seq);
            if m.is_empty() {
                self.more.remove(user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Format;

    fn client() -> Arc<ClientShared> {
        Arc::new(ClientShared::new(Format::Json, 1024))
    }

    #[test]
    fn a_users_connections_are_found_counted_and_removed_one_by_one() {
        let mut users = Users::default();
        let (a, b, c) = (client(), client(), client());
        users.insert("u", a.clone());
        assert_eq!((users.len(), users.count("u")), (1, 1));
        users.insert("u", b.clone());
        users.insert("v", c.clone());
        assert_eq!((users.len(), users.count("u"), users.count("v"), users.count("w")), (2, 2, 1, 0));
        let mut seqs: Vec<u64> = users.get("u").map(|c| c.client.seq).collect();
        seqs.sort();
        assert_eq!(seqs, [a.seq, b.seq]);
        assert_eq!(users.iter().count(), 3);
        users.remove("u", a.seq);
        assert_eq!(users.get("u").map(|c| c.client.seq).collect::<Vec<_>>(), [b.seq]);
        users.remove("u", 12345);
        assert_eq!(users.count("u"), 1, "another seq removes nothing");
        users.remove("u", b.seq);
        assert_eq!((users.len(), users.count("u")), (1, 0));
        users.remove("v", c.seq);
        assert_eq!(users.len(), 0);
    }

    #[test]
    fn a_users_entry_takes_24_bytes() {
        assert_eq!(std::mem::size_of::<(Box<str>, Connected)>(), 24);
    }

    #[test]
    fn the_first_connection_removed_hands_its_place_to_another() {
        let mut users = Users::default();
        let (a, b, c) = (client(), client(), client());
        for x in [&a, &b, &c] {
            users.insert("u", x.clone());
        }
        users.remove("u", a.seq);
        assert_eq!(users.count("u"), 2);
        users.remove("u", b.seq);
        assert_eq!(users.get("u").map(|x| x.client.seq).collect::<Vec<_>>(), [c.seq]);
        assert!(users.more.is_empty(), "no list left for one connection");
        users.remove("u", c.seq);
        assert_eq!((users.len(), users.first.len(), users.more.len()), (0, 0, 0));
    }
}
