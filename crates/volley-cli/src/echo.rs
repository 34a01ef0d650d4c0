//! `volley echo`: a server that sends every message back unchanged, over ws:// or, with
//! a certificate (from PEM files or self-signed at startup), wss://.
//!
//! Plain ws:// goes straight to `volley::ServerBuilder::accept_tcp` (the fast path, the
//! one Autobahn measures). With TLS the server offers ALPN `h2` and `http/1.1` and serves connections
//! with hyper (`volley::http::Server`): WebSockets over HTTP/1.1 (Upgrade) and over
//! HTTP/2 (extended CONNECT, RFC 8441), and a small test page at `GET /` that opens a
//! WebSocket to the same origin. `--h2c` serves plain TCP the same way (HTTP/1.1 or
//! HTTP/2 with prior knowledge). Each accepted WebSocket is logged with its HTTP
//! version: `websocket accepted http_version=HTTP/2.0` at info level on the hyper path,
//! at debug level on the fast path.
//!
//! Each of `--threads` threads runs a current-thread runtime: the first accepts, and
//! each connection is served, from its handshake to its end, by one thread (the threads
//! in turn), with a parking per thread.
//!
//! `--park-after SECONDS` (plain ws://, Unix) parks a connection that received nothing
//! for that long in a `volley::park::Parking`: it is held without a task until its
//! peer sends again or its keepalive ping is due.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use volley::http::hyper::{header, Method, Request, Response, StatusCode};
use volley::http::{Body, Server};
#[cfg(unix)]
use volley::park::{ParkError, Parking};
use volley::tls::{CertificateDer, PrivateKeyDer, TlsAcceptor};
use volley::{Config, Message, WebSocket};

/// Time allowed for a TLS handshake (the default handshake timeout of `volley::Config`).
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// Threads, each with a runtime of its own; the first accepts and hands the
    /// connections to all in turn (default: one per core).
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
    /// Without TLS, serve connections with the HTTP server too, as with TLS: HTTP/1.1
    /// or HTTP/2 with prior knowledge (h2c, WebSockets by extended CONNECT), and the
    /// test page at `GET /`. Off by default: plain ws:// takes the direct path.
    #[arg(long)]
    h2c: bool,
    /// Park a connection that received nothing for this many seconds: it is held
    /// without a task, in a fraction of the memory, until its peer sends again (plain
    /// ws://, Unix only).
    #[arg(long, value_name = "SECONDS", conflicts_with_all = ["tls_cert", "tls_key", "tls_self_signed", "h2c"])]
    park_after: Option<f64>,
}

/// Runs the echo server until Ctrl-C.
///
/// Each thread runs a tokio current-thread runtime of its own (one thread by default per
/// core): the first accepts, and hands each connection to the threads in turn, where it
/// stays. A connection's messages never cross threads, and `--threads 1` is exactly one
/// current-thread runtime, as the benchmark's servers run: 5% fewer instructions per
/// message than a multi-thread runtime of one worker (docs/PERFORMANCE.md).
pub fn run(args: Args) -> anyhow::Result<()> {
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1);
    let runtime = || tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting a runtime");
    // Threads 2 to N: a runtime each, with its own parking, idle until handed connections.
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    for i in 1..threads {
        let rt = runtime()?;
        let ready = ready_tx.clone();
        let park_after = args.park_after;
        std::thread::Builder::new()
            .name(format!("volley-echo-{i}"))
            .spawn(move || {
                rt.block_on(async move {
                    let worker =
                        parking(park_after).map(|parked| Worker { rt: tokio::runtime::Handle::current(), parked });
                    let failed = worker.is_err();
                    // The first thread waits for every other before it serves.
                    let _ = ready.send(worker);
                    if !failed {
                        std::future::pending::<()>().await;
                    }
                })
            })
            .context("starting a thread")?;
    }
    drop(ready_tx);
    let rt = runtime()?;
    rt.block_on(async move {
        let mut workers = vec![Worker { rt: tokio::runtime::Handle::current(), parked: parking(args.park_after)? }];
        for _ in 1..threads {
            workers.push(ready_rx.recv().context("a thread ended while starting")??);
        }
        serve(args, workers).await
    })
}

/// A runtime that serves connections, and its parking (with `--park-after`).
struct Worker {
    rt: tokio::runtime::Handle,
    parked: Option<Parked>,
}

async fn serve(args: Args, workers: Vec<Worker>) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    let mut config = Config::new().max_message_size(args.max_message_size).max_frame_size(args.max_frame_size);
    if args.no_deflate {
        config = config.deflate(None);
    }
    config.validate().context("configuration")?;
    let tls = tls_acceptor(&args)?;
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    let http = (tls.is_some() || args.h2c).then(|| http_server(config.clone()));
    let mode = match (&tls, &http) {
        (Some(_), _) => "HTTP/1.1 and HTTP/2 over TLS (ALPN h2, http/1.1)",
        (None, Some(_)) => "HTTP/1.1 and HTTP/2 with prior knowledge (h2c)",
        (None, None) => "HTTP/1.1",
    };
    tracing::info!(addr = %listener.local_addr()?, scheme, mode, threads = workers.len(), "echo server listening");
    let shutdown = tokio::signal::ctrl_c();
    tokio::pin!(shutdown);
    let mut next = 0;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let here = next == 0;
                    let worker = &workers[next];
                    next = (next + 1) % workers.len();
                    let config = config.clone();
                    let tls = tls.clone();
                    let http = http.clone();
                    let parked = worker.parked.clone();
                    // This thread's connections stay on its reactor; another thread's
                    // are moved to that thread's (as a std socket, registered there).
                    let tcp = if here {
                        Socket::Here(tcp)
                    } else {
                        match tcp.into_std() {
                            Ok(std) => Socket::Moved(std),
                            Err(e) => {
                                tracing::debug!(%peer, error = %e, "handing over a connection failed");
                                continue;
                            }
                        }
                    };
                    // One task type per path, so that a plain connection's task is not
                    // as large as the HTTP server's connection future.
                    match http {
                        Some(server) => {
                            worker.rt.spawn(log_end(peer, async move { serve_http(tcp.register()?, peer, tls, server).await }));
                        }
                        None => {
                            worker.rt.spawn(log_end(peer, async move { accept(tcp.register()?, peer, config, parked).await }));
                        }
                    }
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

/// An accepted connection on its way to the thread that serves it.
enum Socket {
    /// Served by the accepting thread: already registered with its reactor.
    Here(TcpStream),
    /// Served by another thread: registered there, by [`Socket::register`].
    Moved(std::net::TcpStream),
}

impl Socket {
    /// The connection, registered with the reactor of the runtime this runs on.
    fn register(self) -> Result<TcpStream, volley::Error> {
        match self {
            Socket::Here(tcp) => Ok(tcp),
            Socket::Moved(std) => Ok(TcpStream::from_std(std)?),
        }
    }
}

/// The TLS acceptor the flags ask for, if any.
fn tls_acceptor(args: &Args) -> anyhow::Result<Option<TlsAcceptor>> {
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let config = volley::tls::server_config_from_pem(cert, key)
            .map_err(setup_error)
            .context("loading the TLS certificate")?;
        tracing::info!(cert = %cert.display(), "TLS on");
        return Ok(Some(TlsAcceptor::from(volley::http::with_h2_alpn(config))));
    }
    if !args.tls_self_signed {
        return Ok(None);
    }
    let names: Vec<String> = SELF_SIGNED_NAMES.iter().map(|n| n.to_string()).collect();
    let generated = rcgen::generate_simple_self_signed(names).context("generating a self-signed certificate")?;
    let key = PrivateKeyDer::Pkcs8(generated.signing_key.serialize_der().into());
    let cert: CertificateDer<'static> = generated.cert.der().clone();
    let config = volley::tls::server_config(vec![cert], key).map_err(setup_error).context("TLS configuration")?;
    let config = volley::http::with_h2_alpn(config);
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

/// With `--park-after`: the parking, how long a connection stays silent before it is
/// parked, and the task that serves the connections it hands back.
#[cfg(unix)]
#[derive(Clone)]
struct Parked {
    parking: Parking<SocketAddr>,
    after: Duration,
}

#[cfg(not(unix))]
#[derive(Clone)]
enum Parked {}

#[cfg(unix)]
fn parking(after: Option<f64>) -> anyhow::Result<Option<Parked>> {
    let Some(secs) = after else { return Ok(None) };
    let after = Duration::try_from_secs_f64(secs).context("--park-after: a number of seconds, 0 or more")?;
    let parked = Parked { parking: Parking::new().context("starting the parking")?, after };
    let p = parked.clone();
    tokio::spawn(async move {
        loop {
            match p.parking.woken().await {
                Ok((ws, peer)) => {
                    tokio::spawn(echo_parked(ws, peer, p.clone()));
                }
                Err(e) => {
                    tracing::error!(error = %e, "the parking stopped");
                    return;
                }
            }
        }
    });
    tracing::info!(after = ?after, "parking idle connections");
    Ok(Some(parked))
}

#[cfg(not(unix))]
fn parking(after: Option<f64>) -> anyhow::Result<Option<Parked>> {
    match after {
        Some(_) => anyhow::bail!("--park-after: parking needs a Unix system"),
        None => Ok(None),
    }
}

/// The echo loop of `--park-after`: a connection silent for `after` is parked and its
/// task ends; the parking's task starts a new one when the peer sends again.
#[cfg(unix)]
#[allow(clippy::manual_async_fn)] // an `async fn` would keep the `WebSocket` twice
fn echo_parked(mut ws: WebSocket<TcpStream>, peer: SocketAddr, parked: Parked) -> impl Future<Output = ()> {
    // Built as `echo` is, for the same reason.
    async move {
        loop {
            // Serves until the connection ends (false) or stays silent for `after` (true).
            let served: Result<bool, volley::Error> = async {
                loop {
                    match tokio::time::timeout(parked.after, ws.recv()).await {
                        Ok(Some(msg)) => match msg? {
                            msg @ (Message::Text(_) | Message::Binary(_)) => ws.feed(msg).await?,
                            Message::Close(frame) => tracing::debug!(%peer, ?frame, "closed by peer"),
                            _ => {}
                        },
                        Ok(None) => return Ok(false),
                        Err(_) => return Ok(true),
                    }
                }
            }
            .await;
            let e = match served {
                Ok(false) => return,
                Ok(true) => match parked.parking.park(ws, peer) {
                    Ok(_) => return,
                    Err(ParkError::Busy(back, _)) => {
                        ws = back;
                        continue;
                    }
                    Err(ParkError::Io(e, _)) => volley::Error::from(e),
                },
                Err(e) => e,
            };
            tracing::debug!(%peer, error = %e, "connection ended with an error");
            return;
        }
    }
}

/// Logs how a connection's task ended, if with an error.
async fn log_end(peer: SocketAddr, task: impl Future<Output = Result<(), volley::Error>>) {
    if let Err(e) = task.await {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// The plain ws:// path: the opening handshake, then the echo in a task of its own.
/// The handshake's state (the config, the request) ends with this task, and the
/// connection's task holds only the echo loop.
async fn accept(tcp: TcpStream, peer: SocketAddr, config: Config, parked: Option<Parked>) -> Result<(), volley::Error> {
    let hook = |req: &volley::HandshakeRequest, _: &mut volley::Response| {
        tracing::debug!(%peer, path = req.target(), "upgrade");
        Ok(())
    };
    let mut ws = volley::ServerBuilder::new().config(config).hook(hook).accept_tcp(tcp).await?;
    tracing::debug!(http_version = ?ws.info().http_version(), %peer, path = ws.info().target(), "websocket accepted");
    // An echo never reads the request's headers again: free them.
    ws.drop_request_headers();
    match parked {
        #[cfg(unix)]
        Some(parked) => tokio::spawn(echo_parked(ws, peer, parked)),
        _ => tokio::spawn(echo(ws, peer)),
    };
    Ok(())
}

/// The HTTP server of the TLS and h2c modes: WebSockets over HTTP/1.1 and HTTP/2, the
/// test page at `GET /`, 404 for anything else.
fn http_server(config: Config) -> Server {
    Server::new(config)
        .hook(|req, _| {
            tracing::debug!(path = req.target(), method = req.method(), "upgrade");
            Ok(())
        })
        .fallback(|req: Request<_>| async move { page(req.method(), req.uri().path()) })
}

/// The answer to a request that is not a WebSocket request.
fn page(method: &Method, path: &str) -> Response<Body> {
    let (status, content_type, body) = match (method, path) {
        (&Method::GET | &Method::HEAD, "/") => (StatusCode::OK, "text/html; charset=utf-8", TEST_PAGE),
        _ => (StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "not found: WebSockets and GET / only\n"),
    };
    let body = if method == Method::HEAD { "" } else { body };
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, header::HeaderValue::from_static("no-store"));
    response
}

/// A page that opens a WebSocket to its own origin (wss:// from https://) and echoes
/// what is typed into it.
const TEST_PAGE: &str = r#"<!doctype html>
<meta charset="utf-8">
<title>volley echo</title>
<h1>volley echo</h1>
<p>A WebSocket to this server (<code id="url"></code>): what you send comes back.</p>
<form id="form"><input id="text" value="hello" autofocus> <button>Send</button></form>
<pre id="log"></pre>
<script>
const url = (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/';
const log = (line) => { document.getElementById('log').textContent += line + '\n'; };
document.getElementById('url').textContent = url;
let ws = null;
function open() {
  ws = new WebSocket(url);
  ws.onopen = () => log('open (extensions: ' + (ws.extensions || 'none') + ')');
  ws.onmessage = (e) => log('< ' + e.data);
  ws.onclose = (e) => { log('closed ' + e.code); ws = null; };
  ws.onerror = () => log('error');
}
document.getElementById('form').onsubmit = (e) => {
  e.preventDefault();
  const text = document.getElementById('text').value;
  if (!ws) open();
  if (ws.readyState === WebSocket.OPEN) { ws.send(text); log('> ' + text); }
  else ws.addEventListener('open', () => { ws.send(text); log('> ' + text); }, { once: true });
};
</script>
"#;

/// The TLS handshake if TLS is on, then HTTP (1.1 or 2) with WebSocket upgrades.
async fn serve_http(
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    server: Server,
) -> Result<(), volley::Error> {
    tcp.set_nodelay(true)?;
    let local = tcp.local_addr().ok();
    let handler = move |ws: WebSocket<volley::http::UpgradedIo>| {
        let ws = ws.with_addrs(Some(peer), local);
        tracing::info!(http_version = ?ws.info().http_version(), %peer, path = ws.info().target(), "websocket accepted");
        echo(ws, peer)
    };
    match tls {
        None => server.serve_connection(tcp, handler).await,
        Some(acceptor) => {
            let tls = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp))
                .await
                .map_err(|_| volley::Error::Timeout(volley::Timeout::TlsHandshake))??;
            let alpn = tls.get_ref().1.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned());
            tracing::debug!(%peer, ?alpn, "TLS on");
            server.serve_connection(tls, handler).await
        }
    }
}

/// Echoes until the connection ends, and logs how it ended.
// Written as a function returning an `async move` block that uses its captured
// `WebSocket` in place, with the loop in an inner block that borrows it: an `async fn`,
// or a wrapper awaiting this future, would keep the `WebSocket` twice in the task.
#[allow(clippy::manual_async_fn)] // see above
fn echo<S: AsyncRead + AsyncWrite + Unpin>(mut ws: WebSocket<S>, peer: SocketAddr) -> impl Future<Output = ()> {
    async move {
        let result: Result<(), volley::Error> = async {
            while let Some(msg) = ws.recv().await {
                match msg? {
                    msg @ (Message::Text(_) | Message::Binary(_)) => ws.feed(msg).await?,
                    Message::Close(frame) => tracing::debug!(%peer, ?frame, "closed by peer"),
                    _ => {}
                }
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    }
}
