//! The results of `volley bench`: the JSON object (`--json`), the table printed
//! otherwise, and the progress bar shown on stderr while it runs.

use std::cell::Cell;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

/// Round-trip latency percentiles, in microseconds.
#[derive(Debug, Serialize)]
pub struct Latency {
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest.
    pub max: u64,
    /// Mean.
    pub mean: f64,
}

/// What was measured of the server process.
#[derive(Debug, Serialize)]
pub struct ServerReport {
    /// Its process id.
    pub pid: u32,
    /// CPU seconds (user + system) over the measured phase.
    pub cpu_s: Option<f64>,
    /// Resident memory in bytes before the first connection.
    pub rss_before: Option<u64>,
    /// Resident memory in bytes at the end of the measured phase, connections open.
    pub rss_after: Option<u64>,
    /// Idle mode: `(rss_after - rss_before) / connections_open`, in bytes.
    pub rss_per_conn: Option<f64>,
    /// Round trips per CPU second of the server (not in idle mode).
    pub msgs_per_cpu_s: Option<f64>,
}

/// Everything `volley bench` reports; the field names are the JSON keys.
#[derive(Debug, Serialize)]
pub struct Report {
    /// "throughput", "rate" or "idle".
    pub mode: &'static str,
    /// The server's URL.
    pub url: String,
    /// Connections requested.
    pub connections: usize,
    /// Connections opened.
    pub connections_open: u64,
    /// Connections that could not be opened.
    pub connect_errors: u64,
    /// Connections that sent a message and got its echo before going idle (idle mode's
    /// `--talk-first`; 0 otherwise).
    pub talked_first: u64,
    /// Payload size in bytes.
    pub size: usize,
    /// Binary (true) or text messages.
    pub binary: bool,
    /// Messages in flight per connection (throughput mode).
    pub in_flight: usize,
    /// Requested total rate (rate mode).
    pub rate: Option<f64>,
    /// Whether permessage-deflate was offered.
    pub deflate: bool,
    /// Length of the measured phase (idle: the hold), in seconds.
    pub duration_s: f64,
    /// Round trips completed in the measured phase.
    pub messages: u64,
    /// Round trips per second.
    pub msgs_per_sec: f64,
    /// Payload bytes echoed per second, one direction.
    pub bytes_per_sec: f64,
    /// Connections that failed or were closed by the server during the run.
    pub errors: u64,
    /// Latency percentiles (none in idle mode, or without replies).
    pub latency_us: Option<Latency>,
    /// The server process's CPU and memory (with `--server-pid`).
    pub server: Option<ServerReport>,
    /// Length of the warm-up, in seconds.
    pub warmup_s: f64,
    /// Echoes of the wrong kind or size (each also counts in `errors`).
    pub mismatches: u64,
    /// Runtime threads of the generator.
    pub threads: usize,
    /// Source addresses the connections were spread over.
    pub source_addrs: usize,
    /// The generator's own resident memory in bytes, all connections open.
    pub client_rss: Option<u64>,
    /// Whether Ctrl-C cut the run short.
    pub interrupted: bool,
    /// The first reason a connection could not be opened.
    pub first_connect_error: Option<String>,
    /// The first reason a connection failed during the run.
    pub first_error: Option<String>,
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes with a binary unit.
pub fn bytes(n: f64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n;
    let mut unit = 0;
    while value.abs() >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{value:.0} {}", units[unit])
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

/// Microseconds, switching to milliseconds from 10 ms.
pub fn micros(us: u64) -> String {
    if us >= 10_000 {
        format!("{:.1} ms", us as f64 / 1000.0)
    } else {
        format!("{us} µs")
    }
}

impl Report {
    /// The human-readable table (stdout).
    pub fn print_table(&self) {
        let row = |name: &str, value: String| println!("  {name:<18} {value}");
        let kind = if self.binary { "binary" } else { "text" };
        let load = match self.mode {
            "rate" => format!("{} msgs/s in total (open loop)", thousands(self.rate.unwrap_or(0.0) as u64)),
            "idle" => "idle".to_string(),
            _ => format!("{} in flight per connection", self.in_flight),
        };
        println!("volley bench {} ({})", self.url, self.mode);
        row(
            "connections",
            format!(
                "{} requested, {} open, {} failed to open, {} source address(es)",
                thousands(self.connections as u64),
                thousands(self.connections_open),
                thousands(self.connect_errors),
                self.source_addrs
            ),
        );
        if self.mode != "idle" {
            row(
                "load",
                format!(
                    "{} B {kind} messages, {load}{}",
                    self.size,
                    if self.deflate { ", permessage-deflate offered" } else { "" }
                ),
            );
        }
        let phase = if self.mode == "idle" { "held" } else { "measured" };
        let warmup = if self.mode == "idle" { String::new() } else { format!(" after {:.1} s warm-up", self.warmup_s) };
        row("duration", format!("{:.2} s {phase}{warmup}", self.duration_s));
        if self.mode != "idle" {
            row("messages", format!("{} round trips", thousands(self.messages)));
            row("throughput", format!("{} msgs/s", thousands(self.msgs_per_sec.round() as u64)));
            row("payload", format!("{:.2} MB/s each way", self.bytes_per_sec / 1e6));
            match &self.latency_us {
                Some(l) => {
                    row(
                        "latency",
                        format!(
                            "p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
                            micros(l.p50),
                            micros(l.p90),
                            micros(l.p99),
                            micros(l.p999),
                            micros(l.max)
                        ),
                    );
                    row("latency mean", micros(l.mean.round() as u64));
                }
                None => row("latency", "no replies measured".to_string()),
            }
        }
        let mismatches =
            if self.mismatches > 0 { format!(" ({} wrong echoes)", self.mismatches) } else { String::new() };
        row("errors", format!("{}{mismatches}", thousands(self.errors)));
        if let Some(s) = &self.server {
            match s.cpu_s {
                Some(cpu) => {
                    let share = if self.duration_s > 0.0 { 100.0 * cpu / self.duration_s } else { 0.0 };
                    let per_cpu = match s.msgs_per_cpu_s {
                        Some(m) => format!(", {} msgs per CPU second", thousands(m.round() as u64)),
                        None => String::new(),
                    };
                    row("server CPU", format!("{cpu:.2} s ({share:.0}% of one core){per_cpu}  [pid {}]", s.pid));
                }
                None => row("server CPU", format!("not measured [pid {}]", s.pid)),
            }
            let rss = |v: Option<u64>| v.map_or("?".to_string(), |v| bytes(v as f64));
            let per_conn = match s.rss_per_conn {
                Some(p) => format!(", {} per connection", bytes(p)),
                None => String::new(),
            };
            row("server memory", format!("{} before, {} after{per_conn}", rss(s.rss_before), rss(s.rss_after)));
        }
        if let Some(rss) = self.client_rss {
            row("generator memory", bytes(rss as f64));
        }
        if self.interrupted {
            println!("  (interrupted: partial results)");
        }
    }
}

/// The progress bar on stderr (hidden when disabled or when stderr is not a terminal).
pub struct Progress {
    bar: ProgressBar,
    /// When the current timed phase started.
    started: Cell<std::time::Instant>,
    /// Whether the current stage counts steps rather than time.
    counted: Cell<bool>,
}

impl Progress {
    /// A progress bar, drawn if `show`.
    pub fn new(show: bool) -> Self {
        let target = if show { ProgressDrawTarget::stderr_with_hz(5) } else { ProgressDrawTarget::hidden() };
        Progress {
            bar: ProgressBar::with_draw_target(None, target),
            started: Cell::new(std::time::Instant::now()),
            counted: Cell::new(false),
        }
    }

    fn style(&self, template: &str) {
        if let Ok(style) = ProgressStyle::with_template(template) {
            self.bar.set_style(style.progress_chars("=> "));
        }
    }

    /// Opening `n` connections.
    pub fn connecting(&self, n: usize) {
        self.counting("connecting", n);
    }

    /// A stage of `n` steps, named `name` (its position set with [`Progress::set_position`]).
    pub fn counting(&self, name: &str, n: usize) {
        self.style("{prefix:>11} [{bar:30}] {pos}/{len} {msg}");
        self.bar.set_prefix(name.to_string());
        self.bar.set_message("");
        self.counted.set(true);
        self.bar.set_length(n as u64);
        self.bar.set_position(0);
    }

    /// Connections opened or failed so far.
    pub fn set_position(&self, n: u64) {
        self.bar.set_position(n);
    }

    /// The warm-up of `secs` seconds.
    pub fn warmup(&self, secs: f64) {
        self.phase("warmup", secs);
    }

    /// The measured phase (or the hold) of `secs` seconds.
    pub fn measuring(&self, secs: f64, idle: bool) {
        self.phase(if idle { "holding" } else { "measuring" }, secs);
    }

    /// A timed phase of `secs` seconds, named `name`.
    pub fn phase(&self, name: &str, secs: f64) {
        self.style("{prefix:>11} [{bar:30}] {elapsed_precise} {msg}");
        self.bar.set_prefix(name.to_string());
        self.bar.set_message("");
        self.bar.set_length((secs * 10.0).round().max(1.0) as u64);
        self.bar.reset();
        self.bar.enable_steady_tick(Duration::from_millis(200));
        self.started.set(std::time::Instant::now());
        self.counted.set(false);
    }

    /// The live rate and error count.
    pub fn tick(&self, msgs_per_sec: f64, errors: u64) {
        let steps = (self.started.get().elapsed().as_secs_f64() * 10.0) as u64;
        self.bar.set_position(steps.min(self.bar.length().unwrap_or(0)));
        let errors = if errors > 0 { format!(", {} errors", thousands(errors)) } else { String::new() };
        self.bar.set_message(format!("{} msgs/s{errors}", thousands(msgs_per_sec.round() as u64)));
    }

    /// The text after the bar; in a timed phase, the bar also moves to the time elapsed.
    pub fn set_message(&self, msg: String) {
        if !self.counted.get() {
            let steps = (self.started.get().elapsed().as_secs_f64() * 10.0) as u64;
            self.bar.set_position(steps.min(self.bar.length().unwrap_or(0)));
        }
        self.bar.set_message(msg);
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(bytes(512.0), "512 B");
        assert_eq!(bytes(1536.0), "1.5 KiB");
        assert_eq!(micros(950), "950 µs");
        assert_eq!(micros(12_500), "12.5 ms");
    }
}
