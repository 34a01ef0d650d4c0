//! Transports: how clients reach the hub. Each turns its connection into commands for
//! a session and writes the session's queue back.

pub mod emulation;
pub mod http;
#[cfg(unix)]
pub mod tcp;
pub mod websocket;
