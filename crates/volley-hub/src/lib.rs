//! The Volley hub: a real-time messaging engine on Volley's WebSockets, spoken to with
//! Centrifugo's client protocol (JSON and Protobuf) so that Centrifugo's client SDKs
//! work unchanged.
//!
//! Channels with namespaces and permissions, presence, join and leave, history with
//! positions and recovery, a server API for the application's backend, and a broker
//! behind it all (in memory by default). Embed it in a tokio or axum application with
//! [`Hub`], or run it as `volley serve`.

pub mod api;
pub mod auth;
pub mod broker;
pub mod config;
pub mod delta;
pub mod engine;
pub mod filter;
pub(crate) mod http_client;
pub mod protocol;
pub mod proxy;
pub mod pusher;
pub mod transport;

pub use config::HubConfig;
pub use engine::{ConfigError, ConnectionInfo, Hub, ServerPublish};
pub use transport::http::router;
