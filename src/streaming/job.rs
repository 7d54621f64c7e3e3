//! Windows: the child of `butler run` / `Process.Run` and every process it starts live in one Job
//! Object, so stopping the run stops the whole tree (Windows has no process groups to signal),
//! and the tree dies with butler: the job is kill-on-close, and the OS closes butler's handle
//! however butler ends.
//!
//! The child is created suspended and in a process group of its own ([`CREATION_FLAGS`]): it
//! joins the job before it runs a single instruction, so nothing it starts can escape, and a
//! Ctrl-Break can be sent to its group alone.

use std::io;
use std::os::windows::io::RawHandle;

use windows_sys::Win32::Foundation::{CloseHandle, HANDLE, INVALID_HANDLE_VALUE};
use windows_sys::Win32::System::Console::{CTRL_BREAK_EVENT, GenerateConsoleCtrlEvent};
use windows_sys::Win32::System::Diagnostics::ToolHelp::{
    CreateToolhelp32Snapshot, TH32CS_SNAPTHREAD, THREADENTRY32, Thread32First, Thread32Next,
};
use windows_sys::Win32::System::JobObjects::{
    AssignProcessToJobObject, CreateJobObjectW, JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE,
    JOBOBJECT_EXTENDED_LIMIT_INFORMATION, JobObjectExtendedLimitInformation,
    SetInformationJobObject, TerminateJobObject,
};
use windows_sys::Win32::System::Threading::{
    CREATE_NEW_PROCESS_GROUP, CREATE_SUSPENDED, OpenThread, ResumeThread, THREAD_SUSPEND_RESUME,
};

/// `CreateProcess` flags for a child that [`Job::adopt`] will take.
pub(crate) const CREATION_FLAGS: u32 = CREATE_SUSPENDED | CREATE_NEW_PROCESS_GROUP;

/// The exit code of a tree stopped by force, as Go's `Process.Kill` on Windows gives it.
pub(crate) const KILLED_EXIT_CODE: u32 = 1;

/// Why a child could not be put in its job and started.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AdoptError {
    /// The child runs, but outside the job: only the child itself can be stopped.
    #[error("cannot put the child in its job object: {0}")]
    Assign(std::io::Error),
    /// The child stays suspended: the caller must stop it.
    #[error("cannot resume the child: {0}")]
    Resume(std::io::Error),
}

/// An owned Job Object handle.
#[derive(Debug)]
pub(crate) struct Job {
    handle: HANDLE,
}

// SAFETY: a job handle may be used and closed from any thread.
unsafe impl Send for Job {}
// SAFETY: every method takes the handle by value into thread-safe kernel calls.
unsafe impl Sync for Job {}

impl Job {
    /// A new, anonymous, kill-on-close job.
    pub(crate) fn new() -> io::Result<Job> {
        // SAFETY: null attributes and name are allowed; the handle is checked below.
        let handle = unsafe { CreateJobObjectW(std::ptr::null(), std::ptr::null()) };
        if handle.is_null() {
            return Err(io::Error::last_os_error());
        }
        let job = Job { handle };
        job.kill_on_close(true)?;
        Ok(job)
    }

    fn kill_on_close(&self, on: bool) -> io::Result<()> {
        // SAFETY: a plain-data struct for which all zeroes is a valid value.
        let mut info: JOBOBJECT_EXTENDED_LIMIT_INFORMATION = unsafe { std::mem::zeroed() };
        info.BasicLimitInformation.LimitFlags =
            if on { JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE } else { 0 };
        // SAFETY: `info` is the struct this information class names, with its exact size.
        let ok = unsafe {
            SetInformationJobObject(
                self.handle,
                JobObjectExtendedLimitInformation,
                (&raw const info).cast(),
                size_of::<JOBOBJECT_EXTENDED_LIMIT_INFORMATION>() as u32,
            )
        };
        if ok == 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }

    /// Puts the suspended child (`process` is its handle, `pid` its id) in the job, then lets it
    /// run. The child is resumed even when it could not join the job (the error says why), since
    /// a child left suspended would hang the run.
    pub(crate) fn adopt(&self, process: RawHandle, pid: u32) -> Result<(), AdoptError> {
        // SAFETY: both handles are open: the job is ours, the process handle the caller's child.
        let assigned = unsafe { AssignProcessToJobObject(self.handle, process as HANDLE) };
        let assign_err = (assigned == 0).then(io::Error::last_os_error);
        resume_threads(pid).map_err(AdoptError::Resume)?;
        assign_err.map_or(Ok(()), |e| Err(AdoptError::Assign(e)))
    }

    /// Asks the child's process group to stop, as Ctrl-Break does (the only console event that
    /// can be aimed at one group). False when it cannot be delivered: the child shares no console
    /// with butler (a daemon started without one, a GUI program).
    pub(crate) fn interrupt(pid: u32) -> bool {
        // SAFETY: no memory involved; the group id is the child's pid (CREATE_NEW_PROCESS_GROUP).
        unsafe { GenerateConsoleCtrlEvent(CTRL_BREAK_EVENT, pid) != 0 }
    }

    /// Stops every process in the job at once.
    pub(crate) fn terminate(&self) -> io::Result<()> {
        // SAFETY: our own open job handle.
        let ok = unsafe { TerminateJobObject(self.handle, KILLED_EXIT_CODE) };
        if ok == 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }

    /// The child ended by itself: whatever it left running goes on, as it would on unix (only a
    /// cancel, a stop or butler's death ends the tree).
    pub(crate) fn release(self) {
        if let Err(e) = self.kill_on_close(false) {
            tracing::debug!("the child's leftovers will be stopped with its job: {e}");
        }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        // SAFETY: closing the handle this value owns, once.
        unsafe { CloseHandle(self.handle) };
    }
}

/// Resumes every thread of `pid`: a process created suspended has exactly one, and no API hands
/// it over once std's `Command` has closed its handle.
fn resume_threads(pid: u32) -> io::Result<()> {
    // SAFETY: a snapshot of all threads; the handle is checked and closed below.
    let snap = unsafe { CreateToolhelp32Snapshot(TH32CS_SNAPTHREAD, 0) };
    if snap == INVALID_HANDLE_VALUE {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: plain data; dwSize is set as the API requires.
    let mut entry: THREADENTRY32 = unsafe { std::mem::zeroed() };
    entry.dwSize = size_of::<THREADENTRY32>() as u32;
    let mut resumed = 0;
    // SAFETY: `snap` is a valid snapshot and `entry` a correctly sized THREADENTRY32.
    let mut more = unsafe { Thread32First(snap, &mut entry) } != 0;
    while more {
        if entry.th32OwnerProcessID == pid {
            // SAFETY: a thread id from the snapshot; the handle is checked and closed.
            unsafe {
                let thread = OpenThread(THREAD_SUSPEND_RESUME, 0, entry.th32ThreadID);
                if !thread.is_null() {
                    if ResumeThread(thread) != u32::MAX {
                        resumed += 1;
                    }
                    CloseHandle(thread);
                }
            }
        }
        // SAFETY: as for Thread32First.
        more = unsafe { Thread32Next(snap, &mut entry) } != 0;
    }
    // SAFETY: the snapshot handle opened above.
    unsafe { CloseHandle(snap) };
    if resumed == 0 {
        return Err(io::Error::other(format!("no thread of process {pid} could be resumed")));
    }
    Ok(())
}
