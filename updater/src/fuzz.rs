//! Entry points for the cargo-fuzz targets in `tests/fuzz` (`make fuzz`) and for the tests that
//! replay what they found (`tests/it/fuzz.rs`): each takes the fuzzer's bytes, drives the real
//! parser and panics when a property it checks does not hold. Not an API; `pub` only so another
//! crate can reach it.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::manifest::{LatestStatement, Manifest};
use crate::unpack::{Limits, unpack};
use crate::{Channel, Source, TrustedKeys};

/// Signs `data` with a trusted comment, as the release tool does: the text of a `.minisig` file.
pub type Signer<'a> = &'a dyn Fn(&[u8], &str) -> String;

/// A fixed "now" for expiry checks, so a replayed input behaves the same any day.
const NOW: u64 = 2_000_000_000;

/// An archive as downloaded, unpacked under small limits into a fresh folder.
///
/// When `unpack` accepts it: every file it reports is a regular file in the folder with the size,
/// SHA-256 and (write bits aside) mode it reports, nothing else was written, and the limits held.
pub fn unzip(data: &[u8]) {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let root = std::env::temp_dir().join(format!("butler-fuzz-unzip-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).expect("a scratch folder");
    let archive = root.join("archive.zip");
    let dest = root.join("out");
    std::fs::write(&archive, data).expect("the archive written");
    std::fs::create_dir(&dest).expect("an empty destination");
    let limits = Limits { max_entries: 64, max_total: 1 << 20 };
    let result = unpack(&archive, &dest, "butler", limits);
    if let Ok(files) = &result {
        let mut on_disk = Vec::new();
        walk(&dest, &dest, &mut on_disk);
        on_disk.sort();
        let mut listed: Vec<String> = files.iter().map(|f| f.path.clone()).collect();
        listed.sort();
        assert_eq!(on_disk, listed, "the files written are the files reported");
        assert!(files.len() <= limits.max_entries);
        let total: u64 = files.iter().map(|f| f.size).sum();
        assert!(total <= limits.max_total, "{total} bytes unpacked past the limit");
        assert!(files.iter().any(|f| f.path == "butler"), "accepted without its executable");
        for f in files {
            let bytes = std::fs::read(dest.join(&f.path)).expect("a reported file");
            assert_eq!(bytes.len() as u64, f.size, "{}: size", f.path);
            let (_, sha) = crate::hasher::hash_file(&dest.join(&f.path)).expect("hashed");
            assert_eq!(crate::manifest::hex(&sha), f.sha256, "{}: hash", f.path);
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(dest.join(&f.path)).unwrap().permissions().mode();
                assert_eq!(mode & 0o022, 0, "{}: writable by others ({mode:o})", f.path);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&root);
}

/// Regular files under `dir`, relative to `root` with `/`; a link or anything else fails.
fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).expect("a folder unpack made") {
        let path: PathBuf = entry.expect("a folder entry").path();
        let kind = std::fs::symlink_metadata(&path).expect("metadata").file_type();
        if kind.is_dir() {
            walk(root, &path, out);
        } else {
            assert!(kind.is_file(), "{} is neither a file nor a folder", path.display());
            let rel = path.strip_prefix(root).expect("under the root");
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
}

/// LATEST, its signature and a version's manifest, as the server sends them, checked as `check`
/// and `apply` check them.
///
/// The first byte picks the channel (stable or head), whether a signature is required, and the
/// signature: none, the fuzzer's own text, or a real one by `sign` over the fuzzer's trusted
/// comment. The rest is `body \0 comment-or-signature \0 manifest`. Properties: a check passes
/// only with a trusted signature whose comment names that version, this channel and a future
/// expiry (or unsigned when none is required), and then it gives LATEST's version; the
/// manifest is accepted only when signed and for that package, channel and version, and
/// survives being written back; a statement the release tool writes reads back the same.
pub fn signed_meta(data: &[u8], sign: Signer<'_>, public_key: &str) {
    let Some((&flags, rest)) = data.split_first() else { return };
    let mut parts = rest.splitn(3, |b| *b == 0);
    let body = parts.next().unwrap_or_default();
    let extra = parts.next().unwrap_or_default();
    let manifest = parts.next().unwrap_or_default();
    let channel = Channel::for_platform("linux", "amd64", flags & 1 != 0);
    let source = Source {
        base_url: "http://127.0.0.1:1".into(),
        package: "butler".into(),
        channel: channel.clone(),
        keys: TrustedKeys::load(&[public_key.to_owned()]).expect("the fuzzing key"),
        require_signature: flags & 2 != 0,
    };
    let comment = String::from_utf8_lossy(extra);
    // A trusted comment is one line of the signature file.
    let signable = !comment.contains(['\n', '\r']);
    let ours = |data: &[u8]| signable.then(|| sign(data, &comment).into_bytes());
    let sig = match flags >> 2 & 3 {
        0 => None,
        1 => Some(extra.to_vec()),
        _ => ours(body),
    };
    let signed_by_us = sig.is_some() && flags >> 2 & 3 >= 2;
    match source.check_latest(body, sig.as_deref(), NOW) {
        Ok((version, true)) => {
            assert!(signed_by_us, "a signature the fuzzer wrote passed");
            let st = LatestStatement::parse(&comment).expect("a passing comment parses");
            assert_eq!(channel.compare(&st.version, &version), std::cmp::Ordering::Equal);
            assert_eq!(st.channel, channel.name());
            assert!(st.expires > NOW, "an expired statement passed");
            assert_eq!(
                Ok(version),
                crate::channel::parse_latest(&channel, body).map_err(|e| e.to_string())
            );
        }
        Ok((version, false)) => {
            assert!(sig.is_none() && !source.require_signature, "{version}: unsigned passed");
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    if let Some(st) = LatestStatement::parse(&comment) {
        let clean = |s: &str| s.trim() == s && !s.contains([';', '=']);
        if clean(&st.version) && clean(&st.channel) {
            assert_eq!(LatestStatement::parse(&st.to_comment()), Some(st));
        }
    }

    let version = crate::channel::parse_latest(&channel, body).unwrap_or_else(|_| "1.0.0".into());
    let msig = match flags >> 4 & 3 {
        0 => extra.to_vec(),
        _ => ours(manifest).unwrap_or_default(),
    };
    if let Ok(m) = source.check_manifest(&version, manifest, &msig) {
        assert!(flags >> 4 & 3 != 0, "a manifest signature the fuzzer wrote passed");
        assert_eq!(m.package, "butler");
        assert_eq!(m.channel, channel.name());
        assert_eq!(channel.compare(&m.version, &version), std::cmp::Ordering::Equal);
        let again: Manifest = serde_json::from_slice(&serde_json::to_vec(&m).unwrap()).unwrap();
        assert_eq!(again, m, "the manifest reads back as written");
    }
}
