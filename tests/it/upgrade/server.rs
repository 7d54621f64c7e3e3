//! A tiny static HTTP/1.1 server on loopback for the updater tests: serves a folder (a broth
//! tree from the release tool) with ETag + Range/If-Range, and injects faults on request (a
//! status, a cut, a reset or a stall after some bytes, an endless, silent or trickling body).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What to do wrong for one path.
#[derive(Debug, Clone)]
pub(super) enum Fault {
    /// Answer with this status (and an empty body).
    Status(u16),
    /// Answer with this status the first `n` times, then serve normally.
    StatusTimes(u16, usize),
    /// Promise the full length, send this many bytes and hang up, the first `n` times.
    CutAfter(usize, usize),
    /// As `CutAfter`, but the connection is reset (RST), not closed.
    ResetAfter(usize, usize),
    /// As `CutAfter`, but the connection then stays open and silent.
    StallAfter(usize, usize),
    /// A lie: a range request is answered 206 with the file from its first byte (and a
    /// Content-Range that says so).
    RangeFromStart,
    /// A body that never ends (no Content-Length, endless bytes).
    Endless,
    /// Headers, then a few bytes, then silence until the client gives up.
    Hang,
    /// A body that comes at a few hundred bytes per second.
    Trickle,
    /// Served as usual, but only once a request for this other path has come (or after 10 s):
    /// shows that the client had both requests in flight together.
    AfterRequestFor(String),
}

/// One request as the server saw it.
#[derive(Debug, Clone)]
pub(super) struct Seen {
    pub path: String,
    /// The request target as sent: absolute-form (`http://host/path`) when it came via a proxy.
    pub target: String,
    pub headers: HashMap<String, String>,
}

pub(crate) struct Server {
    pub addr: SocketAddr,
    pub root: PathBuf,
    faults: Arc<Mutex<HashMap<String, Fault>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Arc<AtomicBool>,
}

impl Server {
    pub(crate) fn start(root: PathBuf) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let faults: Arc<Mutex<HashMap<String, Fault>>> = Arc::default();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (f, s, st, r) = (faults.clone(), seen.clone(), stop.clone(), root.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (f, s, st, r) = (f.clone(), s.clone(), st.clone(), r.clone());
                std::thread::spawn(move || {
                    let _ = handle(conn, &r, &f, &s, &st);
                });
            }
        });
        Server { addr, root, faults, seen, stop }
    }

    /// The base URL to give `--broth-url`.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub(super) fn fault(&self, path: &str, fault: Fault) {
        self.faults.lock().unwrap().insert(path.to_owned(), fault);
    }

    pub(super) fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}

fn handle(
    conn: TcpStream,
    root: &std::path::Path,
    faults: &Mutex<HashMap<String, Fault>>,
    seen: &Mutex<Vec<Seen>>,
    stop: &AtomicBool,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let target = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    // A proxy gets absolute-form targets; serve them as if the host were us.
    let path = match target.strip_prefix("http://") {
        Some(rest) => rest.find('/').map(|i| rest[i..].to_owned()).unwrap_or_else(|| "/".into()),
        None => target.clone(),
    };
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
        }
    }
    seen.lock().unwrap().push(Seen { path: path.clone(), target, headers: headers.clone() });
    let mut out = conn;
    let fault = {
        let mut map = faults.lock().unwrap();
        let f = map.get(&path).cloned();
        // Count down faults that apply a limited number of times.
        match f {
            Some(Fault::StatusTimes(code, n)) if n > 0 => {
                map.insert(path.clone(), Fault::StatusTimes(code, n - 1));
                Some(Fault::Status(code))
            }
            Some(Fault::StatusTimes(..)) => None,
            Some(Fault::CutAfter(bytes, n)) if n > 0 => {
                map.insert(path.clone(), Fault::CutAfter(bytes, n - 1));
                Some(Fault::CutAfter(bytes, n))
            }
            Some(Fault::ResetAfter(bytes, n)) if n > 0 => {
                map.insert(path.clone(), Fault::ResetAfter(bytes, n - 1));
                Some(Fault::ResetAfter(bytes, n))
            }
            Some(Fault::StallAfter(bytes, n)) if n > 0 => {
                map.insert(path.clone(), Fault::StallAfter(bytes, n - 1));
                Some(Fault::StallAfter(bytes, n))
            }
            Some(Fault::CutAfter(..) | Fault::ResetAfter(..) | Fault::StallAfter(..)) => None,
            other => other,
        }
    };
    if let Some(Fault::AfterRequestFor(other)) = &fault {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline
            && !seen.lock().unwrap().iter().any(|s| s.path == *other)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    match fault {
        Some(Fault::Status(code)) => {
            return write!(
                out,
                "HTTP/1.1 {code} Fault\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
        Some(Fault::Endless) => {
            write!(out, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")?;
            let chunk = vec![b'9'; 16 * 1024];
            while !stop.load(Ordering::SeqCst) {
                out.write_all(&chunk)?;
            }
            return Ok(());
        }
        Some(Fault::Trickle) => {
            write!(out, "HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\nConnection: close\r\n\r\n")?;
            while !stop.load(Ordering::SeqCst) {
                out.write_all(b"0123456789")?;
                out.flush()?;
                std::thread::sleep(Duration::from_millis(50));
            }
            return Ok(());
        }
        Some(Fault::Hang) => {
            write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\nConnection: close\r\n\r\nabc"
            )?;
            out.flush()?;
            return silence(&out, stop);
        }
        _ => {}
    }
    let rel = path.trim_start_matches('/');
    let file = root.join(rel);
    if rel.split('/').any(|c| c == "..") || !file.is_file() {
        return write!(
            out,
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
    }
    let data = std::fs::read(&file)?;
    let mtime = std::fs::metadata(&file)?
        .modified()?
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let etag = format!("\"{}-{mtime}\"", data.len());
    let mut start = 0usize;
    if let Some(range) = headers.get("range").and_then(|r| r.strip_prefix("bytes="))
        && headers.get("if-range").is_none_or(|v| *v == etag)
        && let Some(Ok(from)) = range.strip_suffix('-').map(str::parse::<usize>)
        && from < data.len()
    {
        start = from;
    }
    // Like nginx: a range starting at the end of the (unchanged) file cannot be satisfied.
    if let Some(Ok(from)) = headers
        .get("range")
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .map(str::parse::<usize>)
        && headers.get("if-range").is_none_or(|v| *v == etag)
        && from >= data.len()
    {
        let head = format!(
            "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            data.len()
        );
        out.write_all(head.as_bytes())?;
        return Ok(());
    }
    let lie = matches!(fault, Some(Fault::RangeFromStart)) && start > 0;
    if lie {
        start = 0;
    }
    let body = &data[start..];
    let head = if start > 0 || lie {
        format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{}\r\nETag: {etag}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n",
            body.len(),
            data.len() - 1,
            data.len()
        )
    } else {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: {etag}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n",
            body.len()
        )
    };
    out.write_all(head.as_bytes())?;
    match fault {
        Some(Fault::CutAfter(bytes, _)) => {
            out.write_all(&body[..bytes.min(body.len())])?;
            out.flush()?;
            // Hang up hard so the client sees a cut, not a clean end.
            let _ = out.shutdown(std::net::Shutdown::Both);
            Ok(())
        }
        Some(Fault::ResetAfter(bytes, _)) => {
            out.write_all(&body[..bytes.min(body.len())])?;
            out.flush()?;
            // Give the bytes time to leave before the reset discards what is still queued.
            std::thread::sleep(Duration::from_millis(50));
            reset(out);
            Ok(())
        }
        Some(Fault::StallAfter(bytes, _)) => {
            out.write_all(&body[..bytes.min(body.len())])?;
            out.flush()?;
            silence(&out, stop)
        }
        _ => out.write_all(body),
    }
}

/// Silence until the client hangs up (a read returns 0) or the test ends.
fn silence(out: &TcpStream, stop: &AtomicBool) -> std::io::Result<()> {
    out.set_read_timeout(Some(Duration::from_millis(50)))?;
    let mut b = [0u8; 1];
    while !stop.load(Ordering::SeqCst) {
        match (&*out).read(&mut b) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
    }
    Ok(())
}

/// Closes with a TCP reset: SO_LINGER on with a zero timeout makes close() send RST.
fn reset(out: TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    // SAFETY: a valid socket and a correctly sized option value.
    unsafe {
        libc::setsockopt(
            out.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
    drop(out);
}
