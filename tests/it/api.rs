//! The daemon's API description: the committed `docs/api/` files are what the code generates,
//! `rpc.discover` answers the same document (after authentication), unknown params fields are
//! ignored as upstream does, versions are spelled one way, and a sample TypeScript client
//! type-checks against the typings with the real `tsc`.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::{Value, json};

use crate::util::{DaemonProc, TestHome, stderr};

fn docs() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/api")
}

fn committed_document() -> Value {
    let text = std::fs::read_to_string(docs().join("butlerd.openrpc.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn the_committed_api_docs_are_what_the_code_generates() {
    let home = TestHome::new();
    let out = home.path().join("api");
    let run = home.run(&["api-docs", "--out", out.to_str().unwrap()]);
    assert!(run.status.success(), "{}", stderr(&run));
    for name in ["butlerd.openrpc.json", "README.md", "butlerd.d.ts"] {
        let generated = std::fs::read_to_string(out.join(name)).unwrap();
        let committed = std::fs::read_to_string(docs().join(name)).unwrap_or_default();
        if generated != committed {
            let line = generated
                .lines()
                .zip(committed.lines())
                .position(|(a, b)| a != b)
                .map_or_else(|| "at its end".to_owned(), |n| format!("from line {}", n + 1));
            panic!(
                "docs/api/{name} differs from what the code generates ({line}): run `make api-docs` \
                 and commit the result"
            );
        }
    }
}

#[test]
fn rpc_discover_answers_the_document_after_authentication_only() {
    let home = TestHome::new();
    let d = DaemonProc::start(&home, &["--keep-alive"]);
    let r = d.connect().request(json!(1), "rpc.discover", json!({}));
    assert_eq!(r["error"]["code"], -32600, "refused before authentication: {r}");

    let mut c = d.client();
    let mut doc = c.request(json!(2), "rpc.discover", json!({}))["result"].clone();
    let caps = c.request(json!(3), "Meta.Capabilities", json!({}))["result"].clone();
    assert_eq!(doc["info"]["x-protocol-version"], caps["protocolVersion"], "{caps}");
    assert_eq!(doc["info"]["version"], caps["protocolVersion"].to_string());
    assert_eq!(doc["info"]["x-butler-version"], caps["butlerVersion"]);
    let features = caps["features"].as_array().unwrap();
    assert!(features.contains(&json!("rpc-discover")), "{caps}");
    doc["info"].as_object_mut().unwrap().remove("x-butler-version");
    assert_eq!(doc, committed_document(), "rpc.discover and docs/api/butlerd.openrpc.json differ");
}

/// As upstream butlerd: a newer client may send fields an older daemon does not know.
#[test]
fn unknown_fields_in_params_are_ignored() {
    let home = TestHome::new();
    let d = DaemonProc::start(&home, &["--keep-alive"]);
    let mut c = d.connect();
    let r = c.request(
        json!(1),
        "Meta.Authenticate",
        json!({"secret": d.secret, "clientName": "itch", "nested": {"x": [1]}}),
    );
    assert_eq!(r["result"]["ok"], true, "{r}");
    let extra = json!({"someFutureField": {"a": 1}, "another": [true, null]});
    let with_extra = |params: Value| {
        let mut p = params;
        p.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        p
    };
    let r = c.request(json!(2), "Test.Double", with_extra(json!({"number": 21})));
    assert_eq!(r["result"]["number"], 42, "{r}");
    let r = c.request(json!(3), "Version.Get", with_extra(json!({})));
    assert!(r["result"]["version"].is_string(), "{r}");
    let r = c.request(json!(4), "Streams.List", with_extra(json!({"prefix": "nothing/"})));
    assert_eq!(r["result"]["streams"], json!([]), "{r}");
    let r = c.request(json!(5), "Update.Status", with_extra(json!({})));
    assert!(r["result"]["history"].is_array(), "{r}");
    // A known field of the wrong type is still refused, and named.
    let r = c.request(json!(6), "Streams.List", with_extra(json!({"prefix": 7})));
    assert_eq!(r["error"]["code"], -32602, "{r}");
    assert_eq!(r["error"]["data"]["field"], "prefix", "{r}");
}

/// `Version.Get` keeps upstream's `v` tag; every other version in a result is plain semver.
#[test]
fn versions_in_results_are_plain_semver_except_version_get() {
    let home = TestHome::new();
    let d = DaemonProc::start(&home, &["--keep-alive"]);
    let mut c = d.client();
    let plain = env!("CARGO_PKG_VERSION");
    let r = c.request(json!(1), "Version.Get", json!({}));
    assert_eq!(r["result"]["version"], format!("v{plain}"), "{r}");
    assert!(r["result"]["versionString"].as_str().unwrap().starts_with(&format!("v{plain}")));
    let r = c.request(json!(2), "Meta.Capabilities", json!({}));
    assert_eq!(r["result"]["butlerVersion"], plain, "{r}");
    let r = c.request(json!(3), "Update.Status", json!({}));
    assert_eq!(r["result"]["currentVersion"], plain, "{r}");
    let r = c.request(json!(4), "rpc.discover", json!({}));
    assert_eq!(r["result"]["info"]["x-butler-version"], plain);
}

/// `tests/api/client.ts` uses the typings as a client would, with `@ts-expect-error` lines that
/// only pass while the typings stay strict; `tsc` (pinned in tests/node) checks it.
#[test]
fn a_sample_typescript_client_type_checks_against_the_typings() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tsc = root.join("tests/node/node_modules/typescript/bin/tsc");
    assert!(tsc.is_file(), "no TypeScript compiler: run `make node-deps` (npm ci in tests/node)");
    let out = Command::new("node")
        .arg(&tsc)
        .args(["--project", root.join("tests/api/tsconfig.json").to_str().unwrap()])
        .output()
        .expect("Node.js runs tsc");
    assert!(
        out.status.success(),
        "tsc refused tests/api/client.ts against docs/api/butlerd.d.ts:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
}
