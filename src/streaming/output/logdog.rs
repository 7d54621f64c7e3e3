//! The `logdog` output: register the prefix with the Coordinator (pRPC), then publish each bundle
//! to the returned Pub/Sub topic in the Collector's framing. Transient failures are retried with
//! backoff; a bundle that still cannot be delivered is spooled to disk and re-sent later (before
//! newer bundles, at close, and by the next butler run), never dropped.
//!
//! `PUBSUB_EMULATOR_HOST` (the Google client convention) points publishing at a plain-HTTP
//! endpoint; Coordinator hosts starting with `localhost` are reached over plain HTTP too.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;

use super::{Output, OutputError};
use crate::streaming::entry::Bundle;
use crate::streaming::proto;

/// Largest bundle: half the Pub/Sub message limit, as upstream.
pub const MAX_SIZE: usize = 5_000_000;

/// Retry policy (short in tests).
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    /// Attempts per bundle before it is spooled.
    pub attempts: u32,
    /// At close, how long to keep re-sending spooled bundles.
    pub drain: Duration,
    /// One request's deadline: an endpoint that accepts but never answers is a transient
    /// failure after this long, not a hang.
    pub timeout: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
            attempts: 5,
            drain: Duration::from_secs(60),
            timeout: Duration::from_secs(30),
        }
    }
}

/// What the `logdog` output needs.
#[derive(Debug, Clone)]
pub struct LogdogConfig {
    pub coordinator_host: String,
    pub service: Option<String>,
    pub project: String,
    pub prefix: String,
    pub prefix_expiration: Option<Duration>,
    /// Credentials for both the Coordinator and Pub/Sub (none: unauthenticated, for local
    /// stand-ins).
    pub credentials: Option<super::auth::Credentials>,
    /// Where undeliverable bundles wait.
    pub spool_dir: PathBuf,
    pub backoff: Backoff,
}

enum Failure {
    Transient(String),
    Permanent(String),
}

#[derive(Debug)]
pub struct LogdogOutput {
    cfg: LogdogConfig,
    client: reqwest::Client,
    secret: Vec<u8>,
    publish_url: String,
    /// `projects/<p>/topics/<t>`, as RegisterPrefix named it.
    topic: String,
    rt: tokio::runtime::Handle,
    tokens: Option<super::auth::TokenSource>,
    /// Spooled files are named by this counter so they are re-sent in order.
    seq: u64,
    host_url: String,
    /// Bundles that could be neither delivered nor spooled (a full disk), kept in memory up to
    /// [`HELD_MAX`] bytes and tried again (delivery first, then the spool) with each send and at
    /// close.
    held: std::collections::VecDeque<Vec<u8>>,
    held_bytes: usize,
}

/// Most bytes of bundles held in memory while the spool's disk is full.
const HELD_MAX: usize = 64 << 20;

/// `https://host`, except plain http for a loopback host (a local Coordinator or stand-in).
fn url_base(host: &str) -> String {
    if is_loopback_host(host) { format!("http://{host}") } else { format!("https://{host}") }
}

/// Whether `host` (with or without a port) names this machine exactly: `localhost`, or a
/// loopback address; `localhost.example.com` and `127.0.0.1.nip.io` are not.
fn is_loopback_host(host: &str) -> bool {
    let Ok(url) = reqwest::Url::parse(&format!("http://{host}")) else { return false };
    let Some(name) = url.host_str() else { return false };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A bearer token goes over TLS, or to this very machine; never in clear text elsewhere.
fn may_carry_token(url: &str) -> bool {
    reqwest::Url::parse(url)
        .is_ok_and(|u| u.scheme() == "https" || u.host_str().is_some_and(is_loopback_host))
}

impl LogdogOutput {
    /// Registers the prefix (retrying transient errors with the same op nonce) and returns the
    /// ready output.
    pub async fn register(cfg: LogdogConfig) -> Result<LogdogOutput, OutputError> {
        let client = reqwest::Client::builder()
            .timeout(cfg.backoff.timeout)
            .build()
            .map_err(|e| OutputError::Other(format!("HTTP client: {e}")))?;
        let host = match &cfg.service {
            Some(s) => format!("{s}-dot-{}", cfg.coordinator_host),
            None => cfg.coordinator_host.clone(),
        };
        let host_url = url_base(&host);
        let mut nonce = [0u8; 32];
        getrandom::fill(&mut nonce)
            .map_err(|e| OutputError::Other(format!("random nonce: {e}")))?;
        let body = proto::register_prefix_request(
            &cfg.project,
            &cfg.prefix,
            &nonce,
            cfg.prefix_expiration,
        );
        let url = format!("{host_url}/prpc/logdog.Registration/RegisterPrefix");
        let tokens = cfg.credentials.clone().map(super::auth::TokenSource::new);
        let mut delay = cfg.backoff.initial;
        let mut attempt = 0;
        let (secret, topic) = loop {
            attempt += 1;
            let token = match &tokens {
                Some(t) => Some(t.token(&client).await?),
                None => None,
            };
            match prpc_call(&client, &url, token.as_deref(), body.clone()).await {
                Ok(resp) => {
                    break proto::register_prefix_response(&resp).map_err(|e| {
                        OutputError::Other(format!("RegisterPrefix: bad response: {e}"))
                    })?;
                }
                Err(Failure::Permanent(m)) => {
                    return Err(OutputError::Other(format!("RegisterPrefix: {m}")));
                }
                // Nothing can be sent before the prefix is registered: try harder than per bundle.
                Err(Failure::Transient(m)) if attempt >= cfg.backoff.attempts.max(10) => {
                    return Err(OutputError::Other(format!(
                        "RegisterPrefix: {m} (after {attempt} attempts)"
                    )));
                }
                Err(Failure::Transient(m)) => {
                    tracing::warn!("RegisterPrefix: {m}; retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(cfg.backoff.max);
                }
            }
        };
        if secret.len() != 36 {
            return Err(OutputError::Other(format!(
                "RegisterPrefix: secret of {} bytes, expected 36",
                secret.len()
            )));
        }
        let publish_url = publish_url(&topic)?;
        crate::db::create_private_dir_all(&cfg.spool_dir).map_err(|error| OutputError::Io {
            path: cfg.spool_dir.display().to_string(),
            error,
        })?;
        let out = LogdogOutput {
            client,
            secret,
            publish_url,
            topic,
            rt: tokio::runtime::Handle::current(),
            tokens,
            seq: 0,
            host_url,
            held: std::collections::VecDeque::new(),
            held_bytes: 0,
            cfg,
        };
        Ok(out)
    }

    fn publish_once(&self, url: &str, msg: &[u8]) -> Result<(), Failure> {
        let body = serde_json::json!({
            "messages": [{ "data": base64::engine::general_purpose::STANDARD.encode(msg) }]
        });
        self.rt.block_on(async {
            let mut req = self
                .client
                .post(url)
                .header("content-type", "application/json")
                .body(body.to_string());
            if let Some(t) = self.tokens.as_ref().filter(|_| may_carry_token(url)) {
                let token =
                    t.token(&self.client).await.map_err(|e| Failure::Transient(e.to_string()))?;
                req = req.bearer_auth(token);
            }
            let resp = req.send().await.map_err(|e| {
                Failure::Transient(format!("publishing to {url}: {}", transport_error(&e)))
            })?;
            let status = resp.status();
            if status.is_success() {
                return Ok(());
            }
            let text = resp.text().await.unwrap_or_default();
            let m = format!("publishing: HTTP {status}: {}", text.trim());
            if status.is_server_error() || status.as_u16() == 429 || status.as_u16() == 408 {
                Err(Failure::Transient(m))
            } else {
                Err(Failure::Permanent(m))
            }
        })
    }

    /// Sends with retries; `Err` when it should be spooled.
    fn publish(&self, url: &str, msg: &[u8], attempts: u32) -> Result<(), String> {
        let mut delay = self.cfg.backoff.initial;
        let mut last = String::new();
        for attempt in 1..=attempts.max(1) {
            match self.publish_once(url, msg) {
                Ok(()) => return Ok(()),
                Err(Failure::Permanent(m)) => return Err(m),
                Err(Failure::Transient(m)) => {
                    last = m;
                    if attempt < attempts {
                        tracing::warn!("{last}; retrying in {delay:?}");
                        std::thread::sleep(delay);
                        delay = (delay * 2).min(self.cfg.backoff.max);
                    }
                }
            }
        }
        Err(last)
    }

    /// Spools `msg`, or, when the disk will not take it, holds it in memory while there is room.
    fn spool(&mut self, msg: Vec<u8>) -> Result<(), OutputError> {
        match self.spool_to_disk(&msg) {
            Ok(()) => Ok(()),
            Err(e) if self.held_bytes + msg.len() <= HELD_MAX => {
                tracing::warn!("{e}; holding the bundle in memory and trying again later");
                self.held_bytes += msg.len();
                self.held.push_back(msg);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn spool_to_disk(&mut self, msg: &[u8]) -> Result<(), OutputError> {
        let name = format!("{:020}-{:010}", crate::report::unix_now(), self.seq);
        self.seq += 1;
        let dir = &self.cfg.spool_dir;
        let io = |p: &Path| {
            let p = p.display().to_string();
            move |source| OutputError::Io { path: p, error: source }
        };
        // The topic travels with the message so a later run can deliver it; never a URL: where a
        // token goes is decided by this run's configuration, not by a file anyone could plant.
        let tmp = dir.join(format!("{name}.tmp"));
        let mut content = self.topic.clone().into_bytes();
        content.push(b'\n');
        content.extend_from_slice(msg);
        let written = crate::db::private_file()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .and_then(|mut f| std::io::Write::write_all(&mut f, &content))
            .and_then(|()| std::fs::rename(&tmp, dir.join(format!("{name}.msg"))));
        if let Err(e) = written {
            // Half a bundle is worth nothing and holds space a whole one needs.
            let _ = std::fs::remove_file(&tmp);
            return Err(io(&tmp)(e));
        }
        tracing::warn!("bundle spooled to {} for a later retry", dir.join(name).display());
        Ok(())
    }

    /// Delivers, or else spools, what is held in memory; returns how many are still held.
    fn resend_held(&mut self) -> usize {
        while let Some(msg) = self.held.pop_front() {
            self.held_bytes -= msg.len();
            let url = self.publish_url.clone();
            let delivered = self.publish(&url, &msg, 1).is_ok();
            if !delivered && self.spool_to_disk(&msg).is_err() {
                self.held_bytes += msg.len();
                self.held.push_front(msg);
                break;
            }
        }
        self.held.len()
    }

    fn spooled(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.cfg.spool_dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "msg"))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files
    }

    /// Re-sends spooled bundles in order; stops at the first that still fails. Returns how many
    /// remain.
    fn resend_spooled(&self) -> usize {
        let files = self.spooled();
        for (i, f) in files.iter().enumerate() {
            let Ok(content) = std::fs::read(f) else { continue };
            let Some(nl) = content.iter().position(|b| *b == b'\n') else {
                tracing::error!("{} is not a spooled bundle; leaving it", f.display());
                continue;
            };
            let topic = String::from_utf8_lossy(&content[..nl]).into_owned();
            let url = match publish_url(&topic) {
                Ok(url) => url,
                Err(e) => {
                    tracing::error!("{} names no topic ({e}); leaving it", f.display());
                    continue;
                }
            };
            match self.publish(&url, &content[nl + 1..], 1) {
                Ok(()) => {
                    let _ = std::fs::remove_file(f);
                    tracing::info!("re-sent spooled bundle {}", f.display());
                }
                Err(m) => {
                    tracing::debug!("spooled bundle still undeliverable: {m}");
                    return files.len() - i;
                }
            }
        }
        0
    }
}

/// The Pub/Sub publish URL for `projects/<p>/topics/<t>`, on the endpoint this run is
/// configured for (`PUBSUB_EMULATOR_HOST`, or Google's).
fn publish_url(topic: &str) -> Result<String, OutputError> {
    let parts: Vec<&str> = topic.split('/').collect();
    let name_ok = |s: &str| {
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.~+%".contains(&b))
    };
    let ["projects", p, "topics", t] = parts[..] else {
        return Err(OutputError::Other(format!("RegisterPrefix returned a bad topic {topic:?}")));
    };
    if !name_ok(p) || !name_ok(t) {
        return Err(OutputError::Other(format!("RegisterPrefix returned a bad topic {topic:?}")));
    }
    let base = match std::env::var("PUBSUB_EMULATOR_HOST").ok().filter(|h| !h.is_empty()) {
        Some(h) => format!("http://{h}"),
        None => "https://pubsub.googleapis.com".to_owned(),
    };
    Ok(format!("{base}/v1/projects/{p}/topics/{t}:publish"))
}

/// Why a request got no answer: reqwest's own line only repeats the URL, so the cause chain
/// (connection refused, reset...) or the deadline says it.
fn transport_error(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return "no answer in time (the timeout= option sets how long to wait)".into();
    }
    let mut parts = Vec::new();
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        let text = s.to_string();
        if !text.starts_with("client error (") {
            parts.push(text);
        }
        src = s.source();
    }
    if parts.is_empty() { e.to_string() } else { parts.join(": ") }
}

async fn prpc_call(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
    body: Vec<u8>,
) -> Result<Vec<u8>, Failure> {
    let mut req = client
        .post(url)
        .header("content-type", "application/prpc; encoding=binary")
        .header("accept", "application/prpc; encoding=binary")
        .body(body);
    if let Some(t) = token.filter(|_| may_carry_token(url)) {
        req = req.bearer_auth(t);
    }
    let resp = req
        .send()
        .await
        .map_err(|e| Failure::Transient(format!("{url}: {}", transport_error(&e))))?;
    let status = resp.status();
    let code: Option<u32> = resp
        .headers()
        .get("x-prpc-grpc-code")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let body = resp
        .bytes()
        .await
        .map_err(|e| Failure::Transient(format!("{url}: {}", transport_error(&e))))?;
    match code {
        Some(0) if status.is_success() => Ok(body.to_vec()),
        // Unknown, DeadlineExceeded, ResourceExhausted, Internal, Unavailable.
        Some(c @ (2 | 4 | 8 | 13 | 14)) => Err(Failure::Transient(format!(
            "gRPC code {c}: {}",
            String::from_utf8_lossy(&body).trim()
        ))),
        Some(c) => Err(Failure::Permanent(format!(
            "gRPC code {c}: {}",
            String::from_utf8_lossy(&body).trim()
        ))),
        None if status.is_server_error() => Err(Failure::Transient(format!("HTTP {status}"))),
        None => Err(Failure::Permanent(format!("HTTP {status} without a pRPC code"))),
    }
}

impl Output for LogdogOutput {
    fn name(&self) -> &'static str {
        "logdog"
    }

    fn max_size(&self) -> usize {
        MAX_SIZE
    }

    fn coordinator_host(&self) -> Option<String> {
        Some(self.cfg.coordinator_host.clone())
    }

    fn send(&mut self, bundle: Bundle) -> Result<(), OutputError> {
        let msg = proto::pubsub_message(&bundle, &self.cfg.project, &self.cfg.prefix, &self.secret)
            .map_err(|e| OutputError::Other(format!("framing a bundle: {e}")))?;
        // Older bundles first: the Collector does not mind order, but a backlog should shrink.
        if self.resend_spooled() > 0 || self.resend_held() > 0 {
            return self.spool(msg);
        }
        let url = self.publish_url.clone();
        match self.publish(&url, &msg, self.cfg.backoff.attempts) {
            Ok(()) => Ok(()),
            Err(m) => {
                tracing::warn!("{m}");
                self.spool(msg)
            }
        }
    }

    fn close(&mut self) -> Result<(), OutputError> {
        let deadline = std::time::Instant::now() + self.cfg.backoff.drain;
        let mut delay = self.cfg.backoff.initial;
        loop {
            let left = self.resend_spooled() + self.resend_held();
            if left == 0 {
                return Ok(());
            }
            if std::time::Instant::now() + delay > deadline {
                if !self.held.is_empty() {
                    return Err(OutputError::Other(format!(
                        "{} bundles could be neither delivered nor spooled to {} (is its disk full?) and are lost; {} more stay spooled there and are re-sent by the next butler run with the logdog output (host {})",
                        self.held.len(),
                        self.cfg.spool_dir.display(),
                        left - self.held.len(),
                        self.host_url
                    )));
                }
                return Err(OutputError::Other(format!(
                    "{left} bundles could not be delivered yet; they stay spooled in {} and are re-sent by the next butler run with the logdog output (host {})",
                    self.cfg.spool_dir.display(),
                    self.host_url
                )));
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(self.cfg.backoff.max);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_machine_gets_plain_http_and_a_token_in_clear() {
        for host in ["localhost", "localhost:8080", "127.0.0.1:9", "[::1]:80", "127.1.2.3"] {
            assert!(is_loopback_host(host), "{host}");
            assert!(url_base(host).starts_with("http://"), "{host}");
        }
        for host in ["localhost.example.com", "127.0.0.1.nip.io", "example.com", "10.0.0.1"] {
            assert!(!is_loopback_host(host), "{host}");
            assert!(url_base(host).starts_with("https://"), "{host}");
        }
        assert!(may_carry_token("https://pubsub.googleapis.com/v1/x"));
        assert!(may_carry_token("http://127.0.0.1:8085/v1/x"));
        assert!(!may_carry_token("http://localhost.example.com/v1/x"));
        assert!(!may_carry_token("http://10.0.0.1:8085/v1/x"));
    }

    #[test]
    fn spooled_topics_must_be_topics() {
        assert!(publish_url("projects/p-1/topics/t_2").is_ok());
        for bad in ["http://evil/x", "projects/p/topics/t/../../x", "projects//topics/t", "a"] {
            assert!(publish_url(bad).is_err(), "{bad}");
        }
    }
}
