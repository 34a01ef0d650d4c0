//! The server API, for the application's backend: `POST /api/{method}` with a JSON
//! body and the API key (`X-API-Key: KEY` or `Authorization: apikey KEY`), answered
//! with `{"result": ...}` or `{"error": {"code", "message"}}`, as Centrifugo's HTTP API
//! (so its SDKs, `cent` among them, work unchanged). With `http_api.error_mode =
//! "transport"` errors are HTTP statuses instead (400, 404, 500...).

use std::collections::BTreeMap;

use axum::body::Bytes as Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use base64::Engine as _;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::engine::{ConnectionInfo, Hub, NodeMessage, ServerPublish};
use crate::protocol::{ClientInfo, Disconnect, ErrorReply, Format, PayloadKind, Publication, StreamPosition};

/// The API's routes: `/api/{method}` (and `/api` with `{"method", "params"}`).
pub fn router(hub: Hub) -> Router {
    Router::new()
        .route("/api/{method}", post(method_handler))
        .route("/api", post(legacy_handler))
        .with_state(Api { hub })
}

#[derive(Clone)]
struct Api {
    hub: Hub,
}

fn authorized(api: &Api, headers: &HeaderMap) -> bool {
    let key = &api.hub.config().http_api.key;
    if key.is_empty() {
        return false;
    }
    let given = headers.get("x-api-key").and_then(|v| v.to_str().ok()).or_else(|| {
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("apikey "))
    });
    given.is_some_and(|g| constant_time_eq(g.as_bytes(), key.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn method_handler(
    State(api): State<Api>,
    Path(method): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if !authorized(&api, &headers) {
        return (StatusCode::UNAUTHORIZED, "unauthorized\n").into_response();
    }
    // The body is parsed once, straight into the method's parameters: a publication's
    // `data` is checked there and kept as the bytes that came.
    let params = if body.is_empty() {
        "{}"
    } else {
        match std::str::from_utf8(&body) {
            Ok(text) => text,
            Err(_) => return answer(&api, &method, Err(ErrorReply::BAD_REQUEST)),
        }
    };
    let r = call(&api, &method, params).await;
    answer(&api, &method, r)
}

async fn legacy_handler(State(api): State<Api>, headers: HeaderMap, body: Body) -> Response {
    if !authorized(&api, &headers) {
        return (StatusCode::UNAUTHORIZED, "unauthorized\n").into_response();
    }
    #[derive(Deserialize)]
    struct Legacy<'a> {
        method: String,
        #[serde(borrow)]
        params: Option<&'a RawValue>,
    }
    match serde_json::from_slice::<Legacy>(&body) {
        Ok(l) => {
            let params = l.params.map_or("{}", |p| p.get());
            let r = call(&api, &l.method, params).await;
            answer(&api, &l.method, r)
        }
        Err(_) => answer(&api, "", Err(ErrorReply::BAD_REQUEST)),
    }
}

/// The response: `{"result": ...}`, except for `batch`, whose `{"replies": [...]}` is
/// the whole body (as Centrifugo answers it).
fn answer(api: &Api, method: &str, r: Result<Value, ErrorReply>) -> Response {
    let transport = api.hub.config().http_api.error_mode == "transport";
    let (status, body) = match r {
        Ok(v) if method == "batch" => (StatusCode::OK, v),
        Ok(v) => (StatusCode::OK, json!({ "result": v })),
        Err(e) => {
            let status = if transport { status_of(&e) } else { StatusCode::OK };
            (status, json!({ "error": { "code": e.code, "message": e.message } }))
        }
    };
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// The HTTP status of an error in the transport error mode.
fn status_of(e: &ErrorReply) -> StatusCode {
    match e.code {
        101 => StatusCode::UNAUTHORIZED,
        102 | 104 => StatusCode::NOT_FOUND,
        103 => StatusCode::FORBIDDEN,
        106 | 111 => StatusCode::TOO_MANY_REQUESTS,
        107 | 112 => StatusCode::BAD_REQUEST,
        108 => StatusCode::NOT_IMPLEMENTED,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// The parameters of a method, parsed from the JSON text of the request (107 when they
/// are not JSON or not of the method's shape).
fn parse<'a, T: Deserialize<'a>>(params: &'a str) -> Result<T, ErrorReply> {
    serde_json::from_str(params)
        .map_err(|e| ErrorReply { message: format!("bad request: {e}").into(), ..ErrorReply::BAD_REQUEST })
}

/// The payload of a publish and what is known of it: `data` (any JSON, checked by the
/// parse of the request, so never looked at again) or `b64data` (bytes, looked at by
/// the hub once).
fn payload(data: Option<&RawValue>, b64data: Option<String>) -> Result<(Bytes, PayloadKind), ErrorReply> {
    match (data, b64data) {
        (Some(d), _) => {
            Ok((crate::protocol::json::one_line(Bytes::copy_from_slice(d.get().as_bytes())), PayloadKind::Json))
        }
        (None, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .map(|b| (Bytes::from(b), PayloadKind::Unchecked))
            .map_err(|_| ErrorReply::BAD_REQUEST),
        (None, None) => Err(ErrorReply::BAD_REQUEST),
    }
}

#[derive(Deserialize)]
struct PublishParams<'a> {
    #[serde(default)]
    channel: String,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    b64data: Option<String>,
    #[serde(default)]
    skip_history: bool,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    idempotency_key: Option<String>,
}

#[derive(Deserialize)]
struct ChannelParams {
    channel: String,
}

#[derive(Deserialize)]
struct UserParams {
    user: String,
    #[serde(default)]
    channel: String,
    #[serde(default)]
    client: String,
    disconnect: Option<DisconnectParams>,
}

#[derive(Deserialize)]
struct DisconnectParams {
    code: u16,
    #[serde(default)]
    reason: String,
}

#[derive(Deserialize)]
struct HistoryParams {
    channel: String,
    #[serde(default)]
    limit: i64,
    since: Option<PositionParams>,
    #[serde(default)]
    reverse: bool,
}

#[derive(Deserialize)]
struct PositionParams {
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    epoch: String,
}

#[derive(Deserialize)]
struct ChannelsParams {
    #[serde(default)]
    pattern: String,
}

#[derive(Deserialize)]
struct BatchParams {
    commands: Vec<BTreeMap<String, Box<RawValue>>>,
}

fn info_json(i: &ClientInfo) -> Value {
    let mut v = json!({ "user": i.user, "client": i.client });
    if let Some(c) = raw_json(&i.conn_info) {
        v["conn_info"] = c;
    }
    if let Some(c) = raw_json(&i.chan_info) {
        v["chan_info"] = c;
    }
    v
}

fn raw_json(b: &[u8]) -> Option<Value> {
    if b.is_empty() {
        None
    } else {
        serde_json::from_slice(b).ok()
    }
}

fn publication_json(p: &Publication) -> Value {
    let mut v = json!({});
    match serde_json::from_slice::<Value>(&p.data) {
        Ok(d) => v["data"] = d,
        Err(_) => v["b64data"] = json!(base64::engine::general_purpose::STANDARD.encode(&p.data)),
    }
    if let Some(i) = &p.info {
        v["info"] = info_json(i);
    }
    if p.offset != 0 {
        v["offset"] = json!(p.offset);
    }
    if !p.tags.is_empty() {
        v["tags"] = json!(p.tags);
    }
    v
}

/// Runs one API method.
fn call<'a>(
    api: &'a Api,
    method: &'a str,
    params: &'a str,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Value, ErrorReply>> + Send + 'a>> {
    Box::pin(async move {
        let hub = &api.hub;
        match method {
            "publish" => {
                let p: PublishParams = parse(params)?;
                let (data, kind) = payload(p.data, p.b64data)?;
                let opts = ServerPublish {
                    tags: p.tags,
                    idempotency_key: p.idempotency_key,
                    skip_history: p.skip_history,
                    kind,
                };
                let r = hub.publish(&p.channel, data, opts).await?;
                Ok(position_json(&r.position))
            }
            "broadcast" => {
                let p: PublishParams = parse(params)?;
                if p.channels.is_empty() {
                    return Err(ErrorReply::BAD_REQUEST);
                }
                let (data, kind) = payload(p.data, p.b64data)?;
                // Looked at once for every channel.
                let kind = if kind == PayloadKind::Unchecked { PayloadKind::of(&data) } else { kind };
                let mut responses = Vec::with_capacity(p.channels.len());
                for ch in &p.channels {
                    let opts = ServerPublish {
                        tags: p.tags.clone(),
                        idempotency_key: p.idempotency_key.clone(),
                        skip_history: p.skip_history,
                        kind,
                    };
                    responses.push(match hub.publish(ch, data.clone(), opts).await {
                        Ok(r) => json!({ "result": position_json(&r.position) }),
                        Err(e) => json!({ "error": { "code": e.code, "message": e.message } }),
                    });
                }
                Ok(json!({ "responses": responses }))
            }
            "subscribe" | "unsubscribe" => {
                let p: UserParams = parse(params)?;
                if p.user.is_empty() && p.client.is_empty() || p.channel.is_empty() {
                    return Err(ErrorReply::BAD_REQUEST);
                }
                hub.inner.channels.resolve(&p.channel)?;
                let client = (!p.client.is_empty()).then(|| p.client.clone());
                let (user, channel) = (p.user.clone(), p.channel.clone());
                hub.user_control(if method == "subscribe" {
                    NodeMessage::Subscribe { user, client, channel }
                } else {
                    NodeMessage::Unsubscribe { user, client, channel }
                })
                .await?;
                Ok(json!({}))
            }
            "disconnect" => {
                let p: UserParams = parse(params)?;
                let d = match p.disconnect {
                    Some(d) if (3000..5000).contains(&d.code) && d.reason.len() <= 123 => {
                        Disconnect { code: d.code, reason: d.reason.into() }
                    }
                    Some(_) => return Err(ErrorReply::BAD_REQUEST),
                    None => Disconnect::FORCE_NO_RECONNECT,
                };
                let client = (!p.client.is_empty()).then(|| p.client.clone());
                hub.user_control(NodeMessage::Disconnect {
                    user: p.user.clone(),
                    client,
                    code: d.code,
                    reason: d.reason.into_owned(),
                })
                .await?;
                Ok(json!({}))
            }
            "refresh" => {
                #[derive(Deserialize)]
                struct RefreshParams {
                    user: String,
                    #[serde(default)]
                    client: String,
                    #[serde(default)]
                    expired: bool,
                    #[serde(default)]
                    expire_at: u64,
                }
                let p: RefreshParams = parse(params)?;
                let client = (!p.client.is_empty()).then(|| p.client.clone());
                let expire_at = (p.expire_at > 0).then_some(p.expire_at);
                hub.user_control(NodeMessage::Refresh { user: p.user.clone(), client, expired: p.expired, expire_at })
                    .await?;
                Ok(json!({}))
            }
            "presence" => {
                let p: ChannelParams = parse(params)?;
                let presence = hub.presence(&p.channel).await?;
                let map: serde_json::Map<String, Value> =
                    presence.iter().map(|(k, v)| (k.clone(), info_json(v))).collect();
                Ok(json!({ "presence": map }))
            }
            "presence_stats" => {
                let p: ChannelParams = parse(params)?;
                let s = hub.presence_stats(&p.channel).await?;
                Ok(json!({ "num_clients": s.clients, "num_users": s.users }))
            }
            "history" => {
                let p: HistoryParams = parse(params)?;
                let limit = match p.limit {
                    0 => Some(0),
                    n if n < 0 => None,
                    n => Some(n as usize),
                };
                let since = p.since.map(|s| StreamPosition { offset: s.offset, epoch: s.epoch });
                let (pubs, top) = hub.history(&p.channel, limit, since.clone(), p.reverse).await?;
                if let Some(since) = since {
                    if since.epoch != top.epoch || since.offset > top.offset {
                        return Err(ErrorReply::UNRECOVERABLE_POSITION);
                    }
                }
                let mut v = position_json(&top);
                v["publications"] = Value::Array(pubs.iter().map(|p| publication_json(p)).collect());
                Ok(v)
            }
            "history_remove" => {
                let p: ChannelParams = parse(params)?;
                hub.remove_history(&p.channel).await?;
                Ok(json!({}))
            }
            "channels" | "connections" => {
                // Every node's, merged: channels with their subscriber counts summed;
                // connections by client id.
                let local = local_survey(hub, method, params)?;
                let key = if method == "channels" { "channels" } else { "connections" };
                let mut merged = serde_json::Map::new();
                for answer in hub.survey(method, params, local).await {
                    let Some(Value::Object(map)) = answer.get(key).cloned() else { continue };
                    for (name, v) in map {
                        match (merged.get_mut(&name), key) {
                            (Some(have), "channels") => {
                                let n =
                                    have["num_clients"].as_u64().unwrap_or(0) + v["num_clients"].as_u64().unwrap_or(0);
                                have["num_clients"] = json!(n);
                            }
                            _ => {
                                merged.insert(name, v);
                            }
                        }
                    }
                }
                Ok(json!({ key: merged }))
            }
            "info" => {
                // This node, then what the others last said of themselves.
                let mut nodes = vec![hub.node_info()];
                for info in hub.inner.broker.nodes().await.map_err(crate::engine::internal)? {
                    if let Ok(v) = serde_json::from_slice::<Value>(&info) {
                        nodes.push(v);
                    }
                }
                Ok(json!({ "nodes": nodes }))
            }
            "batch" => {
                let p: BatchParams = parse(params)?;
                let mut replies = Vec::with_capacity(p.commands.len());
                for cmd in p.commands {
                    let Some((m, params)) = cmd.into_iter().next() else {
                        replies.push(json!({ "error": { "code": 107, "message": "bad request" } }));
                        continue;
                    };
                    if m == "batch" {
                        replies.push(json!({ "error": { "code": 107, "message": "bad request" } }));
                        continue;
                    }
                    replies.push(match call(api, &m, params.get()).await {
                        Ok(v) => json!({ m: v }),
                        Err(e) => json!({ "error": { "code": e.code, "message": e.message } }),
                    });
                }
                Ok(json!({ "replies": replies }))
            }
            _ => Err(ErrorReply::METHOD_NOT_FOUND),
        }
    })
}

/// This node's answer to `channels` or `connections` (each node answers its part of a
/// survey with it).
pub(crate) fn local_survey(hub: &Hub, method: &str, params: &str) -> Result<Value, ErrorReply> {
    match method {
        "channels" => {
            let p: ChannelsParams = parse(params)?;
            let mut map = serde_json::Map::new();
            for (name, n) in hub.channels() {
                if p.pattern.is_empty() || glob(&p.pattern, &name) {
                    map.insert(name, json!({ "num_clients": n }));
                }
            }
            Ok(json!({ "channels": map }))
        }
        "connections" => {
            // Centrifugo PRO's method: the connections of a user (of everyone when
            // `user` is left out), with the `meta` their tokens attached.
            #[derive(Deserialize)]
            struct ConnectionsParams {
                #[serde(default)]
                user: Option<String>,
            }
            let p: ConnectionsParams = parse(params)?;
            let mut map = serde_json::Map::new();
            for c in hub.connections(p.user.as_deref()) {
                map.insert(c.client.clone(), connection_json(&c));
            }
            Ok(json!({ "connections": map }))
        }
        _ => Err(ErrorReply::METHOD_NOT_FOUND),
    }
}

fn connection_json(c: &ConnectionInfo) -> Value {
    let mut v = json!({
        "user": c.user,
        "transport": c.transport,
        "protocol": match c.protocol {
            Format::Json => "json",
            Format::Protobuf => "protobuf",
        },
    });
    if !c.app_name.is_empty() {
        v["app_name"] = json!(c.app_name);
    }
    if !c.app_version.is_empty() {
        v["app_version"] = json!(c.app_version);
    }
    if let Some(uid) = &c.token_uid {
        v["token_uid"] = json!(uid);
    }
    if let Some(iat) = c.token_issued_at {
        v["token_issued_at"] = json!(iat);
    }
    if let Some(meta) = raw_json(&c.meta) {
        v["meta"] = meta;
    }
    v
}

fn position_json(p: &StreamPosition) -> Value {
    let mut v = json!({});
    if p.offset != 0 {
        v["offset"] = json!(p.offset);
    }
    if !p.epoch.is_empty() {
        v["epoch"] = json!(p.epoch);
    }
    v
}

/// `*` matches any run of characters; everything else matches itself.
fn glob(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((pre, rest)) => {
            if !name.starts_with(pre) {
                return false;
            }
            let tail = &name[pre.len()..];
            (0..=tail.len()).filter(|&i| tail.is_char_boundary(i)).any(|i| glob(rest, &tail[i..]))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("chat:*", "chat:room"));
        assert!(!glob("chat:*", "news"));
        assert!(glob("*", "x"));
        assert!(glob("a*c", "abbc"));
    }
}
