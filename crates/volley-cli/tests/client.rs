//! Real processes on the other end: reconnection after the `volley echo` process is
//! killed and started again, and keepalive against a `volley connect` process that is
//! paused (SIGSTOP).

mod common;

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{echo_on, free_port, Proc};
use volley::{Backoff, ClientBuilder, ConnectionState, Message, Reconnecting};

fn echo(port: u16) -> Proc {
    echo_on(port, &[])
}

#[tokio::test]
async fn reconnects_after_the_server_is_killed_and_restarted() {
    let port = free_port();
    let mut server = Some(echo(port));
    let states = Arc::new(Mutex::new(Vec::new()));
    let log = states.clone();
    let backoff = Backoff { initial: Duration::from_millis(50), max: Duration::from_millis(300), factor: 2.0 };
    let mut client = Reconnecting::new(ClientBuilder::new(format!("ws://127.0.0.1:{port}/")).no_proxy())
        .backoff(backoff)
        .greeting(vec![Message::text("hello again")])
        .on_state(move |s| log.lock().unwrap().push(s.clone()));
    // The echo server sends the greeting back.
    assert_eq!(client.recv().await.unwrap(), Message::text("hello again"));
    client.send(Message::text("one")).await.unwrap();
    assert_eq!(client.recv().await.unwrap(), Message::text("one"));

    // Kill the server; restart it on the same port a little later.
    drop(server.take());
    let restart = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        echo(port)
    });
    let greeting = tokio::time::timeout(Duration::from_secs(10), client.recv()).await.unwrap().unwrap();
    assert_eq!(greeting, Message::text("hello again"), "the greeting is re-sent on the new connection");
    client.send(Message::text("two")).await.unwrap();
    assert_eq!(client.recv().await.unwrap(), Message::text("two"));
    let _server = restart.await.unwrap();

    let states = states.lock().unwrap().clone();
    let connected = states.iter().filter(|s| **s == ConnectionState::Connected).count();
    assert_eq!(connected, 2, "{states:?}");
    assert!(states.iter().any(|s| matches!(s, ConnectionState::Disconnected { .. })), "{states:?}");
    assert!(states.iter().any(|s| matches!(s, ConnectionState::Waiting { .. })), "{states:?}");
}

/// A peer that stops answering because its process is paused (SIGSTOP): its kernel
/// still acknowledges TCP segments, but nothing answers the server's pings, so the
/// server's keepalive closes the connection after the pong timeout. The peer is a real
/// `volley connect` process in pipe mode.
#[tokio::test]
async fn a_paused_peer_process_is_closed_after_the_pong_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut peer = Command::new(env!("CARGO_BIN_EXE_volley"))
        .args(["connect", "--no-proxy", &format!("ws://127.0.0.1:{port}/")])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = peer.id().to_string();
    let _stdin = peer.stdin.take();
    let peer = Proc(peer);
    let (tcp, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept()).await.unwrap().unwrap();
    let config = volley::Config::new()
        .ping_interval(Some(Duration::from_millis(100)))
        .pong_timeout(Duration::from_millis(300))
        .close_timeout(Duration::from_millis(300));
    let mut ws = volley::ServerBuilder::new().config(config).accept_tcp(tcp).await.unwrap();

    // While the peer runs, its pongs arrive: a round-trip time is measured.
    let deadline = Instant::now() + Duration::from_secs(5);
    while ws.rtt().is_none() {
        assert!(Instant::now() < deadline, "no pong from the running peer");
        let _ = tokio::time::timeout(Duration::from_millis(50), ws.recv()).await;
    }

    assert!(Command::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    // A guard against a hang, not a measure: the keepalive gives up after about 0.4 s
    // (a ping interval plus the pong timeout); the last item says which timer did it.
    let last = tokio::time::timeout(Duration::from_secs(30), async {
        let mut last = None;
        while let Some(item) = ws.recv().await {
            last = Some(item);
        }
        last
    })
    .await
    .expect("the server did not give up on the paused peer");
    let _ = Command::new("kill").args(["-CONT", &pid]).status();
    drop(peer);
    assert!(matches!(last, Some(Err(volley::Error::Timeout(volley::Timeout::KeepalivePong)))), "{last:?}");
}
