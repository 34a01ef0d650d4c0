//! A quick echo load: N connections each keep K messages of S bytes in flight against an
//! echo server for T seconds, and the total round trips per second is printed.
//!
//! `cargo run --release -p volley --example echo-load -- ws://127.0.0.1:9001 100 20 16 5`
//! (URL, connections, message bytes, messages in flight, seconds). Load is meant for
//! servers on this machine only.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use volley::Message;

#[tokio::main]
async fn main() -> Result<(), volley::Error> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, d: u64| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let url = args.get(1).cloned().unwrap_or_else(|| "ws://127.0.0.1:9001".into());
    let (conns, size, inflight, secs) = (arg(2, 100), arg(3, 20) as usize, arg(4, 16), arg(5, 5));
    let total = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let payload = "x".repeat(size);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (mut ws, _) = volley::connect(&url).await?;
        let total = total.clone();
        let payload = payload.clone();
        tasks.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                for _ in 0..inflight {
                    ws.feed(Message::text(payload.as_str())).await?;
                }
                ws.flush().await?;
                for _ in 0..inflight {
                    match ws.recv().await {
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Err(e),
                        None => return Ok(()),
                    }
                }
                total.fetch_add(inflight, Ordering::Relaxed);
            }
            ws.close(volley::CloseCode::NORMAL, "").await
        }));
    }
    let start = Instant::now();
    for t in tasks {
        let _ = t.await;
    }
    let n = total.load(Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "{conns} connections x {size} B x {inflight} in flight: {n} round trips in {elapsed:.1} s = {:.0} msg/s",
        n as f64 / elapsed
    );
    Ok(())
}
