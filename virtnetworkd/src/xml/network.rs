//! `<network>`: name, uuid, forward, bridge, mac, mtu, domain, dns, ip (with dhcp);
//! elements this model does not type (bandwidth, portgroup, metadata, ...) are kept
//! verbatim so they round-trip.

use std::net::IpAddr;

use common::xml::{parse_root, Element, XmlError};
use uuid::Uuid;

use super::{parse_uuid, Mac};

/// Linux's IFNAMSIZ - 1.
pub const MAX_IFNAME: usize = 15;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardMode {
    Nat,
    Route,
    Open,
    Bridge,
}

impl ForwardMode {
    fn parse(s: &str) -> Result<Self, XmlError> {
        Ok(match s {
            "nat" => Self::Nat,
            "route" => Self::Route,
            "open" => Self::Open,
            "bridge" => Self::Bridge,
            _ => {
                return Err(XmlError::invalid(
                    "forward",
                    "mode",
                    s,
                    "supported modes are nat, route, open, bridge",
                ))
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Nat => "nat",
            Self::Route => "route",
            Self::Open => "open",
            Self::Bridge => "bridge",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub mode: ForwardMode,
    pub dev: Option<String>,
    /// `<nat>`, `<interface>` and the like, kept as written.
    pub children: Vec<Element>,
}

/// What `<nat>` asks for (see `Network::nat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NatRange {
    pub addr: Option<(std::net::Ipv4Addr, std::net::Ipv4Addr)>,
    pub ports: Option<(u16, u16)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Bridge {
    pub name: Option<String>,
    pub stp: Option<bool>,
    pub delay: Option<u32>,
    pub mac_table_manager: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsHost {
    pub ip: IpAddr,
    pub hostnames: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dns {
    pub enable: Option<String>,
    pub hosts: Vec<DnsHost>,
    /// forwarders, txt, srv: kept as written.
    pub other: Vec<Element>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpHost {
    pub mac: Option<Mac>,
    pub name: Option<String>,
    pub ip: IpAddr,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Dhcp {
    pub ranges: Vec<(IpAddr, IpAddr)>,
    pub hosts: Vec<DhcpHost>,
    /// `<bootp>`.
    pub other: Vec<Element>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ip {
    pub address: IpAddr,
    pub prefix: u8,
    /// Whether the document used `netmask=` (written back the same way).
    pub netmask_form: bool,
    pub dhcp: Option<Dhcp>,
}

impl Ip {
    pub fn family(&self) -> &'static str {
        if self.address.is_ipv4() {
            "ipv4"
        } else {
            "ipv6"
        }
    }

    /// Whether `a` lies in this address's subnet.
    pub fn contains(&self, a: &IpAddr) -> bool {
        subnet_contains(&self.address, self.prefix, a)
    }

    /// The network address (host bits cleared).
    pub fn network(&self) -> IpAddr {
        mask(&self.address, self.prefix)
    }

    pub fn netmask_v4(&self) -> Option<std::net::Ipv4Addr> {
        match self.address {
            IpAddr::V4(_) => Some(std::net::Ipv4Addr::from(prefix_mask32(self.prefix))),
            IpAddr::V6(_) => None,
        }
    }
}

fn prefix_mask32(p: u8) -> u32 {
    if p == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(p.min(32)))
    }
}

fn prefix_mask128(p: u8) -> u128 {
    if p == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(p.min(128)))
    }
}

pub fn mask(a: &IpAddr, prefix: u8) -> IpAddr {
    match a {
        IpAddr::V4(v) => IpAddr::V4((u32::from(*v) & prefix_mask32(prefix)).into()),
        IpAddr::V6(v) => IpAddr::V6((u128::from(*v) & prefix_mask128(prefix)).into()),
    }
}

pub fn subnet_contains(net: &IpAddr, prefix: u8, a: &IpAddr) -> bool {
    net.is_ipv4() == a.is_ipv4() && mask(net, prefix) == mask(a, prefix)
}

/// Whether two subnets share any address.
pub fn overlaps(a: &Ip, b: &Ip) -> bool {
    let p = a.prefix.min(b.prefix);
    subnet_contains(&a.address, p, &b.address)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    pub name: String,
    pub uuid: Uuid,
    pub forward: Option<Forward>,
    pub bridge: Bridge,
    pub mac: Option<Mac>,
    pub mtu: Option<u32>,
    pub domain: Option<String>,
    pub dns: Option<Dns>,
    pub ips: Vec<Ip>,
    /// Everything else (bandwidth, portgroup, metadata, ...), in document order.
    pub other: Vec<Element>,
}

/// A DNS-style name: what may reach dnsmasq's hosts files and config. Rejecting
/// everything else keeps newlines, commas and spaces out of its syntax.
pub fn check_hostname(element: &str, what: &str, s: &str) -> Result<(), XmlError> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && !s.starts_with(['-', '.'])
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(XmlError::invalid(
            element,
            what,
            s,
            "only letters, digits, '-', '_' and '.' are allowed",
        ))
    }
}

fn check_ifname(s: &str) -> Result<(), XmlError> {
    if s.is_empty() || s.len() > MAX_IFNAME {
        return Err(XmlError::invalid(
            "bridge",
            "name",
            s,
            format!("interface names are 1 to {MAX_IFNAME} characters"),
        ));
    }
    if s == "."
        || s == ".."
        || s.bytes()
            .any(|b| b == b'/' || b == b':' || b <= b' ' || b > 126)
    {
        return Err(XmlError::invalid(
            "bridge",
            "name",
            s,
            "not a valid interface name",
        ));
    }
    Ok(())
}

fn parse_ip_attr(element: &str, what: &str, s: &str) -> Result<IpAddr, XmlError> {
    s.parse()
        .map_err(|_| XmlError::invalid(element, what, s, "not an IP address"))
}

fn parse_yes_no(element: &str, what: &str, s: &str) -> Result<bool, XmlError> {
    match s {
        "on" | "yes" => Ok(true),
        "off" | "no" => Ok(false),
        _ => Err(XmlError::invalid(element, what, s, "expected on or off")),
    }
}

fn netmask_prefix(s: &str) -> Result<u8, XmlError> {
    let m: std::net::Ipv4Addr = s
        .parse()
        .map_err(|_| XmlError::invalid("ip", "netmask", s, "not an IPv4 netmask"))?;
    let m = u32::from(m);
    let p = m.leading_ones();
    if m.checked_shl(p).unwrap_or(0) != 0 {
        return Err(XmlError::invalid("ip", "netmask", s, "not contiguous"));
    }
    Ok(p as u8)
}

impl Network {
    pub fn from_xml(text: &str) -> Result<Network, XmlError> {
        let root = parse_root(text, "network")?;
        Self::from_element(&root)
    }

    pub fn from_element(root: &Element) -> Result<Network, XmlError> {
        let name = root
            .child_text("name")
            .map(|s| s.trim().to_owned())
            .ok_or_else(|| XmlError::missing("network", "<name>"))?;
        if name.is_empty() || name.contains('/') || name.chars().any(|c| c.is_control()) {
            return Err(XmlError::invalid(
                "name",
                "value",
                &name,
                "a network name may not be empty or contain '/' or control characters",
            ));
        }
        let uuid = parse_uuid(root)?.unwrap_or_else(Uuid::new_v4);
        let mut net = Network {
            name,
            uuid,
            forward: None,
            bridge: Bridge::default(),
            mac: None,
            mtu: None,
            domain: None,
            dns: None,
            ips: Vec::new(),
            other: Vec::new(),
        };
        for el in root.elements() {
            match el.name.as_str() {
                "name" | "uuid" => {}
                "forward" => {
                    let mode = ForwardMode::parse(el.get_attr("mode").unwrap_or("nat"))?;
                    net.forward = Some(Forward {
                        mode,
                        dev: el.get_attr("dev").map(str::to_owned),
                        children: el.elements().cloned().collect(),
                    });
                }
                "bridge" => {
                    if let Some(n) = el.get_attr("name") {
                        check_ifname(n)?;
                    }
                    net.bridge = Bridge {
                        name: el.get_attr("name").map(str::to_owned),
                        stp: el
                            .get_attr("stp")
                            .map(|s| parse_yes_no("bridge", "stp", s))
                            .transpose()?,
                        delay: el.parse_attr("delay")?,
                        mac_table_manager: el.get_attr("macTableManager").map(str::to_owned),
                    };
                }
                "mac" => net.mac = Some(Mac::parse("mac", el.req_attr("address")?)?),
                "mtu" => net.mtu = el.parse_attr("size")?,
                "domain" => {
                    let d = el.req_attr("name")?;
                    check_hostname("domain", "name", d)?;
                    net.domain = Some(d.to_owned());
                }
                "dns" => net.dns = Some(parse_dns(el)?),
                "ip" => net.ips.push(parse_ip(el)?),
                _ => net.other.push(el.clone()),
            }
        }
        net.validate()?;
        Ok(net)
    }

    /// Checks that hold between elements.
    pub fn validate(&self) -> Result<(), XmlError> {
        self.nat()?;
        if let Some(f) = &self.forward {
            if f.mode == ForwardMode::Bridge && self.bridge.name.is_none() {
                return Err(XmlError::missing("bridge", "name (forward mode='bridge')"));
            }
            if f.mode == ForwardMode::Bridge && !self.ips.is_empty() {
                return Err(XmlError::invalid(
                    "ip",
                    "element",
                    "ip",
                    "a bridge-mode network has no addresses of its own",
                ));
            }
        }
        for ip in &self.ips {
            if let Some(dhcp) = &ip.dhcp {
                for (s, e) in &dhcp.ranges {
                    for a in [s, e] {
                        if !ip.contains(a) {
                            return Err(XmlError::invalid(
                                "range",
                                "address",
                                &a.to_string(),
                                format!("outside the subnet {}/{}", ip.network(), ip.prefix),
                            ));
                        }
                    }
                    if order(s) > order(e) {
                        return Err(XmlError::invalid(
                            "range",
                            "end",
                            &e.to_string(),
                            "range ends before it starts",
                        ));
                    }
                }
                for h in &dhcp.hosts {
                    if !ip.contains(&h.ip) {
                        return Err(XmlError::invalid(
                            "host",
                            "ip",
                            &h.ip.to_string(),
                            format!("outside the subnet {}/{}", ip.network(), ip.prefix),
                        ));
                    }
                }
            }
        }
        for (i, a) in self.ips.iter().enumerate() {
            for b in &self.ips[i + 1..] {
                if overlaps(a, b) {
                    return Err(XmlError::invalid(
                        "ip",
                        "address",
                        &b.address.to_string(),
                        "overlaps another <ip> of this network",
                    ));
                }
            }
        }
        Ok(())
    }

    /// Whether the daemon creates (and owns) the bridge: every mode but bridge.
    pub fn owns_bridge(&self) -> bool {
        !matches!(&self.forward, Some(f) if f.mode == ForwardMode::Bridge)
    }

    /// `<forward><nat><address start end/><port start end/></nat>`: the SNAT address
    /// range and the source-port range of the masquerade (libvirt's defaults when absent:
    /// masquerade to the outgoing address, ports 1024-65535 for TCP/UDP).
    pub fn nat(&self) -> Result<NatRange, XmlError> {
        let mut r = NatRange::default();
        let Some(nat) = self
            .forward
            .as_ref()
            .and_then(|f| f.children.iter().find(|c| c.name == "nat"))
        else {
            return Ok(r);
        };
        if let Some(a) = nat.first("address") {
            let start: std::net::Ipv4Addr = a
                .parse_attr("start")?
                .ok_or_else(|| XmlError::missing("address", "start"))?;
            let end: std::net::Ipv4Addr = a.parse_attr("end")?.unwrap_or(start);
            if u32::from(start) > u32::from(end) {
                return Err(XmlError::invalid(
                    "address",
                    "end",
                    &end.to_string(),
                    "before start",
                ));
            }
            r.addr = Some((start, end));
        }
        if let Some(p) = nat.first("port") {
            let start: u16 = p
                .parse_attr("start")?
                .ok_or_else(|| XmlError::missing("port", "start"))?;
            let end: u16 = p.parse_attr("end")?.unwrap_or(start);
            if start == 0 || start > end {
                return Err(XmlError::invalid(
                    "port",
                    "end",
                    &end.to_string(),
                    "the range must be 1-65535 and end >= start",
                ));
            }
            r.ports = Some((start, end));
        }
        Ok(r)
    }

    pub fn forward_mode(&self) -> Option<ForwardMode> {
        self.forward.as_ref().map(|f| f.mode)
    }

    /// Fills what libvirt fills at define time: bridge name (first free virbrN among
    /// `taken`), STP on, delay 0, a MAC for the bridge.
    pub fn fill_defaults(&mut self, taken: &[String]) {
        if !self.owns_bridge() {
            return;
        }
        if self.bridge.name.is_none() {
            let name = (0..)
                .map(|n| format!("virbr{n}"))
                .find(|n| !taken.iter().any(|t| t == n))
                .unwrap_or_default();
            self.bridge.name = Some(name);
        }
        self.bridge.stp.get_or_insert(true);
        self.bridge.delay.get_or_insert(0);
        if self.mac.is_none() {
            self.mac = Some(Mac::random());
        }
    }

    pub fn bridge_name(&self) -> &str {
        self.bridge.name.as_deref().unwrap_or("")
    }

    pub fn to_element(&self) -> Element {
        let mut root = Element::new("network");
        root.push(Element::with_text("name", &self.name));
        root.push(Element::with_text("uuid", self.uuid.to_string()));
        for o in self.other.iter().filter(|e| e.name == "metadata") {
            root.push(o.clone());
        }
        if let Some(f) = &self.forward {
            let mut e = Element::new("forward")
                .attr_opt("dev", f.dev.as_deref())
                .attr("mode", f.mode.as_str());
            for c in &f.children {
                e.push(c.clone());
            }
            root.push(e);
        }
        let b = &self.bridge;
        if b.name.is_some() || b.stp.is_some() || b.delay.is_some() || b.mac_table_manager.is_some()
        {
            root.push(
                Element::new("bridge")
                    .attr_opt("name", b.name.as_deref())
                    .attr_opt("stp", b.stp.map(|s| if s { "on" } else { "off" }))
                    .attr_opt("delay", b.delay)
                    .attr_opt("macTableManager", b.mac_table_manager.as_deref()),
            );
        }
        if let Some(m) = self.mtu {
            root.push(Element::new("mtu").attr("size", m));
        }
        if let Some(m) = &self.mac {
            root.push(Element::new("mac").attr("address", m));
        }
        if let Some(d) = &self.domain {
            root.push(Element::new("domain").attr("name", d));
        }
        if let Some(d) = &self.dns {
            let mut e = Element::new("dns").attr_opt("enable", d.enable.as_deref());
            for o in &d.other {
                e.push(o.clone());
            }
            for h in &d.hosts {
                e.push(dns_host_element(h));
            }
            root.push(e);
        }
        for o in self.other.iter().filter(|e| e.name != "metadata") {
            root.push(o.clone());
        }
        for ip in &self.ips {
            let mut e = Element::new("ip")
                .attr_opt(
                    "family",
                    if ip.address.is_ipv6() {
                        Some("ipv6")
                    } else {
                        None
                    },
                )
                .attr("address", ip.address);
            e = match ip.netmask_v4().filter(|_| ip.netmask_form) {
                Some(m) => e.attr("netmask", m),
                None => e.attr("prefix", ip.prefix),
            };
            if let Some(d) = &ip.dhcp {
                let mut de = Element::new("dhcp");
                for (s, en) in &d.ranges {
                    de.push(Element::new("range").attr("start", s).attr("end", en));
                }
                for h in &d.hosts {
                    de.push(dhcp_host_element(h));
                }
                for o in &d.other {
                    de.push(o.clone());
                }
                e.push(de);
            }
            root.push(e);
        }
        root
    }

    pub fn to_xml(&self) -> String {
        self.to_element().to_xml()
    }
}

fn order(a: &IpAddr) -> u128 {
    match a {
        IpAddr::V4(v) => u128::from(u32::from(*v)),
        IpAddr::V6(v) => u128::from(*v),
    }
}

pub fn dns_host_element(h: &DnsHost) -> Element {
    let mut e = Element::new("host").attr("ip", h.ip);
    for n in &h.hostnames {
        e.push(Element::with_text("hostname", n));
    }
    e
}

pub fn dhcp_host_element(h: &DhcpHost) -> Element {
    Element::new("host")
        .attr_opt("mac", h.mac.map(|m| m.to_string()))
        .attr_opt("name", h.name.as_deref())
        .attr("ip", h.ip)
}

pub fn parse_dns_host(el: &Element) -> Result<DnsHost, XmlError> {
    let ip = parse_ip_attr("host", "ip", el.req_attr("ip")?)?;
    let mut hostnames = Vec::new();
    for h in el.children_named("hostname") {
        let n = h.text().trim().to_owned();
        check_hostname("hostname", "value", &n)?;
        hostnames.push(n);
    }
    if hostnames.is_empty() {
        return Err(XmlError::missing("host", "<hostname>"));
    }
    Ok(DnsHost { ip, hostnames })
}

pub fn parse_dhcp_host(el: &Element) -> Result<DhcpHost, XmlError> {
    let mac = el
        .get_attr("mac")
        .map(|m| Mac::parse("host", m))
        .transpose()?;
    let name = el.get_attr("name").map(str::to_owned);
    if let Some(n) = &name {
        check_hostname("host", "name", n)?;
    }
    if mac.is_none() && name.is_none() {
        return Err(XmlError::missing("host", "mac or name"));
    }
    let ip = parse_ip_attr("host", "ip", el.req_attr("ip")?)?;
    Ok(DhcpHost { mac, name, ip })
}

fn parse_dns(el: &Element) -> Result<Dns, XmlError> {
    let mut dns = Dns {
        enable: el.get_attr("enable").map(str::to_owned),
        ..Dns::default()
    };
    for c in el.elements() {
        match c.name.as_str() {
            "host" => dns.hosts.push(parse_dns_host(c)?),
            "forwarder" => {
                if let Some(a) = c.get_attr("addr") {
                    parse_ip_attr("forwarder", "addr", a)?;
                }
                if let Some(d) = c.get_attr("domain") {
                    check_hostname("forwarder", "domain", d)?;
                }
                dns.other.push(c.clone());
            }
            "txt" | "srv" => {
                // Their values reach dnsmasq only through the escaping function; the
                // names must still be DNS names.
                for attr in ["name", "service", "domain", "target"] {
                    if let Some(v) = c.get_attr(attr) {
                        check_hostname(&c.name, attr, v)?;
                    }
                }
                dns.other.push(c.clone());
            }
            _ => dns.other.push(c.clone()),
        }
    }
    Ok(dns)
}

fn parse_ip(el: &Element) -> Result<Ip, XmlError> {
    let address = parse_ip_attr("ip", "address", el.req_attr("address")?)?;
    if let Some(f) = el.get_attr("family") {
        let want_v6 = match f {
            "ipv4" => false,
            "ipv6" => true,
            _ => return Err(XmlError::invalid("ip", "family", f, "ipv4 or ipv6")),
        };
        if want_v6 != address.is_ipv6() {
            return Err(XmlError::invalid(
                "ip",
                "address",
                &address.to_string(),
                format!("not an {f} address"),
            ));
        }
    }
    let max = if address.is_ipv4() { 32 } else { 128 };
    let (prefix, netmask_form) = match (el.get_attr("prefix"), el.get_attr("netmask")) {
        (Some(_), Some(_)) => {
            return Err(XmlError::invalid(
                "ip",
                "netmask",
                "",
                "give prefix or netmask, not both",
            ))
        }
        (Some(p), None) => (
            p.parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| XmlError::invalid("ip", "prefix", p, "out of range"))?,
            false,
        ),
        (None, Some(m)) if address.is_ipv4() => (netmask_prefix(m)?, true),
        (None, Some(m)) => {
            return Err(XmlError::invalid("ip", "netmask", m, "IPv6 takes a prefix"))
        }
        (None, None) if address.is_ipv4() => (24, false),
        (None, None) => (64, false),
    };
    let mut ip = Ip {
        address,
        prefix,
        netmask_form,
        dhcp: None,
    };
    if let Some(d) = el.first("dhcp") {
        let mut dhcp = Dhcp::default();
        for c in d.elements() {
            match c.name.as_str() {
                "range" => {
                    let s = parse_ip_attr("range", "start", c.req_attr("start")?)?;
                    let e = parse_ip_attr("range", "end", c.req_attr("end")?)?;
                    dhcp.ranges.push((s, e));
                }
                "host" => dhcp.hosts.push(parse_dhcp_host(c)?),
                "bootp" => {
                    if let Some(f) = c.get_attr("file") {
                        crate::dnsmasq::check_value(f)
                            .map_err(|r| XmlError::invalid("bootp", "file", f, r))?;
                    }
                    if let Some(s) = c.get_attr("server") {
                        check_hostname("bootp", "server", s)?;
                    }
                    dhcp.other.push(c.clone());
                }
                _ => dhcp.other.push(c.clone()),
            }
        }
        ip.dhcp = Some(dhcp);
    }
    Ok(ip)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAT: &str = "<network>
  <name>default</name>
  <uuid>3e3fce45-4f53-4fa7-bb32-11f34168b82b</uuid>
  <forward mode='nat'>
    <nat>
      <port start='1024' end='65535'/>
    </nat>
  </forward>
  <bridge name='virbr0' stp='on' delay='0'/>
  <mac address='52:54:00:0a:cd:21'/>
  <domain name='example'/>
  <dns>
    <host ip='192.168.122.2'>
      <hostname>myhost</hostname>
    </host>
  </dns>
  <bandwidth>
    <inbound average='1000'/>
  </bandwidth>
  <ip address='192.168.122.1' netmask='255.255.255.0'>
    <dhcp>
      <range start='192.168.122.2' end='192.168.122.254'/>
      <host mac='52:54:00:6c:3c:01' name='vm1' ip='192.168.122.11'/>
    </dhcp>
  </ip>
  <ip family='ipv6' address='2001:db8:ca2:2::1' prefix='64'/>
</network>
";

    #[test]
    fn nat_ranges_are_read_and_checked() {
        let doc = |nat: &str| {
            format!("<network><name>n</name><forward mode='nat'><nat>{nat}</nat></forward><ip address='10.1.0.1' prefix='24'/></network>")
        };
        let n = Network::from_xml(&doc(
            "<address start='192.0.2.5' end='192.0.2.9'/><port start='2000' end='3000'/>",
        ))
        .unwrap();
        let r = n.nat().unwrap();
        assert_eq!(
            r.addr,
            Some(("192.0.2.5".parse().unwrap(), "192.0.2.9".parse().unwrap()))
        );
        assert_eq!(r.ports, Some((2000, 3000)));
        assert!(n.to_xml().contains("<port start='2000' end='3000'/>"));
        for bad in [
            "<address start='192.0.2.9' end='192.0.2.5'/>",
            "<address start='nope'/>",
            "<port start='3000' end='2000'/>",
            "<port start='0' end='10'/>",
            "<port start='1' end='70000'/>",
        ] {
            assert!(Network::from_xml(&doc(bad)).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn nat_network_round_trips() {
        let n = Network::from_xml(NAT).unwrap();
        assert_eq!(n.forward_mode(), Some(ForwardMode::Nat));
        assert_eq!(n.ips[0].prefix, 24);
        assert_eq!(n.ips.len(), 2);
        let out = n.to_xml();
        assert_eq!(out, NAT);
        assert_eq!(Network::from_xml(&out).unwrap(), n);
    }

    #[test]
    fn defaults_are_filled_like_libvirt() {
        let mut n = Network::from_xml(
            "<network><name>n</name><ip address='10.0.0.1' prefix='24'/></network>",
        )
        .unwrap();
        n.fill_defaults(&["virbr0".into()]);
        assert_eq!(n.bridge.name.as_deref(), Some("virbr1"));
        assert_eq!(n.bridge.stp, Some(true));
        assert_eq!(n.mac.unwrap().0[..3], [0x52, 0x54, 0x00]);
        // isolated: no forward element is written back
        let again = Network::from_xml(&n.to_xml()).unwrap();
        assert_eq!(again, n);
        assert!(!n.to_xml().contains("<forward"));
    }

    fn err(xml: &str) -> String {
        Network::from_xml(xml).unwrap_err().to_string()
    }

    #[test]
    fn bad_input_is_rejected_with_a_reason() {
        assert!(err("<network><name>a/b</name></network>").contains("'/'"));
        assert!(
            err("<network><name>a</name><bridge name='abcdefghijklmnop'/></network>")
                .contains("1 to 15")
        );
        assert!(err("<network><name>a</name><ip address='10.0.0.1' prefix='24'><dhcp><range start='10.0.1.2' end='10.0.1.9'/></dhcp></ip></network>").contains("outside the subnet"));
        assert!(err("<network><name>a</name><ip address='10.0.0.1' prefix='24'><dhcp><host mac='52:54:00:00:00:01' name='x&#10;dhcp-option=3' ip='10.0.0.5'/></dhcp></ip></network>").contains("only letters"));
        assert!(err("<network><name>a</name><dns><host ip='10.0.0.2'><hostname>a,b</hostname></host></dns></network>").contains("only letters"));
        assert!(err(
            "<network><name>a</name><ip address='10.0.0.1' netmask='255.0.255.0'/></network>"
        )
        .contains("contiguous"));
        assert!(err("<network><name>a</name><forward mode='bogus'/></network>").contains("mode"));
    }

    #[test]
    fn subnet_overlap() {
        let a = Ip {
            address: "10.0.0.1".parse().unwrap(),
            prefix: 24,
            netmask_form: false,
            dhcp: None,
        };
        let mut b = a.clone();
        b.address = "10.0.0.200".parse().unwrap();
        b.prefix = 16;
        assert!(overlaps(&a, &b));
        b.address = "10.1.0.1".parse().unwrap();
        assert!(!overlaps(&a, &b));
    }
}
