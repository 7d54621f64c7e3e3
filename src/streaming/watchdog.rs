//! Unix: what makes a `Process.Run` child's tree die with the daemon, however the daemon ends
//! (even `kill -9`, which leaves no chance to clean up), and its stream socket file go with it.
//!
//! Linux's `PR_SET_PDEATHSIG` reaches only the direct child (and fires when the *thread* that
//! spawned it ends, not the process), and macOS has nothing like it; neither reaches a
//! grandchild. So each run gets a tiny `/bin/sh` watchdog outside the child's process group,
//! reading a pipe whose only write end the daemon holds (close-on-exec). The daemon writes the
//! group id once the child exists, then `done` when the run ends as it should. End of file
//! without `done` means the daemon (or the run) died: the watchdog kills the whole group and
//! removes the socket file. The same code path holds on Linux and macOS: it needs only a pipe,
//! `kill` and `rm`.
//!
//! The one gap: between the child's spawn and the write of its group id (one `write(2)`), a
//! daemon killed then leaves the child running.

use std::path::Path;
use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use tokio::process::{Child, ChildStdin, Command};

/// `$1` is the socket file to remove (or empty). `INT`/`HUP` are ignored: a terminal's Ctrl-C or
/// hang-up is for the daemon, which then ends its runs itself.
const SCRIPT: &str = r#"trap '' INT HUP
read -r pgid
[ "$pgid" = done ] && exit 0
read -r word
[ "$word" = done ] && exit 0
case "$pgid" in ''|*[!0-9]*) ;; *) kill -s KILL -- "-$pgid" 2>/dev/null ;; esac
[ -n "$1" ] && rm -f -- "$1"
exit 0
"#;

/// A run's watchdog; dropping it without [`Watchdog::done`] sets it off.
#[derive(Debug)]
pub(crate) struct Watchdog {
    pipe: Option<ChildStdin>,
    /// Held so tokio reaps the watchdog when it exits.
    _process: Child,
}

impl Watchdog {
    /// Starts a watchdog that removes `socket` (if any) when set off.
    pub(crate) fn start(socket: Option<&Path>) -> std::io::Result<Watchdog> {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c").arg(SCRIPT).arg("butler-watchdog");
        cmd.arg(socket.map(Path::as_os_str).unwrap_or_default());
        // Its own group: the child's group kill, or a terminal's signals, never reach it.
        cmd.process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(false);
        let mut process = cmd.spawn()?;
        let pipe = process.stdin.take();
        Ok(Watchdog { pipe, _process: process })
    }

    /// Tells the watchdog which process group to kill.
    pub(crate) async fn watch(&mut self, pgid: u32) {
        self.send(format!("{pgid}\n").as_bytes()).await;
    }

    /// The run ended as it should: the watchdog exits without touching anything.
    pub(crate) async fn done(mut self) {
        self.send(b"done\n").await;
        self.pipe = None;
    }

    async fn send(&mut self, line: &[u8]) {
        if let Some(pipe) = &mut self.pipe
            && let Err(e) = pipe.write_all(line).await
        {
            tracing::warn!(
                "the process watchdog is gone ({e}); a crash would leave the run's processes behind"
            );
            self.pipe = None;
        }
    }
}
