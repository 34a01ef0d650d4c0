//! Measures the memory one connection's permessage-deflate state costs, by setting:
//! `cargo run --release -p volley-proto --example deflate-memory`.
//!
//! Each measurement runs in a fresh child process: it makes 1000 server connections,
//! has each receive a compressed 64 KiB message and send one back (so both the
//! decompressor and the compressor exist and have worked), and divides the growth of the
//! process's resident memory by 1000. The connection without deflate is the baseline.
//! Prints a Markdown table.
#![allow(missing_docs)]

use std::process::Command;

use volley_proto::deflate::{accept_response, client_offer, negotiate};
use volley_proto::{Config, Connection, DeflateConfig, Event, MessageKind, RandomSource, Role};

const N: usize = 1000;

fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    statm.split_whitespace().nth(1).and_then(|p| p.parse::<usize>().ok()).unwrap_or(0) * 4096
}

/// 64 KiB of text that varies enough to fill a 32 KiB window.
fn text() -> String {
    let mut x: u32 = 12345;
    let mut s = String::new();
    while s.len() < 65536 {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        s.push_str(&format!("{} {:x} fox dog; ", x % 1000, x >> 8));
    }
    s.truncate(65536);
    s
}

/// One measurement: bytes per connection for `mode` ("none", "both", "inflate").
fn measure(mode: &str, bits: u8, mem_level: u8, takeover: bool) -> usize {
    let mut cfg = DeflateConfig::default();
    cfg.local_max_window_bits = bits;
    cfg.remote_max_window_bits = bits;
    cfg.mem_level = mem_level;
    cfg.threshold = 0;
    cfg.local_no_context_takeover = !takeover;
    cfg.remote_no_context_takeover = !takeover;
    let (server_params, answer) = negotiate(&[client_offer(&cfg)], &cfg).expect("negotiation");
    let client_params = accept_response(&answer, &cfg).expect("answer");
    let mut config = Config::default();
    config.random = RandomSource::fixed([1, 2, 3, 4]);
    // What a client sends: one compressed (or plain) message.
    let mut client = Connection::new(Role::Client, config.clone());
    if mode != "none" {
        client.enable_deflate(client_params, cfg.clone());
    }
    client.send_text(text()).expect("send");
    let mut wire = Vec::new();
    while let Some(t) = client.poll_transmit() {
        wire.extend_from_slice(&t);
    }
    let before = rss();
    let mut conns = Vec::with_capacity(N);
    for _ in 0..N {
        let mut s = Connection::new(Role::Server, config.clone());
        if mode != "none" {
            s.enable_deflate(server_params, cfg.clone());
        }
        s.receive(&wire);
        while let Some(e) = s.poll_event() {
            if let Event::Text(t) = e {
                if mode == "both" {
                    s.send_text(t).expect("send");
                } else {
                    s.send_uncompressed(MessageKind::Text, t.into_bytes()).expect("send");
                }
            }
        }
        while s.poll_transmit().is_some() {}
        s.release_idle_memory();
        conns.push(s);
    }
    let grown = rss().saturating_sub(before);
    std::hint::black_box(&conns);
    grown / N
}

fn child(mode: &str, bits: u8, mem: u8, takeover: bool) -> usize {
    let exe = std::env::current_exe().expect("exe");
    let out = Command::new(exe)
        .args(["--one", mode, &bits.to_string(), &mem.to_string(), &takeover.to_string()])
        .output()
        .expect("child");
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}

/// Wire size of a JSON-like 16 KiB message (the first of a stream, so no history helps)
/// and of 100 small 200-byte messages in a row (context takeover helping), by level.
fn ratios() {
    let json = |n: usize, seed: u32| {
        let mut s = String::new();
        let mut x = seed;
        while s.len() < n {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            s.push_str(&format!("{{\"user\":\"u{}\",\"value\":{},\"ok\":true}}", x % 97, (x >> 8) % 10_000));
        }
        s.truncate(n);
        s
    };
    println!("| level | window/mem | 16 KiB JSON message | 100 x 200 B messages |");
    println!("|---|---|---|---|");
    for (level, bits, mem) in [(1, 12, 5), (6, 12, 5), (9, 12, 5), (6, 15, 8), (1, 9, 1)] {
        let mut cfg = DeflateConfig::default();
        cfg.level = level;
        cfg.local_max_window_bits = bits;
        cfg.remote_max_window_bits = bits;
        cfg.mem_level = mem;
        cfg.threshold = 0;
        let (params, _) = negotiate(&[client_offer(&cfg)], &cfg).expect("negotiation");
        let wire = |msgs: Vec<String>| {
            let mut s = Connection::new(Role::Server, Config::default());
            s.enable_deflate(params, cfg.clone());
            let mut n = 0;
            for m in msgs {
                s.send_text(m).expect("send");
                while let Some(t) = s.poll_transmit() {
                    n += t.len();
                }
            }
            n
        };
        let big = wire(vec![json(16384, 7)]);
        let small = wire((0..100).map(|i| json(200, i)).collect());
        println!(
            "| {level} | {bits}/{mem} | {big} B ({:.1}%) | {small} B ({:.1}%) |",
            100.0 * big as f64 / 16384.0,
            100.0 * small as f64 / 20000.0
        );
    }
    println!();
}

fn kib(b: usize) -> String {
    format!("{:.1} KiB", b as f64 / 1024.0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 6 && args[1] == "--one" {
        let n = measure(&args[2], args[3].parse().unwrap_or(15), args[4].parse().unwrap_or(8), args[5] == "true");
        println!("{n}");
        return;
    }
    ratios();
    let base = child("none", 15, 8, true);
    println!("Baseline: a connection without deflate, after one 64 KiB message each way: {}.\n", kib(base));
    println!("| window bits | mem level | compressor | decompressor | both | both, no context takeover |");
    println!("|---|---|---|---|---|---|");
    for (bits, mem) in [(9, 1), (10, 2), (11, 4), (12, 5), (13, 6), (14, 7), (15, 8), (15, 9), (12, 8), (15, 5)] {
        let both = child("both", bits, mem, true).saturating_sub(base);
        let inflate = child("inflate", bits, mem, true).saturating_sub(base);
        let deflate = both.saturating_sub(inflate);
        let nct = child("both", bits, mem, false).saturating_sub(base);
        println!("| {bits} | {mem} | {} | {} | {} | {} |", kib(deflate), kib(inflate), kib(both), kib(nct));
    }
}
