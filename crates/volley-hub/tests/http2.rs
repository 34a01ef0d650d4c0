//! Every transport of the hub over HTTP/2, with prior knowledge on the plain port (h2c)
//! and over TLS with ALPN `h2` (as `volley serve` runs it with a certificate): the
//! WebSocket endpoints as RFC 8441 extended CONNECT streams, the emulation streams and
//! `/emulation`, the unidirectional streams and long polling. Each does a whole round
//! trip (connect, subscribe, a publication through the server API on the same HTTP/2
//! connection); many SSE streams share one connection; idle streams carry heartbeats;
//! streaming responses tell proxies not to buffer them, over HTTP/1.1 too.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use volley::tls::{CertificateDer, PrivateKeyDer, TlsAcceptor, TlsConnector};
use volley::Message;
use volley_hub::{Hub, HubConfig};

/// The API key of the server API.
const API_KEY: &str = "the-api-key";

fn config() -> HubConfig {
    serde_json::from_value(json!({
        "client": {
            "allow_anonymous_connect_without_token": true,
            // Heartbeats often, so that an idle stream shows one soon; no pong is
            // awaited long enough to end a test's session.
            "ping_interval": "300ms",
            "pong_timeout": "60s",
            "queue_max_bytes": 1048576,
        },
        "channel": {
            "namespaces": [
                {"name": "open", "allow_subscribe_for_anonymous": true, "allow_subscribe_for_client": true,
                 "history_size": 100, "history_ttl": "60s", "allow_recovery": true},
            ]
        },
        "http_api": {"key": API_KEY},
        "http_stream": {"enabled": true},
        "sse": {"enabled": true},
        "uni_sse": {"enabled": true},
        "uni_http_stream": {"enabled": true},
        "uni_websocket": {"enabled": true},
        "uni_long_polling": {"enabled": true, "timeout": "30s"},
    }))
    .unwrap()
}

/// How a test reaches the hub.
#[derive(Clone, Copy, Debug)]
enum Mode {
    /// Plain TCP, HTTP/2 with prior knowledge, as `volley serve` without TLS.
    H2c,
    /// TLS with ALPN `h2`, as `volley serve` with a certificate.
    Tls,
}

const MODES: [Mode; 2] = [Mode::H2c, Mode::Tls];

/// A hub served as the mode says.
struct Server {
    hub: Hub,
    addr: SocketAddr,
    /// The certificate to trust (TLS only).
    root: Option<CertificateDer<'static>>,
}

impl Server {
    async fn start(mode: Mode) -> Server {
        match mode {
            Mode::H2c => {
                let (hub, addr) = common::serve(config()).await;
                Server { hub, addr, root: None }
            }
            Mode::Tls => {
                let hub = Hub::new(config()).unwrap();
                let (addr, root) = serve_tls(hub.clone()).await;
                Server { hub, addr, root: Some(root) }
            }
        }
    }

    /// The origin a browser on this server's pages would send, and the URLs' base.
    fn origin(&self) -> String {
        match self.root {
            None => format!("http://localhost:{}", self.addr.port()),
            Some(_) => format!("https://localhost:{}", self.addr.port()),
        }
    }

    /// The URL of a WebSocket endpoint.
    fn ws_url(&self, path: &str) -> String {
        match self.root {
            None => format!("ws://localhost:{}{path}", self.addr.port()),
            Some(_) => format!("wss://localhost:{}{path}", self.addr.port()),
        }
    }

    /// A new HTTP/2 connection to the hub.
    async fn h2(&self) -> H2 {
        let tcp = TcpStream::connect(self.addr).await.unwrap();
        let send = match &self.root {
            None => handshake(tcp).await,
            Some(root) => {
                let mut roots = volley::tls::rustls::RootCertStore::empty();
                roots.add(root.clone()).unwrap();
                let connector = TlsConnector::from(volley::http::h2_client_config(roots));
                let name = volley::tls::ServerName::try_from("localhost").unwrap();
                let tls = connector.connect(name, tcp).await.unwrap();
                assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "ALPN chose h2");
                handshake(tls).await
            }
        };
        H2 { send, origin: self.origin() }
    }
}

/// Serves `hub` over TLS as `volley serve` does with a certificate: HTTP/1.1 or
/// HTTP/2 as ALPN decides, every request through the hub's router.
async fn serve_tls(hub: Hub) -> (SocketAddr, CertificateDer<'static>) {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = generated.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(generated.signing_key.serialize_der().into());
    let config = volley::http::with_h2_alpn(volley::tls::server_config(vec![cert.clone()], key).unwrap());
    let acceptor = TlsAcceptor::from(config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = volley_hub::router(hub);
    let builder = Arc::new(volley_hub::transport::http::http_builder());
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = listener.accept().await.unwrap();
            let (acceptor, app, builder) = (acceptor.clone(), app.clone(), builder.clone());
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    volley_hub::transport::http::serve_http(tls, peer, app, &builder).await;
                }
            });
        }
    });
    (addr, cert)
}

async fn handshake<S>(io: S) -> hyper::client::conn::http2::SendRequest<Full<Bytes>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io)).await.unwrap();
    tokio::spawn(conn);
    send
}

/// One HTTP/2 connection; its requests are streams of it.
#[derive(Clone)]
struct H2 {
    send: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    origin: String,
}

impl H2 {
    /// Sends a request on this connection, with the page's `Origin` (as a browser
    /// sends it on a `fetch` or an `EventSource`) unless `headers` name another;
    /// panics unless the answer is HTTP/2.
    async fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Response<Incoming> {
        let mut req = Request::builder().method(method).uri(format!("{}{path}", self.origin));
        if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("origin")) {
            req = req.header("origin", &self.origin);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::from(body.to_owned()))).unwrap();
        let mut send = self.send.clone();
        send.ready().await.unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.version(), Version::HTTP_2, "{method} {path}");
        resp
    }

    /// Opens a stream: a 200 with the headers of a stream no proxy may buffer.
    async fn stream(&self, method: &str, path: &str, body: &str) -> Stream {
        let resp = self.request(method, path, &[], body).await;
        assert_eq!(resp.status(), 200, "{method} {path}");
        assert_unbuffered(&resp, path);
        Stream { body: resp.into_body(), text: String::new(), seen: 0 }
    }

    /// A whole response: its status and body.
    async fn call(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
        let resp = self.request(method, path, headers, body).await;
        let status = resp.status().as_u16();
        let body = tokio::time::timeout(Duration::from_secs(40), resp.into_body().collect())
            .await
            .expect("a whole body")
            .unwrap()
            .to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    /// Publishes `data` to `channel` through the server API, on this connection.
    async fn publish(&self, channel: &str, data: Value) {
        let body = json!({"channel": channel, "data": data}).to_string();
        let (status, reply) = self
            .call("POST", "/api/publish", &[("x-api-key", API_KEY), ("content-type", "application/json")], &body)
            .await;
        assert_eq!(status, 200, "{reply}");
        assert!(reply.contains("\"result\""), "{reply}");
    }

    /// Sends commands to an emulation session through `/emulation`.
    async fn emulate(&self, session: &Value, command: Value) {
        let body = json!({
            "session": session["session"], "node": session["node"], "data": command.to_string(),
        });
        let (status, reply) =
            self.call("POST", "/emulation", &[("content-type", "application/json")], &body.to_string()).await;
        assert_eq!(status, 204, "{reply}");
    }
}

/// The headers of a response that streams: neither proxies nor caches may hold it
/// back, and it carries none of the fields HTTP/2 forbids.
fn assert_unbuffered<B>(resp: &Response<B>, what: &str) {
    let h = resp.headers();
    let cache = h.get("cache-control").and_then(|v| v.to_str().ok()).unwrap_or("");
    assert!(cache.contains("no-cache"), "{what}: cache-control {cache:?}");
    assert_eq!(h.get("x-accel-buffering").map(|v| v.as_bytes()), Some(&b"no"[..]), "{what}: x-accel-buffering");
    if resp_is_h2(resp) {
        for name in ["connection", "transfer-encoding", "keep-alive", "proxy-connection", "upgrade"] {
            assert!(!h.contains_key(name), "{what}: {name} on an HTTP/2 response");
        }
    }
}

fn resp_is_h2<B>(resp: &Response<B>) -> bool {
    resp.version() == Version::HTTP_2
}

/// The body of a streaming response, read as it comes.
struct Stream {
    body: Incoming,
    text: String,
    /// How much of `text` the test has looked at.
    seen: usize,
}

impl Stream {
    /// What comes up to and including the next `needle` (10 s at most).
    async fn until(&mut self, needle: &str) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(i) = self.text[self.seen..].find(needle) {
                let end = self.seen + i + needle.len();
                let got = self.text[self.seen..end].to_owned();
                self.seen = end;
                return got;
            }
            let frame = tokio::time::timeout_at(deadline, self.body.frame())
                .await
                .unwrap_or_else(|_| panic!("no {needle:?} in {:?}", &self.text[self.seen..]))
                .unwrap_or_else(|| panic!("the stream ended before {needle:?}: {:?}", &self.text[self.seen..]))
                .unwrap();
            if let Ok(data) = frame.into_data() {
                self.text.push_str(std::str::from_utf8(&data).unwrap());
            }
        }
    }

    /// The next SSE event's `data` (heartbeats and comments skipped over) that holds
    /// `needle`.
    async fn event_with(&mut self, needle: &str) -> Value {
        loop {
            let event = self.until("\n\n").await;
            if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) {
                if data.contains(needle) {
                    return serde_json::from_str(data).unwrap();
                }
            }
        }
    }

    /// The next line holding `needle`.
    async fn line_with(&mut self, needle: &str) -> Value {
        loop {
            let line = self.until("\n").await;
            if line.contains(needle) {
                return serde_json::from_str(line.trim_end()).unwrap();
            }
        }
    }
}

fn encoded(v: &Value) -> String {
    v.to_string().bytes().map(|b| format!("%{b:02X}")).collect()
}

/// The next message of a WebSocket holding `needle` (pings and others skipped).
async fn ws_message_with<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    ws: &mut volley::WebSocket<S>,
    needle: &str,
) -> Value {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.recv())
            .await
            .unwrap_or_else(|_| panic!("no message with {needle:?}"))
            .expect("the connection is open")
            .unwrap();
        if let Message::Text(t) = msg {
            for line in t.as_str().split('\n') {
                if line.contains(needle) {
                    return serde_json::from_str(line).unwrap();
                }
            }
        }
    }
}

/// Waits for the hub's heartbeat on a WebSocket: a message that is an empty JSON
/// object (a Centrifugo ping).
async fn ws_ping<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(ws: &mut volley::WebSocket<S>) {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.recv())
            .await
            .expect("a heartbeat")
            .expect("the connection is open")
            .unwrap();
        if matches!(&msg, Message::Text(t) if t.as_str().split('\n').any(|l| l == "{}")) {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_endpoints_run_over_http2_extended_connect() {
    for mode in MODES {
        let server = Server::start(mode).await;
        let client = |path: &str| {
            // With the page's Origin: the same-host check reads HTTP/2's :authority.
            let builder = volley::ClientBuilder::new(server.ws_url(path)).header("origin", &server.origin());
            match &server.root {
                Some(root) => builder.root_certificate(root.clone()),
                None => builder,
            }
        };
        let (mut ws, resp) = client("/connection/websocket").connect_h2().await.unwrap();
        assert_eq!(resp.version(), Version::HTTP_2, "{mode:?}");
        assert_eq!(ws.info().http_version(), Version::HTTP_2, "{mode:?}");
        ws.send(Message::text(json!({"id": 1, "connect": {}}).to_string())).await.unwrap();
        let connect = ws_message_with(&mut ws, "\"id\":1").await;
        assert!(connect["connect"]["client"].is_string(), "{mode:?}: {connect}");
        ws.send(Message::text(json!({"id": 2, "subscribe": {"channel": "open:ws"}}).to_string())).await.unwrap();
        let sub = ws_message_with(&mut ws, "\"id\":2").await;
        assert!(sub.get("error").is_none(), "{mode:?}: {sub}");

        let (mut uni, resp) = client("/connection/uni_websocket?channel=open:ws").connect_h2().await.unwrap();
        assert_eq!(resp.version(), Version::HTTP_2, "{mode:?}");
        let hello = ws_message_with(&mut uni, "\"connect\"").await;
        assert_eq!(hello["connect"]["channels"], json!(["open:ws"]), "{mode:?}");

        // Idle, both get the hub's heartbeat: an empty JSON object (a Centrifugo ping).
        ws_ping(&mut ws).await;
        ws.send(Message::text("{}")).await.unwrap();
        ws_ping(&mut uni).await;

        server.h2().await.publish("open:ws", json!({"over": "h2"})).await;
        let push = ws_message_with(&mut ws, "\"pub\"").await;
        assert_eq!(push["push"]["pub"]["data"], json!({"over": "h2"}), "{mode:?}: {push}");
        let pushed = ws_message_with(&mut uni, "\"pub\"").await;
        assert_eq!(pushed["pub"]["data"], json!({"over": "h2"}), "{mode:?}: {pushed}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_http_transport_round_trips_on_one_http2_connection() {
    for mode in MODES {
        let server = Server::start(mode).await;
        let h2 = server.h2().await;
        let ch = "open:all";

        // Bidirectional SSE: connect in the query, subscribe through /emulation.
        let connect = json!({"id": 1, "connect": {}});
        let mut sse = h2.stream("GET", &format!("/connection/sse?cf_connect={}", encoded(&connect)), "").await;
        let reply = sse.event_with("\"id\":1").await;
        h2.emulate(&reply["connect"], json!({"id": 2, "subscribe": {"channel": ch}})).await;
        let sub = sse.event_with("\"id\":2").await;
        assert!(sub.get("error").is_none(), "{mode:?}: {sub}");

        // The HTTP stream: connect as the body, subscribe through /emulation.
        let mut stream = h2.stream("POST", "/connection/http_stream", &connect.to_string()).await;
        let reply = stream.line_with("\"id\":1").await;
        h2.emulate(&reply["connect"], json!({"id": 2, "subscribe": {"channel": ch}})).await;
        let sub = stream.line_with("\"id\":2").await;
        assert!(sub.get("error").is_none(), "{mode:?}: {sub}");

        // The unidirectional streams.
        let mut uni_sse = h2.stream("GET", &format!("/connection/uni_sse?channel={ch}"), "").await;
        uni_sse.event_with("\"connect\"").await;
        let mut uni_stream = h2.stream("GET", &format!("/connection/uni_http_stream?channel={ch}"), "").await;
        uni_stream.line_with("\"connect\"").await;

        // A long poll from the current position waits for the publication, while
        // the publish goes on the same connection.
        let (status, first) = h2.call("GET", &format!("/connection/uni_long_poll?channel={ch}"), &[], "").await;
        assert_eq!(status, 200, "{mode:?}: {first}");
        let since = serde_json::from_str::<Value>(&first).unwrap()["position"].as_str().unwrap().to_owned();
        let poll = {
            let h2 = h2.clone();
            let path = format!("/connection/uni_long_poll?channel={ch}&since={since}");
            tokio::spawn(async move { h2.call("GET", &path, &[], "").await })
        };
        // The poll's session is subscribed once its position is known: wait for the
        // hub to count it among the channel's subscribers (four streams, one poll).
        let hub = server.hub.clone();
        tokio::time::timeout(Duration::from_secs(10), async {
            while hub.num_subscriptions() < 5 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the long poll subscribed");

        h2.publish(ch, json!({"n": 1})).await;
        let data = json!({"n": 1});
        assert_eq!(sse.event_with("\"pub\"").await["push"]["pub"]["data"], data, "{mode:?} sse");
        assert_eq!(stream.line_with("\"pub\"").await["push"]["pub"]["data"], data, "{mode:?} http_stream");
        assert_eq!(uni_sse.event_with("\"pub\"").await["pub"]["data"], data, "{mode:?} uni_sse");
        assert_eq!(uni_stream.line_with("\"pub\"").await["pub"]["data"], data, "{mode:?} uni_http_stream");
        let (status, polled) = poll.await.unwrap();
        assert_eq!(status, 200, "{mode:?}: {polled}");
        let polled: Value = serde_json::from_str(&polled).unwrap();
        assert_eq!(polled["publications"][0]["pub"]["data"], data, "{mode:?} uni_long_poll: {polled}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_sse_streams_share_one_http2_connection() {
    // More than the six connections a browser opens to one host over HTTP/1.1.
    const STREAMS: usize = 12;
    for mode in MODES {
        let server = Server::start(mode).await;
        let h2 = server.h2().await;
        let ch = "open:many";
        let mut streams = Vec::new();
        for _ in 0..STREAMS {
            let mut s = h2.stream("GET", &format!("/connection/uni_sse?channel={ch}"), "").await;
            s.event_with("\"connect\"").await;
            streams.push(s);
        }
        let connect = json!({"id": 1, "connect": {}});
        for _ in 0..STREAMS {
            let mut s = h2.stream("GET", &format!("/connection/sse?cf_connect={}", encoded(&connect)), "").await;
            let reply = s.event_with("\"id\":1").await;
            h2.emulate(&reply["connect"], json!({"id": 2, "subscribe": {"channel": ch}})).await;
            s.event_with("\"id\":2").await;
            streams.push(s);
        }
        assert_eq!(server.hub.num_subscriptions(), 2 * STREAMS, "{mode:?}");
        h2.publish(ch, json!({"to": "all"})).await;
        for (i, s) in streams.iter_mut().enumerate() {
            let event = s.event_with("\"pub\"").await;
            let publication = if i < STREAMS { &event["pub"] } else { &event["push"]["pub"] };
            assert_eq!(publication["data"], json!({"to": "all"}), "{mode:?} stream {i}: {event}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_streams_carry_heartbeats_over_http2() {
    for mode in MODES {
        let server = Server::start(mode).await;
        let h2 = server.h2().await;
        let connect = json!({"id": 1, "connect": {}});

        // SSE: an event the client reads as a Centrifugo ping.
        let mut sse = h2.stream("GET", &format!("/connection/sse?cf_connect={}", encoded(&connect)), "").await;
        sse.event_with("\"id\":1").await;
        assert_eq!(sse.until("\n\n").await, "data: {}\n\n", "{mode:?} sse");

        // The HTTP stream: a line with the ping.
        let mut stream = h2.stream("POST", "/connection/http_stream", &connect.to_string()).await;
        stream.line_with("\"id\":1").await;
        assert_eq!(stream.until("\n").await, "{}\n", "{mode:?} http_stream");

        // Unidirectional SSE: Centrifugo's ping event (onmessage does not see it).
        let mut uni_sse = h2.stream("GET", "/connection/uni_sse?channel=open:idle", "").await;
        uni_sse.event_with("\"connect\"").await;
        assert_eq!(uni_sse.until("\n\n").await, "event: ping\ndata:\n\n", "{mode:?} uni_sse");

        // The unidirectional HTTP stream, opened as Centrifugo's clients do (the connect
        // request POSTed): a JSON null, Centrifugo's ping there.
        let body = json!({"subs": {"open:idle": {}}}).to_string();
        let mut uni_stream = h2.stream("POST", "/connection/uni_http_stream", &body).await;
        uni_stream.line_with("\"connect\"").await;
        assert_eq!(uni_stream.until("\n").await, "null\n", "{mode:?} uni_http_stream");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_checks_use_the_authority_of_http2_requests() {
    for mode in MODES {
        let server = Server::start(mode).await;
        let h2 = server.h2().await;
        // HTTP/2 has no Host field: a page of this server (its origin is the
        // request's :authority) may open a stream, and a page elsewhere may not.
        let connect = json!({"id": 1, "connect": {}}).to_string();
        let mut stream = h2.stream("POST", "/connection/http_stream", &connect).await;
        stream.line_with("\"id\":1").await;
        let foreign = [("origin", "https://elsewhere.example")];
        let resp = h2.request("POST", "/connection/http_stream", &foreign, &connect).await;
        assert_eq!(resp.status(), 403, "{mode:?}");
        let resp = h2.request("OPTIONS", "/emulation", &[], "").await;
        assert_eq!(resp.status(), 204, "{mode:?}");
    }
}

/// The same headers on HTTP/1.1, each stream on a connection of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_responses_tell_proxies_not_to_buffer_over_http1_too() {
    let (_hub, addr) = common::serve(config()).await;
    let connect = json!({"id": 1, "connect": {}});
    let sse = format!("/connection/sse?cf_connect={}", encoded(&connect));
    let requests = [
        ("GET", sse.as_str(), String::new()),
        ("POST", "/connection/http_stream", connect.to_string()),
        ("GET", "/connection/uni_sse?channel=open:h1", String::new()),
        ("GET", "/connection/uni_http_stream?channel=open:h1", String::new()),
    ];
    for (method, path, body) in requests {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await.unwrap();
        tokio::spawn(conn);
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", addr.to_string())
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!((resp.version(), resp.status().as_u16()), (Version::HTTP_11, 200), "{path}");
        assert_unbuffered(&resp, path);
        let mut s = Stream { body: resp.into_body(), text: String::new(), seen: 0 };
        s.until("connect").await;
    }
}
