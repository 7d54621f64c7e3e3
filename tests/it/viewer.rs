//! `butler logs web`: the real binary serving the viewer on loopback, driven over real HTTP: the
//! token and Host checks, the list and pages read from the real store, live following by
//! server-sent events, the limits, and the command line around it. (The page itself is driven in
//! a real browser by `tests/browser/`.)

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::streaming::{Serve, handshake, signal, wait_exit};
use crate::util::{TestHome, stderr, stdout};

/// A running `butler logs web`, stopped on drop.
struct Web {
    child: Child,
    url: String,
    /// `127.0.0.1:PORT`
    host: String,
    /// `/<token>/`
    base: String,
}

impl Web {
    fn start(home: &TestHome, extra: &[&str]) -> Web {
        let mut child = home
            .butler()
            .args(["logs", "web", "--poll-interval", "20ms"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let url = line.trim().to_owned();
        let rest = url.strip_prefix("http://").unwrap_or_else(|| panic!("not a URL: {url:?}"));
        let (host, path) = rest.split_once('/').unwrap();
        Web { child, url: url.clone(), host: host.to_owned(), base: format!("/{path}") }
    }

    fn get(&self, path: &str) -> Reply {
        http(&self.host, &format!("GET {path} HTTP/1.1\r\nHost: {}\r\n", self.host))
    }

    fn api(&self, rel: &str) -> Reply {
        self.get(&format!("{}{rel}", self.base))
    }

    fn json(&self, rel: &str) -> Value {
        let r = self.api(rel);
        assert_eq!(r.status, 200, "{rel}: {}", r.body);
        serde_json::from_str(&r.body).unwrap()
    }

    /// Opens an event stream and returns the socket after the response head.
    fn events(&self, rel: &str) -> Events {
        let mut s = TcpStream::connect(&self.host).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(s, "GET {}{rel} HTTP/1.1\r\nHost: {}\r\n\r\n", self.base, self.host).unwrap();
        Events { s, seen: String::new() }
    }
}

impl Drop for Web {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Reply {
    status: u16,
    head: String,
    body: String,
}

fn http(host: &str, request_head: &str) -> Reply {
    let mut s = TcpStream::connect(host).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(format!("{request_head}Connection: close\r\n\r\n").as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Reply { status, head: head.to_ascii_lowercase(), body: body.to_owned() }
}

/// The status of a response whose body may never end (an event stream).
fn status_only(web: &Web, rel: &str) -> u16 {
    let mut e = web.events(rel);
    let line = e.until("\r\n");
    line.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}

/// A server-sent-event response, read as raw text (each event arrives as one chunk, so its
/// text is contiguous even inside the chunked framing).
struct Events {
    s: TcpStream,
    seen: String,
}

impl Events {
    /// Reads until `needle` has been seen (after what earlier calls consumed), within 5 s.
    fn until(&mut self, needle: &str) -> String {
        let start = Instant::now();
        let mut buf = [0u8; 65536];
        loop {
            if let Some(i) = self.seen.find(needle) {
                let upto = self.seen[..i + needle.len()].to_owned();
                self.seen.drain(..i + needle.len());
                return upto;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "never saw {needle:?} in {:?}",
                self.seen
            );
            match self.s.read(&mut buf) {
                Ok(0) => panic!("event stream closed before {needle:?}: {:?}", self.seen),
                Ok(n) => self.seen.push_str(&String::from_utf8_lossy(&buf[..n])),
                Err(e) => panic!("reading events ({e}) before {needle:?}: {:?}", self.seen),
            }
        }
    }
}

fn run_child(home: &TestHome, prefix: &str, script: &str) {
    let out = home
        .butler()
        .args(["--prefix", prefix, "run", "--stdout", "name=out", "--", "sh", "-c", script])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn the_page_is_served_only_with_its_token_and_to_its_own_host() {
    let home = TestHome::new();
    let web = Web::start(&home, &[]);
    assert!(web.url.starts_with("http://127.0.0.1:"), "{}", web.url);
    let token = web.base.trim_matches('/');
    assert!(token.len() >= 32 && token.chars().all(|c| c.is_ascii_hexdigit()), "{token}");

    let page = web.get(&web.base);
    assert_eq!(page.status, 200);
    assert!(page.head.contains("content-type: text/html"), "{}", page.head);
    assert!(page.body.contains("<title>butler logs</title>"));
    assert!(page.head.contains("content-security-policy: default-src 'none'"), "{}", page.head);
    assert!(page.head.contains("x-frame-options: deny"));
    let js = web.api("app.js");
    assert_eq!(js.status, 200);
    assert!(js.head.contains("content-type: text/javascript"));
    assert_eq!(web.api("style.css").status, 200);

    let mut wrong = token.to_owned();
    wrong.replace_range(..1, if token.starts_with('0') { "1" } else { "0" });
    for path in [
        "/",
        "/api/streams",
        &format!("/{wrong}/"),
        &format!("/{wrong}/api/streams"),
        &format!("/{}/", &token[1..]),
    ] {
        let r = web.get(path);
        assert_eq!(r.status, 403, "{path}");
        assert!(r.body.contains("access token"), "{path}: {}", r.body);
    }
    // Another Host (DNS rebinding): refused even with the token.
    let r = http(&web.host, &format!("GET {} HTTP/1.1\r\nHost: evil.example:80\r\n", web.base));
    assert_eq!(r.status, 403);
    let r = http(&web.host, &format!("GET {} HTTP/1.1\r\n", web.base));
    assert_eq!(r.status, 403, "no Host at all");
    let port = web.host.rsplit(':').next().unwrap();
    let r = http(&web.host, &format!("GET {} HTTP/1.1\r\nHost: localhost:{port}\r\n", web.base));
    assert_eq!(r.status, 200, "localhost names this viewer too");
    let r = http(
        &web.host,
        &format!(
            "POST {}api/streams HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\n",
            web.base, web.host
        ),
    );
    assert_eq!(r.status, 405);
    let r = web.get(web.base.trim_end_matches('/'));
    assert_eq!(r.status, 308);
    assert!(r.head.contains(&format!("location: {}", web.base)), "{}", r.head);
    assert_eq!(web.api("nothing-here").status, 404);
}

#[test]
fn it_lists_streams_newest_first_and_reads_them_in_bounded_pages() {
    let home = TestHome::new();
    run_child(&home, "old/run", "echo old");
    run_child(&home, "new/run", "i=0; while [ $i -lt 600 ]; do echo \"line $i\"; i=$((i+1)); done");
    let serve = Serve::start(&home, &["--prefix", "kinds"]);
    serve.send(r#"{"name":"bin","type":"binary"}"#, &[0u8, 1, 2, 0xff]);
    serve.send(r#"{"name":"dg","type":"datagram"}"#, b"\x05hello\x02\xff\x00");
    serve.stop();
    let web = Web::start(&home, &[]);

    let list = web.json("api/streams");
    assert_eq!(list["project"], "local");
    let paths: Vec<&str> =
        list["streams"].as_array().unwrap().iter().map(|s| s["path"].as_str().unwrap()).collect();
    // `butler run` stores stderr too (by default); the stream server's two may open in any order.
    assert_eq!(paths.len(), 6, "{paths:?}");
    let at =
        |p: &str| paths.iter().position(|x| *x == p).unwrap_or_else(|| panic!("{p} in {paths:?}"));
    assert!(
        at("kinds/+/dg").max(at("kinds/+/bin")) < at("new/run/+/out"),
        "newest first: {paths:?}"
    );
    assert!(at("new/run/+/out") < at("old/run/+/out"), "newest first: {paths:?}");
    let old = &list["streams"][at("old/run/+/out")];
    assert_eq!(
        (old["type"].as_str(), old["open"].as_bool(), old["bytes"].as_u64()),
        (Some("text"), Some(false), Some(4))
    );
    let only_new = web.json("api/streams?prefix=new%2Frun%2F%2B%2Fo");
    assert_eq!(only_new["streams"].as_array().unwrap().len(), 1);

    // The text of a stream, by pages; together they are exactly the stream.
    let cat = home.run(&["logs", "cat", "new/run/+/out"]).stdout;
    let tail = web.json("api/entries?path=new%2Frun%2F%2B%2Fout&limit=1");
    let mut first = tail["first"].as_u64().unwrap();
    assert_eq!(tail["next"], tail["stream"]["entries"]);
    assert_eq!(tail["terminal"], true);
    let mut text = tail["entries"][0]["text"].as_str().unwrap().to_owned();
    while first > 0 {
        let page =
            web.json(&format!("api/entries?path=new%2Frun%2F%2B%2Fout&before={first}&limit=1"));
        assert_eq!(page["next"], first);
        first = page["first"].as_u64().unwrap();
        text.insert_str(0, page["entries"][0]["text"].as_str().unwrap());
    }
    assert_eq!(text.as_bytes(), &cat[..]);
    let fwd = web.json("api/entries?path=new%2Frun%2F%2B%2Fout&from=0&limit=100000");
    assert!(fwd["entries"].as_array().unwrap().len() <= 1000, "limit clamped");

    let bin = web.json("api/entries?path=kinds%2F%2B%2Fbin");
    assert_eq!(bin["entries"][0]["hex"], "000102ff");
    assert_eq!(bin["entries"][0]["size"], 4);
    let dg = web.json("api/entries?path=kinds%2F%2B%2Fdg");
    let dgs = dg["entries"].as_array().unwrap();
    assert_eq!((dgs[0]["text"].as_str(), dgs[1]["hex"].as_str()), (Some("hello"), Some("ff00")));

    for (rel, status) in [
        ("api/entries", 400),
        ("api/entries?path=nope", 400),
        ("api/entries?path=a%2F%2B%2Fb&from=x", 400),
        ("api/entries?path=a%2F%2B%2Fb&from=1&before=2", 400),
        ("api/entries?path=a%2F%2B%2Fb&from=-1", 400),
        ("api/entries?path=no%2F%2B%2Fsuch", 404),
        ("api/follow?path=nope", 400),
    ] {
        assert_eq!(web.api(rel).status, status, "{rel}");
    }
    let long = "a".repeat(9000);
    assert_eq!(web.api(&format!("api/entries?path={long}%2F%2B%2Fx")).status, 400);
}

#[test]
fn it_follows_a_live_stream_and_shows_new_streams_without_a_reload() {
    let home = TestHome::new();
    let web = Web::start(&home, &[]);
    let mut streams = web.events("api/streams/live");
    streams.until("event: streams");
    streams.until(r#""reset":true,"streams":[]"#);

    let serve = Serve::start(&home, &["--prefix", "live/one"]);
    let mut s = serve.connect();
    s.write_all(&handshake(r#"{"name":"game"}"#)).unwrap();
    // The new stream appears in the list by itself, open.
    let ev = streams.until(r#""path":"live/one/+/game""#);
    assert!(ev.contains(r#""reset":false"#), "{ev}");
    streams.until(r#""open":true}"#);

    let mut follow = web.events("api/follow?path=live%2Fone%2F%2B%2Fgame&from=0");
    assert!(
        follow.until("\r\n\r\n").to_ascii_lowercase().contains("content-type: text/event-stream")
    );
    s.write_all(b"hello\n").unwrap();
    let ev = follow.until(r#""text":"hello\n""#);
    assert!(ev.contains("event: entries"), "{ev}");
    s.write_all(b"second line\n").unwrap();
    follow.until(r#""text":"second line\n""#);
    drop(s);
    let end = follow.until("event: end");
    assert!(!end.contains("hello"), "nothing is sent twice: {end}");
    follow.until(r#""terminal":true"#);
    streams.until(r#""open":false}"#);
    serve.stop();

    // A browser that reconnects says where it was (Last-Event-ID) and gets only what follows.
    let mut again = TcpStream::connect(&web.host).unwrap();
    again.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(again, "GET {}api/follow?path=live%2Fone%2F%2B%2Fgame&from=0 HTTP/1.1\r\nHost: {}\r\nLast-Event-ID: 1\r\nConnection: close\r\n\r\n", web.base, web.host).unwrap();
    let mut raw = String::new();
    again.read_to_string(&mut raw).unwrap();
    assert!(
        !raw.contains("hello") && raw.contains("second line") && raw.contains("event: end"),
        "{raw}"
    );
}

#[test]
fn a_followed_stream_that_does_not_exist_yet_is_waited_for() {
    let home = TestHome::new();
    let web = Web::start(&home, &[]);
    let mut follow = web.events("api/follow?path=later%2F%2B%2Fs&from=0");
    follow.until("\r\n\r\n");
    let serve = Serve::start(&home, &["--prefix", "later"]);
    serve.send(r#"{"name":"s"}"#, b"at last\n");
    follow.until(r#""text":"at last\n""#);
    follow.until("event: end");
    serve.stop();
}

#[test]
fn live_views_are_limited_and_the_viewer_still_stops_cleanly_with_them_open() {
    let home = TestHome::new();
    let mut web = Web::start(&home, &[]);
    let mut open: Vec<Events> = (0..32).map(|_| web.events("api/streams/live")).collect();
    for e in &mut open {
        e.until("event: streams");
    }
    let r = web.api("api/streams/live");
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("too many live views"));
    assert_eq!(web.api("api/streams").status, 200, "plain requests still served");
    drop(open.pop());
    // The freed slot is usable again (the server notices the close at its next event or write).
    let start = Instant::now();
    while status_only(&web, "api/streams/live") == 503 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "a closed live view never freed its slot"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    signal(&web.child, "TERM");
    let status = wait_exit(&mut web.child, Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
}

#[test]
fn the_command_line_refuses_other_addresses_and_reports_in_json_and_opens_a_browser() {
    let home = TestHome::new();
    for (addr, says) in [
        ("0.0.0.0:0", "loopback only"),
        ("192.0.2.1:80", "loopback only"),
        ("localhost", "is not IP:PORT"),
        ("nope:1", "is not IP:PORT"),
    ] {
        let out = home.run(&["logs", "web", "--address", addr]);
        assert_eq!(out.status.code(), Some(2), "{addr}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{addr}: {}", stderr(&out));
        assert!(stdout(&out).is_empty());
    }
    // A port that is taken: a runtime error naming it.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = home.run(&["logs", "web", "--address", &addr]);
    assert_eq!(out.status.code(), Some(250), "{}", stderr(&out));
    assert!(stderr(&out).contains(&format!("cannot listen on {addr}")), "{}", stderr(&out));

    let opened = home.path().join("opened-url");
    let browser = home.path().join("browser.sh");
    std::fs::write(
        &browser,
        format!(
            "#!/bin/sh\nprintf %s \"$1\" > {}.tmp && mv {}.tmp {}\n",
            opened.display(),
            opened.display(),
            opened.display()
        ),
    )
    .unwrap();
    std::os::unix::fs::PermissionsExt::set_mode(
        &mut std::fs::metadata(&browser).unwrap().permissions(),
        0o755,
    );
    std::fs::set_permissions(&browser, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .unwrap();
    let mut child = home
        .butler()
        .args(["--json", "logs", "web", "--open", "--address", "[::1]:0"])
        .env("BROWSER", &browser)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    assert_eq!(v["type"], "result");
    let url = v["value"]["url"].as_str().unwrap().to_owned();
    assert!(url.starts_with("http://[::1]:"), "{url}");
    crate::streaming::wait_for_file(&opened);
    assert_eq!(std::fs::read_to_string(&opened).unwrap(), url, "--open hands the browser the URL");
    signal(&child, "INT");
    assert_eq!(wait_exit(&mut child, Duration::from_secs(10)).code(), Some(0));
}

/// A stream whose writer is killed ends in the live view as cut short, not left open forever.
#[test]
fn a_stream_whose_writer_was_killed_ends_as_cut_short() {
    let home = TestHome::new();
    let web = Web::start(&home, &[]);
    let mut streams = web.events("api/streams/live");
    streams.until("event: streams");
    let mut serve = Serve::start(&home, &["--prefix", "killed"]);
    let mut s = serve.connect();
    s.write_all(&handshake(r#"{"name":"game"}"#)).unwrap();
    s.write_all(b"hello\n").unwrap();
    let mut follow = web.events("api/follow?path=killed%2F%2B%2Fgame&from=0");
    follow.until(r#""text":"hello\n""#);
    streams.until(r#""abandoned":false,"open":true}"#);
    serve.child.kill().unwrap();
    serve.child.wait().unwrap();
    let end = follow.until("event: end");
    assert!(!end.contains("hello"), "nothing is sent twice: {end}");
    follow.until(r#""terminal":false,"abandoned":true"#);
    streams.until(r#""abandoned":true,"open":false}"#);
}
