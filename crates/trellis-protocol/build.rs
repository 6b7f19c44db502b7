//! Compiles the protocol files with protox (pure Rust: no `protoc` on build machines):
//! `proto/config.proto` (control plane ↔ proxy) and `proto/otlp_trace.proto` (spans to an
//! OpenTelemetry collector).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/config.proto");
    println!("cargo:rerun-if-changed=proto/otlp_trace.proto");
    let fds = protox::compile(["proto/config.proto", "proto/otlp_trace.proto"], ["proto"])?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(fds)?;
    Ok(())
}
