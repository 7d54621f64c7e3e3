//! The daemon's `Update.*` methods against the same loopback broth tree: checks, installs with
//! progress, rollbacks, background checks, prefetching and restarting in place.

use super::*;

/// The daemon's `Update.Check` / `Update.Status` against the same loopback broth tree.
#[test]
fn the_daemon_checks_for_updates_and_reports_history() {
    use crate::util::DaemonProc;
    use serde_json::json;
    let f = fixtures();
    let broth = Broth::new(true);
    let home = TestHome::new();
    let mut cmd = home.butler();
    cmd.args(["--json", "daemon", "--transport", "tcp", "--keep-alive"])
        .env("BUTLER_BROTH_URL", broth.url())
        .env("BUTLER_TRUSTED_KEYS", key().public_base64());
    let d = DaemonProc::start_cmd(cmd);
    let mut flow = d.client();
    flow.send(&json!({"jsonrpc": "2.0", "id": 1, "method": "Meta.Flow", "params": {}}));
    assert_eq!(flow.recv()["method"], "MetaFlowEstablished");
    let mut c = d.client();
    let r = c.request(json!(1), "Update.Check", json!({}));
    let result = &r["result"];
    // The Meta.Flow connection hears of it too.
    let news = flow.recv();
    assert_eq!(news["method"], "Update.Available", "{news}");
    assert_eq!(news["params"]["latestVersion"], f.new_version.as_str());
    assert_eq!(result["currentVersion"], env!("CARGO_PKG_VERSION"), "{r}");
    assert_eq!(result["latestVersion"], f.new_version.as_str());
    assert_eq!(result["updateAvailable"], true);
    assert_eq!(result["signed"], true);
    assert_eq!(result["stale"], false);
    assert_eq!(result["channel"], channel().name());

    let r = c.request(json!(2), "Update.Status", json!({}));
    let history = r["result"]["history"].as_array().unwrap_or_else(|| panic!("{r}"));
    assert_eq!(history.len(), 1, "{r}");
    assert_eq!(history[0]["outcome"], "available");
    assert_eq!(r["result"]["lastResult"], "available");
    assert_eq!(r["result"]["lastCheck"]["toVersion"], f.new_version.as_str());
}

#[test]
fn the_daemon_reports_a_stale_latest_and_a_missing_server() {
    use crate::util::DaemonProc;
    use serde_json::json;
    let f = fixtures();
    let dir = tempfile::tempdir().unwrap();
    publish(dir.path(), &f.new, &f.new_version, true, Some(key()), 0);
    let broth = Broth { server: Server::start(dir.path().to_owned()), _dir: dir, signed: true };
    let home = TestHome::new();
    let start = |url: String| {
        let mut cmd = home.butler();
        cmd.args([
            "--json",
            "daemon",
            "--transport",
            "tcp",
            "--keep-alive",
            "--dbpath",
            ":memory:",
        ])
        .env("BUTLER_BROTH_URL", url)
        // Short retries: the reply must come well within the client's read timeout.
        .env("BUTLER_UPGRADE_BACKOFF_MS", "10")
        .env("BUTLER_TRUSTED_KEYS", key().public_base64());
        DaemonProc::start_cmd(cmd)
    };
    let d = start(broth.url());
    let r = d.client().request(json!(1), "Update.Check", json!({}));
    assert_eq!(r["result"]["stale"], true, "{r}");
    assert_eq!(r["result"]["updateAvailable"], false);

    // Nothing listens on port 9 of loopback.
    let d = start("http://127.0.0.1:9".into());
    let r = d.client().request(json!(1), "Update.Check", json!({}));
    assert_eq!(r["error"]["code"], 9000, "{r}");
    assert_eq!(r["error"]["data"]["step"], "check");
}

/// An installed old butler running as a TCP daemon, its updates from `broth`.
pub(super) fn daemon_from(install: &Install, broth: &Broth) -> crate::util::DaemonProc {
    daemon_at(install, &install.exe, broth, &[])
}

/// `exe` (in `install`'s environment) running as a TCP daemon with `extra` flags.
fn daemon_at(
    install: &Install,
    exe: &Path,
    broth: &Broth,
    extra: &[&str],
) -> crate::util::DaemonProc {
    let mut cmd = Command::new(exe);
    install.env(&mut cmd, broth);
    cmd.args(["--json", "daemon", "--transport", "tcp", "--keep-alive"]).args(extra);
    crate::util::DaemonProc::start_cmd(cmd)
}

/// Sends a request and reads until its reply; returns the reply and the notifications before it.
pub(super) fn call(
    c: &mut crate::util::RpcClient,
    id: i64,
    method: &str,
    params: serde_json::Value,
) -> (serde_json::Value, Vec<serde_json::Value>) {
    c.send(&serde_json::json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
    reply_to(c, id)
}

/// Reads until the reply to request `id`; returns it and the notifications before it.
fn reply_to(
    c: &mut crate::util::RpcClient,
    id: i64,
) -> (serde_json::Value, Vec<serde_json::Value>) {
    let mut notes = Vec::new();
    loop {
        let msg = c.recv();
        if msg["id"] == id && msg.get("method").is_none() {
            return (msg, notes);
        }
        notes.push(msg);
    }
}

fn flow(d: &crate::util::DaemonProc) -> crate::util::RpcClient {
    let mut flow = d.client();
    flow.send(&serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "Meta.Flow", "params": {}}));
    assert_eq!(flow.recv()["method"], "MetaFlowEstablished");
    flow
}

#[test]
fn the_daemon_installs_an_update_with_progress_and_rolls_it_back() {
    use serde_json::json;
    let f = fixtures();
    let broth = Broth::new(true);
    let inst = Install::new();
    let d = daemon_from(&inst, &broth);
    let mut news = flow(&d);
    let mut c = d.client();

    let (r, notes) = call(&mut c, 1, "Update.Apply", json!({}));
    let res = &r["result"];
    assert_eq!(res["previousVersion"], f.old_version.as_str(), "{r}");
    assert_eq!(res["installedVersion"], f.new_version.as_str());
    assert_eq!(res["verified"], true);
    assert_eq!(res["restartRequired"], true);
    let progress: Vec<f64> = notes
        .iter()
        .filter(|n| n["method"] == "Progress")
        .map(|n| n["params"]["progress"].as_f64().unwrap())
        .collect();
    assert_eq!(progress.last(), Some(&1.0), "the final progress is always sent: {notes:?}");
    assert!(progress.windows(2).all(|w| w[0] <= w[1]), "{progress:?}");
    assert!(notes.iter().any(|n| n["method"] == "Log"), "{notes:?}");
    let applied = news.recv();
    assert_eq!(applied["method"], "Update.Applied", "{applied}");
    assert_eq!(applied["params"]["installedVersion"], f.new_version.as_str());
    assert_eq!(applied["params"]["restarting"], false);
    // On disk: the new build, the old one kept. In memory: still the old daemon.
    assert_eq!(version_of(&inst.exe), f.new_version);
    assert_eq!(inst.listing(), ["butler", "butler.old"]);
    let (v, _) = call(&mut c, 2, "Version.Get", json!({}));
    assert_eq!(v["result"]["version"], format!("v{}", f.old_version), "{v}");
    // Checking again compares against what is on disk: nothing new, only a restart missing.
    let (r, _) = call(&mut c, 20, "Update.Check", json!({}));
    assert_eq!(r["result"]["updateAvailable"], false, "{r}");
    assert_eq!(r["result"]["restartRequired"], true);
    assert_eq!(r["result"]["currentVersion"], f.old_version.as_str());
    let (r, _) = call(&mut c, 21, "Update.Apply", json!({}));
    assert_eq!(r["result"]["installedVersion"], serde_json::Value::Null, "not again: {r}");
    assert_eq!(r["result"]["restartRequired"], true, "still waiting for its restart: {r}");
    let (s, _) = call(&mut c, 22, "Update.Status", json!({}));
    assert_eq!(s["result"]["awaitingRestart"], f.new_version.as_str(), "{s}");

    // A bad version is refused before anything happens.
    let (r, _) = call(&mut c, 3, "Update.Apply", json!({"version": "not a version"}));
    assert_eq!(r["error"]["code"], -32602, "{r}");

    let (r, _) = call(&mut c, 4, "Update.Rollback", json!({}));
    assert_eq!(r["result"]["restoredVersion"], f.old_version.as_str(), "{r}");
    assert_eq!(r["result"]["restartRequired"], true);
    assert_eq!(news.recv()["method"], "Update.RolledBack");
    assert_eq!(version_of(&inst.exe), f.old_version);
    let (s, _) = call(&mut c, 23, "Update.Status", json!({}));
    assert_eq!(s["result"]["awaitingRestart"], serde_json::Value::Null, "back to this build: {s}");

    let (s, _) = call(&mut c, 5, "Update.Status", json!({}));
    let outcomes: Vec<(&str, &str)> = s["result"]["history"]
        .as_array()
        .unwrap_or_else(|| panic!("{s}"))
        .iter()
        .map(|h| (h["action"].as_str().unwrap(), h["outcome"].as_str().unwrap()))
        .collect();
    // Newest first; every check is recorded, the one each Update.Apply makes included.
    let expected = [
        ("rollback", "rolled-back"),
        ("check", "up-to-date"),
        ("check", "up-to-date"),
        ("upgrade", "installed"),
        ("check", "available"),
    ];
    assert_eq!(outcomes, expected, "{s}");

    // Installing the running build again (a downgrade undoing an install) waits for nothing.
    let (r, _) = call(&mut c, 24, "Update.Apply", json!({"version": f.new_version}));
    assert_eq!(r["result"]["restartRequired"], true, "{r}");
    let (r, _) = call(&mut c, 25, "Update.Apply", json!({"version": f.old_version}));
    assert_eq!(r["result"]["installedVersion"], f.old_version.as_str(), "{r}");
    assert_eq!(r["result"]["restartRequired"], false, "{r}");
    let (s, _) = call(&mut c, 26, "Update.Status", json!({}));
    assert_eq!(s["result"]["awaitingRestart"], serde_json::Value::Null, "{s}");
}

#[test]
fn the_daemon_restarts_into_the_update_on_the_same_socket_and_secret() {
    use serde_json::json;
    let f = fixtures();
    let broth = Broth::new(true);
    let inst = Install::new();
    let mut d = daemon_from(&inst, &broth);
    let mut news = flow(&d);
    let mut c = d.client();
    // A follower in the middle of a long request: an open stream written by `butler serve`.
    let serve =
        crate::streaming::Serve::start(&inst.home, &["--output-no-buffer", "--prefix", "ho"]);
    let mut writer = serve.connect();
    std::io::Write::write_all(&mut writer, &crate::streaming::handshake(r#"{"name": "game"}"#))
        .unwrap();
    std::io::Write::write_all(&mut writer, b"one\n").unwrap();
    let mut follower = d.client();
    let follow = |c: &mut crate::util::RpcClient, id: i64, from: u64| {
        let params = json!({"path": "ho/+/game", "fromIndex": from});
        c.send(&json!({"jsonrpc": "2.0", "id": id, "method": "Streams.Follow", "params": params}));
    };
    for _ in 0..500 {
        let (r, _) = call(&mut follower, 8, "Streams.List", json!({"prefix": "ho/"}));
        if r["result"]["streams"] != json!([]) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    follow(&mut follower, 9, 0);
    let entries = follower.recv();
    assert_eq!(entries["method"], "Streams.Entries", "{entries}");

    let (r, _) = call(&mut c, 1, "Update.Apply", json!({"restart": true}));
    assert_eq!(r["result"]["installedVersion"], f.new_version.as_str(), "{r}");
    assert_eq!(r["result"]["restartRequired"], false);
    // The follow ends with an error and a Log that both say to follow again, here.
    let (ended, notes) = reply_to(&mut follower, 9);
    assert_eq!(ended["error"]["code"], -32005, "{ended}");
    assert_eq!(ended["error"]["data"]["nextIndex"], 1, "{ended}");
    assert!(
        notes.iter().any(|n| n["method"] == "Log"
            && n["params"]["message"].as_str().unwrap().contains("Streams.Follow again")),
        "{notes:?}"
    );
    // The same connection goes on working through the restart: every call is answered, by the
    // old build until the hand-over and by the new one after it.
    let mut id = 100;
    loop {
        id += 1;
        let (v, notes) = call(&mut c, id, "Version.Get", json!({}));
        assert!(notes.is_empty(), "{notes:?}");
        let version = v["result"]["version"].as_str().unwrap_or_else(|| panic!("{v}")).to_owned();
        if version == format!("v{}", f.new_version) {
            break;
        }
        assert_eq!(version, format!("v{}", f.old_version));
        assert!(id < 10_000, "the new build never answered on this connection");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    // The Meta.Flow connection, carried over as well, hears of the install from the new build.
    let applied = news.recv();
    assert_eq!(applied["method"], "Update.Applied", "{applied}");
    assert_eq!(applied["params"]["installedVersion"], f.new_version.as_str(), "{applied}");
    assert_eq!(applied["params"]["restarted"], true, "{applied}");
    let (v, _) = call(&mut news, 7, "Version.Get", json!({}));
    assert_eq!(v["result"]["version"], format!("v{}", f.new_version), "{v}");
    // The follower follows on, on the same connection, from where it was.
    until_version(&mut follower, &f.new_version);
    follow(&mut follower, 10, 1);
    std::io::Write::write_all(&mut writer, b"two\n").unwrap();
    let more = follower.recv();
    assert_eq!(more["params"]["entries"][0]["text"], "two\n", "{more}");
    drop(writer);
    let (done, _) = reply_to(&mut follower, 10);
    assert_eq!(done["result"]["terminal"], true, "{done}");
    serve.stop();

    // Same process, same address, same secret: the new build answers.
    let mut c = d.client();
    let (v, _) = call(&mut c, 2, "Version.Get", json!({}));
    assert_eq!(v["result"]["version"], format!("v{}", f.new_version), "{v}");
    assert!(d.child.try_wait().unwrap().is_none(), "the launcher's child is still running");
    // Nothing of the hand-over reaches a child: no variables, no inherited socket or pipe.
    let (r, _) = call(
        &mut c,
        3,
        "Process.Run",
        json!({"command": ["sh", "-c", "env; ls -l /proc/$$/fd"], "prefix": "handover"}),
    );
    assert_eq!(r["result"]["exitCode"], 0, "{r}");
    let (r, _) = call(&mut c, 4, "Streams.Read", json!({"path": "handover/+/stdout"}));
    let text: String = r["result"]["entries"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"))
        .iter()
        .map(|e| e["text"].as_str().unwrap())
        .collect();
    assert!(text.contains("PATH="), "the listing ran: {text}");
    assert!(!text.contains("BUTLER_DAEMON_HANDOVER"), "{text}");
    assert!(!text.contains("socket:"), "{text}");
    let (r, _) = call(&mut c, 5, "Meta.Shutdown", json!({}));
    assert!(r.get("result").is_some(), "{r}");
    let (code, out, err) = d.wait_exit(10);
    assert_eq!(code, Some(0), "{err}");
    // stdout stays JSON lines, and the listen notification is not repeated.
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(lines.iter().all(|l| l["type"] != "butlerd/listen-notification"), "{out}");
    assert!(
        lines.iter().any(|l| l["message"]
            .as_str()
            .is_some_and(|m| m.contains("restarted after an update"))),
        "{out}"
    );
}

#[test]
fn cancelling_an_update_leaves_the_old_butler_untouched() {
    use serde_json::json;
    let f = fixtures();
    let broth = Broth::new(true);
    broth.server.fault(&broth.archive_path(&f.new_version), Fault::Trickle);
    let inst = Install::new();
    let d = daemon_from(&inst, &broth);
    let mut c = d.client();
    c.send(&json!({"jsonrpc": "2.0", "id": 1, "method": "Update.Apply", "params": {"id": "up"}}));
    // Wait until the download has started.
    loop {
        let n = c.recv();
        if n["method"] == "Log"
            && n["params"]["message"].as_str().is_some_and(|m| m.starts_with("downloading"))
        {
            break;
        }
    }
    let (r, _) = call(&mut d.client(), 7, "Operation.Cancel", json!({"id": "up"}));
    assert_eq!(r["result"]["didCancel"], true, "{r}");
    let reply = loop {
        let m = c.recv();
        if m["id"] == 1 {
            break m;
        }
    };
    assert_eq!(reply["error"]["code"], 499, "{reply}");
    assert_eq!(version_of(&inst.exe), f.old_version);
    assert_eq!(inst.listing(), ["butler"], "nothing left behind");
    assert_eq!(inst.history().last().unwrap().1, "cancelled");
}

#[test]
fn the_daemon_checks_in_the_background_only_when_allowed() {
    use serde_json::json;
    let f = fixtures();
    let broth = Broth::new(true);
    let inst = Install::new();
    let start = |extra: &[&str]| {
        let mut flags = vec!["--dbpath", ":memory:"];
        flags.extend_from_slice(extra);
        daemon_at(&inst, &inst.exe, &broth, &flags)
    };

    let quiet = start(&["--update-interval", "100ms", "--no-auto-update"]);
    // The database last checked an hour ago, so the first check is due at once; the next one is a
    // long interval away and cannot overlap the apply below (it would hold the cache lock).
    let db_dir = tempfile::tempdir().unwrap();
    let db_path = db_dir.path().join("butler.db");
    let conn = butler::db::open(&butler::db::DbPath::from_arg(db_path.to_str().unwrap())).unwrap();
    let an_hour_ago =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
            - 3600;
    conn.execute(
        "INSERT INTO update_history (time, action, channel, install_path, outcome)
         VALUES (?1, 'check', 'stable', '', 'up-to-date')",
        [an_hour_ago as i64],
    )
    .unwrap();
    drop(conn);
    let d = daemon_at(
        &inst,
        &inst.exe,
        &broth,
        &["--dbpath", db_path.to_str().unwrap(), "--update-interval", "30s"],
    );
    // Nobody asks: the Meta.Flow connection hears of the update all the same, and then that it
    // was fetched and verified ahead of time.
    let mut flow = flow(&d);
    let news = flow.recv();
    assert_eq!(news["method"], "Update.Available", "{news}");
    assert_eq!(news["params"]["latestVersion"], f.new_version.as_str());
    let ready = flow.recv();
    assert_eq!(ready["method"], "Update.Ready", "{ready}");
    assert_eq!(ready["params"]["version"], f.new_version.as_str());
    assert_eq!(version_of(&inst.exe), f.old_version, "nothing is installed without Update.Apply");
    let mut c = d.client();
    let (s, _) = call(&mut c, 1, "Update.Status", json!({}));
    assert_eq!(s["result"]["lastCheck"]["outcome"], "available", "{s}");
    // Applying it takes the fetched archive instead of downloading again.
    let (r, notes) = call(&mut c, 2, "Update.Apply", json!({}));
    assert_eq!(r["result"]["installedVersion"], f.new_version.as_str(), "{r}");
    let logs = messages(&notes);
    assert!(logs.iter().any(|m| m.starts_with("using the archive fetched earlier")), "{logs:?}");
    assert!(!logs.iter().any(|m| m.starts_with("downloading")), "{logs:?}");
    assert_eq!(version_of(&inst.exe), f.new_version);

    // The quiet one has been up longer than several of its intervals and never called out.
    let (s, _) = call(&mut quiet.client(), 1, "Update.Status", json!({}));
    assert_eq!(s["result"]["history"], json!([]), "{s}");
    std::thread::sleep(Duration::from_millis(300));
    drop((flow, d));
    let (s, _) = call(&mut quiet.client(), 2, "Update.Status", json!({}));
    assert_eq!(s["result"]["history"], json!([]), "{s}");
}

#[test]
fn a_tampered_prefetched_archive_is_discarded_and_downloaded_again() {
    use serde_json::json;
    let f = fixtures();
    let broth = Broth::new(true);
    let inst = Install::new();
    let cache = inst.home.path().join("update-cache");
    std::fs::create_dir_all(&cache).unwrap();
    let planted = cache.join(format!("butler@{}@{}.zip", channel().name(), f.new_version));
    std::fs::write(&planted, b"not the archive the manifest describes").unwrap();
    let d = daemon_from(&inst, &broth);
    let (r, notes) = call(&mut d.client(), 1, "Update.Apply", json!({}));
    assert_eq!(r["result"]["installedVersion"], f.new_version.as_str(), "{r}");
    let logs = messages(&notes);
    assert!(logs.iter().any(|m| m.starts_with("downloading")), "{logs:?}");
    assert!(!planted.exists(), "the bad archive is removed");
    assert_eq!(version_of(&inst.exe), f.new_version);
}

#[test]
fn the_daemon_does_not_restart_into_a_build_that_cannot_take_over_or_while_games_run() {
    use serde_json::json;
    let f = fixtures();
    // A "butler" that passes the smoke test but announces no features (as builds before the
    // hand-over did): restarting into it would strand the launcher's clients.
    let dir = tempfile::tempdir().unwrap();
    let script = write_script(
        &dir.path().join("butler"),
        "echo '{\"type\":\"result\",\"value\":{\"version\":\"v9.9.9\"}}'\n",
    );
    let tree = tempfile::tempdir().unwrap();
    publish(tree.path(), &script, "9.9.9", true, Some(key()), 3600);
    let old_style =
        Broth { server: Server::start(tree.path().to_owned()), _dir: tree, signed: true };
    let inst = Install::new();
    let d = daemon_from(&inst, &old_style);
    let mut c = d.client();
    let (r, notes) = call(&mut c, 1, "Update.Apply", json!({"restart": true}));
    assert_eq!(r["result"]["installedVersion"], "9.9.9", "{r}");
    assert_eq!(r["result"]["restartRequired"], true);
    let logs = messages(&notes);
    assert!(logs.iter().any(|m| m.contains("cannot take over a running daemon")), "{logs:?}");
    let (v, _) = call(&mut c, 2, "Version.Get", json!({}));
    assert_eq!(v["result"]["version"], format!("v{}", f.old_version), "still serving: {v}");
    drop((c, d));

    // A real newer build, but a game started through Process.Run is still running.
    let broth = Broth::new(true);
    let inst = Install::new();
    let d = daemon_from(&inst, &broth);
    let mut game = d.client();
    game.send(&json!({"jsonrpc": "2.0", "id": 1, "method": "Process.Run", "params": {
        "command": ["sleep", "30"], "id": "game",
    }}));
    assert_eq!(game.recv()["method"], "Process.Started");
    let mut c = d.client();
    let (r, notes) = call(&mut c, 1, "Update.Apply", json!({"restart": true}));
    assert_eq!(r["result"]["installedVersion"], f.new_version.as_str(), "{r}");
    assert_eq!(r["result"]["restartRequired"], true);
    let logs = messages(&notes);
    assert!(logs.iter().any(|m| m.contains("still running")), "{logs:?}");
    let (r, _) = call(&mut c, 2, "Operation.Cancel", json!({"id": "game"}));
    assert_eq!(r["result"]["didCancel"], true, "{r}");
}

#[test]
fn applying_while_the_daemon_fetches_ahead_is_safe() {
    use serde_json::json;
    let f = fixtures();
    let broth = Broth::new(true);
    let inst = Install::new();
    let d = daemon_at(&inst, &inst.exe, &broth, &["--update-interval", "200ms"]);
    let mut news = flow(&d);
    while news.recv()["method"] != "Update.Available" {}
    // At once, while the background fetch of the same archive is (most likely) under way.
    let (r, _) = call(&mut d.client(), 1, "Update.Apply", json!({}));
    assert_eq!(r["result"]["installedVersion"], f.new_version.as_str(), "{r}");
    assert_eq!(version_of(&inst.exe), f.new_version);
    assert_eq!(inst.listing(), ["butler", "butler.old"]);
}

#[test]
fn a_daemon_run_from_a_versioned_root_installs_a_new_version_and_restarts_into_it() {
    use serde_json::json;
    let f = fixtures();
    let broth = Broth::new(true);
    let inst = Install::new();
    // As the itch app lays butler out: <root>/versions/<v>/butler and <root>/.chosen-version.
    let root = inst.home.path().join("app");
    let running = root.join("versions").join(&f.old_version);
    std::fs::create_dir_all(&running).unwrap();
    copy_exe(&f.old, &running.join("butler"));
    std::fs::write(root.join(".chosen-version"), &f.old_version).unwrap();
    let d = daemon_at(&inst, &running.join("butler"), &broth, &[]);
    let (r, _) = call(&mut d.client(), 1, "Update.Apply", json!({"restart": true}));
    assert_eq!(r["result"]["installedVersion"], f.new_version.as_str(), "{r}");
    assert_eq!(r["result"]["restartRequired"], false);
    // A new version folder, chosen; the running one kept as the last known good.
    assert_eq!(std::fs::read_to_string(root.join(".chosen-version")).unwrap(), f.new_version);
    assert_eq!(version_of(&running.join("butler")), f.old_version);
    let (v, _) = call(&mut d.client(), 2, "Version.Get", json!({}));
    assert_eq!(v["result"]["version"], format!("v{}", f.new_version), "restarted into it: {v}");
}

/// The official `@itchio/butlerd` client calling `Version.Get` in a loop, one connection per
/// call (`tests/node/call_loop.js`), for as long as the returned guard lives.
struct OfficialClientLoop {
    child: std::process::Child,
}

impl OfficialClientLoop {
    fn start(d: &crate::util::DaemonProc) -> Self {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node");
        assert!(
            dir.join("node_modules/@itchio/butlerd").is_dir(),
            "tests/node has no node_modules: run `make test` (it runs npm ci there first)"
        );
        let mut child = Command::new("node")
            .arg(dir.join("call_loop.js"))
            .current_dir(&dir)
            .env("BUTLERD_ADDRESS", &d.address)
            .env("BUTLERD_SECRET", &d.secret)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("Node.js runs the official client");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready", "the official client's first call failed");
        child.stdout = Some(out.into_inner());
        OfficialClientLoop { child }
    }

    /// Stops the loop and returns what it saw.
    fn finish(mut self) -> serde_json::Value {
        drop(self.child.stdin.take());
        let mut out = String::new();
        std::io::Read::read_to_string(self.child.stdout.as_mut().unwrap(), &mut out).unwrap();
        assert!(self.child.wait().unwrap().success());
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
    }
}

impl Drop for OfficialClientLoop {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Calls `Version.Get` on `c` until `version` answers (the restart is done).
fn until_version(c: &mut crate::util::RpcClient, version: &str) {
    use serde_json::json;
    for id in 1000.. {
        let (v, _) = call(c, id, "Version.Get", json!({}));
        let got = v["result"]["version"].as_str().unwrap_or_else(|| panic!("{v}")).to_owned();
        if got == format!("v{version}") {
            return;
        }
        assert!(id < 20_000, "{version} never answered; last {got}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn the_official_client_sees_no_failed_call_through_ten_restarts() {
    use serde_json::json;
    let f = fixtures();
    let broth = Broth::new(true);
    let inst = Install::new();
    let mut d = daemon_from(&inst, &broth);
    let mut news = flow(&d);
    let mut c = d.client();
    let calls = OfficialClientLoop::start(&d);
    for round in 0..10 {
        let to = if round % 2 == 0 { &f.new_version } else { &f.old_version };
        let (r, _) = call(&mut c, round, "Update.Apply", json!({"version": to, "restart": true}));
        assert_eq!(r["result"]["installedVersion"], to.as_str(), "round {round}: {r}");
        until_version(&mut c, to);
        let applied = news.recv();
        assert_eq!(applied["method"], "Update.Applied", "round {round}: {applied}");
        assert_eq!(applied["params"]["installedVersion"], to.as_str(), "{applied}");
        assert_eq!(applied["params"]["restarted"], true, "{applied}");
    }
    let seen = calls.finish();
    assert_eq!(seen["failures"], 0, "{seen}");
    let versions = seen["versions"].as_object().unwrap();
    assert!(versions.contains_key(&format!("v{}", f.new_version)), "{seen}");
    assert!(versions.contains_key(&format!("v{}", f.old_version)), "{seen}");
    // `Child::id` is a stored field; only a child not yet exited shows it is one process all along.
    assert!(d.child.try_wait().unwrap().is_none(), "one process all along");
}

#[test]
fn a_second_daemon_is_refused_while_a_restart_hands_over() {
    use serde_json::json;
    let f = fixtures();
    let broth = Broth::new(true);
    let inst = Install::new();
    let mut cmd = Command::new(&inst.exe);
    inst.env(&mut cmd, &broth);
    // The restarted process stops before it does anything, the lock only inherited.
    cmd.env("BUTLER_TEST_PAUSE_AT", "daemon-resumed");
    cmd.args(["--json", "daemon", "--transport", "tcp", "--keep-alive"]);
    let mut d = crate::util::DaemonProc::start_cmd(cmd);
    let mut c = d.client();
    let (r, _) = call(&mut c, 1, "Update.Apply", json!({"restart": true}));
    assert_eq!(r["result"]["installedVersion"], f.new_version.as_str(), "{r}");
    let mut err = BufReader::new(d.child.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        assert!(err.read_line(&mut line).unwrap() > 0, "the daemon ended: {seen}");
        if line.starts_with("butler-test-paused-at daemon-resumed") {
            break;
        }
        seen.push_str(&line);
    }
    let mut second = Command::new(&inst.exe);
    inst.env(&mut second, &broth);
    let out = second.args(["--json", "daemon", "--transport", "tcp"]).output().unwrap();
    assert!(!out.status.success(), "a second daemon started: {}", stdout(&out));
    assert!(stderr(&out).contains("in use by another butler daemon"), "{}", stderr(&out));
}

/// `Version.Get` on `address` with short timeouts: `None` while nothing answers.
fn probe_version(address: &str, secret: &str) -> Option<String> {
    use std::io::Write;
    let addr: std::net::SocketAddr = address.parse().ok()?;
    let s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(300))).ok()?;
    let mut r = BufReader::new(s.try_clone().ok()?);
    let mut w = s;
    let auth = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "Meta.Authenticate", "params": {"secret": secret}});
    let get = serde_json::json!({"jsonrpc": "2.0", "id": 2, "method": "Version.Get", "params": {}});
    writeln!(w, "{auth}\n{get}").ok()?;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&line).ok()?;
        if v["id"] == 2 {
            return v["result"]["version"].as_str().map(str::to_owned);
        }
    }
}

/// A daemon restarts into a build that fails (`fault`, see `BUTLER_TEST_FAULT`): the watchdog
/// puts the previous build and the database back, and it serves again on the same address and
/// secret; the bad version is remembered and not offered again.
fn a_failing_build_is_undone_after_a_restart(fault: &str) {
    use serde_json::json;
    let f = fixtures();
    let broth = Broth::new(true);
    let inst = Install::new();
    let mut cmd = Command::new(&inst.exe);
    inst.env(&mut cmd, &broth);
    cmd.env("BUTLER_UPDATE_PROBATION", "4s")
        .env("BUTLER_TEST_FAULT", format!("{fault}@{}", f.new_version))
        .args(["--json", "daemon", "--transport", "tcp", "--keep-alive"]);
    let mut d = crate::util::DaemonProc::start_cmd(cmd);
    // What the daemon, its watchdog and their successors say, for the failure message.
    let said = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let err = d.child.stderr.take().unwrap();
    let sink = std::sync::Arc::clone(&said);
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            sink.lock().unwrap().push_str(&(line + "\n"));
        }
    });
    let mut c = d.client();
    // Something the database must still hold afterwards.
    let (r, _) = call(&mut c, 1, "Update.Check", json!({}));
    assert_eq!(r["result"]["updateAvailable"], true, "{r}");
    let (r, _) = call(&mut c, 2, "Update.Apply", json!({"restart": true}));
    assert_eq!(r["result"]["installedVersion"], f.new_version.as_str(), "{r}");
    drop(c);

    let old = format!("v{}", f.old_version);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while probe_version(&d.address, &d.secret).as_deref() != Some(old.as_str()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the previous build never served again: {}",
            said.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(version_of(&inst.exe), f.old_version, "the previous binary is back");
    let mut c = d.client();
    let (s, _) = call(&mut c, 3, "Update.Status", json!({}));
    let history = s["result"]["history"].as_array().unwrap_or_else(|| panic!("{s}"));
    let undone = &history[0];
    assert_eq!(
        (undone["action"].as_str(), undone["outcome"].as_str()),
        (Some("rollback"), Some("rolled-back")),
        "{s}"
    );
    assert!(
        undone["message"].as_str().unwrap().contains("probation")
            || undone["message"].as_str().unwrap().contains("Version.Get"),
        "{s}"
    );
    assert!(
        history.iter().any(|h| h["outcome"] == "available"),
        "the check from before is kept: {s}"
    );
    assert_eq!(s["result"]["badVersions"][0]["version"], f.new_version.as_str(), "{s}");
    // Not offered again.
    let (r, _) = call(&mut c, 4, "Update.Check", json!({}));
    assert_eq!(r["result"]["updateAvailable"], false, "{r}");
    let (r, _) = call(&mut c, 5, "Meta.Shutdown", json!({}));
    assert!(r.get("result").is_some(), "{r}");
}

#[test]
fn a_build_that_crashes_on_start_after_a_restart_is_undone() {
    a_failing_build_is_undone_after_a_restart("crash");
}

#[test]
fn a_build_that_exits_soon_after_a_restart_is_undone() {
    a_failing_build_is_undone_after_a_restart("exit-after-ms=1500");
}

#[test]
fn a_versioned_build_that_keeps_failing_to_start_is_undone_on_its_third_start() {
    use serde_json::json;
    let f = fixtures();
    let broth = Broth::new(true);
    let inst = Install::new();
    let root = inst.home.path().join("app");
    let root_s = root.to_str().unwrap();
    for to in [&f.old_version, &f.new_version] {
        let out = inst.cmd(&broth, &["-y", "--root", root_s, "--to", to]).output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let exe = root.join("versions").join(&f.new_version).join("butler");
    // The launcher starts the chosen build; it crashes at once, every time.
    let daemon = || {
        let mut cmd = Command::new(&exe);
        inst.env(&mut cmd, &broth);
        cmd.env("BUTLER_UPDATE_PROBATION", "10s")
            .env("BUTLER_TEST_FAULT", format!("crash@{}", f.new_version))
            .args(["--json", "daemon", "--transport", "tcp", "--keep-alive"]);
        cmd
    };
    for start in 1..=2 {
        let out = daemon().output().unwrap();
        assert!(!out.status.success(), "start {start} did not crash");
    }
    // The third start chooses the previous build again and becomes it.
    let d = crate::util::DaemonProc::start_cmd(daemon());
    let mut c = d.client();
    let (v, _) = call(&mut c, 1, "Version.Get", json!({}));
    assert_eq!(v["result"]["version"], format!("v{}", f.old_version), "{v}");
    assert_eq!(std::fs::read_to_string(root.join(".chosen-version")).unwrap(), f.old_version);
    let (s, _) = call(&mut c, 2, "Update.Status", json!({}));
    assert_eq!(s["result"]["badVersions"][0]["version"], f.new_version.as_str(), "{s}");
    let undone = &s["result"]["history"][0];
    assert_eq!(undone["outcome"], "rolled-back", "{s}");
    assert!(undone["message"].as_str().unwrap().contains("did not stay up"), "{s}");
    let (r, _) = call(&mut c, 3, "Meta.Shutdown", json!({}));
    assert!(r.get("result").is_some(), "{r}");
}
