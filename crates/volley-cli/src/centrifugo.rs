//! Centrifugo v6 configuration files for `volley serve`: which files are Centrifugo's, and
//! their translation into Volley's configuration tree.
//!
//! A Centrifugo file is read unchanged. Every key Volley supports is translated (renamed,
//! its durations converted); every key it does not support is collected by its full dotted
//! path and reported in one warning, not refused. The keys whose loss would weaken
//! security (a token check, client certificates, a backend's veto over a permission the
//! namespace also grants) are refused with the reason instead.
//!
//! Which keys are reported: a key is ignored silently when ignoring it changes nothing,
//! that is when its value is Centrifugo's "off" (`false`, `0`, `""`, `[]`, `{}`, `null`), when
//! it sits in an object whose `enabled` is `false` (but `prometheus` and `health`, which
//! Volley serves anyway), or when it names what Volley does anyway (`engine.type =
//! "memory"`, `websocket.handler_prefix = "/connection/websocket"`, ...). Every other key
//! Volley does not support is reported.
//!
//! Which files are Centrifugo's ([`detect`]): YAML files (`.yml`, `.yaml`: Volley's own
//! configuration is TOML or JSON), and TOML or JSON files that hold a key Centrifugo v6 has
//! and Volley's configuration does not ([`centrifugo_marker`]). `--config-format` overrides.

use std::time::Duration;

use anyhow::bail;
use serde_json::{json, Map, Number, Value};
use volley_hub::config::duration;

/// Which configuration a `--config` file holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ConfigFormat {
    /// Centrifugo's if it is YAML or has a key only Centrifugo v6 has; Volley's otherwise.
    #[default]
    Auto,
    /// Volley's own configuration (TOML, or JSON if it ends in `.json`).
    Volley,
    /// A Centrifugo v6 configuration (JSON, YAML or TOML by its extension).
    Centrifugo,
}

/// A Centrifugo configuration translated into Volley's.
#[derive(Debug)]
pub struct Translation {
    /// Volley's configuration tree, as `ServeConfig` reads it.
    pub config: Value,
    /// The keys Volley does not support, by their full dotted path, sorted. A namespace's
    /// keys are named `channel.namespaces[NAME].key`.
    pub ignored: Vec<String>,
}

/// Centrifugo's default of `client.recovery_max_publication_limit`.
const RECOVERY_MAX_PUBLICATION_LIMIT: u64 = 300;

/// The address Centrifugo binds when `http_server.address` is empty: every interface.
const ALL_INTERFACES: &str = "0.0.0.0";

/// The sections of Volley's configuration (the top-level keys of `ServeConfig`).
const VOLLEY_SECTIONS: [&str; 17] = [
    "http_server",
    "client",
    "channel",
    "http_api",
    "http_stream",
    "sse",
    "long_poll",
    "emulation",
    "uni_sse",
    "uni_http_stream",
    "uni_websocket",
    "uni_long_polling",
    "pusher",
    "rpc",
    "demo",
    "shutdown",
    "broker",
];

/// The top-level sections of a Centrifugo v6 configuration that Volley's has not.
const CENTRIFUGO_SECTIONS: &[&str] = &[
    "log",
    "engine",
    "presence_manager",
    "map_broker",
    "controller",
    "shared_poll",
    "proxies",
    "grpc_api",
    "consumers",
    "websocket",
    "webtransport",
    "uni_grpc",
    "admin",
    "prometheus",
    "health",
    "swagger",
    "debug",
    "dev",
    "init",
    "opentelemetry",
    "graphite",
    "usage_stats",
    "node",
    "pid_file",
    "enable_unreleased_features",
];

/// Keys of the sections both configurations have that only Centrifugo v6 has (`[]` stands
/// for any element of a list).
const CENTRIFUGO_KEYS: &[&str] = &[
    // Both have `broker.type` and `broker.redis.prefix`; these are Centrifugo's alone.
    "broker.enabled",
    "broker.nats",
    "broker.redisnats",
    "broker.postgres",
    "broker.redis.address",
    "broker.redis.cluster_address",
    "broker.redis.sentinel_address",
    "broker.redis.sentinel_master_name",
    "broker.redis.user",
    "broker.redis.db",
    "broker.redis.tls",
    "broker.redis.io_timeout",
    "broker.redis.force_resp2",
    "http_stream.handler_prefix",
    "sse.handler_prefix",
    "emulation.handler_prefix",
    "http_server.internal_address",
    "http_server.internal_port",
    "http_server.tls.enabled",
    "http_server.tls.client_ca_pem",
    "http_server.tls.server_ca_pem",
    "http_server.tls.insecure_skip_verify",
    "http_server.tls.server_name",
    "http_server.tls_autocert",
    "http_server.tls_external",
    "http_server.internal_tls",
    "http_server.http3",
    "http_server.h2c_external",
    "client.disallow_anonymous_connection_tokens",
    "client.queue_max_size",
    "client.presence_update_interval",
    "client.concurrency",
    "client.channel_position_check_delay",
    "client.channel_position_max_time_lag",
    "client.connection_rate_limit",
    "client.connect_include_server_time",
    "client.history_max_publication_limit",
    "client.recovery_max_publication_limit",
    "client.insecure_skip_token_signature_verify",
    "client.user_id_http_header",
    "client.subscribe_to_user_personal_channel",
    "client.connect_code_to_unidirectional_disconnect",
    "client.token.audience_regex",
    "client.token.issuer_regex",
    "client.token.insecure_skip_jwks_endpoint_safety_check",
    "client.subscription_token.enabled",
    "client.subscription_token.audience_regex",
    "client.subscription_token.issuer_regex",
    "client.subscription_token.insecure_skip_jwks_endpoint_safety_check",
    "channel.proxy.subscribe_stream",
    "channel.proxy.state",
    "channel.proxy.cache_empty",
    "rpc.without_namespace.proxy_name",
    "rpc.namespaces[].proxy_name",
    "channel.history_meta_ttl",
    "http_api.disabled",
    "http_api.handler_prefix",
    "http_api.external",
    "http_api.insecure",
    "shutdown.timeout",
    "client.proxy.connect.grpc_metadata",
    "client.proxy.connect.grpc",
    "client.proxy.connect.http.status_to_code_transforms",
    "client.proxy.refresh.grpc_metadata",
    "client.proxy.refresh.grpc",
    "client.proxy.refresh.http.status_to_code_transforms",
    "channel.proxy.subscribe.grpc_metadata",
    "channel.proxy.subscribe.grpc",
    "channel.proxy.subscribe.http.status_to_code_transforms",
    "channel.proxy.publish.grpc_metadata",
    "channel.proxy.publish.grpc",
    "channel.proxy.publish.http.status_to_code_transforms",
    "channel.proxy.sub_refresh.grpc_metadata",
    "channel.proxy.sub_refresh.grpc",
    "channel.proxy.sub_refresh.http.status_to_code_transforms",
    "rpc.proxy.grpc_metadata",
    "rpc.proxy.grpc",
    "rpc.proxy.http.status_to_code_transforms",
];

/// Keys of a Centrifugo v6 namespace (and of `channel.without_namespace`) that Volley's
/// namespaces have not.
const CENTRIFUGO_NAMESPACE_KEYS: &[&str] = &[
    "delta_publish",
    "subscribe_proxy_name",
    "publish_proxy_name",
    "sub_refresh_proxy_name",
    "subscribe_stream_proxy_enabled",
    "subscribe_stream_proxy_name",
    "subscribe_stream_proxy_bidirectional",
    "auto_cache_recovery",
    "map_clients_presence_channel_prefix",
    "map_users_presence_channel_prefix",
    "publication_data_format",
    "subscription_type",
    "map",
    "shared_poll",
];

/// Top-level keys of Centrifugo v5's flat configuration (v6 moved each into a section).
const CENTRIFUGO_V5_KEYS: &[&str] = &[
    "token_hmac_secret_key",
    "token_rsa_public_key",
    "token_ecdsa_public_key",
    "token_jwks_public_endpoint",
    "api_key",
    "api_insecure",
    "admin_password",
    "admin_secret",
    "allowed_origins",
    "namespaces",
    "allow_anonymous_connect_without_token",
    "allow_subscribe_for_client",
    "allow_publish_for_subscriber",
    "presence",
    "history_size",
    "history_ttl",
    "force_recovery",
    "redis_address",
    "log_level",
    "tls_cert",
    "tls_key",
    "proxy_connect_endpoint",
];

/// How a `--config` file is read, decided from its extension, its tree and the flag.
/// Returns `Some(reason)` when it is Centrifugo's (the reason names why), `None` when it is
/// Volley's.
pub fn detect(format: ConfigFormat, yaml: bool, tree: &Value) -> anyhow::Result<Option<String>> {
    match format {
        ConfigFormat::Centrifugo => Ok(Some("--config-format centrifugo".into())),
        ConfigFormat::Volley if yaml => {
            bail!("Volley's own configuration is TOML or JSON; a YAML file is read as Centrifugo's")
        }
        ConfigFormat::Volley => Ok(None),
        ConfigFormat::Auto if yaml => Ok(Some("a YAML file".into())),
        ConfigFormat::Auto => Ok(centrifugo_marker(tree).map(|k| format!("the key `{k}`, which only Centrifugo has"))),
    }
}

/// The first key (a dotted path, `[]` for list elements) of `tree` that Centrifugo's
/// configuration has and Volley's has not, if any (a v5 key too, so that it is named as such).
pub fn centrifugo_marker(tree: &Value) -> Option<String> {
    let root = tree.as_object()?;
    for (section, v) in root {
        if CENTRIFUGO_SECTIONS.contains(&section.as_str()) || CENTRIFUGO_V5_KEYS.contains(&section.as_str()) {
            return Some(section.clone());
        }
        if !VOLLEY_SECTIONS.contains(&section.as_str()) {
            continue;
        }
        let mut paths = Vec::new();
        key_patterns(v, section, &mut paths);
        for p in paths {
            let namespace_key = p
                .strip_prefix("channel.without_namespace.")
                .or_else(|| p.strip_prefix("channel.namespaces[]."))
                .is_some_and(|k| CENTRIFUGO_NAMESPACE_KEYS.contains(&k.split('.').next().unwrap_or(k)));
            if namespace_key || CENTRIFUGO_KEYS.iter().any(|k| p == *k || p.starts_with(&format!("{k}."))) {
                return Some(p);
            }
        }
    }
    None
}

/// Every key path under `v`, with `[]` for the elements of lists.
fn key_patterns(v: &Value, prefix: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                let p = format!("{prefix}.{k}");
                out.push(p.clone());
                key_patterns(v, &p, out);
            }
        }
        Value::Array(a) => {
            for e in a {
                key_patterns(e, &format!("{prefix}[]"), out);
            }
        }
        _ => {}
    }
}

/// Translates a Centrifugo v6 configuration tree into Volley's. Keys Volley does not
/// support are listed in [`Translation::ignored`]; a key it cannot ignore safely, or a value
/// of the wrong type, is an error (all of them at once, each by its path).
pub fn translate(tree: &Value) -> anyhow::Result<Translation> {
    let Value::Object(root) = tree else { bail!("a Centrifugo configuration is an object of sections") };
    if let Some(k) = root.keys().find(|k| CENTRIFUGO_V5_KEYS.contains(&k.as_str())) {
        bail!(
            "`{k}` is a Centrifugo v5 key: Volley reads Centrifugo v6 configurations (Centrifugo's \
             v6 migration guide has a converter)"
        );
    }
    if root.get("engine").is_some_and(Value::is_string) {
        bail!("`engine` as a string is Centrifugo v5's: Volley reads Centrifugo v6 configurations (`engine.type`)");
    }
    let mut cx = Cx::default();
    let mut out = json!({});
    let mut root = Section { path: String::new(), map: root.clone() };

    match root.section(&mut cx, "http_server") {
        Some(s) => http_server(&mut cx, s, &mut out),
        None => put(&mut out, "http_server.address", json!(ALL_INTERFACES)),
    }
    let recovery_limit = match root.section(&mut cx, "client") {
        Some(s) => client(&mut cx, s, &mut out),
        None => RECOVERY_MAX_PUBLICATION_LIMIT,
    };
    let channel_section = root.section(&mut cx, "channel").unwrap_or_else(|| Section::empty("channel"));
    channel(&mut cx, channel_section, &mut out, recovery_limit);
    if let Some(s) = root.section(&mut cx, "http_api") {
        http_api(&mut cx, s, &mut out);
    }
    if let Some(s) = root.section(&mut cx, "rpc") {
        rpc(&mut cx, s, &mut out);
    }
    if let Some(s) = root.section(&mut cx, "websocket") {
        websocket(&mut cx, s, &mut out);
    }
    for name in ["http_stream", "sse"] {
        match root.section(&mut cx, name) {
            Some(s) => emulation_stream(&mut cx, s, &mut out, name),
            // Off in Centrifugo unless enabled: the translated server serves the same.
            None => put(&mut out, &format!("{name}.enabled"), json!(false)),
        }
    }
    // Centrifugo has no long-polling emulation: the translated server serves none.
    put(&mut out, "long_poll.enabled", json!(false));
    if let Some(s) = root.section(&mut cx, "emulation") {
        emulation(&mut cx, s, &mut out);
    }
    for name in ["uni_sse", "uni_http_stream", "uni_websocket"] {
        if let Some(s) = root.section(&mut cx, name) {
            uni(&mut cx, s, name, &mut out);
        }
    }
    if let Some(s) = root.section(&mut cx, "engine") {
        engine(&mut cx, s, &mut out);
    }
    for name in ["broker", "presence_manager"] {
        if let Some(s) = root.section(&mut cx, name) {
            broker(&mut cx, s, &mut out);
        }
    }
    for (name, prefix) in [("prometheus", "/metrics"), ("health", "/health")] {
        if let Some(s) = root.section(&mut cx, name) {
            endpoint(&mut cx, s, prefix);
        }
    }
    if let Some(mut s) = root.section(&mut cx, "log") {
        if let Some(level) = s.string(&mut cx, "level") {
            if level != "info" {
                cx.report(s.key("level"));
            }
        }
        s.finish(&mut cx);
    }
    root.finish(&mut cx);

    if !cx.errors.is_empty() {
        bail!("the Centrifugo configuration cannot be used as it is:\n  {}", cx.errors.join("\n  "));
    }
    cx.ignored.sort();
    cx.ignored.dedup();
    Ok(Translation { config: out, ignored: cx.ignored })
}

/// What a translation collects as it goes.
#[derive(Default)]
struct Cx {
    ignored: Vec<String>,
    errors: Vec<String>,
}

impl Cx {
    fn report(&mut self, path: String) {
        self.ignored.push(path);
    }

    fn error(&mut self, path: &str, reason: impl std::fmt::Display) {
        self.errors.push(format!("{path}: {reason}"));
    }

    /// Reports the keys of `v` (at `path`) that are not off.
    fn ignore(&mut self, path: &str, v: &Value) {
        not_off(path, v, &mut self.ignored);
    }
}

/// The leaves under `v` that are not "off": not `false`, `0`, `""`, `[]`, `{}` or `null`,
/// and not in an object whose `enabled` is `false`. A list counts as one leaf.
fn not_off(path: &str, v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Null | Value::Bool(false) => {}
        Value::String(s) if s.is_empty() => {}
        Value::Number(n) if n.as_f64() == Some(0.0) => {}
        Value::Array(a) => {
            let mut inner = Vec::new();
            for e in a {
                not_off(path, e, &mut inner);
            }
            if !inner.is_empty() {
                out.push(path.to_owned());
            }
        }
        Value::Object(m) => {
            if m.get("enabled") == Some(&Value::Bool(false)) {
                return;
            }
            for (k, v) in m {
                not_off(&join(path, k), v, out);
            }
        }
        _ => out.push(path.to_owned()),
    }
}

fn is_off(v: &Value) -> bool {
    let mut out = Vec::new();
    not_off("", v, &mut out);
    out.is_empty()
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

/// Sets `path` (dotted) in `root`, creating the objects on the way.
fn put(root: &mut Value, path: &str, v: Value) {
    let mut cur = root;
    let mut parts = path.split('.').peekable();
    while let Some(k) = parts.next() {
        if !cur.is_object() {
            *cur = json!({});
        }
        let map = cur.as_object_mut().expect("an object");
        if parts.peek().is_none() {
            map.insert(k.to_owned(), v);
            return;
        }
        cur = map.entry(k.to_owned()).or_insert_with(|| json!({}));
    }
}

/// One object of the Centrifugo tree whose keys are taken as they are translated; what is
/// left at the end is ignored (and reported unless off).
struct Section {
    path: String,
    map: Map<String, Value>,
}

impl Section {
    fn empty(path: &str) -> Self {
        Section { path: path.to_owned(), map: Map::new() }
    }

    fn key(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// Takes a key; `null` counts as absent.
    fn take(&mut self, key: &str) -> Option<Value> {
        self.map.remove(key).filter(|v| !v.is_null())
    }

    /// Takes a key that must be an object.
    fn section(&mut self, cx: &mut Cx, key: &str) -> Option<Section> {
        let path = self.key(key);
        match self.take(key)? {
            Value::Object(map) => Some(Section { path, map }),
            other => {
                cx.error(&path, format!("expected an object, found {}", kind(&other)));
                None
            }
        }
    }

    fn bool(&mut self, cx: &mut Cx, key: &str) -> Option<bool> {
        match self.take(key)? {
            Value::Bool(b) => Some(b),
            Value::String(s) if s == "true" || s == "false" => Some(s == "true"),
            other => {
                cx.error(&self.key(key), format!("expected true or false, found {}", kind(&other)));
                None
            }
        }
    }

    fn uint(&mut self, cx: &mut Cx, key: &str) -> Option<u64> {
        let v = self.take(key)?;
        let n = match &v {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        };
        if n.is_none() {
            cx.error(&self.key(key), format!("expected a whole number of at least 0, found {}", kind(&v)));
        }
        n
    }

    fn string(&mut self, cx: &mut Cx, key: &str) -> Option<String> {
        match self.take(key)? {
            Value::String(s) => Some(s),
            other => {
                cx.error(&self.key(key), format!("expected a string, found {}", kind(&other)));
                None
            }
        }
    }

    fn strings(&mut self, cx: &mut Cx, key: &str) -> Option<Vec<String>> {
        let path = self.key(key);
        match self.take(key)? {
            Value::Array(a) => {
                let mut out = Vec::with_capacity(a.len());
                for e in a {
                    match e {
                        Value::String(s) => out.push(s),
                        other => {
                            cx.error(&path, format!("expected a list of strings, found {} in it", kind(&other)));
                            return None;
                        }
                    }
                }
                Some(out)
            }
            // Centrifugo reads a list from a space-separated string too (environment style).
            Value::String(s) => Some(s.split_whitespace().map(str::to_owned).collect()),
            other => {
                cx.error(&path, format!("expected a list of strings, found {}", kind(&other)));
                None
            }
        }
    }

    /// A duration as Centrifugo reads it: a Go duration string (`"25s"`, `"1h30m"`,
    /// `"-1s"`), in nanoseconds. A bare number is nanoseconds to Centrifugo, which is never
    /// what was meant: refused unless 0.
    fn duration(&mut self, cx: &mut Cx, key: &str) -> Option<i128> {
        let path = self.key(key);
        match self.take(key)? {
            Value::String(s) => match parse_go_duration(&s) {
                Ok(n) => Some(n),
                Err(e) => {
                    cx.error(&path, e);
                    None
                }
            },
            Value::Number(n) if n.as_f64() == Some(0.0) => Some(0),
            Value::Number(n) if n.as_i64() == Some(-1) => Some(-1),
            Value::Number(n) => {
                cx.error(
                    &path,
                    format!(
                        "{n} is {n} nanoseconds to Centrifugo; write the duration with its unit (\"{n}s\", \"{n}ms\")"
                    ),
                );
                None
            }
            other => {
                cx.error(&path, format!("expected a duration such as \"25s\", found {}", kind(&other)));
                None
            }
        }
    }

    /// A duration that must not be negative, as Volley writes it.
    fn volley_duration(&mut self, cx: &mut Cx, key: &str) -> Option<Value> {
        let n = self.duration(cx, key)?;
        if n < 0 {
            cx.error(&self.key(key), "a negative duration");
            return None;
        }
        Some(volley_duration(n))
    }

    /// Reports every key left, unless off.
    fn finish(self, cx: &mut Cx) {
        for (k, v) in &self.map {
            cx.ignore(&join(&self.path, k), v);
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// A duration in nanoseconds as Volley's configuration reads it: `"25s"` and the like when
/// it is whole milliseconds, a number of seconds otherwise.
fn volley_duration(nanos: i128) -> Value {
    let nanos = u64::try_from(nanos.max(0)).unwrap_or(u64::MAX);
    if nanos.is_multiple_of(1_000_000) {
        json!(duration::format(Duration::from_nanos(nanos)))
    } else {
        Number::from_f64(nanos as f64 / 1e9).map_or(Value::Null, Value::Number)
    }
}

/// Go's `time.ParseDuration`: an optional sign, then numbers (with an optional fraction)
/// each followed by a unit: `ns`, `us` (or `µs`), `ms`, `s`, `m`, `h`. `"0"` needs no unit.
/// Returns nanoseconds.
pub fn parse_go_duration(text: &str) -> Result<i128, String> {
    let bad = |why: &str| format!("not a duration: {text:?} ({why}; e.g. \"25s\", \"500ms\", \"1h30m\")");
    let mut s = text.trim();
    let negative = match s.as_bytes().first() {
        Some(b'-') => {
            s = &s[1..];
            true
        }
        Some(b'+') => {
            s = &s[1..];
            false
        }
        _ => false,
    };
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(bad("empty"));
    }
    let mut total = 0f64;
    while !s.is_empty() {
        let num_end = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
        let (num, rest) = s.split_at(num_end);
        if num.is_empty() || num == "." {
            return Err(bad("a number is missing"));
        }
        let n: f64 = num.parse().map_err(|_| bad("not a number"))?;
        let unit_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let (unit, rest) = rest.split_at(unit_end);
        let scale = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => return Err(bad("a unit is missing")),
            _ => return Err(bad("unknown unit")),
        };
        total += n * scale;
        s = rest;
    }
    // Go's durations are int64 nanoseconds (about 292 years).
    if !total.is_finite() || total > i64::MAX as f64 {
        return Err(bad("too long"));
    }
    let n = total.round() as i128;
    Ok(if negative { -n } else { n })
}

/// `http_server`: the address, the port and TLS. Centrifugo's `cert_pem` and `key_pem` (PEM
/// text, its base64, or a file's path) are copied: Volley's keys of those names read them
/// the same way.
fn http_server(cx: &mut Cx, mut s: Section, out: &mut Value) {
    let address = s.string(cx, "address").filter(|a| !a.is_empty()).unwrap_or_else(|| ALL_INTERFACES.into());
    put(out, "http_server.address", json!(address));
    if let Some(port) = s.uint(cx, "port") {
        match u16::try_from(port) {
            Ok(p) => put(out, "http_server.port", json!(p)),
            Err(_) => cx.error(&s.key("port"), "not a port (0 to 65535)"),
        }
    }
    if let Some(mut tls) = s.section(cx, "tls") {
        let enabled = tls.bool(cx, "enabled").unwrap_or(false);
        let cert = tls.string(cx, "cert_pem").filter(|v| !v.is_empty());
        let key = tls.string(cx, "key_pem").filter(|v| !v.is_empty());
        let client_ca = tls.take("client_ca_pem").filter(|v| !is_off(v));
        // Settings of TLS clients: a server's TLS has no use for them.
        let client_side: Vec<(String, Value)> = ["server_ca_pem", "insecure_skip_verify", "server_name"]
            .iter()
            .filter_map(|k| tls.take(k).map(|v| (tls.key(k), v)))
            .collect();
        // An unknown key in the TLS section may be a certificate Volley would not use: it
        // would then serve plain HTTP where TLS was meant.
        for (k, v) in std::mem::take(&mut tls.map) {
            if !is_off(&v) {
                cx.error(&tls.key(&k), "not a key of Centrifugo v6's TLS section; refused rather than ignored");
            }
        }
        if enabled {
            match (cert, key) {
                (Some(cert), Some(key)) => {
                    put(out, "http_server.tls.cert_pem", json!(cert));
                    put(out, "http_server.tls.key_pem", json!(key));
                }
                _ => cx.error(&tls.path, "enabled needs cert_pem and key_pem"),
            }
            if client_ca.is_some() {
                cx.error(
                    &tls.key("client_ca_pem"),
                    "Volley does not verify client certificates: refused rather than accepting every client",
                );
            }
            for (path, v) in client_side {
                cx.ignore(&path, &v);
            }
        }
    }
    if let Some(mut autocert) = s.section(cx, "tls_autocert") {
        if autocert.bool(cx, "enabled") == Some(true) {
            cx.error(
                &autocert.key("enabled"),
                "Volley does not get certificates by ACME: refused rather than serving plain HTTP \
                 (give http_server.tls a certificate instead)",
            );
        }
        // Without `enabled`, the rest is unused by Centrifugo too.
    }
    s.finish(cx);
}

/// `client`; returns the recovery limit to give every namespace.
fn client(cx: &mut Cx, mut s: Section, out: &mut Value) -> u64 {
    if let Some(t) = s.section(cx, "token") {
        token(cx, t, out, "client.token");
    }
    if let Some(mut st) = s.section(cx, "subscription_token") {
        // Without `enabled`, Centrifugo verifies subscription tokens with `client.token`
        // and does not read this section: neither does Volley.
        if st.bool(cx, "enabled") == Some(true) {
            put(out, "client.subscription_token", json!({}));
            token(cx, st, out, "client.subscription_token");
        }
    }
    let anonymous = s.bool(cx, "allow_anonymous_connect_without_token");
    if let Some(b) = anonymous {
        put(out, "client.allow_anonymous_connect_without_token", json!(b));
    }
    if let Some(b) = s.bool(cx, "insecure") {
        put(out, "client.insecure", json!(b));
    }
    if s.bool(cx, "disallow_anonymous_connection_tokens") == Some(true) {
        cx.error(
            &s.key("disallow_anonymous_connection_tokens"),
            "Volley accepts connection tokens with an empty `sub` (anonymous users): refused rather than ignored",
        );
    }
    if let Some(origins) = s.strings(cx, "allowed_origins") {
        put(out, "client.allowed_origins", json!(origins));
    }
    // A negative interval turns pings off in Centrifugo; 0 does in Volley.
    if let Some(n) = s.duration(cx, "ping_interval") {
        put(out, "client.ping_interval", volley_duration(n.max(0)));
    }
    // A negative timeout turns pong checks off in Centrifugo; Volley always checks.
    let pong_path = s.key("pong_timeout");
    match s.duration(cx, "pong_timeout") {
        Some(n) if n < 0 => cx.report(pong_path),
        Some(n) => put(out, "client.pong_timeout", volley_duration(n)),
        None => {}
    }
    for key in ["stale_close_delay", "expired_close_delay", "expired_sub_close_delay"] {
        if let Some(v) = s.volley_duration(cx, key) {
            put(out, &format!("client.{key}"), v);
        }
    }
    for key in ["channel_limit", "user_connection_limit"] {
        if let Some(n) = s.uint(cx, key) {
            put(out, &format!("client.{key}"), json!(n));
        }
    }
    // 0 is no limit to Centrifugo; Volley keeps its own (1,000,000 connections).
    if let Some(n) = s.uint(cx, "connection_limit").filter(|n| *n > 0) {
        put(out, "client.connection_limit", json!(n));
    }
    if let Some(n) = s.uint(cx, "queue_max_size") {
        put(out, "client.queue_max_bytes", json!(n));
    }
    let recovery_limit = s.uint(cx, "recovery_max_publication_limit").unwrap_or(RECOVERY_MAX_PUBLICATION_LIMIT);
    if let Some(mut personal) = s.section(cx, "subscribe_to_user_personal_channel") {
        if let Some(b) = personal.bool(cx, "enabled") {
            put(out, "client.user_subscribe_to_personal", json!(b));
        }
        if let Some(ns) = personal.string(cx, "personal_channel_namespace") {
            put(out, "client.user_personal_channel_namespace", json!(ns));
        }
        personal.finish(cx);
    }
    if let Some(mut p) = s.section(cx, "proxy") {
        for name in ["connect", "refresh"] {
            if let Some(section) = p.section(cx, name) {
                proxy(cx, section, out, &format!("client.proxy.{name}"));
            }
        }
        p.finish(cx);
    }
    s.finish(cx);
    recovery_limit
}

/// A proxy object: what Volley's proxies read of it, put at `to`. A GRPC endpoint is
/// refused: the proxy guards what clients may do, and Volley's speak HTTP only.
fn proxy(cx: &mut Cx, mut s: Section, out: &mut Value, to: &str) {
    let mut o = Map::new();
    for key in ["enabled", "include_connection_meta", "binary_encoding"] {
        if let Some(b) = s.bool(cx, key) {
            o.insert(key.into(), json!(b));
        }
    }
    if let Some(e) = s.string(cx, "endpoint") {
        if e.starts_with("grpc://") {
            cx.error(&s.key("endpoint"), "a GRPC proxy: Volley's proxies speak HTTP only: refused rather than ignored");
        }
        o.insert("endpoint".into(), json!(e));
    }
    if let Some(t) = s.volley_duration(cx, "timeout") {
        o.insert("timeout".into(), t);
    }
    for key in ["http_headers", "emulated_headers"] {
        if let Some(h) = s.strings(cx, key) {
            o.insert(key.into(), json!(h));
        }
    }
    if let Some(mut h) = s.section(cx, "http") {
        match h.take("static_headers") {
            Some(v @ Value::Object(_)) => {
                o.insert("http".into(), json!({ "static_headers": v }));
            }
            Some(other) => cx.error(&h.key("static_headers"), format!("expected an object, found {}", kind(&other))),
            None => {}
        }
        h.finish(cx);
    }
    s.finish(cx);
    put(out, to, Value::Object(o));
}

/// `rpc`: the RPC proxy and the RPC namespaces that use it.
fn rpc(cx: &mut Cx, mut s: Section, out: &mut Value) {
    if let Some(p) = s.section(cx, "proxy") {
        proxy(cx, p, out, "rpc.proxy");
    }
    if let Some(w) = s.section(cx, "without_namespace") {
        put(out, "rpc.without_namespace", rpc_namespace(cx, w));
    }
    if let Some(v) = s.take("namespaces") {
        if let Some(list) = named_list(cx, v, "rpc.namespaces", "an RPC namespace needs a name", rpc_namespace) {
            put(out, "rpc.namespaces", list);
        }
    }
    if let Some(b) = s.string(cx, "namespace_boundary") {
        put(out, "rpc.namespace_boundary", json!(b));
    }
    s.finish(cx);
}

/// Translates a list of named sections (`channel.namespaces`, `rpc.namespaces`): each
/// an object with a name, translated by `each`, its name put back; `None` (and an
/// error) when it is not a list.
fn named_list(
    cx: &mut Cx,
    v: Value,
    key: &str,
    nameless: &str,
    mut each: impl FnMut(&mut Cx, Section) -> Value,
) -> Option<Value> {
    let Value::Array(list) = v else {
        cx.error(key, format!("expected a list, found {}", kind(&v)));
        return None;
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, item) in list.into_iter().enumerate() {
        let Value::Object(map) = item else {
            cx.error(&format!("{key}[{i}]"), "expected an object");
            continue;
        };
        let label = map.get("name").and_then(Value::as_str).filter(|n| !n.is_empty());
        let path = match label {
            Some(n) => format!("{key}[{n}]"),
            None => format!("{key}[{i}]"),
        };
        let mut section = Section { path, map };
        let Some(name) = section.string(cx, "name").filter(|n| !n.is_empty()) else {
            cx.error(&section.path, nameless);
            continue;
        };
        let mut o = each(cx, section);
        if let Value::Object(m) = &mut o {
            m.insert("name".into(), json!(name));
        }
        out.push(o);
    }
    Some(Value::Array(out))
}

fn rpc_namespace(cx: &mut Cx, mut s: Section) -> Value {
    let enabled = s.bool(cx, "proxy_enabled").unwrap_or(false);
    named_proxy(cx, &mut s, "proxy_name", enabled, "rpc.proxy");
    s.finish(cx);
    json!({ "proxy_enabled": enabled })
}

/// A named proxy (from `proxies`) where the switch is on: refused, as Volley would ask the
/// default proxy (`default`) instead.
fn named_proxy(cx: &mut Cx, s: &mut Section, key: &str, enabled: bool, default: &str) {
    let path = s.key(key);
    let name = s.string(cx, key).unwrap_or_default();
    if enabled && !name.is_empty() && name != "default" {
        cx.error(
            &path,
            format!("named proxies (`proxies`) are not supported: Volley would ask `{default}` instead: refused rather than ignored"),
        );
    }
}

/// The keys of a token section Volley reads as they are (strings).
const TOKEN_STRINGS: [&str; 8] = [
    "hmac_secret_key",
    "hmac_previous_secret_key",
    "rsa_public_key",
    "ecdsa_public_key",
    "jwks_public_endpoint",
    "audience",
    "issuer",
    "user_id_claim",
];

fn token(cx: &mut Cx, mut t: Section, out: &mut Value, to: &str) {
    for key in TOKEN_STRINGS {
        if let Some(v) = t.string(cx, key).filter(|v| !v.is_empty()) {
            put(out, &format!("{to}.{key}"), json!(v));
        }
    }
    if let Some(n) = t.uint(cx, "hmac_previous_secret_key_valid_until").filter(|n| *n > 0) {
        put(out, &format!("{to}.hmac_previous_secret_key_valid_until"), json!(n));
    }
    for key in ["audience_regex", "issuer_regex"] {
        if t.string(cx, key).is_some_and(|v| !v.is_empty()) {
            let plain = key.trim_end_matches("_regex");
            cx.error(
                &t.key(key),
                format!("Volley cannot check a token's claim against a pattern (it checks `{plain}` exactly): refused rather than accepting every {plain}"),
            );
        }
    }
    // A switch off a check Volley does not make: nothing changes without it.
    if t.bool(cx, "insecure_skip_jwks_endpoint_safety_check") == Some(true) {
        cx.report(t.key("insecure_skip_jwks_endpoint_safety_check"));
    }
    // An unknown token setting may be a check: refused rather than skipped.
    for (k, v) in std::mem::take(&mut t.map) {
        if !is_off(&v) {
            cx.error(&t.key(&k), "a token setting Volley does not know: refused rather than ignored");
        }
    }
}

fn channel(cx: &mut Cx, mut s: Section, out: &mut Value, recovery_limit: u64) {
    let meta_ttl = s.volley_duration(cx, "history_meta_ttl");
    let fill = |mut o: Map<String, Value>| {
        if let Some(ttl) = &meta_ttl {
            o.entry("history_meta_ttl").or_insert_with(|| ttl.clone());
        }
        o.insert("recovery_max_publication_limit".into(), json!(recovery_limit));
        Value::Object(o)
    };
    let without = match s.section(cx, "without_namespace") {
        Some(w) => options(cx, w),
        None => Map::new(),
    };
    put(out, "channel.without_namespace", fill(without));
    if let Some(v) = s.take("namespaces") {
        let each = |cx: &mut Cx, section: Section| Value::Object(options(cx, section));
        if let Some(Value::Array(list)) = named_list(cx, v, "channel.namespaces", "a namespace needs a name", each) {
            let filled = list.into_iter().map(|o| match o {
                Value::Object(m) => fill(m),
                other => other,
            });
            put(out, "channel.namespaces", Value::Array(filled.collect()));
        }
    }
    if let Some(mut p) = s.section(cx, "proxy") {
        for name in ["subscribe", "publish", "sub_refresh"] {
            if let Some(section) = p.section(cx, name) {
                proxy(cx, section, out, &format!("channel.proxy.{name}"));
            }
        }
        p.finish(cx);
    }
    if let Some(n) = s.uint(cx, "max_length") {
        put(out, "channel.max_length", json!(n));
    }
    for key in ["private_prefix", "namespace_boundary", "user_boundary", "user_separator"] {
        if let Some(v) = s.string(cx, key) {
            put(out, &format!("channel.{key}"), json!(v));
        }
    }
    s.finish(cx);
}

/// The options of a namespace Volley reads as they are: booleans.
const OPTION_BOOLS: [&str; 21] = [
    "presence",
    "join_leave",
    "force_push_join_leave",
    "force_positioning",
    "allow_positioning",
    "force_recovery",
    "allow_recovery",
    "allow_subscribe_for_client",
    "allow_subscribe_for_anonymous",
    "allow_publish_for_subscriber",
    "allow_publish_for_client",
    "allow_publish_for_anonymous",
    "allow_history_for_subscriber",
    "allow_history_for_client",
    "allow_history_for_anonymous",
    "allow_presence_for_subscriber",
    "allow_presence_for_client",
    "allow_presence_for_anonymous",
    "allow_user_limited_channels",
    "allow_tags_filter",
    "allow_channel_compaction",
];

/// A namespace's proxies Volley has not: the proxy's switch, its name, and the
/// permissions that the proxy decides in Centrifugo and the namespace's options would grant
/// in Volley without it.
const OPTION_PROXIES: [(&str, &str, &[&str]); 1] = [(
    "subscribe_stream_proxy_enabled",
    "subscribe_stream_proxy_name",
    &["allow_subscribe_for_client", "allow_subscribe_for_anonymous"],
)];

fn options(cx: &mut Cx, mut s: Section) -> Map<String, Value> {
    let mut o = Map::new();
    for key in OPTION_BOOLS {
        if let Some(b) = s.bool(cx, key) {
            o.insert(key.into(), json!(b));
        }
    }
    if let Some(n) = s.uint(cx, "history_size") {
        o.insert("history_size".into(), json!(n));
    }
    for key in ["history_ttl", "history_meta_ttl"] {
        // 0 is "the global value" for history_meta_ttl: left unset here.
        if let Some(v) = s.volley_duration(cx, key).filter(|v| !(key == "history_meta_ttl" && v.as_str() == Some("0s")))
        {
            o.insert(key.into(), v);
        }
    }
    match s.string(cx, "force_recovery_mode").as_deref() {
        None | Some("") => {}
        Some(mode @ ("stream" | "cache")) => {
            o.insert("force_recovery_mode".into(), json!(mode));
        }
        Some(other) => cx.error(&s.key("force_recovery_mode"), format!("{other:?}: \"stream\" or \"cache\"")),
    }
    if let Some(r) = s.string(cx, "channel_regex") {
        o.insert("channel_regex".into(), json!(r));
    }
    if let Some(types) = s.strings(cx, "allowed_delta_types") {
        o.insert("allowed_delta_types".into(), json!(types));
    }
    for (switch, name, default) in [
        ("subscribe_proxy_enabled", "subscribe_proxy_name", "channel.proxy.subscribe"),
        ("publish_proxy_enabled", "publish_proxy_name", "channel.proxy.publish"),
        ("sub_refresh_proxy_enabled", "sub_refresh_proxy_name", "channel.proxy.sub_refresh"),
    ] {
        let enabled = s.bool(cx, switch) == Some(true);
        named_proxy(cx, &mut s, name, enabled, default);
        if enabled {
            o.insert(switch.into(), json!(true));
        }
    }
    for (switch, name, grants) in OPTION_PROXIES {
        let enabled = s.bool(cx, switch) == Some(true);
        let name_path = s.key(name);
        let name_value = s.take(name);
        if !enabled {
            // The proxy's name is unused while its switch is off.
            continue;
        }
        if let Some(g) = grants.iter().find(|g| o.get(**g) == Some(&json!(true))) {
            cx.error(
                &s.key(switch),
                format!(
                    "Centrifugo asks the backend; Volley, without the proxy, would allow what `{g}` \
                     grants to everyone it names: refused rather than ignored"
                ),
            );
        }
        cx.report(s.key(switch));
        if let Some(v) = name_value {
            cx.ignore(&name_path, &v);
        }
        if switch == "subscribe_stream_proxy_enabled"
            && s.bool(cx, "subscribe_stream_proxy_bidirectional") == Some(true)
        {
            cx.report(s.key("subscribe_stream_proxy_bidirectional"));
        }
    }
    // Without its stream proxy, the bidirectional switch means nothing.
    s.take("subscribe_stream_proxy_bidirectional");
    if s.string(cx, "subscription_type").is_some_and(|t| !t.is_empty() && t != "stream") {
        cx.report(s.key("subscription_type"));
    }
    s.finish(cx);
    o
}

fn http_api(cx: &mut Cx, mut s: Section, out: &mut Value) {
    for key in ["key", "error_mode"] {
        if let Some(v) = s.string(cx, key) {
            put(out, &format!("http_api.{key}"), json!(v));
        }
    }
    if s.string(cx, "handler_prefix").is_some_and(|p| !p.is_empty() && p != "/api") {
        cx.report(s.key("handler_prefix"));
    }
    if s.bool(cx, "disabled") == Some(true) {
        cx.report(s.key("disabled"));
    }
    s.finish(cx);
}

/// A unidirectional transport: its switch; the rest (another path, body limits,
/// Centrifugo's connect over POST) is not Volley's.
fn uni(cx: &mut Cx, mut s: Section, name: &str, out: &mut Value) {
    if let Some(b) = s.bool(cx, "enabled") {
        put(out, &format!("{name}.enabled"), json!(b));
    }
    if name != "uni_websocket" {
        if let Some(n) = s.uint(cx, "max_request_body_size").filter(|n| *n > 0) {
            put(out, &format!("{name}.max_request_body_size"), json!(n));
        }
    }
    let default_prefix = format!("/connection/{name}");
    if s.string(cx, "handler_prefix").is_some_and(|p| !p.is_empty() && p != default_prefix) {
        cx.report(s.key("handler_prefix"));
    }
    s.finish(cx);
}

fn websocket(cx: &mut Cx, mut s: Section, out: &mut Value) {
    if let Some(b) = s.bool(cx, "compression") {
        put(out, "client.websocket_compression", json!(b));
    }
    if let Some(n) = s.uint(cx, "message_size_limit").filter(|n| *n > 0) {
        put(out, "client.max_command_size", json!(n));
    }
    if s.string(cx, "handler_prefix").is_some_and(|p| !p.is_empty() && p != "/connection/websocket") {
        cx.report(s.key("handler_prefix"));
    }
    if s.bool(cx, "disabled") == Some(true) {
        cx.report(s.key("disabled"));
    }
    s.finish(cx);
}

/// `http_stream`, `sse`: the bidirectional emulation transports (off unless enabled, as
/// in Centrifugo).
fn emulation_stream(cx: &mut Cx, mut s: Section, out: &mut Value, name: &str) {
    put(out, &format!("{name}.enabled"), json!(s.bool(cx, "enabled").unwrap_or(false)));
    if let Some(n) = s.uint(cx, "max_request_body_size").filter(|n| *n > 0) {
        put(out, &format!("{name}.max_request_body_size"), json!(n));
    }
    if s.string(cx, "handler_prefix").is_some_and(|p| !p.is_empty() && p != format!("/connection/{name}")) {
        cx.report(s.key("handler_prefix"));
    }
    s.finish(cx);
}

/// `emulation`: the endpoint of the emulation transports' commands.
fn emulation(cx: &mut Cx, mut s: Section, out: &mut Value) {
    if let Some(n) = s.uint(cx, "max_request_body_size").filter(|n| *n > 0) {
        put(out, "emulation.max_request_body_size", json!(n));
    }
    if s.string(cx, "handler_prefix").is_some_and(|p| !p.is_empty() && p != "/emulation") {
        cx.report(s.key("handler_prefix"));
    }
    s.finish(cx);
}

/// `engine`: Volley's is the memory engine; a memory engine's `redis` is unused.
fn engine(cx: &mut Cx, mut s: Section, out: &mut Value) {
    match s.string(cx, "type").as_deref() {
        None | Some("") | Some("memory") => {
            s.take("redis");
        }
        Some("redis") => {
            if let Some(r) = s.section(cx, "redis") {
                redis(cx, r, out);
            } else {
                put(out, "broker.type", json!("redis"));
            }
        }
        Some(_) => cx.report(s.key("type")),
    }
    s.finish(cx);
}

/// `engine.redis` (or `broker.redis`): Volley's Redis broker, on the same addresses.
fn redis(cx: &mut Cx, mut s: Section, out: &mut Value) {
    put(out, "broker.type", json!("redis"));
    let db = s.uint(cx, "db").filter(|&d| d > 0);
    let url = |a: &str| {
        let mut u = if a.contains("://") { a.to_owned() } else { format!("redis://{a}") };
        if let Some(db) = db {
            if u.trim_end_matches('/').rsplit('/').next().is_none_or(|p| p.parse::<u64>().is_err()) {
                u = format!("{}/{db}", u.trim_end_matches('/'));
            }
        }
        u
    };
    if let Some(cluster) = s.strings(cx, "cluster_address").filter(|a| !a.is_empty()) {
        put(out, "broker.redis.addresses", json!(cluster.iter().map(|a| url(a)).collect::<Vec<_>>()));
        put(out, "broker.redis.cluster", json!(true));
        s.take("address");
    } else if let Some(addresses) = s.strings(cx, "address").filter(|a| !a.is_empty()) {
        put(out, "broker.redis.addresses", json!(addresses.iter().map(|a| url(a)).collect::<Vec<_>>()));
    }
    if let Some(prefix) = s.string(cx, "prefix") {
        put(out, "broker.redis.prefix", json!(prefix));
    }
    if let Some(user) = s.string(cx, "user") {
        put(out, "broker.redis.username", json!(user));
    }
    if let Some(password) = s.string(cx, "password") {
        put(out, "broker.redis.password", json!(password));
    }
    if let Some(d) = s.volley_duration(cx, "connect_timeout") {
        put(out, "broker.redis.connect_timeout", d);
    }
    if let Some(d) = s.volley_duration(cx, "io_timeout") {
        put(out, "broker.redis.command_timeout", d);
    }
    s.finish(cx);
}

/// `broker` and `presence_manager`: off unless `enabled`; an enabled memory one is
/// Volley's, an enabled Redis broker is Volley's Redis broker (which is also its
/// presence manager).
fn broker(cx: &mut Cx, mut s: Section, out: &mut Value) {
    let enabled_path = s.key("enabled");
    let enabled = s.bool(cx, "enabled");
    if enabled != Some(true) {
        // Unused by Centrifugo too.
        return;
    }
    match s.string(cx, "type").as_deref() {
        None | Some("") | Some("memory") => {
            for k in ["redis", "nats", "redisnats", "postgres"] {
                s.take(k);
            }
        }
        Some("redis") => {
            if let Some(r) = s.section(cx, "redis") {
                redis(cx, r, out);
            } else {
                put(out, "broker.type", json!("redis"));
            }
        }
        Some(_) => {
            cx.report(enabled_path);
            cx.report(s.key("type"));
        }
    }
    s.finish(cx);
}

/// `prometheus` and `health`: Volley always serves them, at `prefix`.
fn endpoint(cx: &mut Cx, mut s: Section, prefix: &str) {
    if s.bool(cx, "enabled") == Some(false) {
        cx.report(s.key("enabled"));
    }
    if s.string(cx, "handler_prefix").is_some_and(|p| !p.is_empty() && p != prefix) {
        cx.report(s.key("handler_prefix"));
    }
    s.finish(cx);
}

/// YAML (1.2, one document) as a JSON tree. Mapping keys that are not strings are written as
/// their text; anchors and aliases are expanded (within the loader's budget).
pub fn yaml_to_json(text: &str) -> anyhow::Result<Value> {
    use saphyr::{LoadableYamlNode, Yaml};
    let docs = Yaml::load_from_str(text).map_err(|e| anyhow::anyhow!("not valid YAML: {e}"))?;
    match docs.len() {
        0 => Ok(json!({})),
        1 => yaml_value(&docs[0], 0),
        n => bail!("{n} YAML documents: a configuration is one"),
    }
}

/// How deep a YAML document may nest (a configuration nests a few levels).
const YAML_MAX_DEPTH: usize = 64;

fn yaml_value(y: &saphyr::Yaml<'_>, depth: usize) -> anyhow::Result<Value> {
    use saphyr::{Scalar, Yaml};
    if depth > YAML_MAX_DEPTH {
        bail!("YAML nested more than {YAML_MAX_DEPTH} levels deep");
    }
    Ok(match y {
        Yaml::Value(Scalar::Null) => Value::Null,
        Yaml::Value(Scalar::Boolean(b)) => json!(b),
        Yaml::Value(Scalar::Integer(i)) => json!(i),
        Yaml::Value(Scalar::FloatingPoint(f)) => Number::from_f64(f.into_inner())
            .map(Value::Number)
            .ok_or_else(|| anyhow::anyhow!("YAML: {f} is not a number JSON has"))?,
        Yaml::Value(Scalar::String(s)) => json!(s),
        Yaml::Representation(s, _, _) => json!(s),
        Yaml::Tagged(_, inner) => yaml_value(inner, depth + 1)?,
        Yaml::Sequence(items) => {
            Value::Array(items.iter().map(|e| yaml_value(e, depth + 1)).collect::<anyhow::Result<_>>()?)
        }
        Yaml::Mapping(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                let key = match yaml_value(k, depth + 1)? {
                    Value::String(s) => s,
                    Value::Null => "null".into(),
                    other @ (Value::Bool(_) | Value::Number(_)) => other.to_string(),
                    _ => bail!("YAML: a mapping key that is a list or a mapping"),
                };
                out.insert(key, yaml_value(v, depth + 1)?);
            }
            Value::Object(out)
        }
        Yaml::Alias(_) => bail!("YAML: an alias that names no anchor"),
        Yaml::BadValue => bail!("YAML: a value that cannot be read"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::ServeConfig;

    /// A Centrifugo v6 configuration as an application would have it, in JSON.
    const REALISTIC_JSON: &str = r#"{
      "http_server": { "address": "", "port": 8000, "internal_port": "9000" },
      "log": { "level": "info" },
      "engine": { "type": "memory", "redis": { "address": ["redis://127.0.0.1:6379"] } },
      "client": {
        "token": { "hmac_secret_key": "conn-secret", "audience": "my-app", "issuer": "auth", "user_id_claim": "user.id" },
        "subscription_token": { "enabled": true, "hmac_secret_key": "sub-secret" },
        "allowed_origins": ["https://example.com", "https://*.example.com"],
        "allow_anonymous_connect_without_token": false,
        "ping_interval": "20s",
        "pong_timeout": "5s",
        "expired_close_delay": "1m",
        "stale_close_delay": "1500ms",
        "channel_limit": 64,
        "connection_limit": 0,
        "user_connection_limit": 5,
        "queue_max_size": 2097152,
        "recovery_max_publication_limit": 150,
        "history_max_publication_limit": 300,
        "presence_update_interval": "27s",
        "subscribe_to_user_personal_channel": { "enabled": true, "personal_channel_namespace": "personal", "single_connection": false },
        "proxy": { "connect": { "enabled": false, "endpoint": "http://localhost:3000/centrifugo/connect" } }
      },
      "channel": {
        "history_meta_ttl": "168h",
        "proxy": { "subscribe": { "endpoint": "http://localhost:3000/centrifugo/subscribe", "timeout": "2s", "http_headers": ["Cookie"] } },
        "without_namespace": { "presence": true, "allow_subscribe_for_client": true },
        "namespaces": [
          { "name": "personal", "presence": true, "join_leave": true },
          {
            "name": "chat", "history_size": 100, "history_ttl": "1h30m", "history_meta_ttl": "720h",
            "force_recovery": true, "force_recovery_mode": "stream",
            "allow_subscribe_for_client": true, "allow_publish_for_subscriber": true,
            "allow_history_for_subscriber": true, "allow_presence_for_subscriber": true,
            "allowed_delta_types": ["fossil"], "delta_publish": true, "channel_regex": "^[a-z0-9_]+$"
          },
          {
            "name": "updates", "history_size": 1, "history_ttl": "10m", "force_recovery": true,
            "force_recovery_mode": "cache", "subscribe_proxy_enabled": true
          }
        ]
      },
      "http_api": { "key": "api-key", "handler_prefix": "/api" },
      "websocket": { "compression": true, "message_size_limit": 131072, "write_timeout": "1s" },
      "admin": { "enabled": false, "password": "admin-password", "secret": "admin-secret" },
      "prometheus": { "enabled": true },
      "health": { "enabled": true },
      "proxies": [{ "name": "updates-proxy", "endpoint": "http://localhost:3000/centrifugo/subscribe" }],
      "shutdown": { "timeout": "30s" }
    }"#;

    /// The same configuration in YAML.
    const REALISTIC_YAML: &str = r#"
http_server:
  address: ""
  port: 8000
  internal_port: "9000"
log:
  level: info
engine:
  type: memory
  redis:
    address: ["redis://127.0.0.1:6379"]
client:
  token:
    hmac_secret_key: conn-secret
    audience: my-app
    issuer: auth
    user_id_claim: user.id
  subscription_token:
    enabled: true
    hmac_secret_key: sub-secret
  allowed_origins:
    - https://example.com
    - https://*.example.com
  allow_anonymous_connect_without_token: false
  ping_interval: 20s
  pong_timeout: 5s
  expired_close_delay: 1m
  stale_close_delay: 1500ms
  channel_limit: 64
  connection_limit: 0
  user_connection_limit: 5
  queue_max_size: 2097152
  recovery_max_publication_limit: 150
  history_max_publication_limit: 300
  presence_update_interval: 27s
  subscribe_to_user_personal_channel:
    enabled: true
    personal_channel_namespace: personal
    single_connection: false
  proxy:
    connect:
      enabled: false
      endpoint: http://localhost:3000/centrifugo/connect
channel:
  history_meta_ttl: 168h
  proxy:
    subscribe:
      endpoint: http://localhost:3000/centrifugo/subscribe
      timeout: 2s
      http_headers: [Cookie]
  without_namespace:
    presence: true
    allow_subscribe_for_client: true
  namespaces:
    - name: personal
      presence: true
      join_leave: true
    - name: chat
      history_size: 100
      history_ttl: 1h30m
      history_meta_ttl: 720h
      force_recovery: true
      force_recovery_mode: stream
      allow_subscribe_for_client: true
      allow_publish_for_subscriber: true
      allow_history_for_subscriber: true
      allow_presence_for_subscriber: true
      allowed_delta_types: [fossil]
      delta_publish: true
      channel_regex: "^[a-z0-9_]+$"
    - name: updates
      history_size: 1
      history_ttl: 10m
      force_recovery: true
      force_recovery_mode: cache
      subscribe_proxy_enabled: true
http_api:
  key: api-key
  handler_prefix: /api
websocket:
  compression: true
  message_size_limit: 131072
  write_timeout: 1s
admin:
  enabled: false
  password: admin-password
  secret: admin-secret
prometheus:
  enabled: true
health:
  enabled: true
proxies:
  - name: updates-proxy
    endpoint: http://localhost:3000/centrifugo/subscribe
shutdown:
  timeout: 30s
"#;

    /// The same configuration in TOML.
    const REALISTIC_TOML: &str = r#"
[http_server]
address = ""
port = 8000
internal_port = "9000"

[log]
level = "info"

[engine]
type = "memory"
redis = { address = ["redis://127.0.0.1:6379"] }

[client]
allowed_origins = ["https://example.com", "https://*.example.com"]
allow_anonymous_connect_without_token = false
ping_interval = "20s"
pong_timeout = "5s"
expired_close_delay = "1m"
stale_close_delay = "1500ms"
channel_limit = 64
connection_limit = 0
user_connection_limit = 5
queue_max_size = 2097152
recovery_max_publication_limit = 150
history_max_publication_limit = 300
presence_update_interval = "27s"

[client.token]
hmac_secret_key = "conn-secret"
audience = "my-app"
issuer = "auth"
user_id_claim = "user.id"

[client.subscription_token]
enabled = true
hmac_secret_key = "sub-secret"

[client.subscribe_to_user_personal_channel]
enabled = true
personal_channel_namespace = "personal"
single_connection = false

[client.proxy.connect]
enabled = false
endpoint = "http://localhost:3000/centrifugo/connect"

[channel]
history_meta_ttl = "168h"

[channel.proxy.subscribe]
endpoint = "http://localhost:3000/centrifugo/subscribe"
timeout = "2s"
http_headers = ["Cookie"]

[channel.without_namespace]
presence = true
allow_subscribe_for_client = true

[[channel.namespaces]]
name = "personal"
presence = true
join_leave = true

[[channel.namespaces]]
name = "chat"
history_size = 100
history_ttl = "1h30m"
history_meta_ttl = "720h"
force_recovery = true
force_recovery_mode = "stream"
allow_subscribe_for_client = true
allow_publish_for_subscriber = true
allow_history_for_subscriber = true
allow_presence_for_subscriber = true
allowed_delta_types = ["fossil"]
delta_publish = true
channel_regex = "^[a-z0-9_]+$"

[[channel.namespaces]]
name = "updates"
history_size = 1
history_ttl = "10m"
force_recovery = true
force_recovery_mode = "cache"
subscribe_proxy_enabled = true

[http_api]
key = "api-key"
handler_prefix = "/api"

[websocket]
compression = true
message_size_limit = 131072
write_timeout = "1s"

[admin]
enabled = false
password = "admin-password"
secret = "admin-secret"

[prometheus]
enabled = true

[health]
enabled = true

[[proxies]]
name = "updates-proxy"
endpoint = "http://localhost:3000/centrifugo/subscribe"

[shutdown]
timeout = "30s"
"#;

    fn from_json(text: &str) -> Value {
        serde_json::from_str(text).unwrap()
    }

    fn from_toml(text: &str) -> Value {
        serde_json::to_value(toml::from_str::<toml::Value>(text).unwrap()).unwrap()
    }

    fn translated(tree: Value) -> (ServeConfig, Vec<String>) {
        let t = translate(&tree).unwrap_or_else(|e| panic!("{e:#}"));
        let config: ServeConfig = serde_json::from_value(t.config).unwrap_or_else(|e| panic!("Volley's config: {e}"));
        (config, t.ignored)
    }

    #[test]
    fn the_emulation_transports_are_translated_and_off_unless_enabled() {
        let (c, ignored) = translated(json!({
            "http_stream": { "enabled": true, "max_request_body_size": 1000 },
            "sse": { "handler_prefix": "/sse" },
            "emulation": { "max_request_body_size": 2000, "handler_prefix": "/emulation" },
        }));
        assert!(c.http_stream.enabled);
        assert_eq!(c.http_stream.max_request_body_size, 1000);
        assert!(!c.sse.enabled, "off in Centrifugo unless enabled");
        assert_eq!(c.sse.max_request_body_size, 65536);
        assert_eq!(c.emulation.max_request_body_size, 2000);
        assert_eq!(ignored, ["sse.handler_prefix"]);
        let (c, _) = translated(json!({}));
        assert!(!c.http_stream.enabled && !c.sse.enabled && !c.long_poll.enabled);
        // Volley's own configuration has them on by default.
        let own = ServeConfig::default();
        assert!(own.http_stream.enabled && own.sse.enabled && own.long_poll.enabled);
    }

    fn ignored(tree: Value) -> Vec<String> {
        translate(&tree).unwrap_or_else(|e| panic!("{e:#}")).ignored
    }

    fn refused(tree: Value) -> String {
        format!("{:#}", translate(&tree).expect_err("refused"))
    }

    #[test]
    fn json_yaml_and_toml_forms_of_a_configuration_translate_the_same() {
        let json = translate(&from_json(REALISTIC_JSON)).unwrap();
        let yaml = translate(&yaml_to_json(REALISTIC_YAML).unwrap()).unwrap();
        let toml = translate(&from_toml(REALISTIC_TOML)).unwrap();
        assert_eq!(json.config, yaml.config);
        assert_eq!(json.config, toml.config);
        assert_eq!(json.ignored, yaml.ignored);
        assert_eq!(json.ignored, toml.ignored);
    }

    #[test]
    fn every_supported_key_of_a_realistic_configuration_reaches_volleys() {
        let (c, _) = translated(from_json(REALISTIC_JSON));
        let s = |secs| Duration::from_secs(secs);
        // Centrifugo binds every interface when the address is empty.
        assert_eq!((c.http_server.address.as_str(), c.http_server.port), ("0.0.0.0", 8000));
        let t = &c.client.token;
        assert_eq!(t.hmac_secret_key.as_deref(), Some("conn-secret"));
        assert_eq!((t.audience.as_deref(), t.issuer.as_deref()), (Some("my-app"), Some("auth")));
        assert_eq!(t.user_id_claim.as_deref(), Some("user.id"));
        let sub = c.client.subscription_token.as_ref().expect("subscription tokens have their own keys");
        assert_eq!(sub.hmac_secret_key.as_deref(), Some("sub-secret"));
        assert_eq!(sub.audience, None);
        assert_eq!(c.client.allowed_origins, ["https://example.com", "https://*.example.com"]);
        assert!(!c.client.allow_anonymous_connect_without_token);
        assert_eq!((c.client.ping_interval, c.client.pong_timeout), (s(20), s(5)));
        assert_eq!(c.client.expired_close_delay, s(60));
        assert_eq!(c.client.stale_close_delay, Duration::from_millis(1500));
        assert_eq!((c.client.channel_limit, c.client.user_connection_limit), (64, 5));
        // 0 is "no limit" to Centrifugo: Volley keeps its own limit.
        assert_eq!(c.client.connection_limit, 1_000_000);
        assert_eq!(c.client.queue_max_bytes, 2_097_152);
        assert!(c.client.user_subscribe_to_personal);
        assert_eq!(c.client.user_personal_channel_namespace, "personal");
        assert!(c.client.websocket_compression);
        assert_eq!(c.client.max_command_size, 131_072);
        assert_eq!(c.http_api.key, "api-key");

        let w = &c.channel.without_namespace;
        assert!(w.presence && w.allow_subscribe_for_client && !w.allow_publish_for_subscriber);
        // The global history_meta_ttl reaches every namespace that has none of its own.
        assert_eq!(w.history_meta_ttl, s(7 * 86400));
        assert_eq!(w.recovery_max_publication_limit, 150);
        let names: Vec<&str> = c.channel.namespaces.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["personal", "chat", "updates"]);
        let personal = &c.channel.namespaces[0];
        assert!(personal.presence && personal.join_leave && !personal.allow_subscribe_for_client);
        assert_eq!(personal.history_meta_ttl, s(7 * 86400));
        let chat = &c.channel.namespaces[1];
        assert_eq!((chat.history_size, chat.history_ttl, chat.history_meta_ttl), (100, s(5400), s(30 * 86400)));
        assert!(chat.force_recovery && chat.allow_subscribe_for_client && chat.allow_publish_for_subscriber);
        assert!(chat.allow_history_for_subscriber && chat.allow_presence_for_subscriber);
        assert!(!chat.allow_publish_for_client && !chat.allow_subscribe_for_anonymous);
        assert_eq!(chat.allowed_delta_types, ["fossil"]);
        assert_eq!(chat.channel_regex, "^[a-z0-9_]+$");
        assert_eq!(chat.recovery_max_publication_limit, 150);
        let updates = &c.channel.namespaces[2];
        assert_eq!(updates.force_recovery_mode, volley_hub::config::RecoveryMode::Cache);
        assert_eq!((updates.history_size, updates.history_ttl), (1, s(600)));
        assert!(updates.subscribe_proxy_enabled);
        let p = &c.channel.proxy.subscribe;
        assert_eq!((p.endpoint.as_str(), p.timeout), ("http://localhost:3000/centrifugo/subscribe", s(2)));
        assert_eq!(p.http_headers, ["Cookie"]);
        assert!(!c.client.proxy.connect.enabled);
        assert_eq!(c.client.proxy.connect.endpoint, "http://localhost:3000/centrifugo/connect");
        // And the hub accepts it.
        let hub_config = c.hub_config();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async { volley_hub::Hub::new(hub_config).map(|_| ()) }).unwrap();
    }

    #[test]
    fn the_ignored_keys_of_a_realistic_configuration_are_exactly_those_volley_lacks() {
        let (_, ignored) = translated(from_json(REALISTIC_JSON));
        assert_eq!(
            ignored,
            [
                "channel.namespaces[chat].delta_publish",
                "client.history_max_publication_limit",
                "client.presence_update_interval",
                "http_server.internal_port",
                "proxies",
                "shutdown.timeout",
                "websocket.write_timeout",
            ]
        );
    }

    #[test]
    fn a_configuration_from_centrifugo_genconfig_has_nothing_to_report() {
        let tree = from_json(
            r#"{
              "client": { "token": { "hmac_secret_key": "s" }, "allowed_origins": [] },
              "admin": { "enabled": false, "password": "p", "secret": "q" },
              "http_api": { "key": "k" }
            }"#,
        );
        let (c, ignored) = translated(tree);
        assert_eq!(ignored, Vec::<String>::new());
        assert_eq!(c.http_api.key, "k");
        // Centrifugo's default recovery limit, where Volley's would differ.
        assert_eq!(c.channel.without_namespace.recovery_max_publication_limit, 300);
    }

    #[test]
    fn the_unidirectional_transports_are_switched_as_in_centrifugo() {
        let (c, ignored) = translated(from_json(
            r#"{
              "uni_sse": { "enabled": true },
              "uni_http_stream": { "enabled": true, "max_request_body_size": 1000 },
              "uni_websocket": { "enabled": false, "handler_prefix": "/uni" }
            }"#,
        ));
        assert!(c.uni_sse.enabled && c.uni_http_stream.enabled && !c.uni_websocket.enabled);
        assert!(!c.uni_long_polling.enabled, "Volley's own, off by default");
        assert_eq!(c.uni_http_stream.max_request_body_size, 1000);
        assert_eq!(c.uni_sse.max_request_body_size, 65536);
        assert_eq!(ignored, ["uni_websocket.handler_prefix"]);
    }

    #[test]
    fn a_redis_engine_becomes_volleys_redis_broker() {
        let (c, ignored) = translated(from_json(
            r#"{ "engine": { "type": "redis", "redis": {
                   "address": ["127.0.0.1:6379", "redis://r2:6379"], "db": 2, "prefix": "app",
                   "user": "u", "password": "p", "connect_timeout": "2s", "io_timeout": "500ms",
                   "force_resp2": true } } }"#,
        ));
        assert_eq!(c.broker.kind, crate::serve::BrokerKind::Redis);
        let r = &c.broker.redis;
        assert_eq!(r.addresses, ["redis://127.0.0.1:6379/2", "redis://r2:6379/2"]);
        assert!(!r.cluster);
        assert_eq!((r.prefix.as_str(), r.username.as_str(), r.password.as_str()), ("app", "u", "p"));
        assert_eq!((r.connect_timeout, r.command_timeout), (Duration::from_secs(2), Duration::from_millis(500)));
        assert_eq!(ignored, ["engine.redis.force_resp2"]);
        let (c, ignored) = translated(from_json(
            r#"{ "broker": { "enabled": true, "type": "redis",
                   "redis": { "cluster_address": ["redis://a:7000", "redis://b:7001"] } } }"#,
        ));
        assert_eq!((c.broker.kind, c.broker.redis.cluster), (crate::serve::BrokerKind::Redis, true));
        assert_eq!(c.broker.redis.addresses, ["redis://a:7000", "redis://b:7001"]);
        assert!(ignored.is_empty(), "{ignored:?}");
        let (c, _) = translated(from_json(r#"{ "engine": { "type": "memory" } }"#));
        assert_eq!(c.broker.kind, crate::serve::BrokerKind::Memory);
    }

    #[test]
    fn off_values_and_disabled_sections_are_ignored_silently_and_the_rest_is_named() {
        let tree = from_json(
            r#"{
              "client": { "concurrency": 0, "user_id_http_header": "", "connect_include_server_time": true },
              "graphite": { "enabled": true, "port": 0, "host": "graphite.local" },
              "uni_websocket": { "enabled": false, "handler_prefix": "/connection/uni_websocket" },
              "broker": { "enabled": false, "type": "redis" },
              "presence_manager": { "enabled": true, "type": "redis", "redis": { "address": ["redis://r:6379"] } },
              "engine": { "type": "redis", "redis": { "address": ["redis://r:6379"] } },
              "prometheus": { "enabled": false },
              "websocket": { "handler_prefix": "/ws", "disabled": false },
              "http_api": { "handler_prefix": "/api", "disabled": true, "insecure": true },
              "log": { "level": "debug", "file": "" },
              "consumers": [{ "name": "off", "enabled": false, "type": "kafka" }],
              "pid_file": "/run/centrifugo.pid"
            }"#,
        );
        assert_eq!(
            ignored(tree),
            [
                "client.connect_include_server_time",
                "graphite.enabled",
                "graphite.host",
                "http_api.disabled",
                "http_api.insecure",
                "log.level",
                "pid_file",
                "prometheus.enabled",
                "websocket.handler_prefix",
            ]
        );
    }

    #[test]
    fn settings_whose_loss_would_weaken_security_are_refused_each_by_its_path() {
        let e = refused(from_json(
            r#"{
              "client": {
                "token": { "hmac_secret_key": "s", "audience_regex": "^app-", "issuer_regex": "^auth", "some_new_check": true },
                "subscription_token": { "enabled": true, "issuer_regex": "x" },
                "disallow_anonymous_connection_tokens": true,
                "allow_anonymous_connect_without_token": true,
                "proxy": { "connect": { "enabled": true, "endpoint": "http://b/connect" } }
              },
              "http_server": {
                "tls": { "enabled": true, "cert_pem": "c.pem", "key_pem": "k.pem", "client_ca_pem": "ca.pem" },
                "tls_autocert": { "enabled": true }
              },
              "channel": { "namespaces": [
                { "name": "a", "allow_subscribe_for_anonymous": true, "subscribe_proxy_enabled": true },
                { "name": "b", "allow_publish_for_client": true, "publish_proxy_enabled": true },
                { "name": "c", "allow_subscribe_for_client": true, "subscribe_stream_proxy_enabled": true }
              ] }
            }"#,
        ));
        for path in [
            "client.token.audience_regex",
            "client.token.issuer_regex",
            "client.token.some_new_check",
            "client.subscription_token.issuer_regex",
            "client.disallow_anonymous_connection_tokens",
            "http_server.tls.client_ca_pem",
            "http_server.tls_autocert.enabled",
            "channel.namespaces[c].subscribe_stream_proxy_enabled",
        ] {
            assert!(e.contains(&format!("\n  {path}: ")), "{path} not refused in:\n{e}");
        }
        assert_eq!(e.matches("\n  ").count(), 8, "{e}");
    }

    #[test]
    fn proxies_are_translated_and_named_or_grpc_ones_refused() {
        let tree = from_json(
            r#"{
              "client": { "proxy": {
                "connect": { "enabled": true, "endpoint": "http://b/connect", "timeout": "3s", "http_headers": ["Cookie"],
                  "emulated_headers": ["Authorization"], "http": { "static_headers": { "X-Key": "k" } } },
                "refresh": { "enabled": true, "endpoint": "http://b/refresh", "include_connection_meta": true }
              } },
              "channel": {
                "proxy": { "publish": { "endpoint": "http://b/publish", "binary_encoding": true } },
                "namespaces": [
                  { "name": "a", "publish_proxy_enabled": true, "allow_history_for_subscriber": true },
                  { "name": "b", "subscribe_proxy_name": "unused", "sub_refresh_proxy_enabled": false }
                ]
              },
              "rpc": {
                "proxy": { "endpoint": "http://b/rpc" },
                "without_namespace": { "proxy_enabled": true },
                "namespaces": [{ "name": "ns", "proxy_enabled": true }],
                "namespace_boundary": "."
              },
              "proxies": [{ "name": "p", "endpoint": "http://c/p" }]
            }"#,
        );
        let (c, ignored) = translated(tree);
        assert_eq!(ignored, ["proxies"]);
        let connect = &c.client.proxy.connect;
        assert!(connect.enabled);
        assert_eq!((connect.endpoint.as_str(), connect.timeout), ("http://b/connect", Duration::from_secs(3)));
        assert_eq!(
            (&connect.http_headers[..], &connect.emulated_headers[..]),
            (&["Cookie".to_string()][..], &["Authorization".to_string()][..])
        );
        assert_eq!(connect.http.static_headers["X-Key"], "k");
        assert!(c.client.proxy.refresh.include_connection_meta);
        assert!(c.channel.proxy.publish.binary_encoding);
        assert!(c.channel.namespaces[0].publish_proxy_enabled);
        assert!(c.rpc.without_namespace.proxy_enabled && c.rpc.namespaces[0].proxy_enabled);
        assert_eq!((c.rpc.namespaces[0].name.as_str(), c.rpc.namespace_boundary.as_str()), ("ns", "."));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async { volley_hub::Hub::new(c.hub_config()).map(|_| ()) }).unwrap();

        // A named proxy where the switch is on would be asked as the default one; a GRPC
        // proxy cannot be asked at all: both refused.
        let e = refused(from_json(
            r#"{
              "client": { "proxy": { "connect": { "enabled": true, "endpoint": "grpc://b:9000" } } },
              "channel": { "namespaces": [{ "name": "a", "publish_proxy_enabled": true, "publish_proxy_name": "p" }] },
              "rpc": { "namespaces": [{ "name": "r", "proxy_enabled": true, "proxy_name": "p" }] }
            }"#,
        ));
        for path in [
            "client.proxy.connect.endpoint",
            "channel.namespaces[a].publish_proxy_name",
            "rpc.namespaces[r].proxy_name",
        ] {
            assert!(e.contains(&format!("\n  {path}: ")), "{path} not refused in:\n{e}");
        }
    }

    #[test]
    fn tls_is_copied_when_enabled_and_unused_otherwise() {
        let on = from_json(
            r#"{ "http_server": { "tls": { "enabled": true, "cert_pem": "/etc/c.pem", "key_pem": "/etc/k.pem", "server_name": "" } } }"#,
        );
        let (c, ignored) = translated(on);
        assert_eq!(
            (c.http_server.tls.cert_pem.as_str(), c.http_server.tls.key_pem.as_str()),
            ("/etc/c.pem", "/etc/k.pem")
        );
        assert!(ignored.is_empty(), "{ignored:?}");
        let off = from_json(
            r#"{ "http_server": { "tls": { "enabled": false, "cert_pem": "/etc/c.pem", "key_pem": "/etc/k.pem" } } }"#,
        );
        let (c, ignored) = translated(off);
        assert!(c.http_server.tls.cert_pem.is_empty() && ignored.is_empty());
        // A key the TLS section does not have (Volley's own cert_file) could mean TLS was
        // wanted: refused rather than serving plain HTTP.
        let e = refused(from_json(r#"{ "log": {}, "http_server": { "tls": { "cert_file": "c.pem" } } }"#));
        assert!(e.contains("http_server.tls.cert_file"), "{e}");
        let e = refused(from_json(r#"{ "http_server": { "tls": { "enabled": true, "cert_pem": "c.pem" } } }"#));
        assert!(e.contains("http_server.tls: enabled needs cert_pem and key_pem"), "{e}");
    }

    #[test]
    fn durations_are_read_as_go_writes_them() {
        let ns = |s: &str| parse_go_duration(s).unwrap();
        assert_eq!(ns("25s"), 25_000_000_000);
        assert_eq!(ns("1h30m"), 5_400_000_000_000);
        assert_eq!(ns("1.5h"), 5_400_000_000_000);
        assert_eq!(ns("300ms"), 300_000_000);
        assert_eq!(ns("2us") + ns("2µs"), 4_000);
        assert_eq!(ns("-1s"), -1_000_000_000);
        assert_eq!(ns("0"), 0);
        for bad in ["", "25", "1x", "s", "1h 30m", "--1s", "9999999h"] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?}");
        }
        // As Volley writes them: whole milliseconds as text, the rest as seconds.
        assert_eq!(volley_duration(ns("720h")), json!("30d"));
        assert_eq!(volley_duration(ns("1500ms")), json!("1500ms"));
        assert_eq!(volley_duration(ns("250us")), json!(0.00025));
        // A negative ping interval turns pings off; a negative pong timeout cannot be had.
        let (c, ignored) = translated(from_json(r#"{ "client": { "ping_interval": "-1s", "pong_timeout": -1 } }"#));
        assert_eq!(c.client.ping_interval, Duration::ZERO);
        assert_eq!(c.client.pong_timeout, Duration::from_secs(8));
        assert_eq!(ignored, ["client.pong_timeout"]);
        // A bare number is nanoseconds to Centrifugo: refused, with the way to write it.
        let e = refused(from_json(r#"{ "channel": { "namespaces": [{ "name": "a", "history_ttl": 60 }] } }"#));
        assert!(e.contains("channel.namespaces[a].history_ttl: 60 is 60 nanoseconds"), "{e}");
    }

    #[test]
    fn a_value_of_the_wrong_type_is_an_error_that_names_its_key() {
        let e = refused(from_json(
            r#"{ "client": { "channel_limit": "many", "allowed_origins": [1], "token": "s" },
                 "channel": { "namespaces": [{ "presence": true }, { "name": "x", "force_recovery_mode": "all" }] } }"#,
        ));
        for part in [
            "client.channel_limit: expected a whole number",
            "client.allowed_origins: expected a list of strings",
            "client.token: expected an object",
            "channel.namespaces[0]: a namespace needs a name",
            "channel.namespaces[x].force_recovery_mode: \"all\"",
        ] {
            assert!(e.contains(part), "{part} not in:\n{e}");
        }
    }

    #[test]
    fn a_centrifugo_v5_configuration_is_named_as_such() {
        let e = refused(from_json(r#"{ "token_hmac_secret_key": "s", "api_key": "k" }"#));
        assert!(e.contains("Centrifugo v5 key"), "{e}");
        let e = refused(from_json(r#"{ "engine": "redis" }"#));
        assert!(e.contains("Centrifugo v5"), "{e}");
        assert_eq!(centrifugo_marker(&from_json(r#"{ "api_key": "k" }"#)).as_deref(), Some("api_key"));
    }

    #[test]
    fn tags_filters_channel_compaction_and_the_subscription_expiry_grace_are_translated() {
        let (c, ignored) = translated(from_json(
            r#"{ "client": { "expired_sub_close_delay": "1m30s", "queue_max_size": 1024 },
                 "channel": { "namespaces": [{ "name": "m", "allow_tags_filter": true, "allow_channel_compaction": true }] } }"#,
        ));
        assert_eq!(c.client.expired_sub_close_delay, Duration::from_secs(90));
        let m = &c.channel.namespaces[0];
        assert!(m.allow_tags_filter && m.allow_channel_compaction);
        assert_eq!(ignored, Vec::<String>::new());
        // Volley's own keys now: not a sign of a Centrifugo file.
        let own = r#"{ "client": { "expired_sub_close_delay": "1s" }, "channel": { "namespaces": [{ "name": "m", "allow_tags_filter": true }] } }"#;
        assert_eq!(centrifugo_marker(&from_json(own)), None);
    }

    #[test]
    fn volleys_own_configuration_is_never_taken_for_centrifugos() {
        // Every key of Volley's full default configuration, and typos of its own keys.
        assert_eq!(centrifugo_marker(&from_toml(crate::serve::DEFAULT_CONFIG)), None);
        assert_eq!(centrifugo_marker(&from_toml("[client]\nping_intervall = \"10s\"\n")), None);
        let volley = from_toml("[client]\ncommand_rate = 5\n");
        assert_eq!(detect(ConfigFormat::Auto, false, &volley).unwrap(), None);
        // Keys only Centrifugo has, at any depth.
        for (text, key) in [
            (r#"{ "log": { "level": "debug" } }"#, "log"),
            (r#"{ "client": { "queue_max_size": 1 } }"#, "client.queue_max_size"),
            (r#"{ "client": { "token": { "issuer_regex": "x" } } }"#, "client.token.issuer_regex"),
            (r#"{ "http_server": { "tls": { "enabled": true } } }"#, "http_server.tls.enabled"),
            (
                r#"{ "channel": { "namespaces": [{ "name": "a", "delta_publish": true }] } }"#,
                "channel.namespaces[].delta_publish",
            ),
            (
                r#"{ "channel": { "without_namespace": { "subscribe_proxy_name": "p" } } }"#,
                "channel.without_namespace.subscribe_proxy_name",
            ),
            (r#"{ "shutdown": { "timeout": "30s" } }"#, "shutdown.timeout"),
        ] {
            assert_eq!(centrifugo_marker(&from_json(text)).as_deref(), Some(key), "{text}");
        }
        // YAML is Centrifugo's; the flag decides over the content.
        assert!(detect(ConfigFormat::Auto, true, &json!({})).unwrap().is_some());
        assert!(detect(ConfigFormat::Volley, true, &json!({})).is_err());
        assert!(detect(ConfigFormat::Centrifugo, false, &volley).unwrap().is_some());
        assert_eq!(detect(ConfigFormat::Volley, false, &from_json(r#"{ "log": {} }"#)).unwrap(), None);
    }

    #[test]
    fn yaml_reads_as_yaml_1_2_with_its_limits() {
        let v = yaml_to_json("a: yes\nb: 0x10\nc: ~\nd: 1.5\ne: &x [1, 2]\nf: *x\n8000: port\n").unwrap();
        assert_eq!(v, json!({ "a": "yes", "b": 16, "c": null, "d": 1.5, "e": [1, 2], "f": [1, 2], "8000": "port" }));
        assert_eq!(yaml_to_json("").unwrap(), json!({}));
        assert!(yaml_to_json("a: 1\n---\nb: 2\n").unwrap_err().to_string().contains("2 YAML documents"));
        assert!(yaml_to_json("a: [1\n").is_err());
        assert!(yaml_to_json("? [1]\n: x\n").is_err());
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        assert!(yaml_to_json(&deep).is_err());
        // Aliases that expand beyond the loader's budget are refused, not built.
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for (name, prev) in ["b", "c", "d", "e", "f", "g"].into_iter().zip(["a", "b", "c", "d", "e", "f"]) {
            let refs = vec![format!("*{prev}"); 10].join(", ");
            bomb.push_str(&format!("{name}: &{name} [{refs}]\n"));
        }
        assert!(yaml_to_json(&bomb).is_err());
    }
}
