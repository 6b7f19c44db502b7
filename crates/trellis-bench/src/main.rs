//! `trellis-bench`: an open-loop HTTP load generator. At a fixed rate R, request i is meant to
//! start at t0 + i/R whether or not earlier requests have finished, and its latency runs from
//! that intended start (coordinated-omission correction), so a stalled server cannot hide its
//! stall by slowing the generator down.
//!
//! Modules: `schedule` (intended start times, the ticker thread, lag), `client` (URL, one
//! hyper connection, one request), `run` (the connection set and the event loop), `stats`
//! (histograms, counters, the report). This file: command line, runtime, output.

mod client;
mod run;
mod schedule;
mod stats;

use clap::{Parser, ValueEnum};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "trellis-bench",
    version,
    about = "Open-loop HTTP load generator with coordinated-omission correction",
    after_help = "Example:\n  trellis-bench --url http://127.0.0.1:8080/bytes/1024 --rate 1000 --duration 30s --warmup 5s --connections 16\n\n\
        Latency is measured from each request's intended start (t0 + i/rate), so waiting for a\n\
        free connection or behind a slow response counts. Progress lines go to stderr; the\n\
        report goes to stdout."
)]
struct Cli {
    /// The URL to request (http:// only).
    #[arg(long)]
    url: String,
    /// Requests per second, or `max`: closed loop, each connection sends its next request as
    /// soon as the last one is answered (HTTP/2: one in flight per connection). `max`
    /// measures throughput; its latency is not corrected for coordinated omission.
    #[arg(long, value_parser = parse_rate, default_value = "1000")]
    rate: Rate,
    /// Length of the measured window, e.g. `30s`, `500ms`, `2m`.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    duration: Duration,
    /// Load run before the measured window and left out of the results.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    warmup: Duration,
    /// Keep-alive connections, opened before the run. HTTP/1.1: one request at a time each.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// HTTP/2 with prior knowledge; requests are multiplexed over the connections.
    #[arg(long)]
    http2: bool,
    /// gRPC calls to `trellis-test-backend grpc`'s Echo service instead of HTTP requests
    /// (the URL's path is replaced by the call's): `unary`, or `server-stream` of
    /// `--stream-messages` replies, timed to the last one. `--body-size` sets the message size.
    #[arg(long, value_enum)]
    grpc: Option<GrpcCall>,
    #[arg(long, default_value_t = 10)]
    stream_messages: u32,
    /// Send POST requests with a body of this many bytes (default: GET without a body).
    #[arg(long)]
    body_size: Option<usize>,
    /// Worker threads of the runtime (the ticker thread comes on top, mostly asleep).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Longest a request may take once sent; longer counts as an error.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    timeout: Duration,
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
}

#[derive(Clone, Copy, Debug)]
enum Rate {
    PerSecond(f64),
    Max,
}

fn parse_rate(s: &str) -> Result<Rate, String> {
    if s == "max" {
        return Ok(Rate::Max);
    }
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(Rate::PerSecond(r)),
        _ => Err(format!("{s:?} is not a rate: use a positive number of requests per second, or max")),
    }
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum GrpcCall {
    Unary,
    ServerStream,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Output {
    Json,
    Text,
}

/// `250ms`, `30s`, `1.5s`, `2m`, `1h`; a bare number is seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let value: f64 = number.parse().map_err(|_| format!("{s:?} is not a duration like 500ms, 30s or 2m"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("unknown unit {unit:?} in {s:?}: use ms, s, m or h")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{s:?}: {e}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trellis-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if cli.duration.is_zero() {
        anyhow::bail!("--duration must be more than zero");
    }
    if cli.connections == 0 || cli.threads == 0 {
        anyhow::bail!("--connections and --threads must be at least 1");
    }
    let opts = run::RunOptions {
        url: cli.url,
        rate: match cli.rate {
            Rate::PerSecond(r) => r,
            // The schedule's warm-up and window arithmetic still wants a rate.
            Rate::Max => 1.0,
        },
        closed_loop: matches!(cli.rate, Rate::Max),
        duration: cli.duration,
        warmup: cli.warmup,
        connections: cli.connections,
        threads: cli.threads,
        body_size: cli.body_size,
        http2: cli.http2,
        grpc: cli.grpc.map(|call| match call {
            GrpcCall::Unary => client::Grpc::Unary,
            GrpcCall::ServerStream => client::Grpc::ServerStream(cli.stream_messages.max(1)),
        }),
        timeout: cli.timeout,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(cli.threads).enable_all().build()?;
    let report = runtime.block_on(run::run(&opts))?;
    match cli.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Text => print!("{}", report.text()),
    }
    if report.fell_behind {
        eprintln!(
            "trellis-bench: warning: the generator fell behind its schedule (max lag {:.1} ms)",
            report.max_lag_ms
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("s").is_err());
    }
}
