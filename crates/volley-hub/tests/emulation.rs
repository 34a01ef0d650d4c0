//! The bidirectional emulation transports over plain HTTP/1.1: a stream opened with the
//! connect command (`/connection/http_stream`, `/connection/sse`) whose connect result
//! names the session and the node, commands POSTed to `/emulation`, and the statuses a
//! client relies on for bad input (400, 404, 413), CORS, and a client that never reads
//! its stream; long polling (`/connection/long_poll`): connect, polls that take what is
//! buffered, expiry of a session nobody polls, the buffer's bound.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use common::serve;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use volley_hub::broker::{
    BoxFuture, Broker, BrokerError, BrokerEvents, HistoryQuery, HistoryResult, MemoryBroker, PresenceStats,
    PublishOptions, PublishResult,
};
use volley_hub::protocol::{ClientInfo, Publication};
use volley_hub::{Hub, HubConfig};

fn config() -> HubConfig {
    serde_json::from_value(json!({
        "client": {
            "allow_anonymous_connect_without_token": true,
            "allowed_origins": ["https://app.example"],
            "queue_max_bytes": 65536,
        },
        "channel": {
            "namespaces": [
                {"name": "open", "allow_subscribe_for_anonymous": true, "allow_publish_for_subscriber": true},
                {"name": "room", "allow_subscribe_for_anonymous": true, "presence": true},
            ]
        },
        "emulation": {"max_request_body_size": 1024},
        "long_poll": {"max_request_body_size": 1024, "timeout": "1s", "session_ttl": "5s"},
        "http_stream": {"max_request_body_size": 1024},
        "sse": {"max_request_body_size": 1024},
    }))
    .unwrap()
}

/// Sends a request; the stream, to read the response from.
async fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    s
}

/// Reads from `s` into `buf` until it holds `needle` (5 s at most).
async fn read_until(s: &mut TcpStream, buf: &mut Vec<u8>, needle: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !String::from_utf8_lossy(buf).contains(needle) {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, s.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("no {needle:?} in {:?}", String::from_utf8_lossy(buf)))
            .unwrap();
        assert!(n > 0, "the stream ended before {needle:?}: {:?}", String::from_utf8_lossy(buf));
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A whole response's status line and headers (and what came with them).
async fn head(mut s: TcpStream) -> String {
    let mut buf = Vec::new();
    read_until(&mut s, &mut buf, "\r\n\r\n").await;
    String::from_utf8_lossy(&buf).into_owned()
}

fn status(head: &str) -> u16 {
    head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("no status in {head:?}"))
}

/// POSTs to `/emulation` and returns the status.
async fn emulate(addr: SocketAddr, body: Value) -> u16 {
    let body = body.to_string();
    status(
        &head(request(addr, "POST", "/emulation", &[("Content-Type", "application/json")], body.as_bytes()).await)
            .await,
    )
}

/// Opens an HTTP stream with an anonymous connect: the stream, what was read, the
/// session and the node.
async fn open_stream(addr: SocketAddr) -> (TcpStream, Vec<u8>, String, String) {
    let connect = json!({"id": 1, "connect": {}}).to_string();
    let mut s =
        request(addr, "POST", "/connection/http_stream", &[("Content-Type", "application/json")], connect.as_bytes())
            .await;
    let mut buf = Vec::new();
    read_until(&mut s, &mut buf, "\"node\"").await;
    read_until(&mut s, &mut buf, "}}\n").await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let line = text.lines().find(|l| l.contains("\"connect\"")).expect("the connect reply");
    let reply: Value = serde_json::from_str(line).unwrap();
    let session = reply["connect"]["session"].as_str().unwrap().to_owned();
    let node = reply["connect"]["node"].as_str().unwrap().to_owned();
    assert!(!session.is_empty() && !node.is_empty(), "{reply}");
    (s, buf, session, node)
}

#[tokio::test]
async fn http_stream_carries_replies_and_pushes_of_commands_sent_to_emulation() {
    let (hub, addr) = serve(config()).await;
    let (mut s, mut buf, session, node) = open_stream(addr).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    assert!(text.contains("x-accel-buffering: no"), "{text}");
    assert!(text.contains("cache-control: private, no-cache"), "{text}");
    assert_eq!(node, hub.node());

    // Two commands in one request, as the client batches them.
    let data = format!(
        "{}\n{}",
        json!({"id": 2, "subscribe": {"channel": "open:news"}}),
        json!({"id": 3, "rpc": {"method": "nothing"}})
    );
    assert_eq!(emulate(addr, json!({"session": session, "node": node, "data": data})).await, 204);
    read_until(&mut s, &mut buf, "{\"id\":2,\"subscribe\"").await;
    read_until(&mut s, &mut buf, "{\"id\":3,\"error\":{\"code\":104").await;

    hub.publish("open:news", Bytes::from_static(b"{\"n\":1}"), Default::default()).await.unwrap();
    read_until(&mut s, &mut buf, "{\"push\":{\"channel\":\"open:news\",\"pub\":{\"data\":{\"n\":1}").await;

    // The client goes away: its session is gone, and a late command is told so.
    drop(s);
    for _ in 0..50 {
        if hub.num_clients() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(hub.num_clients(), 0);
    let late = json!({"session": session, "node": node, "data": json!({"id": 4, "rpc": {}}).to_string()});
    assert_eq!(emulate(addr, late).await, 404);
}

#[tokio::test]
async fn sse_streams_events_from_a_get_with_cf_connect() {
    let (_hub, addr) = serve(config()).await;
    let connect = json!({"id": 1, "connect": {}}).to_string();
    let query: String = connect.bytes().map(|b| format!("%{b:02X}")).collect();
    let mut s = request(addr, "GET", &format!("/connection/sse?cf_connect={query}"), &[], b"").await;
    let mut buf = Vec::new();
    read_until(&mut s, &mut buf, "\n\n").await;
    read_until(&mut s, &mut buf, "}}\n\n").await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("content-type: text/event-stream"), "{text}");
    let event = text.lines().find(|l| l.starts_with("data: ")).expect("a data event");
    let reply: Value = serde_json::from_str(&event["data: ".len()..]).unwrap();
    let session = reply["connect"]["session"].as_str().unwrap();
    let node = reply["connect"]["node"].as_str().unwrap();
    let data = json!({"id": 2, "subscribe": {"channel": "open:news"}}).to_string();
    assert_eq!(emulate(addr, json!({"session": session, "node": node, "data": data})).await, 204);
    read_until(&mut s, &mut buf, "data: {\"id\":2,\"subscribe\"").await;

    // No cf_connect, or one that is not a connect: 400.
    assert_eq!(status(&head(request(addr, "GET", "/connection/sse", &[], b"").await).await), 400);
    let rpc: String = json!({"id": 1, "rpc": {}}).to_string().bytes().map(|b| format!("%{b:02X}")).collect();
    let r = request(addr, "GET", &format!("/connection/sse?cf_connect={rpc}"), &[], b"").await;
    assert_eq!(status(&head(r).await), 400);
    // Over the limit: 413.
    let big = "x".repeat(2000);
    assert_eq!(
        status(&head(request(addr, "GET", &format!("/connection/sse?cf_connect={big}"), &[], b"").await).await),
        413
    );
}

#[tokio::test]
async fn emulation_answers_bad_input_with_the_status_the_client_expects() {
    let (hub, addr) = serve(config()).await;
    let (_s, _buf, session, node) = open_stream(addr).await;
    let rpc = json!({"id": 9, "rpc": {}}).to_string();

    // An unknown session on this node, and a node the broker does not know: 404.
    assert_eq!(emulate(addr, json!({"session": "nobody", "node": node, "data": rpc})).await, 404);
    assert_eq!(emulate(addr, json!({"session": session, "node": "elsewhere", "data": rpc})).await, 404);
    // Not an emulation request, or no session: 400.
    assert_eq!(emulate(addr, json!({"nothing": true})).await, 400);
    assert_eq!(emulate(addr, json!({"session": "", "node": node, "data": rpc})).await, 400);
    let r = request(addr, "POST", "/emulation", &[("Content-Type", "application/json")], b"{not json").await;
    assert_eq!(status(&head(r).await), 400);
    // Data that is not commands: 400, and the session stays.
    assert_eq!(emulate(addr, json!({"session": session, "node": node, "data": "{nope"})).await, 400);
    assert_eq!(hub.num_clients(), 1);
    // Over emulation.max_request_body_size: 413.
    let big = "x".repeat(2000);
    assert_eq!(emulate(addr, json!({"session": session, "node": node, "data": big})).await, 413);
    // A Protobuf body that is not an EmulationRequest: 400.
    let r = request(addr, "POST", "/emulation", &[("Content-Type", "application/octet-stream")], b"\xff\xff\xff").await;
    assert_eq!(status(&head(r).await), 400);

    // The stream's connect: not a connect, malformed, too big.
    for body in [
        json!({"id": 1, "rpc": {}}).to_string(),
        "{".into(),
        format!("{{\"id\":1,\"connect\":{{\"token\":\"{big}\"}}}}"),
    ] {
        let r =
            request(addr, "POST", "/connection/http_stream", &[("Content-Type", "application/json")], body.as_bytes())
                .await;
        let code = status(&head(r).await);
        assert!(code == 400 || (code == 413 && body.len() > 1024), "{code} for {body:.40}");
    }
}

#[tokio::test]
async fn preflight_and_cors_follow_the_allowed_origins() {
    let (_hub, addr) = serve(config()).await;
    let ask = |origin: &'static str| async move {
        head(
            request(
                addr,
                "OPTIONS",
                "/emulation",
                &[("Origin", origin), ("Access-Control-Request-Method", "POST")],
                b"",
            )
            .await,
        )
        .await
    };
    let ok = ask("https://app.example").await;
    assert_eq!(status(&ok), 204, "{ok}");
    assert!(ok.contains("access-control-allow-origin: https://app.example"), "{ok}");
    assert!(ok.contains("access-control-allow-credentials: true"), "{ok}");
    assert!(ok.to_ascii_lowercase().contains("access-control-allow-headers: content-type"), "{ok}");
    assert_eq!(status(&ask("https://evil.example").await), 403);

    // The stream itself, from an allowed origin and from another.
    let connect = json!({"id": 1, "connect": {}}).to_string();
    let h = [("Content-Type", "application/json"), ("Origin", "https://app.example")];
    let r = head(request(addr, "POST", "/connection/http_stream", &h, connect.as_bytes()).await).await;
    assert!(r.starts_with("HTTP/1.1 200") && r.contains("access-control-allow-origin: https://app.example"), "{r}");
    let h = [("Content-Type", "application/json"), ("Origin", "https://evil.example")];
    assert_eq!(
        status(&head(request(addr, "POST", "/connection/http_stream", &h, connect.as_bytes()).await).await),
        403
    );
}

#[tokio::test]
async fn a_client_that_never_reads_its_stream_is_dropped() {
    let (hub, addr) = serve(config()).await;
    let (s, _buf, session, node) = open_stream(addr).await;
    let data = json!({"id": 2, "subscribe": {"channel": "open:flood"}}).to_string();
    assert_eq!(emulate(addr, json!({"session": session, "node": node, "data": data})).await, 204);
    // The client reads nothing more; the socket's buffers fill, then its 64 KiB queue.
    let payload = Bytes::from(format!("{{\"pad\":\"{}\"}}", "x".repeat(8192)));
    for _ in 0..2000 {
        hub.publish("open:flood", payload.clone(), Default::default()).await.unwrap();
        if hub.num_clients() == 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    for _ in 0..100 {
        if hub.num_clients() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(hub.num_clients(), 0, "the slow reader was disconnected");
    drop(s);
}

/// Nodes whose brokers reach each other for control messages only (each has its own
/// memory broker otherwise): enough to see a command forwarded to its session's node.
struct Linked {
    inner: MemoryBroker,
    events: OnceLock<Arc<dyn BrokerEvents>>,
    nodes: Arc<Mutex<HashMap<String, Arc<Linked>>>>,
}

impl Broker for Linked {
    fn set_events(&self, events: Arc<dyn BrokerEvents>) {
        let _ = self.events.set(events.clone());
        self.inner.set_events(events);
    }
    fn subscribe(&self, ch: &str) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.inner.subscribe(ch)
    }
    fn unsubscribe(&self, ch: &str) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.inner.unsubscribe(ch)
    }
    fn publish(
        &self,
        ch: &str,
        p: Publication,
        o: PublishOptions,
    ) -> BoxFuture<'_, Result<PublishResult, BrokerError>> {
        self.inner.publish(ch, p, o)
    }
    fn publish_join(&self, ch: &str, info: ClientInfo) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.inner.publish_join(ch, info)
    }
    fn publish_leave(&self, ch: &str, info: ClientInfo) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.inner.publish_leave(ch, info)
    }
    fn history(&self, ch: &str, q: HistoryQuery) -> BoxFuture<'_, Result<HistoryResult, BrokerError>> {
        self.inner.history(ch, q)
    }
    fn remove_history(&self, ch: &str) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.inner.remove_history(ch)
    }
    fn add_presence(&self, ch: &str, info: ClientInfo, ttl: Duration) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.inner.add_presence(ch, info, ttl)
    }
    fn remove_presence(&self, ch: &str, client: &str, user: &str) -> BoxFuture<'_, Result<(), BrokerError>> {
        self.inner.remove_presence(ch, client, user)
    }
    fn presence(&self, ch: &str) -> BoxFuture<'_, Result<HashMap<String, ClientInfo>, BrokerError>> {
        self.inner.presence(ch)
    }
    fn presence_stats(&self, ch: &str) -> BoxFuture<'_, Result<PresenceStats, BrokerError>> {
        self.inner.presence_stats(ch)
    }
    fn send_control(&self, node: &str, message: Bytes) -> BoxFuture<'_, Result<(), BrokerError>> {
        let to = self.nodes.lock().unwrap().get(node).cloned();
        Box::pin(async move {
            let to = to.ok_or_else(|| BrokerError("unknown node".into()))?;
            to.events.get().expect("events set").control(message);
            Ok(())
        })
    }
}

#[tokio::test]
async fn a_command_that_lands_on_another_node_is_forwarded_to_its_session() {
    let hubs = linked_pair().await;
    let (a, b) = (hubs[0].1, hubs[1].1);
    let (mut s, mut buf, session, node) = open_stream(a).await;
    assert_eq!(node, hubs[0].0.node());
    // Sent to the other node (no sticky sessions): forwarded, answered on the stream.
    let data = json!({"id": 2, "subscribe": {"channel": "open:x"}}).to_string();
    assert_eq!(emulate(b, json!({"session": session, "node": node, "data": data})).await, 204);
    read_until(&mut s, &mut buf, "{\"id\":2,\"subscribe\"").await;
    // The same as a Protobuf EmulationRequest: fields node = 1, session = 2, data = 3.
    let data = json!({"id": 3, "rpc": {"method": "m"}}).to_string();
    let mut pb = Vec::new();
    for (tag, v) in [(0x0a, node.as_bytes()), (0x12, session.as_bytes()), (0x1a, data.as_bytes())] {
        pb.push(tag);
        pb.push(v.len() as u8);
        pb.extend_from_slice(v);
    }
    let r = request(b, "POST", "/emulation", &[("Content-Type", "application/octet-stream")], &pb).await;
    assert_eq!(status(&head(r).await), 204);
    read_until(&mut s, &mut buf, "{\"id\":3,\"error\":{\"code\":104").await;
    // A node no broker knows: 404.
    assert_eq!(emulate(b, json!({"session": session, "node": "gone", "data": "{}"})).await, 404);
}

/// Two hubs whose brokers reach each other for control messages.
async fn linked_pair() -> Vec<(Hub, SocketAddr)> {
    let nodes = Arc::new(Mutex::new(HashMap::new()));
    let mut hubs = Vec::new();
    for _ in 0..2 {
        let broker = Arc::new(Linked { inner: MemoryBroker::new(), events: OnceLock::new(), nodes: nodes.clone() });
        let hub = Hub::with_broker(config(), broker.clone()).unwrap();
        nodes.lock().unwrap().insert(hub.node().to_owned(), broker);
        let addr = common::serve_hub(hub.clone()).await;
        hubs.push((hub, addr));
    }
    hubs
}

#[tokio::test]
async fn a_poll_that_lands_on_another_node_is_forwarded_to_its_session() {
    let hubs = linked_pair().await;
    let (a, b) = (hubs[0].1, hubs[1].1);
    let (_first, session, node) = long_poll_connect(a).await;
    assert_eq!(node, hubs[0].0.node());
    // Commands and polls both reach b (no sticky sessions): the session on a answers.
    let data = json!({"id": 2, "subscribe": {"channel": "open:x"}}).to_string();
    assert_eq!(emulate(b, json!({"session": session, "node": node, "data": data})).await, 204);
    let got = poll_until(b, &session, &node, "{\"id\":2,\"subscribe\"").await;
    assert!(!got.contains("\"connect\""), "the connect reply was taken already: {got}");
    // A poll forwarded while it waits gets what comes meanwhile.
    let waiting = tokio::spawn({
        let (session, node) = (session.clone(), node.clone());
        async move { poll_until(b, &session, &node, "\"pub\":{\"data\":{\"n\":1}").await }
    });
    hubs[0].0.publish("open:x", Bytes::from_static(b"{\"n\":1}"), Default::default()).await.unwrap();
    waiting.await.unwrap();
    // Nothing more: 204, as from the session's own node.
    assert_eq!(poll(b, &session, &node).await.status, 204);
    // A session its node does not have: 404, from either node.
    assert_eq!(poll(b, "nobody", &node).await.status, 404);
    assert_eq!(poll(a, "nobody", &node).await.status, 404);
    // A node no broker knows: 404.
    assert_eq!(poll(b, &session, "gone").await.status, 404);
}

#[tokio::test]
async fn streams_count_against_the_connections_per_ip() {
    let mut c = config();
    c.client.ip_connection_limit = 1;
    let (hub, addr) = serve(c).await;
    let (_first, _buf, _session, _node) = open_stream(addr).await;
    let connect = json!({"id": 1, "connect": {}}).to_string();
    let mut s =
        request(addr, "POST", "/connection/http_stream", &[("Content-Type", "application/json")], connect.as_bytes())
            .await;
    let mut buf = Vec::new();
    // Refused with the disconnect push 3504, then the stream ends.
    read_until(&mut s, &mut buf, "{\"push\":{\"disconnect\":{\"code\":3504").await;
    // The body's last chunk (the connection itself may stay for another request).
    read_until(&mut s, &mut buf, "\r\n0\r\n\r\n").await;
    assert_eq!(hub.num_clients(), 1);
}

/// A whole response, read to its end (the request asked to close the connection).
struct Answer {
    status: u16,
    head: String,
    body: String,
}

/// Sends a request with `Connection: close` and reads the whole response.
async fn exchange(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
    let mut h = headers.to_vec();
    h.push(("Connection", "close"));
    let mut s = request(addr, method, path, &h, body).await;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await.expect("the response ended").unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no head in {text:?}"));
    Answer { status: status(head), head: head.to_owned(), body: body.to_owned() }
}

/// Starts a long-polling session with an anonymous connect: the answer, the session
/// and the node.
async fn long_poll_connect(addr: SocketAddr) -> (Answer, String, String) {
    let connect = json!({"id": 1, "connect": {}}).to_string();
    let a =
        exchange(addr, "POST", "/connection/long_poll", &[("Content-Type", "application/json")], connect.as_bytes())
            .await;
    assert_eq!(a.status, 200, "{}{}", a.head, a.body);
    let line = a.body.lines().find(|l| l.contains("\"connect\"")).expect("the connect reply");
    let reply: Value = serde_json::from_str(line).unwrap();
    let session = reply["connect"]["session"].as_str().unwrap().to_owned();
    let node = reply["connect"]["node"].as_str().unwrap().to_owned();
    assert!(!session.is_empty() && !node.is_empty(), "{reply}");
    (a, session, node)
}

/// Polls a long-polling session.
async fn poll(addr: SocketAddr, session: &str, node: &str) -> Answer {
    exchange(addr, "GET", &format!("/connection/long_poll?session={session}&node={node}"), &[], b"").await
}

/// Polls until the answer holds `needle`: what was polled, all answers joined.
async fn poll_until(addr: SocketAddr, session: &str, node: &str, needle: &str) -> String {
    let mut got = String::new();
    for _ in 0..20 {
        let a = poll(addr, session, node).await;
        assert!(a.status == 200 || a.status == 204, "{}{}", a.head, a.body);
        got.push_str(&a.body);
        if got.contains(needle) {
            return got;
        }
    }
    panic!("no {needle:?} in {got:?}");
}

/// Waits until `f` holds (5 s at most).
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..250 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never: {what}");
}

#[tokio::test]
async fn long_poll_takes_replies_and_pushes_of_commands_sent_to_emulation() {
    let (hub, addr) = serve(config()).await;
    let (first, session, node) = long_poll_connect(addr).await;
    assert_eq!(node, hub.node());
    assert!(first.head.contains("content-type: application/json"), "{}", first.head);
    assert!(first.head.contains("cache-control: private, no-cache"), "{}", first.head);

    // Two commands in one request; both replies come with the next poll.
    let data = format!(
        "{}\n{}",
        json!({"id": 2, "subscribe": {"channel": "open:news"}}),
        json!({"id": 3, "rpc": {"method": "nothing"}})
    );
    assert_eq!(emulate(addr, json!({"session": session, "node": node, "data": data})).await, 204);
    let got = poll_until(addr, &session, &node, "{\"id\":3,\"error\":{\"code\":104").await;
    assert!(got.contains("{\"id\":2,\"subscribe\""), "{got}");

    // A poll that waits gets the publication that comes meanwhile.
    let waiting = tokio::spawn({
        let (session, node) = (session.clone(), node.clone());
        async move { poll_until(addr, &session, &node, "\"pub\":{\"data\":{\"n\":1}").await }
    });
    hub.publish("open:news", Bytes::from_static(b"{\"n\":1}"), Default::default()).await.unwrap();
    let got = waiting.await.unwrap();
    assert!(got.contains("{\"push\":{\"channel\":\"open:news\",\"pub\":{\"data\":{\"n\":1}"), "{got}");

    // Several publications between polls all come with the next one, in order.
    for n in 2..5 {
        hub.publish("open:news", Bytes::from(format!("{{\"n\":{n}}}")), Default::default()).await.unwrap();
    }
    let got = poll_until(addr, &session, &node, "{\"n\":4}").await;
    let (i2, i3, i4) = (got.find("{\"n\":2}").unwrap(), got.find("{\"n\":3}").unwrap(), got.find("{\"n\":4}").unwrap());
    assert!(i2 < i3 && i3 < i4, "{got}");

    // Nothing buffered: the poll is answered 204 once its wait is over.
    assert_eq!(poll(addr, &session, &node).await.status, 204);
    assert_eq!(hub.num_clients(), 1);
}

#[tokio::test]
async fn a_long_poll_session_nobody_polls_expires_and_its_client_leaves() {
    let mut c = config();
    c.long_poll.session_ttl = Duration::from_millis(500);
    let (hub, addr) = serve(c).await;
    let (_first, session, node) = long_poll_connect(addr).await;
    // Subscribed while a poll is waiting: a session being polled does not expire.
    let waiting = tokio::spawn({
        let (session, node) = (session.clone(), node.clone());
        async move { poll_until(addr, &session, &node, "{\"id\":2,\"subscribe\"").await }
    });
    let data = json!({"id": 2, "subscribe": {"channel": "room:a"}}).to_string();
    assert_eq!(emulate(addr, json!({"session": session, "node": node, "data": data})).await, 204);
    waiting.await.unwrap();
    assert_eq!(hub.presence("room:a").await.unwrap().len(), 1);

    // No poll comes any more: the client is disconnected and leaves the presence.
    eventually("the client is gone", || hub.num_clients() == 0).await;
    assert!(hub.presence("room:a").await.unwrap().is_empty());
    let late = json!({"session": session, "node": node, "data": json!({"id": 3, "rpc": {}}).to_string()});
    assert_eq!(emulate(addr, late).await, 404);
    // Its buffer goes too, within another ttl.
    let mut gone = false;
    for _ in 0..50 {
        let a = poll(addr, &session, &node).await;
        if a.status == 404 {
            gone = true;
            break;
        }
        assert!(a.status == 200 || a.status == 204, "{}{}", a.head, a.body);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(gone, "a poll of the expired session is answered 404");
}

#[test]
fn a_long_poll_configuration_that_cannot_work_is_refused() {
    let mut c = config();
    c.long_poll.session_ttl = Duration::ZERO;
    let e = Hub::new(c).expect_err("refused").to_string();
    assert!(e.contains("long_poll.session_ttl"), "{e}");
    let mut c = config();
    c.long_poll.max_buffer_size = 0;
    let e = Hub::new(c).expect_err("refused").to_string();
    assert!(e.contains("long_poll.max_buffer_size"), "{e}");
    // Off, its keys do not matter.
    let mut c = config();
    c.long_poll.enabled = false;
    c.long_poll.session_ttl = Duration::ZERO;
    assert!(Hub::new(c).is_ok());
}

#[tokio::test]
async fn long_poll_answers_bad_input_with_the_documented_status() {
    let (_hub, addr) = serve(config()).await;
    let (_first, session, node) = long_poll_connect(addr).await;
    // No session: 400. An unknown one, or one of a node the broker does not know: 404.
    assert_eq!(exchange(addr, "GET", "/connection/long_poll", &[], b"").await.status, 400);
    assert_eq!(poll(addr, "nobody", &node).await.status, 404);
    let a = poll(addr, &session, "elsewhere").await;
    assert_eq!(a.status, 404);
    assert!(a.body.contains("unknown session"), "{}", a.body);
    // The connect: not a connect, malformed, too big.
    let h = [("Content-Type", "application/json")];
    let rpc = json!({"id": 1, "rpc": {}}).to_string();
    assert_eq!(exchange(addr, "POST", "/connection/long_poll", &h, rpc.as_bytes()).await.status, 400);
    assert_eq!(exchange(addr, "POST", "/connection/long_poll", &h, b"{").await.status, 400);
    let big = format!("{{\"id\":1,\"connect\":{{\"token\":\"{}\"}}}}", "x".repeat(2000));
    assert_eq!(exchange(addr, "POST", "/connection/long_poll", &h, big.as_bytes()).await.status, 413);
    // From an origin not allowed: 403; from an allowed one, with CORS headers.
    let connect = json!({"id": 1, "connect": {}}).to_string();
    let h = [("Content-Type", "application/json"), ("Origin", "https://evil.example")];
    assert_eq!(exchange(addr, "POST", "/connection/long_poll", &h, connect.as_bytes()).await.status, 403);
    let h = [("Content-Type", "application/json"), ("Origin", "https://app.example")];
    let a = exchange(addr, "POST", "/connection/long_poll", &h, connect.as_bytes()).await;
    assert_eq!(a.status, 200);
    assert!(a.head.contains("access-control-allow-origin: https://app.example"), "{}", a.head);
}

#[tokio::test]
async fn a_long_poll_buffer_past_its_bound_disconnects_with_3008() {
    let mut c = config();
    c.long_poll.max_buffer_size = 4096;
    let (hub, addr) = serve(c).await;
    let (_first, session, node) = long_poll_connect(addr).await;
    let data = json!({"id": 2, "subscribe": {"channel": "open:flood"}}).to_string();
    assert_eq!(emulate(addr, json!({"session": session, "node": node, "data": data})).await, 204);
    poll_until(addr, &session, &node, "{\"id\":2,\"subscribe\"").await;
    // The client stops polling; publications pile up past 4 KiB.
    let payload = Bytes::from(format!("{{\"pad\":\"{}\"}}", "x".repeat(1000)));
    for _ in 0..10 {
        hub.publish("open:flood", payload.clone(), Default::default()).await.unwrap();
    }
    eventually("the client is gone", || hub.num_clients() == 0).await;
    // Its next poll gets what was buffered, the disconnect last; then the session is gone.
    let a = poll(addr, &session, &node).await;
    assert_eq!(a.status, 200);
    let last = a.body.lines().last().unwrap();
    assert!(last.starts_with("{\"push\":{\"disconnect\":{\"code\":3008"), "{last}");
    assert!(a.body.len() <= 4096 + 2048, "{} bytes buffered", a.body.len());
    assert_eq!(poll(addr, &session, &node).await.status, 404);
}

/// Sends a request with `Connection: close`: the status and the body's bytes.
async fn exchange_bytes(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<u8>) {
    let mut h = headers.to_vec();
    h.push(("Connection", "close"));
    let mut s = request(addr, method, path, &h, body).await;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await.expect("the response ended").unwrap();
    let at = buf.windows(4).position(|w| w == b"\r\n\r\n").expect("a head");
    let head = String::from_utf8_lossy(&buf[..at]).into_owned();
    assert!(head.contains("content-type: application/octet-stream") || !head.contains(" 200 "), "{head}");
    (status(&head), buf[at + 4..].to_vec())
}

#[tokio::test]
async fn long_poll_speaks_protobuf_when_the_connect_is_protobuf() {
    use volley_hub::protocol::{
        protobuf, Command, ConnectRequest, PushKind, Reply, ReplyResult, Request, SubscribeRequest,
    };
    let (hub, addr) = serve(config()).await;
    let h = [("Content-Type", "application/octet-stream")];
    let mut connect = bytes::BytesMut::new();
    protobuf::encode_command(&Command { id: 1, request: Request::Connect(ConnectRequest::default()) }, &mut connect);
    let (code, body) = exchange_bytes(addr, "POST", "/connection/long_poll", &h, &connect).await;
    assert_eq!(code, 200);
    let replies: Vec<Reply> = protobuf::replies(&body).map(Result::unwrap).collect();
    let Some(Reply::Result { result: ReplyResult::Connect(c), .. }) = replies.first() else { panic!("{replies:?}") };
    let (session, node) = (c.session.clone(), c.node.clone());

    // A Protobuf EmulationRequest (node = 1, session = 2, data = 3) with a subscribe.
    let mut data = bytes::BytesMut::new();
    let sub = SubscribeRequest { channel: "open:pb".into(), ..Default::default() };
    protobuf::encode_command(&Command { id: 2, request: Request::Subscribe(sub) }, &mut data);
    let mut pb = Vec::new();
    for (tag, v) in [(0x0a, node.as_bytes()), (0x12, session.as_bytes()), (0x1a, &data[..])] {
        pb.push(tag);
        pb.push(v.len() as u8);
        pb.extend_from_slice(v);
    }
    let r = request(addr, "POST", "/emulation", &h, &pb).await;
    assert_eq!(status(&head(r).await), 204);
    hub.publish("open:pb", Bytes::from_static(b"{\"n\":1}"), Default::default()).await.unwrap();

    // Polls until both the subscribe result and the publication came, in that order.
    let path = format!("/connection/long_poll?session={session}&node={node}");
    let mut got = Vec::new();
    for _ in 0..20 {
        let (code, body) = exchange_bytes(addr, "GET", &path, &[], b"").await;
        assert!(code == 200 || code == 204, "{code}");
        got.extend(protobuf::replies(&body).map(Result::unwrap));
        if got.iter().any(|r| matches!(r, Reply::Push(p) if matches!(p.kind, PushKind::Publication(_)))) {
            break;
        }
    }
    assert!(matches!(got.first(), Some(Reply::Result { id: 2, result: ReplyResult::Subscribe(_) })), "{got:?}");
    let Some(Reply::Push(p)) = got.last() else { panic!("{got:?}") };
    assert_eq!(p.channel, "open:pb");
    assert!(matches!(p.kind, PushKind::Publication(_)), "{p:?}");
}
