//! What the rest of the hub holds of a connected client: its outbound queue.
//!
//! Everything sent to a client (replies, pushes) goes through its queue, as encoded
//! bytes shared with every other subscriber of the same publication. The queue is
//! bounded in bytes: a client that lets it overflow is marked to be disconnected with
//! 3008 (slow) and nothing else waits for it. The connection's task takes everything
//! queued at once and writes it as one frame.
//!
//! A client whose connection is parked (held without a task, `volley::park`) has no
//! task to wake: whatever would wake it (a push, a close, a control request) sends its
//! parked id to the transport's unparker instead, which takes the connection back and
//! starts a task for it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use bytes::Bytes;
use tokio::sync::Notify;

use crate::protocol::{Disconnect, Format};

/// A client's queue and identity, shared by its task and the hub.
#[derive(Debug)]
pub(crate) struct ClientShared {
    /// A number unique in this process (the registry's key).
    pub seq: u64,
    /// The client id (a UUID) given in the connect result.
    pub id: String,
    /// The client's wire format.
    pub format: Format,
    outbox: Mutex<Outbox>,
    notify: Notify,
}

#[derive(Debug, Default)]
struct Outbox {
    items: Vec<Bytes>,
    /// When the oldest item waiting was queued.
    since: Option<Instant>,
    bytes: usize,
    limit: usize,
    /// Set once: the client is to be disconnected.
    closing: Option<Disconnect>,
    /// Set while the connection is parked: its id, and where to send it to be woken.
    parked: Option<(ParkedId, Unparker)>,
}

/// Where a parked client's id goes to have its connection taken back and served.
pub(crate) type Unparker = tokio::sync::mpsc::UnboundedSender<ParkedId>;

/// The id of a parked connection, as the transport's parking names it.
#[cfg(unix)]
pub(crate) type ParkedId = volley::park::ParkedId;
/// No parking here: no connection is ever parked.
#[cfg(not(unix))]
pub(crate) type ParkedId = std::convert::Infallible;

/// The client's queue held locked while its connection is being parked: nothing can be
/// queued in between the check that it is empty and the parking.
pub(crate) struct IdleGuard<'a>(std::sync::MutexGuard<'a, Outbox>);

impl IdleGuard<'_> {
    /// Records that the connection is parked as `id`: what would wake its task sends
    /// `id` to `unparker` instead.
    pub fn parked(mut self, id: ParkedId, unparker: Unparker) {
        self.0.parked = Some((id, unparker));
    }
}

static SEQ: AtomicU64 = AtomicU64::new(1);

impl ClientShared {
    pub fn new(format: Format, limit: usize) -> Self {
        Self::with_id(new_client_id(), format, limit)
    }

    /// A client with the given id (a Pusher client's socket id).
    pub fn with_id(id: String, format: Format, limit: usize) -> Self {
        ClientShared {
            seq: SEQ.fetch_add(1, Ordering::Relaxed),
            id,
            format,
            outbox: Mutex::new(Outbox { limit, ..Default::default() }),
            notify: Notify::new(),
        }
    }

    /// Queues encoded bytes (one reply or push, without a separator). Returns false if
    /// the client is being disconnected (now, or already).
    pub fn push(&self, item: Bytes) -> bool {
        let mut o = self.lock();
        if o.closing.is_some() {
            return false;
        }
        if o.bytes + item.len() > o.limit {
            o.closing = Some(Disconnect::SLOW);
            o.items.clear();
            o.bytes = 0;
            self.wake(o);
            return false;
        }
        let first = o.items.is_empty();
        if first {
            o.since = Some(Instant::now());
        }
        o.bytes += item.len();
        o.items.push(item);
        if first {
            self.wake(o);
        }
        true
    }

    /// Wakes the client's task, or has its parked connection taken back.
    fn wake(&self, mut o: std::sync::MutexGuard<'_, Outbox>) {
        let parked = o.parked.take();
        drop(o);
        self.notify.notify_one();
        if let Some((id, unparker)) = parked {
            // The unparker is gone only when the server stopped.
            let _ = unparker.send(id);
        }
    }

    /// The queue, locked, if nothing is queued and no disconnect is asked: the
    /// connection may be parked while the guard is held.
    pub fn idle(&self) -> Option<IdleGuard<'_>> {
        let o = self.lock();
        (o.items.is_empty() && o.closing.is_none()).then_some(IdleGuard(o))
    }

    /// Forgets the parked id: the connection has a task again.
    pub fn unparked(&self) {
        self.lock().parked = None;
    }

    /// Marks the client to be disconnected (the first reason wins); what was queued is
    /// still written before the close frame.
    pub fn close(&self, d: Disconnect) {
        let mut o = self.lock();
        if o.closing.is_none() {
            o.closing = Some(d);
        }
        self.wake(o);
    }

    /// Wakes the client's task without queueing anything (it has a request to apply).
    pub fn push_wake(&self) {
        self.wake(self.lock());
    }

    /// Waits until something is queued or the client is marked to close.
    pub async fn ready(&self) {
        self.notify.notified().await
    }

    /// Whether anything is queued, or the client is marked to close.
    pub fn has_queued(&self) -> bool {
        let o = self.lock();
        !o.items.is_empty() || o.closing.is_some()
    }

    /// The disconnect asked, if one was.
    pub fn closing(&self) -> Option<Disconnect> {
        self.lock().closing.clone()
    }

    /// Takes what is queued: the disconnect if one was asked, and when the oldest item
    /// taken was queued.
    pub fn take_since(&self, into: &mut Vec<Bytes>) -> (Option<Disconnect>, Option<Instant>) {
        let mut o = self.lock();
        into.append(&mut o.items);
        o.bytes = 0;
        (o.closing.clone(), o.since.take())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Outbox> {
        self.outbox.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A random UUID (version 4), as Centrifugo's client ids are.
pub(crate) fn new_client_id() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = |r: std::ops::Range<usize>| b[r].iter().map(|x| format!("{x:02x}")).collect::<String>();
    format!("{}-{}-{}-{}-{}", h(0..4), h(4..6), h(6..8), h(8..10), h(10..16))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overflowing_queue_marks_the_client_slow_and_drops_what_waits() {
        let c = ClientShared::new(Format::Json, 10);
        assert!(c.push(Bytes::from_static(b"12345")));
        assert!(c.push(Bytes::from_static(b"12345")));
        assert!(!c.push(Bytes::from_static(b"1")));
        let mut out = Vec::new();
        assert_eq!(c.take_since(&mut out).0, Some(Disconnect::SLOW));
        assert!(out.is_empty());
        assert!(!c.push(Bytes::from_static(b"1")), "nothing more is queued");
    }

    #[test]
    fn client_ids_are_uuids() {
        let id = new_client_id();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert_ne!(id, new_client_id());
    }
}
