//! The error codes of replies (100-113) and the disconnect codes, with the clients'
//! reconnect rule: 3000-3499 and 4000-4499 reconnect, 3500-3999 and 4500-4999 do not.

use std::borrow::Cow;
use std::fmt;

/// An error in a reply: a code the clients know, a message, and whether retrying may
/// succeed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ErrorReply {
    /// The code (100-113 are the protocol's; 400-1999 are the application's).
    pub code: u32,
    /// For humans.
    pub message: Cow<'static, str>,
    /// Retrying the same command later may succeed.
    pub temporary: bool,
}

impl fmt::Display for ErrorReply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ErrorReply {}

const fn error(code: u32, message: &'static str, temporary: bool) -> ErrorReply {
    ErrorReply { code, message: Cow::Borrowed(message), temporary }
}

impl ErrorReply {
    /// 100: something failed on the server; temporary.
    pub const INTERNAL: ErrorReply = error(100, "internal server error", true);
    /// 101: the connection is not authenticated (or a command came before connect).
    pub const UNAUTHORIZED: ErrorReply = error(101, "unauthorized", false);
    /// 102: the channel's namespace does not exist, or its name is not allowed.
    pub const UNKNOWN_CHANNEL: ErrorReply = error(102, "unknown channel", false);
    /// 103: the client may not do this on this channel.
    pub const PERMISSION_DENIED: ErrorReply = error(103, "permission denied", false);
    /// 104: no such method.
    pub const METHOD_NOT_FOUND: ErrorReply = error(104, "method not found", false);
    /// 105: the client is already subscribed to the channel.
    pub const ALREADY_SUBSCRIBED: ErrorReply = error(105, "already subscribed", false);
    /// 106: a limit was reached (channels per client, name length, ...).
    pub const LIMIT_EXCEEDED: ErrorReply = error(106, "limit exceeded", false);
    /// 107: the command is malformed.
    pub const BAD_REQUEST: ErrorReply = error(107, "bad request", false);
    /// 108: the feature is not enabled (history or presence off on the channel).
    pub const NOT_AVAILABLE: ErrorReply = error(108, "not available", false);
    /// 109: the token expired: the client gets a new one.
    pub const TOKEN_EXPIRED: ErrorReply = error(109, "token expired", false);
    /// 110: the connection expired.
    pub const EXPIRED: ErrorReply = error(110, "expired", false);
    /// 111: too many commands; temporary.
    pub const TOO_MANY_REQUESTS: ErrorReply = error(111, "too many requests", true);
    /// 112: the stream does not hold the position asked for.
    pub const UNRECOVERABLE_POSITION: ErrorReply = error(112, "unrecoverable position", false);
    /// 113: the token was revoked.
    pub const TOKEN_REVOKED: ErrorReply = error(113, "token revoked", false);
}

/// Why the server ends a connection: sent as the WebSocket close code and reason (or as
/// a disconnect push on transports without one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disconnect {
    /// The code.
    pub code: u16,
    /// For humans; at most 123 bytes (the close frame's limit).
    pub reason: Cow<'static, str>,
}

const fn disconnect(code: u16, reason: &'static str) -> Disconnect {
    Disconnect { code, reason: Cow::Borrowed(reason) }
}

impl Disconnect {
    /// 3000: the connection closed without a word from the server.
    pub const CONNECTION_CLOSED: Disconnect = disconnect(3000, "connection closed");
    /// 3001: the server is shutting down; reconnect (to another node).
    pub const SHUTDOWN: Disconnect = disconnect(3001, "shutdown");
    /// 3004: an internal error.
    pub const SERVER_ERROR: Disconnect = disconnect(3004, "internal server error");
    /// 3005: the connection's token expired and was not refreshed.
    pub const EXPIRED: Disconnect = disconnect(3005, "connection expired");
    /// 3006: a subscription's token expired and was not refreshed. Not sent by the hub,
    /// which unsubscribes such a subscription with 2501 and keeps the connection.
    pub const SUB_EXPIRED: Disconnect = disconnect(3006, "subscription expired");
    /// 3008: the client did not read fast enough: its outbound queue overflowed.
    pub const SLOW: Disconnect = disconnect(3008, "slow");
    /// 3009: writing to the client failed.
    pub const WRITE_ERROR: Disconnect = disconnect(3009, "write error");
    /// 3010: the client's position in a stream was lost: it reconnects and recovers (a
    /// gap in a server-side subscription; a client's own gets unsubscribe 2500).
    pub const INSUFFICIENT_STATE: Disconnect = disconnect(3010, "insufficient state");
    /// 3011: the server asks the client to reconnect.
    pub const FORCE_RECONNECT: Disconnect = disconnect(3011, "force reconnect");
    /// 3012: the client did not answer the server's pings.
    pub const NO_PONG: Disconnect = disconnect(3012, "no pong");
    /// 3013: too many commands.
    pub const TOO_MANY_REQUESTS: Disconnect = disconnect(3013, "too many requests");
    /// 3500: the connection token is invalid.
    pub const INVALID_TOKEN: Disconnect = disconnect(3500, "invalid token");
    /// 3501: a malformed command, or commands in the wrong order.
    pub const BAD_REQUEST: Disconnect = disconnect(3501, "bad request");
    /// 3502: the client did not connect in time after opening the connection.
    pub const STALE: Disconnect = disconnect(3502, "stale");
    /// 3503: the server disconnects the client and asks it not to reconnect.
    pub const FORCE_NO_RECONNECT: Disconnect = disconnect(3503, "force disconnect");
    /// 3504: a connection limit (per user, per IP, in total) was reached.
    pub const CONNECTION_LIMIT: Disconnect = disconnect(3504, "connection limit");
    /// 3505: the client subscribed to too many channels.
    pub const CHANNEL_LIMIT: Disconnect = disconnect(3505, "channel limit");
    /// 3506: the client's format cannot carry what it would receive (binary data to a
    /// JSON client).
    pub const INAPPROPRIATE_PROTOCOL: Disconnect = disconnect(3506, "inappropriate protocol");
    /// 3507: the client may not do what it asked (a refused server-side subscription).
    pub const PERMISSION_DENIED: Disconnect = disconnect(3507, "permission denied");
    /// 3508: what the client asked for is not enabled.
    pub const NOT_AVAILABLE: Disconnect = disconnect(3508, "not available");
    /// 3509: the client's commands failed too often.
    pub const TOO_MANY_ERRORS: Disconnect = disconnect(3509, "too many errors");

    /// Whether a client reconnects after this code (the clients' rule).
    pub fn reconnect(&self) -> bool {
        let c = self.code;
        !(3500..4000).contains(&c) && !(4500..5000).contains(&c)
    }
}

impl fmt::Display for Disconnect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reconnect_rule_is_the_clients() {
        for (code, again) in [
            (3000, true),
            (3499, true),
            (3500, false),
            (3999, false),
            (4000, true),
            (4499, true),
            (4500, false),
            (4999, false),
        ] {
            assert_eq!(Disconnect { code, reason: "".into() }.reconnect(), again, "{code}");
        }
    }
}
