//! TLS for `wss://`, on rustls with the *ring* crypto provider: server configurations
//! and acceptors from PEM files, the client's default configuration (Mozilla's roots
//! from `webpki-roots`), and [`MaybeTlsStream`], the transport of a client connection
//! for both `ws://` and `wss://` (also at the crate's root).
//!
//! Every configuration built here names its crypto provider explicitly
//! ([`crypto_provider`]), so nothing depends on a process-wide default provider being
//! installed, and nothing here installs one.
//!
//! A server hands its [`TlsAcceptor`] to [`ServerBuilder::tls`](crate::ServerBuilder::tls),
//! which runs TLS on the connection, then the WebSocket handshake on the TLS stream,
//! each within the handshake timeout:
//!
//! ```no_run
//! # async fn run() -> Result<(), volley::Error> {
//! let acceptor = volley::tls::acceptor("cert.pem", "key.pem")?;
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:443").await?;
//! loop {
//!     let (tcp, _) = listener.accept().await?;
//!     let acceptor = acceptor.clone();
//!     tokio::spawn(async move {
//!         let mut ws = volley::ServerBuilder::new().tls(acceptor).accept_tcp(tcp).await?;
//!         while let Some(msg) = ws.recv().await {
//!             let msg = msg?;
//!             if msg.is_data() {
//!                 ws.feed(msg).await?;
//!             }
//!         }
//!         Ok::<_, volley::Error>(())
//!     });
//! }
//! # }
//! ```
//!
//! A client only needs a `wss://` URL: [`ClientBuilder::connect`](crate::ClientBuilder::connect)
//! connects TCP, runs TLS (SNI and certificate check against the URL's host, ALPN
//! `http/1.1`), then the WebSocket handshake. TLS failures (an unknown issuer, a name
//! mismatch, a peer that does not speak TLS) come back as [`Error::Tls`] with the
//! [`rustls::Error`], on both sides; a configuration that cannot work (PEM files without
//! a certificate or a key, a key that does not fit) as [`Error::Config`] naming the
//! file, or [`Error::Io`] if a file cannot be read.

use std::io;
use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::{self, PemObject};

use crate::error::Error;
pub use crate::stream::MaybeTlsStream;

pub use rustls;
pub use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
pub use tokio_rustls;
pub use tokio_rustls::{TlsAcceptor, TlsConnector};

/// The TLS stream of a server connection accepted with
/// [`ServerBuilder::tls`](crate::ServerBuilder::tls).
pub type ServerTlsStream<S> = tokio_rustls::server::TlsStream<S>;

/// The ALPN protocol a WebSocket (RFC 6455) connection runs on.
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// The crypto provider of every configuration built here: *ring*'s, with its default
/// cipher suites and key exchange groups.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads every certificate of a PEM file (a server's chain: its own certificate first,
/// then the intermediates). Errors name the file; a file without certificates is one.
pub fn load_certs(path: impl AsRef<Path>) -> Result<Vec<CertificateDer<'static>>, Error> {
    let path = path.as_ref();
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| pem_error(path, "certificates", e))?;
    if certs.is_empty() {
        return Err(pem_error(path, "certificates", pem::Error::NoItemsFound));
    }
    Ok(certs)
}

/// Reads the first private key of a PEM file (PKCS#8, PKCS#1 or SEC1). Errors name the
/// file.
pub fn load_private_key(path: impl AsRef<Path>) -> Result<PrivateKeyDer<'static>, Error> {
    let path = path.as_ref();
    PrivateKeyDer::from_pem_file(path).map_err(|e| pem_error(path, "private key", e))
}

fn pem_error(path: &Path, what: &str, e: pem::Error) -> Error {
    let path = path.display();
    match e {
        pem::Error::Io(e) => Error::Io(io::Error::new(e.kind(), format!("{path}: {e}"))),
        pem::Error::NoItemsFound => Error::Config(format!("{path}: no PEM {what} found")),
        e => Error::Config(format!("{path}: {e}")),
    }
}

/// A server configuration for a certificate chain and its private key: TLS 1.2 and 1.3
/// with the *ring* provider, no client authentication, and ALPN `http/1.1` (a client
/// that offers ALPN without `http/1.1`, say only `h2`, is refused). Adjust the result
/// with `Arc::make_mut` if needed.
pub fn server_config(
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, Error> {
    build_server_config(cert_chain, key).map_err(tls_error)
}

fn build_server_config(
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(cert_chain, key)?;
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(Arc::new(config))
}

/// [`server_config`] from PEM files: the certificate chain and the private key. Errors
/// name the file at fault.
pub fn server_config_from_pem(
    cert_path: impl AsRef<Path>,
    key_path: impl AsRef<Path>,
) -> Result<Arc<ServerConfig>, Error> {
    let (cert_path, key_path) = (cert_path.as_ref(), key_path.as_ref());
    let certs = load_certs(cert_path)?;
    let key = load_private_key(key_path)?;
    build_server_config(certs, key)
        .map_err(|e| Error::Config(format!("{} with {}: {e}", cert_path.display(), key_path.display())))
}

/// A TLS acceptor for the certificate chain and private key in these PEM files (see
/// [`server_config`]).
pub fn acceptor(cert_path: impl AsRef<Path>, key_path: impl AsRef<Path>) -> Result<TlsAcceptor, Error> {
    Ok(TlsAcceptor::from(server_config_from_pem(cert_path, key_path)?))
}

/// The trust anchors a client uses unless told otherwise: Mozilla's root program, as
/// compiled into `webpki-roots`.
///
/// Volley takes these rather than the operating system's store (`rustls-native-certs`)
/// so that certificate checks behave the same on every machine and in minimal
/// containers without a CA bundle, with no extra dependency. For the system store, or
/// a private CA, build a [`ClientConfig`] with [`client_config`] and pass it to
/// [`ClientBuilder::tls_config`](crate::ClientBuilder::tls_config).
pub fn default_roots() -> RootCertStore {
    RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() }
}

/// A client configuration trusting `roots`: TLS 1.2 and 1.3 with the *ring* provider,
/// no client certificate, ALPN `http/1.1`.
pub fn client_config(roots: RootCertStore) -> Arc<ClientConfig> {
    let mut config = ClientConfig::builder_with_provider(crypto_provider())
        .with_safe_default_protocol_versions()
        // Cannot fail: ring's default provider has cipher suites for TLS 1.2 and 1.3.
        .expect("the ring provider supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Arc::new(config)
}

/// The client configuration used for `wss://` by default: [`client_config`] with
/// [`default_roots`], built once and shared (so TLS sessions can be resumed).
pub fn default_client_config() -> Arc<ClientConfig> {
    static DEFAULT: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    DEFAULT.get_or_init(|| client_config(default_roots())).clone()
}

/// The name a client checks the server's certificate against (and sends as SNI, for a
/// DNS name): an IP address or a DNS name, from a URL's host without brackets.
pub fn server_name(host: &str) -> Result<ServerName<'static>, Error> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(ServerName::from(ip));
    }
    ServerName::try_from(host.to_string()).map_err(|_| Error::Url(format!("{host}: not a valid TLS server name")))
}

/// [`default_roots`] plus `extra` (a private CA, a test's own root).
pub(crate) fn roots_with(extra: &[CertificateDer<'static>]) -> Result<RootCertStore, Error> {
    let mut roots = default_roots();
    for cert in extra {
        roots.add(cert.clone()).map_err(tls_error)?;
    }
    Ok(roots)
}

pub(crate) fn tls_error(e: rustls::Error) -> Error {
    Error::Tls(Box::new(e))
}

/// A failed TLS handshake: [`Error::Tls`] if rustls failed it (tokio-rustls hands its
/// error over inside an `io::Error`), [`Error::Io`] if the transport did.
pub(crate) fn handshake_error(e: io::Error) -> Error {
    if !e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) {
        return Error::Io(e);
    }
    let kind = e.kind();
    match e.into_inner().map(|inner| inner.downcast::<rustls::Error>()) {
        Some(Ok(tls)) => Error::Tls(tls),
        // Not reached: the inner error was checked to be a rustls error.
        Some(Err(inner)) => Error::Io(io::Error::new(kind, inner)),
        None => Error::Io(kind.into()),
    }
}
