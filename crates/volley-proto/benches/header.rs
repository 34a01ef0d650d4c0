//! Frame headers (RFC 6455 §5.2): decode and encode, for each length form (7-bit,
//! 16-bit, 64-bit), masked (client to server) and not.
//! `cargo bench -p volley-proto --bench header`
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::hint::black_box;
use volley_proto::frame::{FrameHeader, OpCode, MAX_HEADER_LEN};

fn headers() -> Vec<(String, FrameHeader)> {
    let mut out = Vec::new();
    for (form, len) in [("len7", 20u64), ("len16", 1000), ("len64", 1 << 20)] {
        for mask in [None, Some([0x37, 0xfa, 0x21, 0x3d])] {
            let h = FrameHeader {
                fin: true,
                rsv1: false,
                rsv2: false,
                rsv3: false,
                opcode: OpCode::Text.as_u8(),
                mask,
                payload_len: len,
            };
            let name = format!("{form}-{}", if mask.is_some() { "masked" } else { "unmasked" });
            out.push((name, h));
        }
    }
    out
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("header/decode");
    for (name, h) in headers() {
        let mut wire = Vec::with_capacity(MAX_HEADER_LEN);
        h.encode(&mut wire);
        g.bench_function(BenchmarkId::from_parameter(&name), |b| {
            b.iter(|| FrameHeader::parse(black_box(&wire)).expect("valid").expect("complete"))
        });
    }
    g.finish();
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("header/encode");
    for (name, h) in headers() {
        let mut wire = Vec::with_capacity(MAX_HEADER_LEN);
        g.bench_function(BenchmarkId::from_parameter(&name), |b| {
            b.iter(|| {
                wire.clear();
                black_box(&h).encode(&mut wire);
                black_box(wire.len())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, decode, encode);
criterion_main!(benches);
