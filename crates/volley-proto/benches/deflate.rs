//! permessage-deflate throughput: compress and inflate whole messages through the
//! protocol core (framing included), by message size and setting.
//! `cargo bench -p volley-proto --bench deflate`
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use volley_proto::deflate::{accept_response, client_offer, negotiate};
use volley_proto::{Config, Connection, DeflateConfig, Event, RandomSource, Role};

/// JSON-like text that compresses the way chat and dashboard traffic does.
fn payload(len: usize) -> String {
    let mut s = String::with_capacity(len + 64);
    let mut i = 0u32;
    while s.len() < len {
        i = i.wrapping_mul(1_103_515_245).wrapping_add(12345);
        s.push_str(&format!("{{\"user\":\"u{}\",\"value\":{},\"ok\":true}}", i % 97, (i >> 8) % 10_000));
    }
    s.truncate(len);
    s
}

fn pair(cfg: &DeflateConfig) -> (Connection, Connection) {
    let (sp, answer) = negotiate(&[client_offer(cfg)], cfg).expect("negotiate");
    let cp = accept_response(&answer, cfg).expect("answer");
    let mut config = Config::default();
    config.random = RandomSource::fixed([1, 2, 3, 4]);
    let mut server = Connection::new(Role::Server, config.clone());
    server.enable_deflate(sp, cfg.clone());
    let mut client = Connection::new(Role::Client, config);
    client.enable_deflate(cp, cfg.clone());
    (server, client)
}

fn settings() -> Vec<(&'static str, DeflateConfig)> {
    let mut default = DeflateConfig::default();
    default.threshold = 0;
    let mut fast = default.clone();
    fast.level = 1;
    let mut zlib = default.clone();
    zlib.local_max_window_bits = 15;
    zlib.remote_max_window_bits = 15;
    zlib.mem_level = 8;
    let mut nct = default.clone();
    nct.local_no_context_takeover = true;
    nct.remote_no_context_takeover = true;
    vec![("default-12-5-l6", default), ("level1", fast), ("zlib-15-8-l6", zlib), ("no-takeover", nct)]
}

fn compress(c: &mut Criterion) {
    let mut g = c.benchmark_group("deflate/compress");
    for size in [256usize, 16 << 10] {
        let text = payload(size);
        for (name, cfg) in settings() {
            let (mut server, _) = pair(&cfg);
            g.throughput(Throughput::Bytes(size as u64));
            g.bench_with_input(BenchmarkId::new(name, size), &text, |b, text| {
                b.iter(|| {
                    server.send_text(text.as_str()).expect("send");
                    while server.poll_transmit().is_some() {}
                })
            });
        }
    }
    g.finish();
}

fn inflate(c: &mut Criterion) {
    let mut g = c.benchmark_group("deflate/inflate");
    for size in [256usize, 16 << 10] {
        let text = payload(size);
        for (name, mut cfg) in settings() {
            // Inflate needs a fresh stream per message to replay the same bytes.
            cfg.local_no_context_takeover = true;
            cfg.remote_no_context_takeover = true;
            let (mut server, mut client) = pair(&cfg);
            server.send_text(text.as_str()).expect("send");
            let mut wire = Vec::new();
            while let Some(t) = server.poll_transmit() {
                wire.extend_from_slice(&t);
            }
            g.throughput(Throughput::Bytes(size as u64));
            g.bench_with_input(BenchmarkId::new(name, size), &wire, |b, wire| {
                b.iter(|| {
                    client.receive(wire);
                    match client.poll_event() {
                        Some(Event::Text(t)) => assert_eq!(t.len(), size),
                        other => panic!("{other:?}"),
                    }
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, compress, inflate);
criterion_main!(benches);
