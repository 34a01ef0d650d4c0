//! Proxies to the application's backend, as Centrifugo's "proxy events to the backend":
//! the hub asks an HTTP endpoint whether a client may connect (and as whom), refreshes a
//! connection or a subscription, subscribe, publish, or answers an RPC. This module owns
//! the configuration of each proxy, the JSON of the requests and of the answers, and the
//! HTTP client: POSTs over HTTP/1.1 (in TLS for `https://`) on kept-alive connections,
//! each request bounded in time and in number.
//!
//! The session ([`crate::engine`]) decides when to ask and what to do with the answer.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http1::SendRequest;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use tokio::sync::Semaphore;
use volley::tls::rustls::ClientConfig;

use crate::auth::{raw_bytes, raw_or_base64, ConnectToken, SubClaims, SubscribeOptions};
use crate::config::duration;
use crate::http_client::Endpoint;
use crate::protocol::{Disconnect, ErrorReply, Format};

/// One proxy: where its requests go and how (Centrifugo's proxy object).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// Whether the proxy is used (`client.proxy.connect` and `client.proxy.refresh`
    /// only; channel proxies are switched on by namespace, the RPC proxy by RPC
    /// namespace).
    pub enabled: bool,
    /// The URL requests are POSTed to (`http://` or `https://`).
    pub endpoint: String,
    /// How long a request may take, connecting included (error 100 after).
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Headers of the client's connection request forwarded in every request of this
    /// proxy (`Cookie`, `Authorization`, `X-Real-Ip`...). Only these are kept with the
    /// connection.
    pub http_headers: Vec<String>,
    /// Headers the client emulates (centrifuge-js's `headers` option, sent in its
    /// connect command) forwarded in every request of this proxy. The client sets them
    /// as it likes: only for what the backend checks (a token it verifies). A real
    /// header of the same name wins.
    pub emulated_headers: Vec<String>,
    /// Send the connection's `meta` (from its token or the connect proxy) in requests.
    pub include_connection_meta: bool,
    /// Payloads as base64 (`b64data`) instead of JSON (`data`), for binary data.
    pub binary_encoding: bool,
    /// HTTP options.
    pub http: ProxyHttpConfig,
    /// Requests of this proxy in flight at once on this node; beyond, a request waits
    /// (within its timeout).
    pub max_concurrent_requests: usize,
    /// The largest answer read, in bytes (error 100 beyond).
    pub max_response_size: usize,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            enabled: false,
            endpoint: String::new(),
            timeout: Duration::from_secs(1),
            http_headers: Vec::new(),
            emulated_headers: Vec::new(),
            include_connection_meta: false,
            binary_encoding: false,
            http: ProxyHttpConfig::default(),
            max_concurrent_requests: 1024,
            max_response_size: 1 << 20,
        }
    }
}

/// The HTTP options of a proxy.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyHttpConfig {
    /// Headers added to every request (a header forwarded from the client wins).
    pub static_headers: BTreeMap<String, String>,
}

/// The client-wide proxies (`client.proxy`).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientProxies {
    /// Asked when a client connects without a token: who it is, or a refusal.
    pub connect: ProxyConfig,
    /// Asked when a connection expires, instead of the client refreshing its token.
    pub refresh: ProxyConfig,
}

/// The channel proxies (`channel.proxy`), used in the namespaces that switch them on
/// (`subscribe_proxy_enabled`, `publish_proxy_enabled`, `sub_refresh_proxy_enabled`).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelProxies {
    /// Asked when a client subscribes without a token.
    pub subscribe: ProxyConfig,
    /// Asked when a client publishes.
    pub publish: ProxyConfig,
    /// Asked when a subscription expires, instead of the client refreshing its token.
    pub sub_refresh: ProxyConfig,
}

/// RPC (`rpc`): the proxy that answers clients' calls, and the RPC namespaces.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RpcConfig {
    /// The RPC proxy.
    pub proxy: ProxyConfig,
    /// Methods without a namespace (`getPrice`).
    pub without_namespace: RpcNamespace,
    /// RPC namespaces: the method `ns:getPrice` is in the namespace `ns`.
    pub namespaces: Vec<RpcNamespace>,
    /// Separates an RPC namespace from the rest of the method.
    pub namespace_boundary: String,
}

impl Default for RpcConfig {
    fn default() -> Self {
        RpcConfig {
            proxy: ProxyConfig::default(),
            without_namespace: RpcNamespace::default(),
            namespaces: Vec::new(),
            namespace_boundary: ":".into(),
        }
    }
}

/// The options of an RPC namespace.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RpcNamespace {
    /// The namespace's name; empty for methods without a namespace.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Calls in this namespace go to the RPC proxy (104, method not found, otherwise).
    pub proxy_enabled: bool,
}

impl RpcConfig {
    /// Whether the method's calls go to the proxy.
    pub fn proxied(&self, method: &str) -> bool {
        match (!self.namespace_boundary.is_empty()).then(|| method.split_once(self.namespace_boundary.as_str())) {
            Some(Some((ns, _))) => self.namespaces.iter().any(|n| n.name == ns && n.proxy_enabled),
            _ => self.without_namespace.proxy_enabled,
        }
    }
}

/// The proxies a hub uses, ready to send.
#[derive(Default)]
pub(crate) struct Proxies {
    pub connect: Option<Proxy>,
    pub refresh: Option<Proxy>,
    pub subscribe: Option<Proxy>,
    pub publish: Option<Proxy>,
    pub sub_refresh: Option<Proxy>,
    pub rpc: Option<Proxy>,
    /// Every header some proxy forwards: what a connection keeps of its request.
    pub header_names: Box<[HeaderName]>,
    /// Every emulated header some proxy forwards: what a connection keeps of those its
    /// client sent.
    pub emulated_names: Box<[HeaderName]>,
}

impl Proxies {
    /// Builds the proxies the configuration uses; an error names the bad key.
    pub fn new(config: &crate::HubConfig) -> Result<Proxies, String> {
        let c = &config.client.proxy;
        let ch = &config.channel.proxy;
        let channel_used = |f: fn(&crate::config::ChannelOptions) -> bool| {
            f(&config.channel.without_namespace) || config.channel.namespaces.iter().any(f)
        };
        let rpc_used =
            config.rpc.without_namespace.proxy_enabled || config.rpc.namespaces.iter().any(|n| n.proxy_enabled);
        let build = |used: bool, p: &ProxyConfig, key: &str| -> Result<Option<Proxy>, String> {
            if !used {
                return Ok(None);
            }
            Proxy::new(p).map(Some).map_err(|e| format!("{key}: {e}"))
        };
        let mut proxies = Proxies {
            connect: build(c.connect.enabled, &c.connect, "client.proxy.connect")?,
            refresh: build(c.refresh.enabled, &c.refresh, "client.proxy.refresh")?,
            subscribe: build(channel_used(|o| o.subscribe_proxy_enabled), &ch.subscribe, "channel.proxy.subscribe")?,
            publish: build(channel_used(|o| o.publish_proxy_enabled), &ch.publish, "channel.proxy.publish")?,
            sub_refresh: build(
                channel_used(|o| o.sub_refresh_proxy_enabled),
                &ch.sub_refresh,
                "channel.proxy.sub_refresh",
            )?,
            rpc: build(rpc_used, &config.rpc.proxy, "rpc.proxy")?,
            header_names: Box::default(),
            emulated_names: Box::default(),
        };
        let all = |of: fn(&Proxy) -> &[HeaderName]| -> Box<[HeaderName]> {
            let mut names: Vec<HeaderName> = [
                &proxies.connect,
                &proxies.refresh,
                &proxies.subscribe,
                &proxies.publish,
                &proxies.sub_refresh,
                &proxies.rpc,
            ]
            .into_iter()
            .flatten()
            .flat_map(|p| of(p).iter().cloned())
            .collect();
            names.sort_by(|a, b| a.as_str().cmp(b.as_str()));
            names.dedup();
            names.into()
        };
        let (headers, emulated) = (all(|p| &p.headers), all(|p| &p.emulated));
        proxies.header_names = headers;
        proxies.emulated_names = emulated;
        Ok(proxies)
    }

    /// The emulated headers of a client's connect command that some proxy forwards.
    pub fn keep_emulated(&self, sent: &BTreeMap<String, String>) -> Box<[(HeaderName, HeaderValue)]> {
        sent.iter()
            .filter_map(|(n, v)| {
                let name = HeaderName::from_bytes(n.as_bytes()).ok()?;
                self.emulated_names.contains(&name).then_some(())?;
                Some((name, HeaderValue::from_str(v).ok()?))
            })
            .collect()
    }

    /// The headers of a client's request that some proxy forwards.
    pub fn keep_headers<'a>(&self, get: impl Fn(&str) -> Option<&'a str>) -> Box<[(HeaderName, HeaderValue)]> {
        self.header_names
            .iter()
            .filter_map(|n| Some((n.clone(), HeaderValue::from_str(get(n.as_str())?).ok()?)))
            .collect()
    }
}

/// Why a proxy could not answer: the backend is unreachable, slow, answered with
/// another status than 200, or with something that is not a proxy answer. The client
/// gets error 100 (temporary).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct ProxyFailure(pub String);

/// What the backend answered.
#[derive(Debug)]
pub(crate) enum Answer<T> {
    /// `result`.
    Result(T),
    /// `error`: returned to the client as it is.
    Error(ErrorReply),
    /// `disconnect`: the client is disconnected with it.
    Disconnect(Disconnect),
}

/// One configured proxy.
pub(crate) struct Proxy {
    endpoint: Endpoint,
    timeout: Duration,
    /// The client's headers it forwards (lowercase).
    headers: Box<[HeaderName]>,
    /// The client's emulated headers it forwards (lowercase).
    emulated: Box<[HeaderName]>,
    static_headers: Vec<(HeaderName, HeaderValue)>,
    pub include_meta: bool,
    pub binary: bool,
    max_response_size: usize,
    in_flight: Semaphore,
    /// Kept-alive connections, with when each was last used.
    idle: Mutex<Vec<(Instant, SendRequest<Full<Bytes>>)>>,
    tls: Arc<ClientConfig>,
}

/// A client's headers: those of its connection request, and those it emulates.
pub(crate) type ClientHeaders<'a> = (&'a [(HeaderName, HeaderValue)], &'a [(HeaderName, HeaderValue)]);

/// How long a kept-alive connection may stay unused before it is dropped.
const IDLE_FOR: Duration = Duration::from_secs(30);

impl Proxy {
    fn new(c: &ProxyConfig) -> Result<Proxy, String> {
        if c.endpoint.is_empty() {
            return Err("`endpoint` is required".into());
        }
        if c.endpoint.starts_with("grpc://") {
            return Err("GRPC proxies are not supported: use an http:// or https:// endpoint".into());
        }
        let endpoint = Endpoint::parse(&c.endpoint)?;
        if c.timeout.is_zero() {
            return Err("`timeout` must be more than 0".into());
        }
        if c.max_concurrent_requests == 0 {
            return Err("`max_concurrent_requests` must be more than 0".into());
        }
        let names = |list: &[String], key: &str| {
            list.iter()
                .map(|h| {
                    HeaderName::from_bytes(h.as_bytes()).map_err(|_| format!("`{key}`: {h:?} is not a header name"))
                })
                .collect::<Result<Box<[HeaderName]>, String>>()
        };
        let emulated = names(&c.emulated_headers, "emulated_headers")?;
        let headers = c
            .http_headers
            .iter()
            .map(|h| {
                HeaderName::from_bytes(h.as_bytes()).map_err(|_| format!("`http_headers`: {h:?} is not a header name"))
            })
            .collect::<Result<_, _>>()?;
        let static_headers = c
            .http
            .static_headers
            .iter()
            .map(|(n, v)| {
                let name = HeaderName::from_bytes(n.as_bytes())
                    .map_err(|_| format!("`http.static_headers`: {n:?} is not a header name"))?;
                let value = HeaderValue::from_str(v)
                    .map_err(|_| format!("`http.static_headers`: the value of {n:?} is not a header value"))?;
                Ok((name, value))
            })
            .collect::<Result<_, String>>()?;
        Ok(Proxy {
            endpoint,
            timeout: c.timeout,
            headers,
            emulated,
            static_headers,
            include_meta: c.include_connection_meta,
            binary: c.binary_encoding,
            max_response_size: c.max_response_size,
            in_flight: Semaphore::new(c.max_concurrent_requests.min(Semaphore::MAX_PERMITS)),
            idle: Mutex::new(Vec::new()),
            tls: volley::tls::default_client_config(),
        })
    }

    /// POSTs `body` with the client's headers this proxy forwards (its request's, then
    /// its emulated ones where the request has none of that name), and reads the answer.
    pub async fn call<T: serde::de::DeserializeOwned>(
        &self,
        body: Vec<u8>,
        client_headers: ClientHeaders<'_>,
    ) -> Result<Answer<T>, ProxyFailure> {
        let sent = tokio::time::timeout(self.timeout, async {
            let _permit = self.in_flight.acquire().await.map_err(|e| e.to_string())?;
            self.post(body, client_headers).await
        })
        .await;
        let raw = match sent {
            Ok(Ok(raw)) => raw,
            Ok(Err(e)) => return Err(ProxyFailure(format!("{}: {e}", self.endpoint.url))),
            Err(_) => return Err(ProxyFailure(format!("{}: no answer within {:?}", self.endpoint.url, self.timeout))),
        };
        decode(&raw).map_err(|e| ProxyFailure(format!("{}: {e}", self.endpoint.url)))
    }

    fn request(&self, body: Bytes, client_headers: ClientHeaders<'_>) -> Result<http::Request<Full<Bytes>>, String> {
        let mut req = http::Request::post(self.endpoint.path.as_str())
            .header(http::header::HOST, self.endpoint.authority.as_str())
            .header(http::header::USER_AGENT, concat!("volley-hub/", env!("CARGO_PKG_VERSION")))
            .body(Full::new(body))
            .map_err(|e| e.to_string())?;
        let h = req.headers_mut();
        for (n, v) in &self.static_headers {
            h.insert(n.clone(), v.clone());
        }
        let (real, emulated) = client_headers;
        for (n, v) in emulated {
            if self.emulated.contains(n) {
                h.insert(n.clone(), v.clone());
            }
        }
        for (n, v) in real {
            if self.headers.contains(n) {
                h.insert(n.clone(), v.clone());
            }
        }
        h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(http::header::ACCEPT, HeaderValue::from_static("application/json"));
        Ok(req)
    }

    /// A kept-alive connection that is still open, if any.
    fn pooled(&self) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        idle.retain(|(at, s)| !s.is_closed() && at.elapsed() < IDLE_FOR);
        idle.pop().map(|(_, s)| s)
    }

    async fn post(&self, body: Vec<u8>, client_headers: ClientHeaders<'_>) -> Result<Bytes, String> {
        let body = Bytes::from(body);
        // A kept-alive connection first; if the backend closed it before it took the
        // request (canceled, never sent), the next, or a new one.
        let mut sent = None;
        while let Some(mut s) = self.pooled() {
            if s.ready().await.is_err() {
                continue;
            }
            match s.send_request(self.request(body.clone(), client_headers)?).await {
                Ok(response) => {
                    sent = Some((s, response));
                    break;
                }
                Err(e) if e.is_canceled() => continue,
                Err(e) => return Err(format!("request: {e}")),
            }
        }
        let (s, response) = match sent {
            Some(sent) => sent,
            None => {
                let mut s = self.connect().await?;
                let req = self.request(body, client_headers)?;
                let response = s.send_request(req).await.map_err(|e| format!("request: {e}"))?;
                (s, response)
            }
        };
        let status = response.status();
        let collected = Limited::new(response.into_body(), self.max_response_size)
            .collect()
            .await
            .map_err(|e| format!("reading the answer: {e}"))?
            .to_bytes();
        if status != http::StatusCode::OK {
            return Err(format!("answered {status}"));
        }
        if !s.is_closed() {
            self.idle.lock().unwrap_or_else(PoisonError::into_inner).push((Instant::now(), s));
        }
        Ok(collected)
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        crate::http_client::connect(&self.endpoint, &self.tls).await
    }
}

/// A proxy answer: one of `result`, `error`, `disconnect`.
#[derive(Deserialize)]
struct RawAnswer<T> {
    result: Option<T>,
    error: Option<RawError>,
    disconnect: Option<RawDisconnect>,
}

#[derive(Deserialize)]
struct RawError {
    code: u32,
    #[serde(default)]
    message: String,
    #[serde(default)]
    temporary: bool,
}

#[derive(Deserialize)]
struct RawDisconnect {
    code: u32,
    #[serde(default)]
    reason: String,
}

/// Reads an answer: `disconnect` wins over `error`, which wins over `result`.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<Answer<T>, String> {
    let a: RawAnswer<T> = serde_json::from_slice(body).map_err(|e| format!("not a proxy answer: {e}"))?;
    if let Some(d) = a.disconnect {
        let code = u16::try_from(d.code)
            .ok()
            .filter(|c| (3000..5000).contains(c))
            .ok_or_else(|| format!("disconnect code {} is not in 3000-4999", d.code))?;
        let mut reason = d.reason;
        truncate(&mut reason, 123);
        return Ok(Answer::Disconnect(Disconnect { code, reason: reason.into() }));
    }
    if let Some(e) = a.error {
        if e.code == 0 {
            return Err("error code 0".into());
        }
        return Ok(Answer::Error(ErrorReply { code: e.code, message: e.message.into(), temporary: e.temporary }));
    }
    match a.result {
        Some(r) => Ok(Answer::Result(r)),
        None => Err("neither result, error nor disconnect".into()),
    }
}

fn truncate(s: &mut String, max: usize) {
    if s.len() > max {
        let mut at = max;
        while !s.is_char_boundary(at) {
            at -= 1;
        }
        s.truncate(at);
    }
}

/// What every request says of the connection.
pub(crate) struct Conn<'a> {
    pub client: &'a str,
    pub transport: &'a str,
    pub format: Format,
    /// `None` in the connect request (no user yet).
    pub user: Option<&'a str>,
    pub meta: &'a [u8],
}

/// Starts a request body: the connection's fields, `meta` if the proxy includes it.
pub(crate) fn request(proxy: &Proxy, conn: &Conn<'_>) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("client".into(), conn.client.into());
    m.insert("transport".into(), conn.transport.into());
    let (protocol, encoding) = match conn.format {
        Format::Json => ("json", "json"),
        Format::Protobuf => ("protobuf", "binary"),
    };
    m.insert("protocol".into(), protocol.into());
    m.insert("encoding".into(), if proxy.binary { "binary" } else { encoding }.into());
    if let Some(user) = conn.user {
        m.insert("user".into(), user.into());
    }
    if proxy.include_meta && !conn.meta.is_empty() {
        if let Ok(meta) = serde_json::from_slice::<Value>(conn.meta) {
            m.insert("meta".into(), meta);
        }
    }
    m
}

/// Adds a payload: `data` as JSON, or `b64data` in binary mode or when it is not JSON.
/// Nothing for an empty payload.
pub(crate) fn put_data(proxy: &Proxy, m: &mut Map<String, Value>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    if !proxy.binary {
        if let Ok(v) = serde_json::from_slice::<Value>(data) {
            m.insert("data".into(), v);
            return;
        }
    }
    m.insert("b64data".into(), STANDARD.encode(data).into());
}

/// The body of a request.
pub(crate) fn body(m: Map<String, Value>) -> Vec<u8> {
    serde_json::to_vec(&Value::Object(m)).unwrap_or_default()
}

/// A JSON field's text, or its base64 twin decoded (which wins).
fn payload(raw: Option<Box<RawValue>>, b64: Option<String>, name: &str) -> Result<Option<Bytes>, String> {
    raw_or_base64(raw, b64, name).map_err(|e| e.to_string())
}

fn expiry(expire_at: Option<i64>) -> Option<u64> {
    expire_at.filter(|&t| t > 0).map(|t| t as u64)
}

/// The connect proxy's `result`.
#[derive(Deserialize)]
pub(crate) struct ConnectResult {
    #[serde(default)]
    user: String,
    expire_at: Option<i64>,
    info: Option<Box<RawValue>>,
    b64info: Option<String>,
    data: Option<Box<RawValue>>,
    b64data: Option<String>,
    channels: Option<Vec<String>>,
    subs: Option<BTreeMap<String, SubClaims>>,
    meta: Option<Box<RawValue>>,
}

impl ConnectResult {
    /// What the connection is granted, as a token would grant it, and the data for the
    /// client's connect result.
    pub fn into_grant(self) -> Result<(ConnectToken, Bytes), String> {
        let subs = match self.subs {
            Some(subs) if !subs.is_empty() => subs
                .into_iter()
                .map(|(ch, s)| Ok((ch, s.into_options().map_err(|e| e.to_string())?)))
                .collect::<Result<_, String>>()?,
            _ => self.channels.iter().flatten().map(|c| (c.clone(), SubscribeOptions::default())).collect(),
        };
        let token = ConnectToken {
            user: self.user,
            expire_at: expiry(self.expire_at),
            info: payload(self.info, self.b64info, "b64info")?,
            channels: self.channels.unwrap_or_default(),
            subs,
            meta: self.meta.as_deref().map(raw_bytes),
            ..Default::default()
        };
        Ok((token, payload(self.data, self.b64data, "b64data")?.unwrap_or_default()))
    }
}

/// The refresh and sub_refresh proxies' `result`.
#[derive(Debug, Deserialize)]
pub(crate) struct RefreshResult {
    #[serde(default)]
    pub expired: bool,
    expire_at: Option<i64>,
    info: Option<Box<RawValue>>,
    b64info: Option<String>,
}

impl RefreshResult {
    /// When the connection (or subscription) expires now; `None` for never.
    pub fn expire_at(&self) -> Option<u64> {
        expiry(self.expire_at)
    }

    /// The new info, if the answer has one.
    pub fn info(&mut self) -> Result<Option<Bytes>, String> {
        payload(self.info.take(), self.b64info.take(), "b64info")
    }
}

/// The subscribe proxy's `result`.
#[derive(Debug, Deserialize)]
pub(crate) struct SubscribeResult {
    expire_at: Option<i64>,
    info: Option<Box<RawValue>>,
    b64info: Option<String>,
    data: Option<Box<RawValue>>,
    b64data: Option<String>,
}

/// What a subscribe proxy grants: the channel info, the expiry, data for the client.
pub(crate) struct SubscribeGrant {
    pub info: Bytes,
    pub expire_at: Option<u64>,
    pub data: Bytes,
}

impl SubscribeResult {
    /// The grant.
    pub fn into_grant(self) -> Result<SubscribeGrant, String> {
        Ok(SubscribeGrant {
            info: payload(self.info, self.b64info, "b64info")?.unwrap_or_default(),
            expire_at: expiry(self.expire_at),
            data: payload(self.data, self.b64data, "b64data")?.unwrap_or_default(),
        })
    }
}

/// The publish proxy's `result`.
#[derive(Debug, Deserialize)]
pub(crate) struct PublishResult {
    data: Option<Box<RawValue>>,
    b64data: Option<String>,
    #[serde(default)]
    pub skip_history: bool,
}

impl PublishResult {
    /// The data to publish instead of the client's, if any.
    pub fn data(&mut self) -> Result<Option<Bytes>, String> {
        payload(self.data.take(), self.b64data.take(), "b64data")
    }
}

/// The RPC proxy's `result`.
#[derive(Debug, Deserialize)]
pub(crate) struct RpcResult {
    data: Option<Box<RawValue>>,
    b64data: Option<String>,
}

impl RpcResult {
    /// The answer's data.
    pub fn into_data(self) -> Result<Bytes, String> {
        Ok(payload(self.data, self.b64data, "b64data")?.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proxy(binary: bool, meta: bool) -> Proxy {
        Proxy::new(&ProxyConfig {
            endpoint: "http://127.0.0.1:9/p".into(),
            binary_encoding: binary,
            include_connection_meta: meta,
            http_headers: vec!["Cookie".into()],
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn requests_carry_the_connection_and_the_payload() {
        let p = proxy(false, true);
        let conn =
            Conn { client: "c1", transport: "websocket", format: Format::Json, user: Some("42"), meta: br#"{"a":1}"# };
        let mut m = request(&p, &conn);
        m.insert("channel".into(), "news".into());
        put_data(&p, &mut m, br#"{"text":"hi"}"#);
        let v: Value = serde_json::from_slice(&body(m)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"client":"c1","transport":"websocket","protocol":"json","encoding":"json",
                "user":"42","meta":{"a":1},"channel":"news","data":{"text":"hi"}})
        );
        // Binary mode, or data that is not JSON: base64.
        let p = proxy(true, false);
        let conn = Conn { client: "c", transport: "websocket", format: Format::Protobuf, user: None, meta: b"{}" };
        let mut m = request(&p, &conn);
        put_data(&p, &mut m, b"\x00\xff");
        let v: Value = serde_json::from_slice(&body(m)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"client":"c","transport":"websocket","protocol":"protobuf","encoding":"binary",
                "b64data":"AP8="})
        );
        let p = proxy(false, false);
        let mut m = Map::new();
        put_data(&p, &mut m, b"not json");
        assert_eq!(m["b64data"], "bm90IGpzb24=");
    }

    #[test]
    fn answers_decode_to_a_result_an_error_or_a_disconnect() {
        let a: Answer<ConnectResult> = decode(
            br#"{"result":{"user":"56","expire_at":1900000000,"info":{"n":"ann"},"b64data":"AP8=","channels":["x"]}}"#,
        )
        .unwrap();
        let Answer::Result(r) = a else { panic!() };
        let (t, data) = r.into_grant().unwrap();
        assert_eq!(t.user, "56");
        assert_eq!(t.expire_at, Some(1_900_000_000));
        assert_eq!(t.info.as_deref(), Some(&br#"{"n":"ann"}"#[..]));
        assert_eq!(t.subs.keys().collect::<Vec<_>>(), ["x"]);
        assert_eq!(&data[..], b"\x00\xff");

        let a: Answer<RpcResult> = decode(br#"{"error":{"code":1000,"message":"custom"}}"#).unwrap();
        assert!(
            matches!(a, Answer::Error(ErrorReply { code: 1000, ref message, temporary: false }) if message == "custom")
        );
        let a: Answer<RpcResult> = decode(br#"{"disconnect":{"code":4501,"reason":"go away"}}"#).unwrap();
        assert!(matches!(a, Answer::Disconnect(Disconnect { code: 4501, .. })));

        // `result: {}` grants with defaults; expire_at 0 is never.
        let Answer::Result(r) = decode::<SubscribeResult>(br#"{"result":{"expire_at":0}}"#).unwrap() else { panic!() };
        let g = r.into_grant().unwrap();
        assert!(g.expire_at.is_none() && g.info.is_empty() && g.data.is_empty());

        for bad in [&br#"{}"#[..], b"[1]", b"<html>", br#"{"disconnect":{"code":1000}}"#, br#"{"error":{"code":0}}"#] {
            assert!(decode::<RpcResult>(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        assert!(decode::<PublishResult>(br#"{"result":{"b64data":"%%"}}"#)
            .map(|a| match a {
                Answer::Result(mut r) => r.data().is_err(),
                _ => false,
            })
            .unwrap());
    }

    /// A backend on a raw socket: answers each request by its path (`/ok`, `/500`,
    /// `/silent`), keeps connections alive, and counts the connections it accepted.
    async fn backend() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut r = BufReader::new(tcp);
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let path = line.split(' ').nth(1).unwrap_or("").to_owned();
                        let mut length = 0;
                        loop {
                            let mut h = String::new();
                            r.read_line(&mut h).await.unwrap();
                            if h == "\r\n" {
                                break;
                            }
                            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                                length = v.trim().parse().unwrap();
                            }
                        }
                        let mut body = vec![0; length];
                        r.read_exact(&mut body).await.unwrap();
                        let (status, answer) = match path.as_str() {
                            "/ok" => ("200 OK", r#"{"result":{"data":{"n":1}}}"#),
                            "/500" => ("500 Internal Server Error", r#"{"result":{}}"#),
                            _ => {
                                tokio::time::sleep(Duration::from_secs(5)).await;
                                return;
                            }
                        };
                        let out = format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\n\r\n{answer}", answer.len());
                        r.get_mut().write_all(out.as_bytes()).await.unwrap();
                    }
                });
            }
        });
        (format!("http://{addr}"), accepted)
    }

    fn at(url: String) -> Proxy {
        Proxy::new(&ProxyConfig { endpoint: url, timeout: Duration::from_millis(300), ..Default::default() }).unwrap()
    }

    #[tokio::test]
    async fn requests_reuse_a_kept_alive_connection_and_failures_are_failures() {
        let (base, accepted) = backend().await;
        let ok = at(format!("{base}/ok"));
        for _ in 0..3 {
            let Answer::Result(r) = ok.call::<RpcResult>(b"{}".to_vec(), (&[], &[])).await.unwrap() else { panic!() };
            assert_eq!(&r.into_data().unwrap()[..], br#"{"n":1}"#);
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1, "one connection for three requests");
        let e = at(format!("{base}/500")).call::<RpcResult>(b"{}".to_vec(), (&[], &[])).await.unwrap_err();
        assert!(e.0.contains("500"), "{e}");
        let started = Instant::now();
        let e = at(format!("{base}/silent")).call::<RpcResult>(b"{}".to_vec(), (&[], &[])).await.unwrap_err();
        assert!(e.0.contains("no answer within"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(2));
        // Nothing listens there.
        let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let e = at(format!("http://{dead}/x")).call::<RpcResult>(b"{}".to_vec(), (&[], &[])).await.unwrap_err();
        assert!(e.0.contains("connecting"), "{e}");
    }

    #[test]
    fn rpc_namespaces_choose_the_proxy() {
        let c: RpcConfig = serde_json::from_str(
            r#"{"without_namespace":{"proxy_enabled":true},"namespaces":[{"name":"ns","proxy_enabled":true},{"name":"off"}]}"#,
        )
        .unwrap();
        assert!(c.proxied("getPrice"));
        assert!(c.proxied("ns:getPrice"));
        assert!(!c.proxied("off:getPrice"));
        assert!(!c.proxied("unknown:getPrice"));
    }

    #[test]
    fn only_the_configured_headers_are_kept() {
        let mut config = crate::HubConfig::default();
        config.client.proxy.connect = ProxyConfig {
            enabled: true,
            endpoint: "http://b/c".into(),
            http_headers: vec!["Cookie".into()],
            ..Default::default()
        };
        let p = Proxies::new(&config).unwrap();
        let kept = p.keep_headers(|n| match n {
            "cookie" => Some("sid=1"),
            "authorization" => Some("secret"),
            _ => None,
        });
        assert_eq!(&kept[..], &[(http::header::COOKIE, HeaderValue::from_static("sid=1"))]);
        config.client.proxy.connect.endpoint = "ftp://b".into();
        let e = Proxies::new(&config).err().expect("an ftp endpoint is refused");
        assert!(e.starts_with("client.proxy.connect"), "{e}");
    }
}
