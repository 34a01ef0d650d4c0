//! One reader of `volley bench-hub --transport` other than `websocket`: it opens its
//! stream (or makes its first long poll) already subscribed to its channel, the channel
//! named in the query (unidirectional transports) or in its token's `channels` claim
//! (the bidirectional emulation: a server-side subscription), then reads until the end:
//! SSE events, newline-delimited JSON, uni WebSocket messages or long-poll answers. It
//! counts the publications it receives and, in a measured fan-out step, times each from
//! the send time its payload carries, as a WebSocket client does.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::time::Instant;
use volley::{CloseCode, Message};

use super::super::conn::{open_ws, Ws};
use super::client::Tally;
use super::{Node, Plan, Shared, Transport, MEASURING, STOPPED};

/// The id of the bidirectional emulation's `connect` command.
const CONNECT_ID: u32 = 1;

/// A long poll in flight: its status and body.
type Poll = Pin<Box<dyn Future<Output = Result<(u16, Bytes), String>> + Send>>;

/// Where a reader's messages come from.
enum Feed {
    /// `uni_websocket`: one JSON object a message.
    Ws(Box<Ws>),
    /// A streamed response: SSE events (`data:` lines) or newline-delimited JSON.
    Stream { body: Incoming, buf: Vec<u8>, sse: bool, _conn: SendRequest<Full<Bytes>> },
    /// `uni_long_poll`: one request after another on a kept-alive connection, each with
    /// the cursor the last answer gave.
    Poll { sender: SendRequest<Full<Bytes>>, authority: String, query: String, cursor: String, inflight: Option<Poll> },
}

/// Runs reader number `index` (of this generator) from its opening to the end. Failures
/// are counted in `shared`, never returned.
pub async fn run(index: usize, plan: Arc<Plan>, shared: Arc<Shared>, permit: OwnedSemaphorePermit) {
    let mut phase = shared.phase_tx.subscribe();
    if *phase.borrow_and_update() >= STOPPED {
        return;
    }
    let started = Instant::now();
    let opened = Box::pin(open(index, &plan)).await;
    drop(permit);
    let (feed, session) = match opened {
        Ok(o) => o,
        Err(e) => {
            shared.connect_failed(e);
            return;
        }
    };
    // The subscription came with the connect.
    shared.connected(started.elapsed());
    shared.subscribed(started.elapsed());
    let mut reader =
        Reader { index, feed, session, shared: shared.clone(), plan: plan.clone(), tally: Tally::default() };
    shared.alive.fetch_add(1, Relaxed);
    let result = reader.live(&mut phase).await;
    reader.publish();
    shared.alive.fetch_sub(1, Relaxed);
    match result {
        Ok(()) => {
            if let Feed::Ws(ws) = &mut reader.feed {
                let _ = ws.close(CloseCode::NORMAL, "").await;
            }
        }
        Err(e) => {
            if *phase.borrow() < STOPPED {
                shared.failed(e);
            }
        }
    }
}

/// Percent-encodes a query value (everything but RFC 3986's unreserved characters).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An HTTP/1.1 connection to the hub.
async fn http(addr: SocketAddr) -> Result<SendRequest<Full<Bytes>>, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| format!("TCP_NODELAY: {e}"))?;
    let (sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

fn request(node: &Node, method: &str, path: &str, body: Option<String>) -> Result<hyper::Request<Full<Bytes>>, String> {
    let mut r = hyper::Request::builder().method(method).uri(path).header(hyper::header::HOST, &node.authority);
    if body.is_some() {
        r = r.header(hyper::header::CONTENT_TYPE, "application/json");
    }
    r.body(Full::new(body.map(Bytes::from).unwrap_or_default())).map_err(|e| e.to_string())
}

/// Sends `req` and reads its whole answer.
async fn call(sender: &mut SendRequest<Full<Bytes>>, req: hyper::Request<Full<Bytes>>) -> Result<(u16, Bytes), String> {
    sender.ready().await.map_err(|e| e.to_string())?;
    let response = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.map_err(|e| format!("reading the answer: {e}"))?.to_bytes();
    Ok((status, body))
}

/// Opens the reader's feed, subscribed; with the emulation's session and node.
async fn open(index: usize, plan: &Plan) -> Result<(Feed, Option<(String, String)>), String> {
    let channel = plan.channel_of(index);
    let node = plan.node(index);
    let uni_query = format!("channel={}&token={}", encode(&channel), encode(&plan.token(index)));
    let stream_path = match plan.transport {
        Transport::UniWebSocket => {
            let mut ws = open_ws(index, node.addr, &plan.sources, &node.client).await?;
            let token = plan.token(index);
            let first = format!("{{\"token\":\"{token}\",\"channels\":[\"{channel}\"]}}");
            ws.send(Message::text(first)).await.map_err(|e| format!("sending connect: {e}"))?;
            let mut feed = Feed::Ws(Box::new(ws));
            let first = feed.next().await?;
            return match first.first() {
                Some(m) if m.starts_with(b"{\"connect\":") => Ok((feed, None)),
                m => Err(format!("connect refused: {}", excerpt(m.map_or(&[][..], Vec::as_slice)))),
            };
        }
        Transport::UniLongPoll => {
            let mut sender = http(node.addr).await?;
            let path = format!("/connection/uni_long_poll?{uni_query}");
            let (status, body) = call(&mut sender, request(node, "GET", &path, None)?).await?;
            if status != 200 {
                return Err(format!("HTTP {status}: {}", excerpt(&body)));
            }
            let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| format!("the first answer: {e}"))?;
            let cursor = v["position"].as_str().ok_or("the first answer has no position")?.to_string();
            return Ok((
                Feed::Poll { sender, authority: node.authority.clone(), query: uni_query, cursor, inflight: None },
                None,
            ));
        }
        Transport::UniSse => ("GET", format!("/connection/uni_sse?{uni_query}"), None),
        Transport::UniHttpStream => ("GET", format!("/connection/uni_http_stream?{uni_query}"), None),
        Transport::Sse | Transport::HttpStream => {
            let token = plan.token_with_channel(index);
            let cmd =
                format!("{{\"id\":{CONNECT_ID},\"connect\":{{\"token\":\"{token}\",\"name\":\"volley-bench\"}}}}");
            if plan.transport == Transport::Sse {
                ("GET", format!("/connection/sse?cf_connect={}", encode(&cmd)), None)
            } else {
                ("POST", "/connection/http_stream".to_string(), Some(cmd))
            }
        }
        Transport::WebSocket => return Err("a WebSocket client is not a reader".to_string()),
    };
    let (method, path, body) = stream_path;
    let mut sender = http(node.addr).await?;
    sender.ready().await.map_err(|e| e.to_string())?;
    let response = sender.send_request(request(node, method, &path, body)?).await.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    if status != 200 {
        let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        return Err(format!("HTTP {status}: {}", excerpt(&body)));
    }
    let sse = matches!(plan.transport, Transport::UniSse | Transport::Sse);
    let mut feed = Feed::Stream { body: response.into_body(), buf: Vec::new(), sse, _conn: sender };
    let first = feed.next().await?;
    let Some(first) = first.first() else { return Err("the stream started with nothing".to_string()) };
    if plan.transport.is_uni() {
        return if first.starts_with(b"{\"connect\":") {
            Ok((feed, None))
        } else {
            Err(format!("connect refused: {}", excerpt(first)))
        };
    }
    // The emulation: the connect reply, with the session and the node pongs go to.
    let v: serde_json::Value = serde_json::from_slice(first).map_err(|e| format!("the connect reply: {e}"))?;
    let result = &v["connect"];
    match (v["id"].as_u64(), result["session"].as_str(), result["node"].as_str()) {
        (Some(1), Some(s), Some(n)) => Ok((feed, Some((s.to_string(), n.to_string())))),
        _ => Err(format!("connect refused: {}", excerpt(first))),
    }
}

impl Feed {
    /// The next messages (one JSON object each), waiting for at least one. Cancel-safe:
    /// what was read and a poll in flight stay in the feed.
    async fn next(&mut self) -> Result<Vec<Vec<u8>>, String> {
        match self {
            Feed::Ws(ws) => loop {
                match ws.recv().await {
                    Some(Ok(Message::Text(t))) => {
                        return Ok(t.as_bytes().split(|&b| b == b'\n').map(<[u8]>::to_vec).collect());
                    }
                    Some(Ok(Message::Close(frame))) => {
                        return Err(match frame {
                            Some(f) => format!("closed by the server ({}) {}", f.code, f.reason),
                            None => "closed by the server".to_string(),
                        });
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => return Err(e.to_string()),
                    None => return Err("closed by the server".to_string()),
                }
            },
            Feed::Stream { body, buf, sse, .. } => loop {
                let out = take_messages(buf, *sse);
                if !out.is_empty() {
                    return Ok(out);
                }
                match body.frame().await {
                    Some(Ok(frame)) => {
                        if let Ok(data) = frame.into_data() {
                            buf.extend_from_slice(&data);
                        }
                    }
                    Some(Err(e)) => return Err(format!("reading the stream: {e}")),
                    None => return Err("the server ended the stream".to_string()),
                }
            },
            Feed::Poll { sender, authority, query, cursor, inflight } => {
                if inflight.is_none() {
                    sender.ready().await.map_err(|e| format!("long poll: {e}"))?;
                    let req =
                        hyper::Request::get(format!("/connection/uni_long_poll?{query}&since={}", encode(cursor)))
                            .header(hyper::header::HOST, authority.as_str())
                            .body(Full::new(Bytes::new()))
                            .map_err(|e| e.to_string())?;
                    let response = sender.send_request(req);
                    *inflight = Some(Box::pin(async move {
                        let response = response.await.map_err(|e| format!("long poll: {e}"))?;
                        let status = response.status().as_u16();
                        let body = response.into_body().collect().await.map_err(|e| format!("long poll: {e}"))?;
                        Ok((status, body.to_bytes()))
                    }));
                }
                let answer = inflight.as_mut().map(|f| f.as_mut());
                let (status, body) = match answer {
                    Some(f) => f.await,
                    None => unreachable!("a poll was just made"),
                }?;
                *inflight = None;
                if status != 200 {
                    return Err(format!("long poll: HTTP {status}: {}", excerpt(&body)));
                }
                let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| format!("long poll: {e}"))?;
                if let Some(d) = v.get("disconnect") {
                    return Err(format!("disconnected by the server: {d}"));
                }
                *cursor = v["position"].as_str().ok_or("long poll: an answer without a position")?.to_string();
                let pubs = v["publications"].as_array().map(Vec::as_slice).unwrap_or_default();
                Ok(pubs.iter().map(|p| p.to_string().into_bytes()).collect())
            }
        }
    }
}

struct Reader {
    /// Its number in this generator (its node follows).
    index: usize,
    feed: Feed,
    /// The emulation's session and node, where pongs go.
    session: Option<(String, String)>,
    shared: Arc<Shared>,
    plan: Arc<Plan>,
    /// What it received.
    tally: Tally,
}

/// What a reader waits for: messages, or a change of phase (`false`: the generator is
/// gone).
enum Event {
    Messages(Result<Vec<Vec<u8>>, String>),
    Phase(bool),
}

impl Reader {
    /// From connected to the end: `Ok` when stopped, `Err` when the feed failed.
    async fn live(&mut self, phase: &mut watch::Receiver<u8>) -> Result<(), String> {
        loop {
            if *phase.borrow() >= STOPPED {
                return Ok(());
            }
            let event = tokio::select! {
                changed = phase.changed() => Event::Phase(changed.is_ok()),
                msgs = self.feed.next() => Event::Messages(msgs),
            };
            match event {
                Event::Phase(false) => return Err("the generator stopped".to_string()),
                Event::Phase(true) => {
                    self.publish();
                    if *self.shared.phase_tx.borrow() != MEASURING {
                        self.shared.flushed.fetch_add(1, Relaxed);
                    }
                }
                Event::Messages(msgs) => {
                    let now = Instant::now();
                    for m in msgs? {
                        self.handle(&m, now)?;
                    }
                }
            }
        }
    }

    /// One message: a publication counted and timed, a ping answered (the emulation),
    /// a disconnect an error.
    fn handle(&mut self, msg: &[u8], now: Instant) -> Result<(), String> {
        if msg == b"{}" {
            if let Some((session, node)) = &self.session {
                self.pong(session.clone(), node.clone());
            }
        } else if contains(msg, b"\"pub\":") {
            self.delivered(msg, now);
        } else if contains(msg, b"\"disconnect\":") {
            return Err(format!("disconnected by the server: {}", excerpt(msg)));
        }
        Ok(())
    }

    /// Answers the emulation's ping through `/emulation`, on a connection of its own.
    fn pong(&self, session: String, node: String) {
        let hub = self.plan.node(self.index);
        let (addr, authority) = (hub.addr, hub.authority.clone());
        let shared = self.shared.clone();
        tokio::spawn(async move {
            let body = serde_json::json!({ "session": session, "node": node, "data": "{}" }).to_string();
            let Ok(mut sender) = http(addr).await else { return };
            let Ok(req) = hyper::Request::post("/emulation")
                .header(hyper::header::HOST, authority)
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body)))
            else {
                return;
            };
            if let Ok((204, _)) = call(&mut sender, req).await {
                shared.pongs.fetch_add(1, Relaxed);
            }
        });
    }

    /// A publication arrived at `now`.
    fn delivered(&mut self, msg: &[u8], now: Instant) {
        self.tally.delivered(&self.shared, self.plan.burst as u64, msg, now);
    }

    /// Moves the latencies kept into the shared histogram.
    fn publish(&mut self) {
        self.tally.publish(&self.shared);
    }
}

/// Takes the whole lines of `buf` (what was read of a stream) and returns the messages
/// they hold: each non-empty line of newline-delimited JSON, or each SSE `data:` field
/// (comments, `id:` and `retry:` lines skipped). A partial last line stays in `buf`.
fn take_messages(buf: &mut Vec<u8>, sse: bool) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let Some(end) = buf.iter().rposition(|&b| b == b'\n') else { return out };
    let lines: Vec<u8> = buf.drain(..=end).collect();
    for line in lines.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let msg = if sse {
            match line.strip_prefix(b"data:") {
                Some(d) => d.strip_prefix(b" ").unwrap_or(d),
                None => continue,
            }
        } else {
            line
        };
        if !msg.is_empty() {
            out.push(msg.to_vec());
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn excerpt(line: &[u8]) -> String {
    String::from_utf8_lossy(&line[..line.len().min(160)]).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(encode("bench:1"), "bench%3A1");
        assert_eq!(encode("a.b-c_d~"), "a.b-c_d~");
        assert_eq!(encode("{\"id\":1}"), "%7B%22id%22%3A1%7D");
    }

    #[test]
    fn stream_lines_become_messages_and_a_partial_line_waits() {
        let mut buf = b"retry: 1000\n\n: ping\nid: 3.ab\ndata: {\"pub\":1}\r\n\ndata: {\"pu".to_vec();
        assert_eq!(take_messages(&mut buf, true), vec![b"{\"pub\":1}".to_vec()]);
        assert_eq!(buf, b"data: {\"pu");
        buf.extend_from_slice(b"b\":2}\n\n");
        assert_eq!(take_messages(&mut buf, true), vec![b"{\"pub\":2}".to_vec()]);
        assert!(buf.is_empty());
        let mut buf = b"{\"connect\":{}}\n{}\n\n{\"channel\":\"a\"".to_vec();
        assert_eq!(take_messages(&mut buf, false), vec![b"{\"connect\":{}}".to_vec(), b"{}".to_vec()]);
        assert_eq!(buf, b"{\"channel\":\"a\"");
        assert!(take_messages(&mut buf, false).is_empty());
    }
}
