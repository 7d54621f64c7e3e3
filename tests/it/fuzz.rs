//! Replays what the fuzz targets (`tests/fuzz`, `make fuzz`) found through the same entry points,
//! on the stable toolchain: every input that once crashed or broke a property
//! (`tests/fuzz/regressions/<target>/`), and the seed corpora (`tests/fuzz/corpus/<target>/`).

use std::path::Path;

/// Calls `check` on every file of the target's regression and seed folders; a failure names
/// the file.
fn replay(target: &str, check: impl Fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz");
    let mut count = 0;
    for kind in ["regressions", "corpus"] {
        let dir = root.join(kind).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&data)));
            assert!(outcome.is_ok(), "{} fails again (see the panic above)", path.display());
            count += 1;
        }
    }
    assert!(count > 0, "no inputs for {target} under {}", root.display());
}

#[test]
fn jsonrpc_inputs_replay_cleanly() {
    replay("jsonrpc", butler::fuzz::jsonrpc);
}

#[test]
fn handshake_inputs_replay_cleanly() {
    replay("handshake", butler::fuzz::handshake);
}

#[test]
fn datagram_inputs_replay_cleanly() {
    replay("datagram", butler::fuzz::datagram);
}

#[test]
fn cutter_inputs_replay_cleanly() {
    replay("cutter", butler::fuzz::cutter);
}

#[test]
fn unzip_inputs_replay_cleanly() {
    replay("unzip", butler_updater::fuzz::unzip);
}

#[test]
fn signed_meta_inputs_replay_cleanly() {
    let key = butler_release::SigningKey::generate().unwrap();
    let sign = |d: &[u8], comment: &str| key.sign(d, comment).unwrap();
    replay("signed_meta", |data| {
        butler_updater::fuzz::signed_meta(data, &sign, &key.public_base64())
    });
}
