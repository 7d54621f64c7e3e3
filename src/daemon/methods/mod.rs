//! The method table: butlerd's core (`Meta.Shutdown`, `Version.Get`, `Test.*`, `Operation.Cancel`)
//! here, and one module per further family, each with a `register` function. `Meta.Authenticate`
//! and `Meta.Flow` change the connection itself, so `connection.rs` answers them.

mod process;
mod streams;
mod update;

use serde::{Deserialize, Serialize};

use super::jsonrpc::RpcError;
use super::router::{Ctx, Router};
use crate::report::Level;
use crate::version;

pub(super) use update::spawn_background_checks;

/// The method table for this build.
pub(super) fn router() -> Router {
    let mut r = Router::default();
    r.method("Meta.Shutdown", meta_shutdown);
    r.method("Version.Get", version_get);
    r.method("Meta.Capabilities", meta_capabilities);
    r.method("Test.Double", test_double);
    r.method("Test.DoubleTwice", test_double_twice);
    r.method("Operation.Cancel", operation_cancel);
    process::register(&mut r);
    streams::register(&mut r);
    update::register(&mut r);
    r
}

/// `{}` in and out; unknown fields are tolerated as upstream does.
#[derive(Debug, Default, Deserialize, Serialize)]
pub(super) struct Empty {}

async fn meta_shutdown(ctx: Ctx, _: Empty) -> Result<Empty, RpcError> {
    ctx.shutdown_after_reply();
    Ok(Empty {})
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct VersionGetResult {
    version: String,
    version_string: String,
}

async fn version_get(_: Ctx, _: Empty) -> Result<VersionGetResult, RpcError> {
    Ok(VersionGetResult { version: version::tagged(), version_string: version::long() })
}

#[derive(Debug, Deserialize, Serialize)]
struct Number {
    number: serde_json::Number,
}

impl Number {
    /// Integers stay integers (upstream's type is int64); others double as floats.
    fn doubled(&self) -> Result<Number, RpcError> {
        let n = &self.number;
        let number = match n.as_i64() {
            Some(i) => i.checked_mul(2).map(serde_json::Number::from),
            None => n.as_f64().and_then(|f| serde_json::Number::from_f64(f * 2.0)),
        };
        number
            .map(|number| Number { number })
            .ok_or_else(|| RpcError::invalid_params("Test.Double", "number overflows when doubled"))
    }
}

async fn test_double(_: Ctx, p: Number) -> Result<Number, RpcError> {
    p.doubled()
}

/// The protocol self-test: asks the client to double, reports progress, doubles the answer.
async fn test_double_twice(ctx: Ctx, p: Number) -> Result<Number, RpcError> {
    ctx.log(Level::Debug, &format!("Test.DoubleTwice: asking the client to double {}", p.number))
        .await;
    let doubled: Number = ctx.call("Test.Double", p).await?;
    for progress in [0.3, 0.6, 0.9] {
        ctx.progress(progress, 0.0, 0.0).await;
    }
    doubled.doubled()
}

/// The protocol this daemon speaks; raised when a client could tell a change apart.
const PROTOCOL_VERSION: u32 = 1;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Capabilities {
    protocol_version: u32,
    butler_version: String,
    /// What a client may rely on here, instead of pinning butler versions.
    features: Vec<&'static str>,
}

/// Feature detection: what this daemon, as it runs, can do.
async fn meta_capabilities(ctx: Ctx, _: Empty) -> Result<Capabilities, RpcError> {
    let mut features = vec![
        "meta-flow",
        "operation-cancel",
        "streams",
        "streams-follow",
        "process-run",
        "update-check",
        "update-apply",
        "update-channels",
        "update-rollback",
        "update-status",
    ];
    if ctx.daemon().config.can_hand_over {
        features.extend(["restart-in-place", "restart-keeps-connections", "restart-probation"]);
    }
    Ok(Capabilities {
        protocol_version: PROTOCOL_VERSION,
        butler_version: version::tagged(),
        features,
    })
}

#[derive(Debug, Deserialize)]
struct CancelParams {
    id: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct CancelResult {
    did_cancel: bool,
}

async fn operation_cancel(ctx: Ctx, p: CancelParams) -> Result<CancelResult, RpcError> {
    Ok(CancelResult { did_cancel: ctx.daemon().cancel_operation(&p.id) })
}
