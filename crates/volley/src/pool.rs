//! Released buffers, kept per thread for the next connection that reads or writes: the
//! [`BufferPool`] every configuration of this crate gives the protocol core.
//!
//! A connection gives up its empty input and output buffers each time it is about to
//! wait ([`Connection::release_idle_memory`](volley_proto::Connection::release_idle_memory)),
//! so that an idle connection holds none. Without this pool, a server whose
//! connections each send one message at a time would allocate and free both buffers
//! for every message; instead each thread keeps the last few it released, whole and no
//! longer shared, and hands them out again. The pool never grows past
//! [`MAX_POOLED`] buffers of at most [`MAX_SIZE`] bytes each, per thread.

use std::cell::RefCell;

use std::sync::{Arc, LazyLock};

use bytes::BytesMut;
use volley_proto::{BufferPool, Buffers};

/// Buffers kept per thread.
pub(crate) const MAX_POOLED: usize = 4;
/// Smaller buffers are not worth keeping.
pub(crate) const MIN_SIZE: usize = 1 << 10;
/// Larger buffers (grown for a large frame or a long burst) are freed.
pub(crate) const MAX_SIZE: usize = 64 << 10;

/// The per-thread pool, as the protocol core's [`BufferPool`].
struct PerThread;

impl BufferPool for PerThread {
    fn take(&self) -> Option<BytesMut> {
        take()
    }

    fn give(&self, buf: BytesMut) {
        give(buf);
    }
}

static PER_THREAD: LazyLock<Arc<dyn BufferPool>> = LazyLock::new(|| Arc::new(PerThread));

/// The per-thread pool, for a protocol configuration.
pub(crate) fn per_thread() -> Buffers {
    Buffers::pool(Arc::clone(&PER_THREAD))
}

thread_local! {
    static POOL: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// Keeps `buf` for reuse if it is empty, its allocation is no longer shared (no
/// payload split from it is still held) and its size is between [`MIN_SIZE`] and
/// [`MAX_SIZE`]; otherwise drops it.
pub(crate) fn give(mut buf: BytesMut) {
    if !buf.is_empty() {
        return;
    }
    // Asking for one byte more than the handle has makes it reclaim the whole
    // allocation, which succeeds only when nothing else shares it. A buffer still
    // shared with payloads the application holds is freed instead, once they are.
    if !buf.try_reclaim(buf.capacity() + 1) {
        return;
    }
    if !(MIN_SIZE..=MAX_SIZE).contains(&buf.capacity()) {
        return;
    }
    // During the thread's exit the pool may be gone already: then the buffer is freed.
    let _ = POOL.try_with(|pool| {
        if let Ok(mut pool) = pool.try_borrow_mut() {
            if pool.len() < MAX_POOLED {
                pool.push(buf);
            }
        }
    });
}

/// A released buffer (empty, unshared, at least [`MIN_SIZE`] bytes), if this thread
/// has one.
pub(crate) fn take() -> Option<BytesMut> {
    POOL.try_with(|pool| pool.try_borrow_mut().ok()?.pop()).ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain() {
        while take().is_some() {}
    }

    #[test]
    fn an_unshared_empty_buffer_is_kept_whole_and_handed_out_again() {
        drain();
        let mut buf = BytesMut::with_capacity(8192);
        buf.extend_from_slice(&[7; 100]);
        let payload = buf.split_to(60).freeze();
        let rest = buf.split_to(40);
        drop((payload, rest));
        // `buf` is now the empty tail of the allocation, and its only owner.
        assert!(buf.capacity() < 8192);
        give(buf);
        let again = take().expect("kept");
        assert!(again.is_empty());
        // At least what was asked for: `bytes` may round an allocation up.
        assert!(again.capacity() >= 8192, "the whole allocation comes back: {}", again.capacity());
        assert!(take().is_none());
    }

    #[test]
    fn a_buffer_still_shared_with_a_held_payload_is_not_kept() {
        drain();
        let mut buf = BytesMut::with_capacity(8192);
        buf.extend_from_slice(b"held by the application");
        let held = buf.split().freeze();
        give(buf);
        assert!(take().is_none());
        assert_eq!(&held[..], b"held by the application");
    }

    #[test]
    fn buffers_with_data_or_outside_the_sizes_are_not_kept() {
        drain();
        let mut full = BytesMut::with_capacity(8192);
        full.extend_from_slice(b"x");
        give(full);
        let mut small = BytesMut::with_capacity(MIN_SIZE / 2);
        small.extend_from_slice(b"x");
        small.clear();
        give(small);
        let mut large = BytesMut::with_capacity(MAX_SIZE * 2);
        large.extend_from_slice(b"x");
        drop(large.split());
        give(large);
        assert!(take().is_none());
    }

    #[test]
    fn connections_of_this_crate_use_the_thread_pool() {
        drain();
        let mut buf = BytesMut::with_capacity(4096);
        let at = buf.as_ptr() as usize;
        buf.extend_from_slice(b"x");
        drop(buf.split());
        give(buf);
        let config = crate::Config::new();
        let taken = config.proto().buffers.take().expect("the configuration's pool is this thread's");
        assert_eq!(taken.as_ptr() as usize, at);
        let custom = crate::Config::new().max_frame_size(1 << 10);
        assert!(format!("{:?}", custom.proto().buffers).contains("pool"), "kept by a changed configuration");
    }

    #[test]
    fn the_pool_holds_a_bounded_number() {
        drain();
        for _ in 0..MAX_POOLED + 3 {
            let mut buf = BytesMut::with_capacity(4096);
            buf.extend_from_slice(b"x");
            drop(buf.split());
            give(buf);
        }
        let mut n = 0;
        while take().is_some() {
            n += 1;
        }
        assert_eq!(n, MAX_POOLED);
    }
}
