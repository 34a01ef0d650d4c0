//! The `meta` claim of a connection token stays on the server: the server API's
//! `connections` shows it, with the client's name and version and the token's `jti`
//! and `iat`; no client ever sees it (connect result, presence, join, publication).

mod common;

use common::{serve, token, Client};
use serde_json::{json, Value};
use volley_hub::HubConfig;

fn config() -> HubConfig {
    serde_json::from_value(json!({
        "client": {"token": {"hmac_secret_key": common::SECRET}},
        "channel": {"namespaces": [
            {"name": "room", "allow_subscribe_for_client": true, "presence": true, "join_leave": true,
             "force_push_join_leave": true, "allow_presence_for_subscriber": true,
             "allow_publish_for_subscriber": true},
        ]},
        "http_api": {"key": "k"},
    }))
    .unwrap()
}

async fn api(addr: std::net::SocketAddr, method: &str, params: Value) -> Value {
    use http_body_util::BodyExt as _;
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::post(format!("/api/{method}"))
        .header("host", "localhost")
        .header("x-api-key", "k")
        .body(http_body_util::Full::new(bytes::Bytes::from(params.to_string())))
        .unwrap();
    let body = send.send_request(req).await.unwrap().into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

#[tokio::test]
async fn meta_is_shown_by_the_api_and_to_no_client() {
    let (_hub, addr) = serve(config()).await;
    let meta = json!({"plan": "pro", "tenant": 42});
    let claims = json!({"sub": "ann", "info": {"name": "Ann"}, "meta": meta, "jti": "token-1", "iat": 1_700_000_000});
    let (mut ann, connect) =
        Client::connected(addr, json!({"token": token(claims), "name": "js", "version": "5.8.0"})).await;
    let ann_id = connect["connect"]["client"].as_str().unwrap().to_owned();
    let (mut bob, _) = Client::connected(addr, json!({"token": token(json!({"sub": "bob"}))})).await;
    let mut seen = vec![connect.clone()];
    seen.push(ann.call(json!({"id": 2, "subscribe": {"channel": "room:a"}})).await);
    seen.push(bob.call(json!({"id": 2, "subscribe": {"channel": "room:a"}})).await);
    seen.push(bob.next().await.unwrap()); // bob's own join
    seen.push(ann.next().await.unwrap()); // ann's own join
    seen.push(ann.next().await.unwrap()); // bob's join
    seen.push(bob.call(json!({"id": 3, "presence": {"channel": "room:a"}})).await);
    seen.push(ann.call(json!({"id": 3, "publish": {"channel": "room:a", "data": {"hi": 1}}})).await);
    seen.push(bob.next().await.unwrap()); // ann's publication, with her info
    let all = Value::Array(seen).to_string();
    assert!(all.contains("\"Ann\""), "ann's info is shown: {all}");
    assert!(!all.contains("plan") && !all.contains("tenant") && !all.contains("token-1"), "{all}");
    let api_presence = api(addr, "presence", json!({"channel": "room:a"})).await.to_string();
    assert!(api_presence.contains("Ann") && !api_presence.contains("plan"), "{api_presence}");

    // The API's connections: ann's, with her meta.
    let r = api(addr, "connections", json!({"user": "ann"})).await;
    assert_eq!(
        r["result"]["connections"],
        json!({ann_id.clone(): {
            "user": "ann", "app_name": "js", "app_version": "5.8.0", "transport": "websocket", "protocol": "json",
            "token_uid": "token-1", "token_issued_at": 1_700_000_000, "meta": meta,
        }}),
        "{r}"
    );
    // Everyone's, without `user`; nobody's for a user with no connection.
    let r = api(addr, "connections", json!({})).await;
    assert_eq!(r["result"]["connections"].as_object().unwrap().len(), 2, "{r}");
    assert_eq!(r["result"]["connections"][&ann_id]["meta"], meta);
    let r = api(addr, "connections", json!({"user": "nobody"})).await;
    assert_eq!(r["result"]["connections"], json!({}), "{r}");
    // Gone when the connection is.
    drop(ann);
    for _ in 0..100 {
        let r = api(addr, "connections", json!({"user": "ann"})).await;
        if r["result"]["connections"] == json!({}) {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("ann's connection is still listed");
}
