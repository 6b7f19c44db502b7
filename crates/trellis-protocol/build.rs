//! Compiles `proto/config.proto` with protox (pure Rust: no `protoc` on build machines).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/config.proto");
    let fds = protox::compile(["proto/config.proto"], ["proto"])?;
    tonic_prost_build::configure().build_client(true).build_server(true).compile_fds(fds)?;
    Ok(())
}
