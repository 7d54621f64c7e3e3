//! Following a stream to its end: a writer killed mid-stream (SIGKILL) leaves a stream that
//! `logs tail -f` and `Streams.Follow` end as cut short (`abandoned`) instead of waiting forever,
//! while a live but idle writer's stream is followed on; and `Streams.Follow`'s edges: `fromIndex`,
//! more entries than one reply holds, `Operation.Cancel`, and binary and datagram entries.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

use crate::streaming::{Serve, handshake, ls, wait_exit};
use crate::util::{DaemonProc, RpcClient, TestHome};

/// How long a follower may take to notice a dead writer (it polls every 20-200 ms).
const NOTICE: Duration = Duration::from_secs(10);

/// `logs tail -f` on `path`, its stdout lines arriving on the receiver.
fn tail_f(home: &TestHome, path: &str) -> (Child, mpsc::Receiver<String>) {
    let mut tail = home
        .butler()
        .args(["logs", "tail", "-f", "-n", "10", "--poll-interval", "20ms", path])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let out = tail.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            if tx.send(line.unwrap()).is_err() {
                return;
            }
        }
    });
    (tail, rx)
}

/// Waits until the store holds `n` entries of the stream at `path`.
fn wait_entries(home: &TestHome, path: &str, n: u64) {
    let start = Instant::now();
    loop {
        let streams = ls(home, "local");
        if streams.iter().any(|s| s["path"] == path && s["entries"].as_u64() >= Some(n)) {
            return;
        }
        assert!(start.elapsed() < NOTICE, "{path} never held {n} entries: {streams:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Text of the `Streams.Entries` notifications up to the reply to `id`, and the reply.
fn follow_to_end(c: &mut RpcClient, id: u64) -> (Vec<Value>, Value) {
    let mut entries = Vec::new();
    loop {
        let m = c.recv();
        if m["id"] == id {
            return (entries, m);
        }
        if m["method"] == "Streams.Entries" {
            entries.extend(m["params"]["entries"].as_array().unwrap().iter().cloned());
        }
    }
}

fn text_of(entries: &[Value]) -> String {
    entries.iter().map(|e| e["text"].as_str().unwrap()).collect()
}

fn stderr_of(child: &mut Child) -> String {
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    err
}

#[test]
fn a_killed_serve_leaves_a_stream_that_followers_end_as_cut_short() {
    let home = TestHome::new();
    let d = DaemonProc::start(&home, &["--keep-alive"]);
    let mut serve = Serve::start(&home, &["--prefix", "killed"]);
    let mut w = serve.connect();
    w.write_all(&handshake(r#"{"name":"out"}"#)).unwrap();
    w.write_all(b"hello\n").unwrap();
    wait_entries(&home, "killed/+/out", 1);

    let (mut tail, lines) = tail_f(&home, "killed/+/out");
    assert_eq!(lines.recv_timeout(NOTICE).unwrap(), "hello");
    let mut follower = d.client();
    follower.send(&json!({"jsonrpc": "2.0", "id": 3, "method": "Streams.Follow",
        "params": {"path": "killed/+/out"}}));
    let m = follower.recv();
    assert_eq!(m["method"], "Streams.Entries", "{m}");
    assert_eq!(text_of(m["params"]["entries"].as_array().unwrap()), "hello\n");

    // The writer is alive, only idle: nobody ends its stream (a window for a false "dead", in
    // which tail -f polls some 25 times).
    std::thread::sleep(Duration::from_millis(500));
    assert!(tail.try_wait().unwrap().is_none(), "tail -f ended a live writer's stream");
    let s = ls(&home, "local");
    assert_eq!((s[0]["terminal"].clone(), s[0]["abandoned"].clone()), (json!(false), json!(false)));

    serve.child.kill().unwrap(); // SIGKILL: no flush, no terminal entry
    serve.child.wait().unwrap();
    let status = wait_exit(&mut tail, NOTICE);
    let err = stderr_of(&mut tail);
    assert_eq!(status.code(), Some(250), "{err}");
    assert!(err.contains("killed/+/out was cut short"), "{err}");
    follower.stream.set_read_timeout(Some(NOTICE)).unwrap();
    let (rest, done) = follow_to_end(&mut follower, 3);
    assert!(rest.is_empty(), "{rest:?}");
    assert_eq!(done["result"], json!({"nextIndex": 1, "terminal": false, "abandoned": true}));
    // The listing says so too, before any writer has marked it.
    let s = ls(&home, "local");
    assert_eq!((s[0]["terminal"].clone(), s[0]["abandoned"].clone()), (json!(false), json!(true)));

    // The next writer to start records it and clears the dead writer's lease.
    let db = home.path().join("butler.db");
    let leases = home.path().join("butler.db.writers");
    assert_eq!(std::fs::read_dir(&leases).unwrap().count(), 1, "the killed serve's lease");
    let next = Serve::start(&home, &["--prefix", "next"]);
    let conn = butler::db::open(&butler::db::DbPath::File(db)).unwrap();
    let marked: bool = conn
        .query_row("SELECT abandoned FROM log_streams WHERE prefix = 'killed'", [], |r| r.get(0))
        .unwrap();
    assert!(marked);
    assert_eq!(std::fs::read_dir(&leases).unwrap().count(), 1, "only the new serve's lease");
    next.stop();
    assert_eq!(std::fs::read_dir(&leases).unwrap().count(), 0, "a clean exit leaves no lease");
}

#[test]
fn a_live_writer_that_stays_silent_is_followed_until_it_writes_and_ends() {
    let home = TestHome::new();
    let serve = Serve::start(&home, &["--prefix", "slow"]);
    let mut w = serve.connect();
    w.write_all(&handshake(r#"{"name":"out"}"#)).unwrap();
    w.write_all(b"one\n").unwrap();
    let (mut tail, lines) = tail_f(&home, "slow/+/out");
    assert_eq!(lines.recv_timeout(NOTICE).unwrap(), "one");
    // Silent for a while, as a slow writer is; tail -f must still be following after it.
    std::thread::sleep(Duration::from_millis(700));
    assert!(tail.try_wait().unwrap().is_none(), "tail -f gave up on a live writer");
    w.write_all(b"two\n").unwrap();
    assert_eq!(lines.recv_timeout(NOTICE).unwrap(), "two");
    drop(w);
    serve.stop();
    let status = wait_exit(&mut tail, NOTICE);
    assert!(status.success(), "a stream that ended ends tail -f with 0: {}", stderr_of(&mut tail));
}

/// A served stream holding `entries`, and a daemon to ask about it.
fn served(home: &TestHome, handshake_json: &str, payload: &[u8], entries: u64) -> DaemonProc {
    let serve = Serve::start(home, &["--prefix", "f"]);
    serve.send(handshake_json, payload);
    serve.stop();
    let name: Value = serde_json::from_str(handshake_json).unwrap();
    wait_entries(home, &format!("f/+/{}", name["name"].as_str().unwrap()), entries);
    DaemonProc::start(home, &["--keep-alive"])
}

#[test]
fn streams_follow_pages_past_a_thousand_entries_and_starts_at_from_index() {
    let home = TestHome::new();
    // 2500 datagrams, each its own entry: "d0".."d2499".
    let mut payload = Vec::new();
    for i in 0..2500 {
        let d = format!("d{i}");
        payload.push(d.len() as u8);
        payload.extend_from_slice(d.as_bytes());
    }
    let d = served(&home, r#"{"name":"many","type":"datagram"}"#, &payload, 2500);
    let mut c = d.client();
    let b64 = |e: &Value| {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(e["data"].as_str().unwrap_or_else(|| panic!("no data: {e}")))
            .unwrap();
        String::from_utf8(raw).unwrap()
    };
    c.send(&json!({"jsonrpc": "2.0", "id": 1, "method": "Streams.Follow",
        "params": {"path": "f/+/many"}}));
    let mut replies = 0;
    let mut got = Vec::new();
    let done = loop {
        let m = c.recv();
        if m["id"] == 1 {
            break m;
        }
        let entries = m["params"]["entries"].as_array().unwrap();
        assert!(entries.len() <= 1000, "one notification holds at most 1000 entries");
        replies += 1;
        got.extend(entries.iter().map(|e| (e["streamIndex"].as_u64().unwrap(), b64(e))));
    };
    assert_eq!(done["result"], json!({"nextIndex": 2500, "terminal": true, "abandoned": false}));
    assert_eq!(replies, 3);
    let want: Vec<(u64, String)> = (0..2500).map(|i| (i, format!("d{i}"))).collect();
    assert_eq!(got, want);

    // From the middle: only what follows, and nothing at all from the end.
    c.send(&json!({"jsonrpc": "2.0", "id": 2, "method": "Streams.Follow",
        "params": {"path": "f/+/many", "fromIndex": 2498}}));
    let (entries, done) = follow_to_end(&mut c, 2);
    let idx: Vec<u64> = entries.iter().map(|e| e["streamIndex"].as_u64().unwrap()).collect();
    assert_eq!(idx, [2498, 2499]);
    assert_eq!(done["result"]["nextIndex"], 2500);
    c.send(&json!({"jsonrpc": "2.0", "id": 3, "method": "Streams.Follow",
        "params": {"path": "f/+/many", "fromIndex": 9999}}));
    let (entries, done) = follow_to_end(&mut c, 3);
    assert!(entries.is_empty());
    assert_eq!(done["result"]["nextIndex"], 9999, "{done}");
}

#[test]
fn streams_follow_sends_binary_as_base64_and_fragments_as_partial() {
    let home = TestHome::new();
    let bin: Vec<u8> = (0..=255u8).collect();
    let serve = Serve::start(&home, &["--prefix", "f"]);
    serve.send(r#"{"name":"bin","type":"binary"}"#, &bin);
    // A datagram over the store's entry size is stored as fragments.
    let big = vec![b'x'; 3 << 20];
    let mut framed = Vec::new();
    let mut n = big.len() as u64;
    while n >= 0x80 {
        framed.push((n as u8) | 0x80);
        n >>= 7;
    }
    framed.push(n as u8);
    framed.extend_from_slice(&big);
    serve.send(r#"{"name":"big","type":"datagram"}"#, &framed);
    serve.stop();
    let d = DaemonProc::start(&home, &["--keep-alive"]);
    let mut c = d.client();
    let decode =
        |e: &Value| base64::engine::general_purpose::STANDARD.decode(e["data"].as_str().unwrap());

    c.send(&json!({"jsonrpc": "2.0", "id": 1, "method": "Streams.Follow",
        "params": {"path": "f/+/bin"}}));
    let (entries, done) = follow_to_end(&mut c, 1);
    assert_eq!(done["result"]["terminal"], true, "{done}");
    let got: Vec<u8> = entries.iter().flat_map(|e| decode(e).unwrap()).collect();
    assert_eq!(got, bin);
    assert!(entries.iter().all(|e| e.get("text").is_none()), "binary is never text");

    c.send(&json!({"jsonrpc": "2.0", "id": 2, "method": "Streams.Follow",
        "params": {"path": "f/+/big"}}));
    let (entries, done) = follow_to_end(&mut c, 2);
    assert_eq!(done["result"]["terminal"], true, "{done}");
    let mut whole = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let p = &e["partial"];
        assert_eq!(p["index"], i, "{p}");
        assert_eq!(p["size"], big.len(), "{p}");
        assert_eq!(p["last"], i + 1 == entries.len(), "{p}");
        whole.extend(decode(e).unwrap());
    }
    assert!(entries.len() > 1, "a 3 MiB datagram is fragmented");
    assert!(whole == big, "the fragments join to the datagram");
}

#[test]
fn streams_follow_of_an_open_stream_is_cancelled_by_operation_cancel() {
    let home = TestHome::new();
    let serve = Serve::start(&home, &["--prefix", "c"]);
    let mut w = serve.connect();
    w.write_all(&handshake(r#"{"name":"open"}"#)).unwrap();
    w.write_all(b"x\n").unwrap();
    wait_entries(&home, "c/+/open", 1);
    let d = DaemonProc::start(&home, &["--keep-alive"]);

    let mut a = d.client();
    a.send(&json!({"jsonrpc": "2.0", "id": 1, "method": "Streams.Follow",
        "params": {"path": "c/+/open", "id": "follow-1"}}));
    assert_eq!(a.recv()["method"], "Streams.Entries");
    let r = d.client().request(json!(1), "Operation.Cancel", json!({"id": "follow-1"}));
    assert_eq!(r["result"], json!({"didCancel": true}));
    let (_, done) = follow_to_end(&mut a, 1);
    assert_eq!(done["error"]["code"], 499, "{done}");

    drop(w);
    serve.stop();
}

#[test]
fn a_killed_daemon_leaves_its_process_run_streams_cut_short() {
    let home = TestHome::new();
    let mut d = DaemonProc::start(&home, &["--keep-alive"]);
    let mut c = d.client();
    c.send(&json!({"jsonrpc": "2.0", "id": 1, "method": "Process.Run", "params": {
        "command": ["sh", "-c", "echo started; sleep 30"], "prefix": "game",
    }}));
    let child = c.recv()["params"]["pid"].as_u64().unwrap() as libc::pid_t;
    wait_entries(&home, "game/+/stdout", 1);
    let s = ls(&home, "local");
    assert!(s.iter().all(|s| s["abandoned"] == false), "{s:?}");
    d.child.kill().unwrap();
    d.child.wait().unwrap();
    // SAFETY: the test's own grandchild, which the killed daemon leaves behind.
    unsafe { libc::kill(child, libc::SIGKILL) };
    let (mut tail, lines) = tail_f(&home, "game/+/stdout");
    assert_eq!(lines.recv_timeout(NOTICE).unwrap(), "started");
    assert_eq!(wait_exit(&mut tail, NOTICE).code(), Some(250), "{}", stderr_of(&mut tail));
    let s = ls(&home, "local");
    assert!(s.iter().all(|s| s["abandoned"] == true && s["terminal"] == false), "{s:?}");
}
