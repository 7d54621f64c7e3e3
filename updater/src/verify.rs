//! minisign verification against the trusted keys (compiled in, plus the user's).

use minisign_verify::{PublicKey, Signature};

use crate::ErrorKind;

/// Keys official builds trust, from `BUTLER_OFFICIAL_PUBKEYS` at build time (comma separated).
const OFFICIAL_KEYS: Option<&str> = option_env!("BUTLER_OFFICIAL_PUBKEYS");

/// The public keys signatures are checked against; two or more allow key rotation.
#[derive(Clone, Default)]
pub struct TrustedKeys {
    keys: Vec<PublicKey>,
}

impl std::fmt::Debug for TrustedKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TrustedKeys({} keys)", self.keys.len())
    }
}

impl TrustedKeys {
    /// The compiled-in keys plus `extra`: each a base64 minisign public key, or the path of a
    /// `.pub` file (its last line is the key).
    pub fn load(extra: &[String]) -> Result<TrustedKeys, ErrorKind> {
        let mut keys = Vec::new();
        let builtin = OFFICIAL_KEYS.unwrap_or("");
        for item in builtin.split([',', ' ', '\n']).chain(extra.iter().flat_map(|e| e.split(','))) {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            let text = if std::path::Path::new(item).is_file() {
                let content = fs_err::read_to_string(item)?;
                content.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_owned()
            } else {
                item.to_owned()
            };
            let key = PublicKey::from_base64(&text).map_err(|e| {
                ErrorKind::BadKey(format!("{item:?} is not a minisign public key: {e}"))
            })?;
            keys.push(key);
        }
        Ok(TrustedKeys { keys })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Checks `sig_text` (a `.minisig` file) over `data` and returns its trusted comment.
    pub fn verify(&self, what: &str, data: &[u8], sig_text: &[u8]) -> Result<String, ErrorKind> {
        let text = std::str::from_utf8(sig_text).map_err(|_| {
            ErrorKind::BadSignature(format!("{what}: the signature file is not text"))
        })?;
        let sig = Signature::decode(text).map_err(|e| {
            ErrorKind::BadSignature(format!("{what}: unreadable signature file: {e}"))
        })?;
        if self.keys.is_empty() {
            return Err(ErrorKind::UntrustedKey(format!(
                "{what} is signed but no trusted key is configured (pass --trusted-key or set BUTLER_TRUSTED_KEYS)"
            )));
        }
        for key in &self.keys {
            match key.verify(data, &sig, false) {
                Ok(()) => return Ok(sig.trusted_comment().to_owned()),
                Err(minisign_verify::Error::UnexpectedKeyId) => continue,
                Err(e) => {
                    return Err(ErrorKind::BadSignature(format!(
                        "{what}: the signature does not match: {e}"
                    )));
                }
            }
        }
        Err(ErrorKind::UntrustedKey(format!("{what} is signed by a key that is not trusted")))
    }
}
