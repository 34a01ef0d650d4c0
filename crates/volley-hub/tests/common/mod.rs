//! Helpers shared by the hub's integration tests: a hub on a free port, a JSON client
//! that reads replies and pushes one at a time, and HS256 tokens.

// Each test file uses some of these.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::net::TcpListener;
use volley::{MaybeTlsStream, Message, WebSocket};
use volley_hub::{Hub, HubConfig};

/// The HMAC secret of [`token`].
pub const SECRET: &str = "the-secret-of-the-integration-tests";

/// A hub with `config`, serving its routes on a free loopback port as `volley serve`
/// does without TLS: the WebSocket endpoint on the socket itself (idle clients parked
/// after `client.park_after`), the rest through the router.
pub async fn serve(config: HubConfig) -> (Hub, SocketAddr) {
    let hub = Hub::new(config).unwrap();
    let addr = serve_hub(hub.clone()).await;
    (hub, addr)
}

/// Serves `hub` on a free loopback port, as [`serve`] does.
pub async fn serve_hub(hub: Hub) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = volley_hub::router(hub.clone());
    tokio::spawn(volley_hub::transport::tcp::serve(hub, listener, app, std::future::pending()));
    addr
}

/// The same hub with every request, the WebSocket endpoint's included, served by the
/// axum router (as an application that merges the router into its own serves it).
pub async fn serve_router(config: HubConfig) -> (Hub, SocketAddr) {
    let hub = Hub::new(config).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = volley_hub::router(hub.clone());
    tokio::spawn(async move { axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await });
    (hub, addr)
}

/// An HS256 JWT with `claims`, signed with [`SECRET`].
pub fn token(claims: Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key).unwrap()
}

/// Now, in Unix seconds.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// A client of the JSON format, as a test drives it: commands in, replies and pushes
/// out one at a time (a frame may carry several, one per line).
pub struct Client {
    /// The connection.
    pub ws: WebSocket<MaybeTlsStream>,
    pending: Vec<Value>,
}

impl Client {
    /// Opens a connection (no `connect` yet).
    pub async fn open(addr: SocketAddr) -> Client {
        let ws = volley::connect(&format!("ws://{addr}/connection/websocket")).await.unwrap().0;
        Client { ws, pending: Vec::new() }
    }

    /// Opens a connection and connects with `connect` (`{}` for anonymous); panics
    /// unless the reply is a connect result, which it returns.
    pub async fn connected(addr: SocketAddr, connect: Value) -> (Client, Value) {
        let mut c = Client::open(addr).await;
        let r = c.call(serde_json::json!({"id": 1, "connect": connect})).await;
        assert!(r["connect"]["client"].is_string(), "{r}");
        (c, r)
    }

    /// Sends one command.
    pub async fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.unwrap();
    }

    /// Sends a command and returns the next reply or push (the test knows which).
    pub async fn call(&mut self, v: Value) -> Value {
        self.send(v).await;
        self.next().await.expect("a reply")
    }

    /// The next reply or push, within 5 seconds; `None` when the connection ends.
    pub async fn next(&mut self) -> Option<Value> {
        self.next_within(Duration::from_secs(5)).await.expect("a reply or push within the time given")
    }

    /// The next reply or push within `wait`: `Err` when none came, `Ok(None)` when the
    /// connection ended.
    pub async fn next_within(&mut self, wait: Duration) -> Result<Option<Value>, ()> {
        loop {
            if !self.pending.is_empty() {
                return Ok(Some(self.pending.remove(0)));
            }
            match tokio::time::timeout(wait, self.ws.recv()).await.map_err(|_| ())? {
                Some(Ok(Message::Text(t))) => {
                    for line in t.as_str().split('\n') {
                        self.pending.push(serde_json::from_str(line).unwrap_or_else(|e| panic!("{line}: {e}")));
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Ok(None),
                Some(Ok(_)) => {}
            }
        }
    }

    /// The close code the server ends the connection with, skipping what comes before
    /// it (within `wait`).
    pub async fn close_code_within(&mut self, wait: Duration) -> u16 {
        loop {
            match tokio::time::timeout(wait, self.ws.recv()).await.expect("a close in time") {
                Some(Ok(Message::Close(Some(f)))) => return f.code.into(),
                Some(Ok(Message::Close(None))) | None => return 1005,
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("{e}"),
            }
        }
    }

    /// The close code, within 5 seconds.
    pub async fn close_code(&mut self) -> u16 {
        self.close_code_within(Duration::from_secs(5)).await
    }
}
