//! The tokio-websockets echo server: `ServerBuilder::accept` with the default
//! configuration and limits, then its example's `Stream` + `Sink` loop, written as for
//! tokio-tungstenite (see tungstenite.rs): `feed` each reply, `flush` once no further
//! message is ready to be read. tokio-websockets itself writes out queued frames
//! whenever the stream is polled for the next message, so in practice every reply
//! leaves in a write of its own, as with `send`.

use futures_util::{FutureExt as _, SinkExt as _, StreamExt as _};
use tokio::net::TcpStream;
use tokio_websockets::{Error, ServerBuilder};

pub async fn echo(tcp: TcpStream) -> Result<(), Error> {
    let (_request, mut ws) = ServerBuilder::new().accept(tcp).await?;
    loop {
        let next = match ws.next().now_or_never() {
            Some(next) => next,
            None => {
                ws.flush().await?;
                ws.next().await
            }
        };
        let Some(msg) = next else { break };
        let msg = msg?;
        if msg.is_text() || msg.is_binary() {
            ws.feed(msg).await?;
        }
    }
    Ok(())
}
