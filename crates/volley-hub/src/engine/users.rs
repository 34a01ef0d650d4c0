//! The connected clients of this node by user, as the limits and the server API reach
//! them (a user's connections, all of them, how many users).
//!
//! One entry per user, and most users have one connection on a node: that one is kept
//! in the entry itself, and only a user with several has a list of them. The table's
//! entries are 32 bytes (the name, boxed, and the connection or the list); as a hash
//! table is 60–90% full, that is about 50 bytes of table per user, where a `String` key
//! and a list per user took about 140 with the list's block.

use std::collections::HashMap;
use std::sync::Arc;

use super::client::ClientShared;
use super::keyed::Keyed;
use super::Connected;

/// The connections of this node, by user (anonymous ones under "", Pusher's under the
/// keys their sessions register with).
#[derive(Default)]
pub(crate) struct Users {
    map: HashMap<Box<str>, Sessions>,
}

/// One user's connections on this node.
enum Sessions {
    /// The usual case: one.
    One(Connected),
    /// Several, by the client's `seq`.
    Many(Box<Keyed<u64, Connected>>),
}

impl Sessions {
    fn len(&self) -> usize {
        match self {
            Sessions::One(_) => 1,
            Sessions::Many(m) => m.len(),
        }
    }

    fn iter(&self) -> impl Iterator<Item = &Connected> {
        let (one, many) = match self {
            Sessions::One(c) => (Some(c), None),
            Sessions::Many(m) => (None, Some(m.values())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }
}

impl Users {
    /// How many users have connections here.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// How many connections `user` has here.
    pub fn count(&self, user: &str) -> usize {
        self.map.get(user).map_or(0, Sessions::len)
    }

    /// The connections of `user`.
    pub fn get(&self, user: &str) -> impl Iterator<Item = &Connected> {
        self.map.get(user).into_iter().flat_map(Sessions::iter)
    }

    /// Every connection, with its user.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Connected)> {
        self.map.iter().flat_map(|(user, s)| s.iter().map(move |c| (&**user, c)))
    }

    /// Adds a connection of `user`.
    pub fn insert(&mut self, user: &str, client: Arc<ClientShared>) {
        let c = Connected { client };
        match self.map.get_mut(user) {
            None => {
                self.map.insert(user.into(), Sessions::One(c));
            }
            Some(Sessions::Many(m)) => {
                m.insert(c.client.seq, c);
            }
            Some(one) => {
                let Sessions::One(first) = std::mem::replace(one, Sessions::Many(Box::default())) else {
                    unreachable!("matched above")
                };
                let Sessions::Many(m) = one else { unreachable!("just made") };
                m.insert(first.client.seq, first);
                m.insert(c.client.seq, c);
            }
        }
    }

    /// Removes the connection `seq` of `user`, and the user with its last.
    pub fn remove(&mut self, user: &str, seq: u64) {
        let Some(sessions) = self.map.get_mut(user) else { return };
        let empty = match sessions {
            Sessions::One(c) => c.client.seq == seq,
            // Never empty after one removal: a list holds two or more.
            Sessions::Many(m) => {
                m.remove(&seq);
                if m.len() == 1 {
                    let last = m.values().next().cloned().expect("one left");
                    *sessions = Sessions::One(last);
                }
                false
            }
        };
        if empty {
            self.map.remove(user);
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
    fn a_users_entry_takes_32_bytes() {
        assert_eq!(std::mem::size_of::<(Box<str>, Sessions)>(), 32);
    }
}
