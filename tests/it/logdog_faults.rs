//! The `logdog` output when things go wrong: a Pub/Sub endpoint that is down, slow or refuses
//! (4xx), a Coordinator that refuses, a spool whose disk is full; and the production path
//! against the real engine, Google's Pub/Sub emulator (stopped and started again mid-run), with
//! only RegisterPrefix answered by the stand-in of `streaming_logdog.rs`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prost::Message;

use crate::streaming_logdog::{State, collect, logdog_run, logpb, stand_in, text_of};
use crate::util::{TestHome, Tmpfs, stderr};

/// `n` numbered lines from `tag`, as the child writes them.
fn lines(tag: &str, n: usize) -> String {
    (0..n).map(|i| format!("{tag} line {i}\n")).collect()
}

fn script(tag: &str, n: usize) -> String {
    format!("i=0; while [ $i -lt {n} ]; do echo \"{tag} line $i\"; i=$((i+1)); done")
}

fn spooled(home: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(home.join("spool/logdog"))
        .map(|rd| rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fn one_error_line(out: &Output) -> String {
    let err = stderr(out);
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("butler: error:")).collect();
    assert_eq!(errors.len(), 1, "{err}");
    errors[0].to_owned()
}

/// The stream `out` under `prefix`, as the stand-in collected it.
fn delivered(state: &Mutex<State>, prefix: &str) -> Vec<u8> {
    let st = state.lock().unwrap();
    assert!(st.violations.is_empty(), "the Collector would reject: {:?}", st.violations);
    st.streams.get(&(prefix.to_owned(), "out".to_owned())).map(text_of).unwrap_or_default()
}

#[test]
fn a_pubsub_endpoint_that_is_down_spools_and_the_next_run_delivers() {
    let state = Arc::new(Mutex::new(State::default()));
    let coordinator = stand_in(Arc::clone(&state));
    // A port nothing listens on: connections are refused.
    let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let home = TestHome::new();
    let out = home
        .butler()
        .env("PUBSUB_EMULATOR_HOST", format!("127.0.0.1:{down}"))
        .args(["-project", "proj", "-prefix", "down/run"])
        .args(["-coordinator-host", &format!("localhost:{coordinator}")])
        .args(["-output", "logdog,retry-initial=10ms,retry-max=20ms,retry-attempts=2,drain=100ms"])
        .args(["run", "-stdout", "name=out", "--", "sh", "-c", &script("down", 300)])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(250), "{}", stderr(&out));
    let error = one_error_line(&out);
    assert!(error.contains("stay spooled"), "{error}");
    assert!(stderr(&out).contains("Connection refused"), "says why: {}", stderr(&out));
    assert!(!spooled(home.path()).is_empty());
    assert!(spooled(home.path()).iter().all(|n| n.ends_with(".msg")), "{:?}", spooled(home.path()));

    // The endpoint is back (the stand-in publishes too): the next run delivers the backlog.
    let out = logdog_run(&home, coordinator, "next/run", "retry-attempts=2,drain=5s", "echo next");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(delivered(&state, "down/run"), lines("down", 300).as_bytes());
    assert_eq!(delivered(&state, "next/run"), b"next\n");
    assert!(spooled(home.path()).is_empty(), "{:?}", spooled(home.path()));
}

#[test]
fn a_pubsub_endpoint_that_stalls_times_out_and_the_bundle_is_sent_again() {
    let state = Arc::new(Mutex::new(State {
        publish_stalls: 3,
        stall: Duration::from_secs(3),
        ..State::default()
    }));
    let port = stand_in(Arc::clone(&state));
    let home = TestHome::new();
    let started = Instant::now();
    let out = logdog_run(
        &home,
        port,
        "slow/run",
        "retry-attempts=2,drain=10s,timeout=300ms",
        &script("slow", 500),
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("no answer in time"), "{}", stderr(&out));
    assert_eq!(delivered(&state, "slow/run"), lines("slow", 500).as_bytes());
    assert!(started.elapsed() < Duration::from_secs(9), "took {:?}", started.elapsed());
    assert!(spooled(home.path()).is_empty());
}

#[test]
fn a_pubsub_endpoint_that_refuses_is_not_hammered_and_nothing_is_lost() {
    // 403 is permanent: no retries for that bundle, straight to the spool; it is tried again
    // later in the run, when the endpoint takes it.
    let state = Arc::new(Mutex::new(State { publish_rejections: 2, ..State::default() }));
    let port = stand_in(Arc::clone(&state));
    let home = TestHome::new();
    let out =
        logdog_run(&home, port, "refused/run", "retry-attempts=5,drain=5s", &script("r", 300));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("403"), "the refusal is reported: {}", stderr(&out));
    assert_eq!(delivered(&state, "refused/run"), lines("r", 300).as_bytes());
    assert!(spooled(home.path()).is_empty());

    // Refused for good: the run fails, naming the answer, and the bundles stay spooled.
    let state = Arc::new(Mutex::new(State { publish_rejections: u32::MAX, ..State::default() }));
    let port = stand_in(Arc::clone(&state));
    let out = logdog_run(&home, port, "denied/run", "retry-attempts=5,drain=100ms", "echo denied");
    assert_eq!(out.status.code(), Some(250), "{}", stderr(&out));
    assert!(one_error_line(&out).contains("stay spooled"), "{}", stderr(&out));
    assert!(stderr(&out).contains("403"), "{}", stderr(&out));
    let publishes = state.lock().unwrap().publishes;
    assert!(publishes < 40, "a refusal is not retried at the retry rate: {publishes} requests");
    assert!(!spooled(home.path()).is_empty());
}

#[test]
fn a_coordinator_that_refuses_fails_at_once_and_runs_nothing_unlogged() {
    let state = Arc::new(Mutex::new(State { register_denied: true, ..State::default() }));
    let port = stand_in(Arc::clone(&state));
    let home = TestHome::new();
    let marker = home.path().join("ran");
    let out = logdog_run(
        &home,
        port,
        "denied/prefix",
        "retry-attempts=5",
        &format!("touch {}", marker.display()),
    );
    assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
    let error = one_error_line(&out);
    assert!(error.contains("RegisterPrefix") && error.contains("code 7"), "{error}");
    assert_eq!(state.lock().unwrap().publishes, 0);
    assert!(!marker.exists(), "the child ran although its log had nowhere to go");
}

#[test]
fn a_coordinator_that_is_down_fails_after_its_retries_and_says_why() {
    let down = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let home = TestHome::new();
    let marker = home.path().join("ran");
    let out = logdog_run(
        &home,
        down,
        "down/coordinator",
        "retry-attempts=2",
        &format!("touch {}", marker.display()),
    );
    assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
    let error = one_error_line(&out);
    assert!(error.contains("RegisterPrefix") && error.contains("Connection refused"), "{error}");
    assert!(error.contains("after 10 attempts"), "{error}");
    assert!(!marker.exists(), "the child ran although its log had nowhere to go");
}

#[test]
fn a_full_disk_under_the_spool_holds_bundles_until_the_endpoint_is_back() {
    let Some(fs) = Tmpfs::mount("a_full_disk_under_the_spool", "1m") else { return };
    // Publishing fails long enough that every bundle of the run wants the spool.
    let state = Arc::new(Mutex::new(State { publish_failures: 40, ..State::default() }));
    let port = stand_in(Arc::clone(&state));
    let run = |prefix: &str, options: &str, script: &str| {
        TestHome::new()
            .butler()
            .env("BUTLER_HOME", fs.path())
            .env("PUBSUB_EMULATOR_HOST", format!("127.0.0.1:{port}"))
            .args(["-project", "proj", "-prefix", prefix])
            .args(["-coordinator-host", &format!("localhost:{port}")])
            .args(["-output", &format!("logdog,retry-initial=10ms,retry-max=20ms,{options}")])
            .args(["-output-max-buffer-age", "20ms"])
            .args(["run", "-stdout", "name=out", "--", "sh", "-c", script])
            .output()
            .unwrap()
    };
    std::fs::create_dir_all(fs.path().join("spool/logdog")).unwrap();
    let filler = fs.fill(0);
    let out = run("full/spool", "retry-attempts=1,drain=10s", &script("held", 3000));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("holding the bundle in memory"), "{}", stderr(&out));
    assert_eq!(delivered(&state, "full/spool"), lines("held", 3000).as_bytes());
    assert!(spooled(fs.path()).is_empty(), "nothing half-written: {:?}", spooled(fs.path()));

    // The endpoint stays down and the disk full: the run says how many bundles are lost.
    state.lock().unwrap().publish_failures = u32::MAX;
    let out = run("lost/bundles", "retry-attempts=1,drain=100ms", &script("lost", 100));
    assert_eq!(out.status.code(), Some(250), "{}", stderr(&out));
    let error = one_error_line(&out);
    assert!(error.contains("neither delivered nor spooled") && error.contains("full"), "{error}");
    assert!(spooled(fs.path()).is_empty(), "nothing half-written: {:?}", spooled(fs.path()));

    // Space again: what cannot be delivered is spooled, and delivered by the next run.
    std::fs::remove_file(filler).unwrap();
    let out = run("spooled/again", "retry-attempts=1,drain=100ms", &script("again", 100));
    assert_eq!(out.status.code(), Some(250), "{}", stderr(&out));
    assert!(!spooled(fs.path()).is_empty());
    state.lock().unwrap().publish_failures = 0;
    let out = run("delivered/after", "retry-attempts=1,drain=5s", "echo after");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(delivered(&state, "spooled/again"), lines("again", 100).as_bytes());
    assert!(spooled(fs.path()).is_empty());
}

// ---- The real Pub/Sub emulator ----

/// Google's Pub/Sub emulator, started through `gcloud` in a process group of its own (gcloud
/// starts a JVM child), killed with its whole group on drop.
struct Emulator {
    child: Child,
    port: u16,
    data_dir: PathBuf,
    /// Killed and reaped already: its group id may belong to someone else by now.
    stopped: bool,
}

const PROJECT: &str = "luci-logdog";

impl Emulator {
    /// Whether gcloud and java are installed; says why not when they are not.
    fn available(test: &str) -> bool {
        for tool in ["gcloud", "java"] {
            let found = std::env::var_os("PATH")
                .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()));
            if !found {
                eprintln!(
                    "skipped {test}: {tool} is not installed (the Pub/Sub emulator needs gcloud and java)"
                );
                return false;
            }
        }
        true
    }

    /// Starts it and waits until it answers; `Err` with its output when it exits first.
    fn start(port: u16, data_dir: &Path) -> Result<Emulator, String> {
        use std::os::unix::process::CommandExt;
        let log = std::fs::File::create(data_dir.join("emulator.log")).unwrap();
        let child = Command::new("gcloud")
            .args(["beta", "emulators", "pubsub", "start", "--quiet"])
            .arg(format!("--host-port=127.0.0.1:{port}"))
            .arg(format!("--data-dir={}", data_dir.display()))
            .env("CLOUDSDK_CORE_DISABLE_USAGE_REPORTING", "true")
            .env("CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK", "true")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap();
        let mut emu = Emulator { child, port, data_dir: data_dir.to_owned(), stopped: false };
        // The JVM takes a few seconds; the deadline allows for a loaded machine.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if http(port, "GET", "/", "").is_some_and(|(s, _)| s == 200) {
                return Ok(emu);
            }
            if let Some(status) = emu.child.try_wait().unwrap() {
                emu.stopped = true;
                return Err(format!("the emulator exited ({status}): {}", emu.log()));
            }
            assert!(
                Instant::now() < deadline,
                "the emulator did not answer in 60 s: {}",
                emu.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("emulator.log")).unwrap_or_default()
    }

    /// The topic RegisterPrefix names and a subscription to it (an emulator keeps neither across
    /// a restart).
    fn create_topic_and_subscription(&self) {
        let topic = format!("/v1/projects/{PROJECT}/topics/logs");
        let (s, b) = http(self.port, "PUT", &topic, "{}").expect("PUT topic");
        assert_eq!(s, 200, "create topic: {b}");
        let body =
            format!(r#"{{"topic":"projects/{PROJECT}/topics/logs","ackDeadlineSeconds":60}}"#);
        let (s, b) =
            http(self.port, "PUT", &format!("/v1/projects/{PROJECT}/subscriptions/all"), &body)
                .expect("PUT subscription");
        assert_eq!(s, 200, "create subscription: {b}");
    }

    /// Pulls (and acknowledges) what is there; each message's `data`, decoded.
    fn pull(&self) -> Vec<Vec<u8>> {
        use base64::Engine;
        let path = format!("/v1/projects/{PROJECT}/subscriptions/all");
        let Some((200, body)) = http(
            self.port,
            "POST",
            &format!("{path}:pull"),
            r#"{"maxMessages":100,"returnImmediately":true}"#,
        ) else {
            return Vec::new();
        };
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let mut data = Vec::new();
        let mut acks = Vec::new();
        for m in v["receivedMessages"].as_array().cloned().unwrap_or_default() {
            acks.push(m["ackId"].clone());
            let d = m["message"]["data"].as_str().unwrap_or("");
            data.push(base64::engine::general_purpose::STANDARD.decode(d).unwrap());
        }
        if !acks.is_empty() {
            let body = serde_json::json!({ "ackIds": acks }).to_string();
            let (s, b) = http(self.port, "POST", &format!("{path}:acknowledge"), &body).unwrap();
            assert_eq!(s, 200, "acknowledge: {b}");
        }
        data
    }

    fn stop(&mut self) {
        self.kill();
        // The JVM is in the group too; wait until the port is free for a restart.
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
            assert!(Instant::now() < deadline, "the emulator's JVM outlived its group kill");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Emulator {
    fn kill(&mut self) {
        if std::mem::replace(&mut self.stopped, true) {
            return;
        }
        // SAFETY: the group is the emulator's own (process_group(0) in `start`), and its leader
        // is not reaped yet, so the id cannot have been reused.
        unsafe { libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL) };
        let _ = self.child.wait();
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One HTTP/1.0 request (so the answer is never chunked); the status and body, or `None` when
/// nothing answers. The emulator may keep the connection open: the body ends at its length.
fn http(port: u16, method: &str, path: &str, body: &str) -> Option<(u16, String)> {
    use std::io::BufRead;
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut r = std::io::BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let status = line.split_whitespace().nth(1)?.parse().ok()?;
    let mut length = None;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.trim().eq_ignore_ascii_case("content-length")
        {
            length = v.trim().parse::<usize>().ok();
        }
    }
    let mut body = Vec::new();
    match length {
        Some(n) => {
            body.resize(n, 0);
            r.read_exact(&mut body).ok()?;
        }
        None => {
            r.read_to_end(&mut body).ok()?;
        }
    }
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Every entry pulled from the emulator, with how many times each index came (exact duplicates
/// pass `collect`, so they are counted here).
#[derive(Default)]
struct Pulled {
    times: BTreeMap<u64, u32>,
}

impl Pulled {
    fn take(&mut self, state: &Mutex<State>, messages: Vec<Vec<u8>>) {
        let mut st = state.lock().unwrap();
        for data in messages {
            if let Err(e) = collect(&mut st, &data) {
                st.violations.push(e);
            }
            for index in entry_indices(&data) {
                *self.times.entry(index).or_default() += 1;
            }
        }
    }
}

/// The stream indices of the log entries in one Pub/Sub message (framing checked by `collect`).
fn entry_indices(data: &[u8]) -> Vec<u64> {
    let varint = |b: &[u8]| -> (usize, usize) {
        let (mut v, mut i) = (0usize, 0);
        while b[i] & 0x80 != 0 {
            v |= usize::from(b[i] & 0x7f) << (7 * i);
            i += 1;
        }
        (v | usize::from(b[i]) << (7 * i), i + 1)
    };
    let (mlen, used) = varint(data);
    let meta = logpb::ButlerMetadata::decode(&data[used..used + mlen]).unwrap();
    let rest = &data[used + mlen..];
    let (_, used) = varint(rest);
    let raw = if meta.compression == 1 {
        let mut out = Vec::new();
        flate2::read::ZlibDecoder::new(&rest[used..]).read_to_end(&mut out).unwrap();
        out
    } else {
        rest[used..].to_vec()
    };
    let bundle = logpb::ButlerLogBundle::decode(&raw[..]).unwrap();
    bundle.entries.iter().flat_map(|e| e.logs.iter().map(|l| l.stream_index)).collect()
}

#[test]
fn the_logdog_output_publishes_to_the_real_pubsub_emulator_through_a_restart() {
    const TEST: &str = "the_logdog_output_publishes_to_the_real_pubsub_emulator";
    if !Emulator::available(TEST) {
        return;
    }
    let data_dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut emulator = match Emulator::start(port, data_dir.path()) {
        Ok(e) => e,
        // gcloud without its pubsub-emulator component: this machine
        // cannot run the emulator at all, which is no fault of butler's.
        Err(log) if log.contains("component") || log.contains("not installed") => {
            eprintln!("skipped {TEST}: {log}");
            return;
        }
        Err(log) => panic!("{log}"),
    };
    emulator.create_topic_and_subscription();
    // Only RegisterPrefix is the stand-in's; it names the topic made above.
    let state = Arc::new(Mutex::new(State::default()));
    let coordinator = stand_in(Arc::clone(&state));
    let home = TestHome::new();
    let (go1, go2) = (home.path().join("go1"), home.path().join("go2"));
    // Three batches; the child waits (at most 60 s) for the test between them.
    let wait_for = |f: &Path| {
        format!(
            "n=0; while [ ! -e {} ] && [ $n -lt 1200 ]; do sleep 0.05; n=$((n+1)); done",
            f.display()
        )
    };
    let child_script = format!(
        "{}; {}; {}; {}; {}",
        script("before", 2000),
        wait_for(&go1),
        script("during", 2000),
        wait_for(&go2),
        script("after", 2000)
    );
    let mut butler = home
        .butler()
        .env("PUBSUB_EMULATOR_HOST", format!("127.0.0.1:{port}"))
        .args(["-project", "proj", "-prefix", "emulated/run"])
        .args(["-coordinator-host", &format!("localhost:{coordinator}")])
        .args([
            "-output",
            "logdog,retry-initial=20ms,retry-max=100ms,retry-attempts=2,drain=30s,timeout=2s",
        ])
        .args(["-output-max-buffer-age", "20ms"])
        .args(["run", "-stdout", "name=out", "--", "sh", "-c", &child_script])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut pulled = Pulled::default();
    let seen = |state: &Mutex<State>| delivered(state, "emulated/run");
    let until = |what: &str, pulled: &mut Pulled, done: &dyn Fn(&[u8]) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            pulled.take(&state, emulator.pull());
            if done(&seen(&state)) {
                return;
            }
            assert!(Instant::now() < deadline, "{what} never arrived at the emulator");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let before = lines("before", 2000);
    until("the first batch", &mut pulled, &|s| s == before.as_bytes());

    // The emulator goes away mid-run; the next batch cannot be published and is spooled.
    emulator.stop();
    std::fs::write(&go1, "").unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while spooled(home.path()).iter().filter(|n| n.ends_with(".msg")).count() == 0 {
        assert!(Instant::now() < deadline, "nothing was spooled while the emulator was down");
        std::thread::sleep(Duration::from_millis(20));
    }

    // Back (empty, as a restarted emulator is): the spooled bundles go first, then the rest.
    emulator =
        Emulator::start(port, data_dir.path()).unwrap_or_else(|log| panic!("restart: {log}"));
    emulator.create_topic_and_subscription();
    std::fs::write(&go2, "").unwrap();
    let all = format!("{before}{}{}", lines("during", 2000), lines("after", 2000));
    let until_all = |pulled: &mut Pulled| {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            pulled.take(&state, emulator.pull());
            if seen(&state) == all.as_bytes() {
                return;
            }
            assert!(Instant::now() < deadline, "the spooled bundles never arrived");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    until_all(&mut pulled);
    let status = butler.wait().unwrap();
    let mut err = String::new();
    butler.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(status.success(), "{err}");
    assert!(err.contains("spooled"), "{err}");
    // The terminal entry comes with the last bundle; pull until the stream is complete.
    let deadline = Instant::now() + Duration::from_secs(10);
    while {
        pulled.take(&state, emulator.pull());
        let st = state.lock().unwrap();
        st.streams
            .get(&("emulated/run".to_owned(), "out".to_owned()))
            .unwrap()
            .terminal_index
            .is_none()
    } {
        assert!(Instant::now() < deadline, "the stream's end never arrived");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(seen(&state), all.as_bytes(), "every byte, in order");
    let twice: Vec<_> = pulled.times.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "entries delivered more than once: {twice:?}");
    let last = *pulled.times.keys().last().unwrap();
    assert_eq!(pulled.times.len() as u64, last + 1, "no index missing");
    assert!(spooled(home.path()).iter().all(|n| !n.ends_with(".msg")), "the spool drained");
}
