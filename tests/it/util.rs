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
            if k.to_string_lossy().starts_with("BUTLER_")
                || k.to_string_lossy().starts_with("LOGDOG_")
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
                let mut out = String::new();
                if let Some(mut s) = self.stdout.take() {
                    let _ = s.read_to_string(&mut out);
                }
                let mut err = String::new();
                if let Some(mut s) = self.child.stderr.take() {
                    let _ = s.read_to_string(&mut err);
                }
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
        stream.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
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
