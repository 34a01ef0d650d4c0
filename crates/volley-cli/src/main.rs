//! The `volley` command: WebSocket tools. `main` parses flags and maps errors to exit
//! codes; each subcommand lives in its own module.

mod bench;
mod centrifugo;
mod connect;
mod echo;
mod serve;

use clap::{Parser, Subcommand};

/// jemalloc on Linux, configured (.cargo/config.toml) to return the memory that ended
/// tasks freed: glibc's malloc keeps it, and idle connections that spoke once cost
/// several times what ones that never spoke do (docs/PERFORMANCE.md, W6).
#[cfg(target_os = "linux")]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Volley: a WebSocket stack.
#[derive(Parser, Debug)]
#[command(name = "volley", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the hub: a real-time server (channels, presence, history, a server API) that
    /// Centrifugo's client SDKs connect to, with a chat demo at `/`.
    Serve(serve::Args),
    /// Check a configuration of `volley serve` (file, environment, flags) and exit: 0 if
    /// it would start, 1 with the reason otherwise.
    CheckConfig(serve::Args),
    /// Print the full default configuration of `volley serve`, every key with a comment.
    DefaultConfig,
    /// Run a WebSocket echo server: every text and binary message is sent back unchanged.
    Echo(echo::Args),
    /// Connect to a WebSocket server: an interactive client, or a pipe for scripts.
    Connect(connect::Args),
    /// Load-test a WebSocket echo server: throughput, latency at a fixed rate, or memory
    /// per idle connection.
    Bench(bench::Args),
    /// Load-test the hub (`volley serve`): clients connect with tokens and subscribe,
    /// memory per idle client, then fan-out deliveries at rising rates.
    BenchHub(Box<bench::hub::Args>),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VOLLEY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::CheckConfig(args) => serve::check(args),
        Command::DefaultConfig => {
            print!("{}", serve::DEFAULT_CONFIG);
            Ok(())
        }
        Command::Echo(args) => echo::run(args),
        Command::Connect(args) => connect::run(args),
        Command::Bench(args) => bench::run(args),
        Command::BenchHub(args) => bench::hub::run(*args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("volley: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
