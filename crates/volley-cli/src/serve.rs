//! `volley serve`: the hub (`volley-hub`) as a server, with the chat demo at `/`.
//!
//! The configuration comes from, in order of precedence: flags (`--set key=value`,
//! `--listen`), environment variables (`VOLLEY_` and the key's path in capitals, dots
//! as underscores: `VOLLEY_CLIENT_TOKEN_HMAC_SECRET_KEY`), the file of `--config`
//! (TOML, or JSON by its extension), and the defaults. Without `--config` the defaults
//! are the demo's: anonymous clients may use the `chat` namespace, and nothing else.
//! An unknown key is an error that names it. A server API key that is not set is
//! generated and printed at start.
//!
//! The file may also be a Centrifugo v6 configuration (JSON, YAML or TOML): it is
//! translated into Volley's (the `centrifugo` module), the keys Volley ignores are named
//! in one warning at start, and the environment and flags apply to the result.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use axum::extract::Query;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
#[cfg(not(unix))]
use axum::serve::ListenerExt as _;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use volley_hub::config::{
    duration, ChannelConfig, ChannelOptions, ClientConfig, EmulationConfig, EmulationStreamConfig, HttpApiConfig,
    LongPollEmulationConfig, LongPollingConfig, UniConfig,
};
use volley_hub::{Hub, HubConfig};

use crate::centrifugo::{self, ConfigFormat};

/// Arguments of `volley serve`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The configuration file: Volley's (TOML; JSON if it ends in .json), or Centrifugo
    /// v6's (JSON, YAML or TOML), told apart as --config-format says.
    #[arg(long, short)]
    pub config: Option<PathBuf>,
    /// What the file of --config holds. auto: Centrifugo's if it is YAML or has a key
    /// only Centrifugo v6 has (log, engine, client.queue_max_size, ...), Volley's otherwise.
    #[arg(long, value_enum, default_value_t = ConfigFormat::Auto)]
    pub config_format: ConfigFormat,
    /// Address to listen on (overrides `http_server.address` and `http_server.port`).
    #[arg(long)]
    pub listen: Option<String>,
    /// Sets a configuration key, e.g. `--set client.insecure=true` (repeatable; the
    /// value is JSON if it parses as JSON, a string otherwise).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

/// The whole configuration of `volley serve`.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    /// Where to listen.
    pub http_server: HttpServer,
    /// Connections and what a client may do.
    pub client: ClientConfig,
    /// Channels and namespaces.
    pub channel: ChannelConfig,
    /// The server API.
    pub http_api: HttpApiConfig,
    /// The HTTP-streaming emulation transport (`/connection/http_stream`).
    pub http_stream: EmulationStreamConfig,
    /// The SSE emulation transport (`/connection/sse`).
    pub sse: EmulationStreamConfig,
    /// The long-polling emulation transport (`/connection/long_poll`).
    pub long_poll: LongPollEmulationConfig,
    /// The emulation transports' command endpoint (`/emulation`).
    pub emulation: EmulationConfig,
    /// Unidirectional SSE.
    pub uni_sse: UniConfig,
    /// Unidirectional HTTP stream.
    pub uni_http_stream: UniConfig,
    /// Unidirectional WebSocket.
    pub uni_websocket: UniConfig,
    /// Long polling.
    pub uni_long_polling: LongPollingConfig,
    /// Pusher Channels compatibility: the apps.
    pub pusher: volley_hub::pusher::PusherConfig,
    /// RPC: the proxy that answers clients' calls, and its namespaces.
    pub rpc: volley_hub::proxy::RpcConfig,
    /// The chat demo at `/`.
    pub demo: Demo,
    /// Shutdown.
    pub shutdown: Shutdown,
    /// What the hub's nodes share: in memory (one node) or Redis (several).
    pub broker: BrokerConfig,
}

impl ServeConfig {
    /// What the hub engine takes of it.
    pub fn hub_config(&self) -> HubConfig {
        HubConfig {
            client: self.client.clone(),
            channel: self.channel.clone(),
            http_api: self.http_api.clone(),
            http_stream: self.http_stream.clone(),
            sse: self.sse.clone(),
            long_poll: self.long_poll.clone(),
            emulation: self.emulation.clone(),
            uni_sse: self.uni_sse.clone(),
            uni_http_stream: self.uni_http_stream.clone(),
            uni_websocket: self.uni_websocket.clone(),
            uni_long_polling: self.uni_long_polling.clone(),
            pusher: self.pusher.clone(),
            rpc: self.rpc.clone(),
        }
    }
}

/// Where to listen.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpServer {
    /// The address (an IP, or `localhost`).
    pub address: String,
    /// The port.
    pub port: u16,
    /// TLS: HTTP/1.1 and HTTP/2 by ALPN on the same port.
    pub tls: Tls,
}

impl Default for HttpServer {
    fn default() -> Self {
        HttpServer { address: "127.0.0.1".into(), port: 8000, tls: Tls::default() }
    }
}

/// TLS.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tls {
    /// The certificate chain, PEM (leaf first).
    pub cert_file: String,
    /// Its private key, PEM.
    pub key_file: String,
    /// The certificate chain as Centrifugo's `cert_pem` reads it: PEM text, its base64,
    /// or a file's path (instead of `cert_file`).
    pub cert_pem: String,
    /// The private key the same way (instead of `key_file`).
    pub key_pem: String,
    /// A self-signed certificate for localhost, 127.0.0.1 and ::1, made at start: for
    /// development only.
    pub self_signed: bool,
}

/// The chat demo.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Demo {
    /// Serve the chat at `/` (its namespace `chat` is added if the configuration has
    /// none: anonymous clients may subscribe, publish, read history and presence).
    pub enabled: bool,
}

/// The broker (`[broker]`).
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// `memory`: one node, nothing survives a restart (the default). `redis`: several
    /// nodes share Redis (`broker.redis`).
    #[serde(rename = "type")]
    pub kind: BrokerKind,
    /// The Redis broker.
    pub redis: volley_hub::broker::RedisConfig,
}

/// Which broker.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BrokerKind {
    /// In this process.
    #[default]
    Memory,
    /// Redis: a single instance, several, or a cluster.
    Redis,
}

/// Shutdown.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Shutdown {
    /// Clients are disconnected (3001, "shutdown") over this window, so that they do
    /// not all reconnect at once.
    #[serde(with = "duration")]
    pub disconnect_window: Duration,
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown { disconnect_window: Duration::from_secs(5) }
    }
}

/// How long the shutdown waits for the closing handshakes after the last disconnect.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The demo's namespace.
pub const DEMO_NAMESPACE: &str = "chat";

fn demo_namespace() -> ChannelOptions {
    ChannelOptions {
        name: DEMO_NAMESPACE.into(),
        presence: true,
        join_leave: true,
        force_push_join_leave: true,
        history_size: 100,
        history_ttl: Duration::from_secs(24 * 3600),
        force_recovery: true,
        allow_subscribe_for_anonymous: true,
        allow_subscribe_for_client: true,
        allow_publish_for_subscriber: true,
        allow_history_for_subscriber: true,
        allow_presence_for_subscriber: true,
        ..ChannelOptions::default()
    }
}

/// The configuration as `serve` and `check-config` use it.
#[derive(Debug)]
pub struct Loaded {
    /// The configuration.
    pub config: ServeConfig,
    /// When the file was a Centrifugo configuration: why it was read as one.
    pub centrifugo: Option<String>,
    /// The keys of the Centrifugo configuration Volley ignores, by their dotted paths.
    pub ignored: Vec<String>,
}

/// Reads the file of `--config` into a tree, and translates it when it is Centrifugo's.
fn read_file(path: &std::path::Path, format: ConfigFormat) -> anyhow::Result<(Value, Option<String>, Vec<String>)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let yaml = ext == "yml" || ext == "yaml";
    let tree: Value = if yaml {
        centrifugo::yaml_to_json(&text).with_context(|| path.display().to_string())?
    } else if ext == "json" {
        serde_json::from_str(&text).with_context(|| format!("{}: not valid JSON", path.display()))?
    } else {
        let t: toml::Value = toml::from_str(&text).with_context(|| format!("{}: not valid TOML", path.display()))?;
        serde_json::to_value(t)?
    };
    match centrifugo::detect(format, yaml, &tree).with_context(|| path.display().to_string())? {
        None => Ok((tree, None, Vec::new())),
        Some(why) => {
            let t = centrifugo::translate(&tree).with_context(|| path.display().to_string())?;
            Ok((t.config, Some(why), t.ignored))
        }
    }
}

/// Loads the configuration: defaults, file, environment, flags.
pub fn load(args: &Args) -> anyhow::Result<Loaded> {
    let (mut value, centrifugo, ignored) = match &args.config {
        Some(path) => read_file(path, args.config_format)?,
        None => (
            json!({ "demo": { "enabled": true }, "client": { "allow_anonymous_connect_without_token": true } }),
            None,
            Vec::new(),
        ),
    };
    let paths = key_paths();
    for (name, v) in std::env::vars() {
        let Some(rest) = name.strip_prefix("VOLLEY_") else { continue };
        // Variables of the configuration start with a section's name; others (VOLLEY_LOG)
        // are not configuration.
        if !paths.iter().any(|p| p.len() == 1 && rest.starts_with(&format!("{}_", p[0].to_uppercase()))) {
            continue;
        }
        let Some(path) = paths.iter().find(|p| p.join("_").to_uppercase() == rest) else {
            bail!("environment variable {name}: no configuration key is called that");
        };
        set(&mut value, path, parse_value(&v));
    }
    for s in &args.set {
        let (k, v) = s.split_once('=').with_context(|| format!("--set {s}: KEY=VALUE"))?;
        let path: Vec<String> = k.split('.').map(str::to_owned).collect();
        set(&mut value, &path, parse_value(v));
    }
    if let Some(listen) = &args.listen {
        let addr: SocketAddr =
            listen.parse().with_context(|| format!("--listen {listen}: an address like 127.0.0.1:8000"))?;
        set(&mut value, &["http_server".into(), "address".into()], json!(addr.ip().to_string()));
        set(&mut value, &["http_server".into(), "port".into()], json!(addr.port()));
    }
    let mut config: ServeConfig = serde_json::from_value(value).map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
    if config.demo.enabled && !config.channel.namespaces.iter().any(|n| n.name == DEMO_NAMESPACE) {
        config.channel.namespaces.push(demo_namespace());
    }
    Ok(Loaded { config, centrifugo, ignored })
}

/// Every key's path, from the default configuration (leaves and sections both).
fn key_paths() -> Vec<Vec<String>> {
    fn walk(v: &Value, prefix: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        if let Value::Object(m) = v {
            for (k, v) in m {
                prefix.push(k.clone());
                out.push(prefix.clone());
                walk(v, prefix, out);
                prefix.pop();
            }
        }
    }
    let mut out = Vec::new();
    walk(&serde_json::to_value(ServeConfig::default()).unwrap_or_default(), &mut Vec::new(), &mut out);
    // `client.token` and `client.subscription_token` have the same keys.
    out.sort_by_key(|p| std::cmp::Reverse(p.len()));
    out
}

fn parse_value(v: &str) -> Value {
    serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_owned()))
}

fn set(root: &mut Value, path: &[String], v: Value) {
    let mut cur = root;
    for (i, k) in path.iter().enumerate() {
        if !cur.is_object() {
            *cur = json!({});
        }
        let map = cur.as_object_mut().expect("an object");
        if i + 1 == path.len() {
            map.insert(k.clone(), v);
            return;
        }
        cur = map.entry(k.clone()).or_insert_with(|| json!({}));
    }
}

/// The full default configuration, every key with a comment (`volley default-config`).
pub const DEFAULT_CONFIG: &str = include_str!("default-config.toml");

/// `volley check-config`: loads the configuration as `serve` would and builds the hub
/// from it (which checks the namespaces and the keys) and its TLS configuration, without
/// listening. A Centrifugo configuration's ignored keys are listed.
pub fn check(args: Args) -> anyhow::Result<()> {
    let Loaded { config, centrifugo, ignored } = load(&args)?;
    let hub_config = config.hub_config();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async { Hub::new(hub_config).map(|_| ()) }).map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
    tls_acceptor(&config.http_server.tls)?;
    println!(
        "configuration ok: listens on {}:{}, {} namespace(s){}",
        config.http_server.address,
        config.http_server.port,
        config.channel.namespaces.len(),
        if config.demo.enabled { ", the demo at /" } else { "" }
    );
    if let Some(why) = centrifugo {
        println!("read as a Centrifugo v6 configuration ({why})");
        if ignored.is_empty() {
            println!("every key is supported");
        } else {
            println!("ignored, Volley does not support them ({}):", ignored.len());
            for key in &ignored {
                println!("  {key}");
            }
        }
    }
    Ok(())
}

/// Runs the server until SIGTERM or Ctrl-C.
pub fn run(args: Args) -> anyhow::Result<()> {
    let Loaded { mut config, centrifugo, ignored } = load(&args)?;
    if let Some(why) = centrifugo {
        tracing::info!(reason = %why, "read as a Centrifugo v6 configuration");
        if !ignored.is_empty() {
            tracing::warn!(
                count = ignored.len(),
                "keys of the Centrifugo configuration that Volley does not support and ignores: {}",
                ignored.join(", ")
            );
        }
    }
    if config.http_api.key.is_empty() {
        config.http_api.key = random_key();
        eprintln!("volley serve: http_api.key was not set; this run's key: {}", config.http_api.key);
    }
    if config.demo.enabled && config.client.token.hmac_secret_key.is_none() {
        // The demo signs its users' tokens; a key nobody else knows.
        config.client.token.hmac_secret_key = Some(random_key());
    }
    raise_open_file_limit();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(serve(config))
}

/// Raises the soft open-file limit to the hard one: every client holds a descriptor, and
/// the soft limit a shell or a service manager starts with (often 1,024) would refuse
/// clients long before the hard one does.
fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(limit, "open-file limit (one descriptor per client)"),
        Err(e) => tracing::warn!(error = %e, "could not raise the open-file limit"),
    }
}

fn random_key() -> String {
    let b: [u8; 24] = rand::random();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    let hub_config = config.hub_config();
    let broker: std::sync::Arc<dyn volley_hub::broker::Broker> = match config.broker.kind {
        BrokerKind::Memory => std::sync::Arc::new(volley_hub::broker::MemoryBroker::new()),
        BrokerKind::Redis => {
            let redis = &config.broker.redis;
            let broker = volley_hub::broker::RedisBroker::connect(redis).await.context("broker.redis")?;
            tracing::info!(addresses = ?redis.addresses, cluster = redis.cluster, prefix = %redis.prefix, "broker: redis");
            std::sync::Arc::new(broker)
        }
    };
    let hub = Hub::with_broker(hub_config, broker).map_err(|e| anyhow::anyhow!("configuration: {e}"))?;
    let mut app = volley_hub::router(hub.clone());
    if config.demo.enabled {
        let secret = config.client.token.hmac_secret_key.clone().unwrap_or_default();
        app = app.merge(demo_routes(secret));
    }
    let tls = tls_acceptor(&config.http_server.tls)?;
    let addr = format!("{}:{}", config.http_server.address, config.http_server.port);
    let listener = listen(&addr).await.with_context(|| format!("listening on {addr}"))?;
    let local = listener.local_addr()?;
    println!("listening on {local}");
    tracing::info!(%local, tls = tls.is_some(), demo = config.demo.enabled, "volley serve");
    let shutdown = {
        let hub = hub.clone();
        let window = config.shutdown.disconnect_window;
        async move {
            signal().await;
            tracing::info!(?window, "shutting down: disconnecting clients");
            hub.disconnect_all(volley_hub::protocol::Disconnect::SHUTDOWN, window).await;
            // Drain: the close frames leave before the process does.
            let deadline = tokio::time::Instant::now() + DRAIN_TIMEOUT;
            while hub.num_connections() > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    match tls {
        // The WebSocket endpoint on the socket itself, so that idle clients can be
        // parked; everything else through the router.
        #[cfg(unix)]
        None => volley_hub::transport::tcp::serve(hub.clone(), listener, app, shutdown).await,
        #[cfg(not(unix))]
        None => {
            // As the TLS path: replies and pushes are written when ready, not held by
            // Nagle's algorithm until the client's (delayed) acknowledgement.
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
                .with_graceful_shutdown(shutdown)
                .await?
        }
        Some(acceptor) => serve_tls(listener, acceptor, app, shutdown).await,
    }
    Ok(())
}

/// Connections waiting to be accepted (the kernel caps it at `net.core.somaxconn`).
/// `TcpListener::bind` allows 128: past that, the connects of a burst of clients (a
/// reconnect after a restart) are dropped and retried by their kernels a second later.
const LISTEN_BACKLOG: u32 = 4096;

/// A listener on `addr` (resolved; the first address that binds), with
/// [`LISTEN_BACKLOG`].
async fn listen(addr: &str) -> std::io::Result<tokio::net::TcpListener> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        let socket = if a.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
        socket.set_reuseaddr(true)?;
        match socket.bind(a) {
            Ok(()) => return socket.listen(LISTEN_BACKLOG),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address")))
}

/// How long a TLS handshake may take.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The names a self-signed certificate is valid for.
const SELF_SIGNED_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

fn tls_acceptor(tls: &Tls) -> anyhow::Result<Option<volley::tls::TlsAcceptor>> {
    use volley::tls::rustls::pki_types::pem::PemObject;
    use volley::tls::{CertificateDer, PrivateKeyDer};
    let files = !tls.cert_file.is_empty() || !tls.key_file.is_empty();
    let pems = !tls.cert_pem.is_empty() || !tls.key_pem.is_empty();
    if files && pems {
        bail!("http_server.tls: cert_file and key_file, or cert_pem and key_pem, not both");
    }
    if (files || pems) && tls.self_signed {
        bail!("http_server.tls: self_signed, or a certificate and its key, not both");
    }
    let config = if files {
        if tls.cert_file.is_empty() || tls.key_file.is_empty() {
            bail!("http_server.tls: cert_file and key_file go together");
        }
        volley::tls::server_config_from_pem(&tls.cert_file, &tls.key_file)
            .map_err(|e| anyhow::anyhow!("http_server.tls: {e}"))?
    } else if pems {
        if tls.cert_pem.is_empty() || tls.key_pem.is_empty() {
            bail!("http_server.tls: cert_pem and key_pem go together");
        }
        let cert = load_pem(&tls.cert_pem).context("http_server.tls.cert_pem")?;
        let key = load_pem(&tls.key_pem).context("http_server.tls.key_pem")?;
        let certs = CertificateDer::pem_slice_iter(&cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("http_server.tls.cert_pem: {e}"))?;
        if certs.is_empty() {
            bail!("http_server.tls.cert_pem: no certificate in it");
        }
        let key = PrivateKeyDer::from_pem_slice(&key).map_err(|e| anyhow::anyhow!("http_server.tls.key_pem: {e}"))?;
        volley::tls::server_config(certs, key).map_err(|e| anyhow::anyhow!("http_server.tls: {e}"))?
    } else if tls.self_signed {
        let names: Vec<String> = SELF_SIGNED_NAMES.iter().map(|n| n.to_string()).collect();
        let generated = rcgen::generate_simple_self_signed(names).context("generating a self-signed certificate")?;
        let key = PrivateKeyDer::Pkcs8(generated.signing_key.serialize_der().into());
        let cert: CertificateDer<'static> = generated.cert.der().clone();
        tracing::warn!(names = ?SELF_SIGNED_NAMES, "TLS with a SELF-SIGNED certificate made at start: clients will not trust it unless told to");
        volley::tls::server_config(vec![cert], key).map_err(|e| anyhow::anyhow!("TLS: {e}"))?
    } else {
        return Ok(None);
    };
    Ok(Some(volley::tls::TlsAcceptor::from(volley::http::with_h2_alpn(config))))
}

/// PEM data as Centrifugo reads its `cert_pem` and `key_pem`: PEM text, the base64 of PEM
/// text, or the path of a file that holds PEM text (checked in that order).
fn load_pem(value: &str) -> anyhow::Result<Vec<u8>> {
    use base64::Engine as _;
    const BEGIN: &[u8] = b"-----BEGIN ";
    let has_pem = |b: &[u8]| b.windows(BEGIN.len()).any(|w| w == BEGIN);
    if has_pem(value.as_bytes()) {
        return Ok(value.as_bytes().to_vec());
    }
    if let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(value.trim()) {
        if has_pem(&decoded) {
            return Ok(decoded);
        }
    }
    let bytes = std::fs::read(value)
        .map_err(|e| anyhow::anyhow!("not PEM text, nor its base64, nor a file that can be read ({value}: {e})"))?;
    if !has_pem(&bytes) {
        bail!("{value}: no PEM data in the file");
    }
    Ok(bytes)
}

/// Serves the routes over TLS, HTTP/1.1 or HTTP/2 as each client's ALPN chooses
/// (WebSockets over HTTP/2 with RFC 8441), until `shutdown` completes.
async fn serve_tls(
    listener: tokio::net::TcpListener,
    acceptor: volley::tls::TlsAcceptor,
    app: axum::Router,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let builder = std::sync::Arc::new(volley_hub::transport::http::http_builder());
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => return,
        };
        let (acceptor, app, builder) = (acceptor.clone(), app.clone(), builder.clone());
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
            };
            volley_hub::transport::http::serve_http(tls, peer, app, &builder).await;
        });
    }
}

async fn signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => return ctrl_c.await.unwrap_or(()),
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// The demo: the page, its script, and `/demo/token`, which signs a token for a new
/// random user with the name the page chose as its info.
fn demo_routes(secret: String) -> axum::Router {
    #[derive(Deserialize)]
    struct TokenQuery {
        #[serde(default)]
        name: String,
    }
    axum::Router::new()
        .route("/", get(|| async { ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], DEMO_PAGE) }))
        .route(
            "/demo/client.js",
            get(|| async { ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], DEMO_CLIENT) }),
        )
        .route(
            "/demo/token",
            get(move |Query(q): Query<TokenQuery>| {
                let secret = secret.clone();
                async move {
                    let name: String = q.name.chars().filter(|c| !c.is_control()).take(32).collect();
                    let user = format!("demo-{}", &random_key()[..12]);
                    let token = hs256(
                        &secret,
                        &json!({ "sub": user, "info": { "name": name }, "exp": unix_now() + 24 * 3600 }),
                    );
                    ([(header::CONTENT_TYPE, "application/json")], json!({ "token": token, "user": user }).to_string())
                        .into_response()
                }
            }),
        )
}

fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// An HS256 JWT.
pub(crate) fn hs256(secret: &str, claims: &Value) -> String {
    use base64::Engine as _;
    use hmac::{Hmac, Mac};
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let head = b64.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let body = b64.encode(claims.to_string());
    let signing = format!("{head}.{body}");
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(signing.as_bytes());
    format!("{signing}.{}", b64.encode(mac.finalize().into_bytes()))
}

const DEMO_PAGE: &str = include_str!("../web/index.html");
const DEMO_CLIENT: &str = include_str!("../web/client.js");

#[cfg(test)]
mod tests {
    use super::*;

    fn leaves(v: &Value, prefix: &str, out: &mut Vec<String>) {
        if let Value::Object(m) = v {
            for (k, v) in m {
                let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                if v.is_object() {
                    leaves(v, &path, out);
                } else {
                    out.push(path);
                }
            }
        }
    }

    #[tokio::test]
    async fn the_listener_binds_names_and_addresses_and_says_why_not() {
        let l = listen("localhost:0").await.expect("localhost resolves and binds");
        let addr = l.local_addr().unwrap();
        assert!(addr.ip().is_loopback());
        // The port is taken: the error is the bind's.
        let e = listen(&addr.to_string()).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
        assert!(listen("no-such-host.invalid:80").await.is_err());
    }

    #[test]
    fn tls_reads_cert_pem_and_key_pem_as_pem_text_its_base64_or_a_path() {
        use base64::Engine as _;
        let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let (cert, key) = (generated.cert.pem(), generated.signing_key.serialize_pem());
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let dir = std::env::temp_dir();
        let cert_path = dir.join(format!("volley-serve-unit-{}-cert.pem", std::process::id()));
        let key_path = dir.join(format!("volley-serve-unit-{}-key.pem", std::process::id()));
        std::fs::write(&cert_path, &cert).unwrap();
        std::fs::write(&key_path, &key).unwrap();
        let pem = |cert_pem: String, key_pem: String| Tls { cert_pem, key_pem, ..Tls::default() };
        for tls in [
            pem(cert.clone(), key.clone()),
            pem(b64(&cert), b64(&key)),
            pem(cert_path.display().to_string(), key_path.display().to_string()),
        ] {
            assert!(tls_acceptor(&tls).unwrap().is_some());
        }
        let err = |tls: Tls| match tls_acceptor(&tls) {
            Ok(_) => panic!("accepted"),
            Err(e) => format!("{e:#}"),
        };
        assert!(err(pem(cert.clone(), String::new())).contains("cert_pem and key_pem go together"));
        assert!(err(pem("nothing of the sort".into(), key.clone())).contains("http_server.tls.cert_pem"));
        assert!(err(pem(key.clone(), key.clone())).contains("http_server.tls.cert_pem: no certificate"));
        let both = Tls { cert_file: cert_path.display().to_string(), ..pem(cert.clone(), key.clone()) };
        assert!(err(both).contains("not both"));
        let _ = std::fs::remove_file(cert_path);
        let _ = std::fs::remove_file(key_path);
    }

    #[test]
    fn the_printed_default_configuration_is_the_default_and_names_every_key() {
        let parsed: ServeConfig = toml::from_str(DEFAULT_CONFIG).expect("it parses, with no unknown key");
        assert_eq!(serde_json::to_value(&parsed).unwrap(), serde_json::to_value(ServeConfig::default()).unwrap());
        let mut keys = Vec::new();
        leaves(&serde_json::to_value(ServeConfig::default()).unwrap(), "", &mut keys);
        for key in keys {
            let name = key.rsplit('.').next().unwrap();
            let section = key.rsplit_once('.').map_or("", |(s, _)| s);
            assert!(
                DEFAULT_CONFIG.contains(&format!("\n{name} = "))
                    || DEFAULT_CONFIG.contains(&format!("\n# {name} = "))
                    || DEFAULT_CONFIG.contains(&format!("[{key}]"))
                    || DEFAULT_CONFIG.contains(&format!("# [{key}]")),
                "{key} (in [{section}]) is not in default-config.toml"
            );
        }
    }
}
