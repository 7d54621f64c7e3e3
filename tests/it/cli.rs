//! The command line itself: version reporting, flag spellings, exit codes for bad flags.

use crate::util::{TestHome, stdout};

#[test]
fn version_subcommand_and_flag_agree() {
    let home = TestHome::new();
    let a = home.run(&["version"]);
    let b = home.run(&["--version"]);
    assert!(a.status.success() && b.status.success());
    assert_eq!(stdout(&a), stdout(&b));
    assert!(stdout(&a).starts_with(&format!("v{}", env!("CARGO_PKG_VERSION"))), "{}", stdout(&a));
}

#[test]
fn version_json_is_one_result_line() {
    let home = TestHome::new();
    let out = home.run(&["version", "--json"]);
    assert!(out.status.success());
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "{text}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(v["type"], "result");
    assert_eq!(v["value"]["version"], format!("v{}", env!("CARGO_PKG_VERSION")));
    assert!(v["time"].is_u64());
}

#[test]
fn unknown_flag_exits_2() {
    let home = TestHome::new();
    let out = home.run(&["version", "--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
}
