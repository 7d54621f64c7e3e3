//! Exit statuses: every code butler exits with, named and mapped to its number in one place.

use butler_updater::ErrorClass;

/// How a run ended, as scripts and launchers see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    Success,
    /// A failure with no more specific status (also: "no" at the `upgrade` prompt).
    Failure,
    /// Bad flags or arguments (clap's code, and upstream LogDog's).
    Usage,
    /// An update failed; one code per class, so scripts can tell them apart.
    Update(ErrorClass),
    /// `upgrade --check` found a newer version (DNF's and rustup's convention), so scripts can
    /// tell it from "up to date" (0).
    UpdateAvailable,
    /// A second signal while shutting down: the daemon exits at once.
    Interrupted,
    /// A runtime failure in the streaming commands (upstream's 250), or a failed restart.
    Runtime,
    /// `butler run`: the child's own exit code, clamped to 0..=255 on unix; passed on whole on
    /// Windows (see `main.rs`).
    Child(i32),
}

impl ExitStatus {
    pub fn code(self) -> u8 {
        match self {
            ExitStatus::Success => 0,
            ExitStatus::Failure => 1,
            ExitStatus::Usage => 2,
            ExitStatus::Update(class) => match class {
                ErrorClass::Network => 3,
                ErrorClass::Download => 4,
                ErrorClass::BadServerData => 5,
                ErrorClass::Verification | ErrorClass::BadKey => 6,
                ErrorClass::Stale => 7,
                ErrorClass::BadArchive => 8,
                ErrorClass::SmokeTest => 9,
                ErrorClass::NotWritable => 10,
                ErrorClass::Locked => 11,
                ErrorClass::NoRollback => 12,
                ErrorClass::Cancelled | ErrorClass::Io => 13,
            },
            ExitStatus::UpdateAvailable => 100,
            ExitStatus::Interrupted => 130,
            ExitStatus::Runtime => 250,
            ExitStatus::Child(code) => u8::try_from(code.clamp(0, 255)).unwrap_or(u8::MAX),
        }
    }
}

/// An error that ends the process with a particular status (the default is [`ExitStatus::Failure`]).
///
/// The inner error is shown as this error's message (not as its `source`), so it prints once.
#[derive(Debug, thiserror::Error)]
#[error("{error:#}")]
pub struct ExitError {
    pub status: ExitStatus,
    pub error: anyhow::Error,
}

impl ExitError {
    pub fn new(status: ExitStatus, error: impl Into<anyhow::Error>) -> Self {
        ExitError { status, error: error.into() }
    }
}

/// The status of a failed run: the one an [`ExitError`] in the chain carries, else `Failure`.
pub fn status_of(err: &anyhow::Error) -> ExitStatus {
    err.chain()
        .find_map(|e| e.downcast_ref::<ExitError>())
        .map_or(ExitStatus::Failure, |e| e.status)
}
