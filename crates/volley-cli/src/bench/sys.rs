//! What `volley bench` reads from the operating system: the open-file limit, a process's
//! CPU time and resident memory (Linux `/proc`), and what a failed connect means.

use std::io;

/// Clock ticks per second of the CPU times in `/proc/PID/stat`. This is the kernel's
/// `USER_HZ`, which Linux fixes at 100 for user space on every common architecture
/// (what `getconf CLK_TCK` prints); reading it with `sysconf` would need `unsafe`.
const CLK_TCK: f64 = 100.0;

/// Raises this process's soft open-file limit to the hard limit; returns the new soft
/// limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

/// CPU time (user + system) of process `pid`, in seconds.
pub fn cpu_seconds(pid: u32) -> io::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_cpu_ticks(&stat).map(|ticks| ticks as f64 / CLK_TCK).ok_or_else(|| bad_data("stat"))
}

/// Resident set size (`VmRSS`) of process `pid`, in bytes.
pub fn rss_bytes(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_rss(&status).ok_or_else(|| bad_data("status"))
}

/// Anonymous resident memory (`RssAnon`: the heap, stacks; not the pages of the
/// executable and libraries, which the kernel reads from their files) of process
/// `pid`, in bytes.
pub fn anon_bytes(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    parse_kib(&status, "RssAnon:").ok_or_else(|| bad_data("status"))
}

/// This process's resident set size in bytes, if it can be read.
pub fn own_rss_bytes() -> Option<u64> {
    parse_rss(&std::fs::read_to_string("/proc/self/status").ok()?)
}

fn bad_data(file: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("unexpected /proc/PID/{file} format"))
}

/// `utime + stime` (fields 14 and 15) of a `/proc/PID/stat` line. The command name
/// (field 2) is in parentheses and may itself hold spaces and parentheses, so fields are
/// counted from the last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Each core's clock ticks since boot, busy and in all, from `/proc/stat` (idle and
/// iowait are not busy), in the order of the cores.
pub fn core_ticks() -> io::Result<Vec<(u64, u64)>> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    Ok(parse_core_ticks(&stat))
}

/// The `cpuN` lines of `/proc/stat`: (busy, total) ticks of each core.
fn parse_core_ticks(stat: &str) -> Vec<(u64, u64)> {
    stat.lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .filter_map(|l| {
            let v: Vec<u64> = l.split_whitespace().skip(1).map(|x| x.parse().ok()).collect::<Option<_>>()?;
            let total: u64 = v.iter().sum();
            let idle = v.get(3)? + v.get(4)?;
            Some((total - idle, total))
        })
        .collect()
}

/// `VmRSS` of a `/proc/PID/status` file, in bytes.
fn parse_rss(status: &str) -> Option<u64> {
    parse_kib(status, "VmRSS:")
}

/// The `key` line of a `/proc/PID/status`, in bytes (the file gives kB).
fn parse_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line[key.len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kib * 1024)
}

/// Linux `EMFILE`: this process is out of file descriptors.
const EMFILE: i32 = 24;
/// Linux `ENFILE`: the system is out of file descriptors.
const ENFILE: i32 = 23;

/// Whether a connect error means a local resource ran out (more connections will fail
/// the same way), and what to do about it.
pub fn resource_hint(e: &io::Error) -> Option<&'static str> {
    if cfg!(target_os = "linux") {
        match e.raw_os_error() {
            Some(EMFILE) => {
                return Some(
                    "too many open files (EMFILE): raise the open-file limit (`ulimit -n`; its hard limit is \
                     `nofile` in /etc/security/limits.conf, or LimitNOFILE= for a systemd service)",
                )
            }
            Some(ENFILE) => return Some("the system's file table is full (ENFILE): raise the fs.file-max sysctl"),
            _ => {}
        }
    }
    match e.kind() {
        io::ErrorKind::AddrNotAvailable | io::ErrorKind::AddrInUse => Some(
            "out of local ports (EADDRNOTAVAIL/EADDRINUSE): spread connections over more source addresses \
             (--source-addrs, loopback targets only) or widen the net.ipv4.ip_local_port_range sysctl",
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_ticks_of_proc_stat() {
        let stat = "cpu  30 0 10 100 5 0 0 0 0 0\ncpu0 20 0 5 50 5 0 0 0 0 0\ncpu1 10 0 5 50 0 0 0 0 0 0\nintr 1 2\n";
        assert_eq!(parse_core_ticks(stat), [(25, 80), (15, 65)]);
        assert!(parse_core_ticks("cpu0 1 2\n").is_empty(), "a short line is skipped");
        assert!(!core_ticks().unwrap().is_empty());
    }

    #[test]
    fn proc_files() {
        let stat = "1234 (a (weird) name) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 4 0 100 2000 300";
        assert_eq!(parse_cpu_ticks(stat), Some(300));
        assert_eq!(parse_cpu_ticks("garbage"), None);
        let status = "Name:\tvolley\nVmPeak:\t  9000 kB\nVmRSS:\t    5120 kB\nRssAnon:\t    1024 kB\nThreads:\t1\n";
        assert_eq!(parse_rss(status), Some(5120 * 1024));
        assert_eq!(parse_kib(status, "RssAnon:"), Some(1024 * 1024));
        assert_eq!(parse_rss("Name: x\n"), None);
        assert!(cpu_seconds(std::process::id()).is_ok());
        assert!(rss_bytes(std::process::id()).unwrap() > 0);
        assert!(anon_bytes(std::process::id()).unwrap() > 0);
    }

    #[test]
    fn hints() {
        assert!(resource_hint(&io::Error::from_raw_os_error(EMFILE)).unwrap().contains("ulimit"));
        assert!(resource_hint(&io::ErrorKind::AddrNotAvailable.into()).unwrap().contains("--source-addrs"));
        assert!(resource_hint(&io::ErrorKind::ConnectionRefused.into()).is_none());
    }
}
