//! Build script: fixes the version string at build time, generates the logpb types, and lays
//! out a release daemon's start-up code in one place.

use std::process::Command;

fn main() {
    build_info();
    protos();
    startup_order();
}

/// Asks lld to place the functions a daemon runs from exec to its first client together
/// (release/startup.order, from `make startup-order`). The kernel maps code in 64 KiB blocks around
/// each page touched; scattered over the whole .text, start-up made ~5 MiB of an idle daemon's
/// ~10 MiB RSS, packed it is ~1.5 MiB. Only where rustc links with its own lld (x86_64 Linux since
/// Rust 1.90): other linkers lack the option, and other targets have no list of their own names.
fn startup_order() {
    println!("cargo:rerun-if-changed=release/startup.order");
    let target = std::env::var("TARGET").unwrap_or_default();
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    if target != "x86_64-unknown-linux-gnu" || !release {
        return;
    }
    let order = std::path::Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap())
        .join("release/startup.order");
    // A name that a later change renamed is skipped: the list goes stale slowly, never wrong.
    println!("cargo:rustc-link-arg-bin=butler=-Wl,--symbol-ordering-file={}", order.display());
    println!("cargo:rustc-link-arg-bin=butler=-Wl,--no-warn-symbol-ordering");
}

/// Generates the LogDog protobuf types (logpb and the Coordinator's registration messages) with
/// protox, a pure-Rust compiler, so no `protoc` is needed on the machine.
fn protos() {
    println!("cargo:rerun-if-changed=proto");
    let files = ["logpb/log.proto", "logpb/butler.proto", "registration.proto"];
    let fds = protox::compile(files, ["proto"]).expect("compiling proto/*.proto");
    prost_build::Config::new()
        .bytes(["."])
        .compile_fds(fds)
        .expect("generating Rust types from proto/*.proto");
}

/// Bakes the version, build date and git ref into the binary.
///
/// `BUTLER_BUILD_VERSION` overrides the Cargo version so tests can build a cheap "newer" butler.
fn build_info() {
    println!("cargo:rerun-if-env-changed=BUTLER_BUILD_VERSION");
    // The HEAD file of this checkout's git folder; in a worktree `.git` is a file, and a path
    // that does not exist would rebuild butler on every cargo run.
    let head = Command::new("git")
        .args(["rev-parse", "--git-path", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|p| std::path::Path::new(p).exists());
    if let Some(head) = head {
        println!("cargo:rerun-if-changed={head}");
    }
    let version = std::env::var("BUTLER_BUILD_VERSION")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .map(|v| v.trim().trim_start_matches('v').to_owned())
        .unwrap_or_else(|| std::env::var("CARGO_PKG_VERSION").unwrap_or_default());
    println!("cargo:rustc-env=BUTLER_VERSION={version}");

    let date = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    println!("cargo:rustc-env=BUTLER_BUILD_DATE={date}");

    let git_ref = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    println!("cargo:rustc-env=BUTLER_GIT_REF={git_ref}");
}
