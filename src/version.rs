//! The version this binary was built as, fixed at build time by `build.rs`.

use serde::Serialize;

/// Semver of this build, without a leading `v` (Cargo's, or `BUTLER_BUILD_VERSION`).
pub(crate) const VERSION: &str = env!("BUTLER_VERSION");
/// UTC build time, RFC 3339, empty when unknown.
pub(crate) const BUILD_DATE: &str = env!("BUTLER_BUILD_DATE");
/// Short git commit the build came from, empty when unknown.
pub(crate) const GIT_REF: &str = env!("BUTLER_GIT_REF");

/// `v0.1.0`, the shape butlerd clients expect in `Version.Get`.
pub(crate) fn tagged() -> &'static str {
    concat!("v", env!("BUTLER_VERSION"))
}

/// `v0.1.0, built on 2026-11-21T10:00:00Z, ref 0123abcd`: for humans and bug reports.
pub(crate) fn long() -> &'static str {
    static LONG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    LONG.get_or_init(|| {
        let mut s = tagged().to_owned();
        if !BUILD_DATE.is_empty() {
            s.push_str(", built on ");
            s.push_str(BUILD_DATE);
        }
        if !GIT_REF.is_empty() {
            s.push_str(", ref ");
            s.push_str(GIT_REF);
        }
        s
    })
}

/// What `butler version --json` prints as its result value.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct VersionInfo {
    pub version: &'static str,
    pub version_string: &'static str,
    pub build_date: &'static str,
    pub git_ref: &'static str,
    /// Abilities an updater may rely on before switching to this build.
    pub features: &'static [&'static str],
}

/// The daemon takes over a listening socket and secret passed by the butler it replaces
/// (`Update.Apply {restart: true}`); restarting into a build without it would strand the
/// launcher's clients.
pub(crate) const HAND_OVER: &str = "daemon-hand-over";

/// The daemon also takes over the connections open at the hand-over (with their authentication
/// and `Meta.Flow`), the daemon lock and the news to announce, so clients see no failed call.
pub(crate) const HAND_OVER_CONNECTIONS: &str = "daemon-hand-over-connections";

/// What `version --json` announces under `features`.
#[cfg(unix)]
pub(crate) const FEATURES: &[&str] = &[HAND_OVER, HAND_OVER_CONNECTIONS];
/// A Windows build cannot take over a running daemon (no `exec`), so it announces neither.
#[cfg(not(unix))]
pub(crate) const FEATURES: &[&str] = &[];

pub(crate) fn info() -> VersionInfo {
    VersionInfo {
        version: tagged(),
        version_string: long(),
        build_date: BUILD_DATE,
        git_ref: GIT_REF,
        features: FEATURES,
    }
}
