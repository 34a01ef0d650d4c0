//! The WebSocket transport (`/connection/websocket`): frames in, commands to the
//! session; the client's queue out, everything queued at once in one frame (JSON
//! replies joined by newlines, Protobuf ones one after another).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};
use volley::{CloseCode, Message, WebSocket};

use crate::engine::client::ClientShared;
use crate::engine::session::Session;
use crate::engine::Hub;
use crate::protocol::{self, Disconnect, Format};

/// The subprotocol of the Protobuf format.
pub const PROTOBUF_SUBPROTOCOL: &str = "centrifuge-protobuf";

/// The wire format a handshake asked for: Protobuf with the `centrifuge-protobuf`
/// subprotocol (or `format=protobuf` in the query), JSON otherwise.
pub fn format_of(protocol: Option<&str>, query: Option<&str>) -> Format {
    let in_query =
        query.is_some_and(|q| q.split('&').any(|kv| kv == "format=protobuf" || kv == "cf_protocol=protobuf"));
    if protocol == Some(PROTOBUF_SUBPROTOCOL) || in_query {
        Format::Protobuf
    } else {
        Format::Json
    }
}

/// Serves one client on an accepted WebSocket until it ends.
pub async fn serve<S>(hub: Hub, mut ws: WebSocket<S>, format: Format, remote: Option<SocketAddr>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let _open = OpenGuard::new(&hub);
    let config = hub.config().client.clone();
    let mut session = Session::new(hub.inner.clone(), format, remote.map(|a| a.ip()));
    let client = session.client.clone();
    let stale = tokio::time::sleep(config.stale_close_delay);
    tokio::pin!(stale);
    let ping_every =
        if config.ping_interval.is_zero() { Duration::from_secs(86400 * 365) } else { config.ping_interval };
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    let mut batch = Vec::new();
    let end: Option<Disconnect> = loop {
        let pong_deadline = session.ping_sent.map(|t| t + config.pong_timeout);
        let expiry = session.deadline().map(|t| {
            let now = crate::engine::now_ms() as u64 / 1000;
            tokio::time::Instant::now() + Duration::from_secs(t.saturating_sub(now))
        });
        tokio::select! {
            biased;
            _ = client.ready() => {
                if let Err(d) = session.apply_control().await {
                    break Some(d);
                }
            }
            msg = ws.recv() => {
                let outcome = match msg {
                    None => break None,
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, client = %client.id, "connection failed");
                        break None;
                    }
                    Some(Ok(Message::Text(t))) if format == Format::Json => commands(&mut session, protocol::json::decode_commands(&t.into_bytes()).map_err(|e| e.to_string())).await,
                    Some(Ok(Message::Binary(b))) if format == Format::Protobuf => commands(&mut session, protocol::protobuf::decode_commands(&b).map_err(|e| e.to_string())).await,
                    Some(Ok(Message::Text(_) | Message::Binary(_))) => Err(Disconnect::BAD_REQUEST),
                    Some(Ok(Message::Close(_))) => break None,
                    Some(Ok(_)) => Ok(()),
                };
                if let Err(d) = outcome {
                    break Some(d);
                }
            }
            _ = &mut stale, if !session.is_connected() => break Some(Disconnect::STALE),
            _ = ping.tick(), if session.is_connected() && !config.ping_interval.is_zero() => {
                session.ping();
                session.refresh_presence().await;
            }
            _ = sleep_until(pong_deadline), if pong_deadline.is_some() => break Some(Disconnect::NO_PONG),
            _ = sleep_until(expiry.map(Into::into)), if expiry.is_some() => {
                if let Err(d) = session.check_expiry() {
                    break Some(d);
                }
            }
        }
        match flush(&hub, &mut ws, &client, &mut batch).await {
            Ok(None) => {}
            Ok(Some(d)) => break Some(d),
            Err(_) => break None,
        }
    };
    // Out of the channels and the limits first: a client that does not read may never
    // take the close frame.
    session.close().await;
    if let Some(d) = end {
        tracing::debug!(client = %client.id, code = d.code, reason = %d.reason, "disconnecting");
        let closing = async {
            if d != Disconnect::SLOW {
                flush(&hub, &mut ws, &client, &mut batch).await?;
            }
            ws.close(CloseCode::from(d.code), &d.reason).await
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, closing).await;
    }
}

/// Counts an open transport connection while it lives.
struct OpenGuard(Hub);

impl OpenGuard {
    fn new(hub: &Hub) -> Self {
        hub.metrics().open_connections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        OpenGuard(hub.clone())
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.metrics().open_connections.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// How long the closing handshake may take before the connection is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

async fn commands(session: &mut Session, decoded: Result<Vec<protocol::Command>, String>) -> Result<(), Disconnect> {
    let cmds = decoded.map_err(|e| {
        tracing::debug!(error = %e, "malformed command");
        Disconnect::BAD_REQUEST
    })?;
    for cmd in cmds {
        session.handle(cmd).await?;
    }
    Ok(())
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Writes what is queued, as one frame per batch, until the queue is empty. Returns the
/// disconnect asked, if any. A write that waits on a client that does not read is
/// abandoned as soon as the client is marked to be disconnected (3008 when its queue
/// overflowed): nothing waits on a slow reader.
async fn flush<S>(
    hub: &Hub,
    ws: &mut WebSocket<S>,
    client: &ClientShared,
    batch: &mut Vec<Bytes>,
) -> Result<Option<Disconnect>, volley::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    loop {
        let (closing, since) = client.take_since(batch);
        if batch.is_empty() || closing.is_some() {
            batch.clear();
            return Ok(closing);
        }
        let frame = if batch.len() == 1 {
            batch.pop().expect("one")
        } else {
            let sep = usize::from(client.format == Format::Json);
            let mut buf = BytesMut::with_capacity(batch.iter().map(|b| b.len() + sep).sum());
            for (i, b) in batch.drain(..).enumerate() {
                if i > 0 && sep == 1 {
                    buf.put_u8(b'\n');
                }
                buf.put_slice(&b);
            }
            buf.freeze()
        };
        let msg = match client.format {
            Format::Json => Message::Text(frame.try_into().expect("the JSON encoder writes UTF-8")),
            Format::Protobuf => Message::Binary(frame),
        };
        let send = ws.send(msg);
        tokio::pin!(send);
        loop {
            tokio::select! {
                r = &mut send => {
                    r?;
                    if let Some(since) = since {
                        hub.metrics().delivery.observe(since.elapsed());
                    }
                    break;
                }
                _ = client.ready() => {
                    if let Some(d) = client.closing() {
                        return Ok(Some(d));
                    }
                }
            }
        }
    }
}
