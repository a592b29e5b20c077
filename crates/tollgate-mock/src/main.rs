//! `tollgate-mock`: the mock upstream as a standalone process, for the
//! end-to-end tests (wrangler dev, Envoy) and the benchmarks.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use tokio::net::TcpListener;
use tollgate_mock::{DEFAULT_RECORD_CAPACITY, MockOptions, serve};

/// Mock OpenAI- and Anthropic-compatible upstream.
///
/// Prints `listening http://ADDR` on stdout once bound, then serves until
/// interrupted. Control API under /__mock/ (healthz, requests, faults).
#[derive(Debug, Parser)]
#[command(name = "tollgate-mock", version)]
struct Cli {
    /// Address to listen on; port 0 picks a free port (see the printed line).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Delay in milliseconds before every API response's headers.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let listener = match TcpListener::bind(&cli.listen).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("tollgate-mock: cannot listen on {}: {error}", cli.listen);
            return ExitCode::FAILURE;
        }
    };
    let address = match listener.local_addr() {
        Ok(address) => address,
        Err(error) => {
            eprintln!("tollgate-mock: cannot read the bound address: {error}");
            return ExitCode::FAILURE;
        }
    };
    // Tests wait for exactly this line to learn the port, so it is written
    // and flushed before the first connection is accepted, and nothing else
    // ever goes to stdout.
    let mut stdout = std::io::stdout().lock();
    if let Err(error) = writeln!(stdout, "listening http://{address}").and_then(|()| stdout.flush()) {
        eprintln!("tollgate-mock: cannot write to stdout: {error}");
        return ExitCode::FAILURE;
    }
    drop(stdout);

    let options =
        MockOptions { base_latency: Duration::from_millis(cli.latency_ms), record_capacity: DEFAULT_RECORD_CAPACITY };
    tokio::select! {
        () = serve(listener, options) => ExitCode::SUCCESS,
        signal = tokio::signal::ctrl_c() => match signal {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("tollgate-mock: cannot wait for Ctrl-C: {error}");
                ExitCode::FAILURE
            }
        },
    }
}
