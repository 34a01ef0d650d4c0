//! `volley bench` against a real `volley echo` process: the JSON report of each mode
//! (throughput, fixed rate, idle with the server's memory) and failures reported
//! without a panic.

mod common;

use std::process::{Command, Output, Stdio};

use common::{echo_with, free_port, Proc};
use serde_json::Value;

/// Starts `volley echo` on a free port; returns it and its URL.
fn echo() -> (Proc, String) {
    let (server, port) = echo_with(&[]);
    (server, format!("ws://127.0.0.1:{port}/"))
}

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_volley")).arg("bench").args(args).stdin(Stdio::null()).output().unwrap()
}

/// Runs `volley bench ARGS --json`, checks that stdout is exactly one JSON object with
/// every documented key, and returns it.
fn bench_json(args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = bench(&all);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}\nstdout: {stdout}\nstderr: {stderr}", out.status);
    assert_eq!(stdout.lines().count(), 1, "one line of JSON: {stdout}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    for key in [
        "mode",
        "url",
        "connections",
        "connections_open",
        "connect_errors",
        "size",
        "binary",
        "in_flight",
        "rate",
        "deflate",
        "duration_s",
        "messages",
        "msgs_per_sec",
        "bytes_per_sec",
        "errors",
        "latency_us",
        "server",
    ] {
        assert!(report.get(key).is_some(), "key {key} missing: {report}");
    }
    report
}

fn u(report: &Value, key: &str) -> u64 {
    report[key].as_u64().unwrap_or_else(|| panic!("{key} is not a count: {report}"))
}

fn f(report: &Value, key: &str) -> f64 {
    report[key].as_f64().unwrap_or_else(|| panic!("{key} is not a number: {report}"))
}

/// Latency percentiles are present and ordered.
fn check_latency(report: &Value) {
    let l = &report["latency_us"];
    let p = |k: &str| l[k].as_u64().unwrap_or_else(|| panic!("latency {k}: {report}"));
    assert!(p("p50") >= 1, "{report}");
    assert!(p("p50") <= p("p90") && p("p90") <= p("p99") && p("p99") <= p("p999") && p("p999") <= p("max"), "{l}");
    assert!(l["mean"].as_f64().unwrap() > 0.0, "{l}");
}

#[test]
fn throughput_mode_reports_round_trips_and_latency() {
    let (_server, url) = echo();
    let r = bench_json(&[&url, "-c", "4", "-s", "100", "-k", "4", "-d", "1", "--warmup", "0.2"]);
    assert_eq!(r["mode"], "throughput");
    assert_eq!(r["url"], url.as_str());
    assert_eq!((u(&r, "connections"), u(&r, "connections_open"), u(&r, "connect_errors")), (4, 4, 0));
    assert_eq!((u(&r, "size"), u(&r, "in_flight")), (100, 4));
    assert_eq!((r["binary"].as_bool(), r["deflate"].as_bool()), (Some(false), Some(false)));
    assert!(r["rate"].is_null() && r["server"].is_null(), "{r}");
    assert!(u(&r, "messages") > 0, "{r}");
    assert_eq!(u(&r, "errors"), 0, "{r}");
    let seconds = f(&r, "duration_s");
    // At least the asked second (how much longer depends on the machine).
    assert!(seconds >= 0.9, "{r}");
    let rate = f(&r, "msgs_per_sec");
    assert!((rate - u(&r, "messages") as f64 / seconds).abs() < 1.0, "{r}");
    assert!((f(&r, "bytes_per_sec") - rate * 100.0).abs() < 100.0, "{r}");
    check_latency(&r);
}

#[test]
fn binary_messages_with_deflate_offered() {
    let (_server, url) = echo();
    let r = bench_json(&[&url, "-c", "2", "-s", "3000", "--binary", "--deflate", "-d", "0.5", "--warmup", "0"]);
    assert_eq!((r["binary"].as_bool(), r["deflate"].as_bool()), (Some(true), Some(true)));
    assert!(u(&r, "messages") > 0, "{r}");
    assert_eq!((u(&r, "errors"), u(&r, "mismatches")), (0, 0), "{r}");
    check_latency(&r);
}

#[test]
fn rate_mode_keeps_the_requested_rate() {
    let (_server, url) = echo();
    let r = bench_json(&[&url, "-c", "10", "--rate", "2000", "-d", "1", "--warmup", "0.2"]);
    assert_eq!(r["mode"], "rate");
    assert_eq!(f(&r, "rate"), 2000.0);
    assert_eq!(u(&r, "errors"), 0, "{r}");
    // The scheduler's correctness, not the machine's speed: never faster than asked
    // (a busy machine may fall behind; that is not the scheduler's fault).
    let rate = f(&r, "msgs_per_sec");
    assert!(u(&r, "messages") > 0, "{r}");
    assert!(rate <= 2000.0 * 1.05, "{rate} msgs/s for 2000 requested: {r}");
    check_latency(&r);
}

#[test]
fn idle_mode_reports_the_servers_memory() {
    let (server, url) = echo();
    let pid = server.0.id().to_string();
    let r = bench_json(&[&url, "-c", "50", "--idle", "--hold", "0.3", "--server-pid", &pid]);
    assert_eq!(r["mode"], "idle");
    assert_eq!((u(&r, "connections"), u(&r, "connections_open")), (50, 50), "{r}");
    assert_eq!((u(&r, "messages"), u(&r, "errors")), (0, 0), "{r}");
    assert!(r["latency_us"].is_null(), "{r}");
    let s = &r["server"];
    assert_eq!(s["pid"].as_u64(), Some(u64::from(server.0.id())));
    let before = s["rss_before"].as_u64().unwrap_or_else(|| panic!("rss_before: {r}"));
    let after = s["rss_after"].as_u64().unwrap_or_else(|| panic!("rss_after: {r}"));
    assert!(before > 0 && after > 0, "{r}");
    assert!(s["rss_per_conn"].is_number(), "{r}");
    assert!(s["cpu_s"].as_f64().is_some_and(|c| c >= 0.0), "{r}");
    assert!(s["msgs_per_cpu_s"].is_null(), "{r}");
}

/// `volley echo --park-after`: at 20 messages a second over 4 connections, each
/// connection is silent for about 200 ms between messages, so it is parked after 20 ms
/// and woken by the next one. Every message still comes back.
#[cfg(unix)]
#[test]
fn parked_connections_still_echo_every_message() {
    let (_server, port) = echo_with(&["--park-after", "0.02"]);
    let url = format!("ws://127.0.0.1:{port}/");
    let r = bench_json(&[&url, "-c", "4", "--rate", "20", "-d", "1.5", "--warmup", "0.3"]);
    assert_eq!(u(&r, "connections_open"), 4, "{r}");
    assert_eq!((u(&r, "errors"), u(&r, "mismatches")), (0, 0), "{r}");
    let sent = 20.0 * f(&r, "duration_s");
    assert!(u(&r, "messages") as f64 >= sent * 0.8, "{} of about {sent}: {r}", u(&r, "messages"));
}

#[test]
fn unreachable_server_is_reported_not_a_panic() {
    let port = free_port();
    let url = format!("ws://127.0.0.1:{port}/");
    let out = bench(&[&url, "-c", "3", "-d", "0.2", "--warmup", "0", "--json"]);
    assert!(!out.status.success());
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((u(&r, "connections_open"), u(&r, "connect_errors")), (0, 3), "{r}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("could not be opened") && !stderr.contains("panicked"), "{stderr}");

    let out = bench(&["wss://127.0.0.1:1/", "--json"]);
    assert!(!out.status.success() && out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ws:// only"));
}

/// `--source-from`: the connections come from the addresses asked for (read back from
/// the kernel's socket table while they are held), so that several generators can
/// share one server without sharing ports.
#[cfg(target_os = "linux")]
#[test]
fn connections_come_from_the_source_addresses_asked_for() {
    let (_server, port) = echo_with(&[]);
    let url = format!("ws://127.0.0.1:{port}/");
    let run = std::thread::spawn(move || {
        bench_json(&[&url, "-c", "6", "--idle", "--hold", "1.5", "--source-from", "127.0.3.7", "--source-addrs", "2"])
    });
    // Local (client) ends toward the server's port, by source address, from /proc/net/tcp:
    // "sl local_address rem_address st ...", addresses as little-endian hex IP:port.
    let sources = || -> Vec<String> {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        let mut found: Vec<String> = table
            .lines()
            .skip(1)
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                let (local, remote, state) = (fields[1], fields[2], fields[3]);
                let (rip, rport) = remote.split_once(':')?;
                (state == "01" && rip == "0100007F" && u16::from_str_radix(rport, 16).ok()? == port)
                    .then(|| local.split_once(':').unwrap().0.to_string())
            })
            .collect();
        found.sort();
        found
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut seen = sources();
    while seen.len() < 6 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
        seen = sources();
    }
    // 127.0.3.7 and 127.0.3.8, little-endian, three connections each.
    let expected: Vec<String> =
        ["0703007F", "0703007F", "0703007F", "0803007F", "0803007F", "0803007F"].map(String::from).to_vec();
    assert_eq!(seen, expected);
    let r = run.join().unwrap();
    assert_eq!((u(&r, "connections_open"), u(&r, "source_addrs")), (6, 2), "{r}");

    let out = bench(&["ws://127.0.0.1:1/", "--source-from", "10.0.0.1", "--json"]);
    assert!(!out.status.success() && out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("127.0.0.0/8"), "{out:?}");
}

/// `--talk-first`: every connection sends one message and gets its echo before the
/// idle hold, and the report says so.
#[test]
fn idle_mode_talks_first_when_asked() {
    let (server, url) = echo();
    let pid = server.0.id().to_string();
    let r =
        bench_json(&[&url, "-c", "20", "-s", "100", "--idle", "--talk-first", "--hold", "0.2", "--server-pid", &pid]);
    assert_eq!(r["mode"], "idle");
    assert_eq!((u(&r, "connections_open"), u(&r, "talked_first")), (20, 20), "{r}");
    assert_eq!((u(&r, "errors"), u(&r, "mismatches")), (0, 0), "{r}");
    assert!(r["server"]["rss_per_conn"].is_number(), "{r}");

    // Without it, no connection speaks.
    let r = bench_json(&[&url, "-c", "5", "--idle", "--hold", "0.1"]);
    assert_eq!((u(&r, "connections_open"), u(&r, "talked_first")), (5, 0), "{r}");
}

/// Threads of a process, from /proc, but for the allocator's (jemalloc's background
/// thread, `jemalloc_bg_thd`).
#[cfg(target_os = "linux")]
fn threads_of(server: &Proc) -> usize {
    let tasks = std::fs::read_dir(format!("/proc/{}/task", server.0.id())).unwrap();
    tasks
        .filter(|t| {
            let comm = std::fs::read_to_string(t.as_ref().unwrap().path().join("comm")).unwrap_or_default();
            !comm.starts_with("jemalloc")
        })
        .count()
}

/// `volley echo --threads N` serves on N threads in all (`--threads 1`: one thread,
/// which accepts and echoes, as a current-thread runtime does; with `--park-after`,
/// each thread's parking adds its poller's thread), and the connections handed to the
/// other threads echo, parked or not.
#[cfg(target_os = "linux")]
#[test]
fn echo_runs_on_the_threads_asked_for() {
    for (threads, extra, all) in [("1", None, 1), ("3", None, 3), ("1", Some("0.02"), 2), ("3", Some("0.02"), 6)] {
        let mut flags = vec!["--threads", threads];
        if let Some(after) = extra {
            flags.extend(["--park-after", after]);
        }
        let (server, port) = echo_with(&flags);
        let url = format!("ws://127.0.0.1:{port}/");
        let r = bench_json(&[&url, "-c", "7", "--rate", "70", "-d", "0.6", "--warmup", "0.1"]);
        assert_eq!((u(&r, "connections_open"), u(&r, "errors"), u(&r, "mismatches")), (7, 0, 0), "{flags:?}: {r}");
        assert!(u(&r, "messages") > 0, "{flags:?}: {r}");
        assert_eq!(threads_of(&server), all, "{flags:?}");
    }
}

/// On Linux the `volley` binary's allocator returns freed memory to the system in the
/// background (jemalloc's `background_thread`, set in .cargo/config.toml): what a
/// burst of connections used is given back once they go idle, rather than kept by the
/// allocator (docs/PERFORMANCE.md, W6 after activity).
#[cfg(target_os = "linux")]
#[test]
fn the_echo_server_returns_freed_memory_in_the_background() {
    let (server, port) = echo_with(&["--threads", "1", "--park-after", "0"]);
    let url = format!("ws://127.0.0.1:{port}/");
    let r = bench_json(&[&url, "-c", "20", "--idle", "--talk-first", "--hold", "0.1"]);
    assert_eq!(u(&r, "talked_first"), 20, "{r}");
    let tasks = std::fs::read_dir(format!("/proc/{}/task", server.0.id())).unwrap();
    let names: Vec<String> = tasks
        .map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).unwrap_or_default().trim().to_string())
        .collect();
    assert!(names.iter().any(|n| n.starts_with("jemalloc_bg")), "no purging thread among {names:?}");
}
