//! The unidirectional transports, for clients with no SDK: SSE (`/connection/uni_sse`),
//! an HTTP stream of newline-delimited JSON (`/connection/uni_http_stream`), a WebSocket
//! that only receives (`/connection/uni_websocket`) and long polling
//! (`/connection/uni_long_poll`).
//!
//! A reader sends Centrifugo's connect request (the body of a POST, `cf_connect`, a
//! uni WebSocket's first message) or names in the query a token (or none, in the
//! anonymous mode), its channels and, to resume, a position ([`super::position`]); it
//! may name no channel and read those its user is subscribed to server-side. The
//! messages, pings included, are framed as Centrifugo's. The hub builds the connect and
//! subscribe commands itself and runs them through a [`Session`], so every rule of a
//! bidirectional client applies (token, permissions, limits); the session's bounded
//! queue feeds the reader. Each publication goes out with the position reached, the
//! token to resume from: an SSE event's `id` (the browser sends it back as
//! `Last-Event-ID`), the `since` of the next request otherwise.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{json, Value};

use super::position::{self, Position};
use crate::engine::session::Session;
use crate::engine::Hub;
use crate::engine::Transport;
use crate::protocol::{Command, ConnectRequest, Disconnect, Format, Request as Req, SubscribeRequest};

/// The most channels a reader may name.
const MAX_CHANNELS: usize = position::MAX_CHANNELS;

/// What a reader asks: its token, its channels (sorted, without duplicates; none when
/// its token or the personal channel subscribes it server-side), where to resume, and
/// what a connect request may carry besides (`data` for a connect proxy, the client's
/// `name` and `version`).
#[derive(Debug, Default, PartialEq)]
pub(crate) struct UniRequest {
    pub token: String,
    pub channels: Vec<String>,
    pub since: Option<Vec<Position>>,
    pub data: Bytes,
    pub name: String,
    pub version: String,
}

/// A request refused before any stream starts.
#[derive(Debug)]
pub(crate) struct Refused(pub StatusCode, pub String);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.1 }).to_string() + "\n";
        (self.0, [(header::CONTENT_TYPE, "application/json")], body).into_response()
    }
}

fn bad(msg: impl Into<String>) -> Refused {
    Refused(StatusCode::BAD_REQUEST, msg.into())
}

fn too_large(limit: usize) -> Refused {
    Refused(StatusCode::PAYLOAD_TOO_LARGE, format!("the connect request is over max_request_body_size ({limit} bytes)"))
}

/// Reads a reader's request from the query (`token`, `channel` repeated, `since`, or
/// Centrifugo's `cf_connect` JSON: `{"token", "subs": {CHANNEL: {"offset", "epoch"}}}`),
/// the connect request POSTed as the body, if any (the same JSON as `cf_connect`), and,
/// when given, the `Last-Event-ID` header (it wins over `since`: a browser reconnects to
/// the same URL with the id it saw last). `cf_connect` longer than `limit` is refused
/// with 413, as a longer body is.
pub(crate) fn parse_request(
    query: Option<&str>,
    body: Option<&[u8]>,
    last_event_id: Option<&str>,
    limit: usize,
) -> Result<UniRequest, Refused> {
    let pairs: Vec<(String, String)> =
        serde_urlencoded::from_str(query.unwrap_or("")).map_err(|e| bad(format!("malformed query: {e}")))?;
    let mut r = UniRequest::default();
    let mut since: Option<String> = None;
    let mut cf_positions: Vec<(String, Position)> = Vec::new();
    for (k, v) in pairs {
        match k.as_str() {
            "token" => r.token = v,
            "channel" => r.channels.push(v),
            "since" => since = Some(v),
            "cf_connect" => {
                if v.len() > limit {
                    return Err(too_large(limit));
                }
                let c: Value = serde_json::from_str(&v).map_err(|e| bad(format!("cf_connect is not JSON: {e}")))?;
                connect_json(&c, &mut r, &mut since, &mut cf_positions)?;
            }
            _ => {}
        }
    }
    // An empty body is no connect request: the query says it all.
    if let Some(b) = body.filter(|b| !b.iter().all(u8::is_ascii_whitespace)) {
        let c: Value =
            serde_json::from_slice(b).map_err(|e| bad(format!("the connect request (body) is not JSON: {e}")))?;
        connect_json(&c, &mut r, &mut since, &mut cf_positions)?;
    }
    if let Some(id) = last_event_id.filter(|s| !s.is_empty()) {
        since = Some(id.to_owned());
    }
    finish(r, since, cf_positions)
}

/// Reads a connect object: Centrifugo's (`{"token", "data", "name", "version", "subs":
/// {CHANNEL: {"recover", "offset", "epoch"}}}`) or the plain one (`{"token", "channels":
/// [...], "since"}`).
fn connect_json(
    c: &Value,
    r: &mut UniRequest,
    since: &mut Option<String>,
    cf_positions: &mut Vec<(String, Position)>,
) -> Result<(), Refused> {
    if !c.is_object() {
        return Err(bad("the connect request is not a JSON object"));
    }
    if let Some(t) = c.get("token").and_then(Value::as_str) {
        r.token = t.to_owned();
    }
    if let Some(d) = c.get("data").filter(|d| !d.is_null()) {
        r.data = Bytes::from(d.to_string());
    }
    if let Some(n) = c.get("name").and_then(Value::as_str) {
        r.name = n.to_owned();
    }
    if let Some(v) = c.get("version").and_then(Value::as_str) {
        r.version = v.to_owned();
    }
    if let Some(subs) = c.get("subs").filter(|s| !s.is_null()) {
        let subs = subs.as_object().ok_or_else(|| bad("subs: not an object"))?;
        for (ch, s) in subs {
            r.channels.push(ch.clone());
            if s.get("recover").and_then(Value::as_bool).unwrap_or(false) {
                let offset = s.get("offset").and_then(Value::as_u64).unwrap_or(0);
                let epoch = s.get("epoch").and_then(Value::as_str).unwrap_or("").to_owned();
                cf_positions.push((ch.clone(), Position { offset, epoch }));
            }
        }
    }
    for ch in c.get("channels").and_then(Value::as_array).into_iter().flatten() {
        r.channels.push(ch.as_str().ok_or_else(|| bad("channels: not a string"))?.to_owned());
    }
    if let Some(s) = c.get("since").and_then(Value::as_str) {
        *since = Some(s.to_owned());
    }
    Ok(())
}

fn finish(
    mut r: UniRequest,
    since: Option<String>,
    mut cf_positions: Vec<(String, Position)>,
) -> Result<UniRequest, Refused> {
    r.channels.sort();
    r.channels.dedup();
    if r.channels.is_empty() && since.is_some() {
        return Err(bad("a position names channels: name them with channel=NAME"));
    }
    if r.channels.len() > MAX_CHANNELS {
        return Err(bad(format!("too many channels (at most {MAX_CHANNELS})")));
    }
    if let Some(t) = since {
        let ps = position::parse(&t, r.channels.len()).map_err(|e| bad(format!("malformed position {t:?}: {e}")))?;
        r.since = Some(ps);
    } else if !cf_positions.is_empty() {
        if cf_positions.len() != r.channels.len() {
            return Err(bad("cf_connect: recover every channel or none"));
        }
        cf_positions.sort_by(|a, b| a.0.cmp(&b.0));
        r.since = Some(cf_positions.into_iter().map(|(_, p)| p).collect());
    }
    Ok(r)
}

/// Reads a uni WebSocket's first message: a connect object (see [`connect_json`]).
fn parse_first_message(text: &[u8]) -> Result<UniRequest, Refused> {
    let c: Value = serde_json::from_slice(text).map_err(|e| bad(format!("the connect request is not JSON: {e}")))?;
    let mut r = UniRequest::default();
    let mut since = None;
    let mut cf_positions = Vec::new();
    connect_json(&c, &mut r, &mut since, &mut cf_positions)?;
    finish(r, since, cf_positions)
}

/// One message for a reader: the JSON object it carries, and the position reached once
/// it is read (set on publications and on the first message).
pub(crate) struct Out {
    pub position: Option<String>,
    pub data: Value,
}

/// A reader's session and where it stands in each of its channels.
pub(crate) struct Reader {
    pub session: Session,
    channels: Vec<String>,
    pos: Vec<Position>,
    /// Whether every position asked for was recovered (true when none was asked).
    pub recovered: bool,
    batch: Vec<Bytes>,
}

fn ip_of(req: &Request) -> Option<IpAddr> {
    req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip())
}

/// Who opens a reader: its address, its transport's name, and its request's headers
/// (the session keeps those the proxies forward).
pub(crate) struct Opener<'a> {
    /// The client's address.
    pub ip: Option<IpAddr>,
    /// The transport's name, as proxies are told.
    pub transport: Transport,
    /// The request's headers.
    pub headers: Option<&'a HeaderMap>,
}

fn refusal(d: &Disconnect) -> Refused {
    let status = match d.code {
        3500 | 3005 => StatusCode::UNAUTHORIZED,
        3504 | 3013 => StatusCode::TOO_MANY_REQUESTS,
        3507 => StatusCode::FORBIDDEN,
        3001 => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_REQUEST,
    };
    Refused(status, format!("{} {}", d.code, d.reason))
}

/// Takes what a session queued after a command into `replies`; refuses the reader
/// when the command failed or the session is closing.
async fn take(session: &mut Session, outcome: Result<(), Disconnect>, replies: &mut Vec<Value>) -> Result<(), Refused> {
    let mut batch = Vec::new();
    let closing = session.client.take_since(&mut batch).0;
    if let Some(d) = outcome.err().or(closing) {
        session.close().await;
        return Err(refusal(&d));
    }
    for b in batch {
        match serde_json::from_slice::<Value>(&b) {
            Ok(v) => replies.push(v),
            Err(e) => tracing::warn!(error = %e, "unreadable queued message"),
        }
    }
    Ok(())
}

/// A command's error reply, as the refusal of the reader.
fn reply_error(what: &str, e: &Value) -> Refused {
    let code = e["code"].as_u64().unwrap_or(0);
    let status = match code {
        101 | 109 => StatusCode::UNAUTHORIZED,
        103 => StatusCode::FORBIDDEN,
        // Temporary (a proxy's backend or the token keys unavailable): try again later.
        _ if e["temporary"].as_bool() == Some(true) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::BAD_REQUEST,
    };
    Refused(status, format!("{what}: {code} {}", e["message"].as_str().unwrap_or("")))
}

impl Reader {
    /// Connects and subscribes as the request asks. Returns the reader and its first
    /// messages: the `connect` one (Centrifugo's connect result, its `subs` holding
    /// every subscription, server-side or asked for, plus the position the reader
    /// starts from and whether it was recovered), then the recovered publications and
    /// whatever arrived meanwhile.
    pub async fn open(hub: &Hub, req: UniRequest, from: Opener<'_>) -> Result<(Reader, Vec<Out>), Refused> {
        let mut session = Session::new(hub.inner.clone(), Format::Json, from.ip);
        session.set_transport(from.transport);
        session.keep_headers(|name| from.headers.and_then(|h| h.get(name)).and_then(|v| v.to_str().ok()));
        // A channel the token subscribes server-side recovers in the connect itself.
        let mut subs = std::collections::BTreeMap::new();
        for (i, ch) in req.channels.iter().enumerate() {
            if let Some(p) = req.since.as_ref().map(|s| &s[i]) {
                let sub =
                    SubscribeRequest { recover: true, offset: p.offset, epoch: p.epoch.clone(), ..Default::default() };
                subs.insert(ch.clone(), sub);
            }
        }
        let name = if req.name.is_empty() { "uni".to_owned() } else { req.name.clone() };
        let connect = ConnectRequest {
            token: req.token.clone(),
            data: req.data.clone(),
            subs,
            name,
            version: req.version.clone(),
            headers: Default::default(),
        };
        let mut replies = Vec::new();
        let outcome = session.handle(Command { id: 1, request: Req::Connect(connect) }).await;
        take(&mut session, outcome, &mut replies).await?;
        let mut rest = Vec::new();
        let mut connect = Value::Null;
        for v in replies.drain(..) {
            match v.get("id").and_then(Value::as_u64).unwrap_or(0) {
                1 => connect = v,
                _ => rest.push(v),
            }
        }
        if let Some(e) = connect.get("error") {
            session.close().await;
            return Err(reply_error("connect", e));
        }
        let mut connect = connect.get("connect").cloned().unwrap_or_else(|| json!({}));
        let server_side: serde_json::Map<String, Value> =
            connect.get("subs").and_then(Value::as_object).cloned().unwrap_or_default();
        if req.channels.is_empty() && server_side.is_empty() {
            session.close().await;
            return Err(bad("no channel: name one or more with channel=NAME (or subscribe the token server-side)"));
        }
        if req.channels.len() + server_side.len() > MAX_CHANNELS {
            session.close().await;
            return Err(bad(format!("too many channels (at most {MAX_CHANNELS})")));
        }
        let outcome = async {
            for (i, ch) in req.channels.iter().enumerate() {
                if server_side.contains_key(ch) {
                    continue;
                }
                let p = req.since.as_ref().map(|s| s[i].clone()).unwrap_or_default();
                let sub = SubscribeRequest {
                    channel: ch.clone(),
                    recover: req.since.is_some(),
                    offset: p.offset,
                    epoch: p.epoch,
                    recoverable: true,
                    positioned: true,
                    ..Default::default()
                };
                session.handle(Command { id: 2 + i as u32, request: Req::Subscribe(sub) }).await?;
            }
            Ok::<(), Disconnect>(())
        }
        .await;
        take(&mut session, outcome, &mut replies).await?;
        // Every subscription's result: the server-side ones from the connect, the others
        // from their subscribe.
        let mut results: std::collections::BTreeMap<String, Value> = server_side.into_iter().collect();
        for v in replies {
            let id = v.get("id").and_then(Value::as_u64).unwrap_or(0);
            if id < 2 {
                rest.push(v);
                continue;
            }
            let ch = &req.channels[id as usize - 2];
            if let Some(e) = v.get("error") {
                session.close().await;
                return Err(reply_error(&format!("channel {ch:?}"), e));
            }
            results.insert(ch.clone(), v["subscribe"].clone());
        }
        let mut pos = vec![Position::default(); req.channels.len()];
        let mut unrecovered = Vec::new();
        let mut recovered_pubs = Vec::new();
        for (ch, r) in results.iter_mut() {
            for p in r.get("publications").and_then(Value::as_array).into_iter().flatten() {
                recovered_pubs.push(json!({ "push": { "channel": ch, "pub": p } }));
            }
            if let Value::Object(m) = r {
                // Sent as pushes of their own, each with the position it reaches.
                m.remove("publications");
            }
            let Ok(i) = req.channels.binary_search(ch) else { continue };
            let top = Position {
                offset: r["offset"].as_u64().unwrap_or(0),
                epoch: r["epoch"].as_str().unwrap_or("").to_owned(),
            };
            let recovered = r["recovered"].as_bool().unwrap_or(false);
            pos[i] = match &req.since {
                Some(since) if recovered => since[i].clone(),
                Some(_) => {
                    unrecovered.push(ch.clone());
                    top
                }
                None => top,
            };
        }
        let mut reader =
            Reader { session, channels: req.channels, pos, recovered: unrecovered.is_empty(), batch: Vec::new() };
        let start = (!reader.channels.is_empty()).then(|| position::format(&reader.pos));
        if let Value::Object(m) = &mut connect {
            m.remove("pong");
            m.insert("subs".into(), json!(results));
            m.insert("channels".into(), json!(reader.channels));
            if let Some(start) = &start {
                m.insert("position".into(), json!(start));
            }
            if req.since.is_some() {
                m.insert("recovered".into(), json!(unrecovered.is_empty()));
                if !unrecovered.is_empty() {
                    m.insert("unrecovered".into(), json!(unrecovered));
                }
            }
        }
        let mut outs = vec![Out { position: start, data: json!({ "connect": connect }) }];
        for v in recovered_pubs.into_iter().chain(rest) {
            outs.extend(reader.message(v));
        }
        Ok((reader, outs))
    }

    /// Turns one queued message into what the reader gets (nothing for a publication
    /// it already has).
    fn message(&mut self, v: Value) -> Option<Out> {
        let Value::Object(mut m) = v else { return None };
        let Some(Value::Object(push)) = m.remove("push") else { return None };
        let channel = push.get("channel").and_then(Value::as_str).unwrap_or("").to_owned();
        let i = self.channels.binary_search(&channel).ok();
        if let (Some(i), Some(p)) = (i, push.get("pub")) {
            if let Some(offset) = p.get("offset").and_then(Value::as_u64) {
                if offset <= self.pos[i].offset {
                    return None;
                }
                self.pos[i].offset = offset;
            }
            return Some(Out { position: Some(position::format(&self.pos)), data: Value::Object(push) });
        }
        Some(Out { position: None, data: Value::Object(push) })
    }

    /// Takes what is queued: the messages, or, with nothing else, the disconnect that
    /// ends the reader. Nothing is awaited: after `client.ready()`, the caller applies
    /// the session's control requests ([`Reader::woken`]) outside any `select!`, so
    /// none is lost to a branch that won instead.
    pub fn drain(&mut self) -> Result<Vec<Out>, Disconnect> {
        let (closing, _) = self.session.client.take_since(&mut self.batch);
        let mut outs = Vec::new();
        for b in std::mem::take(&mut self.batch) {
            if let Ok(v) = serde_json::from_slice::<Value>(&b) {
                outs.extend(self.message(v));
            }
        }
        match closing {
            Some(d) if outs.is_empty() => Err(d),
            _ => Ok(outs),
        }
    }

    /// After a wake: applies what was asked of the session (an unsubscribe, a
    /// disconnect from the server API, ...).
    pub async fn woken(&mut self) -> Result<(), Disconnect> {
        self.session.apply_control().await
    }
}

/// How a stream writes messages.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    Sse,
    Ndjson,
}

fn frame(framing: Framing, out: &Out) -> String {
    match framing {
        Framing::Sse => match &out.position {
            Some(id) => format!("id: {id}\ndata: {}\n\n", out.data),
            None => format!("data: {}\n\n", out.data),
        },
        Framing::Ndjson => {
            let mut v = out.data.clone();
            if let (Some(p), Value::Object(m)) = (&out.position, &mut v) {
                m.insert("position".into(), json!(p));
            }
            format!("{v}\n")
        }
    }
}

/// How many frames may wait for a reader that does not read before its session's queue
/// takes the rest (and, bounded, drops it with 3008).
const STREAM_BUFFER: usize = 16;

/// `GET /connection/uni_sse` (or `POST`, the connect request as the body): a
/// `text/event-stream`.
pub(crate) async fn sse(hub: axum::extract::State<Hub>, req: Request) -> Response {
    stream(hub.0, req, Framing::Sse).await
}

/// `POST /connection/uni_http_stream`, the connect request as the body (or `GET`, the
/// request in the query): newline-delimited JSON.
pub(crate) async fn http_stream(hub: axum::extract::State<Hub>, req: Request) -> Response {
    stream(hub.0, req, Framing::Ndjson).await
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

async fn stream(hub: Hub, req: Request, framing: Framing) -> Response {
    let config = match framing {
        Framing::Sse => &hub.config().uni_sse,
        Framing::Ndjson => &hub.config().uni_http_stream,
    };
    let (enabled, limit) = (config.enabled, config.max_request_body_size);
    if !enabled {
        return Refused(StatusCode::NOT_FOUND, "this transport is not enabled".into()).into_response();
    }
    let ip = ip_of(&req);
    let headers = req.headers().clone();
    let transport = if framing == Framing::Sse { Transport::UNI_SSE } else { Transport::UNI_HTTP_STREAM };
    let last_id =
        if framing == Framing::Sse { header_str(req.headers(), "last-event-id").map(str::to_owned) } else { None };
    let query = req.uri().query().map(str::to_owned);
    let body = if req.method() == Method::POST {
        match super::emulation::read_body(req.into_body(), limit).await {
            Ok(b) => Some(b),
            Err(StatusCode::PAYLOAD_TOO_LARGE) => return too_large(limit).into_response(),
            Err(_) => return bad("unreadable request body").into_response(),
        }
    } else {
        None
    };
    let parsed = match parse_request(query.as_deref(), body.as_deref(), last_id.as_deref(), limit) {
        Ok(r) => r,
        Err(r) => return r.into_response(),
    };
    let opener = Opener { ip, transport, headers: Some(&headers) };
    let (mut reader, first) = match Reader::open(&hub, parsed, opener).await {
        Ok(r) => r,
        Err(r) => return r.into_response(),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(STREAM_BUFFER);
    let heartbeat = hub.config().client.ping_interval;
    let heartbeat = if heartbeat.is_zero() { Duration::from_secs(25) } else { heartbeat };
    let mut head = String::new();
    if framing == Framing::Sse {
        head.push_str(&format!("retry: {}\n\n", RETRY_MS));
    }
    for o in &first {
        head.push_str(&frame(framing, o));
    }
    tokio::spawn(async move {
        let end = pump(&mut reader, &tx, framing, heartbeat, Bytes::from(head)).await;
        reader.session.close().await;
        if let Some(d) = end {
            let out = Out { position: None, data: json!({ "disconnect": { "code": d.code, "reason": d.reason } }) };
            let _ = tx.try_send(Bytes::from(frame(framing, &out)));
        }
    });
    let body = axum::body::Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<Bytes, std::convert::Infallible>(b), rx))
    }));
    let content_type = match framing {
        Framing::Sse => "text/event-stream",
        Framing::Ndjson => "application/x-ndjson",
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        body,
    )
        .into_response()
}

/// How long a browser waits before reconnecting an SSE stream (`retry:`), in ms.
const RETRY_MS: u64 = 1000;

/// Feeds the stream until the reader goes or its session ends; returns the disconnect
/// to tell it, if any.
async fn pump(
    reader: &mut Reader,
    tx: &tokio::sync::mpsc::Sender<Bytes>,
    framing: Framing,
    heartbeat: Duration,
    head: Bytes,
) -> Option<Disconnect> {
    let client = reader.session.client.clone();
    let beat = match framing {
        // Centrifugo's ping: an event named `ping`, its data empty (`onmessage` does
        // not see it; `addEventListener("ping", ...)` does).
        Framing::Sse => Bytes::from_static(b"event: ping\ndata:\n\n"),
        // Centrifugo's ping on this transport: JSON `null`.
        Framing::Ndjson => Bytes::from_static(b"null\n"),
    };
    let mut pending = Some(head);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
    loop {
        if let Some(chunk) = pending.take() {
            // A reader that does not read: its session's queue fills meanwhile, and
            // overflows into 3008.
            tokio::select! {
                r = tx.send(chunk) => if r.is_err() { return None },
                _ = wait_closing(&client) => return client.closing(),
            }
            continue;
        }
        match reader.drain() {
            Ok(outs) if !outs.is_empty() => {
                pending = Some(Bytes::from(outs.iter().map(|o| frame(framing, o)).collect::<String>()));
                continue;
            }
            Ok(_) => {}
            Err(d) => return Some(d),
        }
        tokio::select! {
            _ = client.ready() => if let Err(d) = reader.woken().await {
                return Some(d);
            },
            _ = tick.tick() => pending = Some(beat.clone()),
            _ = tx.closed() => return None,
        }
    }
}

async fn wait_closing(client: &crate::engine::client::ClientShared) {
    loop {
        if client.closing().is_some() {
            return;
        }
        client.ready().await;
    }
}

/// `/connection/uni_websocket`: a WebSocket that only receives. The connect request is
/// the query (as for the other transports) or, without a `channel` in it, the first
/// message; then each message is one JSON object, as a line of the HTTP stream.
pub(crate) async fn websocket(hub: axum::extract::State<Hub>, ws: volley::http::WebSocketUpgrade) -> Response {
    let hub = hub.0;
    if !hub.config().uni_websocket.enabled {
        return Refused(StatusCode::NOT_FOUND, "this transport is not enabled".into()).into_response();
    }
    let query = ws.request().query().map(str::to_owned);
    let in_query = query
        .as_deref()
        .is_some_and(|q| q.split('&').any(|kv| kv.starts_with("channel=") || kv.starts_with("cf_connect=")));
    let max = hub.config().client.max_command_size;
    let from_query = if in_query {
        match parse_request(query.as_deref(), None, None, max) {
            Ok(r) => Some(r),
            Err(r) => return r.into_response(),
        }
    } else {
        None
    };
    let ip = ws.remote_addr().map(|a| a.ip());
    let config = volley::Config::default().max_message_size(max).max_frame_size(max);
    ws.config(config).on_upgrade(move |mut ws| async move {
        use volley::{CloseCode, Message};
        let parsed = match from_query {
            Some(r) => Ok(r),
            None => {
                let first = tokio::time::timeout(hub.config().client.stale_close_delay, ws.recv()).await;
                match first {
                    Ok(Some(Ok(Message::Text(t)))) => parse_first_message(&t.into_bytes()),
                    Ok(Some(Ok(_))) => Err(bad("the first message is not a JSON text")),
                    Ok(_) => return,
                    Err(_) => {
                        let _ = ws.close(CloseCode::from(3502), "stale").await;
                        return;
                    }
                }
            }
        };
        let reader = match parsed {
            Ok(r) => {
                let headers: HeaderMap = ws
                    .info()
                    .headers()
                    .iter()
                    .filter_map(|(n, v)| {
                        Some((
                            axum::http::HeaderName::from_bytes(n.as_bytes()).ok()?,
                            axum::http::HeaderValue::from_bytes(v).ok()?,
                        ))
                    })
                    .collect();
                Reader::open(&hub, r, Opener { ip, transport: Transport::UNI_WEBSOCKET, headers: Some(&headers) }).await
            }
            Err(e) => Err(e),
        };
        let (mut reader, first) = match reader {
            Ok(r) => r,
            Err(Refused(status, msg)) => {
                let code = match status {
                    StatusCode::UNAUTHORIZED => 3500,
                    StatusCode::FORBIDDEN => 3507,
                    StatusCode::TOO_MANY_REQUESTS => 3504,
                    _ => 3501,
                };
                let reason: String = msg.chars().take(120).collect();
                let _ = ws.send(Message::from(json!({ "error": msg }).to_string())).await;
                let _ = ws.close(CloseCode::from(code), &reason).await;
                return;
            }
        };
        let text = |o: &Out| Message::from(frame(Framing::Ndjson, o).trim_end().to_owned());
        let mut end = None;
        let mut ok = true;
        for o in &first {
            ok = ok && ws.send(text(o)).await.is_ok();
        }
        let every = hub.config().client.ping_interval;
        let every = if every.is_zero() { Duration::from_secs(25) } else { every };
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        let client = reader.session.client.clone();
        while ok {
            match reader.drain() {
                Ok(outs) => {
                    for o in &outs {
                        tokio::select! {
                            r = ws.send(text(o)) => if r.is_err() { ok = false; break },
                            _ = wait_closing(&client) => { end = client.closing(); ok = false; break }
                        }
                    }
                    if !outs.is_empty() {
                        continue;
                    }
                }
                Err(d) => {
                    end = Some(d);
                    break;
                }
            }
            tokio::select! {
                _ = client.ready() => if let Err(d) = reader.woken().await {
                    end = Some(d);
                    break;
                },
                m = ws.recv() => match m {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                    Some(Ok(_)) => {}
                },
                _ = tick.tick() => ok = ws.send(Message::from("{}".to_owned())).await.is_ok(),
            }
        }
        reader.session.close().await;
        if let Some(d) = end {
            let _ = tokio::time::timeout(Duration::from_secs(5), ws.close(CloseCode::from(d.code), &d.reason)).await;
        }
    })
}

/// The longest wait a long poll may ask for (`uni_long_polling.timeout` is capped too).
pub const MAX_POLL_WAIT: Duration = Duration::from_secs(120);

/// `GET /connection/uni_long_poll`: what is newer than `since`, at once, or the next
/// publications within the timeout; the new cursor. No session outlives the request.
pub(crate) async fn long_poll(hub: axum::extract::State<Hub>, req: Request) -> Response {
    let hub = hub.0;
    let config = &hub.config().uni_long_polling;
    if !config.enabled {
        return Refused(StatusCode::NOT_FOUND, "this transport is not enabled".into()).into_response();
    }
    let parsed = match parse_request(req.uri().query(), None, None, usize::MAX) {
        // Its cursor is the position in the channels it names.
        Ok(r) if r.channels.is_empty() => {
            return bad("no channel: name one or more with channel=NAME").into_response();
        }
        Ok(r) => r,
        Err(r) => return r.into_response(),
    };
    let wait = config.timeout.min(MAX_POLL_WAIT);
    let max = config.max_publications.max(1);
    let asked = parsed.since.is_some();
    let opener = Opener { ip: ip_of(&req), transport: Transport::UNI_LONG_POLL, headers: Some(req.headers()) };
    let (mut reader, first) = match Reader::open(&hub, parsed, opener).await {
        Ok(r) => r,
        Err(r) => return r.into_response(),
    };
    let mut cursor = first[0].position.clone().unwrap_or_default();
    let mut pubs = Vec::new();
    let take = |outs: Vec<Out>, pubs: &mut Vec<Value>, cursor: &mut String| {
        for o in outs {
            if pubs.len() >= max {
                break;
            }
            if let Some(p) = o.position {
                *cursor = p;
                pubs.push(o.data);
            }
        }
    };
    take(first.into_iter().skip(1).collect(), &mut pubs, &mut cursor);
    let mut disconnect = None;
    if asked && reader.recovered && pubs.is_empty() {
        let deadline = tokio::time::Instant::now() + wait;
        let client = reader.session.client.clone();
        loop {
            match reader.drain() {
                Ok(outs) => {
                    // Pushes other than publications (join, leave) wait on.
                    take(outs, &mut pubs, &mut cursor);
                    if !pubs.is_empty() {
                        break;
                    }
                }
                Err(d) => {
                    disconnect = Some(d);
                    break;
                }
            }
            tokio::select! {
                _ = client.ready() => if let Err(d) = reader.woken().await {
                    disconnect = Some(d);
                    break;
                },
                _ = tokio::time::sleep_until(deadline) => break,
            }
        }
    }
    reader.session.close().await;
    let mut body = json!({ "position": cursor, "publications": pubs });
    if asked {
        body["recovered"] = json!(reader.recovered);
    }
    if let Some(d) = disconnect {
        body["disconnect"] = json!({ "code": d.code, "reason": d.reason });
    }
    ([(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-cache")], body.to_string() + "\n")
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_from_plain_params_and_from_cf_connect() {
        let r = parse_request(Some("token=t&channel=b&channel=a&channel=b&since=3.e,0."), None, None, 100).unwrap();
        assert_eq!(r.token, "t");
        assert_eq!(r.channels, ["a", "b"]);
        assert_eq!(r.since.unwrap()[0], Position { offset: 3, epoch: "e".into() });
        let cf = r#"{"token":"x","subs":{"b":{"recover":true,"offset":2,"epoch":"q"},"a":{"recover":true,"offset":1,"epoch":"p"}}}"#;
        let q = serde_urlencoded::to_string([("cf_connect", cf)]).unwrap();
        let r = parse_request(Some(&q), None, None, 1000).unwrap();
        assert_eq!(r.token, "x");
        assert_eq!(position::format(&r.since.unwrap()), "1.p,2.q");
        let r = parse_request(Some("channel=a&since=1.x"), None, Some("5.y"), 100).unwrap();
        assert_eq!(r.since.unwrap()[0].offset, 5, "Last-Event-ID wins");
        let body = br#"{"token":"y","data":{"k":1},"name":"app","version":"2","subs":{"a":{}}}"#;
        let r = parse_request(Some("channel=b"), Some(body), None, 1000).unwrap();
        assert_eq!((r.token.as_str(), r.name.as_str(), r.version.as_str()), ("y", "app", "2"));
        assert_eq!(r.data, Bytes::from_static(br#"{"k":1}"#));
        assert_eq!(r.channels, ["a", "b"]);
        assert!(r.since.is_none());
        let r = parse_request(None, Some(b"{}"), None, 1000).unwrap();
        assert!(r.channels.is_empty(), "server-side subscriptions only");
    }

    #[test]
    fn bad_requests_say_why() {
        let p = |q: &str, body: Option<&[u8]>, id: Option<&str>| parse_request(Some(q), body, id, 100).unwrap_err();
        assert!(p("token=t&since=1.a", None, None).1.contains("names channels"));
        assert!(p("channel=a&since=zz", None, None).1.contains("malformed position"));
        assert!(p("channel=a", None, Some("1.a,2.b")).1.contains("names 2 channels"));
        assert!(p("cf_connect=%7B", None, None).1.contains("not JSON"));
        assert!(p("", Some(b"{"), None).1.contains("not JSON"));
        assert!(p("", Some(b"[1]"), None).1.contains("not a JSON object"));
        assert!(p("", Some(br#"{"subs":[]}"#), None).1.contains("subs: not an object"));
        let long = format!("cf_connect={}", "x".repeat(101));
        assert_eq!(p(&long, None, None).0, StatusCode::PAYLOAD_TOO_LARGE);
    }
}
