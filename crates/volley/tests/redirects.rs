//! Redirects on the opening handshake, from a real HTTP server: nginx (started by each
//! test on a free loopback port, from Debian's package, `scripts/install-test-deps.sh
//! proxies`) answers with a chain of 301, 302, 303, 307 and 308 that ends at a volley
//! server, or reverse-proxies the WebSocket to it. The client follows the chain, drops
//! credentials and cookies when the origin (scheme, host or port) changes and keeps them
//! when it does not, stops at its limit, and reports a loop as a redirect error.
#![cfg(feature = "tls")]

mod common;

use std::path::PathBuf;

use common::process::{free_port, nginx};
use common::{bind, within};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tokio::sync::mpsc;
use volley::proto::HandshakeError;
use volley::{ClientBuilder, CloseCode, Error, Message};

/// What the volley server saw of one handshake.
#[derive(Debug)]
struct Seen {
    target: String,
    authorization: Option<String>,
    cookie: Option<String>,
    proxy_authorization: Option<String>,
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
                            cookie: req.header("cookie").map(str::to_string),
                            proxy_authorization: req.header("proxy-authorization").map(str::to_string),
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
/// change of host (127.0.0.1 to localhost) half-way, the query kept to the end. Also
/// one redirect to the same host on another port (the volley server's), and a detour
/// through another host that comes back to nginx's own origin.
fn chain(echo: u16) -> String {
    format!(
        "absolute_redirect off;\n\
         location = /start {{ return 301 /two$is_args$args; }}\n\
         location = /two {{ return 302 http://localhost:{{port}}/three$is_args$args; }}\n\
         location = /three {{ return 303 /four$is_args$args; }}\n\
         location = /four {{ return 307 /five$is_args$args; }}\n\
         location = /five {{ return 308 http://127.0.0.1:{echo}/final$is_args$args; }}\n\
         location = /loop {{ return 302 /loop; }}\n\
         location = /other-port {{ return 302 http://127.0.0.1:{echo}/final; }}\n\
         location = /away {{ return 302 http://localhost:{{port}}/back; }}\n\
         location = /back {{ return 302 http://127.0.0.1:{{port}}/proxied/ws; }}\n\
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

/// nginx's access log once `done` holds of it, or after 5 s. nginx logs a request once
/// it has finished it, which can be just after the client has read the answer.
async fn logged(nginx: &common::process::Process, done: impl Fn(&str) -> bool) -> String {
    let path = nginx.dir.join("access.log");
    for _ in 0..250 {
        let access = std::fs::read_to_string(&path).unwrap();
        if done(&access) {
            return access;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    std::fs::read_to_string(&path).unwrap()
}

/// Connects `client` (no proxy) to where nginx sends it; a failure shows nginx's log.
async fn through(
    nginx: &common::process::Process,
    client: ClientBuilder,
) -> (volley::WebSocket<volley::MaybeTlsStream>, volley::ServerResponse) {
    within(client.no_proxy().connect()).await.unwrap_or_else(|e| panic!("{e}\n--- nginx ---\n{}", nginx.log()))
}

#[tokio::test]
async fn follows_a_chain_of_every_redirect_status_from_nginx() {
    let (echo, mut seen) = echo_server().await;
    let nginx = nginx(&chain(echo)).await;
    let url = format!("ws://user:secret@127.0.0.1:{}/start?room=7", nginx.port);
    let (mut ws, response) = through(&nginx, ClientBuilder::new(url).cookies([("session", "s1")])).await;
    assert_eq!(response.status(), 101);
    assert_eq!(ws.info().remote_addr().unwrap().port(), echo, "the WebSocket ends at the volley server");
    let seen = within(seen.recv()).await.unwrap();
    assert_eq!(seen.target, "/final?room=7", "the query survives five redirects");
    assert_eq!(seen.authorization, None, "credentials are dropped once the host changes");
    assert_eq!(seen.cookie, None, "cookies too");
    echo_once(&mut ws).await;
    let hops = [("/start", 301), ("/two", 302), ("/three", 303), ("/four", 307), ("/five", 308)];
    let answered = |access: &str, (path, status): (&str, u16)| {
        access.lines().any(|l| l.contains(&format!("GET {path}?room=7 HTTP/1.1\" {status} ")))
    };
    let access = logged(&nginx, |access| hops.iter().all(|&hop| answered(access, hop))).await;
    for (path, status) in hops {
        assert!(answered(&access, (path, status)), "nginx answered {path} with {status}:\n{access}");
    }
}

#[tokio::test]
async fn a_same_origin_redirect_keeps_credentials_and_nginx_proxies_the_websocket() {
    let (echo, mut seen) = echo_server().await;
    let nginx = nginx(&chain(echo)).await;
    let url = format!("ws://127.0.0.1:{}/same-host", nginx.port);
    let client = ClientBuilder::new(url).bearer_auth("t0k3n").cookies([("session", "s1"), ("theme", "dark")]);
    let (mut ws, _) = through(&nginx, client).await;
    assert_eq!(ws.info().remote_addr().unwrap().port(), nginx.port, "the WebSocket runs through nginx");
    let seen = within(seen.recv()).await.unwrap();
    assert_eq!(seen.target, "/ws");
    assert!(seen.forwarded, "the request came through nginx");
    assert_eq!(seen.authorization.as_deref(), Some("Bearer t0k3n"), "same origin: credentials kept");
    assert_eq!(seen.cookie.as_deref(), Some("session=s1; theme=dark"), "same origin: cookies kept");
    echo_once(&mut ws).await;
}

/// CVE-2022-27776 in curl: credentials leaked to the same host on another port, which
/// may be another service (another user's) altogether.
#[tokio::test]
async fn a_redirect_to_another_port_drops_credentials_and_cookies() {
    let (echo, mut seen) = echo_server().await;
    let nginx = nginx(&chain(echo)).await;
    // Credentials from the URL's userinfo, and a header of the application's own.
    let url = format!("ws://user:secret@127.0.0.1:{}/other-port", nginx.port);
    let client = ClientBuilder::new(url).cookies([("session", "s1")]).header("Proxy-Authorization", "Basic eDp5");
    let (mut ws, _) = through(&nginx, client).await;
    assert_eq!(ws.info().remote_addr().unwrap().port(), echo, "same host, the volley server's port");
    let seen = within(seen.recv()).await.unwrap();
    assert_eq!(seen.target, "/final");
    assert_eq!((seen.authorization, seen.cookie), (None, None), "another port is another origin");
    assert_eq!(seen.proxy_authorization, None, "the application's credential headers too");
    echo_once(&mut ws).await;
}

/// Once dropped, credentials stay dropped: a redirect through another host that comes
/// back to the first origin does not bring them back (as in curl).
#[tokio::test]
async fn credentials_stay_dropped_when_a_redirect_comes_back_to_the_first_origin() {
    let (echo, mut seen) = echo_server().await;
    let nginx = nginx(&chain(echo)).await;
    let url = format!("ws://127.0.0.1:{}/away", nginx.port);
    let client = ClientBuilder::new(url).bearer_auth("t0k3n").cookies([("session", "s1")]);
    let (mut ws, _) = through(&nginx, client).await;
    assert_eq!(ws.info().remote_addr().unwrap().port(), nginx.port, "back at nginx's own origin");
    let seen = within(seen.recv()).await.unwrap();
    assert!(seen.forwarded, "the request came through nginx");
    assert_eq!((seen.authorization, seen.cookie), (None, None), "dropped at localhost, not restored");
    echo_once(&mut ws).await;
}

/// A test CA and a certificate for 127.0.0.1 in PEM files (removed on drop), for nginx.
struct TlsFiles {
    dir: PathBuf,
    root: volley::tls::CertificateDer<'static>,
}

impl TlsFiles {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap().signed_by(&key, &ca).unwrap();
        let dir = std::env::temp_dir().join(format!("volley-redirects-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
        TlsFiles { dir, root: ca.der().clone() }
    }
}

impl Drop for TlsFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A change of scheme alone (ws:// to wss://, same host and port) is a change of
/// origin too: nginx answers plain HTTP on its TLS port with a redirect to https:// on
/// that port (`error_page 497`), then proxies the WebSocket over TLS.
#[tokio::test]
async fn a_redirect_from_ws_to_wss_drops_credentials_and_cookies() {
    let (echo, mut seen) = echo_server().await;
    let files = TlsFiles::new();
    let tls_port = free_port();
    let dir = files.dir.display();
    let nginx = nginx(&format!(
        "listen 127.0.0.1:{tls_port} ssl;\n\
         ssl_certificate {dir}/cert.pem;\n\
         ssl_certificate_key {dir}/key.pem;\n\
         error_page 497 =301 https://$host:$server_port$request_uri;\n\
         location /proxied/ {{\n\
           proxy_pass http://127.0.0.1:{echo}/;\n\
           proxy_http_version 1.1;\n\
           proxy_set_header Upgrade $http_upgrade;\n\
           proxy_set_header Connection \"upgrade\";\n\
           proxy_set_header X-Forwarded-For $remote_addr;\n\
         }}"
    ))
    .await;
    let url = format!("ws://127.0.0.1:{tls_port}/proxied/ws");
    let client = ClientBuilder::new(url).root_certificate(files.root.clone()).bearer_auth("t0k3n");
    let (mut ws, _) = through(&nginx, client.cookies([("session", "s1")])).await;
    assert!(ws.get_ref().is_tls(), "the redirect went to wss://");
    assert_eq!(ws.info().remote_addr().unwrap().port(), tls_port, "same host and port");
    let seen = within(seen.recv()).await.unwrap();
    assert!(seen.forwarded, "the request came through nginx");
    assert_eq!((seen.authorization, seen.cookie), (None, None), "another scheme is another origin");
    echo_once(&mut ws).await;
    let access = logged(&nginx, |access| access.contains("\" 301 ")).await;
    assert!(access.contains("\" 301 "), "nginx redirected the plain request:\n{access}");
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
    let loops = |access: &str| access.matches("GET /loop ").count();
    let access = logged(&nginx, |access| loops(access) >= 6).await;
    assert_eq!(loops(&access), 6, "the first request and five redirects");
    assert!(seen.try_recv().is_err(), "no request reached the volley server");
}
