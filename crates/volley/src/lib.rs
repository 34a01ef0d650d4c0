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
#[cfg(unix)]
pub mod park;
pub mod proxy;
pub mod reconnect;
pub mod server;
pub mod split;
pub mod tls;
pub mod websocket;

pub use client::{connect, ClientBuilder};
pub use config::{Config, SlowReader};
pub use error::{Error, Timeout};
pub use message::Message;
pub use reconnect::{Backoff, ConnectionState, Reconnecting};
pub use server::{accept, Rejection, ServerBuilder};
pub use split::{Broadcast, ReadHalf, ReuniteError, WriteHalf};
pub use tls::MaybeTlsStream;
pub use websocket::{ConnectionInfo, WebSocket};

pub use volley_proto as proto;
pub use volley_proto::handshake::{Request, Response, ServerResponse};
pub use volley_proto::{CloseCode, CloseFrame, MessageKind, PreparedMessage, Role, State, Utf8Bytes};

/// The README's examples, compiled as doctests so that they stay true.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
