//! Notices changes to the project's nftables tables made behind the daemon's back.
//!
//! A NETLINK_NETFILTER socket subscribed to NFNLGRP_NFTABLES receives one message per
//! object the kernel adds or removes (any process, any table). The watcher only tells
//! the driver "something of ours was deleted"; the driver then checks the real tables
//! against the wanted ones and re-applies when they differ, so its own transactions
//! (which delete and re-add the tables) never loop.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use tokio::io::unix::AsyncFd;

const NETLINK_NETFILTER: libc::c_int = 12;
const NFNLGRP_NFTABLES: u32 = 7;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// NFT_MSG_DEL{TABLE,CHAIN,RULE,SET,SETELEM,OBJ,FLOWTABLE}.
const DEL_MSGS: [u16; 7] = [2, 5, 8, 11, 14, 20, 24];
const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;

pub struct NftWatch {
    fd: AsyncFd<OwnedFd>,
    buf: Vec<u8>,
}

impl NftWatch {
    /// Opens the socket in the daemon's network namespace.
    pub fn open() -> io::Result<NftWatch> {
        // SAFETY: plain socket(2); the result is checked before use.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                NETLINK_NETFILTER,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: an all-zero sockaddr_nl is valid; fields are set below.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        sa.nl_groups = 1 << (NFNLGRP_NFTABLES - 1);
        // SAFETY: `sa` is a valid sockaddr_nl of the given length.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sa as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let size: libc::c_int = 1 << 20;
        // SAFETY: setsockopt with a c_int value of the right length; failure is harmless.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                &size as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        // SAFETY: the OwnedFd is moved into the AsyncFd, stays open and refers to the
        // same socket until the AsyncFd is dropped.
        let fd = unsafe { AsyncFd::register(fd) }?;
        Ok(NftWatch {
            fd,
            buf: vec![0; 64 * 1024],
        })
    }

    /// Waits for the next datagram; true when it deletes something in one of `tables`
    /// (or when events were lost, so the caller must check).
    pub async fn next(&mut self, tables: &[&str]) -> io::Result<bool> {
        loop {
            let mut guard = self.fd.readable().await?;
            let buf = &mut self.buf;
            let res = guard.try_io(|fd| {
                // SAFETY: recv into our buffer of the given length.
                let n = unsafe {
                    libc::recv(
                        fd.as_raw_fd(),
                        buf.as_mut_ptr() as *mut libc::c_void,
                        buf.len(),
                        0,
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match res {
                Ok(Ok(n)) => return Ok(touches(&self.buf[..n], tables)),
                // The kernel dropped events: we cannot know what changed.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOBUFS) => return Ok(true),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// The table name of one nftables message: attribute 1 (NFTA_*_TABLE / NFTA_TABLE_NAME)
/// of every object message.
fn table_name(msg: &[u8]) -> Option<&[u8]> {
    let mut at = NLMSG_HDRLEN + NFGENMSG_LEN;
    while at + 4 <= msg.len() {
        let len = u16_at(msg, at)? as usize;
        let kind = u16_at(msg, at + 2)? & 0x3fff;
        if len < 4 || at + len > msg.len() {
            return None;
        }
        if kind == 1 {
            let v = &msg[at + 4..at + len];
            return Some(v.split(|b| *b == 0).next().unwrap_or(v));
        }
        at += align4(len);
    }
    None
}

/// True when a datagram of nftables events deletes something in one of `tables`.
pub fn touches(buf: &[u8], tables: &[&str]) -> bool {
    let mut at = 0;
    while at + NLMSG_HDRLEN <= buf.len() {
        let Some(len) = u32_at(buf, at).map(|l| l as usize) else {
            return false;
        };
        if len < NLMSG_HDRLEN || at + len > buf.len() {
            return false;
        }
        let ty = u16_at(buf, at + 4).unwrap_or(0);
        let msg = &buf[at..at + len];
        if ty >> 8 == NFNL_SUBSYS_NFTABLES && DEL_MSGS.contains(&(ty & 0xff)) {
            if let Some(name) = table_name(msg) {
                if tables.iter().any(|t| t.as_bytes() == name) {
                    return true;
                }
            }
        }
        at += align4(len);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(ty: u16, table: &str) -> Vec<u8> {
        let mut attr = Vec::new();
        let name = format!("{table}\0");
        attr.extend(((4 + name.len()) as u16).to_ne_bytes());
        attr.extend(1u16.to_ne_bytes());
        attr.extend(name.as_bytes());
        while attr.len() % 4 != 0 {
            attr.push(0);
        }
        let len = NLMSG_HDRLEN + NFGENMSG_LEN + attr.len();
        let mut m = Vec::new();
        m.extend((len as u32).to_ne_bytes());
        m.extend(((NFNL_SUBSYS_NFTABLES << 8) | ty).to_ne_bytes());
        m.extend([0u8; 10]);
        m.extend([2u8, 0, 0, 0]);
        m.extend(attr);
        m
    }

    #[test]
    fn deletions_of_our_tables_are_noticed_others_ignored() {
        let ours = ["libvirt_rs", "libvirt_rs_nat"];
        assert!(touches(&msg(2, "libvirt_rs_nat"), &ours));
        assert!(touches(&msg(8, "libvirt_rs"), &ours));
        // additions and other tables do not count
        assert!(!touches(&msg(0, "libvirt_rs"), &ours));
        assert!(!touches(&msg(2, "filter"), &ours));
        assert!(!touches(&msg(2, "libvirt_rs_other"), &ours));
        // several messages in one datagram
        let mut two = msg(2, "filter");
        two.extend(msg(5, "libvirt_rs"));
        assert!(touches(&two, &ours));
        // truncated or garbage input is not a panic
        assert!(!touches(&two[..7], &ours));
        assert!(!touches(&[0xff; 40], &ours));
    }
}
