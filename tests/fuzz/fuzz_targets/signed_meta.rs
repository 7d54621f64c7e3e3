//! LATEST, minisign signatures, trusted comments and manifests as the updater checks them
//! (`butler_updater::fuzz::signed_meta`), with real signatures by a key made at start.
#![no_main]

use std::sync::OnceLock;

use butler_release::SigningKey;

fn key() -> &'static SigningKey {
    static KEY: OnceLock<SigningKey> = OnceLock::new();
    KEY.get_or_init(|| SigningKey::generate().expect("a signing key"))
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let key = key();
    let sign = |d: &[u8], comment: &str| key.sign(d, comment).expect("signed");
    butler_updater::fuzz::signed_meta(data, &sign, &key.public_base64());
});
