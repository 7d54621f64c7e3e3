//! Method table: typed handlers registered by name, and the context each request runs with.
//!
//! Handlers take and return plain structs; this module is where JSON becomes those structs
//! (bad params give -32602 with serde's reason) and results become JSON again. Registering a
//! method also describes it ([`Description`]): its param and result types give their JSON
//! Schemas, and the registration says what it does, which notifications it may send and which
//! application error codes it may answer with. `api.rs` turns that into the OpenRPC document.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use schemars::{JsonSchema, Schema, SchemaGenerator};
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
    description: Description,
}

/// A JSON Schema of one Rust type, made by the generator it is given (which collects the
/// definitions of the types it refers to).
pub(crate) type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

/// What the API description says of one method: what it does, its types, what it may send.
#[derive(Debug, Clone)]
pub(crate) struct Description {
    pub(crate) name: &'static str,
    pub(crate) summary: &'static str,
    pub(crate) params: SchemaFn,
    pub(crate) result: SchemaFn,
    /// Notifications it may send on the caller's connection (`Meta.Flow`: to every event
    /// channel).
    pub(crate) notifications: Vec<Message>,
    /// Requests it may send the client on the caller's connection.
    pub(crate) server_requests: Vec<ServerRequest>,
    /// Application error codes beyond JSON-RPC's own, which every method may answer with.
    pub(crate) errors: Vec<i64>,
    /// Answered by the connection itself (`Meta.Authenticate`, `Meta.Flow`), not by a handler.
    pub(crate) by_connection: bool,
    pub(crate) cancellable: bool,
}

/// A notification: its method name and the schema of its params (whose doc comment says what
/// it is for).
#[derive(Debug, Clone)]
pub(crate) struct Message {
    pub(crate) name: &'static str,
    pub(crate) params: SchemaFn,
}

/// A request the daemon sends the client.
#[derive(Debug, Clone)]
pub(crate) struct ServerRequest {
    pub(crate) name: &'static str,
    pub(crate) summary: &'static str,
    pub(crate) params: SchemaFn,
    pub(crate) result: SchemaFn,
}

impl Description {
    /// What the method does, for the documentation (required: a test fails without it).
    pub(crate) fn doc(&mut self, summary: &'static str) -> &mut Self {
        self.summary = summary;
        self
    }

    /// It may send notification `N` on the caller's connection.
    pub(crate) fn notifies<N: Notification + JsonSchema>(&mut self) -> &mut Self {
        self.notifications.push(Message { name: N::METHOD, params: N::json_schema });
        self
    }

    /// It may send the client request `name` with params `P`, expecting `R`.
    pub(crate) fn calls<P: JsonSchema, R: JsonSchema>(
        &mut self,
        name: &'static str,
        summary: &'static str,
    ) -> &mut Self {
        self.server_requests.push(ServerRequest {
            name,
            summary,
            params: P::json_schema,
            result: R::json_schema,
        });
        self
    }

    /// It may answer with these application error codes (`jsonrpc::code`).
    pub(crate) fn errors(&mut self, codes: &[i64]) -> &mut Self {
        self.errors.extend_from_slice(codes);
        self
    }

    fn may_send(&self, notification: &str) -> bool {
        self.notifications.iter().any(|n| n.name == notification)
    }
}

/// Every method the daemon answers.
#[derive(Default)]
pub(crate) struct Router {
    methods: HashMap<&'static str, Method>,
    /// The OpenRPC document, made once on first use.
    openrpc: std::sync::OnceLock<Value>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router").field("methods", &self.methods.len()).finish()
    }
}

impl Router {
    /// Registers `name`; `params` missing from the request arrive as `{}`. A cancelled request
    /// is dropped at its next await and answered 499.
    pub(crate) fn method<P, R, F, Fut>(
        &mut self,
        name: &'static str,
        handler: F,
    ) -> &mut Description
    where
        P: DeserializeOwned + JsonSchema + Send + 'static,
        R: Serialize + JsonSchema + Send + 'static,
        F: Fn(Ctx, P) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, RpcError>> + Send + 'static,
    {
        self.insert(name, handler, false)
    }

    /// Registers a handler that is never dropped half-way when its request is cancelled: it
    /// watches `Ctx::cancelled` itself (or ignores it) and answers when it has cleaned up.
    pub(crate) fn method_owning_cancel<P, R, F, Fut>(
        &mut self,
        name: &'static str,
        handler: F,
    ) -> &mut Description
    where
        P: DeserializeOwned + JsonSchema + Send + 'static,
        R: Serialize + JsonSchema + Send + 'static,
        F: Fn(Ctx, P) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, RpcError>> + Send + 'static,
    {
        self.insert(name, handler, true)
    }

    /// Describes a method the connection answers before any handler sees it
    /// (`Meta.Authenticate`, `Meta.Flow`): it is in the description like any other, but a
    /// request that reached the table would be a bug, answered -32603.
    pub(crate) fn by_connection<P: JsonSchema, R: JsonSchema>(
        &mut self,
        name: &'static str,
    ) -> &mut Description {
        let handler: Handler = Box::new(move |_, _| {
            Box::pin(async move {
                Err(RpcError::internal(format!("{name} is answered by the connection")))
            })
        });
        let mut description = Description::new::<P, R>(name);
        description.by_connection = true;
        self.add(name, Method { handler, owns_cancellation: false, description })
    }

    fn add(&mut self, name: &'static str, method: Method) -> &mut Description {
        assert!(!self.methods.contains_key(name), "{name} is registered twice");
        &mut self.methods.entry(name).or_insert(method).description
    }

    fn insert<P, R, F, Fut>(
        &mut self,
        name: &'static str,
        handler: F,
        owns_cancellation: bool,
    ) -> &mut Description
    where
        P: DeserializeOwned + JsonSchema + Send + 'static,
        R: Serialize + JsonSchema + Send + 'static,
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
        let mut description = Description::new::<P, R>(name);
        description.cancellable = owns_cancellation;
        self.add(name, Method { handler: boxed, owns_cancellation, description })
    }

    /// Every method's description, sorted by name.
    pub(crate) fn descriptions(&self) -> Vec<&Description> {
        let mut all: Vec<_> = self.methods.values().map(|m| &m.description).collect();
        all.sort_by_key(|d| d.name);
        all
    }

    /// The OpenRPC document describing this table (see `api.rs`).
    pub(crate) fn openrpc(&self) -> &Value {
        self.openrpc.get_or_init(|| super::api::openrpc(self))
    }

    /// Whether `method`'s description lists `notification` (checked in debug builds each time
    /// one is sent, so the description cannot fall behind the code).
    pub(crate) fn may_send(&self, method: &str, notification: &str) -> bool {
        self.methods.get(method).is_some_and(|m| m.description.may_send(notification))
    }

    /// Whether `method`'s description lists the client request `request`.
    pub(crate) fn may_call(&self, method: &str, request: &str) -> bool {
        self.methods
            .get(method)
            .is_some_and(|m| m.description.server_requests.iter().any(|r| r.name == request))
    }

    /// The future answering `method` and whether it handles its own cancellation, or `None` if
    /// there is no such method.
    pub(crate) fn dispatch(
        &self,
        method: &str,
        ctx: Ctx,
        params: Value,
    ) -> Option<(BoxFuture, bool)> {
        let (name, m) = self.methods.get_key_value(method)?;
        let ctx = Ctx { method: name, ..ctx };
        Some(((m.handler)(ctx, params), m.owns_cancellation))
    }
}

impl Description {
    fn new<P: JsonSchema, R: JsonSchema>(name: &'static str) -> Self {
        Description {
            name,
            summary: "",
            params: P::json_schema,
            result: R::json_schema,
            notifications: Vec::new(),
            server_requests: Vec::new(),
            errors: Vec::new(),
            by_connection: false,
            cancellable: false,
        }
    }
}

/// What a handler can reach: its connection (notifications, server→client calls), the daemon's
/// shared state, and its own cancellation.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub(super) peer: Arc<Peer>,
    pub(super) daemon: Arc<Daemon>,
    pub(super) cancel: Arc<CancellationToken>,
    pub(super) shutdown_after_reply: Arc<AtomicBool>,
    /// The method being answered (set by [`Router::dispatch`]).
    pub(super) method: &'static str,
}

impl Ctx {
    pub(crate) fn daemon(&self) -> &Arc<Daemon> {
        &self.daemon
    }

    /// Sends a notification on this request's connection.
    pub(crate) async fn notify<N: Notification>(&self, n: N) {
        debug_assert!(
            self.daemon.router.may_send(self.method, N::METHOD),
            "{} sends {}, which its description does not list",
            self.method,
            N::METHOD
        );
        self.peer.notify(N::METHOD, n).await;
    }

    /// Sends the peer a request on this connection and waits for its reply (or cancellation).
    pub(crate) async fn call<R: DeserializeOwned>(
        &self,
        method: &str,
        params: impl Serialize,
    ) -> Result<R, RpcError> {
        debug_assert!(
            self.daemon.router.may_call(self.method, method),
            "{} calls the client's {method}, which its description does not list",
            self.method
        );
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
        (*self.cancel).clone()
    }

    /// Starts the daemon's graceful shutdown once this request's reply has been queued.
    pub(crate) fn shutdown_after_reply(&self) {
        self.shutdown_after_reply.store(true, Ordering::Release);
    }
}
