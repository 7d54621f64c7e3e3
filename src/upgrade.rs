//! `butler upgrade`: the command-line face of the `butler-updater` crate.
//!
//! This file owns what the updater must not know: flags and environment, the prompt and progress
//! bar, `--json` lines, exit codes, and the database (outcomes, channels that served signatures).

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use butler_updater::{
    Channel, Error as UpdateError, Event, Source, Step, Target, TrustedKeys, Tuning, Updater, Want,
};
use clap::Args;
use serde_json::json;

use crate::ExitError;
use crate::cli::GlobalArgs;
use crate::db::{self, Db, DbPath};
use crate::report::{Level, Reporter};
use crate::version::VERSION;

#[derive(Debug, Args)]
pub struct UpgradeArgs {
    /// Only check whether a newer version exists.
    #[arg(long)]
    pub check: bool,
    /// Follow the -head channel (commit builds).
    #[arg(long, conflicts_with = "stable")]
    pub head: bool,
    /// Follow the stable channel (the default).
    #[arg(long)]
    pub stable: bool,
    /// Install this version (may downgrade), or the newest matching a semver range like ^15.30.
    #[arg(long, value_name = "VERSION|RANGE")]
    pub to: Option<String>,
    /// Reinstall even when up to date.
    #[arg(long)]
    pub force: bool,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y', alias = "assume-yes")]
    pub yes: bool,
    /// Restore the version the last update replaced.
    #[arg(long, conflicts_with_all = ["check", "to", "force"])]
    pub rollback: bool,
    /// Manage a versioned install (versions/<v>/ and .chosen-version) instead of this executable.
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub tuning: TuningArgs,
}

/// Where updates come from and whom to trust: shared by `butler upgrade` and the daemon.
#[derive(Debug, Clone, Args)]
pub struct SourceArgs {
    /// The broth server.
    #[arg(long, env = "BUTLER_BROTH_URL", default_value = butler_updater::DEFAULT_BROTH_URL)]
    pub broth_url: String,
    /// Refuse updates that are not signed by a trusted key.
    #[arg(long)]
    pub require_signature: bool,
    /// Extra trusted minisign public key (base64, or a .pub file); repeatable.
    #[arg(
        long = "trusted-key",
        env = "BUTLER_TRUSTED_KEYS",
        value_delimiter = ',',
        value_name = "KEY"
    )]
    pub trusted_keys: Vec<String>,
}

impl SourceArgs {
    /// The butler package on `channel` of this server, with the keys loaded.
    pub fn source(&self, channel: Channel) -> Result<Source, butler_updater::ErrorKind> {
        Ok(Source {
            base_url: self.broth_url.clone(),
            package: "butler".into(),
            channel,
            keys: TrustedKeys::load(&self.trusted_keys)?,
            require_signature: self.require_signature,
        })
    }
}

/// Limits tests shorten so failures show up in milliseconds; hidden from help.
#[derive(Debug, Clone, Args)]
pub struct TuningArgs {
    #[arg(long, hide = true, env = "BUTLER_UPGRADE_READ_TIMEOUT_MS")]
    read_timeout_ms: Option<u64>,
    #[arg(long, hide = true, env = "BUTLER_UPGRADE_BACKOFF_MS")]
    backoff_ms: Option<u64>,
    #[arg(long, hide = true, env = "BUTLER_UPGRADE_RETRIES")]
    retries: Option<u32>,
    #[arg(long, hide = true, env = "BUTLER_UPGRADE_MIN_BPS")]
    min_bps: Option<u64>,
    #[arg(long, hide = true, env = "BUTLER_UPGRADE_STALL_WINDOW_MS")]
    stall_window_ms: Option<u64>,
    #[arg(long, hide = true, env = "BUTLER_UPGRADE_MAX_ARCHIVE")]
    max_archive: Option<u64>,
    #[arg(long, hide = true, env = "BUTLER_UPGRADE_MAX_UNPACKED")]
    max_unpacked: Option<u64>,
    /// Debug builds only: skip the versioned daemon check.
    #[arg(long, hide = true, env = "BUTLER_TEST_SKIP_DAEMON_CHECK")]
    skip_daemon_check: bool,
}

impl TuningArgs {
    pub fn tuning(&self) -> Tuning {
        let mut t = Tuning::default();
        let ms = Duration::from_millis;
        if let Some(v) = self.read_timeout_ms {
            t.net.read_timeout = ms(v);
            t.net.connect_timeout = ms(v);
        }
        if let Some(v) = self.backoff_ms {
            t.net.backoff = ms(v);
            t.net.max_backoff = ms(v * 4);
        }
        if let Some(v) = self.retries {
            t.net.retries = v.max(1);
        }
        if let Some(v) = self.min_bps {
            t.net.min_bps = v;
        }
        if let Some(v) = self.stall_window_ms {
            t.net.stall_window = ms(v);
        }
        if let Some(v) = self.max_archive {
            t.net.max_archive = v;
        }
        if let Some(v) = self.max_unpacked {
            t.unpack.max_total = v;
        }
        t.skip_daemon_check = self.skip_daemon_check;
        t
    }
}

/// The folder under butler's home where update archives wait (fetched ahead of time, or cut
/// short and to be resumed).
pub(crate) const UPDATE_CACHE: &str = "update-cache";

/// Exit codes, one per kind of failure, so scripts can tell them apart.
fn exit_code_for(e: &UpdateError) -> u8 {
    match e.kind.code() {
        "network" => 3,
        "download" => 4,
        "bad-server-data" => 5,
        "verification" | "bad-key" => 6,
        "stale" => 7,
        "bad-archive" => 8,
        "smoke-test" => 9,
        "not-writable" => 10,
        "locked" => 11,
        "no-rollback" => 12,
        _ => 13,
    }
}

pub fn run(args: UpgradeArgs, global: &GlobalArgs, reporter: Reporter) -> anyhow::Result<u8> {
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
) -> anyhow::Result<u8> {
    let channel = Channel::current(args.head);
    let target = match &args.root {
        Some(root) => Target::Versioned { root: absolute(root)? },
        None => Target::InPlace {
            exe: std::env::current_exe().context("finding the running executable")?,
        },
    };
    // Opening (and on first use migrating) the database costs fsyncs; do it beside the network.
    let opener = {
        let (dbpath, url, ch, t) =
            (global.dbpath.clone(), args.source.broth_url.clone(), channel.name(), target.clone());
        std::thread::spawn(move || History::open(dbpath.as_deref(), &url, &ch, &t))
    };
    let history = || opener.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
    butler_updater::tidy(&target);

    if args.rollback {
        let history = history();
        return match butler_updater::rollback(&target, channel.executable_name()) {
            Ok(r) => {
                let restored = r.version.unwrap_or_else(|| r.exe.display().to_string());
                let msg = format!("rolled back: {restored} is active again");
                reporter.log(Level::Info, &msg);
                history.record("rollback", None, Some(&restored), "rolled-back", None, false).await;
                reporter.result(json!({"rolledBack": true, "restored": restored}));
                Ok(0)
            }
            Err(e) => Err(fail(&reporter, &history, "rollback", None, e).await),
        };
    }

    let source = args.source.source(channel.clone()).map_err(|e| {
        ExitError::new(2, anyhow::anyhow!("--trusted-key / BUTLER_TRUSTED_KEYS: {e}"))
    })?;
    let mut updater =
        Updater::new(source, args.tuning.tuning()).map_err(|e| ExitError::new(2, e))?;
    // Shared with the daemon: an archive it fetched ahead of time, or a download an earlier run
    // did not finish, is picked up here.
    updater.cache_dir = db::home_dir().ok().map(|h| h.join(UPDATE_CACHE));
    let current = target.current(VERSION).map_err(|e| ExitError::new(13, e))?;
    let want = match &args.to {
        None => Want::Latest,
        Some(v) => {
            parse_want(v, &channel).map_err(|e| ExitError::new(2, anyhow::anyhow!("--to {e}")))?
        }
    };
    let checked = updater.check(current.as_deref(), &want, args.force).await;
    let history = history();
    let checked = match checked {
        Ok(c) => enforce_signed_channel(&mut updater, &history, &want, c).await,
        Err(e) => Err(e),
    };
    let check = match checked {
        Ok(c) => c,
        Err(e) => return Err(fail(&reporter, &history, "check", current.as_deref(), e).await),
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
        let (msg, outcome) = if up_to_date {
            let current = current.as_deref().unwrap_or("?");
            (
                format!("butler {current} is up to date ({} on {})", check.latest, check.channel),
                "up-to-date",
            )
        } else {
            let current = current.as_deref().unwrap_or("(none)");
            (
                format!(
                    "an update is available: {current} -> {} on {}",
                    check.latest, check.channel
                ),
                "available",
            )
        };
        reporter.log(Level::Info, &msg);
        history
            .record("check", current.as_deref(), Some(&check.latest), outcome, None, check.signed)
            .await;
        reporter.result(merge(
            result,
            json!({"installed": null, "verified": check.signed, "upToDate": up_to_date}),
        ));
        return Ok(0);
    }
    let interactive = !global.json
        && !args.yes
        && std::io::stdin().is_terminal()
        && std::io::stderr().is_terminal();
    if interactive && !confirm(current.as_deref(), &check.latest)? {
        reporter.log(Level::Info, "not updated");
        return Err(ExitError::new(1, anyhow::anyhow!("cancelled at the prompt")).into());
    }
    let mut ui = Ui::new(reporter, !global.json && std::io::stderr().is_terminal());
    let applied = updater.apply(&target, &check.latest, &mut |ev| ui.event(ev)).await;
    ui.finish();
    match applied {
        Ok(inst) => {
            reporter.log(
                Level::Info,
                &format!(
                    "updated butler {} -> {} at {}{}",
                    current.as_deref().unwrap_or("(none)"),
                    inst.version,
                    inst.path.display(),
                    if inst.verified {
                        " (signature verified)"
                    } else {
                        " (not signature-verified)"
                    }
                ),
            );
            if inst.verified {
                history.remember_signed().await;
            }
            let (from, to) = (current.as_deref(), Some(inst.version.as_str()));
            history.record("upgrade", from, to, "installed", None, inst.verified).await;
            reporter.result(merge(
                result,
                json!({"installed": inst.version, "verified": inst.verified, "upToDate": true, "path": inst.path}),
            ));
            Ok(0)
        }
        Err(e) => Err(fail(&reporter, &history, "upgrade", current.as_deref(), e).await),
    }
}

/// A channel that served signatures before must keep doing so (else: a downgrade attack); once
/// it has, the rest of this update requires them too. Every caller of `check` goes through here.
pub(crate) async fn enforce_signed_channel(
    updater: &mut Updater,
    history: &History,
    want: &Want,
    check: butler_updater::CheckResult,
) -> Result<butler_updater::CheckResult, UpdateError> {
    if history.channel_was_signed().await {
        if matches!(want, Want::Latest) && !check.signed {
            return Err(UpdateError {
                step: Step::Verify,
                kind: butler_updater::ErrorKind::Unsigned(format!(
                    "LATEST for {} came without a signature, but this channel served signatures before",
                    check.channel
                )),
            });
        }
        updater.source.require_signature = true;
    }
    if check.signed {
        history.remember_signed().await;
    }
    Ok(check)
}

/// Logs, records and converts an update failure into the exit error `main` prints.
async fn fail(
    reporter: &Reporter,
    history: &History,
    action: &str,
    current: Option<&str>,
    e: UpdateError,
) -> anyhow::Error {
    let code = exit_code_for(&e);
    if reporter.json {
        reporter.emit(
            "log",
            json!({"level": "error", "message": e.to_string(), "step": e.step, "code": e.kind.code()}),
        );
    }
    history.record(action, current, None, "failed", Some(&e), false).await;
    let step = e.step;
    let err = anyhow::Error::new(e).context(match step {
        Step::Rollback => "upgrade --rollback".to_string(),
        _ => "upgrade".to_string(),
    });
    ExitError::new(code, err).into()
}

fn merge(mut a: serde_json::Value, b: serde_json::Value) -> serde_json::Value {
    if let (Some(a), serde_json::Value::Object(b)) = (a.as_object_mut(), b) {
        a.extend(b);
    }
    a
}

/// `--to 1.2.3` names a version (downgrades allowed); `--to ^1.2` is a range over `versions`.
/// `--to` (and `Update.Apply`'s `version`): an exact version, or a semver range on stable.
pub(crate) fn parse_want(v: &str, channel: &Channel) -> Result<Want, String> {
    let plain = v.trim().trim_start_matches('v');
    if channel.head || semver::Version::parse(plain).is_ok() {
        return Ok(Want::Exact(plain.to_owned()));
    }
    semver::VersionReq::parse(v)
        .map(Want::Range)
        .map_err(|e| format!("{v:?} is neither a version nor a semver range: {e}"))
}

/// Progress reports at most every 500 ms, plus the final one.
#[derive(Debug, Default)]
pub(crate) struct ProgressThrottle {
    last: Option<Instant>,
}

impl ProgressThrottle {
    pub(crate) fn due(&mut self, p: &butler_updater::Progress) -> bool {
        if !p.is_final() && self.last.is_some_and(|t| t.elapsed() < Duration::from_millis(500)) {
            return false;
        }
        self.last = Some(Instant::now());
        true
    }
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
                    let mut err = std::io::stderr().lock();
                    let _ = write!(
                        err,
                        "\r[{}{}] {:>5.1}% {:>8.1} KiB/s",
                        "#".repeat(filled),
                        " ".repeat(width - filled),
                        frac * 100.0,
                        p.bps / 1024.0
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

/// The database side: outcomes and the signed-channel memory. A database that cannot be opened
/// does not block an update (butler must stay fixable), but it is said.
pub(crate) struct History {
    db: Option<Db>,
    base_url: String,
    channel: String,
    install: String,
}

impl History {
    /// For a command: its own connection to the database `dbpath` names.
    pub(crate) fn open(
        dbpath: Option<&str>,
        base_url: &str,
        channel: &str,
        target: &Target,
    ) -> History {
        let conn = DbPath::resolve(dbpath).and_then(|p| db::open(&p));
        // A short-lived command need not checkpoint the WAL on exit (an fsync-heavy step);
        // the daemon or the next run does it.
        let conn = conn.inspect(|c| {
            let _ =
                c.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true);
        });
        let db = match conn {
            Ok(c) => Some(Db::new(c)),
            Err(e) => {
                tracing::warn!("the update history will not be recorded: {e}");
                None
            }
        };
        History::with_db(db, base_url, channel, target)
    }

    /// Over an open database (the daemon's), or none.
    pub(crate) fn with_db(
        db: Option<Db>,
        base_url: &str,
        channel: &str,
        target: &Target,
    ) -> History {
        let install = match target {
            Target::InPlace { exe } => exe.display().to_string(),
            Target::Versioned { root } => root.display().to_string(),
        };
        History {
            db,
            base_url: base_url.trim_end_matches('/').to_owned(),
            channel: channel.to_owned(),
            install,
        }
    }

    /// Whether this channel served signatures before. Fails closed: when the database cannot
    /// answer, signatures are required, so a busy database never lowers the bar.
    async fn channel_was_signed(&self) -> bool {
        let Some(db) = &self.db else { return false };
        let (url, channel) = (self.base_url.clone(), self.channel.clone());
        let found = db
            .call(move |c| {
                Ok(c.query_row(
                    "SELECT EXISTS (SELECT 1 FROM update_signed_channels WHERE base_url = ?1 AND channel = ?2)",
                    (&url, &channel),
                    |r| r.get::<_, bool>(0),
                )?)
            })
            .await;
        found.unwrap_or_else(|e| {
            tracing::warn!(
                "could not read whether {} was signed ({e}); requiring signatures",
                self.channel
            );
            true
        })
    }

    pub(crate) async fn remember_signed(&self) {
        let Some(db) = &self.db else { return };
        let (url, channel) = (self.base_url.clone(), self.channel.clone());
        let inserted = db
            .call(move |c| {
                Ok(c.execute(
                    "INSERT OR IGNORE INTO update_signed_channels (base_url, channel, first_seen) VALUES (?1, ?2, ?3)",
                    (&url, &channel, crate::report::unix_now() as i64),
                )?)
            })
            .await;
        if let Err(e) = inserted {
            tracing::warn!("could not remember that {} is signed: {e}", self.channel);
        }
    }

    pub(crate) async fn record(
        &self,
        action: &str,
        from: Option<&str>,
        to: Option<&str>,
        outcome: &str,
        err: Option<&UpdateError>,
        verified: bool,
    ) {
        let Some(db) = &self.db else { return };
        let row = (
            crate::report::unix_now() as i64,
            action.to_owned(),
            self.channel.clone(),
            self.install.clone(),
            from.map(str::to_owned),
            to.map(str::to_owned),
            outcome.to_owned(),
            err.map(|e| e.step.to_string()),
            err.map(|e| e.kind.code()),
            err.map(|e| e.to_string()),
            verified,
        );
        let inserted = db
            .call(move |c| {
                Ok(c.execute(
                    "INSERT INTO update_history (time, action, channel, install_path, from_version, to_version, outcome, step, error_code, message, verified)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                    rusqlite::params![row.0, row.1, row.2, row.3, row.4, row.5, row.6, row.7, row.8, row.9, row.10],
                )?)
            })
            .await;
        if let Err(e) = inserted {
            tracing::warn!("could not record the update outcome: {e}");
        }
    }
}

/// One row of the update history, newest first from [`recent_history`].
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryEntry {
    /// Unix seconds.
    pub time: i64,
    pub action: String,
    pub channel: String,
    pub from_version: Option<String>,
    pub to_version: Option<String>,
    pub outcome: String,
    pub step: Option<String>,
    pub message: Option<String>,
    pub verified: bool,
}

/// The newest `limit` update outcomes.
pub fn recent_history(
    conn: &rusqlite::Connection,
    limit: usize,
) -> Result<Vec<HistoryEntry>, db::DbError> {
    let mut stmt = conn.prepare(
        "SELECT time, action, channel, from_version, to_version, outcome, step, message, verified
         FROM update_history ORDER BY id DESC LIMIT ?1",
    )?;
    let rows = stmt.query_map([limit as i64], |r| {
        Ok(HistoryEntry {
            time: r.get(0)?,
            action: r.get(1)?,
            channel: r.get(2)?,
            from_version: r.get(3)?,
            to_version: r.get(4)?,
            outcome: r.get(5)?,
            step: r.get(6)?,
            message: r.get(7)?,
            verified: r.get(8)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use butler_updater::Progress;

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
