//! The client side: `connect("ws://host:port/path")` or `connect("wss://…")` (TLS with
//! rustls, see [`crate::tls`]), or the opening handshake over a transport the
//! application already has.

use std::sync::Arc;

use bytes::BytesMut;
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use volley_proto::handshake::{ClientRequest, ServerResponse};
use volley_proto::{deflate, HandshakeError, Role};

use crate::config::Config;
use crate::error::Error;
use crate::tls::{self, CertificateDer, MaybeTlsStream};
use crate::websocket::{with_timeout, WebSocket};

/// Where a ws:// or wss:// URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    host: String,
    port: u16,
    host_header: String,
    path: String,
    tls: bool,
}

fn parse_url(url: &str) -> Result<Target, Error> {
    let uri: http::Uri = url.parse().map_err(|e| Error::Url(format!("{url}: {e}")))?;
    let (default_port, tls) = match uri.scheme_str() {
        Some("ws") => (80, false),
        Some("wss") => (443, true),
        _ => return Err(Error::Url(format!("{url}: the scheme must be ws:// or wss://"))),
    };
    let authority = uri.authority().ok_or_else(|| Error::Url(format!("{url}: no host")))?;
    let host = authority.host();
    let port = authority.port_u16().unwrap_or(default_port);
    let host_header = if port == default_port { host.to_string() } else { format!("{host}:{port}") };
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    Ok(Target { host, port, host_header, path, tls })
}

/// Builds a client connection: URL, header fields, subprotocols, configuration, and
/// for `wss://` the TLS configuration.
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    url: String,
    headers: Vec<(String, String)>,
    config: Config,
    tls_config: Option<Arc<ClientConfig>>,
    root_certificates: Vec<CertificateDer<'static>>,
}

impl ClientBuilder {
    /// A client for `url` (`ws://host[:port][/path][?query]`, or `wss://` for TLS).
    pub fn new(url: impl Into<String>) -> Self {
        ClientBuilder {
            url: url.into(),
            headers: Vec::new(),
            config: Config::default(),
            tls_config: None,
            root_certificates: Vec::new(),
        }
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

    /// The TLS configuration for `wss://`, used as it is (ALPN included: set it to
    /// `http/1.1`, as [`tls::client_config`] does, or leave it empty). Default:
    /// [`tls::default_client_config`], which trusts Mozilla's roots (`webpki-roots`).
    /// Cannot be combined with [`ClientBuilder::root_certificate`].
    pub fn tls_config(mut self, config: Arc<ClientConfig>) -> Self {
        self.tls_config = Some(config);
        self
    }

    /// Trusts `cert` as a root for `wss://`, in addition to the default roots (a private
    /// CA, or a test's own). Cannot be combined with [`ClientBuilder::tls_config`]: add
    /// the root to that configuration instead.
    pub fn root_certificate(mut self, cert: CertificateDer<'static>) -> Self {
        self.root_certificates.push(cert);
        self
    }

    /// The TLS configuration for a wss:// connection.
    fn client_tls_config(&self) -> Result<Arc<ClientConfig>, Error> {
        match (&self.tls_config, self.root_certificates.is_empty()) {
            (Some(config), true) => Ok(config.clone()),
            (Some(_), false) => Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "root_certificate cannot be combined with tls_config: add the root to the ClientConfig",
            ))),
            (None, true) => Ok(tls::default_client_config()),
            (None, false) => {
                let mut roots = tls::default_roots();
                for cert in &self.root_certificates {
                    roots.add(cert.clone()).map_err(tls::tls_error)?;
                }
                Ok(tls::client_config(roots))
            }
        }
    }

    /// Opens a TCP connection, runs TLS on it for `wss://` (certificate checked against
    /// the URL's host, which is also sent as SNI if it is a DNS name; ALPN `http/1.1`),
    /// and performs the opening handshake. TCP connect, TLS handshake and WebSocket
    /// handshake each get the handshake timeout. TLS failures are [`Error::Io`] errors
    /// wrapping the [`rustls::Error`].
    pub async fn connect(self) -> Result<(WebSocket<MaybeTlsStream>, ServerResponse), Error> {
        let target = parse_url(&self.url)?;
        let tls = if target.tls { Some((self.client_tls_config()?, tls::server_name(&target.host)?)) } else { None };
        let limit = self.config.handshake_timeout;
        let tcp = with_timeout(limit, "connect", async {
            let io = TcpStream::connect((target.host.as_str(), target.port)).await?;
            io.set_nodelay(true)?;
            Ok(io)
        })
        .await?;
        let (remote, local) = (tcp.peer_addr().ok(), tcp.local_addr().ok());
        let io = match tls {
            None => MaybeTlsStream::Plain(tcp),
            Some((config, name)) => {
                let connector = TlsConnector::from(config);
                let stream =
                    with_timeout(limit, "TLS handshake", async { Ok(connector.connect(name, tcp).await?) }).await?;
                MaybeTlsStream::Tls(Box::new(stream))
            }
        };
        let (ws, response) = self.handshake(io).await?;
        Ok((ws.with_addrs(remote, local), response))
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
        let ws = WebSocket::from_handshaken(io, Role::Client, config, &leftover, protocol, params).with_handshake_info(
            &target.path,
            response.headers().clone(),
            response.extensions().to_vec(),
            http::Version::HTTP_11,
        );
        Ok((ws, response))
    }
}

/// Connects to a ws:// or wss:// URL with the default configuration.
pub async fn connect(url: &str) -> Result<(WebSocket<MaybeTlsStream>, ServerResponse), Error> {
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
                path: "/chat?x=1".into(),
                tls: false,
            }
        );
        let t = parse_url("ws://[::1]:9001").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.host_header.as_str(), t.path.as_str()),
            ("::1", 9001, "[::1]:9001", "/")
        );
        let t = parse_url("wss://example.com/chat").unwrap();
        assert_eq!((t.port, t.host_header.as_str(), t.tls), (443, "example.com", true));
        let t = parse_url("wss://example.com:8443").unwrap();
        assert_eq!((t.port, t.host_header.as_str(), t.path.as_str()), (8443, "example.com:8443", "/"));
        let t = parse_url("wss://[::1]:9443/x").unwrap();
        assert_eq!((t.host.as_str(), t.host_header.as_str(), t.tls), ("::1", "[::1]:9443", true));
        assert!(parse_url("http://x/").is_err());
        assert!(parse_url("https://x/").is_err());
        assert!(parse_url("nonsense").is_err());
    }
}
