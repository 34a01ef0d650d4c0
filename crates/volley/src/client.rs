//! The client side: `connect("ws://host:port/path")`, or the opening handshake over a
//! transport the application already has.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use volley_proto::handshake::{ClientRequest, ServerResponse};
use volley_proto::{deflate, HandshakeError, Role};

use crate::config::Config;
use crate::error::Error;
use crate::websocket::{with_timeout, WebSocket};

/// Where a ws:// URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    host: String,
    port: u16,
    host_header: String,
    path: String,
}

fn parse_url(url: &str) -> Result<Target, Error> {
    let uri: http::Uri = url.parse().map_err(|e| Error::Url(format!("{url}: {e}")))?;
    let default_port = match uri.scheme_str() {
        Some("ws") => 80,
        Some("wss") => return Err(Error::Url("wss:// is not supported yet".into())),
        _ => return Err(Error::Url(format!("{url}: the scheme must be ws://"))),
    };
    let authority = uri.authority().ok_or_else(|| Error::Url(format!("{url}: no host")))?;
    let host = authority.host();
    let port = authority.port_u16().unwrap_or(default_port);
    let host_header = if port == default_port { host.to_string() } else { format!("{host}:{port}") };
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    Ok(Target { host, port, host_header, path })
}

/// Builds a client connection: URL, header fields, subprotocols, configuration.
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    url: String,
    headers: Vec<(String, String)>,
    config: Config,
}

impl ClientBuilder {
    /// A client for `url` (`ws://host[:port][/path][?query]`).
    pub fn new(url: impl Into<String>) -> Self {
        ClientBuilder { url: url.into(), headers: Vec::new(), config: Config::default() }
    }

    /// Adds a header field to the handshake request (Origin, Cookie, Authorization...).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Offers a subprotocol (in order of preference).
    pub fn protocol(mut self, protocol: &str) -> Self {
        self.config.protocols.push(protocol.to_string());
        self
    }

    /// Sets the configuration (its protocol list is kept, extended by `protocol`).
    pub fn config(mut self, config: Config) -> Self {
        let mut protocols = std::mem::take(&mut self.config.protocols);
        self.config = config;
        protocols.append(&mut self.config.protocols);
        self.config.protocols = protocols;
        self
    }

    /// Opens a TCP connection and performs the opening handshake.
    pub async fn connect(self) -> Result<(WebSocket<TcpStream>, ServerResponse), Error> {
        let target = parse_url(&self.url)?;
        let limit = self.config.handshake_timeout;
        let io = with_timeout(limit, "connect", async {
            let io = TcpStream::connect((target.host.as_str(), target.port)).await?;
            io.set_nodelay(true)?;
            Ok(io)
        })
        .await?;
        self.handshake(io).await
    }

    /// Performs the opening handshake over a transport that is already connected.
    pub async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
        self,
        mut io: S,
    ) -> Result<(WebSocket<S>, ServerResponse), Error> {
        let target = parse_url(&self.url)?;
        let config = self.config;
        let mut request = ClientRequest::new(&target.host_header, &target.path, &config.proto);
        for p in &config.protocols {
            request.add_protocol(p)?;
        }
        for (n, v) in &self.headers {
            request.add_header(n, v)?;
        }
        if let Some(dc) = &config.deflate {
            request.add_extension(deflate::client_offer(dc));
        }
        let (response, leftover) = with_timeout(config.handshake_timeout, "opening handshake", async {
            io.write_all(&request.encode()).await?;
            io.flush().await?;
            let mut buf = BytesMut::with_capacity(1024);
            loop {
                if io.read_buf(&mut buf).await? == 0 {
                    return Err(Error::Io(std::io::ErrorKind::UnexpectedEof.into()));
                }
                if let Some((response, n)) = request.parse_response(&buf, &config.proto)? {
                    let _ = buf.split_to(n);
                    return Ok((response, buf));
                }
            }
        })
        .await?;
        let protocol = response.protocol().map(str::to_string);
        let mut params = None;
        for answer in response.extensions() {
            match (&config.deflate, params) {
                (Some(dc), None) if answer.name == deflate::EXTENSION => {
                    params = Some(deflate::accept_response(answer, dc)?);
                }
                _ => return Err(HandshakeError::Extension(answer.name.clone()).into()),
            }
        }
        let ws = WebSocket::from_handshaken(io, Role::Client, config, &leftover, protocol, params);
        Ok((ws, response))
    }
}

/// Connects to a ws:// URL with the default configuration.
pub async fn connect(url: &str) -> Result<(WebSocket<TcpStream>, ServerResponse), Error> {
    ClientBuilder::new(url).connect().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = parse_url("ws://example.com/chat?x=1").unwrap();
        assert_eq!(
            t,
            Target {
                host: "example.com".into(),
                port: 80,
                host_header: "example.com".into(),
                path: "/chat?x=1".into()
            }
        );
        let t = parse_url("ws://[::1]:9001").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.host_header.as_str(), t.path.as_str()),
            ("::1", 9001, "[::1]:9001", "/")
        );
        assert!(parse_url("http://x/").is_err());
        assert!(parse_url("nonsense").is_err());
    }
}
