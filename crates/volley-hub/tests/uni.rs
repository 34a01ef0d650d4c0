//! The unidirectional transports: SSE, the HTTP stream, long polling and the uni
//! WebSocket, each resuming from the same position token; not recovered when the
//! position is gone; malformed positions refused; a reader moving between transports
//! sees every publication once.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::{serve, token, Client};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use volley::Message;
use volley_hub::ServerPublish;
use volley_hub::{Hub, HubConfig};

fn config() -> HubConfig {
    serde_json::from_value(json!({
        "client": {
            "allow_anonymous_connect_without_token": true,
            "token": {"hmac_secret_key": common::SECRET},
            "queue_max_bytes": 65536,
            "ping_interval": "1s",
        },
        "channel": {
            "namespaces": [
                {"name": "h", "allow_subscribe_for_anonymous": true, "allow_subscribe_for_client": true,
                 "history_size": 100, "history_ttl": "60s", "allow_recovery": true},
                {"name": "nohist", "allow_subscribe_for_anonymous": true},
                {"name": "closed"},
            ]
        },
        "uni_sse": {"enabled": true},
        "uni_http_stream": {"enabled": true},
        "uni_websocket": {"enabled": true},
        "uni_long_polling": {"enabled": true, "timeout": "2s", "max_publications": 3},
    }))
    .unwrap()
}

async fn publish(hub: &Hub, channel: &str, n: u64) {
    hub.publish(channel, Bytes::from(json!({ "n": n }).to_string()), ServerPublish::default()).await.unwrap();
}

/// An HTTP/1.0 GET (the body is delimited by the connection's end, no chunks): the
/// status, the headers (lowercase names) and the open stream after them.
async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, String, TcpStream, Vec<u8>) {
    request(addr, "GET", path, headers, None).await
}

/// An HTTP/1.0 request with `body`, if any, as [`get`] makes.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> (u16, String, TcpStream, Vec<u8>) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    let mut req = req.into_bytes();
    req.extend_from_slice(body.unwrap_or_default());
    s.write_all(&req).await.unwrap();
    let mut buf = Vec::new();
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8(buf[..i].to_vec()).unwrap().to_lowercase();
            let status = head.split(' ').nth(1).unwrap().parse().unwrap();
            let rest = buf[i + 4..].to_vec();
            return (status, head, s, rest);
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await.unwrap().unwrap();
        assert!(n > 0, "connection closed before the headers");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The whole body of a GET.
async fn get_body(addr: SocketAddr, path: &str) -> (u16, String) {
    let (status, _, mut s, mut rest) = get(addr, path, &[]).await;
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await.unwrap().unwrap();
    (status, String::from_utf8(rest).unwrap())
}

/// Reads a stream of SSE events or of lines.
struct Stream {
    s: TcpStream,
    buf: Vec<u8>,
    sep: &'static [u8],
    /// The heartbeats skipped so far.
    beats: Vec<String>,
}

impl Stream {
    async fn open(addr: SocketAddr, path: &str, headers: &[(&str, &str)], sep: &'static [u8]) -> (String, Stream) {
        let (status, head, s, buf) = get(addr, path, headers).await;
        assert_eq!(status, 200, "{head}");
        (head, Stream { s, buf, sep, beats: Vec::new() })
    }

    /// A stream opened by a POST of `body`.
    async fn post(addr: SocketAddr, path: &str, body: &[u8], sep: &'static [u8]) -> (String, Stream) {
        let (status, head, s, buf) = request(addr, "POST", path, &[], Some(body)).await;
        assert_eq!(status, 200, "{head}");
        (head, Stream { s, buf, sep, beats: Vec::new() })
    }

    /// The next frame that is not a heartbeat.
    async fn next(&mut self) -> String {
        loop {
            if let Some(i) = self.buf.windows(self.sep.len()).position(|w| w == self.sep) {
                let frame = String::from_utf8(self.buf[..i].to_vec()).unwrap();
                self.buf.drain(..i + self.sep.len());
                if frame.starts_with("event: ping") || frame == "null" || frame.starts_with("retry:") {
                    self.beats.push(frame);
                    continue;
                }
                return frame;
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(5), self.s.read(&mut chunk))
                .await
                .expect("a frame in time")
                .unwrap();
            assert!(n > 0, "stream ended");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// An SSE event: its id and its data.
fn event(frame: &str) -> (Option<String>, Value) {
    let mut id = None;
    let mut data = Value::Null;
    for line in frame.lines() {
        if let Some(v) = line.strip_prefix("id: ") {
            id = Some(v.to_owned());
        } else if let Some(v) = line.strip_prefix("data: ") {
            data = serde_json::from_str(v).unwrap();
        }
    }
    (id, data)
}

fn n_of(pushed: &Value) -> u64 {
    pushed["pub"]["data"]["n"].as_u64().unwrap_or_else(|| panic!("not a publication: {pushed}"))
}

#[tokio::test]
async fn sse_resumes_from_last_event_id_and_says_when_it_cannot() {
    let (hub, addr) = serve(config()).await;
    publish(&hub, "h:a", 1).await;
    let (head, mut sse) = Stream::open(addr, "/connection/uni_sse?channel=h:a", &[], b"\n\n").await;
    assert!(head.contains("content-type: text/event-stream"), "{head}");
    assert!(head.contains("cache-control: no-cache"), "{head}");
    assert!(head.contains("x-accel-buffering: no"), "{head}");
    let (id, connect) = event(&sse.next().await);
    assert_eq!(connect["connect"]["position"], json!(id.clone().unwrap()));
    assert!(id.unwrap().starts_with("1."), "starts at the channel's top");
    publish(&hub, "h:a", 2).await;
    publish(&hub, "h:a", 3).await;
    let (id2, e2) = event(&sse.next().await);
    assert_eq!(n_of(&e2), 2);
    assert_eq!(e2["channel"], "h:a");
    let (id3, e3) = event(&sse.next().await);
    assert_eq!(n_of(&e3), 3);
    assert!(id2.unwrap().starts_with("2."));
    drop(sse);
    // Cut off after 2 (as if 3 never arrived); 4 and 5 are published meanwhile.
    publish(&hub, "h:a", 4).await;
    publish(&hub, "h:a", 5).await;
    let last = id3.unwrap().replacen("3.", "2.", 1);
    let (_, mut sse) =
        Stream::open(addr, "/connection/uni_sse?channel=h:a", &[("Last-Event-ID", &last)], b"\n\n").await;
    let (_, c) = event(&sse.next().await);
    assert_eq!(c["connect"]["recovered"], true, "{c}");
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(n_of(&event(&sse.next().await).1));
    }
    publish(&hub, "h:a", 6).await;
    got.push(n_of(&event(&sse.next().await).1));
    assert_eq!(got, [3, 4, 5, 6]);

    // Another epoch: not recovered, told so with the current position.
    let (_, mut sse) =
        Stream::open(addr, "/connection/uni_sse?channel=h:a", &[("Last-Event-ID", "2.otherepoch")], b"\n\n").await;
    let (id, c) = event(&sse.next().await);
    assert_eq!(c["connect"]["recovered"], false, "{c}");
    assert_eq!(c["connect"]["unrecovered"], json!(["h:a"]));
    assert!(id.unwrap().starts_with("6."));
}

#[tokio::test]
async fn sse_with_several_channels_carries_every_position_in_its_id() {
    let (hub, addr) = serve(config()).await;
    let (_, mut sse) = Stream::open(addr, "/connection/uni_sse?channel=h:b&channel=h:a", &[], b"\n\n").await;
    let (id, _) = event(&sse.next().await);
    assert_eq!(id.unwrap().split(',').count(), 2);
    publish(&hub, "h:a", 1).await;
    publish(&hub, "h:b", 1).await;
    publish(&hub, "h:b", 2).await;
    let mut last = String::new();
    for _ in 0..3 {
        last = event(&sse.next().await).0.unwrap();
    }
    let parts: Vec<&str> = last.split(',').collect();
    assert!(parts[0].starts_with("1.") && parts[1].starts_with("2."), "{last} (a, then b)");
    drop(sse);
    publish(&hub, "h:b", 3).await;
    publish(&hub, "h:a", 2).await;
    let q = format!("/connection/uni_sse?channel=h:a&channel=h:b&since={last}");
    let (_, mut sse) = Stream::open(addr, &q, &[], b"\n\n").await;
    let (_, c) = event(&sse.next().await);
    assert_eq!(c["connect"]["recovered"], true);
    let mut got: Vec<(String, u64)> = Vec::new();
    for _ in 0..2 {
        let (_, e) = event(&sse.next().await);
        got.push((e["channel"].as_str().unwrap().to_owned(), n_of(&e)));
    }
    got.sort();
    assert_eq!(got, [("h:a".to_owned(), 2), ("h:b".to_owned(), 3)]);
}

#[tokio::test]
async fn malformed_positions_and_bad_requests_get_400_with_a_reason() {
    let (_hub, addr) = serve(config()).await;
    let (status, head, _, _) =
        get(addr, "/connection/uni_sse?channel=h:a", &[("Last-Event-ID", "not-a-position")]).await;
    assert_eq!(status, 400, "{head}");
    let (status, body) = get_body(addr, "/connection/uni_long_poll?channel=h:a&since=1.a,2.b").await;
    assert_eq!(status, 400);
    assert!(body.contains("names 2 channels"), "{body}");
    let (status, body) = get_body(addr, "/connection/uni_http_stream?channel=h:a&since=x.y").await;
    assert_eq!(status, 400);
    assert!(body.contains("malformed position"), "{body}");
    let (status, body) = get_body(addr, "/connection/uni_long_poll").await;
    assert_eq!(status, 400);
    assert!(body.contains("no channel"), "{body}");
}

#[tokio::test]
async fn permissions_and_tokens_are_those_of_a_bidirectional_client() {
    let (_hub, addr) = serve(config()).await;
    let (status, body) = get_body(addr, "/connection/uni_long_poll?channel=closed:x").await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = get_body(addr, "/connection/uni_long_poll?channel=h:a&token=nope").await;
    assert_eq!(status, 401, "{body}");
    let t = token(json!({"sub": "u1", "exp": common::unix_now() + 60}));
    let (status, body) = get_body(addr, &format!("/connection/uni_long_poll?channel=h:a&token={t}")).await;
    assert_eq!(status, 200, "{body}");
    let mut c = config();
    c.uni_sse.enabled = false;
    let (_hub, addr) = serve(c).await;
    let (status, _) = get_body(addr, "/connection/uni_sse?channel=h:a").await;
    assert_eq!(status, 404, "disabled");
}

#[tokio::test]
async fn http_stream_lines_carry_their_position_and_resume_from_it() {
    let (hub, addr) = serve(config()).await;
    let (head, mut s) = Stream::open(addr, "/connection/uni_http_stream?channel=h:a", &[], b"\n").await;
    assert!(head.contains("application/x-ndjson"), "{head}");
    let c: Value = serde_json::from_str(&s.next().await).unwrap();
    assert!(c["connect"]["position"].is_string());
    publish(&hub, "h:a", 1).await;
    let p: Value = serde_json::from_str(&s.next().await).unwrap();
    assert_eq!(n_of(&p), 1);
    let pos = p["position"].as_str().unwrap().to_owned();
    drop(s);
    publish(&hub, "h:a", 2).await;
    let (_, mut s) =
        Stream::open(addr, &format!("/connection/uni_http_stream?channel=h:a&since={pos}"), &[], b"\n").await;
    let c: Value = serde_json::from_str(&s.next().await).unwrap();
    assert_eq!(c["connect"]["recovered"], true);
    let p: Value = serde_json::from_str(&s.next().await).unwrap();
    assert_eq!(n_of(&p), 2);
}

async fn poll(addr: SocketAddr, q: &str) -> Value {
    let (status, body) = get_body(addr, &format!("/connection/uni_long_poll?{q}")).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test]
async fn long_polling_answers_at_once_waits_for_the_next_and_batches() {
    let (hub, addr) = serve(config()).await;
    let first = poll(addr, "channel=h:a").await;
    let mut cursor = first["position"].as_str().unwrap().to_owned();
    assert_eq!(first["publications"], json!([]));
    // Nothing newer: waits for the next publication.
    let h = hub.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        publish(&h, "h:a", 1).await;
    });
    let started = std::time::Instant::now();
    let r = poll(addr, &format!("channel=h:a&since={cursor}")).await;
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(r["recovered"], true);
    assert_eq!(n_of(&r["publications"][0]), 1);
    cursor = r["position"].as_str().unwrap().to_owned();
    // Under load: at most `max_publications` (3) an answer, the cursor at the last.
    for n in 2..=8 {
        publish(&hub, "h:a", n).await;
    }
    let mut got = Vec::new();
    let mut sizes = Vec::new();
    while got.len() < 7 {
        let r = poll(addr, &format!("channel=h:a&since={cursor}")).await;
        let pubs = r["publications"].as_array().unwrap();
        sizes.push(pubs.len());
        got.extend(pubs.iter().map(n_of));
        cursor = r["position"].as_str().unwrap().to_owned();
    }
    assert_eq!(got, (2..=8).collect::<Vec<_>>());
    assert_eq!(sizes, [3, 3, 1]);
    // Nothing comes: the timeout (2s) answers with the same cursor.
    let r = poll(addr, &format!("channel=h:a&since={cursor}")).await;
    assert_eq!(r["publications"], json!([]));
    assert_eq!(r["position"], json!(cursor));
    // A channel without history cannot resume.
    let r = poll(addr, "channel=nohist:a&since=0.").await;
    assert_eq!(r["recovered"], false, "{r}");
    // A stale cursor (another epoch): not recovered, the current cursor given.
    let r = poll(addr, "channel=h:a&since=3.stale").await;
    assert_eq!(r["recovered"], false);
    assert_eq!(r["position"], json!(cursor));
    assert_eq!(hub.num_clients(), 0, "no session outlives its request");
}

#[tokio::test]
async fn uni_websocket_takes_its_connect_in_the_first_message_then_only_pushes() {
    let (hub, addr) = serve(config()).await;
    publish(&hub, "h:a", 1).await;
    let mut ws = volley::connect(&format!("ws://{addr}/connection/uni_websocket")).await.unwrap().0;
    ws.send(Message::text(json!({"channels": ["h:a"], "since": "0."}).to_string())).await.unwrap();
    let mut next = async || loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.recv()).await.unwrap() {
            Some(Ok(Message::Text(t))) if t.as_str() != "{}" => {
                return serde_json::from_str::<Value>(t.as_str()).unwrap()
            }
            Some(Ok(Message::Text(_))) => {}
            other => panic!("{other:?}"),
        }
    };
    let c = next().await;
    // The channel's epoch is not "": not recovered, the current position given.
    assert_eq!(c["connect"]["recovered"], false, "{c}");
    publish(&hub, "h:a", 2).await;
    let p = next().await;
    assert_eq!(n_of(&p), 2);
    assert!(p["position"].as_str().unwrap().starts_with("2."));
}

/// One reader: WebSocket, then SSE, then long polling, then WebSocket again, each
/// resuming from the position the previous one reached, while a publisher goes on.
#[tokio::test]
async fn a_reader_moves_between_transports_and_sees_every_publication_once() {
    let (hub, addr) = serve(config()).await;
    let mut seen = Vec::new();
    let mut n = 0;
    let mut publish_some = async |k: u64| {
        for _ in 0..k {
            n += 1;
            publish(&hub, "h:a", n).await;
        }
    };
    // WebSocket: subscribe, read two.
    let (mut c, _) = Client::connected(addr, json!({})).await;
    let r = c.call(json!({"id": 2, "subscribe": {"channel": "h:a", "recover": true}})).await;
    let mut epoch = r["subscribe"]["epoch"].as_str().unwrap_or_else(|| panic!("{r}")).to_owned();
    let mut offset = r["subscribe"]["offset"].as_u64().unwrap_or(0);
    publish_some(2).await;
    for _ in 0..2 {
        let p = c.next().await.unwrap();
        seen.push(n_of(&p["push"]));
        offset = p["push"]["pub"]["offset"].as_u64().unwrap();
    }
    drop(c);
    publish_some(2).await;
    // SSE from the WebSocket's offset and epoch.
    let (_, mut sse) = Stream::open(
        addr,
        "/connection/uni_sse?channel=h:a",
        &[("Last-Event-ID", &format!("{offset}.{epoch}"))],
        b"\n\n",
    )
    .await;
    assert_eq!(event(&sse.next().await).1["connect"]["recovered"], true);
    let mut id = String::new();
    for _ in 0..2 {
        let (i, e) = event(&sse.next().await);
        seen.push(n_of(&e));
        id = i.unwrap();
    }
    publish_some(1).await;
    let (i, e) = event(&sse.next().await);
    seen.push(n_of(&e));
    id = i.unwrap_or(id);
    drop(sse);
    publish_some(4).await;
    // Long polling from the SSE id (batches of 3).
    let mut cursor = id;
    loop {
        let r = poll(addr, &format!("channel=h:a&since={cursor}")).await;
        assert_eq!(r["recovered"], true);
        let pubs = r["publications"].as_array().unwrap().clone();
        seen.extend(pubs.iter().map(n_of));
        cursor = r["position"].as_str().unwrap().to_owned();
        if pubs.len() < 3 {
            break;
        }
    }
    publish_some(2).await;
    // Back to WebSocket, recovering from the cursor.
    let (o, e) = cursor.split_once('.').unwrap();
    offset = o.parse().unwrap();
    epoch = e.to_owned();
    let (mut c, _) = Client::connected(addr, json!({})).await;
    let r = c
        .call(json!({"id": 2, "subscribe": {"channel": "h:a", "recover": true, "offset": offset, "epoch": epoch}}))
        .await;
    assert_eq!(r["subscribe"]["recovered"], true, "{r}");
    for p in r["subscribe"]["publications"].as_array().unwrap() {
        seen.push(p["data"]["n"].as_u64().unwrap());
    }
    publish_some(1).await;
    seen.push(n_of(&c.next().await.unwrap()["push"]));
    assert_eq!(seen, (1..=n).collect::<Vec<_>>());
    assert_eq!(n, 12);
}

#[tokio::test]
async fn an_sse_reader_that_never_reads_is_dropped_and_its_memory_bounded() {
    let (hub, addr) = serve(config()).await;
    let (status, _, _stalled, _) = get(addr, "/connection/uni_sse?channel=h:a", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(hub.num_clients(), 1);
    let big = "x".repeat(8000);
    for _ in 0..3000 {
        hub.publish("h:a", Bytes::from(json!({ "s": big }).to_string()), ServerPublish::default()).await.unwrap();
        if hub.num_clients() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(hub.num_clients(), 0, "the reader that does not read is dropped (3008)");
}

#[tokio::test]
async fn streams_per_ip_are_capped_by_the_connection_limit() {
    let mut c = config();
    c.client.ip_connection_limit = 1;
    let (hub, addr) = serve(c).await;
    let (_, mut first) = Stream::open(addr, "/connection/uni_sse?channel=h:a", &[], b"\n\n").await;
    first.next().await;
    let (status, body) = get_body(addr, "/connection/uni_sse?channel=h:a").await;
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("3504"), "{body}");
    drop(first);
    for _ in 0..100 {
        if hub.num_clients() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, _, _, _) = get(addr, "/connection/uni_sse?channel=h:a", &[]).await;
    assert_eq!(status, 200, "the place is free again once the first reader left");
}

#[tokio::test]
async fn a_reader_disconnected_by_the_server_is_told_why_and_its_stream_ends() {
    let (hub, addr) = serve(config()).await;
    let t = token(json!({"sub": "u7", "exp": common::unix_now() + 60}));
    let (_, mut s) =
        Stream::open(addr, &format!("/connection/uni_http_stream?channel=h:a&token={t}"), &[], b"\n").await;
    s.next().await;
    assert_eq!(hub.disconnect_user("u7", None, volley_hub::protocol::Disconnect::FORCE_NO_RECONNECT), 1);
    let d: Value = serde_json::from_str(&s.next().await).unwrap();
    assert_eq!(d["disconnect"]["code"], 3503, "{d}");
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), s.s.read_to_end(&mut rest)).await.unwrap().unwrap();
    assert_eq!(n, 0, "the stream ends");
    assert_eq!(hub.num_clients(), 0);
}

#[tokio::test]
async fn centrifugo_cf_connect_resumes_too_and_the_router_alone_serves_it() {
    let (hub, addr) = common::serve_router(config()).await;
    let (_, mut s) = Stream::open(addr, "/connection/uni_sse?channel=h:a", &[], b"\n\n").await;
    let (id, _) = event(&s.next().await);
    drop(s);
    let (offset, epoch) = id.as_deref().unwrap().split_once('.').unwrap();
    publish(&hub, "h:a", 1).await;
    let cf = json!({"subs": {"h:a": {"recover": true, "offset": offset.parse::<u64>().unwrap(), "epoch": epoch}}});
    let q = serde_urlencoded::to_string([("cf_connect", cf.to_string())]).unwrap();
    let (_, mut s) = Stream::open(addr, &format!("/connection/uni_sse?{q}"), &[], b"\n\n").await;
    assert_eq!(event(&s.next().await).1["connect"]["recovered"], true);
    assert_eq!(n_of(&event(&s.next().await).1), 1);
}

#[tokio::test]
async fn a_uni_websocket_refused_a_channel_is_closed_with_3507() {
    let (_hub, addr) = serve(config()).await;
    let mut ws = volley::connect(&format!("ws://{addr}/connection/uni_websocket?channel=closed:x")).await.unwrap().0;
    let mut code = None;
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(5), ws.recv()).await {
        match m.unwrap() {
            Message::Close(Some(f)) => {
                code = Some(u16::from(f.code));
                break;
            }
            Message::Text(t) => assert!(t.as_str().contains("error"), "{}", t.as_str()),
            _ => {}
        }
    }
    assert_eq!(code, Some(3507));
}

/// The whole answer to a POST of `body`: its status and body.
async fn post_body(addr: SocketAddr, path: &str, body: &[u8]) -> (u16, String) {
    let (status, _, mut s, mut rest) = request(addr, "POST", path, &[], Some(body)).await;
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest)).await.unwrap().unwrap();
    (status, String::from_utf8(rest).unwrap())
}

/// Centrifugo's setup for its readers without SDK: each user subscribed server-side to
/// their personal channel (`#USER`), the connect request the token alone.
fn personal_config() -> HubConfig {
    let mut c = config();
    c.client.user_subscribe_to_personal = true;
    c.uni_http_stream.max_request_body_size = 4096;
    c.uni_sse.max_request_body_size = 4096;
    c
}

#[tokio::test]
async fn uni_http_stream_takes_centrifugos_connect_request_as_the_post_body() {
    let (hub, addr) = serve(personal_config()).await;
    let t = token(json!({"sub": "u1", "exp": common::unix_now() + 60}));
    let body = json!({"token": t, "name": "curl", "version": "8"}).to_string();
    let (head, mut s) = Stream::post(addr, "/connection/uni_http_stream", body.as_bytes(), b"\n").await;
    assert!(head.contains("application/x-ndjson"), "{head}");
    let c: Value = serde_json::from_str(&s.next().await).unwrap();
    let connect = &c["connect"];
    assert!(connect["client"].as_str().is_some_and(|id| !id.is_empty()), "{c}");
    assert!(connect["version"].is_string(), "{c}");
    assert_eq!(connect["ping"], 1, "{c}");
    assert!(connect["subs"]["#u1"].is_object(), "the personal channel, server-side: {c}");
    assert!(connect.get("pong").is_none(), "a reader sends no pong: {c}");
    publish(&hub, "#u1", 1).await;
    let p: Value = serde_json::from_str(&s.next().await).unwrap();
    assert_eq!(p["channel"], "#u1", "{p}");
    assert_eq!(n_of(&p), 1);
    // Centrifugo's ping on this transport is a JSON null line.
    while s.beats.is_empty() {
        publish(&hub, "#u1", 2).await;
        s.next().await;
    }
    assert_eq!(s.beats[0], "null");

    // Channels named in `subs` are subscribed (Volley's own), resumable by position.
    let body = json!({"token": t, "subs": {"h:a": {}}}).to_string();
    let (_, mut s) = Stream::post(addr, "/connection/uni_http_stream", body.as_bytes(), b"\n").await;
    let c: Value = serde_json::from_str(&s.next().await).unwrap();
    assert_eq!(c["connect"]["channels"], json!(["h:a"]), "{c}");
    assert!(c["connect"]["subs"]["h:a"]["epoch"].is_string(), "{c}");
    assert!(c["connect"]["subs"]["#u1"].is_object(), "{c}");
    publish(&hub, "h:a", 7).await;
    let p: Value = serde_json::from_str(&s.next().await).unwrap();
    assert_eq!(n_of(&p), 7);
    let pos = p["position"].as_str().unwrap().to_owned();
    drop(s);
    publish(&hub, "h:a", 8).await;
    let body = json!({"token": t, "channels": ["h:a"], "since": pos}).to_string();
    let (_, mut s) = Stream::post(addr, "/connection/uni_http_stream", body.as_bytes(), b"\n").await;
    let c: Value = serde_json::from_str(&s.next().await).unwrap();
    assert_eq!(c["connect"]["recovered"], true, "{c}");
    assert_eq!(n_of(&serde_json::from_str(&s.next().await).unwrap()), 8);
}

#[tokio::test]
async fn a_bad_or_oversized_connect_request_is_refused_400_or_413() {
    let (_hub, addr) = serve(personal_config()).await;
    for path in ["/connection/uni_http_stream", "/connection/uni_sse"] {
        let (status, body) = post_body(addr, path, b"{\"token\": ").await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains("not JSON"), "{body}");
        let (status, body) = post_body(addr, path, b"[\"token\"]").await;
        assert_eq!(status, 400, "{path}: {body}");
        let big = json!({"token": "x".repeat(5000)}).to_string();
        let (status, body) = post_body(addr, path, big.as_bytes()).await;
        assert_eq!(status, 413, "{path}: {body}");
        assert!(body.contains("max_request_body_size (4096 bytes)"), "{body}");
        // Anonymous, no channel: nothing to read.
        let (status, body) = post_body(addr, path, b"{}").await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains("no channel"), "{body}");
        let (status, body) = post_body(addr, path, br#"{"token": "nope"}"#).await;
        assert_eq!(status, 401, "{path}: {body}");
    }
    let q = serde_urlencoded::to_string([("cf_connect", json!({"token": "x".repeat(5000)}).to_string())]).unwrap();
    let (status, body) = get_body(addr, &format!("/connection/uni_sse?{q}")).await;
    assert_eq!(status, 413, "{body}");
    let (status, body) = get_body(addr, "/connection/uni_sse?cf_connect=%7Bnot").await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test]
async fn uni_sse_takes_centrifugos_cf_connect_or_a_post_body() {
    let (hub, addr) = serve(personal_config()).await;
    let t = token(json!({"sub": "u2", "exp": common::unix_now() + 60}));
    let q = serde_urlencoded::to_string([("cf_connect", json!({"token": t}).to_string())]).unwrap();
    let (head, mut get_sse) = Stream::open(addr, &format!("/connection/uni_sse?{q}"), &[], b"\n\n").await;
    assert!(head.contains("text/event-stream"), "{head}");
    let body = json!({"token": t}).to_string();
    let (_, mut post_sse) = Stream::post(addr, "/connection/uni_sse", body.as_bytes(), b"\n\n").await;
    for sse in [&mut get_sse, &mut post_sse] {
        let (id, c) = event(&sse.next().await);
        assert!(c["connect"]["subs"]["#u2"].is_object(), "{c}");
        assert!(id.is_none(), "no position when no channel is named: {c}");
    }
    publish(&hub, "#u2", 1).await;
    for sse in [&mut get_sse, &mut post_sse] {
        let (_, p) = event(&sse.next().await);
        assert_eq!(p["channel"], "#u2", "{p}");
        assert_eq!(n_of(&p), 1);
    }
    // Centrifugo's SSE ping: an event named ping, with empty data.
    while get_sse.beats.len() < 2 {
        publish(&hub, "#u2", 2).await;
        get_sse.next().await;
    }
    assert_eq!(get_sse.beats[1], "event: ping\ndata:", "{:?}", get_sse.beats);
}
