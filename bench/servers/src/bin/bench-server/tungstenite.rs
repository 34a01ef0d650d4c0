//! The tokio-tungstenite echo server: `accept_async` with the default configuration,
//! then the `Stream` + `Sink` loop of its examples (`next`, then write back), except
//! that replies are batched the way tungstenite documents it (`feed` buffers, `flush`
//! writes): a reply is fed, and the writes are flushed once no further message is
//! ready to be read. That is what Volley's echo does implicitly, so both answer a batch
//! of pipelined messages with one write; with `send` per message tokio-tungstenite
//! would make one write per message.

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Error;

pub async fn echo(tcp: TcpStream) -> Result<(), Error> {
    let ws = tokio_tungstenite::accept_async(tcp).await?;
    super::stream_sink::echo(ws, |m: &tokio_tungstenite::tungstenite::Message| m.is_text() || m.is_binary()).await
}
