//! Bidirectional emulation, as centrifuge-js speaks it, for networks where WebSocket
//! does not pass: a stream from the server (`/connection/http_stream`, a chunked
//! response of newline-delimited JSON or varint-delimited Protobuf replies, or
//! `/connection/sse`, `text/event-stream` with one `data:` event per reply) opened with
//! the connect command, and `/emulation` for the client's later commands, each a
//! separate POST naming the session and the node that holds it.
//!
//! A stream is served by the same session loop as a WebSocket (`websocket::run`) over
//! a carrier whose commands come from a channel that `/emulation` feeds and whose frames
//! go to the response body (a channel of one frame: a client that does not read fills
//! its outbox, which disconnects it with 3008, and nothing else is buffered). Emulation
//! sessions are never parked. `Sessions` maps a session id to its command channel
//! while the stream lives.
//!
//! No sticky sessions: a command that lands on a node other than the one named in the
//! request is forwarded there through the broker ([`crate::broker::Broker::send_control`]),
//! as an encoded [`EmulationRequest`]; when that node is unknown the answer is 404 and
//! the client reconnects.
//!
//! Long polling (`transport::long_poll`) starts its sessions here too (`start`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes as AxBytes};
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use prost::Message as _;
use tokio::sync::mpsc;

use super::http::origin_allowed;
use super::websocket::{self, Carrier, Conn, Inbound};
use crate::engine::Transport;
use crate::engine::{lock, Hub, HubInner};
use crate::protocol::{self, Command, Disconnect, Format, Push, PushKind, Reply};

/// How many decoded command batches may wait for a session's loop before `/emulation`
/// waits (and, forwarded from another node, fails with 404 after [`SEND_TIMEOUT`]).
pub(super) const COMMAND_QUEUE: usize = 64;

/// How long `/emulation` waits for room in a busy session's command queue (503 after).
const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// The Protobuf body of `/emulation` (centrifuge's `EmulationRequest`); also what a node
/// sends another through the broker to forward a command.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EmulationRequest {
    /// The node that holds the session.
    #[prost(string, tag = "1")]
    pub node: String,
    /// The session, as the connect result gave it.
    #[prost(string, tag = "2")]
    pub session: String,
    /// The commands, encoded as the session's format encodes them on WebSocket.
    #[prost(bytes = "bytes", tag = "3")]
    pub data: Bytes,
}

/// The emulation sessions on this node: session id → the session's format and where
/// its commands go. An entry lives as long as its stream.
#[derive(Default)]
pub(crate) struct Sessions(Mutex<HashMap<String, Entry>>);

/// A session's format and where its commands go.
type Entry = (Format, mpsc::Sender<Vec<Command>>);

/// Headers to add to a response (CORS).
pub(super) type Headers = Vec<(header::HeaderName, HeaderValue)>;

/// Why a command was not handed to its session.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// No such session on this node (gone, or never here).
    Unknown,
    /// The data is not commands in the session's format.
    Malformed,
    /// The session's command queue stayed full.
    Busy,
}

impl Sessions {
    fn lookup(&self, session: &str) -> Option<Entry> {
        lock(&self.0).get(session).cloned()
    }

    pub(super) fn decode(format: Format, data: &[u8]) -> Result<Vec<Command>, Refused> {
        let decoded = match format {
            Format::Json => protocol::json::decode_commands(&Bytes::copy_from_slice(data)).map_err(|e| e.to_string()),
            Format::Protobuf => protocol::protobuf::decode_commands(data).map_err(|e| e.to_string()),
        };
        decoded.map_err(|e| {
            tracing::debug!(error = %e, "malformed emulation command");
            Refused::Malformed
        })
    }

    /// Hands commands to a session of this node, waiting for room in its queue.
    pub(crate) async fn deliver(&self, session: &str, data: &[u8]) -> Result<(), Refused> {
        let (format, tx) = self.lookup(session).ok_or(Refused::Unknown)?;
        let cmds = Self::decode(format, data)?;
        match tokio::time::timeout(SEND_TIMEOUT, tx.send(cmds)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Refused::Unknown),
            Err(_) => Err(Refused::Busy),
        }
    }

    /// Hands commands forwarded by another node to a session of this one, without
    /// waiting (the broker's delivery must not block).
    pub(crate) fn deliver_now(&self, message: &[u8]) {
        let Ok(req) = EmulationRequest::decode(message) else {
            tracing::debug!("malformed forwarded emulation request");
            return;
        };
        let Some((format, tx)) = self.lookup(&req.session) else {
            tracing::debug!(session = %req.session, "forwarded command for a session gone");
            return;
        };
        if let Ok(cmds) = Self::decode(format, &req.data) {
            if tx.try_send(cmds).is_err() {
                tracing::debug!(session = %req.session, "forwarded command dropped: session busy or gone");
            }
        }
    }
}

/// A session's registration in [`Sessions`], removed when its stream ends.
pub(super) struct Registration {
    hub: Arc<HubInner>,
    session: String,
}

impl Drop for Registration {
    fn drop(&mut self) {
        lock(&self.hub.emulation.0).remove(&self.session);
    }
}

/// How a stream frames what it sends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// `/connection/http_stream`: JSON lines, or varint-delimited Protobuf.
    HttpStream,
    /// `/connection/sse`: one `data:` event per reply (JSON only).
    Sse,
}

/// The carrier of an emulation stream.
struct StreamCarrier {
    commands: mpsc::Receiver<Vec<Command>>,
    out: mpsc::Sender<Bytes>,
    framing: Framing,
    _registration: Registration,
}

impl StreamCarrier {
    fn frame(&self, format: Format, batch: &mut Vec<Bytes>) -> Bytes {
        let extra = match self.framing {
            Framing::Sse => 8,
            Framing::HttpStream => 1,
        };
        let mut buf = BytesMut::with_capacity(batch.iter().map(|b| b.len() + extra).sum());
        for b in batch.drain(..) {
            match (self.framing, format) {
                (Framing::Sse, _) => {
                    buf.put_slice(b"data: ");
                    buf.put_slice(&b);
                    buf.put_slice(b"\n\n");
                }
                (Framing::HttpStream, Format::Json) => {
                    buf.put_slice(&b);
                    buf.put_u8(b'\n');
                }
                (Framing::HttpStream, Format::Protobuf) => buf.put_slice(&b),
            }
        }
        buf.freeze()
    }
}

impl Carrier for StreamCarrier {
    async fn recv(&mut self, _format: Format) -> Inbound {
        tokio::select! {
            cmds = self.commands.recv() => match cmds {
                Some(cmds) => Inbound::Commands(Ok(cmds)),
                None => Inbound::End,
            },
            // The response body was dropped: the client went away.
            _ = self.out.closed() => Inbound::End,
        }
    }

    async fn send(&mut self, format: Format, batch: &mut Vec<Bytes>) -> Result<(), ()> {
        let frame = self.frame(format, batch);
        self.out.send(frame).await.map_err(|_| ())
    }

    async fn close(&mut self, format: Format, d: Option<&Disconnect>) {
        if let Some(d) = d {
            let reply = Reply::Push(Push { id: 0, channel: String::new(), kind: PushKind::Disconnect(d.clone()) });
            let mut out = BytesMut::new();
            match format {
                Format::Json => protocol::json::encode_reply(&reply, &mut out),
                Format::Protobuf => protocol::protobuf::encode_reply(&reply, &mut out),
            }
            let frame = self.frame(format, &mut vec![out.freeze()]);
            let _ = self.out.send(frame).await;
        }
    }
}

/// The response body: the frames the session's loop sends, as they come.
struct FrameStream(mpsc::Receiver<Bytes>);

impl futures_util::Stream for FrameStream {
    type Item = Result<AxBytes, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx).map(|f| f.map(Ok))
    }
}

/// The CORS headers for a cross-origin request from an allowed origin; `Err` with a
/// 403 response when the origin is not allowed. The request's host is its `Host`
/// field or, in HTTP/2 (which has none), its `:authority` (RFC 9113 §8.3.1).
pub(super) fn cors(hub: &Hub, uri: &Uri, headers: &HeaderMap) -> Result<Headers, Box<Response>> {
    let Some(origin) = headers.get(header::ORIGIN) else { return Ok(Vec::new()) };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).or_else(|| uri.authority().map(|a| a.as_str()));
    let allowed = origin.to_str().is_ok_and(|o| origin_allowed(o, host, &hub.config().client.allowed_origins));
    if !allowed {
        tracing::debug!(?origin, "origin not allowed");
        return Err(Box::new((StatusCode::FORBIDDEN, "origin not allowed\n").into_response()));
    }
    Ok(vec![
        (header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone()),
        (header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true")),
        (header::VARY, HeaderValue::from_static("Origin")),
    ])
}

/// Answers a CORS preflight: the methods and headers centrifuge-js uses, for an allowed
/// origin.
pub(crate) async fn preflight(State(hub): State<Hub>, uri: Uri, headers: HeaderMap) -> Response {
    match cors(&hub, &uri, &headers) {
        Err(r) => *r,
        Ok(mut h) => {
            h.push((header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, OPTIONS")));
            h.push((
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("Content-Type, Authorization, Accept, Last-Event-ID"),
            ));
            h.push((header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600")));
            let mut r = StatusCode::NO_CONTENT.into_response();
            r.headers_mut().extend(h);
            r
        }
    }
}

pub(super) fn status(code: StatusCode, msg: &'static str, cors: Headers) -> Response {
    let mut r = (code, msg).into_response();
    r.headers_mut().extend(cors);
    r
}

pub(super) fn is_protobuf(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/octet-stream"))
}

/// Reads a request body up to `limit` bytes: `Err(413)` beyond.
pub(crate) async fn read_body(body: Body, limit: usize) -> Result<Bytes, StatusCode> {
    match axum::body::to_bytes(body, limit).await {
        Ok(b) => Ok(b),
        Err(e) => {
            // The limit is the only error worth telling apart; a broken body is a 400.
            let too_big = std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
            Err(if too_big { StatusCode::PAYLOAD_TOO_LARGE } else { StatusCode::BAD_REQUEST })
        }
    }
}

/// `POST /emulation`: a client's commands for its emulation session, `{session, node,
/// data}` in JSON (`data` the commands as a string) or a Protobuf [`EmulationRequest`].
/// 204 once handed to the session (or forwarded to its node), 400 for a malformed
/// body, 404 when the session is not on its node, 413 for a body over
/// `emulation.max_request_body_size`.
pub(crate) async fn emulation(State(hub): State<Hub>, uri: Uri, headers: HeaderMap, body: Body) -> Response {
    let cors = match cors(&hub, &uri, &headers) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let body = match read_body(body, hub.config().emulation.max_request_body_size).await {
        Ok(b) => b,
        Err(code) => return status(code, "bad request body\n", cors),
    };
    let req = if is_protobuf(&headers) {
        match EmulationRequest::decode(body.clone()) {
            Ok(r) => r,
            Err(_) => return status(StatusCode::BAD_REQUEST, "malformed emulation request\n", cors),
        }
    } else {
        #[derive(serde::Deserialize)]
        struct JsonRequest {
            #[serde(default)]
            node: String,
            session: String,
            data: String,
        }
        match serde_json::from_slice::<JsonRequest>(&body) {
            Ok(r) => EmulationRequest { node: r.node, session: r.session, data: Bytes::from(r.data) },
            Err(_) => return status(StatusCode::BAD_REQUEST, "malformed emulation request\n", cors),
        }
    };
    if req.session.is_empty() {
        return status(StatusCode::BAD_REQUEST, "no session\n", cors);
    }
    if !req.node.is_empty() && req.node != hub.inner.node {
        let node = req.node.clone();
        return match hub.inner.broker.send_control(&node, Bytes::from(req.encode_to_vec())).await {
            Ok(()) => status(StatusCode::NO_CONTENT, "", cors),
            Err(e) => {
                tracing::debug!(error = %e, node, "emulation request for another node not delivered");
                status(StatusCode::NOT_FOUND, "unknown session\n", cors)
            }
        };
    }
    match hub.inner.emulation.deliver(&req.session, &req.data).await {
        Ok(()) => status(StatusCode::NO_CONTENT, "", cors),
        Err(Refused::Unknown) => status(StatusCode::NOT_FOUND, "unknown session\n", cors),
        Err(Refused::Malformed) => status(StatusCode::BAD_REQUEST, "malformed commands\n", cors),
        Err(Refused::Busy) => status(StatusCode::SERVICE_UNAVAILABLE, "session busy\n", cors),
    }
}

/// `POST /connection/http_stream`: the body is the connect command (JSON, or Protobuf
/// with `Content-Type: application/octet-stream`); the response streams the replies.
pub(crate) async fn http_stream(State(hub): State<Hub>, req: Request) -> Response {
    let remote = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    let (parts, body) = req.into_parts();
    let headers = parts.headers;
    let cors = match cors(&hub, &parts.uri, &headers) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let format = if is_protobuf(&headers) { Format::Protobuf } else { Format::Json };
    let body = match read_body(body, hub.config().http_stream.max_request_body_size).await {
        Ok(b) => b,
        Err(code) => return status(code, "bad request body\n", cors),
    };
    open(hub, format, Framing::HttpStream, &body, (remote, &headers), cors)
}

/// `/connection/sse`: `GET` with the JSON connect command in `cf_connect`, or `POST`
/// with it as the body; the response is `text/event-stream`.
pub(crate) async fn sse(State(hub): State<Hub>, req: Request) -> Response {
    let remote = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
    let (parts, body) = req.into_parts();
    let headers = parts.headers;
    let query: HashMap<String, String> = Query::try_from_uri(&parts.uri).map(|Query(q)| q).unwrap_or_default();
    let method = parts.method;
    let cors = match cors(&hub, &parts.uri, &headers) {
        Ok(c) => c,
        Err(r) => return *r,
    };
    let limit = hub.config().sse.max_request_body_size;
    let connect = if method == Method::GET {
        match query.get("cf_connect") {
            Some(c) if c.len() > limit => return status(StatusCode::PAYLOAD_TOO_LARGE, "cf_connect too large\n", cors),
            Some(c) => Bytes::from(c.clone()),
            None => return status(StatusCode::BAD_REQUEST, "no cf_connect\n", cors),
        }
    } else {
        match read_body(body, limit).await {
            Ok(b) => b,
            Err(code) => return status(code, "bad request body\n", cors),
        }
    };
    open(hub, Format::Json, Framing::Sse, &connect, (remote, &headers), cors)
}

/// An emulation session just started from its connect command: the connection's state,
/// its commands (the connect first), and its registration in [`Sessions`].
pub(super) struct Started {
    pub(super) conn: Conn,
    pub(super) commands: mpsc::Receiver<Vec<Command>>,
    pub(super) registration: Registration,
    pub(super) session: String,
}

/// The client of a request: its address, and its request's headers.
pub(super) type From<'a> = (Option<SocketAddr>, &'a HeaderMap);

/// Starts an emulation session (of the transport named) from its connect command; the
/// status and message to answer when it is not one.
pub(super) fn start(
    hub: &Hub,
    format: Format,
    connect: &[u8],
    (remote, headers): From<'_>,
    transport: Transport,
) -> Result<Started, (StatusCode, &'static str)> {
    let cmds =
        Sessions::decode(format, connect).map_err(|_| (StatusCode::BAD_REQUEST, "malformed connect command\n"))?;
    if !matches!(cmds.first(), Some(Command { request: protocol::Request::Connect(_), .. })) {
        return Err((StatusCode::BAD_REQUEST, "the first command must be connect\n"));
    }
    let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
    let mut conn = Conn::new(hub, format, remote);
    conn.session.set_transport(transport);
    conn.session.keep_headers(|name| headers.get(name).and_then(|v| v.to_str().ok()));
    let session = crate::engine::client::new_client_id().to_string();
    conn.session.set_emulation_session(session.clone());
    lock(&hub.inner.emulation.0).insert(session.clone(), (format, cmd_tx.clone()));
    let registration = Registration { hub: hub.inner.clone(), session: session.clone() };
    let _ = cmd_tx.try_send(cmds);
    Ok(Started { conn, commands: cmd_rx, registration, session })
}

/// Starts an emulation session from its connect command and answers with its stream.
fn open(hub: Hub, format: Format, framing: Framing, connect: &[u8], from: From<'_>, cors: Headers) -> Response {
    let transport = if framing == Framing::Sse { Transport::SSE } else { Transport::HTTP_STREAM };
    let started = match start(&hub, format, connect, from, transport) {
        Ok(s) => s,
        Err((code, msg)) => return status(code, msg, cors),
    };
    // One frame in flight: the client's outbox bounds the rest.
    let (out_tx, out_rx) = mpsc::channel(1);
    let carrier =
        StreamCarrier { commands: started.commands, out: out_tx, framing, _registration: started.registration };
    let conn = started.conn;
    tokio::spawn(async move {
        // Never parked: the loop's task lives as long as the stream.
        let _ = websocket::run(&hub, carrier, conn, None).await;
    });
    let content_type = match (framing, format) {
        (Framing::Sse, _) => "text/event-stream",
        (Framing::HttpStream, Format::Json) => "application/json",
        (Framing::HttpStream, Format::Protobuf) => "application/octet-stream",
    };
    let mut r = Response::new(Body::from_stream(FrameStream(out_rx)));
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    no_cache(h);
    h.extend(cors);
    r
}

/// Headers that keep every proxy and browser cache from holding a response back or
/// keeping it.
pub(super) fn no_cache(h: &mut HeaderMap) {
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("private, no-cache, no-store, must-revalidate, max-age=0"),
    );
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    h.insert(header::EXPIRES, HeaderValue::from_static("0"));
    // nginx buffers responses unless told not to.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
}
