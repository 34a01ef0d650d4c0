//! Helpers shared by the hub's integration tests.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use volley_hub::{Hub, HubConfig};

/// A hub with `config`, serving its routes on a free loopback port as `volley serve`
/// does without TLS: the WebSocket endpoint on the socket itself (idle clients parked
/// after `client.park_after`), the rest through the router.
#[allow(dead_code)] // not every test file uses every helper
pub async fn serve(config: HubConfig) -> (Hub, SocketAddr) {
    let hub = Hub::new(config).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = volley_hub::router(hub.clone());
    tokio::spawn(volley_hub::transport::tcp::serve(hub.clone(), listener, app, std::future::pending()));
    (hub, addr)
}

/// The same hub with every request, the WebSocket endpoint's included, served by the
/// axum router (as an application that merges the router into its own serves it).
#[allow(dead_code)]
pub async fn serve_router(config: HubConfig) -> (Hub, SocketAddr) {
    let hub = Hub::new(config).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = volley_hub::router(hub.clone());
    tokio::spawn(async move { axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await });
    (hub, addr)
}
