//! The command line itself: version reporting, flag spellings, exit codes for bad flags.

use crate::util::{TestHome, stderr, stdout};

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

/// A port nothing listens on (bound, then closed).
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn an_update_error_is_said_once_with_what_to_do() {
    let home = TestHome::new();
    let url = format!("http://127.0.0.1:{}", closed_port());
    let run = |args: &[&str]| {
        home.butler()
            .args(args)
            .env("BUTLER_UPGRADE_RETRIES", "1")
            .env("BUTLER_UPGRADE_BACKOFF_MS", "1")
            .output()
            .unwrap()
    };
    let out = run(&["upgrade", "--check", "--broth-url", &url]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.matches("Connection refused").count(), 1, "said once: {err}");
    assert_eq!(err.matches("/LATEST").count(), 1, "{err}");
    assert!(!err.contains("error sending request"), "no repetition of the URL: {err}");
    assert!(err.contains("hint: check the network connection"), "{err}");
    assert!(err.len() < 300, "{} characters: {err}", err.len());

    let out = run(&["--json", "upgrade", "--check", "--broth-url", &url]);
    let last = stdout(&out).lines().last().unwrap().to_owned();
    let v: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["message"].as_str().unwrap().matches("Connection refused").count(), 1, "{v}");

    let out = run(&["upgrade", "--check", "--broth-url", "notaurl"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("--broth-url (or BUTLER_BROTH_URL) \"notaurl\": not a URL"), "{err}");
    assert_eq!(err.matches("not a URL").count(), 1, "{err}");
}

#[test]
fn no_colour_codes_reach_a_pipe_unless_asked_for() {
    let home = TestHome::new();
    let url = format!("http://127.0.0.1:{}", closed_port());
    let run = |args: &[&str]| {
        home.butler()
            .args(args)
            .env_remove("NO_COLOR")
            .env("BUTLER_UPGRADE_RETRIES", "1")
            .output()
            .unwrap()
    };
    // Debug logging (tracing) and the error line, into a pipe.
    let out = run(&["--verbose", "upgrade", "--check", "--broth-url", &url]);
    let err = stderr(&out);
    assert!(err.contains("DEBUG"), "{err}");
    assert!(!err.contains('\x1b'), "escape codes in a pipe: {err:?}");
    let out = run(&["--color", "always", "--verbose", "upgrade", "--check", "--broth-url", &url]);
    assert!(stderr(&out).contains("\x1b["), "--color always colours: {:?}", stderr(&out));
    // clap's own messages follow --color too.
    let out = run(&["--color=always", "--bogus"]);
    assert!(stderr(&out).contains("\x1b["), "{:?}", stderr(&out));
    let out = run(&["--bogus"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!stderr(&out).contains('\x1b'), "{:?}", stderr(&out));
    // butler's own error line: plain into a pipe, labelled like clap's where colour is allowed.
    let out = run(&["logs", "cat", "no/+/such"]);
    assert!(stderr(&out).starts_with("butler: error: no stream"), "{:?}", stderr(&out));
    let out = run(&["--color", "always", "logs", "cat", "no/+/such"]);
    assert!(
        stderr(&out).starts_with("butler: \x1b[1;31merror:\x1b[0m no stream"),
        "{:?}",
        stderr(&out)
    );
    let out = run(&["--color", "sometimes", "version"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("possible values: auto, always, never"), "{}", stderr(&out));
}

#[test]
fn database_errors_name_the_file_once_and_say_what_to_do() {
    let home = TestHome::new();
    let junk = home.path().join("junk.db");
    std::fs::write(&junk, "this is not a database, just text. ".repeat(200)).unwrap();
    let out = home.run(&["--dbpath", junk.to_str().unwrap(), "logs", "ls"]);
    assert_eq!(out.status.code(), Some(250), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains(&format!("{} is not a SQLite database", junk.display())), "{err}");
    assert!(err.contains("move it aside") && err.contains("--dbpath"), "{err}");
    assert_eq!(err.matches("not a").count(), 1, "said once: {err}");

    // A database folder that cannot be made (its parent is a file).
    let file = home.path().join("a-file");
    std::fs::write(&file, "x").unwrap();
    let db = file.join("sub/butler.db");
    let out = home.run(&["--dbpath", db.to_str().unwrap(), "run", "--", "true"]);
    assert_eq!(out.status.code(), Some(250), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("cannot create the database folder"), "{err}");
    assert!(err.contains("set BUTLER_HOME or pass --dbpath"), "{err}");
    assert_eq!(err.matches("ot a directory").count(), 1, "said once: {err}");
}

#[test]
fn help_is_grouped_with_examples_environment_and_exit_codes() {
    let home = TestHome::new();
    let long = stdout(&home.run(&["--help"]));
    for needle in [
        "Global options:",
        "LogDog options",
        "Examples:",
        "Environment:",
        "BUTLER_HOME",
        "BUTLER_LOG",
        "NO_COLOR",
        "Exit codes:",
        "250",
        "logs web",
    ] {
        assert!(long.contains(needle), "--help lacks {needle:?}:\n{long}");
    }
    let short = stdout(&home.run(&["-h"]));
    assert!(short.contains("Examples:") && !short.contains("Environment:"), "{short}");
    for (cmd, needle) in [("run", "--no-capture"), ("upgrade", "--rollback"), ("logs", "web")] {
        let help = stdout(&home.run(&[cmd, "--help"]));
        assert!(help.contains(needle), "{cmd} --help lacks {needle:?}:\n{help}");
    }
}

#[test]
fn logs_ls_takes_its_prefix_as_an_argument_or_as_prefix() {
    let home = TestHome::new();
    for prefix in ["demo/a", "other/b"] {
        let out = home.run(&["--prefix", prefix, "run", "--", "true"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let by_arg = stdout(&home.run(&["logs", "ls", "demo/"]));
    let by_flag = home.run(&["logs", "ls", "--prefix", "demo/"]);
    assert!(by_flag.status.success(), "{}", stderr(&by_flag));
    assert_eq!(by_arg, stdout(&by_flag));
    assert!(by_arg.contains("demo/a/+/stdout") && !by_arg.contains("other/"), "{by_arg}");
}

#[test]
fn completions_and_a_man_page_come_from_the_same_definitions() {
    let home = TestHome::new();
    let bash = home.run(&["completions", "bash"]);
    assert!(bash.status.success(), "{}", stderr(&bash));
    let script = stdout(&bash);
    assert!(script.contains("_butler") && script.contains("logs__subcmd__web"), "{script}");
    let file = home.path().join("butler.bash");
    std::fs::write(&file, &script).unwrap();
    let syntax = std::process::Command::new("bash").arg("-n").arg(&file).output().unwrap();
    assert!(syntax.status.success(), "bash -n: {}", stderr(&syntax));
    for shell in ["zsh", "fish", "powershell", "elvish"] {
        let out = home.run(&["completions", shell]);
        assert!(out.status.success() && !out.stdout.is_empty(), "{shell}: {}", stderr(&out));
    }
    assert_eq!(home.run(&["completions", "tcsh"]).status.code(), Some(2));

    let man = home.run(&["man"]);
    assert!(man.status.success(), "{}", stderr(&man));
    let page = stdout(&man);
    assert!(page.contains(".TH butler 1"), "{page}");
    assert!(page.contains(env!("CARGO_PKG_VERSION")), "the version is on the page");
    assert!(page.contains("Environment:") || page.contains("BUTLER_HOME"), "{page}");
    let json = home.run(&["--json", "man"]);
    assert_eq!(json.status.code(), Some(2), "refused clearly");
    assert!(stderr(&json).contains("not JSON"), "{}", stderr(&json));
}

#[test]
fn json_is_kept_or_refused_clearly() {
    let home = TestHome::new();
    let file = home.path().join("in.txt");
    std::fs::write(&file, "hello\n").unwrap();
    let out = home.run(&[
        "--json",
        "--prefix",
        "j",
        "stream",
        "--source",
        file.to_str().unwrap(),
        "--stream",
        "name=s",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!((v["type"].as_str(), v["value"]["path"].as_str()), (Some("result"), Some("j/+/s")));
    for cmd in ["cat", "tail"] {
        let out = home.run(&["--json", "logs", cmd, "j/+/s"]);
        assert_eq!(out.status.code(), Some(2), "{cmd}: {}", stderr(&out));
        assert!(stderr(&out).contains("not JSON"), "{}", stderr(&out));
        assert!(!stdout(&out).contains("hello"), "no raw bytes on a JSON stdout");
    }
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

#[test]
fn logdog_flags_are_refused_where_they_do_nothing() {
    let home = TestHome::new();
    for (args, says) in [
        (
            &["upgrade", "--project", "x", "--check"][..],
            "--project applies only to stream, serve and run",
        ),
        (&["-prefix", "z", "version"], "--prefix applies only"),
        (&["daemon", "--output", "null"], "--output applies only"),
        (&["logs", "ls", "--output", "null", "--tag", "k=v"], "--output, --tag apply only"),
    ] {
        let out = home.run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
    // Where they apply, they are taken: logs reads --project and --prefix.
    assert!(home.run(&["-project", "p", "logs", "ls", "--prefix", "a/"]).status.success());
}

#[test]
fn logs_ls_is_a_table_for_people_and_tab_separated_for_scripts() {
    let home = TestHome::new();
    let out = home.run(&["--prefix", "demo/one", "run", "--", "echo", "hi"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let piped = stdout(&home.run(&["logs", "ls"]));
    assert!(piped.contains("demo/one/+/stdout\ttext\t1 entry\t3 bytes\tcomplete"), "{piped}");
    // At a terminal (`script` gives it one): a header, ages and readable sizes.
    let bin = crate::util::butler_bin();
    let mut cmd = std::process::Command::new("script");
    cmd.env("BUTLER_HOME", home.path()).args([
        "-qec",
        &format!("'{}' logs ls", bin.display()),
        "/dev/null",
    ]);
    let table = stdout(&cmd.output().unwrap());
    assert!(table.contains("STARTED") && table.contains("PATH"), "{table}");
    assert!(table.contains("s ago") && table.contains("3 B") && table.contains("done"), "{table}");
}
