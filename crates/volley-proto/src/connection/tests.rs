use super::*;
use crate::config::RandomSource;

fn server() -> Connection {
    Connection::new(Role::Server, Config::default())
}

fn client() -> Connection {
    Connection::new(Role::Client, Config { random: RandomSource::fixed([0x37, 0xfa, 0x21, 0x3d]), ..Config::default() })
}

fn events(c: &mut Connection) -> Vec<Event> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

fn transmit(c: &mut Connection) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(chunk) = c.poll_transmit() {
        out.extend_from_slice(&chunk);
    }
    out
}

/// A masked frame as a client would send it, with a fixed key.
fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
    let key = [1, 2, 3, 4];
    let mut out = Vec::new();
    FrameHeader {
        fin: first & 0x80 != 0,
        rsv1: first & 0x40 != 0,
        rsv2: first & 0x20 != 0,
        rsv3: first & 0x10 != 0,
        opcode: first & 0x0f,
        mask: Some(key),
        payload_len: payload.len() as u64,
    }
    .encode(&mut out);
    let start = out.len();
    out.extend_from_slice(payload);
    apply_mask(&mut out[start..], key, 0);
    out
}

#[test]
fn rfc6455_5_7_masked_hello_from_client() {
    let mut c = client();
    c.send_text("Hello").unwrap();
    assert_eq!(transmit(&mut c), [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]);
}

#[test]
fn rfc6455_5_7_fragmented_text() {
    let mut c = client();
    c.receive(&[0x01, 0x03, 0x48, 0x65, 0x6c]);
    assert_eq!(events(&mut c), []);
    c.receive(&[0x80, 0x02, 0x6c, 0x6f]);
    assert_eq!(events(&mut c), [Event::Text("Hello".into())]);
}

#[test]
fn rfc6455_5_7_ping_gets_pong() {
    let mut c = client();
    c.receive(&[0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
    assert_eq!(events(&mut c), [Event::Ping(Bytes::from_static(b"Hello"))]);
    // "a masked Pong response": 0x8a 0x85 0x37 0xfa 0x21 0x3d 0x7f 0x9f 0x4d 0x51 0x58
    assert_eq!(transmit(&mut c), [0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]);
}

#[test]
fn rfc6455_5_7_binary_lengths() {
    let mut s = server();
    let payload = vec![7u8; 256];
    s.receive(&masked(0x82, &payload));
    assert_eq!(events(&mut s), [Event::Binary(Bytes::from(payload.clone()))]);
    s.send_binary(payload).unwrap();
    let out = transmit(&mut s);
    assert_eq!(&out[..4], [0x82, 0x7e, 0x01, 0x00]);
    assert_eq!(out.len(), 4 + 256);
}

#[test]
fn control_frames_interleave_with_fragments() {
    let mut s = server();
    let mut input = masked(0x01, b"fra");
    input.extend(masked(0x89, b"p"));
    input.extend(masked(0x80, b"gment"));
    s.receive(&input);
    assert_eq!(events(&mut s), [Event::Ping(Bytes::from_static(b"p")), Event::Text("fragment".into())]);
    assert_eq!(transmit(&mut s), [0x8a, 0x01, b'p']);
}

fn fails_with(input: Vec<u8>, code: u16) {
    let mut s = server();
    s.receive(&input);
    let evs = events(&mut s);
    match evs.last() {
        Some(Event::Error(e)) => assert_eq!(e.close_code().0, code, "{e}"),
        other => panic!("expected an error, got {other:?}"),
    }
    let out = transmit(&mut s);
    assert_eq!(&out[..4], [0x88, 0x02, (code >> 8) as u8, code as u8]);
    assert_eq!(s.state(), State::Closing);
    assert_eq!(s.send_text("x"), Err(SendError::Closed));
}

#[test]
fn rfc6455_5_2_reserved_opcodes_fail_with_1002() {
    for op in [3u8, 4, 5, 6, 7, 0xb, 0xc, 0xd, 0xe, 0xf] {
        fails_with(masked(0x80 | op, b""), 1002);
    }
}

#[test]
fn rfc6455_5_2_rsv_bits_fail_with_1002() {
    for rsv in [0x40u8, 0x20, 0x10] {
        fails_with(masked(0x81 | rsv, b"x"), 1002);
    }
}

#[test]
fn rfc6455_5_1_unmasked_client_frame_fails() {
    fails_with(vec![0x81, 0x01, b'x'], 1002);
    let mut c = client();
    c.receive(&masked(0x81, b"x"));
    assert!(matches!(events(&mut c)[..], [Event::Error(ProtocolError::MaskedFrame)]));
}

#[test]
fn rfc6455_5_5_control_frame_rules() {
    fails_with(masked(0x09, b""), 1002);
    fails_with(masked(0x89, &[0u8; 126]), 1002);
    assert!({
        let mut s = server();
        s.receive(&masked(0x89, &[0u8; 125]));
        matches!(events(&mut s)[..], [Event::Ping(_)])
    });
}

#[test]
fn rfc6455_5_4_fragmentation_errors() {
    fails_with(masked(0x80, b"x"), 1002);
    let mut both = masked(0x01, b"a");
    both.extend(masked(0x81, b"b"));
    fails_with(both, 1002);
}

#[test]
fn rfc6455_8_1_invalid_utf8_fails_fast_mid_frame() {
    let mut s = server();
    // A 20-byte text frame whose 3rd byte is invalid; only 5 bytes of it arrive.
    let mut payload = b"ab\xffcdefghijklmnopqrs".to_vec();
    payload.truncate(20);
    let frame = masked(0x81, &payload);
    s.receive(&frame[..6 + 5]);
    assert!(matches!(events(&mut s)[..], [Event::Error(ProtocolError::InvalidUtf8)]));
    assert_eq!(transmit(&mut s), [0x88, 0x02, 0x03, 0xef]);
}

#[test]
fn rfc6455_8_1_invalid_utf8_across_fragments() {
    let mut s = server();
    s.receive(&masked(0x01, "κόσμε".as_bytes()));
    s.receive(&masked(0x00, &[0xf4]));
    assert_eq!(events(&mut s), []);
    s.receive(&masked(0x80, &[0x90, 0x80, 0x80]));
    assert!(matches!(events(&mut s)[..], [Event::Error(ProtocolError::InvalidUtf8)]));
}

#[test]
fn limits_fail_with_1009() {
    let config = Config { max_frame_size: 10, max_message_size: 15, ..Config::default() };
    let mut s = Connection::new(Role::Server, config.clone());
    s.receive(&masked(0x82, &[0; 11]));
    assert!(matches!(events(&mut s)[..], [Event::Error(ProtocolError::FrameTooBig { size: 11, max: 10 })]));
    let mut s = Connection::new(Role::Server, config);
    let mut input = masked(0x02, &[0; 10]);
    input.extend(masked(0x80, &[0; 6]));
    s.receive(&input);
    assert!(matches!(events(&mut s)[..], [Event::Error(ProtocolError::MessageTooBig { .. })]));
}

#[test]
fn a_huge_declared_length_allocates_nothing() {
    let mut s = server();
    let mut header = Vec::new();
    FrameHeader {
        fin: true,
        rsv1: false,
        rsv2: false,
        rsv3: false,
        opcode: 2,
        mask: Some([0; 4]),
        payload_len: 1 << 62,
    }
    .encode(&mut header);
    s.receive(&header);
    assert!(matches!(events(&mut s)[..], [Event::Error(ProtocolError::FrameTooBig { .. })]));
    s.receive(&[0u8; 4096]);
    assert!(s.input_buffer().capacity() < 64 * 1024);
}

#[test]
fn rfc6455_5_5_1_close_echoes_code() {
    let mut s = server();
    s.receive(&masked(0x88, b"\x0f\xa0bye"));
    assert_eq!(events(&mut s), [Event::Close(Some(CloseFrame::new(CloseCode(4000), "bye")))]);
    assert_eq!(transmit(&mut s), [0x88, 0x02, 0x0f, 0xa0]);
    assert_eq!(s.state(), State::Closed);
    // Nothing may be sent after close, and later input is ignored.
    assert_eq!(s.send_ping(Bytes::new()), Err(SendError::Closed));
    s.receive(&masked(0x81, b"late"));
    assert_eq!(events(&mut s), []);
}

#[test]
fn empty_close_is_echoed_empty() {
    let mut s = server();
    s.receive(&masked(0x88, b""));
    assert_eq!(events(&mut s), [Event::Close(None)]);
    assert_eq!(transmit(&mut s), [0x88, 0x00]);
}

#[test]
fn invalid_close_payloads_fail_and_end_the_handshake() {
    for (payload, code) in [(&b"\x03"[..], 1002u16), (b"\x03\xed", 1002), (b"\x03\xe8\xff", 1007)] {
        let mut s = server();
        s.receive(&masked(0x88, payload));
        let evs = events(&mut s);
        assert!(matches!(&evs[..], [Event::Error(e)] if e.close_code().0 == code), "{evs:?}");
        assert_eq!(transmit(&mut s), [0x88, 0x02, (code >> 8) as u8, code as u8]);
        // The peer's (invalid) close frame was its close: nothing more to wait for.
        assert_eq!(s.state(), State::Closed);
    }
    let mut s = server();
    s.receive(&masked(0x88, &[b'x'; 126]));
    assert!(matches!(events(&mut s)[..], [Event::Error(ProtocolError::ControlFrameTooLong(126))]));
    assert_eq!(s.state(), State::Closed);
}

#[test]
fn local_close_then_peer_close() {
    let mut s = server();
    s.send_close(CloseCode::NORMAL, "done").unwrap();
    assert_eq!(s.state(), State::Closing);
    assert_eq!(transmit(&mut s), b"\x88\x06\x03\xe8done");
    // Messages that cross our close are still delivered.
    let mut input = masked(0x81, b"x");
    input.extend(masked(0x88, b"\x03\xe8"));
    s.receive(&input);
    assert_eq!(events(&mut s), [Event::Text("x".into()), Event::Close(Some(CloseFrame::new(CloseCode::NORMAL, "")))]);
    assert_eq!(transmit(&mut s), b"");
    assert_eq!(s.state(), State::Closed);
    assert_eq!(s.send_close(CloseCode::NORMAL, ""), Err(SendError::Closed));
    assert_eq!(s.send_close(CloseCode::NORMAL, ""), Err(SendError::Closed));
}

#[test]
fn send_close_checks_code_and_length() {
    let mut s = server();
    assert_eq!(s.send_close(CloseCode::NO_STATUS, ""), Err(SendError::InvalidCloseCode(1005)));
    assert!(matches!(s.send_close(CloseCode::NORMAL, &"x".repeat(124)), Err(SendError::ControlFrameTooLong(_))));
    assert!(matches!(s.send_ping(vec![0; 126]), Err(SendError::ControlFrameTooLong(126))));
}

#[test]
fn replies_keep_input_order_after_a_failure() {
    // Two messages, then a fault: the application's echoes go out before the close.
    let mut s = server();
    let mut input = masked(0x81, b"one");
    input.extend(masked(0x81, b"two"));
    input.extend(masked(0x83, b""));
    s.receive(&input);
    let mut out = Vec::new();
    while let Some(ev) = s.poll_event() {
        if let Event::Text(t) = ev {
            s.send_text(t).unwrap();
        }
        out.extend(transmit(&mut s));
    }
    assert_eq!(out, b"\x81\x03one\x81\x03two\x88\x02\x03\xea");
}

#[test]
fn after_a_failure_the_peer_close_completes_the_handshake() {
    let mut s = server();
    s.receive(&masked(0x83, b"junk"));
    let _ = events(&mut s);
    assert_eq!(s.state(), State::Closing);
    let mut input = masked(0x81, b"ignored");
    input.extend(masked(0x88, b"\x03\xea"));
    s.receive(&input);
    assert!(matches!(events(&mut s)[..], [Event::Close(_)]));
    assert_eq!(s.state(), State::Closed);
    assert_eq!(transmit(&mut s), [0x88, 0x02, 0x03, 0xea]);
}

#[test]
fn eof_without_close_is_abnormal() {
    let mut s = server();
    s.receive_eof();
    assert_eq!(events(&mut s), [Event::Error(ProtocolError::AbnormalClosure)]);
    assert_eq!(s.state(), State::Closed);
    assert_eq!(transmit(&mut s), b"");
}

#[test]
fn fragmented_send_streams_and_checks_utf8() {
    let mut s = server();
    s.send_fragment(MessageKind::Text, "κό".as_bytes()[..3].to_vec(), false).unwrap();
    assert_eq!(s.send_text("x"), Err(SendError::FragmentInProgress));
    s.send_ping(Bytes::from_static(b"p")).unwrap();
    assert_eq!(s.send_fragment(MessageKind::Binary, Bytes::new(), true), Err(SendError::FragmentInProgress));
    assert_eq!(s.send_fragment(MessageKind::Text, vec![0xff], true), Err(SendError::InvalidUtf8));
    s.send_fragment(MessageKind::Text, "κό".as_bytes()[3..].to_vec(), true).unwrap();
    let out = transmit(&mut s);
    let mut c = client();
    c.receive(&out);
    assert_eq!(events(&mut c), [Event::Ping(Bytes::from_static(b"p")), Event::Text("κό".into())]);
}

#[test]
fn large_payloads_are_sent_by_reference() {
    let mut s = server();
    let big = Bytes::from(vec![1u8; 100_000]);
    s.send_binary(big.clone()).unwrap();
    let header = s.poll_transmit().unwrap();
    assert_eq!(&header[..], [0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0x86, 0xa0]);
    let body = s.poll_transmit().unwrap();
    assert_eq!(body.as_ptr(), big.as_ptr(), "payload not copied");
    assert_eq!(s.poll_transmit(), None);
}

#[test]
fn a_batch_of_small_frames_is_one_chunk() {
    let mut s = server();
    for i in 0..100 {
        s.send_text(format!("message {i}")).unwrap();
    }
    let first = s.poll_transmit().unwrap();
    assert!(first.len() > 100 * 10);
    assert_eq!(s.poll_transmit(), None);
    assert_eq!(s.transmit_len(), 0);
}

#[test]
fn received_payloads_are_not_copied() {
    let mut s = server();
    s.input_buffer().extend_from_slice(&masked(0x82, &[9u8; 1000]));
    let base = s.input_buffer().as_ptr() as usize;
    s.receive_buffered();
    let Some(Event::Binary(b)) = s.poll_event() else { panic!() };
    let p = b.as_ptr() as usize;
    assert!(p >= base && p < base + 2000, "payload points into the read buffer");
}

#[test]
fn idle_connection_releases_buffers() {
    let mut s = server();
    s.receive(&masked(0x81, b"hi"));
    let _ = events(&mut s);
    s.send_text("hi").unwrap();
    let _ = transmit(&mut s);
    s.release_idle_memory();
    assert_eq!(s.rbuf.capacity(), 0);
    assert_eq!(s.out.buf.capacity(), 0);
}

/// A pool that keeps every released buffer whose allocation is no longer shared.
#[derive(Default)]
struct KeepAll(std::sync::Mutex<Vec<BytesMut>>);

impl crate::config::BufferPool for KeepAll {
    fn take(&self) -> Option<BytesMut> {
        self.0.lock().unwrap().pop()
    }

    fn give(&self, mut buf: BytesMut) {
        if buf.try_reclaim(buf.capacity() + 1) {
            self.0.lock().unwrap().push(buf);
        }
    }
}

#[test]
fn buffers_come_from_and_go_to_the_configured_pool() {
    let pool = std::sync::Arc::new(KeepAll::default());
    let config = Config { buffers: crate::config::Buffers::pool(pool.clone()), ..Config::default() };
    let mut s = Connection::new(Role::Server, config);
    s.release_idle_memory();
    assert!(pool.0.lock().unwrap().is_empty(), "nothing to give back yet");
    let mut seen = Vec::new();
    for round in 0..3 {
        let input = s.input_buffer();
        if round == 0 {
            assert_eq!(input.capacity(), 0);
            input.reserve(8192);
        } else {
            assert!(input.capacity() >= 4096, "round {round}: the input buffer comes from the pool");
        }
        seen.push(input.as_ptr() as usize);
        input.extend_from_slice(&masked(0x81, b"hi"));
        s.receive_buffered();
        let Some(Event::Text(text)) = s.poll_event() else { panic!() };
        s.send_text(text).unwrap();
        let out = s.poll_transmit().unwrap();
        seen.push(out.as_ptr() as usize);
        drop(out);
        s.release_idle_memory();
        assert_eq!((s.rbuf.capacity(), s.out.buf.capacity()), (0, 0), "an idle connection holds no buffer");
    }
    // Two allocations in all (input and output may swap), each reused from its start.
    let mut distinct = seen.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), 2, "the same two buffers each time: {seen:x?}");
    assert_eq!(pool.0.lock().unwrap().len(), 2, "both are in the pool while the connection is idle");
}

#[test]
fn without_a_pool_released_buffers_are_freed_and_new_ones_allocated() {
    let mut s = server();
    for _ in 0..2 {
        let input = s.input_buffer();
        assert_eq!(input.capacity(), 0, "no pool: nothing to take");
        input.extend_from_slice(&masked(0x81, b"hi"));
        s.receive_buffered();
        let _ = events(&mut s);
        s.release_idle_memory();
        assert_eq!(s.rbuf.capacity(), 0);
    }
}

/// Moves everything `from` has to send into `to`, and returns `to`'s events.
fn pass(from: &mut Connection, to: &mut Connection) -> Vec<Event> {
    let bytes = transmit(from);
    to.receive(&bytes);
    events(to)
}

#[test]
fn only_a_quiescent_connection_parks() {
    // Fresh: parks, and comes back with its role.
    let parked = server().park().expect("a fresh connection is quiescent");
    assert_eq!(parked.role(), Role::Server);
    let mut s = parked.resume();

    // An event not yet polled.
    s.receive(&masked(0x81, b"hi"));
    let mut s = s.park().expect_err("an unpolled event");
    assert_eq!(events(&mut s), vec![Event::Text("hi".into())]);
    // Half a frame buffered.
    s.receive(&masked(0x81, b"hello")[..3]);
    let mut s = s.park().expect_err("a half-received frame");
    s.receive(&masked(0x81, b"hello")[3..]);
    assert_eq!(events(&mut s), vec![Event::Text("hello".into())]);
    // Half a message (a first fragment).
    s.receive(&masked(0x01, b"frag"));
    let mut s = s.park().expect_err("a half-received message");
    s.receive(&masked(0x80, b"ment"));
    assert_eq!(events(&mut s), vec![Event::Text("fragment".into())]);
    // Output not yet taken.
    s.send_text("out").unwrap();
    let mut s = s.park().expect_err("untaken output");
    assert_eq!(transmit(&mut s), [0x81, 0x03, b'o', b'u', b't']);
    // Half a message sent.
    s.send_fragment(MessageKind::Binary, Bytes::from_static(b"a"), false).unwrap();
    transmit(&mut s);
    let mut s = s.park().expect_err("a half-sent message");
    s.send_fragment(MessageKind::Binary, Bytes::from_static(b"b"), true).unwrap();
    transmit(&mut s);
    // Quiescent again: parks; a closing connection does not.
    let mut s = s.park().expect("quiescent again").resume();
    s.send_close(CloseCode::NORMAL, "").unwrap();
    transmit(&mut s);
    assert!(s.park().is_err(), "a closing connection");
}

#[test]
fn a_parked_connection_keeps_its_compression_contexts() {
    let params = DeflateParams {
        server_no_context_takeover: false,
        client_no_context_takeover: false,
        server_max_window_bits: 15,
        client_max_window_bits: 15,
    };
    let mut c = client();
    let mut s = server();
    c.enable_deflate(params, DeflateConfig::default());
    s.enable_deflate(params, DeflateConfig::default());
    let text = "the same sentence, twice over, so that the second copy refers to the first";
    for round in 0..3 {
        c.send_text(text).unwrap();
        let compressed = transmit(&mut c);
        s.receive(&compressed);
        assert_eq!(events(&mut s), vec![Event::Text(text.into())], "round {round}");
        s.send_text(text).unwrap();
        assert_eq!(pass(&mut s, &mut c), vec![Event::Text(text.into())], "round {round}");
        if round > 0 {
            // The context taken over: a repeat compresses to a few bytes.
            assert!(compressed.len() < 16, "round {round}: {} bytes", compressed.len());
        }
        s = s.park().expect("quiescent after each round").resume();
        c = c.park().expect("quiescent after each round").resume();
    }
}

#[test]
fn a_growing_batch_is_never_copied_it_continues_in_a_buffer_twice_the_size() {
    let mut s = server();
    s.send_text("0123456789abcdefghij").unwrap();
    let first = s.out.buf.as_ptr() as usize;
    for _ in 1..2000 {
        s.send_text("0123456789abcdefghij").unwrap();
    }
    let mut chunks = Vec::new();
    while let Some(chunk) = s.poll_transmit() {
        chunks.push(chunk);
    }
    // 2,000 frames of 22 bytes, in order.
    let all: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
    assert_eq!(all.len(), 2000 * 22);
    assert!(all.chunks(22).all(|f| f == b"\x81\x140123456789abcdefghij"));
    // The first frames were never moved, and each buffer is about twice the last.
    assert_eq!(chunks[0].as_ptr() as usize, first, "the first buffer was copied");
    let sizes: Vec<usize> = chunks.iter().map(|c| c.len()).collect();
    assert!(sizes.len() >= 3, "{sizes:?}");
    for pair in sizes.windows(2).take(sizes.len() - 2) {
        assert!(pair[1] >= 2 * pair[0] - 22 && pair[1] <= 2 * pair[0] + 22, "{sizes:?}");
    }
}

proptest::proptest! {
    /// The pending queue, its first entry in place, hands out what it was given in
    /// order, as a `VecDeque` does, whatever the interleaving of pushes and pops.
    #[test]
    fn the_pending_queue_keeps_the_order_of_a_vecdeque(ops in proptest::collection::vec(proptest::prelude::any::<Option<u8>>(), 0..64)) {
        let mut q = PendingQueue::default();
        let mut reference = VecDeque::new();
        for op in ops {
            match op {
                Some(n) => {
                    q.push_back(Pending::Ping(Bytes::from(vec![n])));
                    reference.push_back(n);
                }
                None => {
                    let got = q.pop_front().map(|p| match p {
                        Pending::Ping(b) => b[0],
                        _ => unreachable!(),
                    });
                    proptest::prop_assert_eq!(got, reference.pop_front());
                }
            }
            proptest::prop_assert_eq!(q.is_empty(), reference.is_empty());
        }
    }
}

#[test]
fn one_event_at_a_time_allocates_no_queue() {
    let mut c = server();
    let mut client = client();
    for _ in 0..3 {
        client.send_text("hi").unwrap();
        c.receive(&transmit(&mut client));
        assert_eq!(c.pending.rest.capacity(), 0);
        assert!(matches!(events(&mut c)[..], [Event::Text(_)]));
    }
}
