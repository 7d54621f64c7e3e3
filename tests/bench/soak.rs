//! `make soak`: a release daemon under mixed load for a bounded time (`SOAK_SECONDS`, default
//! 120), loopback only. Clients on their own connections loop `Version.Get`, `Test.Double`,
//! `Process.Run` of `sh -c 'echo …'` and `Streams.List`; stream workers run children whose stream
//! servers get many log streams at once; half-way, `Update.Apply {restart: true}` restarts the
//! daemon in place into a newer build (`SOAK_NEW_BIN`, which `make soak` builds) from a loopback
//! broth tree. Reports throughput, errors (must be 0), the slowest call of each kind, and RSS and
//! threads along the way (no growth). Not part of `make bench` or `make test`. `SOAK_CLIENTS`,
//! `SOAK_STREAM_WORKERS`, `SOAK_STREAMS` and `SOAK_BIN` (the build under load) change the mix.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use butler::streaming::streamclient::StreamClient;
use butler_release::SigningKey;
use serde_json::{Value, json};

use crate::{butler_bin, listen_notification, rss_mib};

/// A call that takes longer than this counts as an error.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

fn env_or(key: &str, default: u64) -> u64 {
    std::env::var(key).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// What every worker adds to.
#[derive(Default)]
struct Tally {
    calls: [AtomicU64; 5],
    errors: AtomicU64,
    slowest_us: [AtomicU64; 5],
    streams_opened: AtomicU64,
    /// `Process.Run` calls in flight, and whether new ones wait (for the restart).
    runs_in_flight: AtomicUsize,
    runs_paused: AtomicBool,
    stop: AtomicBool,
}

const METHODS: [&str; 5] =
    ["Version.Get", "Test.Double", "Process.Run", "Streams.List", "Process.Run + streams"];

impl Tally {
    fn error(&self, what: &str) {
        if self.errors.fetch_add(1, Ordering::Relaxed) < 10 {
            eprintln!("soak: error: {what}");
        }
    }

    /// Takes a slot for a `Process.Run`, unless runs are paused.
    fn start_run(&self) -> bool {
        self.runs_in_flight.fetch_add(1, Ordering::SeqCst);
        if self.runs_paused.load(Ordering::SeqCst) {
            self.runs_in_flight.fetch_sub(1, Ordering::SeqCst);
            return false;
        }
        true
    }

    fn end_run(&self) {
        self.runs_in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One authenticated connection.
struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    next_id: u64,
}

impl Client {
    fn connect(address: &str, secret: &str) -> std::io::Result<Client> {
        let s = TcpStream::connect(address)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(CALL_TIMEOUT))?;
        let mut c = Client { reader: BufReader::new(s.try_clone()?), writer: s, next_id: 1 };
        let (r, _) = c.call("Meta.Authenticate", json!({ "secret": secret }), |_| {})?;
        if r["result"]["ok"] != true {
            return Err(std::io::Error::other(format!("not authenticated: {r}")));
        }
        Ok(c)
    }

    /// The reply to one request; notifications before it go to `on_note`.
    fn call(
        &mut self,
        method: &str,
        params: Value,
        mut on_note: impl FnMut(&Value),
    ) -> std::io::Result<(Value, Duration)> {
        let id = self.next_id;
        self.next_id += 1;
        let mut line = serde_json::to_vec(
            &json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}),
        )?;
        line.push(b'\n');
        let t = Instant::now();
        self.writer.write_all(&line)?;
        let mut buf = String::new();
        loop {
            buf.clear();
            if self.reader.read_line(&mut buf)? == 0 {
                return Err(std::io::Error::other("the daemon closed the connection"));
            }
            let v: Value = serde_json::from_str(&buf).map_err(std::io::Error::other)?;
            if v.get("method").is_some() {
                on_note(&v);
            } else if v["id"] == id {
                return Ok((v, t.elapsed()));
            }
        }
    }
}

/// A daemon from `dir/butler`, updating from `url`.
#[allow(clippy::zombie_processes)] // `run` kills and reaps it
fn start_daemon(dir: &Path, url: &str, key: &SigningKey) -> (Child, String, String) {
    let mut child = Command::new(dir.join("butler"))
        .args(["--json", "daemon", "--transport", "tcp", "--keep-alive", "--no-auto-update"])
        .arg("--dbpath")
        .arg(dir.join("butler.db"))
        .env("BUTLER_HOME", dir.join("home"))
        .env("BUTLER_BROTH_URL", url)
        .env("BUTLER_TRUSTED_KEYS", key.public_base64())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (out, address, secret) = listen_notification(&mut child);
    // Later stdout lines are not read; dropping the pipe would fail the daemon's writes.
    std::mem::forget(out);
    (child, address, secret)
}

/// One mixed-call client until `stop`.
fn mixed_client(n: usize, address: &str, secret: &str, tally: &Tally) {
    let mut c = match Client::connect(address, secret) {
        Ok(c) => c,
        Err(e) => return tally.error(&format!("client {n} cannot connect: {e}")),
    };
    let mut i: u64 = 0;
    while !tally.stop.load(Ordering::Relaxed) {
        i += 1;
        let kind = (i as usize + n) % 4;
        let ran = kind == 2 && tally.start_run();
        let (method, params) = match kind {
            0 => ("Version.Get", json!({})),
            1 => ("Test.Double", json!({ "number": i })),
            2 if ran => (
                "Process.Run",
                json!({"command": ["sh", "-c", format!("echo soak {n} {i}")], "prefix": format!("soak/c{n}/r{i}")}),
            ),
            2 => ("Version.Get", json!({})),
            _ => ("Streams.List", json!({"prefix": format!("soak/c{n}/"), "limit": 50})),
        };
        let got = c.call(method, params, |_| {});
        if ran {
            tally.end_run();
        }
        let (reply, took) = match got {
            Ok(r) => r,
            Err(e) => {
                tally.error(&format!("client {n} {method}: {e}"));
                match Client::connect(address, secret) {
                    Ok(fresh) => c = fresh,
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
                continue;
            }
        };
        let slot = METHODS.iter().position(|m| *m == method).unwrap();
        tally.slowest_us[slot].fetch_max(took.as_micros() as u64, Ordering::Relaxed);
        tally.calls[slot].fetch_add(1, Ordering::Relaxed);
        let r = &reply["result"];
        let ok = match method {
            "Version.Get" => r["version"].is_string(),
            "Test.Double" => r["number"] == 2 * i,
            "Process.Run" => {
                r["exitCode"] == 0 && r["streams"].as_array().is_some_and(|s| s.len() == 2)
            }
            _ => r["streams"].is_array(),
        };
        if !ok {
            tally.error(&format!("client {n} {method}: {reply}"));
        }
    }
}

/// Runs children that each get `streams` log streams at once from this process, through the
/// child's stream server, until `stop`.
fn stream_worker(n: usize, address: &str, secret: &str, streams: usize, tally: &Tally) {
    let mut c = match Client::connect(address, secret) {
        Ok(c) => c,
        Err(e) => return tally.error(&format!("stream worker {n} cannot connect: {e}")),
    };
    let mut round = 0u64;
    while !tally.stop.load(Ordering::Relaxed) {
        round += 1;
        if !tally.start_run() {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        // The child lives until the streams are written; the run waits for them all.
        let mut writers = Vec::new();
        let got = c.call(
            "Process.Run",
            json!({"command": ["sleep", "0.5"], "prefix": format!("soak/s{n}/r{round}")}),
            |note| {
                if note["method"] != "Process.Started" {
                    return;
                }
                let uri = note["params"]["streamServer"].as_str().unwrap_or_default();
                let client = match StreamClient::new(uri, None) {
                    Ok(client) => client,
                    Err(e) => return tally.error(&format!("stream client: {e}")),
                };
                for s in 0..streams {
                    match client.open_text(&format!("log{s}")) {
                        Ok(mut w) => {
                            let _ =
                                w.write_all(format!("stream {s} of round {round}\n").as_bytes());
                            tally.streams_opened.fetch_add(1, Ordering::Relaxed);
                            writers.push(w);
                        }
                        Err(e) => tally.error(&format!("opening a stream: {e}")),
                    }
                }
                // Closed: the run now waits only for the child.
                writers.clear();
            },
        );
        tally.end_run();
        match got {
            Ok((r, took)) => {
                tally.slowest_us[4].fetch_max(took.as_micros() as u64, Ordering::Relaxed);
                tally.calls[4].fetch_add(1, Ordering::Relaxed);
                let n_streams = r["result"]["streams"].as_array().map_or(0, Vec::len);
                if r["result"]["exitCode"] != 0 || n_streams != streams + 2 {
                    tally.error(&format!("stream worker {n}: {n_streams} streams: {r}"));
                }
            }
            Err(e) => {
                tally.error(&format!("stream worker {n}: {e}"));
                if let Ok(fresh) = Client::connect(address, secret) {
                    c = fresh;
                }
            }
        }
    }
}

/// RSS (MiB) and thread count of `pid`.
fn sample(pid: u32) -> (f64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    (rss_mib(pid), threads)
}

pub(crate) fn run() {
    let seconds = env_or("SOAK_SECONDS", 120);
    let clients = env_or("SOAK_CLIENTS", 16) as usize;
    let stream_workers = env_or("SOAK_STREAM_WORKERS", 4) as usize;
    let streams_each = env_or("SOAK_STREAMS", 50) as usize;
    let work = tempfile::Builder::new().prefix("butler-soak-").tempdir().unwrap();
    let dir = work.path().join("install");
    std::fs::create_dir_all(&dir).unwrap();
    // `SOAK_BIN` soaks another build (say, an older one, for a comparison).
    let bin = std::env::var_os("SOAK_BIN").map_or_else(butler_bin, PathBuf::from);
    std::fs::copy(&bin, dir.join("butler")).unwrap();

    // The newer build to restart into, published to a loopback broth tree.
    let key = SigningKey::generate().unwrap();
    let new_bin = std::env::var_os("SOAK_NEW_BIN").map(PathBuf::from);
    let new_version = new_bin.as_deref().map(|b| {
        let v = butler_release::binary_version(b).expect("SOAK_NEW_BIN reports a version");
        let tree = work.path().join("broth");
        crate::update::publish_sized(b, &v, &tree, work.path(), &key, 0);
        (v, tree)
    });
    let srv =
        new_version.as_ref().map(|(_, tree)| crate::update::server::Server::start(tree.clone()));
    let url = srv.as_ref().map_or_else(|| "http://127.0.0.1:9/".to_owned(), |s| s.url());
    let (mut daemon, address, secret) = start_daemon(&dir, &url, &key);
    let pid = daemon.id();
    println!(
        "soak: {seconds} s, {clients} mixed clients, {stream_workers} stream workers x {streams_each} streams, daemon pid {pid}"
    );

    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let (rss_start, threads_start) = sample(pid);
    let mut workers = Vec::new();
    for n in 0..clients {
        let (a, s, t) = (address.clone(), secret.clone(), Arc::clone(&tally));
        workers.push(std::thread::spawn(move || mixed_client(n, &a, &s, &t)));
    }
    for n in 0..stream_workers {
        let (a, s, t) = (address.clone(), secret.clone(), Arc::clone(&tally));
        workers.push(std::thread::spawn(move || stream_worker(n, &a, &s, streams_each, &t)));
    }

    let deadline = started + Duration::from_secs(seconds);
    let half = started + Duration::from_secs(seconds / 2);
    let mut restarted = None;
    let mut peak = (rss_start, threads_start);
    let mut timeline = Vec::new();
    let mut next_sample = started;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        if Instant::now() >= next_sample {
            let (rss, threads) = sample(pid);
            peak = (peak.0.max(rss), peak.1.max(threads));
            timeline.push((started.elapsed().as_secs(), rss, threads));
            next_sample += Duration::from_secs(10);
        }
        if restarted.is_none() && Instant::now() >= half && new_version.is_some() {
            restarted = Some(restart(&address, &secret, &tally, pid));
        }
    }
    let (rss_loaded_end, threads_loaded_end) = sample(pid);
    tally.stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.join();
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Idle again: what the daemon gives back.
    std::thread::sleep(Duration::from_secs(3));
    let (rss_idle_end, threads_idle_end) = sample(pid);
    let _ = daemon.kill();
    let _ = daemon.wait();

    let calls: Vec<u64> = tally.calls.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    let total: u64 = calls.iter().sum();
    let errors = tally.errors.load(Ordering::Relaxed);
    println!(
        "soak: {total} calls in {elapsed:.0} s = {:.0} calls/s ({})",
        total as f64 / elapsed,
        METHODS.iter().zip(&calls).map(|(m, c)| format!("{m} {c}")).collect::<Vec<_>>().join(", ")
    );
    println!(
        "soak: {} log streams opened by stream workers; slowest call: {}",
        tally.streams_opened.load(Ordering::Relaxed),
        METHODS
            .iter()
            .zip(&tally.slowest_us)
            .map(|(m, us)| format!("{m} {:.0} ms", us.load(Ordering::Relaxed) as f64 / 1e3))
            .collect::<Vec<_>>()
            .join(", ")
    );
    match (&restarted, &new_version) {
        (Some(r), Some((v, _))) => println!("soak: restart in place into {v}: {r}"),
        _ => println!("soak: no restart (SOAK_NEW_BIN not set)"),
    }
    for (t, rss, threads) in &timeline {
        println!("soak: t={t:>4}s  RSS {rss:6.1} MiB  threads {threads}");
    }
    println!(
        "soak: RSS start {rss_start:.1} MiB, end under load {rss_loaded_end:.1} MiB, end idle {rss_idle_end:.1} MiB, peak {:.1} MiB; threads {threads_start} -> {threads_loaded_end} (idle {threads_idle_end}), peak {}",
        peak.0, peak.1
    );
    let verdict = if errors == 0 { "ok" } else { "FAILED" };
    println!("soak: errors {errors} (target 0: {verdict})");
    if errors != 0 {
        std::process::exit(1);
    }
}

/// Waits for the running children to end (a daemon refuses to restart while it has any), applies
/// the update with a restart, and resumes. Returns what happened, for the report.
fn restart(address: &str, secret: &str, tally: &Tally, pid: u32) -> String {
    let t = Instant::now();
    tally.runs_paused.store(true, Ordering::SeqCst);
    while tally.runs_in_flight.load(Ordering::SeqCst) > 0 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let drained = t.elapsed();
    let before = sample(pid).0;
    let result = Client::connect(address, secret).and_then(|mut c| {
        let (r, took) = c.call("Update.Apply", json!({"restart": true}), |_| {})?;
        // The restarted process answers on the same connection.
        let (v, _) = c.call("Version.Get", json!({}), |_| {})?;
        Ok((r, took, v))
    });
    tally.runs_paused.store(false, Ordering::SeqCst);
    match result {
        Ok((r, took, v))
            if r["result"]["installedVersion"].is_string()
                && r["result"]["restartRequired"] == false =>
        {
            format!(
                "runs drained in {:.0} ms, Update.Apply answered in {:.0} ms, then Version.Get says {}; RSS {before:.1} MiB before, {:.1} MiB just after",
                drained.as_secs_f64() * 1e3,
                took.as_secs_f64() * 1e3,
                v["result"]["version"],
                sample(pid).0
            )
        }
        Ok((r, _, _)) => {
            tally.error(&format!("Update.Apply: {r}"));
            format!("FAILED: {r}")
        }
        Err(e) => {
            tally.error(&format!("Update.Apply: {e}"));
            format!("FAILED: {e}")
        }
    }
}
