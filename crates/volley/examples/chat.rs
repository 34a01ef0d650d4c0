//! A multi-user chat room in the browser, on one port: `GET /` serves the page
//! (`chat.html`) and `GET /ws` upgrades to a WebSocket that joins the room.
//!
//! `cargo run --release -p volley --example chat` then open <http://127.0.0.1:8080/> in a
//! few tabs. `--listen ADDR` (or the `CHAT_ADDR` environment variable) changes the
//! address. `/?name=alice` picks a name; otherwise the server assigns `guest-N`.
//!
//! Wire format, JSON text messages. The page sends `{"type":"message","text":…}` and
//! `{"type":"rename","name":…}`; the server sends `welcome` (your name), `join`, `leave`,
//! `rename`, `members` (the whole list, after every change), `message` (`from`, `text`,
//! `ts` in Unix milliseconds) and `error`.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use volley::{CloseCode, Config, Message, Rejection, WebSocket};

/// The page, compiled into the binary.
const PAGE: &str = include_str!("chat.html");
/// Where the server listens unless told otherwise.
const DEFAULT_ADDR: &str = "127.0.0.1:8080";
/// The longest chat message accepted, in bytes of UTF-8.
const MAX_TEXT: usize = 4096;
/// The longest name accepted, in characters.
const MAX_NAME: usize = 24;
/// The largest WebSocket message accepted (a chat message plus its JSON envelope and
/// escapes); anything bigger fails the connection with 1009.
const MAX_FRAME: usize = 64 * 1024;
/// The largest HTTP request head read before routing.
const MAX_HEAD: usize = 8 * 1024;
/// How long a client may take to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Messages queued for one member before it counts as too slow and is dropped.
const QUEUE: usize = 256;

/// One connected member.
struct Member {
    name: String,
    tx: mpsc::Sender<Message>,
}

/// The room: every member by join order (ids only grow).
#[derive(Default)]
struct Room {
    next_id: u64,
    next_guest: u64,
    members: BTreeMap<u64, Member>,
}

type Shared = Arc<Mutex<Room>>;

impl Room {
    fn name_taken(&self, name: &str) -> bool {
        self.members.values().any(|m| m.name.eq_ignore_ascii_case(name))
    }

    fn guest_name(&mut self) -> String {
        loop {
            self.next_guest += 1;
            let name = format!("guest-{}", self.next_guest);
            if !self.name_taken(&name) {
                return name;
            }
        }
    }

    /// Sends `event` to every member. A member whose queue is full (or whose task has
    /// ended) is dropped from the room; its task then closes the connection and
    /// announces the leave.
    fn broadcast(&mut self, event: &Value) {
        let msg = Message::text(event.to_string());
        self.members.retain(|id, m| match m.tx.try_send(msg.clone()) {
            Ok(()) => true,
            Err(e) => {
                eprintln!("chat: dropping #{id} ({}): {e}", m.name);
                false
            }
        });
    }

    fn broadcast_members(&mut self) {
        let names: Vec<&str> = self.members.values().map(|m| m.name.as_str()).collect();
        let event = json!({ "type": "members", "members": names });
        self.broadcast(&event);
    }
}

/// Milliseconds since the Unix epoch, for message timestamps.
fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Checks a requested name: trimmed, 1 to [`MAX_NAME`] characters, no control
/// characters.
fn check_name(raw: &str) -> Result<String, &'static str> {
    let name = raw.trim();
    if name.is_empty() {
        return Err("the name must not be empty");
    }
    if name.chars().count() > MAX_NAME {
        return Err("the name is too long (24 characters at most)");
    }
    if name.chars().any(char::is_control) {
        return Err("the name must not contain control characters");
    }
    Ok(name.to_string())
}

/// Decodes `%XX` escapes and `+` in a query-string value (invalid UTF-8 is replaced).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The value of one hexadecimal digit.
fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// The `name` parameter of a query string, decoded.
fn query_name(query: Option<&str>) -> Option<String> {
    query?.split('&').find_map(|pair| pair.strip_prefix("name=").map(percent_decode))
}

/// A stream that first replays bytes already read from `inner`, then reads `inner`;
/// writes go straight through. It lets the router read the request head and still hand
/// the whole request to [`volley::accept_with`].
struct Replay<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pos < this.prefix.len() {
            let n = (this.prefix.len() - this.pos).min(buf.remaining());
            buf.put_slice(&this.prefix[this.pos..this.pos + n]);
            this.pos += n;
            if this.pos == this.prefix.len() {
                this.prefix = Vec::new();
                this.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replay<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Reads until the end of the request head (or [`MAX_HEAD`] bytes, or end of stream)
/// and returns everything read.
async fn read_head(tcp: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        let n = tcp.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.len() > MAX_HEAD {
            return Ok(buf);
        }
    }
}

/// Writes a complete HTTP/1.1 response and closes the connection.
async fn respond(tcp: &mut TcpStream, status: &str, content_type: &str, body: &str, head_only: bool) {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = tcp.write_all(head.as_bytes()).await;
    if !head_only {
        let _ = tcp.write_all(body.as_bytes()).await;
    }
    let _ = tcp.shutdown().await;
}

/// Routes one TCP connection: the page, the WebSocket, or an error.
async fn serve(mut tcp: TcpStream, peer: SocketAddr, room: Shared) {
    let head = match tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut tcp)).await {
        Ok(Ok(head)) => head,
        _ => return,
    };
    if head.len() > MAX_HEAD {
        return respond(&mut tcp, "431 Request Header Fields Too Large", "text/plain", "request too large\n", false)
            .await;
    }
    let request_line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let request_line = String::from_utf8_lossy(request_line);
    let mut parts = request_line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        (_, "/ws") => {
            let io = Replay { prefix: head, pos: 0, inner: tcp };
            join(io, peer, room).await;
        }
        ("GET" | "HEAD", "/" | "/index.html") => {
            respond(&mut tcp, "200 OK", "text/html; charset=utf-8", PAGE, method == "HEAD").await;
        }
        ("GET" | "HEAD", _) => respond(&mut tcp, "404 Not Found", "text/plain", "not found\n", method == "HEAD").await,
        _ => respond(&mut tcp, "405 Method Not Allowed", "text/plain", "method not allowed\n", false).await,
    }
}

/// Whether a browser's Origin names the same host as the request (so other sites
/// cannot open the chat socket with the visitor's credentials).
fn same_origin(origin: &str, host: &str) -> bool {
    origin.split_once("://").is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host))
}

/// Completes the WebSocket handshake, then runs the member until it leaves.
async fn join(io: Replay<TcpStream>, peer: SocketAddr, room: Shared) {
    let config = Config::new().max_message_size(MAX_FRAME);
    let mut wanted = None;
    let accepted = volley::accept_with(io, config, |req, _| {
        if let (Some(origin), Some(host)) = (req.origin(), req.host()) {
            if !same_origin(origin, host) {
                return Err(Rejection::new(403).body("foreign origin"));
            }
        }
        wanted = query_name(req.query());
        Ok(())
    })
    .await;
    let ws = match accepted {
        Ok(ws) => ws,
        Err(e) => {
            eprintln!("chat: {peer}: handshake failed: {e}");
            return;
        }
    };
    if let Err(e) = run_member(ws, room, wanted).await {
        eprintln!("chat: {peer}: {e}");
    }
}

/// Sends one event straight to this member (not through the room).
async fn tell(ws: &mut WebSocket<Replay<TcpStream>>, event: Value) -> Result<(), volley::Error> {
    ws.send(Message::text(event.to_string())).await
}

fn error_event(text: &str) -> Value {
    json!({ "type": "error", "error": text })
}

/// One member's life: join the room, then relay the socket's messages to the room and
/// the room's messages to the socket, and leave (whatever ended it).
async fn run_member(
    mut ws: WebSocket<Replay<TcpStream>>,
    room: Shared,
    wanted: Option<String>,
) -> Result<(), volley::Error> {
    let (tx, mut rx) = mpsc::channel(QUEUE);
    let mut refused = None;
    let (id, mut name) = {
        let mut r = room.lock().unwrap();
        let name = match wanted.as_deref().map(check_name) {
            Some(Ok(n)) if !r.name_taken(&n) => n,
            Some(Ok(n)) => {
                refused = Some(format!("the name {n:?} is taken"));
                r.guest_name()
            }
            Some(Err(e)) => {
                refused = Some(e.to_string());
                r.guest_name()
            }
            None => r.guest_name(),
        };
        let id = r.next_id;
        r.next_id += 1;
        r.members.insert(id, Member { name: name.clone(), tx });
        r.broadcast(&json!({ "type": "join", "name": name }));
        r.broadcast_members();
        (id, name)
    };
    eprintln!("chat: {name} joined");

    let result = async {
        // Sent directly, so it arrives before the room's news queued meanwhile.
        tell(&mut ws, json!({ "type": "welcome", "name": name })).await?;
        if let Some(why) = refused {
            tell(&mut ws, error_event(&format!("{why}; you are {name}"))).await?;
        }
        loop {
            tokio::select! {
                incoming = ws.recv() => match incoming {
                    None => return Ok(()),
                    Some(Err(e)) => return Err(e),
                    Some(Ok(Message::Text(text))) => {
                        if let Some(reply) = handle(&room, id, &mut name, text.as_str()) {
                            tell(&mut ws, reply).await?;
                        }
                    }
                    Some(Ok(Message::Binary(_))) => tell(&mut ws, error_event("binary messages are not supported")).await?,
                    Some(Ok(_)) => {}
                },
                outgoing = rx.recv() => match outgoing {
                    Some(msg) => {
                        // Feed everything already queued, then write it in one go.
                        ws.feed(msg).await?;
                        while let Ok(msg) = rx.try_recv() {
                            ws.feed(msg).await?;
                        }
                        ws.flush().await?;
                    }
                    None => {
                        // The room dropped this member: it could not keep up.
                        return ws.close(CloseCode::POLICY_VIOLATION, "too slow").await;
                    }
                },
            }
        }
    }
    .await;

    let mut r = room.lock().unwrap();
    r.members.remove(&id);
    r.broadcast(&json!({ "type": "leave", "name": name }));
    r.broadcast_members();
    drop(r);
    eprintln!("chat: {name} left");
    result
}

/// Handles one message from member `id`; returns an event for the sender alone, if any.
fn handle(room: &Shared, id: u64, name: &mut String, text: &str) -> Option<Value> {
    let Ok(request) = serde_json::from_str::<Value>(text) else {
        return Some(error_event("not JSON"));
    };
    match request["type"].as_str() {
        Some("message") => {
            let Some(text) = request["text"].as_str() else {
                return Some(error_event("a message needs a text"));
            };
            if text.len() > MAX_TEXT {
                return Some(error_event("the message is too long (4 KiB at most)"));
            }
            if text.trim().is_empty() {
                return None;
            }
            let event = json!({ "type": "message", "from": name, "text": text, "ts": now_ms() });
            room.lock().unwrap().broadcast(&event);
            None
        }
        Some("rename") => {
            let new = match check_name(request["name"].as_str().unwrap_or("")) {
                Ok(n) => n,
                Err(e) => return Some(error_event(e)),
            };
            if new == *name {
                return None;
            }
            let mut r = room.lock().unwrap();
            // A change of case only is allowed; otherwise the name must be free.
            if !new.eq_ignore_ascii_case(name) && r.name_taken(&new) {
                return Some(error_event(&format!("the name {new:?} is taken")));
            }
            if let Some(m) = r.members.get_mut(&id) {
                m.name = new.clone();
            }
            r.broadcast(&json!({ "type": "rename", "from": name, "to": new }));
            r.broadcast_members();
            *name = new;
            None
        }
        _ => Some(error_event("unknown message type")),
    }
}

/// The listen address: `--listen ADDR` (or `--listen=ADDR`), else `CHAT_ADDR`, else
/// [`DEFAULT_ADDR`].
fn listen_addr() -> Result<String, String> {
    let mut args = std::env::args().skip(1);
    let mut addr = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" | "-l" => addr = Some(args.next().ok_or("--listen needs an address")?),
            "-h" | "--help" => {
                println!("usage: chat [--listen ADDR]   (default {DEFAULT_ADDR}, or $CHAT_ADDR)");
                std::process::exit(0);
            }
            _ => match arg.strip_prefix("--listen=") {
                Some(a) => addr = Some(a.to_string()),
                None => return Err(format!("unknown argument {arg:?}")),
            },
        }
    }
    Ok(addr.or_else(|| std::env::var("CHAT_ADDR").ok()).unwrap_or_else(|| DEFAULT_ADDR.to_string()))
}

#[tokio::main]
async fn main() {
    let addr = listen_addr().unwrap_or_else(|e| {
        eprintln!("chat: {e}\nusage: chat [--listen ADDR]");
        std::process::exit(2);
    });
    let listener = match TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("chat: cannot listen on {addr}: {e}");
            std::process::exit(1);
        }
    };
    let local = listener.local_addr().map_or(addr, |a| a.to_string());
    eprintln!("chat: open http://{local}/ in a few tabs");
    let room = Shared::default();
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                let _ = tcp.set_nodelay(true);
                tokio::spawn(serve(tcp, peer, room.clone()));
            }
            Err(e) => {
                // Out of descriptors, say: wait a little rather than spin.
                eprintln!("chat: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
