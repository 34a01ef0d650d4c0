//! A server-side `Connection` receiving a batch of 64 small masked frames (one TCP read)
//! and producing their events; and the same with each message echoed back (events,
//! the reply frames and their transmit chunks).
//! `cargo bench -p volley-proto --bench receive`
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use volley_proto::{Config, Connection, Event, RandomSource, Role};

const BATCH: usize = 64;

/// The bytes a client sends for `BATCH` messages of `size` bytes.
fn client_batch(size: usize, binary: bool) -> Vec<u8> {
    let mut config = Config::default();
    config.random = RandomSource::fixed([0x37, 0xfa, 0x21, 0x3d]);
    let mut client = Connection::new(Role::Client, config);
    let text: String = (0..size).map(|i| char::from(b'a' + (i % 26) as u8)).collect();
    for _ in 0..BATCH {
        if binary {
            client.send_binary(text.clone().into_bytes()).expect("send");
        } else {
            client.send_text(text.as_str()).expect("send");
        }
    }
    let mut wire = Vec::new();
    while let Some(chunk) = client.poll_transmit() {
        wire.extend_from_slice(&chunk);
    }
    wire
}

fn receive(c: &mut Criterion) {
    let mut g = c.benchmark_group("receive");
    g.throughput(Throughput::Elements(BATCH as u64));
    for size in [20usize, 125] {
        for binary in [false, true] {
            let wire = client_batch(size, binary);
            let kind = if binary { "binary" } else { "text" };
            let mut server = Connection::new(Role::Server, Config::default());
            g.bench_function(BenchmarkId::new(format!("{kind}-events"), size), |b| {
                b.iter(|| {
                    server.receive(black_box(&wire));
                    let mut n = 0;
                    while let Some(event) = server.poll_event() {
                        black_box(&event);
                        n += 1;
                    }
                    assert_eq!(n, BATCH);
                })
            });
            let mut server = Connection::new(Role::Server, Config::default());
            g.bench_function(BenchmarkId::new(format!("{kind}-echo"), size), |b| {
                b.iter(|| {
                    server.receive(black_box(&wire));
                    while let Some(event) = server.poll_event() {
                        match event {
                            Event::Text(t) => server.send_text(t).expect("send"),
                            Event::Binary(d) => server.send_binary(d).expect("send"),
                            other => panic!("{other:?}"),
                        }
                    }
                    while let Some(chunk) = server.poll_transmit() {
                        black_box(chunk);
                    }
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, receive);
criterion_main!(benches);
