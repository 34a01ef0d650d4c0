//! What the rest of the hub holds of a connected client: its outbound queue.
//!
//! Everything sent to a client (replies, pushes) goes through its queue, as encoded
//! bytes shared with every other subscriber of the same publication. The queue is
//! bounded in bytes: a client that lets it overflow is marked to be disconnected with
//! 3008 (slow) and nothing else waits for it. The connection's task takes everything
//! queued at once and writes it as one frame.
//!
//! A client whose connection is parked (held without a task, `volley::park`) has no
//! task to wake. What is queued for it is handed to the parking's writer, which
//! writes it to the socket in place (the connection stays parked: a publication to
//! many idle clients costs each a write, not a task; a writer that falls behind
//! writes all that waits at once). Whatever else would wake it (a close, a control
//! request, a socket that does not take the write) has the transport take the
//! connection back and start a task for it.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};
use std::task::Poll;
use std::time::Instant;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use volley::{PreparedMessage, Utf8Bytes};

use super::session::Moment;
use super::{ControlRequest, Details};
use crate::protocol::{Disconnect, Format};

/// A client's queue and identity, shared by its task and the hub, and what the server
/// API and the delivery ask of its session from outside its task. One block per
/// client (192 bytes with its reference counts, one of the allocator's size classes:
/// a field more moves it to the next, 224).
#[derive(Debug)]
pub(crate) struct ClientShared {
    /// A number unique in this process (the registry's key).
    pub seq: u64,
    /// The client id (a UUID) given in the connect result.
    pub id: ClientId,
    /// The client's wire format.
    pub format: Format,
    outbox: Mutex<Outbox>,
    /// The client's task, to be woken (a waker and a flag: 24 bytes and one, where
    /// tokio's `Notify` takes 32, for the one task that waits).
    waker: AtomicWaker,
    /// Set by a wake, taken by [`ClientShared::ready`].
    woken: AtomicBool,
    /// What is asked of the session ([`ASKED_REQUESTS`], [`ASKED_LOST`]), readable
    /// without the queue's lock: the parking's thread asks it while it holds the
    /// parking's lock, which is taken under the queue's (a parked write), so it must
    /// not take the queue's.
    asked: AtomicU8,
    /// What the server API's `connections` shows of the session: set once, when it is
    /// connected.
    details: OnceLock<Details>,
}

/// In [`ClientShared`]'s `asked`: the server API asked something.
const ASKED_REQUESTS: u8 = 1;
/// In [`ClientShared`]'s `asked`: the delivery lost a subscription.
const ASKED_LOST: u8 = 2;

/// What the server API and the delivery ask of a session from outside its task.
#[derive(Debug, Default)]
pub(crate) struct Control {
    /// Server-side subscribe/unsubscribe asked by the API, applied by the session.
    pub requests: Vec<ControlRequest>,
    /// Channels whose stream the delivery found a gap in: the client was told
    /// (unsubscribe 2500) and gets nothing more from them; the session forgets them
    /// before its next command, so that the client's resubscribe finds them gone.
    pub lost: Vec<String>,
}

impl Control {
    fn flags(&self) -> u8 {
        let mut flags = 0;
        if !self.requests.is_empty() {
            flags |= ASKED_REQUESTS;
        }
        if !self.lost.is_empty() {
            flags |= ASKED_LOST;
        }
        flags
    }
}

/// One reply or push queued for a client.
#[derive(Debug, Clone)]
pub(crate) enum Item {
    /// Its encoded bytes.
    Encoded(Bytes),
    /// A push to many clients (a publication), with its WebSocket frame prepared once
    /// for them all: a parked client gets that frame as it is.
    Prepared(std::sync::Arc<PreparedMessage>),
}

impl Item {
    /// A push to many clients in `format`, its frame prepared once (when JSON that is
    /// not UTF-8, which the hub's encoders never produce, just the bytes).
    pub fn shared(bytes: Bytes, format: Format) -> Item {
        match prepare(&bytes, format) {
            Some(message) => Item::Prepared(std::sync::Arc::new(message)),
            None => Item::Encoded(bytes),
        }
    }

    /// The item's message, as a frame of its own (text for JSON, binary for
    /// Protobuf): the one prepared for it, or one made now; `None` for JSON that is not
    /// UTF-8.
    pub fn message(&self, format: Format) -> Option<std::borrow::Cow<'_, PreparedMessage>> {
        match self {
            Item::Prepared(m) => Some(std::borrow::Cow::Borrowed(&**m)),
            Item::Encoded(b) => prepare(b, format).map(std::borrow::Cow::Owned),
        }
    }

    /// The encoded bytes.
    pub fn bytes(&self) -> &Bytes {
        match self {
            Item::Encoded(b) => b,
            Item::Prepared(m) => m.payload(),
        }
    }

    /// The encoded bytes, owned.
    pub fn into_bytes(self) -> Bytes {
        match self {
            Item::Encoded(b) => b,
            Item::Prepared(m) => m.payload().clone(),
        }
    }
}

/// Encoded bytes as a message in `format`'s frame type; `None` for JSON that is not
/// UTF-8.
pub(crate) fn prepare(bytes: &Bytes, format: Format) -> Option<PreparedMessage> {
    match format {
        Format::Json => Utf8Bytes::try_from(bytes.clone()).ok().map(PreparedMessage::text),
        Format::Protobuf => Some(PreparedMessage::binary(bytes.clone())),
    }
}

impl From<Bytes> for Item {
    fn from(b: Bytes) -> Item {
        Item::Encoded(b)
    }
}

#[derive(Debug, Default)]
struct Outbox {
    items: Vec<Item>,
    /// When the oldest item waiting was queued.
    since: Option<Moment>,
    /// The bytes waiting, and how many may (a queue holds at most 4 GiB: four bytes
    /// each, where a `usize` takes eight, in every client).
    bytes: u32,
    limit: u32,
    /// The disconnect asked, and what the server API and the delivery asked of the
    /// session, while there is any (boxed: rarely anything, and a client keeps a
    /// pointer's room for it).
    rare: Option<Box<Rare>>,
    /// Set while the connection is parked: its id, and where to send it to be woken.
    parked: Option<(ParkedId, Unparker)>,
}

/// What happens to few clients, or once: kept apart from the [`Outbox`].
#[derive(Debug, Default)]
struct Rare {
    /// Set once: the client is to be disconnected.
    closing: Option<Disconnect>,
    /// What the server API and the delivery asked of the session.
    control: Control,
}

impl Outbox {
    /// The disconnect asked, if one was.
    fn closing(&self) -> Option<&Disconnect> {
        self.rare.as_deref().and_then(|r| r.closing.as_ref())
    }

    /// What happens rarely, made on first use.
    fn rare(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Box::default)
    }
}

/// What holds parked connections: writes to one in place, or has it taken back and
/// served.
pub(crate) trait Parked: Send + Sync + std::fmt::Debug {
    /// Has [`ClientShared::write_parked`] called for the client soon (its queue was
    /// empty and has something now).
    fn schedule(&self, client: std::sync::Arc<ClientShared>);
    /// Writes encoded items (a frame each, text for JSON, binary for Protobuf) to the
    /// connection parked as `id`, if its socket takes them.
    /// `since`: when the oldest of them was queued (for the delivery latency).
    fn write(&self, id: ParkedId, items: &[Item], format: Format, since: Option<Instant>) -> Written;
    /// Has the connection parked as `id` taken back and served, if it still is.
    fn unpark(&self, id: ParkedId);
}

/// What [`Parked::write`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Written {
    /// Written whole: the connection stays parked.
    Whole,
    /// Written in part: the connection was taken back with the rest, and is served.
    HandedBack,
    /// Not written: the connection is no longer parked there.
    No,
}

/// Where a parked client's connection is.
pub(crate) type Unparker = std::sync::Arc<dyn Parked>;

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
    pub fn with_id(id: ClientId, format: Format, limit: usize) -> Self {
        ClientShared {
            seq: SEQ.fetch_add(1, Ordering::Relaxed),
            id,
            format,
            outbox: Mutex::new(Outbox { limit: u32::try_from(limit).unwrap_or(u32::MAX), ..Default::default() }),
            waker: AtomicWaker::new(),
            woken: AtomicBool::new(false),
            asked: AtomicU8::new(0),
            details: OnceLock::new(),
        }
    }

    /// Asks something of the session: `f` adds it to what is asked.
    pub fn ask(&self, f: impl FnOnce(&mut Control)) {
        let mut o = self.lock();
        let control = &mut o.rare().control;
        f(control);
        self.asked.store(control.flags(), Ordering::Release);
    }

    /// Whether anything is asked of the session. Takes no lock.
    pub fn asked(&self) -> bool {
        self.asked.load(Ordering::Acquire) != 0
    }

    /// Whether the delivery lost any of the session's subscriptions. Takes no lock.
    pub fn lost_any(&self) -> bool {
        self.asked.load(Ordering::Acquire) & ASKED_LOST != 0
    }

    /// Takes the subscriptions the delivery lost.
    pub fn take_lost(&self) -> Vec<String> {
        self.take_asked(|c| std::mem::take(&mut c.lost))
    }

    /// Takes the server API's requests.
    pub fn take_requests(&self) -> Vec<ControlRequest> {
        self.take_asked(|c| std::mem::take(&mut c.requests))
    }

    fn take_asked<T: Default>(&self, take: impl FnOnce(&mut Control) -> T) -> T {
        let mut o = self.lock();
        let Some(rare) = o.rare.as_mut() else { return T::default() };
        let taken = take(&mut rare.control);
        let flags = rare.control.flags();
        self.asked.store(flags, Ordering::Release);
        if flags == 0 && rare.closing.is_none() {
            o.rare = None;
        }
        taken
    }

    /// What the server API's `connections` shows of the session; `None` until it is
    /// connected.
    pub fn details(&self) -> Option<&Details> {
        self.details.get()
    }

    /// Records what the server API's `connections` shows of the session, once it is
    /// connected (a second call changes nothing).
    pub fn set_details(&self, details: Details) {
        let _ = self.details.set(details);
    }

    /// Queues encoded bytes (one reply or push, without a separator). Returns false if
    /// the client is being disconnected (now, or already).
    pub fn push(self: &std::sync::Arc<Self>, item: impl Into<Item>) -> bool {
        self.push_to(item.into(), None)
    }

    /// [`push`](Self::push)es an item; if the client is parked and the item is the
    /// first waiting, adds the client to `inline` rather than to its parking's writer:
    /// the caller then calls [`write_parked`](Self::write_parked) for each client in
    /// `inline` itself, once it holds no lock (a small fan-out costs a write each,
    /// without a hand-over to the writer's task).
    pub fn push_inline(self: &std::sync::Arc<Self>, item: Item, inline: &mut Vec<std::sync::Arc<Self>>) -> bool {
        self.push_to(item, Some(inline))
    }

    fn push_to(self: &std::sync::Arc<Self>, item: Item, inline: Option<&mut Vec<std::sync::Arc<Self>>>) -> bool {
        let len = item.bytes().len();
        let mut o = self.lock();
        if o.closing().is_some() {
            return false;
        }
        let Some(bytes) = u32::try_from(len).ok().and_then(|len| o.bytes.checked_add(len)).filter(|b| *b <= o.limit)
        else {
            o.rare().closing = Some(Disconnect::SLOW);
            o.items.clear();
            o.bytes = 0;
            self.wake(o);
            return false;
        };
        let first = o.items.is_empty();
        if first {
            o.since = Some(Moment::now());
        }
        o.bytes = bytes;
        o.items.push(item);
        if first {
            match &o.parked {
                // The parking's writer takes it (and whatever comes before it runs).
                Some((_, parked)) => match inline {
                    Some(inline) => inline.push(self.clone()),
                    None => {
                        let parked = parked.clone();
                        drop(o);
                        parked.schedule(self.clone());
                    }
                },
                None => self.wake(o),
            }
        }
        true
    }

    /// Writes what is queued to the client's parked connection, in place (see
    /// [`Parked::write`]); if the connection is no longer parked, wakes its task
    /// instead. Under the queue's lock: nothing queued meanwhile can overtake it.
    pub fn write_parked(&self) {
        let mut o = self.lock();
        let Some((id, parked)) = o.parked.clone() else { return };
        if o.items.is_empty() || o.closing().is_some() {
            return;
        }
        let written = parked.write(id, &o.items, self.format, o.since.map(Moment::instant));
        if written == Written::No {
            return self.wake(o);
        }
        // The queue's room is given back too: a parked client is idle, and most stay
        // so (4 items' room, 128 bytes, on each of them otherwise).
        o.items = Vec::new();
        o.bytes = 0;
        o.since = None;
        // Handed back: the rest is in the connection's own queue, and it has a task.
        if written == Written::HandedBack {
            o.parked = None;
        }
    }

    /// Wakes the client's task, or has its parked connection taken back.
    fn wake(&self, mut o: std::sync::MutexGuard<'_, Outbox>) {
        let parked = o.parked.take();
        drop(o);
        self.woken.store(true, Ordering::Release);
        self.waker.wake();
        if let Some((id, parked)) = parked {
            parked.unpark(id);
        }
    }

    /// The queue, locked, if nothing is queued and no disconnect is asked: the
    /// connection may be parked while the guard is held.
    pub fn idle(&self) -> Option<IdleGuard<'_>> {
        let mut o = self.lock();
        if !o.items.is_empty() || o.closing().is_some() {
            return None;
        }
        // Parking: the queue's room goes (see `write_parked`).
        o.items = Vec::new();
        Some(IdleGuard(o))
    }

    /// Forgets the parked id: the connection has a task again.
    pub fn unparked(&self) {
        self.lock().parked = None;
    }

    /// Marks the client to be disconnected (the first reason wins); what was queued is
    /// still written before the close frame.
    pub fn close(&self, d: Disconnect) {
        let mut o = self.lock();
        if o.closing().is_none() {
            o.rare().closing = Some(d);
        }
        self.wake(o);
    }

    /// Wakes the client's task without queueing anything (it has a request to apply).
    pub fn push_wake(&self) {
        self.wake(self.lock());
    }

    /// Waits until something is queued or the client is marked to close.
    /// (One task waits: the client's.)
    pub async fn ready(&self) {
        /// Forgets the waker when the wait ends, however it ends: kept, it would keep
        /// the task's block (its future and all) after the task ended, as a parked
        /// client's does.
        struct Forget<'a>(&'a AtomicWaker);
        impl Drop for Forget<'_> {
            fn drop(&mut self) {
                drop(self.0.take());
            }
        }
        let _forget = Forget(&self.waker);
        std::future::poll_fn(|cx| {
            if self.woken.swap(false, Ordering::AcqRel) {
                return Poll::Ready(());
            }
            self.waker.register(cx.waker());
            // A wake between the check and the registration found no waker.
            if self.woken.swap(false, Ordering::AcqRel) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }

    /// Whether anything is queued, or the client is marked to close.
    pub fn has_queued(&self) -> bool {
        let o = self.lock();
        !o.items.is_empty() || o.closing().is_some()
    }

    /// The disconnect asked, if one was.
    pub fn closing(&self) -> Option<Disconnect> {
        self.lock().closing().cloned()
    }

    /// Takes what is queued: the disconnect if one was asked, and when the oldest item
    /// taken was queued.
    pub fn take_since(&self, into: &mut Vec<Bytes>) -> (Option<Disconnect>, Option<Instant>) {
        let mut o = self.lock();
        into.extend(o.items.drain(..).map(Item::into_bytes));
        o.bytes = 0;
        (o.closing().cloned(), o.since.take().map(Moment::instant))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Outbox> {
        self.outbox.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A random UUID (version 4), as Centrifugo's client ids are.
pub(crate) fn new_client_id() -> ClientId {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = ClientId { len: 0, bytes: [0; ClientId::MAX] };
    for (i, x) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            id.push(b'-');
        }
        id.push(HEX[usize::from(x >> 4)]);
        id.push(HEX[usize::from(x & 0x0f)]);
    }
    id
}

/// A client id, kept inline: a UUID's 36 characters, or a Pusher socket id (at most
/// 30). Inline rather than a `String`, which would cost every client a 48-byte block
/// of its own.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct ClientId {
    len: u8,
    bytes: [u8; ClientId::MAX],
}

impl ClientId {
    /// The longest id.
    pub const MAX: usize = 36;

    /// The id `id`: ids are made by the hub, never longer than [`ClientId::MAX`]; a
    /// longer one is cut there (at a character's boundary).
    pub fn new(id: &str) -> ClientId {
        let mut end = id.len().min(Self::MAX);
        while !id.is_char_boundary(end) {
            end -= 1;
        }
        let mut bytes = [0; Self::MAX];
        bytes[..end].copy_from_slice(&id.as_bytes()[..end]);
        ClientId { len: end as u8, bytes }
    }

    fn push(&mut self, b: u8) {
        self.bytes[usize::from(self.len)] = b;
        self.len += 1;
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        // Made from a `&str` cut at a character's boundary, or from ASCII.
        std::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or_default()
    }
}

impl std::ops::Deref for ClientId {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl std::fmt::Display for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl serde::Serialize for ClientId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl PartialEq<str> for ClientId {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for ClientId {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<ClientId> for &str {
    fn eq(&self, other: &ClientId) -> bool {
        *self == other.as_str()
    }
}

impl PartialEq<ClientId> for str {
    fn eq(&self, other: &ClientId) -> bool {
        self == other.as_str()
    }
}

impl PartialEq<String> for ClientId {
    fn eq(&self, other: &String) -> bool {
        self.as_str() == other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_asked_of_a_session_is_readable_while_its_queue_is_locked() {
        // The parking's thread asks it under the parking's lock, which a parked write
        // takes under the queue's: a lock here would be a deadlock.
        let client = std::sync::Arc::new(ClientShared::new(Format::Json, 1 << 20));
        client.ask(|c| c.lost.push("chat".into()));
        let guard = client.idle().expect("nothing queued");
        let (tx, rx) = std::sync::mpsc::channel();
        let c = client.clone();
        std::thread::spawn(move || tx.send((c.asked(), c.lost_any())).unwrap());
        let read = rx.recv_timeout(std::time::Duration::from_secs(10));
        drop(guard);
        assert_eq!(read, Ok((true, true)));
        assert_eq!(client.take_lost(), ["chat"]);
        assert!(!client.asked() && !client.lost_any());
        client.ask(|c| c.requests.push(ControlRequest::Subscribe { channel: "news".into() }));
        assert!(client.asked() && !client.lost_any());
        assert_eq!(client.take_requests().len(), 1);
        assert!(!client.asked());
    }

    #[test]
    fn a_client_with_its_reference_counts_fits_the_allocators_192_byte_class() {
        // Two counts of a word each precede the value in an `Arc`'s block.
        assert!(std::mem::size_of::<ClientShared>() + 16 <= 192, "{}", std::mem::size_of::<ClientShared>());
    }

    #[test]
    fn client_ids_are_version_4_uuids_in_strings_of_their_exact_length() {
        let id = new_client_id();
        let a = id.as_str();
        assert_eq!(a.len(), 36);
        let groups: Vec<&str> = a.split('-').collect();
        assert_eq!(groups.iter().map(|g| g.len()).collect::<Vec<_>>(), [8, 4, 4, 4, 12], "{a}");
        assert!(a.bytes().all(|c| c == b'-' || c.is_ascii_digit() || (b'a'..=b'f').contains(&c)), "{a}");
        assert!(groups[2].starts_with('4'), "version 4: {a}");
        assert!(matches!(groups[3].as_bytes()[0], b'8' | b'9' | b'a' | b'b'), "variant: {a}");
        assert_ne!(a, new_client_id());
    }

    #[test]
    fn an_overflowing_queue_marks_the_client_slow_and_drops_what_waits() {
        let c = std::sync::Arc::new(ClientShared::new(Format::Json, 10));
        assert!(c.push(Bytes::from_static(b"12345")));
        assert!(c.push(Bytes::from_static(b"12345")));
        assert!(!c.push(Bytes::from_static(b"1")));
        let mut out = Vec::new();
        assert_eq!(c.take_since(&mut out).0, Some(Disconnect::SLOW));
        assert!(out.is_empty());
        assert!(!c.push(Bytes::from_static(b"1")), "nothing more is queued");
    }

    /// A parking that records what it is asked, and answers `answer` to writes.
    #[derive(Debug)]
    struct FakeParking {
        scheduled: Mutex<usize>,
        written: Mutex<Vec<Bytes>>,
        answer: Written,
    }

    impl Parked for FakeParking {
        fn schedule(&self, _client: std::sync::Arc<ClientShared>) {
            *self.scheduled.lock().unwrap() += 1;
        }
        fn write(&self, _id: ParkedId, items: &[Item], _f: Format, _since: Option<Instant>) -> Written {
            if self.answer != Written::No {
                self.written.lock().unwrap().extend(items.iter().map(|i| i.bytes().clone()));
            }
            self.answer
        }
        fn unpark(&self, _id: ParkedId) {}
    }

    #[cfg(unix)]
    fn parked_client(answer: Written) -> (std::sync::Arc<ClientShared>, std::sync::Arc<FakeParking>) {
        let c = std::sync::Arc::new(ClientShared::new(Format::Json, 1000));
        let p = std::sync::Arc::new(FakeParking { scheduled: Mutex::new(0), written: Mutex::default(), answer });
        // A real id from a real parking (its fields are private).
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let id = rt.block_on(async {
            let parking = volley::park::Parking::<()>::new().unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
            let (tcp, _) = listener.accept().await.unwrap();
            let ws = volley::WebSocket::from_handshaken(
                tcp,
                volley::Role::Server,
                volley::Config::default(),
                &[],
                None,
                None,
            );
            parking.park(ws, ()).unwrap()
        });
        c.idle().unwrap().parked(id, p.clone());
        (c, p)
    }

    #[cfg(unix)]
    #[test]
    fn what_is_queued_for_a_parked_client_goes_to_the_writer_in_order() {
        let (c, p) = parked_client(Written::Whole);
        assert!(c.push(Bytes::from_static(b"a")));
        assert!(c.push(Bytes::from_static(b"b")));
        assert_eq!(*p.scheduled.lock().unwrap(), 1, "scheduled once for what waits");
        c.write_parked();
        assert_eq!(*p.written.lock().unwrap(), [Bytes::from_static(b"a"), Bytes::from_static(b"b")]);
        assert!(!c.has_queued());
        // Still parked: the next push is scheduled again.
        assert!(c.push(Bytes::from_static(b"c")));
        assert_eq!(*p.scheduled.lock().unwrap(), 2);
    }

    #[cfg(unix)]
    #[test]
    fn a_parked_client_whose_connection_left_the_parking_keeps_its_queue_for_its_task() {
        let (c, p) = parked_client(Written::No);
        assert!(c.push(Bytes::from_static(b"a")));
        c.write_parked();
        assert!(p.written.lock().unwrap().is_empty());
        // Its task (served again) finds the queue whole, and is woken for it.
        let woken = futures_util_now(c.ready());
        assert!(woken, "the task was woken");
        let mut out = Vec::new();
        c.take_since(&mut out);
        assert_eq!(out, [Bytes::from_static(b"a")]);
        // No longer parked: what comes next wakes the task.
        assert!(c.push(Bytes::from_static(b"b")));
        assert_eq!(*p.scheduled.lock().unwrap(), 1);
    }

    /// Whether a future is ready at its first poll.
    fn futures_util_now(f: impl std::future::Future<Output = ()>) -> bool {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async { tokio::time::timeout(std::time::Duration::from_millis(1), f).await.is_ok() })
    }

    #[test]
    fn a_wake_reaches_the_task_whether_it_waits_already_or_later_and_once() {
        let c = std::sync::Arc::new(ClientShared::new(Format::Json, 1024));
        assert!(!futures_util_now(c.ready()), "nothing yet");
        c.push_wake();
        assert!(futures_util_now(c.ready()), "a wake before the wait is kept");
        assert!(!futures_util_now(c.ready()), "and taken once");
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            for _ in 0..200 {
                let waiter = tokio::spawn({
                    let c = c.clone();
                    async move { c.ready().await }
                });
                tokio::task::yield_now().await;
                c.push_wake();
                tokio::time::timeout(std::time::Duration::from_secs(5), waiter).await.expect("woken").unwrap();
            }
        });
    }

    #[test]
    fn a_wait_that_ended_keeps_no_waker_of_its_task() {
        let c = std::sync::Arc::new(ClientShared::new(Format::Json, 1024));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let woken = rt.block_on(async {
            let c2 = c.clone();
            let task = tokio::spawn(async move {
                tokio::time::timeout(std::time::Duration::from_millis(1), c2.ready()).await.is_ok()
            });
            task.await.unwrap()
        });
        assert!(!woken);
        assert!(c.waker.take().is_none(), "the ended task's waker would keep its block");
        c.push_wake();
        assert!(futures_util_now(c.ready()), "and a wake meanwhile is still kept");
    }

    #[test]
    fn client_ids_are_uuids() {
        let id = new_client_id();
        assert_eq!(id.len(), 36);
        assert_eq!(&id[14..15], "4");
        assert_ne!(id, new_client_id());
    }
}
