//! The host's links as rtnetlink shows them (kind, MAC, MTU, flags, operational state,
//! controller, vlan id and parent, addresses), the link speed through the ethtool
//! ioctl, and the few changes interface definitions need: create a bridge, bond or
//! vlan, enslave, set MTU, up, down, add or remove an address or a default route,
//! delete. Everything goes through the daemon's own network namespace (never /sys,
//! which may show another namespace's links).

use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use futures_util::TryStreamExt;
use netlink_packet_route::address::AddressAttribute;
use netlink_packet_route::link::{
    InfoBond, InfoBridge, InfoData, InfoKind, InfoVlan, LinkAttribute, LinkFlag, LinkInfo,
    LinkMessage, State,
};
use rtnetlink::Handle;

use crate::xml::Mac;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("{0}")]
    Netlink(String),
    #[error("cannot open a netlink socket: {0}")]
    Socket(std::io::Error),
}

fn nl(e: rtnetlink::Error) -> LinkError {
    match e {
        rtnetlink::Error::NetlinkError(m) => {
            let code = m.raw_code().unsigned_abs();
            let text = i32::try_from(code)
                .map(|c| std::io::Error::from_raw_os_error(c).to_string())
                .unwrap_or_else(|_| m.to_string());
            LinkError::Netlink(text)
        }
        other => LinkError::Netlink(other.to_string()),
    }
}

/// One link as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `bridge`, `bond`, `vlan`, `veth`, ... (IFLA_INFO_KIND); None for plain NICs.
    pub kind: Option<String>,
    pub mac: Option<Mac>,
    pub mtu: Option<u32>,
    /// IFF_UP: the administrative state, what libvirt's backends call active.
    pub up: bool,
    /// IFLA_OPERSTATE as libvirt writes it in `<link state>`.
    pub oper: &'static str,
    /// The bridge or bond this link is a port of.
    pub controller: Option<u32>,
    /// A vlan's tag and the index of its device.
    pub vlan: Option<(u16, u32)>,
    /// A bond's mode number.
    pub bond_mode: Option<u8>,
    /// A bridge's STP state and forward delay (centiseconds).
    pub bridge: Option<(bool, u32)>,
    pub loopback: bool,
}

fn oper_name(s: &State) -> &'static str {
    match s {
        State::Up => "up",
        State::Down => "down",
        State::LowerLayerDown => "lowerlayerdown",
        State::Testing => "testing",
        State::Dormant => "dormant",
        State::NotPresent => "notpresent",
        _ => "unknown",
    }
}

fn from_message(m: &LinkMessage) -> Option<Link> {
    let mut l = Link {
        index: m.header.index,
        name: String::new(),
        kind: None,
        mac: None,
        mtu: None,
        up: m.header.flags.contains(&LinkFlag::Up),
        oper: "unknown",
        controller: None,
        vlan: None,
        bond_mode: None,
        bridge: None,
        loopback: m.header.flags.contains(&LinkFlag::Loopback),
    };
    let mut link_parent = None;
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n.clone(),
            LinkAttribute::Address(b) => {
                if let Ok(six) = <[u8; 6]>::try_from(b.as_slice()) {
                    l.mac = Some(Mac(six));
                }
            }
            LinkAttribute::Mtu(v) => l.mtu = Some(*v),
            LinkAttribute::OperState(s) => l.oper = oper_name(s),
            LinkAttribute::Controller(c) => l.controller = Some(*c),
            LinkAttribute::Link(p) => link_parent = Some(*p),
            LinkAttribute::LinkInfo(infos) => read_info(infos, &mut l),
            _ => {}
        }
    }
    if let (Some((tag, _)), Some(p)) = (l.vlan, link_parent) {
        l.vlan = Some((tag, p));
    }
    (!l.name.is_empty()).then_some(l)
}

fn read_info(infos: &[LinkInfo], l: &mut Link) {
    for i in infos {
        match i {
            LinkInfo::Kind(k) => l.kind = Some(k.to_string()),
            LinkInfo::Data(InfoData::Vlan(v)) => {
                for x in v {
                    if let InfoVlan::Id(id) = x {
                        l.vlan = Some((*id, 0));
                    }
                }
            }
            LinkInfo::Data(InfoData::Bridge(b)) => {
                let (mut stp, mut delay) = (false, 0);
                for x in b {
                    match x {
                        InfoBridge::StpState(v) => stp = *v != 0,
                        InfoBridge::ForwardDelay(v) => delay = *v,
                        _ => {}
                    }
                }
                l.bridge = Some((stp, delay));
            }
            LinkInfo::Data(InfoData::Bond(b)) => {
                for x in b {
                    if let InfoBond::Mode(m) = x {
                        l.bond_mode = Some(*m);
                    }
                }
            }
            _ => {}
        }
    }
}

pub struct Links {
    handle: Handle,
}

impl Links {
    /// Opens the socket in the daemon's network namespace; must run inside tokio.
    pub fn new() -> Result<Links, LinkError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(LinkError::Socket)?;
        tokio::spawn(conn);
        Ok(Links { handle })
    }

    pub async fn all(&self) -> Result<Vec<Link>, LinkError> {
        let mut s = self.handle.link().get().execute();
        let mut out = Vec::new();
        while let Some(m) = s.try_next().await.map_err(nl)? {
            out.extend(from_message(&m));
        }
        Ok(out)
    }

    /// Every address: (link index, address, prefix length).
    pub async fn addresses(&self) -> Result<Vec<(u32, IpAddr, u8)>, LinkError> {
        let mut s = self.handle.address().get().execute();
        let mut out = Vec::new();
        while let Some(m) = s.try_next().await.map_err(nl)? {
            // IPv4 reports the address as IFA_LOCAL (IFA_ADDRESS is the peer on
            // point-to-point links); IPv6 only has IFA_ADDRESS.
            let mut addr = None;
            for a in &m.attributes {
                match a {
                    AddressAttribute::Local(ip) => addr = Some(*ip),
                    AddressAttribute::Address(ip) if addr.is_none() => addr = Some(*ip),
                    _ => {}
                }
            }
            if let Some(ip) = addr {
                out.push((m.header.index, ip, m.header.prefix_len));
            }
        }
        Ok(out)
    }

    pub async fn by_name(&self, name: &str) -> Result<Option<Link>, LinkError> {
        let mut s = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match s.try_next().await {
            Ok(Some(m)) => Ok(from_message(&m)),
            Ok(None) => Ok(None),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
            Err(e) => Err(nl(e)),
        }
    }

    /// A bridge with its STP state and forward delay (centiseconds), down.
    pub async fn add_bridge(&self, name: &str, stp: bool, delay_cs: u32) -> Result<(), LinkError> {
        let mut req = self.handle.link().add();
        let attrs = &mut req.message_mut().attributes;
        attrs.push(LinkAttribute::IfName(name.to_owned()));
        attrs.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Bridge),
            LinkInfo::Data(InfoData::Bridge(vec![
                InfoBridge::ForwardDelay(delay_cs),
                InfoBridge::StpState(u32::from(stp)),
            ])),
        ]));
        req.execute().await.map_err(nl)
    }

    pub async fn add_bond(
        &self,
        name: &str,
        mode: Option<u8>,
        miimon: Option<u32>,
    ) -> Result<(), LinkError> {
        let mut req = self.handle.link().add().bond(name.to_owned());
        if let Some(m) = mode {
            req = req.mode(m);
        }
        if let Some(f) = miimon {
            req = req.miimon(f);
        }
        req.execute().await.map_err(nl)
    }

    pub async fn add_vlan(&self, name: &str, parent: u32, tag: u16) -> Result<(), LinkError> {
        self.handle
            .link()
            .add()
            .vlan(name.to_owned(), parent, tag)
            .execute()
            .await
            .map_err(nl)
    }

    pub async fn set_controller(&self, index: u32, controller: u32) -> Result<(), LinkError> {
        self.handle
            .link()
            .set(index)
            .controller(controller)
            .execute()
            .await
            .map_err(nl)
    }

    pub async fn set_mtu(&self, index: u32, mtu: u32) -> Result<(), LinkError> {
        self.handle
            .link()
            .set(index)
            .mtu(mtu)
            .execute()
            .await
            .map_err(nl)
    }

    pub async fn set_up(&self, index: u32, up: bool) -> Result<(), LinkError> {
        let req = self.handle.link().set(index);
        let req = if up { req.up() } else { req.down() };
        req.execute().await.map_err(nl)
    }

    /// Adds an address; one already there is not an error.
    pub async fn add_address(&self, index: u32, ip: IpAddr, prefix: u8) -> Result<(), LinkError> {
        match self.handle.address().add(index, ip, prefix).execute().await {
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
            r => r.map_err(nl),
        }
    }

    /// Removes an address if the link has it.
    pub async fn del_address(&self, index: u32, ip: IpAddr, prefix: u8) -> Result<(), LinkError> {
        let mut s = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .set_address_filter(ip)
            .execute();
        while let Some(m) = s.try_next().await.map_err(nl)? {
            if m.header.prefix_len == prefix {
                self.handle.address().del(m).execute().await.map_err(nl)?;
            }
        }
        Ok(())
    }

    /// A default route through `gateway` on the link; one already there is kept.
    pub async fn add_default_route(&self, index: u32, gateway: IpAddr) -> Result<(), LinkError> {
        let req = self.handle.route().add().output_interface(index);
        let r = match gateway {
            IpAddr::V4(g) => req.v4().gateway(g).execute().await,
            IpAddr::V6(g) => req.v6().gateway(g).execute().await,
        };
        match r {
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
            r => r.map_err(nl),
        }
    }

    /// Deletes the link if it exists.
    pub async fn delete(&self, name: &str) -> Result<(), LinkError> {
        if let Some(l) = self.by_name(name).await? {
            match self.handle.link().del(l.index).execute().await {
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => {}
                r => r.map_err(nl)?,
            }
        }
        Ok(())
    }
}

/// `ETHTOOL_GSET`'s reply, as `struct ethtool_cmd` lays it out (44 bytes).
const ETHTOOL_GSET: u32 = 1;
const SIOCETHTOOL: libc::c_ulong = 0x8946;

/// The link speed in Mb/s, from the ethtool ioctl on a socket of the daemon's own
/// namespace; None when the driver does not know it (or the link has no carrier).
pub fn speed(name: &str) -> Option<u32> {
    if name.len() >= libc::IFNAMSIZ {
        return None;
    }
    // SAFETY: socket(2) with constant arguments; the result is checked before use.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return None;
    }
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut cmd = [0u32; 11];
    cmd[0] = ETHTOOL_GSET;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = cmd.as_mut_ptr().cast();
    // SAFETY: SIOCETHTOOL reads the NUL-terminated name (checked shorter than
    // IFNAMSIZ above, the rest zeroed) and writes at most sizeof(struct ethtool_cmd)
    // = 44 bytes into `cmd`, which is 44 bytes and lives until the call returns.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL as _, &mut ifr) };
    if rc < 0 {
        return None;
    }
    // speed (u16) at byte 12, speed_hi (u16) at byte 28, native endian.
    let bytes: Vec<u8> = cmd.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let lo = u16::from_ne_bytes([bytes[12], bytes[13]]);
    let hi = u16::from_ne_bytes([bytes[28], bytes[29]]);
    let s = u32::from(lo) | (u32::from(hi) << 16);
    (s != 0 && s != u32::MAX && s != u32::from(u16::MAX)).then_some(s)
}
