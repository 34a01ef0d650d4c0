//! Client connections through a proxy: HTTP `CONNECT` tunnels and SOCKS5 (RFC 1928,
//! with RFC 1929 username/password authentication), and the choice of a proxy from the
//! environment the way curl makes it.
//!
//! A [`Proxy`] comes from a URL ([`Proxy::parse`]) or from the environment
//! ([`Proxy::from_env`]); [`connect_via`] opens a TCP connection to it and asks it for a
//! tunnel to the target. What comes back is a plain [`TcpStream`] that reaches the
//! target: run TLS on it for `wss://`, then the WebSocket handshake
//! ([`ClientBuilder::handshake`](crate::ClientBuilder::handshake)).
//!
//! ```no_run
//! # async fn run() -> Result<(), volley::Error> {
//! use std::time::Duration;
//! use volley::proxy::{connect_via, Proxy};
//!
//! let proxy = Proxy::parse("socks5h://user:secret@127.0.0.1:1080")?;
//! let tcp = tokio::time::timeout(Duration::from_secs(10), connect_via(&proxy, "example.com", 80))
//!     .await
//!     .map_err(|_| volley::Error::Timeout(volley::Timeout::Connect))??;
//! let (ws, _response) = volley::ClientBuilder::new("ws://example.com/chat").handshake(tcp).await?;
//! # drop(ws); Ok(()) }
//! ```
//!
//! # Proxy URLs
//!
//! `scheme://[user[:password]@]host[:port][/]`, as curl takes them:
//!
//! | scheme              | proxy                                                             |
//! |---------------------|-------------------------------------------------------------------|
//! | `http`              | HTTP `CONNECT` (also for a URL without a scheme)                  |
//! | `socks5`            | SOCKS5, given an address: the target's name is resolved locally   |
//! | `socks5h`           | SOCKS5, given the target's name: the proxy resolves it            |
//! | `https`             | refused: TLS to the proxy itself is not supported                 |
//! | `socks4`, `socks4a` | refused: not supported                                            |
//!
//! The port defaults to 1080 for every scheme, as in curl. The user name and password
//! are percent-decoded; they become `Proxy-Authorization: Basic …` for HTTP and the
//! RFC 1929 exchange for SOCKS5. A path (`/`) is ignored.
//!
//! # Errors
//!
//! When the proxy answered (it refused the tunnel, the credentials, or broke its
//! protocol), the error is [`Error::Proxy`] with a [`ProxyError`] that has the details
//! (HTTP status, SOCKS5 reply code); [`ProxyError::kind`] sorts it (`PermissionDenied`
//! for authentication, `ConnectionRefused` for a refused tunnel, `InvalidData` for a
//! proxy that does not speak the protocol, …). A proxy that cannot be reached or that
//! closes the connection is an [`Error::Io`], a URL that does not parse an
//! [`Error::Url`], and arguments that cannot work (a target that is not a host name,
//! SOCKS5 credentials over 255 bytes) an [`Error::Config`]:
//!
//! ```
//! # use volley::proxy::ProxyError;
//! fn proxy_status(e: &volley::Error) -> Option<u16> {
//!     match e {
//!         volley::Error::Proxy(p) => match **p {
//!             ProxyError::HttpStatus { status, .. } => Some(status),
//!             _ => None,
//!         },
//!         _ => None,
//!     }
//! }
//! ```

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::error::Error;

/// The largest HTTP response head accepted from a proxy, in bytes.
pub const MAX_RESPONSE_HEAD: usize = 8 * 1024;

/// The most header fields accepted in a proxy's HTTP response head.
const MAX_RESPONSE_HEADERS: usize = 64;

/// The port of a proxy URL without one (curl's default, for every scheme).
pub const DEFAULT_PORT: u16 = 1080;

/// How a [`Proxy`] is spoken to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ProxyKind {
    /// An HTTP proxy: `CONNECT host:port HTTP/1.1` (`http://`).
    Http,
    /// A SOCKS5 proxy given the target's address, resolved locally (`socks5://`).
    Socks5,
    /// A SOCKS5 proxy given the target's name, resolved by the proxy (`socks5h://`).
    Socks5h,
}

impl ProxyKind {
    /// The URL scheme: `http`, `socks5` or `socks5h`.
    pub fn scheme(self) -> &'static str {
        match self {
            ProxyKind::Http => "http",
            ProxyKind::Socks5 => "socks5",
            ProxyKind::Socks5h => "socks5h",
        }
    }
}

/// A proxy to reach WebSocket servers through: its kind, address and optional
/// credentials.
///
/// `Debug` and `Display` show the proxy as a URL with the password replaced by `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Proxy {
    kind: ProxyKind,
    /// Without brackets, for an IPv6 address.
    host: String,
    port: u16,
    credentials: Option<(String, String)>,
}

impl Proxy {
    /// Parses a proxy URL (see the [module documentation](self#proxy-urls)):
    /// `http://user:pass@host:3128`, `socks5://host`, `socks5h://[::1]:1080`, or
    /// `host:port` for an HTTP proxy. `https://`, `socks4://` and other schemes are
    /// refused with [`Error::Url`].
    pub fn parse(url: &str) -> Result<Proxy, Error> {
        parse_proxy_url(url, ProxyKind::Http)
    }

    /// An HTTP `CONNECT` proxy: `http://[user:pass@]host[:port]`, or the same without
    /// the scheme. Any other scheme is an error.
    pub fn http(url: &str) -> Result<Proxy, Error> {
        let proxy = parse_proxy_url(url, ProxyKind::Http)?;
        match proxy.kind {
            ProxyKind::Http => Ok(proxy),
            _ => Err(Error::Url(format!("{}: not an http:// proxy URL", redact(url)))),
        }
    }

    /// A SOCKS5 proxy: `socks5://` (the target's name is resolved locally) or
    /// `socks5h://` (the proxy resolves it), with optional `user:pass@`; without a
    /// scheme, `socks5://`. Any other scheme is an error.
    pub fn socks5(url: &str) -> Result<Proxy, Error> {
        let proxy = parse_proxy_url(url, ProxyKind::Socks5)?;
        match proxy.kind {
            ProxyKind::Socks5 | ProxyKind::Socks5h => Ok(proxy),
            ProxyKind::Http => Err(Error::Url(format!("{}: not a socks5:// or socks5h:// proxy URL", redact(url)))),
        }
    }

    /// Sets the credentials (replacing any from the URL): Basic authentication for an
    /// HTTP proxy, RFC 1929 username/password for SOCKS5 (each at most 255 bytes there).
    pub fn with_credentials(mut self, username: impl Into<String>, password: impl Into<String>) -> Self {
        self.credentials = Some((username.into(), password.into()));
        self
    }

    /// How the proxy is spoken to.
    pub fn kind(&self) -> ProxyKind {
        self.kind
    }

    /// The proxy's host name or IP address (an IPv6 address without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The user name, if the proxy has credentials.
    pub fn username(&self) -> Option<&str> {
        self.credentials.as_ref().map(|(user, _)| user.as_str())
    }

    /// The proxy for a connection to `target_host` with scheme `target_scheme` (`ws` or
    /// `wss`), from the process environment; see [`Proxy::from_env_with`]. A variable
    /// that holds an unusable proxy URL is logged (`tracing` warning) and ignored, which
    /// means a direct connection: use [`Proxy::try_from_env_with`] to see the error.
    pub fn from_env(target_scheme: &str, target_host: &str) -> Option<Proxy> {
        Proxy::from_env_with(|name| std::env::var(name).ok(), target_scheme, target_host)
    }

    /// The proxy for a connection to `target_host` with scheme `target_scheme`, from the
    /// variables that `get` returns (`get` is `std::env::var` for [`Proxy::from_env`];
    /// tests pass a table). The rules are curl's:
    ///
    /// 1. If `no_proxy` (or, when `no_proxy` is unset, `NO_PROXY`) matches the target
    ///    ([`no_proxy_matches`]), no proxy.
    /// 2. Otherwise the first variable that is set, in this order:
    ///    - `wss` (and `https`): `wss_proxy`, `WSS_PROXY`, `https_proxy`, `HTTPS_PROXY`;
    ///    - `ws` (and `http`): `ws_proxy`, `WS_PROXY`, `http_proxy`;
    ///    - then, for every scheme: `all_proxy`, `ALL_PROXY`.
    ///
    ///    The upper-case `HTTP_PROXY` is never read, as in curl: in CGI programs the
    ///    client controls it (the request's `Proxy:` header becomes `HTTP_PROXY`), so
    ///    honouring it would let a remote client redirect the program's connections
    ///    ("httpoxy").
    /// 3. A variable set to the empty string means no proxy (it does not fall through to
    ///    the next one), as in curl.
    ///
    /// `target_host` is the target's host as in a URL, optionally with its port
    /// (`example.com`, `example.com:8443`, `[::1]:9001`, `::1`); without a port, the
    /// scheme's default (80 for `ws`, 443 for `wss`) is matched against `no_proxy`
    /// entries that name a port. Invalid proxy URLs: see [`Proxy::from_env`].
    pub fn from_env_with<F>(get: F, target_scheme: &str, target_host: &str) -> Option<Proxy>
    where
        F: FnMut(&str) -> Option<String>,
    {
        Proxy::try_from_env_with(get, target_scheme, target_host).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "ignoring the proxy environment variable: connecting directly");
            None
        })
    }

    /// [`Proxy::from_env_with`], but a variable that holds an unusable proxy URL (an
    /// `https://` proxy, a bad port, …) is an error rather than ignored.
    pub fn try_from_env_with<F>(mut get: F, target_scheme: &str, target_host: &str) -> Result<Option<Proxy>, Error>
    where
        F: FnMut(&str) -> Option<String>,
    {
        let scheme = target_scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "ws" | "http" => Some(80),
            "wss" | "https" => Some(443),
            _ => None,
        };
        let no_proxy = get("no_proxy").or_else(|| get("NO_PROXY"));
        if let Some(no_proxy) = no_proxy {
            if let Some((host, port)) = split_host_port(target_host) {
                if no_proxy_match(&no_proxy, &host, port.or(default_port)) {
                    return Ok(None);
                }
            }
        }
        let names: &[&str] = match scheme.as_str() {
            "wss" | "https" => &["wss_proxy", "WSS_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"],
            "ws" | "http" => &["ws_proxy", "WS_PROXY", "http_proxy", "all_proxy", "ALL_PROXY"],
            _ => &["all_proxy", "ALL_PROXY"],
        };
        for name in names {
            if let Some(value) = get(name) {
                if value.trim().is_empty() {
                    return Ok(None);
                }
                return match Proxy::parse(&value) {
                    Ok(proxy) => Ok(Some(proxy)),
                    Err(Error::Url(e)) => Err(Error::Url(format!("{name}: {e}"))),
                    Err(e) => Err(e),
                };
            }
        }
        Ok(None)
    }
}

impl FromStr for Proxy {
    type Err = Error;

    /// [`Proxy::parse`].
    fn from_str(url: &str) -> Result<Proxy, Error> {
        Proxy::parse(url)
    }
}

impl fmt::Display for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.kind.scheme())?;
        if let Some((user, _)) = &self.credentials {
            write!(f, "{user}:***@")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Proxy({self})")
    }
}

/// What a proxy answered, in [`Error::Proxy`] from [`connect_via`] (and from a client
/// connection through a proxy).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// The HTTP proxy answered `CONNECT` with a status other than 2xx. Its
    /// [`kind`](ProxyError::kind) is `PermissionDenied` for 407 and 401
    /// (authentication: some proxies answer wrong credentials with 401) and 403,
    /// `ConnectionRefused` otherwise.
    #[error("the HTTP proxy refused the tunnel to {target}: {status} {reason}{}", http_hint(*.status, *.sent_credentials))]
    HttpStatus {
        /// The status code.
        status: u16,
        /// The reason phrase.
        reason: String,
        /// The `host:port` asked for.
        target: String,
        /// Whether a `Proxy-Authorization` header was sent.
        sent_credentials: bool,
    },
    /// The SOCKS5 proxy accepted none of the authentication methods offered (no
    /// authentication, and username/password if the proxy has credentials).
    #[error("the SOCKS5 proxy accepts none of the offered authentication methods{}", if *.offered_credentials { "" } else { " (it probably wants a username and password, and none were given)" })]
    SocksNoAcceptableMethod {
        /// Whether username/password authentication was offered.
        offered_credentials: bool,
    },
    /// The SOCKS5 proxy rejected the username and password (RFC 1929 status).
    #[error("the SOCKS5 proxy rejected the username and password (status {status})")]
    SocksAuthFailed {
        /// The status byte of the proxy's answer (non-zero).
        status: u8,
    },
    /// The SOCKS5 proxy refused the connection to the target with this reply code
    /// (RFC 1928 section 6). Its [`kind`](ProxyError::kind) follows the code.
    #[error("the SOCKS5 proxy could not connect to {target}: {} (reply {code})", socks_reply_message(*.code))]
    SocksReply {
        /// The reply code (non-zero).
        code: u8,
        /// The `host:port` asked for.
        target: String,
    },
    /// The proxy's answer breaks its protocol (not HTTP, not SOCKS5, too large, …).
    #[error("{0}")]
    Malformed(String),
}

impl ProxyError {
    /// The kind of failure, as an I/O error would say it: `PermissionDenied` for
    /// authentication and forbidden targets, `ConnectionRefused` for a refused tunnel
    /// (or the SOCKS5 reply's meaning: `HostUnreachable`, `NetworkUnreachable`, …),
    /// `InvalidData` for an answer that breaks the protocol.
    pub fn kind(&self) -> io::ErrorKind {
        match self {
            ProxyError::HttpStatus { status: 401 | 403 | 407, .. } => io::ErrorKind::PermissionDenied,
            ProxyError::HttpStatus { .. } => io::ErrorKind::ConnectionRefused,
            ProxyError::SocksNoAcceptableMethod { .. } | ProxyError::SocksAuthFailed { .. } => {
                io::ErrorKind::PermissionDenied
            }
            ProxyError::SocksReply { code, .. } => socks_reply_kind(*code),
            ProxyError::Malformed(_) => io::ErrorKind::InvalidData,
        }
    }
}

fn http_hint(status: u16, sent_credentials: bool) -> &'static str {
    match (status, sent_credentials) {
        (401 | 407, false) => " (the proxy wants credentials: give user:password in the proxy URL)",
        // Some proxies (tinyproxy) answer wrong credentials with 401 rather than 407.
        (401 | 407, true) => " (the proxy rejected the credentials)",
        _ => "",
    }
}

fn socks_reply_message(code: u8) -> &'static str {
    match code {
        1 => "general SOCKS server failure",
        2 => "connection not allowed by ruleset",
        3 => "network unreachable",
        4 => "host unreachable",
        5 => "connection refused",
        6 => "TTL expired",
        7 => "command not supported",
        8 => "address type not supported",
        _ => "unknown reply code",
    }
}

fn socks_reply_kind(code: u8) -> io::ErrorKind {
    match code {
        2 => io::ErrorKind::PermissionDenied,
        3 => io::ErrorKind::NetworkUnreachable,
        4 => io::ErrorKind::HostUnreachable,
        5 => io::ErrorKind::ConnectionRefused,
        6 => io::ErrorKind::TimedOut,
        7 | 8 => io::ErrorKind::Unsupported,
        _ => io::ErrorKind::Other,
    }
}

fn proxy_error(e: ProxyError) -> Error {
    Error::Proxy(Box::new(e))
}

fn malformed(msg: impl Into<String>) -> Error {
    proxy_error(ProxyError::Malformed(msg.into()))
}

/// Opens a TCP connection to `proxy` and has it open a tunnel to `host:port`; the
/// stream returned reaches the target (`TCP_NODELAY` is on). `host` is a DNS name or an
/// IP address (an IPv6 address with or without brackets).
///
/// - HTTP: `CONNECT host:port HTTP/1.1` with `Host` and, with credentials,
///   `Proxy-Authorization: Basic`; a 2xx answer opens the tunnel. The answer's head
///   (at most [`MAX_RESPONSE_HEAD`] bytes) is read with `peek` and only its own bytes
///   are consumed, so whatever the proxy sent after it (the target's first bytes)
///   stays in the socket for the caller: nothing is lost, and no wrapper stream is
///   needed.
/// - SOCKS5: greeting, then RFC 1929 authentication if the proxy asks for it, then
///   `CONNECT` with the target's name (`socks5h://`, or an IP literal as an address)
///   or with its first locally resolved address (`socks5://`); the reply is read to
///   its end (bound address included) and no further.
///
/// There is no timeout here: wrap the call in [`tokio::time::timeout`] (dropping the
/// future closes the connection). A proxy's refusal is an [`Error::Proxy`], a failure
/// to reach it an [`Error::Io`]; see the [module documentation](self#errors).
pub async fn connect_via(proxy: &Proxy, host: &str, port: u16) -> Result<TcpStream, Error> {
    let target = Target::parse(host)?;
    let mut tcp = TcpStream::connect((proxy.host.as_str(), proxy.port))
        .await
        .map_err(|e| Error::Io(io::Error::new(e.kind(), format!("cannot connect to the proxy {proxy}: {e}"))))?;
    tcp.set_nodelay(true)?;
    match proxy.kind {
        ProxyKind::Http => http_connect(&mut tcp, proxy, &target, port).await?,
        ProxyKind::Socks5 | ProxyKind::Socks5h => socks5_connect(&mut tcp, proxy, &target, port).await?,
    }
    Ok(tcp)
}

/// The host to tunnel to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Ip(IpAddr),
    Name(String),
}

impl Target {
    fn parse(host: &str) -> Result<Target, Error> {
        let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(Target::Ip(ip));
        }
        let valid = !bare.is_empty()
            && bare.len() <= 255
            && bare.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
        if valid {
            Ok(Target::Name(bare.to_string()))
        } else {
            Err(Error::Config(format!("{host:?} is not a host name or IP address to tunnel to")))
        }
    }

    /// `host:port`, an IPv6 address in brackets.
    fn authority(&self, port: u16) -> String {
        match self {
            Target::Ip(IpAddr::V6(ip)) => format!("[{ip}]:{port}"),
            Target::Ip(IpAddr::V4(ip)) => format!("{ip}:{port}"),
            Target::Name(name) => format!("{name}:{port}"),
        }
    }
}

async fn http_connect(tcp: &mut TcpStream, proxy: &Proxy, target: &Target, port: u16) -> Result<(), Error> {
    let authority = target.authority(port);
    let mut request = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if let Some((user, pass)) = &proxy.credentials {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        request.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
    }
    request.push_str("\r\n");
    tcp.write_all(request.as_bytes()).await?;
    let (status, reason) = read_response_head(tcp).await?;
    if (200..300).contains(&status) {
        return Ok(());
    }
    let sent_credentials = proxy.credentials.is_some();
    Err(proxy_error(ProxyError::HttpStatus { status, reason, target: authority, sent_credentials }))
}

/// Reads an HTTP response head and consumes nothing after it: bytes are peeked, and
/// read (consumed) only once they are known to belong to the head.
async fn read_response_head(tcp: &mut TcpStream) -> Result<(u16, String), Error> {
    let mut head = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    loop {
        let room = (MAX_RESPONSE_HEAD - head.len()).min(buf.len());
        if room == 0 {
            return Err(malformed(format!("the HTTP proxy's response head exceeds {MAX_RESPONSE_HEAD} bytes")));
        }
        let n = tcp.peek(&mut buf[..room]).await?;
        if n == 0 {
            let msg = if head.is_empty() {
                "the HTTP proxy closed the connection without answering CONNECT"
            } else {
                "the HTTP proxy closed the connection in the middle of its response head"
            };
            return Err(Error::Io(io::Error::new(io::ErrorKind::UnexpectedEof, msg)));
        }
        let before = head.len();
        head.extend_from_slice(&buf[..n]);
        let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&head) {
            Ok(httparse::Status::Complete(len)) => {
                // Both are set once the parse is complete.
                let status = response.code.unwrap_or_default();
                let reason = response.reason.unwrap_or_default().to_string();
                // `len - before <= n`: these bytes are in the socket's buffer.
                tcp.read_exact(&mut buf[..len - before]).await?;
                return Ok((status, reason));
            }
            Ok(httparse::Status::Partial) => {
                // Every peeked byte belongs to the head: consume them all.
                tcp.read_exact(&mut buf[..n]).await?;
            }
            Err(httparse::Error::TooManyHeaders) => {
                let msg = format!("the HTTP proxy's response head has more than {MAX_RESPONSE_HEADERS} header fields");
                return Err(malformed(msg));
            }
            Err(e) => {
                let start = String::from_utf8_lossy(&head[..head.len().min(32)]).into_owned();
                return Err(malformed(format!("the proxy's answer to CONNECT is not HTTP ({e}): {start:?}")));
            }
        }
    }
}

async fn socks5_connect(tcp: &mut TcpStream, proxy: &Proxy, target: &Target, port: u16) -> Result<(), Error> {
    let credentials = proxy.credentials.as_ref();
    if let Some((user, pass)) = credentials {
        if user.is_empty() || user.len() > 255 || pass.len() > 255 {
            return Err(Error::Config(
                "SOCKS5 username/password: the user name must have 1 to 255 bytes, the password at most 255".into(),
            ));
        }
    }
    // The address to send, checked (and for socks5:// resolved) before any byte goes out.
    let address = match (target, proxy.kind) {
        (Target::Ip(ip), _) => SocksAddr::Ip(*ip),
        (Target::Name(name), ProxyKind::Socks5h) => SocksAddr::Name(name.clone()),
        (Target::Name(name), _) => SocksAddr::Ip(resolve(name, port).await?),
    };

    // Greeting: no authentication, plus username/password if there are credentials.
    let greeting: &[u8] = if credentials.is_some() { &[5, 2, 0x00, 0x02] } else { &[5, 1, 0x00] };
    tcp.write_all(greeting).await?;
    let mut choice = [0u8; 2];
    read_reply(tcp, &mut choice, "method selection").await?;
    if choice[0] != 5 {
        return Err(not_socks5(&choice));
    }
    match (choice[1], credentials) {
        (0x00, _) => {}
        (0x02, Some((user, pass))) => {
            let mut auth = Vec::with_capacity(3 + user.len() + pass.len());
            auth.push(1);
            auth.push(user.len() as u8); // checked above: at most 255
            auth.extend_from_slice(user.as_bytes());
            auth.push(pass.len() as u8); // checked above: at most 255
            auth.extend_from_slice(pass.as_bytes());
            tcp.write_all(&auth).await?;
            let mut status = [0u8; 2];
            read_reply(tcp, &mut status, "username/password authentication").await?;
            // RFC 1929 says version 1, but some servers answer 5: only the status counts.
            if status[1] != 0 {
                return Err(proxy_error(ProxyError::SocksAuthFailed { status: status[1] }));
            }
        }
        (0xff, _) => {
            let offered_credentials = credentials.is_some();
            return Err(proxy_error(ProxyError::SocksNoAcceptableMethod { offered_credentials }));
        }
        (method, _) => return Err(malformed(format!("the SOCKS5 proxy chose method {method}, which was not offered"))),
    }

    // CONNECT.
    let mut request = vec![5, 1, 0];
    match &address {
        SocksAddr::Ip(IpAddr::V4(ip)) => {
            request.push(1);
            request.extend_from_slice(&ip.octets());
        }
        SocksAddr::Ip(IpAddr::V6(ip)) => {
            request.push(4);
            request.extend_from_slice(&ip.octets());
        }
        SocksAddr::Name(name) => {
            request.push(3);
            request.push(name.len() as u8); // Target::parse: at most 255 bytes
            request.extend_from_slice(name.as_bytes());
        }
    }
    request.extend_from_slice(&port.to_be_bytes());
    tcp.write_all(&request).await?;

    let mut reply = [0u8; 4];
    read_reply(tcp, &mut reply, "CONNECT").await?;
    if reply[0] != 5 {
        return Err(not_socks5(&reply));
    }
    if reply[1] != 0 {
        let code = reply[1];
        let target = match &address {
            SocksAddr::Ip(ip) => Target::Ip(*ip).authority(port),
            SocksAddr::Name(name) => format!("{name}:{port}"),
        };
        return Err(proxy_error(ProxyError::SocksReply { code, target }));
    }
    let bound = match reply[3] {
        1 => {
            let mut b = [0u8; 6];
            read_reply(tcp, &mut b, "CONNECT").await?;
            let ip = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
            SocketAddr::new(ip.into(), u16::from_be_bytes([b[4], b[5]])).to_string()
        }
        4 => {
            let mut b = [0u8; 18];
            read_reply(tcp, &mut b, "CONNECT").await?;
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&b[..16]);
            SocketAddr::new(Ipv6Addr::from(octets).into(), u16::from_be_bytes([b[16], b[17]])).to_string()
        }
        3 => {
            let mut len = [0u8; 1];
            read_reply(tcp, &mut len, "CONNECT").await?;
            let mut b = vec![0u8; usize::from(len[0]) + 2];
            read_reply(tcp, &mut b, "CONNECT").await?;
            let (name, port) = b.split_at(b.len() - 2);
            format!("{}:{}", String::from_utf8_lossy(name), u16::from_be_bytes([port[0], port[1]]))
        }
        atyp => return Err(malformed(format!("the SOCKS5 proxy's reply has an unknown address type {atyp}"))),
    };
    tracing::debug!(proxy = %proxy, bound, "SOCKS5 tunnel open");
    Ok(())
}

/// The address in a SOCKS5 CONNECT request.
enum SocksAddr {
    Ip(IpAddr),
    Name(String),
}

/// The first address `name` resolves to (for `socks5://`).
async fn resolve(name: &str, port: u16) -> Result<IpAddr, Error> {
    let context = |e: &dyn fmt::Display| {
        format!("cannot resolve {name} locally: {e} (with socks5h:// the proxy resolves the name instead)")
    };
    let mut addrs = tokio::net::lookup_host((name, port)).await.map_err(|e| io::Error::new(e.kind(), context(&e)))?;
    match addrs.next() {
        Some(addr) => Ok(addr.ip()),
        None => Err(Error::Io(io::Error::new(io::ErrorKind::NotFound, context(&"no address")))),
    }
}

/// Reads exactly `buf.len()` bytes of a SOCKS5 answer.
async fn read_reply(tcp: &mut TcpStream, buf: &mut [u8], step: &str) -> Result<(), Error> {
    match tcp.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(Error::Io(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("the SOCKS5 proxy closed the connection during the {step}"),
        ))),
        Err(e) => Err(e.into()),
    }
}

fn not_socks5(start: &[u8]) -> Error {
    let hint = if start.first() == Some(&b'H') { " (this looks like an HTTP proxy: use http://)" } else { "" };
    malformed(format!("the proxy does not speak SOCKS5: it answered version {}{hint}", start[0]))
}

// --- proxy URLs ----------------------------------------------------------------------

/// A URL with its password hidden, for error messages.
fn redact(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or_default();
            format!("{scheme}{user}:***{}", &rest[at..])
        }
        None => url.to_string(),
    }
}

fn parse_proxy_url(url: &str, default_kind: ProxyKind) -> Result<Proxy, Error> {
    let shown = redact(url.trim());
    let bad = |why: &str| Error::Url(format!("{shown}: {why}"));
    let url = url.trim();
    let (kind, rest) = match url.find("://") {
        None => (default_kind, url),
        Some(i) => {
            let kind = match url[..i].to_ascii_lowercase().as_str() {
                "http" => ProxyKind::Http,
                "socks5" => ProxyKind::Socks5,
                "socks5h" => ProxyKind::Socks5h,
                "https" => {
                    return Err(bad("HTTPS proxies (TLS to the proxy) are not supported: use http:// or socks5h://"))
                }
                "socks4" | "socks4a" => {
                    return Err(bad("SOCKS4 proxies are not supported: use socks5:// or socks5h://"))
                }
                _ => return Err(bad("the proxy scheme must be http://, socks5:// or socks5h://")),
            };
            (kind, &url[i + 3..])
        }
    };
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    let (userinfo, hostport) = match authority.rfind('@') {
        Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
        None => (None, authority),
    };
    let credentials = match userinfo {
        None => None,
        Some(info) => {
            let (user, pass) = info.split_once(':').unwrap_or((info, ""));
            let user = percent_decode(user).ok_or_else(|| bad("bad percent-encoding in the user name"))?;
            let pass = percent_decode(pass).ok_or_else(|| bad("bad percent-encoding in the password"))?;
            Some((user, pass))
        }
    };
    let (host, port) = split_host_port(hostport).ok_or_else(|| bad("bad host or port"))?;
    let host_ok = host.parse::<IpAddr>().is_ok()
        || (!host.is_empty()
            && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
            && !host.contains(':'));
    if !host_ok {
        return Err(bad("bad host"));
    }
    let port = match port {
        Some(0) => return Err(bad("port 0")),
        Some(port) => port,
        None => DEFAULT_PORT,
    };
    Ok(Proxy { kind, host, port, credentials })
}

/// Splits `host`, `host:port`, `[v6]`, `[v6]:port` or a bare IPv6 address into the
/// host (without brackets) and the port. `None` if the port is not a number.
fn split_host_port(s: &str) -> Option<(String, Option<u16>)> {
    let s = s.trim();
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?.parse().ok()?),
        };
        return Some((host.to_string(), port));
    }
    if s.parse::<Ipv6Addr>().is_ok() {
        return Some((s.to_string(), None));
    }
    match s.rsplit_once(':') {
        Some((host, port)) => Some((host.to_string(), Some(port.parse().ok()?))),
        None => Some((s.to_string(), None)),
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

// --- no_proxy --------------------------------------------------------------------------

/// Whether a `no_proxy` list exempts `target_host` from the proxy. `target_host` is a
/// host as in a URL, optionally with a port: `example.com`, `example.com:9001`,
/// `10.1.2.3`, `[::1]:9001`, `::1`.
///
/// The list is separated by commas and/or whitespace; matching ignores case. Entries:
///
/// - `*` matches every host;
/// - a name (`example.com`, `.example.com` or `*.example.com`: the same) matches that
///   name and its subdomains, on label boundaries (`example.com` matches
///   `ws.example.com` but not `badexample.com`); trailing dots are ignored;
/// - an IP address (`127.0.0.1`, `::1`, `[::1]`) matches that address, whatever its
///   spelling; with a prefix length (`10.0.0.0/8`, `fd00::/8`) a network, as curl does;
///   names never match addresses (no DNS look-ups);
/// - any of these with a port (`example.com:8080`, `127.0.0.1:9001`, `[::1]:9001`)
///   matches only connections to that port, which needs a port in `target_host`
///   ([`Proxy::from_env_with`] supplies the scheme's default).
pub fn no_proxy_matches(no_proxy: &str, target_host: &str) -> bool {
    match split_host_port(target_host) {
        Some((host, port)) => no_proxy_match(no_proxy, &host, port),
        None => false,
    }
}

fn no_proxy_match(no_proxy: &str, host: &str, port: Option<u16>) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() {
        return false;
    }
    let host_ip = host.parse::<IpAddr>().ok();
    no_proxy.split(|c: char| c == ',' || c.is_whitespace()).filter(|e| !e.is_empty()).any(|entry| {
        if entry == "*" {
            return true;
        }
        let Some((pattern, entry_port)) = split_no_proxy_entry(entry) else {
            return false;
        };
        if entry_port.is_some() && entry_port != port {
            return false;
        }
        match host_ip {
            Some(ip) => ip_entry_matches(&pattern, ip),
            None => {
                let pattern = pattern.trim_start_matches('*').trim_start_matches('.').trim_end_matches('.');
                let pattern = pattern.to_ascii_lowercase();
                !pattern.is_empty()
                    && (host == pattern
                        || (host.len() > pattern.len()
                            && host.ends_with(&pattern)
                            && host.as_bytes()[host.len() - pattern.len() - 1] == b'.'))
            }
        }
    })
}

/// An entry's host part and port: `[v6]:port`, `[v6]`, `v6`, `net/bits`, `host:port`,
/// `host`. `None` for an entry that cannot match anything.
fn split_no_proxy_entry(entry: &str) -> Option<(String, Option<u16>)> {
    if entry.contains('/') && !entry.starts_with('[') {
        return Some((entry.to_string(), None));
    }
    split_host_port(entry)
}

fn ip_entry_matches(pattern: &str, ip: IpAddr) -> bool {
    let (net, bits) = match pattern.split_once('/') {
        Some((net, bits)) => match bits.parse::<u8>() {
            Ok(bits) => (net, Some(bits)),
            Err(_) => return false,
        },
        None => (pattern, None),
    };
    let Ok(net) = net.parse::<IpAddr>() else {
        return false;
    };
    match (net, ip) {
        (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_matches(&net.octets(), &ip.octets(), bits.unwrap_or(32)),
        (IpAddr::V6(net), IpAddr::V6(ip)) => prefix_matches(&net.octets(), &ip.octets(), bits.unwrap_or(128)),
        _ => false,
    }
}

/// Whether the first `bits` bits of `a` and `b` are equal (false if `bits` is longer
/// than the addresses).
fn prefix_matches(a: &[u8], b: &[u8], bits: u8) -> bool {
    let bits = usize::from(bits);
    if bits > a.len() * 8 {
        return false;
    }
    let (whole, rest) = (bits / 8, bits % 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    rest == 0 || (a[whole] ^ b[whole]) & (0xffu8 << (8 - rest)) == 0
}
