//! The update core both faces call: `butler upgrade` (`crate::upgrade`) and the daemon's
//! `Update.*`. It wraps the `butler-updater` crate with what butler adds: settings, the
//! signed-channel rule, the history in butler's database, and the daemon handshake check.
//!
//! [`UpdateService::check`] is the only way to a [`CheckResult`]: it always applies the
//! signed-channel rule and records the outcome, so no caller can skip either.

mod candidate;
pub(crate) mod history;
mod policy;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use butler_updater::{
    Channel, CheckResult, Error, ErrorKind, Event, Installed, Progress, Restored, Source, Step,
    Target, TrustedKeys, Tuning, Updater, Want,
};
use tokio_util::sync::CancellationToken;

pub(crate) use history::History;
use history::{Action, Outcome, Record};

/// The folder under butler's home where update archives wait (fetched ahead of time, or cut
/// short and to be resumed).
pub(crate) const UPDATE_CACHE: &str = "update-cache";

/// Where updates come from, whom to trust and how hard to try: resolved from the command line
/// (`butler upgrade`'s and the daemon's flags) once, then passed around.
#[derive(Debug, Clone)]
pub(crate) struct UpdateSettings {
    pub(crate) broth_url: String,
    /// Extra trusted minisign public keys (base64, or .pub files).
    pub(crate) trusted_keys: Vec<String>,
    pub(crate) require_signature: bool,
    pub(crate) tuning: Tuning,
    /// Shared by `butler upgrade` and the daemon: archives fetched ahead of time, or partial
    /// downloads to resume.
    pub(crate) cache_dir: Option<PathBuf>,
}

impl UpdateSettings {
    /// The butler package on `channel` of this server, with the keys loaded.
    /// Once any key is trusted (compiled in or given), nothing unsigned is installed: a key
    /// means its owner signs every release, so an unsigned answer can only be an attack.
    fn source(&self, channel: Channel) -> Result<Source, ErrorKind> {
        let keys = TrustedKeys::load(&self.trusted_keys)?;
        Ok(Source {
            base_url: self.broth_url.clone(),
            package: "butler".into(),
            channel,
            require_signature: self.require_signature || !keys.is_empty(),
            keys,
        })
    }
}

/// Why an [`UpdateService`] could not be set up: the settings themselves are unusable.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SettingsError {
    #[error("the trusted keys are unusable: {0}")]
    Keys(ErrorKind),
    #[error(transparent)]
    Updater(Error),
}

/// One update session for one channel of one install: check, then apply or prefetch, each
/// recorded in the history.
pub(crate) struct UpdateService {
    updater: Updater,
    history: History,
}

impl UpdateService {
    pub(crate) fn new(
        settings: &UpdateSettings,
        channel: Channel,
        history: History,
    ) -> Result<Self, SettingsError> {
        let source = settings.source(channel).map_err(SettingsError::Keys)?;
        let mut updater =
            Updater::new(source, settings.tuning.clone()).map_err(SettingsError::Updater)?;
        updater.cache_dir = settings.cache_dir.clone();
        updater.candidate_check = Some(candidate::daemon_check());
        Ok(UpdateService { updater, history })
    }

    /// Whether `want` means installing something other than `current`, under the signed-channel
    /// rule, recorded either way. A stale signed LATEST is recorded as a verified failure.
    pub(crate) async fn check(
        &mut self,
        current: Option<&str>,
        want: &Want,
        force: bool,
    ) -> Result<CheckResult, Error> {
        let checked = match self.updater.check(current, want, force).await {
            Ok(c) => {
                policy::enforce_signed_channel(&mut self.updater, &self.history, want, c).await
            }
            Err(e) => Err(e),
        };
        // A version that failed its probation is not offered again, unless asked for by name.
        if let Ok(c) = &checked
            && c.update_available
            && !matches!(want, Want::Exact(_))
            && let Some(why) = self.history.bad_reason(&c.latest).await
        {
            let r = Record::new(Action::Check, Outcome::KnownBad);
            let r = Record { from: current, to: Some(&c.latest), verified: c.signed, ..r };
            self.history.record(r).await;
            tracing::warn!("{} failed its probation before ({why}); not offered", c.latest);
            return Ok(CheckResult { update_available: false, ..c.clone() });
        }
        let record = match &checked {
            Ok(c) => Record {
                to: Some(&c.latest),
                verified: c.signed,
                ..Record::new(
                    Action::Check,
                    if c.update_available { Outcome::Available } else { Outcome::UpToDate },
                )
            },
            Err(e) => Record {
                error: Some(e),
                verified: matches!(e.kind, ErrorKind::Stale { .. }),
                ..Record::new(Action::Check, Outcome::Failed)
            },
        };
        self.history.record(Record { from: current, ..record }).await;
        checked
    }

    /// Installs what `check` found into `target`, recording the outcome. `cancel` stops it at
    /// its next step up to the swap.
    pub(crate) async fn apply(
        &mut self,
        target: &Target,
        check: &CheckResult,
        cancel: CancellationToken,
        on_event: &mut (dyn FnMut(Event) + Send),
    ) -> Result<Installed, Error> {
        self.updater.cancel = cancel;
        let applied = self.updater.apply(target, &check.latest, on_event).await;
        let from = check.current.as_deref();
        match &applied {
            Ok(i) => {
                if i.verified {
                    self.history.remember_signed().await;
                }
                let to = Some(i.version.as_str());
                let r = Record::new(Action::Upgrade, Outcome::Installed);
                self.history.record(Record { from, to, verified: i.verified, ..r }).await;
            }
            Err(e) if matches!(e.kind, ErrorKind::Cancelled) => {
                let r = Record::new(Action::Upgrade, Outcome::Cancelled);
                self.history.record(Record { from, to: Some(&check.latest), ..r }).await;
            }
            Err(e) => {
                let r = Record::new(Action::Upgrade, Outcome::Failed);
                self.history
                    .record(Record { from, to: Some(&check.latest), error: Some(e), ..r })
                    .await;
            }
        }
        applied
    }

    /// Waits for the history's writes: a command calls it before it exits.
    pub(crate) async fn settle(&self) {
        self.history.settle().await;
    }

    /// Downloads and verifies `version` into the update cache for a later apply.
    pub(crate) async fn prefetch(&self, version: &str) -> Result<PathBuf, Error> {
        self.updater.prefetch(version, &mut |_| {}).await
    }
}

/// Puts back the build the last update of `target` replaced, recording the outcome.
pub(crate) async fn rollback(
    target: &Target,
    channel: &Channel,
    from: Option<&str>,
    history: &History,
) -> Result<Restored, Error> {
    let (t, exe_name) = (target.clone(), channel.executable_name());
    let rolled = tokio::task::spawn_blocking(move || butler_updater::rollback(&t, exe_name))
        .await
        .unwrap_or_else(|e| {
            Err(Error {
                step: Step::Rollback,
                kind: ErrorKind::Io(std::io::Error::other(e.to_string())),
            })
        });
    let r = match &rolled {
        Ok(r) => Record {
            to: r.version.as_deref(),
            ..Record::new(Action::Rollback, Outcome::RolledBack)
        },
        Err(e) => Record { error: Some(e), ..Record::new(Action::Rollback, Outcome::Failed) },
    };
    history.record(Record { from, ..r }).await;
    rolled
}

/// What a butler started from `exe` updates: `exe` itself, or, when it sits in
/// `<root>/versions/<v>/` beside a `<root>/.chosen-version` (as the itch app installs it), the
/// versioned root, so an update becomes a new version folder instead of overwriting this one.
pub(crate) fn install_target(exe: &std::path::Path) -> Target {
    let root = exe
        .parent()
        .and_then(|v| v.parent())
        .filter(|versions| versions.file_name().is_some_and(|n| n == "versions"))
        .and_then(|versions| versions.parent());
    match root {
        Some(root) if root.join(butler_updater::install::CHOSEN_FILE).is_file() => {
            Target::Versioned { root: root.to_owned() }
        }
        _ => Target::InPlace { exe: exe.to_owned() },
    }
}

/// What the history calls an install: the executable, or the versioned root.
pub(crate) fn install_name(target: &Target) -> String {
    match target {
        Target::InPlace { exe } => exe.display().to_string(),
        Target::Versioned { root } => root.display().to_string(),
    }
}

/// `--to` and `Update.Apply`'s `version`: an exact version (downgrades allowed), or a semver
/// range over the channel's `versions` on stable.
pub(crate) fn parse_want(v: &str, channel: &Channel) -> Result<Want, String> {
    let plain = v.trim().trim_start_matches('v');
    if channel.head || semver::Version::parse(plain).is_ok() {
        return Ok(Want::Exact(plain.to_owned()));
    }
    semver::VersionReq::parse(v)
        .map(Want::Range)
        .map_err(|e| format!("{v:?} is neither a version nor a semver range: {e}"))
}

/// Progress reports at most every 500 ms, plus the final one: a terminal bar, `--json` lines and
/// `Progress` notifications all go through one.
#[derive(Debug, Default)]
pub(crate) struct ProgressThrottle {
    last: Option<Instant>,
}

impl ProgressThrottle {
    pub(crate) fn due(&mut self, p: &Progress) -> bool {
        if !p.is_final() && self.last.is_some_and(|t| t.elapsed() < Duration::from_millis(500)) {
            return false;
        }
        self.last = Some(Instant::now());
        true
    }
}

/// Windows: an in-place swap moves the running `butler.exe` aside (a running image can be renamed,
/// not deleted) and cannot remove it while it runs; the daemon or `butler upgrade` that starts
/// next removes it from its own folder (the versioned layout never leaves one).
#[cfg(windows)]
pub(crate) fn remove_aside_copies() {
    let Some(dir) = std::env::current_exe().ok().and_then(|e| e.parent().map(PathBuf::from)) else {
        return;
    };
    let removed = butler_updater::install::remove_aside_copies(&dir);
    if removed > 0 {
        tracing::debug!(
            "removed {removed} old image(s) an update moved aside in {}",
            dir.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_reported_at_most_every_500_ms_but_always_at_the_end() {
        let mut t = ProgressThrottle::default();
        let p = |done| Progress { done, total: Some(100), bps: 1.0 };
        assert!(t.due(&p(1)), "the first report goes out");
        assert!(!t.due(&p(2)), "too soon");
        assert!(!t.due(&p(50)));
        assert!(t.due(&p(100)), "the final report always goes out");
        t.last = Some(Instant::now() - Duration::from_millis(501));
        assert!(t.due(&p(60)), "due again after 500 ms");
    }

    #[test]
    fn want_is_a_version_or_a_range() {
        let stable = Channel::current(false);
        assert!(matches!(parse_want("v1.2.3", &stable), Ok(Want::Exact(v)) if v == "1.2.3"));
        assert!(matches!(parse_want("^15.30", &stable), Ok(Want::Range(_))));
        assert!(parse_want("soon", &stable).unwrap_err().contains("neither a version"));
        let head = Channel::current(true);
        assert!(matches!(parse_want("abc123", &head), Ok(Want::Exact(v)) if v == "abc123"));
    }
}
