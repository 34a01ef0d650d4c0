//! The echo loop shared by the libraries whose WebSocket is a `Stream` + `Sink`
//! (tokio-tungstenite, tokio-websockets): `feed` each data message back, `flush` once
//! no further message is ready to be read, so a batch of pipelined messages can be
//! answered with one write where the library allows it (tungstenite's documented
//! feed/flush batching).

use futures_util::{FutureExt as _, Sink, SinkExt as _, Stream, StreamExt as _};

/// Echoes every message for which `is_data` holds until the stream ends.
pub async fn echo<W, M, E>(mut ws: W, is_data: impl Fn(&M) -> bool) -> Result<(), E>
where
    W: Stream<Item = Result<M, E>> + Sink<M, Error = E> + Unpin,
{
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
        if is_data(&msg) {
            ws.feed(msg).await?;
        }
    }
    Ok(())
}
