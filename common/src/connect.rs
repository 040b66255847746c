//! What every daemon's part of `org.libvirt.Connect` answers the same way.

/// The libvirt API level this project implements, reported as `LibVersion` in libvirt's
/// encoding (major * 1,000,000 + minor * 1,000 + release) so that clients which gate
/// features on the libvirt version see the level they can rely on.
pub const LIB_VERSION: u64 = 9_000_000;

/// This project's own version in libvirt's encoding.
pub fn own_version() -> u64 {
    let mut parts = env!("CARGO_PKG_VERSION")
        .split('.')
        .map(|p| p.parse::<u64>().unwrap_or(0));
    let (a, b, c) = (
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
        parts.next().unwrap_or(0),
    );
    a * 1_000_000 + b * 1_000 + c
}

pub fn hostname() -> String {
    nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "localhost".to_owned())
}

/// Calls arrive over a local bus or socket: never encrypted on the wire, always
/// private to this machine (libvirt reports a UNIX-socket connection the same way).
pub const ENCRYPTED: bool = false;
pub const SECURE: bool = true;
