//! The hub's few outgoing HTTP requests (a JWK set, webhooks, the backend's proxies):
//! one HTTP/1.1 request on its own connection, in TLS from `volley::tls` for
//! `https://`, on hyper's client connection, with a bound on the answer's size.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use volley::tls::rustls::ClientConfig;

/// Where a request goes: a parsed `http://` or `https://` URL.
#[derive(Clone, Debug)]
pub(crate) struct Endpoint {
    /// The URL as configured.
    pub url: String,
    pub tls: bool,
    /// The host without brackets, to connect to and to check the certificate against.
    pub host: String,
    pub port: u16,
    /// `host[:port]`, for the `Host` header.
    pub authority: String,
    pub path: String,
}

impl Endpoint {
    /// Parses a URL: `http` or `https`, a host, no credentials.
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let uri: http::Uri = url.parse().map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("{url:?}: the scheme must be https:// or http://")),
        };
        let authority = uri.authority().ok_or_else(|| format!("{url:?} has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!("{url:?}: credentials in the URL are not supported"));
        }
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_string();
        if host.is_empty() {
            return Err(format!("{url:?} has no host"));
        }
        let path = match uri.path_and_query().map(|p| p.as_str()) {
            Some(p) if !p.is_empty() => p.to_string(),
            _ => "/".to_string(),
        };
        Ok(Endpoint {
            url: url.to_string(),
            tls,
            host,
            port: authority.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            authority: authority.as_str().to_string(),
            path,
        })
    }
}

/// One request to an [`Endpoint`].
pub(crate) struct Request<'a> {
    endpoint: &'a Endpoint,
    method: http::Method,
    headers: &'a [(&'a str, &'a str)],
    body: Bytes,
}

impl<'a> Request<'a> {
    /// A GET with these headers.
    pub fn get(endpoint: &'a Endpoint, headers: &'a [(&'a str, &'a str)]) -> Self {
        Request { endpoint, method: http::Method::GET, headers, body: Bytes::new() }
    }

    /// A POST of `body` with these headers (`Content-Type` among them).
    pub fn post(endpoint: &'a Endpoint, headers: &'a [(&'a str, &'a str)], body: Bytes) -> Self {
        Request { endpoint, method: http::Method::POST, headers, body }
    }

    /// Sends it on a new connection and reads the answer, up to `limit` bytes of
    /// body: its status and body. No timeout here: the caller bounds the whole exchange.
    pub async fn send(self, tls: &Arc<ClientConfig>, limit: usize) -> Result<(http::StatusCode, Bytes), String> {
        let mut sender = connect(self.endpoint, tls).await?;
        let mut request = http::Request::builder()
            .method(self.method)
            .uri(self.endpoint.path.as_str())
            .header(http::header::HOST, self.endpoint.authority.as_str())
            .header(http::header::USER_AGENT, concat!("volley-hub/", env!("CARGO_PKG_VERSION")));
        for (name, value) in self.headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(self.body)).map_err(|e| e.to_string())?;
        let response = sender.send_request(request).await.map_err(|e| format!("request: {e}"))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), limit)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?;
        Ok((status, body.to_bytes()))
    }
}

/// Opens an HTTP/1.1 connection to the endpoint (in TLS for `https://`): its sender,
/// whose connection lives until the sender is dropped or the server closes it.
pub(crate) async fn connect(endpoint: &Endpoint, tls: &Arc<ClientConfig>) -> Result<SendRequest<Full<Bytes>>, String> {
    let tcp = tokio::net::TcpStream::connect((endpoint.host.as_str(), endpoint.port))
        .await
        .map_err(|e| format!("connecting: {e}"))?;
    let _ = tcp.set_nodelay(true);
    if endpoint.tls {
        let name = volley::tls::server_name(&endpoint.host).map_err(|e| e.to_string())?;
        let stream =
            volley::tls::TlsConnector::from(tls.clone()).connect(name, tcp).await.map_err(|e| format!("TLS: {e}"))?;
        handshake(stream).await
    } else {
        handshake(tcp).await
    }
}

async fn handshake<S>(io: S) -> Result<SendRequest<Full<Bytes>>, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}
