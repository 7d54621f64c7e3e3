//! Channels (`<os>-<arch>[-head]`) and how versions on them are parsed and compared.

use std::cmp::Ordering;

use crate::ErrorKind;

/// A broth channel: stable channels carry semver versions, `-head` channels carry commit SHAs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Channel {
    pub os: String,
    pub arch: String,
    pub head: bool,
}

impl Channel {
    /// The channel for the platform this binary was built for.
    pub fn current(head: bool) -> Channel {
        Channel::for_platform(std::env::consts::OS, std::env::consts::ARCH, head)
    }

    /// Maps Rust's platform names to broth's (`macos` is `darwin`, `x86_64` is `amd64`, ...).
    pub fn for_platform(os: &str, arch: &str, head: bool) -> Channel {
        let os = match os {
            "macos" => "darwin",
            other => other,
        };
        let arch = match arch {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            other => other,
        };
        Channel { os: os.to_owned(), arch: arch.to_owned(), head }
    }

    pub fn name(&self) -> String {
        let mut s = format!("{}-{}", self.os, self.arch);
        if self.head {
            s.push_str("-head");
        }
        s
    }

    /// The main executable's name inside the archive.
    pub fn executable_name(&self) -> &'static str {
        if self.os == "windows" { "butler.exe" } else { "butler" }
    }

    /// Checks the shape of a version string for this channel and returns it normalised
    /// (no leading `v`). Stable channels need semver; head channels need a plain token (a SHA).
    pub fn parse_version(&self, raw: &str) -> Result<String, ErrorKind> {
        let v = raw.trim();
        let v = v.strip_prefix('v').unwrap_or(v);
        if v.is_empty() {
            return Err(ErrorKind::BadVersion {
                version: raw.to_owned(),
                why: "it is empty".into(),
            });
        }
        if v.len() > 128 {
            return Err(ErrorKind::BadVersion {
                version: format!("{}...", v.chars().take(32).collect::<String>()),
                why: "it is longer than 128 bytes".into(),
            });
        }
        if self.head {
            // A version names a folder (`versions/<v>/`) and a URL segment: `.` and `..` are not
            // versions, whatever characters they are made of.
            if v.chars().all(|c| c == '.') {
                return Err(ErrorKind::BadVersion {
                    version: v.escape_debug().to_string(),
                    why: "it is not a single path component".into(),
                });
            }
            if !v.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')) {
                return Err(ErrorKind::BadVersion {
                    version: v.escape_debug().to_string(),
                    why: "a head version is a commit id made of letters, digits, '.', '-', '_'"
                        .into(),
                });
            }
        } else if let Err(e) = semver::Version::parse(v) {
            return Err(ErrorKind::BadVersion {
                version: v.escape_debug().to_string(),
                why: format!("it is not semver ({e})"),
            });
        }
        Ok(v.to_owned())
    }

    /// How `candidate` relates to `current`: on stable channels by semver, on head channels only
    /// equal or not (commit ids have no order; "different" counts as newer).
    pub fn compare(&self, current: &str, candidate: &str) -> Ordering {
        let norm = |s: &str| s.trim().trim_start_matches('v').to_owned();
        let (a, b) = (norm(current), norm(candidate));
        if self.head {
            return if a == b { Ordering::Equal } else { Ordering::Greater };
        }
        match (semver::Version::parse(&a), semver::Version::parse(&b)) {
            (Ok(a), Ok(b)) => b.cmp(&a),
            // A current version that is not semver (a dev build) is replaced by any release.
            (Err(_), Ok(_)) => Ordering::Greater,
            _ => {
                if a == b {
                    Ordering::Equal
                } else {
                    Ordering::Greater
                }
            }
        }
    }
}

/// Parses the LATEST file: one version, spaces/CR/LF trimmed, a leading `v` stripped.
pub fn parse_latest(channel: &Channel, body: &[u8]) -> Result<String, ErrorKind> {
    let text = std::str::from_utf8(body)
        .map_err(|_| ErrorKind::BadLatest("it is not UTF-8 text".into()))?;
    let line = text.trim();
    if line.lines().count() > 1 {
        return Err(ErrorKind::BadLatest("it holds more than one line".into()));
    }
    channel.parse_version(line).map_err(|e| ErrorKind::BadLatest(e.to_string()))
}

/// Parses `versions` (`{"versions": [...]}`) and picks the newest entry `req` matches.
/// Whether a `versions` file lists `version` (in the channel's spelling).
pub fn lists_version(channel: &Channel, body: &[u8], version: &str) -> Result<bool, ErrorKind> {
    Ok(parse_versions(body)?.iter().any(|v| channel.parse_version(v).is_ok_and(|p| p == version)))
}

fn parse_versions(body: &[u8]) -> Result<Vec<String>, ErrorKind> {
    #[derive(serde::Deserialize)]
    struct Versions {
        versions: Vec<String>,
    }
    let list: Versions = serde_json::from_slice(body)
        .map_err(|e| ErrorKind::BadVersions(format!("it is not {{\"versions\": [...]}}: {e}")))?;
    Ok(list.versions)
}

pub fn pick_from_versions(
    channel: &Channel,
    body: &[u8],
    req: &semver::VersionReq,
) -> Result<String, ErrorKind> {
    parse_versions(body)?
        .iter()
        .filter_map(|v| channel.parse_version(v).ok())
        .filter_map(|v| semver::Version::parse(&v).ok())
        .filter(|v| req.matches(v))
        .max()
        .map(|v| v.to_string())
        .ok_or_else(|| ErrorKind::NoMatchingVersion(req.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stable() -> Channel {
        Channel::for_platform("linux", "x86_64", false)
    }

    #[test]
    fn channel_names_follow_broth() {
        assert_eq!(stable().name(), "linux-amd64");
        assert_eq!(Channel::for_platform("macos", "aarch64", true).name(), "darwin-arm64-head");
        assert_eq!(Channel::for_platform("windows", "x86", false).name(), "windows-386");
        assert_eq!(Channel::for_platform("windows", "x86", false).executable_name(), "butler.exe");
    }

    #[test]
    fn head_versions_are_single_path_components() {
        let head = Channel::for_platform("linux", "x86_64", true);
        for bad in [".", "..", "...", "a/b", ""] {
            assert!(head.parse_version(bad).is_err(), "{bad:?}");
        }
        assert_eq!(head.parse_version("1a2b.3-c_d").unwrap(), "1a2b.3-c_d");
    }

    #[test]
    fn latest_is_trimmed_and_loses_its_v() {
        assert_eq!(parse_latest(&stable(), b" v15.30.0\r\n").unwrap(), "15.30.0");
        assert!(parse_latest(&stable(), b"<html>oops</html>").is_err());
        assert!(parse_latest(&stable(), b"").is_err());
        assert!(parse_latest(&stable(), b"1.0.0\n2.0.0\n").is_err());
        assert!(parse_latest(&stable(), &[0xff, 0xfe]).is_err());
        let head = Channel::for_platform("linux", "x86_64", true);
        assert_eq!(parse_latest(&head, b"0123abcd\n").unwrap(), "0123abcd");
        assert!(parse_latest(&head, b"abc def").is_err());
    }

    #[test]
    fn stable_compares_by_semver_and_head_by_equality() {
        let c = stable();
        assert_eq!(c.compare("1.9.0", "1.10.0"), Ordering::Greater);
        assert_eq!(c.compare("v1.10.0", "1.9.0"), Ordering::Less);
        assert_eq!(c.compare("1.10.0", "v1.10.0"), Ordering::Equal);
        assert_eq!(c.compare("1.0.0", "1.0.0-rc.1"), Ordering::Less);
        let h = Channel::for_platform("linux", "x86_64", true);
        assert_eq!(h.compare("aaaa", "bbbb"), Ordering::Greater);
        assert_eq!(h.compare("bbbb", "aaaa"), Ordering::Greater);
        assert_eq!(h.compare("aaaa", "aaaa"), Ordering::Equal);
    }

    #[test]
    fn a_range_picks_the_newest_match() {
        let body = br#"{"versions": ["16.0.0", "15.31.2", "v15.30.0", "junk", "14.0.0"]}"#;
        let req = semver::VersionReq::parse("^15.30").unwrap();
        assert_eq!(pick_from_versions(&stable(), body, &req).unwrap(), "15.31.2");
        let req = semver::VersionReq::parse("^17").unwrap();
        assert!(matches!(
            pick_from_versions(&stable(), body, &req),
            Err(ErrorKind::NoMatchingVersion(_))
        ));
        assert!(pick_from_versions(&stable(), b"[]", &req).is_err());
    }
}
