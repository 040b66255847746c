//! Offload features of a network interface (libvirt's `<feature name=...>`), read with
//! the legacy ethtool get-commands on a socket of the daemon's own network namespace.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const SIOCETHTOOL: libc::c_ulong = 0x8946;

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// `struct ifreq` with the `ifr_data` member of its union (40 bytes on 64-bit).
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: *mut EthtoolValue,
    _pad: [u8; 16],
}

/// (ethtool command, bit of its value or 0 for "non-zero", libvirt's name), in
/// libvirt's order.
const FEATURES: &[(u32, u32, &str)] = &[
    (0x14, 0, "rx"),        // ETHTOOL_GRXCSUM
    (0x16, 0, "tx"),        // ETHTOOL_GTXCSUM
    (0x18, 0, "sg"),        // ETHTOOL_GSG
    (0x1e, 0, "tso"),       // ETHTOOL_GTSO
    (0x23, 0, "gso"),       // ETHTOOL_GGSO
    (0x2b, 0, "gro"),       // ETHTOOL_GGRO
    (0x25, 1 << 15, "lro"), // ETHTOOL_GFLAGS: ETH_FLAG_LRO
    (0x25, 1 << 8, "rxvlan"),
    (0x25, 1 << 7, "txvlan"),
    (0x25, 1 << 27, "ntuple"),
    (0x25, 1 << 28, "rxhash"),
];

/// The enabled features of `ifname`; empty when the interface does not answer.
pub fn features(ifname: &str) -> Vec<&'static str> {
    let bytes = ifname.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Vec::new();
    }
    // SAFETY: plain socket(2); checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Vec::new();
    }
    // SAFETY: a fresh descriptor we own.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut out = Vec::new();
    for &(cmd, bit, name) in FEATURES {
        let mut value = EthtoolValue { cmd, data: 0 };
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            data: &mut value,
            _pad: [0; 16],
        };
        req.name[..bytes.len()].copy_from_slice(bytes);
        // SAFETY: req and value are live for the call; the kernel writes only `value`.
        let rc = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL as _, &mut req) };
        let on = if bit == 0 {
            value.data != 0
        } else {
            value.data & bit != 0
        };
        if rc == 0 && on {
            out.push(name);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_names_answer_nothing() {
        assert!(features("").is_empty());
        assert!(features("a-name-far-too-long-for-linux").is_empty());
        assert!(features("no-such-if0").is_empty());
    }
}
