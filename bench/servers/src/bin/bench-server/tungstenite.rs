//! The tokio-tungstenite echo server: `accept_async` with the default configuration,
//! then the `Stream` + `Sink` loop of its examples (`next`, then write back), except
//! that replies are batched the way tungstenite documents it (`feed` buffers, `flush`
//! writes): a reply is fed, and the writes are flushed once no further message is
//! ready to be read. That is what Volley's echo does implicitly, so both answer a batch
//! of pipelined messages with one write; with `send` per message tokio-tungstenite
//! would make one write per message.

use futures_util::{FutureExt as _, SinkExt as _, StreamExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Error;

pub async fn echo(tcp: TcpStream) -> Result<(), Error> {
    let mut ws = tokio_tungstenite::accept_async(tcp).await?;
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
