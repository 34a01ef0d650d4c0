//! Shared harness for the fuzz targets: drives one `Connection` with fuzzer input the
//! way a real driver does, and checks what comes out against a second connection (the
//! peer) that decodes everything it sends.

use std::collections::VecDeque;

use bytes::Bytes;
use volley_proto::{
    CloseCode, Config, Connection, DeflateConfig, DeflateParams, Event, ProtocolError, RandomSource, Role, State,
};

/// The masking key of RFC 6455 §5.7's examples; the fixed random source of every target.
pub const FIXED_KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// A small configuration so a hostile input cannot make the core buffer much.
pub fn small_config() -> Config {
    let mut config = Config::default();
    config.max_frame_size = 64 << 10;
    config.max_message_size = 256 << 10;
    config.random = RandomSource::fixed(FIXED_KEY);
    config
}

/// What the peer must decode next from the fuzzed connection's output.
#[derive(Debug, PartialEq)]
enum Expect {
    Text(Bytes),
    Binary(Bytes),
    Pong(Bytes),
    Close(Option<CloseCode>),
}

struct Harness {
    conn: Connection,
    /// The other end, fed with everything `conn` transmits: it must never see a
    /// protocol fault, and must see exactly the frames expected, in order.
    peer: Connection,
    expect: VecDeque<Expect>,
    eof: bool,
    errors: usize,
    closed_event: bool,
    peer_saw_close: bool,
}

impl Harness {
    /// Drains events (echoing messages), then transmits, checking the invariants.
    fn drain(&mut self) {
        loop {
            let was_close_sent = self.conn.is_close_sent();
            let Some(event) = self.conn.poll_event() else { break };
            assert!(!self.closed_event, "event after Close: {event:?}");
            match event {
                Event::Text(text) => {
                    assert!(self.errors == 0, "message after Error");
                    assert!(std::str::from_utf8(text.as_bytes()).is_ok(), "Text is not UTF-8");
                    assert_eq!(text.as_str().len(), text.len());
                    let bytes = text.clone().into_bytes();
                    if self.conn.send_text(text).is_ok() {
                        self.expect.push_back(Expect::Text(bytes));
                    }
                }
                Event::Binary(data) => {
                    assert!(self.errors == 0, "message after Error");
                    if self.conn.send_binary(data.clone()).is_ok() {
                        self.expect.push_back(Expect::Binary(data));
                    }
                }
                Event::Ping(data) => {
                    assert!(self.errors == 0, "Ping after Error");
                    assert!(data.len() <= 125);
                    if !was_close_sent {
                        self.expect.push_back(Expect::Pong(data));
                    }
                }
                Event::Pong(data) => {
                    assert!(self.errors == 0, "Pong after Error");
                    assert!(data.len() <= 125);
                }
                Event::Close(frame) => {
                    self.closed_event = true;
                    if let Some(f) = &frame {
                        assert!(f.code.is_valid_on_wire(), "received close code {}", f.code.0);
                        assert!(f.reason.len() <= 123);
                        assert!(std::str::from_utf8(f.reason.as_bytes()).is_ok());
                    }
                    assert!(self.conn.is_close_sent(), "Close polled, no close frame sent");
                    assert!(self.conn.is_close_received());
                    assert_eq!(self.conn.state(), State::Closed);
                    if !was_close_sent {
                        self.expect.push_back(Expect::Close(frame.map(|f| f.code)));
                    }
                }
                Event::Error(err) => {
                    self.errors += 1;
                    assert_eq!(self.errors, 1, "second Error: {err:?}");
                    if err == ProtocolError::AbnormalClosure {
                        // The transport ended: nothing can be sent any more.
                        assert!(self.eof, "AbnormalClosure before EOF");
                        assert_eq!(self.conn.state(), State::Closed);
                    } else {
                        assert!(self.conn.is_close_sent(), "Error {err:?} polled, no close sent");
                        assert_ne!(self.conn.state(), State::Open);
                        if !was_close_sent {
                            self.expect.push_back(Expect::Close(Some(err.close_code())));
                        }
                    }
                }
                other => panic!("unknown event {other:?}"),
            }
        }
        let queued = self.conn.transmit_len();
        let mut sent = 0;
        while let Some(chunk) = self.conn.poll_transmit() {
            sent += chunk.len();
            self.peer.receive(&chunk);
        }
        assert_eq!(sent, queued, "transmit_len disagrees with the chunks");
        assert_eq!(self.conn.transmit_len(), 0);
        self.check_peer();
        self.conn.release_idle_memory();
    }

    /// Checks the peer decoded exactly what the fuzzed connection was asked to send.
    fn check_peer(&mut self) {
        while let Some(event) = self.peer.poll_event() {
            let got = match event {
                Event::Text(t) => Expect::Text(t.into_bytes()),
                Event::Binary(b) => Expect::Binary(b),
                Event::Pong(b) => Expect::Pong(b),
                Event::Close(frame) => {
                    assert!(frame.as_ref().is_none_or(|f| f.reason.is_empty()));
                    self.peer_saw_close = true;
                    Expect::Close(frame.map(|f| f.code))
                }
                other => panic!("the peer decoded {other:?} from our output"),
            };
            assert_eq!(self.expect.pop_front().as_ref(), Some(&got), "peer decoded an unexpected frame");
        }
        // The peer's own replies (its close echo) are not fed back.
        while self.peer.poll_transmit().is_some() {}
    }
}

/// Runs `data` through a connection of `role`. The first two bytes give the sizes of
/// the chunks the rest is fed in, alternately (low 7 bits; 0 = all the rest); a chunk
/// whose size byte has the high bit set goes through `input_buffer`/`receive_buffered`
/// instead of `receive`.
pub fn run_connection(role: Role, data: &[u8]) {
    run(role, data, None);
}

/// [`run_connection`] with permessage-deflate on in both the fuzzed connection and its
/// peer. The first byte picks the role and the agreed parameters:
///
/// - bit 0: the fuzzed connection's role (0 server, 1 client);
/// - bit 1: `server_no_context_takeover`; bit 2: `client_no_context_takeover`;
/// - bits 3-5: `client_max_window_bits`, 15 minus the value (at least 9);
/// - bits 6-7: `server_max_window_bits`, one of 15, 12, 10, 9.
///
/// The rest is [`run_connection`]'s input. Every message is compressed (threshold 0),
/// so the echoes exercise the compressor too.
pub fn run_deflate_connection(data: &[u8]) {
    let Some((&b, rest)) = data.split_first() else { return };
    let role = if b & 1 == 0 { Role::Server } else { Role::Client };
    let params = deflate_params(b);
    run(role, rest, Some(params));
}

/// The parameters encoded in the first byte of a `deflate_connection` input.
pub fn deflate_params(b: u8) -> DeflateParams {
    DeflateParams {
        server_no_context_takeover: b & 2 != 0,
        client_no_context_takeover: b & 4 != 0,
        client_max_window_bits: 15 - ((b >> 3) & 7).min(6),
        server_max_window_bits: [15, 12, 10, 9][usize::from(b >> 6)],
    }
}

fn run(role: Role, data: &[u8], deflate: Option<DeflateParams>) {
    let (sizes, mut input) = match data {
        [a, b, rest @ ..] => ([*a, *b], rest),
        _ => ([0, 0], data),
    };
    let peer_role = match role {
        Role::Server => Role::Client,
        Role::Client => Role::Server,
    };
    let mut peer_config = Config::default();
    peer_config.random = RandomSource::fixed(FIXED_KEY);
    let mut conn = Connection::new(role, small_config());
    let mut peer = Connection::new(peer_role, peer_config);
    if let Some(params) = deflate {
        let mut config = DeflateConfig::default();
        config.threshold = 0;
        conn.enable_deflate(params, config.clone());
        peer.enable_deflate(params, config);
    }
    let mut h = Harness {
        conn,
        peer,
        expect: VecDeque::new(),
        eof: false,
        errors: 0,
        closed_event: false,
        peer_saw_close: false,
    };
    let mut i = 0;
    while !input.is_empty() {
        let s = sizes[i % 2];
        i += 1;
        let n = match usize::from(s & 0x7f) {
            0 => input.len(),
            n => n.min(input.len()),
        };
        let (chunk, rest) = input.split_at(n);
        input = rest;
        if s & 0x80 != 0 {
            h.conn.input_buffer().extend_from_slice(chunk);
            h.conn.receive_buffered();
        } else {
            h.conn.receive(chunk);
        }
        assert!(h.conn.input_needed() <= 64 << 10);
        h.drain();
    }
    h.eof = true;
    h.conn.receive_eof();
    h.drain();
    assert_eq!(h.conn.state(), State::Closed, "not Closed after EOF");
    assert!(h.expect.is_empty(), "the peer never got {:?}", h.expect);
    assert_eq!(h.conn.is_close_sent(), h.peer_saw_close);
    if h.conn.is_close_sent() {
        assert!(h.conn.send_text("late").is_err(), "send after close accepted");
    }
}
