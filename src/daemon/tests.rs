//! In-process tests: a connection driven through the real router over `tokio::io::duplex`, with
//! no process, socket or file; the process-level tests in `tests/it/daemon.rs` cover the rest.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream, Lines, WriteHalf};
use tokio::sync::watch;

use super::notifications::UpdateAvailable;
use super::state::{Config, Daemon, DbState};
use super::{connection, methods};
use crate::db::{self, Db, DbPath};
use crate::update::UpdateSettings;

const SECRET: &str = "s3cret";

/// A daemon as `serve` builds it, over an in-memory database.
fn daemon() -> Arc<Daemon> {
    daemon_with(methods::router())
}

/// [`daemon`] with its own method table.
fn daemon_with(router: super::router::Router) -> Arc<Daemon> {
    let mut tuning = butler_updater::Tuning::default();
    tuning.net.retries = 1;
    let conn = db::open(&DbPath::from_arg(":memory:")).expect("an in-memory database");
    let (_, db) = watch::channel(DbState::Ready(Db::new(conn)));
    let config = Config {
        require_auth: true,
        auth_timeout: Duration::from_secs(10),
        max_line_bytes: 1 << 20,
        max_in_flight: 16,
        log_traffic: false,
        dbpath: Some(":memory:".into()),
        update: UpdateSettings {
            // Nothing listens here: an update check fails fast instead of calling out.
            broth_url: "http://127.0.0.1:9".into(),
            trusted_keys: Vec::new(),
            require_signature: false,
            tuning,
            cache_dir: None,
        },
        exe: std::env::current_exe().expect("the test binary"),
        can_hand_over: false,
    };
    Arc::new(Daemon::new(config, router, SECRET.into(), db))
}

/// One client connection, served by `daemon` on a task.
struct Client {
    lines: Lines<BufReader<tokio::io::ReadHalf<DuplexStream>>>,
    writer: WriteHalf<DuplexStream>,
}

impl Client {
    fn connect(daemon: &Arc<Daemon>) -> Client {
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let (r, w) = tokio::io::split(theirs);
        tokio::spawn(connection::serve(Arc::clone(daemon), 1, r, w, Default::default()));
        let (r, writer) = tokio::io::split(ours);
        Client { lines: BufReader::new(r).lines(), writer }
    }

    async fn send(&mut self, msg: Value) {
        let mut line = serde_json::to_vec(&msg).unwrap();
        line.push(b'\n');
        self.writer.write_all(&line).await.unwrap();
    }

    async fn next(&mut self) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(10), self.lines.next_line())
            .await
            .expect("a message within 10 s")
            .unwrap()
            .expect("the connection is open");
        serde_json::from_str(&line).unwrap()
    }

    /// Sends a request and returns its reply, collecting what came before it.
    async fn call(&mut self, id: u64, method: &str, params: Value) -> (Value, Vec<Value>) {
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})).await;
        let mut before = Vec::new();
        loop {
            let msg = self.next().await;
            if msg["id"] == json!(id) && msg.get("method").is_none() {
                return (msg, before);
            }
            before.push(msg);
        }
    }

    async fn authenticated(daemon: &Arc<Daemon>) -> Client {
        let mut c = Client::connect(daemon);
        let (reply, _) = c.call(0, "Meta.Authenticate", json!({"secret": SECRET})).await;
        assert_eq!(reply["result"]["ok"], true, "{reply}");
        c
    }
}

#[tokio::test]
async fn nothing_but_authentication_is_answered_before_the_secret() {
    let d = daemon();
    let mut c = Client::connect(&d);
    let (reply, _) = c.call(1, "Version.Get", json!({})).await;
    assert_eq!(reply["error"]["code"], -32600, "{reply}");
    let (reply, _) = c.call(2, "Meta.Authenticate", json!({"secret": "guess"})).await;
    assert!(reply.get("error").is_some(), "a wrong secret is refused: {reply}");
    let (reply, _) = c.call(3, "Meta.Authenticate", json!({"secret": SECRET})).await;
    assert_eq!(reply["result"]["ok"], true, "{reply}");
    let (reply, _) = c.call(4, "Version.Get", json!({})).await;
    assert_eq!(reply["result"]["version"], format!("v{}", crate::version::VERSION), "{reply}");
}

#[tokio::test]
async fn a_reply_the_reader_writes_itself_never_overtakes_what_its_request_sent_first() {
    // A request that finishes without waiting is answered by the reader, which writes the reply
    // itself when the writer task has nothing queued; the notifications the request sent went to
    // that queue first, and must still reach the client first.
    let mut router = methods::router();
    router
        .method("Test.LogThenAnswer", |ctx: super::router::Ctx, _: methods::Empty| async move {
            for i in 0..3 {
                ctx.log(crate::report::Level::Info, &format!("note {i}")).await;
            }
            Ok(methods::Empty {})
        })
        .doc("Three `Log` notifications, then an empty result.")
        .notifies::<super::notifications::Log<'static>>();
    let d = daemon_with(router);
    let mut c = Client::authenticated(&d).await;
    for id in 1..=50 {
        let (reply, before) = c.call(id, "Test.LogThenAnswer", json!({})).await;
        assert_eq!(reply["result"], json!({}), "{reply}");
        let notes: Vec<_> = before.iter().map(|m| m["params"]["message"].clone()).collect();
        assert_eq!(notes, [json!("note 0"), json!("note 1"), json!("note 2")], "call {id}");
    }
}

#[tokio::test]
async fn unknown_methods_and_bad_params_get_their_codes() {
    let d = daemon();
    let mut c = Client::authenticated(&d).await;
    let (reply, _) = c.call(1, "No.Such", json!({})).await;
    assert_eq!(reply["error"]["code"], -32601, "{reply}");
    let (reply, _) = c.call(2, "Test.Double", json!({"number": "two"})).await;
    assert_eq!(reply["error"]["code"], -32602, "{reply}");
    let message = reply["error"]["message"].as_str().unwrap();
    assert!(message.contains("Test.Double") && message.contains("number"), "{reply}");
    assert_eq!(reply["error"]["data"]["field"], "number", "{reply}");
    // Nested fields are named by their path.
    let (reply, _) = c.call(3, "Process.Run", json!({"command": ["true", 7]})).await;
    assert_eq!(reply["error"]["data"]["field"], "command[1]", "{reply}");
}

#[tokio::test]
async fn a_server_call_and_typed_notifications_reach_the_client() {
    let d = daemon();
    let mut c = Client::authenticated(&d).await;
    c.send(
        json!({"jsonrpc": "2.0", "id": 7, "method": "Test.DoubleTwice", "params": {"number": 3}}),
    )
    .await;
    let mut logs = 0;
    let call = loop {
        let msg = c.next().await;
        match msg["method"].as_str() {
            Some("Log") => logs += 1,
            Some("Test.Double") => break msg,
            _ => panic!("expected a Log or the daemon's Test.Double call, got {msg}"),
        }
    };
    assert_eq!(call["params"]["number"], 3);
    c.send(json!({"jsonrpc": "2.0", "id": call["id"], "result": {"number": 6}})).await;
    let mut progress = 0;
    let reply = loop {
        let msg = c.next().await;
        match msg["method"].as_str() {
            Some("Progress") => {
                assert!(msg["params"]["progress"].is_number(), "{msg}");
                progress += 1;
            }
            Some("Log") => logs += 1,
            Some(other) => panic!("unexpected {other}: {msg}"),
            None => break msg,
        }
    };
    assert_eq!(progress, 3);
    assert_eq!(logs, 1, "Test.DoubleTwice logs what it asks");
    assert_eq!(reply["id"], 7);
    assert_eq!(reply["result"]["number"], 12, "{reply}");
}

#[tokio::test]
async fn broadcasts_reach_meta_flow_connections_only() {
    let d = daemon();
    let mut flow = Client::authenticated(&d).await;
    let mut other = Client::authenticated(&d).await;
    flow.send(json!({"jsonrpc": "2.0", "id": 1, "method": "Meta.Flow", "params": {}})).await;
    let established = flow.next().await;
    assert_eq!(established["method"], "MetaFlowEstablished", "{established}");
    d.broadcast(UpdateAvailable {
        current_version: "1.0.0".into(),
        latest_version: "1.1.0".into(),
        channel: "linux-amd64".into(),
        signed: true,
    })
    .await;
    let news = flow.next().await;
    assert_eq!(news["method"], "Update.Available", "{news}");
    assert_eq!(
        news["params"],
        json!({"currentVersion": "1.0.0", "latestVersion": "1.1.0", "channel": "linux-amd64", "signed": true})
    );
    // The other connection heard nothing: its next message is its own reply.
    let (reply, before) = other.call(2, "Version.Get", json!({})).await;
    assert!(before.is_empty(), "{before:?}");
    assert!(reply.get("result").is_some(), "{reply}");
}

#[tokio::test]
async fn a_failed_update_check_is_answered_and_recorded_in_the_history() {
    let d = daemon();
    let mut c = Client::authenticated(&d).await;
    let (reply, _) = c.call(1, "Update.Check", json!({})).await;
    assert_eq!(reply["error"]["data"]["step"], "check", "{reply}");
    let (status, _) = c.call(2, "Update.Status", json!({})).await;
    let last = &status["result"]["lastCheck"];
    assert_eq!(last["action"], "check", "{status}");
    assert_eq!(last["outcome"], "failed", "{status}");
    assert_eq!(status["result"]["lastResult"], "failed", "{status}");
}

#[tokio::test]
async fn capabilities_say_what_a_client_may_rely_on() {
    let d = daemon();
    let mut c = Client::authenticated(&d).await;
    let (reply, _) = c.call(1, "Meta.Capabilities", json!({})).await;
    let caps = &reply["result"];
    assert_eq!(caps["protocolVersion"], 1, "{reply}");
    // Plain semver, as every version in a result but Version.Get's.
    assert_eq!(caps["butlerVersion"], crate::version::VERSION);
    let features: Vec<&str> =
        caps["features"].as_array().unwrap().iter().filter_map(|f| f.as_str()).collect();
    assert!(features.contains(&"process-run") && features.contains(&"update-channels"), "{reply}");
    // This in-process daemon has no socket to pass on.
    assert!(!features.contains(&"restart-in-place"), "{reply}");
}

#[tokio::test]
async fn a_malformed_stream_path_is_the_callers_mistake() {
    let d = daemon();
    let mut c = Client::authenticated(&d).await;
    let (reply, _) = c.call(1, "Streams.Read", json!({"path": "not-a-path"})).await;
    assert_eq!(reply["error"]["code"], -32602, "{reply}");
    assert_eq!(reply["error"]["data"]["field"], "path", "{reply}");
}

/// Messages until the reply to `id`, which is returned with the daemon's calls seen meanwhile.
async fn until_reply(c: &mut Client, id: Value, calls: &mut Vec<Value>) -> Value {
    loop {
        let msg = c.next().await;
        if msg.get("method").is_none() && msg["id"] == id {
            return msg;
        }
        if msg["method"] == "Test.Double" {
            calls.push(msg);
        }
    }
}

/// Past `max_in_flight` (16 here) running requests, a connection stops reading (the peer is held
/// back, not buffered), and reads again once one finishes. Unix only for its `sleep` children;
/// the cap is the same code on Windows, and the test below runs there too.
#[cfg(unix)]
#[tokio::test]
async fn a_connection_stops_reading_at_its_in_flight_cap() {
    let d = daemon();
    let mut c = Client::authenticated(&d).await;
    for id in 1..=17 {
        let params = json!({"command": ["sleep", "30"], "id": format!("p{id}")});
        c.send(json!({"jsonrpc": "2.0", "id": id, "method": "Process.Run", "params": params}))
            .await;
    }
    c.send(json!({"jsonrpc": "2.0", "id": 100, "method": "Version.Get"})).await;
    let read_on = tokio::time::timeout(Duration::from_millis(500), async {
        loop {
            let msg = c.next().await;
            if msg.get("method").is_none() {
                return msg;
            }
        }
    })
    .await;
    assert!(read_on.is_err(), "the connection kept reading past its cap: {read_on:?}");
    // The first slot freed goes to the 17th run, which the reader was waiting with; the second
    // lets it read on.
    let mut other = Client::authenticated(&d).await;
    for (n, op) in [(1, "p1"), (2, "p2")] {
        let (r, _) = other.call(n, "Operation.Cancel", json!({"id": op})).await;
        assert_eq!(r["result"]["didCancel"], true, "{r}");
        assert_eq!(until_reply(&mut c, json!(n), &mut Vec::new()).await["error"]["code"], 499);
    }
    let v = until_reply(&mut c, json!(100), &mut Vec::new()).await;
    assert!(v["result"]["version"].is_string(), "read again once a slot was free: {v}");
    drop(c);
}

/// When the requests holding every slot wait for the peer's answers, waiting for a slot would
/// stop the only reader those answers can come through: further requests are refused instead.
#[tokio::test]
async fn a_full_connection_whose_calls_await_answers_refuses_instead_of_deadlocking() {
    let d = daemon();
    let mut c = Client::authenticated(&d).await;
    for id in 1..=20 {
        let params = json!({"number": id});
        c.send(json!({"jsonrpc": "2.0", "id": id, "method": "Test.DoubleTwice", "params": params}))
            .await;
    }
    let mut calls = Vec::new();
    for id in 17..=20 {
        let r = until_reply(&mut c, json!(id), &mut calls).await;
        assert_eq!(r["error"]["code"], -32006, "{r}");
        assert_eq!(r["error"]["data"]["limit"], 16, "{r}");
    }
    while calls.len() < 16 {
        let msg = c.next().await;
        if msg["method"] == "Test.Double" {
            calls.push(msg);
        }
    }
    for call in &calls {
        let n = call["params"]["number"].as_i64().unwrap();
        c.send(json!({"jsonrpc": "2.0", "id": call["id"], "result": {"number": n * 2}})).await;
    }
    for id in 1..=16 {
        let r = until_reply(&mut c, json!(id), &mut Vec::new()).await;
        assert_eq!(r["result"]["number"], id * 4, "{r}");
    }
    let (r, _) = c.call(21, "Version.Get", json!({})).await;
    assert!(r["result"]["version"].is_string(), "{r}");
}
