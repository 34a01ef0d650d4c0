//! `volley connect URL`: an interactive WebSocket client for people at a terminal (line
//! editing and history, received messages printed with direction and time, commands
//! for ping, binary and close), and a pipe mode for scripts (stdin lines become
//! messages, messages become stdout lines).

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use tokio::io::AsyncBufReadExt;
use volley::tls::rustls;
use volley::{ClientBuilder, CloseCode, CloseFrame, Config, Message};

/// Flags of `volley connect`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The server: ws://host[:port]/path or wss://...
    url: String,
    /// A request header, "Name: value" (repeatable).
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
    /// A subprotocol to offer (repeatable, in order of preference).
    #[arg(short = 'p', long = "protocol")]
    protocols: Vec<String>,
    /// The Origin header to send.
    #[arg(long)]
    origin: Option<String>,
    /// A proxy: http://[user:pass@]host:port (HTTP CONNECT) or socks5[h]://... By
    /// default https_proxy, http_proxy, all_proxy and no_proxy are read as curl does.
    #[arg(long)]
    proxy: Option<String>,
    /// Ignore proxy environment variables.
    #[arg(long)]
    no_proxy: bool,
    /// Trust this PEM certificate (a private CA) for wss://.
    #[arg(long, value_name = "FILE")]
    ca: Option<PathBuf>,
    /// Do not verify the server's certificate (local trials only).
    #[arg(short = 'k', long)]
    insecure: bool,
    /// Print the opening handshake's request and response headers.
    #[arg(long)]
    show_handshake: bool,
    /// Pipe mode even on a terminal: each stdin line is a message, each message a
    /// stdout line. The default when stdin is not a terminal.
    #[arg(long)]
    pipe: bool,
    /// Pipe mode: send lines as binary messages.
    #[arg(long)]
    binary: bool,
    /// Do not offer permessage-deflate.
    #[arg(long)]
    no_deflate: bool,
    /// For wss://, offer HTTP/2 (ALPN h2): when the server picks it, the WebSocket runs
    /// over HTTP/2 (RFC 8441), else over HTTP/1.1.
    #[arg(long)]
    http2: bool,
}

/// Runs the client until the connection ends (or stdin ends, in pipe mode).
pub fn run(args: Args) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(session(args))
}

fn builder(args: &Args) -> anyhow::Result<ClientBuilder> {
    let mut config = Config::new();
    if args.no_deflate {
        config = config.deflate(None);
    }
    let mut b = ClientBuilder::new(args.url.clone()).config(config);
    for h in &args.headers {
        let (name, value) = h.split_once(':').with_context(|| format!("header {h:?} is not \"Name: value\""))?;
        b = b.header(name.trim(), value.trim());
    }
    for p in &args.protocols {
        b = b.protocol(p);
    }
    if let Some(o) = &args.origin {
        b = b.origin(o);
    }
    if args.no_proxy {
        b = b.no_proxy();
    }
    if let Some(p) = &args.proxy {
        b = b.proxy(volley::proxy::Proxy::parse(p).with_context(|| format!("proxy {p}"))?);
    }
    b = b.http2(args.http2);
    if args.insecure {
        b = b.tls_config(insecure_config(args.http2));
    } else if let Some(ca) = &args.ca {
        for cert in volley::tls::load_certs(ca)? {
            b = b.root_certificate(cert);
        }
    }
    Ok(b)
}

/// The time of day, UTC, to the millisecond.
fn now() -> String {
    let t = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let s = t.as_secs() % 86_400;
    format!("{:02}:{:02}:{:02}.{:03}", s / 3600, s / 60 % 60, s % 60, t.subsec_millis())
}

fn describe(msg: &Message) -> String {
    match msg {
        Message::Text(t) => t.to_string(),
        Message::Binary(b) => {
            let hex: Vec<String> = b.iter().take(64).map(|x| format!("{x:02x}")).collect();
            let more = if b.len() > 64 { " …" } else { "" };
            format!("[binary {} bytes] {}{more}", b.len(), hex.join(" "))
        }
        Message::Ping(b) => format!("[ping] {}", String::from_utf8_lossy(b)),
        Message::Pong(b) => format!("[pong] {}", String::from_utf8_lossy(b)),
        Message::Close(Some(f)) => format!("[close {}] {}", f.code, f.reason),
        Message::Close(None) => "[close]".into(),
    }
}

const HELP: &str = "Type a line to send it as text. Commands:
  /ping [text]            send a ping
  /hex 01ab...            send a binary message given in hex
  /base64 AQID...         send a binary message given in base64
  /close [code [reason]]  close the connection (default 1000)
  /quit                   close and leave
  //text                  send a text that starts with /";

/// What a typed line asks for.
#[derive(Debug, PartialEq)]
enum Line {
    Send(Message),
    Close(CloseCode, String),
    Help,
    Nothing,
}

fn parse_line(line: &str) -> Result<Line, String> {
    if let Some(rest) = line.strip_prefix("//") {
        return Ok(Line::Send(Message::text(format!("/{rest}"))));
    }
    let Some(cmd) = line.strip_prefix('/') else {
        return Ok(Line::Send(Message::text(line)));
    };
    let (name, arg) = cmd.split_once(' ').map_or((cmd, ""), |(n, a)| (n, a.trim()));
    match name {
        "ping" => Ok(Line::Send(Message::Ping(arg.as_bytes().to_vec().into()))),
        "hex" => {
            let clean: String = arg.chars().filter(|c| !c.is_whitespace()).collect();
            if !clean.len().is_multiple_of(2) {
                return Err("hex needs an even number of digits".into());
            }
            let bytes = (0..clean.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&clean[i..i + 2], 16))
                .collect::<Result<Vec<u8>, _>>()
                .map_err(|_| "not hex".to_string())?;
            Ok(Line::Send(Message::binary(bytes)))
        }
        "base64" => BASE64.decode(arg).map(|b| Line::Send(Message::binary(b))).map_err(|e| format!("not base64: {e}")),
        "close" | "quit" | "exit" => {
            let (code, reason) = arg.split_once(' ').map_or((arg, ""), |(c, r)| (c, r));
            let code =
                if code.is_empty() { 1000 } else { code.parse().map_err(|_| format!("bad close code {code}"))? };
            Ok(Line::Close(CloseCode(code), reason.to_string()))
        }
        "help" | "?" => Ok(Line::Help),
        "" => Ok(Line::Nothing),
        other => Err(format!("unknown command /{other} (try /help)")),
    }
}

async fn session(args: Args) -> anyhow::Result<()> {
    let pipe = args.pipe || !std::io::stdin().is_terminal();
    let b = builder(&args)?;
    let (ws, response) = b.connect().await.with_context(|| format!("connecting to {}", args.url))?;
    if args.show_handshake {
        let mut err = std::io::stderr();
        let h2 = ws.info().http_version() == volley::http::hyper::Version::HTTP_2;
        let (method, version) = if h2 { ("CONNECT", "HTTP/2") } else { ("GET", "HTTP/1.1") };
        let _ = writeln!(err, "> {method} {} {version}", ws.info().target());
        for h in &args.headers {
            let _ = writeln!(err, "> {h}");
        }
        let _ = writeln!(err, "< {version} {}", response.status());
        for (n, v) in response.headers().iter() {
            let _ = writeln!(err, "< {n}: {}", String::from_utf8_lossy(v));
        }
    }
    if pipe {
        pipe_mode(ws, args.binary).await
    } else {
        interactive(ws).await
    }
}

async fn pipe_mode(ws: volley::WebSocket<volley::MaybeTlsStream>, binary: bool) -> anyhow::Result<()> {
    let (mut read, write) = ws.split()?;
    let sender = tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let msg = if binary { Message::binary(line.into_bytes()) } else { Message::text(line) };
            if write.send(msg).await.is_err() {
                return;
            }
        }
        let _ = write.close(CloseCode::NORMAL, "").await;
    });
    let mut out = std::io::stdout();
    let mut result = Ok(());
    while let Some(item) = read.recv().await {
        match item {
            Ok(Message::Text(t)) => writeln!(out, "{t}")?,
            Ok(Message::Binary(b)) => {
                out.write_all(&b)?;
                out.write_all(b"\n")?;
            }
            Ok(Message::Close(Some(f))) if f.code != CloseCode::NORMAL => {
                result = Err(anyhow::anyhow!("closed by the server: {} {}", f.code, f.reason));
            }
            Ok(_) => {}
            Err(e) => result = Err(e.into()),
        }
        out.flush()?;
    }
    sender.abort();
    result
}

async fn interactive(ws: volley::WebSocket<volley::MaybeTlsStream>) -> anyhow::Result<()> {
    use rustyline::ExternalPrinter as _;
    let mut editor = rustyline::DefaultEditor::new()?;
    let mut printer = editor.create_external_printer()?;
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<Option<String>>();
    eprintln!("connected to {} (type /help for commands, Ctrl-D to quit)", ws.info().target());
    std::thread::spawn(move || loop {
        match editor.readline("> ") {
            Ok(line) => {
                if !line.trim().is_empty() {
                    let _ = editor.add_history_entry(line.as_str());
                }
                if lines_tx.send(Some(line)).is_err() {
                    return;
                }
            }
            Err(_) => {
                let _ = lines_tx.send(None);
                return;
            }
        }
    });
    let (mut read, write) = ws.split()?;
    let mut say = |s: String| {
        let _ = printer.print(s);
    };
    loop {
        tokio::select! {
            line = lines.recv() => match line.flatten() {
                None => {
                    let _ = write.close(CloseCode::NORMAL, "").await;
                }
                Some(line) => match parse_line(&line) {
                    Ok(Line::Send(msg)) => {
                        let shown = describe(&msg);
                        match write.send(msg).await {
                            Ok(()) => say(format!("> {} {shown}", now())),
                            Err(e) => say(format!("! {} cannot send: {e}", now())),
                        }
                    }
                    Ok(Line::Close(code, reason)) => {
                        let frame = CloseFrame::new(code, reason.as_str());
                        if let Err(e) = write.send(Message::Close(Some(frame))).await {
                            say(format!("! {} cannot close: {e}", now()));
                        }
                    }
                    Ok(Line::Help) => say(HELP.to_string()),
                    Ok(Line::Nothing) => {}
                    Err(e) => say(format!("! {e}")),
                },
            },
            item = read.recv() => match item {
                Some(Ok(msg)) => say(format!("< {} {}", now(), describe(&msg))),
                Some(Err(e)) => say(format!("! {} {e}", now())),
                None => {
                    // The line editor prints what `say` hands it from its own thread,
                    // and the process ends right after this: give it a moment for the
                    // lines already handed over, then write the last one directly
                    // (over the prompt; the terminal may be in raw mode, hence \r\n).
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    let mut err = std::io::stderr();
                    let _ = write!(err, "\r\x1b[K* {} connection closed\r\n", now());
                    let _ = err.flush();
                    return Ok(());
                }
            },
        }
    }
}

/// A TLS configuration that accepts any certificate: `--insecure`, for local trials.
fn insecure_config(http2: bool) -> Arc<rustls::ClientConfig> {
    #[derive(Debug)]
    struct AcceptAnything(Arc<rustls::crypto::CryptoProvider>);
    impl rustls::client::danger::ServerCertVerifier for AcceptAnything {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = volley::tls::crypto_provider();
    let mut config = volley::tls::client_config(volley::tls::default_roots());
    let c = Arc::make_mut(&mut config);
    c.dangerous().set_certificate_verifier(Arc::new(AcceptAnything(provider)));
    if http2 {
        c.alpn_protocols.insert(0, volley::http::ALPN_H2.to_vec());
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_lines() {
        assert_eq!(parse_line("hello"), Ok(Line::Send(Message::text("hello"))));
        assert_eq!(parse_line("//x"), Ok(Line::Send(Message::text("/x"))));
        assert_eq!(parse_line("/hex 01 ab"), Ok(Line::Send(Message::binary(vec![1u8, 0xab]))));
        assert_eq!(parse_line("/base64 AQI="), Ok(Line::Send(Message::binary(vec![1u8, 2]))));
        assert_eq!(parse_line("/close 4000 bye now"), Ok(Line::Close(CloseCode(4000), "bye now".into())));
        assert_eq!(parse_line("/close"), Ok(Line::Close(CloseCode(1000), String::new())));
        assert!(parse_line("/hex 1").is_err());
        assert!(parse_line("/nope").is_err());
    }
}
