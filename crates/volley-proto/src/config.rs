//! Configuration of a protocol connection: limits, the source of randomness, and where
//! its buffers come from.

use std::fmt;
use std::sync::Arc;

use bytes::BytesMut;
use rand::RngCore;

/// Fills buffers with random bytes: the client's masking keys and handshake keys.
///
/// The default draws from a cryptographically secure, per-thread generator seeded by
/// the operating system, as RFC 6455 §5.3 asks ("the masking key MUST be derived from
/// a strong source of entropy"). Tests substitute a fixed source to get byte-exact
/// output.
///
/// The default allocates nothing: a [`Config`] made for each connection costs no
/// allocation that lives as long as the connection.
#[derive(Clone)]
pub struct RandomSource(Option<Arc<FillFn>>);

type FillFn = dyn Fn(&mut [u8]) + Send + Sync;

impl RandomSource {
    /// The operating-system-seeded secure generator (the default).
    pub fn secure() -> Self {
        RandomSource(None)
    }

    /// A source backed by any function, for tests and special needs.
    pub fn from_fn(f: impl Fn(&mut [u8]) + Send + Sync + 'static) -> Self {
        RandomSource(Some(Arc::new(f)))
    }

    /// A source that repeats `bytes` forever: byte-exact output in tests. Never use it
    /// on a real network.
    pub fn fixed(bytes: [u8; 4]) -> Self {
        RandomSource::from_fn(move |buf| {
            for (i, b) in buf.iter_mut().enumerate() {
                *b = bytes[i & 3];
            }
        })
    }

    /// Fills `buf`.
    pub fn fill(&self, buf: &mut [u8]) {
        match &self.0 {
            None => rand::rng().fill_bytes(buf),
            Some(f) => f(buf),
        }
    }

    /// Four random bytes: a masking key.
    pub fn mask_key(&self) -> [u8; 4] {
        let mut k = [0u8; 4];
        self.fill(&mut k);
        k
    }
}

impl Default for RandomSource {
    fn default() -> Self {
        RandomSource::secure()
    }
}

impl fmt::Debug for RandomSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RandomSource")
    }
}

/// A pool of buffers that connections take their input and output buffers from, and
/// give them back to when they release them
/// ([`Connection::release_idle_memory`](crate::Connection::release_idle_memory)).
///
/// The core keeps no pool of its own (it never touches threads or globals): a driver
/// that wants released buffers reused supplies one through [`Config::buffers`]. The
/// tokio layer keeps a few per thread.
pub trait BufferPool: Send + Sync {
    /// An empty buffer to use, if the pool has one.
    fn take(&self) -> Option<BytesMut>;
    /// A buffer the connection no longer needs: empty, but possibly still sharing its
    /// allocation with payloads the application holds. The pool keeps it or drops it.
    fn give(&self, buf: BytesMut);
}

/// Where a connection's buffers come from: a [`BufferPool`], or none (the default:
/// each buffer is allocated when needed and freed when released).
#[derive(Clone, Default)]
pub struct Buffers(Option<Arc<dyn BufferPool>>);

impl Buffers {
    /// No pool: buffers are allocated when needed and freed when released.
    pub fn none() -> Self {
        Buffers(None)
    }

    /// Buffers from `pool`.
    pub fn pool(pool: Arc<dyn BufferPool>) -> Self {
        Buffers(Some(pool))
    }

    /// A buffer from the pool, if there is a pool and it has one.
    pub fn take(&self) -> Option<BytesMut> {
        self.0.as_ref()?.take()
    }

    /// Hands a released buffer to the pool (or drops it, without one).
    pub fn give(&self, buf: BytesMut) {
        if let Some(pool) = &self.0 {
            pool.give(buf);
        }
    }
}

impl fmt::Debug for Buffers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "Buffers(pool)" } else { "Buffers(none)" })
    }
}

/// Limits and settings of one WebSocket connection's protocol core.
///
/// Every limit guards memory against a hostile peer; each default is chosen to let
/// ordinary applications through untouched.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Config {
    /// The largest frame payload accepted, in bytes. Default 16 MiB: a whole frame is
    /// buffered before it is delivered, so this bounds the read buffer. A larger frame
    /// fails the connection with 1009.
    pub max_frame_size: usize,
    /// The largest message accepted, in bytes, summed over its fragments. Default
    /// 64 MiB: big enough for normal use, small enough to stop a peer from eating
    /// memory. A larger message fails the connection with 1009.
    pub max_message_size: usize,
    /// The largest opening handshake (request or response head) accepted, in bytes.
    /// Default 16 KiB, in line with common HTTP servers. Past it the server answers 431.
    pub max_handshake_size: usize,
    /// The most header fields accepted in the opening handshake. Default 64.
    pub max_headers: usize,
    /// Payloads up to this many bytes are copied next to their frame header so that a
    /// batch of small frames leaves in one contiguous buffer; larger ones are sent by
    /// reference. Default 2 KiB.
    pub inline_payload_size: usize,
    /// Where the client's masking keys and handshake keys come from.
    pub random: RandomSource,
    /// Where input and output buffers come from, and go when released. Default: no
    /// pool (the tokio layer's configurations supply its per-thread pool).
    pub buffers: Buffers,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_frame_size: 16 << 20,
            max_message_size: 64 << 20,
            max_handshake_size: 16 << 10,
            max_headers: 64,
            inline_payload_size: 2 << 10,
            random: RandomSource::default(),
            buffers: Buffers::none(),
        }
    }
}

/// A configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub &'static str);

impl Config {
    /// Checks that the settings are usable together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_frame_size == 0 {
            return Err(ConfigError("max_frame_size must be at least 1"));
        }
        if self.max_message_size == 0 {
            return Err(ConfigError("max_message_size must be at least 1"));
        }
        if self.max_handshake_size < 64 {
            return Err(ConfigError("max_handshake_size must be at least 64"));
        }
        if self.max_headers < 4 {
            return Err(ConfigError("max_headers must be at least 4"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_source_fills_as_it_says() {
        // The secure default: 32 bytes drawn twice differ (a repeat has odds of 2^-256).
        let secure = RandomSource::default();
        let (mut a, mut b) = ([0u8; 32], [0u8; 32]);
        secure.fill(&mut a);
        secure.clone().fill(&mut b);
        assert_ne!(a, b);
        let mut buf = [0u8; 6];
        RandomSource::fixed([1, 2, 3, 4]).fill(&mut buf);
        assert_eq!(buf, [1, 2, 3, 4, 1, 2]);
        assert_eq!(RandomSource::from_fn(|b| b.fill(7)).mask_key(), [7; 4]);
    }
}
