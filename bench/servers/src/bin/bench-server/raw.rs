//! The raw TCP echo: the ceiling no WebSocket server can pass.
//!
//! A WebSocket client cannot talk to a plain byte echo (it needs the 101 answer, and a
//! client must refuse masked frames from a server), so after the minimal handshake this
//! echo does the least any server has to: it streams the bytes back, dropping each
//! frame's masking key and unmasking the payload in place as it goes. No message is
//! assembled, nothing is validated (no UTF-8 check, no limits). A close frame is echoed
//! (the client's close reply) and the connection closed after it. Each read is
//! transformed and written back at once, like the echo servers do with a batch.
//!
//! All connections read into one buffer of the (single) runtime thread, used only
//! between two waits, so an idle connection holds no buffer and no read pays for
//! zeroing one (a partial write copies the rest to the heap).

use std::cell::RefCell;
use std::io::ErrorKind;

use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

/// Bytes read at a time.
const CHUNK: usize = 64 << 10;
/// Longest frame header: 2 bytes, a 64-bit length and the masking key.
const MAX_HEADER: usize = 14;

thread_local! {
    /// The read buffer of every connection on this thread.
    static BUFFER: RefCell<Vec<u8>> = RefCell::new(vec![0; CHUNK]);
}

/// Where the stream is between two reads.
#[derive(Default)]
struct Unmasker {
    /// Payload bytes of the current frame still to come.
    remaining: u64,
    mask: [u8; 4],
    /// Position in the mask of the next payload byte.
    phase: usize,
    /// The start of a header cut by the end of a read.
    carry: [u8; MAX_HEADER],
    carry_len: usize,
    /// The current frame is a close frame.
    in_close: bool,
    /// A whole close frame has been echoed: the connection is over.
    closed: bool,
}

impl Unmasker {
    /// Rewrites `buf[..len]` in place (masked client frames → unmasked server frames);
    /// returns how many bytes to send. A header cut at the end is kept for the next read.
    fn transform(&mut self, buf: &mut [u8], len: usize) -> usize {
        let (mut r, mut w) = (0, 0);
        while r < len && !self.closed {
            if self.remaining == 0 {
                // A header: 2 bytes, the extended length, then the masking key.
                let avail = &buf[r..len];
                let Some(header_len) = header_len(avail) else {
                    self.carry[..avail.len()].copy_from_slice(avail);
                    self.carry_len = avail.len();
                    break;
                };
                let (b0, b1) = (avail[0], avail[1]);
                let masked = b1 & 0x80 != 0;
                let ext = header_len - 2 - if masked { 4 } else { 0 };
                let payload_len = match ext {
                    0 => u64::from(b1 & 0x7f),
                    2 => u64::from(u16::from_be_bytes([avail[2], avail[3]])),
                    _ => u64::from_be_bytes(avail[2..10].try_into().unwrap_or_default()),
                };
                self.mask =
                    if masked { avail[header_len - 4..header_len].try_into().unwrap_or_default() } else { [0; 4] };
                self.phase = 0;
                self.remaining = payload_len;
                self.in_close = b0 & 0x0f == 0x8;
                self.closed = self.in_close && payload_len == 0;
                buf[w] = b0;
                buf[w + 1] = b1 & 0x7f;
                buf.copy_within(r + 2..r + 2 + ext, w + 2);
                w += 2 + ext;
                r += header_len;
            } else {
                let n = (len - r).min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                unmask(&mut buf[r..r + n], self.mask, self.phase);
                buf.copy_within(r..r + n, w);
                self.phase = (self.phase + n) % 4;
                self.remaining -= n as u64;
                self.closed = self.in_close && self.remaining == 0;
                r += n;
                w += n;
            }
        }
        w
    }
}

/// The length of the header at the start of `buf`, if all of it is there.
fn header_len(buf: &[u8]) -> Option<usize> {
    let b1 = *buf.get(1)?;
    let ext = match b1 & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let len = 2 + ext + if b1 & 0x80 != 0 { 4 } else { 0 };
    (buf.len() >= len).then_some(len)
}

/// XORs `data` with the mask, starting at `phase` in it, eight bytes at a time.
fn unmask(data: &mut [u8], mask: [u8; 4], phase: usize) {
    let mut m = [0u8; 8];
    for (i, b) in m.iter_mut().enumerate() {
        *b = mask[(phase + i) % 4];
    }
    let word = u64::from_ne_bytes(m);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let v = u64::from_ne_bytes(chunk.try_into().unwrap_or_default()) ^ word;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    for (b, k) in chunks.into_remainder().iter_mut().zip(m) {
        *b ^= k;
    }
}

pub async fn echo(mut tcp: TcpStream) -> std::io::Result<()> {
    crate::handshake::handshake(&mut tcp).await?;
    let mut state = Unmasker::default();
    loop {
        tcp.readable().await?;
        // The buffer is borrowed only inside this closure, which never waits.
        let step = BUFFER.with_borrow_mut(|buf| {
            let carried = state.carry_len;
            buf[..carried].copy_from_slice(&state.carry[..carried]);
            state.carry_len = 0;
            let n = match tcp.try_read(&mut buf[carried..]) {
                Ok(0) => return Ok(None),
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    state.carry_len = carried;
                    return Ok(Some(Vec::new()));
                }
                Err(e) => return Err(e),
            };
            let out = state.transform(buf, carried + n);
            let written = match tcp.try_write(&buf[..out]) {
                Ok(w) => w,
                Err(e) if e.kind() == ErrorKind::WouldBlock => 0,
                Err(e) => return Err(e),
            };
            Ok(Some(buf[written..out].to_vec()))
        })?;
        let Some(rest) = step else { return Ok(()) };
        if !rest.is_empty() {
            tcp.write_all(&rest).await?;
        }
        if state.closed {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client_frame(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n < 65536 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => f.push(n as u8),
            n if n < 65536 => {
                f.push(126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(payload);
        f
    }

    /// Feeds `input` in reads of `step` bytes, as the echo loop does.
    fn run(input: &[u8], step: usize) -> Vec<u8> {
        let mut state = Unmasker::default();
        let mut out = Vec::new();
        for piece in input.chunks(step) {
            let mut buf = vec![0u8; MAX_HEADER + piece.len()];
            let carried = state.carry_len;
            buf[..carried].copy_from_slice(&state.carry[..carried]);
            state.carry_len = 0;
            buf[carried..carried + piece.len()].copy_from_slice(piece);
            let n = state.transform(&mut buf, carried + piece.len());
            out.extend_from_slice(&buf[..n]);
        }
        out
    }

    #[test]
    fn unmasks_any_split() {
        let payloads: [&[u8]; 4] = [b"hello", &[7u8; 200], &[9u8; 70_000], b""];
        let mut input = Vec::new();
        let mut expected = Vec::new();
        for (i, p) in payloads.iter().enumerate() {
            input.extend(client_frame(1 + (i as u8 % 2), p, [1, 2, 3, (i as u8) * 40]));
            expected.extend(server_frame(1 + (i as u8 % 2), p));
        }
        // The close frame ends it: what follows is not echoed.
        input.extend(client_frame(8, &[3, 232, b'o', b'k'], [5, 6, 7, 8]));
        expected.extend(server_frame(8, &[3, 232, b'o', b'k']));
        input.extend(client_frame(1, b"after", [1, 1, 1, 1]));
        for step in [1, 2, 3, 7, 13, 14, 100, 4096, input.len()] {
            assert_eq!(run(&input, step), expected, "step {step}");
        }
    }
}
