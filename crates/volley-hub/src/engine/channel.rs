//! Channel names: which namespace a channel belongs to, whether it is private or
//! limited to users, and the options that follow.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{ChannelConfig, ChannelOptions};
use crate::protocol::ErrorReply;

/// The namespaces, compiled from the configuration.
#[derive(Debug)]
pub(crate) struct Channels {
    config: ChannelConfig,
    without: Arc<ChannelOptions>,
    namespaces: HashMap<String, Arc<ChannelOptions>>,
    /// Each namespace's `channel_regex`, compiled (by name; "" for no namespace).
    regexes: HashMap<String, regex::Regex>,
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// What a channel's name says about it.
#[derive(Clone, Debug)]
pub(crate) struct Resolved {
    pub options: Arc<ChannelOptions>,
    /// Starts with the private prefix: a subscription token is needed.
    pub private: bool,
    /// The users of a user-limited channel (`dialog#42,43`), if it is one.
    pub users: Option<Vec<String>>,
}

impl Channels {
    pub fn new(config: &ChannelConfig) -> Result<Self, ConfigError> {
        if !config.without_namespace.name.is_empty() {
            return Err(ConfigError(
                "channel.without_namespace: has a name; namespaces go in channel.namespaces".into(),
            ));
        }
        let mut namespaces = HashMap::new();
        for ns in &config.namespaces {
            let ok = !ns.name.is_empty() && ns.name.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
            if !ok {
                return Err(ConfigError(format!(
                    "channel.namespaces: name {:?}: use letters, digits, '_', '-' and '.'",
                    ns.name
                )));
            }
            check_options(&ns.name, ns)?;
            if namespaces.insert(ns.name.clone(), Arc::new(ns.clone())).is_some() {
                return Err(ConfigError(format!("channel.namespaces: {:?} appears twice", ns.name)));
            }
        }
        check_options("", &config.without_namespace)?;
        let mut regexes = HashMap::new();
        for o in config.namespaces.iter().chain(std::iter::once(&config.without_namespace)) {
            if !o.channel_regex.is_empty() {
                let anchored = format!("^(?:{})$", o.channel_regex);
                let re = regex::Regex::new(&anchored)
                    .map_err(|e| ConfigError(format!("namespace {:?}: channel_regex: {e}", o.name)))?;
                regexes.insert(o.name.clone(), re);
            }
        }
        Ok(Channels {
            config: config.clone(),
            without: Arc::new(config.without_namespace.clone()),
            namespaces,
            regexes,
        })
    }

    /// Resolves a channel's name: 102 for an unknown namespace or a bad name, 106 for
    /// one too long.
    pub fn resolve(&self, channel: &str) -> Result<Resolved, ErrorReply> {
        if channel.is_empty() {
            return Err(ErrorReply::BAD_REQUEST);
        }
        if channel.len() > self.config.max_length {
            return Err(ErrorReply::LIMIT_EXCEEDED);
        }
        if channel.chars().any(|c| c.is_control()) {
            return Err(ErrorReply::UNKNOWN_CHANNEL);
        }
        let private = !self.config.private_prefix.is_empty() && channel.starts_with(&self.config.private_prefix);
        let name = if private { &channel[self.config.private_prefix.len()..] } else { channel };
        let (options, rest) = match name.split_once(self.config.namespace_boundary.as_str()) {
            Some((ns, rest)) if !self.config.namespace_boundary.is_empty() => {
                (self.namespaces.get(ns).cloned().ok_or(ErrorReply::UNKNOWN_CHANNEL)?, rest)
            }
            _ => (self.without.clone(), name),
        };
        if let Some(re) = self.regexes.get(&options.name) {
            if !re.is_match(rest) {
                return Err(ErrorReply::UNKNOWN_CHANNEL);
            }
        }
        let users = if options.allow_user_limited_channels && !self.config.user_boundary.is_empty() {
            name.rsplit_once(self.config.user_boundary.as_str())
                .map(|(_, users)| users.split(self.config.user_separator.as_str()).map(str::to_owned).collect())
        } else {
            None
        };
        Ok(Resolved { options, private, users })
    }

    /// The personal channel of a user.
    pub fn personal(&self, namespace: &str, user: &str) -> String {
        if namespace.is_empty() {
            format!("{}{user}", self.config.user_boundary)
        } else {
            format!("{namespace}{}{}{user}", self.config.namespace_boundary, self.config.user_boundary)
        }
    }
}

fn check_options(name: &str, o: &ChannelOptions) -> Result<(), ConfigError> {
    let what = if name.is_empty() { "channel.without_namespace".to_string() } else { format!("namespace {name:?}") };
    if (o.force_recovery || o.allow_recovery) && !o.has_history() {
        return Err(ConfigError(format!("{what}: recovery needs history (history_size and history_ttl above 0)")));
    }
    if o.history_size > 0 && o.history_ttl.is_zero() {
        return Err(ConfigError(format!("{what}: history_size is set but history_ttl is 0")));
    }
    for d in &o.allowed_delta_types {
        if d != "fossil" {
            return Err(ConfigError(format!(
                "{what}: allowed_delta_types: {d:?} is not a delta type (only \"fossil\")"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn channels() -> Channels {
        let config: ChannelConfig = serde_json::from_value(serde_json::json!({
            "namespaces": [
                {"name": "chat", "presence": true},
                {"name": "dialog", "allow_user_limited_channels": true},
                {"name": "rooms", "channel_regex": "[a-z]+[0-9]*"},
            ]
        }))
        .unwrap();
        Channels::new(&config).unwrap()
    }

    #[test]
    fn namespaces_private_and_user_limited_channels_resolve() {
        let c = channels();
        assert!(c.resolve("chat:room").unwrap().options.presence);
        assert!(!c.resolve("news").unwrap().options.presence);
        assert_eq!(c.resolve("nope:x").unwrap_err(), ErrorReply::UNKNOWN_CHANNEL);
        let p = c.resolve("$chat:secret").unwrap();
        assert!(p.private && p.options.presence);
        assert_eq!(c.resolve("dialog:a#42,43").unwrap().users.unwrap(), ["42", "43"]);
        assert!(c.resolve("chat:a#42").unwrap().users.is_none(), "not allowed in chat");
        assert_eq!(c.resolve(&"x".repeat(256)).unwrap_err(), ErrorReply::LIMIT_EXCEEDED);
        assert_eq!(c.resolve("").unwrap_err(), ErrorReply::BAD_REQUEST);
        assert!(c.resolve("rooms:lobby7").is_ok());
        assert_eq!(c.resolve("rooms:Lobby").unwrap_err(), ErrorReply::UNKNOWN_CHANNEL);
        assert_eq!(c.resolve("rooms:lobby7x").unwrap_err(), ErrorReply::UNKNOWN_CHANNEL, "the whole name must match");
        assert_eq!(c.personal("", "42"), "#42");
        assert_eq!(c.personal("chat", "42"), "chat:#42");
    }

    #[test]
    fn options_that_cannot_work_are_refused() {
        let bad: ChannelConfig = serde_json::from_value(serde_json::json!({
            "namespaces": [{"name": "x", "force_recovery": true}]
        }))
        .unwrap();
        assert!(Channels::new(&bad).unwrap_err().0.contains("recovery needs history"));
        let bad: ChannelConfig = serde_json::from_value(serde_json::json!({"namespaces": [{"name": "a b"}]})).unwrap();
        assert!(Channels::new(&bad).is_err());
        let bad: ChannelConfig =
            serde_json::from_value(serde_json::json!({"namespaces": [{"name": "a", "channel_regex": "("}]})).unwrap();
        assert!(Channels::new(&bad).unwrap_err().0.contains("channel_regex"));
    }
}
