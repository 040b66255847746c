//! `<interface>`: how a NIC reaches the host (user, ethernet tap, bridge, libvirt
//! network, a macvtap on a host link, or a socket to another guest), its MAC address
//! and guest model.

use std::fmt;
use std::str::FromStr;

use common::xml::{Element, Node};

use super::super::{invalid, missing, DomainXmlError, Result};
use super::{addr_of, boot_of, push_addr, unhandled, Address, REGENERATED};

/// A MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// A random address in QEMU's 52:54:00 range.
    pub fn random() -> Mac {
        let r = uuid::Uuid::new_v4();
        let b = r.as_bytes();
        Mac([0x52, 0x54, 0x00, b[0], b[1], b[2]])
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Mac, String> {
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err("expected six hex pairs separated by ':'".into());
        }
        let mut out = [0u8; 6];
        for (o, p) in out.iter_mut().zip(parts) {
            if p.is_empty() || p.len() > 2 {
                return Err("expected six hex pairs separated by ':'".into());
            }
            *o = u8::from_str_radix(p, 16).map_err(|e| e.to_string())?;
        }
        if out[0] & 1 == 1 {
            return Err("a multicast address cannot be a NIC address".into());
        }
        Ok(Mac(out))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterfaceKind {
    User,
    /// A tap device made by the caller or by QEMU; `target dev` names it.
    Ethernet,
    Bridge(String),
    Network(String),
    /// `type='direct'`: a macvtap on host link `dev`, in `mode` (vepa, bridge,
    /// private, passthrough).
    Direct {
        dev: String,
        mode: String,
    },
    /// `type='server'|'client'|'mcast'|'udp'`: QEMU's socket netdev, a virtual wire to
    /// another guest with no host device.
    Socket(SocketNet),
    /// `type='vhostuser'`: a vhost-user backend on a unix socket (`<source type='unix'
    /// path mode>`; `server`: QEMU listens), with `<reconnect>` on a client
    /// (`Some(None)`: `enabled='no'`).
    VhostUser {
        path: std::path::PathBuf,
        server: bool,
        reconnect: Option<Option<u32>>,
    },
}

/// The end points of a socket NIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketNet {
    /// `server`, `client`, `mcast` or `udp`.
    pub mode: String,
    pub address: Option<String>,
    pub port: u16,
    /// `<source><local address port/>`: the local end (udp, mcast).
    pub local_address: Option<String>,
    pub local_port: Option<u16>,
}

/// Direct (macvtap) modes libvirt knows.
const DIRECT_MODES: &[&str] = &["vepa", "bridge", "private", "passthrough"];

/// A host QEMU takes as `host:port`: a name or an IPv4 address (libvirt's socket NICs
/// are IPv4; a colon or comma would change QEMU's option).
fn check_host(element: &str, attr: &str, v: &str) -> Result<()> {
    if v.is_empty()
        || !v
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(invalid(element, attr, v, "not a host name or IPv4 address"));
    }
    Ok(())
}

fn vhostuser_kind(src: Option<&Element>) -> Result<InterfaceKind> {
    let src = src.ok_or_else(|| missing("interface", "<source path>"))?;
    if let Some(t) = src.get_attr("type").filter(|t| *t != "unix") {
        return Err(DomainXmlError::unsupported(
            "interface/source type",
            t,
            "vhost-user runs over a unix socket",
        ));
    }
    let path = src.req_attr("path")?;
    if !path.starts_with('/') {
        return Err(invalid(
            "interface/source",
            "attribute 'path'",
            path,
            "must be absolute",
        ));
    }
    let server = match src.req_attr("mode")? {
        "server" => true,
        "client" => false,
        m => {
            return Err(invalid(
                "interface/source",
                "attribute 'mode'",
                m,
                "expected server or client",
            ))
        }
    };
    let reconnect = match src.first("reconnect") {
        None => None,
        Some(r) if r.get_attr("enabled") == Some("yes") => {
            Some(Some(r.parse_attr::<u32>("timeout")?.unwrap_or(0)))
        }
        Some(_) => Some(None),
    };
    Ok(InterfaceKind::VhostUser {
        path: path.into(),
        server,
        reconnect,
    })
}

fn socket_kind(ty: &str, src: Option<&Element>) -> Result<InterfaceKind> {
    let src = src.ok_or_else(|| missing("interface", "<source port>"))?;
    let address = src.get_attr("address").map(str::to_owned);
    if let Some(a) = &address {
        check_host("interface/source", "attribute 'address'", a)?;
    }
    let port = src
        .parse_attr::<u16>("port")?
        .ok_or_else(|| missing("interface/source", "attribute 'port'"))?;
    if address.is_none() && ty != "server" {
        return Err(missing("interface/source", "attribute 'address'"));
    }
    let local = src.first("local");
    let local_address = local.and_then(|l| l.get_attr("address")).map(str::to_owned);
    if let Some(a) = &local_address {
        check_host("interface/source/local", "attribute 'address'", a)?;
    }
    let local_port = local
        .map(|l| l.parse_attr::<u16>("port"))
        .transpose()?
        .flatten();
    if ty == "udp" && local.is_none() {
        return Err(missing("interface/source", "<local> for type 'udp'"));
    }
    Ok(InterfaceKind::Socket(SocketNet {
        mode: ty.to_owned(),
        address,
        port,
        local_address,
        local_port,
    }))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub kind: InterfaceKind,
    pub mac: Option<Mac>,
    /// `virtio`, `e1000`, `e1000e`, `rtl8139`
    pub model: Option<String>,
    pub target_dev: Option<String>,
    /// `<target managed='no'>`: the tap exists already and QEMU opens it by name.
    pub target_managed: Option<bool>,
    /// `<source network portgroup=>`.
    pub portgroup: Option<String>,
    /// Live only: the network port made for this NIC (`<source portid=>`).
    pub portid: Option<uuid::Uuid>,
    /// Live only: the bridge the network's port plugs into (`<source bridge=>`).
    pub source_bridge: Option<String>,
    pub boot_order: Option<u32>,
    pub address: Option<Address>,
    /// `<mtu size=>`: the tap's MTU and, for virtio, the MTU the guest is offered.
    pub mtu: Option<u32>,
    /// `<link state='up|down'>`: down starts the NIC with its link down.
    pub link_up: Option<bool>,
    /// What of `<source>` the kind does not read: a user or ethernet NIC's whole
    /// `<source>` (host-side `<ip>`, `<route>`, passt's `dev`), another kind's unknown
    /// `<source>` children. Kept, written back, refused at start by name.
    pub source_kept: Option<Element>,
    /// Children this model does not handle (`<bandwidth>`, `<link>`, `<vlan>`, ...),
    /// kept verbatim and refused at start by name.
    pub unhandled: Vec<Element>,
}

pub(crate) fn check_ifname(element: &str, name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 15
        || name == "."
        || name == ".."
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(invalid(
            element,
            "attribute 'dev'",
            name,
            "not a valid interface name",
        ));
    }
    Ok(())
}

/// How the NIC reaches the host, from `type` and `<source>`.
fn parse_kind(ty: &str, src: Option<&Element>) -> Result<InterfaceKind> {
    Ok(match ty {
        "user" => InterfaceKind::User,
        "ethernet" => InterfaceKind::Ethernet,
        "bridge" => {
            let b = src
                .ok_or_else(|| missing("interface", "<source bridge>"))?
                .req_attr("bridge")?;
            // Any name defines, as in libvirt (oVirt parks NICs on ';vdsmdummy;'); the
            // tap code refuses a name the kernel cannot have when the NIC comes up.
            if b.is_empty() {
                return Err(missing("interface", "<source bridge>"));
            }
            InterfaceKind::Bridge(b.to_owned())
        }
        "network" => {
            let src = src.ok_or_else(|| missing("interface", "<source network>"))?;
            if let Some(b) = src.get_attr("bridge") {
                check_ifname("interface/source", b)?;
            }
            InterfaceKind::Network(src.req_attr("network")?.to_owned())
        }
        "direct" => {
            let src = src.ok_or_else(|| missing("interface", "<source dev>"))?;
            let dev = src.req_attr("dev")?;
            check_ifname("interface/source", dev)?;
            let mode = src.get_attr("mode").unwrap_or("vepa");
            if !DIRECT_MODES.contains(&mode) {
                return Err(invalid(
                    "interface/source",
                    "attribute 'mode'",
                    mode,
                    "expected vepa, bridge, private or passthrough",
                ));
            }
            InterfaceKind::Direct {
                dev: dev.to_owned(),
                mode: mode.to_owned(),
            }
        }
        "server" | "client" | "mcast" | "udp" => socket_kind(ty, src)?,
        "vhostuser" => vhostuser_kind(src)?,
        t => {
            return Err(DomainXmlError::unsupported(
                "interface type",
                t,
                "supported types are user, ethernet, bridge, network, direct, server, client, mcast, udp and vhostuser",
            ))
        }
    })
}

/// `<link state='up|down'>`.
fn parse_link(el: &Element) -> Result<Option<bool>> {
    Ok(match el.first("link").map(|l| l.get_attr("state")) {
        None => None,
        Some(Some("up")) => Some(true),
        Some(Some("down")) => Some(false),
        Some(other) => {
            return Err(invalid(
                "link",
                "attribute 'state'",
                other.unwrap_or(""),
                "expected up or down",
            ))
        }
    })
}

/// `<mtu size=>`: 68 (the IPv4 minimum) to 65535.
fn parse_mtu(el: &Element) -> Result<Option<u32>> {
    Ok(match el.first("mtu") {
        Some(m) => {
            let size = m
                .parse_attr::<u32>("size")?
                .ok_or_else(|| missing("mtu", "attribute 'size'"))?;
            if !(68..=65535).contains(&size) {
                return Err(invalid(
                    "mtu",
                    "attribute 'size'",
                    &size.to_string(),
                    "must be 68 to 65535",
                ));
            }
            Some(size)
        }
        None => None,
    })
}

impl Interface {
    /// Whether the runtime makes this NIC's tap (network, bridge, and ethernet it
    /// manages): what filters, bandwidth and the tap's clean-up apply to.
    pub fn has_runtime_tap(&self) -> bool {
        matches!(
            self.kind,
            InterfaceKind::Network(_) | InterfaceKind::Bridge(_) | InterfaceKind::Ethernet
        ) && self.target_managed != Some(false)
    }

    pub(super) fn parse(el: &Element) -> Result<Interface> {
        let ty = el.req_attr("type")?;
        let src = el.first("source");
        let kind = parse_kind(ty, src)?;
        let mac = match el.first("mac") {
            None => None,
            Some(m) => {
                let a = m.req_attr("address")?;
                Some(
                    a.parse::<Mac>()
                        .map_err(|e| invalid("mac", "attribute 'address'", a, e))?,
                )
            }
        };
        let model = el
            .first("model")
            .map(|m| m.req_attr("type"))
            .transpose()?
            .map(str::to_owned);
        if let Some(m) = &model {
            // libvirt takes any QEMU device name here; the command line knows which
            // it can build.
            if m.is_empty()
                || !m
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
            {
                return Err(DomainXmlError::unsupported(
                    "interface model",
                    m,
                    "not a device model name",
                ));
            }
        }
        let target_dev = el
            .first("target")
            .map(|t| t.req_attr("dev"))
            .transpose()?
            .map(str::to_owned);
        if let Some(t) = &target_dev {
            check_ifname("interface/target", t)?;
        }
        let target_managed = match el.first("target").and_then(|t| t.get_attr("managed")) {
            None => None,
            Some("yes") => Some(true),
            Some("no") => Some(false),
            Some(v) => {
                return Err(invalid(
                    "target",
                    "attribute 'managed'",
                    v,
                    "expected yes or no",
                ))
            }
        };
        let network_src = src.filter(|_| matches!(kind, InterfaceKind::Network(_)));
        let portid = match network_src.and_then(|s| s.get_attr("portid")) {
            None => None,
            Some(u) => Some(
                uuid::Uuid::parse_str(u)
                    .map_err(|e| invalid("source", "attribute 'portid'", u, e))?,
            ),
        };
        let source_kept = match (&kind, src) {
            (_, None) => None,
            // An empty `<source/>` says nothing.
            (InterfaceKind::User | InterfaceKind::Ethernet, Some(s)) => {
                (!s.attrs.is_empty() || s.elements().next().is_some()).then(|| s.clone())
            }
            (k, Some(s)) => {
                let known: &[&str] = match k {
                    InterfaceKind::Socket(_) => &["local"],
                    InterfaceKind::VhostUser { .. } => &["reconnect"],
                    _ => &[],
                };
                let mut extra = Element::new("source");
                for c in s.elements().filter(|c| !known.contains(&c.name.as_str())) {
                    extra.push(c.clone());
                }
                let any = extra.elements().next().is_some();
                any.then_some(extra)
            }
        };
        Ok(Interface {
            source_kept,
            portgroup: network_src
                .and_then(|s| s.get_attr("portgroup"))
                .map(str::to_owned),
            portid,
            source_bridge: network_src
                .and_then(|s| s.get_attr("bridge"))
                .map(str::to_owned),
            kind,
            mac,
            model,
            target_dev,
            target_managed,
            boot_order: boot_of(el)?,
            address: addr_of(el)?,
            link_up: parse_link(el)?,
            mtu: parse_mtu(el)?,
            unhandled: unhandled(
                el,
                &[
                    &[
                        "source", "mac", "model", "target", "boot", "address", "mtu", "link",
                    ][..],
                    REGENERATED,
                ]
                .concat(),
            )
            .into_iter()
            // QEMU's own virtio-net (no vhost) is what runs anyway.
            .filter(|c| {
                !(c.name == "driver"
                    && c.attrs.len() == 1
                    && c.get_attr("name") == Some("qemu")
                    && c.elements().next().is_none())
            })
            .collect(),
        })
    }

    pub(super) fn to_element(&self) -> Element {
        let (ty, src) = match &self.kind {
            InterfaceKind::User => ("user", None),
            InterfaceKind::Ethernet => ("ethernet", None),
            InterfaceKind::Bridge(b) => ("bridge", Some(Element::new("source").attr("bridge", b))),
            InterfaceKind::Network(n) => (
                "network",
                Some(
                    Element::new("source")
                        .attr("network", n)
                        .attr_opt("portgroup", self.portgroup.as_deref())
                        .attr_opt("portid", self.portid.map(|u| u.to_string()))
                        .attr_opt("bridge", self.source_bridge.as_deref()),
                ),
            ),
            InterfaceKind::VhostUser {
                path,
                server,
                reconnect,
            } => (
                "vhostuser",
                Some(
                    Element::new("source")
                        .attr("type", "unix")
                        .attr("path", path.display())
                        .attr("mode", if *server { "server" } else { "client" })
                        .child_opt(reconnect.map(|r| {
                            match r {
                                Some(t) => Element::new("reconnect")
                                    .attr("enabled", "yes")
                                    .attr("timeout", t),
                                None => Element::new("reconnect").attr("enabled", "no"),
                            }
                        })),
                ),
            ),
            InterfaceKind::Direct { dev, mode } => (
                "direct",
                Some(Element::new("source").attr("dev", dev).attr("mode", mode)),
            ),
            InterfaceKind::Socket(s) => (
                s.mode.as_str(),
                Some(
                    Element::new("source")
                        .attr_opt("address", s.address.as_deref())
                        .attr("port", s.port)
                        .child_opt((s.local_address.is_some() || s.local_port.is_some()).then(
                            || {
                                Element::new("local")
                                    .attr_opt("address", s.local_address.as_deref())
                                    .attr_opt("port", s.local_port)
                            },
                        )),
                ),
            ),
        };
        let src = match (src, &self.source_kept) {
            (None, kept) => kept.clone(),
            (Some(mut s), Some(kept)) => {
                for c in kept.elements() {
                    s.push(c.clone());
                }
                Some(s)
            }
            (s, None) => s,
        };
        let mut el = Element::new("interface")
            .attr("type", ty)
            .child_opt(self.mac.map(|m| Element::new("mac").attr("address", m)))
            .child_opt(src)
            .child_opt(self.target_dev.as_ref().map(|t| {
                Element::new("target").attr("dev", t).attr_opt(
                    "managed",
                    self.target_managed.map(|m| if m { "yes" } else { "no" }),
                )
            }))
            .child_opt(
                self.model
                    .as_ref()
                    .map(|m| Element::new("model").attr("type", m)),
            )
            .child_opt(
                self.boot_order
                    .map(|o| Element::new("boot").attr("order", o)),
            )
            .child_opt(self.mtu.map(|m| Element::new("mtu").attr("size", m)))
            .child_opt(
                self.link_up
                    .map(|up| Element::new("link").attr("state", if up { "up" } else { "down" })),
            );
        el.children
            .extend(self.unhandled.iter().cloned().map(Node::Element));
        push_addr(&mut el, &self.address);
        el
    }
}
