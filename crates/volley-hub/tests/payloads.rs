//! Payloads are checked once, where they enter the hub, and delivered as the bytes that
//! came: the server API keeps a publication's JSON text as it was sent, bad JSON is
//! refused with the right code, and binary data never reaches a JSON client inside a
//! reply (3506 instead).

mod common;

use common::{serve, Client};
use serde_json::{json, Value};
use volley_hub::HubConfig;

fn config() -> HubConfig {
    serde_json::from_value(json!({
        "client": {"allow_anonymous_connect_without_token": true},
        "channel": {"namespaces": [
            {"name": "open", "allow_subscribe_for_anonymous": true, "allow_publish_for_anonymous": true,
             "allow_history_for_anonymous": true, "history_size": 10, "history_ttl": "60s"},
        ]},
        "http_api": {"key": "k"},
    }))
    .unwrap()
}

async fn api(addr: std::net::SocketAddr, method: &str, body: &str) -> Value {
    use http_body_util::BodyExt as _;
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::post(format!("/api/{method}"))
        .header("host", "localhost")
        .header("x-api-key", "k")
        .body(http_body_util::Full::new(bytes::Bytes::copy_from_slice(body.as_bytes())))
        .unwrap();
    let res = send.send_request(req).await.unwrap();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&body).unwrap()
}

/// The raw text of the next frame (one push).
async fn raw_frame(c: &mut Client) -> String {
    match tokio::time::timeout(std::time::Duration::from_secs(5), c.ws.recv()).await.unwrap() {
        Some(Ok(volley::Message::Text(t))) => t.as_str().to_owned(),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn the_api_delivers_the_json_text_it_was_sent_not_a_reserialization() {
    let (_hub, addr) = serve(config()).await;
    let (mut c, _) = Client::connected(addr, json!({})).await;
    assert!(c.call(json!({"id": 2, "subscribe": {"channel": "open:a"}})).await["subscribe"].is_object());
    // Keys out of order, spaces, a number written as it was, a line break between tokens.
    let r =
        api(addr, "publish", "{\"channel\": \"open:a\", \"data\": {\"z\": 1.50, \"a\": [ 1,2 ],\n \"m\": \"x\\ny\"}}")
            .await;
    assert!(r["result"].is_object(), "{r}");
    let frame = raw_frame(&mut c).await;
    assert!(frame.contains(r#""data":{"z": 1.50, "a": [ 1,2 ],  "m": "x\ny"}"#), "{frame}");
}

#[tokio::test]
async fn bad_json_is_refused_where_it_enters() {
    let (_hub, addr) = serve(config()).await;
    // The API: a body that is not JSON, and a data that is not.
    for body in [r#"{"channel": "open:a", "data": {"#, r#"{"channel": "open:a", "data": nope}"#, "\u{0}"] {
        let r = api(addr, "publish", body).await;
        assert_eq!(r["error"]["code"], 107, "{body}: {r}");
    }
    // A JSON client's command with bad JSON data is a malformed command: 3501.
    let (mut c, _) = Client::connected(addr, json!({})).await;
    c.ws.send(volley::Message::text(r#"{"id":2,"publish":{"channel":"open:a","data":{"x":}}}"#)).await.unwrap();
    assert_eq!(c.close_code().await, 3501);
}

#[tokio::test]
async fn binary_data_never_goes_to_a_json_client_in_a_reply() {
    let (_hub, addr) = serve(config()).await;
    // Bytes that are not JSON, through the API's b64data.
    let r = api(addr, "publish", r#"{"channel": "open:bin", "b64data": "AAEC/w=="}"#).await;
    assert!(r["result"].is_object(), "{r}");
    // A JSON client that reads the history gets 3506, not a reply that is not JSON.
    let (mut c, _) = Client::connected(addr, json!({})).await;
    c.send(json!({"id": 2, "history": {"channel": "open:bin", "limit": 10}})).await;
    assert_eq!(c.close_code().await, 3506);
    // JSON text sent as b64data is JSON: a JSON client reads it.
    let r = api(addr, "publish", r#"{"channel": "open:text", "b64data": "eyJrIjogMX0="}"#).await;
    assert!(r["result"].is_object(), "{r}");
    let (mut c, _) = Client::connected(addr, json!({})).await;
    let h = c.call(json!({"id": 2, "history": {"channel": "open:text", "limit": 10}})).await;
    assert_eq!(h["history"]["publications"][0]["data"], json!({"k": 1}), "{h}");
}
