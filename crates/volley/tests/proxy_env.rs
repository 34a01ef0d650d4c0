//! `ClientBuilder` reads the proxy environment variables the way curl does, through
//! real proxies (tinyproxy for HTTP CONNECT, microsocks for SOCKS5, from Debian's
//! packages). One test in its own test binary: it changes the process's environment,
//! which no other test may see.
#![cfg(feature = "proxy")]

mod common;

use common::process::{microsocks, tinyproxy};
use common::{bind, within};
use tokio::sync::mpsc;
use volley::{ClientBuilder, CloseCode, Error, Message};

/// A volley echo server on 127.0.0.1: its port, and the peer address of each
/// connection it accepted.
async fn echo_server() -> (u16, mpsc::UnboundedReceiver<std::net::SocketAddr>) {
    let (listener, port) = bind().await;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, peer)) = listener.accept().await {
            let _ = tx.send(peer);
            tokio::spawn(async move {
                let mut ws = volley::accept(tcp).await?;
                while let Some(msg) = ws.recv().await {
                    if let msg @ (Message::Text(_) | Message::Binary(_)) = msg? {
                        ws.send(msg).await?;
                    }
                }
                Ok::<_, Error>(())
            });
        }
    });
    (port, rx)
}

/// Connects with a default `ClientBuilder` (proxies from the environment), checks an
/// echo, and returns the port the client's TCP connection went to.
async fn connect_and_echo(url: &str) -> u16 {
    let (mut ws, _) = within(ClientBuilder::new(url).connect()).await.unwrap_or_else(|e| panic!("{url}: {e}"));
    let msg = Message::text("which way?");
    ws.send(msg.clone()).await.unwrap();
    assert_eq!(within(ws.recv()).await.unwrap().unwrap(), msg);
    let port = ws.info().remote_addr().unwrap().port();
    within(ws.close(CloseCode::NORMAL, "")).await.unwrap();
    port
}

const VARS: [&str; 8] =
    ["http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY"];

fn set_env(pairs: &[(&str, &str)]) {
    for var in VARS {
        std::env::remove_var(var);
    }
    for (k, v) in pairs {
        std::env::set_var(k, v);
    }
}

#[tokio::test]
async fn client_builder_takes_proxies_from_the_environment() {
    let (echo, mut peers) = echo_server().await;
    let http = tinyproxy(echo, Some(("ada", "s3cret"))).await;
    let socks = microsocks(None).await;
    let url = format!("ws://127.0.0.1:{echo}/env");

    // http_proxy (with credentials in the URL) for ws://.
    set_env(&[("http_proxy", &format!("http://ada:s3cret@127.0.0.1:{}", http.port))]);
    assert_eq!(connect_and_echo(&url).await, http.port, "ws:// through http_proxy");
    assert_ne!(within(peers.recv()).await.unwrap().port(), 0);

    // ALL_PROXY (upper case, SOCKS5 with remote resolution) when no scheme variable is set.
    set_env(&[("ALL_PROXY", &format!("socks5h://127.0.0.1:{}", socks.port))]);
    assert_eq!(connect_and_echo(&url).await, socks.port, "ws:// through ALL_PROXY");

    // The scheme's own variable wins over all_proxy.
    set_env(&[
        ("all_proxy", &format!("socks5://127.0.0.1:{}", socks.port)),
        ("http_proxy", &format!("http://ada:s3cret@127.0.0.1:{}", http.port)),
    ]);
    assert_eq!(connect_and_echo(&url).await, http.port, "http_proxy before all_proxy");
    // Upper-case HTTP_PROXY is never read, as in curl (in CGI programs a request's
    // `Proxy:` header becomes HTTP_PROXY): all_proxy applies.
    set_env(&[
        ("all_proxy", &format!("socks5://127.0.0.1:{}", socks.port)),
        ("HTTP_PROXY", &format!("http://ada:s3cret@127.0.0.1:{}", http.port)),
    ]);
    assert_eq!(connect_and_echo(&url).await, socks.port, "HTTP_PROXY ignored");

    // no_proxy lists the host: direct.
    set_env(&[("http_proxy", &format!("http://127.0.0.1:{}", http.port)), ("no_proxy", "example.com, 127.0.0.1")]);
    assert_eq!(connect_and_echo(&url).await, echo, "no_proxy: direct");
    // no_proxy=*: direct.
    set_env(&[("all_proxy", &format!("socks5://127.0.0.1:{}", socks.port)), ("NO_PROXY", "*")]);
    assert_eq!(connect_and_echo(&url).await, echo, "NO_PROXY=*: direct");

    // https_proxy is for wss:// only: a ws:// URL ignores it.
    set_env(&[("https_proxy", "http://127.0.0.1:1")]);
    assert_eq!(connect_and_echo(&url).await, echo, "https_proxy does not apply to ws://");
    while peers.try_recv().is_ok() {}

    // A proxy that refuses the credentials: the error says so; no direct fallback.
    set_env(&[("http_proxy", &format!("http://ada:wrong@127.0.0.1:{}", http.port))]);
    let e = within(ClientBuilder::new(&url).connect()).await.unwrap_err();
    assert!(e.to_string().contains("the HTTP proxy refused the tunnel"), "{e}");
    assert!(peers.try_recv().is_err(), "nothing reached the server directly");
    set_env(&[]);
}
