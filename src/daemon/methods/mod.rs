//! The method table: butlerd's core (`Meta.Shutdown`, `Version.Get`, `Test.*`, `Operation.Cancel`)
//! and `rpc.discover` here, and one module per further family, each with a `register` function.
//! `Meta.Authenticate` and `Meta.Flow` change the connection itself, so `connection.rs` answers
//! them; they are described here all the same. Every registration says what the method does and
//! what it may send: that is the API description (`rpc.discover`, `docs/api/`).

mod process;
mod streams;
mod update;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::api::Document;
use super::jsonrpc::{RpcError, code};
use super::notifications::{
    Log, MetaFlowEstablished, Progress, StreamsClosed, StreamsOpened, UpdateApplied,
    UpdateAvailable, UpdateReady, UpdateRolledBack,
};
use super::router::{Ctx, Router};
use crate::report::Level;
use crate::version;

pub(super) use update::spawn_background_checks;

/// The method table for this build.
pub(super) fn router() -> Router {
    let mut r = Router::default();
    r.by_connection::<AuthenticateParams, AuthenticateResult>("Meta.Authenticate").doc(
        "Authenticates this connection with the secret from the listen notification. Over TCP \
         and unix sockets every other request is refused until it succeeds; on stdio it is \
         refused as needless. Also accepted as a notification (no reply).",
    );
    r.by_connection::<Empty, Empty>("Meta.Flow")
        .doc(
            "Makes this connection the daemon's event channel: the daemon answers \
             `MetaFlowEstablished` and sends daemon-wide news here until the connection \
             closes, which shuts the daemon down (as upstream). The request is never answered, \
             except with 499 when the daemon shuts down.",
        )
        .notifies::<MetaFlowEstablished>()
        .notifies::<UpdateAvailable>()
        .notifies::<UpdateReady>()
        .notifies::<UpdateApplied>()
        .notifies::<UpdateRolledBack>()
        .notifies::<StreamsOpened>()
        .notifies::<StreamsClosed>()
        .errors(&[code::OPERATION_CANCELLED]);
    r.method("Meta.Shutdown", meta_shutdown)
        .doc("Answers `{}`, then shuts the daemon down gracefully (in-flight work is cancelled).");
    r.method("Version.Get", version_get).doc(
        "The running build, for bug reports (feature detection is `Meta.Capabilities`). \
         `version` keeps upstream's spelling, the tag with its `v`; every other version in a \
         result is plain semver.",
    );
    r.method("Meta.Capabilities", meta_capabilities).doc(
        "What this daemon, as it runs, can do: the protocol version and feature names, for \
         clients to feature-detect instead of pinning butler versions.",
    );
    r.method("rpc.discover", rpc_discover).doc(
        "This description, as an OpenRPC 1.2.6 document, with the running build's version in \
         `info.x-butler-version`. Like every method but `Meta.Authenticate`, only after \
         authentication.",
    );
    r.method("Test.Double", test_double).doc("Doubles `number` (integers stay integers).");
    r.method("Test.DoubleTwice", test_double_twice)
        .doc(
            "The protocol self-test: asks the client to double `number` (`Test.Double`), sends \
             three `Progress` notifications (0.3, 0.6, 0.9), and answers the client's result \
             doubled.",
        )
        .notifies::<Log<'static>>()
        .notifies::<Progress>()
        .calls::<Number, Number>("Test.Double", "The client doubles `number`.");
    r.method("Operation.Cancel", operation_cancel).doc(
        "Cancels the running request that carried the string `id` param given here, from any \
         connection; that request then fails with 499. `didCancel` says whether one was found.",
    );
    process::register(&mut r);
    streams::register(&mut r);
    update::register(&mut r);
    r
}

/// `{}` in and out; unknown fields are tolerated as upstream does.
#[derive(Debug, Default, Deserialize, Serialize, JsonSchema)]
pub(super) struct Empty {}

/// Described here; `connection.rs` reads it.
#[derive(Debug, Deserialize, JsonSchema)]
struct AuthenticateParams {
    /// The `secret` of the listen notification.
    #[schemars(example = &"9f86d081884c7d65...")]
    #[allow(dead_code, reason = "the connection reads the secret before any handler")]
    secret: String,
}

#[derive(Debug, Serialize, JsonSchema)]
struct AuthenticateResult {
    /// Always `true`: a wrong secret is an error.
    #[schemars(example = true)]
    ok: bool,
}

async fn rpc_discover(ctx: Ctx, _: Empty) -> Result<Document, RpcError> {
    Ok(Document::of_daemon(ctx.daemon()))
}

async fn meta_shutdown(ctx: Ctx, _: Empty) -> Result<Empty, RpcError> {
    ctx.shutdown_after_reply();
    Ok(Empty {})
}

#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct VersionGetResult {
    /// The build's tag, `v` and semver, as upstream spells it.
    #[schemars(example = &"v0.1.0")]
    version: &'static str,
    /// The tag, the build time and the git ref, for people.
    #[schemars(example = &"v0.1.0, built on 2026-11-21T10:00:00Z, ref 0123abcd")]
    version_string: &'static str,
}

async fn version_get(_: Ctx, _: Empty) -> Result<VersionGetResult, RpcError> {
    Ok(VersionGetResult { version: version::tagged(), version_string: version::long() })
}

#[derive(Debug, Deserialize, Serialize, JsonSchema)]
struct Number {
    /// An integer or a float.
    #[schemars(with = "f64", example = 21)]
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
pub(super) const PROTOCOL_VERSION: u32 = 1;

#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct Capabilities {
    /// Raised when a client could tell a change apart; `rpc.discover`'s
    /// `info.x-protocol-version` is the same number.
    #[schemars(example = 1)]
    protocol_version: u32,
    /// Plain semver, as every version in a result but `Version.Get`'s.
    #[schemars(example = &"0.1.0")]
    butler_version: String,
    /// What a client may rely on here, instead of pinning butler versions.
    #[schemars(example = ["meta-flow", "rpc-discover", "streams", "update-apply"])]
    features: Vec<&'static str>,
}

/// Feature detection: what this daemon, as it runs, can do.
async fn meta_capabilities(ctx: Ctx, _: Empty) -> Result<Capabilities, RpcError> {
    let mut features = vec![
        "meta-flow",
        "rpc-discover",
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
        butler_version: version::VERSION.to_owned(),
        features,
    })
}

#[derive(Debug, Deserialize, JsonSchema)]
struct CancelParams {
    /// The `id` param of the request to cancel.
    #[schemars(example = &"install-42")]
    id: String,
}

#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct CancelResult {
    did_cancel: bool,
}

async fn operation_cancel(ctx: Ctx, p: CancelParams) -> Result<CancelResult, RpcError> {
    Ok(CancelResult { did_cancel: ctx.daemon().cancel_operation(&p.id) })
}
