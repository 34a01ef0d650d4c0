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

/// `volley echo` with `extra` flags on a free port: the process and the port.
pub fn echo_with(extra: &[&str]) -> (Proc, u16) {
    let port = free_port();
    (echo_on(port, extra), port)
}
