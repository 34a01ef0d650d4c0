//! Runs the Autobahn|Testsuite fuzzingserver cases against Volley's client:
//! `cargo run --release -p volley --example autobahn-client -- ws://127.0.0.1:9001`.
//! Asks for the case count, echoes every case, then asks the suite to write reports.

use volley::{ClientBuilder, Message};

const AGENT: &str = "volley";

async fn case_count(base: &str) -> Result<u32, volley::Error> {
    let (mut ws, _) = volley::connect(&format!("{base}/getCaseCount")).await?;
    let mut count = 0;
    while let Some(msg) = ws.recv().await {
        if let Message::Text(t) = msg? {
            count = t.as_str().trim().parse().unwrap_or(0);
        }
    }
    Ok(count)
}

async fn run_case(base: &str, case: u32) -> Result<(), volley::Error> {
    let url = format!("{base}/runCase?case={case}&agent={AGENT}");
    let (mut ws, _) = ClientBuilder::new(url).connect().await?;
    while let Some(msg) = ws.recv().await {
        let msg = msg?;
        if msg.is_data() {
            ws.feed(msg).await?;
        }
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let base = std::env::args().nth(1).unwrap_or_else(|| "ws://127.0.0.1:9001".to_string());
    let base = base.trim_end_matches('/').to_string();
    let count = match case_count(&base).await {
        Ok(n) => n,
        Err(e) => {
            eprintln!("autobahn-client: cannot get the case count from {base}: {e}");
            std::process::exit(1);
        }
    };
    eprintln!("autobahn-client: running {count} cases");
    for case in 1..=count {
        if let Err(e) = run_case(&base, case).await {
            // Failing cases end in protocol errors on purpose; the suite grades them.
            eprintln!("case {case}: {e}");
        }
    }
    let url = format!("{base}/updateReports?agent={AGENT}");
    match volley::connect(&url).await {
        Ok((mut ws, _)) => while ws.recv().await.is_some() {},
        Err(e) => {
            eprintln!("autobahn-client: updateReports failed: {e}");
            std::process::exit(1);
        }
    }
}
