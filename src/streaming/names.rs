//! LogDog names: stream names, tags, projects and prefixes, validated as upstream does.

/// Longest stream name (and prefix), in bytes.
pub const MAX_NAME_LEN: usize = 4096;
/// Longest tag key, in bytes.
pub const MAX_TAG_KEY_LEN: usize = 64;
/// Longest tag value, in bytes.
pub const MAX_TAG_VALUE_LEN: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("stream name is empty")]
    Empty,
    #[error("stream name is {0} bytes long, more than {MAX_NAME_LEN}")]
    TooLong(usize),
    #[error("stream name {name:?} has an empty segment")]
    EmptySegment { name: String },
    #[error(
        "stream name {name:?}: segment {segment:?} must start with a letter or digit and hold only letters, digits and . _ : -"
    )]
    BadSegment { name: String, segment: String },
    #[error("tag key {key:?} is {len} bytes long, more than {MAX_TAG_KEY_LEN}")]
    TagKeyTooLong { key: String, len: usize },
    #[error("tag key {key:?} is not a valid name: {source}")]
    TagKey { key: String, source: Box<NameError> },
    #[error("tag {key:?} has a value of {len} bytes, more than {MAX_TAG_VALUE_LEN}")]
    TagValueTooLong { key: String, len: usize },
    #[error("project name {0:?} must match [a-z][a-z0-9_-]*")]
    Project(String),
}

fn segment_ok(seg: &str) -> bool {
    let b = seg.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[1..]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'-'))
}

/// The project local streams go under when none is named: `butler run`, `serve` and `stream` to
/// the store, the daemon's `Process.Run`, and what `butler logs` and `Streams.*` read by default.
pub const DEFAULT_PROJECT: &str = "local";

/// The default prefix: `butler/users/<user>/<random>`.
pub fn default_prefix() -> String {
    use base64::Engine;
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .unwrap_or_else(|_| "unknown".into());
    let mut rnd = [0u8; 30];
    let _ = getrandom::fill(&mut rnd);
    let rnd = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rnd);
    make_stream_name("s_", &["butler", "users", &user, &rnd])
}

/// Checks a LogDog stream name: 1–4096 ASCII bytes, `/`-separated segments, each
/// `[A-Za-z0-9][A-Za-z0-9._:-]*`.
pub fn validate_stream_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(name.len()));
    }
    for seg in name.split('/') {
        if seg.is_empty() {
            return Err(NameError::EmptySegment { name: name.to_owned() });
        }
        if !segment_ok(seg) {
            return Err(NameError::BadSegment { name: name.to_owned(), segment: seg.to_owned() });
        }
    }
    Ok(())
}

/// Checks one tag: the key is a stream name of at most 64 bytes, the value at most 4096 bytes.
pub fn validate_tag(key: &str, value: &str) -> Result<(), NameError> {
    if key.len() > MAX_TAG_KEY_LEN {
        return Err(NameError::TagKeyTooLong { key: key.to_owned(), len: key.len() });
    }
    validate_stream_name(key)
        .map_err(|e| NameError::TagKey { key: key.to_owned(), source: Box::new(e) })?;
    if value.len() > MAX_TAG_VALUE_LEN {
        return Err(NameError::TagValueTooLong { key: key.to_owned(), len: value.len() });
    }
    Ok(())
}

/// Checks a LogDog project name: `[a-z][a-z0-9_-]*`.
pub fn validate_project(project: &str) -> Result<(), NameError> {
    let b = project.as_bytes();
    let ok = !b.is_empty()
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'-'));
    if ok { Ok(()) } else { Err(NameError::Project(project.to_owned())) }
}

/// Upstream's `MakeStreamName`: replaces disallowed characters with `_`, prepends `fill` to a
/// part that does not start with a letter or digit, and joins the parts with `/` (a `/` inside a
/// part is replaced too, so `/tmp/a.txt` becomes `file:_tmp_a.txt`).
pub fn make_stream_name(fill: &str, parts: &[&str]) -> String {
    let segs: Vec<String> = parts
        .iter()
        .map(|part| {
            let mut s: String = part
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-') {
                        c
                    } else {
                        '_'
                    }
                })
                .collect();
            if !s.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric) {
                s.insert_str(0, fill);
            }
            s
        })
        .collect();
    segs.join("/")
}

/// The full path of a stream: `<prefix>/+/<name>`.
pub fn stream_path(prefix: &str, name: &str) -> String {
    format!("{prefix}/+/{name}")
}

/// Splits `<prefix>/+/<name>` into its two halves.
pub fn split_path(path: &str) -> Option<(&str, &str)> {
    path.split_once("/+/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names() {
        for ok in ["a", "foo/bar", "A0.b_c:d-e/x", "0"] {
            validate_stream_name(ok).unwrap();
        }
        for bad in ["", "/a", "a/", "a//b", "_a", "a/_b", "a^b", "a b", "é"] {
            assert!(validate_stream_name(bad).is_err(), "{bad:?} accepted");
        }
        assert!(validate_stream_name(&"a".repeat(4096)).is_ok());
        assert_eq!(validate_stream_name(&"a".repeat(4097)), Err(NameError::TooLong(4097)));
    }

    #[test]
    fn tags_and_projects() {
        validate_tag("k", &"v".repeat(4096)).unwrap();
        assert!(validate_tag(&"k".repeat(65), "v").is_err());
        assert!(validate_tag("_k", "v").is_err());
        assert!(validate_tag("k", &"v".repeat(4097)).is_err());
        validate_project("chromium-x_1").unwrap();
        for bad in ["", "Chromium", "1x", "a.b"] {
            assert!(validate_project(bad).is_err());
        }
    }

    #[test]
    fn make_names() {
        assert_eq!(make_stream_name("file:", &["/tmp/a.txt"]), "file:_tmp_a.txt");
        assert_eq!(make_stream_name("s_", &["a b", "_c"]), "a_b/s__c");
        validate_stream_name(&make_stream_name("s_", &["hé llo"])).unwrap();
    }
}
