//! The client side: `connect("ws://host:port/path")` or `connect("wss://…")` (TLS with
//! rustls, see [`crate::tls`]), or the opening handshake over a transport the
//! application already has.

mod refusal;

use std::net::SocketAddr;
#[cfg(feature = "tls")]
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;

use bytes::BytesMut;
#[cfg(feature = "tls")]
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
#[cfg(feature = "tls")]
use tokio_rustls::TlsConnector;
use volley_proto::handshake::{ClientRequest, ServerResponse};
use volley_proto::{deflate, HandshakeError, Role};

use crate::config::Config;
use crate::error::{Error, Timeout};
use crate::stream::MaybeTlsStream;
#[cfg(feature = "tls")]
use crate::tls::{self, CertificateDer};
use crate::websocket::{with_timeout, WebSocket};

/// Where a ws:// or wss:// URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Target {
    /// The host name or IP address (an IPv6 address without brackets).
    pub(crate) host: String,
    pub(crate) port: u16,
    /// `host[:port]`, the port only if it is not the scheme's default: the `Host`
    /// header field (HTTP/1.1) or `:authority` (HTTP/2).
    pub(crate) host_header: String,
    /// The path and query.
    pub(crate) path: String,
    /// `wss://`.
    pub(crate) tls: bool,
    /// `user:password` from the URL, percent-decoded.
    userinfo: Option<String>,
}

impl Target {
    /// Whether both have the same origin (RFC 6454 §4): scheme, host and port.
    fn same_origin(&self, other: &Target) -> bool {
        self.tls == other.tls && self.port == other.port && self.host.eq_ignore_ascii_case(&other.host)
    }
}

/// Header fields that carry the target's credentials: not sent after a redirect to
/// another origin. (The proxy's own credentials are the proxy's, and stay.)
fn is_credential(name: &str) -> bool {
    ["authorization", "proxy-authorization", "cookie"].iter().any(|c| name.eq_ignore_ascii_case(c))
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| char::from(c).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Resolves a redirect's `Location` against the URL that answered it; http(s) become
/// ws(s).
fn redirect_target(from: &str, location: &str) -> Result<String, Error> {
    let bad = || Error::Url(format!("invalid redirect location {location:?}"));
    let mapped = if let Some(rest) = location.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = location.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if location.starts_with("ws://") || location.starts_with("wss://") {
        location.to_string()
    } else if location.starts_with('/') {
        let uri: http::Uri = from.parse().map_err(|_| bad())?;
        let scheme = uri.scheme_str().ok_or_else(bad)?;
        let authority = uri.authority().ok_or_else(bad)?;
        format!("{scheme}://{authority}{location}")
    } else {
        return Err(bad());
    };
    if parse_url(from)?.tls && !parse_url(&mapped)?.tls {
        return Err(Error::Url(format!("refusing a redirect from wss:// to {mapped}")));
    }
    Ok(mapped)
}

/// Orders resolved addresses for happy eyeballs (RFC 8305 §4): alternate address
/// families, starting with the family of the first answer.
fn interleave(addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let first_v6 = addrs.first().is_some_and(SocketAddr::is_ipv6);
    let (mut a, mut b): (Vec<_>, Vec<_>) = addrs.into_iter().partition(|x| x.is_ipv6() == first_v6);
    a.reverse();
    b.reverse();
    let mut out = Vec::with_capacity(a.len() + b.len());
    while !a.is_empty() || !b.is_empty() {
        out.extend(a.pop());
        out.extend(b.pop());
    }
    out
}

/// How long an attempt gets before the next address is tried in parallel (RFC 8305
/// recommends 250 ms).
const CONNECTION_ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// Connects to `host:port` with happy eyeballs: every resolved address is tried, the
/// next one started when the previous fails or has not answered within 250 ms; the
/// first to connect wins and the others are dropped.
pub async fn connect_tcp(host: &str, port: u16) -> Result<TcpStream, Error> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
    let mut pending = interleave(addrs).into_iter();
    let mut attempts = tokio::task::JoinSet::new();
    let mut last_error = None;
    loop {
        if attempts.is_empty() {
            match pending.next() {
                Some(addr) => {
                    attempts.spawn(TcpStream::connect(addr));
                }
                None => {
                    return Err(last_error.unwrap_or_else(|| {
                        Error::Io(std::io::Error::new(std::io::ErrorKind::NotFound, format!("{host}: no address")))
                    }))
                }
            }
        }
        tokio::select! {
            done = attempts.join_next() => match done {
                Some(Ok(Ok(tcp))) => return Ok(tcp),
                Some(Ok(Err(e))) => last_error = Some(Error::Io(e)),
                Some(Err(e)) => last_error = Some(Error::Io(std::io::Error::other(e))),
                None => {}
            },
            _ = tokio::time::sleep(CONNECTION_ATTEMPT_DELAY), if pending.len() > 0 => {
                if let Some(addr) = pending.next() {
                    attempts.spawn(TcpStream::connect(addr));
                }
            }
        }
    }
}

pub(crate) fn parse_url(url: &str) -> Result<Target, Error> {
    let uri: http::Uri = url.parse().map_err(|e| Error::Url(format!("{url}: {e}")))?;
    let (default_port, tls) = match uri.scheme_str() {
        Some("ws") => (80, false),
        Some("wss") => (443, true),
        _ => return Err(Error::Url(format!("{url}: the scheme must be ws:// or wss://"))),
    };
    let authority = uri.authority().ok_or_else(|| Error::Url(format!("{url}: no host")))?;
    let userinfo = authority.as_str().rsplit_once('@').map(|(u, _)| percent_decode(u));
    let host = authority.host();
    let port = authority.port_u16().unwrap_or(default_port);
    let host_header = if port == default_port { host.to_string() } else { format!("{host}:{port}") };
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    Ok(Target { host, port, host_header, path, tls, userinfo })
}

/// Builds a client connection: URL, header fields, subprotocols, configuration, TLS,
/// proxy, timeouts and redirects. One builder for both ways of opening a WebSocket:
/// [`connect`](ClientBuilder::connect) (HTTP/1.1 Upgrade, or HTTP/2 when
/// [`http2`](ClientBuilder::http2) allows it and the server picks it) and, with feature
/// `hyper`, [`connect_h2`](ClientBuilder::connect_h2) (HTTP/2 only, RFC 8441); each
/// also has a `handshake` form for a transport the application already has.
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    pub(crate) url: String,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) config: Config,
    #[cfg(feature = "tls")]
    pub(crate) tls_config: Option<Arc<ClientConfig>>,
    #[cfg(feature = "tls")]
    pub(crate) root_certificates: Vec<CertificateDer<'static>>,
    connect_timeout: Duration,
    max_redirects: usize,
    #[cfg(feature = "proxy")]
    proxy: ProxyChoice,
    #[cfg(feature = "tls")]
    http2: bool,
}

/// Which proxy a client goes through.
#[cfg(feature = "proxy")]
#[derive(Debug, Clone)]
enum ProxyChoice {
    /// From `https_proxy`, `http_proxy`, `all_proxy` and `no_proxy`, as curl reads them.
    Environment,
    None,
    Given(crate::proxy::Proxy),
}

impl ClientBuilder {
    /// A client for `url` (`ws://host[:port][/path][?query]`, or `wss://` for TLS).
    pub fn new(url: impl Into<String>) -> Self {
        ClientBuilder {
            url: url.into(),
            headers: Vec::new(),
            config: Config::default(),
            #[cfg(feature = "tls")]
            tls_config: None,
            #[cfg(feature = "tls")]
            root_certificates: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            max_redirects: 5,
            #[cfg(feature = "proxy")]
            proxy: ProxyChoice::Environment,
            #[cfg(feature = "tls")]
            http2: false,
        }
    }

    /// Sends `Authorization: Basic` with these credentials (also taken from a URL's
    /// `user:password@`). Like every `Authorization`, `Proxy-Authorization` and
    /// `Cookie` header field, they are not sent after a redirect to another origin
    /// (another scheme, host or port), nor after a later one back to the first origin.
    pub fn basic_auth(self, user: &str, password: &str) -> Self {
        let token = BASE64.encode(format!("{user}:{password}"));
        self.header("Authorization", &format!("Basic {token}"))
    }

    /// Sends `Authorization: Bearer TOKEN` (not after a redirect to another origin:
    /// see [`ClientBuilder::basic_auth`]).
    pub fn bearer_auth(self, token: &str) -> Self {
        self.header("Authorization", &format!("Bearer {token}"))
    }

    /// Sends an `Origin` header, as a browser page of that origin would.
    pub fn origin(self, origin: &str) -> Self {
        self.header("Origin", origin)
    }

    /// Sends a `Cookie` header with these name=value pairs (not after a redirect to
    /// another origin: see [`ClientBuilder::basic_auth`]).
    pub fn cookies<'a>(self, cookies: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let value: Vec<String> = cookies.into_iter().map(|(n, v)| format!("{n}={v}")).collect();
        self.header("Cookie", &value.join("; "))
    }

    /// Time allowed to open the TCP connection (all addresses, happy eyeballs). Default
    /// 10 s. The TLS and WebSocket handshakes each get the handshake timeout.
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// Redirects (301, 302, 303, 307, 308) followed during the handshake before giving
    /// up. Default 5; 0 refuses every redirect. A redirect from `wss://` to `ws://` is
    /// always refused. After a redirect to another origin (scheme, host or port),
    /// `Authorization`, `Proxy-Authorization` and `Cookie` are no longer sent.
    pub fn max_redirects(mut self, n: usize) -> Self {
        self.max_redirects = n;
        self
    }

    /// Goes through this proxy (HTTP CONNECT or SOCKS5), whatever the environment says.
    /// Feature `proxy`.
    #[cfg(feature = "proxy")]
    pub fn proxy(mut self, proxy: crate::proxy::Proxy) -> Self {
        self.proxy = ProxyChoice::Given(proxy);
        self
    }

    /// Connects directly, ignoring proxy environment variables. By default the client
    /// reads `https_proxy` (wss), `http_proxy` (ws), `all_proxy` and `no_proxy` the way
    /// curl does (feature `proxy`; without it the client always connects directly, and
    /// this changes nothing).
    #[cfg_attr(not(feature = "proxy"), allow(unused_mut))]
    pub fn no_proxy(mut self) -> Self {
        #[cfg(feature = "proxy")]
        {
            self.proxy = ProxyChoice::None;
        }
        self
    }

    /// Adds a header field to the handshake request (Origin, Cookie, Authorization...).
    /// Over HTTP/2 names are sent in lower case, and connection-specific fields are
    /// dropped by hyper.
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

    /// The TLS configuration for `wss://`. [`connect`](ClientBuilder::connect) uses it
    /// as it is (ALPN included: set it to `http/1.1`, as [`tls::client_config`] does,
    /// or leave it empty); `connect_h2` replaces its ALPN list by `h2`, the only
    /// protocol it speaks. Default: [`tls::default_client_config`], which trusts
    /// Mozilla's roots (`webpki-roots`). Cannot be combined with
    /// [`ClientBuilder::root_certificate`]. Feature `tls`.
    #[cfg(feature = "tls")]
    pub fn tls_config(mut self, config: Arc<ClientConfig>) -> Self {
        self.tls_config = Some(config);
        self
    }

    /// Trusts `cert` as a root for `wss://`, in addition to the default roots (a private
    /// CA, or a test's own). Cannot be combined with [`ClientBuilder::tls_config`]: add
    /// the root to that configuration instead. Feature `tls`.
    #[cfg(feature = "tls")]
    pub fn root_certificate(mut self, cert: CertificateDer<'static>) -> Self {
        self.root_certificates.push(cert);
        self
    }

    /// Allows WebSockets over HTTP/2 (RFC 8441) for `wss://` URLs (feature `hyper`; off
    /// by default): the TLS handshake offers ALPN `h2` before `http/1.1`, and when the
    /// server selects `h2` the WebSocket runs as an extended CONNECT stream over that
    /// connection, as [`connect_h2`](ClientBuilder::connect_h2) does; otherwise
    /// it runs over HTTP/1.1 as usual. A server that selects `h2` but does not announce
    /// `SETTINGS_ENABLE_CONNECT_PROTOCOL` fails the connection with [`Error::Io`] of
    /// kind `Unsupported` (it serves HTTP/2 but no WebSockets over it). `ws://` URLs
    /// stay on HTTP/1.1. With [`ClientBuilder::tls_config`], its ALPN list is used as
    /// it is. The answer reports status 200 and the WebSocket's
    /// [`info`](WebSocket::info) says `HTTP/2.0`.
    #[cfg(feature = "hyper")]
    pub fn http2(mut self, allow: bool) -> Self {
        self.http2 = allow;
        self
    }

    /// The TLS configuration for a wss:// connection.
    #[cfg(feature = "tls")]
    fn client_tls_config(&self) -> Result<Arc<ClientConfig>, Error> {
        let mut config = self.base_tls_config()?;
        if self.http2 && self.tls_config.is_none() {
            Arc::make_mut(&mut config).alpn_protocols = vec![b"h2".to_vec(), tls::ALPN_HTTP11.to_vec()];
        }
        Ok(config)
    }

    /// The TLS configuration for a wss:// connection, before HTTP/2 is offered.
    #[cfg(feature = "tls")]
    fn base_tls_config(&self) -> Result<Arc<ClientConfig>, Error> {
        match (&self.tls_config, self.root_certificates.is_empty()) {
            (Some(config), true) => Ok(config.clone()),
            (Some(_), false) => Err(tls_config_conflict()),
            (None, true) => Ok(tls::default_client_config()),
            (None, false) => Ok(tls::client_config(tls::roots_with(&self.root_certificates)?)),
        }
    }

    /// The builder with the URL's `user:password@` (if any) as Basic credentials, and
    /// the URL's target.
    pub(crate) fn with_url_credentials(self) -> Result<(Self, Target), Error> {
        let target = parse_url(&self.url)?;
        let builder = match &target.userinfo {
            Some(userinfo) => {
                let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
                self.basic_auth(user, password)
            }
            None => self,
        };
        Ok((builder, target))
    }

    /// Opens the TCP connection to `target` (through the proxy, if any) within the
    /// connect timeout, with `TCP_NODELAY` on.
    pub(crate) async fn open_tcp(&self, target: &Target) -> Result<TcpStream, Error> {
        #[cfg(feature = "proxy")]
        let proxy = match &self.proxy {
            ProxyChoice::Environment => {
                crate::proxy::Proxy::from_env(if target.tls { "wss" } else { "ws" }, &target.host_header)
            }
            ProxyChoice::None => None,
            ProxyChoice::Given(p) => Some(p.clone()),
        };
        with_timeout!(self.connect_timeout, Timeout::Connect, async {
            #[cfg(feature = "proxy")]
            let io = match &proxy {
                Some(p) => crate::proxy::connect_via(p, &target.host, target.port).await?,
                None => connect_tcp(&target.host, target.port).await?,
            };
            #[cfg(not(feature = "proxy"))]
            let io = connect_tcp(&target.host, target.port).await?;
            io.set_nodelay(true)?;
            Ok(io)
        })
    }

    /// Opens a TCP connection (through the proxy, if any), runs TLS on it for `wss://`
    /// (certificate checked against the URL's host, which is also sent as SNI if it is
    /// a DNS name; ALPN `http/1.1`), and performs the opening handshake, following
    /// redirects. The TCP connection gets the connect timeout, the TLS and WebSocket
    /// handshakes each the handshake timeout. Errors a program may want to tell apart:
    /// - [`Error::Refused`]: the server answered with another status than 101 (and
    ///   not a redirect to follow), with its header fields and body;
    /// - [`Error::Handshake`] with [`HandshakeError::Redirect`]: one redirect too many;
    /// - [`Error::Timeout`]: which step;
    /// - [`Error::Tls`]: the [`rustls::Error`] (an unknown issuer, a wrong name, …);
    /// - [`Error::Proxy`]: the proxy refused the tunnel;
    /// - [`Error::Config`]: settings that cannot work together;
    /// - [`Error::Io`]: the network.
    pub async fn connect(self) -> Result<(WebSocket<MaybeTlsStream>, ServerResponse), Error> {
        let (mut builder, first) = self.with_url_credentials()?;
        let mut hops = 0;
        loop {
            match builder.clone().connect_once().await {
                Err(Error::Handshake(HandshakeError::Redirect(status, location))) => {
                    hops += 1;
                    if hops > builder.max_redirects {
                        return Err(HandshakeError::Redirect(status, location).into());
                    }
                    let next = redirect_target(&builder.url, &location)?;
                    let to = parse_url(&next)?;
                    tracing::debug!(status, %next, "following redirect");
                    if !to.same_origin(&first) {
                        // Credentials and cookies are for the origin they were given for
                        // (as in browsers, and curl since CVE-2022-27776): not for
                        // another scheme, host or port. Once dropped they stay dropped,
                        // even if a later redirect comes back to that origin.
                        builder.headers.retain(|(n, _)| !is_credential(n));
                    }
                    builder.url = next;
                }
                other => return other,
            }
        }
    }

    /// One connection attempt to `self.url`, without following redirects.
    async fn connect_once(self) -> Result<(WebSocket<MaybeTlsStream>, ServerResponse), Error> {
        let target = parse_url(&self.url)?;
        #[cfg(not(feature = "tls"))]
        if target.tls {
            return Err(no_tls());
        }
        #[cfg(feature = "tls")]
        let tls = if target.tls { Some((self.client_tls_config()?, tls::server_name(&target.host)?)) } else { None };
        let tcp = self.open_tcp(&target).await?;
        let (remote, local) = (tcp.peer_addr().ok(), tcp.local_addr().ok());
        #[cfg(not(feature = "tls"))]
        let io = MaybeTlsStream::Plain(tcp);
        #[cfg(feature = "tls")]
        let io = match tls {
            None => MaybeTlsStream::Plain(tcp),
            Some((config, name)) => {
                let limit = self.config.handshake_timeout;
                let connector = TlsConnector::from(config);
                let stream = with_timeout!(limit, Timeout::TlsHandshake, async {
                    connector.connect(name, tcp).await.map_err(tls::handshake_error)
                })?;
                #[cfg(feature = "hyper")]
                if stream.get_ref().1.alpn_protocol() == Some(crate::http::ALPN_H2) {
                    return self.connect_h2_over(stream, (remote, local)).await;
                }
                MaybeTlsStream::Tls(Box::new(stream))
            }
        };
        let (ws, response) = self.handshake(io).await?;
        Ok((ws.with_addrs(remote, local), response))
    }

    /// The WebSocket over HTTP/2, on a TLS connection whose server selected `h2`.
    #[cfg(feature = "hyper")]
    async fn connect_h2_over(
        self,
        stream: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
        addrs: (Option<std::net::SocketAddr>, Option<std::net::SocketAddr>),
    ) -> Result<(WebSocket<MaybeTlsStream>, ServerResponse), Error> {
        let target = parse_url(&self.url)?;
        let (ws, response) =
            crate::http::client::run(self, stream, target, addrs, |io| MaybeTlsStream::H2(Box::new(io))).await?;
        let headers = volley_proto::handshake::Headers::from_pairs(
            response.headers().iter().map(|(n, v)| (n.as_str(), v.as_bytes())),
        );
        let response = ServerResponse::new(
            response.status().as_u16(),
            headers,
            ws.protocol().map(str::to_string),
            ws.info().extensions().to_vec(),
        );
        Ok((ws, response))
    }

    /// Performs the opening handshake over a transport that is already connected, within
    /// the handshake timeout. A refusal (a status other than 101) is [`Error::Refused`];
    /// a redirect is [`Error::Handshake`] with [`HandshakeError::Redirect`], not
    /// followed.
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
        // A refusal's body is read until this deadline, at the latest: before the
        // timeout below, so that the refusal, not the timeout, is the error.
        let deadline = tokio::time::Instant::now() + config.handshake_timeout;
        let (response, leftover) = with_timeout!(config.handshake_timeout, Timeout::Handshake, async {
            io.write_all(&request.encode()).await?;
            io.flush().await?;
            let mut buf = BytesMut::with_capacity(1024);
            loop {
                if io.read_buf(&mut buf).await? == 0 {
                    return Err(Error::Io(std::io::ErrorKind::UnexpectedEof.into()));
                }
                match request.parse_response(&buf, &config.proto) {
                    Ok(Some((response, n))) => {
                        let _ = buf.split_to(n);
                        return Ok((response, buf));
                    }
                    Ok(None) => {}
                    Err(HandshakeError::Status(status)) => {
                        let max_headers = config.proto.max_headers;
                        return Err(refusal::read(&mut io, buf, status, max_headers, deadline).await);
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        })?;
        let protocol = response.protocol().map(str::to_string);
        let params = accept_extensions(response.extensions(), &config)?;
        let ws = WebSocket::from_handshaken(io, Role::Client, config, &leftover, protocol, params).with_handshake_info(
            &target.path,
            response.headers().clone(),
            response.extensions().to_vec(),
            http::Version::HTTP_11,
        );
        Ok((ws, response))
    }
}

/// The error for a `wss://` URL without the `tls` feature.
#[cfg(not(feature = "tls"))]
fn no_tls() -> Error {
    Error::Config("wss:// needs the `tls` feature of volley".into())
}

/// The error for a builder given both `tls_config` and `root_certificate`.
#[cfg(feature = "tls")]
pub(crate) fn tls_config_conflict() -> Error {
    Error::Config("root_certificate cannot be combined with tls_config: add the root to the ClientConfig".into())
}

/// Checks the extensions a server's answer agreed to (HTTP/1.1 or HTTP/2): only
/// permessage-deflate, once, and only if offered; returns its parameters.
pub(crate) fn accept_extensions(
    answers: &[volley_proto::ExtensionOffer],
    config: &Config,
) -> Result<Option<volley_proto::DeflateParams>, Error> {
    let mut params = None;
    for answer in answers {
        match (&config.deflate, params) {
            (Some(dc), None) if answer.name == deflate::EXTENSION => {
                params = Some(deflate::accept_response(answer, dc)?);
            }
            _ => return Err(HandshakeError::Extension(answer.name.clone()).into()),
        }
    }
    Ok(params)
}

/// Connects to a ws:// or wss:// URL with the default configuration.
pub async fn connect(url: &str) -> Result<(WebSocket<MaybeTlsStream>, ServerResponse), Error> {
    ClientBuilder::new(url).connect().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_resolve_and_map_schemes() {
        assert_eq!(redirect_target("ws://a:1/x", "/y?z").unwrap(), "ws://a:1/y?z");
        assert_eq!(redirect_target("wss://a/x", "https://b/c").unwrap(), "wss://b/c");
        assert_eq!(redirect_target("ws://a/x", "http://b:8/c").unwrap(), "ws://b:8/c");
        assert_eq!(redirect_target("ws://a/x", "wss://b/").unwrap(), "wss://b/");
        assert!(redirect_target("ws://a/x", "relative").is_err());
        assert!(redirect_target("ws://a/x", "ftp://b/").is_err());
        // Never from TLS to plain text.
        assert!(matches!(redirect_target("wss://a/x", "http://a/y"), Err(Error::Url(_))));
        assert!(matches!(redirect_target("wss://a/x", "ws://a/y"), Err(Error::Url(_))));
        assert_eq!(redirect_target("wss://a/x", "/y").unwrap(), "wss://a/y");
    }

    #[test]
    fn origins_are_scheme_host_and_port() {
        let same = |a: &str, b: &str| parse_url(a).unwrap().same_origin(&parse_url(b).unwrap());
        assert!(same("ws://a/x", "ws://A:80/y?z"), "default port, host case, path");
        assert!(same("ws://u:p@a/", "ws://a/"), "userinfo is not part of the origin");
        assert!(!same("ws://a/", "ws://a:81/"), "port");
        assert!(!same("ws://a:443/", "wss://a/"), "scheme");
        assert!(!same("ws://a/", "ws://b/"), "host");
        assert!(is_credential("COOKIE") && is_credential("Proxy-Authorization") && !is_credential("Origin"));
    }

    #[test]
    fn userinfo_and_happy_eyeballs_order() {
        let t = parse_url("ws://us%20er:p%40ss@h:1/").unwrap();
        assert_eq!(t.userinfo.as_deref(), Some("us er:p@ss"));
        assert_eq!(t.host, "h");
        assert_eq!(percent_decode("%zz%4"), "%zz%4");
        let v6: SocketAddr = "[::1]:1".parse().unwrap();
        let v4: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let v4b: SocketAddr = "127.0.0.2:1".parse().unwrap();
        assert_eq!(interleave(vec![v6, v4, v4b]), vec![v6, v4, v4b]);
        assert_eq!(interleave(vec![v4, v4b, v6]), vec![v4, v6, v4b]);
    }

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
                userinfo: None,
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

    /// Without TLS, a `wss://` URL is refused with an error that says why, before any
    /// connection is made (port 1 on loopback has no server: a connection attempt
    /// would fail with `Error::Io` instead).
    #[cfg(not(feature = "tls"))]
    #[tokio::test]
    async fn wss_without_tls_is_a_configuration_error() {
        let e = ClientBuilder::new("wss://127.0.0.1:1/").no_proxy().connect().await.unwrap_err();
        assert!(matches!(&e, Error::Config(m) if m.contains("`tls` feature")), "{e:?}");
    }
}
