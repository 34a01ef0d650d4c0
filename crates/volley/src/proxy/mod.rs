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

mod env;
mod http;
mod socks5;
mod url;

use std::fmt;
use std::io;
use std::net::IpAddr;

use tokio::net::TcpStream;

use self::http::{http_connect, http_hint};
use self::socks5::{socks5_connect, socks_reply_kind, socks_reply_message};
use crate::error::Error;

pub use self::env::no_proxy_matches;
pub use self::http::MAX_RESPONSE_HEAD;
pub use self::url::DEFAULT_PORT;

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
