//! The Volley echo server (the README's loop: `recv`, then `feed`, which is flushed
//! before the next read waits, so a batch of messages is answered with one write), and
//! the fan-out server of `--broadcast`.
//!
//! Configuration: Volley's defaults except keepalive, which is off because none of the
//! peers sends pings, and permessage-deflate, which is on only with `--deflate` (then
//! with Volley's default parameters).

use std::sync::Arc;

use tokio::net::TcpStream;
use volley::{Broadcast, Config, Message, PreparedMessage};

/// The members of the fan-out.
pub type Group = Arc<Broadcast>;

pub fn group() -> Group {
    Arc::new(Broadcast::new())
}

fn config(deflate: bool) -> Config {
    let config = Config::new().ping_interval(None);
    if deflate {
        config
    } else {
        config.deflate(None)
    }
}

pub async fn echo(tcp: TcpStream, deflate: bool) -> Result<(), volley::Error> {
    let mut ws = volley::accept_with(tcp, config(deflate), |_, _| Ok(())).await?;
    while let Some(msg) = ws.recv().await {
        let msg = msg?;
        if msg.is_data() {
            ws.feed(msg).await?;
        }
    }
    Ok(())
}

/// A message from any client goes to every member, encoded once. Connections to
/// `/sender` are not members.
pub async fn fan_out(tcp: TcpStream, group: Group) -> Result<(), volley::Error> {
    let ws = volley::accept_with(tcp, config(false), |_, _| Ok(())).await?;
    let member = ws.info().path() != "/sender";
    let (mut reader, writer) = ws.split();
    let id = member.then(|| group.join(writer));
    while let Some(msg) = reader.recv().await {
        let prepared = match msg {
            Ok(Message::Text(text)) => PreparedMessage::text(text),
            Ok(Message::Binary(data)) => PreparedMessage::binary(data),
            Ok(_) => continue,
            Err(_) => break,
        };
        group.send(&prepared);
    }
    if let Some(id) = id {
        group.leave(id);
    }
    Ok(())
}
