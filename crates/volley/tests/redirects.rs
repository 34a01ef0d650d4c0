//! Redirects on the opening handshake, from a real HTTP server: nginx (started by each
//! test on a free loopback port, from Debian's package, `scripts/install-test-deps.sh
//! proxies`) answers with a chain of 301, 302, 303, 307 and 308 that ends at a volley
//! server, or reverse-proxies the WebSocket to it. The client follows the chain, drops
//! credentials when the host changes, keeps them when it does not, stops at its limit,
//! and reports a loop as a redirect error.

mod common;

use common::process::nginx;
use common::{bind, within};
use tokio::sync::mpsc;
use volley::proto::HandshakeError;
use volley::{ClientBuilder, CloseCode, Error, Message};

/// What the volley server saw of one handshake.
#[derive(Debug)]
struct Seen {
    target: String,
    authorization: Option<String>,
    forwarded: bool,
}

/// A volley echo server on 127.0.0.1: its port, and what it saw of each handshake.
async fn echo_server() -> (u16, mpsc::UnboundedReceiver<Seen>) {
    let (listener, port) = bind().await;
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut ws = volley::ServerBuilder::new()
                    .hook(|req, _| {
                        let _ = tx.send(Seen {
                            target: req.target().to_string(),
                            authorization: req.header("authorization").map(str::to_string),
                            forwarded: req.header("x-forwarded-for").is_some(),
                        });
                        Ok(())
                    })
                    .accept_tcp(tcp)
                    .await?;
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

/// The redirect error's status and location (panics on another error).
fn redirect(e: &Error) -> (u16, &str) {
    match e {
        Error::Handshake(HandshakeError::Redirect(status, location)) => (*status, location),
        other => panic!("expected a redirect error, got {other:?}"),
    }
}

/// nginx's redirect chain: every redirect status, relative and absolute locations, a
/// change of host (127.0.0.1 to localhost) half-way, the query kept to the end.
fn chain(echo: u16) -> String {
    format!(
        "absolute_redirect off;\n\
         location = /start {{ return 301 /two$is_args$args; }}\n\
         location = /two {{ return 302 http://localhost:{{port}}/three$is_args$args; }}\n\
         location = /three {{ return 303 /four$is_args$args; }}\n\
         location = /four {{ return 307 /five$is_args$args; }}\n\
         location = /five {{ return 308 http://127.0.0.1:{echo}/final$is_args$args; }}\n\
         location = /loop {{ return 302 /loop; }}\n\
         location = /same-host {{ return 301 /proxied/ws; }}\n\
         location /proxied/ {{\n\
           proxy_pass http://127.0.0.1:{echo}/;\n\
           proxy_http_version 1.1;\n\
           proxy_set_header Upgrade $http_upgrade;\n\
           proxy_set_header Connection \"upgrade\";\n\
           proxy_set_header X-Forwarded-For $remote_addr;\n\
         }}"
    )
}

async fn echo_once(ws: &mut volley::WebSocket<volley::tls::MaybeTlsStream>) {
    let msg = Message::text("after the redirects");
    ws.send(msg.clone()).await.unwrap();
    assert_eq!(within(ws.recv()).await.unwrap().unwrap(), msg);
    within(ws.close(CloseCode::NORMAL, "bye")).await.unwrap();
}

#[tokio::test]
async fn follows_a_chain_of_every_redirect_status_from_nginx() {
    let (echo, mut seen) = echo_server().await;
    let nginx = nginx(&chain(echo)).await;
    let url = format!("ws://user:secret@127.0.0.1:{}/start?room=7", nginx.port);
    let (mut ws, response) = within(ClientBuilder::new(url).no_proxy().connect())
        .await
        .unwrap_or_else(|e| panic!("{e}\n--- nginx ---\n{}", nginx.log()));
    assert_eq!(response.status(), 101);
    assert_eq!(ws.info().remote_addr().unwrap().port(), echo, "the WebSocket ends at the volley server");
    let seen = within(seen.recv()).await.unwrap();
    assert_eq!(seen.target, "/final?room=7", "the query survives five redirects");
    assert_eq!(seen.authorization, None, "credentials are dropped once the host changes");
    echo_once(&mut ws).await;
    let access = std::fs::read_to_string(nginx.dir.join("access.log")).unwrap();
    for (path, status) in [("/start", 301), ("/two", 302), ("/three", 303), ("/four", 307), ("/five", 308)] {
        assert!(
            access.lines().any(|l| l.contains(&format!("GET {path}?room=7 HTTP/1.1\" {status} "))),
            "nginx answered {path} with {status}:\n{access}"
        );
    }
}

#[tokio::test]
async fn a_same_host_redirect_keeps_credentials_and_nginx_proxies_the_websocket() {
    let (echo, mut seen) = echo_server().await;
    let nginx = nginx(&chain(echo)).await;
    let url = format!("ws://127.0.0.1:{}/same-host", nginx.port);
    let (mut ws, _) = within(ClientBuilder::new(url).bearer_auth("t0k3n").no_proxy().connect())
        .await
        .unwrap_or_else(|e| panic!("{e}\n--- nginx ---\n{}", nginx.log()));
    assert_eq!(ws.info().remote_addr().unwrap().port(), nginx.port, "the WebSocket runs through nginx");
    let seen = within(seen.recv()).await.unwrap();
    assert_eq!(seen.target, "/ws");
    assert!(seen.forwarded, "the request came through nginx");
    assert_eq!(seen.authorization.as_deref(), Some("Bearer t0k3n"), "same host: credentials kept");
    echo_once(&mut ws).await;
}

#[tokio::test]
async fn the_redirect_limit_and_loops_end_with_a_redirect_error() {
    let (echo, mut seen) = echo_server().await;
    let nginx = nginx(&chain(echo)).await;
    let start = format!("ws://127.0.0.1:{}/start", nginx.port);

    // Five hops are needed: a limit of four stops at the fifth redirect (/five's 308).
    let e = within(ClientBuilder::new(&start).max_redirects(4).no_proxy().connect()).await.unwrap_err();
    assert_eq!(redirect(&e), (308, format!("http://127.0.0.1:{echo}/final").as_str()));
    // No redirects allowed: the first answer is the error.
    let e = within(ClientBuilder::new(&start).max_redirects(0).no_proxy().connect()).await.unwrap_err();
    assert_eq!(redirect(&e).0, 301);
    // A loop ends at the default limit (5).
    let e = within(ClientBuilder::new(format!("ws://127.0.0.1:{}/loop", nginx.port)).no_proxy().connect())
        .await
        .unwrap_err();
    assert_eq!(redirect(&e), (302, "/loop"));
    // nginx logs a request once it has finished it, which can be just after the client
    // has read the answer: wait (a bounded while) for the last line.
    let log = nginx.dir.join("access.log");
    let count = || std::fs::read_to_string(&log).unwrap().matches("GET /loop ").count();
    for _ in 0..100 {
        if count() >= 6 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(count(), 6, "the first request and five redirects");
    assert!(seen.try_recv().is_err(), "no request reached the volley server");
}
