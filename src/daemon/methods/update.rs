//! `Update.Check` and `Update.Status`: launchers ask the daemon whether a newer butler exists and
//! what the last updates did. Checking goes through the same path as `butler upgrade --check`.

use butler_updater::{Channel, Step, Target, Tuning, Updater, Want};
use serde::{Deserialize, Serialize};

use crate::daemon::jsonrpc::{RpcError, code};
use crate::daemon::router::{Ctx, Router};
use crate::upgrade::{self, History};
use crate::version::VERSION;

pub fn register(r: &mut Router) {
    r.method("Update.Check", check);
    r.method("Update.Status", status);
}

#[derive(Debug, Deserialize)]
struct CheckParams {
    /// `stable` (default) or `head`, or a full channel name such as `linux-amd64-head`.
    channel: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct CheckResult {
    current_version: String,
    latest_version: Option<String>,
    update_available: bool,
    channel: String,
    signed: bool,
    /// The server's signed LATEST has expired: nothing can be said to be up to date.
    stale: bool,
}

async fn check(ctx: Ctx, p: CheckParams) -> Result<CheckResult, RpcError> {
    let head = p.channel.as_deref().is_some_and(|c| c == "head" || c.ends_with("-head"));
    let channel = Channel::current(head);
    let config = &ctx.daemon().config;
    let source = config.update_source.source(channel.clone()).map_err(|e| {
        RpcError::new(code::INVALID_PARAMS, format!("the daemon's trusted keys are unusable: {e}"))
    })?;
    let mut updater = Updater::new(source, Tuning::default()).map_err(update_error)?;
    let target = Target::InPlace {
        exe: std::env::current_exe()
            .map_err(|e| RpcError::internal(format!("finding butler: {e}")))?,
    };
    let (dbpath, url, name) =
        (config.dbpath.clone(), config.update_source.broth_url.clone(), channel.name());
    let mut history =
        tokio::task::spawn_blocking(move || History::open(dbpath.as_deref(), &url, &name, &target))
            .await
            .map_err(RpcError::internal)?;
    let checked = updater.check(Some(VERSION), &Want::Latest, false).await.and_then(|c| {
        upgrade::enforce_signed_channel(&mut updater, &mut history, &Want::Latest, c)
    });
    match checked {
        Ok(c) => {
            let outcome = if c.update_available { "available" } else { "up-to-date" };
            history.record("check", Some(VERSION), Some(&c.latest), outcome, None, c.signed);
            if c.update_available {
                // Daemon-wide news: every Meta.Flow connection hears of it, not just the asker.
                let news = serde_json::json!({
                    "currentVersion": VERSION,
                    "latestVersion": c.latest,
                    "channel": c.channel,
                    "signed": c.signed,
                });
                ctx.daemon().broadcast("Update.Available", news).await;
            }
            Ok(CheckResult {
                current_version: VERSION.to_owned(),
                latest_version: Some(c.latest),
                update_available: c.update_available,
                channel: c.channel,
                signed: c.signed,
                stale: false,
            })
        }
        Err(e) if e.kind.code() == "stale" => {
            history.record("check", Some(VERSION), None, "failed", Some(&e), true);
            Ok(CheckResult {
                current_version: VERSION.to_owned(),
                latest_version: None,
                update_available: false,
                channel: channel.name(),
                signed: true,
                stale: true,
            })
        }
        Err(e) => {
            history.record("check", Some(VERSION), None, "failed", Some(&e), false);
            Err(update_error(e))
        }
    }
}

/// Network failures keep upstream's code 9000; the rest are internal errors naming the step.
fn update_error(e: butler_updater::Error) -> RpcError {
    let code =
        if e.kind.code() == "network" { code::NETWORK_DISCONNECTED } else { code::INTERNAL_ERROR };
    let step = match e.step {
        Step::Check => "check",
        _ => "update",
    };
    RpcError::new(code, format!("{step} failed: {e}"))
        .with("step", e.step.to_string())
        .with("kind", e.kind.code())
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusResult {
    current_version: String,
    channel: String,
    last_check: Option<upgrade::HistoryEntry>,
    last_result: Option<String>,
    history: Vec<upgrade::HistoryEntry>,
}

#[derive(Debug, Default, Deserialize)]
struct StatusParams {}

async fn status(ctx: Ctx, _: StatusParams) -> Result<StatusResult, RpcError> {
    let db = ctx.daemon().db().await?;
    let history =
        db.call(|conn| upgrade::recent_history(conn, 50)).await.map_err(RpcError::internal)?;
    let last_check = history.iter().find(|h| h.action == "check").cloned();
    Ok(StatusResult {
        current_version: VERSION.to_owned(),
        channel: Channel::current(false).name(),
        last_result: history.first().map(|h| h.outcome.clone()),
        last_check,
        history,
    })
}
