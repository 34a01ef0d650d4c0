//! The fastwebsockets echo server: the crate's first documented server path,
//! `WebSocket::after_handshake` on the TCP stream (the opening handshake is the
//! application's: see handshake.rs), wrapped in a `FragmentCollector` so whole
//! messages are echoed, with the example's loop:
//! `read_frame`, then `write_frame` of the same frame. Default settings (auto pong,
//! auto close, vectored writes above 1 KiB). fastwebsockets has no write buffering to
//! batch replies: every `write_frame` is one write.
//!
//! Its `upgrade` feature (a hyper server) would put hyper's upgraded-connection type
//! under the echo loop; the direct path is the faster one.

use fastwebsockets::{FragmentCollector, OpCode, Role, WebSocket, WebSocketError};
use tokio::net::TcpStream;

pub async fn echo(mut tcp: TcpStream) -> Result<(), WebSocketError> {
    crate::handshake::handshake(&mut tcp).await?;
    let mut ws = FragmentCollector::new(WebSocket::after_handshake(tcp, Role::Server));
    loop {
        let frame = ws.read_frame().await?;
        match frame.opcode {
            OpCode::Close => break,
            OpCode::Text | OpCode::Binary => ws.write_frame(frame).await?,
            _ => {}
        }
    }
    Ok(())
}
