//! `volley connect` as a person uses it: an interactive session in a real terminal
//! (tmux: keys are typed, the screen is read back), and pipe mode from a script.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{echo_with, free_port, Proc};

fn echo() -> (Proc, u16) {
    echo_with(&[])
}

/// A tmux session running one command, killed when dropped.
struct Tmux(String);

impl Tmux {
    fn start(command: &str) -> Tmux {
        let name = format!("volley-test-{}", std::process::id());
        let ok = Command::new("tmux")
            .args(["new-session", "-d", "-s", &name, "-x", "140", "-y", "40", command])
            .status()
            .unwrap_or_else(|e| panic!("tmux is not installed ({e}): run scripts/install-test-deps.sh"));
        assert!(ok.success(), "tmux new-session failed");
        Tmux(name)
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", &self.0];
        args.extend_from_slice(keys);
        assert!(Command::new("tmux").args(&args).status().unwrap().success());
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux").args(["capture-pane", "-p", "-t", &self.0]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until the screen satisfies `check`; returns it.
    fn wait_for(&self, what: &str, check: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let s = self.screen();
            if check(&s) {
                return s;
            }
            assert!(Instant::now() < deadline, "waited for {what}; the screen shows:\n{s}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn alive(&self) -> bool {
        Command::new("tmux").args(["has-session", "-t", &self.0]).status().map(|s| s.success()).unwrap_or(false)
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["kill-session", "-t", &self.0]).status();
    }
}

#[test]
fn interactive_session_in_a_terminal() {
    let (_server, port) = echo();
    let bin = env!("CARGO_BIN_EXE_volley");
    let t = Tmux::start(&format!("{bin} connect --no-proxy ws://127.0.0.1:{port}/chat; sleep 30"));
    t.wait_for("the prompt", |s| s.contains("connected to /chat") && s.lines().any(|l| l.trim_end() == ">"));

    // A typed line goes out and comes back, both shown with direction and time.
    t.keys(&["hello from a terminal", "Enter"]);
    t.wait_for("the echo", |s| s.lines().any(|l| l.starts_with("< ") && l.ends_with("hello from a terminal")));
    // The sent line is redrawn with its time; the terminal may show it a moment later.
    t.wait_for("the sent line with its time", |s| {
        s.lines().any(|l| l.starts_with("> ") && l.contains(':') && l.ends_with("hello from a terminal"))
    });

    // Commands: binary in hex and base64, ping.
    t.keys(&["/hex 01 02 ff", "Enter"]);
    t.wait_for("the binary echo", |s| {
        s.lines().any(|l| l.starts_with("< ") && l.ends_with("[binary 3 bytes] 01 02 ff"))
    });
    t.keys(&["/base64 aGk=", "Enter"]);
    t.wait_for("the base64 echo", |s| s.lines().any(|l| l.starts_with("< ") && l.ends_with("[binary 2 bytes] 68 69")));
    t.keys(&["/ping are you there", "Enter"]);
    t.wait_for("the pong", |s| s.contains("[pong] are you there"));

    // History: Up brings back the last line; Enter sends it again.
    t.keys(&["Up", "Enter"]);
    t.wait_for("a second pong", |s| s.matches("[pong] are you there").count() >= 2);

    // Close with a code: the server echoes it and the session ends.
    t.keys(&["/close 4000 done", "Enter"]);
    t.wait_for("the close", |s| s.contains("[close 4000]") && s.contains("connection closed"));
    assert!(t.alive());
}

#[test]
fn pipe_mode_for_scripts() {
    let (_server, port) = echo();
    let mut child = Command::new(env!("CARGO_BIN_EXE_volley"))
        .args(["connect", "--no-proxy", &format!("ws://127.0.0.1:{port}/")])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all("first line\nsecond ✓\n\nthird\n".as_bytes()).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "volley connect did not exit at the end of its input");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "first line\nsecond ✓\n\nthird\n");
}

#[test]
fn show_handshake_and_a_refused_connection() {
    let (_server, port) = echo();
    let out = Command::new(env!("CARGO_BIN_EXE_volley"))
        .args(["connect", "--no-proxy", "--show-handshake", "-H", "X-Trace: 7", &format!("ws://127.0.0.1:{port}/h")])
        .stdin(Stdio::piped())
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("> GET /h HTTP/1.1") && err.contains("> X-Trace: 7"), "{err}");
    assert!(err.contains("< HTTP/1.1 101") && err.to_ascii_lowercase().contains("< sec-websocket-accept: "), "{err}");

    let closed = free_port();
    let out = Command::new(env!("CARGO_BIN_EXE_volley"))
        .args(["connect", "--no-proxy", &format!("ws://127.0.0.1:{closed}/")])
        .stdin(Stdio::piped())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("connecting to ws://127.0.0.1"));
}

/// Pipe mode over wss:// to `volley echo --tls-self-signed`: with --http2 the WebSocket
/// runs over HTTP/2 (the handshake shown is the extended CONNECT), without it over
/// HTTP/1.1; the same lines come back either way.
#[test]
fn wss_with_and_without_http2() {
    let (_server, port) = echo_with(&["--tls-self-signed"]);
    for (flags, request, answer) in [
        (&["--http2"][..], "> CONNECT /tls HTTP/2", "< HTTP/2 200"),
        (&[][..], "> GET /tls HTTP/1.1", "< HTTP/1.1 101"),
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_volley"))
            .args(["connect", "--no-proxy", "--insecure", "--show-handshake"])
            .args(flags)
            .arg(format!("wss://localhost:{port}/tls"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all("über TLS\nsecond\n".as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{flags:?}: {err}");
        assert!(err.contains(request) && err.contains(answer), "{flags:?}: {err}");
        assert_eq!(String::from_utf8(out.stdout).unwrap(), "über TLS\nsecond\n", "{flags:?}");
    }
}
