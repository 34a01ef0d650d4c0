//! `volley echo`: a server that sends every message back unchanged.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::{TcpListener, TcpStream};
use volley::{Config, Message};

/// Flags of `volley echo`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9001")]
    listen: SocketAddr,
    /// Largest message accepted, in bytes (larger ones close the connection with 1009).
    #[arg(long, default_value_t = 64 << 20)]
    max_message_size: usize,
    /// Largest frame accepted, in bytes.
    #[arg(long, default_value_t = 16 << 20)]
    max_frame_size: usize,
    /// Do not negotiate permessage-deflate (on by default when the client offers it).
    #[arg(long)]
    no_deflate: bool,
    /// Worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
}

/// Runs the echo server until Ctrl-C.
pub fn run(args: Args) -> anyhow::Result<()> {
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = rt.enable_all().build().context("starting the runtime")?;
    rt.block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    let mut config = Config::new().max_message_size(args.max_message_size).max_frame_size(args.max_frame_size);
    if args.no_deflate {
        config = config.deflate(None);
    }
    config.validate().context("configuration")?;
    tracing::info!(addr = %listener.local_addr()?, "echo server listening");
    let shutdown = tokio::signal::ctrl_c();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let config = config.clone();
                    tokio::spawn(async move {
                        if let Err(e) = echo(tcp, peer, config).await {
                            tracing::debug!(%peer, error = %e, "connection ended with an error");
                        }
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait a little rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            _ = &mut shutdown => {
                tracing::info!("shutting down");
                return Ok(());
            }
        }
    }
}

async fn echo(tcp: TcpStream, peer: SocketAddr, config: Config) -> Result<(), volley::Error> {
    tcp.set_nodelay(true)?;
    let mut ws = volley::accept_with(tcp, config, |req, _| {
        tracing::debug!(%peer, path = req.target(), "upgrade");
        Ok(())
    })
    .await?;
    while let Some(msg) = ws.recv().await {
        match msg? {
            msg @ (Message::Text(_) | Message::Binary(_)) => ws.feed(msg).await?,
            Message::Close(frame) => tracing::debug!(%peer, ?frame, "closed by peer"),
            _ => {}
        }
    }
    Ok(())
}
