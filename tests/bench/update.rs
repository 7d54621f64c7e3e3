//! `make bench`, updater figures: `butler upgrade` of a ~10 MiB signed archive from a loopback
//! server, end to end (check, download, verification, unpack, smoke test, swap), against `curl` +
//! `unzip` of the same archive in the same run, and the upgrade's peak memory.

#[path = "../it/upgrade/server.rs"]
#[allow(dead_code)]
pub(crate) mod server;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use butler_release::{Publish, SigningKey};
use butler_updater::Channel;

use crate::median;

const RUNS: usize = 7;
const TARGET_ARCHIVE: u64 = 10 << 20;

pub(crate) fn run() {
    let work = tempfile::Builder::new().prefix("butler-bench-update-").tempdir().unwrap();
    // Shipped builds are stripped; the release profile keeps line tables, which would make the
    // binary alone larger than the 10 MiB archive this figure is about.
    let built = PathBuf::from(env!("CARGO_BIN_EXE_butler"));
    let bin = work.path().join("butler-stripped");
    let stripped =
        Command::new("strip").arg("-o").arg(&bin).arg(&built).status().is_ok_and(|s| s.success());
    if !stripped {
        std::fs::copy(&built, &bin).unwrap();
    }
    let version =
        butler_release::binary_version(&bin).expect("the butler under bench reports a version");
    let tree = work.path().join("broth");
    let key = SigningKey::generate().unwrap();
    let archive = publish_10mib(&bin, &version, &tree, work.path(), &key);
    let size = std::fs::metadata(&archive).unwrap().len();
    let srv = server::Server::start(tree.clone());
    let ch = Channel::current(false).name();
    let url = format!("{}/butler/{ch}/{version}/archive/default", srv.url());

    let mut upgrade_ms = Vec::new();
    let mut upgrade_rss = Vec::new();
    for i in 0..RUNS {
        let dir = work.path().join(format!("install-{i}"));
        let (t, ok, rss) = measured(&mut upgrade_cmd(&bin, &dir, &srv.url(), &key));
        assert!(ok, "butler upgrade failed in the bench");
        assert!(dir.join("butler.old").exists(), "the upgrade did not swap");
        upgrade_ms.push(t.as_secs_f64() * 1e3);
        upgrade_rss.extend(rss);
    }
    let idle_rss: Vec<u64> = (0..RUNS)
        .filter_map(|_| {
            let mut cmd = Command::new(&bin);
            cmd.args(["version", "--json"]).env("BUTLER_HOME", work.path().join("idle"));
            measured(&mut cmd).2
        })
        .collect();
    let up = median(upgrade_ms);
    println!(
        "update: butler upgrade of a {:.1} MiB signed archive from loopback, end to end: median {up:.1} ms over {RUNS} runs",
        size as f64 / (1 << 20) as f64
    );

    let have = |t: &str| {
        Command::new(t)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok()
    };
    if have("curl") && have("unzip") {
        let mut base_ms = Vec::new();
        for i in 0..RUNS {
            let dir = work.path().join(format!("baseline-{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            let zip = dir.join("a.zip");
            let start = Instant::now();
            let ok = Command::new("curl")
                .args(["-sf", "--noproxy", "*", "-o"])
                .arg(&zip)
                .arg(&url)
                .status()
                .unwrap()
                .success()
                && Command::new("unzip")
                    .arg("-qo")
                    .arg(&zip)
                    .arg("-d")
                    .arg(dir.join("out"))
                    .status()
                    .unwrap()
                    .success();
            assert!(ok, "curl + unzip failed in the bench");
            base_ms.push(start.elapsed().as_secs_f64() * 1e3);
        }
        let base = median(base_ms);
        println!(
            "update: curl + unzip of the same archive: median {base:.1} ms; butler upgrade / baseline = {:.2}x (target <= 1.3x)",
            up / base
        );
    } else {
        println!("update: curl + unzip baseline skipped (curl or unzip is not installed)");
    }
    restart_in_place(&bin, &srv.url(), &key, work.path());
    against_the_peer(&[("stripped", &bin), ("as built", &built)], &version, &key, work.path());
    // The same at four times the size: memory must not grow with the archive.
    let big_tree = work.path().join("broth-big");
    let big_archive =
        publish_sized(&bin, &version, &big_tree, work.path(), &key, 4 * TARGET_ARCHIVE);
    let big_size = std::fs::metadata(&big_archive).unwrap().len();
    let big_srv = server::Server::start(big_tree);
    let big_rss: Vec<u64> = (0..3)
        .filter_map(|i| {
            let dir = work.path().join(format!("install-big-{i}"));
            let (_, ok, rss) = measured(&mut upgrade_cmd(&bin, &dir, &big_srv.url(), &key));
            assert!(ok, "butler upgrade (big) failed in the bench");
            rss
        })
        .collect();
    if upgrade_rss.is_empty() || idle_rss.is_empty() || big_rss.is_empty() {
        println!("update: peak RSS skipped (GNU time is not installed at /usr/bin/time)");
        return;
    }
    let peak = median(upgrade_rss);
    let idle = median(idle_rss);
    println!(
        "update: peak RSS of butler upgrade: median {:.1} MiB (butler version alone: {:.1} MiB; +{:.1} MiB for a {:.1} MiB archive)",
        peak as f64 / 1024.0,
        idle as f64 / 1024.0,
        (peak as f64 - idle as f64) / 1024.0,
        size as f64 / (1 << 20) as f64
    );
    println!(
        "update: peak RSS of butler upgrade of a {:.1} MiB archive: median {:.1} MiB (independent of size: {:+.1} MiB vs the {:.1} MiB one)",
        big_size as f64 / (1 << 20) as f64,
        median(big_rss.clone()) as f64 / 1024.0,
        (median(big_rss) as f64 - peak as f64) / 1024.0,
        size as f64 / (1 << 20) as f64
    );
}

/// Publishes `bin` plus an incompressible payload sized so the archive is about 10 MiB.
/// `butler upgrade -y --force` of a fresh copy of `bin` installed in `dir`, from `url`.
fn upgrade_cmd(bin: &Path, dir: &Path, url: &str, key: &SigningKey) -> Command {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(bin, dir.join("butler")).unwrap();
    upgrade_cmd_in(dir, url, key)
}

fn publish_10mib(bin: &Path, version: &str, tree: &Path, work: &Path, key: &SigningKey) -> PathBuf {
    publish_sized(bin, version, tree, work, key, TARGET_ARCHIVE)
}

/// Publishes `bin` plus an incompressible payload sized so the archive is about `target` bytes.
pub(crate) fn publish_sized(
    bin: &Path,
    version: &str,
    tree: &Path,
    work: &Path,
    key: &SigningKey,
    target: u64,
) -> PathBuf {
    let payload = work.join("payload.bin");
    let mut want = target;
    let publish = |payload_len: u64| {
        std::fs::write(&payload, noise(payload_len as usize)).unwrap();
        let p = Publish {
            package: "butler".into(),
            channel: Channel::current(false),
            version: version.into(),
            binary: bin.to_owned(),
            extra_files: vec![payload.clone()],
            out: tree.to_owned(),
            expires_in: Duration::from_secs(3600),
            set_latest: true,
        };
        butler_release::publish(&p, Some(key)).unwrap().archive
    };
    let first = publish(want);
    let got = std::fs::metadata(&first).unwrap().len();
    // Noise does not compress, so the rest of the archive is the binary; subtract it.
    want = target.saturating_sub(got.saturating_sub(target)).max(1);
    publish(want)
}

fn noise(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut v = Vec::with_capacity(n + 8);
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(n);
    v
}

/// Runs to completion; wall time, success, and peak RSS in KiB.
///
/// The RSS comes from GNU time's wait4 on its own child: a child forked straight from this big
/// bench process would report this process's high-water mark (Linux carries it across exec).
fn measured(cmd: &mut Command) -> (Duration, bool, Option<u64>) {
    let gnu_time = Path::new("/usr/bin/time");
    let rss_file = tempfile::NamedTempFile::new().unwrap();
    let mut wrapped;
    let cmd = if gnu_time.is_file() {
        wrapped = Command::new(gnu_time);
        wrapped
            .arg("-f")
            .arg("%M")
            .arg("-o")
            .arg(rss_file.path())
            .arg(cmd.get_program())
            .args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => wrapped.env(k, v),
                None => wrapped.env_remove(k),
            };
        }
        &mut wrapped
    } else {
        cmd
    };
    cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    let start = Instant::now();
    let status = cmd.status().unwrap();
    let elapsed = start.elapsed();
    let rss = std::fs::read_to_string(rss_file.path())
        .ok()
        .and_then(|s| s.trim().lines().last()?.trim().parse().ok());
    (elapsed, status.success(), rss)
}

/// A restart in place under load: a daemon of this build, a per-call client (connect,
/// authenticate, `Version.Get`, close, in a loop) and `Update.Rollback {restart: true}` onto a
/// copy of the same build that `butler upgrade --force` left as `butler.old`. Measures the reply
/// → the first `Version.Get` the restarted process answers, and the longest call the per-call
/// client saw (and whether any failed).
fn restart_in_place(bin: &Path, url: &str, key: &SigningKey, work: &Path) {
    use std::io::{BufRead, BufReader, Write};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    let dir = work.join("restart");
    let upgrade = || {
        let (_, ok, _) = measured(&mut upgrade_cmd_in(&dir, url, key));
        assert!(ok, "butler upgrade --force failed in the restart bench");
    };
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(bin, dir.join("butler")).unwrap();
    let mut daemon = Command::new(dir.join("butler"));
    daemon
        .args(["--json", "daemon", "--transport", "tcp", "--keep-alive", "--no-auto-update"])
        .env("BUTLER_HOME", dir.join("home"))
        .env("BUTLER_BROTH_URL", url)
        .env("BUTLER_TRUSTED_KEYS", key.public_base64())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = daemon.spawn().unwrap();
    let (_out, address, secret) = crate::listen_notification(&mut child);
    let auth = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":0,\"method\":\"Meta.Authenticate\",\"params\":{{\"secret\":\"{secret}\"}}}}\n"
    );
    let connect = move |address: &str| {
        let s = std::net::TcpStream::connect(address)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut r = BufReader::new(s.try_clone()?);
        let mut w = s;
        w.write_all(auth.as_bytes())?;
        let mut line = String::new();
        r.read_line(&mut line)?;
        if !line.contains("\"ok\":true") {
            return Err(std::io::Error::other(format!("not authenticated: {line}")));
        }
        Ok::<_, std::io::Error>((r, w))
    };
    let call = |r: &mut BufReader<std::net::TcpStream>, w: &mut std::net::TcpStream, msg: &str| {
        w.write_all(msg.as_bytes())?;
        loop {
            let mut line = String::new();
            if r.read_line(&mut line)? == 0 {
                return Err(std::io::Error::other("closed"));
            }
            let v: serde_json::Value =
                serde_json::from_str(&line).map_err(std::io::Error::other)?;
            if v.get("method").is_none() {
                return Ok::<_, std::io::Error>(v);
            }
        }
    };
    let version_get = "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"Version.Get\",\"params\":{}}\n";

    // The per-call client, for the whole run.
    let stop = Arc::new(AtomicBool::new(false));
    let (longest_us, failures, calls) =
        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let looping = {
        let (stop, longest_us, failures, calls) =
            (stop.clone(), longest_us.clone(), failures.clone(), calls.clone());
        let (address, connect, call) = (address.clone(), connect.clone(), call);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let ok = connect(&address)
                    .and_then(|(mut r, mut w)| call(&mut r, &mut w, version_get))
                    .is_ok_and(|v| v.get("result").is_some());
                if !ok {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                calls.fetch_add(1, Ordering::Relaxed);
                longest_us.fetch_max(t.elapsed().as_micros() as u64, Ordering::Relaxed);
            }
        })
    };
    let (mut fr, mut fw) = connect(&address).unwrap();
    fw.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"Meta.Flow\",\"params\":{}}\n")
        .unwrap();
    let (mut cr, mut cw) = connect(&address).unwrap();
    let mut to_first_call = Vec::new();
    for _ in 0..RUNS {
        upgrade();
        let rollback = "{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"Update.Rollback\",\"params\":{\"restart\":true}}\n";
        let reply = call(&mut cr, &mut cw, rollback).unwrap();
        let replied = Instant::now();
        assert!(reply.get("result").is_some(), "Update.Rollback failed: {reply}");
        // The restarted process announces itself on the carried Meta.Flow connection.
        loop {
            let mut line = String::new();
            assert!(fr.read_line(&mut line).unwrap() > 0, "the Meta.Flow connection closed");
            if line.contains("\"restarted\":true") {
                break;
            }
        }
        let v = call(&mut cr, &mut cw, version_get).unwrap();
        assert!(v.get("result").is_some(), "{v}");
        to_first_call.push(replied.elapsed().as_secs_f64() * 1e3);
    }
    stop.store(true, Ordering::Relaxed);
    looping.join().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let m = median(to_first_call);
    let longest = longest_us.load(Ordering::Relaxed) as f64 / 1e3;
    let failed = failures.load(Ordering::Relaxed);
    let calls = calls.load(Ordering::Relaxed);
    crate::report(
        "restart in place: reply -> first call the new process answers",
        format!("{m:.1} ms"),
        "<= 150 ms",
        m <= 150.0,
        None,
    );
    crate::report(
        "restart in place: longest per-call client call; failed calls",
        format!("{longest:.1} ms; {failed}"),
        "<= 100 ms; 0",
        longest <= 100.0 && failed == 0,
        Some(format!("{calls} calls over {RUNS} restarts")),
    );
}

/// `butler upgrade` against the updater a launcher author would write with the `self_update`
/// crate (`tests/bench/peer`, built by `make bench`; its path in `BUTLER_BENCH_PEER`), on the
/// same signed loopback tree: the binary alone, stripped (~10 MiB) and as built (~50 MiB). Runs
/// alternate which goes first; the peer verifies nothing, so butler's checks are in its time.
fn against_the_peer(bins: &[(&str, &Path)], version: &str, key: &SigningKey, work: &Path) {
    const PEER_RUNS: usize = 9;
    let Some(peer) = std::env::var_os("BUTLER_BENCH_PEER").map(PathBuf::from) else {
        println!(
            "update: the self_update peer is skipped (BUTLER_BENCH_PEER unset; make bench builds it)"
        );
        return;
    };
    for (what, bin) in bins {
        let tree = work.join(format!("broth-peer-{}", what.replace(' ', "-")));
        let p = Publish {
            package: "butler".into(),
            channel: Channel::current(false),
            version: version.into(),
            binary: bin.to_path_buf(),
            extra_files: Vec::new(),
            out: tree.clone(),
            expires_in: Duration::from_secs(3600),
            set_latest: true,
        };
        butler_release::publish(&p, Some(key)).unwrap();
        let srv = server::Server::start(tree);
        let size = std::fs::metadata(bin).unwrap().len();
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        let (mut our_rss, mut their_rss) = (Vec::new(), Vec::new());
        for i in 0..=PEER_RUNS {
            let butler = || {
                let dir = work.join(format!("peer-butler-{what}-{i}"));
                let (t, ok, rss) = measured(&mut upgrade_cmd(bin, &dir, &srv.url(), key));
                assert!(
                    ok && dir.join("butler.old").exists(),
                    "butler upgrade failed in the bench"
                );
                (t, rss)
            };
            let peer_run = || {
                let dir = work.join(format!("peer-su-{what}-{i}"));
                std::fs::create_dir_all(dir.join("tmp")).unwrap();
                let exe = dir.join("butler");
                std::fs::copy(&peer, &exe).unwrap();
                let mut cmd = Command::new(&exe);
                cmd.arg(srv.url())
                    .arg(Channel::current(false).name())
                    .arg("--force")
                    .env("TMPDIR", dir.join("tmp"))
                    .env_remove("http_proxy")
                    .env_remove("HTTP_PROXY");
                let (t, ok, rss) = measured(&mut cmd);
                let installed = std::fs::metadata(&exe).map(|m| m.len()).unwrap_or(0);
                assert!(ok && installed == size, "the self_update peer failed in the bench");
                (t, rss)
            };
            let (a, b) = if i % 2 == 0 {
                let a = butler();
                (a, peer_run())
            } else {
                let b = peer_run();
                (butler(), b)
            };
            // The first round warms the page cache and the server.
            if i == 0 {
                continue;
            }
            ours.push(a.0.as_secs_f64() * 1e3);
            theirs.push(b.0.as_secs_f64() * 1e3);
            our_rss.extend(a.1);
            their_rss.extend(b.1);
        }
        let (ours, theirs) = (median(ours), median(theirs));
        let ratio = ours / theirs;
        let rss = |v: Vec<u64>| if v.is_empty() { f64::NAN } else { median(v) as f64 / 1024.0 };
        crate::report(
            &format!(
                "update vs self_update peer, {:.0} MiB binary ({what})",
                size as f64 / (1 << 20) as f64
            ),
            format!("{ratio:.2}x"),
            "<= 1.0x",
            ratio <= 1.0,
            Some(format!(
                "butler {ours:.1} ms, {:.1} MiB peak; peer {theirs:.1} ms, {:.1} MiB peak; {PEER_RUNS} runs each",
                rss(our_rss),
                rss(their_rss)
            )),
        );
    }
}

/// `butler upgrade -y --force` of the butler already installed in `dir`, from `url`.
fn upgrade_cmd_in(dir: &Path, url: &str, key: &SigningKey) -> Command {
    let mut cmd = Command::new(dir.join("butler"));
    cmd.args(["--json", "upgrade", "-y", "--force"])
        .env("BUTLER_HOME", dir.join("home"))
        .env("BUTLER_BROTH_URL", url)
        .env("BUTLER_TRUSTED_KEYS", key.public_base64())
        .env_remove("http_proxy")
        .env_remove("HTTP_PROXY");
    cmd
}
