//! Test-only pause points for the crash-consistency test; compiled out of release builds.
//!
//! With `BUTLER_TEST_PAUSE_AT=<name>[:<n>]` a debug build prints `butler-test-paused-at <name>` on
//! stderr the n-th time (default 1st) it reaches that point and then sleeps until killed.

#[cfg(debug_assertions)]
pub fn point(name: &str) {
    use std::sync::atomic::{AtomicU64, Ordering};
    tracing::trace!("reached {name}");
    static HITS: AtomicU64 = AtomicU64::new(0);
    let Some(want) = std::env::var("BUTLER_TEST_PAUSE_AT").ok() else { return };
    let (want_name, nth) = match want.split_once(':') {
        Some((n, k)) => (n.to_owned(), k.parse::<u64>().unwrap_or(1)),
        None => (want, 1),
    };
    if want_name != name {
        return;
    }
    if HITS.fetch_add(1, Ordering::SeqCst) + 1 != nth {
        return;
    }
    eprintln!("butler-test-paused-at {name}");
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn point(name: &str) {
    tracing::trace!("reached {name}");
}
