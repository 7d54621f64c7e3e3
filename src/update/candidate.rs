//! The itch app's check of a new build before a versioned root chooses it: start it as a daemon,
//! read its listen notification, authenticate and call `Version.Get`. It speaks JSON-RPC, so it
//! lives here and is handed to the updater as a [`CandidateCheck`].

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use butler_updater::CandidateCheck;
use butler_updater::install::Candidate;

/// The check `Updater::apply` runs on a versioned install's candidate.
pub(crate) fn daemon_check() -> CandidateCheck {
    CandidateCheck { name: "daemon sanity check", run: Arc::new(check) }
}

/// Runs `exe` as a daemon in `scratch` and returns the version `Version.Get` reports, all within
/// `timeout`.
fn check(exe: &Path, scratch: &Path, timeout: Duration) -> Result<String, String> {
    let fail = |why: String| format!("{}: {why}", exe.display());
    let deadline = Instant::now() + timeout;
    let db = scratch.join("sanity.db");
    let args = ["--json", "daemon", "--transport", "tcp", "--dbpath"].map(std::ffi::OsStr::new);
    let args = [&args[..], &[db.as_os_str()]].concat();
    let mut candidate = Candidate::start(exe, scratch, &args)
        .map_err(|e| fail(format!("it does not start: {e}")))?;
    let stdout = candidate.take_stdout().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut line = String::new();
        loop {
            line.clear();
            // Lines are bounded so a hostile binary cannot make us buffer without end.
            match (&mut r).take(64 * 1024).read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                        && v["type"] == "butlerd/listen-notification"
                    {
                        let _ = tx.send(v);
                        break;
                    }
                }
            }
        }
    });
    let left = deadline.saturating_duration_since(Instant::now());
    let note = rx
        .recv_timeout(left)
        .map_err(|_| fail(format!("no listen notification within {timeout:?}")))?;
    let secret = note["secret"]
        .as_str()
        .ok_or_else(|| fail("the listen notification has no secret".into()))?;
    let addr = note["tcp"]["address"]
        .as_str()
        .ok_or_else(|| fail("the listen notification has no tcp address".into()))?;
    let addr: std::net::SocketAddr =
        addr.parse().map_err(|_| fail(format!("bad address {addr:?}")))?;
    if !addr.ip().is_loopback() {
        return Err(fail(format!("it listens on {addr}, not loopback")));
    }
    let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    let stream = std::net::TcpStream::connect_timeout(&addr, left)
        .map_err(|e| fail(format!("connecting to {addr}: {e}")))?;
    let mut reader = BufReader::new(stream.try_clone().map_err(|e| fail(e.to_string()))?);
    let mut writer = stream;
    let mut call = |id: u64, method: &str, params: serde_json::Value| {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(fail(format!("no answer within {timeout:?}")));
        }
        writer.set_write_timeout(Some(left)).ok();
        reader.get_ref().set_read_timeout(Some(left)).ok();
        let req =
            serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        let mut line = serde_json::to_vec(&req).unwrap_or_default();
        line.push(b'\n');
        writer.write_all(&line).map_err(|e| fail(format!("{method}: {e}")))?;
        loop {
            let mut resp = String::new();
            let n = (&mut reader)
                .take(1 << 20)
                .read_line(&mut resp)
                .map_err(|e| fail(format!("{method}: {e}")))?;
            if n == 0 {
                return Err(fail(format!("{method}: the daemon closed the connection")));
            }
            let v: serde_json::Value = serde_json::from_str(&resp)
                .map_err(|e| fail(format!("{method}: bad JSON: {e}")))?;
            // Skip notifications and server-to-client requests; wait for our answer.
            if v["id"] != serde_json::json!(id) || v.get("method").is_some() {
                continue;
            }
            if let Some(err) = v.get("error") {
                return Err(fail(format!("{method} failed: {err}")));
            }
            return Ok(v["result"].clone());
        }
    };
    let auth = call(0, "Meta.Authenticate", serde_json::json!({"secret": secret}))?;
    if auth["ok"] != true {
        return Err(fail("Meta.Authenticate did not answer ok".into()));
    }
    let ver = call(1, "Version.Get", serde_json::json!({}))?;
    let v = ver["version"].as_str().ok_or_else(|| fail("Version.Get has no version".into()))?;
    Ok(v.trim_start_matches('v').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Not a test on its own: with `FAKE_DAEMON` set, this test binary plays a butlerd daemon
    /// (listen notification, `Meta.Authenticate`, `Version.Get`) for the check's test.
    #[test]
    fn fake_daemon() {
        let Ok(mode) = std::env::var("FAKE_DAEMON") else { return };
        if mode == "silent" {
            std::thread::sleep(Duration::from_secs(30));
            return;
        }
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        println!("not json: libtest chatter and logs come first");
        let note = serde_json::json!({"type": "butlerd/listen-notification", "secret": "s3cret", "tcp": {"address": addr.to_string()}});
        println!("{note}");
        let (conn, _) = listener.accept().unwrap();
        let mut r = BufReader::new(conn.try_clone().unwrap());
        let mut w = conn;
        let mut line = String::new();
        while r.read_line(&mut line).unwrap_or(0) > 0 {
            let req: serde_json::Value = serde_json::from_str(&line).unwrap();
            line.clear();
            let id = req["id"].clone();
            let resp = match req["method"].as_str().unwrap() {
                "Meta.Authenticate" if req["params"]["secret"] == "s3cret" && mode != "badauth" => {
                    serde_json::json!({"jsonrpc": "2.0", "id": id, "result": {"ok": true}})
                }
                "Meta.Authenticate" => {
                    serde_json::json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32000, "message": "bad secret"}})
                }
                "Version.Get" => {
                    // A notification first: the client must skip it.
                    writeln!(w, "{}", serde_json::json!({"jsonrpc": "2.0", "method": "Log", "params": {"level": "info", "message": "hi"}})).unwrap();
                    serde_json::json!({"jsonrpc": "2.0", "id": id, "result": {"version": "v9.9.9", "versionString": "v9.9.9, built on x"}})
                }
                _ => {
                    serde_json::json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": "no"}})
                }
            };
            writeln!(w, "{resp}").unwrap();
        }
    }

    /// A script that runs this test binary as the fake daemon, whatever arguments it gets.
    #[cfg(unix)]
    fn fake_daemon_exe(dir: &Path, mode: &str) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let me = std::env::current_exe().unwrap();
        let script = dir.join(format!("fake-{mode}"));
        fs_err::write(
            &script,
            format!("#!/bin/sh\nFAKE_DAEMON={mode} exec '{}' --exact update::candidate::tests::fake_daemon --nocapture --test-threads 1\n", me.display()),
        )
        .unwrap();
        fs_err::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        script
    }

    #[cfg(unix)]
    #[test]
    fn daemon_check_authenticates_and_reads_the_version() {
        let dir = tempfile::tempdir().unwrap();
        let exe = fake_daemon_exe(dir.path(), "ok");
        assert_eq!(check(&exe, dir.path(), Duration::from_secs(10)).unwrap(), "9.9.9");
        let exe = fake_daemon_exe(dir.path(), "badauth");
        let err = check(&exe, dir.path(), Duration::from_secs(10)).unwrap_err();
        assert!(err.contains("Meta.Authenticate failed"), "{err}");
        let exe = fake_daemon_exe(dir.path(), "silent");
        let started = Instant::now();
        let err = check(&exe, dir.path(), Duration::from_millis(500)).unwrap_err();
        assert!(err.contains("no listen notification"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5), "the timeout was not honoured");
    }
}
