//! `Streams.List` and `Streams.Read` page: a limit (hostile ones included) and a cursor, and a
//! reply whose size stays bounded whatever the store holds.

use std::io::{BufRead, Write};
use std::process::Stdio;

use serde_json::{Value, json};

use crate::daemon::error_code;
use crate::util::{DaemonProc, RpcClient, TestHome};

/// Stores one text stream through the real `butler stream`, which also creates the database.
fn stream_through_butler(home: &TestHome, prefix: &str, data: &[u8]) {
    let mut cmd = home.butler();
    cmd.args(["--prefix", prefix, "stream", "--stream", "name=out"]).stdin(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child.stdin.take().unwrap().write_all(data).unwrap();
    assert!(child.wait().unwrap().success());
}

/// Adds `n` streams under `<prefix>/<i>/+/out` straight into the store's table, each with
/// `tag_bytes` of tags: thousands of streams without thousands of processes.
fn add_rows(home: &TestHome, prefix: &str, n: usize, tag_bytes: usize) {
    let conn = rusqlite::Connection::open(home.path().join("butler.db")).unwrap();
    let tags = json!({"big": "t".repeat(tag_bytes)}).to_string();
    let tx = conn.unchecked_transaction().unwrap();
    for i in 0..n {
        tx.execute(
            "INSERT INTO log_streams (project, prefix, name, stream_type, content_type, tags, timestamp, created_at)
             VALUES ('local', ?1, 'out', 'text', 'text/plain', ?2, '2026-01-01T00:00:00Z', 0)",
            rusqlite::params![format!("{prefix}/{i}"), tags],
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

/// The raw reply line (to measure it) and its parsed form.
fn raw_request(c: &mut RpcClient, id: u64, method: &str, params: Value) -> (usize, Value) {
    c.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
    let mut line = String::new();
    c.reader.read_line(&mut line).unwrap();
    (line.len(), serde_json::from_str(&line).unwrap())
}

/// Every path under `prefix`, page after page of `limit`; checks each page's size.
fn all_pages(c: &mut RpcClient, prefix: &str, limit: Option<u64>) -> (Vec<String>, usize) {
    let (mut paths, mut pages, mut cursor) = (Vec::new(), 0, None::<String>);
    loop {
        let mut params = json!({"prefix": prefix});
        if let Some(l) = limit {
            params["limit"] = json!(l);
        }
        if let Some(c) = &cursor {
            params["cursor"] = json!(c);
        }
        let (len, r) = raw_request(c, pages as u64, "Streams.List", params);
        assert!(len < 2 << 20, "a {len}-byte Streams.List reply");
        pages += 1;
        let streams = r["result"]["streams"].as_array().unwrap_or_else(|| panic!("{r}"));
        assert!(streams.len() <= limit.unwrap_or(1000) as usize);
        paths.extend(streams.iter().map(|s| s["path"].as_str().unwrap().to_owned()));
        match r["result"]["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return (paths, pages),
        }
    }
}

#[test]
fn streams_list_pages_with_a_limit_and_a_cursor() {
    let home = TestHome::new();
    stream_through_butler(&home, "first", b"x\n");
    add_rows(&home, "bulk", 2499, 0);
    let d = DaemonProc::start(&home, &["--keep-alive"]);
    let mut c = d.client();

    // No limit: at most 1000 a page, in store order, each stream once.
    let (paths, pages) = all_pages(&mut c, "", None);
    assert_eq!(paths.len(), 2500);
    assert_eq!(pages, 3);
    assert_eq!(paths[0], "first/+/out");
    let unique: std::collections::HashSet<&String> = paths.iter().collect();
    assert_eq!(unique.len(), 2500);

    // With a prefix and a small limit.
    let (paths, pages) = all_pages(&mut c, "bulk/1", Some(100));
    // bulk/1, bulk/10..19, bulk/100..199, bulk/1000..1999
    assert_eq!(paths.len(), 1 + 10 + 100 + 1000);
    assert_eq!(pages, 12);
    assert!(paths.iter().all(|p| p.starts_with("bulk/1")));

    // Hostile limits are clamped or refused, never obeyed.
    let r = c.request(json!(1), "Streams.List", json!({"limit": 0}));
    assert_eq!(r["result"]["streams"].as_array().unwrap().len(), 1, "{r}");
    let r = c.request(json!(2), "Streams.List", json!({"limit": u64::MAX}));
    assert_eq!(r["result"]["streams"].as_array().unwrap().len(), 1000);
    for (limit, field) in [(json!(-1), "limit"), (json!("all"), "limit"), (json!(1e30), "limit")] {
        let r = c.request(json!(3), "Streams.List", json!({ "limit": limit }));
        assert_eq!(error_code(&r), -32602, "{r}");
        assert_eq!(r["error"]["data"]["field"], field, "{r}");
    }
    for cursor in ["abc", "-5", ""] {
        let r = c.request(json!(4), "Streams.List", json!({ "cursor": cursor }));
        assert_eq!(error_code(&r), -32602, "{r}");
        assert_eq!(r["error"]["data"]["field"], "cursor", "{r}");
    }
    // Past the end: empty, no cursor.
    let r = c.request(json!(5), "Streams.List", json!({"cursor": "999999"}));
    assert_eq!(r["result"], json!({"streams": []}));
}

#[test]
fn big_streams_make_shorter_pages_not_bigger_replies() {
    let home = TestHome::new();
    stream_through_butler(&home, "first", b"x\n");
    add_rows(&home, "fat", 300, 16 * 1024);
    let d = DaemonProc::start(&home, &["--keep-alive"]);
    let mut c = d.client();
    let (paths, pages) = all_pages(&mut c, "fat/", None);
    assert_eq!(paths.len(), 300);
    assert!(pages >= 4, "{pages} pages of 16 KiB-tag streams");
}

#[test]
fn streams_read_pages_are_bounded_in_bytes() {
    let home = TestHome::new();
    // 12 MiB of 64 KiB lines: about 190 entries, each well within the 1000-entry limit.
    let line = [b"y".repeat(64 * 1024 - 1), b"\n".to_vec()].concat();
    let data = line.repeat(192);
    stream_through_butler(&home, "big", &data);
    let d = DaemonProc::start(&home, &["--keep-alive"]);
    let mut c = d.client();
    let (mut got, mut from, mut pages) = (0usize, 0u64, 0);
    loop {
        let (len, r) = raw_request(
            &mut c,
            pages,
            "Streams.Read",
            json!({"path": "big/+/out", "fromIndex": from, "limit": 1000}),
        );
        assert!(len < 6 << 20, "a {len}-byte Streams.Read reply");
        pages += 1;
        let entries = r["result"]["entries"].as_array().unwrap_or_else(|| panic!("{r}"));
        got += entries.iter().map(|e| e["text"].as_str().unwrap().len()).sum::<usize>();
        from = r["result"]["nextIndex"].as_u64().unwrap();
        if r["result"]["terminal"] == true {
            break;
        }
        assert!(pages < 100);
    }
    assert_eq!(got, data.len());
    assert!(pages >= 3, "{pages} pages for 12 MiB");
}
