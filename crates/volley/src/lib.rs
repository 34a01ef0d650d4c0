//! # volley
//!
//! WebSocket (RFC 6455) on tokio, built on the sans-I/O core [`volley_proto`].
//!
//! ```text
//!  socket ─► WebSocket<S> ─► volley_proto::Connection ─► Stream<Item = Result<Message>>
//!  Sink<Message> / send / feed ─► Connection ─► corked, vectored writes ─► socket
//! ```
//!
//! A server accepts on any `AsyncRead + AsyncWrite` ([`accept`] with the defaults,
//! [`ServerBuilder`] for a configuration, a hook that sees the request, TLS and TCP
//! set-up); a client [`connect`]s to a `ws://` URL or runs the handshake on its own
//! transport ([`ClientBuilder`]).
//!
//! Features, all on by default (none changes behaviour; each adds an API): `tls`
//! (`wss://`, the `tls` module), `park` (the `park` module, Unix only), `proxy` (the
//! `proxy` module and proxies from the environment); off by default: `hyper` (the
//! `http` module: hyper, HTTP/2) and `axum` (its extractor). With
//! `default-features = false` the crate serves and connects `ws://` only, directly.
//!
//! ```no_run
//! # async fn run() -> Result<(), volley::Error> {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:9001").await?;
//! let (tcp, _) = listener.accept().await?;
//! let mut ws = volley::accept(tcp).await?;
//! while let Some(msg) = ws.recv().await {
//!     let msg = msg?;
//!     if msg.is_data() {
//!         ws.feed(msg).await?; // corked: flushed before the next read
//!     }
//! }
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

pub mod client;
pub mod config;
pub mod error;
#[cfg(feature = "hyper")]
pub mod http;
pub mod message;
#[cfg(all(unix, feature = "park"))]
pub mod park;
mod pool;
#[cfg(feature = "proxy")]
pub mod proxy;
pub mod reconnect;
pub mod server;
pub mod split;
mod stream;
#[cfg(feature = "tls")]
pub mod tls;
pub mod websocket;

pub use client::{connect, ClientBuilder};
pub use config::{Config, SlowReader};
pub use error::{Error, Timeout};
pub use message::Message;
pub use reconnect::{Backoff, ConnectionState, Reconnecting};
pub use server::{accept, HandshakeRequest, Rejection, ServerBuilder};
pub use split::{Broadcast, ReadHalf, ReuniteError, WriteHalf};
pub use stream::MaybeTlsStream;
pub use websocket::{ConnectionInfo, WebSocket};

pub use volley_proto as proto;
pub use volley_proto::handshake::{Request, Response, ServerResponse};
pub use volley_proto::{CloseCode, CloseFrame, MessageKind, PreparedMessage, Role, State, Utf8Bytes};

/// The README's examples, compiled as doctests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
