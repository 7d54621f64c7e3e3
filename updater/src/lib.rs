//! Keeps butler current from a broth-style package server; knows nothing of JSON-RPC or log bundles.
//!
//! The flow is [`check`] (LATEST, its signature, the version to install) then [`apply`]
//! (lock, download, verify, unpack, smoke test, swap). Each step's failures are typed
//! ([`Error`] names the [`Step`]) and leave the installed butler as it was.

pub mod channel;
#[doc(hidden)]
pub mod fuzz;
mod hasher;
pub mod hook;
pub mod http;
pub mod install;
pub mod manifest;
pub mod unpack;
pub mod verify;

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use channel::Channel;
pub use http::{NetConfig, Progress, SizeCap};
pub use manifest::{LatestStatement, Manifest};
pub use verify::TrustedKeys;

/// The default broth server.
pub const DEFAULT_BROTH_URL: &str = "https://broth.itch.zone";
/// LATEST and its signature are tiny; anything bigger is hostile.
pub const LATEST_CAP: u64 = 4 * 1024;
const MANIFEST_CAP: u64 = 1 << 20;
const VERSIONS_CAP: u64 = 1 << 20;

/// Which step of an update failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    Check,
    Lock,
    Download,
    Verify,
    Unpack,
    SmokeTest,
    Swap,
    Rollback,
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Step::Check => "check",
            Step::Lock => "lock",
            Step::Download => "download",
            Step::Verify => "verify",
            Step::Unpack => "unpack",
            Step::SmokeTest => "smoke test",
            Step::Swap => "swap",
            Step::Rollback => "rollback",
        })
    }
}

/// What went wrong, without the step.
#[derive(Debug, thiserror::Error)]
pub enum ErrorKind {
    #[error("GET {url}: HTTP {status} {why}")]
    Http { url: String, status: u16, why: String },
    #[error("GET {url}: the server is busy (HTTP {status})")]
    Busy { url: String, status: u16, retry_after: Option<u64> },
    #[error("GET {url}: {why}")]
    Network { url: String, why: String },
    #[error("GET {url}: stalled: {why}")]
    Stalled { url: String, why: String },
    #[error("GET {url}: the download did not finish within {limit:?}; the next try resumes it")]
    TooSlow { url: String, limit: Duration },
    #[error("GET {url}: the body is larger than the limit of {limit} bytes")]
    TooLarge { url: String, limit: u64 },
    #[error("GET {url}: the body ended after {got} of {expected} bytes")]
    Truncated { url: String, got: u64, expected: u64 },
    #[error(
        "GET {url}: asked to resume at byte {asked}, the server sent {sent}; the download starts over"
    )]
    WrongRange { url: String, asked: u64, sent: String },
    #[error("{0} was not found on the server (HTTP 404)")]
    NotFound(String),
    #[error("the LATEST file is garbage: {0}")]
    BadLatest(String),
    #[error("the versions file is garbage: {0}")]
    BadVersions(String),
    #[error("no published version matches {0}")]
    NoMatchingVersion(String),
    #[error("version {version:?} is invalid: {why}")]
    BadVersion { version: String, why: String },
    #[error("bad trusted key: {0}")]
    BadKey(String),
    #[error("bad signature: {0}")]
    BadSignature(String),
    #[error("untrusted signature: {0}")]
    UntrustedKey(String),
    #[error("{0}")]
    Unsigned(String),
    #[error(
        "stale: the signed LATEST for {channel} expired at unix time {expired}; the server may be replaying an old answer"
    )]
    Stale { channel: String, expired: u64 },
    #[error("mismatch: {0}")]
    Mismatch(String),
    #[error("the archive is unsafe or corrupt: {0}")]
    BadArchive(String),
    /// The message names the binary and what it did; the step in front of it says "smoke test
    /// failed" (or "rollback failed"), so it does not say so again.
    #[error("{0}")]
    SmokeTest(String),
    #[error("the new butler failed the {check}: {why}")]
    CandidateCheck { check: &'static str, why: String },
    #[error(
        "cannot update {dir}: the folder is not writable ({why}); run as a user who can write there"
    )]
    NotWritable { dir: PathBuf, why: String },
    #[error("another update of {0} is running; try again when it has finished")]
    Locked(PathBuf),
    #[error("there is no previous version to roll back to")]
    NothingToRollBack,
    #[error("cancelled before anything was installed")]
    Cancelled,
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl ErrorKind {
    /// A write that found the disk full: nothing is wrong with what was written before it.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, ErrorKind::Io(e) if e.kind() == std::io::ErrorKind::StorageFull)
    }

    /// Worth another attempt: connection trouble, timeouts, 429 and 5xx.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            ErrorKind::Busy { .. }
                | ErrorKind::Network { .. }
                | ErrorKind::Stalled { .. }
                | ErrorKind::Truncated { .. }
                | ErrorKind::WrongRange { .. }
        )
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            ErrorKind::Busy { retry_after: Some(s), .. } => Some(Duration::from_secs(*s)),
            _ => None,
        }
    }

    /// The kind of failure, for scripts, exit codes and the database.
    pub fn class(&self) -> ErrorClass {
        match self {
            ErrorKind::Http { .. }
            | ErrorKind::Busy { .. }
            | ErrorKind::Network { .. }
            | ErrorKind::NotFound(_) => ErrorClass::Network,
            ErrorKind::Stalled { .. }
            | ErrorKind::TooSlow { .. }
            | ErrorKind::TooLarge { .. }
            | ErrorKind::Truncated { .. }
            | ErrorKind::WrongRange { .. } => ErrorClass::Download,
            ErrorKind::BadLatest(_)
            | ErrorKind::BadVersions(_)
            | ErrorKind::BadVersion { .. }
            | ErrorKind::NoMatchingVersion(_) => ErrorClass::BadServerData,
            ErrorKind::BadKey(_) => ErrorClass::BadKey,
            ErrorKind::BadSignature(_)
            | ErrorKind::UntrustedKey(_)
            | ErrorKind::Unsigned(_)
            | ErrorKind::Mismatch(_) => ErrorClass::Verification,
            ErrorKind::Stale { .. } => ErrorClass::Stale,
            ErrorKind::BadArchive(_) => ErrorClass::BadArchive,
            ErrorKind::SmokeTest(_) | ErrorKind::CandidateCheck { .. } => ErrorClass::SmokeTest,
            ErrorKind::NotWritable { .. } => ErrorClass::NotWritable,
            ErrorKind::Locked(_) => ErrorClass::Locked,
            ErrorKind::NothingToRollBack => ErrorClass::NoRollback,
            ErrorKind::Cancelled => ErrorClass::Cancelled,
            ErrorKind::Io(_) => ErrorClass::Io,
        }
    }
}

/// Kinds of failure as scripts see them: `butler upgrade --json` `code`, the exit code, the
/// history's `error_code` and RPC errors' `data.kind` all name these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorClass {
    Network,
    Download,
    BadServerData,
    BadKey,
    Verification,
    Stale,
    BadArchive,
    SmokeTest,
    NotWritable,
    Locked,
    NoRollback,
    Cancelled,
    Io,
}

impl ErrorClass {
    /// The stable name, as serde spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Network => "network",
            ErrorClass::Download => "download",
            ErrorClass::BadServerData => "bad-server-data",
            ErrorClass::BadKey => "bad-key",
            ErrorClass::Verification => "verification",
            ErrorClass::Stale => "stale",
            ErrorClass::BadArchive => "bad-archive",
            ErrorClass::SmokeTest => "smoke-test",
            ErrorClass::NotWritable => "not-writable",
            ErrorClass::Locked => "locked",
            ErrorClass::NoRollback => "no-rollback",
            ErrorClass::Cancelled => "cancelled",
            ErrorClass::Io => "io",
        }
    }
}

impl std::fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An update failure: which step, and why.
///
/// The message already holds the kind, so the kind is not also its `source`: a report that
/// prints the chain (anyhow's `{:#}`) would say everything twice.
#[derive(Debug, thiserror::Error)]
#[error("{step} failed: {kind}")]
pub struct Error {
    pub step: Step,
    pub kind: ErrorKind,
}

trait AtStep<T> {
    fn at(self, step: Step) -> Result<T, Error>;
}

impl<T, E: Into<ErrorKind>> AtStep<T> for Result<T, E> {
    fn at(self, step: Step) -> Result<T, Error> {
        self.map_err(|e| Error { step, kind: e.into() })
    }
}

/// Where the server is and what this install trusts.
#[derive(Debug, Clone)]
pub struct Source {
    pub base_url: String,
    pub package: String,
    pub channel: Channel,
    pub keys: TrustedKeys,
    /// Refuse anything unsigned (`--require-signature`, or the channel was signed before).
    pub require_signature: bool,
}

impl Source {
    /// LATEST and its signature (when the server has one) as fetched: the version, and whether
    /// a trusted signature vouched for it. `now` is in Unix seconds, for the expiry.
    pub(crate) fn check_latest(
        &self,
        body: &[u8],
        sig: Option<&[u8]>,
        now: u64,
    ) -> Result<(String, bool), Error> {
        let ch = &self.channel;
        let latest = channel::parse_latest(ch, body).at(Step::Check)?;
        let Some(sig) = sig else {
            if self.require_signature {
                return Err(ErrorKind::Unsigned(format!(
                    "{} has no signature and a signed answer is required (--require-signature, or this channel served signatures before)",
                    self.url("LATEST")
                )))
                .at(Step::Verify);
            }
            return Ok((latest, false));
        };
        let comment = self.keys.verify("LATEST", body, sig).at(Step::Verify)?;
        let st = LatestStatement::parse(&comment)
            .ok_or_else(|| {
                ErrorKind::BadSignature(format!(
                    "LATEST's trusted comment {comment:?} does not say version, channel and expiry"
                ))
            })
            .at(Step::Verify)?;
        if ch.compare(&st.version, &latest) != std::cmp::Ordering::Equal {
            return Err(ErrorKind::Mismatch(format!(
                "LATEST says {latest} but its signature is for {}",
                st.version
            )))
            .at(Step::Verify);
        }
        if st.channel != ch.name() {
            return Err(ErrorKind::Mismatch(format!(
                "LATEST for {} carries a signature for channel {}",
                ch.name(),
                st.channel
            )))
            .at(Step::Verify);
        }
        if st.expires <= now {
            return Err(ErrorKind::Stale { channel: ch.name(), expired: st.expires })
                .at(Step::Verify);
        }
        Ok((latest, true))
    }

    /// A version's `manifest.json` and its signature: verified, parsed, and for this package,
    /// channel and `version`.
    pub(crate) fn check_manifest(
        &self,
        version: &str,
        body: &[u8],
        sig: &[u8],
    ) -> Result<Manifest, ErrorKind> {
        self.keys.verify("the manifest", body, sig)?;
        let m: Manifest = serde_json::from_slice(body).map_err(|e| {
            ErrorKind::BadSignature(format!("the signed manifest is not valid JSON: {e}"))
        })?;
        let ch = &self.channel;
        if ch.compare(&m.version, version) != std::cmp::Ordering::Equal
            || m.channel != ch.name()
            || m.package != self.package
        {
            return Err(ErrorKind::Mismatch(format!(
                "the manifest is for {} {} on {}, expected {} {version} on {}",
                m.package,
                m.version,
                m.channel,
                self.package,
                ch.name()
            )));
        }
        Ok(m)
    }

    fn url(&self, rest: &str) -> String {
        format!(
            "{}/{}/{}/{}",
            self.base_url.trim_end_matches('/'),
            self.package,
            self.channel.name(),
            rest
        )
    }
}

/// Which version the user wants.
#[derive(Debug, Clone)]
pub enum Want {
    /// LATEST (never a downgrade).
    Latest,
    /// Exactly this version (`--to 1.2.3`): may downgrade.
    Exact(String),
    /// The newest entry of `versions` matching the range (`--to ^15.30`).
    Range(semver::VersionReq),
}

/// What a check found.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckResult {
    pub channel: String,
    pub current: Option<String>,
    /// What LATEST says (or the version `--to` picked).
    pub latest: String,
    pub update_available: bool,
    /// LATEST came with a valid signature from a trusted key.
    pub signed: bool,
}

/// What an applied update did.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Installed {
    pub version: String,
    /// Manifest signature, archive hash and every file's hash and mode were checked.
    pub verified: bool,
    pub path: PathBuf,
    /// The main executable now installed.
    pub exe: PathBuf,
    /// What the new build announced in its smoke test.
    pub features: Vec<String>,
}

/// What a rollback made active again.
#[derive(Debug, Clone)]
pub struct Restored {
    /// `None` when the restored binary would not say (it is active all the same).
    pub version: Option<String>,
    pub exe: PathBuf,
    pub features: Vec<String>,
}

/// Where the update goes.
#[derive(Debug, Clone)]
pub enum Target {
    /// Replace this executable (and its sibling files) in place.
    InPlace { exe: PathBuf },
    /// Manage a versioned tree (`versions/<v>/`, `.chosen-version`).
    Versioned { root: PathBuf },
}

impl Target {
    pub fn dir(&self) -> &Path {
        match self {
            Target::InPlace { exe } => exe.parent().unwrap_or(Path::new(".")),
            Target::Versioned { root } => root,
        }
    }

    /// The version installed now: the running build's for in place, `.chosen-version` otherwise.
    pub fn current(&self, running: &str) -> Result<Option<String>, Error> {
        match self {
            Target::InPlace { .. } => Ok(Some(running.to_owned())),
            Target::Versioned { root } => install::chosen_version(root).at(Step::Check),
        }
    }
}

/// Events for the user interface.
#[derive(Debug, Clone)]
pub enum Event {
    Info(String),
    Warning(String),
    Progress(Progress),
}

/// Knobs tests shorten; real runs use the defaults.
#[derive(Debug, Clone)]
pub struct Tuning {
    pub net: NetConfig,
    pub unpack: unpack::Limits,
    pub smoke_timeout: Duration,
    pub candidate_timeout: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            net: NetConfig::default(),
            unpack: unpack::Limits::default(),
            smoke_timeout: Duration::from_secs(10),
            candidate_timeout: Duration::from_secs(10),
        }
    }
}

/// The caller's deeper check of a new build before a versioned root chooses it (butler passes
/// the itch app's daemon handshake): given the candidate executable, a scratch home for it (see
/// [`install::Candidate`]) and a time limit, the version the build reports, or why it failed.
#[derive(Clone)]
pub struct CandidateCheck {
    /// What the check is called in errors ("daemon sanity check").
    pub name: &'static str,
    #[allow(clippy::type_complexity)]
    pub run: std::sync::Arc<dyn Fn(&Path, &Path, Duration) -> Result<String, String> + Send + Sync>,
}

impl std::fmt::Debug for CandidateCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CandidateCheck").field("name", &self.name).finish_non_exhaustive()
    }
}

/// One update session against one source.
#[derive(Debug)]
pub struct Updater {
    pub source: Source,
    pub tuning: Tuning,
    /// Stops [`Updater::apply`] at its next step, up to the swap; from the swap on it finishes.
    pub cancel: CancellationToken,
    /// Where [`Updater::prefetch`] keeps verified archives for a later [`Updater::apply`].
    pub cache_dir: Option<PathBuf>,
    /// Run on a versioned install's candidate before it is chosen.
    pub candidate_check: Option<CandidateCheck>,
    http: http::Http,
}

impl Updater {
    pub fn new(source: Source, tuning: Tuning) -> Result<Updater, Error> {
        let url = reqwest::Url::parse(&source.base_url)
            .map_err(|e| ErrorKind::Network {
                url: source.base_url.clone(),
                why: format!("not a URL: {e}"),
            })
            .at(Step::Check)?;
        if !http::url_allowed(&url) {
            return Err(ErrorKind::Network {
                url: source.base_url.clone(),
                why: "only https URLs are allowed (plain http only to a loopback address)".into(),
            })
            .at(Step::Check);
        }
        let http = http::Http::new(tuning.net.clone()).at(Step::Check)?;
        if url.scheme() == "https" {
            http.warm_tls();
        }
        Ok(Updater {
            source,
            tuning,
            cancel: CancellationToken::new(),
            cache_dir: None,
            candidate_check: None,
            http,
        })
    }

    /// Reads LATEST (and its signature) or `versions`, and decides whether to update.
    pub async fn check(
        &self,
        current: Option<&str>,
        want: &Want,
        force: bool,
    ) -> Result<CheckResult, Error> {
        let ch = &self.source.channel;
        let (latest, signed) = match want {
            Want::Latest => self.latest().await?,
            Want::Exact(v) => {
                let v = ch.parse_version(v).at(Step::Check)?;
                // Say a named version is there only if the server lists it; a server without a
                // `versions` file cannot be asked, and the download will tell.
                let url = self.source.url("versions");
                if let Some(body) = self.http.get_small(&url, VERSIONS_CAP).await.at(Step::Check)?
                    && !channel::lists_version(ch, &body, &v).at(Step::Check)?
                {
                    return Err(ErrorKind::NoMatchingVersion(v)).at(Step::Check);
                }
                (v, false)
            }
            Want::Range(req) => {
                let url = self.source.url("versions");
                let body = self.http.get_small(&url, VERSIONS_CAP).await.at(Step::Check)?;
                let body = body.ok_or(ErrorKind::NotFound(url)).at(Step::Check)?;
                (channel::pick_from_versions(ch, &body, req).at(Step::Check)?, false)
            }
        };
        let update_available = match current {
            None => true,
            Some(cur) => {
                let ord = ch.compare(cur, &latest);
                match want {
                    // Only a user who names a version gets a downgrade.
                    Want::Exact(_) => ord != std::cmp::Ordering::Equal,
                    _ => ord == std::cmp::Ordering::Greater,
                }
            }
        } || force;
        Ok(CheckResult {
            channel: ch.name(),
            current: current.map(str::to_owned),
            latest,
            update_available,
            signed,
        })
    }

    /// GET LATEST and, when published, check `LATEST.minisig` against it.
    async fn latest(&self) -> Result<(String, bool), Error> {
        let url = self.source.url("LATEST");
        let sig_url = format!("{url}{}", manifest::SIG_SUFFIX);
        // Both at once: each is a round trip, and they are independent.
        let (body, sig) = tokio::join!(
            self.http.get_small(&url, LATEST_CAP),
            self.http.get_small(&sig_url, LATEST_CAP)
        );
        let body = body
            .at(Step::Check)?
            .ok_or_else(|| ErrorKind::NotFound(url.clone()))
            .at(Step::Check)?;
        let sig = sig.at(Step::Check)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        self.source.check_latest(&body, sig.as_deref(), now)
    }

    /// Downloads, verifies, unpacks, smoke-tests and installs `version` into `target`.
    pub async fn apply(
        &self,
        target: &Target,
        version: &str,
        on_event: &mut (dyn FnMut(Event) + Send),
    ) -> Result<Installed, Error> {
        let dir = target.dir().to_owned();
        if let Target::Versioned { root } = target {
            fs_err::create_dir_all(root).at(Step::Lock)?;
        }
        install::check_writable(&dir).at(Step::Lock)?;
        let _lock = install::InstallLock::acquire(&dir).at(Step::Lock)?;
        install::clean_leftovers(&dir).at(Step::Lock)?;
        let staging = dir.join(format!("{}.staging", install::TEMP_PREFIX));
        fs_err::create_dir(&staging).at(Step::Download)?;
        let result = self.apply_staged(target, version, &staging, on_event).await;
        // Staging goes on every path; a kill before this line is handled by the next run.
        if let Err(e) = fs_err::remove_dir_all(&staging) {
            tracing::warn!("could not remove the staging folder: {e}");
        }
        result
    }

    async fn apply_staged(
        &self,
        target: &Target,
        version: &str,
        staging: &Path,
        on_event: &mut (dyn FnMut(Event) + Send),
    ) -> Result<Installed, Error> {
        let ch = &self.source.channel;
        let main_exe = ch.executable_name();
        let url = self.source.url(&format!("{version}/archive/default"));
        let archive = staging.join("archive.zip");
        // Held until the archive is in staging: a background prefetch or another update using
        // the same cache files at once would splice their bytes together.
        let cache = self.lock_cache();
        let cache_dir = cache.as_ref().map(|(dir, _)| dir.as_path());
        // Into the cache when there is one, so a download cut here (a failure, a kill) is
        // resumed by the next run instead of starting over.
        let part = cache_dir.map(|c| self.cache_path(c, version, "part"));
        let prefetched = cache_dir.is_some_and(|c| self.cache_path(c, version, "zip").is_file());
        let (manifest, (size, sha)) = if prefetched {
            // What the cache holds is usable only once the manifest vouches for it.
            let manifest = self.unless_cancelled(Step::Verify, self.manifest(version)).await?;
            hook::point("before-download");
            match self.take_prefetched(manifest.as_ref(), version, &archive, cache_dir).await {
                Some(found) => {
                    on_event(Event::Info(format!(
                        "using the archive fetched earlier for {version}"
                    )));
                    // Progress watchers still see the download finished.
                    on_event(Event::Progress(Progress {
                        done: found.0,
                        total: Some(found.0),
                        bps: 0.0,
                    }));
                    (manifest, found)
                }
                None => {
                    let cap =
                        manifest.as_ref().map_or(self.tuning.net.max_archive, |m| m.archive.size);
                    let cap = SizeCap::new(cap);
                    let got = self
                        .download_archive(&url, part.as_deref(), &archive, &cap, on_event)
                        .await?;
                    (manifest, got)
                }
            }
        } else {
            hook::point("before-download");
            self.manifest_beside_download(version, &url, part.as_deref(), &archive, on_event)
                .await?
        };
        let verified = manifest.is_some();
        if !verified {
            // Plain http (allowed only to loopback) has no TLS to rely on: say so honestly.
            let transport = if self.source.base_url.starts_with("https:") { "TLS, " } else { "" };
            on_event(Event::Warning(format!(
                "{} {version} for {} is not signature-verified: the server publishes no signed manifest (relying on {transport}zip CRCs and the smoke test)",
                self.source.package,
                ch.name()
            )));
        }
        drop(cache);
        hook::point("after-download");
        if let Some(m) = &manifest {
            check_archive(m, size, &sha)?;
        }
        self.check_cancelled(Step::Unpack)?;
        let unpacked = staging.join("new");
        fs_err::create_dir(&unpacked).at(Step::Unpack)?;
        let limits = self.tuning.unpack;
        let (archive2, unpacked2) = (archive.clone(), unpacked.clone());
        let (files, unsynced) = tokio::task::spawn_blocking(move || {
            unpack::unpack_unsynced(&archive2, &unpacked2, main_exe, limits)
        })
        .await
        .map_err(|e| ErrorKind::Io(std::io::Error::other(e.to_string())))
        .at(Step::Unpack)?
        .at(Step::Unpack)?;
        // The archive is no longer needed; freeing its space early matters on small disks.
        let _ = std::fs::remove_file(&archive);
        hook::point("after-unpack");
        if let Some(m) = &manifest {
            verify_files(m, &files).at(Step::Verify)?;
        }
        self.check_cancelled(Step::SmokeTest)?;
        let exe = unpacked.join(main_exe);
        let scratch = staging.join("scratch");
        fs_err::create_dir(&scratch).at(Step::SmokeTest)?;
        // On unix the new files reach the disk while the smoke test runs them (from the page
        // cache); Windows cannot run a file open for writing, so it syncs first. Both are done
        // before anything is swapped, and both are awaited whatever happens.
        let synced = |r: Result<Result<(), ErrorKind>, tokio::task::JoinError>| {
            r.map_err(|e| ErrorKind::Io(std::io::Error::other(e.to_string())))
                .and_then(|r| r)
                .at(Step::Unpack)
        };
        let mut syncing = Some(tokio::task::spawn_blocking(move || unsynced.sync()));
        if cfg!(not(unix))
            && let Some(s) = syncing.take()
        {
            synced(s.await)?;
        }
        let reported = {
            let (exe, scratch, t) = (exe.clone(), scratch.clone(), self.tuning.smoke_timeout);
            tokio::task::spawn_blocking(move || install::smoke_test(&exe, &scratch, t)).await
        };
        if let Some(s) = syncing {
            synced(s.await)?;
        }
        let reported = reported
            .map_err(|e| ErrorKind::SmokeTest(e.to_string()))
            .at(Step::SmokeTest)?
            .at(Step::SmokeTest)?;
        if ch.compare(version, &reported.version) != std::cmp::Ordering::Equal {
            return Err(ErrorKind::Mismatch(format!(
                "the new binary reports version {}, expected {version}",
                reported.version
            )))
            .at(Step::SmokeTest);
        }
        on_event(Event::Info(format!("the new butler runs and reports {}", reported.version)));
        hook::point("after-smoke-test");
        let names: Vec<String> = files.iter().map(|f| f.path.clone()).collect();
        // The last moment to stop: from here on the install is finished, not abandoned.
        self.check_cancelled(Step::Swap)?;
        let installed_path = match target {
            Target::InPlace { exe: current } => {
                let (current, unpacked) = (current.clone(), unpacked.clone());
                tokio::task::spawn_blocking(move || {
                    install::swap_in_place(&current, &unpacked, main_exe, &names).map(|_| current)
                })
                .await
                .map_err(|e| ErrorKind::Io(std::io::Error::other(e.to_string())))
                .at(Step::Swap)?
                .at(Step::Swap)?
            }
            Target::Versioned { root } => {
                if let Some(check) = self.candidate_check.clone() {
                    let fail =
                        move |why: String| ErrorKind::CandidateCheck { check: check.name, why };
                    let (exe, scratch, t) =
                        (exe.clone(), scratch.clone(), self.tuning.candidate_timeout);
                    let v = tokio::task::spawn_blocking(move || (check.run)(&exe, &scratch, t))
                        .await
                        .map_err(|e| fail(e.to_string()))
                        .at(Step::SmokeTest)?
                        .map_err(fail)
                        .at(Step::SmokeTest)?;
                    if ch.compare(version, &v) != std::cmp::Ordering::Equal {
                        return Err(fail(format!("it reports {v}, expected {version}")))
                            .at(Step::SmokeTest);
                    }
                }
                let (root, unpacked, v, scratch) =
                    (root.clone(), unpacked.clone(), version.to_owned(), scratch.clone());
                tokio::task::spawn_blocking(move || {
                    install::install_versioned(&root, &unpacked, &v, &scratch)
                        .map(|_| root.join("versions").join(&v))
                })
                .await
                .map_err(|e| ErrorKind::Io(std::io::Error::other(e.to_string())))
                .at(Step::Swap)?
                .at(Step::Swap)?
            }
        };
        hook::point("after-swap");
        let exe = match target {
            Target::InPlace { exe } => exe.clone(),
            Target::Versioned { .. } => installed_path.join(main_exe),
        };
        Ok(Installed {
            version: version.to_owned(),
            verified,
            path: installed_path,
            exe,
            features: reported.features,
        })
    }

    /// Downloads `version`'s archive into [`Updater::cache_dir`] ahead of time and checks it
    /// against the signed manifest, so a later [`Updater::apply`] of that version skips the
    /// download. Only signed versions are fetched: without a manifest, a cached archive could not
    /// be trusted later. Older archives in the cache are removed.
    pub async fn prefetch(
        &self,
        version: &str,
        on_event: &mut (dyn FnMut(Event) + Send),
    ) -> Result<PathBuf, Error> {
        let manifest = self.unless_cancelled(Step::Verify, self.manifest(version)).await?;
        let Some(manifest) = manifest else {
            return Err(ErrorKind::Unsigned(format!(
                "{version} has no signed manifest, so it is not fetched ahead of time"
            )))
            .at(Step::Verify);
        };
        let (cache, _lock) = self
            .lock_cache()
            .ok_or_else(|| {
                let dir = self.cache_dir.clone().unwrap_or_default();
                ErrorKind::Io(std::io::Error::other(format!(
                    "the update cache {} is missing, not writable or in use",
                    dir.display()
                )))
            })
            .at(Step::Download)?;
        let dest = self.cache_path(&cache, version, "zip");
        if matching_archive(&dest, &manifest).await.is_some() {
            return Ok(dest);
        }
        let part = self.cache_path(&cache, version, "part");
        let url = self.source.url(&format!("{version}/archive/default"));
        let mut progress = |p| on_event(Event::Progress(p));
        let cap = SizeCap::new(manifest.archive.size);
        let download = self.http.download(&url, &part, &cap, &mut progress);
        let fetched = self.unless_cancelled(Step::Download, async { Ok(download.await) }).await;
        // A failed download stays for the next attempt to resume; a complete one that does not
        // match the manifest is junk.
        let (size, sha) = fetched?.at(Step::Download)?;
        if let Err(e) = check_archive(&manifest, size, &sha) {
            let _ = std::fs::remove_file(&part);
            return Err(e);
        }
        fs_err::rename(&part, &dest).at(Step::Download)?;
        // Everything else of this package and channel (older archives, their unfinished
        // downloads) is superseded by this one; the lock keeps anyone from using them now.
        if let Ok(entries) = std::fs::read_dir(&cache) {
            let prefix = self.cache_prefix();
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(&prefix) && e.path() != dest {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(dest)
    }

    /// The cache folder, created and locked for this process, if there is one it can write;
    /// `None` sends downloads to the staging folder instead.
    fn lock_cache(&self) -> Option<(PathBuf, install::InstallLock)> {
        let dir = self.cache_dir.as_ref()?;
        let usable =
            install::create_private_dir_all(dir).is_ok() && install::check_writable(dir).is_ok();
        let lock = install::InstallLock::acquire(dir).ok().filter(|_| usable)?;
        Some((dir.clone(), lock))
    }

    /// `@` separates the parts: channel names (`linux-amd64-head`) contain dashes, so a dash
    /// would let one channel's prefix match another's files.
    fn cache_prefix(&self) -> String {
        format!("{}@{}@", self.source.package, self.source.channel.name())
    }

    /// `<package>@<channel>@<version>.<ext>` in `cache`.
    fn cache_path(&self, cache: &Path, version: &str, ext: &str) -> PathBuf {
        let safe: String = version
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || "._+-".contains(c) { c } else { '_' })
            .collect();
        cache.join(format!("{}{safe}.{ext}", self.cache_prefix()))
    }

    /// A prefetched archive of `version`, copied to `dest` if it still matches the manifest just
    /// fetched (one that does not is deleted). Used once: the cached copy is removed.
    async fn take_prefetched(
        &self,
        manifest: Option<&Manifest>,
        version: &str,
        dest: &Path,
        cache: Option<&Path>,
    ) -> Option<(u64, [u8; 32])> {
        let (manifest, cache) = (manifest?, cache?);
        let cached = self.cache_path(cache, version, "zip");
        let found = matching_archive(&cached, manifest).await;
        let dest = dest.to_owned();
        tokio::task::spawn_blocking(move || {
            let copied = found.filter(|_| std::fs::copy(&cached, &dest).is_ok());
            let _ = std::fs::remove_file(&cached);
            copied
        })
        .await
        .ok()
        .flatten()
    }

    /// Runs `work` unless [`Updater::cancel`] fires first. Only for purely async work: dropping it
    /// must leave nothing running (blocking steps are checked between, not interrupted).
    async fn unless_cancelled<T>(
        &self,
        step: Step,
        work: impl Future<Output = Result<T, Error>>,
    ) -> Result<T, Error> {
        tokio::select! {
            biased;
            () = self.cancel.cancelled() => Err(ErrorKind::Cancelled).at(step),
            r = work => r,
        }
    }

    /// The signed manifest and the archive at once: the archive's first bytes need not wait a
    /// round trip for the manifest. Nothing is trusted before both are in: the manifest caps the
    /// download as soon as it is verified, the whole archive is checked against it afterwards
    /// (as when it came first), and a manifest that fails stops the download. When it failed
    /// verification, what this server sent is not kept for a later resume either; a network
    /// failure keeps it. The manifest's error comes first when both fail.
    async fn manifest_beside_download(
        &self,
        version: &str,
        url: &str,
        part: Option<&Path>,
        archive: &Path,
        on_event: &mut (dyn FnMut(Event) + Send),
    ) -> Result<(Option<Manifest>, (u64, [u8; 32])), Error> {
        let cap = SizeCap::new(self.tuning.net.max_archive);
        let refused = CancellationToken::new();
        let manifest = async {
            let m = self.unless_cancelled(Step::Verify, self.manifest(version)).await;
            match &m {
                Ok(Some(m)) => cap.tighten(m.archive.size),
                Ok(None) => {}
                Err(_) => refused.cancel(),
            }
            m
        };
        let download = async {
            tokio::select! {
                biased;
                () = refused.cancelled() => None,
                r = self.download_archive(url, part, archive, &cap, on_event) => Some(r),
            }
        };
        let (manifest, downloaded) = tokio::join!(manifest, download);
        let manifest = match manifest {
            Ok(m) => m,
            Err(e) => {
                if e.kind.class() == ErrorClass::Verification
                    && let Some(part) = part
                {
                    http::forget_partial(part);
                }
                return Err(e);
            }
        };
        // Only a failed manifest stops the download, and that returned above.
        let downloaded = downloaded.unwrap_or(Err(ErrorKind::Cancelled).at(Step::Download))?;
        Ok((manifest, downloaded))
    }

    /// Downloads the archive to `archive` in staging, through the cache's partial file `part`
    /// when there is one; `cap` may tighten while it runs.
    async fn download_archive(
        &self,
        url: &str,
        part: Option<&Path>,
        archive: &Path,
        cap: &SizeCap,
        on_event: &mut (dyn FnMut(Event) + Send),
    ) -> Result<(u64, [u8; 32]), Error> {
        on_event(Event::Info(format!("downloading {url}")));
        let mut progress = |p| on_event(Event::Progress(p));
        let dest = part.unwrap_or(archive);
        let download = self.http.download(url, dest, cap, &mut progress);
        let got = self
            .unless_cancelled(Step::Download, async { Ok(download.await) })
            .await?
            .map_err(|e| match e {
                ErrorKind::Http { status: 404, .. } => ErrorKind::NotFound(url.to_owned()),
                other => other,
            })
            .at(Step::Download)?;
        if let Some(part) = part {
            move_file(part, archive).at(Step::Download)?;
        }
        Ok(got)
    }

    fn check_cancelled(&self, step: Step) -> Result<(), Error> {
        if self.cancel.is_cancelled() { Err(ErrorKind::Cancelled).at(step) } else { Ok(()) }
    }

    /// Fetches and checks `<version>/manifest.json`; `None` when the server publishes none.
    async fn manifest(&self, version: &str) -> Result<Option<Manifest>, Error> {
        let url = self.source.url(&format!("{version}/{}", manifest::MANIFEST_FILE));
        let sig_url = format!("{url}{}", manifest::SIG_SUFFIX);
        let (sig, body) = tokio::join!(
            self.http.get_small(&sig_url, LATEST_CAP),
            self.http.get_small(&url, MANIFEST_CAP)
        );
        let Some(sig) = sig.at(Step::Verify)? else {
            if self.source.require_signature {
                return Err(ErrorKind::Unsigned(format!(
                    "{sig_url} is missing and a signed update is required (--require-signature, or this channel served signatures before)"
                )))
                .at(Step::Verify);
            }
            return Ok(None);
        };
        let body = body
            .at(Step::Verify)?
            .ok_or_else(|| ErrorKind::NotFound(url.clone()))
            .at(Step::Verify)?;
        self.source.check_manifest(version, &body, &sig).map(Some).at(Step::Verify)
    }
}

/// Every unpacked file must be in the manifest with the same hash and mode, and vice versa.
fn verify_files(m: &Manifest, files: &[manifest::FileEntry]) -> Result<(), ErrorKind> {
    if files.len() != m.files.len() {
        return Err(ErrorKind::Mismatch(format!(
            "the archive holds {} files, the manifest lists {}",
            files.len(),
            m.files.len()
        )));
    }
    for f in files {
        let Some(want) = m.files.iter().find(|w| w.path == f.path) else {
            return Err(ErrorKind::Mismatch(format!(
                "{} is in the archive but not in the manifest",
                f.path
            )));
        };
        if !want.sha256.eq_ignore_ascii_case(&f.sha256) || want.size != f.size {
            return Err(ErrorKind::Mismatch(format!(
                "{}'s content differs from the manifest",
                f.path
            )));
        }
        if want.mode != f.mode {
            return Err(ErrorKind::Mismatch(format!(
                "{} has mode {:o}, the manifest says {:o}",
                f.path, f.mode, want.mode
            )));
        }
    }
    Ok(())
}

/// Size and SHA-256 of the file at `path`, if it exists and is the archive `manifest` describes.
async fn matching_archive(path: &Path, manifest: &Manifest) -> Option<(u64, [u8; 32])> {
    if !path.is_file() {
        return None;
    }
    let held = path.to_owned();
    let (size, sha) =
        tokio::task::spawn_blocking(move || hasher::hash_file(&held)).await.ok()?.ok()?;
    check_archive(manifest, size, &sha).ok().map(|()| (size, sha))
}

/// Renames, or copies across file systems (the cache and the install folder may differ).
fn move_file(from: &Path, to: &Path) -> Result<(), ErrorKind> {
    if fs_err::rename(from, to).is_err() {
        fs_err::copy(from, to)?;
        fs_err::remove_file(from)?;
    }
    Ok(())
}

/// The downloaded archive against the manifest's size and SHA-256.
fn check_archive(m: &Manifest, size: u64, sha: &[u8; 32]) -> Result<(), Error> {
    if size != m.archive.size {
        return Err(ErrorKind::Mismatch(format!(
            "the archive is {size} bytes, the manifest says {}",
            m.archive.size
        )))
        .at(Step::Verify);
    }
    let got = manifest::hex(sha);
    if !got.eq_ignore_ascii_case(&m.archive.sha256) {
        return Err(ErrorKind::Mismatch(format!(
            "the archive's SHA-256 is {got}, the manifest says {}",
            m.archive.sha256
        )))
        .at(Step::Verify);
    }
    Ok(())
}

/// `--rollback`: restores the previous version kept by the last update.
pub fn rollback(target: &Target, exe_name: &str) -> Result<Restored, Error> {
    let dir = target.dir();
    let _lock = install::InstallLock::acquire(dir).at(Step::Lock)?;
    install::clean_leftovers(dir).at(Step::Lock)?;
    let exe = match target {
        Target::InPlace { exe } => {
            install::rollback_in_place(exe).at(Step::Rollback)?;
            exe.clone()
        }
        Target::Versioned { root } => {
            let v = install::rollback_versioned(root).at(Step::Rollback)?;
            root.join("versions").join(v).join(exe_name)
        }
    };
    // What is active now is only known by asking it; it is active whatever it answers (a scratch
    // folder left by a kill here is swept with the other leftovers).
    let scratch = dir.join(format!("{}.rollback-check", install::TEMP_PREFIX));
    let reported = fs_err::create_dir_all(&scratch)
        .map_err(ErrorKind::Io)
        .and_then(|()| install::smoke_test(&exe, &scratch, Tuning::default().smoke_timeout));
    let _ = fs_err::remove_dir_all(&scratch);
    Ok(match reported {
        Ok(r) => Restored { version: Some(r.version), exe, features: r.features },
        Err(e) => {
            tracing::warn!("rolled back, but the restored butler does not say its version: {e}");
            Restored { version: None, exe, features: Vec::new() }
        }
    })
}

/// Best effort: removes what a killed update left in the install folder, unless an update is
/// running there now. Call at start-up (every `butler upgrade`, the daemon).
pub fn tidy(target: &Target) {
    let dir = target.dir();
    if !dir.is_dir() {
        return;
    }
    match install::InstallLock::acquire(dir) {
        Ok(_lock) => {
            if let Err(e) = install::clean_leftovers(dir) {
                tracing::warn!("could not remove leftovers of an interrupted update: {e}");
            }
        }
        Err(e) => tracing::debug!("not tidying {}: {e}", dir.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn updater(head: bool) -> Updater {
        let source = Source {
            base_url: "http://127.0.0.1:9".into(),
            package: "butler".into(),
            channel: Channel::for_platform("linux", "x86_64", head),
            keys: TrustedKeys::load(&[]).unwrap(),
            require_signature: false,
        };
        Updater::new(source, Tuning::default()).unwrap()
    }

    #[test]
    fn cache_names_of_one_channel_never_match_another() {
        let (stable, head) = (updater(false), updater(true));
        let dir = Path::new("/cache");
        let head_file = head.cache_path(dir, "1.2.3", "zip");
        let name = head_file.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(name, "butler@linux-amd64-head@1.2.3.zip");
        assert!(!name.starts_with(&stable.cache_prefix()), "stable cleanup would delete {name}");
        // Odd version strings cannot leave the folder.
        let odd = stable.cache_path(dir, "../../x/1", "part");
        assert_eq!(odd.parent(), Some(dir));
    }
}
