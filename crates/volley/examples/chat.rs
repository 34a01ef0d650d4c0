//! A multi-user chat room in the browser, on one port: `GET /` serves the page
//! (`chat.html`) and `/ws` upgrades to a WebSocket that joins the room.
//!
//! `cargo run --release -p volley --example chat` then open <http://127.0.0.1:8080/> in a
//! few tabs. `--listen ADDR` (or the `CHAT_ADDR` environment variable) changes the
//! address. `/?name=alice` picks a name; otherwise the server assigns `guest-N`.
//!
//! `--tls-self-signed` (or `--tls-cert FILE --tls-key FILE`) serves `https://` and
//! `wss://` instead, with ALPN `h2`: the page then comes over HTTP/2 and the browser
//! opens its WebSocket as an extended CONNECT stream on the same connection (RFC 8441).
//! The server runs on `volley::http::Server` (hyper), so HTTP/1.1 and HTTP/2 share one
//! code path; the `welcome` event tells the page which one its WebSocket uses.
//!
//! Wire format, JSON text messages. The page sends `{"type":"message","text":…}` and
//! `{"type":"rename","name":…}`; the server sends `welcome` (your name, and `http`:
//! `HTTP/1.1` or `HTTP/2`), `join`, `leave`,
//! `rename`, `members` (the whole list, after every change), `message` (`from`, `text`,
//! `ts` in Unix milliseconds) and `error`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use volley::http::hyper::{header, Method, Request as HttpRequest, Response as HttpResponse, StatusCode};
use volley::http::{Body, Server, UpgradedIo};
use volley::tls::{CertificateDer, PrivateKeyDer, TlsAcceptor};
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
/// The largest HTTP request head accepted (hyper's HTTP/1.1 buffer is at least 8 KiB).
const MAX_HEAD: usize = 16 * 1024;
/// How long a client may take for its TLS handshake (the request head gets the
/// WebSocket configuration's handshake timeout).
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

/// Whether a browser's Origin names the same host as the request (so other sites
/// cannot open the chat socket with the visitor's credentials).
fn same_origin(origin: &str, host: &str) -> bool {
    origin.split_once("://").is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host))
}

/// The HTTP server: the page at `GET /`, WebSockets at `/ws` (HTTP/1.1 Upgrade, or
/// extended CONNECT over HTTP/2), 404 for anything else.
fn http_server() -> Server {
    let config = Config::new().max_message_size(MAX_FRAME);
    let mut server = Server::new(config)
        .hook(|req, _| {
            if req.path() != "/ws" {
                return Err(Rejection::new(404).body("not found"));
            }
            if let (Some(origin), Some(host)) = (req.origin(), req.host()) {
                if !same_origin(origin, host) {
                    return Err(Rejection::new(403).body("foreign origin"));
                }
            }
            Ok(())
        })
        .fallback(|req: HttpRequest<_>| async move { page(req.method(), req.uri().path()) });
    // Bounds on request heads: 16 KiB over HTTP/1.1 (hyper's smallest buffer is 8 KiB),
    // 16 KiB of header fields over HTTP/2.
    server.builder_mut().http1().max_buf_size(MAX_HEAD);
    server.builder_mut().http2().max_header_list_size(MAX_HEAD as u32);
    server
}

/// The answer to a request that is not a WebSocket request.
fn page(method: &Method, path: &str) -> HttpResponse<Body> {
    let (status, content_type, body) = match (method, path) {
        (&Method::GET | &Method::HEAD, "/" | "/index.html") => (StatusCode::OK, "text/html; charset=utf-8", PAGE),
        (_, "/ws") => (StatusCode::UPGRADE_REQUIRED, "text/plain", "a WebSocket endpoint: upgrade required\n"),
        (&Method::GET | &Method::HEAD, _) => (StatusCode::NOT_FOUND, "text/plain", "not found\n"),
        _ => (StatusCode::METHOD_NOT_ALLOWED, "text/plain", "method not allowed\n"),
    };
    let body = if method == Method::HEAD { "" } else { body };
    let mut response = HttpResponse::new(Body::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, header::HeaderValue::from_static("nosniff"));
    if status == StatusCode::UPGRADE_REQUIRED {
        headers.insert(header::UPGRADE, header::HeaderValue::from_static("websocket"));
    }
    response
}

/// Serves one TCP connection: TLS first if on, then HTTP/1.1 or HTTP/2, each WebSocket
/// becoming a member of the room.
async fn serve(tcp: TcpStream, peer: SocketAddr, tls: Option<TlsAcceptor>, server: Server, room: Shared) {
    let _ = tcp.set_nodelay(true);
    let local = tcp.local_addr().ok();
    let handler = move |ws: WebSocket<UpgradedIo>| {
        let ws = ws.with_addrs(Some(peer), local);
        let room = room.clone();
        async move {
            let version = ws.info().http_version();
            let wanted = query_name(ws.info().query());
            if let Err(e) = run_member(ws, room, wanted, version).await {
                eprintln!("chat: {peer}: {e}");
            }
        }
    };
    let result = match tls {
        None => server.serve_connection_from(tcp, Some(peer), handler).await,
        Some(acceptor) => match tokio::time::timeout(HEAD_TIMEOUT, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => server.serve_connection_from(tls, Some(peer), handler).await,
            Ok(Err(e)) => return eprintln!("chat: {peer}: TLS handshake failed: {e}"),
            Err(_) => return eprintln!("chat: {peer}: TLS handshake timed out"),
        },
    };
    if let Err(e) = result {
        eprintln!("chat: {peer}: {e}");
    }
}

/// Sends one event straight to this member (not through the room).
async fn tell(ws: &mut WebSocket<UpgradedIo>, event: Value) -> Result<(), volley::Error> {
    ws.send(Message::text(event.to_string())).await
}

fn error_event(text: &str) -> Value {
    json!({ "type": "error", "error": text })
}

/// One member's life: join the room, then relay the socket's messages to the room and
/// the room's messages to the socket, and leave (whatever ended it).
async fn run_member(
    mut ws: WebSocket<UpgradedIo>,
    room: Shared,
    wanted: Option<String>,
    version: http::Version,
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
    eprintln!("chat: {name} joined over {version:?}");

    let result = async {
        // Sent directly, so it arrives before the room's news queued meanwhile.
        let http = if version == http::Version::HTTP_2 { "HTTP/2" } else { "HTTP/1.1" };
        tell(&mut ws, json!({ "type": "welcome", "name": name, "http": http })).await?;
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

/// What the command line asks for.
struct Options {
    addr: String,
    tls: Option<TlsSource>,
}

/// Where the TLS certificate comes from.
enum TlsSource {
    Files { cert: PathBuf, key: PathBuf },
    SelfSigned,
}

const USAGE: &str = "usage: chat [--listen ADDR] [--tls-cert FILE --tls-key FILE | --tls-self-signed]
  --listen ADDR        where to listen (default 127.0.0.1:8080, or $CHAT_ADDR)
  --tls-cert FILE      serve https:// and wss:// with this PEM certificate chain (and --tls-key)
  --tls-key FILE       the PEM private key of --tls-cert
  --tls-self-signed    serve https:// with a certificate for localhost generated at startup
With TLS the server offers HTTP/2 (ALPN h2): browsers then run the chat's WebSocket over
HTTP/2 (RFC 8441) on the page's own connection.";

/// Parses the command line (`--flag VALUE` or `--flag=VALUE`).
fn options() -> Result<Options, String> {
    let mut args = std::env::args().skip(1);
    let (mut addr, mut cert, mut key, mut self_signed) = (None, None, None, false);
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| inline.clone().or_else(|| args.next()).ok_or(format!("{name} needs a value"));
        match flag.as_str() {
            "--listen" | "-l" => addr = Some(value("--listen")?),
            "--tls-cert" => cert = Some(PathBuf::from(value("--tls-cert")?)),
            "--tls-key" => key = Some(PathBuf::from(value("--tls-key")?)),
            "--tls-self-signed" => self_signed = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => return Err(format!("unknown argument {arg:?}")),
        }
    }
    let tls = match (cert, key, self_signed) {
        (None, None, false) => None,
        (None, None, true) => Some(TlsSource::SelfSigned),
        (Some(cert), Some(key), false) => Some(TlsSource::Files { cert, key }),
        (_, _, true) => return Err("--tls-self-signed excludes --tls-cert and --tls-key".into()),
        _ => return Err("--tls-cert and --tls-key go together".into()),
    };
    let addr = addr.or_else(|| std::env::var("CHAT_ADDR").ok()).unwrap_or_else(|| DEFAULT_ADDR.to_string());
    Ok(Options { addr, tls })
}

/// The TLS acceptor, with ALPN `h2` then `http/1.1`.
fn tls_acceptor(source: &TlsSource) -> Result<TlsAcceptor, String> {
    let config = match source {
        TlsSource::Files { cert, key } => volley::tls::server_config_from_pem(cert, key).map_err(|e| e.to_string())?,
        TlsSource::SelfSigned => {
            let names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
            let generated = rcgen::generate_simple_self_signed(names).map_err(|e| e.to_string())?;
            let key = PrivateKeyDer::Pkcs8(generated.signing_key.serialize_der().into());
            let cert: CertificateDer<'static> = generated.cert.der().clone();
            eprintln!("chat: TLS with a SELF-SIGNED certificate for localhost: browsers will warn");
            volley::tls::server_config(vec![cert], key).map_err(|e| e.to_string())?
        }
    };
    Ok(TlsAcceptor::from(volley::http::with_h2_alpn(config)))
}

#[tokio::main]
async fn main() {
    let options = options().unwrap_or_else(|e| {
        eprintln!("chat: {e}\n{USAGE}");
        std::process::exit(2);
    });
    let tls = options.tls.as_ref().map(tls_acceptor).transpose().unwrap_or_else(|e| {
        eprintln!("chat: TLS: {e}");
        std::process::exit(1);
    });
    let listener = match TcpListener::bind(&options.addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("chat: cannot listen on {}: {e}", options.addr);
            std::process::exit(1);
        }
    };
    let local = listener.local_addr().map_or(options.addr.clone(), |a| a.to_string());
    let scheme = if tls.is_some() { "https" } else { "http" };
    eprintln!("chat: open {scheme}://{local}/ in a few tabs");
    let room = Shared::default();
    let server = http_server();
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                tokio::spawn(serve(tcp, peer, tls.clone(), server.clone(), room.clone()));
            }
            Err(e) => {
                // Out of descriptors, say: wait a little rather than spin.
                eprintln!("chat: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}
