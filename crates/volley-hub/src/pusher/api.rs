//! Pusher's HTTP API (the REST API the Pusher server SDKs call), on the hub's router:
//! events and batches of events, the channels' and users' state, and the termination
//! of a user's connections. Every request is authenticated with the app's signature
//! first ([`verify_api_request`](super::sign::verify_api_request)).
//!
//! Counts are cluster-wide: subscriptions come from a survey of every node, presence
//! from the broker.

use std::collections::{BTreeMap, HashSet};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{
    channel_kind, channel_options, external_channel, internal_channel, internal_user, valid_channel_name, ChannelKind,
    PusherApp, TAG_EVENT, TAG_EXCLUDE,
};
use crate::engine::{now_ms, Hub, NodeMessage};
use crate::protocol::{PayloadKind, Publication};

/// The Pusher API's routes. An app id or key no app has: 404.
pub(crate) fn router(hub: Hub) -> Router {
    Router::new()
        .route("/apps/{app_id}/events", post(events))
        .route("/apps/{app_id}/batch_events", post(batch_events))
        .route("/apps/{app_id}/channels", get(channels))
        .route("/apps/{app_id}/channels/{channel}", get(channel))
        .route("/apps/{app_id}/channels/{channel}/users", get(users))
        .route("/apps/{app_id}/users/{user_id}/terminate_connections", post(terminate))
        // The PyPI SDK leaves the app out of this path: the app is the key's.
        .route("/users/{user_id}/terminate_connections", post(terminate_by_key))
        .with_state(hub)
}

/// An answer with a JSON body.
fn reply(status: StatusCode, body: Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// A refused request: its status and why.
struct Refused(StatusCode, String);

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        reply(self.0, json!({ "error": self.1 }))
    }
}

fn refused(status: StatusCode, message: impl Into<String>) -> Refused {
    Refused(status, message.into())
}

/// The largest request body taken, whatever the app's limits (413 beyond).
fn max_body(app: &PusherApp) -> usize {
    (app.max_event_payload_size + 16 * 1024) * app.max_event_batch_size.max(1)
        + app.max_event_channels_at_once * (app.max_channel_name_length + 4)
}

/// Reads the body (413 over the limit), authenticates the request, checks the app is
/// enabled (403).
async fn authenticate(app: &PusherApp, method: &Method, uri: &Uri, body: Body) -> Result<Bytes, Refused> {
    let body = axum::body::to_bytes(body, max_body(app))
        .await
        .map_err(|_| refused(StatusCode::PAYLOAD_TOO_LARGE, "Request body too large"))?;
    let now = (now_ms() / 1000) as u64;
    super::sign::verify_api_request(app, method.as_str(), uri.path(), uri.query().unwrap_or_default(), &body, now)
        .map_err(|e| refused(StatusCode::from_u16(e.status).unwrap_or(StatusCode::UNAUTHORIZED), e.message))?;
    if !app.enabled {
        return Err(refused(StatusCode::FORBIDDEN, "App disabled"));
    }
    Ok(body)
}

fn app_by_id(hub: &Hub, id: &str) -> Result<PusherApp, Refused> {
    hub.config().pusher.by_id(id).cloned().ok_or_else(|| refused(StatusCode::NOT_FOUND, "Unknown app"))
}

/// A query parameter, decoded.
fn query_value(uri: &Uri, name: &str) -> Option<String> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(uri.query().unwrap_or_default()).ok()?;
    pairs.into_iter().find(|(k, _)| k == name).map(|(_, v)| v)
}

/// The attributes asked with `info`.
fn info_of(s: Option<&str>) -> HashSet<String> {
    s.unwrap_or_default().split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

/// An event to trigger, as `events` and `batch_events` take it.
#[derive(Deserialize)]
struct Event {
    name: String,
    data: Value,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    channels: Option<Vec<String>>,
    #[serde(default)]
    socket_id: Option<String>,
    #[serde(default)]
    info: Option<String>,
}

/// Checks an event and publishes it to its channels; returns the info asked per
/// channel, if any.
async fn trigger(hub: &Hub, app: &PusherApp, e: Event) -> Result<Option<Map<String, Value>>, Refused> {
    let channels: Vec<String> = match (e.channels, e.channel) {
        (Some(c), None) => c,
        (None, Some(c)) => vec![c],
        _ => return Err(refused(StatusCode::BAD_REQUEST, "Exactly one of channel and channels is required")),
    };
    if channels.is_empty() || channels.len() > app.max_event_channels_at_once {
        let text = format!("channels: from 1 to {} channels", app.max_event_channels_at_once);
        return Err(refused(StatusCode::BAD_REQUEST, text));
    }
    if e.name.is_empty() || e.name.len() > app.max_event_name_length {
        return Err(refused(StatusCode::BAD_REQUEST, "name: missing or too long"));
    }
    if let Some(c) = channels.iter().find(|c| !valid_channel_name(c, app.max_channel_name_length)) {
        return Err(refused(StatusCode::BAD_REQUEST, format!("Invalid channel name: {c:?}")));
    }
    if let Some(id) = &e.socket_id {
        if !valid_socket_id(id) {
            return Err(refused(StatusCode::BAD_REQUEST, format!("Invalid socket id: {id:?}")));
        }
    }
    // Pusher's data is a string (the SDKs encode objects); anything else is taken as
    // the JSON text of itself.
    let text = match e.data {
        Value::String(s) => s,
        other => other.to_string(),
    };
    if text.len() > app.max_event_payload_size {
        return Err(refused(StatusCode::PAYLOAD_TOO_LARGE, "Event data too large"));
    }
    let data = Bytes::from(Value::String(text).to_string());
    let mut tags = BTreeMap::new();
    tags.insert(TAG_EVENT.to_owned(), e.name);
    if let Some(id) = e.socket_id {
        tags.insert(TAG_EXCLUDE.to_owned(), id);
    }
    for c in &channels {
        let internal = internal_channel(&app.id, c);
        let options = channel_options(app, c);
        let p = Publication {
            data: data.clone(),
            tags: tags.clone(),
            time: now_ms(),
            kind: PayloadKind::Json,
            ..Default::default()
        };
        if let Err(e) = hub.inner.publish(&internal, &options, p, None, false).await {
            return Err(refused(StatusCode::INTERNAL_SERVER_ERROR, e.message.to_string()));
        }
    }
    let info = info_of(e.info.as_deref());
    if info.is_empty() {
        return Ok(None);
    }
    let mut out = Map::new();
    for c in &channels {
        out.insert(c.clone(), channel_attributes(hub, app, c, &info).await?);
    }
    Ok(Some(out))
}

/// `^\d+\.\d+$`.
fn valid_socket_id(id: &str) -> bool {
    id.split_once('.').is_some_and(|(a, b)| {
        !a.is_empty() && !b.is_empty() && a.bytes().all(|c| c.is_ascii_digit()) && b.bytes().all(|c| c.is_ascii_digit())
    })
}

/// The subscriptions of the app's channels whose names start with `prefix`, on every
/// node, by Pusher name.
async fn subscription_counts(hub: &Hub, app: &PusherApp, prefix: &str) -> BTreeMap<String, u64> {
    let pattern = internal_channel(&app.id, &format!("{prefix}*"));
    let params = json!({ "pattern": pattern }).to_string();
    let local = crate::api::local_survey(hub, "channels", &params).unwrap_or(Value::Null);
    let mut out = BTreeMap::new();
    for answer in hub.survey("channels", &params, local).await {
        let Some(channels) = answer.get("channels").and_then(Value::as_object) else { continue };
        for (name, v) in channels {
            if let Some((_, external)) = external_channel(name) {
                *out.entry(external.to_owned()).or_default() += v["num_clients"].as_u64().unwrap_or(0);
            }
        }
    }
    out
}

/// The attributes of a channel asked in `info`: `subscription_count`, `user_count`
/// (presence channels only: 400 otherwise).
async fn channel_attributes(
    hub: &Hub,
    app: &PusherApp,
    channel: &str,
    info: &HashSet<String>,
) -> Result<Value, Refused> {
    let mut v = json!({});
    let presence = channel_kind(channel).0 == ChannelKind::Presence;
    if info.contains("user_count") {
        if !presence {
            return Err(refused(StatusCode::BAD_REQUEST, "user_count is only available on presence channels"));
        }
        let stats = hub.inner.broker.presence_stats(&internal_channel(&app.id, channel)).await;
        v["user_count"] = json!(stats.map(|s| s.users).unwrap_or(0));
    }
    if info.contains("subscription_count") {
        let n = subscription_counts(hub, app, channel).await.get(channel).copied().unwrap_or(0);
        v["subscription_count"] = json!(n);
    }
    Ok(v)
}

async fn events(State(hub): State<Hub>, Path(app_id): Path<String>, method: Method, uri: Uri, body: Body) -> Response {
    let run = async {
        let app = app_by_id(&hub, &app_id)?;
        let body = authenticate(&app, &method, &uri, body).await?;
        let e: Event = serde_json::from_slice(&body)
            .map_err(|e| refused(StatusCode::BAD_REQUEST, format!("Invalid event: {e}")))?;
        Ok::<_, Refused>(match trigger(&hub, &app, e).await? {
            Some(channels) => json!({ "channels": channels }),
            None => json!({}),
        })
    };
    answer(run.await)
}

async fn batch_events(
    State(hub): State<Hub>,
    Path(app_id): Path<String>,
    method: Method,
    uri: Uri,
    body: Body,
) -> Response {
    #[derive(Deserialize)]
    struct Batch {
        batch: Vec<Event>,
    }
    let run = async {
        let app = app_by_id(&hub, &app_id)?;
        let body = authenticate(&app, &method, &uri, body).await?;
        let b: Batch = serde_json::from_slice(&body)
            .map_err(|e| refused(StatusCode::BAD_REQUEST, format!("Invalid batch: {e}")))?;
        if b.batch.len() > app.max_event_batch_size {
            let text = format!("Batch too large: at most {} events", app.max_event_batch_size);
            return Err(refused(StatusCode::BAD_REQUEST, text));
        }
        let mut infos = Vec::new();
        let mut any_info = false;
        for mut e in b.batch {
            if e.channels.is_some() {
                return Err(refused(StatusCode::BAD_REQUEST, "A batch event names one channel"));
            }
            let channel = e.channel.clone().unwrap_or_default();
            if e.info.is_some() {
                any_info = true;
            }
            e.channel = Some(channel.clone());
            let info = trigger(&hub, &app, e).await?;
            infos.push(info.and_then(|mut m| m.remove(&channel)).unwrap_or_else(|| json!({})));
        }
        Ok::<_, Refused>(if any_info { json!({ "batch": infos }) } else { json!({}) })
    };
    answer(run.await)
}

async fn channels(
    State(hub): State<Hub>,
    Path(app_id): Path<String>,
    method: Method,
    uri: Uri,
    body: Body,
) -> Response {
    let run = async {
        let app = app_by_id(&hub, &app_id)?;
        authenticate(&app, &method, &uri, body).await?;
        let prefix = query_value(&uri, "filter_by_prefix").unwrap_or_default();
        let info = info_of(query_value(&uri, "info").as_deref());
        let user_count = info.contains("user_count");
        if user_count && !prefix.starts_with("presence-") {
            return Err(refused(StatusCode::BAD_REQUEST, "user_count needs filter_by_prefix=presence-"));
        }
        let mut out = Map::new();
        for (name, n) in subscription_counts(&hub, &app, &prefix).await {
            if n == 0 || name.starts_with('#') {
                continue;
            }
            let mut v = json!({});
            if user_count {
                let stats = hub.inner.broker.presence_stats(&internal_channel(&app.id, &name)).await;
                v["user_count"] = json!(stats.map(|s| s.users).unwrap_or(0));
            }
            if info.contains("subscription_count") {
                v["subscription_count"] = json!(n);
            }
            out.insert(name, v);
        }
        Ok::<_, Refused>(json!({ "channels": out }))
    };
    answer(run.await)
}

async fn channel(
    State(hub): State<Hub>,
    Path((app_id, channel)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    body: Body,
) -> Response {
    let run = async {
        let app = app_by_id(&hub, &app_id)?;
        authenticate(&app, &method, &uri, body).await?;
        if !valid_channel_name(&channel, app.max_channel_name_length) {
            return Err(refused(StatusCode::BAD_REQUEST, "Invalid channel name"));
        }
        let info = info_of(query_value(&uri, "info").as_deref());
        let mut v = channel_attributes(&hub, &app, &channel, &info).await?;
        // The count `info` asked for, or one survey of the nodes for `occupied`.
        let count = match v.get("subscription_count").and_then(Value::as_u64) {
            Some(n) => n,
            None => subscription_counts(&hub, &app, &channel).await.get(&channel).copied().unwrap_or(0),
        };
        v["occupied"] = json!(count > 0);
        if info.contains("cache") && channel_kind(&channel).1 {
            let internal = internal_channel(&app.id, &channel);
            let options = channel_options(&app, &channel);
            if let Ok((pubs, _)) = hub.inner.history(&internal, &options, None, Some(1), true).await {
                if let Some(p) = pubs.first() {
                    let data = serde_json::from_slice::<Value>(&p.data).unwrap_or(Value::Null);
                    let ttl = options.history_ttl.as_secs().saturating_sub(((now_ms() - p.time) / 1000) as u64);
                    v["cache"] = json!({ "data": data, "ttl": ttl });
                }
            }
        }
        Ok::<_, Refused>(v)
    };
    answer(run.await)
}

async fn users(
    State(hub): State<Hub>,
    Path((app_id, channel)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    body: Body,
) -> Response {
    let run = async {
        let app = app_by_id(&hub, &app_id)?;
        authenticate(&app, &method, &uri, body).await?;
        if channel_kind(&channel).0 != ChannelKind::Presence {
            return Err(refused(StatusCode::BAD_REQUEST, "Users are only available on presence channels"));
        }
        let members = hub
            .inner
            .broker
            .presence(&internal_channel(&app.id, &channel))
            .await
            .map_err(|e| refused(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        let ids: std::collections::BTreeSet<String> = members.into_values().map(|c| c.user).collect();
        Ok::<_, Refused>(json!({ "users": ids.into_iter().map(|id| json!({ "id": id })).collect::<Vec<_>>() }))
    };
    answer(run.await)
}

/// Closes every connection of the user, on every node.
async fn terminate_user(hub: &Hub, app: &PusherApp, user_id: &str) -> Response {
    let d = super::conn::close::TERMINATED;
    let m = NodeMessage::Disconnect {
        user: internal_user(&app.id, user_id),
        client: None,
        code: d.code,
        reason: d.reason.to_string(),
    };
    match hub.user_control(m).await {
        Ok(()) => reply(StatusCode::OK, json!({})),
        Err(e) => refused(StatusCode::INTERNAL_SERVER_ERROR, e.message.to_string()).into_response(),
    }
}

async fn terminate(
    State(hub): State<Hub>,
    Path((app_id, user_id)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    body: Body,
) -> Response {
    let app = match app_by_id(&hub, &app_id) {
        Ok(a) => a,
        Err(r) => return r.into_response(),
    };
    if let Err(r) = authenticate(&app, &method, &uri, body).await {
        return r.into_response();
    }
    terminate_user(&hub, &app, &user_id).await
}

async fn terminate_by_key(
    State(hub): State<Hub>,
    Path(user_id): Path<String>,
    method: Method,
    uri: Uri,
    body: Body,
) -> Response {
    let key = query_value(&uri, "auth_key").unwrap_or_default();
    let Some(app) = hub.config().pusher.by_key(&key).cloned() else {
        return refused(StatusCode::NOT_FOUND, "Unknown app").into_response();
    };
    if let Err(r) = authenticate(&app, &method, &uri, body).await {
        return r.into_response();
    }
    terminate_user(&hub, &app, &user_id).await
}

/// A handler's answer: 200 with its JSON, or its refusal.
fn answer(r: Result<Value, Refused>) -> Response {
    match r {
        Ok(v) => reply(StatusCode::OK, v),
        Err(r) => r.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_ids_are_checked() {
        assert!(valid_socket_id("123.456"));
        assert!(!valid_socket_id("123."));
        assert!(!valid_socket_id("a.1"));
        assert!(!valid_socket_id("1.2.3"));
    }

    #[test]
    fn info_lists_attributes() {
        let i = info_of(Some("user_count, subscription_count"));
        assert!(i.contains("user_count") && i.contains("subscription_count"));
        assert!(info_of(None).is_empty());
    }
}
