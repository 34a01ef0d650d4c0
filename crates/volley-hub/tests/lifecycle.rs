//! A connection's life over real WebSocket connections: a token that has expired is
//! 109 at connect, one that expires while connected closes the connection with 3005
//! (after `client.expired_close_delay`), and the connection limits per user and per IP
//! address close the connection over the limit with 3504 and free their place when a
//! connection ends.

mod common;

use std::time::{Duration, Instant};

use common::{serve, token, unix_now, Client};
use serde_json::{json, Value};
use volley_hub::{Hub, HubConfig};

fn config(client: Value) -> HubConfig {
    let mut c = json!({"token": {"hmac_secret_key": common::SECRET}, "allow_anonymous_connect_without_token": true});
    c.as_object_mut().unwrap().extend(client.as_object().unwrap().clone());
    serde_json::from_value(json!({"client": c})).unwrap()
}

async fn connect(addr: std::net::SocketAddr, user: &str) -> (Client, Value) {
    let mut c = Client::open(addr).await;
    let r = c.call(json!({"id": 1, "connect": {"token": token(json!({"sub": user}))}})).await;
    (c, r)
}

async fn clients_become(hub: &Hub, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while hub.num_clients() != n {
        assert!(Instant::now() < deadline, "{} clients, not {n}", hub.num_clients());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn an_expired_token_is_109_at_connect() {
    let (hub, addr) = serve(config(json!({}))).await;
    let mut c = Client::open(addr).await;
    let expired = token(json!({"sub": "u", "exp": unix_now() - 120}));
    let r = c.call(json!({"id": 1, "connect": {"token": expired}})).await;
    assert_eq!(r, json!({"id": 1, "error": {"code": 109, "message": "token expired"}}));
    assert_eq!(hub.num_clients(), 0, "not connected");
    // The client gets a new token and connects on the same connection.
    let fresh = token(json!({"sub": "u", "exp": unix_now() + 3600}));
    let r = c.call(json!({"id": 2, "connect": {"token": fresh}})).await;
    assert_eq!(r["connect"]["expires"], true, "{r}");
    assert_eq!(hub.num_clients(), 1);
}

#[tokio::test]
async fn a_connection_whose_token_expires_without_refresh_is_closed_with_3005() {
    expiring_connection(json!({"expired_close_delay": "0s"})).await;
}

#[tokio::test]
async fn a_parked_connection_whose_token_expires_is_closed_with_3005() {
    // Idle, it is parked before the expiry, and taken back for it.
    expiring_connection(json!({"expired_close_delay": "0s", "park_after": "100ms"})).await;
}

async fn expiring_connection(client: Value) {
    let (hub, addr) = serve(config(client)).await;
    let started = Instant::now();
    let mut c = Client::open(addr).await;
    let r = c.call(json!({"id": 1, "connect": {"token": token(json!({"sub": "u", "exp": unix_now() + 2}))}})).await;
    assert_eq!(r["connect"]["expires"], true, "{r}");
    assert!(r["connect"]["ttl"].as_u64().unwrap() <= 2, "{r}");
    assert_eq!(c.close_code_within(Duration::from_secs(6)).await, 3005);
    assert!(started.elapsed() >= Duration::from_secs(1), "not before the expiry: {:?}", started.elapsed());
    clients_become(&hub, 0).await;
}

#[tokio::test]
async fn the_grace_after_the_expiry_lets_a_refresh_in() {
    let (_hub, addr) = serve(config(json!({"expired_close_delay": "2s"}))).await;
    let mut c = Client::open(addr).await;
    let r = c.call(json!({"id": 1, "connect": {"token": token(json!({"sub": "u", "exp": unix_now() + 1}))}})).await;
    assert_eq!(r["connect"]["expires"], true, "{r}");
    // After the expiry, within the grace: the refresh is taken.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let r = c.call(json!({"id": 2, "refresh": {"token": token(json!({"sub": "u", "exp": unix_now() + 3600}))}})).await;
    assert_eq!(r["refresh"]["expires"], true, "{r}");
    assert!(c.next_within(Duration::from_secs(3)).await.is_err(), "still open, nothing pushed");
}

#[tokio::test]
async fn the_per_user_connection_limit_closes_the_one_over_it_with_3504() {
    let (hub, addr) = serve(config(json!({"user_connection_limit": 2}))).await;
    let (mut a1, r) = connect(addr, "alice").await;
    assert!(r["connect"].is_object(), "{r}");
    let (_a2, r) = connect(addr, "alice").await;
    assert!(r["connect"].is_object(), "{r}");
    let mut a3 = Client::open(addr).await;
    a3.send(json!({"id": 1, "connect": {"token": token(json!({"sub": "alice"}))}})).await;
    assert_eq!(a3.close_code().await, 3504);
    // Another user, and anonymous users, are not counted with alice.
    let (_b, r) = connect(addr, "bob").await;
    assert!(r["connect"].is_object(), "{r}");
    let (_anon1, r) = Client::connected(addr, json!({})).await;
    let (_anon2, _) = Client::connected(addr, json!({})).await;
    let (_anon3, _) = Client::connected(addr, json!({})).await;
    assert!(r["connect"].is_object(), "{r}");
    clients_become(&hub, 6).await;
    // One of alice's ends: her place is free again.
    a1.ws.close(volley::CloseCode::NORMAL, "").await.unwrap();
    clients_become(&hub, 5).await;
    let (_a4, r) = connect(addr, "alice").await;
    assert!(r["connect"].is_object(), "{r}");
}

#[tokio::test]
async fn the_per_ip_connection_limit_closes_the_one_over_it_with_3504() {
    let (hub, addr) = serve(config(json!({"ip_connection_limit": 2}))).await;
    let (mut c1, _) = Client::connected(addr, json!({})).await;
    let (_c2, _) = connect(addr, "carol").await;
    // A third from 127.0.0.1, whoever it is.
    for connect in [json!({}), json!({"token": token(json!({"sub": "dave"}))})] {
        let mut c = Client::open(addr).await;
        c.send(json!({"id": 1, "connect": connect})).await;
        assert_eq!(c.close_code().await, 3504);
    }
    assert_eq!(hub.num_clients(), 2);
    c1.ws.close(volley::CloseCode::NORMAL, "").await.unwrap();
    clients_become(&hub, 1).await;
    let (_c3, r) = Client::connected(addr, json!({})).await;
    assert!(r["connect"].is_object(), "{r}");
}
