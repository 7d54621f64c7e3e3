//! Log-streaming figures: text ingestion into `null` and `store` against a raw unix-socket copy,
//! 500 streams × 3 lines through a whole butler lifecycle, peak memory while ingesting 1 GiB, and
//! how long a line a `butler run` child writes takes to reach `logs tail -f`.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use butler::streaming::address::Address;
use butler::streaming::handshake::StreamFlags;
use butler::streaming::output::{NullOutput, Output, StoreOutput};
use butler::streaming::server::StreamServer;
use butler::streaming::{Butler, ButlerConfig, StreamType};
use tokio_util::sync::CancellationToken;

use crate::median;

const RUNS: usize = 5;
/// Raw-copy / null pairs: a pair's ratio swings by ±15 points on this machine (the copy speed
/// drifts), and a pair costs ~0.15 s, so the median is taken over more of them than `RUNS`.
const PAIRS: usize = 11;
const INGEST_BYTES: usize = 256 << 20;

/// 1 MiB of 100-byte lines (99 bytes + `\n`).
fn block() -> Vec<u8> {
    let mut b = Vec::with_capacity(1 << 20);
    let mut i = 0u64;
    while b.len() + 100 <= 1 << 20 {
        let line = format!(
            "{i:010} the quick brown fox jumps over the lazy dog, again and again and again, line after line after line"
        );
        b.extend_from_slice(&line.as_bytes()[..99]);
        b.push(b'\n');
        i += 1;
    }
    b
}

/// 1 MiB of 100-byte lines that compress about as real logs do (~2–3×, against ~19× for
/// [`block`]): each carries a 32-hex-digit pseudo-random id, as request and trace ids do.
fn varied_block() -> Vec<u8> {
    let mut b = Vec::with_capacity(1 << 20);
    let (mut i, mut x) = (0u64, 0x9e37_79b9_7f4a_7c15u64);
    while b.len() + 100 <= 1 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let line = format!(
            "{i:010} INFO request id={x:016x}{:016x} served /api/v1/items in {} ms, status 200 ok......",
            x.rotate_left(29),
            x % 997
        );
        b.extend_from_slice(&line.as_bytes()[..99]);
        b.push(b'\n');
        i += 1;
    }
    b
}

/// Writes whole blocks until at least `total` bytes are out; returns how many were.
fn write_all(mut s: UnixStream, block: &[u8], total: usize) -> usize {
    let mut sent = 0;
    while sent < total {
        s.write_all(block).unwrap();
        sent += block.len();
    }
    sent
}

/// The floor: the same bytes over a unix socket into a reader that discards them.
fn raw_copy(block: &[u8]) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raw.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let reader = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let mut n = 0usize;
        loop {
            let r = c.read(&mut buf).unwrap();
            if r == 0 {
                break n;
            }
            n += r;
        }
    });
    let start = Instant::now();
    let sent = write_all(UnixStream::connect(&path).unwrap(), block, INGEST_BYTES);
    let n = reader.join().unwrap();
    assert_eq!(n, sent);
    let secs = start.elapsed().as_secs_f64();
    n as f64 / secs / (1 << 20) as f64
}

/// One text stream through a real stream server into `output`; MiB/s until everything is flushed.
fn ingest(block: &[u8], output: Box<dyn Output>) -> f64 {
    let rt = butler::streaming::butler::runtime().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let uri = format!("unix:{}", dir.path().join("s.sock").display());
    rt.block_on(async {
        let butler = Butler::start(ButlerConfig::new("bench", "bench"), output);
        let server = StreamServer::bind(Some(&uri)).unwrap();
        let Address::Unix(path) = server.address().clone() else { unreachable!("unix: address") };
        let stop = CancellationToken::new();
        let accept =
            tokio::spawn(server.run(butler.handle(), Duration::from_secs(5), stop.clone()));
        let block = block.to_vec();
        let start = Instant::now();
        let writer = std::thread::spawn(move || {
            let mut s = UnixStream::connect(&path).unwrap();
            s.write_all(&StreamFlags::new("bench", StreamType::Text).encode()).unwrap();
            write_all(s, &block, INGEST_BYTES)
        });
        let sent = tokio::task::spawn_blocking(move || writer.join().unwrap()).await.unwrap();
        butler.handle().wait_idle().await;
        let stats = butler.shutdown().await.unwrap();
        // The clock stops once the output has every byte. The listener's stop comes after: it
        // gives clients still in the backlog 5 ms, which is not ingestion (and was ~12 % of a
        // 256 MiB null run).
        let elapsed = start.elapsed();
        stop.cancel();
        accept.await.unwrap();
        assert_eq!(stats.bytes as usize, sent, "every byte bundled");
        sent as f64 / elapsed.as_secs_f64() / (1 << 20) as f64
    })
}

/// MiB/s of `block` into a fresh store output, median of `RUNS`.
fn into_store(block: &[u8]) -> f64 {
    median(
        (0..RUNS)
            .map(|_| {
                let dir = tempfile::tempdir().unwrap();
                let db = butler::db::DbPath::File(dir.path().join("b.db"));
                let out = StoreOutput::open(&db, "bench", "p").unwrap();
                ingest(block, Box::new(out))
            })
            .collect(),
    )
}

/// Upstream's BenchmarkButler: N streams of 3 short lines, no buffering, `null`, start to finish.
fn lifecycle(streams: usize) -> f64 {
    let rt = butler::streaming::butler::runtime().unwrap();
    rt.block_on(async {
        let start = Instant::now();
        let mut cfg = ButlerConfig::new("bench", "bench");
        cfg.max_buffer_age = Duration::ZERO;
        let butler = Butler::start(cfg, Box::new(NullOutput));
        let h = butler.handle();
        for i in 0..streams {
            let data: &'static [u8] = b"line one\nline two\nline three\n";
            h.add_stream(
                StreamFlags::new(format!("s{i}"), StreamType::Text),
                data,
                bytes::Bytes::new(),
            )
            .unwrap();
        }
        h.wait_idle().await;
        drop(h);
        let stats = butler.shutdown().await.unwrap();
        assert_eq!(stats.streams as usize, streams);
        start.elapsed().as_secs_f64() * 1000.0
    })
}

fn status_kib(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Peak RSS of the real binary (`serve`, `null` output) before and after ingesting 1 GiB.
fn memory(block: &[u8], output: &str) -> (u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("m.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_butler"))
        .env("BUTLER_HOME", dir.path())
        .args([
            "--output",
            output,
            "serve",
            "--streamserver-uri",
            &format!("unix:{}", sock.display()),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = [0u8; 1];
    let mut out = child.stdout.take().unwrap();
    while out.read(&mut line).unwrap() == 1 && line[0] != b'\n' {}
    let idle = status_kib(child.id(), "VmHWM:");
    let mut s = UnixStream::connect(&sock).unwrap();
    s.write_all(&StreamFlags::new("big", StreamType::Text).encode()).unwrap();
    let _ = write_all(s, block, 1 << 30);
    std::thread::sleep(Duration::from_millis(300));
    let peak = status_kib(child.id(), "VmHWM:");
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
    (idle, peak)
}

/// Milliseconds from a `butler run` child writing a line (it writes the wall-clock time) to
/// `butler logs tail -f` (started first, default poll) printing it, one per line.
fn live_latency(extra: &[&str], lines: usize) -> Vec<f64> {
    let dir = tempfile::tempdir().unwrap();
    let butler = |args: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_butler"));
        c.env("BUTLER_HOME", dir.path()).args(args);
        c
    };
    let mut tail = butler(&["logs", "tail", "-f", "-n", "0", "live/bench/+/out"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let script = format!("for i in $(seq {lines}); do date +%s%N; sleep 0.3; done");
    let mut run = butler(&["--prefix", "live/bench"])
        .args(extra)
        .args(["run", "--stdout", "name=out", "--", "sh", "-c", &script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut got = Vec::new();
    let mut out = std::io::BufReader::new(tail.stdout.take().unwrap());
    let mut line = String::new();
    while std::io::BufRead::read_line(&mut out, &mut line).unwrap() > 0 {
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
                as f64;
        if let Ok(sent) = line.trim().parse::<f64>() {
            got.push((now - sent) / 1e6);
        }
        line.clear();
    }
    let _ = run.wait();
    let _ = tail.wait();
    got
}

pub(crate) fn run() {
    // `BENCH_STREAMING=store` measures only the store figure, `live` only the live figure.
    let only_store = std::env::var("BENCH_STREAMING").is_ok_and(|v| v == "store");
    if std::env::var("BENCH_STREAMING").is_ok_and(|v| v == "live") {
        return live();
    }
    let block = block();
    // Each null run right after its own raw copy, and the ratio taken per pair: this machine's
    // copy speed drifts by half within a minute, which a ratio of two separate medians takes in.
    let runs: Vec<(f64, Option<f64>)> = (0..PAIRS)
        .map(|_| {
            let raw = raw_copy(&block);
            (raw, (!only_store).then(|| ingest(&block, Box::new(NullOutput))))
        })
        .collect();
    let raw = median(runs.iter().map(|r| r.0).collect());
    let pairs: Vec<(f64, f64)> =
        runs.iter().filter_map(|&(raw, null)| Some((raw, null?))).collect();
    if !pairs.is_empty() {
        let null = median(pairs.iter().map(|p| p.1).collect());
        let ratio = median(pairs.iter().map(|(raw, null)| null / raw).collect());
        println!(
            "streaming: text ingestion, 1 stream of 100-byte lines, unix socket -> null: {null:.0} MiB/s median of {PAIRS} x {} MiB (raw unix-socket copy {raw:.0} MiB/s; {:.0}% of raw, median of the runs' ratios; target >= 80% of raw)",
            INGEST_BYTES >> 20,
            100.0 * ratio
        );
    }
    let store = into_store(&block);
    println!(
        "streaming: text ingestion into the store output (SQLite): {store:.0} MiB/s median of {RUNS} (raw copy {raw:.0} MiB/s; {:.0}% of raw; target >= 400 MiB/s)",
        100.0 * store / raw
    );
    let store_varied = into_store(&varied_block());
    println!(
        "streaming: the same into the store, lines that compress as real logs do (random ids): {store_varied:.0} MiB/s median of {RUNS} (informational)"
    );
    if only_store {
        return;
    }
    for n in [10, 100, 500] {
        let ms = median((0..RUNS * 2).map(|_| lifecycle(n)).collect());
        println!(
            "streaming: {n} streams x 3 lines, whole butler lifecycle, null output: {ms:.2} ms median of {} (target for 500: <= 30 ms; upstream 59 ms)",
            RUNS * 2
        );
    }
    for output in ["null", "store"] {
        let (idle, peak) = memory(&block, output);
        println!(
            "streaming: peak RSS of `butler serve` ({output}) ingesting 1 GiB: {:.1} MiB (idle {:.1} MiB; +{:.1} MiB)",
            peak as f64 / 1024.0,
            idle as f64 / 1024.0,
            (peak.saturating_sub(idle)) as f64 / 1024.0
        );
    }
    live();
}

fn live() {
    const LINES: usize = 15;
    let default = median(live_latency(&[], LINES));
    let unbuffered = median(live_latency(&["--output-no-buffer"], LINES));
    crate::report(
        "streaming: `butler run` child line -> `logs tail -f` (store)",
        format!("{default:.0} ms"),
        "<= 1000 ms",
        default <= 1000.0,
        Some(format!("--output-no-buffer {unbuffered:.0} ms; median of {LINES} lines each")),
    );
}
