//! The daemon, driven over raw sockets and pipes as butlerd clients drive it.

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::util::{DaemonProc, RpcClient, TestHome};

fn db_arg(home: &TestHome) -> String {
    home.path().join("db/butler.db").display().to_string()
}

fn keep_alive(home: &TestHome, extra: &[&str]) -> DaemonProc {
    let db = db_arg(home);
    let mut args = vec!["--keep-alive", "--dbpath", &db];
    args.extend_from_slice(extra);
    DaemonProc::start(home, &args)
}

pub(crate) fn error_code(reply: &Value) -> i64 {
    reply["error"]["code"].as_i64().unwrap_or_else(|| panic!("not an error: {reply}"))
}

#[test]
fn prints_log_lines_then_exactly_one_listen_notification() {
    let home = TestHome::new();
    let d = keep_alive(&home, &[]);
    let (last, before) = d.stdout_lines.split_last().unwrap();
    for line in before {
        let v: Value = serde_json::from_str(line).unwrap();
        assert_eq!(v["type"], "log", "{line}");
        assert!(v["time"].is_u64() && v["message"].is_string() && v["level"].is_string());
    }
    let v: Value = serde_json::from_str(last).unwrap();
    let secret = v["secret"].as_str().unwrap();
    assert!(secret.len() >= 64 && secret.chars().all(|c| c.is_ascii_graphic()), "{secret}");
    assert!(d.address.starts_with("127.0.0.1:") && !d.address.ends_with(":0"), "{}", d.address);
    assert!(v["time"].is_u64());

    d.client().request(json!(1), "Meta.Shutdown", json!({}));
    let (code, rest, _) = d.wait_exit(5);
    assert_eq!(code, Some(0));
    for line in rest.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"));
        assert_ne!(v["type"], "butlerd/listen-notification", "a second listen notification");
    }
}

#[test]
fn secrets_differ_between_runs() {
    let home = TestHome::new();
    let a = DaemonProc::start(&home, &["--keep-alive", "--dbpath", ":memory:"]);
    let b = DaemonProc::start(&home, &["--keep-alive", "--dbpath", ":memory:"]);
    assert_ne!(a.secret, b.secret);
}

#[test]
fn authentication_rules() {
    let home = TestHome::new();
    let d = keep_alive(&home, &[]);
    let mut c = d.connect();

    // Anything before authenticating is refused at once (upstream hangs here).
    let started = Instant::now();
    let r = c.request(json!(1), "Version.Get", json!({}));
    assert_eq!(error_code(&r), -32600);
    assert!(r["error"]["message"].as_str().unwrap().contains("Meta.Authenticate"));
    assert!(started.elapsed() < Duration::from_secs(2));

    let r = c.request(json!(2), "Meta.Authenticate", json!({"secret": "wrong"}));
    assert_eq!(error_code(&r), -32600);
    assert!(r["error"]["message"].as_str().unwrap().contains("secret"));
    assert!(!r.to_string().contains(&d.secret));

    // A secret that shares a prefix is still wrong.
    let prefix = &d.secret[..10];
    assert_eq!(
        error_code(&c.request(json!(3), "Meta.Authenticate", json!({"secret": prefix}))),
        -32600
    );

    let r = c.request(json!(4), "Meta.Authenticate", json!({"secret": d.secret}));
    assert_eq!(r, json!({"jsonrpc": "2.0", "id": 4, "result": {"ok": true}}));
    let r = c.request(json!(5), "Version.Get", json!({}));
    assert_eq!(r["result"]["version"], format!("v{}", env!("CARGO_PKG_VERSION")));

    // Authentication is per connection.
    let mut other = d.connect();
    assert_eq!(error_code(&other.request(json!(1), "Version.Get", json!({}))), -32600);
}

#[test]
fn authenticate_as_a_notification_is_accepted() {
    let home = TestHome::new();
    let d = keep_alive(&home, &[]);
    let mut c = d.connect();
    c.send(
        &json!({"jsonrpc": "2.0", "method": "Meta.Authenticate", "params": {"secret": d.secret}}),
    );
    let r = c.request(json!(1), "Version.Get", json!({}));
    assert!(r["result"]["versionString"].as_str().unwrap().starts_with('v'), "{r}");
}

#[test]
fn unauthenticated_connections_are_closed_after_the_timeout() {
    let home = TestHome::new();
    let d = keep_alive(&home, &["--auth-timeout", "300ms"]);
    let mut c = d.connect();
    let started = Instant::now();
    let r = c.recv();
    assert_eq!(error_code(&r), -32003);
    assert_eq!(r["id"], Value::Null);
    assert!(c.try_recv().is_none(), "connection should be closed");
    assert!(started.elapsed() >= Duration::from_millis(250));

    // An authenticated connection is not subject to it.
    let mut ok = d.client();
    std::thread::sleep(Duration::from_millis(500));
    assert!(ok.request(json!(1), "Version.Get", json!({}))["result"].is_object());
}

#[test]
fn error_codes() {
    let home = TestHome::new();
    let d = keep_alive(&home, &[]);
    let mut c = d.client();

    c.send_raw(b"{not json\n");
    let r = c.recv();
    assert_eq!((error_code(&r), r["id"].clone()), (-32700, Value::Null));
    assert_eq!(r["error"]["data"]["butlerVersion"], format!("v{}", env!("CARGO_PKG_VERSION")));

    for not_a_request in
        [json!(5), json!({"jsonrpc": "2.0", "id": 7}), json!({"id": 8, "method": "Version.Get"})]
    {
        c.send(&not_a_request);
        assert_eq!(error_code(&c.recv()), -32600, "{not_a_request}");
    }

    let r = c.request(json!(9), "No.Such", json!({}));
    assert_eq!(error_code(&r), -32601);
    assert!(r["error"]["message"].as_str().unwrap().contains("No.Such"));

    let r = c.request(json!(10), "Test.Double", json!({"number": "ten"}));
    assert_eq!(error_code(&r), -32602);
    assert!(r["error"]["message"].as_str().unwrap().contains("number"), "{r}");

    // A client reply that does not fit what the daemon asked for is an internal error.
    c.send(
        &json!({"jsonrpc": "2.0", "id": 11, "method": "Test.DoubleTwice", "params": {"number": 1}}),
    );
    let call = next_request(&mut c);
    c.send(&json!({"jsonrpc": "2.0", "id": call["id"], "result": {"number": "x"}}));
    let r = until_id(&mut c, &json!(11));
    assert_eq!(error_code(&r), -32603, "{r}");
}

/// The next server→client request, skipping notifications.
fn next_request(c: &mut RpcClient) -> Value {
    loop {
        let m = c.recv();
        if m.get("id").is_some() && m.get("method").is_some() {
            return m;
        }
    }
}

/// The reply with `id`, skipping notifications.
pub(crate) fn until_id(c: &mut RpcClient, id: &Value) -> Value {
    loop {
        let m = c.recv();
        if m.get("method").is_none() && &m["id"] == id {
            return m;
        }
    }
}

#[test]
fn ids_are_echoed_exactly_and_params_may_be_missing() {
    let home = TestHome::new();
    let d = keep_alive(&home, &[]);
    let mut c = d.client();
    for id in
        [json!(0), json!(-1), json!(9007199254740993u64), json!("0"), json!("a b"), json!(1.5)]
    {
        c.send(&json!({"jsonrpc": "2.0", "id": id, "method": "Version.Get"}));
        let r = c.recv();
        assert_eq!(r["id"], id);
        assert!(r["result"].is_object(), "{r}");
    }
    c.send_raw(b"{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"Version.Get\",\"params\":null}\n");
    assert!(c.recv()["result"].is_object());
}

#[test]
fn notifications_are_never_answered() {
    let home = TestHome::new();
    let d = keep_alive(&home, &[]);
    let mut c = d.client();
    c.send(&json!({"jsonrpc": "2.0", "method": "Version.Get"}));
    c.send(&json!({"jsonrpc": "2.0", "method": "No.Such", "params": {}}));
    let r = c.request(json!("after"), "Version.Get", json!({}));
    assert_eq!(r["id"], "after");
}

#[test]
fn batches() {
    let home = TestHome::new();
    let d = keep_alive(&home, &[]);
    let mut c = d.client();
    c.send(&json!([
        {"jsonrpc": "2.0", "id": 1, "method": "Test.Double", "params": {"number": 21}},
        {"jsonrpc": "2.0", "method": "Test.Double", "params": {"number": 1}},
        {"jsonrpc": "2.0", "id": "b", "method": "No.Such"},
        7
    ]));
    let r = c.recv();
    let replies = r.as_array().unwrap();
    assert_eq!(replies.len(), 3, "{r}");
    assert_eq!(replies[0]["result"], json!({"number": 42}));
    assert_eq!((replies[1]["id"].clone(), error_code(&replies[1])), (json!("b"), -32601));
    assert_eq!(error_code(&replies[2]), -32600);

    // A batch of notifications gets no reply at all; an empty batch is invalid.
    c.send(&json!([{"jsonrpc": "2.0", "method": "Version.Get"}]));
    c.send(&json!([]));
    let r = c.recv();
    assert_eq!((error_code(&r), r["id"].clone()), (-32600, Value::Null));
}

#[test]
fn an_oversized_line_is_refused_and_the_connection_recovers() {
    let home = TestHome::new();
    let d = keep_alive(&home, &["--max-line-bytes", "4096"]);
    let mut c = d.client();
    let mut big =
        b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"Test.Double\",\"params\":{\"pad\":\"".to_vec();
    big.extend(std::iter::repeat_n(b'x', 1 << 20));
    big.extend_from_slice(b"\"}}\n");
    c.send_raw(&big);
    c.send(&json!({"jsonrpc": "2.0", "id": 2, "method": "Version.Get"}));
    let r = c.recv();
    assert_eq!(error_code(&r), -32600);
    assert!(r["error"]["message"].as_str().unwrap().contains("limit"), "{r}");
    assert_eq!(r["error"]["data"]["limit"], 4096);
    assert!(c.recv()["result"]["version"].is_string());
}

#[test]
fn double_twice_calls_back_and_reports_progress_in_order() {
    let home = TestHome::new();
    let d = keep_alive(&home, &[]);
    let mut c = d.client();
    c.send(
        &json!({"jsonrpc": "2.0", "id": 77, "method": "Test.DoubleTwice", "params": {"number": 7}}),
    );
    let call = next_request(&mut c);
    assert_eq!(call["method"], "Test.Double");
    assert_eq!(call["params"], json!({"number": 7}));
    c.send(&json!({"jsonrpc": "2.0", "id": call["id"], "result": {"number": 14}}));
    let mut progress = Vec::new();
    let reply = loop {
        let m = c.recv();
        match m["method"].as_str() {
            Some("Progress") => progress.push(m["params"]["progress"].as_f64().unwrap()),
            Some("Log") => assert!(m["params"]["message"].is_string()),
            Some(other) => panic!("unexpected {other}"),
            None => break m,
        }
    };
    assert_eq!(progress, vec![0.3, 0.6, 0.9]);
    assert_eq!(reply, json!({"jsonrpc": "2.0", "id": 77, "result": {"number": 28}}));
}

#[test]
fn log_notifications_reach_the_requesting_connection() {
    let home = TestHome::new();
    let d = keep_alive(&home, &[]);
    let mut c = d.client();
    c.send(
        &json!({"jsonrpc": "2.0", "id": 1, "method": "Test.DoubleTwice", "params": {"number": 1}}),
    );
    let first = c.recv();
    assert_eq!(first["method"], "Log", "{first}");
    assert_eq!(first["params"]["level"], "debug");
    assert!(first.get("id").is_none());
}

#[test]
fn operation_cancel_from_another_connection() {
    let home = TestHome::new();
    let d = keep_alive(&home, &[]);
    let mut a = d.client();
    a.send(&json!({"jsonrpc": "2.0", "id": 1, "method": "Test.DoubleTwice", "params": {"number": 1, "id": "op-1"}}));
    next_request(&mut a); // never answered
    let mut b = d.client();
    let r = b.request(json!(1), "Operation.Cancel", json!({"id": "op-1"}));
    assert_eq!(r["result"], json!({"didCancel": true}));
    let r = until_id(&mut a, &json!(1));
    assert_eq!(error_code(&r), 499, "{r}");
    let r = b.request(json!(2), "Operation.Cancel", json!({"id": "op-1"}));
    assert_eq!(r["result"], json!({"didCancel": false}));
}

#[test]
fn closing_a_connection_cancels_its_requests() {
    let home = TestHome::new();
    let d = keep_alive(&home, &[]);
    let mut a = d.client();
    a.send(&json!({"jsonrpc": "2.0", "id": 1, "method": "Process.Run", "params": {
        "command": ["sleep", "30"], "id": "op-2",
    }}));
    let pid = a.recv()["params"]["pid"].as_u64().unwrap() as libc::pid_t;
    drop(a);
    // The close cancels the run, which stops the child; polling the pid asks without cancelling.
    let deadline = Instant::now() + Duration::from_secs(10);
    // SAFETY: probing whether the pid still exists; signal 0 sends nothing.
    while unsafe { libc::kill(pid, 0) } == 0 {
        assert!(Instant::now() < deadline, "the child outlived its connection");
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = d.client().request(json!(1), "Operation.Cancel", json!({"id": "op-2"}));
    assert_eq!(r["result"], json!({"didCancel": false}), "nothing is left to cancel");
}

#[test]
fn meta_flow_establishes_and_its_close_shuts_down() {
    let home = TestHome::new();
    let d = keep_alive(&home, &[]);
    let mut c = d.client();
    c.send(&json!({"jsonrpc": "2.0", "id": 1, "method": "Meta.Flow", "params": {}}));
    let m = c.recv();
    assert_eq!(m["method"], "MetaFlowEstablished");
    assert_eq!(m["params"]["pid"], d.child.id());
    drop(c);
    let (code, _, _) = d.wait_exit(5);
    assert_eq!(code, Some(0));
}

#[test]
fn meta_shutdown_replies_then_exits_zero_and_cancels_in_flight_work() {
    let home = TestHome::new();
    let d = keep_alive(&home, &[]);
    let mut busy = d.client();
    busy.send(
        &json!({"jsonrpc": "2.0", "id": 5, "method": "Test.DoubleTwice", "params": {"number": 1}}),
    );
    next_request(&mut busy);
    let mut c = d.client();
    let r = c.request(json!(1), "Meta.Shutdown", json!({}));
    assert_eq!(r, json!({"jsonrpc": "2.0", "id": 1, "result": {}}));
    assert_eq!(error_code(&until_id(&mut busy, &json!(5))), 499);
    let (code, _, _) = d.wait_exit(5);
    assert_eq!(code, Some(0));
}

#[test]
fn sigint_and_sigterm_exit_zero() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let home = TestHome::new();
        let d = keep_alive(&home, &[]);
        let _open = d.client();
        d.signal(sig);
        let (code, _, _) = d.wait_exit(5);
        assert_eq!(code, Some(0), "signal {sig}");
    }
}

#[test]
fn destiny_pid_death_shuts_down() {
    let home = TestHome::new();
    let mut launcher = std::process::Command::new("sleep").arg("60").spawn().unwrap();
    let pid = launcher.id().to_string();
    let other = std::process::id().to_string();
    let d = keep_alive(&home, &["--destiny-pid", &other, "--destiny-pid", &pid]);
    let mut c = d.client();
    assert!(c.request(json!(1), "Version.Get", json!({}))["result"].is_object());
    launcher.kill().unwrap();
    launcher.wait().unwrap();
    let (code, _, _) = d.wait_exit(5);
    assert_eq!(code, Some(0));
}

#[test]
fn without_keep_alive_one_connection_is_served_then_the_daemon_exits() {
    let home = TestHome::new();
    let d = DaemonProc::start(&home, &["--dbpath", ":memory:"]);
    let mut c = d.client();
    assert!(c.request(json!(1), "Version.Get", json!({}))["result"].is_object());
    drop(c);
    let (code, _, _) = d.wait_exit(5);
    assert_eq!(code, Some(0));
}

#[test]
fn a_second_daemon_on_the_same_database_is_refused_at_once() {
    let home = TestHome::new();
    let d = keep_alive(&home, &[]);
    let started = Instant::now();
    let out = home
        .butler()
        .args(["--json", "daemon", "--keep-alive", "--dbpath", &db_arg(&home)])
        .output()
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("butler.db") && err.contains(&d.child.id().to_string()), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listen-notification"));
    // The first one is unaffected.
    assert!(d.client().request(json!(1), "Version.Get", json!({}))["result"].is_object());
}

#[test]
fn in_memory_databases_are_accepted() {
    let home = TestHome::new();
    for db in [":memory:", "file::memory:?cache=shared"] {
        let d = DaemonProc::start(&home, &["--keep-alive", "--dbpath", db]);
        let mut c = d.client();
        // Methods that need the database, not only Version.Get (which never touches it).
        let r = c.request(json!(1), "Update.Status", json!({}));
        assert_eq!(r["result"]["history"], json!([]), "{db}: {r}");
        c.send(&json!({"jsonrpc": "2.0", "id": 2, "method": "Process.Run", "params": {
            "command": ["sh", "-c", "echo in memory"], "prefix": "mem",
        }}));
        let r = until_id(&mut c, &json!(2));
        assert_eq!(r["result"]["exitCode"], 0, "{db}: {r}");
        let r = c.request(json!(3), "Streams.Read", json!({"path": "mem/+/stdout"}));
        let text: String = r["result"]["entries"]
            .as_array()
            .unwrap_or_else(|| panic!("{db}: {r}"))
            .iter()
            .map(|e| e["text"].as_str().unwrap_or_default())
            .collect();
        assert_eq!(text, "in memory\n", "{db}: the run's output is in the daemon's database");
    }
}

#[test]
fn the_database_is_created_and_migrated() {
    let home = TestHome::new();
    let d = keep_alive(&home, &[]);
    d.client().request(json!(1), "Meta.Shutdown", json!({}));
    assert_eq!(d.wait_exit(5).0, Some(0));
    let conn = butler::db::open(&butler::db::DbPath::from_arg(&db_arg(&home))).unwrap();
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master WHERE name = 'settings'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(tables, 1);
}

#[test]
fn the_default_database_lives_in_butler_home() {
    let home = TestHome::new();
    let d = DaemonProc::start(&home, &["--keep-alive"]);
    d.client().request(json!(1), "Meta.Shutdown", json!({}));
    assert_eq!(d.wait_exit(5).0, Some(0));
    assert!(home.path().join("butler.db").exists());
}

#[test]
fn log_flag_logs_traffic_but_never_the_secret() {
    let home = TestHome::new();
    let d = keep_alive(&home, &["--log"]);
    let mut c = d.client();
    c.request(json!(1), "Version.Get", json!({}));
    c.request(json!(2), "Meta.Shutdown", json!({}));
    let secret = d.secret.clone();
    let (code, _, stderr) = d.wait_exit(5);
    assert_eq!(code, Some(0));
    assert!(stderr.contains("Version.Get") && stderr.contains("Meta.Authenticate"), "{stderr}");
    assert!(!stderr.contains(&secret), "secret leaked to stderr");
}

#[test]
fn connection_cap() {
    let home = TestHome::new();
    let d = keep_alive(&home, &["--max-connections", "2"]);
    let _a = d.client();
    let _b = d.client();
    let mut c = d.connect();
    let r = c.recv();
    assert_eq!(error_code(&r), -32001, "{r}");
    assert!(c.try_recv().is_none());
}

#[test]
fn stdio_transport_speaks_on_stdin_and_stdout_without_a_secret() {
    let home = TestHome::new();
    let mut child = home
        .butler()
        .args(["--json", "daemon", "--transport", "stdio", "--dbpath", ":memory:"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut ask = |msg: Value| -> Value {
        writeln!(stdin, "{msg}").unwrap();
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    };
    let r = ask(json!({"jsonrpc": "2.0", "id": 1, "method": "Version.Get"}));
    assert!(r["result"]["version"].is_string(), "{r}");
    let r = ask(
        json!({"jsonrpc": "2.0", "id": 2, "method": "Meta.Authenticate", "params": {"secret": "x"}}),
    );
    assert_eq!(error_code(&r), -32600);
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stdout.is_empty(), "nothing but replies on stdout");
}

#[test]
fn streams_list_and_read_what_the_cli_stored() {
    let home = TestHome::new();
    let mut cmd = home.butler();
    cmd.args(["--prefix", "game/run1", "stream", "--stream", "name=stdout"]);
    cmd.stdin(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"first line\nsecond\r\npartial").unwrap();
    assert!(child.wait().unwrap().success());

    // The CLI wrote to the default database; the daemon reads the same one.
    let d = DaemonProc::start(&home, &["--keep-alive"]);
    let mut c = d.client();
    let r = c.request(json!(1), "Streams.List", json!({}));
    let streams = r["result"]["streams"].as_array().unwrap_or_else(|| panic!("{r}"));
    assert_eq!(streams.len(), 1, "{r}");
    assert_eq!(streams[0]["path"], "game/run1/+/stdout");
    assert_eq!(streams[0]["type"], "text");
    assert_eq!(streams[0]["terminal"], true);

    let r = c.request(json!(2), "Streams.List", json!({"prefix": "other/"}));
    assert_eq!(r["result"]["streams"], json!([]));

    let r = c.request(json!(3), "Streams.Read", json!({"path": "game/run1/+/stdout"}));
    let result = &r["result"];
    let text: String =
        result["entries"].as_array().unwrap().iter().map(|e| e["text"].as_str().unwrap()).collect();
    assert_eq!(text, "first line\nsecond\r\npartial");
    assert_eq!(result["terminal"], true);
    let next = result["nextIndex"].as_u64().unwrap();
    assert_eq!(next as usize, result["entries"].as_array().unwrap().len());

    let r = c.request(
        json!(4),
        "Streams.Read",
        json!({"path": "game/run1/+/stdout", "fromIndex": next}),
    );
    assert_eq!(r["result"]["entries"], json!([]));
    let r = c.request(json!(5), "Streams.Read", json!({"path": "game/run1/+/nope"}));
    assert_eq!(error_code(&r), -32602);
}

#[test]
fn a_database_from_a_newer_butler_is_reported_without_delaying_the_listen_line() {
    let home = TestHome::new();
    let db = db_arg(&home);
    std::fs::create_dir_all(home.path().join("db")).unwrap();
    rusqlite::Connection::open(&db).unwrap().pragma_update(None, "user_version", 999).unwrap();
    let d = keep_alive(&home, &[]);
    let mut c = d.client();
    assert!(c.request(json!(1), "Version.Get", json!({}))["result"].is_object());
    let r = c.request(json!(2), "Streams.List", json!({}));
    assert_eq!(error_code(&r), -32004, "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("newer"), "{r}");
    // Process.Run needs the store as well: the same code, not a params error.
    let r = c.request(json!(3), "Process.Run", json!({"command": ["true"]}));
    assert_eq!(error_code(&r), -32004, "{r}");
}

#[test]
fn process_run_captures_output_into_the_store() {
    let home = TestHome::new();
    let d = DaemonProc::start(&home, &["--keep-alive"]);
    let mut c = d.client();
    c.send(&json!({"jsonrpc": "2.0", "id": 1, "method": "Process.Run", "params": {
        "command": ["sh", "-c", "echo out; echo err >&2; exit 3"],
        "prefix": "game/launch1",
    }}));
    let started = c.recv();
    assert_eq!(started["method"], "Process.Started", "{started}");
    assert!(started["params"]["pid"].as_u64().unwrap() > 0);
    assert!(started["params"]["streamServer"].as_str().unwrap().starts_with("unix:"));
    let r = until_id(&mut c, &json!(1));
    assert_eq!(r["result"]["exitCode"], 3, "{r}");
    let mut streams: Vec<String> = r["result"]["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    streams.sort();
    assert_eq!(streams, ["game/launch1/+/stderr", "game/launch1/+/stdout"]);
    let r = c.request(json!(2), "Streams.Read", json!({"path": "game/launch1/+/stdout"}));
    let text: String = r["result"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["text"].as_str().unwrap())
        .collect();
    assert_eq!(text, "out\n");
}

#[test]
fn meta_flow_hears_of_the_streams_a_process_opens_and_closes() {
    let home = TestHome::new();
    let d = DaemonProc::start(&home, &["--keep-alive"]);
    let mut flow = d.client();
    flow.send(&json!({"jsonrpc": "2.0", "id": 1, "method": "Meta.Flow", "params": {}}));
    assert_eq!(flow.recv()["method"], "MetaFlowEstablished");
    let mut c = d.client();
    c.send(&json!({"jsonrpc": "2.0", "id": 1, "method": "Process.Run", "params": {
        "command": ["sh", "-c", "echo one; echo two"], "prefix": "game/flow",
    }}));
    assert_eq!(until_id(&mut c, &json!(1))["result"]["exitCode"], 0);
    let news: Vec<serde_json::Value> = (0..4).map(|_| flow.recv()).collect();
    for name in ["stdout", "stderr"] {
        let path = format!("game/flow/+/{name}");
        let about: Vec<&serde_json::Value> =
            news.iter().filter(|n| n["params"]["path"] == path.as_str()).collect();
        assert_eq!(about.len(), 2, "{news:?}");
        assert_eq!(about[0]["method"], "Streams.Opened", "{news:?}");
        assert_eq!(about[0]["params"]["type"], "text");
        assert_eq!(about[0]["params"]["project"], "local");
        assert_eq!(about[1]["method"], "Streams.Closed", "{news:?}");
    }
    let stdout_closed = news
        .iter()
        .find(|n| n["method"] == "Streams.Closed" && n["params"]["path"] == "game/flow/+/stdout")
        .unwrap();
    assert!(stdout_closed["params"]["entries"].as_u64().unwrap() >= 1, "{stdout_closed}");
}

#[test]
fn cancelling_process_run_terminates_the_child() {
    let home = TestHome::new();
    let d = DaemonProc::start(&home, &["--keep-alive"]);
    let mut a = d.client();
    a.send(&json!({"jsonrpc": "2.0", "id": 1, "method": "Process.Run", "params": {
        "command": ["sleep", "30"], "id": "game-1",
    }}));
    let pid = a.recv()["params"]["pid"].as_u64().unwrap();
    let started = Instant::now();
    let r = d.client().request(json!(1), "Operation.Cancel", json!({"id": "game-1"}));
    assert_eq!(r["result"]["didCancel"], true);
    let r = until_id(&mut a, &json!(1));
    assert_eq!(error_code(&r), 499, "{r}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // SAFETY: probing whether the pid still exists; signal 0 sends nothing.
    let alive = unsafe { libc::kill(pid as libc::pid_t, 0) } == 0;
    assert!(!alive, "the child outlived the cancel");

    let r = a.request(json!(2), "Process.Run", json!({"command": []}));
    assert_eq!(error_code(&r), -32602);
}

#[test]
fn streams_follow_sends_entries_as_they_arrive_until_the_stream_ends() {
    use crate::streaming::{Serve, handshake};
    let home = TestHome::new();
    let serve = Serve::start(&home, &["--output-no-buffer", "--prefix", "live/run"]);
    let mut writer = serve.connect();
    writer.write_all(&handshake(r#"{"name": "game"}"#)).unwrap();
    writer.write_all(b"one\n").unwrap();

    let d = DaemonProc::start(&home, &["--keep-alive"]);
    let mut c = d.client();
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.request(json!(0), "Streams.List", json!({"prefix": "live/"}))["result"]["streams"]
        == json!([])
    {
        assert!(Instant::now() < deadline, "the stream never reached the store");
        std::thread::sleep(Duration::from_millis(20));
    }
    c.send(&json!({"jsonrpc": "2.0", "id": 1, "method": "Streams.Follow",
        "params": {"path": "live/run/+/game"}}));
    let mut text = String::new();
    let expect = |c: &mut RpcClient, want: &str, text: &mut String| {
        while !text.ends_with(want) {
            let m = c.recv();
            assert_eq!(m["method"], "Streams.Entries", "{m}");
            assert_eq!(m["params"]["path"], "live/run/+/game");
            for e in m["params"]["entries"].as_array().unwrap() {
                text.push_str(e["text"].as_str().unwrap());
            }
        }
    };
    expect(&mut c, "one\n", &mut text);
    writer.write_all(b"two\n").unwrap();
    expect(&mut c, "two\n", &mut text);
    drop(writer);
    let done = until_id(&mut c, &json!(1));
    assert_eq!(done["result"]["terminal"], true, "{done}");
    assert_eq!(text, "one\ntwo\n");
    serve.stop();

    let r = c.request(json!(2), "Streams.Follow", json!({"path": "live/run/+/nope"}));
    assert_eq!(error_code(&r), -32602);
}

#[test]
fn no_batch_is_processed_before_authentication() {
    let home = TestHome::new();
    let d = keep_alive(&home, &[]);
    let mut c = d.connect();
    // A batch of cheap items used to make one line cost ~2.5 KiB of heap per item.
    let items = vec![json!(1); 400];
    c.send(&Value::Array(items));
    let r = c.recv();
    assert_eq!(error_code(&r), -32600, "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("batches"), "{r}");
    let closing = c.recv();
    assert!(closing["error"]["message"].as_str().unwrap().contains("closing"), "{closing}");
    assert!(c.try_recv().is_none(), "the connection is closed");
}

#[test]
fn batches_are_capped_once_authenticated() {
    let home = TestHome::new();
    let d = keep_alive(&home, &[]);
    let mut c = d.client();
    let item = json!({"jsonrpc": "2.0", "id": 1, "method": "Test.Double", "params": {"number": 1}});
    c.send(&Value::Array(vec![item.clone(); 1001]));
    let r = c.recv();
    assert_eq!(error_code(&r), -32600, "{r}");
    assert_eq!(r["error"]["data"]["limit"], 1000, "{r}");
    c.send(&Value::Array(vec![item; 1000]));
    assert_eq!(c.recv().as_array().map(Vec::len), Some(1000));
}

#[test]
fn before_authentication_lines_are_small_and_errors_few() {
    let home = TestHome::new();
    let d = keep_alive(&home, &[]);
    let mut c = d.connect();
    let mut big =
        b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"Meta.Authenticate\",\"params\":{\"pad\":\""
            .to_vec();
    big.extend(std::iter::repeat_n(b'x', 5000));
    big.extend_from_slice(b"\"}}\n");
    c.send_raw(&big);
    let r = c.recv();
    assert_eq!(error_code(&r), -32600, "{r}");
    assert_eq!(r["error"]["data"]["limit"], 1024, "{r}");
    // The same line is fine once authenticated.
    let mut ok = d.client();
    let mut long = b"{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"Test.Double\",\"params\":{\"number\":2,\"pad\":\"".to_vec();
    long.extend(std::iter::repeat_n(b'x', 5000));
    long.extend_from_slice(b"\"}}\n");
    ok.send_raw(&long);
    assert_eq!(ok.recv()["result"]["number"], 4);
    // A handful of refused messages, then the connection is dropped. One write: the daemon may
    // close before a later write of ours, which would then fail (EPIPE), as it should.
    let lines: String = (0..20)
        .map(|id| format!("{}\n", json!({"jsonrpc": "2.0", "id": id, "method": "Version.Get"})))
        .collect();
    c.send_raw(lines.as_bytes());
    let mut replies = 0;
    while c.try_recv().is_some() {
        replies += 1;
    }
    assert!(replies <= 9, "{replies} replies before the connection closed");
}

#[test]
fn peers_that_never_read_cannot_hold_slots_past_the_deadline() {
    let home = TestHome::new();
    let d = keep_alive(&home, &["--max-connections", "2", "--auth-timeout", "300ms"]);
    // Two peers fill the slots, write garbage and never read.
    let spam = |address: &str| {
        // Enough refused lines that, unread, their replies fill every socket buffer (a small
        // receive buffer on our side keeps that within reach).
        let mut s = std::net::TcpStream::connect(address).unwrap();
        let small: libc::c_int = 4096;
        // SAFETY: setsockopt on our own open socket with a c_int option value.
        unsafe {
            use std::os::fd::AsRawFd;
            libc::setsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                (&raw const small).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        s.set_write_timeout(Some(Duration::from_millis(500))).unwrap();
        let garbage = b"x\n".repeat(1024);
        for _ in 0..1000 {
            if s.write_all(&garbage).is_err() {
                break;
            }
        }
        s
    };
    let _a = spam(&d.address);
    let _b = spam(&d.address);
    // Once their deadline (and the reply's grace) passed, a real client gets a slot.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut c = d.connect();
        let r = c.request(json!("auth"), "Meta.Authenticate", json!({"secret": d.secret}));
        if r["result"]["ok"] == true {
            break;
        }
        assert_eq!(error_code(&r), -32001, "{r}");
        assert!(Instant::now() < deadline, "the slots are still held");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn in_one_connection_mode_the_first_to_authenticate_is_served() {
    let home = TestHome::new();
    let d = DaemonProc::start(&home, &["--dbpath", ":memory:"]);
    // Someone without the secret connects first and says nothing.
    let _squatter = d.connect();
    let mut c = d.client();
    assert!(c.request(json!(1), "Version.Get", json!({}))["result"].is_object());
    drop(c);
    let (code, _, _) = d.wait_exit(5);
    assert_eq!(code, Some(0));
}

#[test]
fn log_flag_never_prints_the_secret_whatever_the_params_shape() {
    let home = TestHome::new();
    let d = keep_alive(&home, &["--log"]);
    let mut c = d.connect();
    let secret = d.secret.clone();
    let r = c.request(json!(1), "Meta.Authenticate", json!([secret]));
    assert_eq!(error_code(&r), -32602, "{r}");
    c.send(&json!({"jsonrpc": "2.0", "id": 2, "method": "Meta.Authenticate", "params": secret}));
    c.recv();
    let mut ok = d.client();
    ok.request(json!(3), "Meta.Shutdown", json!({}));
    let (code, _, stderr) = d.wait_exit(5);
    assert_eq!(code, Some(0));
    assert!(stderr.contains("Meta.Authenticate"), "{stderr}");
    assert!(!stderr.contains(&secret), "secret leaked to stderr: {stderr}");
}

/// `--transport unix:<path>`: the same protocol, secret and listen notification over an
/// owner-only unix socket, for machines whose firewall inspects loopback TCP.
#[test]
fn the_unix_socket_transport_is_the_tcp_contract_on_an_owner_only_socket() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::net::UnixStream;
    let home = TestHome::new();
    let sock = home.path().join("d.sock");
    let transport = format!("unix:{}", sock.display());
    let mut child = home
        .butler()
        .args(["--json", "daemon", "--keep-alive", "--dbpath", ":memory:", "--transport"])
        .arg(&transport)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let note = loop {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "no listen notification");
        let v: Value = serde_json::from_str(&line).unwrap();
        if v["type"] == "butlerd/listen-notification" {
            break v;
        }
    };
    assert_eq!(note["unix"]["address"], transport.as_str(), "{note}");
    let secret = note["secret"].as_str().unwrap().to_owned();
    assert_eq!(std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777, 0o600);

    let s = UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut w = s;
    let mut call = |msg: Value| {
        writeln!(w, "{msg}").unwrap();
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        serde_json::from_str::<Value>(&line).unwrap()
    };
    let r1 = call(json!({"jsonrpc": "2.0", "id": 1, "method": "Version.Get"}));
    assert_eq!(error_code(&r1), -32600, "the secret is needed here too: {r1}");
    let r2 = call(
        json!({"jsonrpc": "2.0", "id": 2, "method": "Meta.Authenticate", "params": {"secret": secret}}),
    );
    assert_eq!(r2["result"]["ok"], true, "{r2}");
    let r3 = call(json!({"jsonrpc": "2.0", "id": 3, "method": "Version.Get"}));
    assert!(r3["result"]["version"].is_string(), "{r3}");
    let r4 = call(json!({"jsonrpc": "2.0", "id": 4, "method": "Meta.Shutdown"}));
    assert!(r4.get("result").is_some(), "{r4}");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(!sock.exists(), "the socket file is removed at exit");
}

/// A client that writes requests and never reads its replies is held back once its replies fill
/// the socket and the daemon's bounded queue: the daemon stops reading instead of holding more,
/// serves others meanwhile, and loses nothing when the client reads at last.
#[test]
fn a_client_that_never_reads_is_held_back_without_loss_or_growth() {
    let home = TestHome::new();
    let d = keep_alive(&home, &[]);
    let mut c = d.client();
    let before = crate::util::rss_mib(d.child.id());
    // Far more than the socket buffers on both sides hold.
    let lines = 1_000_000;
    let mut requests = Vec::new();
    for i in 0..lines {
        writeln!(requests, r#"{{"jsonrpc":"2.0","id":{i},"method":"Version.Get"}}"#).unwrap();
    }
    c.stream.set_write_timeout(Some(Duration::from_millis(500))).unwrap();
    let mut written = 0;
    while written < requests.len() {
        match c.stream.write(&requests[written..]) {
            Ok(n) => written += n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                break;
            }
            Err(e) => panic!("writing requests: {e}"),
        }
    }
    assert!(written < requests.len(), "the daemon read all {lines} requests without being read");
    let grew = crate::util::rss_mib(d.child.id()).saturating_sub(before);
    assert!(grew < 32, "a client that never reads grew the daemon by {grew} MiB");
    // Others are served meanwhile.
    let r = d.client().request(json!(1), "Version.Get", json!({}));
    assert!(r["result"].is_object(), "{r}");

    // Finish the line cut by the stall, then read every reply.
    let sent_to = written + requests[written..].iter().position(|&b| b == b'\n').unwrap() + 1;
    let expected = requests[..sent_to].iter().filter(|&&b| b == b'\n').count();
    let mut writer = c.stream.try_clone().unwrap();
    writer.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    let rest = requests[written..sent_to].to_vec();
    let finishing = std::thread::spawn(move || writer.write_all(&rest).unwrap());
    let mut seen = vec![false; expected];
    for _ in 0..expected {
        let r = c.recv();
        let id = r["id"].as_u64().unwrap_or_else(|| panic!("{r}")) as usize;
        assert!(r["result"].is_object(), "{r}");
        assert!(!std::mem::replace(&mut seen[id], true), "reply {id} came twice");
    }
    finishing.join().unwrap();
    assert!(seen.iter().all(|&s| s), "every request read was answered");
}

/// Starts `sh -c 'trap "" TERM; sleep 30'` through `Process.Run` on `c`: a child that ignores
/// SIGTERM, so stopping it takes the whole kill grace. Returns its pid.
///
/// Returns once the trap is set: the caller's client closing cancels the run, and a SIGTERM that
/// came before the trap would end the shell at once.
fn stubborn_child(home: &TestHome, c: &mut RpcClient) -> libc::pid_t {
    let ready = home.path().join("trapped");
    let script = format!("trap '' TERM; touch '{}'; sleep 30", ready.display());
    c.send(&json!({"jsonrpc": "2.0", "id": 1, "method": "Process.Run", "params": {
        "command": ["sh", "-c", script], "id": "stubborn",
    }}));
    let pid = c.recv()["params"]["pid"].as_u64().unwrap() as libc::pid_t;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready.exists() {
        assert!(Instant::now() < deadline, "the child never set its trap");
        std::thread::sleep(Duration::from_millis(10));
    }
    pid
}

/// A first signal starts the drain; a second one during it exits at once with 130.
#[test]
fn a_second_signal_during_the_drain_exits_at_once() {
    let home = TestHome::new();
    let d = keep_alive(&home, &["--drain-timeout", "60s"]);
    let pid = stubborn_child(&home, &mut d.client());
    d.signal(libc::SIGTERM);
    // The listener closes before the drain starts: once connecting fails, the daemon is draining.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&d.address).is_ok() {
        assert!(Instant::now() < deadline, "still accepting after SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    }
    d.signal(libc::SIGTERM);
    let (code, _, err) = d.wait_exit(10);
    // SAFETY: the test's own grandchild, which an abrupt exit may leave behind.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(code, Some(130), "{err}");
}

/// `--drain-timeout` bounds how long a shutdown waits for work that will not stop.
#[test]
fn the_drain_timeout_bounds_a_shutdown() {
    let home = TestHome::new();
    let d = keep_alive(&home, &["--drain-timeout", "200ms"]);
    let pid = stubborn_child(&home, &mut d.client());
    d.signal(libc::SIGTERM);
    let (code, out, err) = d.wait_exit(10);
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    assert_eq!(code, Some(0), "{err}");
    // With --json, the daemon's log lines are JSON on stdout.
    assert!(out.contains("did not finish in time"), "the early exit is explained: {out}");
}

/// The database lock is the kernel's: a daemon killed outright leaves nothing that refuses the
/// next one.
#[test]
fn a_killed_daemon_leaves_its_database_free() {
    let home = TestHome::new();
    let d = keep_alive(&home, &[]);
    d.signal(libc::SIGKILL);
    let (code, _, _) = d.wait_exit(10);
    assert_eq!(code, None, "killed by the signal");
    let d = keep_alive(&home, &[]);
    assert!(d.client().request(json!(1), "Version.Get", json!({}))["result"].is_object());
}

/// A launcher that is gone before the daemon starts (exited, or a zombie nobody reaped) is
/// noticed: the daemon does not serve on.
#[test]
fn a_destiny_pid_already_dead_or_a_zombie_shuts_the_daemon_down() {
    use crate::streaming::wait_exit;
    let home = TestHome::new();
    let mut reaped = std::process::Command::new("true").spawn().unwrap();
    reaped.wait().unwrap();
    let mut zombie = std::process::Command::new("true").spawn().unwrap();
    let stat = format!("/proc/{}/stat", zombie.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&stat).unwrap().contains(") Z ") {
        assert!(Instant::now() < deadline, "the child never became a zombie");
        std::thread::sleep(Duration::from_millis(10));
    }
    for pid in [reaped.id(), zombie.id()] {
        let mut daemon = home
            .butler()
            .args(["--json", "daemon", "--keep-alive", "--dbpath", &db_arg(&home)])
            .args(["--destiny-pid", &pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let status = wait_exit(&mut daemon, Duration::from_secs(10));
        assert_eq!(status.code(), Some(0), "destiny pid {pid}");
    }
    zombie.wait().unwrap();
}
