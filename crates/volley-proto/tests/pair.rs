//! A client core against a server core in memory, and the property tests built on it:
//! what one side sends the other receives unchanged, and splitting the input at any
//! byte changes nothing.

use bytes::Bytes;
use proptest::prelude::*;
use volley_proto::{CloseCode, Config, Connection, Event, MessageKind, RandomSource, Role, State};

/// Two protocol cores wired back to back.
struct Pair {
    client: Connection,
    server: Connection,
}

impl Pair {
    fn new() -> Self {
        let mut config = Config::default();
        config.random = RandomSource::fixed([9, 8, 7, 6]);
        Pair { client: Connection::new(Role::Client, config.clone()), server: Connection::new(Role::Server, config) }
    }

    /// Moves bytes both ways until neither side has anything to send; returns the
    /// events each side saw (client's, server's).
    fn run(&mut self) -> (Vec<Event>, Vec<Event>) {
        let (mut ce, mut se) = (Vec::new(), Vec::new());
        loop {
            let mut moved = false;
            while let Some(chunk) = self.client.poll_transmit() {
                self.server.receive(&chunk);
                moved = true;
            }
            while let Some(e) = self.server.poll_event() {
                se.push(e);
                moved = true;
            }
            while let Some(chunk) = self.server.poll_transmit() {
                self.client.receive(&chunk);
                moved = true;
            }
            while let Some(e) = self.client.poll_event() {
                ce.push(e);
                moved = true;
            }
            if !moved {
                return (ce, se);
            }
        }
    }
}

#[test]
fn closing_handshake_in_memory() {
    let mut p = Pair::new();
    p.client.send_text("hi").unwrap();
    p.client.send_close(CloseCode::NORMAL, "bye").unwrap();
    let (ce, se) = p.run();
    assert_eq!(se.len(), 2);
    assert_eq!(se[0], Event::Text("hi".into()));
    assert!(matches!(&se[1], Event::Close(Some(f)) if f.code == CloseCode::NORMAL && f.reason == "bye"));
    assert!(matches!(&ce[..], [Event::Close(Some(f))] if f.code == CloseCode::NORMAL));
    assert_eq!((p.client.state(), p.server.state()), (State::Closed, State::Closed));
}

#[test]
fn ping_pong_in_memory() {
    let mut p = Pair::new();
    p.server.send_ping(Bytes::from_static(b"are you there")).unwrap();
    let (ce, se) = p.run();
    assert_eq!(ce, [Event::Ping(Bytes::from_static(b"are you there"))]);
    assert_eq!(se, [Event::Pong(Bytes::from_static(b"are you there"))]);
}

/// A message to send, whole or in fragments.
#[derive(Debug, Clone)]
enum Msg {
    Text(String),
    Binary(Vec<u8>),
    Fragmented(MessageKind, Vec<Vec<u8>>),
    Ping(Vec<u8>),
}

fn msg() -> impl Strategy<Value = Msg> {
    prop_oneof![
        "\\PC{0,40}".prop_map(Msg::Text),
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(Msg::Binary),
        proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..50), 1..5)
            .prop_map(|parts| Msg::Fragmented(MessageKind::Binary, parts)),
        ("\\PC{0,30}", 1usize..4).prop_map(|(s, n)| {
            // Split text at arbitrary byte offsets: fragments need not end on characters.
            let b = s.into_bytes();
            let step = b.len() / n + 1;
            Msg::Fragmented(MessageKind::Text, b.chunks(step).map(<[u8]>::to_vec).collect())
        }),
        proptest::collection::vec(any::<u8>(), 0..125).prop_map(Msg::Ping),
    ]
}

fn send(c: &mut Connection, m: &Msg) {
    match m {
        Msg::Text(s) => c.send_text(s.as_str()).unwrap(),
        Msg::Binary(b) => c.send_binary(b.clone()).unwrap(),
        Msg::Fragmented(kind, parts) => {
            if parts.is_empty() {
                c.send_fragment(*kind, Bytes::new(), true).unwrap();
            }
            for (i, p) in parts.iter().enumerate() {
                c.send_fragment(*kind, p.clone(), i + 1 == parts.len()).unwrap();
            }
        }
        Msg::Ping(p) => c.send_ping(p.clone()).unwrap(),
    }
}

fn expected(m: &Msg) -> Event {
    match m {
        Msg::Text(s) => Event::Text(s.as_str().into()),
        Msg::Binary(b) => Event::Binary(b.clone().into()),
        Msg::Fragmented(MessageKind::Text, parts) => Event::Text(String::from_utf8(parts.concat()).unwrap().into()),
        Msg::Fragmented(_, parts) => Event::Binary(parts.concat().into()),
        Msg::Ping(p) => Event::Ping(p.clone().into()),
    }
}

fn feed_split(server: &mut Connection, wire: &[u8], cuts: &[usize]) -> (Vec<Event>, Vec<u8>) {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (wire.len() + 1)).collect();
    cuts.sort_unstable();
    let mut events = Vec::new();
    let mut out = Vec::new();
    let mut start = 0;
    for c in cuts.into_iter().chain([wire.len()]) {
        server.receive(&wire[start..c]);
        start = c;
        while let Some(e) = server.poll_event() {
            events.push(e);
        }
        while let Some(t) = server.poll_transmit() {
            out.extend_from_slice(&t);
        }
    }
    (events, out)
}

proptest! {
    #[test]
    fn what_the_client_sends_the_server_receives(msgs in proptest::collection::vec(msg(), 0..12)) {
        let mut p = Pair::new();
        for m in &msgs {
            send(&mut p.client, m);
        }
        let (_, se) = p.run();
        let want: Vec<Event> = msgs.iter().map(expected).collect();
        prop_assert_eq!(se, want);
    }

    #[test]
    fn what_the_server_sends_the_client_receives(msgs in proptest::collection::vec(msg(), 0..12)) {
        let mut p = Pair::new();
        for m in &msgs {
            send(&mut p.server, m);
        }
        let (ce, _) = p.run();
        let want: Vec<Event> = msgs.iter().map(expected).collect();
        prop_assert_eq!(ce, want);
    }

    #[test]
    fn splitting_valid_input_anywhere_changes_nothing(msgs in proptest::collection::vec(msg(), 1..8),
                                                      cuts in proptest::collection::vec(any::<usize>(), 0..8)) {
        let mut client = Pair::new().client;
        for m in &msgs {
            send(&mut client, m);
        }
        client.send_close(CloseCode::NORMAL, "done").unwrap();
        let mut wire = Vec::new();
        while let Some(t) = client.poll_transmit() {
            wire.extend_from_slice(&t);
        }
        let whole = feed_split(&mut Pair::new().server, &wire, &[]);
        let split = feed_split(&mut Pair::new().server, &wire, &cuts);
        prop_assert_eq!(whole, split);
    }

    #[test]
    fn splitting_arbitrary_input_anywhere_changes_nothing(prefix in proptest::collection::vec(msg(), 0..3),
                                                         junk in proptest::collection::vec(any::<u8>(), 0..200),
                                                         cuts in proptest::collection::vec(any::<usize>(), 0..8)) {
        // Valid frames, then arbitrary bytes: the same events, errors and replies
        // however the bytes are cut.
        let mut client = Pair::new().client;
        for m in &prefix {
            send(&mut client, m);
        }
        let mut wire = Vec::new();
        while let Some(t) = client.poll_transmit() {
            wire.extend_from_slice(&t);
        }
        wire.extend_from_slice(&junk);
        let whole = feed_split(&mut Pair::new().server, &wire, &[]);
        let split = feed_split(&mut Pair::new().server, &wire, &cuts);
        prop_assert_eq!(whole, split);
    }
}

/// Settings for both ends of a permessage-deflate pair.
fn deflate_config() -> impl Strategy<Value = volley_proto::DeflateConfig> {
    (
        any::<bool>(),
        any::<bool>(),
        9u8..=15,
        9u8..=15,
        0u8..=9,
        1u8..=9,
        prop_oneof![Just(0usize), Just(64), 0usize..200],
    )
        .prop_map(|(lnct, rnct, lbits, rbits, level, mem, threshold)| {
            let mut c = volley_proto::DeflateConfig::default();
            c.local_no_context_takeover = lnct;
            c.remote_no_context_takeover = rnct;
            c.local_max_window_bits = lbits;
            c.remote_max_window_bits = rbits;
            c.level = level;
            c.mem_level = mem;
            c.threshold = threshold;
            c
        })
}

/// Negotiates as a real handshake would and turns the extension on at both ends.
fn deflate_pair(client_cfg: &volley_proto::DeflateConfig, server_cfg: &volley_proto::DeflateConfig) -> Pair {
    use volley_proto::deflate::{accept_response, client_offer, negotiate};
    let offer = client_offer(client_cfg);
    let (server_params, answer) = negotiate(&[offer], server_cfg).expect("server accepts our offer");
    let client_params = accept_response(&answer, client_cfg).expect("client accepts the answer");
    let mut p = Pair::new();
    p.client.enable_deflate(client_params, client_cfg.clone());
    p.server.enable_deflate(server_params, server_cfg.clone());
    p
}

fn big_text() -> impl Strategy<Value = Msg> {
    // Compressible text well over any threshold, so compression really runs.
    ("[a-c ]{0,20}", 1usize..200).prop_map(|(s, n)| Msg::Text(s.repeat(n)))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn deflate_round_trips_with_every_parameter_combination(
        client_cfg in deflate_config(),
        server_cfg in deflate_config(),
        msgs in proptest::collection::vec(prop_oneof![msg(), big_text()], 0..10),
    ) {
        let mut p = deflate_pair(&client_cfg, &server_cfg);
        for m in &msgs {
            send(&mut p.client, m);
            send(&mut p.server, m);
        }
        let (ce, se) = p.run();
        // Each side also sees the pongs answering its own pings.
        let not_pong = |e: &&Event| !matches!(e, Event::Pong(_));
        let (ce, se): (Vec<Event>, Vec<Event>) = (ce.iter().filter(not_pong).cloned().collect(), se.iter().filter(not_pong).cloned().collect());
        let want: Vec<Event> = msgs.iter().map(expected).collect();
        prop_assert_eq!(&se, &want);
        prop_assert_eq!(&ce, &want);
    }
}

#[test]
fn deflate_sets_rsv1_and_shrinks_repetitive_messages() {
    let cfg = volley_proto::DeflateConfig::default();
    let mut p = deflate_pair(&cfg, &cfg);
    let text = "hello hello hello hello ".repeat(100);
    p.server.send_text(text.as_str()).unwrap();
    let wire = p.server.poll_transmit().unwrap();
    assert_eq!(wire[0], 0xc1, "FIN + RSV1 + text");
    assert!(wire.len() < text.len() / 10, "{} bytes on the wire", wire.len());
    p.client.receive(&wire);
    assert_eq!(p.client.poll_event(), Some(Event::Text(text.as_str().into())));
    // Below the threshold, or on request, messages go uncompressed.
    p.server.send_text("short").unwrap();
    p.server.send_uncompressed(MessageKind::Binary, text.clone().into_bytes()).unwrap();
    let mut out = Vec::new();
    while let Some(t) = p.server.poll_transmit() {
        out.extend_from_slice(&t);
    }
    assert_eq!(out[0], 0x81);
    assert_eq!(out[7], 0x82);
}

#[test]
fn deflate_bomb_fails_with_1009_in_bounded_memory() {
    let cfg = volley_proto::DeflateConfig::default();
    let mut p = deflate_pair(&cfg, &cfg);
    let mut limits = Config::default();
    limits.max_message_size = 1 << 20;
    limits.random = RandomSource::fixed([1, 2, 3, 4]);
    let params = *p.server.deflate_params().unwrap();
    p.server = Connection::new(Role::Server, limits);
    p.server.enable_deflate(params, cfg);
    // 64 MiB of zeros compresses to about 64 KiB.
    p.client.send_binary(vec![0u8; 64 << 20]).unwrap();
    let (_, se) = p.run();
    assert!(matches!(se[0], Event::Error(volley_proto::ProtocolError::MessageTooBig { .. })), "{se:?}");
    assert!(p.server.is_close_sent());
}

#[test]
fn prepared_messages_reach_every_kind_of_peer() {
    use volley_proto::PreparedMessage;
    let text = "broadcast ".repeat(200);
    let prepared = PreparedMessage::text(text.as_str()).with_deflate(12, 6);
    // Plain server, deflate without context takeover (compressed frame reused), deflate
    // with context takeover (plain frame), and a client (encoded as usual).
    let mut nct = volley_proto::DeflateConfig::default();
    nct.local_no_context_takeover = true;
    let mut pairs = vec![Pair::new(), deflate_pair(&volley_proto::DeflateConfig::default(), &nct)];
    pairs.push(deflate_pair(&volley_proto::DeflateConfig::default(), &volley_proto::DeflateConfig::default()));
    for p in &mut pairs {
        p.server.send_prepared(&prepared).unwrap();
        p.client.send_prepared(&prepared).unwrap();
        let (ce, se) = p.run();
        assert_eq!(ce, [Event::Text(text.as_str().into())]);
        assert_eq!(se, [Event::Text(text.as_str().into())]);
    }
    // A large compressed frame is shared, not re-encoded: two connections send the
    // same allocation.
    let mut x: u32 = 1;
    let noisy: String = (0..4000)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            format!("{:x}", x >> 12)
        })
        .collect();
    let prepared = PreparedMessage::text(noisy.as_str()).with_deflate(12, 6);
    let mut s = deflate_pair(&volley_proto::DeflateConfig::default(), &nct).server;
    s.send_prepared(&prepared).unwrap();
    let header = s.poll_transmit().unwrap();
    assert_eq!(header[0], 0xc1, "compressed");
    let body = s.poll_transmit().unwrap();
    let mut s2 = deflate_pair(&volley_proto::DeflateConfig::default(), &nct).server;
    s2.send_prepared(&prepared).unwrap();
    let _ = s2.poll_transmit().unwrap();
    assert_eq!(s2.poll_transmit().unwrap().as_ptr(), body.as_ptr());
}

#[test]
fn control_priority_puts_pongs_ahead_of_data() {
    let mut s = Pair::new().server;
    s.send_binary(vec![1u8; 10]).unwrap();
    s.set_control_priority(true);
    s.send_ping(Bytes::from_static(b"p")).unwrap();
    assert_eq!(&s.poll_transmit_control().unwrap()[..], b"\x89\x01p");
    assert_eq!(s.poll_transmit().unwrap()[0], 0x82);
}
