//! pusher-js's HTTP fallbacks, for networks where WebSocket does not pass:
//! `xhr_streaming` and `xhr_polling`, under `/pusher/app/{key}/{server}/{session}/`
//! (the session named by the client).
//!
//! The first receive request of a session (`POST …/xhr_streaming` or `POST …/xhr`)
//! starts it on the node it lands on: the connection is served by the same loop as a
//! WebSocket (`conn::serve_on`) over a carrier whose messages come from `…/xhr_send`
//! (a JSON array of message texts; `[]` is a heartbeat) and whose messages wait in an
//! outbox for the next receive request. A receive request's body is lines: `o` (the
//! session opened, once), `a[...]` (an array of messages, each a JSON string), `h`
//! (a heartbeat) and `c[code,"reason"]` (the session closed). A stream stays open and
//! writes lines as they come; a poll answers with what waits, or waits up to
//! [`POLL_WAIT`] and answers `h`, and the client polls again.
//!
//! Bounds: an outbox over `client.queue_max_bytes` closes its session (4200: the
//! client reconnects); a session with no receive request open for
//! `pusher.http_session_timeout` ends (its client went away: pusher-js tells the server
//! nothing when it disconnects); a closed session's close line waits [`CLOSED_TTL`]
//! for a receive request.
//!
//! Across nodes without sticky sessions: a request for a session this node does not
//! hold is sent to every node through the broker
//! ([`crate::broker::Broker::broadcast_control`]) and the node that holds it serves it:
//! an `xhr_send` is handed on; a receive request is answered `Held` at once, then with
//! the lines it took (a stream relays one forwarded receive after another). When no
//! node says it holds the session within [`LOCATE_WAIT`] the receive request starts it
//! here (at once when the broker knows no other node).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::Response;
use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use super::conn::{self, Carrier, Inbound};
use crate::engine::{lock, Hub, HubInner};
use crate::protocol::Disconnect;

/// How long a poll waits for a message before it answers `h`; a stream writes `h` as
/// often when nothing else comes (proxies cut idle responses).
pub const POLL_WAIT: Duration = Duration::from_secs(25);

/// How long a closed session's close line waits for a receive request to take it.
pub const CLOSED_TTL: Duration = Duration::from_secs(30);

/// How many of the client's messages may wait for its session's loop (`xhr_send`
/// waits beyond, up to [`SEND_TIMEOUT`]).
const INBOUND_QUEUE: usize = 64;

/// How long `xhr_send` waits for room in a busy session's queue (503 after).
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// The first byte of a forwarded `xhr_send` among the broker's control messages (no
/// Protobuf message starts with it, nor JSON).
pub(crate) const FORWARD_PREFIX: u8 = 1;

/// The HTTP sessions of this node: `{key}/{server}/{session}` → the session; and the
/// receive requests this node forwarded, by id, waiting for their answers.
#[derive(Default)]
pub(crate) struct XhrSessions(Mutex<HashMap<String, Arc<Session>>>, Mutex<HashMap<String, mpsc::Sender<Forward>>>);

/// How long a node waits for the node that holds a session it does not to say so,
/// before it starts the session itself.
pub const LOCATE_WAIT: Duration = Duration::from_secs(1);

/// A message from the client (`None`: a heartbeat).
type FromClient = Option<volley::Utf8Bytes>;

/// An `xhr_send`'s messages for the session's loop: `[]` is a heartbeat.
fn from_client(messages: Vec<String>) -> Vec<FromClient> {
    if messages.is_empty() {
        vec![None]
    } else {
        messages.into_iter().map(|m| Some(m.into())).collect()
    }
}

/// One HTTP session: where the client's messages go, and what waits for the client.
pub(crate) struct Session {
    inbound: mpsc::Sender<FromClient>,
    out: Mutex<Outbox>,
    notify: Notify,
    /// The latest receive request (an older one ends).
    receiver: AtomicU64,
    /// Receive requests open now, and when the last one ended.
    attached: Mutex<(usize, Instant)>,
}

/// A receive request open on a session, while it lives.
struct Attached(Arc<Session>);

impl Attached {
    fn new(session: &Arc<Session>) -> Attached {
        lock(&session.attached).0 += 1;
        Attached(session.clone())
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        let mut a = lock(&self.0.attached);
        a.0 -= 1;
        a.1 = Instant::now();
    }
}

#[derive(Default)]
struct Outbox {
    items: VecDeque<Bytes>,
    bytes: usize,
    /// Why the session closed, once it has.
    closed: Option<Disconnect>,
}

/// What a receive request takes from a session.
enum Taken {
    Messages(Bytes),
    Closed(Bytes),
    Nothing,
    /// A newer receive request took over.
    Superseded,
}

impl Session {
    fn take(&self, generation: u64) -> Taken {
        if self.receiver.load(Ordering::Acquire) != generation {
            return Taken::Superseded;
        }
        let mut out = lock(&self.out);
        let mut buf = BytesMut::new();
        if !out.items.is_empty() {
            let items: Vec<Bytes> = out.items.drain(..).collect();
            out.bytes = 0;
            buf.put_u8(b'a');
            buf.put_u8(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    buf.put_u8(b',');
                }
                let text = String::from_utf8_lossy(item);
                buf.put_slice(serde_json::Value::String(text.into_owned()).to_string().as_bytes());
            }
            buf.put_slice(b"]\n");
        }
        match &out.closed {
            Some(d) => {
                buf.put_slice(close_line(d).as_bytes());
                Taken::Closed(buf.freeze())
            }
            None if buf.is_empty() => Taken::Nothing,
            None => Taken::Messages(buf.freeze()),
        }
    }

    /// What waits, or what comes before `deadline`.
    async fn wait(&self, generation: u64, deadline: Instant) -> Taken {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.take(generation) {
                Taken::Nothing => {}
                t => return t,
            }
            tokio::select! {
                _ = &mut notified => {}
                _ = tokio::time::sleep_until(deadline) => return self.take(generation),
            }
        }
    }

    /// A poll's answer: what waits or comes within [`POLL_WAIT`], else a heartbeat.
    async fn poll(&self, generation: u64) -> Bytes {
        match self.wait(generation, Instant::now() + POLL_WAIT).await {
            Taken::Messages(b) | Taken::Closed(b) => b,
            Taken::Nothing | Taken::Superseded => Bytes::from_static(b"h\n"),
        }
    }

    fn close(&self, d: Disconnect) {
        let mut out = lock(&self.out);
        if out.closed.is_none() {
            out.closed = Some(d);
        }
        drop(out);
        self.notify.notify_waiters();
    }
}

fn close_line(d: &Disconnect) -> String {
    format!("c{}\n", serde_json::json!([d.code, d.reason]))
}

/// The carrier of an HTTP session.
struct XhrCarrier {
    inbound: mpsc::Receiver<FromClient>,
    session: Arc<Session>,
    max_bytes: usize,
    /// How long the session lives without a receive request open.
    timeout: Duration,
    /// When to check whether it has.
    check: tokio::time::Interval,
}

impl Carrier for XhrCarrier {
    async fn recv(&mut self) -> Inbound {
        loop {
            tokio::select! {
                m = self.inbound.recv() => return match m {
                    Some(Some(text)) => Inbound::Text(text),
                    Some(None) => Inbound::Other,
                    None => Inbound::End,
                },
                _ = self.check.tick() => {
                    let (open, since) = *lock(&self.session.attached);
                    if open == 0 && since.elapsed() >= self.timeout {
                        return Inbound::End;
                    }
                }
            }
        }
    }

    async fn send(&mut self, batch: &mut Vec<Bytes>) -> Result<(), ()> {
        let mut out = lock(&self.session.out);
        if out.closed.is_some() {
            return Err(());
        }
        let size: usize = batch.iter().map(Bytes::len).sum();
        if out.bytes + size > self.max_bytes {
            drop(out);
            self.session.close(conn::close::TOO_SLOW);
            return Err(());
        }
        out.bytes += size;
        out.items.extend(batch.drain(..));
        drop(out);
        self.session.notify.notify_waiters();
        Ok(())
    }

    async fn close(&mut self, d: &Disconnect) {
        self.session.close(d.clone());
    }
}

/// Which receive request.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Receive {
    Streaming,
    Polling,
}

/// The session names pusher-js gives: a number and 8 characters; bounded here.
fn valid_session(server: &str, session: &str) -> bool {
    let ok = |s: &str, max: usize| !s.is_empty() && s.len() <= max && s.bytes().all(|b| b.is_ascii_alphanumeric());
    ok(server, 16) && ok(session, 64)
}

/// CORS for browsers: any origin (as for Pusher's WebSocket), with credentials.
fn cors(headers: &HeaderMap, r: &mut Response) {
    if let Some(origin) = headers.get(header::ORIGIN) {
        let h = r.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        h.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
}

fn answer(headers: &HeaderMap, code: StatusCode, body: impl Into<Body>) -> Response {
    let mut r = Response::new(body.into());
    *r.status_mut() = code;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/javascript; charset=UTF-8"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store, no-cache, must-revalidate, max-age=0"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    cors(headers, &mut r);
    r
}

/// `/pusher/app/{key}/{server}/{session}/{kind}`: `xhr_streaming`, `xhr` (polling),
/// `xhr_send`, and their CORS preflights.
pub(crate) async fn route(
    State(hub): State<Hub>,
    Path((key, server, session, kind)): Path<(String, String, String, String)>,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let headers = parts.headers;
    if hub.config().pusher.apps.is_empty() {
        return answer(&headers, StatusCode::NOT_FOUND, "no Pusher apps\n");
    }
    if !valid_session(&server, &session) {
        return answer(&headers, StatusCode::BAD_REQUEST, "invalid session\n");
    }
    if parts.method == Method::OPTIONS {
        let mut r = answer(&headers, StatusCode::NO_CONTENT, "");
        let h = r.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("POST, OPTIONS"));
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("Content-Type"));
        h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
        return r;
    }
    if parts.method != Method::POST {
        return answer(&headers, StatusCode::METHOD_NOT_ALLOWED, "POST only\n");
    }
    let id = format!("{key}/{server}/{session}");
    match kind.as_str() {
        "xhr_streaming" | "xhr" => {
            let how = if kind == "xhr" { Receive::Polling } else { Receive::Streaming };
            // An unknown key is refused here (`start`), without asking the other nodes.
            let known = hub.config().pusher.by_key(&key).is_some();
            let here = lock(&hub.inner.pusher_xhr.0).contains_key(&id);
            if known && !here {
                if let Some(first) = remote_receive(&hub, &id).await {
                    return match how {
                        Receive::Polling => answer(&headers, StatusCode::OK, first),
                        Receive::Streaming => remote_stream(hub, id, first, &headers),
                    };
                }
            }
            receive(hub, id, &key, parts.uri.query(), how, &headers).await_poll().await
        }
        "xhr_send" => send(hub, id, body, &headers).await,
        _ => answer(&headers, StatusCode::NOT_FOUND, "unknown transport\n"),
    }
}

/// A receive request's answer: a stream now, or a poll's once it has something.
enum Received {
    Now(Response),
    Poll { headers: HeaderMap, session: Attached, generation: u64 },
}

impl Received {
    async fn await_poll(self) -> Response {
        match self {
            Received::Now(r) => r,
            Received::Poll { headers, session, generation } => {
                let body = session.0.poll(generation).await;
                answer(&headers, StatusCode::OK, body)
            }
        }
    }
}

/// A receive request: finds the session or starts it, then streams or polls it.
fn receive(hub: Hub, id: String, key: &str, query: Option<&str>, how: Receive, headers: &HeaderMap) -> Received {
    let existing = lock(&hub.inner.pusher_xhr.0).get(&id).cloned();
    let (session, opened) = match existing {
        Some(s) => (s, false),
        None => match start(&hub, id, key, query) {
            Ok(s) => (s, true),
            Err(d) => return Received::Now(answer(headers, StatusCode::OK, close_line(&d))),
        },
    };
    let generation = session.receiver.fetch_add(1, Ordering::AcqRel) + 1;
    // Wakes the older receive request, which ends.
    session.notify.notify_waiters();
    if opened && how == Receive::Polling {
        return Received::Now(answer(headers, StatusCode::OK, "o\n"));
    }
    match how {
        Receive::Polling => Received::Poll { headers: headers.clone(), session: Attached::new(&session), generation },
        Receive::Streaming => {
            let first = opened.then(|| Bytes::from_static(b"o\n"));
            let state = (Attached::new(&session), first, false);
            let stream = futures_util::stream::unfold(state, move |(attached, first, done)| async move {
                if done {
                    return None;
                }
                if let Some(o) = first {
                    return Some((Ok::<_, std::convert::Infallible>(o), (attached, None, false)));
                }
                match attached.0.wait(generation, Instant::now() + POLL_WAIT).await {
                    Taken::Messages(b) => Some((Ok(b), (attached, None, false))),
                    Taken::Closed(b) => Some((Ok(b), (attached, None, true))),
                    Taken::Nothing => Some((Ok(Bytes::from_static(b"h\n")), (attached, None, false))),
                    Taken::Superseded => None,
                }
            });
            Received::Now(answer(headers, StatusCode::OK, Body::from_stream(stream)))
        }
    }
}

/// Starts a session: the handshake's checks, then the connection's loop in a task of
/// its own; the session is dropped [`CLOSED_TTL`] after the loop ends.
fn start(hub: &Hub, id: String, key: &str, query: Option<&str>) -> Result<Arc<Session>, Disconnect> {
    let admitted = conn::admit(hub, key, query)?;
    let (tx, rx) = mpsc::channel(INBOUND_QUEUE);
    let session = Arc::new(Session {
        inbound: tx,
        out: Mutex::new(Outbox::default()),
        notify: Notify::new(),
        receiver: AtomicU64::new(0),
        attached: Mutex::new((0, Instant::now())),
    });
    lock(&hub.inner.pusher_xhr.0).insert(id.clone(), session.clone());
    let timeout = hub.config().pusher.http_session_timeout;
    let carrier = XhrCarrier {
        inbound: rx,
        session: session.clone(),
        max_bytes: hub.config().client.queue_max_bytes,
        timeout,
        check: tokio::time::interval((timeout / 4).max(Duration::from_millis(100))),
    };
    let hub = hub.clone();
    tokio::spawn(async move {
        let session = carrier.session.clone();
        conn::serve_on(&hub, admitted, carrier).await;
        session.close(Disconnect { code: 1006, reason: "Connection closed".into() });
        tokio::time::sleep(CLOSED_TTL).await;
        let mut sessions = lock(&hub.inner.pusher_xhr.0);
        if sessions.get(&id).is_some_and(|s| Arc::ptr_eq(s, &session)) {
            sessions.remove(&id);
        }
    });
    Ok(session)
}

/// What nodes tell each other of HTTP sessions, as broker control messages (after
/// [`FORWARD_PREFIX`]).
#[derive(Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub(crate) enum Forward {
    /// An `xhr_send`, to every node: the one that holds the session hands it on.
    Send { session: String, messages: Vec<String> },
    /// A receive request, to every node: the one that holds the session answers `Held`
    /// at once and `Answer` once the request has something.
    Receive { id: String, session: String, reply_to: String },
    /// The answer to a `Receive`: this node holds the session.
    Held { id: String },
    /// The answer to a `Receive`: the lines it took.
    Answer { id: String, body: String },
}

fn encode(f: &Forward) -> Bytes {
    let mut m = vec![FORWARD_PREFIX];
    m.extend(serde_json::to_vec(f).unwrap_or_default());
    Bytes::from(m)
}

/// A receive request for a session this node does not hold, forwarded to the node that
/// does: the lines it took, or `None` when no node says it holds the session within
/// [`LOCATE_WAIT`] (or there is no other node).
async fn remote_receive(hub: &Hub, session: &str) -> Option<Bytes> {
    if hub.inner.broker.nodes().await.map_or(true, |n| n.is_empty()) {
        return None;
    }
    let id = crate::engine::client::new_client_id().to_string();
    let (tx, mut rx) = mpsc::channel(2);
    let sessions = &hub.inner.pusher_xhr;
    lock(&sessions.1).insert(id.clone(), tx);
    // Forgotten however this ends (the client may go away first).
    struct Forget<'a>(&'a XhrSessions, &'a str);
    impl Drop for Forget<'_> {
        fn drop(&mut self) {
            lock(&self.0 .1).remove(self.1);
        }
    }
    let _forget = Forget(sessions, &id);
    let request = Forward::Receive { id: id.clone(), session: session.to_owned(), reply_to: hub.inner.node.clone() };
    if let Err(e) = hub.inner.broker.broadcast_control(encode(&request)).await {
        tracing::debug!(error = %e, "receive request not forwarded");
        return None;
    }
    match tokio::time::timeout(LOCATE_WAIT, rx.recv()).await {
        Ok(Some(Forward::Held { .. })) => {}
        Ok(Some(Forward::Answer { body, .. })) => return Some(Bytes::from(body)),
        _ => return None,
    }
    match tokio::time::timeout(POLL_WAIT + LOCATE_WAIT * 5, rx.recv()).await {
        Ok(Some(Forward::Answer { body, .. })) => Some(Bytes::from(body)),
        // No answer in time: a heartbeat, and the client asks again.
        _ => Some(Bytes::from_static(b"h\n")),
    }
}

/// A stream of a session another node holds: forwarded receive requests, one after
/// the other, until the session closes or no node holds it.
fn remote_stream(hub: Hub, session: String, first: Bytes, headers: &HeaderMap) -> Response {
    let done = first.starts_with(b"c");
    let stream = futures_util::stream::unfold((Some(first), done), move |(first, done)| {
        let hub = hub.clone();
        let session = session.clone();
        async move {
            if let Some(b) = first {
                return Some((Ok::<_, std::convert::Infallible>(b), (None, done)));
            }
            if done {
                return None;
            }
            let b = remote_receive(&hub, &session).await?;
            let done = b.starts_with(b"c") || b.windows(2).any(|w| w == b"\nc");
            Some((Ok(b), (None, done)))
        }
    });
    answer(headers, StatusCode::OK, Body::from_stream(stream))
}

/// `xhr_send`: the client's messages (a JSON array of message texts; `[]` a heartbeat)
/// for its session. 204 once handed on; 400 for a body that is not such an array, 404
/// for a session no node holds, 413 for a body over `client.max_command_size`, 503
/// for a session whose queue stays full.
async fn send(hub: Hub, id: String, body: Body, headers: &HeaderMap) -> Response {
    let limit = hub.config().client.max_command_size;
    let body = match crate::transport::emulation::read_body(body, limit).await {
        Ok(b) => b,
        Err(code) => return answer(headers, code, "bad request body\n"),
    };
    let Ok(messages) = serde_json::from_slice::<Vec<String>>(&body) else {
        return answer(headers, StatusCode::BAD_REQUEST, "expected a JSON array of strings\n");
    };
    let session = lock(&hub.inner.pusher_xhr.0).get(&id).cloned();
    let Some(session) = session else {
        return match hub.inner.broker.broadcast_control(encode(&Forward::Send { session: id, messages })).await {
            Ok(()) => answer(headers, StatusCode::NO_CONTENT, ""),
            Err(e) => {
                tracing::debug!(error = %e, "xhr_send not forwarded");
                answer(headers, StatusCode::NOT_FOUND, "unknown session\n")
            }
        };
    };
    for item in from_client(messages) {
        match tokio::time::timeout(SEND_TIMEOUT, session.inbound.send(item)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return answer(headers, StatusCode::NOT_FOUND, "session closed\n"),
            Err(_) => return answer(headers, StatusCode::SERVICE_UNAVAILABLE, "session busy\n"),
        }
    }
    answer(headers, StatusCode::NO_CONTENT, "")
}

/// Handles what another node forwarded: an `xhr_send` or a receive request for a
/// session of this node (if it holds it; without waiting, the broker's delivery must
/// not block), or the answer to a receive request this node forwarded.
pub(crate) fn deliver_forwarded(hub: &Arc<HubInner>, message: &[u8]) {
    let Ok(f) = serde_json::from_slice::<Forward>(message) else {
        tracing::debug!("malformed forwarded HTTP session message");
        return;
    };
    match f {
        Forward::Send { session: id, messages } => {
            let Some(session) = lock(&hub.pusher_xhr.0).get(&id).cloned() else { return };
            for item in from_client(messages) {
                if session.inbound.try_send(item).is_err() {
                    tracing::debug!(session = %id, "forwarded xhr_send dropped: session busy or gone");
                }
            }
        }
        Forward::Receive { id, session, reply_to } => {
            let Some(session) = lock(&hub.pusher_xhr.0).get(&session).cloned() else { return };
            let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
            let hub = hub.clone();
            runtime.spawn(async move {
                let attached = Attached::new(&session);
                let generation = session.receiver.fetch_add(1, Ordering::AcqRel) + 1;
                session.notify.notify_waiters();
                let held = encode(&Forward::Held { id: id.clone() });
                if let Err(e) = hub.broker.send_control(&reply_to, held).await {
                    tracing::debug!(error = %e, node = %reply_to, "forwarded receive not answered");
                    return;
                }
                let body = attached.0.poll(generation).await;
                drop(attached);
                let body = String::from_utf8_lossy(&body).into_owned();
                if let Err(e) = hub.broker.send_control(&reply_to, encode(&Forward::Answer { id, body })).await {
                    tracing::debug!(error = %e, node = %reply_to, "forwarded receive not answered");
                }
            });
        }
        Forward::Held { ref id } | Forward::Answer { ref id, .. } => {
            if let Some(tx) = lock(&hub.pusher_xhr.1).get(id) {
                let _ = tx.try_send(f);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_checked() {
        assert!(valid_session("123", "abcd1234"));
        assert!(!valid_session("", "abcd1234"));
        assert!(!valid_session("1", "../x"));
        assert!(!valid_session(&"1".repeat(17), "a"));
    }

    #[tokio::test]
    async fn messages_are_framed() {
        let (tx, _rx) = mpsc::channel(1);
        let s = Session {
            inbound: tx,
            out: Mutex::default(),
            notify: Notify::new(),
            receiver: AtomicU64::new(1),
            attached: Mutex::new((0, Instant::now())),
        };
        assert!(matches!(s.take(1), Taken::Nothing));
        lock(&s.out).items.push_back(Bytes::from_static(br#"{"event":"e"}"#));
        let Taken::Messages(b) = s.take(1) else { panic!("no messages") };
        assert_eq!(&b[..], b"a[\"{\\\"event\\\":\\\"e\\\"}\"]\n");
        assert!(matches!(s.take(2), Taken::Superseded));
        s.close(Disconnect { code: 4009, reason: "x".into() });
        let Taken::Closed(b) = s.take(1) else { panic!("not closed") };
        assert_eq!(&b[..], b"c[4009,\"x\"]\n");
    }
}
