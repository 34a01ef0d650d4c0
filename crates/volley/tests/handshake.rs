//! The opening handshake as users see it: subprotocol negotiation, request details
//! reaching the server's hook, response headers and rejections reaching the client,
//! the HTTP answers to bad requests, the handshake timeout, and the server's ways in
//! (`ServerBuilder` on a pipe, on TCP with its set-up, with a given peer address).

mod common;

use std::time::Duration;

use common::{bind, masked, read_to_eof, url, within};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use volley::proto::handshake::ClientRequest;
use volley::proto::HandshakeError;
use volley::{ClientBuilder, CloseCode, Config, Error, Message, Rejection, ServerBuilder, Timeout};

#[tokio::test]
async fn server_picks_first_client_offered_subprotocol_it_supports() {
    let (listener, port) = bind().await;
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let config = Config::new().protocols(["b", "a"]);
        let mut ws = ServerBuilder::new().config(config).accept_tcp(tcp).await.unwrap();
        let protocol = ws.protocol().map(str::to_string);
        while let Some(item) = ws.recv().await {
            item.unwrap();
        }
        protocol
    });
    let (mut ws, response) =
        within(ClientBuilder::new(url(port, "/")).protocol("a").protocol("b").connect()).await.unwrap();
    assert_eq!(ws.protocol(), Some("a"));
    assert_eq!(response.protocol(), Some("a"));
    within(ws.close(CloseCode::NORMAL, "")).await.unwrap();
    assert_eq!(within(server).await.unwrap().as_deref(), Some("a"));
}

#[tokio::test]
async fn no_subprotocol_when_none_is_shared() {
    let (listener, port) = bind().await;
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let config = Config::new().protocols(["x"]);
        let ws = ServerBuilder::new().config(config).accept_tcp(tcp).await.unwrap();
        ws.protocol().map(str::to_string)
    });
    let (ws, response) = within(ClientBuilder::new(url(port, "/")).protocol("a").connect()).await.unwrap();
    assert_eq!(ws.protocol(), None);
    assert_eq!(response.protocol(), None);
    assert_eq!(within(server).await.unwrap(), None);
}

#[derive(Debug, Default)]
struct Seen {
    path: String,
    query: Option<String>,
    target: String,
    host: Option<String>,
    origin: Option<String>,
    cookies: Vec<(String, String)>,
    custom: Option<String>,
    protocols: Vec<String>,
}

#[tokio::test]
async fn hook_sees_path_query_origin_cookies_and_custom_headers() {
    let (listener, port) = bind().await;
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut seen = Seen::default();
        let ws = ServerBuilder::new()
            .hook(|req, _| {
                seen = Seen {
                    path: req.path().to_string(),
                    query: req.query().map(str::to_string),
                    target: req.target().to_string(),
                    host: req.host().map(str::to_string),
                    origin: req.origin().map(str::to_string),
                    cookies: req.cookies().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
                    custom: req.header("x-custom-thing").map(str::to_string),
                    protocols: req.protocols().to_vec(),
                };
                Ok(())
            })
            .accept_tcp(tcp)
            .await
            .unwrap();
        drop(ws);
        seen
    });
    let (_ws, _) = within(
        ClientBuilder::new(url(port, "/chat/room?user=ann&x=1"))
            .header("Origin", "https://example.com")
            .header("Cookie", "session=abc123; theme=dark")
            .header("X-Custom-Thing", "hello there")
            .protocol("chat.v1")
            .connect(),
    )
    .await
    .unwrap();
    let seen = within(server).await.unwrap();
    assert_eq!(seen.path, "/chat/room");
    assert_eq!(seen.query.as_deref(), Some("user=ann&x=1"));
    assert_eq!(seen.target, "/chat/room?user=ann&x=1");
    assert_eq!(seen.host, Some(format!("127.0.0.1:{port}")));
    assert_eq!(seen.origin.as_deref(), Some("https://example.com"));
    assert_eq!(
        seen.cookies,
        vec![("session".to_string(), "abc123".to_string()), ("theme".to_string(), "dark".to_string())]
    );
    assert_eq!(seen.custom.as_deref(), Some("hello there"));
    assert_eq!(seen.protocols, vec!["chat.v1".to_string()]);
}

#[tokio::test]
async fn hook_response_header_reaches_client() {
    let (listener, port) = bind().await;
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = ServerBuilder::new()
            .hook(|_, resp| {
                resp.add_header("X-Server-Says", "welcome").unwrap();
                resp.add_header("Set-Cookie", "id=42; HttpOnly").unwrap();
                Ok(())
            })
            .accept_tcp(tcp)
            .await
            .unwrap();
        while let Some(item) = ws.recv().await {
            item.unwrap();
        }
    });
    let (mut ws, response) = within(volley::connect(&url(port, "/"))).await.unwrap();
    assert_eq!(response.status(), 101);
    assert_eq!(response.headers().get("x-server-says"), Some("welcome"));
    assert_eq!(response.headers().get("Set-Cookie"), Some("id=42; HttpOnly"));
    // The connection works after the customised answer.
    within(ws.send(Message::text("hi"))).await.unwrap();
    within(ws.close(CloseCode::NORMAL, "")).await.unwrap();
    within(server).await.unwrap();
}

#[tokio::test]
async fn hook_rejection_gives_client_the_answer_and_server_rejected() {
    let (listener, port) = bind().await;
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        ServerBuilder::new()
            .hook(|req, _| {
                if req.header("authorization").is_none() {
                    Err(Rejection::new(401).header("WWW-Authenticate", "Bearer realm=\"chat\"").body("log in first"))
                } else {
                    Ok(())
                }
            })
            .accept_tcp(tcp)
            .await
    });
    let err = within(ClientBuilder::new(url(port, "/")).connect()).await.unwrap_err();
    // The client gets the whole answer: status, header fields and body.
    let Error::Refused(response) = &err else { panic!("client got {err:?}") };
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer realm=\"chat\"");
    assert_eq!(&response.body()[..], b"log in first");
    assert_eq!(err.to_string(), "the server refused the handshake with status 401 Unauthorized");
    let server_err = within(server).await.unwrap().unwrap_err();
    assert!(matches!(server_err, Error::Rejected(401)), "server got {server_err:?}");
}

#[tokio::test]
async fn rejection_response_carries_status_headers_and_body() {
    let (listener, port) = bind().await;
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        ServerBuilder::new()
            .hook(|_, _| Err(Rejection::new(401).header("WWW-Authenticate", "Bearer").body("no token")))
            .accept_tcp(tcp)
            .await
    });
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let request = ClientRequest::new("127.0.0.1", "/", &volley::proto::Config::default());
    tcp.write_all(&request.encode()).await.unwrap();
    let answer = String::from_utf8(within(read_to_eof(&mut tcp)).await.unwrap()).unwrap();
    assert!(answer.starts_with("HTTP/1.1 401 "), "{answer}");
    assert!(answer.contains("WWW-Authenticate: Bearer\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nno token"), "{answer}");
    assert!(matches!(within(server).await.unwrap(), Err(Error::Rejected(401))));
}

/// Sends `request` to a server running `ServerBuilder::accept` with `config`, from a raw socket, and
/// returns the whole HTTP answer (the server closes after it) and the server's error.
async fn bad_handshake(request: &[u8], config: Config) -> (String, Error) {
    let (listener, port) = bind().await;
    let server = tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let result = ServerBuilder::new().config(config).accept(&mut tcp).await.map(|_| ());
        // Drain what the client sent past the point of failure, so closing the socket
        // does not reset the connection before the client has read the answer.
        let _ = read_to_eof(&mut tcp).await;
        result.unwrap_err()
    });
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.write_all(request).await.unwrap();
    tcp.shutdown().await.unwrap();
    let answer = within(read_to_eof(&mut tcp)).await.unwrap();
    let err = within(server).await.unwrap();
    (String::from_utf8(answer).unwrap(), err)
}

fn status_of(answer: &str) -> u16 {
    let line = answer.lines().next().unwrap_or_default();
    assert!(line.starts_with("HTTP/1.1 "), "not an HTTP answer: {answer:?}");
    line[9..12].parse().unwrap()
}

fn has_header(answer: &str, name: &str, value: &str) -> bool {
    let head = answer.split("\r\n\r\n").next().unwrap();
    head.lines()
        .skip(1)
        .any(|l| l.split_once(':').is_some_and(|(n, v)| n.trim().eq_ignore_ascii_case(name) && v.trim() == value))
}

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

#[tokio::test]
async fn version_8_gets_426_with_supported_version() {
    let req = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 8\r\n\r\n"
    );
    let (answer, err) = bad_handshake(req.as_bytes(), Config::new()).await;
    assert_eq!(status_of(&answer), 426, "{answer}");
    assert!(has_header(&answer, "Sec-WebSocket-Version", "13"), "{answer}");
    assert!(matches!(err, Error::Handshake(HandshakeError::Version(_))), "{err:?}");
}

#[tokio::test]
async fn post_gets_405() {
    let req = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\nContent-Length: 0\r\n\r\n"
    );
    let (answer, err) = bad_handshake(req.as_bytes(), Config::new()).await;
    assert_eq!(status_of(&answer), 405, "{answer}");
    assert!(has_header(&answer, "Allow", "GET"), "{answer}");
    assert!(matches!(err, Error::Handshake(HandshakeError::Method(_))), "{err:?}");
}

#[tokio::test]
async fn missing_key_gets_400() {
    let req = "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
               Sec-WebSocket-Version: 13\r\n\r\n";
    let (answer, err) = bad_handshake(req.as_bytes(), Config::new()).await;
    assert_eq!(status_of(&answer), 400, "{answer}");
    assert!(matches!(err, Error::Handshake(HandshakeError::Key)), "{err:?}");
}

#[tokio::test]
async fn head_over_max_handshake_size_gets_431() {
    let pad = "p".repeat(3000);
    let req = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\nX-Pad: {pad}\r\n\r\n"
    );
    let (answer, err) = bad_handshake(req.as_bytes(), Config::new().max_handshake_size(1024)).await;
    assert_eq!(status_of(&answer), 431, "{answer}");
    assert!(matches!(err, Error::Handshake(HandshakeError::TooLarge(1024))), "{err:?}");
}

#[tokio::test]
async fn head_that_never_ends_gets_431_once_past_the_limit() {
    // No blank line: the server must not keep buffering forever.
    let req = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n", "p".repeat(4000));
    let (answer, err) = bad_handshake(req.as_bytes(), Config::new().max_handshake_size(1024)).await;
    assert_eq!(status_of(&answer), 431, "{answer}");
    assert!(matches!(err, Error::Handshake(HandshakeError::TooLarge(_))), "{err:?}");
}

#[tokio::test]
async fn bytes_right_after_the_request_head_are_the_first_frames() {
    let (listener, port) = bind().await;
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = volley::accept(tcp).await.unwrap();
        let first = ws.recv().await.unwrap().unwrap();
        let second = ws.recv().await.unwrap().unwrap();
        (first, second)
    });
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let request = ClientRequest::new("127.0.0.1", "/", &volley::proto::Config::default());
    // The head and two frames in one write: the server must not lose what followed
    // the head in its first read.
    let mut bytes = request.encode();
    bytes.extend(masked(0x81, b"early"));
    bytes.extend(masked(0x82, &[9, 9, 9]));
    tcp.write_all(&bytes).await.unwrap();
    let (first, second) = within(server).await.unwrap();
    assert_eq!(first, Message::text("early"));
    assert_eq!(second, Message::binary(vec![9, 9, 9]));
}

// On tokio's paused clock (it moves only when every task waits, straight to the next
// timer): the elapsed time is the timeout the library applied, whatever the load.
#[tokio::test(start_paused = true)]
async fn server_handshake_times_out_on_silent_client() {
    let (listener, port) = bind().await;
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let config = Config::new().handshake_timeout(Duration::from_millis(200));
        let start = Instant::now();
        let result = ServerBuilder::new().config(config).accept_tcp(tcp).await;
        (result.map(|_| ()), start.elapsed())
    });
    // Connects and sends nothing.
    let _silent = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let (result, elapsed) = within(server).await.unwrap();
    assert!(matches!(result, Err(Error::Timeout(Timeout::Handshake))), "expected a timeout, got {result:?}");
    assert!(elapsed >= Duration::from_millis(200) && elapsed <= Duration::from_millis(202), "{elapsed:?}");
}

#[tokio::test(start_paused = true)]
async fn client_handshake_times_out_on_silent_server() {
    let (listener, port) = bind().await;
    // Accepts the TCP connection and never answers.
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(4)).await;
        drop(tcp);
    });
    let start = Instant::now();
    let result = within(
        ClientBuilder::new(url(port, "/"))
            .config(Config::new().handshake_timeout(Duration::from_millis(200)))
            .connect(),
    )
    .await;
    let elapsed = start.elapsed();
    assert!(
        matches!(result, Err(Error::Timeout(Timeout::Handshake))),
        "expected a timeout, got {:?}",
        result.map(|_| ())
    );
    assert!(elapsed >= Duration::from_millis(200) && elapsed <= Duration::from_millis(202), "{elapsed:?}");
    server.abort();
}

// ---- the ways in: ServerBuilder on a pipe, on TCP, with a known peer address ---------

#[tokio::test]
async fn accept_runs_over_an_in_memory_pipe_with_a_hook_and_a_given_peer_address() {
    let (client_io, server_io) = tokio::io::duplex(4096);
    let peer: std::net::SocketAddr = "192.0.2.7:4321".parse().unwrap();
    let server = tokio::spawn(async move {
        let mut seen = None;
        let mut ws = ServerBuilder::new()
            .config(Config::new().protocols(["v2"]))
            .remote_addr(peer)
            .hook(|req, resp| {
                seen = req.remote_addr();
                resp.add_header("X-Via", "pipe").map_err(|_| Rejection::new(500))
            })
            .accept(server_io)
            .await
            .unwrap();
        let recorded = ws.info().remote_addr();
        let msg = ws.recv().await.unwrap().unwrap();
        ws.send(msg).await.unwrap();
        (seen, recorded)
    });
    let (mut ws, response) =
        within(ClientBuilder::new("ws://localhost/pipe").protocol("v2").handshake(client_io)).await.unwrap();
    assert_eq!(response.headers().get("x-via"), Some("pipe"), "the hook's header reached the client");
    assert_eq!(response.protocol(), Some("v2"), "the configuration's subprotocol was chosen");
    within(ws.send(Message::text("over a pipe"))).await.unwrap();
    assert_eq!(within(ws.recv()).await.unwrap().unwrap(), Message::text("over a pipe"));
    let (seen, recorded) = within(server).await.unwrap();
    assert_eq!(seen, Some(peer), "the hook saw the address given to the builder");
    assert_eq!(recorded, Some(peer), "the connection's info records it");
}

/// A hook written as a plain function: the request's own fields through `Deref` to the
/// core's `Request`, the peer's address beside them (the core never sees the socket).
fn loopback_team_members(req: &volley::HandshakeRequest, resp: &mut volley::Response) -> Result<(), Rejection> {
    let local = req.remote_addr().is_some_and(|a| a.ip().is_loopback());
    match (local, req.path(), req.header("X-Team")) {
        (true, "/team", Some(team)) => resp.add_header("X-Welcome", team).map_err(|_| Rejection::new(500)),
        _ => Err(Rejection::new(403)),
    }
}

#[tokio::test]
async fn a_hook_function_reads_the_request_and_the_peer_address_beside_it() {
    async fn attempt(peer: &str) -> (Result<String, Error>, Result<(), Error>) {
        let (client_io, server_io) = tokio::io::duplex(4096);
        let peer: std::net::SocketAddr = peer.parse().unwrap();
        let server = ServerBuilder::new().remote_addr(peer).hook(loopback_team_members).accept(server_io);
        let client = ClientBuilder::new("ws://localhost/team").header("X-Team", "blue").handshake(client_io);
        let (server, client) = within(async { tokio::join!(server, client) }).await;
        let client = client.map(|(_, response)| response.headers().get("x-welcome").unwrap_or_default().to_string());
        (client, server.map(drop))
    }
    let (client, server) = attempt("127.0.0.1:4000").await;
    assert_eq!(client.unwrap(), "blue", "the hook read the header and saw a loopback peer");
    server.unwrap();
    let (client, server) = attempt("192.0.2.7:4000").await;
    assert!(matches!(&client, Err(Error::Refused(r)) if r.status() == 403), "client got {client:?}");
    assert!(matches!(server, Err(Error::Rejected(403))), "server got {server:?}");
}

#[tokio::test]
async fn accept_tcp_turns_on_nodelay_and_records_both_addresses_where_accept_does_not() {
    let (listener, port) = bind().await;
    let server = tokio::spawn(async move {
        let (tcp, peer) = listener.accept().await.unwrap();
        let set_up = ServerBuilder::new().accept_tcp(tcp).await.unwrap();
        let (tcp, _) = listener.accept().await.unwrap();
        let plain = volley::accept(tcp).await.unwrap();
        (peer, set_up, plain)
    });
    let (_a, _) = within(volley::connect(&url(port, "/"))).await.unwrap();
    let (_b, _) = within(volley::connect(&url(port, "/"))).await.unwrap();
    let (peer, set_up, plain) = within(server).await.unwrap();
    assert!(set_up.get_ref().nodelay().unwrap(), "accept_tcp turns TCP_NODELAY on");
    assert_eq!(set_up.info().remote_addr(), Some(peer));
    assert_eq!(set_up.info().local_addr().map(|a| a.port()), Some(port));
    // `accept` takes any transport as it is: no socket options, no addresses.
    assert!(!plain.get_ref().nodelay().unwrap());
    assert_eq!((plain.info().remote_addr(), plain.info().local_addr()), (None, None));
}

#[tokio::test]
async fn a_given_peer_address_wins_over_the_sockets_on_accept_tcp() {
    // As behind a proxy that told the client's address (the PROXY protocol, say).
    let client: std::net::SocketAddr = "198.51.100.1:5000".parse().unwrap();
    let (listener, port) = bind().await;
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut seen = None;
        let ws = ServerBuilder::new()
            .remote_addr(client)
            .hook(|req, _| {
                seen = req.remote_addr();
                Ok(())
            })
            .accept_tcp(tcp)
            .await
            .unwrap();
        (seen, ws)
    });
    let (_ws, _) = within(volley::connect(&url(port, "/"))).await.unwrap();
    let (seen, ws) = within(server).await.unwrap();
    assert_eq!(seen, Some(client));
    assert_eq!(ws.info().remote_addr(), Some(client));
    assert_eq!(ws.info().local_addr().map(|a| a.port()), Some(port), "the local address is still the socket's");
    assert!(ws.get_ref().nodelay().unwrap());
}
