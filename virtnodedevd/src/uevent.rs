//! The kernel's uevent netlink multicast (NETLINK_KOBJECT_UEVENT, group 1): one thread
//! blocks on the socket and hands parsed events to the driver. Uevents for network
//! devices are per network namespace, so the daemon sees its own namespace's links.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// One kernel uevent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uevent {
    pub action: String,
    pub devpath: String,
    pub subsystem: String,
    pub env: HashMap<String, String>,
}

/// Parses a kernel uevent datagram (`action@devpath\0KEY=value\0...`). Messages of
/// udevd (`libudev` magic) and anything malformed give `None`.
pub fn parse(buf: &[u8]) -> Option<Uevent> {
    let mut parts = buf.split(|b| *b == 0).filter(|p| !p.is_empty());
    let header = std::str::from_utf8(parts.next()?).ok()?;
    let (action, devpath) = header.split_once('@')?;
    let mut env = HashMap::new();
    for p in parts {
        let Ok(s) = std::str::from_utf8(p) else {
            continue;
        };
        if let Some((k, v)) = s.split_once('=') {
            env.insert(k.to_string(), v.to_string());
        }
    }
    let subsystem = env.get("SUBSYSTEM").cloned().unwrap_or_default();
    let devpath = env
        .get("DEVPATH")
        .cloned()
        .unwrap_or_else(|| devpath.to_string());
    let action = env
        .get("ACTION")
        .cloned()
        .unwrap_or_else(|| action.to_string());
    if !devpath.starts_with('/') {
        return None;
    }
    Some(Uevent {
        action,
        devpath,
        subsystem,
        env,
    })
}

/// Opens and binds the uevent socket.
pub fn open() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::NETLINK_KOBJECT_UEVENT,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_nl is plain data; all-zero is a valid value.
    let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    sa.nl_groups = 1;
    // A bigger buffer so bursts (a whole PCI device with children) are not dropped.
    let size: libc::c_int = 4 << 20;
    // SAFETY: valid fd, pointers to live locals with their true sizes.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        if libc::bind(
            fd,
            (&sa as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(owned)
}

/// Receives uevents forever on a dedicated thread, sending those from the kernel.
pub fn spawn(fd: OwnedFd, tx: tokio::sync::mpsc::UnboundedSender<Uevent>) -> io::Result<()> {
    std::thread::Builder::new()
        .name("uevent".into())
        .spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                // SAFETY: sockaddr_nl is plain data; all-zero is valid.
                let mut from: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
                let mut len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
                // SAFETY: buf and from are live and their sizes are passed.
                let n = unsafe {
                    libc::recvfrom(
                        fd.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        0,
                        (&mut from as *mut libc::sockaddr_nl).cast(),
                        &mut len,
                    )
                };
                if n < 0 {
                    let e = io::Error::last_os_error();
                    match e.raw_os_error() {
                        Some(libc::EINTR) => continue,
                        // Overrun: events were lost; the driver rescans.
                        Some(libc::ENOBUFS) => {
                            let rescan = Uevent {
                                action: "rescan".into(),
                                devpath: "/".into(),
                                subsystem: String::new(),
                                env: HashMap::new(),
                            };
                            if tx.send(rescan).is_err() {
                                return;
                            }
                            continue;
                        }
                        _ => {
                            tracing::warn!("uevent socket failed: {e}");
                            return;
                        }
                    }
                }
                // Only the kernel (port 0) sends trustworthy uevents.
                if from.nl_pid != 0 {
                    continue;
                }
                let n = usize::try_from(n).unwrap_or(0);
                if let Some(ev) = buf.get(..n).and_then(parse) {
                    if tx.send(ev).is_err() {
                        return;
                    }
                }
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_kernel_messages() {
        let msg = b"add@/devices/virtual/net/va\0ACTION=add\0DEVPATH=/devices/virtual/net/va\0SUBSYSTEM=net\0INTERFACE=va\0IFINDEX=5\0SEQNUM=1\0";
        let ev = parse(msg).expect("parsed");
        assert_eq!(ev.action, "add");
        assert_eq!(ev.devpath, "/devices/virtual/net/va");
        assert_eq!(ev.subsystem, "net");
        assert_eq!(ev.env.get("INTERFACE").map(String::as_str), Some("va"));
    }

    #[test]
    fn rejects_udev_and_garbage() {
        assert!(parse(b"libudev\0\xfe\xed\xca\xfe").is_none());
        assert!(parse(b"").is_none());
        assert!(parse(b"\xff\xfe@x\0").is_none());
        assert!(parse(b"add@relative\0SUBSYSTEM=net\0").is_none());
    }
}
