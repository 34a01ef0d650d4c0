//! The server side of the opening handshake: parsing a browser's upgrade request, and
//! parsing it then building the 101 answer (Sec-WebSocket-Accept, a SHA-1).
//! `cargo bench -p volley-proto --bench handshake`
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use volley_proto::handshake::{Request, Response};
use volley_proto::Config;

/// A request as Chromium sends it (header order and values).
const CHROMIUM: &[u8] = b"GET /chat?room=1 HTTP/1.1\r\n\
Host: 127.0.0.1:9001\r\n\
Connection: Upgrade\r\n\
Pragma: no-cache\r\n\
Cache-Control: no-cache\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36\r\n\
Upgrade: websocket\r\n\
Origin: http://127.0.0.1:9001\r\n\
Sec-WebSocket-Version: 13\r\n\
Accept-Encoding: gzip, deflate, br, zstd\r\n\
Accept-Language: en-US,en;q=0.9\r\n\
Cookie: session=0123456789abcdef; theme=dark\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\
\r\n";

/// The smallest valid request.
const MINIMAL: &[u8] = b"GET / HTTP/1.1\r\n\
Host: h\r\n\
Upgrade: websocket\r\n\
Connection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Version: 13\r\n\
\r\n";

fn handshake(c: &mut Criterion) {
    let config = Config::default();
    let mut g = c.benchmark_group("handshake");
    for (name, request) in [("chromium", CHROMIUM), ("minimal", MINIMAL)] {
        g.bench_function(format!("parse/{name}"), |b| {
            b.iter(|| Request::parse(black_box(request), &config).expect("valid").expect("complete"))
        });
        g.bench_function(format!("parse-and-accept/{name}"), |b| {
            b.iter(|| {
                let (req, _) = Request::parse(black_box(request), &config).expect("valid").expect("complete");
                Response::accept(&req).encode()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, handshake);
criterion_main!(benches);
