//! Method table: typed handlers registered by name, and the context each request runs with.
//!
//! Handlers take and return plain structs; this module is where JSON becomes those structs
//! (bad params give -32602 with serde's reason) and results become JSON again.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::connection::Peer;
use super::jsonrpc::RpcError;
use super::notifications::{Log, Notification, Progress};
use super::state::Daemon;
use crate::report::Level;

type BoxFuture = Pin<Box<dyn Future<Output = Result<Value, RpcError>> + Send>>;
type Handler = Box<dyn Fn(Ctx, Value) -> BoxFuture + Send + Sync>;

struct Method {
    handler: Handler,
    /// The handler watches `Ctx::cancelled` itself and cleans up (kills a child, say) before it
    /// answers, so the connection must not drop it when the request is cancelled.
    owns_cancellation: bool,
}

/// Every method the daemon answers.
#[derive(Default)]
pub(crate) struct Router {
    methods: HashMap<&'static str, Method>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").field("methods", &self.methods.len()).finish()
    }
}

impl Router {
    /// Registers `name`; `params` missing from the request arrive as `{}`. A cancelled request
    /// is dropped at its next await and answered 499.
    pub(crate) fn method<P, R, F, Fut>(&mut self, name: &'static str, handler: F)
    where
        P: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(Ctx, P) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, RpcError>> + Send + 'static,
    {
        self.insert(name, handler, false);
    }

    /// Registers a handler that is never dropped half-way when its request is cancelled: it
    /// watches `Ctx::cancelled` itself (or ignores it) and answers when it has cleaned up.
    pub(crate) fn method_owning_cancel<P, R, F, Fut>(&mut self, name: &'static str, handler: F)
    where
        P: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(Ctx, P) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, RpcError>> + Send + 'static,
    {
        self.insert(name, handler, true);
    }

    fn insert<P, R, F, Fut>(&mut self, name: &'static str, handler: F, owns_cancellation: bool)
    where
        P: DeserializeOwned + Send + 'static,
        R: Serialize + Send + 'static,
        F: Fn(Ctx, P) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, RpcError>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let boxed: Handler = Box::new(move |ctx, raw| {
            let handler = Arc::clone(&handler);
            Box::pin(async move {
                let params: P = serde_path_to_error::deserialize(raw).map_err(|e| {
                    let field = e.path().to_string();
                    let why = e.into_inner();
                    match field.as_str() {
                        "." => RpcError::invalid_params(name, why),
                        _ => RpcError::invalid_params(name, format!("{field}: {why}"))
                            .with("field", field),
                    }
                })?;
                let result = handler(ctx, params).await?;
                serde_json::to_value(result).map_err(RpcError::internal)
            })
        });
        self.methods.insert(name, Method { handler: boxed, owns_cancellation });
    }

    /// The future answering `method` and whether it handles its own cancellation, or `None` if
    /// there is no such method.
    pub(crate) fn dispatch(
        &self,
        method: &str,
        ctx: Ctx,
        params: Value,
    ) -> Option<(BoxFuture, bool)> {
        self.methods.get(method).map(|m| ((m.handler)(ctx, params), m.owns_cancellation))
    }
}

/// What a handler can reach: its connection (notifications, server→client calls), the daemon's
/// shared state, and its own cancellation.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub(super) peer: Arc<Peer>,
    pub(super) daemon: Arc<Daemon>,
    pub(super) cancel: CancellationToken,
    pub(super) shutdown_after_reply: Arc<AtomicBool>,
}

impl Ctx {
    pub(crate) fn daemon(&self) -> &Arc<Daemon> {
        &self.daemon
    }

    /// Sends a notification on this request's connection.
    pub(crate) async fn notify<N: Notification>(&self, n: N) {
        self.peer.notify(N::METHOD, n).await;
    }

    /// Sends the peer a request on this connection and waits for its reply (or cancellation).
    pub(crate) async fn call<R: DeserializeOwned>(
        &self,
        method: &str,
        params: impl Serialize,
    ) -> Result<R, RpcError> {
        let value = self.peer.call(method, params, &self.cancel).await?;
        serde_json::from_value(value).map_err(|e| {
            RpcError::internal(format!("the client's reply to {method} does not fit: {e}"))
        })
    }

    /// A `Progress` notification: `progress` in 0..1, `eta` in seconds, `bps` bytes per second.
    pub(crate) async fn progress(&self, progress: f64, eta: f64, bps: f64) {
        self.notify(Progress { progress, eta, bps }).await;
    }

    /// A `Log` notification to this request's connection.
    pub(crate) async fn log(&self, level: Level, message: &str) {
        self.notify(Log { level, message }).await;
    }

    /// Completes when this request is cancelled (connection closed, `Operation.Cancel`, shutdown).
    pub(crate) async fn cancelled(&self) {
        self.cancel.cancelled().await;
    }

    /// This request's cancellation, for work that checks it itself.
    pub(crate) fn cancellation(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Starts the daemon's graceful shutdown once this request's reply has been queued.
    pub(crate) fn shutdown_after_reply(&self) {
        self.shutdown_after_reply.store(true, Ordering::Release);
    }
}
