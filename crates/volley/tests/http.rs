//! The HTTP integration (features `hyper` and `axum`): WebSockets upgraded from hyper
//! and axum requests over HTTP/1.1, and over HTTP/2 with extended CONNECT (RFC 8441)
//! against the `connect_h2` client, over h2c and over TLS with ALPN h2.
#![cfg(feature = "hyper")]

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use common::{bind, within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use volley::http::hyper::body::Incoming;
use volley::http::hyper::service::service_fn;
use volley::http::hyper_util::rt::{TokioExecutor, TokioIo};
use volley::http::{connect_h2, upgrade, Body, Server, UpgradedIo};
use volley::tls::{CertificateDer, PrivateKeyDer, TlsAcceptor};
use volley::{ClientBuilder, CloseCode, Config, Message, Rejection, WebSocket};

/// What a server saw of one WebSocket.
#[derive(Debug)]
struct Seen {
    version: http::Version,
    deflate: bool,
    protocol: Option<String>,
    target: String,
    host: Option<String>,
    #[cfg_attr(not(feature = "proxy"), allow(dead_code))] // read by the proxy test only
    authorization: Option<String>,
    remote: Option<SocketAddr>,
}

/// Echoes `ws` until it closes, after reporting what it is.
async fn echo(mut ws: WebSocket<UpgradedIo>, seen: mpsc::UnboundedSender<Seen>) {
    let info = ws.info();
    let _ = seen.send(Seen {
        version: info.http_version(),
        deflate: ws.deflate().is_some(),
        protocol: ws.protocol().map(str::to_string),
        target: info.target().to_string(),
        host: info.headers().get("host").map(str::to_string),
        authorization: info.headers().get("authorization").map(str::to_string),
        remote: info.remote_addr(),
    });
    while let Some(Ok(msg)) = ws.recv().await {
        if msg.is_data() && ws.send(msg).await.is_err() {
            break;
        }
    }
}

/// Sends a text, a binary and a large compressible text message, checks the echoes,
/// then closes cleanly.
async fn exchange<S>(ws: &mut WebSocket<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let large = "volley over HTTP/2 ".repeat(10_000);
    let binary: Vec<u8> = (0..=255).collect();
    for msg in [Message::text("héllo ✓"), Message::binary(binary), Message::text(large)] {
        ws.send(msg.clone()).await.unwrap();
        assert_eq!(within(ws.recv()).await.unwrap().unwrap(), msg);
    }
    // Completes the closing handshake (the server's close frame, then the end of the
    // stream) or fails with the close timeout.
    within(ws.close(CloseCode::NORMAL, "bye")).await.unwrap();
    assert_eq!(ws.state(), volley::State::Closed);
}

/// A hyper HTTP/1.1 server (with upgrades) calling `volley::http::upgrade` with `hook`.
async fn hyper_http1_server<F>(hook: F) -> (u16, mpsc::UnboundedReceiver<Seen>)
where
    F: Fn(&volley::HandshakeRequest, &mut volley::Response) -> Result<(), Rejection> + Clone + Send + Sync + 'static,
{
    let (listener, port) = bind().await;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (tx, hook) = (tx.clone(), hook.clone());
            let service = service_fn(move |mut req: http::Request<Incoming>| {
                let (tx, hook) = (tx.clone(), hook.clone());
                async move {
                    let config = Config::new().protocols(["chat"]);
                    let response = match upgrade(&mut req, config, hook) {
                        Ok((response, websocket)) => {
                            tokio::spawn(async move { echo(websocket.await.unwrap(), tx).await });
                            response
                        }
                        Err(e) => e.into_http_response(),
                    };
                    Ok::<_, Infallible>(response)
                }
            });
            tokio::spawn(async move {
                let conn = volley::http::hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .with_upgrades();
                let _ = conn.await;
            });
        }
    });
    (port, rx)
}

#[tokio::test]
async fn hyper_http1_upgrade_echo() {
    let (port, mut seen) =
        hyper_http1_server(|_, resp| resp.add_header("X-Served-By", "hyper").map_err(|_| Rejection::new(500))).await;
    let (mut ws, response) =
        within(ClientBuilder::new(format!("ws://127.0.0.1:{port}/chat?room=1")).protocol("chat").connect())
            .await
            .unwrap();
    assert_eq!(response.headers().get("x-served-by"), Some("hyper"));
    assert_eq!(ws.protocol(), Some("chat"));
    assert!(ws.deflate().is_some(), "permessage-deflate negotiated");
    let seen = within(seen.recv()).await.unwrap();
    assert_eq!(seen.version, http::Version::HTTP_11);
    assert!(seen.deflate);
    assert_eq!(seen.protocol.as_deref(), Some("chat"));
    assert_eq!(seen.target, "/chat?room=1");
    exchange(&mut ws).await;
}

#[tokio::test]
async fn hyper_hook_rejection_is_the_response() {
    let (port, _seen) = hyper_http1_server(|req, _| {
        if req.origin() == Some("https://good.example") {
            Ok(())
        } else {
            Err(Rejection::new(403).header("X-Reason", "origin").body("forbidden origin"))
        }
    })
    .await;
    let err = within(
        ClientBuilder::new(format!("ws://127.0.0.1:{port}/")).header("Origin", "https://evil.example").connect(),
    )
    .await
    .unwrap_err();
    let volley::Error::Refused(response) = &err else { panic!("{err:?}") };
    assert_eq!((response.status(), &response.body()[..]), (http::StatusCode::FORBIDDEN, &b"forbidden origin"[..]));
    assert_eq!(response.headers()["x-reason"], "origin");

    // The whole answer, on the wire.
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.write_all(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
          Origin: https://evil.example\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = String::new();
    within(tcp.read_to_string(&mut answer)).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("\r\nx-reason: origin\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nforbidden origin"), "{answer}");

    // The allowed origin gets through.
    let (ws, _) = within(
        ClientBuilder::new(format!("ws://127.0.0.1:{port}/")).header("Origin", "https://good.example").connect(),
    )
    .await
    .unwrap();
    assert_eq!(ws.info().http_version(), http::Version::HTTP_11);
}

#[tokio::test]
async fn hyper_non_websocket_requests() {
    let (port, _seen) = hyper_http1_server(|_, _| Ok(())).await;
    let ask = |request: &'static [u8]| async move {
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        tcp.write_all(request).await.unwrap();
        let mut answer = String::new();
        within(tcp.read_to_string(&mut answer)).await.unwrap();
        answer
    };
    // A plain GET: 426 with the Upgrade and version the server wants.
    let answer = ask(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 426 Upgrade Required\r\n"), "{answer}");
    assert!(answer.contains("\r\nupgrade: websocket\r\n"), "{answer}");
    assert!(answer.contains("\r\nsec-websocket-version: 13\r\n"), "{answer}");
    // Another version: 426 naming 13.
    let answer = ask(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade, close\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n")
    .await;
    assert!(answer.starts_with("HTTP/1.1 426 "), "{answer}");
    assert!(answer.contains("\r\nsec-websocket-version: 13\r\n"), "{answer}");
    // A bad key: 400.
    let answer = ask(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade, close\r\n\
          Sec-WebSocket-Key: short\r\nSec-WebSocket-Version: 13\r\n\r\n")
    .await;
    assert!(answer.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{answer}");
}

/// A `Server` (HTTP/1.1 + HTTP/2 with extended CONNECT) on a listener, optionally over
/// TLS, echoing every WebSocket and answering other requests with "page".
async fn volley_server(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    config: Config,
) -> mpsc::UnboundedReceiver<Seen> {
    let (tx, rx) = mpsc::unbounded_channel();
    let server = Server::new(config)
        .hook(|req, resp| {
            if req.header("x-refuse").is_some() {
                return Err(Rejection::new(403).body("refused"));
            }
            // The hook sees the peer's address on every path (TCP, TLS, HTTP/2).
            let remote = req.remote_addr().ok_or_else(|| Rejection::new(500).body("no remote address"))?;
            resp.add_header("x-remote-seen", &remote.to_string()).map_err(|_| Rejection::new(500))?;
            resp.add_header("x-version-seen", if req.key().is_empty() { "h2" } else { "h1" })
                .map_err(|_| Rejection::new(500))
        })
        .fallback(|_req| async { http::Response::new(Body::from("page")) });
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = listener.accept().await.unwrap();
            let (server, tx, tls) = (server.clone(), tx.clone(), tls.clone());
            tokio::spawn(async move {
                let handler = move |ws| echo(ws, tx.clone());
                let _ = match tls {
                    None => server.serve_tcp(tcp, handler).await,
                    Some(acceptor) => {
                        let Ok(tls) = acceptor.accept(tcp).await else { return };
                        server.serve_connection_from(tls, Some(peer), handler).await
                    }
                };
            });
        }
    });
    rx
}

#[tokio::test]
async fn h2c_extended_connect_echo_with_deflate() {
    let (listener, port) = bind().await;
    let mut seen = volley_server(listener, None, Config::new().protocols(["chat", "other"])).await;
    let (mut ws, response) = within(
        ClientBuilder::new(format!("ws://127.0.0.1:{port}/h2/chat?x=1"))
            .protocol("chat")
            .header("origin", "http://127.0.0.1")
            .connect_h2(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), http::StatusCode::OK);
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.headers()["x-version-seen"], "h2");
    assert!(response.headers()["x-remote-seen"].to_str().unwrap().starts_with("127.0.0.1:"), "hook saw the peer");
    assert_eq!(ws.info().http_version(), http::Version::HTTP_2);
    assert_eq!(ws.role(), volley::Role::Client);
    assert_eq!(ws.protocol(), Some("chat"));
    assert!(ws.deflate().is_some(), "client: permessage-deflate negotiated over HTTP/2");
    assert!(ws.info().extensions().iter().any(|e| e.name == "permessage-deflate"));
    assert!(ws.info().remote_addr().is_some());
    let server = within(seen.recv()).await.unwrap();
    assert_eq!(server.version, http::Version::HTTP_2);
    assert!(server.deflate, "server: permessage-deflate negotiated over HTTP/2");
    assert_eq!(server.protocol.as_deref(), Some("chat"));
    assert_eq!(server.target, "/h2/chat?x=1");
    assert_eq!(server.host.as_deref(), Some(format!("127.0.0.1:{port}").as_str()), ":authority as Host");
    assert!(server.remote.is_some());
    exchange(&mut ws).await;

    // Without compression on the client, none is agreed.
    let (ws, _) =
        within(ClientBuilder::new(format!("ws://127.0.0.1:{port}/")).config(Config::new().deflate(None)).connect_h2())
            .await
            .unwrap();
    assert!(ws.deflate().is_none());
    assert!(!within(seen.recv()).await.unwrap().deflate);

    // The same server still takes HTTP/1.1 WebSockets and serves other requests.
    let (mut ws, _) = within(volley::connect(&format!("ws://127.0.0.1:{port}/h1"))).await.unwrap();
    assert_eq!(within(seen.recv()).await.unwrap().version, http::Version::HTTP_11);
    exchange(&mut ws).await;
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    within(tcp.read_to_string(&mut answer)).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n") && answer.ends_with("\r\n\r\npage"), "{answer}");
}

/// `connect_h2` is `ClientBuilder`'s: it takes the URL's credentials and goes through
/// the builder's proxy (here tinyproxy, tunnelling h2c) like `connect`.
#[cfg(feature = "proxy")]
#[tokio::test]
async fn connect_h2_uses_the_builders_credentials_and_proxy() {
    let (listener, port) = bind().await;
    let mut seen = volley_server(listener, None, Config::new()).await;
    let tinyproxy = common::process::tinyproxy(port, None).await;
    let proxy = volley::proxy::Proxy::parse(&format!("http://127.0.0.1:{}", tinyproxy.port)).unwrap();
    let client = ClientBuilder::new(format!("ws://user:secret@127.0.0.1:{port}/via")).proxy(proxy);
    let (mut ws, _) = within(client.connect_h2()).await.unwrap_or_else(|e| panic!("{e}\n{}", tinyproxy.log()));
    assert_eq!(ws.info().remote_addr().unwrap().port(), tinyproxy.port, "through the proxy");
    let server = within(seen.recv()).await.unwrap();
    assert_eq!(server.version, http::Version::HTTP_2);
    assert_eq!(server.authorization.as_deref(), Some("Basic dXNlcjpzZWNyZXQ="), "user:secret from the URL");
    exchange(&mut ws).await;
}

#[tokio::test]
async fn h2_hook_rejection_is_the_status() {
    let (listener, port) = bind().await;
    let _seen = volley_server(listener, None, Config::new()).await;
    let err = within(ClientBuilder::new(format!("ws://127.0.0.1:{port}/")).header("x-refuse", "1").connect_h2())
        .await
        .unwrap_err();
    // Over HTTP/2 too, the client gets the answer: status and body.
    let volley::Error::Refused(response) = &err else { panic!("{err:?}") };
    assert_eq!((response.status(), response.version()), (http::StatusCode::FORBIDDEN, http::Version::HTTP_2));
    assert_eq!(&response.body()[..], b"refused");
}

/// A self-signed certificate for 127.0.0.1 and localhost, as a CA the client trusts and
/// the server's chain.
fn pki() -> (CertificateDer<'static>, Arc<volley::tls::rustls::ServerConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let key = PrivateKeyDer::Pkcs8(key.serialize_der().into());
    let config = volley::tls::server_config(vec![cert.der().clone(), ca.der().clone()], key).unwrap();
    (ca.der().clone(), config)
}

#[tokio::test]
async fn h2_over_tls_with_alpn() {
    let (root, config) = pki();
    let (listener, port) = bind().await;
    let acceptor = TlsAcceptor::from(volley::http::with_h2_alpn(config));
    let mut seen = volley_server(listener, Some(acceptor), Config::new()).await;

    let (mut ws, _) =
        within(ClientBuilder::new(format!("wss://localhost:{port}/tls")).root_certificate(root.clone()).connect_h2())
            .await
            .unwrap();
    assert_eq!(ws.info().http_version(), http::Version::HTTP_2);
    let server = within(seen.recv()).await.unwrap();
    assert_eq!((server.version, server.deflate), (http::Version::HTTP_2, true));
    exchange(&mut ws).await;

    // A client that offers only http/1.1 gets wss:// over HTTP/1.1 from the same server.
    let (mut ws, _) =
        within(ClientBuilder::new(format!("wss://localhost:{port}/tls")).root_certificate(root).connect())
            .await
            .unwrap();
    assert_eq!(ws.get_ref().tls().unwrap().alpn_protocol(), Some(&b"http/1.1"[..]));
    let server = within(seen.recv()).await.unwrap();
    assert_eq!(server.version, http::Version::HTTP_11);
    assert_eq!(server.remote, ws.get_ref().tcp().unwrap().local_addr().ok(), "remote address over TLS");
    exchange(&mut ws).await;
}

/// `ClientBuilder::http2(true)`: HTTP/2 when the server selects `h2` by ALPN, HTTP/1.1
/// when it offers only `http/1.1`, through the same API and transport type.
#[tokio::test]
async fn client_builder_chooses_http2_by_alpn() {
    let (root, config) = pki();
    let (listener, port) = bind().await;
    let mut seen =
        volley_server(listener, Some(TlsAcceptor::from(volley::http::with_h2_alpn(config.clone()))), Config::new())
            .await;
    let (mut ws, response) = within(
        ClientBuilder::new(format!("wss://localhost:{port}/auto"))
            .root_certificate(root.clone())
            .protocol("chat")
            .header("x-extra", "1")
            .http2(true)
            .no_proxy()
            .connect(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), 200, "the extended CONNECT's answer");
    assert_eq!(response.headers().get("x-version-seen"), Some("h2"));
    assert!(response.headers().get("x-remote-seen").is_some());
    assert_eq!(ws.info().http_version(), http::Version::HTTP_2);
    assert!(ws.get_ref().is_tls() && ws.get_ref().tls().is_none() && ws.get_ref().tcp().is_none());
    assert!(ws.info().remote_addr().is_some());
    assert!(ws.deflate().is_some(), "permessage-deflate over HTTP/2");
    let server = within(seen.recv()).await.unwrap();
    assert_eq!((server.version, server.target.as_str()), (http::Version::HTTP_2, "/auto"));
    exchange(&mut ws).await;

    // A server that offers only http/1.1: the same call runs over HTTP/1.1.
    let (listener, port) = bind().await;
    let mut seen = volley_server(listener, Some(TlsAcceptor::from(config)), Config::new()).await;
    let (mut ws, response) =
        within(ClientBuilder::new(format!("wss://localhost:{port}/auto")).root_certificate(root).http2(true).connect())
            .await
            .unwrap();
    assert_eq!(response.status(), 101);
    assert_eq!(ws.info().http_version(), http::Version::HTTP_11);
    assert_eq!(ws.get_ref().tls().unwrap().alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(within(seen.recv()).await.unwrap().version, http::Version::HTTP_11);
    exchange(&mut ws).await;
}

#[tokio::test]
async fn connect_h2_needs_alpn_h2() {
    let (root, config) = pki();
    let (listener, port) = bind().await;
    // volley::tls's configuration: ALPN http/1.1 only, as a plain wss:// server.
    let _seen = volley_server(listener, Some(TlsAcceptor::from(config)), Config::new()).await;
    let err = within(ClientBuilder::new(format!("wss://localhost:{port}/")).root_certificate(root).connect_h2())
        .await
        .unwrap_err();
    let volley::Error::Io(io) = &err else { panic!("{err:?}") };
    assert_eq!(io.kind(), std::io::ErrorKind::Unsupported, "{err}");
    assert!(io.to_string().contains("ALPN h2"), "{err}");
}

#[tokio::test]
async fn connect_h2_without_extended_connect_fails_cleanly() {
    let (listener, port) = bind().await;
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let service = service_fn(|_req: http::Request<Incoming>| async {
                    Ok::<_, Infallible>(http::Response::new(Body::from("no websockets here")))
                });
                // HTTP/2 without enable_connect_protocol.
                let _ = volley::http::hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    // It fails on the server's SETTINGS (an `Unsupported` I/O error), not on a timeout.
    let err = within(connect_h2(&format!("ws://127.0.0.1:{port}/"))).await.unwrap_err();
    let volley::Error::Io(io) = &err else { panic!("{err:?}") };
    assert_eq!(io.kind(), std::io::ErrorKind::Unsupported, "{err}");
    assert!(io.to_string().contains("SETTINGS_ENABLE_CONNECT_PROTOCOL"), "{err}");

    // An HTTP/1.1-only server does not answer the HTTP/2 preface with SETTINGS.
    let (listener, port) = bind().await;
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut buf = [0; 1024];
        let _ = tcp.read(&mut buf).await;
        let _ = tcp.write_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n").await;
    });
    let err = within(connect_h2(&format!("ws://127.0.0.1:{port}/"))).await.unwrap_err();
    let volley::Error::Io(io) = &err else { panic!("{err:?}") };
    assert_eq!(io.kind(), std::io::ErrorKind::Unsupported, "{err}");
    assert!(io.to_string().contains("does not speak HTTP/2"), "{err}");
}

#[cfg(feature = "axum")]
mod axum_extractor {
    use super::*;
    use axum::extract::State;
    use axum::response::Response;
    use axum::routing::any;
    use axum::Router;
    use volley::http::WebSocketUpgrade;

    async fn handler(State(tx): State<mpsc::UnboundedSender<Seen>>, ws: WebSocketUpgrade) -> Response {
        assert!(ws.remote_addr().is_some(), "ConnectInfo");
        let refuse = ws.request().header("x-refuse").is_some();
        ws.protocols(["chat"]).on_upgrade_with(
            |_, resp| {
                if refuse {
                    return Err(Rejection::new(401));
                }
                resp.add_header("x-axum", "1").map_err(|_| Rejection::new(500))
            },
            move |ws| echo(ws, tx),
        )
    }

    /// `axum::serve` with HTTP/1.1 and HTTP/2 (extended CONNECT on), with ConnectInfo.
    async fn serve() -> (u16, mpsc::UnboundedReceiver<Seen>) {
        let (listener, port) = bind().await;
        let (tx, rx) = mpsc::unbounded_channel();
        let app = Router::new().route("/ws", any(handler)).with_state(tx);
        tokio::spawn(async move {
            axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>()).await.unwrap();
        });
        (port, rx)
    }

    #[tokio::test]
    async fn axum_http1_extractor_echo() {
        let (port, mut seen) = serve().await;
        let (mut ws, response) =
            within(ClientBuilder::new(format!("ws://127.0.0.1:{port}/ws")).protocol("chat").connect()).await.unwrap();
        assert_eq!(response.headers().get("x-axum"), Some("1"));
        assert_eq!(ws.protocol(), Some("chat"));
        let server = within(seen.recv()).await.unwrap();
        assert_eq!(server.version, http::Version::HTTP_11);
        assert!(server.deflate);
        assert_eq!(server.remote, ws.info().local_addr());
        exchange(&mut ws).await;

        let err = within(ClientBuilder::new(format!("ws://127.0.0.1:{port}/ws")).header("x-refuse", "1").connect())
            .await
            .unwrap_err();
        assert!(matches!(&err, volley::Error::Refused(r) if r.status() == 401), "{err:?}");
    }

    #[tokio::test]
    async fn axum_h2c_extractor_echo() {
        let (port, mut seen) = serve().await;
        let (mut ws, response) =
            within(ClientBuilder::new(format!("ws://127.0.0.1:{port}/ws")).protocol("chat").connect_h2())
                .await
                .unwrap();
        assert_eq!(response.headers()["x-axum"], "1");
        assert_eq!(ws.info().http_version(), http::Version::HTTP_2);
        assert!(ws.deflate().is_some());
        let server = within(seen.recv()).await.unwrap();
        assert_eq!((server.version, server.deflate), (http::Version::HTTP_2, true));
        assert_eq!(server.protocol.as_deref(), Some("chat"));
        exchange(&mut ws).await;

        let err = within(ClientBuilder::new(format!("ws://127.0.0.1:{port}/ws")).header("x-refuse", "1").connect_h2())
            .await
            .unwrap_err();
        assert!(matches!(&err, volley::Error::Refused(r) if r.status() == 401), "{err:?}");
    }

    #[tokio::test]
    async fn axum_rejects_plain_requests() {
        let (port, _seen) = serve().await;
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        tcp.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut answer = String::new();
        within(tcp.read_to_string(&mut answer)).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 426 "), "{answer}");
    }
}
