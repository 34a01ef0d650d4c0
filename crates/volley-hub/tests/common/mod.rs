//! Helpers shared by the hub's integration tests.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use volley_hub::{Hub, HubConfig};

/// A hub with `config`, serving its routes on a free loopback port.
pub async fn serve(config: HubConfig) -> (Hub, SocketAddr) {
    let hub = Hub::new(config).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = volley_hub::router(hub.clone());
    tokio::spawn(async move { axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await });
    (hub, addr)
}
