//! The Windows build under Wine, driven from Linux: the real `butler.exe` (and a Windows stream
//! client) run as Windows programs, with real loopback TCP, a real broth tree on a loopback
//! HTTP server and real SQLite files. Wine is a stand-in for Windows, not Windows: what these
//! show is behaviour, never timing.
//!
//! `make test-windows` builds the executables into `BUTLER_WINDOWS_FIXTURES` (`butler-old.exe`,
//! `butler-new.exe` built as a newer version, `stream_client.exe`), sets `WINEPREFIX` to a
//! prefix with the test-only ProcessPrng shim, and runs these with `--ignored`: without those
//! executables they cannot run, so a plain `cargo test` skips them.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use butler_release::Publish;
use butler_updater::Channel;
use serde_json::json;

use crate::util::{DaemonProc, TestHome, stderr, stdout};

fn fixture(name: &str) -> PathBuf {
    let dir = std::env::var_os("BUTLER_WINDOWS_FIXTURES")
        .map(PathBuf::from)
        .expect("BUTLER_WINDOWS_FIXTURES is not set: run these through `make test-windows`");
    let p = dir.join(name);
    assert!(p.is_file(), "{} is missing: run `make test-windows`", p.display());
    p
}

/// A Linux path as the Windows program sees it (Wine maps `Z:` to `/`).
fn win(p: &Path) -> String {
    format!("Z:{}", p.display()).replace('/', "\\")
}

/// `wine <exe>` with a clean butler environment and `home` as its `BUTLER_HOME`.
fn wine(exe: &Path, home: &TestHome) -> Command {
    let mut cmd = Command::new("wine");
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("BUTLER_") || k.starts_with("LOGDOG_") {
            cmd.env_remove(k);
        }
    }
    cmd.arg(exe).env("BUTLER_HOME", win(home.path())).env("WINEDEBUG", "-all");
    cmd.stdin(Stdio::null());
    cmd
}

fn run(exe: &Path, home: &TestHome, args: &[&str]) -> Output {
    wine(exe, home).args(args).output().unwrap()
}

fn version_json(exe: &Path, home: &TestHome) -> String {
    let out = run(exe, home, &["version", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(stdout(&out).lines().next().unwrap()).unwrap();
    v["value"]["version"].as_str().unwrap().trim_start_matches('v').to_owned()
}

fn daemon(exe: &Path, home: &TestHome, extra: &[&str]) -> DaemonProc {
    let mut cmd = wine(exe, home);
    cmd.args(["--json", "daemon", "--transport", "tcp"]).args(extra);
    DaemonProc::start_cmd(cmd)
}

/// The Linux pids of the Windows processes whose command line starts with `marker`: every
/// Windows process under Wine is a Linux process showing its Windows command line (Wine's
/// `tasklist` lists nothing).
fn wine_processes(marker: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.starts_with(marker) {
            pids.push(pid);
        }
    }
    pids
}

#[test]
#[ignore = "needs Wine and the Windows build: make test-windows"]
fn daemon_contract_over_loopback() {
    let home = TestHome::new();
    let d = daemon(&fixture("butler-old.exe"), &home, &["--keep-alive"]);
    assert!(d.address.starts_with("127.0.0.1:"), "{}", d.address);
    // The auth gate: nothing but Meta.Authenticate before the secret.
    let mut c = d.connect();
    let r = c.request(json!(1), "Version.Get", json!({}));
    assert_eq!(r["error"]["code"], -32600, "{r}");
    let r = c.request(json!(2), "Meta.Authenticate", json!({"secret": "wrong"}));
    assert!(r["error"].is_object(), "{r}");
    let mut c = d.client();
    let r = c.request(json!(3), "Version.Get", json!({}));
    assert_eq!(r["result"]["version"], format!("v{}", env!("CARGO_PKG_VERSION")), "{r}");
    let r = c.request(json!(4), "Meta.Shutdown", json!({}));
    assert!(r["result"].is_object(), "{r}");
    let (code, _, err) = d.wait_exit(30);
    assert_eq!(code, Some(0), "{err}");
}

/// The Linux end of a Windows named pipe: `pipe_relay.exe` under Wine relays lines both ways.
struct PipeClient {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

impl PipeClient {
    fn open(home: &TestHome, name: &str) -> PipeClient {
        let mut cmd = wine(&fixture("pipe_relay.exe"), home);
        let mut child = cmd.arg(name).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        PipeClient { child, stdin, lines }
    }

    fn request(&mut self, id: u64, method: &str, params: serde_json::Value) -> serde_json::Value {
        let msg = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        writeln!(self.stdin, "{msg}").unwrap();
        self.stdin.flush().unwrap();
        // Wine starts slowly on a loaded machine; a hang still fails.
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("no reply to {method} through the pipe: {e}"));
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    }
}

impl Drop for PipeClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `--transport net.pipe:<name>`: the TCP contract (listen notification with the address, the
/// secret, framing) over an owner-only named pipe.
#[test]
#[ignore = "needs Wine and the Windows build: make test-windows"]
fn the_daemon_serves_a_named_pipe_with_the_same_secret_and_framing() {
    let home = TestHome::new();
    let exe = fixture("butler-old.exe");
    let name = format!("butler-it-daemon-{}", std::process::id());
    let transport = format!("net.pipe:{name}");
    let d = daemon_on(&exe, &home, &transport);
    assert_eq!(d.address, transport);
    let note: serde_json::Value = serde_json::from_str(d.stdout_lines.last().unwrap()).unwrap();
    assert_eq!(note["pipe"]["path"], format!(r"\\.\pipe\{name}"), "{note}");
    assert!(note.get("tcp").is_none(), "{note}");

    // Not shown here: a second server on a taken name is refused on Windows
    // (FILE_FLAG_FIRST_PIPE_INSTANCE), but Wine 8 ignores that flag (a second daemon there
    // starts), and the owner-only DACL needs a second user to show.

    let mut c = PipeClient::open(&home, &name);
    let r = c.request(1, "Version.Get", json!({}));
    assert_eq!(r["error"]["code"], -32600, "the secret is needed here too: {r}");
    let r = c.request(2, "Meta.Authenticate", json!({"secret": "wrong"}));
    assert_eq!(r["error"]["code"], -32600, "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("invalid secret"), "{r}");
    let r = c.request(3, "Meta.Authenticate", json!({"secret": d.secret}));
    assert_eq!(r["result"]["ok"], true, "{r}");
    let r = c.request(4, "Version.Get", json!({}));
    assert_eq!(r["result"]["version"], format!("v{}", env!("CARGO_PKG_VERSION")), "{r}");
    // A reply of tens of KiB comes through whole.
    let r = c.request(5, "rpc.discover", json!({}));
    assert!(r["result"]["methods"].as_array().is_some_and(|m| m.len() > 10), "{r}");
    // A second client gets its own instance, and its own authentication.
    let mut c2 = PipeClient::open(&home, &name);
    let r = c2.request(1, "Version.Get", json!({}));
    assert_eq!(r["error"]["code"], -32600, "{r}");
    let r = c.request(6, "Meta.Shutdown", json!({}));
    assert!(r["result"].is_object(), "{r}");
    // Wine processes still running keep the wineserver, which holds the daemon's stdout open.
    drop((c, c2));
    let (code, _, err) = d.wait_exit(60);
    assert_eq!(code, Some(0), "{err}");
}

fn daemon_on(exe: &Path, home: &TestHome, transport: &str) -> DaemonProc {
    let mut cmd = wine(exe, home);
    cmd.args(["--json", "daemon", "--keep-alive", "--transport", transport]);
    DaemonProc::start_cmd(cmd)
}

#[test]
#[ignore = "needs Wine and the Windows build: make test-windows"]
fn a_second_daemon_on_the_same_database_is_refused_and_names_the_first() {
    let home = TestHome::new();
    let exe = fixture("butler-old.exe");
    let first = daemon(&exe, &home, &["--keep-alive"]);
    let out = run(&exe, &home, &["--json", "daemon", "--transport", "tcp"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("in use by another butler daemon (pid "), "{err}");
    // The holder's pid stays readable to the daemon it turns away (only a far byte is locked).
    assert!(!err.contains("(pid unknown)"), "{err}");
    let r = first.client().request(json!(1), "Version.Get", json!({}));
    assert!(r["result"].is_object(), "the first daemon still serves: {r}");
}

#[test]
#[ignore = "needs Wine and the Windows build: make test-windows"]
fn run_captures_a_windows_child_and_logs_reads_it_back() {
    let home = TestHome::new();
    let exe = fixture("butler-old.exe");
    let args = ["--prefix", "w", "run", "--stdout", "name=out", "--", "cmd", "/c", "echo", "hi"];
    let out = run(&exe, &home, &args);
    assert!(out.status.success(), "{}", stderr(&out));
    let cat = run(&exe, &home, &["logs", "cat", "w/+/out"]);
    assert!(cat.status.success(), "{}", stderr(&cat));
    assert_eq!(cat.stdout, b"hi\r\n");
}

/// Exit codes are 32-bit on Windows. A Linux parent sees only 8 bits of a Wine process's status,
/// so a Windows parent reads them: `Process.Run` reports its child's, and an outer `butler run`
/// records, in `--result-path`, the code an inner `butler run` exited with.
#[test]
#[ignore = "needs Wine and the Windows build: make test-windows"]
fn exit_codes_are_the_whole_windows_codes() {
    let home = TestHome::new();
    let exe = fixture("butler-old.exe");
    let d = daemon(&exe, &home, &["--keep-alive"]);
    let mut c = d.client();
    c.send(&json!({"jsonrpc": "2.0", "id": 1, "method": "Process.Run", "params": {
        "command": ["cmd", "/c", "exit", "300"],
    }}));
    let r = loop {
        let m = c.recv();
        if m["id"] == 1 {
            break m;
        }
    };
    assert_eq!(r["result"]["exitCode"], 300, "{r}");
    assert!(r["result"].get("signal").is_none(), "no signals on Windows: {r}");

    let result = home.path().join("result.json");
    let inner = win(&exe);
    let args = [
        "run",
        "--result-path",
        &win(&result),
        "--",
        &inner,
        "run",
        "--",
        "cmd",
        "/c",
        "exit",
        "300",
    ];
    let out = run(&exe, &home, &args);
    assert_eq!(out.status.code(), Some(300 % 256), "{}", stderr(&out));
    let recorded: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&result).unwrap()).unwrap();
    assert_eq!(recorded["return_code"], 300, "the inner butler's exit code: {recorded}");
}

#[test]
#[ignore = "needs Wine and the Windows build: make test-windows"]
fn net_pipe_streams_from_a_windows_client_arrive_byte_for_byte() {
    let home = TestHome::new();
    let exe = fixture("butler-old.exe");
    let client = win(&fixture("stream_client.exe"));
    // `run` serves a fresh net.pipe: address and gives it to the child.
    let out = run(&exe, &home, &["--prefix", "p", "run", "--", &client]);
    assert!(out.status.success(), "{}", stderr(&out));
    let cat = |name: &str| {
        let out = run(&exe, &home, &["logs", "cat", &format!("p/+/{name}")]);
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        out.stdout
    };
    assert_eq!(cat("text"), b"one\r\ntwo \xc3\xa9\rthree\nfour");
    let bytes: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    assert_eq!(cat("binary"), bytes);
    // Datagrams come back as the length-prefixed frames they were sent in.
    assert_eq!(cat("datagram"), b"\x05first\x00\x04\x00\x01\x02\xff");
    // And an explicit net.pipe: address, as `serve` and `run` take one.
    let out = run(
        &exe,
        &home,
        &["--prefix", "q", "run", "--streamserver-uri", "net.pipe:butler-it-q", "--", &client],
    );
    if !out.status.success() {
        // The client's own error went to its captured stderr, not ours: show what was stored.
        let stored = run(&exe, &home, &["logs", "ls"]);
        let errors: Vec<String> = String::from_utf8_lossy(&stored.stdout)
            .lines()
            .filter(|l| l.contains("q/+/"))
            .map(|l| {
                let path = l.split_whitespace().find(|w| w.starts_with("q/+/")).unwrap_or(l);
                let cat = run(&exe, &home, &["logs", "cat", path]);
                format!("{path}: {}", String::from_utf8_lossy(&cat.stdout))
            })
            .collect();
        panic!("run exited with {:?}: {}\nstored: {errors:#?}", out.status, stderr(&out));
    }
    let out = run(&exe, &home, &["logs", "cat", "q/+/binary"]);
    assert_eq!(out.stdout, bytes);
}

/// Process.Run's child and everything it started are in one job: a cancel stops the whole tree,
/// and a daemon watching the child's pid as its destiny sees it go.
#[test]
#[ignore = "needs Wine and the Windows build: make test-windows"]
fn cancel_stops_the_whole_tree_and_destiny_pid_follows_it() {
    let home = TestHome::new();
    let exe = fixture("butler-old.exe");
    let d = daemon(&exe, &home, &["--keep-alive"]);
    let mut a = d.client();
    // cmd starts a grandchild (a second cmd) that would outlive it by a minute; the ping count
    // marks this test's processes.
    let tree = "start /b cmd /c ping -n 67 127.0.0.1 >nul & ping -n 67 127.0.0.1 >nul";
    a.send(&json!({"jsonrpc": "2.0", "id": 1, "method": "Process.Run", "params": {
        "id": "tree", "command": ["cmd", "/c", tree],
    }}));
    let started = loop {
        let m = a.recv();
        if m["method"] == "Process.Started" {
            break m;
        }
    };
    let pid = started["params"]["pid"].as_u64().unwrap().to_string();
    let other = TestHome::new();
    let watcher = daemon(&exe, &other, &["--keep-alive", "--destiny-pid", &pid]);
    let ping_count = || wine_processes("ping -n 67 127.0.0.1").len();
    let deadline = Instant::now() + Duration::from_secs(5);
    while ping_count() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(ping_count(), 2, "the child and its grandchild both run");
    let t = Instant::now();
    let r = d.client().request(json!(1), "Operation.Cancel", json!({"id": "tree"}));
    assert_eq!(r["result"]["didCancel"], true, "{r}");
    let r = loop {
        let m = a.recv();
        if m["id"] == 1 {
            break m;
        }
    };
    assert_eq!(r["error"]["code"], 499, "{r}");
    assert!(t.elapsed() < Duration::from_secs(10), "the cancel took {:?}", t.elapsed());
    let deadline = Instant::now() + Duration::from_secs(5);
    while ping_count() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(ping_count(), 0, "the grandchild outlived the cancel");
    let (code, _, err) = watcher.wait_exit(15);
    assert_eq!(code, Some(0), "{err}");
}

/// `butler upgrade` replaces the `butler.exe` a daemon is running from: the running image is
/// renamed aside, the new one moved in, and the next daemon removes the old image.
#[test]
#[ignore = "needs Wine and the Windows build: make test-windows"]
fn upgrade_replaces_a_running_butler_exe_in_place() {
    let home = TestHome::new();
    let broth = WindowsBroth::new(&home);
    let (old, old_version, new_version) = (&broth.old, &broth.old_version, &broth.new_version);
    let server = &broth.server;

    let install = tempfile::tempdir().unwrap();
    let exe = install.path().join("butler.exe");
    std::fs::copy(old, &exe).unwrap();
    let running = daemon(&exe, &home, &["--keep-alive"]);
    let out = wine(&exe, &home)
        .env("BUTLER_BROTH_URL", server.url())
        .args(["--json", "upgrade", "-y"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert_eq!(&version_json(&exe, &home), new_version, "the new build is in place");
    assert!(install.path().join("butler.exe.old").is_file(), "the old build is kept");
    // The running daemon is still the old build, from its renamed image.
    let r = running.client().request(json!(1), "Version.Get", json!({}));
    assert_eq!(r["result"]["version"], format!("v{old_version}"), "{r}");
    drop(running);
    // The next daemon started from the folder removes the image moved aside.
    let next = daemon(&exe, &home, &["--keep-alive"]);
    let leftovers: Vec<String> = std::fs::read_dir(install.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("aside"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let r = next.client().request(json!(1), "Version.Get", json!({}));
    assert_eq!(r["result"]["version"], format!("v{new_version}"), "{r}");
}

/// Wine turns SIGINT into the console's Ctrl-C event, which `signals.rs` catches on Windows.
#[test]
#[ignore = "needs Wine and the Windows build: make test-windows"]
fn ctrl_c_shuts_the_daemon_down_gracefully() {
    let home = TestHome::new();
    let d = daemon(&fixture("butler-old.exe"), &home, &["--keep-alive"]);
    let _ = d.client().request(json!(1), "Version.Get", json!({}));
    d.signal(libc::SIGINT);
    let (code, out, err) = d.wait_exit(30);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("butler daemon stopped"), "{out}");
}

/// The job is kill-on-close and the OS closes a dead process's handles: a daemon killed outright
/// takes its children's whole trees along.
#[test]
#[ignore = "needs Wine and the Windows build: make test-windows"]
fn a_killed_daemon_takes_the_childrens_trees_along() {
    let home = TestHome::new();
    let d = daemon(&fixture("butler-old.exe"), &home, &["--keep-alive"]);
    let mut a = d.client();
    let tree = "start /b cmd /c ping -n 68 127.0.0.1 >nul & ping -n 68 127.0.0.1 >nul";
    a.send(&json!({"jsonrpc": "2.0", "id": 1, "method": "Process.Run", "params": {
        "command": ["cmd", "/c", tree],
    }}));
    while a.recv()["method"] != "Process.Started" {}
    let count = || wine_processes("ping -n 68 127.0.0.1").len();
    let deadline = Instant::now() + Duration::from_secs(5);
    while count() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(count(), 2, "the child and its grandchild both run");
    d.signal(libc::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(10);
    while count() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(count(), 0, "the tree outlived the daemon");
}

/// Ctrl-C to `butler run` reaches the child's whole tree (Ctrl-Break to its group, or the job
/// terminated where it has no console), and `butler run` ends with it.
#[test]
#[ignore = "needs Wine and the Windows build: make test-windows"]
fn ctrl_c_to_run_stops_the_childs_tree() {
    let home = TestHome::new();
    let tree = "start /b cmd /c ping -n 69 127.0.0.1 >nul & ping -n 69 127.0.0.1 >nul";
    let mut child = wine(&fixture("butler-old.exe"), &home)
        .args(["run", "--kill-grace", "2s", "--", "cmd", "/c", tree])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let count = || wine_processes("ping -n 69 127.0.0.1").len();
    let deadline = Instant::now() + Duration::from_secs(10);
    while count() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(count(), 2, "the child and its grandchild both run");
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("butler run did not end after Ctrl-C");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success(), "the child was stopped, not finished: {status:?}");
    assert_eq!(count(), 0, "the tree outlived butler run");
}

#[test]
#[ignore = "needs Wine and the Windows build: make test-windows"]
fn ctrl_c_stops_serve_gracefully() {
    let home = TestHome::new();
    let mut serve = wine(&fixture("butler-old.exe"), &home)
        .args(["serve", "--streamserver-uri", "net.pipe:butler-it-serve"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // `serve` prints its address once it listens.
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(serve.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert!(line.contains("net.pipe:butler-it-serve"), "{line:?}");
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(serve.id() as libc::pid_t, libc::SIGINT) };
    let out = serve.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// A loopback broth tree whose `windows-amd64` channel the release tool wrote: the old build
/// listed, the new one LATEST (unsigned: these builds trust no key).
struct WindowsBroth {
    _dir: tempfile::TempDir,
    server: crate::upgrade::server::Server,
    old: PathBuf,
    old_version: String,
    new_version: String,
}

impl WindowsBroth {
    fn new(home: &TestHome) -> WindowsBroth {
        let (old, new) = (fixture("butler-old.exe"), fixture("butler-new.exe"));
        let (old_version, new_version) = (version_json(&old, home), version_json(&new, home));
        assert_ne!(old_version, new_version);
        let dir = tempfile::tempdir().unwrap();
        let channel = Channel::for_platform("windows", "amd64", false);
        for (bin, version, latest) in [(&old, &old_version, false), (&new, &new_version, true)] {
            let p = Publish {
                package: "butler".into(),
                channel: channel.clone(),
                version: version.clone(),
                binary: bin.clone(),
                extra_files: vec![],
                out: dir.path().to_owned(),
                expires_in: Duration::from_secs(3600),
                set_latest: latest,
            };
            butler_release::publish(&p, None).unwrap();
        }
        let server = crate::upgrade::server::Server::start(dir.path().to_owned());
        WindowsBroth { _dir: dir, server, old, old_version, new_version }
    }
}

/// Windows has no `exec`: `Update.Apply {restart: true}` installs, then answers
/// `restartRequired` with the new executable for the launcher to start, and the daemon goes on
/// serving as the build it is.
#[test]
#[ignore = "needs Wine and the Windows build: make test-windows"]
fn update_apply_with_restart_answers_restart_required_on_windows() {
    let home = TestHome::new();
    let broth = WindowsBroth::new(&home);
    let install = tempfile::tempdir().unwrap();
    let exe = install.path().join("butler.exe");
    std::fs::copy(&broth.old, &exe).unwrap();
    let mut cmd = wine(&exe, &home);
    cmd.env("BUTLER_BROTH_URL", broth.server.url()).env("BUTLER_UPDATE_PROBATION", "0");
    cmd.args(["--json", "daemon", "--transport", "tcp", "--keep-alive"]);
    let d = DaemonProc::start_cmd(cmd);
    let mut c = d.client();
    c.send(
        &json!({"jsonrpc": "2.0", "id": 1, "method": "Update.Apply", "params": {"restart": true}}),
    );
    let mut logs = Vec::new();
    let r = loop {
        let m = c.recv();
        if m["id"] == 1 {
            break m;
        }
        if m["method"] == "Log" {
            logs.push(m["params"]["message"].as_str().unwrap_or_default().to_owned());
        }
    };
    assert_eq!(r["result"]["installedVersion"], broth.new_version.as_str(), "{r}");
    assert_eq!(r["result"]["restartRequired"], true, "{r}");
    assert_eq!(r["result"]["executable"], win(&exe), "{r}");
    assert!(logs.iter().any(|l| l.contains("do not restart in place")), "{logs:?}");
    let r = c.request(json!(2), "Version.Get", json!({}));
    assert_eq!(
        r["result"]["version"],
        format!("v{}", broth.old_version),
        "still the old build: {r}"
    );
    assert_eq!(version_json(&exe, &home), broth.new_version, "the new build is on disk");
}

/// The versioned layout (what the itch app uses on Windows): a daemon runs from
/// `versions/<old>/butler.exe` while `upgrade --root` installs `versions/<new>/` beside it,
/// checks it with a daemon handshake under Wine, and chooses it; nothing running is renamed.
#[test]
#[ignore = "needs Wine and the Windows build: make test-windows"]
fn upgrade_into_a_versioned_root_beside_a_running_daemon() {
    let home = TestHome::new();
    let broth = WindowsBroth::new(&home);
    let root = tempfile::tempdir().unwrap();
    let old_dir = root.path().join("versions").join(&broth.old_version);
    std::fs::create_dir_all(&old_dir).unwrap();
    let running_exe = old_dir.join("butler.exe");
    std::fs::copy(&broth.old, &running_exe).unwrap();
    std::fs::write(root.path().join(".chosen-version"), &broth.old_version).unwrap();
    let running = daemon(&running_exe, &home, &["--keep-alive"]);
    let out = wine(&running_exe, &home)
        .env("BUTLER_BROTH_URL", broth.server.url())
        .args(["--json", "upgrade", "-y", "--root", &win(root.path())])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let chosen = std::fs::read_to_string(root.path().join(".chosen-version")).unwrap();
    assert_eq!(chosen, broth.new_version);
    let new_exe = root.path().join("versions").join(&broth.new_version).join("butler.exe");
    assert_eq!(version_json(&new_exe, &home), broth.new_version);
    assert!(running_exe.is_file(), "the running build stays where it is");
    let r = running.client().request(json!(1), "Version.Get", json!({}));
    assert_eq!(r["result"]["version"], format!("v{}", broth.old_version), "{r}");
}
