//! libvirt's host interface document (formatinterface): `<interface type='ethernet|
//! bridge|bond|vlan' name>` with `<start>`, `<mac>`, `<mtu>`, `<link>`, `<protocol>`,
//! and the bridge's ports, the bond's ports or the vlan's device. Parsed into types
//! whose constructors check every value; written back in libvirt's layout.

use std::net::IpAddr;

use common::xml::{parse_root, Element, XmlError};

use crate::xml::Mac;

/// A kernel link name: 1-15 bytes, no `/`, `:`, whitespace or control characters, not
/// `.` or `..` (what the kernel's `dev_valid_name` accepts, minus `:`, which ifupdown
/// and netcf reserve for aliases).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IfName(String);

impl IfName {
    pub fn parse(element: &str, s: &str) -> Result<IfName, XmlError> {
        let bad = |why: &str| XmlError::invalid(element, "attribute 'name'", s, why);
        if s.is_empty() || s.len() > 15 {
            return Err(bad("an interface name has 1 to 15 characters"));
        }
        if s == "." || s == ".." {
            return Err(bad("not a usable interface name"));
        }
        if s.chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
        {
            return Err(bad("no '/', ':', spaces or control characters"));
        }
        Ok(IfName(s.to_owned()))
    }

    /// A name the kernel reported: it refuses what `parse` refuses, so it is not
    /// checked again.
    pub fn from_kernel(s: &str) -> IfName {
        IfName(s.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for IfName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartMode {
    OnBoot,
    None,
    Hotplug,
}

impl StartMode {
    fn parse(s: &str) -> Result<Self, XmlError> {
        match s {
            "onboot" => Ok(Self::OnBoot),
            "none" => Ok(Self::None),
            "hotplug" => Ok(Self::Hotplug),
            _ => Err(XmlError::invalid(
                "start",
                "attribute 'mode'",
                s,
                "expected onboot, none or hotplug",
            )),
        }
    }
    fn as_str(self) -> &'static str {
        match self {
            Self::OnBoot => "onboot",
            Self::None => "none",
            Self::Hotplug => "hotplug",
        }
    }
}

/// The bonding modes of the kernel's bonding driver, by libvirt's names.
pub const BOND_MODES: [&str; 7] = [
    "balance-rr",
    "active-backup",
    "balance-xor",
    "broadcast",
    "802.3ad",
    "balance-tlb",
    "balance-alb",
];

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Ethernet,
    Bridge {
        stp: Option<bool>,
        /// Forward delay in centiseconds, the kernel's unit (libvirt writes seconds
        /// with fractions).
        delay_cs: Option<u32>,
        ports: Vec<Iface>,
    },
    Bond {
        /// Index into [`BOND_MODES`] (the kernel's mode number).
        mode: Option<u8>,
        /// `<miimon freq>` in milliseconds.
        miimon: Option<u32>,
        ports: Vec<Iface>,
    },
    Vlan {
        tag: u16,
        device: IfName,
    },
}

impl Kind {
    pub fn type_name(&self) -> &'static str {
        match self {
            Kind::Ethernet => "ethernet",
            Kind::Bridge { .. } => "bridge",
            Kind::Bond { .. } => "bond",
            Kind::Vlan { .. } => "vlan",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protocol {
    pub family: Family,
    /// `<dhcp/>`: addresses come from a DHCP client this daemon does not run; kept
    /// for the round trip (netcf hands it to the distribution's scripts).
    pub dhcp: bool,
    /// `<autoconf/>` (IPv6 SLAAC, the kernel's default).
    pub autoconf: bool,
    pub ips: Vec<(IpAddr, u8)>,
    pub gateway: Option<IpAddr>,
}

/// What the kernel says of a live link (`<link state speed>`); never parsed from a
/// definition, only written for an active interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    pub state: String,
    pub speed: Option<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Iface {
    pub name: IfName,
    pub kind: Kind,
    pub start: Option<StartMode>,
    pub mac: Option<Mac>,
    pub mtu: Option<u32>,
    pub link: Option<LinkState>,
    pub protocols: Vec<Protocol>,
}

impl Iface {
    /// Parses a whole definition. Ports are parsed by the same function one level down
    /// (a bridge's port may be a bond or vlan, a bond's ports are ethernet).
    pub fn from_xml(text: &str) -> Result<Iface, XmlError> {
        let root = parse_root(text, "interface")?;
        let iface = parse_iface(&root, 0)?;
        if iface.name.as_str() == "lo" && iface.kind != Kind::Ethernet {
            return Err(XmlError::invalid(
                "interface",
                "attribute 'name'",
                "lo",
                "the loopback link cannot be redefined as another type",
            ));
        }
        Ok(iface)
    }

    pub fn to_xml(&self) -> String {
        self.to_element().to_xml()
    }

    pub fn to_element(&self) -> Element {
        let mut el = Element::new("interface")
            .attr("type", self.kind.type_name())
            .attr("name", &self.name);
        if let Some(s) = self.start {
            el.push(Element::new("start").attr("mode", s.as_str()));
        }
        if let Some(m) = self.mac {
            el.push(Element::new("mac").attr("address", m));
        }
        if let Some(m) = self.mtu {
            el.push(Element::new("mtu").attr("size", m));
        }
        if let Some(l) = &self.link {
            el.push(
                Element::new("link")
                    .attr_opt("speed", l.speed)
                    .attr("state", &l.state),
            );
        }
        for p in &self.protocols {
            el.push(protocol_element(p));
        }
        match &self.kind {
            Kind::Ethernet => {}
            Kind::Bridge {
                stp,
                delay_cs,
                ports,
            } => {
                let mut b = Element::new("bridge")
                    .attr_opt("stp", stp.map(|s| if s { "on" } else { "off" }))
                    .attr_opt("delay", delay_cs.map(fmt_delay));
                for p in ports {
                    b.push(p.to_element());
                }
                el.push(b);
            }
            Kind::Bond {
                mode,
                miimon,
                ports,
            } => {
                let mut b = Element::new("bond")
                    .attr_opt("mode", mode.and_then(|m| BOND_MODES.get(usize::from(m))));
                if let Some(f) = miimon {
                    b.push(Element::new("miimon").attr("freq", f));
                }
                for p in ports {
                    b.push(p.to_element());
                }
                el.push(b);
            }
            Kind::Vlan { tag, device } => el.push(
                Element::new("vlan")
                    .attr("tag", tag)
                    .child(Element::new("interface").attr("name", device)),
            ),
        }
        el
    }

    /// Every link name this definition makes or uses: itself and its ports.
    pub fn names(&self) -> Vec<&IfName> {
        let mut out = vec![&self.name];
        match &self.kind {
            Kind::Bridge { ports, .. } | Kind::Bond { ports, .. } => {
                for p in ports {
                    out.extend(p.names());
                }
            }
            Kind::Ethernet | Kind::Vlan { .. } => {}
        }
        out
    }
}

/// Centiseconds as seconds: `0`, `2`, `0.01`, `1.5`.
fn fmt_delay(cs: u32) -> String {
    match cs % 100 {
        0 => (cs / 100).to_string(),
        f if f % 10 == 0 => format!("{}.{}", cs / 100, f / 10),
        f => format!("{}.{f:02}", cs / 100),
    }
}

fn protocol_element(p: &Protocol) -> Element {
    let mut el = Element::new("protocol").attr(
        "family",
        match p.family {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        },
    );
    if p.autoconf {
        el.push(Element::new("autoconf"));
    }
    if p.dhcp {
        el.push(Element::new("dhcp"));
    }
    for (a, prefix) in &p.ips {
        el.push(Element::new("ip").attr("address", a).attr("prefix", prefix));
    }
    if let Some(g) = p.gateway {
        el.push(Element::new("route").attr("gateway", g));
    }
    el
}

fn parse_iface(el: &Element, depth: u8) -> Result<Iface, XmlError> {
    let name = IfName::parse("interface", el.req_attr("name")?)?;
    let ty = el.req_attr("type")?;
    let kind = match (ty, depth) {
        ("ethernet", _) => Kind::Ethernet,
        ("bridge", 0) => parse_bridge(el, depth)?,
        ("bond", 0 | 1) => parse_bond(el, depth)?,
        ("vlan", 0 | 1) => parse_vlan(el)?,
        ("bridge" | "bond" | "vlan", _) => {
            return Err(XmlError::invalid(
                "interface",
                "attribute 'type'",
                ty,
                "not allowed as a port here (a bridge's ports may be ethernet, bond or vlan; a bond's, ethernet)",
            ))
        }
        _ => {
            return Err(XmlError::invalid(
                "interface",
                "attribute 'type'",
                ty,
                "expected ethernet, bridge, bond or vlan",
            ))
        }
    };
    let start = match el.first("start") {
        Some(s) => Some(StartMode::parse(s.req_attr("mode")?)?),
        None => None,
    };
    let mac = match el.first("mac") {
        Some(m) => Some(Mac::parse("mac", m.req_attr("address")?)?),
        None => None,
    };
    let mtu = match el.first("mtu") {
        Some(m) => {
            let size: u32 = m
                .parse_attr("size")?
                .ok_or_else(|| XmlError::missing("mtu", "attribute 'size'"))?;
            if !(68..=65535).contains(&size) {
                return Err(XmlError::invalid(
                    "mtu",
                    "attribute 'size'",
                    &size.to_string(),
                    "expected 68 to 65535",
                ));
            }
            Some(size)
        }
        None => None,
    };
    let mut protocols = Vec::new();
    for p in el.children_named("protocol") {
        let proto = parse_protocol(p)?;
        if protocols
            .iter()
            .any(|q: &Protocol| q.family == proto.family)
        {
            return Err(XmlError::invalid(
                "protocol",
                "attribute 'family'",
                p.get_attr("family").unwrap_or_default(),
                "given twice",
            ));
        }
        protocols.push(proto);
    }
    Ok(Iface {
        name,
        kind,
        start,
        mac,
        mtu,
        link: None,
        protocols,
    })
}

fn parse_ports(parent: &Element, depth: u8) -> Result<Vec<Iface>, XmlError> {
    let mut ports: Vec<Iface> = Vec::new();
    for p in parent.children_named("interface") {
        let port = parse_iface(p, depth + 1)?;
        if ports.iter().any(|q| q.name == port.name) {
            return Err(XmlError::invalid(
                &parent.name,
                "port",
                port.name.as_str(),
                "listed twice",
            ));
        }
        ports.push(port);
    }
    Ok(ports)
}

fn parse_bridge(el: &Element, depth: u8) -> Result<Kind, XmlError> {
    let b = el
        .first("bridge")
        .ok_or_else(|| XmlError::missing("interface", "element <bridge>"))?;
    let stp = match b.get_attr("stp") {
        None => None,
        Some("on") => Some(true),
        Some("off") => Some(false),
        Some(v) => {
            return Err(XmlError::invalid(
                "bridge",
                "attribute 'stp'",
                v,
                "expected on or off",
            ))
        }
    };
    let delay: Option<f64> = b.parse_attr("delay")?;
    let delay_cs = match delay {
        // STP limits the forward delay to 30 s; the kernel keeps centiseconds.
        Some(d) if !d.is_finite() || !(0.0..=30.0).contains(&d) => {
            return Err(XmlError::invalid(
                "bridge",
                "attribute 'delay'",
                &d.to_string(),
                "expected 0 to 30 seconds",
            ))
        }
        // In range, so the rounded value fits.
        Some(d) => Some((d * 100.0).round() as u32),
        None => None,
    };
    let ports = parse_ports(b, depth)?;
    Ok(Kind::Bridge {
        stp,
        delay_cs,
        ports,
    })
}

fn parse_bond(el: &Element, depth: u8) -> Result<Kind, XmlError> {
    let b = el
        .first("bond")
        .ok_or_else(|| XmlError::missing("interface", "element <bond>"))?;
    let mode = match b.get_attr("mode") {
        None => None,
        Some(m) => Some(
            BOND_MODES
                .iter()
                .position(|n| *n == m)
                .and_then(|i| u8::try_from(i).ok())
                .ok_or_else(|| {
                    XmlError::invalid(
                        "bond",
                        "attribute 'mode'",
                        m,
                        format!("expected one of {}", BOND_MODES.join(", ")),
                    )
                })?,
        ),
    };
    let miimon = match b.first("miimon") {
        Some(m) => Some(
            m.parse_attr::<u32>("freq")?
                .ok_or_else(|| XmlError::missing("miimon", "attribute 'freq'"))?,
        ),
        None => None,
    };
    let ports = parse_ports(b, depth)?;
    if ports.iter().any(|p| p.kind != Kind::Ethernet) {
        return Err(XmlError::invalid(
            "bond",
            "port",
            "",
            "a bond's ports are ethernet interfaces",
        ));
    }
    Ok(Kind::Bond {
        mode,
        miimon,
        ports,
    })
}

fn parse_vlan(el: &Element) -> Result<Kind, XmlError> {
    let v = el
        .first("vlan")
        .ok_or_else(|| XmlError::missing("interface", "element <vlan>"))?;
    let tag: u16 = v
        .parse_attr("tag")?
        .ok_or_else(|| XmlError::missing("vlan", "attribute 'tag'"))?;
    if !(1..=4094).contains(&tag) {
        return Err(XmlError::invalid(
            "vlan",
            "attribute 'tag'",
            &tag.to_string(),
            "expected 1 to 4094",
        ));
    }
    let dev = v
        .first("interface")
        .ok_or_else(|| XmlError::missing("vlan", "element <interface>"))?;
    let device = IfName::parse("interface", dev.req_attr("name")?)?;
    Ok(Kind::Vlan { tag, device })
}

fn parse_protocol(p: &Element) -> Result<Protocol, XmlError> {
    let family = match p.req_attr("family")? {
        "ipv4" => Family::V4,
        "ipv6" => Family::V6,
        f => {
            return Err(XmlError::invalid(
                "protocol",
                "attribute 'family'",
                f,
                "expected ipv4 or ipv6",
            ))
        }
    };
    let max = match family {
        Family::V4 => 32,
        Family::V6 => 128,
    };
    let mut ips = Vec::new();
    for ip in p.children_named("ip") {
        let text = ip.req_attr("address")?;
        let addr: IpAddr = text
            .trim()
            .parse()
            .map_err(|e| XmlError::invalid("ip", "attribute 'address'", text, e))?;
        if addr.is_ipv4() != (family == Family::V4) {
            return Err(XmlError::invalid(
                "ip",
                "attribute 'address'",
                text,
                "not of the protocol's family",
            ));
        }
        let prefix: u8 = ip.parse_attr("prefix")?.unwrap_or(max);
        if prefix > max {
            return Err(XmlError::invalid(
                "ip",
                "attribute 'prefix'",
                &prefix.to_string(),
                format!("expected 0 to {max}"),
            ));
        }
        ips.push((addr, prefix));
    }
    let gateway = match p.first("route") {
        Some(r) => {
            let text = r.req_attr("gateway")?;
            let g: IpAddr = text
                .trim()
                .parse()
                .map_err(|e| XmlError::invalid("route", "attribute 'gateway'", text, e))?;
            if g.is_ipv4() != (family == Family::V4) {
                return Err(XmlError::invalid(
                    "route",
                    "attribute 'gateway'",
                    text,
                    "not of the protocol's family",
                ));
            }
            Some(g)
        }
        None => None,
    };
    Ok(Protocol {
        family,
        dhcp: p.first("dhcp").is_some(),
        autoconf: p.first("autoconf").is_some(),
        ips,
        gateway,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(text: &str) -> Iface {
        let a = Iface::from_xml(text).unwrap();
        let b = Iface::from_xml(&a.to_xml()).unwrap();
        assert_eq!(a, b, "{}", a.to_xml());
        a
    }

    #[test]
    fn libvirt_dbus_minimal_ethernet() {
        let i = round_trip(
            "<interface type='ethernet' name='test-iface'><start mode='onboot'/>
             <mac address='11:22:33:44:55:66'/><mtu size='1492'/>
             <protocol family='ipv4'><ip address='192.168.15.5' prefix='24'/>
             <route gateway='192.168.15.1'/></protocol></interface>",
        );
        assert_eq!(i.name.as_str(), "test-iface");
        assert_eq!(i.mtu, Some(1492));
        assert_eq!(i.protocols[0].ips[0].1, 24);
        assert_eq!(
            i.protocols[0].gateway,
            Some("192.168.15.1".parse().unwrap())
        );
    }

    #[test]
    fn bridge_bond_vlan() {
        let b = round_trip(
            "<interface type='bridge' name='br0'><start mode='onboot'/><mtu size='1500'/>
             <protocol family='ipv6'><autoconf/><dhcp/><ip address='fd00::1' prefix='64'/></protocol>
             <bridge stp='off' delay='0.01'>
               <interface type='ethernet' name='eth0'><mac address='ab:bb:cc:dd:ee:ff'/></interface>
               <interface type='vlan' name='eth1.42'><vlan tag='42'><interface name='eth1'/></vlan></interface>
               <interface type='bond' name='bond1'><bond mode='active-backup'><miimon freq='100'/>
                 <interface type='ethernet' name='eth2'/></bond></interface>
             </bridge></interface>",
        );
        assert_eq!(
            b.names().iter().map(|n| n.as_str()).collect::<Vec<_>>(),
            ["br0", "eth0", "eth1.42", "bond1", "eth2"]
        );
        assert!(b.to_xml().contains("delay='0.01'"));
        for (d, want) in [
            ("0", "0"),
            ("2", "2"),
            ("1.5", "1.5"),
            ("0.004", "0"),
            ("29.99", "29.99"),
        ] {
            let x = format!("<interface type='bridge' name='b'><bridge delay='{d}'/></interface>");
            let w = Iface::from_xml(&x).unwrap().to_xml();
            assert!(w.contains(&format!("delay='{want}'")), "{d}: {w}");
        }
    }

    #[test]
    fn bad_documents_name_the_value() {
        for (doc, what) in [
            ("<interface type='ethernet' name='a/b'/>", "a/b"),
            ("<interface type='ethernet' name='abcdefghijklmnop'/>", "abcdefghijklmnop"),
            ("<interface type='wifi' name='w0'/>", "wifi"),
            ("<interface type='vlan' name='v'><vlan tag='4095'><interface name='e'/></vlan></interface>", "4095"),
            ("<interface type='bond' name='b'><bond mode='fast'/></interface>", "fast"),
            ("<interface type='ethernet' name='e'><mtu size='20'/></interface>", "20"),
            ("<interface type='ethernet' name='e'><protocol family='ipv4'><ip address='fd00::1'/></protocol></interface>", "fd00::1"),
            ("<interface type='ethernet' name='e'><mac address='zz'/></interface>", "zz"),
            ("<interface type='bridge' name='b'><bridge><interface type='bridge' name='c'><bridge/></interface></bridge></interface>", "bridge"),
            ("<interface type='bridge' name='b'><bridge delay='1e9'/></interface>", "1000000000"),
        ] {
            let e = Iface::from_xml(doc).unwrap_err().to_string();
            assert!(e.contains(what), "{doc}: {e}");
        }
        assert!(Iface::from_xml("<interface type='bridge' name='b'/>").is_err());
        assert!(Iface::from_xml("<network/>").is_err());
    }
}
