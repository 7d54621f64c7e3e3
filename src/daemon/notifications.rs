//! Every notification the daemon sends, one typed struct each, as handlers have typed params and
//! results. Daemon-wide news (`Update.*`, `Streams.Opened/Closed`) goes to every `Meta.Flow`
//! connection through `Daemon::broadcast`; the rest goes to one request's connection through
//! `Ctx::notify`. (`Streams.Entries` sits beside the `Streams.Follow` handler that builds it.)

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Serialize;

use crate::report::Level;

/// A message the daemon sends without expecting a reply; `METHOD` is its JSON-RPC method name.
pub(crate) trait Notification: Serialize + JsonSchema + Send + Sync {
    const METHOD: &'static str;
}

macro_rules! notification {
    ($ty:ty => $method:literal) => {
        impl Notification for $ty {
            const METHOD: &'static str = $method;
        }
    };
}

/// A newer butler is published (a check found it).
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UpdateAvailable {
    pub(crate) current_version: String,
    pub(crate) latest_version: String,
    pub(crate) channel: String,
    pub(crate) signed: bool,
}
notification!(UpdateAvailable => "Update.Available");

/// A signed update was downloaded and verified ahead of time: `Update.Apply` needs no download.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UpdateReady {
    pub(crate) current_version: String,
    pub(crate) version: String,
    pub(crate) verified: bool,
}
notification!(UpdateReady => "Update.Ready");

/// `Update.Apply` installed a build.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UpdateApplied {
    pub(crate) previous_version: String,
    pub(crate) installed_version: String,
    pub(crate) verified: bool,
    /// The daemon restarts into it once the reply is out (a build that cannot take connections
    /// along); otherwise the new process announces it, with `restarted`.
    pub(crate) restarting: bool,
    /// Sent by the new process, after a restart in place that kept connections open.
    pub(crate) restarted: bool,
}
notification!(UpdateApplied => "Update.Applied");

/// `Update.Rollback` made the previous build active again.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct UpdateRolledBack {
    /// `None` when the restored build would not say.
    pub(crate) restored_version: Option<String>,
    pub(crate) restarting: bool,
    /// Sent by the new process, after a restart in place that kept connections open.
    pub(crate) restarted: bool,
}
notification!(UpdateRolledBack => "Update.RolledBack");

/// A `Process.Run` child opened a stream.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StreamsOpened {
    pub(crate) path: String,
    pub(crate) project: String,
    #[serde(rename = "type")]
    pub(crate) stream_type: &'static str,
    pub(crate) content_type: String,
    pub(crate) tags: BTreeMap<String, String>,
}
notification!(StreamsOpened => "Streams.Opened");

/// A `Process.Run` child's stream ended; `entries` were cut from it.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StreamsClosed {
    pub(crate) path: String,
    pub(crate) project: String,
    pub(crate) entries: u64,
}
notification!(StreamsClosed => "Streams.Closed");

/// `Process.Run` started its child.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ProcessStarted {
    pub(crate) pid: u32,
    /// The child's `LOGDOG_STREAM_SERVER_PATH`.
    pub(crate) stream_server: String,
}
notification!(ProcessStarted => "Process.Started");

/// `Meta.Flow` made this connection the daemon's event channel.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct MetaFlowEstablished {
    pub(crate) pid: u32,
}
notification!(MetaFlowEstablished => "MetaFlowEstablished");

/// A message for the person behind the launcher, about the request it came with.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct Log<'a> {
    pub(crate) level: Level,
    pub(crate) message: &'a str,
}
notification!(Log<'_> => "Log");

/// How far a long request got: `progress` in 0..1, `eta` in seconds, `bps` bytes per second.
#[derive(Debug, Serialize, JsonSchema)]
pub(crate) struct Progress {
    pub(crate) progress: f64,
    pub(crate) eta: f64,
    pub(crate) bps: f64,
}
notification!(Progress => "Progress");
