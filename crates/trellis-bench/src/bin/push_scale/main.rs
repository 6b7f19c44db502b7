//! `trellis-push-scale`: the control plane's configuration push at scale
//! (`bench/control-plane-scale.sh` drives it).
//!
//! - `generate` writes the synthetic mesh (Services and Endpoints, multi-document YAML) for
//!   `trellis apply -f`.
//! - `run` simulates many proxies against a running control plane — lightweight
//!   `ConfigDiscovery/Stream` clients on one runtime that ACK every update — measures the
//!   initial full push, then applies changes one at a time through the HTTP API and times
//!   each from the API's answer until every affected proxy has ACKed it, counting the bytes
//!   every proxy received. Also samples the control plane's RSS and CPU from /proc.
//! - `compile` times the compiler in process (store list + `Snapshot::build` +
//!   `for_workload`) on the same mesh.
//!
//! Modules: `mesh` (documents, proxy plan), `sim` (the simulator), `api` (HTTP calls),
//! `compile`, `report` (markdown), `procfs`, `stats`.

mod api;
mod compile;
mod mesh;
mod procfs;
mod report;
mod sim;
mod stats;

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(
    name = "trellis-push-scale",
    version,
    about = "Config push at scale: a synthetic mesh, simulated proxies, apply→ACK latency and bytes per change",
    after_help = "Example (bench/control-plane-scale.sh does all of this):\n  \
        trellis-push-scale generate --out /tmp/mesh --files 4\n  \
        trellis apply -f /tmp/mesh/mesh-01.yaml -f ...\n  \
        trellis-push-scale run --api http://127.0.0.1:7070 --push http://127.0.0.1:7071 \\\n    \
        --token-file DATA/admin.token --control-pid PID --proxies 200 --changes 50\n  \
        trellis-push-scale compile --proxies 200"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Write the mesh's Services and Endpoints as multi-document YAML files.
    Generate {
        #[command(flatten)]
        mesh: mesh::Mesh,
        /// Directory to write mesh-NN.yaml into.
        #[arg(long)]
        out: std::path::PathBuf,
        /// How many files to split the documents into (each must stay under the API's 2 MiB).
        #[arg(long, default_value_t = 4)]
        files: usize,
    },
    /// Simulate proxies against a running control plane and measure the push.
    Run(sim::RunArgs),
    /// Time the compiler in process on the same mesh.
    Compile(compile::CompileArgs),
}

fn main() -> ExitCode {
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("trellis-push-scale: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Generate { mesh, out, files } => {
            mesh.check()?;
            for path in mesh.write_files(&out, files)? {
                println!("{}", path.display());
            }
            Ok(())
        }
        Command::Run(args) => {
            let runtime =
                tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads.max(1)).enable_all().build()?;
            let report = runtime.block_on(sim::run(&args))?;
            let markdown = report::run_markdown(&report);
            write_outputs(&report, &markdown, args.json.as_deref(), args.markdown.as_deref())
        }
        Command::Compile(args) => {
            let report = compile::run(&args)?;
            let markdown = report::compile_markdown(&report);
            write_outputs(&report, &markdown, args.json.as_deref(), args.markdown.as_deref())
        }
    }
}

fn write_outputs(
    report: &impl serde::Serialize,
    markdown: &str,
    json: Option<&std::path::Path>,
    md: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_vec_pretty(report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = md {
        std::fs::write(path, markdown).with_context(|| format!("writing {}", path.display()))?;
    }
    print!("{markdown}");
    Ok(())
}
