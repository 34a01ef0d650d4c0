//! Bidirectional emulation over long polling (`/connection/long_poll`), the last
//! fallback: for networks where no response may stay open (proxies that buffer or cut
//! streams).
//!
//! `POST /connection/long_poll` with the connect command starts a session as the
//! streams do (`transport::emulation`), served by the same session loop over a carrier
//! whose frames go to a buffer instead of a response body; the POST is answered as a
//! poll is. `GET /connection/long_poll?session=..&node=..` takes everything buffered at
//! once, or waits up to `long_poll.timeout` for the next frame (204 when nothing came).
//! The client's commands go to `/emulation`, as for the streams. A session whose client
//! does not poll again within `long_poll.session_ttl` ends: the client leaves its
//! channels and their presence. A buffer that would pass `long_poll.max_buffer_size`
//! disconnects its client with 3008, as a slow reader is. What the loop wrote before it
//! ended (the disconnect push last) waits for one more poll.
//!
//! No sticky sessions: a poll that lands on a node other than the one it names is
//! forwarded there through the broker ([`crate::broker::Broker::send_control`]) as a
//! [`ForwardedPoll`], and that node sends what the poll took back the same way to the
//! node that asked, which answers the client. A node the broker does not know is a 404;
//! an answer that does not come back in time (`long_poll.timeout` and
//! [`FORWARD_SLACK`]) a 504: either way the client reconnects and recovers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use prost::Message as _;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;

use super::emulation::{self, Headers, Registration};
use super::uni::MAX_POLL_WAIT;
use super::websocket::{self, Carrier, Inbound};
use crate::engine::Transport;
use crate::engine::{lock, Hub, HubInner};
use crate::protocol::{self, Command, Disconnect, Format, Push, PushKind, Reply};

/// The long-polling sessions of this node, and the polls it forwarded to another.
#[derive(Default)]
pub(crate) struct Polls {
    /// Session id → what waits for its next poll. An entry lives as long as its
    /// session, and after it until its last frames are taken (or
    /// `long_poll.session_ttl` passes without a poll).
    sessions: Mutex<HashMap<String, Arc<Buffer>>>,
    /// Forwarded poll id → where its answer goes, while the poll waits for it.
    forwarded: Mutex<HashMap<String, oneshot::Sender<ForwardedPoll>>>,
}

/// How much longer than `long_poll.timeout` a node waits for the answer to a poll it
/// forwarded (504 after).
pub const FORWARD_SLACK: Duration = Duration::from_secs(5);

/// A poll forwarded by the node it landed on to the node that holds its session, and
/// the answer sent back, as broker control messages. Its tags are apart from those of
/// [`super::emulation::EmulationRequest`], the other control message, so that neither
/// reads as the other.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ForwardedPoll {
    /// The poll's id, given by the node it landed on.
    #[prost(string, tag = "10")]
    pub id: String,
    /// The request: the node to answer to.
    #[prost(string, tag = "11")]
    pub reply_to: String,
    /// The request: the session polled.
    #[prost(string, tag = "12")]
    pub session: String,
    /// The answer: its HTTP status (200, 204 or 404).
    #[prost(uint32, tag = "13")]
    pub status: u32,
    /// The answer: what the poll took (with status 200).
    #[prost(bytes = "bytes", tag = "14")]
    pub frames: Bytes,
    /// The answer: the session's format is Protobuf.
    #[prost(bool, tag = "15")]
    pub protobuf: bool,
}

/// Handles a control message if it is a [`ForwardedPoll`]: a request is served (in a
/// task of its own, the broker's delivery must not wait) and answered to its node; an
/// answer goes to the poll waiting for it. False for any other message.
pub(crate) fn forwarded(hub: &Arc<HubInner>, message: &[u8]) -> bool {
    let Ok(m) = ForwardedPoll::decode(message) else { return false };
    if m.id.is_empty() {
        return false;
    }
    if m.reply_to.is_empty() {
        // An answer.
        match lock(&hub.long_polls.forwarded).remove(&m.id) {
            Some(tx) => {
                let _ = tx.send(m);
            }
            None => tracing::debug!(poll = %m.id, "answer to a forwarded poll no longer waited for"),
        }
        return true;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::debug!("forwarded poll outside a runtime");
        return true;
    };
    let hub = hub.clone();
    runtime.spawn(async move {
        let wait = hub.config.long_poll.timeout.min(MAX_POLL_WAIT);
        let mut answer = ForwardedPoll { id: m.id, ..Default::default() };
        answer.status = match hub.long_polls.get(&m.session) {
            None => 404,
            Some(buffer) => match hub.long_polls.take(&m.session, &buffer, wait).await {
                Taken::Frames(format, frames) => {
                    answer.frames = frames;
                    answer.protobuf = format == Format::Protobuf;
                    200
                }
                Taken::Nothing => 204,
                Taken::Gone => 404,
            },
        };
        if let Err(e) = hub.broker.send_control(&m.reply_to, Bytes::from(answer.encode_to_vec())).await {
            tracing::debug!(error = %e, node = %m.reply_to, "answer to a forwarded poll not delivered");
        }
    });
    true
}

/// Forwards a poll of `session` to `node` and waits for its answer.
async fn forward(hub: &Hub, node: &str, session: &str, cors: Headers) -> Response {
    let id = crate::engine::client::new_client_id().to_string();
    let (tx, rx) = oneshot::channel();
    let polls = &hub.inner.long_polls;
    lock(&polls.forwarded).insert(id.clone(), tx);
    // Forgotten however this ends (the client may go away first).
    struct Forget<'a>(&'a Polls, &'a str);
    impl Drop for Forget<'_> {
        fn drop(&mut self) {
            lock(&self.0.forwarded).remove(self.1);
        }
    }
    let _forget = Forget(polls, &id);
    let request = ForwardedPoll {
        id: id.clone(),
        reply_to: hub.inner.node.clone(),
        session: session.to_owned(),
        ..Default::default()
    };
    if let Err(e) = hub.inner.broker.send_control(node, Bytes::from(request.encode_to_vec())).await {
        tracing::debug!(error = %e, node, "poll for another node not delivered");
        return emulation::status(StatusCode::NOT_FOUND, "unknown session\n", cors);
    }
    let wait = hub.config().long_poll.timeout.min(MAX_POLL_WAIT) + FORWARD_SLACK;
    let taken = match tokio::time::timeout(wait, rx).await {
        Ok(Ok(a)) if a.status == 200 => {
            Taken::Frames(if a.protobuf { Format::Protobuf } else { Format::Json }, a.frames)
        }
        Ok(Ok(a)) if a.status == 204 => Taken::Nothing,
        Ok(Ok(_)) => Taken::Gone,
        Ok(Err(_)) | Err(_) => {
            return emulation::status(StatusCode::GATEWAY_TIMEOUT, "no answer from the session's node\n", cors)
        }
    };
    respond(taken, cors)
}

/// What waits for a session's next poll, shared by its carrier and its polls.
pub(crate) struct Buffer {
    state: Mutex<Pending>,
    /// Wakes a waiting poll: something was buffered, the session ended, or a newer poll
    /// took over.
    wake_poll: Notify,
    /// Wakes the session's loop: a poll began or ended.
    wake_loop: Notify,
}

struct Pending {
    format: Format,
    /// The replies and pushes not yet taken, framed as an HTTP stream frames them.
    frames: BytesMut,
    /// The session's loop ended: what is buffered is the last of it.
    ended: bool,
    /// Polls in progress.
    polling: usize,
    /// The number of the latest poll: an older one still waiting gives way to it.
    latest: u64,
    /// When the last poll ended (or the session started).
    last_poll: Instant,
}

impl Buffer {
    fn new(format: Format) -> Self {
        Buffer {
            state: Mutex::new(Pending {
                format,
                frames: BytesMut::new(),
                ended: false,
                polling: 0,
                latest: 0,
                last_poll: Instant::now(),
            }),
            wake_poll: Notify::new(),
            wake_loop: Notify::new(),
        }
    }

    /// When the session expires if no poll comes: `None` while one is in progress.
    fn expires(&self, ttl: Duration) -> Option<Instant> {
        let s = lock(&self.state);
        (s.polling == 0).then(|| s.last_poll + ttl)
    }

    /// Returns once no poll has come for `ttl`.
    async fn poll_gap(&self, ttl: Duration) {
        loop {
            let woken = self.wake_loop.notified();
            match self.expires(ttl) {
                Some(at) if at <= Instant::now() => return,
                Some(at) => {
                    tokio::select! {
                        _ = woken => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => woken.await,
            }
        }
    }
}

/// Appends encoded replies to `out` in the session's framing: JSON lines, or
/// varint-delimited Protobuf.
fn frame(format: Format, out: &mut BytesMut, batch: &mut Vec<Bytes>) {
    for b in batch.drain(..) {
        out.put_slice(&b);
        if format == Format::Json {
            out.put_u8(b'\n');
        }
    }
}

/// The carrier of a long-polling session.
struct PollCarrier {
    commands: mpsc::Receiver<Vec<Command>>,
    buffer: Arc<Buffer>,
    ttl: Duration,
    max_buffer: usize,
    /// The buffer would have passed its bound: the client is disconnected with 3008.
    overflowed: bool,
    _registration: Registration,
}

impl Carrier for PollCarrier {
    async fn recv(&mut self, _format: Format) -> Inbound {
        tokio::select! {
            cmds = self.commands.recv() => match cmds {
                Some(cmds) => Inbound::Commands(Ok(cmds)),
                None => Inbound::End,
            },
            _ = self.buffer.poll_gap(self.ttl) => {
                tracing::debug!("long-polling client did not poll again in time");
                Inbound::End
            }
        }
    }

    async fn send(&mut self, format: Format, batch: &mut Vec<Bytes>) -> Result<(), ()> {
        {
            let mut s = lock(&self.buffer.state);
            let len: usize = batch.iter().map(|b| b.len() + 1).sum();
            if s.frames.len() + len > self.max_buffer {
                self.overflowed = true;
                batch.clear();
                return Err(());
            }
            frame(format, &mut s.frames, batch);
        }
        self.buffer.wake_poll.notify_waiters();
        Ok(())
    }

    async fn close(&mut self, format: Format, d: Option<&Disconnect>) {
        let d = d.cloned().or_else(|| self.overflowed.then_some(Disconnect::SLOW));
        {
            let mut s = lock(&self.buffer.state);
            if let Some(d) = d {
                let reply = Reply::Push(Push { id: 0, channel: String::new(), kind: PushKind::Disconnect(d) });
                let mut out = BytesMut::new();
                match format {
                    Format::Json => protocol::json::encode_reply(&reply, &mut out),
                    Format::Protobuf => protocol::protobuf::encode_reply(&reply, &mut out),
                }
                frame(format, &mut s.frames, &mut vec![out.freeze()]);
            }
            s.ended = true;
        }
        self.buffer.wake_poll.notify_waiters();
    }
}

/// A poll in progress: counted while it lives, so that its session does not expire
/// under it.
struct Polling<'a>(&'a Buffer);

impl Drop for Polling<'_> {
    fn drop(&mut self) {
        {
            let mut s = lock(&self.0.state);
            s.polling -= 1;
            s.last_poll = Instant::now();
        }
        self.0.wake_loop.notify_one();
    }
}

/// What a poll got.
enum Taken {
    /// Replies and pushes.
    Frames(Format, Bytes),
    /// Nothing within the wait, or a newer poll took over.
    Nothing,
    /// The session is over and nothing of it is left.
    Gone,
}

impl Polls {
    fn get(&self, session: &str) -> Option<Arc<Buffer>> {
        lock(&self.sessions).get(session).cloned()
    }

    fn remove(&self, session: &str) {
        lock(&self.sessions).remove(session);
    }

    /// Takes what `session` has buffered, waiting up to `wait` for something.
    async fn take(&self, session: &str, buffer: &Buffer, wait: Duration) -> Taken {
        let me = {
            let mut s = lock(&buffer.state);
            s.polling += 1;
            s.latest += 1;
            s.latest
        };
        let _polling = Polling(buffer);
        // An older poll still waiting gives way; the loop stops counting the gap.
        buffer.wake_poll.notify_waiters();
        buffer.wake_loop.notify_one();
        let deadline = Instant::now() + wait;
        loop {
            let mut woken = pin!(buffer.wake_poll.notified());
            woken.as_mut().enable();
            {
                let mut s = lock(&buffer.state);
                if s.latest != me {
                    return Taken::Nothing;
                }
                if !s.frames.is_empty() {
                    let (format, frames, ended) = (s.format, s.frames.split().freeze(), s.ended);
                    drop(s);
                    if ended {
                        self.remove(session);
                    }
                    return Taken::Frames(format, frames);
                }
                if s.ended {
                    drop(s);
                    self.remove(session);
                    return Taken::Gone;
                }
            }
            if tokio::time::timeout_at(deadline, woken).await.is_err() {
                return Taken::Nothing;
            }
        }
    }
}

/// `POST /connection/long_poll`: the body is the connect command (JSON, or Protobuf with
/// `Content-Type: application/octet-stream`); answered as a poll, with the connect
/// reply (which names the session and the node).
pub(crate) async fn connect(State(hub): State<Hub>, req: Request) -> Response {
    let remote = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    let (parts, body) = req.into_parts();
    let cors = match emulation::cors(&hub, &parts.uri, &parts.headers) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let format = if emulation::is_protobuf(&parts.headers) { Format::Protobuf } else { Format::Json };
    let config = &hub.config().long_poll;
    let body = match emulation::read_body(body, config.max_request_body_size).await {
        Ok(b) => b,
        Err(code) => return emulation::status(code, "bad request body\n", cors),
    };
    let started = match emulation::start(&hub, format, &body, (remote, &parts.headers), Transport::LONG_POLL) {
        Ok(s) => s,
        Err((code, msg)) => return emulation::status(code, msg, cors),
    };
    let session = started.session;
    let buffer = Arc::new(Buffer::new(format));
    lock(&hub.inner.long_polls.sessions).insert(session.clone(), buffer.clone());
    let carrier = PollCarrier {
        commands: started.commands,
        buffer: buffer.clone(),
        ttl: config.session_ttl,
        max_buffer: config.max_buffer_size,
        overflowed: false,
        _registration: started.registration,
    };
    let conn = started.conn;
    let task_hub = hub.clone();
    let task_buffer = buffer.clone();
    let task_session = session.clone();
    tokio::spawn(async move {
        let hub = task_hub;
        // Never parked: the session is its task.
        let _ = websocket::run(&hub, carrier, conn, None).await;
        // What is left waits for one more poll, within the session's ttl.
        task_buffer.poll_gap(hub.config().long_poll.session_ttl).await;
        hub.inner.long_polls.remove(&task_session);
    });
    answer(&hub, &session, &buffer, cors).await
}

/// `GET /connection/long_poll?session=..&node=..`: everything the session has buffered,
/// or what comes within `long_poll.timeout`. 200 with replies and pushes (JSON lines, or
/// varint-delimited Protobuf), 204 when nothing came, 400 without a session, 404 for a
/// session not (or no longer) on its node. A poll naming another node is forwarded
/// there (504 when its answer does not come back).
pub(crate) async fn poll(State(hub): State<Hub>, req: Request) -> Response {
    let cors = match emulation::cors(&hub, req.uri(), req.headers()) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let query: HashMap<String, String> = Query::try_from_uri(req.uri()).map(|Query(q)| q).unwrap_or_default();
    let Some(session) = query.get("session").filter(|s| !s.is_empty()) else {
        return emulation::status(StatusCode::BAD_REQUEST, "no session\n", cors);
    };
    if let Some(node) = query.get("node").filter(|n| !n.is_empty() && **n != hub.inner.node) {
        return forward(&hub, node, session, cors).await;
    }
    let Some(buffer) = hub.inner.long_polls.get(session) else {
        return emulation::status(StatusCode::NOT_FOUND, "unknown session\n", cors);
    };
    answer(&hub, session, &buffer, cors).await
}

/// Answers a poll of `session`.
async fn answer(hub: &Hub, session: &str, buffer: &Buffer, cors: Headers) -> Response {
    let wait = hub.config().long_poll.timeout.min(MAX_POLL_WAIT);
    respond(hub.inner.long_polls.take(session, buffer, wait).await, cors)
}

/// The response to a poll that took `taken`.
fn respond(taken: Taken, cors: Headers) -> Response {
    let mut r = match taken {
        Taken::Frames(format, frames) => {
            let mut r = Response::new(Body::from(frames));
            let content_type = match format {
                Format::Json => "application/json",
                Format::Protobuf => "application/octet-stream",
            };
            r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
            r
        }
        Taken::Nothing => StatusCode::NO_CONTENT.into_response(),
        Taken::Gone => return emulation::status(StatusCode::NOT_FOUND, "unknown session\n", cors),
    };
    emulation::no_cache(r.headers_mut());
    r.headers_mut().extend(cors);
    r
}
