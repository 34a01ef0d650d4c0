//! # volley-proto
//!
//! The sans-I/O core of Volley: a complete RFC 6455 WebSocket implementation that never
//! touches a socket, a clock or a runtime. Bytes go in, events and bytes come out:
//!
//! ```text
//!  transport bytes ─► receive() ─► Connection ─► poll_event()    ─► Text, Binary, Ping, Pong, Close, Error
//!  app commands    ─► send_*()  ─► Connection ─► poll_transmit() ─► Bytes chunks to write
//! ```
//!
//! The opening handshake lives in [`handshake`] ([`handshake::Request`] and
//! [`handshake::Response`] on the server, [`handshake::ClientRequest`] on the client);
//! once it succeeds, a [`Connection`] takes over, fed with any bytes that followed the
//! handshake head.
//!
//! A peer's fault never panics and never returns an `Err` from `receive`: the
//! connection fails with the right close code and reports the cause as
//! [`Event::Error`]. Local misuse (sending after close) is a [`SendError`].
//!
//! ```
//! use volley_proto::handshake::{ClientRequest, Request, Response};
//! use volley_proto::{Config, Connection, Event, Role};
//!
//! let config = Config::default();
//! // Client: build the request.
//! let request = ClientRequest::new("example.com", "/chat", &config);
//! // Server: parse it and accept.
//! let (req, _) = Request::parse(&request.encode(), &config).unwrap().unwrap();
//! let answer = Response::accept(&req).encode();
//! // Client: check the answer.
//! request.parse_response(&answer, &config).unwrap().unwrap();
//!
//! let mut client = Connection::new(Role::Client, config.clone());
//! let mut server = Connection::new(Role::Server, config);
//! client.send_text("hello").unwrap();
//! while let Some(chunk) = client.poll_transmit() {
//!     server.receive(&chunk);
//! }
//! assert_eq!(server.poll_event(), Some(Event::Text("hello".into())));
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod config;
pub mod connection;
pub mod deflate;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod prepared;
pub mod utf8;

pub use config::{BufferPool, Buffers, Config, ConfigError, RandomSource};
pub use connection::{
    check_close, check_control_payload, Connection, Event, MessageKind, ParkedConnection, Role, State,
};
pub use deflate::{DeflateConfig, DeflateParams};
pub use error::{ProtocolError, SendError};
pub use frame::{CloseCode, CloseFrame, OpCode};
pub use handshake::{ExtensionOffer, HandshakeError};
pub use prepared::PreparedMessage;
pub use utf8::{Utf8Bytes, Utf8Error, Utf8Validator};
