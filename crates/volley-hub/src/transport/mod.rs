//! Transports: how clients reach the hub. Each turns its connection into commands for
//! a session and writes the session's queue back.

pub mod emulation;
pub mod http;
pub(crate) mod long_poll;
pub mod position;
#[cfg(unix)]
pub mod tcp;
pub(crate) mod uni;
pub mod websocket;
