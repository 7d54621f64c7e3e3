//! Whatever butler starts, it stops: `Process.Run` and `butler run` stop the child's whole tree
//! (a grandchild holding the output open included) within the kill grace, the tree and the stream
//! socket file die with a `kill -9`ed daemon, and database calls stay fast while hundreds of
//! children run.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::daemon::{error_code, until_id};
use crate::util::{DaemonProc, RpcClient, TestHome};

/// `Process.Run`'s kill grace (`KILL_GRACE` in src/daemon/methods/process.rs).
const GRACE: Duration = Duration::from_secs(3);
/// What a loaded machine may add to a deadline.
const SLACK: Duration = Duration::from_secs(2);

/// Polls `f` until it holds, failing after `secs`.
fn eventually(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {secs}s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The pid a shell wrote to `file`, once it is there.
fn pid_in(file: &Path) -> u32 {
    let mut pid = None;
    eventually(10, "the child writes its grandchild's pid", || {
        pid = std::fs::read_to_string(file).ok().and_then(|s| s.trim().parse().ok());
        pid.is_some()
    });
    pid.unwrap()
}

/// Alive: in /proc and not a zombie (a zombie here is dead, waiting for an init that does not
/// reap).
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit_once(") ").map(|(_, rest)| rest.chars().next());
            state != Some(Some('Z')) && state != Some(Some('X'))
        }
        Err(_) => false,
    }
}

/// Kills what a failed test left behind.
struct KillOnDrop(Vec<u32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for &pid in &self.0 {
            // SAFETY: signalling a process this test started.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}

fn daemon(home: &TestHome) -> DaemonProc {
    let db = home.path().join("butler.db");
    DaemonProc::start(home, &["--keep-alive", "--dbpath", db.to_str().unwrap()])
}

/// Sends `Process.Run` of `sh -c script` as request 1 with operation id `op`, and returns the
/// `Process.Started` notification's params.
fn start_run(c: &mut RpcClient, script: &str, op: &str) -> Value {
    c.send(&json!({"jsonrpc": "2.0", "id": 1, "method": "Process.Run", "params": {
        "command": ["sh", "-c", script], "id": op,
    }}));
    let started = c.recv();
    assert_eq!(started["method"], "Process.Started", "{started}");
    started["params"].clone()
}

fn cancel_and_time(d: &DaemonProc, c: &mut RpcClient, op: &str) -> Duration {
    let t = Instant::now();
    let r = d.client().request(json!(9), "Operation.Cancel", json!({"id": op}));
    assert_eq!(r["result"]["didCancel"], true, "{r}");
    c.stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let r = until_id(c, &json!(1));
    assert_eq!(error_code(&r), 499, "{r}");
    t.elapsed()
}

#[test]
fn cancelling_process_run_stops_a_grandchild_that_holds_the_output() {
    let home = TestHome::new();
    let pidfile = home.path().join("grandchild.pid");
    let d = daemon(&home);
    let mut c = d.client();
    let script = format!("sleep 40 & echo $! > {}; exit 0", pidfile.display());
    start_run(&mut c, &script, "op1");
    let grandchild = pid_in(&pidfile);
    let _cleanup = KillOnDrop(vec![grandchild]);
    // The direct child is gone; only the grandchild holds stdout/stderr.
    let took = cancel_and_time(&d, &mut c, "op1");
    assert!(took < GRACE + SLACK, "the cancel took {took:?}");
    eventually(5, "the grandchild dies", || !alive(grandchild));
}

#[test]
fn a_tree_that_ignores_sigterm_is_killed_after_the_grace() {
    let home = TestHome::new();
    let pidfile = home.path().join("grandchild.pid");
    let d = daemon(&home);
    let mut c = d.client();
    // The ignored SIGTERM is inherited by the grandchild, which holds the output.
    let script = format!("trap '' TERM; sleep 40 & echo $! > {}; wait", pidfile.display());
    let child = start_run(&mut c, &script, "op2")["pid"].as_u64().unwrap() as u32;
    let grandchild = pid_in(&pidfile);
    let _cleanup = KillOnDrop(vec![child, grandchild]);
    let took = cancel_and_time(&d, &mut c, "op2");
    assert!(took >= GRACE - Duration::from_millis(200), "SIGKILL came early: {took:?}");
    assert!(took < GRACE + SLACK, "the cancel took {took:?}");
    eventually(5, "the child dies", || !alive(child));
    eventually(5, "the grandchild dies", || !alive(grandchild));
}

#[test]
fn butler_run_stops_a_grandchild_on_sigint_and_sigterm() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        let home = TestHome::new();
        let pidfile = home.path().join("grandchild.pid");
        let script = format!("sleep 40 & echo $! > {}; exit 0", pidfile.display());
        let mut run = home
            .butler()
            .args(["run", "--kill-grace", "2s", "--", "sh", "-c", &script])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let grandchild = pid_in(&pidfile);
        let _cleanup = KillOnDrop(vec![grandchild, run.id()]);
        let t = Instant::now();
        // SAFETY: signalling the butler this test started.
        unsafe { libc::kill(run.id() as libc::pid_t, sig) };
        let mut status = None;
        eventually(2 + SLACK.as_secs() + 2, "butler run exits after the signal", || {
            status = run.try_wait().unwrap();
            status.is_some()
        });
        assert!(t.elapsed() < Duration::from_secs(2) + SLACK, "took {:?}", t.elapsed());
        eventually(5, "the grandchild dies", || !alive(grandchild));
        let _ = run.wait();
    }
}

#[test]
fn a_killed_daemon_takes_the_tree_and_the_stream_socket_with_it() {
    let home = TestHome::new();
    let pidfile = home.path().join("grandchild.pid");
    let d = daemon(&home);
    let mut c = d.client();
    let script = format!("sleep 41 & echo $! > {}; sleep 42", pidfile.display());
    let started = start_run(&mut c, &script, "op3");
    let child = started["pid"].as_u64().unwrap() as u32;
    let socket =
        PathBuf::from(started["streamServer"].as_str().unwrap().strip_prefix("unix:").unwrap());
    let grandchild = pid_in(&pidfile);
    let _cleanup = KillOnDrop(vec![child, grandchild]);
    assert!(socket.exists(), "{}", socket.display());
    d.signal(libc::SIGKILL);
    eventually(5, "the child dies with the daemon", || !alive(child));
    eventually(5, "the grandchild dies with the daemon", || !alive(grandchild));
    eventually(5, "the stream socket file goes", || !socket.exists());
}

/// More children than tokio's blocking pool has threads (512): each holds its run's output worker
/// for its whole life, and database calls must not queue behind them.
#[test]
fn database_calls_stay_fast_while_hundreds_of_children_run() {
    const RUNS: usize = 520;
    let home = TestHome::new();
    let d = daemon(&home);
    // 256 requests in flight at most per connection.
    let mut runners: Vec<RpcClient> = (0..3).map(|_| d.client()).collect();
    for i in 0..RUNS {
        runners[i % 3].send(
            &json!({"jsonrpc": "2.0", "id": i, "method": "Process.Run", "params": {
                "command": ["sleep", "60"], "id": format!("long-{i}"),
            }}),
        );
    }
    let mut pids = KillOnDrop(Vec::new());
    for (n, r) in runners.iter_mut().enumerate() {
        r.stream.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        for _ in (0..RUNS).filter(|i| i % 3 == n) {
            let m = r.recv();
            assert_eq!(m["method"], "Process.Started", "{m}");
            pids.0.push(m["params"]["pid"].as_u64().unwrap() as u32);
        }
    }
    let mut c = d.client();
    for i in 0..5 {
        let t = Instant::now();
        let r = c.request(json!(i), "Streams.List", json!({"limit": 10}));
        assert!(r["result"]["streams"].is_array(), "{r}");
        assert!(t.elapsed() < Duration::from_secs(2), "Streams.List took {:?}", t.elapsed());
    }
    assert!(pids.0.iter().all(|&p| alive(p)));
}
