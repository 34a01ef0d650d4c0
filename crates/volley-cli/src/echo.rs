//! `volley echo`: a server that sends every message back unchanged, over ws:// or, with
//! a certificate (from PEM files or self-signed at startup), wss://.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use volley::tls::{CertificateDer, PrivateKeyDer, TlsAcceptor};
use volley::{Config, Message, WebSocket};

/// The names a `--tls-self-signed` certificate is valid for.
const SELF_SIGNED_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

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
    /// Serve wss:// with this PEM certificate chain (leaf first); needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve wss:// with a self-signed certificate for localhost, 127.0.0.1 and ::1,
    /// generated at startup (for tests: clients must be told to trust it).
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
    tls_self_signed: bool,
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
    let tls = tls_acceptor(&args)?;
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    tracing::info!(addr = %listener.local_addr()?, scheme, "echo server listening");
    let shutdown = tokio::signal::ctrl_c();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let config = config.clone();
                    let tls = tls.clone();
                    tokio::spawn(async move {
                        if let Err(e) = accept(tcp, peer, config, tls).await {
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

/// The TLS acceptor the flags ask for, if any.
fn tls_acceptor(args: &Args) -> anyhow::Result<Option<TlsAcceptor>> {
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let acceptor = volley::tls::acceptor(cert, key).map_err(setup_error).context("loading the TLS certificate")?;
        tracing::info!(cert = %cert.display(), "TLS on");
        return Ok(Some(acceptor));
    }
    if !args.tls_self_signed {
        return Ok(None);
    }
    let names: Vec<String> = SELF_SIGNED_NAMES.iter().map(|n| n.to_string()).collect();
    let generated = rcgen::generate_simple_self_signed(names).context("generating a self-signed certificate")?;
    let key = PrivateKeyDer::Pkcs8(generated.signing_key.serialize_der().into());
    let cert: CertificateDer<'static> = generated.cert.der().clone();
    let config = volley::tls::server_config(vec![cert], key).map_err(setup_error).context("TLS configuration")?;
    tracing::warn!(
        names = ?SELF_SIGNED_NAMES,
        "TLS on with a SELF-SIGNED certificate generated at startup: clients will not trust it unless told to"
    );
    Ok(Some(TlsAcceptor::from(config)))
}

/// The I/O error inside a TLS set-up error: it already names the file and the cause,
/// and `volley::Error::Io` would print it twice in an error chain (as its message and
/// as its source).
fn setup_error(e: volley::Error) -> anyhow::Error {
    match e {
        volley::Error::Io(io) => io.into(),
        e => e.into(),
    }
}

/// Runs the TLS handshake if TLS is on, then the WebSocket handshake, then echoes.
async fn accept(
    tcp: TcpStream,
    peer: SocketAddr,
    config: Config,
    tls: Option<TlsAcceptor>,
) -> Result<(), volley::Error> {
    tcp.set_nodelay(true)?;
    let hook = |req: &volley::Request, _: &mut volley::Response| {
        tracing::debug!(%peer, path = req.target(), "upgrade");
        Ok(())
    };
    match tls {
        Some(acceptor) => echo(volley::tls::accept_tls(tcp, &acceptor, config, hook).await?, peer).await,
        None => echo(volley::accept_with(tcp, config, hook).await?, peer).await,
    }
}

async fn echo<S: AsyncRead + AsyncWrite + Unpin>(mut ws: WebSocket<S>, peer: SocketAddr) -> Result<(), volley::Error> {
    while let Some(msg) = ws.recv().await {
        match msg? {
            msg @ (Message::Text(_) | Message::Binary(_)) => ws.feed(msg).await?,
            Message::Close(frame) => tracing::debug!(%peer, ?frame, "closed by peer"),
            _ => {}
        }
    }
    Ok(())
}
