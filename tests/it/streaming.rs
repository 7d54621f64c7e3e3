//! Log streaming end to end: the real binary, real unix sockets, the real SQLite store.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::{TestHome, stderr, stdout};

/// Handshake bytes written by hand: magic, uvarint length, JSON.
pub(crate) fn handshake(json: &str) -> Vec<u8> {
    let mut v = b"BTLR1\x1e".to_vec();
    let mut n = json.len() as u64;
    while n >= 0x80 {
        v.push((n as u8) | 0x80);
        n >>= 7;
    }
    v.push(n as u8);
    v.extend_from_slice(json.as_bytes());
    v
}

pub(crate) fn signal(child: &Child, sig: &str) {
    let ok =
        Command::new("kill").args([&format!("-{sig}"), &child.id().to_string()]).status().unwrap();
    assert!(ok.success());
}

/// Waits for a child with a deadline (a hang is a failure, not a stuck test run).
pub(crate) fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The first line `child` prints on stdout; a child that prints nothing within `limit` is killed,
/// so a wedged start fails the test instead of stalling the run.
pub(crate) fn first_line_within(child: &mut Child, limit: Duration) -> String {
    let stdout = child.stdout.take().expect("stdout piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    match rx.recv_timeout(limit) {
        Ok(line) => line,
        Err(_) => {
            let _ = child.kill();
            panic!("no line on stdout within {limit:?}");
        }
    }
}

/// A running `butler serve`.
pub(crate) struct Serve {
    pub child: Child,
    pub sock: PathBuf,
    pub stderr_path: PathBuf,
}

/// A test that fails before `stop` must not leave a `butler serve` running.
impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serve {
    pub(crate) fn start(home: &TestHome, extra: &[&str]) -> Serve {
        let sock = home.path().join("s.sock");
        let stderr_path = home.path().join("serve.stderr");
        let mut cmd = home.butler();
        cmd.args(["serve", "--streamserver-uri", &format!("unix:{}", sock.display())]);
        // Generous, so a writer preempted between connect and handshake on a loaded machine still
        // gets its stream; the test of the timeout itself passes a short one.
        if !extra.contains(&"--handshake-timeout") {
            cmd.args(["--handshake-timeout", "5s"]);
        }
        let mut child = cmd
            .args(extra)
            .env("BUTLER_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap();
        let line = first_line_within(&mut child, Duration::from_secs(30));
        assert_eq!(line.trim(), format!("unix:{}", sock.display()), "serve prints its address");
        Serve { child, sock, stderr_path }
    }

    pub(crate) fn connect(&self) -> UnixStream {
        UnixStream::connect(&self.sock).unwrap()
    }

    /// Opens a stream with raw handshake bytes and writes `payload`, then closes.
    pub(crate) fn send(&self, json: &str, payload: &[u8]) {
        let mut s = self.connect();
        s.write_all(&handshake(json)).unwrap();
        s.write_all(payload).unwrap();
    }

    /// SIGTERM, then expects a flush and exit 0 with the socket file gone.
    pub(crate) fn stop(mut self) -> String {
        signal(&self.child, "TERM");
        let status = wait_exit(&mut self.child, Duration::from_secs(10));
        let err = std::fs::read_to_string(&self.stderr_path).unwrap_or_default();
        assert_eq!(status.code(), Some(0), "serve exits 0 on SIGTERM; stderr: {err}");
        assert!(!self.sock.exists(), "socket file removed on exit");
        err
    }
}

pub(crate) fn ls(home: &TestHome, project: &str) -> Vec<Value> {
    let out = home.run(&["--json", "logs", "ls", "--project", project]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: Value = serde_json::from_str(stdout(&out).lines().last().unwrap()).unwrap();
    v["value"]["streams"].as_array().unwrap().clone()
}

pub(crate) fn cat(home: &TestHome, project: &str, path: &str) -> Vec<u8> {
    let out = home.run(&["logs", "cat", "--project", project, path]);
    assert!(out.status.success(), "cat {path}: {}", stderr(&out));
    out.stdout
}

fn find<'a>(streams: &'a [Value], name: &str) -> Option<&'a Value> {
    streams.iter().find(|s| s["name"] == name)
}

#[test]
fn serve_accepts_all_three_stream_types_and_stores_exact_bytes() {
    let home = TestHome::new();
    let serve =
        Serve::start(&home, &["--prefix", "pre", "--tag", "g=global", "--tag", "over=global"]);
    let text = b"one\r\ntwo\nthree \xff\xfe partial\r".to_vec();
    serve.send(
        r#"{"name":"t/text","timestamp":"2015-05-07T01:29:51Z","tags":{"over":"mine"}}"#,
        &text,
    );
    let bin: Vec<u8> = (0..50_000u32).map(|i| (i * 7) as u8).collect();
    serve.send(r#"{"name":"bin","type":"binary","contentType":"application/x-thing"}"#, &bin);
    // Two datagrams (one empty) then a third, framed as recordio.
    serve.send(r#"{"name":"dg","type":"datagram"}"#, b"\x03abc\x00\x05hello");
    serve.send(r#"{"name":"empty"}"#, b"");
    serve.stop();

    let streams = ls(&home, "local");
    assert_eq!(streams.len(), 4, "{streams:?}");
    let t = find(&streams, "t/text").unwrap();
    assert_eq!(t["path"], "pre/+/t/text");
    assert_eq!(t["type"], "text");
    assert_eq!(t["contentType"], "text/plain; charset=utf-8");
    assert_eq!(t["timestamp"], "2015-05-07T01:29:51Z");
    assert_eq!(t["tags"]["g"], "global");
    assert_eq!(t["tags"]["over"], "mine", "stream tags win over --tag");
    assert_eq!(t["terminal"], true);
    assert_eq!(find(&streams, "bin").unwrap()["contentType"], "application/x-thing");
    assert_eq!(find(&streams, "dg").unwrap()["contentType"], "application/x-logdog-datagram");
    let empty = find(&streams, "empty").unwrap();
    assert_eq!(
        (empty["terminal"].clone(), empty["entries"].clone()),
        (Value::Bool(true), Value::from(0))
    );

    assert_eq!(cat(&home, "local", "pre/+/t/text"), text);
    assert_eq!(cat(&home, "local", "pre/+/bin"), bin);
    assert_eq!(cat(&home, "local", "pre/+/dg"), b"\x03abc\x00\x05hello");
    assert_eq!(cat(&home, "local", "pre/+/empty"), b"");
}

#[test]
fn handshake_keys_are_case_insensitive_and_legacy_keys_ignored() {
    let home = TestHome::new();
    let serve = Serve::start(&home, &["--prefix", "pre"]);
    serve.send(
        r#"{"NAME":"py","Type":"binary","CONTENTTYPE":"x/y","tee":"stdout","timeout":"5s","deadline":"1s","binaryFileExtension":"txt","ioKeepAlive":true,"future":{"a":1}}"#,
        b"data",
    );
    serve.stop();
    let streams = ls(&home, "local");
    let s = find(&streams, "py").expect("stream registered");
    assert_eq!((s["type"].as_str(), s["contentType"].as_str()), (Some("binary"), Some("x/y")));
    assert_eq!(cat(&home, "local", "pre/+/py"), b"data");
}

#[test]
fn every_bad_handshake_is_refused_without_a_reply() {
    let home = TestHome::new();
    let serve = Serve::start(&home, &["--prefix", "pre"]);
    serve.send(r#"{"name":"dup"}"#, b"first\n");
    // "dup" must be registered before its duplicate comes.
    let start = Instant::now();
    while ls(&home, "local").is_empty() {
        assert!(start.elapsed() < Duration::from_secs(10), "the first stream never registered");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut big_frame = b"BTLR1\x1e".to_vec();
    big_frame.extend_from_slice(&[0x81, 0x80, 0x40]); // 1 MiB + 1
    let mut overflow = b"BTLR1\x1e".to_vec();
    overflow.extend_from_slice(&[0xff; 11]);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("bad magic", b"BTLR2\x1e\x02{}".to_vec()),
        ("varint overflow", overflow),
        ("frame over 1 MiB", big_frame),
        ("not JSON", handshake("{nope")),
        ("JSON array", handshake(r#"["name"]"#)),
        ("no name", handshake(r#"{"type":"text"}"#)),
        ("bad name", handshake(r#"{"name":"a//b"}"#)),
        ("name starting with _", handshake(r#"{"name":"_x"}"#)),
        ("name over 4096 bytes", handshake(&format!(r#"{{"name":"{}"}}"#, "a".repeat(4097)))),
        ("bad type", handshake(r#"{"name":"t1","type":"video"}"#)),
        ("bad tag key", handshake(r#"{"name":"t2","tags":{"a b":"v"}}"#)),
        (
            "tag key over 64",
            handshake(&format!(r#"{{"name":"t3","tags":{{"{}":"v"}}}}"#, "k".repeat(65))),
        ),
        (
            "tag value over 4096",
            handshake(&format!(r#"{{"name":"t4","tags":{{"k":"{}"}}}}"#, "v".repeat(4097))),
        ),
        ("bad timestamp", handshake(r#"{"name":"t5","timestamp":"yesterday"}"#)),
        ("duplicate name", handshake(r#"{"name":"dup"}"#)),
    ];
    for (what, bytes) in &cases {
        let mut s = serve.connect();
        s.write_all(bytes).unwrap();
        let _ = s.write_all(b"payload that must not be stored\n");
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut reply = Vec::new();
        let r = s.read_to_end(&mut reply);
        assert!(reply.is_empty(), "{what}: the server wrote {reply:?}");
        assert!(
            r.is_ok() || r.as_ref().is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "{what}: connection closed, got {r:?}"
        );
    }
    // Still serving after all that.
    serve.send(r#"{"name":"after"}"#, b"ok\n");
    let err = serve.stop();
    let streams = ls(&home, "local");
    let names: Vec<&str> = streams.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.contains(&"dup") && names.contains(&"after"));
    assert_eq!(cat(&home, "local", "pre/+/dup"), b"first\n");
    for needle in ["magic number mismatch", "overflows", "exceeds the maximum", "already used"] {
        assert!(err.contains(needle), "stderr explains {needle:?}: {err}");
    }
}

#[test]
fn a_client_that_never_finishes_its_handshake_is_dropped_and_does_not_block_shutdown() {
    let home = TestHome::new();
    let serve = Serve::start(&home, &["--prefix", "pre", "--handshake-timeout", "300ms"]);
    let mut half = serve.connect();
    half.write_all(b"BTLR1\x1e\x40{\"na").unwrap();
    half.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 1];
    let n = half.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "dropped without a reply");
    assert!(start.elapsed() < Duration::from_secs(3), "dropped after the handshake timeout");
    // A second silent client, still connected when the signal comes.
    let _silent = serve.connect();
    let start = Instant::now();
    let err = serve.stop();
    assert!(start.elapsed() < Duration::from_secs(3), "shutdown not held up");
    assert!(err.contains("did not finish its handshake"), "{err}");
}

#[test]
fn stream_command_uploads_a_file_and_stdin() {
    let home = TestHome::new();
    let file = home.path().join("in.txt");
    let data = b"line 1\nline 2\r\nno newline at the end \xe2\x82".to_vec();
    std::fs::write(&file, &data).unwrap();
    let out = home.run(&["stream", "--prefix", "up", "--source", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Upstream's MakeStreamName("file:", path): disallowed characters become `_`.
    let sanitized: String = file
        .display()
        .to_string()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || ".:_-".contains(c) { c } else { '_' })
        .collect();
    let streams = ls(&home, "local");
    assert_eq!(streams.len(), 1);
    let got_name = streams[0]["name"].as_str().unwrap();
    assert_eq!(got_name, format!("file:{sanitized}"));
    assert_eq!(cat(&home, "local", &format!("up/+/{got_name}")), data);

    let mut child = home
        .butler()
        .args([
            "-project",
            "other",
            "-prefix",
            "up",
            "stream",
            "-stream",
            "name=in/bin,type=binary,tag=k=v",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    child.stdin.take().unwrap().write_all(&payload).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let streams = ls(&home, "other");
    assert_eq!(streams[0]["tags"]["k"], "v");
    assert_eq!(cat(&home, "other", "up/+/in/bin"), payload);
}

/// Every valid stream name gets its own file: `a` beside `a/b`, and segments longer than a file
/// name may be; one stream that could not be written never takes the others' data along (S7).
#[test]
fn the_directory_output_keeps_every_valid_name() {
    let home = TestHome::new();
    let dir = home.path().join("out");
    let spec = format!("directory,path={}", dir.display());
    let serve = Serve::start(&home, &["--output", &spec, "--prefix", "pre"]);
    let long = "l".repeat(300);
    let names = ["a", "a/b", "z", &long, "zz"];
    for name in names {
        serve.send(&format!(r#"{{"name":"{name}"}}"#), format!("data of {name}\n").as_bytes());
    }
    serve.stop();
    assert_eq!(std::fs::read(dir.join("a")).unwrap(), b"data of a\n");
    assert_eq!(std::fs::read(dir.join("a+/b")).unwrap(), b"data of a/b\n");
    assert_eq!(std::fs::read(dir.join("z")).unwrap(), b"data of z\n");
    assert_eq!(std::fs::read(dir.join("zz")).unwrap(), b"data of zz\n");
    let long_file: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("lll") && n.contains('~'))
        .collect();
    assert_eq!(long_file.len(), 1, "{long_file:?}");
    assert_eq!(
        std::fs::read(dir.join(&long_file[0])).unwrap(),
        format!("data of {long}\n").as_bytes()
    );
}

#[test]
fn directory_output_is_lossless() {
    let home = TestHome::new();
    let dir = home.path().join("out");
    let spec = format!("directory,path={}", dir.display());
    let serve = Serve::start(&home, &["--output", &spec, "--prefix", "pre"]);
    let text = b"a\nb\r\npartial \xff".to_vec();
    serve.send(r#"{"name":"logs/text"}"#, &text);
    serve.send(r#"{"name":"logs/dg","type":"datagram"}"#, b"\x02hi\x00\x03abc");
    serve.stop();
    assert_eq!(std::fs::read(dir.join("logs+/text")).unwrap(), text);
    assert_eq!(std::fs::read(dir.join("logs+/_00000.dg")).unwrap(), b"hi");
    assert_eq!(std::fs::read(dir.join("logs+/_00001.dg")).unwrap(), b"");
    assert_eq!(std::fs::read(dir.join("logs+/_00002.dg")).unwrap(), b"abc");
    let meta: Value =
        serde_json::from_slice(&std::fs::read(dir.join("logs+/.meta.text")).unwrap()).unwrap();
    assert_eq!(meta["name"], "logs/text");
    assert_eq!(meta["terminal"], true);
    assert_eq!(meta["bytes"], text.len());
}

#[test]
fn bad_flags_exit_2() {
    let home = TestHome::new();
    for args in [
        &["serve", "--project", "Bad Project"][..],
        &["serve", "--prefix", "a//b"],
        &["serve", "--output", "bogus"],
        &["serve", "--output", "directory"],
        &["serve", "--output-max-buffer-age", "soon"],
        &["serve", "--streamserver-uri", "tcp:1234"],
        &["stream", "--stream", "name=_bad"],
        &["run", "--stdout", "type=video", "--", "true"],
        &["run"],
        &["logs", "cat", "not-a-path"],
        &["serve", "--streamserver-uri", &format!("unix:/tmp/{}", "x".repeat(120))],
    ] {
        let out = home.run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).trim().is_empty());
    }
}

#[test]
fn bad_stream_server_addresses_say_what_is_wrong() {
    let home = TestHome::new();
    let long = format!("unix:/tmp/{}", "x".repeat(120));
    let pipe_name = format!("net.pipe:{}", "p".repeat(260));
    for (uri, says) in [
        ("tcp:1234", "expected unix:<path> or net.pipe:<name>"),
        ("unix:", "expected unix:<path> or net.pipe:<name>"),
        ("net.pipe:logdog_butler.1.0", "net.pipe stream servers do not exist on this platform"),
        (&long, "more than 104"),
        (&pipe_name, "more than 256"),
    ] {
        for cmd in ["serve", "run"] {
            let out = home.run(
                &[cmd, "--streamserver-uri", uri, "--", "true"]
                    [..if cmd == "serve" { 3 } else { 5 }],
            );
            assert_eq!(out.status.code(), Some(2), "{cmd} {uri}: {}", stderr(&out));
            assert!(stderr(&out).contains(says), "{cmd} {uri}: {}", stderr(&out));
        }
    }
}

#[test]
fn runtime_errors_exit_250() {
    let home = TestHome::new();
    let out = home.run(&["logs", "cat", "nothing/+/here"]);
    assert_eq!(out.status.code(), Some(250), "{}", stderr(&out));
    assert!(stderr(&out).contains("no stream nothing/+/here"));
    let out = home.run(&["stream", "--source", "/nonexistent/file"]);
    assert_eq!(out.status.code(), Some(250), "{}", stderr(&out));
    // A prefix that already holds streams in the store is refused, as the Coordinator would.
    let file = home.path().join("f");
    std::fs::write(&file, "x").unwrap();
    let args = ["-prefix", "same", "stream", "--source", file.to_str().unwrap()];
    assert_eq!(home.run(&args).status.code(), Some(0));
    let out = home.run(&args);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("already holds streams"));
}

#[test]
fn logs_tail_shows_the_last_lines_and_follows() {
    let home = TestHome::new();
    let serve = Serve::start(&home, &["--prefix", "pre", "--output-max-buffer-age", "20ms"]);
    let mut s = serve.connect();
    s.write_all(&handshake(r#"{"name":"live"}"#)).unwrap();
    s.write_all(b"1\n2\n3\n4\n").unwrap();
    // Wait for the first bundle to land (the stream itself is in the store from its opening).
    let start = Instant::now();
    while ls(&home, "local").first().is_none_or(|s| s["bytes"] != 8) {
        assert!(start.elapsed() < Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = home.run(&["logs", "tail", "-n", "2", "pre/+/live"]);
    assert_eq!(stdout(&out), "3\n4\n");
    let mut follow = home
        .butler()
        .args(["logs", "tail", "-f", "-n", "1", "--poll-interval", "20ms", "pre/+/live"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Write only once the follower has printed its last line, so that line is known.
    let mut out = BufReader::new(follow.stdout.take().unwrap());
    let first = {
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut line = String::new();
            out.read_line(&mut line).unwrap();
            tx.send(line).unwrap();
            let mut rest = String::new();
            out.read_to_string(&mut rest).unwrap();
            rest
        });
        let first =
            rx.recv_timeout(Duration::from_secs(10)).expect("tail -f printed its last line");
        (first, reader)
    };
    s.write_all(b"5\nlast").unwrap();
    drop(s);
    let status = wait_exit(&mut follow, Duration::from_secs(10));
    assert!(status.success());
    let got = first.0 + &first.1.join().unwrap();
    assert_eq!(got, "4\n5\nlast", "tail -f ends when the stream does");
    serve.stop();
}

/// `butler run` with a shell child.
fn run_butler(home: &TestHome, args: &[&str]) -> std::process::Output {
    home.butler().args(args).output().unwrap()
}

#[test]
fn run_captures_stdout_stderr_and_streams_the_child_opens_itself() {
    let home = TestHome::new();
    let script = home.path().join("child.py");
    // What the luci-py client sends: sorted keys, `type` always, no timestamp.
    std::fs::write(
        &script,
        r#"
import json, os, socket, sys
addr = os.environ["LOGDOG_STREAM_SERVER_PATH"]
assert addr.startswith("unix:"), addr
assert os.environ["LOGDOG_STREAM_PREFIX"] == "runpre"
assert os.environ["LOGDOG_STREAM_PROJECT"] == "local"
def open_stream(name, kind):
    s = socket.socket(socket.AF_UNIX)
    s.connect(addr[len("unix:"):])
    j = json.dumps({"name": name, "type": kind}, sort_keys=True).encode()
    n = len(j); hdr = b""
    while n >= 0x80:
        hdr += bytes([(n & 0x7f) | 0x80]); n >>= 7
    s.sendall(b"BTLR1\x1e" + hdr + bytes([n]) + j)
    return s
s = open_stream("own/text", "text")
s.sendall(b"from python\n")
s.close()
d = open_stream("own/dg", "datagram")
d.sendall(b"\x02hi")
d.close()
sys.stdout.write("to stdout\n"); sys.stdout.flush()
sys.stderr.write("to stderr\n"); sys.stderr.flush()
# A grandchild that outlives its parent and writes later.
if os.fork() == 0:
    import time
    time.sleep(0.3)
    g = open_stream("grandchild", "text")
    g.sendall(b"late\n")
    g.close()
    os._exit(0)
sys.exit(3)
"#,
    )
    .unwrap();
    let result = home.path().join("result.json");
    let out = run_butler(
        &home,
        &[
            "-prefix",
            "runpre",
            "run",
            "-stdout",
            "name=std/out",
            "--stderr",
            "name=std/err",
            "--result-path",
            result.to_str().unwrap(),
            "--",
            "python3",
            script.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(3), "the child's exit code; stderr: {}", stderr(&out));
    assert!(out.stdout.is_empty(), "named stdout is captured, not passed through");
    assert_eq!(cat(&home, "local", "runpre/+/std/out"), b"to stdout\n");
    assert_eq!(cat(&home, "local", "runpre/+/std/err"), b"to stderr\n");
    assert_eq!(cat(&home, "local", "runpre/+/own/text"), b"from python\n");
    assert_eq!(cat(&home, "local", "runpre/+/own/dg"), b"\x02hi");
    assert_eq!(
        cat(&home, "local", "runpre/+/grandchild"),
        b"late\n",
        "waits for grandchildren's streams"
    );
    let r: Value = serde_json::from_slice(&std::fs::read(&result).unwrap()).unwrap();
    assert_eq!(r["return_code"], 3);
    assert!(r["command"][0].as_str().unwrap().ends_with("/python3"), "{r}");
    assert_eq!(r["command"][1], script.to_str().unwrap());
}

#[test]
fn run_passes_unnamed_output_through_and_honours_chdir_and_json_args() {
    let home = TestHome::new();
    let args = home.path().join("args.json");
    std::fs::write(&args, r#"["sh", "-c", "pwd; echo err >&2; exit 0"]"#).unwrap();
    let out =
        run_butler(&home, &["run", "--chdir", "/", "--json-args-path", args.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "/\n");
    assert!(stderr(&out).contains("err"));
    let out = run_butler(&home, &["run", "--json-args-path", args.to_str().unwrap(), "--", "true"]);
    assert_eq!(out.status.code(), Some(2));
    let out = run_butler(&home, &["run", "--", "/nonexistent/program"]);
    assert_eq!(out.status.code(), Some(250), "{}", stderr(&out));
    assert!(stderr(&out).contains("cannot start"));
}

#[test]
fn run_reports_death_by_signal_as_128_plus_n() {
    let home = TestHome::new();
    let out = run_butler(&home, &["run", "--", "sh", "-c", "kill -9 $$"]);
    assert_eq!(out.status.code(), Some(128 + 9), "{}", stderr(&out));
}

#[test]
fn run_forwards_sigterm_and_kills_after_the_grace_period() {
    let home = TestHome::new();
    let ready = home.path().join("ready");
    // A child that handles TERM itself: exits 7.
    let script =
        format!("trap 'exit 7' TERM; touch {}; while :; do sleep 0.05; done", ready.display());
    let mut child = home
        .butler()
        .args(["run", "--stdout", "name=out", "--", "sh", "-c", &script])
        .spawn()
        .unwrap();
    wait_for_file(&ready);
    signal(&child, "TERM");
    let status = wait_exit(&mut child, Duration::from_secs(10));
    assert_eq!(status.code(), Some(7), "the child's own exit code after forwarding");

    // A child that ignores TERM: SIGKILL after the grace period.
    let ready2 = home.path().join("ready2");
    let script =
        format!("trap '' TERM INT; touch {}; while :; do sleep 0.05; done", ready2.display());
    let mut child = home
        .butler()
        .args(["-prefix", "p2", "run", "--kill-grace", "200ms", "--", "sh", "-c", &script])
        .spawn()
        .unwrap();
    wait_for_file(&ready2);
    let start = Instant::now();
    signal(&child, "INT");
    let status = wait_exit(&mut child, Duration::from_secs(10));
    assert_eq!(status.code(), Some(128 + 9));
    assert!(start.elapsed() < Duration::from_secs(5));
}

pub(crate) fn wait_for_file(p: &Path) {
    let start = Instant::now();
    while !p.exists() {
        assert!(start.elapsed() < Duration::from_secs(10), "{} never appeared", p.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_partial_line_goes_out_after_the_buffer_age_while_the_stream_is_open() {
    let home = TestHome::new();
    let serve = Serve::start(&home, &["--prefix", "pre", "-output-max-buffer-age", "50ms"]);
    let mut s = serve.connect();
    s.write_all(&handshake(r#"{"name":"slow"}"#)).unwrap();
    s.write_all("whole\npartial €".as_bytes()).unwrap();
    s.write_all(&"€".as_bytes()[..1]).unwrap(); // an unfinished UTF-8 sequence stays behind
    let start = Instant::now();
    loop {
        let streams = ls(&home, "local");
        if streams.first().is_some_and(|s| s["bytes"] == "whole\npartial €".len()) {
            assert_eq!(streams[0]["terminal"], false, "the stream is still open");
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "partial line never flushed: {streams:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    s.write_all(&"€".as_bytes()[1..]).unwrap();
    s.write_all(b" end").unwrap();
    drop(s);
    serve.stop();
    assert_eq!(cat(&home, "local", "pre/+/slow"), "whole\npartial €€ end".as_bytes());
}

#[test]
fn log_output_dumps_bundles_to_stderr() {
    let home = TestHome::new();
    let serve = Serve::start(&home, &["--prefix", "pre", "--output", "log", "--output-no-buffer"]);
    serve.send(r#"{"name":"shown"}"#, b"hello\r\npart");
    serve.send(r#"{"name":"bin","type":"binary"}"#, b"\x01\xff");
    let err = serve.stop();
    assert!(err.contains("pre/+/shown [text, text/plain; charset=utf-8]"), "{err}");
    assert!(err.contains(r#""hello" "\r\n""#) && err.contains(r#""part" """#), "{err}");
    assert!(err.contains("binary 01ff"), "{err}");
    assert!(err.contains("terminal at"), "{err}");
    assert!(ls(&home, "local").is_empty(), "nothing in the store");
}

#[test]
fn the_rust_streamclient_opens_all_three_types_with_a_namespace() {
    use butler::streaming::streamclient::StreamClient;
    let home = TestHome::new();
    let serve = Serve::start(&home, &["--prefix", "pre"]);
    let client =
        StreamClient::new(&format!("unix:{}", serve.sock.display()), Some("ns/step")).unwrap();
    {
        let mut t = client.open_text("log").unwrap();
        t.write_all("héllo\nwörld".as_bytes()).unwrap();
        let mut b = client.open_binary("blob").unwrap();
        b.write_all(&[0, 1, 2, 255]).unwrap();
        let mut d = client.open_datagram("dg").unwrap();
        d.send(b"one").unwrap();
        d.send(b"").unwrap();
    }
    assert!(client.open_text("_bad").is_err(), "names are validated on the client side");
    serve.stop();
    assert_eq!(cat(&home, "local", "pre/+/ns/step/log"), "héllo\nwörld".as_bytes());
    assert_eq!(cat(&home, "local", "pre/+/ns/step/blob"), [0, 1, 2, 255]);
    assert_eq!(cat(&home, "local", "pre/+/ns/step/dg"), b"\x03one\x00");
    let streams = ls(&home, "local");
    let log = find(&streams, "ns/step/log").unwrap();
    assert_ne!(log["timestamp"], Value::Null, "the client sends its timestamp");
}

#[test]
fn run_forwards_stdin_only_when_asked() {
    let home = TestHome::new();
    let run = |args: &[&str]| {
        let mut c =
            home.butler().args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        c.stdin.take().unwrap().write_all(b"typed input\n").unwrap();
        c.wait_with_output().unwrap()
    };
    let out = run(&["run", "--forward-stdin", "--", "cat"]);
    assert_eq!(stdout(&out), "typed input\n");
    let out = run(&["-prefix", "p2", "run", "--", "cat"]);
    assert_eq!(stdout(&out), "", "the child's stdin is empty by default");
}

#[test]
fn a_hostile_datagram_header_ends_only_that_stream() {
    let home = TestHome::new();
    let serve = Serve::start(&home, &["--prefix", "pre"]);
    let mut overflow = b"\x02ok".to_vec();
    overflow.extend_from_slice(&[0xff; 11]);
    overflow.extend_from_slice(b"\x02no");
    serve.send(r#"{"name":"overflow","type":"datagram"}"#, &overflow);
    // A 10 MiB + 1 length: refused before anything is buffered.
    serve.send(r#"{"name":"huge","type":"datagram"}"#, b"\x02ok\x81\x80\x80\x05");
    serve.send(r#"{"name":"fine","type":"datagram"}"#, b"\x03yes");
    let err = serve.stop();
    assert_eq!(
        cat(&home, "local", "pre/+/overflow"),
        b"\x02ok",
        "data before the bad header is kept"
    );
    assert_eq!(cat(&home, "local", "pre/+/huge"), b"\x02ok");
    assert_eq!(cat(&home, "local", "pre/+/fine"), b"\x03yes");
    let streams = ls(&home, "local");
    assert!(streams.iter().all(|s| s["terminal"] == true));
    assert!(err.contains("overflows") && err.contains("exceeds the maximum"), "{err}");
}

#[test]
fn run_stores_stdout_and_stderr_by_default_still_shows_them_and_says_where() {
    let home = TestHome::new();
    let child = ["--", "sh", "-c", "echo to out; echo to err >&2"];
    let out = run_butler(&home, &[&["--prefix", "cap/one", "run"][..], &child].concat());
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out), "to out\n", "still shown");
    let err = stderr(&out);
    assert!(err.starts_with("to err\n"), "{err}");
    assert!(err.contains("butler: stored stdout, stderr in the log store under cap/one"), "{err}");
    assert!(err.contains("butler logs cat cap/one/+/stdout"), "{err}");
    assert_eq!(cat(&home, "local", "cap/one/+/stdout"), b"to out\n");
    assert_eq!(cat(&home, "local", "cap/one/+/stderr"), b"to err\n");

    // --no-capture: through as they are, nothing stored, and it says so.
    let out =
        run_butler(&home, &[&["--prefix", "cap/two", "run", "--no-capture"][..], &child].concat());
    assert_eq!(stdout(&out), "to out\n");
    assert!(stderr(&out).contains("nothing was stored"), "{}", stderr(&out));
    assert!(ls(&home, "local").iter().all(|s| s["prefix"] != "cap/two"));

    // A bare name is a name; a named stream is captured, not shown.
    let out = run_butler(
        &home,
        &[&["--prefix", "cap/three", "run", "--stdout", "console"][..], &child].concat(),
    );
    assert_eq!(stdout(&out), "", "{}", stderr(&out));
    assert_eq!(cat(&home, "local", "cap/three/+/console"), b"to out\n");

    // --json: stdout holds only the result line, which names the streams.
    let out = run_butler(&home, &[&["--json", "--prefix", "cap/four", "run"][..], &child].concat());
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let v: Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(v["type"], "result");
    assert_eq!(v["value"]["exitCode"], 0);
    assert_eq!(
        v["value"]["streams"],
        serde_json::json!(["cap/four/+/stdout", "cap/four/+/stderr"])
    );
    assert_eq!(cat(&home, "local", "cap/four/+/stdout"), b"to out\n");

    // Other outputs keep upstream's behaviour: unnamed output passes through.
    let out = run_butler(&home, &[&["--output", "null", "run"][..], &child].concat());
    assert_eq!(stdout(&out), "to out\n");
    assert!(!stderr(&out).contains("butler:"), "{}", stderr(&out));
}

/// A stream server's socket is its owner's whatever the umask, and a client of another user is
/// refused even if it reaches the socket (S12).
#[test]
fn stream_sockets_are_owner_only_and_other_users_are_refused() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let home = TestHome::new();
    let sock = home.path().join("s.sock");
    let mut cmd = home.butler();
    cmd.args(["--prefix", "uid", "serve", "--streamserver-uri"])
        .arg(format!("unix:{}", sock.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    // SAFETY: umask is async-signal-safe; it only sets the child's file mode mask.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0);
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "a umask of 000 left the socket {mode:o}");

    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        // As if another user got in before the mode was set: open the file, connect as nobody.
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o777)).unwrap();
        std::fs::set_permissions(home.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = std::ffi::CString::new(sock.as_os_str().as_encoded_bytes()).unwrap();
        let hello = handshake(r#"{"name": "injected"}"#);
        // SAFETY: the child only makes async-signal-safe calls on memory prepared before fork.
        let status = unsafe {
            let pid = libc::fork();
            if pid == 0 {
                let mut addr: libc::sockaddr_un = std::mem::zeroed();
                addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
                for (i, b) in path.as_bytes().iter().enumerate() {
                    addr.sun_path[i] = *b as libc::c_char;
                }
                let ok = libc::setgid(65534) == 0 && libc::setuid(65534) == 0;
                let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0);
                let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
                let connected = libc::connect(fd, (&raw const addr).cast(), len) == 0;
                if ok && connected {
                    libc::write(fd, hello.as_ptr().cast(), hello.len());
                    libc::write(fd, b"evil\n".as_ptr().cast(), 5);
                }
                libc::_exit(if ok && connected { 0 } else { 1 });
            }
            let mut status = 0;
            libc::waitpid(pid, &mut status, 0);
            status
        };
        assert_eq!(status, 0, "the other user could not even reach the socket");
    }
    signal(&child, "TERM");
    assert_eq!(wait_exit(&mut child, Duration::from_secs(10)).code(), Some(0));
    assert!(ls(&home, "local").is_empty(), "another user's stream was stored");
}

/// Unfinished handshakes each buffer up to their announced size: the server takes only so many
/// at once (the rest wait in the backlog), so what they can make it hold is bounded (S13).
#[test]
fn unfinished_handshakes_cannot_grow_the_server_without_bound() {
    let home = TestHome::new();
    let serve = Serve::start(&home, &["--prefix", "caps"]);
    let rss = || crate::util::rss_mib(serve.child.id());
    let before = rss();
    // Each announces a 1 MiB handshake frame and sends half of it.
    let mut frame = b"BTLR1\x1E".to_vec();
    frame.extend_from_slice(&[0x80, 0x80, 0x40]); // uvarint 1 MiB
    frame.extend(std::iter::repeat_n(b' ', 512 * 1024));
    let clients: Vec<_> = (0..300)
        .filter_map(|_| {
            let mut s = std::os::unix::net::UnixStream::connect(&serve.sock).ok()?;
            s.set_write_timeout(Some(Duration::from_millis(50))).unwrap();
            let _ = s.write_all(&frame);
            Some(s)
        })
        .collect();
    assert_eq!(clients.len(), 300);
    std::thread::sleep(Duration::from_millis(100));
    let grew = rss().saturating_sub(before);
    assert!(grew < 80, "300 unfinished handshakes grew the server by {grew} MiB");
    drop(clients);
    serve.stop();
}
