//! Pusher webhooks: what happened in an app's channels, POSTed to the app's backend as
//! Pusher sends it (`{"time_ms": ..., "events": [...]}`, signed in `X-Pusher-Signature`
//! with the app's secret, its key in `X-Pusher-Key`).
//!
//! Each target has its own task and a bounded queue: events that arrive within
//! `batch_window` go in one request; a request that fails (no connection, a timeout, a
//! status other than 2xx) is retried with a doubling backoff, and what arrives meanwhile
//! waits in the queue; when the queue is full, new events are dropped and counted,
//! never held without bound. `channel_vacated` and `member_removed` wait
//! `removal_delay`: a channel occupied again, or a member back, within it sends
//! neither event nor the `channel_occupied` or `member_added` that would follow, as a
//! page reload would otherwise make a pair of each.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use volley::tls::rustls::ClientConfig;

use super::{PusherApp, PusherConfig};
use crate::config::duration;
use crate::engine::{lock, now_ms};
use crate::http_client::{Endpoint, Request};

/// The events a webhook target may ask for.
pub const EVENT_TYPES: [&str; 7] = [
    "channel_occupied",
    "channel_vacated",
    "member_added",
    "member_removed",
    "client_event",
    "cache_miss",
    "subscription_count",
];

/// The most bytes read of a webhook's answer (it is not used).
const MAX_ANSWER: usize = 64 * 1024;

/// One place an app's webhooks go.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookTarget {
    /// The URL POSTed to (`http://` or `https://`).
    pub url: String,
    /// The events it receives (empty: all of [`EVENT_TYPES`]).
    pub event_types: Vec<String>,
    /// Headers added to each request (an API key of the backend's, say).
    pub headers: BTreeMap<String, String>,
}

impl WebhookTarget {
    /// Checks the URL, the event types and the headers.
    pub fn check(&self) -> Result<(), String> {
        Endpoint::parse(&self.url)?;
        if let Some(t) = self.event_types.iter().find(|t| !EVENT_TYPES.contains(&t.as_str())) {
            return Err(format!("event_types: {t:?} is not one of {}", EVENT_TYPES.join(", ")));
        }
        for (name, value) in &self.headers {
            http::HeaderName::try_from(name.as_str()).map_err(|e| format!("headers: {name:?}: {e}"))?;
            http::HeaderValue::try_from(value.as_str()).map_err(|e| format!("headers: {name:?}: {e}"))?;
        }
        Ok(())
    }
}

/// How webhooks are sent, for every app.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSettings {
    /// Events that arrive within this long of the first go in the same request.
    #[serde(with = "duration")]
    pub batch_window: Duration,
    /// The most events in one request.
    pub max_batch_size: usize,
    /// Events waiting for one target; beyond, new events are dropped (and counted).
    pub queue_size: usize,
    /// How long one request may take.
    #[serde(with = "duration")]
    pub timeout: Duration,
    /// Times a failed request is tried again before its events are dropped.
    pub max_retries: u32,
    /// The wait before the first retry; each next one waits twice as long, up to a
    /// minute.
    #[serde(with = "duration")]
    pub retry_backoff: Duration,
    /// How long `channel_vacated` and `member_removed` wait, so that a channel occupied
    /// again or a member back within it sends nothing.
    #[serde(with = "duration")]
    pub removal_delay: Duration,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            batch_window: Duration::from_millis(50),
            max_batch_size: 100,
            queue_size: 10_000,
            timeout: Duration::from_secs(5),
            max_retries: 5,
            retry_backoff: Duration::from_secs(1),
            removal_delay: Duration::from_secs(3),
        }
    }
}

/// Counters of the webhooks sent, for `/metrics`.
#[derive(Debug, Default)]
pub struct WebhookStats {
    /// Requests answered with a 2xx.
    pub sent: AtomicU64,
    /// Requests that failed (each try).
    pub failed: AtomicU64,
    /// Events dropped: the queue was full, or every retry failed.
    pub dropped: AtomicU64,
}

/// One app's target, with its queue (started with its first event).
struct Target {
    endpoint: Endpoint,
    event_types: Vec<String>,
    headers: Vec<(String, String)>,
    key: String,
    secret: String,
    queue: OnceLock<mpsc::Sender<Value>>,
}

/// A removal waiting for `removal_delay`: (app, channel, user; no user for the channel
/// itself).
type Pending = (String, String, Option<String>);

/// The webhooks of every app. Cheap to clone.
#[derive(Clone)]
pub struct Webhooks {
    inner: Arc<Inner>,
}

struct Inner {
    settings: WebhookSettings,
    tls: Arc<ClientConfig>,
    targets: HashMap<String, Vec<Arc<Target>>>,
    /// Removals waiting, each with the number of its scheduling (a removal scheduled
    /// again replaces the one before).
    pending: Mutex<HashMap<Pending, u64>>,
    next: AtomicU64,
    stats: WebhookStats,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks").field("apps", &self.inner.targets.len()).finish_non_exhaustive()
    }
}

impl Webhooks {
    /// The webhooks of the configured apps (their targets checked by
    /// [`PusherConfig::check`]).
    pub fn new(config: &PusherConfig) -> Result<Webhooks, String> {
        Self::with_tls(config, volley::tls::default_client_config())
    }

    fn with_tls(config: &PusherConfig, tls: Arc<ClientConfig>) -> Result<Webhooks, String> {
        let mut targets = HashMap::new();
        for app in config.apps.iter().filter(|a| !a.webhooks.is_empty()) {
            let mut list = Vec::new();
            for w in &app.webhooks {
                w.check()?;
                list.push(Arc::new(Target {
                    endpoint: Endpoint::parse(&w.url)?,
                    event_types: w.event_types.clone(),
                    headers: w.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                    key: app.key.clone(),
                    secret: app.secret.clone(),
                    queue: OnceLock::new(),
                }));
            }
            targets.insert(app.id.clone(), list);
        }
        Ok(Webhooks {
            inner: Arc::new(Inner {
                settings: config.webhooks.clone(),
                tls,
                targets,
                pending: Mutex::new(HashMap::new()),
                next: AtomicU64::new(1),
                stats: WebhookStats::default(),
            }),
        })
    }

    /// The counters.
    pub fn stats(&self) -> &WebhookStats {
        &self.inner.stats
    }

    /// Whether some target of the app receives `event` (one of [`EVENT_TYPES`]): when
    /// none does, the caller need not find out what the event would say.
    pub fn wants(&self, app: &PusherApp, event: &str) -> bool {
        self.inner
            .targets
            .get(&app.id)
            .is_some_and(|ts| ts.iter().any(|t| t.event_types.is_empty() || t.event_types.iter().any(|e| e == event)))
    }

    /// Sends an event now (queued for each target that wants it); `event` holds its
    /// `name`.
    pub fn emit(&self, app: &PusherApp, event: Value) {
        let Some(targets) = self.inner.targets.get(&app.id) else { return };
        let name = event.get("name").and_then(Value::as_str).unwrap_or_default();
        for t in targets.iter().filter(|t| t.event_types.is_empty() || t.event_types.iter().any(|e| e == name)) {
            let queue = t.queue.get_or_init(|| self.start(t.clone()));
            if queue.try_send(event.clone()).is_err() {
                self.inner.stats.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(url = %t.endpoint.url, event = name, "webhook queue full: event dropped");
            }
        }
    }

    /// The channel got its first subscriber: `channel_occupied`, unless its
    /// `channel_vacated` is still waiting (then neither is sent).
    pub fn channel_occupied(&self, app: &PusherApp, channel: &str) {
        if self.cancel(app, channel, None) {
            return;
        }
        if self.wants(app, "channel_occupied") {
            self.emit(app, json!({ "name": "channel_occupied", "channel": channel }));
        }
    }

    /// The channel lost its last subscriber: `channel_vacated` after `removal_delay`.
    pub fn channel_vacated(&self, app: &PusherApp, channel: &str) {
        if self.wants(app, "channel_vacated") || self.wants(app, "channel_occupied") {
            self.later(app, channel, None, json!({ "name": "channel_vacated", "channel": channel }));
        }
    }

    /// A user's first connection joined a presence channel: `member_added`, unless the
    /// user's `member_removed` is still waiting (then neither is sent).
    pub fn member_added(&self, app: &PusherApp, channel: &str, user_id: &str) {
        if self.cancel(app, channel, Some(user_id)) {
            return;
        }
        if self.wants(app, "member_added") {
            self.emit(app, json!({ "name": "member_added", "channel": channel, "user_id": user_id }));
        }
    }

    /// A user's last connection left a presence channel: `member_removed` after
    /// `removal_delay`.
    pub fn member_removed(&self, app: &PusherApp, channel: &str, user_id: &str) {
        if self.wants(app, "member_removed") || self.wants(app, "member_added") {
            let event = json!({ "name": "member_removed", "channel": channel, "user_id": user_id });
            self.later(app, channel, Some(user_id), event);
        }
    }

    /// Cancels a waiting removal; whether there was one.
    fn cancel(&self, app: &PusherApp, channel: &str, user: Option<&str>) -> bool {
        let key = (app.id.clone(), channel.to_owned(), user.map(str::to_owned));
        lock(&self.inner.pending).remove(&key).is_some()
    }

    /// Sends `event` after `removal_delay`, unless cancelled meanwhile.
    fn later(&self, app: &PusherApp, channel: &str, user: Option<&str>, event: Value) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let key = (app.id.clone(), channel.to_owned(), user.map(str::to_owned));
        let n = self.inner.next.fetch_add(1, Ordering::Relaxed);
        lock(&self.inner.pending).insert(key.clone(), n);
        let (hooks, app, delay) = (self.clone(), app.clone(), self.inner.settings.removal_delay);
        rt.spawn(async move {
            tokio::time::sleep(delay).await;
            let due = {
                let mut pending = lock(&hooks.inner.pending);
                let due = pending.get(&key) == Some(&n);
                if due {
                    pending.remove(&key);
                }
                due
            };
            let name = event.get("name").and_then(Value::as_str).unwrap_or_default().to_owned();
            if due && hooks.wants(&app, &name) {
                hooks.emit(&app, event);
            }
        });
    }

    /// Starts a target's task: its queue's receiving end.
    fn start(&self, target: Arc<Target>) -> mpsc::Sender<Value> {
        let s = &self.inner.settings;
        let (tx, rx) = mpsc::channel(s.queue_size.max(1));
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(run(self.inner.clone(), target, rx));
            }
            Err(_) => tracing::warn!("webhooks need a tokio runtime: none is sent"),
        }
        tx
    }
}

/// A target's task: batches what its queue holds and POSTs it, trying again on failure.
async fn run(inner: Arc<Inner>, target: Arc<Target>, mut rx: mpsc::Receiver<Value>) {
    let s = &inner.settings;
    let max = s.max_batch_size.max(1);
    while let Some(first) = rx.recv().await {
        let mut events = vec![first];
        let deadline = tokio::time::Instant::now() + s.batch_window;
        while events.len() < max {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(e)) => events.push(e),
                _ => break,
            }
        }
        let count = events.len() as u64;
        let body = Bytes::from(json!({ "time_ms": now_ms(), "events": events }).to_string());
        let signature = super::sign::webhook_signature(&target.secret, &body);
        let mut backoff = s.retry_backoff;
        let mut attempt = 0;
        loop {
            match post(&inner, &target, &signature, body.clone()).await {
                Ok(()) => {
                    inner.stats.sent.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(e) => {
                    inner.stats.failed.fetch_add(1, Ordering::Relaxed);
                    if attempt >= s.max_retries {
                        inner.stats.dropped.fetch_add(count, Ordering::Relaxed);
                        tracing::warn!(url = %target.endpoint.url, error = %e, events = count, "webhook dropped after {} tries", attempt + 1);
                        break;
                    }
                    tracing::debug!(url = %target.endpoint.url, error = %e, "webhook failed; trying again in {backoff:?}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                    attempt += 1;
                }
            }
        }
    }
}

async fn post(inner: &Inner, target: &Target, signature: &str, body: Bytes) -> Result<(), String> {
    let mut headers: Vec<(&str, &str)> = vec![
        ("content-type", "application/json"),
        ("x-pusher-key", target.key.as_str()),
        ("x-pusher-signature", signature),
    ];
    headers.extend(target.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let request = Request::post(&target.endpoint, &headers, body);
    match tokio::time::timeout(inner.settings.timeout, request.send(&inner.tls, MAX_ANSWER)).await {
        Ok(Ok((status, _))) if status.is_success() => Ok(()),
        Ok(Ok((status, _))) => Err(format!("answered {status}")),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(format!("no answer within {:?}", inner.settings.timeout)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::post;
    use axum::Router;

    /// A backend that records each webhook it receives, after refusing the first
    /// `fail` of them with a 500.
    #[derive(Clone, Default)]
    struct Backend {
        received: Arc<Mutex<Vec<(HeaderMap, Bytes)>>>,
        fail: Arc<AtomicU64>,
        stall: Arc<std::sync::atomic::AtomicBool>,
    }

    async fn hook(State(b): State<Backend>, headers: HeaderMap, body: Bytes) -> StatusCode {
        if b.stall.load(Ordering::Relaxed) {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        if b.fail.load(Ordering::Relaxed) > 0 {
            b.fail.fetch_sub(1, Ordering::Relaxed);
            return StatusCode::INTERNAL_SERVER_ERROR;
        }
        lock(&b.received).push((headers, body));
        StatusCode::OK
    }

    async fn backend() -> (Backend, String) {
        let b = Backend::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let app = Router::new().route("/hook", post(hook)).with_state(b.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (b, url)
    }

    fn config(url: &str, types: &[&str], settings: WebhookSettings) -> (PusherConfig, PusherApp) {
        let app = PusherApp {
            id: "7".into(),
            key: "the-key".into(),
            secret: "the-secret".into(),
            webhooks: vec![WebhookTarget {
                url: url.into(),
                event_types: types.iter().map(|t| t.to_string()).collect(),
                headers: [("x-backend".to_string(), "yes".to_string())].into(),
            }],
            ..PusherApp::default()
        };
        (PusherConfig { apps: vec![app.clone()], webhooks: settings, ..PusherConfig::default() }, app)
    }

    fn fast() -> WebhookSettings {
        WebhookSettings {
            batch_window: Duration::from_millis(100),
            retry_backoff: Duration::from_millis(20),
            removal_delay: Duration::from_millis(300),
            timeout: Duration::from_millis(500),
            ..WebhookSettings::default()
        }
    }

    async fn wait_for(b: &Backend, n: usize) -> Vec<(HeaderMap, Value)> {
        for _ in 0..200 {
            let got = lock(&b.received).clone();
            if got.len() >= n {
                return got.into_iter().map(|(h, body)| (h, serde_json::from_slice(&body).unwrap())).collect();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{n} webhooks were not received");
    }

    fn names(v: &Value) -> Vec<String> {
        v["events"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap().to_owned()).collect()
    }

    #[tokio::test]
    async fn events_are_batched_signed_and_keyed() {
        let (b, url) = backend().await;
        let (config, app) = config(&url, &[], fast());
        let hooks = Webhooks::new(&config).unwrap();
        hooks.channel_occupied(&app, "presence-room");
        hooks.member_added(&app, "presence-room", "42");
        hooks.emit(&app, json!({ "name": "cache_miss", "channel": "cache-x" }));
        let got = wait_for(&b, 1).await;
        assert_eq!(got.len(), 1, "one request for the three");
        let (headers, body) = &got[0];
        assert_eq!(names(body), ["channel_occupied", "member_added", "cache_miss"]);
        assert_eq!(body["events"][1], json!({ "name": "member_added", "channel": "presence-room", "user_id": "42" }));
        assert!(body["time_ms"].as_i64().unwrap() > 1_600_000_000_000);
        assert_eq!(headers["x-pusher-key"], "the-key");
        assert_eq!(headers["x-backend"], "yes");
        assert_eq!(headers["content-type"], "application/json");
        let raw = lock(&b.received)[0].1.clone();
        assert_eq!(headers["x-pusher-signature"], super::super::sign::webhook_signature("the-secret", &raw).as_str());
    }

    #[tokio::test]
    async fn only_the_asked_event_types_go() {
        let (b, url) = backend().await;
        let (config, app) = config(&url, &["client_event"], fast());
        let hooks = Webhooks::new(&config).unwrap();
        assert!(hooks.wants(&app, "client_event"));
        assert!(!hooks.wants(&app, "channel_occupied"));
        hooks.channel_occupied(&app, "a");
        hooks.emit(&app, json!({ "name": "client_event", "channel": "private-a", "event": "client-x", "data": "{}" }));
        let got = wait_for(&b, 1).await;
        assert_eq!(names(&got[0].1), ["client_event"]);
    }

    #[tokio::test]
    async fn a_failed_request_is_tried_again() {
        let (b, url) = backend().await;
        b.fail.store(2, Ordering::Relaxed);
        let (config, app) = config(&url, &[], fast());
        let hooks = Webhooks::new(&config).unwrap();
        hooks.channel_occupied(&app, "a");
        let got = wait_for(&b, 1).await;
        assert_eq!(names(&got[0].1), ["channel_occupied"]);
        // Counted once the answer is read, after the backend recorded the request.
        for _ in 0..100 {
            if hooks.stats().sent.load(Ordering::Relaxed) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(hooks.stats().failed.load(Ordering::Relaxed), 2);
        assert_eq!(hooks.stats().sent.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn events_are_dropped_after_the_last_retry_and_the_next_go() {
        let (b, url) = backend().await;
        b.fail.store(3, Ordering::Relaxed);
        let (config, app) = config(&url, &[], WebhookSettings { max_retries: 2, ..fast() });
        let hooks = Webhooks::new(&config).unwrap();
        hooks.channel_occupied(&app, "lost");
        tokio::time::sleep(Duration::from_millis(400)).await;
        hooks.channel_occupied(&app, "next");
        let got = wait_for(&b, 1).await;
        assert_eq!(got[0].1["events"][0]["channel"], "next");
        assert_eq!(hooks.stats().dropped.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn the_queue_is_bounded() {
        let (b, url) = backend().await;
        b.stall.store(true, Ordering::Relaxed);
        let settings = WebhookSettings { queue_size: 3, max_batch_size: 1, batch_window: Duration::ZERO, ..fast() };
        let (config, app) = config(&url, &[], settings);
        let hooks = Webhooks::new(&config).unwrap();
        for i in 0..100 {
            hooks.emit(&app, json!({ "name": "cache_miss", "channel": format!("c{i}") }));
            tokio::task::yield_now().await;
        }
        let dropped = hooks.stats().dropped.load(Ordering::Relaxed);
        assert!((90..=97).contains(&dropped), "at most the queue and one in flight kept: {dropped} dropped");
    }

    #[tokio::test]
    async fn a_member_back_within_the_delay_sends_nothing() {
        let (b, url) = backend().await;
        let (config, app) = config(&url, &[], fast());
        let hooks = Webhooks::new(&config).unwrap();
        // A reload: removed, then added again at once; then one who really leaves.
        hooks.member_removed(&app, "presence-room", "1");
        hooks.channel_vacated(&app, "presence-room");
        hooks.channel_occupied(&app, "presence-room");
        hooks.member_added(&app, "presence-room", "1");
        hooks.member_removed(&app, "presence-room", "2");
        let got = wait_for(&b, 1).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(lock(&b.received).len(), 1);
        assert_eq!(names(&got[0].1), ["member_removed"]);
        assert_eq!(got[0].1["events"][0]["user_id"], "2");
    }

    #[test]
    fn targets_are_checked() {
        let target = |url: &str, types: &[&str]| WebhookTarget {
            url: url.into(),
            event_types: types.iter().map(|t| t.to_string()).collect(),
            headers: BTreeMap::new(),
        };
        assert!(target("https://example.com/hook", &["member_added"]).check().is_ok());
        assert!(target("ftp://example.com/hook", &[]).check().is_err());
        assert!(target("http://example.com/hook", &["member_joined"]).check().is_err());
        let bad_header = WebhookTarget { headers: [("a b".into(), "c".into())].into(), ..target("http://x/", &[]) };
        assert!(bad_header.check().is_err());
    }
}
