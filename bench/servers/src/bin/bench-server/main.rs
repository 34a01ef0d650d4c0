//! `bench-server`: one echo server per implementation, built the same way for each, for
//! the comparison harness (bench/run.py).
//!
//! ```text
//! bench-server --impl volley|tungstenite|fastwebsockets|tokio-websockets|raw --listen ADDR
//!              [--deflate] [--broadcast] [--park-after MS] [--processes N]
//! ```
//!
//! Every implementation runs on a tokio current-thread runtime (the harness pins the
//! process to one core), accepts in one loop, sets `TCP_NODELAY` on every connection and
//! spawns one task per connection that reads a message and writes it back. No task is
//! wrapped in `tokio::task::unconstrained` (some peers' examples do): all run under
//! tokio's default cooperative budget. The first line on stdout is
//! `listening on ADDR` (with the port the system chose for `:0`).
//!
//! `--deflate` negotiates permessage-deflate (Volley only: none of the peers implements
//! it on the server). `--broadcast` (Volley only) turns the echo into a fan-out: every
//! message from a client is sent to all connections through a [`volley::Broadcast`] of
//! prepared messages; connections to the path `/sender` send but are not members.
//! `--park-after MS` (Volley only) parks a connection that received nothing for `MS`
//! milliseconds in a [`volley::park::Parking`], without a task, until its peer sends
//! again (the harness's W6 row "Volley, parked").
//!
//! On Linux the global allocator is jemalloc, configured (.cargo/config.toml at the
//! repository's root) to return freed pages within about 100 ms, as in the `volley` binary.
//!
//! `--processes N` runs the server as N worker processes (this program again, without
//! `--processes`) that listen on one address with `SO_REUSEPORT`, so the kernel spreads
//! the connections over them: each process can hold no more connections than its
//! descriptor limit allows, so a ramp past that limit (W7) needs several. This process
//! starts the workers, prints `listening on ADDR` and then `workers PID…` (the processes
//! to measure), and waits; the harness stops the whole process group. The workers
//! inherit the CPU affinity (`taskset`), so they share the server's core.

mod fastws;
mod handshake;
mod raw;
mod stream_sink;
mod tokio_websockets;
mod tungstenite;
mod volley_echo;
mod workers;

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// jemalloc, as in the `volley` binary (configured in the repository's
/// .cargo/config.toml): every implementation here runs on it.
#[cfg(target_os = "linux")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Pending connections the listener queues (the kernel caps it at `net.core.somaxconn`).
const BACKLOG: u32 = 4096;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Impl {
    Volley,
    Tungstenite,
    FastWebSockets,
    TokioWebSockets,
    Raw,
}

struct Args {
    imp: Impl,
    listen: SocketAddr,
    deflate: bool,
    broadcast: bool,
    park_after: Option<Duration>,
    /// Worker processes (`--processes`); 0 when this process serves by itself.
    processes: usize,
    /// Listen with `SO_REUSEPORT` (set for the workers).
    reuseport: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut imp = None;
    let mut listen: SocketAddr = "127.0.0.1:0".parse().map_err(|e| format!("{e}"))?;
    let mut deflate = false;
    let mut broadcast = false;
    let mut park_after = None;
    let mut processes = 0;
    let mut reuseport = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--impl" => {
                let name = args.next().ok_or("--impl needs a value")?;
                imp = Some(match name.as_str() {
                    "volley" => Impl::Volley,
                    "tungstenite" | "tokio-tungstenite" => Impl::Tungstenite,
                    "fastwebsockets" => Impl::FastWebSockets,
                    "tokio-websockets" => Impl::TokioWebSockets,
                    "raw" => Impl::Raw,
                    other => return Err(format!("unknown implementation {other:?}")),
                });
            }
            "--listen" => {
                let addr = args.next().ok_or("--listen needs a value")?;
                listen = addr.parse().map_err(|e| format!("--listen {addr}: {e}"))?;
            }
            "--deflate" => deflate = true,
            "--broadcast" => broadcast = true,
            "--park-after" => {
                let ms = args.next().ok_or("--park-after needs a value in milliseconds")?;
                let ms: u64 = ms.parse().map_err(|e| format!("--park-after {ms}: {e}"))?;
                park_after = Some(Duration::from_millis(ms));
            }
            "--processes" => {
                let n = args.next().ok_or("--processes needs a count")?;
                processes = n.parse().map_err(|e| format!("--processes {n}: {e}"))?;
                if !(1..=1024).contains(&processes) {
                    return Err(format!("--processes {n}: between 1 and 1024"));
                }
            }
            "--reuseport" => reuseport = true,
            "-h" | "--help" => {
                return Err("usage: bench-server --impl volley|tungstenite|fastwebsockets|tokio-websockets|raw \
                            --listen ADDR [--deflate] [--broadcast] [--park-after MS] [--processes N]"
                    .into())
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let imp = imp.ok_or("--impl is required")?;
    if deflate && imp != Impl::Volley {
        return Err(format!("--deflate: {imp:?} has no server-side permessage-deflate"));
    }
    if broadcast && imp != Impl::Volley {
        return Err(format!("--broadcast is implemented for volley only, not {imp:?}"));
    }
    if park_after.is_some() && (imp != Impl::Volley || broadcast) {
        return Err("--park-after is implemented for the volley echo only".into());
    }
    if processes > 0 && broadcast {
        return Err("--processes: a fan-out group lives in one process".into());
    }
    Ok(Args { imp, listen, deflate, broadcast, park_after, processes, reuseport })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("bench-server: {e}");
            return ExitCode::from(2);
        }
    };
    if args.processes > 0 {
        return match workers::run(args.processes, args.listen) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench-server: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench-server: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(serve(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench-server: {e}");
            ExitCode::FAILURE
        }
    }
}

fn bind(addr: SocketAddr, reuseport: bool) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    if reuseport {
        socket.set_reuseport(true)?;
    }
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

async fn serve(args: Args) -> std::io::Result<()> {
    let listener = bind(args.listen, args.reuseport)?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {}", listener.local_addr()?)?;
        out.flush()?;
    }
    let group = args.broadcast.then(volley_echo::group);
    if let Some(after) = args.park_after {
        let parking = volley_echo::Parked::new(after)?;
        loop {
            let tcp = accept(&listener).await;
            let parking = parking.clone();
            tokio::spawn(async move { volley_echo::echo_parked(tcp, args.deflate, parking).await.ok() });
        }
    }
    loop {
        let tcp = accept(&listener).await;
        spawn_connection(args.imp, tcp, args.deflate, group.clone());
    }
}

/// The next connection, with `TCP_NODELAY` set.
async fn accept(listener: &TcpListener) -> TcpStream {
    loop {
        match listener.accept().await {
            Ok((tcp, _)) => {
                if let Err(e) = tcp.set_nodelay(true) {
                    eprintln!("bench-server: TCP_NODELAY: {e}");
                }
                return tcp;
            }
            Err(e) => {
                // Out of file descriptors and the like: wait a little rather than spin.
                eprintln!("bench-server: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

fn spawn_connection(imp: Impl, tcp: TcpStream, deflate: bool, group: Option<volley_echo::Group>) {
    // Errors end the connection quietly: clients of a benchmark hang up abruptly.
    match (imp, group) {
        (Impl::Volley, Some(group)) => {
            tokio::spawn(async move { volley_echo::fan_out(tcp, group).await.ok() });
        }
        (Impl::Volley, None) => {
            tokio::spawn(async move { volley_echo::echo(tcp, deflate).await.ok() });
        }
        (Impl::Tungstenite, _) => {
            tokio::spawn(async move { tungstenite::echo(tcp).await.ok() });
        }
        (Impl::FastWebSockets, _) => {
            tokio::spawn(async move { fastws::echo(tcp).await.ok() });
        }
        (Impl::TokioWebSockets, _) => {
            tokio::spawn(async move { tokio_websockets::echo(tcp).await.ok() });
        }
        (Impl::Raw, _) => {
            tokio::spawn(async move { raw::echo(tcp).await.ok() });
        }
    }
}
