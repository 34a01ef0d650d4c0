//! UTF-8 validation of text payloads: the incremental `Utf8Validator` (whole payload,
//! and in 1,500-byte pieces as a payload arrives over TCP) and `Utf8Bytes::try_from`,
//! with `std::str::from_utf8` as the baseline, on ASCII and multibyte text of 1 KiB and
//! 64 KiB.
//! `cargo bench -p volley-proto --bench utf8`
#![allow(missing_docs)]

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use volley_proto::{Utf8Bytes, Utf8Validator};

/// `len` bytes of text cut at a character boundary at or before `len`.
fn text(alphabet: &str, len: usize) -> Vec<u8> {
    let mut s = String::with_capacity(len + 8);
    while s.len() < len {
        s.push_str(alphabet);
    }
    let mut end = len;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.into_bytes()
}

fn utf8(c: &mut Criterion) {
    let mut g = c.benchmark_group("utf8");
    let kinds = [
        ("ascii", "{\"user\":\"u42\",\"value\":1234,\"ok\":true} "),
        // Two-, three- and four-byte sequences.
        ("multibyte", "Grüße, señor — 日本語のテキスト, русский текст 😀🎉 "),
    ];
    for (kind, alphabet) in kinds {
        for size in [1usize << 10, 64 << 10] {
            let data = text(alphabet, size);
            let shared = Bytes::from(data.clone());
            g.throughput(Throughput::Bytes(data.len() as u64));
            g.bench_function(BenchmarkId::new(format!("{kind}/validator"), size), |b| {
                b.iter(|| {
                    let mut v = Utf8Validator::new();
                    v.feed(black_box(&data)).expect("valid");
                    v.finish().expect("complete")
                })
            });
            g.bench_function(BenchmarkId::new(format!("{kind}/validator-1500B-pieces"), size), |b| {
                b.iter(|| {
                    let mut v = Utf8Validator::new();
                    for piece in black_box(&data).chunks(1500) {
                        v.feed(piece).expect("valid");
                    }
                    v.finish().expect("complete")
                })
            });
            g.bench_function(BenchmarkId::new(format!("{kind}/Utf8Bytes"), size), |b| {
                b.iter(|| Utf8Bytes::try_from(black_box(shared.clone())).expect("valid"))
            });
            g.bench_function(BenchmarkId::new(format!("{kind}/std"), size), |b| {
                b.iter(|| std::str::from_utf8(black_box(&data)).is_ok())
            });
        }
    }
    g.finish();
}

criterion_group!(benches, utf8);
criterion_main!(benches);
