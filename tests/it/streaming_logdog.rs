//! The `logdog` output against a strict loopback stand-in for the Coordinator and Pub/Sub that
//! decodes every frame as the Collector would, including a period where both return errors.
//! `logdog_faults.rs` uses the same stand-in (as the Coordinator before the real Pub/Sub
//! emulator, and with endpoints that stall or refuse).

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use prost::Message;

use crate::util::{TestHome, stderr};

#[allow(clippy::all, dead_code, unreachable_pub)] // generated code
pub(crate) mod logpb {
    include!(concat!(env!("OUT_DIR"), "/logpb.rs"));
}

#[allow(clippy::all, dead_code, unreachable_pub)] // generated code
pub(crate) mod logdog {
    include!(concat!(env!("OUT_DIR"), "/logdog.rs"));
}

pub(crate) const SECRET: [u8; 36] = [7; 36];

#[derive(Default)]
pub(crate) struct StreamSeen {
    pub desc: Option<logpb::LogStreamDescriptor>,
    pub entries: BTreeMap<u64, logpb::LogEntry>,
    pub terminal_index: Option<u64>,
}

#[derive(Default)]
pub(crate) struct State {
    /// Requests to fail before succeeding (the outage).
    pub register_failures: u32,
    pub publish_failures: u32,
    /// Publish requests to refuse with 403 (a permanent error) before accepting.
    pub publish_rejections: u32,
    /// Publish requests to hold unanswered for `stall` before accepting them.
    pub publish_stalls: u32,
    pub stall: std::time::Duration,
    /// RegisterPrefix is refused with PERMISSION_DENIED.
    pub register_denied: bool,
    pub nonces: Vec<Vec<u8>>,
    /// Registered prefixes.
    pub registered: HashMap<String, logdog::RegisterPrefixRequest>,
    pub register: Option<logdog::RegisterPrefixRequest>,
    pub publishes: u32,
    /// By (prefix, name).
    pub streams: HashMap<(String, String), StreamSeen>,
    pub violations: Vec<String>,
    /// When set: the service account's public key; every call must carry the issued token.
    pub service_account: Option<(String, Vec<u8>)>,
    pub tokens_issued: u32,
    /// The token's `expires_in`; 3600 when unset.
    pub expires_in: Option<u64>,
}

const ISSUED_TOKEN: &str = "ya29.stand-in-token";

/// Checks a service-account JWT as Google's token endpoint would.
fn check_jwt(st: &State, assertion: &str, token_uri: &str) -> Result<(), String> {
    use base64::Engine;
    let (email, public_key) = st.service_account.as_ref().ok_or("no service account configured")?;
    let parts: Vec<&str> = assertion.split('.').collect();
    let [h, c, sig] = parts[..] else { return Err("JWT is not three parts".into()) };
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let sig = b64.decode(sig).map_err(|e| e.to_string())?;
    aws_lc_rs::signature::UnparsedPublicKey::new(
        &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
        public_key,
    )
    .verify(format!("{h}.{c}").as_bytes(), &sig)
    .map_err(|_| "bad JWT signature")?;
    let header: serde_json::Value =
        serde_json::from_slice(&b64.decode(h).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    let claims: serde_json::Value =
        serde_json::from_slice(&b64.decode(c).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    if header["alg"] != "RS256" || claims["iss"] != email.as_str() || claims["aud"] != token_uri {
        return Err(format!("JWT {header} {claims}"));
    }
    let scope = claims["scope"].as_str().unwrap_or("");
    if !scope.contains("https://www.googleapis.com/auth/pubsub")
        || !scope.contains("userinfo.email")
    {
        return Err(format!("scopes {scope}"));
    }
    if claims["exp"].as_u64().unwrap_or(0) <= claims["iat"].as_u64().unwrap_or(u64::MAX) {
        return Err("exp before iat".into());
    }
    Ok(())
}

struct Request {
    method: String,
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

fn read_request(r: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_owned(), parts.next()?.to_owned());
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
    }
    let len: usize = headers.get("content-length")?.parse().ok()?;
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some(Request { method, path, headers, body })
}

fn respond(w: &mut TcpStream, status: &str, headers: &[(&str, &str)], body: &[u8]) {
    let mut head = format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = w.write_all(head.as_bytes());
    let _ = w.write_all(body);
}

fn uvarint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, c) in b.iter().enumerate().take(10) {
        v |= u64::from(c & 0x7f) << (7 * i);
        if c & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 4096
        && n.split('/').all(|s| {
            let b = s.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b.iter().all(|c| c.is_ascii_alphanumeric() || b"._:-".contains(c))
        })
}

/// What the Collector does with one Pub/Sub message; `Err` = it would reject it.
pub(crate) fn collect(st: &mut State, data: &[u8]) -> Result<(), String> {
    let (mlen, used) = uvarint(data).ok_or("bad metadata length")?;
    let rest = &data[used..];
    let meta = logpb::ButlerMetadata::decode(&rest[..mlen as usize])
        .map_err(|e| format!("metadata: {e}"))?;
    if meta.r#type != 1 || meta.proto_version != "1" {
        return Err(format!("metadata {meta:?}"));
    }
    let rest = &rest[mlen as usize..];
    let (blen, used) = uvarint(rest).ok_or("bad bundle length")?;
    if used + blen as usize != rest.len() {
        return Err("trailing bytes after the bundle frame".into());
    }
    let payload = &rest[used..];
    let raw = match meta.compression {
        0 => payload.to_vec(),
        1 => {
            let mut out = Vec::new();
            flate2::read::ZlibDecoder::new(payload)
                .take(10 << 20)
                .read_to_end(&mut out)
                .map_err(|e| format!("zlib: {e}"))?;
            if out.len() < 860 {
                return Err(format!("compressed a {}-byte bundle", out.len()));
            }
            out
        }
        c => return Err(format!("compression {c}")),
    };
    if meta.compression == 0 && raw.len() >= 860 {
        return Err(format!("a {}-byte bundle was not compressed", raw.len()));
    }
    if raw.len() > 5_000_000 + 64 * 1024 {
        return Err(format!("bundle of {} bytes", raw.len()));
    }
    let b = logpb::ButlerLogBundle::decode(&raw[..]).map_err(|e| format!("bundle: {e}"))?;
    let reg = st.registered.get(&b.prefix).ok_or("publish for an unregistered prefix")?;
    if b.project != reg.project || b.prefix != reg.prefix || b.secret[..] != SECRET[..] {
        return Err(format!(
            "stamp: project {:?} prefix {:?} secret {} bytes",
            b.project,
            b.prefix,
            b.secret.len()
        ));
    }
    let prefix = b.prefix.clone();
    let names: Vec<&str> =
        b.entries.iter().map(|e| e.desc.as_ref().map_or("", |d| d.name.as_str())).collect();
    if names.windows(2).any(|w| w[0] >= w[1]) {
        return Err(format!("entries not one per stream sorted by name: {names:?}"));
    }
    for e in b.entries {
        let d = e.desc.ok_or("entry without descriptor")?;
        if !(d.prefix.is_empty() || d.prefix == prefix)
            || !valid_name(&d.name)
            || d.content_type.is_empty()
            || d.timestamp.is_none()
        {
            return Err(format!("bad descriptor {d:?}"));
        }
        if e.logs.is_empty() && !e.terminal {
            continue;
        }
        for w in e.logs.windows(2) {
            if w[1].stream_index != w[0].stream_index + 1 {
                return Err(format!("{}: stream indices not contiguous", d.name));
            }
        }
        let s = st.streams.entry((prefix.clone(), d.name.clone())).or_default();
        if s.desc.as_ref().is_some_and(|old| *old != d) {
            return Err(format!("{}: descriptor changed", d.name));
        }
        s.desc = Some(d.clone());
        for l in e.logs {
            let ok = match &l.content {
                Some(logpb::log_entry::Content::Text(t)) => !t.lines.is_empty(),
                Some(logpb::log_entry::Content::Binary(b)) => !b.data.is_empty(),
                Some(logpb::log_entry::Content::Datagram(_)) => true,
                None => false,
            };
            if !ok || l.time_offset.is_none() {
                return Err(format!("{}: invalid entry {}", d.name, l.stream_index));
            }
            // Redelivery is fine (the same entry again); a different one at the same index is not.
            if let Some(old) = s.entries.get(&l.stream_index)
                && *old != l
            {
                return Err(format!(
                    "{}: entry {} delivered twice with different content",
                    d.name, l.stream_index
                ));
            }
            s.entries.insert(l.stream_index, l);
        }
        if e.terminal {
            s.terminal_index = Some(e.terminal_index);
        }
    }
    Ok(())
}

fn serve_conn(stream: TcpStream, state: Arc<Mutex<State>>) {
    let mut w = stream.try_clone().unwrap();
    let mut r = BufReader::new(stream);
    while let Some(req) = read_request(&mut r) {
        let mut st = state.lock().unwrap();
        if req.method != "POST" {
            st.violations.push(format!("{} {}", req.method, req.path));
            respond(&mut w, "405 Method Not Allowed", &[], b"");
            continue;
        }
        if req.path == "/token" {
            let form = String::from_utf8_lossy(&req.body).into_owned();
            let assertion =
                form.split('&').find_map(|kv| kv.strip_prefix("assertion=")).unwrap_or("");
            let uri =
                format!("http://{}/token", req.headers.get("host").cloned().unwrap_or_default());
            let grant =
                form.contains("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer");
            match check_jwt(&st, assertion, &uri) {
                Ok(()) if grant => {
                    st.tokens_issued += 1;
                    let life = st.expires_in.unwrap_or(3600);
                    let body = serde_json::json!({ "access_token": ISSUED_TOKEN, "expires_in": life, "token_type": "Bearer" });
                    respond(
                        &mut w,
                        "200 OK",
                        &[("content-type", "application/json")],
                        body.to_string().as_bytes(),
                    );
                }
                r => {
                    st.violations.push(format!("token request: grant {grant}, {r:?}"));
                    respond(&mut w, "400 Bad Request", &[], b"{}");
                }
            }
            continue;
        }
        if st.service_account.is_some()
            && req.headers.get("authorization").map(String::as_str)
                != Some(&format!("Bearer {ISSUED_TOKEN}"))
        {
            st.violations.push(format!(
                "{} without the issued token: {:?}",
                req.path,
                req.headers.get("authorization")
            ));
            respond(&mut w, "401 Unauthorized", &[("x-prpc-grpc-code", "16")], b"unauthenticated");
            continue;
        }
        if req.path == "/prpc/logdog.Registration/RegisterPrefix" {
            if req.headers.get("content-type").map(String::as_str)
                != Some("application/prpc; encoding=binary")
            {
                st.violations.push(format!(
                    "RegisterPrefix content-type {:?}",
                    req.headers.get("content-type")
                ));
            }
            let Ok(msg) = logdog::RegisterPrefixRequest::decode(&req.body[..]) else {
                st.violations.push("undecodable RegisterPrefixRequest".into());
                respond(&mut w, "400 Bad Request", &[("x-prpc-grpc-code", "3")], b"bad request");
                continue;
            };
            st.nonces.push(msg.op_nonce.to_vec());
            if st.register_denied {
                respond(
                    &mut w,
                    "403 Forbidden",
                    &[("x-prpc-grpc-code", "7")],
                    b"the caller may not register prefixes in this project",
                );
                continue;
            }
            if st.register_failures > 0 {
                st.register_failures -= 1;
                respond(
                    &mut w,
                    "503 Service Unavailable",
                    &[("x-prpc-grpc-code", "14")],
                    b"try again",
                );
                continue;
            }
            st.registered.insert(msg.prefix.clone(), msg.clone());
            st.register = Some(msg);
            let resp = logdog::RegisterPrefixResponse {
                secret: SECRET.to_vec().into(),
                log_bundle_topic: "projects/luci-logdog/topics/logs".into(),
            };
            respond(
                &mut w,
                "200 OK",
                &[("x-prpc-grpc-code", "0"), ("content-type", "application/prpc; encoding=binary")],
                &resp.encode_to_vec(),
            );
        } else if req.path == "/v1/projects/luci-logdog/topics/logs:publish" {
            st.publishes += 1;
            if st.publish_stalls > 0 {
                st.publish_stalls -= 1;
                let stall = st.stall;
                drop(st);
                // The client gives up first; what it sent is not collected.
                std::thread::sleep(stall);
                respond(&mut w, "504 Gateway Timeout", &[], b"");
                continue;
            }
            if st.publish_rejections > 0 {
                st.publish_rejections -= 1;
                respond(&mut w, "403 Forbidden", &[], b"{\"error\":\"permission denied\"}");
                continue;
            }
            if st.publish_failures > 0 {
                st.publish_failures -= 1;
                respond(&mut w, "503 Service Unavailable", &[], b"{\"error\":\"outage\"}");
                continue;
            }
            let v: serde_json::Value = match serde_json::from_slice(&req.body) {
                Ok(v) => v,
                Err(e) => {
                    st.violations.push(format!("publish body: {e}"));
                    respond(&mut w, "400 Bad Request", &[], b"");
                    continue;
                }
            };
            use base64::Engine;
            let mut ids = Vec::new();
            for m in v["messages"].as_array().cloned().unwrap_or_default() {
                let data = base64::engine::general_purpose::STANDARD
                    .decode(m["data"].as_str().unwrap_or(""))
                    .unwrap_or_default();
                if let Err(e) = collect(&mut st, &data) {
                    st.violations.push(e);
                }
                ids.push(ids.len().to_string());
            }
            respond(
                &mut w,
                "200 OK",
                &[("content-type", "application/json")],
                serde_json::json!({ "messageIds": ids }).to_string().as_bytes(),
            );
        } else {
            st.violations.push(format!("unexpected path {}", req.path));
            respond(&mut w, "404 Not Found", &[], b"");
        }
    }
}

pub(crate) fn stand_in(state: Arc<Mutex<State>>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let st = Arc::clone(&state);
            std::thread::spawn(move || serve_conn(conn, st));
        }
    });
    port
}

pub(crate) fn text_of(s: &StreamSeen) -> Vec<u8> {
    let mut out = Vec::new();
    for e in s.entries.values() {
        if let Some(logpb::log_entry::Content::Text(t)) = &e.content {
            for l in &t.lines {
                out.extend_from_slice(&l.value);
                out.extend_from_slice(l.delimiter.as_bytes());
            }
        }
    }
    out
}

#[test]
fn logdog_output_registers_publishes_and_survives_an_outage() {
    let state = Arc::new(Mutex::new(State {
        register_failures: 2,
        publish_failures: 6,
        ..State::default()
    }));
    let port = stand_in(Arc::clone(&state));
    let home = TestHome::new();
    let host = format!("localhost:{port}");
    let script = "echo \"host=$LOGDOG_COORDINATOR_HOST\"; i=0; while [ $i -lt 3000 ]; do echo \"line $i of the log\"; i=$((i+1)); done; printf 'no newline'";
    let out = home
        .butler()
        .env("PUBSUB_EMULATOR_HOST", format!("127.0.0.1:{port}"))
        .args([
            "-project", "proj", "-prefix", "pre/fix", "-coordinator-host", &host,
            "-output", "logdog,retry-initial=10ms,retry-max=40ms,retry-attempts=2,drain=10s,prefix-expiration=1h",
            "-output-max-buffer-age", "20ms",
            "run", "-stdout", "name=out", "--", "sh", "-c", script,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let st = state.lock().unwrap();
    assert!(st.violations.is_empty(), "the Collector would reject: {:?}", st.violations);
    assert_eq!(st.nonces.len(), 3, "two failed registrations, then success");
    assert!(
        st.nonces.iter().all(|n| n.len() == 32 && *n == st.nonces[0]),
        "the op nonce is reused on retries"
    );
    let reg = st.register.as_ref().unwrap();
    assert_eq!((reg.project.as_str(), reg.prefix.as_str()), ("proj", "pre/fix"));
    assert_eq!(reg.expiration.as_ref().map(|d| d.seconds), Some(3600));
    assert!(st.publishes > 6, "published after the outage");
    let s = st.streams.get(&("pre/fix".to_owned(), "out".to_owned())).expect("stream arrived");
    let mut want = format!("host={host}\n").into_bytes();
    for i in 0..3000 {
        want.extend_from_slice(format!("line {i} of the log\n").as_bytes());
    }
    want.extend_from_slice(b"no newline");
    assert_eq!(text_of(s), want, "every byte arrived, none twice");
    let last = *s.entries.keys().last().unwrap();
    assert_eq!(s.entries.len() as u64, last + 1, "no gaps");
    assert_eq!(s.terminal_index, Some(last));
    let spool = home.path().join("spool/logdog");
    assert_eq!(std::fs::read_dir(&spool).unwrap().count(), 0, "the spool drained");
    assert!(stderr(&out).contains("spooled"), "the outage spooled bundles: {}", stderr(&out));
}

pub(crate) fn logdog_run(
    home: &TestHome,
    port: u16,
    prefix: &str,
    options: &str,
    script: &str,
) -> std::process::Output {
    home.butler()
        .env("PUBSUB_EMULATOR_HOST", format!("127.0.0.1:{port}"))
        .args([
            "-project",
            "proj",
            "-prefix",
            prefix,
            "-coordinator-host",
            &format!("localhost:{port}"),
            "-output",
            &format!("logdog,retry-initial=10ms,retry-max=20ms,{options}"),
            "run",
            "-stdout",
            "name=out",
            "--",
            "sh",
            "-c",
            script,
        ])
        .output()
        .unwrap()
}

#[test]
fn bundles_left_spooled_by_a_run_are_delivered_by_the_next_one() {
    let state = Arc::new(Mutex::new(State { publish_failures: u32::MAX, ..State::default() }));
    let port = stand_in(Arc::clone(&state));
    let home = TestHome::new();
    let script = "i=0; while [ $i -lt 500 ]; do echo \"first run $i\"; i=$((i+1)); done";
    let out = logdog_run(&home, port, "first/run", "retry-attempts=1,drain=100ms", script);
    assert_eq!(out.status.code(), Some(250), "delivery failure is loud: {}", stderr(&out));
    assert!(stderr(&out).contains("stay spooled"), "{}", stderr(&out));
    let spool = home.path().join("spool/logdog");
    assert!(std::fs::read_dir(&spool).unwrap().count() > 0, "bundles kept on disk");
    assert!(state.lock().unwrap().streams.is_empty());
    // Log text and the prefix secret: the owner's alone. A spooled bundle names its topic, never
    // a URL to send a token to.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&spool), 0o700);
    for f in std::fs::read_dir(&spool).unwrap() {
        let f = f.unwrap().path();
        assert_eq!(mode(&f), 0o600, "{}", f.display());
        let content = std::fs::read(&f).unwrap();
        assert!(content.starts_with(b"projects/"), "{}", f.display());
    }
    // A planted file naming a URL sends nothing there.
    let trap = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    trap.set_nonblocking(true).unwrap();
    let planted = format!("http://{}/steal\nplanted", trap.local_addr().unwrap());
    std::fs::write(spool.join("00000000000000000000-0000000000.msg"), planted).unwrap();

    state.lock().unwrap().publish_failures = 0;
    let out = logdog_run(&home, port, "second/run", "retry-attempts=2,drain=5s", "echo second");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let st = state.lock().unwrap();
    assert!(st.violations.is_empty(), "{:?}", st.violations);
    let first = st
        .streams
        .get(&("first/run".to_owned(), "out".to_owned()))
        .expect("the first run's stream arrived");
    let want: String = (0..500).map(|i| format!("first run {i}\n")).collect();
    assert_eq!(text_of(first), want.as_bytes());
    assert_eq!(first.terminal_index, Some(first.entries.len() as u64 - 1));
    let second = st.streams.get(&("second/run".to_owned(), "out".to_owned())).unwrap();
    assert_eq!(text_of(second), b"second\n");
    let left: Vec<_> = std::fs::read_dir(&spool).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, ["00000000000000000000-0000000000.msg"], "only the planted file is left");
    assert!(trap.accept().is_err(), "the planted URL was called");
}

#[test]
fn logdog_output_authenticates_with_a_service_account_key() {
    service_account_run(None);
}

#[test]
fn a_hostile_token_lifetime_is_clamped_not_a_crash() {
    service_account_run(Some(u64::MAX));
}

/// A run through the `logdog` output with a service-account key, the stand-in issuing tokens
/// that live `expires_in` seconds.
fn service_account_run(expires_in: Option<u64>) {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::KeyPair;
    use base64::Engine;
    let key = aws_lc_rs::signature::RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let pkcs8 = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&key).unwrap();
    let email = "butler@proj.iam.gserviceaccount.com";
    let state = Arc::new(Mutex::new(State {
        service_account: Some((email.to_owned(), key.public_key().as_ref().to_vec())),
        expires_in,
        ..State::default()
    }));
    let port = stand_in(Arc::clone(&state));
    let home = TestHome::new();
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref())
    );
    let sa = home.path().join("sa.json");
    let json = serde_json::json!({
        "type": "service_account",
        "client_email": email,
        "private_key": pem,
        "token_uri": format!("http://127.0.0.1:{port}/token"),
    });
    std::fs::write(&sa, json.to_string()).unwrap();
    let out = home
        .butler()
        .env("PUBSUB_EMULATOR_HOST", format!("127.0.0.1:{port}"))
        .args([
            "-project",
            "proj",
            "-prefix",
            "auth/run",
            "-coordinator-host",
            &format!("localhost:{port}"),
            "-service-account-json",
            sa.to_str().unwrap(),
            "-output",
            "logdog",
            "run",
            "-stdout",
            "name=out",
            "--",
            "sh",
            "-c",
            "echo authorized",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let st = state.lock().unwrap();
    assert!(st.violations.is_empty(), "{:?}", st.violations);
    assert_eq!(st.tokens_issued, 1, "the token is cached");
    let s = st.streams.get(&("auth/run".to_owned(), "out".to_owned())).unwrap();
    assert_eq!(text_of(s), b"authorized\n");
}

#[test]
fn logdog_output_needs_a_project_and_a_host() {
    let home = TestHome::new();
    let out = home.run(&[
        "-output",
        "logdog",
        "-coordinator-host",
        "localhost:1",
        "stream",
        "--source",
        "/dev/null",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let out = home.run(&["-project", "p", "-output", "logdog", "stream", "--source", "/dev/null"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let bad = home.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"type":"service_account","client_email":"x","private_key":"not a key"}"#,
    )
    .unwrap();
    let out = home.run(&[
        "-project",
        "p",
        "-output",
        "logdog",
        "-coordinator-host",
        "localhost:1",
        "-service-account-json",
        bad.to_str().unwrap(),
        "stream",
        "--source",
        "/dev/null",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("private_key"), "{}", stderr(&out));
}
