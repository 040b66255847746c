//! TAP devices for guest NICs, made by the daemon as libvirt makes them: `/dev/net/tun`
//! with `TUNSETIFF` (`IFF_TAP|IFF_NO_PI|IFF_VNET_HDR`), the host-side MAC (the guest's
//! with `fe` as first byte), the bridge's MTU, enslaved to the bridge and set up, all
//! through ioctls. The device is not persistent: it goes away when the last descriptor
//! (ours after the launch, then QEMU's) is closed.
//!
//! Macvtaps (`<interface type='direct'>`) are links made over rtnetlink on a host link;
//! QEMU gets a descriptor of their character device `/dev/tapIFINDEX`. Unlike taps they
//! outlive the descriptor, so a stop deletes them by name.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
/// Fail instead of attaching to a device that exists already.
const IFF_TUN_EXCL: libc::c_short = -0x8000; // 0x8000 as a c_short
const SIOCBRADDIF: libc::c_ulong = 0x89a2;

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("cannot create tap device '{name}': {err}")]
    Create { name: String, err: std::io::Error },
    #[error("cannot {what} of tap device '{tap}': {err}")]
    Configure {
        what: &'static str,
        tap: String,
        err: std::io::Error,
    },
    #[error("cannot use bridge '{bridge}': {err}")]
    Bridge { bridge: String, err: std::io::Error },
    #[error("cannot create macvtap device on '{link}': {err}")]
    Macvtap { link: String, err: String },
}

impl From<TapError> for common::error::VirError {
    fn from(e: TapError) -> Self {
        common::error::VirError::new(common::error::ErrorCode::SystemError, e)
    }
}

/// One tap: the descriptor QEMU gets and the name the kernel gave it.
#[derive(Debug)]
pub struct Tap {
    pub fd: OwnedFd,
    pub name: String,
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in r
        .ifr_name
        .iter_mut()
        .zip(name.bytes().take(libc::IFNAMSIZ - 1))
    {
        *d = s as libc::c_char;
    }
    r
}

fn name_of(r: &libc::ifreq) -> String {
    let bytes: Vec<u8> = r
        .ifr_name
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// A name the caller may choose: what the kernel accepts, no `%` template, at most 15
/// bytes. The XML layer already refused anything else; this is the last line.
fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c))
}

/// Creates a tap: `name` exactly (failing if such a device exists), or the next free
/// `vnetN` when `None`.
pub fn create(name: Option<&str>) -> Result<Tap, TapError> {
    let shown = name.unwrap_or("vnet%d").to_owned();
    let err = |err| TapError::Create {
        name: shown.clone(),
        err,
    };
    if let Some(n) = name {
        if !name_ok(n) {
            return Err(err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a valid interface name",
            )));
        }
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(err)?;
    let mut r = ifreq(name.unwrap_or("vnet%d"));
    r.ifr_ifru.ifru_flags =
        IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | if name.is_some() { IFF_TUN_EXCL } else { 0 };
    // SAFETY: TUNSETIFF reads and writes one ifreq, which lives for the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF as _, &mut r) };
    if rc < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(Tap {
        fd: OwnedFd::from(file),
        name: name_of(&r),
    })
}

struct Sock(OwnedFd);

impl Sock {
    fn new() -> std::io::Result<Sock> {
        // SAFETY: plain syscall; the result is a new descriptor we own.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this descriptor to us.
        Ok(Sock(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn ioctl(&self, req: libc::c_ulong, r: &mut libc::ifreq) -> std::io::Result<()> {
        // SAFETY: every request used here reads or writes one ifreq, alive for the call.
        let rc = unsafe { libc::ioctl(self.0.as_raw_fd(), req as _, r as *mut libc::ifreq) };
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

/// The host side of a NIC: `mac` with the first byte `fe` (so the bridge never takes
/// the guest's address as its own), the bridge's MTU, enslaved, up.
/// `mtu` is the NIC's `<mtu>`; without one a bridged tap takes the bridge's MTU.
pub fn configure(
    tap: &str,
    guest_mac: [u8; 6],
    bridge: Option<&str>,
    mtu: Option<u32>,
) -> Result<(), TapError> {
    let cfg = |what: &'static str| {
        move |err| TapError::Configure {
            what,
            tap: tap.to_owned(),
            err,
        }
    };
    let sock = Sock::new().map_err(cfg("open a socket"))?;
    let mut r = ifreq(tap);
    let mut mac = guest_mac;
    mac[0] = 0xfe;
    // SAFETY: writing plain fields of a union of plain data.
    unsafe {
        r.ifr_ifru.ifru_hwaddr.sa_family = libc::ARPHRD_ETHER;
        for (d, s) in r.ifr_ifru.ifru_hwaddr.sa_data.iter_mut().zip(mac) {
            *d = s as libc::c_char;
        }
    }
    sock.ioctl(libc::SIOCSIFHWADDR, &mut r)
        .map_err(cfg("set the MAC address"))?;
    if let Some(m) = mtu {
        let mut t = ifreq(tap);
        t.ifr_ifru.ifru_mtu = m as libc::c_int;
        sock.ioctl(libc::SIOCSIFMTU, &mut t)
            .map_err(cfg("set the MTU"))?;
    }
    if let Some(br) = bridge {
        let berr = |err| TapError::Bridge {
            bridge: br.to_owned(),
            err,
        };
        if !name_ok(br) {
            return Err(berr(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a valid interface name",
            )));
        }
        if mtu.is_none() {
            let mut b = ifreq(br);
            sock.ioctl(libc::SIOCGIFMTU, &mut b).map_err(berr)?;
            let mut t = ifreq(tap);
            // SAFETY: reading and writing the mtu member of plain unions.
            unsafe { t.ifr_ifru.ifru_mtu = b.ifr_ifru.ifru_mtu };
            sock.ioctl(libc::SIOCSIFMTU, &mut t)
                .map_err(cfg("set the MTU"))?;
        }
        let cname = CString::new(tap).map_err(|_| {
            cfg("find the index")(std::io::Error::from(std::io::ErrorKind::InvalidInput))
        })?;
        // SAFETY: cname is a valid C string for the call.
        let index = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if index == 0 {
            return Err(cfg("find the index")(std::io::Error::last_os_error()));
        }
        let mut b = ifreq(br);
        b.ifr_ifru.ifru_ifindex = index as libc::c_int;
        sock.ioctl(SIOCBRADDIF, &mut b).map_err(berr)?;
    }
    let mut f = ifreq(tap);
    sock.ioctl(libc::SIOCGIFFLAGS, &mut f)
        .map_err(cfg("read the flags"))?;
    // SAFETY: the flags member was just filled by the kernel.
    unsafe { f.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    sock.ioctl(libc::SIOCSIFFLAGS, &mut f)
        .map_err(cfg("bring up"))?;
    Ok(())
}

/// libvirt's `<source mode>` as the kernel's MACVLAN_MODE_* flag.
fn macvtap_mode(mode: &str) -> u32 {
    match mode {
        "private" => 1,
        "bridge" => 4,
        "passthrough" => 8,
        _ => 2, // vepa, libvirt's default
    }
}

fn ifindex(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: c is a valid C string for the call.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (i != 0).then_some(i)
}

/// Makes a macvtap on host link `link` (`macvtapN`, the first free N, as libvirt names
/// them) with the guest's MAC, sets it up, and opens its character device.
pub async fn create_macvtap(link: &str, mode: &str, guest_mac: [u8; 6]) -> Result<Tap, TapError> {
    let err = |err: String| TapError::Macvtap {
        link: link.to_owned(),
        err,
    };
    let parent = ifindex(link).ok_or_else(|| err("no such link".into()))?;
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| err(e.to_string()))?;
    let task = tokio::spawn(conn);
    let mut made = None;
    for n in 0..256 {
        let name = format!("macvtap{n}");
        if ifindex(&name).is_some() {
            continue;
        }
        let r = handle
            .link()
            .add()
            .macvtap(name.clone(), parent, macvtap_mode(mode))
            .address(guest_mac.to_vec())
            .execute()
            .await;
        match r {
            Ok(()) => {
                made = Some(name);
                break;
            }
            // Taken between the look and the add: the next one.
            Err(rtnetlink::Error::NetlinkError(m))
                if m.raw_code() == -libc::EEXIST || m.raw_code() == -libc::ENFILE => {}
            Err(e) => {
                task.abort();
                return Err(err(e.to_string()));
            }
        }
    }
    task.abort();
    let name = made.ok_or_else(|| err("no free macvtapN name".into()))?;
    match open_macvtap(&name).await {
        Ok(fd) => Ok(Tap { fd, name }),
        Err(e) => {
            delete_link(&name).await;
            Err(err(e))
        }
    }
}

/// `/dev/tapIFINDEX` of macvtap `name`, once devtmpfs made it. The node is named by
/// an index that another namespace may use too, so the device must say it is `name`.
async fn open_macvtap(name: &str) -> Result<OwnedFd, String> {
    let index = ifindex(name).ok_or_else(|| format!("'{name}' vanished"))?;
    let dev = format!("/dev/tap{index}");
    let mut last = String::new();
    for _ in 0..50 {
        match OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&dev)
        {
            Ok(f) => {
                let mut r = ifreq("");
                // SAFETY: TUNGETIFF writes one ifreq, which lives for the call.
                let rc = unsafe { libc::ioctl(f.as_raw_fd(), libc::TUNGETIFF as _, &mut r) };
                if rc < 0 {
                    return Err(format!("{dev}: {}", std::io::Error::last_os_error()));
                }
                if name_of(&r) != name {
                    return Err(format!("{dev} is '{}', not '{name}'", name_of(&r)));
                }
                return Ok(OwnedFd::from(f));
            }
            Err(e) => last = format!("{dev}: {e}"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    Err(last)
}

/// A host-side address of an ethernet NIC's tap: `<source><ip address prefix peer>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostIp {
    pub address: std::net::IpAddr,
    pub prefix: u8,
    pub peer: Option<std::net::IpAddr>,
}

/// A host route through an ethernet NIC's tap: `<source><route address prefix gateway>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostRoute {
    pub address: std::net::IpAddr,
    pub prefix: u8,
    pub gateway: std::net::IpAddr,
}

/// Gives tap `name` its host-side addresses, then the routes through it, as libvirt
/// does for `<interface type='ethernet'><source><ip/><route/>`.
pub async fn add_ips(name: &str, ips: &[HostIp], routes: &[HostRoute]) -> Result<(), TapError> {
    use netlink_packet_route::address::AddressAttribute;
    use std::net::IpAddr;
    let err = |what: &'static str| {
        move |e: String| TapError::Configure {
            what,
            tap: name.to_owned(),
            err: std::io::Error::other(e),
        }
    };
    let index = ifindex(name).ok_or_else(|| err("find the index")("no such link".into()))?;
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|e| err("open rtnetlink")(e.to_string()))?;
    let task = tokio::spawn(conn);
    let r = async {
        for ip in ips {
            let mut req = handle.address().add(index, ip.address, ip.prefix);
            if let Some(peer) = ip.peer {
                // A point-to-point address: IFA_ADDRESS is the peer, IFA_LOCAL ours.
                let attrs = &mut req.message_mut().attributes;
                attrs.retain(|a| {
                    !matches!(
                        a,
                        AddressAttribute::Address(_) | AddressAttribute::Broadcast(_)
                    )
                });
                attrs.push(AddressAttribute::Address(peer));
            }
            req.execute()
                .await
                .map_err(|e| err("add an address")(e.to_string()))?;
        }
        for r in routes {
            let res = match (r.address, r.gateway) {
                (IpAddr::V4(a), IpAddr::V4(g)) => {
                    handle
                        .route()
                        .add()
                        .v4()
                        .destination_prefix(a, r.prefix)
                        .gateway(g)
                        .output_interface(index)
                        .execute()
                        .await
                }
                (IpAddr::V6(a), IpAddr::V6(g)) => {
                    handle
                        .route()
                        .add()
                        .v6()
                        .destination_prefix(a, r.prefix)
                        .gateway(g)
                        .output_interface(index)
                        .execute()
                        .await
                }
                _ => {
                    return Err(err("add a route")(
                        "address and gateway families differ".into(),
                    ))
                }
            };
            res.map_err(|e| err("add a route")(e.to_string()))?;
        }
        Ok(())
    }
    .await;
    task.abort();
    r
}

/// Deletes link `name` (a macvtap of a stopped guest); gone already is fine.
pub async fn delete_link(name: &str) {
    let Some(index) = ifindex(name) else { return };
    let r = match rtnetlink::new_connection() {
        Ok((conn, handle, _)) => {
            let task = tokio::spawn(conn);
            let r = handle.link().del(index).execute().await;
            task.abort();
            r.map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    };
    match r {
        Ok(()) => tracing::info!(link = name, "macvtap deleted"),
        Err(e) => tracing::warn!(link = name, "macvtap not deleted: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        assert!(name_ok("vnet0"));
        assert!(name_ok("my-tap_1.x"));
        for bad in [
            "",
            ".",
            "..",
            "a b",
            "a/b",
            "vnet%d",
            "abcdefghijklmnop",
            "a,b",
        ] {
            assert!(!name_ok(bad), "{bad}");
        }
        assert!(create(Some("bad%d")).is_err());
    }
}
