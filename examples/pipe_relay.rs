//! A named-pipe client for tests (`make test-windows` runs it as a Windows program under Wine):
//! it relays its stdin to `\\.\pipe\<name>` and the pipe to its stdout, so a Linux test can speak
//! JSON-RPC to a daemon listening on `net.pipe:<name>` (`tests/it/windows.rs`), which no Linux
//! program can open. It exits when the pipe closes.

#[cfg(windows)]
#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::windows::named_pipe::ClientOptions;
    const ERROR_PIPE_BUSY: i32 = 231;

    let name = std::env::args().nth(1).expect("usage: pipe_relay <pipe name>");
    let path = format!(r"\\.\pipe\{name}");
    // Between two instances the pipe is busy for a moment: wait for the next, not forever.
    let deadline = Instant::now() + Duration::from_secs(10);
    let pipe = loop {
        match ClientOptions::new().open(&path) {
            Ok(pipe) => break pipe,
            Err(e) if e.raw_os_error() == Some(ERROR_PIPE_BUSY) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => return Err(e),
        }
    };
    let (mut from_pipe, mut to_pipe) = tokio::io::split(pipe);
    let up = async {
        let _ = tokio::io::copy(&mut tokio::io::stdin(), &mut to_pipe).await;
        // stdin ended: keep relaying what the daemon still sends until it closes the pipe.
        std::future::pending::<()>().await
    };
    let down = async {
        let mut stdout = tokio::io::stdout();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = from_pipe.read(&mut buf).await?;
            if n == 0 {
                return Ok::<(), std::io::Error>(());
            }
            stdout.write_all(&buf[..n]).await?;
            stdout.flush().await?;
        }
    };
    tokio::select! {
        r = down => r,
        () = up => Ok(()),
    }
}

#[cfg(not(windows))]
fn main() {
    eprintln!("pipe_relay is a Windows program (named pipes)");
    std::process::exit(2);
}
