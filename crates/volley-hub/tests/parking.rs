//! Idle clients are parked (held without a task) and lose nothing by it: publications,
//! pings, commands, server-side subscriptions and disconnects reach a parked client as
//! they reach one that has a task.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use common::serve;
use serde_json::{json, Value};
use tower::ServiceExt as _;
use volley::{MaybeTlsStream, Message, WebSocket};
use volley_hub::protocol::Disconnect;
use volley_hub::{Hub, HubConfig, ServerPublish};

type Ws = WebSocket<MaybeTlsStream>;

fn config() -> HubConfig {
    serde_json::from_value(json!({
        "client": {
            "insecure": true,
            "park_after": "200ms",
            "ping_interval": "1s",
            "pong_timeout": "500ms",
        },
        "channel": {
            "namespaces": [
                {"name": "open", "presence": true, "history_size": 10, "history_ttl": "60s", "force_recovery": true},
            ]
        },
        "http_api": {"key": "k"},
    }))
    .unwrap()
}

async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

/// The next reply or push other than a ping (frames may carry several, one per line);
/// pings are answered with pongs and counted.
async fn next(ws: &mut Ws, pending: &mut Vec<Value>, pings: &mut u32) -> Value {
    loop {
        while !pending.is_empty() {
            let v = pending.remove(0);
            if v == json!({}) {
                *pings += 1;
                send(ws, json!({})).await;
                continue;
            }
            return v;
        }
        match tokio::time::timeout(Duration::from_secs(5), ws.recv()).await.expect("a reply within 5 s") {
            Some(Ok(Message::Text(t))) => {
                for line in t.as_str().split('\n') {
                    pending.push(serde_json::from_str(line).unwrap());
                }
            }
            Some(Ok(Message::Close(f))) => return json!({"closed": f.map(|f| u16::from(f.code))}),
            Some(Ok(_)) => {}
            other => panic!("connection ended: {other:?}"),
        }
    }
}

fn token(user: &str) -> String {
    // `insecure`: the token is read, not verified.
    use base64::Engine as _;
    let b64 = |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    format!("{}.{}.x", b64(json!({"alg": "HS256", "typ": "JWT"})), b64(json!({"sub": user})))
}

async fn connected(addr: SocketAddr, user: &str) -> (Ws, Vec<Value>) {
    let (mut ws, _) = volley::connect(&format!("ws://{addr}/connection/websocket")).await.unwrap();
    let mut pending = Vec::new();
    send(&mut ws, json!({"id": 1, "connect": {"token": token(user)}})).await;
    let r = next(&mut ws, &mut pending, &mut 0).await;
    assert!(r["connect"]["client"].is_string(), "{r}");
    (ws, pending)
}

/// Waits until `n` connections are parked.
async fn parked(hub: &Hub, n: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let now = hub.metrics().parked_connections.load(Ordering::Relaxed);
        if now == n {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{now} parked, not {n}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_subscriber_gets_publications_pings_replies_and_its_disconnect() {
    let (hub, addr) = serve(config()).await;
    let (mut ws, mut pending) = connected(addr, "ann").await;
    let mut pings = 0;
    send(&mut ws, json!({"id": 2, "subscribe": {"channel": "open:a"}})).await;
    let r = next(&mut ws, &mut pending, &mut pings).await;
    assert!(r["subscribe"]["recoverable"].as_bool().unwrap(), "{r}");
    parked(&hub, 1).await;
    let parks = hub.metrics().parks_total.load(Ordering::Relaxed);

    // Publications are written to it where it is parked: it is not taken back.
    for n in 1..=3 {
        hub.publish("open:a", Bytes::from(format!("{{\"n\":{n}}}")), ServerPublish::default()).await.unwrap();
    }
    for n in 1..=3 {
        let r = next(&mut ws, &mut pending, &mut pings).await;
        assert_eq!(r["push"]["pub"]["data"], json!({ "n": n }), "{r}");
        assert_eq!(r["push"]["pub"]["offset"], n, "{r}");
    }
    assert_eq!(hub.metrics().parked_connections.load(Ordering::Relaxed), 1);
    assert_eq!(hub.metrics().parks_total.load(Ordering::Relaxed), parks, "never taken back");

    // Pings keep coming while it is parked between them; the pongs keep it connected
    // (pong_timeout is 500 ms) and in presence.
    let start = tokio::time::Instant::now();
    while pings < 3 {
        let before = pings;
        let r = tokio::time::timeout(Duration::from_millis(300), next(&mut ws, &mut pending, &mut pings)).await;
        assert!(r.is_err() || before != pings, "nothing but pings is sent: {r:?}");
    }
    assert!(start.elapsed() < Duration::from_secs(5), "a ping a second");
    parked(&hub, 1).await;
    let presence = hub.presence("open:a").await.unwrap();
    assert_eq!(presence.len(), 1);

    // A command from a parked client gets its reply.
    send(&mut ws, json!({"id": 3, "history": {"channel": "open:a", "limit": 10}})).await;
    let r = next(&mut ws, &mut pending, &mut pings).await;
    assert_eq!(r["id"], 3, "{r}");
    assert_eq!(r["history"]["publications"][0]["data"], json!({"n": 1}), "{r}");
    parked(&hub, 1).await;

    // A server-side subscribe through the API reaches it.
    let request = axum::http::Request::post("/api/subscribe")
        .header("X-API-Key", "k")
        .header("content-type", "application/json")
        .body(Body::from(json!({"user": "ann", "channel": "open:b"}).to_string()))
        .unwrap();
    let response = volley_hub::router(hub.clone()).oneshot(request).await.unwrap();
    assert_eq!(response.status(), 200);
    let r = next(&mut ws, &mut pending, &mut pings).await;
    assert_eq!(r["push"]["channel"], "open:b", "{r}");
    assert!(r["push"]["subscribe"].is_object(), "{r}");
    parked(&hub, 1).await;

    // So does a disconnect.
    assert_eq!(hub.disconnect_user("ann", None, Disconnect::FORCE_NO_RECONNECT), 1);
    let r = next(&mut ws, &mut pending, &mut pings).await;
    assert_eq!(r, json!({"closed": Disconnect::FORCE_NO_RECONNECT.code}));
    parked(&hub, 0).await;
    assert_eq!(hub.num_clients(), 0);
}

/// A channel of a few subscribers has its parked subscribers written to by the
/// publisher; a larger one (more than 32) by its parkings' writers. Both keep them
/// parked, and deliver in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_subscribers_of_a_large_channel_get_every_publication_in_order() {
    let (hub, addr) = serve(config()).await;
    let mut clients = Vec::new();
    for i in 0..40 {
        let (mut ws, mut pending) = connected(addr, &format!("u{i}")).await;
        send(&mut ws, json!({"id": 2, "subscribe": {"channel": "open:many"}})).await;
        let r = next(&mut ws, &mut pending, &mut 0).await;
        assert!(r["subscribe"].is_object(), "{r}");
        clients.push((ws, pending));
    }
    parked(&hub, 40).await;
    let parks = hub.metrics().parks_total.load(Ordering::Relaxed);
    for n in 1..=5 {
        hub.publish("open:many", Bytes::from(format!("{{\"n\":{n}}}")), ServerPublish::default()).await.unwrap();
    }
    for (ws, pending) in &mut clients {
        for n in 1..=5 {
            let r = next(ws, pending, &mut 0).await;
            assert_eq!(r["push"]["pub"]["data"], json!({ "n": n }), "{r}");
        }
    }
    assert_eq!(hub.metrics().parks_total.load(Ordering::Relaxed), parks, "never taken back");
    assert_eq!(hub.metrics().parked_connections.load(Ordering::Relaxed), 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_client_is_pinged_and_its_pong_read_where_it_is_parked() {
    // park_after is longer than the pings' interval: the client parks once, answering
    // the pings meanwhile, and then stays parked through its keepalive.
    let mut c = config();
    c.client.park_after = Duration::from_secs(2);
    c.client.ping_interval = Duration::from_millis(600);
    c.client.pong_timeout = Duration::from_millis(400);
    let (hub, addr) = serve(c).await;
    let (mut ws, mut pending) = connected(addr, "bea").await;
    let mut pings = 0;
    let until = tokio::time::Instant::now() + Duration::from_secs(5);
    while hub.metrics().parked_connections.load(Ordering::Relaxed) != 1 {
        assert!(tokio::time::Instant::now() < until, "never parked");
        let _ = tokio::time::timeout(Duration::from_millis(50), next(&mut ws, &mut pending, &mut pings)).await;
    }
    let parks = hub.metrics().parks_total.load(Ordering::Relaxed);
    let commands = hub.metrics().commands_total.load(Ordering::Relaxed);
    let seen = pings;
    while pings < seen + 3 {
        let r = tokio::time::timeout(Duration::from_millis(100), next(&mut ws, &mut pending, &mut pings)).await;
        assert!(r.is_err(), "nothing but pings is sent: {r:?}");
        assert_eq!(hub.metrics().parked_connections.load(Ordering::Relaxed), 1, "parked throughout");
    }
    // The last pong read, the keepalive goes on.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(hub.metrics().parks_total.load(Ordering::Relaxed), parks, "never taken back for its keepalive");
    // Each pong counted as a command, as when the client has a task.
    assert!(hub.metrics().commands_total.load(Ordering::Relaxed) >= commands + 2);
    // And the client is served as before: a command takes it back.
    send(&mut ws, json!({"id": 9, "rpc": {"method": "m"}})).await;
    let r = next(&mut ws, &mut pending, &mut pings).await;
    assert_eq!(r["id"], 9, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_client_that_stops_answering_pings_is_disconnected_with_3012() {
    let (hub, addr) = serve(config()).await;
    let (mut ws, mut pending) = connected(addr, "bob").await;
    parked(&hub, 1).await;
    // Read the ping but send no pong.
    let mut pings = 0;
    loop {
        let v = match pending.pop() {
            Some(v) => v,
            None => match tokio::time::timeout(Duration::from_secs(5), ws.recv()).await.unwrap() {
                Some(Ok(Message::Text(t))) => serde_json::from_str(t.as_str()).unwrap(),
                Some(Ok(Message::Close(f))) => {
                    assert_eq!(f.map(|f| u16::from(f.code)), Some(Disconnect::NO_PONG.code));
                    break;
                }
                other => panic!("{other:?}"),
            },
        };
        assert_eq!(v, json!({}));
        pings += 1;
    }
    assert_eq!(pings, 1);
    parked(&hub, 0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_client_that_goes_away_leaves_its_channels() {
    let (hub, addr) = serve(config()).await;
    let (mut ws, mut pending) = connected(addr, "cy").await;
    send(&mut ws, json!({"id": 2, "subscribe": {"channel": "open:c"}})).await;
    next(&mut ws, &mut pending, &mut 0).await;
    parked(&hub, 1).await;
    assert_eq!(hub.num_subscriptions(), 1);
    drop(ws);
    parked(&hub, 0).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while hub.num_clients() > 0 || hub.num_connections() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "the client stayed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(hub.num_subscriptions(), 0);
    assert!(hub.presence("open:c").await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_router_alone_serves_the_websocket_endpoint_without_parking() {
    let (hub, addr) = common::serve_router(config()).await;
    let (mut ws, mut pending) = connected(addr, "dee").await;
    send(&mut ws, json!({"id": 2, "subscribe": {"channel": "open:d"}})).await;
    next(&mut ws, &mut pending, &mut 0).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(hub.metrics().parked_connections.load(Ordering::Relaxed), 0);
    hub.publish("open:d", Bytes::from_static(b"1"), ServerPublish::default()).await.unwrap();
    let r = next(&mut ws, &mut pending, &mut 0).await;
    assert_eq!(r["push"]["pub"]["data"], 1, "{r}");
}
