//! The signed files the release tool writes and the updater reads: one definition for both.

use serde::{Deserialize, Serialize};

/// The manifest file name inside `<channel>/<version>/`.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Suffix of a detached minisign signature.
pub const SIG_SUFFIX: &str = ".minisig";

/// `<version>/manifest.json`: what a version's archive holds, signed by the publisher.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub package: String,
    pub version: String,
    pub channel: String,
    pub archive: ArchiveInfo,
    pub files: Vec<FileEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveInfo {
    pub size: u64,
    /// Lowercase hex.
    pub sha256: String,
}

/// One regular file of the archive, with the mode stored in its zip entry (masked to 0o777).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub size: u64,
    pub sha256: String,
    pub mode: u32,
}

/// What `LATEST.minisig`'s trusted comment binds: `version=..;channel=..;expires=<unix secs>`.
///
/// The signature covers the comment, so a replayed or re-labelled LATEST cannot pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatestStatement {
    pub version: String,
    pub channel: String,
    pub expires: u64,
}

impl LatestStatement {
    pub fn to_comment(&self) -> String {
        format!("version={};channel={};expires={}", self.version, self.channel, self.expires)
    }

    pub fn parse(comment: &str) -> Option<LatestStatement> {
        let (mut version, mut channel, mut expires) = (None, None, None);
        for part in comment.trim().split(';') {
            let (k, v) = part.split_once('=')?;
            match k.trim() {
                "version" => version = Some(v.trim().to_owned()),
                "channel" => channel = Some(v.trim().to_owned()),
                "expires" => expires = Some(v.trim().parse().ok()?),
                _ => {}
            }
        }
        Some(LatestStatement { version: version?, channel: channel?, expires: expires? })
    }
}

/// Lowercase hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_statement_round_trips() {
        let s =
            LatestStatement { version: "1.2.3".into(), channel: "linux-amd64".into(), expires: 42 };
        assert_eq!(LatestStatement::parse(&s.to_comment()), Some(s));
        assert_eq!(LatestStatement::parse("timestamp:1234"), None);
        assert_eq!(LatestStatement::parse("version=1;channel=x;expires=soon"), None);
    }
}
