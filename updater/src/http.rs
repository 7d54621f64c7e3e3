//! HTTP for the updater: small capped GETs and a resumable, retried, watched archive download.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_RANGE, ETAG, IF_RANGE, LAST_MODIFIED, RANGE, RETRY_AFTER};

use crate::ErrorKind;

/// Network limits; tests shorten them through the CLI's hidden knobs.
#[derive(Debug, Clone)]
pub struct NetConfig {
    pub connect_timeout: Duration,
    /// Longest wait for the next bytes of a response.
    pub read_timeout: Duration,
    /// The watchdog: at least `min_bps` averaged over each `stall_window`, or the attempt fails.
    pub min_bps: u64,
    pub stall_window: Duration,
    /// However steady, a download (all its attempts) ends after this long; what it fetched is
    /// kept for the next run to resume.
    pub max_time: Duration,
    /// Attempts per request that made no progress before giving up.
    pub retries: u32,
    /// First backoff delay; doubled per failed attempt, capped at `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
    /// Cap on an archive when no signed manifest gives its size.
    pub max_archive: u64,
    /// How often progress is reported at most.
    pub progress_interval: Duration,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            connect_timeout: Duration::from_secs(15),
            read_timeout: Duration::from_secs(30),
            min_bps: 1024,
            stall_window: Duration::from_secs(30),
            max_time: Duration::from_secs(60 * 60),
            retries: 4,
            backoff: Duration::from_millis(300),
            max_backoff: Duration::from_secs(5),
            max_archive: 512 << 20,
            progress_interval: Duration::from_millis(500),
        }
    }
}

/// Download progress, sent at most every `progress_interval`.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub done: u64,
    pub total: Option<u64>,
    pub bps: f64,
}

impl Progress {
    /// Done over total, in 0..=1; 0 while the total is unknown.
    pub fn fraction(&self) -> f64 {
        self.total.filter(|t| *t > 0).map_or(0.0, |t| (self.done as f64 / t as f64).clamp(0.0, 1.0))
    }

    /// Seconds left at the current rate, when both are known.
    pub fn eta_secs(&self) -> Option<f64> {
        self.total.filter(|_| self.bps > 0.0).map(|t| t.saturating_sub(self.done) as f64 / self.bps)
    }

    pub fn is_final(&self) -> bool {
        self.total == Some(self.done)
    }
}

/// The most bytes a download may bring, which may tighten while it runs: an archive starts
/// downloading before its signed manifest has arrived (under [`NetConfig::max_archive`]), and
/// the manifest's size then caps it.
#[derive(Debug)]
pub struct SizeCap(AtomicU64);

impl SizeCap {
    pub fn new(bytes: u64) -> SizeCap {
        SizeCap(AtomicU64::new(bytes))
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Lowers the cap to `bytes` (never raises it).
    pub fn tighten(&self, bytes: u64) {
        self.0.fetch_min(bytes, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone)]
pub struct Http {
    client: reqwest::Client,
    pub cfg: NetConfig,
    verifier: std::sync::Arc<LazyVerifier>,
}

/// The platform's certificate verifier (what reqwest uses by default), built the first time a
/// TLS server is met: building it reads and parses every root certificate of the system
/// (milliseconds of CPU) whether or not a request ever needs one, and on plain http to
/// loopback none does. [`Http::warm_tls`] builds it on a spare thread while the first
/// connection is being set up.
#[derive(Debug)]
struct LazyVerifier {
    provider: std::sync::Arc<rustls::crypto::CryptoProvider>,
    built: std::sync::OnceLock<Result<rustls_platform_verifier::Verifier, rustls::Error>>,
}

impl LazyVerifier {
    fn get(&self) -> Result<&rustls_platform_verifier::Verifier, rustls::Error> {
        self.built
            .get_or_init(|| rustls_platform_verifier::Verifier::new(self.provider.clone()))
            .as_ref()
            .map_err(Clone::clone)
    }
}

impl rustls::client::danger::ServerCertVerifier for LazyVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.get()?.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.get()?.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.get()?.verify_tls13_signature(message, cert, dss)
    }

    /// Asked for every ClientHello: answered from the provider, without building the verifier
    /// (the platform verifier answers the same).
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// Is `url` https, or http to a loopback host (the only place plain http is allowed)?
pub fn url_allowed(url: &reqwest::Url) -> bool {
    match url.scheme() {
        "https" => true,
        "http" => match url.host() {
            Some(url::Host::Domain(d)) => d == "localhost",
            Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
            Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
            None => false,
        },
        _ => false,
    }
}

impl Http {
    pub fn new(cfg: NetConfig) -> Result<Http, ErrorKind> {
        // Redirects may not leave https (or loopback): a hop to plain http would undo TLS.
        let policy = reqwest::redirect::Policy::custom(|attempt| {
            if attempt.previous().len() >= 5 {
                attempt.error("too many redirects")
            } else if url_allowed(attempt.url()) {
                attempt.follow()
            } else {
                attempt.error("redirect to a non-https URL")
            }
        });
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = std::sync::Arc::new(LazyVerifier {
            provider: provider.clone(),
            built: std::sync::OnceLock::new(),
        });
        let tls_error = |e: rustls::Error| ErrorKind::Network {
            url: String::new(),
            why: format!("setting up TLS: {e}"),
        };
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(tls_error)?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_no_client_auth();
        // As reqwest configures its own for HTTP/1 only.
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(cfg.connect_timeout)
            .read_timeout(cfg.read_timeout)
            .redirect(policy)
            .user_agent(concat!("butler-updater/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ErrorKind::Network { url: String::new(), why: format!("{e:#}") })?;
        Ok(Http { client, cfg, verifier })
    }

    /// Builds the certificate verifier on a spare thread, for a session that will speak TLS:
    /// it is then ready by the time the first handshake needs it (which waits for it otherwise).
    pub fn warm_tls(&self) {
        let verifier = self.verifier.clone();
        let _ = std::thread::Builder::new().name("butler-tls-roots".into()).spawn(move || {
            let _ = verifier.get();
        });
    }

    /// GETs a small file, refusing bodies over `cap` bytes. `Ok(None)` on 404.
    pub async fn get_small(&self, url: &str, cap: u64) -> Result<Option<Vec<u8>>, ErrorKind> {
        let mut failures = 0;
        loop {
            match self.get_small_once(url, cap).await {
                Err(e) if e.retryable() && failures + 1 < self.cfg.retries => {
                    tracing::debug!("GET {url}: {e}; retrying");
                    failures += 1;
                    tokio::time::sleep(self.backoff(failures, e.retry_after())).await;
                }
                other => return other,
            }
        }
    }

    async fn get_small_once(&self, url: &str, cap: u64) -> Result<Option<Vec<u8>>, ErrorKind> {
        let resp = self.client.get(url).send().await.map_err(|e| net_err(url, e))?;
        let status = resp.status();
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        check_status(url, &resp)?;
        if resp.content_length().is_some_and(|n| n > cap) {
            return Err(ErrorKind::TooLarge { url: url.to_owned(), limit: cap });
        }
        let mut body = Vec::new();
        let mut stream = resp.bytes_stream();
        let deadline = Instant::now() + self.cfg.read_timeout * 2;
        loop {
            let next =
                tokio::time::timeout_at(deadline.into(), stream.next()).await.map_err(|_| {
                    ErrorKind::Stalled {
                        url: url.to_owned(),
                        why: "the response did not finish in time".into(),
                    }
                })?;
            match next {
                None => break,
                Some(Err(e)) => return Err(net_err(url, e)),
                Some(Ok(chunk)) => {
                    if body.len() as u64 + chunk.len() as u64 > cap {
                        return Err(ErrorKind::TooLarge { url: url.to_owned(), limit: cap });
                    }
                    body.extend_from_slice(&chunk);
                }
            }
        }
        Ok(Some(body))
    }

    fn backoff(&self, failures: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self.cfg.backoff.saturating_mul(1 << failures.min(16));
        retry_after.unwrap_or(exp).min(self.cfg.max_backoff)
    }

    /// Streams `url` into `dest`, resuming after cuts with `Range` + `If-Range` when the server
    /// allows it. Returns the size and SHA-256 of what was written.
    ///
    /// The server's strong validator is kept beside `dest` (`<dest>.validator`) while the
    /// download is incomplete, so a later call for the same `dest`, in another run after a crash
    /// or a failed attempt, resumes where this one stopped; without it `dest` starts empty.
    pub async fn download(
        &self,
        url: &str,
        dest: &Path,
        cap: &SizeCap,
        on_progress: &mut (dyn FnMut(Progress) + Send),
    ) -> Result<(u64, [u8; 32]), ErrorKind> {
        let sidecar = validator_path(dest);
        // Re-reading a partial file to hash it is blocking work.
        let (mut hasher, resumed) = {
            let (dest, sidecar, url) = (dest.to_owned(), sidecar.clone(), url.to_owned());
            let cap = cap.get();
            tokio::task::spawn_blocking(move || {
                let hasher = crate::hasher::Hasher::new();
                let resumed = resume_from(&url, &dest, &sidecar, &hasher, cap);
                if resumed.is_none() {
                    hasher.reset();
                }
                (hasher, resumed)
            })
            .await
            .map_err(|e| ErrorKind::Io(std::io::Error::other(e.to_string())))?
        };
        let (mut file, mut done, mut validator) = match resumed {
            Some((file, done, validator)) => {
                tracing::info!("resuming the download of {url} at byte {done}");
                (file, done, Some(validator))
            }
            None => {
                let _ = std::fs::remove_file(&sidecar);
                (fs_err::File::create(dest)?, 0, None)
            }
        };
        let mut total: Option<u64> = None;
        let mut failures = 0u32;
        let mut attempts = 0u32;
        let started = Instant::now();
        let deadline = tokio::time::Instant::from_std(started + self.cfg.max_time);
        let mut last_report = Instant::now() - self.cfg.progress_interval;
        loop {
            attempts += 1;
            let before = done;
            let mut report = |d, t| {
                if last_report.elapsed() >= self.cfg.progress_interval {
                    last_report = Instant::now();
                    let secs = started.elapsed().as_secs_f64().max(1e-3);
                    on_progress(Progress { done: d, total: t, bps: d as f64 / secs });
                }
            };
            let attempt = self.download_attempt(
                url,
                cap,
                &mut file,
                &mut hasher,
                &mut done,
                &mut validator,
                &sidecar,
                &mut total,
                &mut report,
            );
            let Ok(result) = tokio::time::timeout_at(deadline, attempt).await else {
                // The sidecar stays: the next run resumes where this one stopped.
                return Err(ErrorKind::TooSlow { url: url.to_owned(), limit: self.cfg.max_time });
            };
            match result {
                Ok(()) => {
                    let _ = std::fs::remove_file(&sidecar);
                    // No fsync: the archive is scratch (deleted after unpacking, refetched after a
                    // crash); only the unpacked files must be durable before the swap.
                    let secs = started.elapsed().as_secs_f64().max(1e-3);
                    on_progress(Progress { done, total: Some(done), bps: done as f64 / secs });
                    hasher.cut();
                    let digest = hasher.finish().pop().unwrap_or_default();
                    return Ok((done, digest));
                }
                Err(e) if e.retryable() => {
                    failures = if done > before { 1 } else { failures + 1 };
                    // Progress resets the count, but not forever: a server that cuts every
                    // response after a few bytes still ends.
                    if failures >= self.cfg.retries || attempts >= self.cfg.retries * 4 {
                        return Err(e);
                    }
                    tracing::info!("download of {url} interrupted at {done} bytes ({e}); retrying");
                    tokio::time::sleep(self.backoff(failures, e.retry_after())).await;
                }
                // A full disk casts no doubt on what was written: the next run, with room
                // again, goes on from there.
                Err(e @ ErrorKind::Io(_)) if e.is_disk_full() => return Err(e),
                Err(e) => {
                    // Not worth resuming later: what is there may be wrong, and the next try
                    // would meet the same answer.
                    let _ = std::fs::remove_file(&sidecar);
                    return Err(e);
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn download_attempt(
        &self,
        url: &str,
        cap: &SizeCap,
        file: &mut fs_err::File,
        hasher: &mut crate::hasher::Hasher,
        done: &mut u64,
        validator: &mut Option<String>,
        sidecar: &Path,
        total: &mut Option<u64>,
        report: &mut (dyn FnMut(u64, Option<u64>) + Send),
    ) -> Result<(), ErrorKind> {
        let mut req = self.client.get(url);
        let resuming = *done > 0 && validator.is_some();
        if resuming {
            req = req.header(RANGE, format!("bytes={done}-"));
            req = req.header(IF_RANGE, validator.clone().unwrap_or_default());
        }
        let resp = req.send().await.map_err(|e| net_err(url, e))?;
        let status = resp.status();
        // What we hold is already all there is (a cut right after the last byte).
        if status == StatusCode::RANGE_NOT_SATISFIABLE
            && resuming
            && content_range(&resp).is_some_and(|r| r.start.is_none() && r.total == Some(*done))
        {
            *total = Some(*done);
            return Ok(());
        }
        check_status(url, &resp)?;
        if status == StatusCode::PARTIAL_CONTENT
            && resuming
            && content_range(&resp).is_some_and(|r| r.start == Some(*done))
        {
            tracing::debug!("resuming {url} at byte {done}");
            *total = content_range(&resp).and_then(|r| r.total);
        } else {
            if status == StatusCode::PARTIAL_CONTENT && resuming {
                // A server that lies about ranges: nothing it sent can be spliced, and what is
                // kept cannot be trusted to be the start of the file it serves now. Start over,
                // and without a validator the next attempt asks for the whole file.
                use std::io::Seek;
                file.set_len(0)?;
                file.seek(std::io::SeekFrom::Start(0))?;
                hasher.reset();
                let asked = std::mem::take(done);
                *validator = None;
                let _ = std::fs::remove_file(sidecar);
                let sent = resp
                    .headers()
                    .get(reqwest::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .map_or_else(|| "no Content-Range".to_owned(), |r| format!("bytes {r}"));
                return Err(ErrorKind::WrongRange { url: url.to_owned(), asked, sent });
            }
            if status == StatusCode::PARTIAL_CONTENT {
                return Err(ErrorKind::Http {
                    url: url.to_owned(),
                    status: 206,
                    why: "unexpected partial content".into(),
                });
            }
            // A full answer: start over (the file changed, or the server ignores ranges).
            if *done > 0 {
                use std::io::Seek;
                file.set_len(0)?;
                file.seek(std::io::SeekFrom::Start(0))?;
                hasher.reset();
                *done = 0;
            }
            *total = resp.content_length();
        }
        too_large(url, *total, cap)?;
        // Only a strong validator makes a resumed file safe to splice.
        *validator = resp
            .headers()
            .get(ETAG)
            .filter(|v| !v.as_bytes().starts_with(b"W/"))
            .or_else(|| resp.headers().get(LAST_MODIFIED))
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        // Before any byte is written, so whatever lands in the file can be resumed later.
        remember_validator(sidecar, url, validator.as_deref());
        let mut stream = resp.bytes_stream();
        let mut window_start = Instant::now();
        let mut window_bytes = 0u64;
        loop {
            let next =
                tokio::time::timeout(self.cfg.read_timeout, stream.next()).await.map_err(|_| {
                    ErrorKind::Stalled {
                        url: url.to_owned(),
                        why: format!("no data for {:?}", self.cfg.read_timeout),
                    }
                })?;
            let chunk = match next {
                None => break,
                Some(Err(e)) => return Err(net_err(url, e)),
                Some(Ok(c)) => c,
            };
            // Against the announced total too: the cap may have tightened since the headers.
            too_large(url, Some(*done + chunk.len() as u64).max(*total), cap)?;
            file.write_all(&chunk)?;
            hasher.update(chunk.clone());
            *done += chunk.len() as u64;
            window_bytes += chunk.len() as u64;
            report(*done, *total);
            crate::hook::point("download-chunk");
            let elapsed = window_start.elapsed();
            if elapsed >= self.cfg.stall_window {
                let bps = window_bytes as f64 / elapsed.as_secs_f64();
                if bps < self.cfg.min_bps as f64 {
                    return Err(ErrorKind::Stalled {
                        url: url.to_owned(),
                        why: format!(
                            "{bps:.0} bytes/s is below the minimum of {} bytes/s",
                            self.cfg.min_bps
                        ),
                    });
                }
                window_start = Instant::now();
                window_bytes = 0;
            }
        }
        if let Some(t) = *total
            && *done != t
        {
            return Err(ErrorKind::Truncated { url: url.to_owned(), got: *done, expected: t });
        }
        Ok(())
    }
}

/// `bytes` (what came, or what the server announced) against the cap as it is now.
fn too_large(url: &str, bytes: Option<u64>, cap: &SizeCap) -> Result<(), ErrorKind> {
    let limit = cap.get();
    match bytes {
        Some(n) if n > limit => Err(ErrorKind::TooLarge { url: url.to_owned(), limit }),
        _ => Ok(()),
    }
}

/// Drops a partial download and what it knows of its source: it is not to be resumed.
pub(crate) fn forget_partial(dest: &Path) {
    let _ = std::fs::remove_file(validator_path(dest));
    let _ = std::fs::remove_file(dest);
}

fn validator_path(dest: &Path) -> std::path::PathBuf {
    let mut name = dest.as_os_str().to_owned();
    name.push(".validator");
    name.into()
}

/// The partial file at `dest`, opened for appending with its bytes fed to `hasher`, when the
/// sidecar says which version of the file (the validator) they are, whatever URL they came from.
fn resume_from(
    url: &str,
    dest: &Path,
    sidecar: &Path,
    hasher: &crate::hasher::Hasher,
    cap: u64,
) -> Option<(fs_err::File, u64, String)> {
    use std::io::Read;
    let kept = std::fs::read_to_string(sidecar).ok()?;
    let (from, validator) = kept.split_once('\n')?;
    if validator.trim().is_empty() {
        return None;
    }
    // Another address (a mirror, a new port) may resume it too: If-Range makes a server whose
    // file differs answer in full, and the archive is checked against its hash in the end.
    if from != url {
        tracing::info!("resuming a download begun from {from} at {url}");
    }
    let mut existing = std::fs::File::open(dest).ok()?;
    // Exactly `cap` may be complete (a 416 says so); more cannot be right.
    if existing.metadata().ok()?.len() > cap {
        return None;
    }
    let mut done = 0u64;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = existing.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        hasher.update(bytes::Bytes::copy_from_slice(&buf[..n]));
        done += n as u64;
    }
    if done == 0 {
        return None;
    }
    let file = fs_err::OpenOptions::new().append(true).open(dest).ok()?;
    Some((file, done, validator.trim().to_owned()))
}

/// Keeps (or, when the server gave none, drops) the URL and validator beside the partial
/// download.
fn remember_validator(sidecar: &Path, url: &str, validator: Option<&str>) {
    match validator {
        Some(v) => {
            let kept = format!("{url}\n{v}");
            if std::fs::read_to_string(sidecar).ok().as_deref() != Some(&kept)
                && let Err(e) = std::fs::write(sidecar, kept)
            {
                tracing::debug!("cannot keep the download validator: {e}");
            }
        }
        None => {
            let _ = std::fs::remove_file(sidecar);
        }
    }
}

/// `Content-Range: bytes <start>-<end>/<total>` (or `bytes */<total>` on a 416).
struct ContentRange {
    start: Option<u64>,
    total: Option<u64>,
}

fn content_range(resp: &reqwest::Response) -> Option<ContentRange> {
    let v = resp.headers().get(CONTENT_RANGE)?.to_str().ok()?;
    let (range, total) = v.strip_prefix("bytes ")?.split_once('/')?;
    let start = match range.trim() {
        "*" => None,
        r => Some(r.split('-').next()?.trim().parse().ok()?),
    };
    Some(ContentRange { start, total: total.trim().parse().ok() })
}

fn check_status(url: &str, resp: &reqwest::Response) -> Result<(), ErrorKind> {
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let retry_after = resp
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        return Err(ErrorKind::Busy { url: url.to_owned(), status: status.as_u16(), retry_after });
    }
    Err(ErrorKind::Http {
        url: url.to_owned(),
        status: status.as_u16(),
        why: status.canonical_reason().unwrap_or("").to_owned(),
    })
}

fn net_err(url: &str, e: reqwest::Error) -> ErrorKind {
    if e.is_timeout() {
        return ErrorKind::Stalled { url: url.to_owned(), why: "timed out".into() };
    }
    // The chain says why (connection refused, reset, TLS...); reqwest's top line only repeats
    // the URL ("error sending request for url (...)") and hyper's "client error (Connect)" says
    // nothing, so both are left out when there is more.
    let mut parts = vec![e.to_string()];
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        parts.push(s.to_string());
        src = s.source();
    }
    if parts.len() > 1 {
        parts.remove(0);
        parts.retain(|p| !p.starts_with("client error ("));
    }
    let why = if parts.is_empty() { e.to_string() } else { parts.join(": ") };
    ErrorKind::Network { url: url.to_owned(), why }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_system_roots_are_read_only_for_tls() {
        let http = Http::new(NetConfig::default()).unwrap();
        assert!(http.verifier.built.get().is_none(), "building the client read the roots");
        http.warm_tls();
        let deadline = Instant::now() + Duration::from_secs(10);
        while http.verifier.built.get().is_none() {
            assert!(Instant::now() < deadline, "the roots were not read on the spare thread");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn plain_http_only_to_loopback_by_address_or_exact_name() {
        let allowed = |u: &str| url_allowed(&reqwest::Url::parse(u).unwrap());
        for ok in [
            "https://broth.example/butler",
            "http://127.0.0.1:8080/x",
            "http://127.9.9.9/x",
            "http://[::1]:1/x",
            "http://localhost/x",
        ] {
            assert!(allowed(ok), "{ok}");
        }
        for refused in [
            "http://localhost.example.com/x",
            "http://127.0.0.1.nip.io/x",
            "http://10.0.0.1/x",
            "http://[::ffff:8.8.8.8]/x",
            "ftp://127.0.0.1/x",
            "file:///etc/passwd",
        ] {
            assert!(!allowed(refused), "{refused}");
        }
    }
}
