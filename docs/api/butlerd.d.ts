// butler daemon API typings, generated from the daemon's code by `butler api-docs`
// (`make api-docs`); do not edit. Method and notification names and shapes that
// upstream butlerd also has keep upstream's spelling.

// ---- Meta.Authenticate

export interface MetaAuthenticateParams {
  /**
   * The `secret` of the listen notification.
   */
  secret: string;
}

/**
 * Authenticates this connection with the secret from the listen notification. Over TCP and unix sockets every other request is refused until it succeeds; on stdio it is refused as needless. Also accepted as a notification (no reply).
 */
export interface MetaAuthenticateResult {
  /**
   * Always `true`: a wrong secret is an error.
   */
  ok: boolean;
}

// ---- Meta.Capabilities

export interface MetaCapabilitiesParams {}

/**
 * What this daemon, as it runs, can do: the protocol version and feature names, for clients to feature-detect instead of pinning butler versions.
 */
export interface MetaCapabilitiesResult {
  /**
   * Plain semver, as every version in a result but `Version.Get`'s.
   */
  butlerVersion: string;
  /**
   * What a client may rely on here, instead of pinning butler versions.
   */
  features: string[];
  /**
   * Raised when a client could tell a change apart; `rpc.discover`'s
   * `info.x-protocol-version` is the same number.
   */
  protocolVersion: number;
}

// ---- Meta.Flow

export interface MetaFlowParams {}

/**
 * `{}` in and out; unknown fields are tolerated as upstream does.
 */
export interface MetaFlowResult {}

// ---- Meta.Shutdown

export interface MetaShutdownParams {}

/**
 * `{}` in and out; unknown fields are tolerated as upstream does.
 */
export interface MetaShutdownResult {}

// ---- Operation.Cancel

export interface OperationCancelParams {
  /**
   * The `id` param of the request to cancel.
   */
  id: string;
}

/**
 * Cancels the running request that carried the string `id` param given here, from any connection; that request then fails with 499. `didCancel` says whether one was found.
 */
export interface OperationCancelResult {
  didCancel: boolean;
}

// ---- Process.Run

export interface ProcessRunParams {
  /**
   * The program and its arguments.
   */
  command: string[];
  /**
   * Its working directory (default: the daemon's).
   */
  cwd?: string | null;
  /**
   * Variables added to the daemon's environment.
   */
  env?: { [key: string]: string };
  /**
   * Stream prefix (default `butler/users/<user>/<random>`).
   */
  prefix?: string | null;
  /**
   * As `stdout`; default `stderr`.
   */
  stderr?: string | null;
  /**
   * The stream stdout becomes: a name, or `name=N,content-type=C,tag=k=v`. Default `stdout`.
   */
  stdout?: string | null;
}

/**
 * Runs a command (a game, say) with a stream server, its stdout and stderr captured into the local log store as streams, exactly as `butler run` does; answers when it exits. `Process.Started` comes first; the streams it opens and closes are announced to `Meta.Flow` connections. Cancelling (closing the connection, `Operation.Cancel`) stops the child and answers 499 with `data.exitCode`.
 */
export interface ProcessRunResult {
  /**
   * The exit code, or 128 + N when signal N killed the child.
   */
  exitCode: number;
  signal?: number | null;
  /**
   * Paths (`<prefix>/+/<name>`) of every stream the run produced, the child's own included.
   */
  streams: string[];
}

// ---- Streams.Follow

export interface StreamsFollowParams {
  /**
   * The first entry wanted (default 0).
   */
  fromIndex?: number;
  /**
   * `<prefix>/+/<name>`.
   */
  path: string;
  /**
   * Default `butler`.
   */
  project?: string | null;
}

/**
 * Sends a stream's entries from `fromIndex` as `Streams.Entries` notifications as they arrive, and answers once the stream has ended and every entry was sent. A stream a `Process.Run` child announced (`Streams.Opened`) is waited for. Cancelled (499) by closing the connection or by `Operation.Cancel`; a restart in place ends it with -32005 and `data.nextIndex` (follow again on the same connection).
 */
export interface StreamsFollowResult {
  /**
   * The follow ended because the stream's writer died before ending it (`terminal` is false).
   */
  abandoned: boolean;
  nextIndex: number;
  terminal: boolean;
}

// ---- Streams.List

export interface StreamsListParams {
  /**
   * Where to go on from: a previous reply's `nextCursor`.
   */
  cursor?: string | null;
  /**
   * Most streams in the reply (default and most: 1000); fewer when they are big.
   */
  limit?: number | null;
  /**
   * Only streams whose path starts with this.
   */
  prefix?: string | null;
  /**
   * Default `butler`.
   */
  project?: string | null;
}

/**
 * The streams of the local log store in a project, optionally under a path prefix.
 */
export interface StreamsListResult {
  /**
   * Present when more streams may follow: pass it as `cursor` for the next page.
   */
  nextCursor?: string | null;
  streams: Stream[];
}

// ---- Streams.Read

export interface StreamsReadParams {
  /**
   * The first entry wanted (default 0).
   */
  fromIndex?: number;
  /**
   * At most this many entries (1..=1000, default 1000).
   */
  limit?: number | null;
  /**
   * `<prefix>/+/<name>`.
   */
  path: string;
  /**
   * Default `butler`.
   */
  project?: string | null;
}

/**
 * One page of a stream's entries from `fromIndex` (at most 1000, or `limit`); `nextIndex` is where the next page starts, `terminal` says the stream has ended and every entry was read. A path that is not `<prefix>/+/<name>`, or names no stream, is -32602.
 */
export interface StreamsReadResult {
  /**
   * The stream was cut short: its writer died before ending it, and this page reaches the
   * last entry it will ever have.
   */
  abandoned: boolean;
  entries: StreamEntry[];
  nextIndex: number;
  terminal: boolean;
}

// ---- Test.Double

export interface TestDoubleParams {
  /**
   * An integer or a float.
   */
  number: number;
}

/**
 * Doubles `number` (integers stay integers).
 */
export interface TestDoubleResult {
  /**
   * An integer or a float.
   */
  number: number;
}

// ---- Test.DoubleTwice

export interface TestDoubleTwiceParams {
  /**
   * An integer or a float.
   */
  number: number;
}

/**
 * The protocol self-test: asks the client to double `number` (`Test.Double`), sends three `Progress` notifications (0.3, 0.6, 0.9), and answers the client's result doubled.
 */
export interface TestDoubleTwiceResult {
  /**
   * An integer or a float.
   */
  number: number;
}

// ---- Update.Apply

export interface UpdateApplyParams {
  /**
   * As for `Update.Check`.
   */
  channel?: string | null;
  /**
   * Restart into the new butler on the same socket and secret once this reply is out.
   */
  restart?: boolean;
  /**
   * A version (may downgrade) or a semver range; the newest on the channel when absent.
   */
  version?: string | null;
}

/**
 * Downloads, verifies and installs a butler (the newest on the channel, or `version`), with `Progress` and `Log` notifications; `Meta.Flow` connections hear `Update.Applied`. With `restart: true` a TCP `--keep-alive` daemon on unix restarts into it on the same socket and secret, keeping connections open; otherwise `restartRequired` says a restart is left to the launcher (with `executable`). Cancelling stops it before the swap (499).
 */
export interface UpdateApplyResult {
  /**
   * With `restartRequired` after an install: the executable to start in this one's place.
   */
  executable?: string | null;
  /**
   * `None` when nothing was installed: already up to date.
   */
  installedVersion: string | null;
  previousVersion: string;
  /**
   * Another build is on disk but this daemon still runs this one.
   */
  restartRequired: boolean;
  verified: boolean;
}

// ---- Update.Check

export interface UpdateCheckParams {
  /**
   * `stable` (default) or `head`, or a full channel name such as `linux-amd64-head`.
   */
  channel?: string | null;
}

/**
 * Asks the update server whether a newer butler is published on a channel, and records the check. News of one also goes to every `Meta.Flow` connection (`Update.Available`). A signed channel whose signed LATEST has expired answers `stale: true`, never "up to date".
 */
export interface UpdateCheckResult {
  channel: string;
  /**
   * The running build (plain semver, as every version here).
   */
  currentVersion: string;
  /**
   * `None` when stale.
   */
  latestVersion: string | null;
  /**
   * A newer build is installed already (compared against above); only a restart is missing.
   */
  restartRequired: boolean;
  signed: boolean;
  /**
   * The server's signed LATEST has expired: nothing can be said to be up to date.
   */
  stale: boolean;
  updateAvailable: boolean;
}

// ---- Update.Rollback

export interface UpdateRollbackParams {
  /**
   * Restart into the restored build, as `Update.Apply`'s `restart`.
   */
  restart?: boolean;
}

/**
 * Puts back the build the last update replaced (`butler upgrade --rollback`); `Meta.Flow` connections hear `Update.RolledBack`. `restart` as for `Update.Apply`.
 */
export interface UpdateRollbackResult {
  restartRequired: boolean;
  /**
   * `None` when the restored build would not say (it is active all the same).
   */
  restoredVersion: string | null;
}

// ---- Update.Status

export interface UpdateStatusParams {}

/**
 * The running version, an install waiting for a restart, the last check and the recent update history (newest first), and versions refused after a failed probation.
 */
export interface UpdateStatusResult {
  /**
   * Installed over this running build; a restart makes it current.
   */
  awaitingRestart: string | null;
  /**
   * Versions that failed their probation after a restart, and are not offered again.
   */
  badVersions: BadVersion[];
  channel: string;
  currentVersion: string;
  history: UpdateHistoryEntry[];
  lastCheck: UpdateHistoryEntry | null;
  lastResult: UpdateOutcome | null;
}

// ---- Version.Get

export interface VersionGetParams {}

/**
 * The running build, for bug reports (feature detection is `Meta.Capabilities`). `version` keeps upstream's spelling, the tag with its `v`; every other version in a result is plain semver.
 */
export interface VersionGetResult {
  /**
   * The build's tag, `v` and semver, as upstream spells it.
   */
  version: string;
  /**
   * The tag, the build time and the git ref, for people.
   */
  versionString: string;
}

// ---- rpc.discover

export interface RpcDiscoverParams {}

/**
 * An OpenRPC 1.2.6 document (https://spec.open-rpc.org), this one.
 */
export type RpcDiscoverResult = { [key: string]: unknown };

// ---- Notifications the daemon sends

/**
 * A message for the person behind the launcher, about the request it came with.
 */
export interface LogNotification {
  level: LogLevel;
  message: string;
}

/**
 * `Meta.Flow` made this connection the daemon's event channel.
 */
export interface MetaFlowEstablishedNotification {
  pid: number;
}

/**
 * `Process.Run` started its child.
 */
export interface ProcessStartedNotification {
  pid: number;
  /**
   * The child's `LOGDOG_STREAM_SERVER_PATH`.
   */
  streamServer: string;
}

/**
 * How far a long request got: `progress` in 0..1, `eta` in seconds, `bps` bytes per second.
 */
export interface ProgressNotification {
  bps: number;
  eta: number;
  progress: number;
}

/**
 * A `Process.Run` child's stream ended; `entries` were cut from it.
 */
export interface StreamsClosedNotification {
  entries: number;
  path: string;
  project: string;
}

/**
 * New entries of the stream a `Streams.Follow` request follows, in order.
 */
export interface StreamsEntriesNotification {
  entries: StreamEntry[];
  path: string;
}

/**
 * A `Process.Run` child opened a stream.
 */
export interface StreamsOpenedNotification {
  contentType: string;
  path: string;
  project: string;
  tags: { [key: string]: string };
  type: string;
}

/**
 * `Update.Apply` installed a build.
 */
export interface UpdateAppliedNotification {
  installedVersion: string;
  previousVersion: string;
  /**
   * Sent by the new process, after a restart in place that kept connections open.
   */
  restarted: boolean;
  /**
   * The daemon restarts into it once the reply is out (a build that cannot take connections
   * along); otherwise the new process announces it, with `restarted`.
   */
  restarting: boolean;
  verified: boolean;
}

/**
 * A newer butler is published (a check found it).
 */
export interface UpdateAvailableNotification {
  channel: string;
  currentVersion: string;
  latestVersion: string;
  signed: boolean;
}

/**
 * A signed update was downloaded and verified ahead of time: `Update.Apply` needs no download.
 */
export interface UpdateReadyNotification {
  currentVersion: string;
  verified: boolean;
  version: string;
}

/**
 * `Update.Rollback` made the previous build active again.
 */
export interface UpdateRolledBackNotification {
  /**
   * Sent by the new process, after a restart in place that kept connections open.
   */
  restarted: boolean;
  restarting: boolean;
  /**
   * `None` when the restored build would not say.
   */
  restoredVersion: string | null;
}

// ---- Requests the daemon sends the client

export interface ClientTestDoubleParams {
  /**
   * An integer or a float.
   */
  number: number;
}

export interface ClientTestDoubleResult {
  /**
   * An integer or a float.
   */
  number: number;
}

// ---- Shared types

/**
 * A version that failed its probation.
 */
export interface BadVersion {
  channel: string;
  reason: string;
  /**
   * Unix seconds.
   */
  time: number;
  version: string;
}

/**
 * Severity of a `log` line, named as butlerd clients expect.
 */
export type LogLevel = "debug" | "info" | "warning" | "error";

/**
 * One piece of a datagram larger than an entry.
 */
export interface PartialEntry {
  index: number;
  last: boolean;
  size: number;
}

/**
 * A stream as the store knows it.
 */
export interface Stream {
  /**
   * Cut short: its writer died before the terminal entry, so it will never end. Readers stop
   * following it once they have every entry it has.
   */
  abandoned: boolean;
  bytes: number;
  contentType: string;
  entries: number;
  name: string;
  path: string;
  prefix: string;
  project: string;
  tags: { [key: string]: string };
  terminal: boolean;
  terminalIndex: number | null;
  timestamp: string;
  /**
   * `text`, `binary` or `datagram`.
   */
  type: string;
}

/**
 * One entry on the wire: text as a string when it is UTF-8 (lines keep their delimiters), any
 * other content (binary, datagrams, or text cut inside a character at close) as base64 `data`.
 */
export interface StreamEntry {
  /**
   * Base64 of any other content.
   */
  data?: string | null;
  partial?: PartialEntry | null;
  sequence: number;
  streamIndex: number;
  /**
   * The entry's text (a text stream's lines, with their delimiters).
   */
  text?: string | null;
  /**
   * Seconds since the stream's timestamp.
   */
  timeOffset: number;
}

/**
 * What was attempted.
 */
export type UpdateAction = "check" | "upgrade" | "rollback";

/**
 * One row of the update history, newest first from [`recent`].
 */
export interface UpdateHistoryEntry {
  action: UpdateAction;
  channel: string;
  fromVersion: string | null;
  message: string | null;
  outcome: UpdateOutcome;
  step: string | null;
  /**
   * Unix seconds.
   */
  time: number;
  toVersion: string | null;
  verified: boolean;
}

/**
 * How it ended.
 */
export type UpdateOutcome = "available" | "up-to-date" | "installed" | "rolled-back" | "failed" | "cancelled" | "known-bad";

/** Every method: its params and result. */
export interface Methods {
  "Meta.Authenticate": { params: MetaAuthenticateParams; result: MetaAuthenticateResult };
  "Meta.Capabilities": { params: MetaCapabilitiesParams; result: MetaCapabilitiesResult };
  "Meta.Flow": { params: MetaFlowParams; result: MetaFlowResult };
  "Meta.Shutdown": { params: MetaShutdownParams; result: MetaShutdownResult };
  "Operation.Cancel": { params: OperationCancelParams; result: OperationCancelResult };
  "Process.Run": { params: ProcessRunParams; result: ProcessRunResult };
  "Streams.Follow": { params: StreamsFollowParams; result: StreamsFollowResult };
  "Streams.List": { params: StreamsListParams; result: StreamsListResult };
  "Streams.Read": { params: StreamsReadParams; result: StreamsReadResult };
  "Test.Double": { params: TestDoubleParams; result: TestDoubleResult };
  "Test.DoubleTwice": { params: TestDoubleTwiceParams; result: TestDoubleTwiceResult };
  "Update.Apply": { params: UpdateApplyParams; result: UpdateApplyResult };
  "Update.Check": { params: UpdateCheckParams; result: UpdateCheckResult };
  "Update.Rollback": { params: UpdateRollbackParams; result: UpdateRollbackResult };
  "Update.Status": { params: UpdateStatusParams; result: UpdateStatusResult };
  "Version.Get": { params: VersionGetParams; result: VersionGetResult };
  "rpc.discover": { params: RpcDiscoverParams; result: RpcDiscoverResult };
}

/** Every notification the daemon sends: its params. */
export interface Notifications {
  "Log": LogNotification;
  "MetaFlowEstablished": MetaFlowEstablishedNotification;
  "Process.Started": ProcessStartedNotification;
  "Progress": ProgressNotification;
  "Streams.Closed": StreamsClosedNotification;
  "Streams.Entries": StreamsEntriesNotification;
  "Streams.Opened": StreamsOpenedNotification;
  "Update.Applied": UpdateAppliedNotification;
  "Update.Available": UpdateAvailableNotification;
  "Update.Ready": UpdateReadyNotification;
  "Update.RolledBack": UpdateRolledBackNotification;
}

/** Every request the daemon may send the client: its params and the result it expects. */
export interface ClientRequests {
  "Test.Double": { params: ClientTestDoubleParams; result: ClientTestDoubleResult };
}

/** Every error code the daemon answers with. */
export type ErrorCode =
  | -32700 // ParseError
  | -32600 // InvalidRequest
  | -32601 // MethodNotFound
  | -32602 // InvalidParams
  | -32603 // InternalError
  | -32001 // TooManyConnections
  | -32003 // AuthenticationTimeout
  | -32004 // DatabaseUnavailable
  | -32005 // Restarting
  | -32006 // TooManyInFlight
  | 499 // OperationCancelled
  | 9000 // NetworkDisconnected
  ;

/** An error reply's `error`. `data.butlerVersion` is always there. */
export interface RpcError {
  code: ErrorCode;
  message: string;
  data: { butlerVersion: string; field?: string; [key: string]: unknown };
}
