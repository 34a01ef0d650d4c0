//! The Volley echo server (the README's loop: `recv`, then `feed`, which is flushed
//! before the next read, so each read's batch of messages is answered with one write), and
//! the fan-out server of `--broadcast`, and the same echo with idle connections
//! parked (`--park-after`).
//!
//! Configuration: Volley's defaults except keepalive, which is off because none of the
//! peers sends pings, and permessage-deflate, which is on only with `--deflate` (then
//! with Volley's default parameters).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use volley::park::{ParkError, Parking};
use volley::{Broadcast, Config, Message, PreparedMessage, WebSocket};

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
    let mut ws = volley::ServerBuilder::new().config(config(deflate)).accept(tcp).await?;
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
    let ws = volley::ServerBuilder::new().config(config(false)).accept(tcp).await?;
    let member = ws.info().path() != "/sender";
    let (mut reader, writer) = ws.split()?;
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

/// The parking of `--park-after`, and how long a connection stays silent before it
/// is parked. Cheap to clone.
#[derive(Clone)]
pub struct Parked {
    parking: Parking<()>,
    after: Duration,
}

impl Parked {
    /// A parking, and the task that serves the connections it hands back.
    pub fn new(after: Duration) -> std::io::Result<Self> {
        let parked = Parked { parking: Parking::new()?, after };
        let p = parked.clone();
        tokio::spawn(async move {
            while let Ok((ws, ())) = p.parking.woken().await {
                tokio::spawn(serve_parked(ws, p.clone()));
            }
        });
        Ok(parked)
    }
}

/// The echo of `--park-after`, built for many idle connections: the request headers
/// are freed after the handshake (an echo never reads them), and a connection silent
/// for `after` is parked and its task ends.
pub async fn echo_parked(tcp: TcpStream, deflate: bool, parked: Parked) -> Result<(), volley::Error> {
    let mut ws = volley::ServerBuilder::new().config(config(deflate)).accept(tcp).await?;
    ws.drop_request_headers();
    loop {
        if !echo_until_silent(&mut ws, parked.after).await? {
            return Ok(());
        }
        match parked.parking.park(ws, ()) {
            Ok(_) => return Ok(()),
            Err(ParkError::Busy(back, ())) => ws = back,
            Err(ParkError::Io(e, ())) => return Err(e.into()),
        }
    }
}

/// `echo_parked` for a connection handed back by the parking. Not an `async fn`: one
/// would keep the `WebSocket` twice in the task (as its argument and as the local it
/// moves into); this block keeps it once.
#[allow(clippy::manual_async_fn)]
fn serve_parked(mut ws: WebSocket<TcpStream>, parked: Parked) -> impl Future<Output = ()> {
    async move {
        loop {
            if !matches!(echo_until_silent(&mut ws, parked.after).await, Ok(true)) {
                return;
            }
            match parked.parking.park(ws, ()) {
                Err(ParkError::Busy(back, ())) => ws = back,
                Ok(_) | Err(ParkError::Io(..)) => return,
            }
        }
    }
}

/// Echoes until the connection ends (false) or stays silent for `after` (true).
async fn echo_until_silent(ws: &mut WebSocket<TcpStream>, after: Duration) -> Result<bool, volley::Error> {
    loop {
        match tokio::time::timeout(after, ws.recv()).await {
            Ok(Some(msg)) => {
                let msg = msg?;
                if msg.is_data() {
                    ws.feed(msg).await?;
                }
            }
            Ok(None) => return Ok(false),
            Err(_) => return Ok(true),
        }
    }
}
