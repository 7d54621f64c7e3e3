//! Shared test harness: the real `butler` binary, run with a private home folder.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Path of the `butler` executable built for these tests.
pub(crate) fn butler_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_butler"))
}

/// A temp folder for one test, used as `BUTLER_HOME` so nothing touches the user's own database.
pub(crate) struct TestHome {
    pub dir: tempfile::TempDir,
}

impl TestHome {
    pub(crate) fn new() -> Self {
        TestHome { dir: tempfile::Builder::new().prefix("butler-it-").tempdir().unwrap() }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A `butler` command with a clean environment pointed at this home.
    pub(crate) fn butler(&self) -> Command {
        let mut cmd = Command::new(butler_bin());
        for (k, _) in std::env::vars_os() {
            let name = k.to_string_lossy();
            // A proxy from the developer's shell would route loopback test traffic elsewhere.
            if name.starts_with("BUTLER_")
                || name.starts_with("LOGDOG_")
                || name.to_ascii_lowercase().ends_with("_proxy")
            {
                cmd.env_remove(k);
            }
        }
        cmd.env("BUTLER_HOME", self.path());
        cmd
    }

    /// Runs `butler args...` to completion.
    pub(crate) fn run(&self, args: &[&str]) -> Output {
        self.butler().args(args).output().unwrap()
    }
}

/// stdout as text, for assertions.
pub(crate) fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// stderr as text, for assertions.
pub(crate) fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Resident memory of process `pid` in MiB, from /proc.
pub(crate) fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap();
    kb.split_whitespace().next().unwrap().parse::<u64>().unwrap() / 1024
}

/// A running `butler daemon`, killed and reaped on drop.
pub(crate) struct DaemonProc {
    pub child: std::process::Child,
    pub address: String,
    pub secret: String,
    /// stdout lines seen up to and including the listen notification.
    pub stdout_lines: Vec<String>,
    stdout: Option<std::io::BufReader<std::process::ChildStdout>>,
}

impl DaemonProc {
    /// Starts `butler --json daemon --transport tcp <extra...>` and waits for its listen notification.
    pub(crate) fn start(home: &TestHome, extra: &[&str]) -> DaemonProc {
        let mut cmd = home.butler();
        cmd.args(["--json", "daemon", "--transport", "tcp"]).args(extra);
        Self::start_cmd(cmd)
    }

    #[allow(clippy::zombie_processes)] // the returned DaemonProc reaps it on drop
    pub(crate) fn start_cmd(mut cmd: Command) -> DaemonProc {
        use std::io::BufRead;
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        // A daemon that never listens is killed, so the read below ends instead of hanging the run;
        // returning (or panicking) drops `_listening`, which calls the watchdog off.
        let (_listening, watchdog) = std::sync::mpsc::channel::<()>();
        let pid = child.id() as libc::pid_t;
        std::thread::spawn(move || {
            if watchdog.recv_timeout(std::time::Duration::from_secs(60))
                == Err(std::sync::mpsc::RecvTimeoutError::Timeout)
            {
                // SAFETY: signalling our own child, which has not been reaped (we still wait on it).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        });
        let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = stdout.read_line(&mut line).unwrap();
            if n == 0 {
                let err = child.wait_with_output().unwrap();
                panic!("daemon exited before listening: {lines:?} {}", stderr(&err));
            }
            let v: serde_json::Value = serde_json::from_str(line.trim())
                .unwrap_or_else(|e| panic!("stdout line is not JSON ({e}): {line:?}"));
            lines.push(line.trim().to_owned());
            if v["type"] == "butlerd/listen-notification" {
                // tcp, or the address of a unix socket or (Windows) a named pipe.
                let address = ["tcp", "unix", "pipe"]
                    .iter()
                    .find_map(|t| v[t]["address"].as_str())
                    .unwrap_or_else(|| panic!("no address in {v}"));
                return DaemonProc {
                    child,
                    address: address.to_owned(),
                    secret: v["secret"].as_str().unwrap().to_owned(),
                    stdout_lines: lines,
                    stdout: Some(stdout),
                };
            }
        }
    }

    pub(crate) fn connect(&self) -> RpcClient {
        RpcClient::connect(&self.address)
    }

    /// A connection that has already authenticated.
    pub(crate) fn client(&self) -> RpcClient {
        let mut c = self.connect();
        let reply = c.request(
            serde_json::json!("auth"),
            "Meta.Authenticate",
            serde_json::json!({"secret": self.secret}),
        );
        assert_eq!(reply["result"], serde_json::json!({"ok": true}), "{reply}");
        c
    }

    pub(crate) fn signal(&self, sig: i32) {
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
    }

    /// Waits up to `secs` for exit; returns the exit code, the rest of stdout and all of stderr.
    pub(crate) fn wait_exit(mut self, secs: u64) -> (Option<i32>, String, String) {
        use std::io::Read;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Read to the end on other threads: a process that inherited the pipes (a child
                // the daemon left behind; any process of the prefix under Wine) keeps them open,
                // and that must fail the test, not hang it.
                let (out, err) = (self.stdout.take(), self.child.stderr.take());
                let (tx, rx) = std::sync::mpsc::channel();
                std::thread::spawn(move || {
                    let mut text = (String::new(), String::new());
                    if let Some(mut s) = out {
                        let _ = s.read_to_string(&mut text.0);
                    }
                    if let Some(mut s) = err {
                        let _ = s.read_to_string(&mut text.1);
                    }
                    let _ = tx.send(text);
                });
                let (out, err) = rx
                    .recv_timeout(std::time::Duration::from_secs(10))
                    .expect("the daemon's stdout or stderr still open 10 s after it exited");
                return (status.code(), out, err);
            }
            assert!(std::time::Instant::now() < deadline, "daemon did not exit within {secs}s");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for DaemonProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw newline-delimited JSON-RPC connection with read timeouts, so a hang fails the test.
pub(crate) struct RpcClient {
    pub reader: std::io::BufReader<std::net::TcpStream>,
    pub stream: std::net::TcpStream,
}

impl RpcClient {
    pub(crate) fn connect(address: &str) -> RpcClient {
        let stream = std::net::TcpStream::connect(address).unwrap();
        // Long enough for an update's unpack and smoke test on a loaded machine, with no message
        // in between; a hang still fails the test.
        stream.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
        stream.set_nodelay(true).unwrap();
        RpcClient { reader: std::io::BufReader::new(stream.try_clone().unwrap()), stream }
    }

    pub(crate) fn send_raw(&mut self, bytes: &[u8]) {
        use std::io::Write;
        self.stream.write_all(bytes).unwrap();
    }

    pub(crate) fn send(&mut self, msg: &serde_json::Value) {
        let mut line = serde_json::to_vec(msg).unwrap();
        line.push(b'\n');
        self.send_raw(&line);
    }

    /// The next line, parsed; panics on timeout or EOF.
    pub(crate) fn recv(&mut self) -> serde_json::Value {
        self.try_recv().expect("connection closed")
    }

    /// The next line, or `None` at EOF.
    pub(crate) fn try_recv(&mut self) -> Option<serde_json::Value> {
        use std::io::BufRead;
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).expect("no reply in time");
        if n == 0 {
            return None;
        }
        Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("bad JSON {e}: {line:?}")))
    }

    pub(crate) fn request(
        &mut self,
        id: serde_json::Value,
        method: &str,
        params: serde_json::Value,
    ) -> serde_json::Value {
        self.send(
            &serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}),
        );
        self.recv()
    }
}

/// A small tmpfs mounted on a temp folder, for disk-full tests; unmounted on drop, even when the
/// test fails. Mounting needs root (as here and in CI); elsewhere `mount` says why and the test
/// is skipped.
pub(crate) struct Tmpfs {
    dir: Option<tempfile::TempDir>,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`mount`'s syntax: `2m`), or prints why not and returns `None`.
    pub(crate) fn mount(test: &str, size: &str) -> Option<Tmpfs> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped {test}: mounting a tmpfs needs root");
            return None;
        }
        let dir = tempfile::Builder::new().prefix("butler-tmpfs-").tempdir().unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs { dir: Some(dir) }),
            Ok(o) => {
                eprintln!("skipped {test}: mount -t tmpfs failed: {}", stderr(&o).trim());
                None
            }
            Err(e) => {
                eprintln!("skipped {test}: cannot run mount: {e}");
                None
            }
        }
    }

    pub(crate) fn path(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }

    /// Changes the size in place (what is stored stays): a bigger size is space freed.
    pub(crate) fn resize(&self, size: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "remount: {}", stderr(&out));
    }

    /// Fills the disk with a file named `filler` until at most `leave` bytes are free.
    pub(crate) fn fill(&self, leave: u64) -> PathBuf {
        use std::io::Write;
        let path = self.path().join("filler");
        let mut f = std::fs::OpenOptions::new().create(true).append(true).open(&path).unwrap();
        let mut block = 64 * 1024;
        while self.free() > leave && block >= 512 {
            let chunk = (block as u64).min(self.free().saturating_sub(leave).max(512)) as usize;
            match f.write(&vec![0x5a; chunk]) {
                Ok(n) if n > 0 => {}
                Ok(_) => block /= 2,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => block /= 2,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
        path
    }

    /// Bytes still free.
    pub(crate) fn free(&self) -> u64 {
        let c = std::ffi::CString::new(self.path().as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: statvfs is plain data, for which all zeroes is a valid value.
        let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: statvfs writes into the struct we own; the path is NUL-terminated.
        assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut s) }, 0);
        s.f_bavail as u64 * s.f_frsize as u64
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else { return };
        // Lazy: a process the failed test left behind may still hold a file there.
        let _ = Command::new("umount").arg("-l").arg(dir.path()).status();
        drop(dir);
    }
}
