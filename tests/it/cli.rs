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

/// What butler writes holds log text, state and secrets: the owner's alone, whatever the umask.
#[test]
fn butlers_files_and_folders_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let home = TestHome::new();
    let state = home.path().join("nested/home");
    let out = home
        .butler()
        .env("BUTLER_HOME", &state)
        .args(["--prefix", "modes", "run", "--stdout", "name=out", "--", "sh", "-c", "echo s3cret"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", crate::util::stderr(&out));
    assert_eq!(mode(&home.path().join("nested")), 0o700);
    assert_eq!(mode(&state), 0o700);
    for f in ["butler.db", "butler.db-wal"] {
        let p = state.join(f);
        if p.exists() {
            assert_eq!(mode(&p), 0o600, "{f}");
        }
    }
    let mut cmd = home.butler();
    cmd.env("BUTLER_HOME", &state).args(["--json", "daemon", "--transport", "tcp"]);
    let d = crate::util::DaemonProc::start_cmd(cmd);
    assert_eq!(mode(&state.join("butler.db.daemon-lock")), 0o600);
    drop(d);
    // A database an older butler left readable is narrowed when opened.
    std::fs::set_permissions(state.join("butler.db"), std::fs::Permissions::from_mode(0o644))
        .unwrap();
    let out = home.butler().env("BUTLER_HOME", &state).args(["logs", "ls"]).output().unwrap();
    assert!(out.status.success(), "{}", crate::util::stderr(&out));
    assert_eq!(mode(&state.join("butler.db")), 0o600);
}
