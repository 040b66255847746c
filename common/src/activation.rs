//! systemd socket activation (`LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`) and the
//! daemon's own listening socket when it was not activated.

use std::io;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

const SD_LISTEN_FDS_START: RawFd = 3;

/// Where the listening socket came from: it decides who removes the file on exit.
#[derive(Debug)]
pub enum Listener {
    /// Handed over by systemd, which owns the file.
    Activated(UnixListener),
    /// Bound here; the daemon removes the file when it exits.
    Bound(UnixListener, PathBuf),
}

impl Listener {
    pub fn into_std(self) -> (UnixListener, Option<PathBuf>) {
        match self {
            Listener::Activated(l) => (l, None),
            Listener::Bound(l, p) => (l, Some(p)),
        }
    }
}

/// Takes the first listening socket systemd passed to this process, if any, and clears
/// the variables so that children do not inherit them.
pub fn take_activated() -> Option<UnixListener> {
    let pid: u32 = std::env::var("LISTEN_PID").ok()?.parse().ok()?;
    let fds: i32 = std::env::var("LISTEN_FDS").ok()?.parse().ok()?;
    // Called before any thread starts, so changing the environment is race-free.
    std::env::remove_var("LISTEN_PID");
    std::env::remove_var("LISTEN_FDS");
    std::env::remove_var("LISTEN_FDNAMES");
    if pid != std::process::id() || fds < 1 {
        return None;
    }
    for fd in SD_LISTEN_FDS_START..SD_LISTEN_FDS_START + fds {
        let _ = nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
    }
    // SAFETY: systemd passed fd 3 to us as a listening socket and nobody else owns it.
    Some(unsafe { UnixListener::from_raw_fd(SD_LISTEN_FDS_START) })
}

/// Binds `path` (owner-only), replacing a stale socket file but never stealing a live
/// one from a running instance.
pub fn bind(path: &Path) -> io::Result<Listener> {
    if path.exists() {
        match UnixStream::connect(path) {
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{} is served by a running daemon", path.display()),
                ))
            }
            Err(_) => std::fs::remove_file(path)?,
        }
    }
    if let Some(dir) = path.parent() {
        crate::persist::create_dir_all(dir, 0o755)?;
    }
    // Bind under a restrictive umask so the socket is never briefly world-connectable.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let listener = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = listener?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(Listener::Bound(listener, path.to_owned()))
}

/// The activated socket if systemd gave one, else one bound at `path`.
pub fn listen(path: &Path) -> io::Result<Listener> {
    match take_activated() {
        Some(l) => Ok(Listener::Activated(l)),
        None => bind(path),
    }
}
