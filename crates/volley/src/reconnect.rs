//! A client connection that reconnects by itself: exponential backoff with full jitter,
//! a greeting (subscribe messages, authentication) re-sent on every new connection, and
//! a report of every state change.

use std::time::Duration;

use volley_proto::RandomSource;

use crate::client::ClientBuilder;
use crate::error::Error;
use crate::message::Message;
use crate::stream::MaybeTlsStream;
use crate::websocket::WebSocket;

/// Where a [`Reconnecting`] client is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionState {
    /// Opening a connection; `attempt` counts failures since the last success, from 0.
    Connecting {
        /// Failed attempts since the last connection.
        attempt: u32,
    },
    /// Connected, greeting sent.
    Connected,
    /// The connection ended or an attempt failed.
    Disconnected {
        /// Why, in words.
        reason: String,
    },
    /// Waiting before the next attempt.
    Waiting {
        /// How long.
        delay: Duration,
    },
}

/// Exponential backoff with full jitter: the n-th wait is uniform in
/// `[0, min(max, initial × factor^n)]`, so that many clients cut off together do not
/// come back together.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    /// The first ceiling. Default 500 ms.
    pub initial: Duration,
    /// The largest ceiling. Default 30 s.
    pub max: Duration,
    /// Growth per failure. Default 2.
    pub factor: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { initial: Duration::from_millis(500), max: Duration::from_secs(30), factor: 2.0 }
    }
}

impl Backoff {
    /// The ceiling after `failures` failures.
    pub fn ceiling(&self, failures: u32) -> Duration {
        let grown = self.initial.as_secs_f64() * self.factor.powi(failures.min(64) as i32);
        Duration::from_secs_f64(grown.min(self.max.as_secs_f64()))
    }

    /// A random wait after `failures` failures.
    pub fn delay(&self, failures: u32, random: &RandomSource) -> Duration {
        let mut b = [0u8; 4];
        random.fill(&mut b);
        let fraction = f64::from(u32::from_le_bytes(b)) / f64::from(u32::MAX);
        self.ceiling(failures).mul_f64(fraction)
    }
}

type StateHook = Box<dyn FnMut(&ConnectionState) + Send>;

/// A client that keeps one connection up. [`Reconnecting::recv`] and
/// [`Reconnecting::send`] connect (again) when needed; a closed or failed connection is
/// replaced after a backoff, and the greeting is sent first on each new one.
pub struct Reconnecting {
    builder: ClientBuilder,
    backoff: Backoff,
    greeting: Vec<Message>,
    on_state: Option<StateHook>,
    max_attempts: Option<u32>,
    ws: Option<WebSocket<MaybeTlsStream>>,
    failures: u32,
    random: RandomSource,
}

impl std::fmt::Debug for Reconnecting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconnecting").field("connected", &self.ws.is_some()).field("failures", &self.failures).finish()
    }
}

impl Reconnecting {
    /// A reconnecting client that connects with `builder` (URL, headers, TLS, proxy...).
    /// It connects on first use.
    pub fn new(builder: ClientBuilder) -> Self {
        Reconnecting {
            builder,
            backoff: Backoff::default(),
            greeting: Vec::new(),
            on_state: None,
            max_attempts: None,
            ws: None,
            failures: 0,
            random: RandomSource::secure(),
        }
    }

    /// Sets the backoff.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Messages sent first on every new connection (subscribe, authenticate...).
    pub fn greeting(mut self, messages: Vec<Message>) -> Self {
        self.greeting = messages;
        self
    }

    /// Called on every state change.
    pub fn on_state(mut self, hook: impl FnMut(&ConnectionState) + Send + 'static) -> Self {
        self.on_state = Some(Box::new(hook));
        self
    }

    /// Gives up after this many failed attempts in a row (default: never).
    pub fn max_attempts(mut self, n: Option<u32>) -> Self {
        self.max_attempts = n;
        self
    }

    /// Whether a connection is up.
    pub fn is_connected(&self) -> bool {
        self.ws.is_some()
    }

    fn report(&mut self, state: ConnectionState) {
        tracing::debug!(?state, "reconnecting client");
        if let Some(hook) = self.on_state.as_mut() {
            hook(&state);
        }
    }

    fn lost(&mut self, reason: String) {
        self.ws = None;
        self.report(ConnectionState::Disconnected { reason });
    }

    async fn connection(&mut self) -> Result<&mut WebSocket<MaybeTlsStream>, Error> {
        while self.ws.is_none() {
            self.report(ConnectionState::Connecting { attempt: self.failures });
            let result = match self.builder.clone().connect().await {
                Ok((mut ws, _)) => {
                    let mut greeted = Ok(());
                    for m in &self.greeting {
                        greeted = ws.feed(m.clone()).await;
                        if greeted.is_err() {
                            break;
                        }
                    }
                    match greeted {
                        Ok(()) => ws.flush().await.map(|()| ws),
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(ws) => {
                    self.failures = 0;
                    self.ws = Some(ws);
                    self.report(ConnectionState::Connected);
                }
                Err(e) => {
                    self.failures += 1;
                    self.report(ConnectionState::Disconnected { reason: e.to_string() });
                    if self.max_attempts.is_some_and(|max| self.failures >= max) {
                        return Err(e);
                    }
                    let delay = self.backoff.delay(self.failures - 1, &self.random);
                    self.report(ConnectionState::Waiting { delay });
                    tokio::time::sleep(delay).await;
                }
            }
        }
        self.ws.as_mut().ok_or(Error::Closed)
    }

    /// The next data message (text or binary; pings and pongs are handled), across
    /// reconnections. Fails only when [`Reconnecting::max_attempts`] is reached.
    pub async fn recv(&mut self) -> Result<Message, Error> {
        loop {
            let ws = self.connection().await?;
            match ws.recv().await {
                Some(Ok(m)) if m.is_data() => return Ok(m),
                Some(Ok(Message::Close(frame))) => {
                    self.lost(format!("closed by the server: {frame:?}"));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => self.lost(e.to_string()),
                None => self.lost("connection ended".into()),
            }
        }
    }

    /// Sends a message on the current connection, connecting first if needed. If the
    /// send fails the connection is dropped (the next call reconnects) and the error
    /// returned: the message may not have arrived.
    pub async fn send(&mut self, msg: Message) -> Result<(), Error> {
        let ws = self.connection().await?;
        let result = ws.send(msg).await;
        if let Err(e) = &result {
            let reason = e.to_string();
            self.lost(reason);
        }
        result
    }

    /// Closes the current connection, if any; the next `recv` or `send` reconnects.
    pub async fn close(&mut self) -> Result<(), Error> {
        match self.ws.take() {
            Some(mut ws) => ws.close(volley_proto::CloseCode::NORMAL, "").await,
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let b = Backoff::default();
        assert_eq!(b.ceiling(0), Duration::from_millis(500));
        assert_eq!(b.ceiling(3), Duration::from_secs(4));
        assert_eq!(b.ceiling(30), Duration::from_secs(30));
        let r = RandomSource::secure();
        for n in 0..10 {
            assert!(b.delay(n, &r) <= b.ceiling(n));
        }
    }
}
