//! The keepalive, idle and lifetime timers of a running connection, and what they
//! keep while it is parked.

use std::future::Future;
use std::pin::Pin;
use std::task::Context;
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{sleep, sleep_until, Instant, Sleep};
use volley_proto::CloseCode;

use super::{Finish, WebSocket};
use crate::config::Config;
use crate::error::Error;

/// Keepalive, idle and lifetime timers, with their state and settings.
pub(super) struct Keepalive {
    /// Fires for the next ping, or at the pong deadline when a ping is out.
    pub(super) ping_timer: Option<Pin<Box<Sleep>>>,
    pub(super) idle_timer: Option<Pin<Box<Sleep>>>,
    pub(super) lifetime_timer: Option<Pin<Box<Sleep>>>,
    pub(super) state: KeepaliveState,
}

/// What the timers go by, the same running and parked.
#[derive(Clone, Copy)]
pub(super) struct KeepaliveState {
    /// When the outstanding ping left; its payload is `seq`.
    pub(super) outstanding: Option<Instant>,
    pub(super) seq: u64,
    pub(super) rtt: Option<Duration>,
    pub(super) last_read: Instant,
    pub(super) ping_interval: Option<Duration>,
    pub(super) pong_timeout: Duration,
    pub(super) idle_timeout: Option<Duration>,
}

impl Keepalive {
    /// The timers `config` asks for, or `None` when it asks for none.
    pub(super) fn new(config: &Config) -> Option<Box<Self>> {
        if config.ping_interval.is_none() && config.idle_timeout.is_none() && config.max_lifetime.is_none() {
            return None;
        }
        Some(Box::new(Keepalive {
            ping_timer: config.ping_interval.map(|d| Box::pin(sleep(d))),
            idle_timer: config.idle_timeout.map(|d| Box::pin(sleep(d))),
            lifetime_timer: config.max_lifetime.map(|d| Box::pin(sleep(d))),
            state: KeepaliveState {
                outstanding: None,
                seq: 0,
                rtt: None,
                last_read: Instant::now(),
                ping_interval: config.ping_interval,
                pong_timeout: config.pong_timeout,
                idle_timeout: config.idle_timeout,
            },
        }))
    }

    /// Drops the timers, keeping when each one is due.
    #[cfg_attr(not(all(unix, feature = "park")), allow(dead_code))] // used by `crate::park`
    pub(super) fn park(self) -> ParkedKeepalive {
        let at = |t: Option<Pin<Box<Sleep>>>| t.map(|t| t.deadline());
        ParkedKeepalive {
            ping_at: at(self.ping_timer),
            idle_at: at(self.idle_timer),
            lifetime_at: at(self.lifetime_timer),
            state: self.state,
        }
    }
}

/// A parked connection's [`Keepalive`]: the timers' deadlines, without the timers. A
/// tokio timer that has been polled holds the waker of its task, and with it the
/// memory of the task that ended when the connection was parked. Kept apart from the
/// [`ParkedSocket`] (the parking stores it in its own table), so that connections
/// without timers do not pay for it and connections with timers do not each
/// allocate it.
#[cfg_attr(not(all(unix, feature = "park")), allow(dead_code))] // used by `crate::park`
pub(crate) struct ParkedKeepalive {
    pub(super) ping_at: Option<Instant>,
    pub(super) idle_at: Option<Instant>,
    pub(super) lifetime_at: Option<Instant>,
    pub(super) state: KeepaliveState,
}

#[cfg_attr(not(all(unix, feature = "park")), allow(dead_code))] // used by `crate::park`
impl ParkedKeepalive {
    /// The timers again, due when they were.
    pub(super) fn resume(self) -> Keepalive {
        let timer = |at: Option<Instant>| at.map(|at| Box::pin(sleep_until(at)));
        Keepalive {
            ping_timer: timer(self.ping_at),
            idle_timer: timer(self.idle_at),
            lifetime_timer: timer(self.lifetime_at),
            state: self.state,
        }
    }

    /// The earliest keepalive, idle or lifetime deadline: the connection must be
    /// running by then, even if the peer sends nothing.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        [self.ping_at, self.idle_at, self.lifetime_at].into_iter().flatten().min()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> WebSocket<S> {
    /// Runs the keepalive, idle and lifetime timers.
    pub(super) fn poll_timers(&mut self, cx: &mut Context<'_>) {
        let Some(k) = self.keepalive.as_deref_mut() else {
            return;
        };
        let now = Instant::now();
        let mut sent_ping = false;
        if let Some(t) = k.ping_timer.as_mut() {
            if t.as_mut().poll(cx).is_ready() {
                if k.state.outstanding.is_some() {
                    // The peer did not answer the last ping in time: it is gone.
                    k.ping_timer = None;
                    tracing::debug!(id = self.info.id, "pong timeout: closing");
                    self.dead = true;
                    self.abort_with(CloseCode::INTERNAL_ERROR, "keepalive timeout");
                    self.set_last(Err(Error::Timeout(crate::error::Timeout::KeepalivePong)));
                    self.finish = Finish::Flushing;
                    return;
                }
                k.state.seq += 1;
                self.conn.set_control_priority(true);
                if self.conn.send_ping(Bytes::copy_from_slice(&k.state.seq.to_be_bytes())).is_ok() {
                    k.state.outstanding = Some(now);
                    t.as_mut().reset(now + k.state.pong_timeout);
                    let _ = t.as_mut().poll(cx);
                } else {
                    k.ping_timer = None;
                }
                self.conn.set_control_priority(!self.wq.is_empty());
                sent_ping = true;
            }
        }
        let mut close = None;
        if let (Some(t), Some(idle)) = (k.idle_timer.as_mut(), k.state.idle_timeout) {
            if t.as_mut().poll(cx).is_ready() {
                let due = k.state.last_read + idle;
                if due > now {
                    t.as_mut().reset(due);
                    let _ = t.as_mut().poll(cx);
                } else {
                    k.idle_timer = None;
                    close = Some("idle timeout");
                }
            }
        }
        if let Some(t) = k.lifetime_timer.as_mut() {
            if t.as_mut().poll(cx).is_ready() {
                k.lifetime_timer = None;
                close = close.or(Some("connection lifetime reached"));
            }
        }
        if sent_ping {
            self.take_transmits();
        }
        if let Some(reason) = close {
            self.local_close(CloseCode::GOING_AWAY, reason);
        }
    }

    pub(super) fn on_pong(&mut self, payload: &[u8]) {
        let Some(k) = self.keepalive.as_deref_mut() else {
            return;
        };
        if let Some(at) = k.state.outstanding {
            if payload == k.state.seq.to_be_bytes() {
                k.state.rtt = Some(at.elapsed());
                k.state.outstanding = None;
                if let (Some(t), Some(every)) = (k.ping_timer.as_mut(), k.state.ping_interval) {
                    t.as_mut().reset(at + every);
                }
            }
        }
    }
}
