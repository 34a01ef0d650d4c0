//! Helpers shared by the integration tests of the `volley` binary: child processes
//! that are killed when dropped, free ports, and a `volley echo` server.
#![allow(dead_code)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process killed (and reaped) when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits (10 s at most) until something accepts connections on `port`.
pub fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `volley echo` with `extra` flags on `port`, once it accepts connections.
pub fn echo_on(port: u16, extra: &[&str]) -> Proc {
    let child = Command::new(env!("CARGO_BIN_EXE_volley"))
        .args(["echo", "--listen", &format!("127.0.0.1:{port}")])
        .args(extra)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server = Proc(child);
    wait_for_port(port);
    server
}

/// `volley echo` with `extra` flags on a port of its own: the process and the port. The
/// server binds port 0 and the port is read from its log, so no other process can take
/// the port between a check and the bind.
pub fn echo_with(extra: &[&str]) -> (Proc, u16) {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_volley"))
        .args(["echo", "--listen", "127.0.0.1:0"])
        .args(extra)
        .env("VOLLEY_LOG", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let server = Proc(child);
    let (tx, rx) = std::sync::mpsc::channel();
    // Reads the log to its end, so that the server never blocks on a full pipe.
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { return };
            let plain = strip_ansi(&line);
            if plain.contains("echo server listening") {
                if let Some(port) = plain
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("addr="))
                    .and_then(|a| a.rsplit(':').next()?.parse::<u16>().ok())
                {
                    let _ = tx.send(port);
                }
            }
        }
    });
    let port = rx.recv_timeout(Duration::from_secs(10)).expect("volley echo logs the address it listens on");
    wait_for_port(port);
    (server, port)
}

/// A log line without its terminal colours.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ ... a letter
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}
