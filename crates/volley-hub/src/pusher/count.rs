//! Subscription counting: `pusher_internal:subscription_count` to the subscribers of a
//! public, private or cache channel when their number changes (apps with
//! `enable_subscription_count`), and the `subscription_count` webhook.
//!
//! The number is the cluster's: the subscribers counted in the presence of the
//! channel's occupancy channel (`conn::occupancy_channel`). Changes are throttled per
//! channel on each node: the first change in a while is told at once, the changes that
//! follow within [`INTERVAL`] ([`INTERVAL_LARGE`] on channels of more than
//! [`LARGE`] subscribers, as Pusher does) are told once, at the end of it, with the
//! number then. A channel that many clients join at once so costs a few events, not
//! one per subscriber to every subscriber.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::json;

use super::{internal_channel, PusherApp};
use crate::engine::{lock, Hub};

/// The least time between two counts of one channel from one node.
pub const INTERVAL: Duration = Duration::from_secs(1);

/// The least time between two counts of a channel of more than [`LARGE`] subscribers.
pub const INTERVAL_LARGE: Duration = Duration::from_secs(5);

/// The subscribers beyond which a channel's counts are told at most every
/// [`INTERVAL_LARGE`].
pub const LARGE: u64 = 100;

/// The channels whose count is being told, by internal name: whether it changed again
/// since it was last read.
#[derive(Default)]
pub(crate) struct Counts(Mutex<HashMap<String, bool>>);

/// The number of subscribers of `channel` changed (a subscription here began or
/// ended). Tells it now, or at the end of the channel's interval.
pub(crate) fn changed(hub: &Hub, app: &PusherApp, channel: &str, occupancy: String) {
    let internal = internal_channel(&app.id, channel);
    {
        let mut counts = lock(&hub.inner.pusher_counts.0);
        if let Some(again) = counts.get_mut(&internal) {
            // A task tells this channel's count: it reads it again after its interval.
            *again = true;
            return;
        }
        counts.insert(internal.clone(), false);
    }
    let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
    let (hub, app, channel) = (hub.clone(), app.clone(), channel.to_owned());
    rt.spawn(async move {
        loop {
            let n = match hub.inner.broker.presence_stats(&occupancy).await {
                Ok(s) => u64::from(s.clients),
                Err(e) => {
                    tracing::debug!(error = %e, channel, "subscription count not read");
                    lock(&hub.inner.pusher_counts.0).remove(&internal);
                    return;
                }
            };
            tell(&hub, &app, &channel, &internal, n).await;
            tokio::time::sleep(if n > LARGE { INTERVAL_LARGE } else { INTERVAL }).await;
            let mut counts = lock(&hub.inner.pusher_counts.0);
            match counts.get_mut(&internal) {
                Some(again) if *again => *again = false,
                _ => {
                    counts.remove(&internal);
                    return;
                }
            }
        }
    });
}

/// The event to the channel's subscribers (when the app counts), and the webhook.
async fn tell(hub: &Hub, app: &PusherApp, channel: &str, internal: &str, n: u64) {
    if app.enable_subscription_count && n > 0 {
        let data = json!({ "subscription_count": n });
        super::conn::publish_internal(hub, internal, "pusher_internal:subscription_count", &data, None).await;
    }
    if hub.inner.webhooks.wants(app, "subscription_count") {
        hub.inner
            .webhooks
            .emit(app, json!({ "name": "subscription_count", "channel": channel, "subscription_count": n }));
    }
}
