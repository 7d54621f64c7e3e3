//! `Update.*`: launchers ask the daemon whether a newer butler exists, have it install one (or
//! restore the previous one), optionally restarting into it on the same socket, and read what the
//! last updates did. Everything goes through the same updater paths as `butler upgrade`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use butler_updater::{Channel, ErrorClass, ErrorKind, Event, Step, Target, Want};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::daemon::hand_over::Announcement;
use crate::daemon::jsonrpc::{RpcError, code};
use crate::daemon::notifications::{
    Log, Progress, UpdateApplied, UpdateAvailable, UpdateReady, UpdateRolledBack,
};
use crate::daemon::router::{Ctx, Router};
use crate::daemon::state::{Daemon, Restart};
use crate::report::Level;
use crate::update::history::{self, Action, BadVersion, HistoryEntry, Outcome};
use crate::update::{self, History, ProgressThrottle, SettingsError, UpdateService};
use crate::version::VERSION;

pub(super) fn register(r: &mut Router) {
    r.method("Update.Check", check)
        .doc(
            "Asks the update server whether a newer butler is published on a channel, and \
             records the check. News of one also goes to every `Meta.Flow` connection \
             (`Update.Available`). A signed channel whose signed LATEST has expired answers \
             `stale: true`, never \"up to date\".",
        )
        .errors(&[code::NETWORK_DISCONNECTED]);
    r.method_owning_cancel("Update.Apply", apply)
        .doc(
            "Downloads, verifies and installs a butler (the newest on the channel, or \
             `version`), with `Progress` and `Log` notifications; `Meta.Flow` connections hear \
             `Update.Applied`. With `restart: true` a TCP `--keep-alive` daemon on unix \
             restarts into it on the same socket and secret, keeping connections open; \
             otherwise `restartRequired` says a restart is left to the launcher (with \
             `executable`). Cancelling stops it before the swap (499).",
        )
        .notifies::<Progress>()
        .notifies::<Log<'static>>()
        .errors(&[code::NETWORK_DISCONNECTED, code::OPERATION_CANCELLED]);
    // Owns its cancellation by ignoring it: a rollback is short, and once started it must be
    // recorded and announced, not dropped half-way.
    r.method_owning_cancel("Update.Rollback", rollback)
        .doc(
            "Puts back the build the last update replaced (`butler upgrade --rollback`); \
             `Meta.Flow` connections hear `Update.RolledBack`. `restart` as for `Update.Apply`.",
        )
        .notifies::<Log<'static>>();
    r.method("Update.Status", status)
        .doc(
            "The running version, an install waiting for a restart, the last check and the \
             recent update history (newest first), and versions refused after a failed \
             probation.",
        )
        .errors(&[code::DATABASE_UNAVAILABLE]);
}

/// The channel a request names: `stable` (default) or `head`, or a full name ending in `-head`.
fn channel_of(name: Option<&str>) -> Channel {
    Channel::current(name.is_some_and(|c| c == "head" || c.ends_with("-head")))
}

/// What this daemon updates: the executable it started from (after an in-place swap, Linux names
/// the running file "... (deleted)", so it is remembered from the start), or the versioned root
/// it runs from (`<root>/versions/<v>/butler` with `<root>/.chosen-version`, as the itch app
/// installs it), so an update becomes a new version folder instead of overwriting this one.
fn target(daemon: &Daemon) -> Target {
    update::install_target(&daemon.config.exe)
}

/// The version the target holds: what an install without restart put there, else for a
/// versioned root the chosen one (the launcher may have chosen another since this daemon
/// started), else this build's.
fn installed_version(daemon: &Daemon) -> String {
    daemon.awaiting_restart().unwrap_or_else(|| {
        target(daemon).current(VERSION).ok().flatten().unwrap_or_else(|| VERSION.to_owned())
    })
}

/// An update service for `channel`, recording into the daemon's own database (so an in-memory
/// one keeps the history too); without a usable database, updates still work but are not
/// recorded.
async fn service_for(daemon: &Daemon, channel: &Channel) -> Result<UpdateService, RpcError> {
    let history = open_history(daemon, channel).await;
    UpdateService::new(&daemon.config.update, channel.clone(), history).map_err(|e| match e {
        SettingsError::Keys(k) => RpcError::new(
            code::INVALID_PARAMS,
            format!("the daemon's trusted keys are unusable: {k}"),
        ),
        SettingsError::Updater(u) => update_error(u),
    })
}

async fn open_history(daemon: &Daemon, channel: &Channel) -> History {
    let db = daemon.db().await;
    if let Err(e) = &db {
        tracing::warn!("the update history will not be recorded: {}", e.message);
    }
    let install = update::install_name(&target(daemon));
    History::with_db(db.ok(), &daemon.config.update.broth_url, &channel.name(), &install)
}

#[derive(Debug, Deserialize, JsonSchema)]
struct CheckParams {
    /// `stable` (default) or `head`, or a full channel name such as `linux-amd64-head`.
    channel: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct CheckResult {
    /// The running build (plain semver, as every version here).
    #[schemars(example = &"0.1.0")]
    current_version: String,
    /// `None` when stale.
    #[schemars(example = &"0.2.0")]
    latest_version: Option<String>,
    update_available: bool,
    #[schemars(example = &"linux-amd64")]
    channel: String,
    signed: bool,
    /// The server's signed LATEST has expired: nothing can be said to be up to date.
    stale: bool,
    /// A newer build is installed already (compared against above); only a restart is missing.
    restart_required: bool,
}

async fn check(ctx: Ctx, p: CheckParams) -> Result<CheckResult, RpcError> {
    check_now(ctx.daemon(), &channel_of(p.channel.as_deref())).await
}

/// One check, recorded in the history; news of an update goes to every `Meta.Flow` connection.
async fn check_now(daemon: &Daemon, channel: &Channel) -> Result<CheckResult, RpcError> {
    let mut service = service_for(daemon, channel).await?;
    let installed = installed_version(daemon);
    let restart_required = daemon.awaiting_restart().is_some();
    match service.check(Some(&installed), &Want::Latest, false).await {
        Ok(c) => {
            if c.update_available {
                // Daemon-wide news: every Meta.Flow connection hears of it, not just the asker.
                daemon
                    .broadcast(UpdateAvailable {
                        current_version: VERSION.to_owned(),
                        latest_version: c.latest.clone(),
                        channel: c.channel.clone(),
                        signed: c.signed,
                    })
                    .await;
            }
            Ok(CheckResult {
                current_version: VERSION.to_owned(),
                latest_version: Some(c.latest),
                update_available: c.update_available,
                channel: c.channel,
                signed: c.signed,
                stale: false,
                restart_required,
            })
        }
        Err(e) if matches!(e.kind.class(), ErrorClass::Stale) => Ok(CheckResult {
            current_version: VERSION.to_owned(),
            latest_version: None,
            update_available: false,
            channel: channel.name(),
            signed: true,
            stale: true,
            restart_required,
        }),
        Err(e) => Err(update_error(e)),
    }
}

#[derive(Debug, Deserialize, JsonSchema)]
struct ApplyParams {
    /// As for `Update.Check`.
    channel: Option<String>,
    /// A version (may downgrade) or a semver range; the newest on the channel when absent.
    version: Option<String>,
    /// Restart into the new butler on the same socket and secret once this reply is out.
    #[serde(default)]
    restart: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct ApplyResult {
    #[schemars(example = &"0.1.0")]
    previous_version: String,
    /// `None` when nothing was installed: already up to date.
    #[schemars(example = &"0.2.0")]
    installed_version: Option<String>,
    verified: bool,
    /// Another build is on disk but this daemon still runs this one.
    restart_required: bool,
    /// With `restartRequired` after an install: the executable to start in this one's place.
    #[serde(skip_serializing_if = "Option::is_none")]
    executable: Option<std::path::PathBuf>,
}

/// Downloads, verifies and installs over the running executable, with `Progress` notifications;
/// cancelling stops it at the next step before the swap (a started swap finishes).
async fn apply(ctx: Ctx, p: ApplyParams) -> Result<ApplyResult, RpcError> {
    let channel = channel_of(p.channel.as_deref());
    let want = match &p.version {
        None => Want::Latest,
        Some(v) => update::parse_want(v, &channel)
            .map_err(|e| RpcError::new(code::INVALID_PARAMS, format!("version {e}")))?,
    };
    let daemon = ctx.daemon();
    let mut service = service_for(daemon, &channel).await?;
    let installed = installed_version(daemon);
    let checked = tokio::select! {
        r = service.check(Some(&installed), &want, false) => r,
        () = ctx.cancelled() => return Err(RpcError::cancelled()),
    };
    let check = checked.map_err(update_error)?;
    if !check.update_available {
        return Ok(ApplyResult {
            previous_version: VERSION.to_owned(),
            installed_version: None,
            verified: check.signed,
            // Nothing new, but an earlier install may still wait for its restart.
            restart_required: daemon.awaiting_restart().is_some(),
            executable: None,
        });
    }
    let (events, mut events_rx) = tokio::sync::mpsc::unbounded_channel();
    let target = target(daemon);
    let cancel = ctx.cancellation();
    let applying = async move {
        let mut on_event = move |ev| {
            let _ = events.send(ev);
        };
        service.apply(&target, &check, cancel, &mut on_event).await
    };
    let forwarding = async {
        let mut throttle = ProgressThrottle::default();
        while let Some(ev) = events_rx.recv().await {
            match ev {
                Event::Progress(p) if throttle.due(&p) => {
                    ctx.progress(p.fraction(), p.eta_secs().unwrap_or(0.0), p.bps.round()).await;
                }
                Event::Progress(_) => {}
                Event::Info(m) => ctx.log(Level::Info, &m).await,
                Event::Warning(m) => ctx.log(Level::Warning, &m).await,
            }
        }
    };
    let (applied, ()) = tokio::join!(applying, forwarding);
    let installed = applied.map_err(|e| match e.kind {
        ErrorKind::Cancelled => RpcError::cancelled(),
        _ => update_error(e),
    })?;
    let news = Announcement::Applied {
        previous_version: VERSION.to_owned(),
        installed_version: installed.version.clone(),
        verified: installed.verified,
    };
    let restart = match p.restart {
        true => restart_after_reply(&ctx, &installed.exe, &installed.features, news).await,
        false => Restarting::No,
    };
    // Back to this very build (a downgrade undoing an install) waits for nothing.
    let awaiting =
        Some(installed.version.clone()).filter(|v| restart == Restarting::No && v != VERSION);
    let restart_required = awaiting.is_some();
    daemon.installed_without_restart(awaiting);
    if restart != Restarting::KeepingConnections {
        daemon
            .broadcast(UpdateApplied {
                previous_version: VERSION.to_owned(),
                installed_version: installed.version.clone(),
                verified: installed.verified,
                restarting: restart != Restarting::No,
                restarted: false,
            })
            .await;
    }
    Ok(ApplyResult {
        previous_version: VERSION.to_owned(),
        installed_version: Some(installed.version),
        verified: installed.verified,
        restart_required,
        executable: restart_required.then_some(installed.exe),
    })
}

/// Whether, and how, the daemon restarts once a reply is out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Restarting {
    No,
    /// Into a build that takes only the listening socket: open connections close.
    ClosingConnections,
    /// Into a build that takes connections along; it announces `news` itself.
    KeepingConnections,
}

/// Schedules the hand-over to `exe` after this reply, or says (in a `Log`) why not, leaving the
/// restart to the launcher: stdio and one-connection mode have no socket to pass on, a build
/// without the `daemon-hand-over` feature would not take it, and a restart now would end the
/// games `Process.Run` is running.
async fn restart_after_reply(
    ctx: &Ctx,
    exe: &std::path::Path,
    features: &[String],
    news: Announcement,
) -> Restarting {
    let daemon = ctx.daemon();
    let has = |feature: &str| features.iter().any(|f| f == feature);
    let carries_connections = has(crate::version::HAND_OVER_CONNECTIONS);
    let refusal = if cfg!(windows) {
        // No exec: the launcher starts the new executable (the reply names it), then shuts this
        // daemon down with Meta.Shutdown, as the itch app does.
        Some("Windows daemons do not restart in place".to_owned())
    } else if !daemon.config.can_hand_over {
        Some("only a TCP daemon with --keep-alive can restart in place".to_owned())
    } else if !carries_connections && !has(crate::version::HAND_OVER) {
        Some(format!("{} cannot take over a running daemon", exe.display()))
    } else {
        let restart = Restart { exe: exe.to_owned(), carries_connections, news: Some(news) };
        daemon.restart.try_claim(restart).err().map(|e| e.to_string())
    };
    if let Some(why) = refusal {
        ctx.log(Level::Warning, &format!("not restarting: {why}; restart butler to finish")).await;
        return Restarting::No;
    }
    ctx.shutdown_after_reply();
    match carries_connections {
        true => Restarting::KeepingConnections,
        false => Restarting::ClosingConnections,
    }
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
struct RollbackParams {
    /// Restart into the restored build, as `Update.Apply`'s `restart`.
    #[serde(default)]
    restart: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct RollbackResult {
    /// `None` when the restored build would not say (it is active all the same).
    restored_version: Option<String>,
    restart_required: bool,
}

/// Puts back the build the last update replaced (`butler upgrade --rollback`).
async fn rollback(ctx: Ctx, p: RollbackParams) -> Result<RollbackResult, RpcError> {
    let channel = Channel::current(false);
    let daemon = ctx.daemon();
    let history = open_history(daemon, &channel).await;
    let restored = update::rollback(&target(daemon), &channel, Some(VERSION), &history)
        .await
        .map_err(update_error)?;
    let version = restored.version.clone();
    let news = Announcement::RolledBack {
        previous_version: VERSION.to_owned(),
        restored_version: version.clone(),
    };
    let restart = match p.restart {
        true => restart_after_reply(&ctx, &restored.exe, &restored.features, news).await,
        false => Restarting::No,
    };
    let restarting = restart != Restarting::No;
    // Back to this very build: nothing is waiting for a restart any more.
    let awaiting = version.clone().filter(|v| !restarting && v != VERSION);
    daemon.installed_without_restart(awaiting);
    if restart != Restarting::KeepingConnections {
        let rolled =
            UpdateRolledBack { restored_version: version.clone(), restarting, restarted: false };
        daemon.broadcast(rolled).await;
    }
    Ok(RollbackResult { restored_version: version, restart_required: !restarting })
}

/// Network failures keep upstream's code 9000; the rest are internal errors naming the step.
fn update_error(e: butler_updater::Error) -> RpcError {
    let class = e.kind.class();
    let code = match class {
        ErrorClass::Network => code::NETWORK_DISCONNECTED,
        _ => code::INTERNAL_ERROR,
    };
    let step = match e.step {
        Step::Check => "check",
        Step::Rollback => "rollback",
        _ => "update",
    };
    RpcError::new(code, format!("{step} failed: {e}"))
        .with("step", e.step.to_string())
        .with("kind", class.as_str())
}

#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct StatusResult {
    #[schemars(example = &"0.1.0")]
    current_version: String,
    /// Installed over this running build; a restart makes it current.
    #[schemars(example = &"0.2.0")]
    awaiting_restart: Option<String>,
    #[schemars(example = &"linux-amd64")]
    channel: String,
    last_check: Option<HistoryEntry>,
    last_result: Option<Outcome>,
    history: Vec<HistoryEntry>,
    /// Versions that failed their probation after a restart, and are not offered again.
    bad_versions: Vec<BadVersion>,
}

#[derive(Debug, Default, Deserialize, JsonSchema)]
struct StatusParams {}

async fn status(ctx: Ctx, _: StatusParams) -> Result<StatusResult, RpcError> {
    let db = ctx.daemon().db().await?;
    let history = db.call(|conn| history::recent(conn, 50)).await.map_err(RpcError::internal)?;
    let bad_versions = db.call(history::bad_versions).await.map_err(RpcError::internal)?;
    let last_check = history.iter().find(|h| h.action == Action::Check).cloned();
    Ok(StatusResult {
        current_version: VERSION.to_owned(),
        awaiting_restart: ctx.daemon().awaiting_restart(),
        channel: Channel::current(false).name(),
        last_result: history.first().map(|h| h.outcome),
        last_check,
        history,
        bad_versions,
    })
}

/// Checks the stable channel every `interval` (plus up to a tenth of it at random, so launchers
/// started together do not all ask at once) until shutdown. The first check is due one interval
/// after the last one this database recorded, or after this start when it has none, so a daemon
/// on a fresh database never calls out before one interval has passed. A signed update is fetched ahead of time (`Update.Ready`),
/// never installed.
pub(crate) fn spawn_background_checks(daemon: &Arc<Daemon>, interval: Duration) {
    let d = Arc::clone(daemon);
    daemon.tracker.spawn(async move {
        let channel = Channel::current(false);
        let after = |t: SystemTime| t.checked_add(interval).unwrap_or(t);
        let mut due = after(last_check_time(&d).await.unwrap_or_else(SystemTime::now));
        loop {
            due = due.checked_add(jitter(interval)).unwrap_or(due);
            let wait = due.duration_since(SystemTime::now()).unwrap_or_default();
            tokio::select! {
                () = d.shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
            }
            if d.awaiting_restart().is_some() {
                due = after(SystemTime::now());
                continue;
            }
            let checked = tokio::select! {
                r = check_now(&d, &channel) => r,
                () = d.shutdown.cancelled() => return,
            };
            match checked {
                Ok(c) if c.update_available && c.signed => {
                    if let Some(v) = c.latest_version {
                        prefetch(&d, &channel, &v).await;
                    }
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("background update check failed: {}", e.message),
            }
            due = after(SystemTime::now());
        }
    });
}

/// Downloads and verifies `version` ahead of time, then tells `Meta.Flow` connections it is ready
/// to apply without a download. Failures only cost the head start: `Update.Apply` downloads.
async fn prefetch(daemon: &Arc<Daemon>, channel: &Channel, version: &str) {
    let Ok(service) = service_for(daemon, channel).await else { return };
    let fetched = tokio::select! {
        r = service.prefetch(version) => r,
        () = daemon.shutdown.cancelled() => return,
    };
    match fetched {
        Ok(_) => {
            let version = version.to_owned();
            let current_version = VERSION.to_owned();
            daemon.broadcast(UpdateReady { current_version, version, verified: true }).await;
        }
        Err(e) => tracing::warn!("fetching {version} ahead of time failed: {e}"),
    }
}

/// When the history last recorded a check, if the database is usable.
async fn last_check_time(daemon: &Daemon) -> Option<SystemTime> {
    let db = daemon.db().await.ok()?;
    let latest = db.call(history::last_check_time).await.ok()??;
    Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(latest).ok()?))
}

/// A random delay of up to a tenth of `interval`, from the OS's randomness.
fn jitter(interval: Duration) -> Duration {
    let mut b = [0u8; 4];
    let _ = getrandom::fill(&mut b);
    interval.mul_f64(f64::from(u32::from_le_bytes(b)) / f64::from(u32::MAX) / 10.0)
}
