//! SHA-256 on a second thread, so hashing overlaps the network and inflating (machines here have
//! two cores, and SHA-256 costs as much as inflate). Bounded queue, bounded memory.

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use aws_lc_rs::digest::{Context, SHA256};

enum Msg {
    Data(bytes::Bytes),
    /// Finish the current digest and start a new one.
    Cut,
    /// Drop the current state (a download restarted from zero).
    Reset,
}

/// Feeds a hashing thread; digests come back in [`Hasher::finish`], one per [`Hasher::cut`].
pub(crate) struct Hasher {
    tx: Option<SyncSender<Msg>>,
    handle: Option<JoinHandle<Vec<[u8; 32]>>>,
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hasher")
    }
}

impl Hasher {
    pub(crate) fn new() -> Hasher {
        // 4 chunks in flight at most (1 MiB of unpacked data), so a slow hasher slows the producer
        // down and peak memory does not depend on the archive (with 16, a stored entry, copied
        // faster than it hashes, could keep 4 MiB queued).
        let (tx, rx) = sync_channel::<Msg>(4);
        let handle = std::thread::Builder::new()
            .name("butler-sha256".into())
            .spawn(move || run(rx))
            .expect("spawning the hashing thread");
        Hasher { tx: Some(tx), handle: Some(handle) }
    }

    pub(crate) fn update(&self, data: bytes::Bytes) {
        self.send(Msg::Data(data));
    }

    pub(crate) fn cut(&self) {
        self.send(Msg::Cut);
    }

    pub(crate) fn reset(&self) {
        self.send(Msg::Reset);
    }

    fn send(&self, m: Msg) {
        if let Some(tx) = &self.tx {
            // The thread only ends when we drop the sender, so a send cannot fail.
            let _ = tx.send(m);
        }
    }

    /// Every digest cut so far, in order.
    pub(crate) fn finish(mut self) -> Vec<[u8; 32]> {
        self.tx.take();
        self.handle.take().map(|h| h.join().unwrap_or_default()).unwrap_or_default()
    }
}

impl Drop for Hasher {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Size and SHA-256 of a whole file, read on this thread (call it from a blocking context).
pub(crate) fn hash_file(path: &std::path::Path) -> std::io::Result<(u64, [u8; 32])> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut h = Context::new(&SHA256);
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    let mut digest = [0u8; 32];
    digest.copy_from_slice(h.finish().as_ref());
    Ok((size, digest))
}

fn run(rx: Receiver<Msg>) -> Vec<[u8; 32]> {
    let mut out = Vec::new();
    let mut h = Context::new(&SHA256);
    for m in rx {
        match m {
            Msg::Data(d) => h.update(&d),
            Msg::Cut => {
                let done = std::mem::replace(&mut h, Context::new(&SHA256)).finish();
                let mut digest = [0u8; 32];
                digest.copy_from_slice(done.as_ref());
                out.push(digest);
            }
            Msg::Reset => h = Context::new(&SHA256),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn digests_match_sha256_per_cut() {
        let h = Hasher::new();
        h.update(bytes::Bytes::from_static(b"hello "));
        h.update(bytes::Bytes::from_static(b"world"));
        h.cut();
        h.update(bytes::Bytes::from_static(b"junk"));
        h.reset();
        h.update(bytes::Bytes::from_static(b"abc"));
        h.cut();
        let d = h.finish();
        assert_eq!(d.len(), 2);
        assert_eq!(d[0], <[u8; 32]>::from(Sha256::digest(b"hello world")));
        assert_eq!(d[1], <[u8; 32]>::from(Sha256::digest(b"abc")));
    }

    #[test]
    fn hash_file_matches_sha256() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let data: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let (size, digest) = hash_file(&p).unwrap();
        assert_eq!(size, data.len() as u64);
        assert_eq!(digest, <[u8; 32]>::from(Sha256::digest(&data)));
    }
}
