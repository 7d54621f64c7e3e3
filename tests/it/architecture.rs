//! The invariants in ARCHITECTURE.md that a reading of the source can guard: which module may
//! import which, and where raw JSON, JSON-RPC and protobuf types may appear.

use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir`, with its text.
fn sources(dir: &str) -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
        for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                out.push((path, text));
            }
        }
    }
    let mut out = Vec::new();
    walk(&root().join(dir), &mut out);
    assert!(!out.is_empty(), "no sources under {dir}");
    out
}

/// The files under `dir` whose code (comments aside) contains any of `needles`, as
/// "file: needle".
fn offenders(dir: &str, needles: &[&str]) -> Vec<String> {
    let mut found = Vec::new();
    for (path, text) in sources(dir) {
        let code: String = text
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        for needle in needles {
            if code.contains(needle) {
                found.push(format!("{}: {needle}", path.strip_prefix(root()).unwrap().display()));
            }
        }
    }
    found
}

#[test]
fn the_daemon_imports_no_command_line_code() {
    let found = offenders(
        "src/daemon",
        &["crate::cli", "crate::upgrade", "streaming::cli", "use clap", "clap::"],
    );
    assert!(found.is_empty(), "the daemon must take settings, not flags: {found:#?}");
}

#[test]
fn the_update_core_imports_no_face() {
    let found = offenders("src/update", &["crate::cli", "crate::upgrade", "crate::daemon", "clap"]);
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn the_updater_knows_nothing_of_json_rpc_or_log_bundles() {
    let found = offenders(
        "updater/src",
        &[
            "jsonrpc",
            "JSON-RPC",
            "\"Meta.",
            "Version.Get",
            "listen-notification",
            "logpb",
            "Bundle",
        ],
    );
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn method_handlers_build_no_raw_json() {
    let found = offenders("src/daemon/methods", &["json!", "serde_json::Value", "Value::"]);
    assert!(found.is_empty(), "handlers take and return typed structs: {found:#?}");
}

#[test]
fn generated_protobuf_types_stay_in_the_streaming_module() {
    let found: Vec<_> = offenders("src", &["logpb", "proto::"])
        .into_iter()
        .filter(|f| !f.starts_with("src/streaming/"))
        .collect();
    assert!(found.is_empty(), "{found:#?}");
}

#[test]
fn every_module_starts_by_saying_what_it_is_for() {
    let mut missing = Vec::new();
    for dir in ["src", "updater/src", "release/src", "tests"] {
        for (path, text) in sources(dir) {
            if !text.trim_start().starts_with("//!") {
                missing.push(path.strip_prefix(root()).unwrap().display().to_string());
            }
        }
    }
    assert!(missing.is_empty(), "no //! module doc: {missing:#?}");
}
