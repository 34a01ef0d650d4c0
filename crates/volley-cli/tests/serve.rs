//! `volley serve` as a process: its configuration (file, environment, flags, unknown
//! keys), and its graceful shutdown.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Proc;
use serde_json::json;
use volley::Message;

fn write_config(text: &str, ext: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("volley-serve-test-{}-{}.{ext}", std::process::id(), rand_suffix()));
    std::fs::write(&path, text).unwrap();
    path
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// Starts `volley serve` with `args`; returns the process and the address it printed.
fn serve(args: &[&str], env: &[(&str, &str)]) -> (Proc, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_volley"))
        .arg("serve")
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let addr = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("{line:?}")).to_owned();
    (Proc(child), addr)
}

/// Runs `volley serve` expecting it to fail at start; returns its stderr.
fn fails(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_volley"))
        .arg("serve")
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(!out.status.success(), "it started: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

async fn api(addr: &str, key: &str, method: &str, body: serde_json::Value) -> serde_json::Value {
    // A plain HTTP/1.1 request on a TCP socket: the test needs no HTTP client.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = body.to_string();
    let req = format!(
        "POST /api/{method} HTTP/1.1\r\nHost: {addr}\r\nX-API-Key: {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).await.unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    serde_json::from_str(body).unwrap()
}

#[test]
fn an_unknown_key_is_an_error_that_names_it_wherever_it_comes_from() {
    let file = write_config("[client]\nping_intervall = \"10s\"\n", "toml");
    let err = fails(&["--config", file.to_str().unwrap()], &[]);
    assert!(err.contains("ping_intervall"), "{err}");
    let err = fails(&["--set", "channel.namespaces=[{\"name\":\"a\",\"presense\":true}]"], &[]);
    assert!(err.contains("presense"), "{err}");
    let err = fails(&[], &[("VOLLEY_CLIENT_PING_INTERVALL", "5s")]);
    assert!(err.contains("VOLLEY_CLIENT_PING_INTERVALL"), "{err}");
    let bad = write_config("{\"channel\": {\"namespaces\": [{\"name\": \"x\", \"force_recovery\": true}]}}", "json");
    let err = fails(&["--config", bad.to_str().unwrap()], &[]);
    assert!(err.contains("recovery needs history"), "{err}");
    let _ = std::fs::remove_file(file);
    let _ = std::fs::remove_file(bad);
}

#[tokio::test]
async fn flags_beat_the_environment_which_beats_the_file() {
    let file = write_config(
        "[http_api]\nkey = \"from-file\"\n[client]\nallow_anonymous_connect_without_token = true\n",
        "toml",
    );
    let path = file.to_str().unwrap().to_owned();
    // The file alone.
    let (_p, addr) = serve(&["--config", &path], &[]);
    assert!(api(&addr, "from-file", "info", json!({})).await["result"]["nodes"].is_array());
    // The environment over the file.
    let (_p, addr) = serve(&["--config", &path], &[("VOLLEY_HTTP_API_KEY", "from-env")]);
    assert!(api(&addr, "from-env", "info", json!({})).await["result"].is_object());
    // A flag over both.
    let (_p, addr) =
        serve(&["--config", &path, "--set", "http_api.key=from-flag"], &[("VOLLEY_HTTP_API_KEY", "from-env")]);
    assert!(api(&addr, "from-flag", "info", json!({})).await["result"].is_object());
    let _ = std::fs::remove_file(file);
}

#[tokio::test]
async fn sigterm_disconnects_clients_with_3001_over_the_window_and_exits_0() {
    let (mut proc, addr) = serve(&["--set", "shutdown.disconnect_window=1s"], &[]);
    let mut clients = Vec::new();
    for _ in 0..5 {
        let (mut ws, _) = volley::connect(&format!("ws://{addr}/connection/websocket")).await.unwrap();
        ws.send(Message::text(json!({"id": 1, "connect": {}}).to_string())).await.unwrap();
        let reply = ws.recv().await.unwrap().unwrap();
        assert!(reply.into_data().starts_with(b"{\"id\":1,\"connect\""));
        clients.push(ws);
    }
    let started = Instant::now();
    let pid = proc.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    // Each client waits for its close in a task of its own, noting when it came.
    let waits: Vec<_> = clients
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                loop {
                    match tokio::time::timeout(Duration::from_secs(10), ws.recv()).await.unwrap() {
                        Some(Ok(Message::Close(Some(f)))) => {
                            return (u16::from(f.code), f.reason.to_string(), started.elapsed())
                        }
                        Some(Ok(_)) => {}
                        other => panic!("{other:?}"),
                    }
                }
            })
        })
        .collect();
    let mut codes = Vec::new();
    for w in waits {
        codes.push(w.await.unwrap());
    }
    assert!(codes.iter().all(|(c, r, _)| *c == 3001 && r == "shutdown"), "{codes:?}");
    // Spread over the window, not all at once.
    let first = codes.iter().map(|c| c.2).min().unwrap();
    let last = codes.iter().map(|c| c.2).max().unwrap();
    assert!(last - first >= Duration::from_millis(500), "{first:?}..{last:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = proc.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "still running");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn tls_serves_websockets_over_http_1_1_and_http_2_on_one_port() {
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = write_config(&generated.cert.pem(), "crt");
    let key = write_config(&generated.signing_key.serialize_pem(), "key");
    let (_p, addr) = serve(
        &[
            "--set",
            &format!("http_server.tls.cert_file={}", cert.display()),
            "--set",
            &format!("http_server.tls.key_file={}", key.display()),
        ],
        &[],
    );
    let port = addr.rsplit(':').next().unwrap();
    let url = format!("wss://localhost:{port}/connection/websocket");
    let root = volley::tls::CertificateDer::from(generated.cert.der().to_vec());
    let h1 = volley::ClientBuilder::new(&url).root_certificate(root.clone()).connect().await.unwrap().0;
    assert_eq!(h1.info().http_version(), axum::http::Version::HTTP_11);
    hub_connects(h1).await;
    let h2 = volley::ClientBuilder::new(&url).root_certificate(root).connect_h2().await.unwrap().0;
    assert_eq!(h2.info().http_version(), axum::http::Version::HTTP_2);
    hub_connects(h2).await;
    let _ = std::fs::remove_file(cert);
    let _ = std::fs::remove_file(key);
}

/// Over TLS, a browser's way: ALPN `h2`, then many SSE streams and the server API as
/// streams of one HTTP/2 connection. Each stream carries the anti-buffering headers and,
/// idle, heartbeats; the publication reaches every one.
#[tokio::test]
async fn tls_multiplexes_sse_streams_and_the_server_api_on_one_http_2_connection() {
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    const STREAMS: usize = 10;
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert = write_config(&generated.cert.pem(), "crt");
    let key = write_config(&generated.signing_key.serialize_pem(), "key");
    let config = json!({
        "http_server": {"tls": {"cert_file": cert, "key_file": key}},
        "client": {"allow_anonymous_connect_without_token": true, "ping_interval": "300ms"},
        "channel": {"without_namespace": {"allow_subscribe_for_anonymous": true}},
        "http_api": {"key": "the-key"},
        "uni_sse": {"enabled": true},
    });
    let file = write_config(&config.to_string(), "json");
    let (_p, addr) = serve(&["--config", file.to_str().unwrap()], &[]);
    let port = addr.rsplit(':').next().unwrap();

    let mut roots = volley::tls::rustls::RootCertStore::empty();
    roots.add(volley::tls::CertificateDer::from(generated.cert.der().to_vec())).unwrap();
    let connector = volley::tls::TlsConnector::from(volley::http::h2_client_config(roots));
    let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let name = volley::tls::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (send, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), hyper_util::rt::TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let request = |method: &str, path: &str, body: String| {
        let mut send = send.clone();
        let req = hyper::Request::builder()
            .method(method)
            .uri(format!("https://localhost:{port}{path}"))
            .header("x-api-key", "the-key")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        async move {
            let resp = send.send_request(req).await.unwrap();
            assert_eq!(resp.version(), hyper::Version::HTTP_2);
            resp
        }
    };
    // Reads a stream until its text holds `needle`.
    async fn read_until(body: &mut hyper::body::Incoming, text: &mut String, needle: &str) {
        // Bounded in frames too: heartbeats would otherwise keep a wrong expectation
        // waiting for ever.
        for _ in 0..1000 {
            if text.contains(needle) {
                return;
            }
            let frame = tokio::time::timeout(Duration::from_secs(10), body.frame())
                .await
                .unwrap_or_else(|_| panic!("no {needle:?} in {text:?}"))
                .expect("the stream is open")
                .unwrap();
            if let Ok(data) = frame.into_data() {
                text.push_str(std::str::from_utf8(&data).unwrap());
            }
        }
        panic!("no {needle:?} in {text:?}");
    }
    let mut streams = Vec::new();
    for _ in 0..STREAMS {
        let resp = request("GET", "/connection/uni_sse?channel=news", String::new()).await;
        assert_eq!(resp.status(), 200);
        let h = resp.headers();
        assert_eq!(h["content-type"], "text/event-stream");
        assert!(h["cache-control"].to_str().unwrap().contains("no-cache"), "{h:?}");
        assert_eq!(h["x-accel-buffering"], "no");
        assert!(!h.contains_key("connection") && !h.contains_key("transfer-encoding"), "{h:?}");
        let mut body = resp.into_body();
        let mut text = String::new();
        read_until(&mut body, &mut text, "\"connect\"").await;
        streams.push((body, text));
    }
    // Idle, each gets a heartbeat (Centrifugo's: an event named `ping`).
    for (body, text) in &mut streams {
        read_until(body, text, "event: ping\ndata:\n\n").await;
    }
    let resp = request("POST", "/api/publish", json!({"channel": "news", "data": {"n": 1}}).to_string()).await;
    assert_eq!(resp.status(), 200);
    let reply = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(reply.starts_with(b"{\"result\""), "{reply:?}");
    for (body, text) in &mut streams {
        read_until(body, text, "\"data\":{\"n\":1}").await;
    }
    for f in [cert, key, file] {
        let _ = std::fs::remove_file(f);
    }
}

/// The hub answers `connect` on this WebSocket.
async fn hub_connects<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(mut ws: volley::WebSocket<S>) {
    ws.send(Message::text(json!({"id": 1, "connect": {}}).to_string())).await.unwrap();
    let reply = ws.recv().await.unwrap().unwrap().into_data();
    assert!(reply.starts_with(b"{\"id\":1,\"connect\""), "{reply:?}");
}

/// A Centrifugo v6 configuration as an application has it: keys Volley supports, keys it
/// ignores (`client.presence_update_interval`, `delta_publish`, `log.level`), and sections
/// that are off.
fn centrifugo_config() -> serde_json::Value {
    json!({
        "http_server": { "port": 8000 },
        "log": { "level": "debug" },
        "engine": { "type": "memory" },
        "client": {
            "token": { "hmac_secret_key": "centrifugo-hmac-secret" },
            "allowed_origins": [],
            "presence_update_interval": "27s"
        },
        "channel": {
            "namespaces": [{
                "name": "chat", "history_size": 10, "history_ttl": "300s", "force_recovery": true,
                "allow_subscribe_for_client": true, "allow_publish_for_subscriber": true, "delta_publish": true
            }]
        },
        "http_api": { "key": "centrifugo-api-key" },
        "admin": { "enabled": false, "password": "admin-password", "secret": "admin-secret" }
    })
}

/// An HS256 JWT.
fn hs256(secret: &str, claims: &serde_json::Value) -> String {
    use base64::Engine as _;
    use hmac::{Hmac, Mac};
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let signing = format!("{}.{}", b64.encode(br#"{"alg":"HS256","typ":"JWT"}"#), b64.encode(claims.to_string()));
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(signing.as_bytes());
    format!("{signing}.{}", b64.encode(mac.finalize().into_bytes()))
}

/// The next JSON reply or push from the hub (a frame may carry several, one a line).
async fn next_json<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    ws: &mut volley::WebSocket<S>,
    pending: &mut std::collections::VecDeque<serde_json::Value>,
) -> serde_json::Value {
    loop {
        if let Some(v) = pending.pop_front() {
            return v;
        }
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.recv()).await.expect("a reply").unwrap().unwrap();
        let data = msg.into_data();
        for line in data.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            pending.push_back(serde_json::from_slice(line).unwrap());
        }
    }
}

#[tokio::test]
async fn a_centrifugo_configuration_serves_its_clients_and_its_api_unchanged() {
    let file = write_config(&centrifugo_config().to_string(), "json");
    let mut child = Command::new(env!("CARGO_BIN_EXE_volley"))
        .args(["serve", "--config", file.to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .env("VOLLEY_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let proc = Proc(child);
    let addr = line.trim().strip_prefix("listening on ").unwrap_or_else(|| panic!("{line:?}")).to_owned();

    // One warning names every key Volley ignores, by its path.
    let warning = loop {
        let line = rx.recv_timeout(Duration::from_secs(10)).expect("a warning about the ignored keys");
        if line.contains("WARN") {
            break line;
        }
    };
    assert!(
        warning.contains("channel.namespaces[chat].delta_publish, client.presence_update_interval, log.level"),
        "{warning}"
    );

    // The server API, with the key of http_api.key.
    assert!(api(&addr, "centrifugo-api-key", "info", json!({})).await["result"]["nodes"].is_array());

    // A client with a token signed with client.token.hmac_secret_key.
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 3600;
    let token = hs256("centrifugo-hmac-secret", &json!({ "sub": "alice", "exp": exp }));
    let (mut ws, _) = volley::connect(&format!("ws://{addr}/connection/websocket")).await.unwrap();
    let mut pending = Default::default();
    ws.send(Message::text(json!({ "id": 1, "connect": { "token": token } }).to_string())).await.unwrap();
    let connected = next_json(&mut ws, &mut pending).await;
    assert!(connected["connect"]["client"].is_string(), "{connected}");
    ws.send(Message::text(json!({ "id": 2, "subscribe": { "channel": "chat:lobby" } }).to_string())).await.unwrap();
    let subscribed = next_json(&mut ws, &mut pending).await;
    assert_eq!(subscribed["id"], 2, "{subscribed}");
    assert!(subscribed["subscribe"]["recoverable"].as_bool().unwrap_or(false), "{subscribed}");

    // The backend publishes through the API; the subscriber gets it.
    let published =
        api(&addr, "centrifugo-api-key", "publish", json!({ "channel": "chat:lobby", "data": { "text": "hi" } })).await;
    assert!(published["result"].is_object(), "{published}");
    let push = next_json(&mut ws, &mut pending).await;
    assert_eq!(push["push"]["channel"], "chat:lobby", "{push}");
    assert_eq!(push["push"]["pub"]["data"], json!({ "text": "hi" }), "{push}");

    // A token signed with another secret is refused.
    let forged = hs256("another-secret", &json!({ "sub": "mallory", "exp": exp }));
    let (mut ws2, _) = volley::connect(&format!("ws://{addr}/connection/websocket")).await.unwrap();
    ws2.send(Message::text(json!({ "id": 1, "connect": { "token": forged } }).to_string())).await.unwrap();
    let refused = loop {
        match tokio::time::timeout(Duration::from_secs(10), ws2.recv()).await.unwrap() {
            Some(Ok(Message::Close(Some(f)))) => break u16::from(f.code),
            Some(Ok(Message::Text(t))) => panic!("answered: {t:?}"),
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(refused, 3500);
    drop(proc);
    let _ = std::fs::remove_file(file);
}

#[test]
fn check_config_reads_centrifugo_yaml_and_lists_the_ignored_keys() {
    let yaml = r#"
client:
  token:
    hmac_secret_key: s
  presence_update_interval: 27s
channel:
  namespaces:
    - name: chat
      delta_publish: true
http_api:
  key: k
log:
  level: debug
"#;
    let file = write_config(yaml, "yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_volley"))
        .args(["check-config", "--config", file.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        stdout,
        "configuration ok: listens on 0.0.0.0:8000, 1 namespace(s)\n\
         read as a Centrifugo v6 configuration (a YAML file)\n\
         ignored, Volley does not support them (3):\n  \
         channel.namespaces[chat].delta_publish\n  \
         client.presence_update_interval\n  \
         log.level\n"
    );
    // A setting Volley cannot ignore safely stops it, naming the key.
    let refused = write_config("client:\n  disallow_anonymous_connection_tokens: true\n", "yml");
    let out = Command::new(env!("CARGO_BIN_EXE_volley"))
        .args(["check-config", "--config", refused.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("client.disallow_anonymous_connection_tokens"));
    let _ = std::fs::remove_file(file);
    let _ = std::fs::remove_file(refused);
}
