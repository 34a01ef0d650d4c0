//! The tokio-websockets echo server: `ServerBuilder::accept` with the default
//! configuration and limits, then its example's `Stream` + `Sink` loop, written as for
//! tokio-tungstenite (see tungstenite.rs): `feed` each reply, `flush` once no further
//! message is ready to be read. tokio-websockets itself writes out queued frames
//! whenever the stream is polled for the next message, so in practice every reply
//! leaves in a write of its own, as with `send`.

use tokio::net::TcpStream;
use tokio_websockets::{Error, ServerBuilder};

pub async fn echo(tcp: TcpStream) -> Result<(), Error> {
    let (_request, ws) = ServerBuilder::new().accept(tcp).await?;
    super::stream_sink::echo(ws, |m: &tokio_websockets::Message| m.is_text() || m.is_binary()).await
}
