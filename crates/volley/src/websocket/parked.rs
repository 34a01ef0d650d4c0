//! What a parked connection keeps (see [`crate::park`]), and the checks and moves
//! that park and resume it.

use volley_proto::ParkedConnection;

use super::keepalive::ParkedKeepalive;
use super::{ConnectionInfo, Finish, Limits, WebSocket};

/// What a [quiescent](WebSocket::is_quiescent) connection keeps while parked (see
/// [`crate::park`]): everything but its transport, its (empty) buffers, queues and
/// close state, and its timers (a [`ParkedKeepalive`], kept apart).
#[cfg_attr(not(all(unix, feature = "park")), allow(dead_code))] // used by `crate::park`
pub(crate) struct ParkedSocket {
    conn: ParkedConnection,
    limits: Limits,
    info: ConnectionInfo,
    user_data: http::Extensions,
    dropped: u64,
}

#[cfg_attr(not(all(unix, feature = "park")), allow(dead_code))] // used by `crate::park`
impl ParkedSocket {
    /// The connection again, on `io`, with its timers, as it was parked.
    pub(crate) fn resume<S>(self, io: S, keepalive: Option<ParkedKeepalive>) -> WebSocket<S> {
        let ParkedSocket { conn, limits, info, user_data, dropped } = self;
        let keepalive = keepalive.map(|k| Box::new(k.resume()));
        WebSocket::running(io, conn.resume(), limits, info, user_data, keepalive, dropped)
    }

    /// Whether this is the server's end (whose peer masks its frames).
    pub(crate) fn is_server(&self) -> bool {
        self.conn.role() == volley_proto::Role::Server
    }

    /// The frame the connection would send for a prepared message (see
    /// [`ParkedConnection::prepared_frame`]).
    pub(crate) fn prepared_frame<'m>(
        &self,
        msg: &'m volley_proto::PreparedMessage,
    ) -> Option<(&'m bytes::Bytes, &'m bytes::Bytes)> {
        self.conn.prepared_frame(msg)
    }
}

impl<S> WebSocket<S> {
    /// Queues the rest of a frame written in part while the connection was parked, to
    /// go before anything else; `started`: some of the frame has left (nothing may be
    /// put before the rest).
    #[cfg_attr(not(all(unix, feature = "park")), allow(dead_code))] // used by `crate::park`
    pub(crate) fn queue_unsent(&mut self, rest: bytes::Bytes, started: bool) {
        debug_assert!(self.wq.is_empty());
        self.wq_len += rest.len();
        self.wq.push_back(rest);
        self.front_partial = started;
    }

    /// Whether the connection is open with nothing in flight: no input read and not
    /// yet handed out, no message half-received or half-sent, nothing queued for the
    /// transport, and no closing handshake under way. Only such a connection can be
    /// [parked](crate::park::Parking::park). After `recv` has waited for input, a
    /// connection whose writes all went out is quiescent.
    pub fn is_quiescent(&self) -> bool {
        self.finish == Finish::Running
            && self.wq.is_empty()
            && !self.read_eof
            && !self.dead
            && !self.drop_next
            && self.last.is_none()
            && self.close_timer.is_none()
            && self.conn.is_quiescent()
    }

    /// Splits a quiescent connection into its transport, what it must remember and
    /// its timers' state, or hands it back unchanged.
    #[allow(clippy::result_large_err)] // the error is the connection itself, handed back
    #[allow(clippy::type_complexity)]
    #[cfg_attr(not(all(unix, feature = "park")), allow(dead_code))] // used by `crate::park`
    pub(crate) fn park(self) -> Result<(S, ParkedSocket, Option<ParkedKeepalive>), Self> {
        if !self.is_quiescent() {
            return Err(self);
        }
        let WebSocket { io, conn, limits, info, user_data, keepalive, dropped, .. } = self;
        let conn = conn.park().expect("checked quiescent");
        let keepalive = keepalive.map(|k| k.park());
        Ok((io, ParkedSocket { conn, limits, info, user_data, dropped }, keepalive))
    }
}
