//! `butler upgrade`: the command-line face of the update core (`crate::update`).
//!
//! This file owns only what a person or script at a terminal sees: flags, the prompt, the progress
//! bar, `--json` lines and exit codes.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;
use butler_updater::{Channel, Error as UpdateError, Event, Step, Target, Want};
use clap::Args;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::cli::{GlobalArgs, SourceArgs, TuningArgs};
use crate::exit::{ExitError, ExitStatus};
use crate::report::{Level, Reporter};
use crate::signals::Signals;
use crate::update::{self, History, ProgressThrottle, SettingsError, UpdateService};
use crate::version::VERSION;

#[derive(Debug, Args)]
pub(crate) struct UpgradeArgs {
    /// Only check whether a newer version exists.
    #[arg(long)]
    pub(crate) check: bool,
    /// Follow the -head channel (commit builds).
    #[arg(long, conflicts_with = "stable")]
    pub(crate) head: bool,
    /// Follow the stable channel (the default).
    #[arg(long)]
    pub(crate) stable: bool,
    /// Install this version (may downgrade), or the newest matching a semver range like ^15.30.
    #[arg(long, value_name = "VERSION|RANGE")]
    pub(crate) to: Option<String>,
    /// Reinstall even when up to date.
    #[arg(long)]
    pub(crate) force: bool,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y', alias = "assume-yes")]
    pub(crate) yes: bool,
    /// No progress bar on the terminal (--json progress lines are unaffected).
    #[arg(long, env = "BUTLER_NO_PROGRESS")]
    pub(crate) no_progress: bool,
    /// Restore the version the last update replaced.
    #[arg(long, conflicts_with_all = ["check", "to", "force"])]
    pub(crate) rollback: bool,
    /// Show what the last updates did, and the versions that failed after a restart.
    #[arg(long, conflicts_with_all = ["check", "to", "force", "rollback"])]
    pub(crate) status: bool,
    /// Manage a versioned install (versions/<v>/ and .chosen-version) instead of this executable.
    #[arg(long, value_name = "DIR")]
    pub(crate) root: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) source: SourceArgs,
    #[command(flatten)]
    pub(crate) tuning: TuningArgs,
}

pub(crate) fn run(
    args: UpgradeArgs,
    global: &GlobalArgs,
    reporter: Reporter,
) -> anyhow::Result<ExitStatus> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(run_async(args, global, reporter))
}

async fn run_async(
    args: UpgradeArgs,
    global: &GlobalArgs,
    reporter: Reporter,
) -> anyhow::Result<ExitStatus> {
    let channel = Channel::current(args.head);
    let target = match &args.root {
        Some(root) => Target::Versioned { root: absolute(root)? },
        None => Target::InPlace {
            exe: std::env::current_exe().context("finding the running executable")?,
        },
    };
    let settings = args.source.settings(&args.tuning);
    // Opened beside the network requests: opening (and migrating) the database costs fsyncs.
    let history = History::open(
        global.dbpath.clone(),
        &settings.broth_url,
        &channel.name(),
        &update::install_name(&target),
    );
    butler_updater::tidy(&target);

    if args.status {
        return status(global, &reporter);
    }

    if args.rollback {
        return match update::rollback(&target, &channel, None, &history).await {
            Ok(r) => {
                let restored = r.version.unwrap_or_else(|| r.exe.display().to_string());
                reporter.log(Level::Info, &format!("rolled back: {restored} is active again"));
                reporter.result(json!({"rolledBack": true, "restored": restored}));
                Ok(ExitStatus::Success)
            }
            Err(e) => Err(fail(&reporter, e)),
        };
    }

    let mut service = UpdateService::new(&settings, channel.clone(), history).map_err(|e| {
        let e = match e {
            SettingsError::Keys(k) => anyhow::anyhow!("--trusted-key / BUTLER_TRUSTED_KEYS: {k}"),
            // Only the URL is checked here: name where it came from.
            SettingsError::Updater(u) => match u.kind {
                butler_updater::ErrorKind::Network { url, why } if !url.is_empty() => {
                    anyhow::anyhow!("--broth-url (or BUTLER_BROTH_URL) {url:?}: {why}")
                }
                kind => anyhow::Error::new(butler_updater::Error { step: u.step, kind }),
            },
        };
        ExitError::new(ExitStatus::Usage, e)
    })?;
    let outcome = check_and_apply(&mut service, &args, global, reporter, &target, &channel).await;
    // The history may still be writing what the check found (it never holds the update up).
    service.settle().await;
    outcome
}

/// Checks, then, when there is something to install and the person agrees, applies.
async fn check_and_apply(
    service: &mut UpdateService,
    args: &UpgradeArgs,
    global: &GlobalArgs,
    reporter: Reporter,
    target: &Target,
    channel: &Channel,
) -> anyhow::Result<ExitStatus> {
    let current = target.current(VERSION).map_err(|e| fail(&reporter, e))?;
    let want = match &args.to {
        None => Want::Latest,
        Some(v) => update::parse_want(v, channel)
            .map_err(|e| ExitError::new(ExitStatus::Usage, anyhow::anyhow!("--to {e}")))?,
    };
    let check = match service.check(current.as_deref(), &want, args.force).await {
        Ok(c) => c,
        Err(e) => return Err(fail(&reporter, e)),
    };
    let result = json!({
        "channel": check.channel,
        "current": check.current,
        "latest": check.latest,
        "updateAvailable": check.update_available,
        "signed": check.signed,
    });
    if !check.update_available || args.check {
        let up_to_date = !check.update_available;
        let msg = if up_to_date {
            let current = current.as_deref().unwrap_or("?");
            format!("butler {current} is up to date ({} on {})", check.latest, check.channel)
        } else {
            let current = current.as_deref().unwrap_or("(none)");
            format!(
                "an update is available: {current} -> {} on {}; run `butler upgrade` to install it",
                check.latest, check.channel
            )
        };
        reporter.log(Level::Info, &msg);
        reporter.result(merge(
            result,
            json!({"installed": null, "verified": check.signed, "upToDate": up_to_date}),
        ));
        return Ok(if up_to_date { ExitStatus::Success } else { ExitStatus::UpdateAvailable });
    }
    let interactive = !global.json
        && !args.yes
        && std::io::stdin().is_terminal()
        && std::io::stderr().is_terminal();
    if interactive && !confirm(current.as_deref(), &check.latest)? {
        // A "no" is an answer, not a failure (as upstream's "Okay, not upgrading").
        reporter.log(Level::Info, "not updated");
        return Ok(ExitStatus::Success);
    }
    let mut ui =
        Ui::new(reporter, !global.json && !args.no_progress && std::io::stderr().is_terminal());
    // Ctrl-C (or SIGTERM) stops the update at its next step, before the swap, and says so; a
    // second one leaves at once (an interrupted update never leaves a broken butler).
    let cancel = CancellationToken::new();
    let watcher = match Signals::install() {
        Ok(mut signals) => {
            let cancel = cancel.clone();
            Some(tokio::spawn(async move {
                signals.recv().await;
                cancel.cancel();
                signals.recv().await;
                std::process::exit(ExitStatus::Interrupted.code().into());
            }))
        }
        Err(e) => {
            tracing::debug!("signals not caught: {e}");
            None
        }
    };
    let applied = service.apply(target, &check, cancel, &mut |ev| ui.event(ev)).await;
    if let Some(w) = watcher {
        w.abort();
    }
    ui.finish();
    let inst = applied.map_err(|e| fail(&reporter, e))?;
    reporter.log(
        Level::Info,
        &format!(
            "updated butler {} -> {} at {}{}",
            current.as_deref().unwrap_or("(none)"),
            inst.version,
            inst.path.display(),
            if inst.verified { " (signature verified)" } else { " (not signature-verified)" }
        ),
    );
    reporter.result(merge(
        result,
        json!({"installed": inst.version, "verified": inst.verified, "upToDate": true, "path": inst.path}),
    ));
    Ok(ExitStatus::Success)
}

/// Logs an update failure (with `--json`, as a line naming its step and class) and converts it
/// into the exit error `main` prints.
fn fail(reporter: &Reporter, e: UpdateError) -> anyhow::Error {
    let class = e.kind.class();
    if reporter.json {
        reporter.emit(
            "log",
            json!({"level": "error", "message": e.to_string(), "step": e.step, "code": class}),
        );
    }
    let context = match e.step {
        Step::Rollback => "upgrade --rollback",
        _ => "upgrade",
    };
    let error = match hint(&e) {
        Some(h) => anyhow::anyhow!("{context}: {e}\n  hint: {h}"),
        None => anyhow::Error::new(e).context(context),
    };
    ExitError::new(ExitStatus::Update(class), error).into()
}

/// What the person can do about a failure, when the message itself does not say.
fn hint(e: &UpdateError) -> Option<&'static str> {
    use butler_updater::ErrorKind as K;
    Some(match &e.kind {
        K::Network { .. } | K::Busy { .. } | K::Http { .. } => {
            "check the network connection, or point --broth-url (or BUTLER_BROTH_URL) at a server you can reach"
        }
        K::NotFound(_) if e.step == Step::Check => {
            "is --broth-url (or BUTLER_BROTH_URL) right? It must serve butler/<channel>/LATEST"
        }
        K::NotFound(_) => "the server names a version it does not serve; try again later",
        K::WrongRange { .. } => {
            "the server does not resume downloads correctly; run the same command again"
        }
        K::Stalled { .. } | K::Truncated { .. } => {
            "the download was cut short; run the same command again to resume it"
        }
        K::BadLatest(_) | K::BadVersions(_) => {
            "is --broth-url (or BUTLER_BROTH_URL) a broth server? Its answers are not what butler expects"
        }
        K::BadSignature(_) | K::UntrustedKey(_) | K::Mismatch(_) | K::Stale { .. } => {
            "nothing was installed; do not update from this server until its files and signatures agree"
        }
        K::SmokeTest(_) | K::CandidateCheck { .. } | K::BadArchive(_) => {
            "nothing was installed; this build is broken, so wait for the next one"
        }
        K::Cancelled => "run the same command again to go on; a partial download is resumed",
        k if k.is_disk_full() => {
            "the disk is full; free some space and run the same command again (nothing was installed; a partial download is resumed)"
        }
        _ => return None,
    })
}

/// `butler upgrade --status`: the newest update outcomes and the versions known to be bad.
fn status(global: &GlobalArgs, reporter: &Reporter) -> anyhow::Result<ExitStatus> {
    let path = crate::db::DbPath::resolve(global.dbpath.as_deref())?;
    let conn = crate::db::open(&path)?;
    let history = update::history::recent(&conn, 10)?;
    let bad = update::history::bad_versions(&conn)?;
    if reporter.json {
        reporter.result(json!({"history": history, "badVersions": bad}));
        return Ok(ExitStatus::Success);
    }
    let mut out = std::io::stdout().lock();
    if history.is_empty() {
        writeln!(out, "no update recorded yet")?;
    }
    for h in &history {
        let versions = match (&h.from_version, &h.to_version) {
            (Some(f), Some(t)) => format!("{f} -> {t}"),
            (None, Some(t)) => t.clone(),
            (Some(f), None) => f.clone(),
            (None, None) => String::new(),
        };
        let (action, outcome) = (h.action.as_str(), h.outcome.as_str());
        let message = h.message.as_deref().map(|m| format!(": {m}")).unwrap_or_default();
        writeln!(out, "{}\t{action}\t{outcome}\t{versions}{message}", when(h.time))?;
    }
    for b in &bad {
        writeln!(
            out,
            "bad version {} on {}: {} (not offered again)",
            b.version, b.channel, b.reason
        )?;
    }
    Ok(ExitStatus::Success)
}

fn when(unix: i64) -> String {
    let t =
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(unix).unwrap_or(0));
    crate::streaming::timefmt::format_rfc3339(t)
}

fn merge(mut a: serde_json::Value, b: serde_json::Value) -> serde_json::Value {
    if let (Some(a), serde_json::Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    if p.is_absolute() {
        return Ok(p.to_owned());
    }
    Ok(std::env::current_dir()?.join(p))
}

/// Asks on the terminal; anything but y/yes is a no.
fn confirm(current: Option<&str>, latest: &str) -> anyhow::Result<bool> {
    let mut err = std::io::stderr().lock();
    write!(err, "Update butler {} to {latest}? [y/N] ", current.unwrap_or("(none)"))?;
    err.flush()?;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes"))
}

/// `1.9 MiB`: bytes in binary units, one decimal.
fn human(bytes: f64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024.0 {
        return format!("{bytes:.0} B");
    }
    let (mut v, mut unit) = (bytes / 1024.0, 0);
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// `4s`, `2m05s`, `1h02m`.
fn short_duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// Progress for people (a bar on a terminal) and machines (`progress` lines at most every 500 ms).
struct Ui {
    reporter: Reporter,
    bar: bool,
    throttle: ProgressThrottle,
    drawn: bool,
}

impl Ui {
    fn new(reporter: Reporter, bar: bool) -> Self {
        Ui { reporter, bar, throttle: ProgressThrottle::default(), drawn: false }
    }

    fn event(&mut self, ev: Event) {
        match ev {
            Event::Info(m) => {
                self.clear_bar();
                self.reporter.log(Level::Info, &m);
            }
            Event::Warning(m) => {
                self.clear_bar();
                // JSON lines carry the level; a person needs the label.
                let m = if self.reporter.json { m } else { format!("warning: {m}") };
                self.reporter.log(Level::Warning, &m);
            }
            Event::Progress(p) => {
                if !self.throttle.due(&p) {
                    return;
                }
                let (frac, eta) = (p.fraction(), p.eta_secs());
                if self.reporter.json {
                    self.reporter.emit(
                        "progress",
                        json!({"progress": frac, "eta": eta.unwrap_or(0.0), "bps": p.bps.round(), "done": p.done, "total": p.total}),
                    );
                } else if self.bar {
                    let width = 30usize;
                    let filled = ((frac * width as f64) as usize).min(width);
                    let size = match p.total {
                        Some(t) => format!("{} / {}", human(p.done as f64), human(t as f64)),
                        None => human(p.done as f64),
                    };
                    let eta =
                        eta.map(|s| format!("  ETA {}", short_duration(s))).unwrap_or_default();
                    let mut err = std::io::stderr().lock();
                    // Padded so a shorter line fully covers the previous one.
                    let _ = write!(
                        err,
                        "\r[{}{}] {:>5.1}%  {size}  {}/s{eta}   ",
                        "#".repeat(filled),
                        " ".repeat(width - filled),
                        frac * 100.0,
                        human(p.bps),
                    );
                    let _ = err.flush();
                    self.drawn = true;
                }
            }
        }
    }

    fn clear_bar(&mut self) {
        if self.drawn {
            let _ = writeln!(std::io::stderr());
            self.drawn = false;
        }
    }

    fn finish(&mut self) {
        self.clear_bar();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_durations_read_as_people_write_them() {
        assert_eq!(human(512.0), "512 B");
        assert_eq!(human(1536.0), "1.5 KiB");
        assert_eq!(human(15.5 * 1024.0 * 1024.0), "15.5 MiB");
        assert_eq!(short_duration(4.4), "4s");
        assert_eq!(short_duration(125.0), "2m05s");
        assert_eq!(short_duration(3720.0), "1h02m");
    }
}
