//! `make bench`: the figures from `shared/spec/quality.md`, each a median over several runs,
//! measured against the real release binary with baselines taken in the same run.

// Linux only: it reads /proc and drives unix sockets, and quality.md sets no speed target for the
// Windows build (figures under Wine are not Windows figures).
#[cfg(unix)]
mod daemon;
#[cfg(unix)]
mod soak;
#[cfg(unix)]
mod streaming;
#[cfg(unix)]
mod update;

#[cfg(unix)]
use std::time::Duration;

#[cfg(unix)]
fn main() {
    raise_fd_limit();
    println!(
        "butler bench ({} cores)",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    // `BENCH_ONLY=daemon|update|streaming` runs one group (for tuning); `BENCH_ONLY=soak` runs the
    // soak (`make soak`), which no other run includes.
    let only = std::env::var("BENCH_ONLY").ok();
    if only.as_deref() == Some("soak") {
        soak::run();
        return;
    }
    let wanted = |group: &str| only.as_deref().is_none_or(|o| o == group);
    if wanted("daemon") {
        daemon::run();
    }
    if wanted("update") {
        update::run();
    }
    if wanted("streaming") {
        streaming::run();
    }
}

#[cfg(unix)]
/// The release `butler` executable this bench target was built with.
pub fn butler_bin() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_butler"))
}

#[cfg(unix)]
/// The middle value (the upper one of an even count); NaNs sort as equal.
pub fn median<T: Copy + PartialOrd>(mut xs: Vec<T>) -> T {
    xs.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    xs[xs.len() / 2]
}

#[cfg(unix)]
pub fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

#[cfg(unix)]
/// One result line: what, the median, the target, and the baseline when there is one.
pub fn report(what: &str, value: String, target: &str, verdict: bool, baseline: Option<String>) {
    let mark = if verdict { "ok" } else { "MISSED" };
    let baseline = baseline.map(|b| format!("; baseline {b}")).unwrap_or_default();
    println!("{what:<58} {value:>14}  (target {target}: {mark}{baseline})");
}

#[cfg(unix)]
/// Reads a daemon's stdout up to its listen notification: the rest of stdout (for the caller to
/// keep open or drop), the TCP address and the secret.
pub fn listen_notification(
    child: &mut std::process::Child,
) -> (std::io::BufReader<std::process::ChildStdout>, String, String) {
    use std::io::BufRead;
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout piped"));
    loop {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "the daemon exited before listening");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if v["type"] == "butlerd/listen-notification" {
            let address = v["tcp"]["address"].as_str().unwrap().to_owned();
            return (out, address, v["secret"].as_str().unwrap().to_owned());
        }
    }
}

#[cfg(unix)]
/// Resident memory of `pid` in MiB, from /proc.
pub fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

#[cfg(unix)]
/// A thousand sockets on each side need more than the usual 1024 descriptors.
fn raise_fd_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain getrlimit/setrlimit on a stack struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

#[cfg(not(unix))]
fn main() {
    println!("make bench measures the Linux build; the Windows build has no speed target");
}
