//! `trellis-proxy`: the proxy alone, for sidecar and gateway images. It holds none of the
//! CLI, control plane or dashboard, so it maps far less code than `trellis proxy` (same
//! behaviour, see [`trellis_proxy::run`]).

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: trellis-proxy --config FILE [--workers N]

Runs a Trellis proxy from FILE: a `kind: Proxy` document plus the Service and Endpoints of a
static configuration, or a `control:` section to join a control plane. SIGHUP reloads the
file, SIGTERM drains and exits.

  -c, --config FILE   the configuration file (YAML or JSON, several documents)
  --workers N         worker threads (default: one per core)
  -h, --help          this text
  -V, --version       the version

The log level comes from TRELLIS_LOG (default: info).";

struct Args {
    config: PathBuf,
    workers: Option<usize>,
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
    let mut config = None;
    let mut workers = None;
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag.to_string(), Some(value.to_string())),
            _ => (arg, None),
        };
        let mut value = |name: &str| inline.clone().or_else(|| args.next()).ok_or(format!("{name} needs a value"));
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "-V" | "--version" => {
                println!("trellis-proxy {}", env!("CARGO_PKG_VERSION"));
                std::process::exit(0);
            }
            "-c" | "--config" => config = Some(PathBuf::from(value("--config")?)),
            "--workers" => {
                let text = value("--workers")?;
                match text.parse::<usize>() {
                    Ok(n) if n >= 1 => workers = Some(n),
                    _ => return Err(format!("--workers {text:?}: use a whole number of threads, 1 or more")),
                }
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    let config = config.ok_or("--config FILE is required")?;
    Ok(Some(Args { config, workers }))
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(Some(args)) => args,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("error: {e}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("TRELLIS_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let result = trellis_proxy::run::runtime(args.workers)
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(trellis_proxy::run::serve_until_signalled(args.config)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The C math functions the proxy calls — `exp` and `log` for the balancer's decaying
/// latency averages and rendezvous weights, `pow` in tokio's multi-thread scheduler —
/// defined here from the pure-Rust `libm` crate (musl's algorithms), so that the process does
/// not load glibc's `libm.so` for three functions. Loading it resolves every one of its
/// indirect functions, which keeps ~470 KB of a library it barely uses resident in every
/// sidecar. Defined in this binary only; nothing else links against them.
mod math {
    #[unsafe(no_mangle)]
    pub extern "C" fn exp(x: f64) -> f64 {
        libm::exp(x)
    }

    #[unsafe(no_mangle)]
    pub extern "C" fn log(x: f64) -> f64 {
        libm::log(x)
    }

    #[unsafe(no_mangle)]
    pub extern "C" fn pow(x: f64, y: f64) -> f64 {
        libm::pow(x, y)
    }
}
