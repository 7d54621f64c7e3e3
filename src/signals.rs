//! Requests from outside to stop: SIGINT and SIGTERM on unix; Ctrl-C, Ctrl-Break and the console
//! closing on Windows. The daemon, `serve`, `stream` and `run` all catch them through this one type.

/// What was asked, whatever the platform spelled it as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signal {
    /// SIGINT; Ctrl-C or Ctrl-Break on Windows.
    Interrupt,
    /// SIGTERM; the console window closing on Windows.
    Terminate,
}

impl Signal {
    /// The signal number to forward to a child process.
    #[cfg(unix)]
    pub(crate) fn number(self) -> i32 {
        match self {
            Signal::Interrupt => libc::SIGINT,
            Signal::Terminate => libc::SIGTERM,
        }
    }
}

/// Caught from the moment this exists, so a signal that arrives right after a listen line or an
/// address was printed is handled, never fatal.
#[derive(Debug)]
pub(crate) struct Signals {
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(windows)]
    ctrl_c: tokio::signal::windows::CtrlC,
    #[cfg(windows)]
    ctrl_break: tokio::signal::windows::CtrlBreak,
    #[cfg(windows)]
    ctrl_close: tokio::signal::windows::CtrlClose,
}

impl Signals {
    #[cfg(unix)]
    pub(crate) fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    #[cfg(windows)]
    pub(crate) fn install() -> std::io::Result<Signals> {
        use tokio::signal::windows;
        Ok(Signals {
            ctrl_c: windows::ctrl_c()?,
            ctrl_break: windows::ctrl_break()?,
            ctrl_close: windows::ctrl_close()?,
        })
    }

    /// The next request to stop.
    pub(crate) async fn recv(&mut self) -> Signal {
        #[cfg(unix)]
        tokio::select! {
            _ = self.int.recv() => Signal::Interrupt,
            _ = self.term.recv() => Signal::Terminate,
        }
        #[cfg(windows)]
        tokio::select! {
            _ = self.ctrl_c.recv() => Signal::Interrupt,
            _ = self.ctrl_break.recv() => Signal::Interrupt,
            _ = self.ctrl_close.recv() => Signal::Terminate,
        }
    }
}
