//! `--processes N`: the server as N worker processes on one `SO_REUSEPORT` address.
//!
//! The first worker binds the address asked for (port 0 picks one); the others bind the
//! address it reports. This process prints that address and the workers' process ids,
//! then waits for them: stopping the server means signalling its process group.

use std::io::{self, BufRead as _, BufReader, Write as _};
use std::net::SocketAddr;
use std::process::{Child, ChildStdout, Command, Stdio};

/// Starts the workers, reports them, and waits until one of them exits.
pub fn run(processes: usize, listen: SocketAddr) -> io::Result<()> {
    let exe = std::env::current_exe()?;
    let args = worker_args();
    let mut children: Vec<(Child, ChildStdout)> = Vec::with_capacity(processes);
    let mut addr = listen;
    let result = (|| {
        for _ in 0..processes {
            let mut child = Command::new(&exe)
                .args(&args)
                .args(["--reuseport", "--listen", &addr.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .spawn()?;
            let stdout = child.stdout.take().ok_or_else(|| io::Error::other("worker without stdout"))?;
            children.push((child, stdout));
            let (_, stdout) = children.last_mut().expect("just pushed");
            let mut line = String::new();
            BufReader::new(stdout).read_line(&mut line)?;
            let reported = line
                .strip_prefix("listening on ")
                .and_then(|a| a.trim().parse().ok())
                .ok_or_else(|| io::Error::other(format!("a worker did not start: {:?}", line.trim())))?;
            addr = reported;
        }
        let mut out = io::stdout().lock();
        writeln!(out, "listening on {addr}")?;
        let pids: Vec<String> = children.iter().map(|(c, _)| c.id().to_string()).collect();
        writeln!(out, "workers {}", pids.join(" "))?;
        out.flush()
    })();
    if let Err(e) = result {
        for (child, _) in &mut children {
            let _ = child.kill();
            let _ = child.wait();
        }
        return Err(e);
    }
    // The workers run until the process group is stopped; one that exits early is
    // reported (the others keep serving).
    for (mut child, _) in children {
        let status = child.wait()?;
        if !status.success() {
            eprintln!("bench-server: worker {} exited: {status}", child.id());
        }
    }
    Ok(())
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
