//! Windows named pipes that butler serves (a stream server's `net.pipe:<name>`, the daemon's
//! `--transport net.pipe:<name>`): byte-mode instances at `\\.\pipe\<name>`, as upstream's
//! go-winio listener makes them (1 MiB buffers), that only this user may open and no remote
//! client may reach, the first instance ours or nothing.
//!
//! A pipe has no backlog: each accepted client takes the waiting instance, and the next one is
//! created at once so later clients find it.

use std::io;

use tokio::net::windows::named_pipe::{NamedPipeServer, ServerOptions};

use super::address::pipe_path;

const PIPE_BUFFER: u32 = 1 << 20;

/// A listening pipe name.
#[derive(Debug)]
pub(crate) struct PipeListener {
    path: String,
    waiting: NamedPipeServer,
    owner_only: OwnerOnly,
}

impl PipeListener {
    /// Creates the first instance of `\\.\pipe\<name>`; fails if any process already has one
    /// (it would get our clients), or another user's process holds the name.
    pub(crate) fn bind(name: &str) -> io::Result<PipeListener> {
        let path = pipe_path(name);
        let owner_only = OwnerOnly::new()?;
        let waiting = owner_only.create(options().first_pipe_instance(true), &path)?;
        Ok(PipeListener { path, waiting, owner_only })
    }

    /// The next client. Cancel-safe: tokio's `connect` loses no connection when dropped.
    pub(crate) async fn accept(&mut self) -> io::Result<NamedPipeServer> {
        self.waiting.connect().await?;
        let next = self.owner_only.create(&options(), &self.path)?;
        Ok(std::mem::replace(&mut self.waiting, next))
    }
}

fn options() -> ServerOptions {
    // Duplex, though a stream server never writes back: clients built on go-winio open pipes for
    // reading and writing, and an inbound-only pipe would refuse them.
    let mut o = ServerOptions::new();
    o.in_buffer_size(PIPE_BUFFER).out_buffer_size(PIPE_BUFFER).reject_remote_clients(true);
    o
}

/// A security descriptor whose DACL grants this process's user, and no one else, full access.
/// The default one would also let other local accounts (services, other users' sessions) open
/// the pipe, and a stream or daemon client of another user is refused on unix too.
struct OwnerOnly {
    /// The ACL the descriptor points into; kept alive (and never moved: it is on the heap).
    _acl: Vec<u64>,
    descriptor: Box<windows_sys::Win32::Security::SECURITY_DESCRIPTOR>,
}

impl std::fmt::Debug for OwnerOnly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OwnerOnly")
    }
}

// SAFETY: the descriptor and the ACL it points to are owned here, never changed after `new`,
// and only read by CreateNamedPipeW, from whichever thread accepts.
unsafe impl Send for OwnerOnly {}
// SAFETY: as above; shared references only read.
unsafe impl Sync for OwnerOnly {}

impl OwnerOnly {
    fn new() -> io::Result<OwnerOnly> {
        use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle};
        use windows_sys::Win32::Foundation::GENERIC_ALL;
        use windows_sys::Win32::Security::{
            ACCESS_ALLOWED_ACE, ACL, ACL_REVISION, AddAccessAllowedAce, GetLengthSid,
            GetTokenInformation, InitializeAcl, InitializeSecurityDescriptor, SECURITY_DESCRIPTOR,
            SetSecurityDescriptorDacl, TOKEN_QUERY, TOKEN_USER, TokenUser,
        };
        use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};
        const SECURITY_DESCRIPTOR_REVISION: u32 = 1;
        let check = |ok: i32| if ok == 0 { Err(io::Error::last_os_error()) } else { Ok(()) };

        let mut raw = std::ptr::null_mut();
        // SAFETY: the pseudo-handle of this process, and an out-pointer to a handle we then own.
        check(unsafe { OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut raw) })?;
        // SAFETY: a valid token handle nothing else owns.
        let token = unsafe { OwnedHandle::from_raw_handle(raw) };
        let mut len = 0u32;
        // SAFETY: a size query: no buffer, the needed length comes back in `len`.
        unsafe {
            GetTokenInformation(token.as_raw_handle(), TokenUser, std::ptr::null_mut(), 0, &mut len)
        };
        // u64s keep the buffer aligned for TOKEN_USER and the SID inside it.
        let mut user = vec![0u64; (len as usize).div_ceil(8)];
        // SAFETY: `user` holds at least `len` bytes.
        check(unsafe {
            GetTokenInformation(
                token.as_raw_handle(),
                TokenUser,
                user.as_mut_ptr().cast(),
                len,
                &mut len,
            )
        })?;
        // SAFETY: the call filled the buffer with a TOKEN_USER whose SID points into it.
        let sid = unsafe { (*user.as_ptr().cast::<TOKEN_USER>()).User.Sid };
        // SAFETY: a valid SID.
        let sid_len = unsafe { GetLengthSid(sid) } as usize;
        let acl_len = size_of::<ACL>() + size_of::<ACCESS_ALLOWED_ACE>() + sid_len;
        let mut acl = vec![0u64; acl_len.div_ceil(8)];
        let acl_ptr = acl.as_mut_ptr().cast::<ACL>();
        let acl_len = u32::try_from(acl_len).map_err(io::Error::other)?;
        // SAFETY: `acl` holds `acl_len` bytes, aligned.
        check(unsafe { InitializeAcl(acl_ptr, acl_len, ACL_REVISION) })?;
        // SAFETY: an initialized ACL with room for one ACE of this SID, which it copies.
        check(unsafe { AddAccessAllowedAce(acl_ptr, ACL_REVISION, GENERIC_ALL, sid) })?;
        // SAFETY: an all-zero SECURITY_DESCRIPTOR is valid memory for Initialize to fill.
        let mut descriptor: Box<SECURITY_DESCRIPTOR> = Box::new(unsafe { std::mem::zeroed() });
        let sd = std::ptr::from_mut::<SECURITY_DESCRIPTOR>(&mut descriptor).cast();
        // SAFETY: `sd` points to a SECURITY_DESCRIPTOR we own.
        check(unsafe { InitializeSecurityDescriptor(sd, SECURITY_DESCRIPTOR_REVISION) })?;
        // SAFETY: the descriptor and the ACL both outlive every use (both are kept in `self`).
        check(unsafe { SetSecurityDescriptorDacl(sd, 1, acl_ptr, 0) })?;
        Ok(OwnerOnly { _acl: acl, descriptor })
    }

    fn create(&self, options: &ServerOptions, path: &str) -> io::Result<NamedPipeServer> {
        use windows_sys::Win32::Security::{SECURITY_ATTRIBUTES, SECURITY_DESCRIPTOR};
        let mut attributes = SECURITY_ATTRIBUTES {
            nLength: size_of::<SECURITY_ATTRIBUTES>() as u32,
            lpSecurityDescriptor: std::ptr::from_ref::<SECURITY_DESCRIPTOR>(&self.descriptor)
                .cast_mut()
                .cast(),
            bInheritHandle: 0,
        };
        // SAFETY: valid attributes whose descriptor lives as long as `self`; CreateNamedPipeW
        // only reads them during the call.
        unsafe {
            options.create_with_security_attributes_raw(
                path,
                std::ptr::from_mut(&mut attributes).cast(),
            )
        }
    }
}
