//! Link options for the sidecar binary, `trellis-proxy`, that cut the memory it keeps
//! mapped. A sidecar runs next to every workload, so its resident size is paid once per pod.
//!
//! - **Hot code together** (`--symbol-ordering-file hot-symbols.txt`): the kernel maps a
//!   binary's code in 64 KiB windows around each page first touched ("fault-around"), so
//!   the few thousand functions a proxy runs, spread over 8 MB of code, kept ~7 MB of it
//!   resident. Placed first and side by side, they keep ~3.5 MB. `bench/hot-symbols.sh`
//!   writes the list from a run of the proxies; a name missing from the binary (the list
//!   predates a change of code or dependencies) is skipped, so a stale list costs memory,
//!   never correctness.
//! - **Packed relocations** (`-z pack-relative-relocs`): a position-independent binary's
//!   relocation table (~480 KB, read whole at every start) shrinks to a few kilobytes. The
//!   binary then needs glibc 2.36 or later where it runs (Debian 12, Ubuntu 22.10 and on):
//!   an image must ship a libc at least as new as the one it was built against anyway.
//!
//! - **libc among the hot code**: `scripts/build-proxy`, the build that ships, links glibc
//!   in statically (`-C target-feature=+crt-static` for this binary alone), so the libc
//!   functions the proxy calls are in the list too, placed beside its own.
//!
//! Both options apply only where the default linker is in use, LLD on x86_64 Linux (Rust's default
//! there since 1.90): another linker may not know the options, so a build that names its
//! own linker (`RUSTC_LINKER`, or `linker`/`-fuse-ld` in its flags) links without them.

use std::env;

fn main() {
    println!("cargo:rerun-if-changed=hot-symbols.txt");
    println!("cargo:rerun-if-env-changed=RUSTC_LINKER");
    println!("cargo:rerun-if-env-changed=CARGO_ENCODED_RUSTFLAGS");
    let var = |name: &str| env::var(name).unwrap_or_default();
    let default_lld = var("CARGO_CFG_TARGET_ARCH") == "x86_64"
        && var("CARGO_CFG_TARGET_OS") == "linux"
        && var("CARGO_CFG_TARGET_ENV") == "gnu";
    let flags = var("CARGO_ENCODED_RUSTFLAGS");
    let own_linker = env::var_os("RUSTC_LINKER").is_some() || flags.contains("linker") || flags.contains("fuse-ld");
    if !default_lld || own_linker {
        return;
    }
    let list = format!("{}/hot-symbols.txt", var("CARGO_MANIFEST_DIR"));
    for arg in [
        format!("-Wl,--symbol-ordering-file={list}"),
        "-Wl,--no-warn-symbol-ordering".to_string(),
        "-Wl,-z,pack-relative-relocs".to_string(),
    ] {
        println!("cargo:rustc-link-arg-bin=trellis-proxy={arg}");
    }
}
