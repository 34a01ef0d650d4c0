//! Masking (RFC 6455 §5.3): `apply_mask` (8-byte words) against the plain byte loop, at
//! 16 B, 1 KiB and 64 KiB.
//! `cargo bench -p volley-proto --bench mask`
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use volley_proto::frame::mask::{apply_mask, apply_mask_bytewise};

const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn mask(c: &mut Criterion) {
    let mut g = c.benchmark_group("mask");
    for size in [16usize, 1 << 10, 64 << 10] {
        let mut buf: Vec<u8> = (0..size).map(|i| i as u8).collect();
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(BenchmarkId::new("words", size), |b| {
            b.iter(|| apply_mask(black_box(&mut buf), black_box(KEY), 0))
        });
        // A buffer that starts inside the payload (a frame split across reads).
        g.bench_function(BenchmarkId::new("words-offset-3", size), |b| {
            b.iter(|| apply_mask(black_box(&mut buf), black_box(KEY), 3))
        });
        g.bench_function(BenchmarkId::new("bytewise", size), |b| {
            b.iter(|| apply_mask_bytewise(black_box(&mut buf), black_box(KEY), 0))
        });
    }
    g.finish();
}

criterion_group!(benches, mask);
criterion_main!(benches);
