//! `--processes N`: the server as N worker processes on one `SO_REUSEPORT` address.
//!
//! The first worker binds the address asked for (port 0 picks one); the others bind the
//! address it reports. This process prints that address and the workers' process ids,
//! then waits for them: stopping the server means signalling its process group.

use std::io::{self, BufRead as _, BufReader, Write as _};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

/// Starts the workers, reports them, and waits for them to exit.
pub fn run(processes: usize, listen: SocketAddr) -> io::Result<()> {
    let mut children: Vec<Child> = Vec::with_capacity(processes);
    let started = start(processes, listen, &mut children);
    if let Err(e) = started {
        for child in &mut children {
            let _ = child.kill();
            let _ = child.wait();
        }
        return Err(e);
    }
    // The workers run until the process group is stopped; one that exits early is
    // reported (the others keep serving).
    for mut child in children {
        let status = child.wait()?;
        if !status.success() {
            eprintln!("bench-server: worker {} exited: {status}", child.id());
        }
    }
    Ok(())
}

/// Starts the workers one after the other (each binds the address the first one
/// reported), pushing each into `children` as soon as it runs, then reports them.
fn start(processes: usize, listen: SocketAddr, children: &mut Vec<Child>) -> io::Result<()> {
    let exe = std::env::current_exe()?;
    let args = worker_args();
    let mut addr = listen;
    for _ in 0..processes {
        let mut child = Command::new(&exe)
            .args(&args)
            .args(["--reuseport", "--listen", &addr.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take();
        children.push(child);
        let mut line = String::new();
        if let Some(stdout) = stdout {
            BufReader::new(stdout).read_line(&mut line)?;
        }
        addr = line
            .strip_prefix("listening on ")
            .and_then(|a| a.trim().parse().ok())
            .ok_or_else(|| io::Error::other(format!("a worker did not start: {:?}", line.trim())))?;
    }
    let mut out = io::stdout().lock();
    writeln!(out, "listening on {addr}")?;
    let pids: Vec<String> = children.iter().map(|c| c.id().to_string()).collect();
    writeln!(out, "workers {}", pids.join(" "))?;
    out.flush()
}

/// This process's arguments without `--processes N` and `--listen ADDR`.
fn worker_args() -> Vec<String> {
    let mut out = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--processes" || arg == "--listen" {
            args.next();
        } else {
            out.push(arg);
        }
    }
    out
}
