//! Bad input gets the exact code, and the hub keeps serving everyone else: malformed
//! JSON, a command before connect, an unknown method, an oversized command, a
//! subscription the client may not make, a flood of commands, a slow reader.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::serve;
use serde_json::{json, Value};
use volley::{MaybeTlsStream, Message, WebSocket};
use volley_hub::HubConfig;

type Ws = WebSocket<MaybeTlsStream>;

fn config() -> HubConfig {
    serde_json::from_value(json!({
        "client": {
            "allow_anonymous_connect_without_token": true,
            "max_command_size": 4096,
            "command_rate": 20,
            "command_burst": 20,
            "queue_max_bytes": 65536,
        },
        "channel": {
            "namespaces": [
                {"name": "open", "allow_subscribe_for_anonymous": true, "allow_publish_for_subscriber": true,
                 "history_size": 10, "history_ttl": "60s", "force_recovery": true},
                {"name": "closed"},
            ]
        },
        "http_api": {"key": "k"},
    }))
    .unwrap()
}

async fn open(addr: SocketAddr) -> Ws {
    volley::connect(&format!("ws://{addr}/connection/websocket")).await.unwrap().0
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

/// The next reply or push (frames may carry several, one per line).
async fn next(ws: &mut Ws, pending: &mut Vec<Value>) -> Option<Value> {
    loop {
        if !pending.is_empty() {
            return Some(pending.remove(0));
        }
        match tokio::time::timeout(Duration::from_secs(5), ws.recv()).await.expect("a reply within 5 s")? {
            Ok(Message::Text(t)) => {
                for line in t.as_str().split('\n') {
                    pending.push(serde_json::from_str(line).unwrap());
                }
            }
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// The close code the server ends the connection with.
async fn close_code(ws: &mut Ws) -> u16 {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.recv()).await.expect("a close within 5 s") {
            Some(Ok(Message::Close(Some(f)))) => return f.code.into(),
            Some(Ok(Message::Close(None))) | None => return 1005,
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("{e}"),
        }
    }
}

async fn connected(addr: SocketAddr) -> (Ws, Vec<Value>) {
    let mut ws = open(addr).await;
    let mut pending = Vec::new();
    send(&mut ws, json!({"id": 1, "connect": {}})).await;
    let r = next(&mut ws, &mut pending).await.unwrap();
    assert!(r["connect"]["client"].is_string(), "{r}");
    (ws, pending)
}

/// The hub still serves a well-behaved client.
async fn still_serves(addr: SocketAddr) {
    let (mut ws, mut pending) = connected(addr).await;
    send(&mut ws, json!({"id": 2, "subscribe": {"channel": "open:check"}})).await;
    let r = next(&mut ws, &mut pending).await.unwrap();
    assert_eq!(r["id"], 2, "{r}");
    assert!(r["subscribe"].is_object(), "{r}");
}

#[tokio::test]
async fn malformed_json_closes_with_3501_and_the_hub_serves_others() {
    let (_hub, addr) = serve(config()).await;
    for bad in ["{", "[1,2]", "{\"id\":\"x\"}", "\u{0}", "{\"id\":1,\"subscribe\":7}"] {
        let mut ws = open(addr).await;
        ws.send(Message::text(bad)).await.unwrap();
        assert_eq!(close_code(&mut ws).await, 3501, "{bad:?}");
    }
    still_serves(addr).await;
}

#[tokio::test]
async fn a_command_before_connect_closes_with_3501() {
    let (_hub, addr) = serve(config()).await;
    let mut ws = open(addr).await;
    send(&mut ws, json!({"id": 1, "subscribe": {"channel": "open:x"}})).await;
    assert_eq!(close_code(&mut ws).await, 3501);
}

#[tokio::test]
async fn an_unknown_method_is_error_104_and_the_connection_stays() {
    let (_hub, addr) = serve(config()).await;
    let (mut ws, mut pending) = connected(addr).await;
    send(&mut ws, json!({"id": 2, "frobnicate": {}})).await;
    let r = next(&mut ws, &mut pending).await.unwrap();
    assert_eq!(r, json!({"id": 2, "error": {"code": 104, "message": "method not found"}}));
    send(&mut ws, json!({"id": 3, "subscribe": {"channel": "open:a"}})).await;
    assert_eq!(next(&mut ws, &mut pending).await.unwrap()["id"], 3);
}

#[tokio::test]
async fn an_oversized_command_closes_with_1009() {
    let (_hub, addr) = serve(config()).await;
    let (mut ws, _) = connected(addr).await;
    let big = "x".repeat(5000);
    send(&mut ws, json!({"id": 2, "publish": {"channel": "open:a", "data": big}})).await;
    assert_eq!(close_code(&mut ws).await, 1009);
    still_serves(addr).await;
}

#[tokio::test]
async fn permissions_and_names_get_their_codes() {
    let (_hub, addr) = serve(config()).await;
    let (mut ws, mut pending) = connected(addr).await;
    let cases = [
        (json!({"subscribe": {"channel": "closed:a"}}), 103),
        (json!({"subscribe": {"channel": "nowhere:a"}}), 102),
        (json!({"subscribe": {"channel": "$open:a"}}), 103),
        (json!({"subscribe": {"channel": "x".repeat(300)}}), 106),
        (json!({"publish": {"channel": "open:b", "data": {}}}), 103),
        (json!({"presence": {"channel": "open:a"}}), 108),
        (json!({"history": {"channel": "closed:a"}}), 108),
        (json!({"rpc": {"method": "m", "data": {}}}), 104),
    ];
    for (i, (cmd, code)) in cases.into_iter().enumerate() {
        let mut cmd = cmd;
        cmd["id"] = json!(i + 10);
        send(&mut ws, cmd.clone()).await;
        let r = next(&mut ws, &mut pending).await.unwrap();
        assert_eq!(r["error"]["code"], code, "{cmd} -> {r}");
    }
    send(&mut ws, json!({"id": 50, "subscribe": {"channel": "open:a"}})).await;
    assert!(next(&mut ws, &mut pending).await.unwrap()["subscribe"].is_object());
    send(&mut ws, json!({"id": 51, "subscribe": {"channel": "open:a"}})).await;
    assert_eq!(next(&mut ws, &mut pending).await.unwrap()["error"]["code"], 105);
}

#[tokio::test]
async fn a_flood_of_commands_gets_111_and_others_are_served() {
    let (_hub, addr) = serve(config()).await;
    let (mut ws, mut pending) = connected(addr).await;
    let frame: Vec<String> =
        (0..60).map(|i| json!({"id": i + 2, "presence_stats": {"channel": "closed:x"}}).to_string()).collect();
    ws.send(Message::text(frame.join("\n"))).await.unwrap();
    let mut limited = 0;
    for _ in 0..60 {
        let r = next(&mut ws, &mut pending).await.unwrap();
        if r["error"]["code"] == 111 {
            assert_eq!(r["error"]["temporary"], true);
            limited += 1;
        }
    }
    assert!(limited >= 30, "{limited} of 60 limited with a burst of 20");
    still_serves(addr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_is_disconnected_with_3008_and_publishing_goes_on() {
    let mut config = config();
    config.client.queue_max_bytes = 1 << 20;
    let (hub, addr) = serve(config).await;
    // A client that connects and subscribes, then never reads.
    let (mut ws, mut pending) = connected(addr).await;
    send(&mut ws, json!({"id": 2, "subscribe": {"channel": "open:flood"}})).await;
    next(&mut ws, &mut pending).await.unwrap();
    // One that reads everything, in a task of its own.
    let (mut reader, mut rp) = connected(addr).await;
    send(&mut reader, json!({"id": 2, "subscribe": {"channel": "open:flood"}})).await;
    next(&mut reader, &mut rp).await.unwrap();
    let (count_tx, count_rx) = tokio::sync::watch::channel(0usize);
    tokio::spawn(async move {
        let mut n = 0;
        loop {
            match reader.recv().await {
                Some(Ok(Message::Text(t))) => {
                    n += t.as_str().split('\n').count();
                    let _ = count_tx.send(n);
                }
                Some(Ok(_)) => {}
                other => panic!("the reader's connection ended after {n}: {other:?}"),
            }
        }
    });
    // Incompressible, whatever the extensions negotiated.
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let noise: String = (0..4000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'a' + (x % 26) as u8)
        })
        .collect();
    let payload = bytes::Bytes::from(format!("\"{noise}\""));
    // Publish until the one that does not read is cut off (its socket's buffers fill
    // first, then its queue), at a pace the reader keeps up with.
    let mut published = 0;
    while hub.num_clients() == 2 {
        assert!(published < 200_000, "the client that does not read was never disconnected");
        hub.publish("open:flood", payload.clone(), Default::default()).await.unwrap();
        published += 1;
        if published % 8 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    for _ in 0..100 {
        hub.publish("open:flood", payload.clone(), Default::default()).await.unwrap();
        published += 1;
    }
    let mut count_rx = count_rx;
    tokio::time::timeout(Duration::from_secs(30), count_rx.wait_for(|n| *n >= published))
        .await
        .expect("the reader gets every publication")
        .unwrap();
    assert_eq!(hub.num_clients(), 1, "the reader is still connected");
    // The one that never read was cut off at its queue's limit.
    assert_eq!(close_code(&mut ws).await, 3008);
}

#[tokio::test]
async fn an_empty_subprotocol_header_is_accepted_as_json() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_hub, addr) = serve(config()).await;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET /connection/websocket HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: \r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut head = vec![0u8; 1024];
    let n = s.read(&mut head).await.unwrap();
    let head = String::from_utf8_lossy(&head[..n]).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(!head.contains("sec-websocket-protocol"), "no subprotocol selected: {head}");
}
