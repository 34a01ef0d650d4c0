//! Transports: how clients reach the hub. Each turns its connection into commands for
//! a session and writes the session's queue back.

pub mod emulation;
pub mod http;
pub(crate) mod long_poll;
pub mod position;
#[cfg(unix)]
pub mod tcp;
pub(crate) mod uni;
pub mod websocket;

/// The WebSocket configurations of the hub's two client endpoints, built once per hub:
/// every connection keeps a reference to its configuration's limits, so one built per
/// connection cost each connection a copy (88 bytes).
#[derive(Debug, Clone)]
pub(crate) struct WebSocketConfigs {
    /// `/connection/websocket`: the command size limit, the Protobuf subprotocol, and
    /// permessage-deflate only when `client.websocket_compression` is on.
    pub hub: volley::Config,
    /// Pusher's `/app/{key}`: the same, without the subprotocol.
    pub pusher: volley::Config,
}

impl WebSocketConfigs {
    /// The configurations `config` asks for.
    ///
    /// Neither has the library's WebSocket pings where the client protocol has its own
    /// (Centrifugo's `{}` every `client.ping_interval`, on unless set to 0; Pusher's
    /// `pusher:ping` after the activity timeout, always): those already find a dead peer
    /// and keep proxies' mappings alive, and a second keepalive would cost every idle
    /// client another write, wakeup and read, and a parked client its timers' state.
    pub fn new(config: &crate::HubConfig) -> Self {
        let c = &config.client;
        let mut base =
            volley::Config::default().max_message_size(c.max_command_size).max_frame_size(c.max_command_size);
        if !c.websocket_compression {
            base = base.deflate(None);
        }
        let mut hub = base.clone().protocols([websocket::PROTOBUF_SUBPROTOCOL]);
        if !c.ping_interval.is_zero() {
            hub = hub.ping_interval(None);
        }
        WebSocketConfigs { hub, pusher: base.ping_interval(None) }
    }
}
