//! "Live means live" for the local outputs: a stream is in the store as soon as it opens, a line a
//! `butler run` / `Process.Run` child writes reaches `logs tail -f` and `Streams.Follow` while the
//! child still runs, and followers wait for a stream that is announced but not yet stored.
//!
//! The children here block on a file the test creates only after it saw their first line, so
//! each test proves the line arrived while the child was still running. The read deadlines are
//! 4.5 s, just under the 5 s buffer age the store output used to default to, so a regression to it
//! fails here (and the default itself is pinned by a unit test); the margin is for loaded machines.

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::streaming::{Serve, handshake, ls, wait_exit};
use crate::util::{DaemonProc, RpcClient, TestHome, stderr, stdout};

/// Under the old 5 s default buffer age, so a line that waited for it fails the test.
const LIVE: Duration = Duration::from_millis(4500);

/// A shell child that prints `first`, waits for `go` to exist, then prints `second`.
fn gated_child(go: &std::path::Path) -> String {
    format!("echo first; while [ ! -e '{}' ]; do sleep 0.01; done; echo second", go.display())
}

#[test]
fn a_stream_is_in_the_store_as_soon_as_it_opens() {
    let home = TestHome::new();
    // The default buffering: nothing is written to the stream yet.
    let serve = Serve::start(&home, &["--prefix", "opened"]);
    let mut s = serve.connect();
    s.write_all(&handshake(r#"{"name":"quiet"}"#)).unwrap();
    let start = Instant::now();
    let streams = loop {
        let streams = ls(&home, "local");
        if !streams.is_empty() {
            break streams;
        }
        assert!(start.elapsed() < LIVE, "the open stream never reached the store");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(streams[0]["path"], "opened/+/quiet");
    assert_eq!(
        (streams[0]["terminal"].clone(), streams[0]["entries"].clone()),
        (json!(false), json!(0))
    );
    let out = home.run(&["logs", "ls"]);
    assert!(
        stdout(&out).contains("opened/+/quiet\ttext\t0 entries\t0 bytes\topen"),
        "{}",
        stdout(&out)
    );
    drop(s);
    serve.stop();
    assert_eq!(ls(&home, "local")[0]["terminal"], true);
}

#[test]
fn logs_tail_f_waits_for_a_stream_and_sees_a_run_child_line_while_it_runs() {
    let home = TestHome::new();
    let go = home.path().join("go");
    // Started first: the stream does not exist yet, so it waits for it.
    let mut tail = home
        .butler()
        .args(["logs", "tail", "-f", "-n", "0", "--poll-interval", "20ms", "live/run/+/out"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The child starts only once tail -f says it waits: started together, a slow tail could find
    // the stream already there.
    let (said, waiting) = std::sync::mpsc::channel();
    let tail_err = tail.stderr.take().unwrap();
    let tail_err = std::thread::spawn(move || {
        let mut err = String::new();
        for line in BufReader::new(tail_err).lines() {
            let line = line.unwrap();
            if line.contains("waiting for live/run/+/out to appear") {
                let _ = said.send(());
            }
            err += &line;
            err += "\n";
        }
        err
    });
    waiting.recv_timeout(Duration::from_secs(10)).expect("tail -f says it waits for the stream");
    let mut run = home
        .butler()
        .args([
            "--prefix",
            "live/run",
            "run",
            "--stdout",
            "name=out",
            "--",
            "sh",
            "-c",
            &gated_child(&go),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let tail_out = tail.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(tail_out).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    let first = rx.recv_timeout(LIVE).expect("the child's first line reached tail -f while it ran");
    assert_eq!(first, "first");
    assert!(run.try_wait().unwrap().is_none(), "the child is still waiting for us");
    std::fs::File::create(&go).unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(10)).unwrap(), "second");
    assert_eq!(wait_exit(&mut run, Duration::from_secs(10)).code(), Some(0));
    assert!(
        wait_exit(&mut tail, Duration::from_secs(10)).success(),
        "tail -f ends with the stream: {}",
        tail_err.join().unwrap()
    );
}

#[test]
fn logs_tail_without_f_still_fails_at_once_for_a_missing_stream() {
    let home = TestHome::new();
    let out = home.run(&["logs", "tail", "no/+/such"]);
    assert_eq!(out.status.code(), Some(250), "{}", stderr(&out));
    assert!(stderr(&out).contains("no stream no/+/such"), "{}", stderr(&out));
}

/// The next notification with `method`, skipping others.
fn until_method(c: &mut RpcClient, method: &str) -> Value {
    loop {
        let m = c.recv();
        if m["method"] == method {
            return m;
        }
    }
}

#[test]
fn streams_follow_on_streams_opened_waits_and_delivers_lines_while_the_child_runs() {
    let home = TestHome::new();
    let go = home.path().join("go");
    let d = DaemonProc::start(&home, &["--keep-alive"]);
    let mut flow = d.client();
    flow.send(&json!({"jsonrpc": "2.0", "id": 1, "method": "Meta.Flow", "params": {}}));
    assert_eq!(flow.recv()["method"], "MetaFlowEstablished");
    let mut runner = d.client();
    runner.send(&json!({"jsonrpc": "2.0", "id": 1, "method": "Process.Run", "params": {
        "command": ["sh", "-c", gated_child(&go)], "prefix": "game/live",
    }}));
    // Follow the moment the stream is announced: it may not be in the store yet.
    let path = loop {
        let opened = until_method(&mut flow, "Streams.Opened");
        if opened["params"]["path"] == "game/live/+/stdout" {
            break "game/live/+/stdout";
        }
    };
    let mut follower = d.client();
    follower.stream.set_read_timeout(Some(LIVE)).unwrap();
    follower.send(
        &json!({"jsonrpc": "2.0", "id": 7, "method": "Streams.Follow", "params": {"path": path}}),
    );
    let mut text = String::new();
    while !text.contains("first\n") {
        let m = follower.recv();
        assert_eq!(m["method"], "Streams.Entries", "no error for an announced stream: {m}");
        for e in m["params"]["entries"].as_array().unwrap() {
            text.push_str(e["text"].as_str().unwrap());
        }
    }
    std::fs::File::create(&go).unwrap();
    follower.stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let done = loop {
        let m = follower.recv();
        if m["id"] == 7 {
            break m;
        }
        for e in m["params"]["entries"].as_array().unwrap() {
            text.push_str(e["text"].as_str().unwrap());
        }
    };
    assert_eq!(done["result"]["terminal"], true, "{done}");
    assert_eq!(text, "first\nsecond\n");
    runner.stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let r = loop {
        let m = runner.recv();
        if m["id"] == 1 {
            break m;
        }
    };
    assert_eq!(r["result"]["exitCode"], 0, "{r}");
    // A path nobody announced is still an error, at once.
    let r = follower.request(json!(8), "Streams.Follow", json!({"path": "game/live/+/nope"}));
    assert_eq!(r["error"]["code"], -32602, "{r}");
}

#[test]
fn help_shows_the_buffering_defaults() {
    let home = TestHome::new();
    let out = home.run(&["run", "--help"]);
    let help = stdout(&out);
    assert!(
        help.contains("5s for the logdog output") && help.contains("250ms for the local outputs"),
        "{help}"
    );
}
