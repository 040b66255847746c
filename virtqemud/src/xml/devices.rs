//! `<devices>`: typed devices, PCI addressing and MAC defaults.

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use common::xml::{Element, Node};

use super::{invalid, missing, yes_no, yn, DomainXmlError, Result};

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

/// A PCI address `<address type='pci' domain bus slot function/>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct PciAddr {
    pub domain: u16,
    pub bus: u8,
    pub slot: u8,
    pub function: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    Pci(PciAddr),
    Drive {
        controller: u32,
        bus: u32,
        target: u32,
        unit: u32,
    },
    /// Any other address type, kept verbatim.
    Other(Element),
}

fn parse_num(el: &Element, key: &str) -> Result<u32> {
    let Some(v) = el.get_attr(key) else {
        return Ok(0);
    };
    let r = match v.strip_prefix("0x") {
        Some(h) => u32::from_str_radix(h, 16),
        None => v.parse(),
    };
    r.map_err(|e| invalid("address", &format!("attribute '{key}'"), v, e))
}

impl Address {
    fn parse(el: &Element) -> Result<Address> {
        match el.get_attr("type") {
            Some("pci") => {
                let d = parse_num(el, "domain")?;
                let b = parse_num(el, "bus")?;
                let s = parse_num(el, "slot")?;
                let f = parse_num(el, "function")?;
                if d > 0xffff || b > 0xff || s > 0x1f || f > 7 {
                    return Err(invalid(
                        "address",
                        "pci",
                        &format!("{d:x}:{b:x}:{s:x}.{f:x}"),
                        "out of range",
                    ));
                }
                Ok(Address::Pci(PciAddr {
                    domain: d as u16,
                    bus: b as u8,
                    slot: s as u8,
                    function: f as u8,
                }))
            }
            Some("drive") => Ok(Address::Drive {
                controller: parse_num(el, "controller")?,
                bus: parse_num(el, "bus")?,
                target: parse_num(el, "target")?,
                unit: parse_num(el, "unit")?,
            }),
            _ => Ok(Address::Other(el.clone())),
        }
    }

    fn to_element(&self) -> Element {
        match self {
            Address::Pci(p) => Element::new("address")
                .attr("type", "pci")
                .attr("domain", format!("0x{:04x}", p.domain))
                .attr("bus", format!("0x{:02x}", p.bus))
                .attr("slot", format!("0x{:02x}", p.slot))
                .attr("function", format!("0x{:x}", p.function)),
            Address::Drive {
                controller,
                bus,
                target,
                unit,
            } => Element::new("address")
                .attr("type", "drive")
                .attr("controller", controller)
                .attr("bus", bus)
                .attr("target", target)
                .attr("unit", unit),
            Address::Other(e) => e.clone(),
        }
    }

    pub fn pci(&self) -> Option<PciAddr> {
        match self {
            Address::Pci(p) => Some(*p),
            _ => None,
        }
    }
}

fn addr_of(el: &Element) -> Result<Option<Address>> {
    el.first("address").map(Address::parse).transpose()
}

fn boot_of(el: &Element) -> Result<Option<u32>> {
    match el.first("boot") {
        None => Ok(None),
        Some(b) => match b.parse_attr::<u32>("order")? {
            Some(0) | None => Err(invalid(
                "boot",
                "attribute 'order'",
                b.get_attr("order").unwrap_or(""),
                "must be 1 or more",
            )),
            o => Ok(o),
        },
    }
}

fn push_addr(el: &mut Element, a: &Option<Address>) {
    if let Some(a) = a {
        el.push(a.to_element());
    }
}

fn path_text(p: &std::path::Path) -> String {
    p.display().to_string()
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskSource {
    File(PathBuf),
    Block(PathBuf),
    Volume { pool: String, volume: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskDevice {
    Disk,
    Cdrom,
    Floppy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskBus {
    Virtio,
    Sata,
    Scsi,
    Ide,
    Usb,
    Fdc,
}

impl DiskBus {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskBus::Virtio => "virtio",
            DiskBus::Sata => "sata",
            DiskBus::Scsi => "scsi",
            DiskBus::Ide => "ide",
            DiskBus::Usb => "usb",
            DiskBus::Fdc => "fdc",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DiskDriver {
    pub name: Option<String>,
    /// `raw`, `qcow2`
    pub format: Option<String>,
    pub cache: Option<String>,
    pub io: Option<String>,
    pub discard: Option<String>,
    /// Attributes not handled (`detect_zeroes`, `iothread`, `error_policy`, ...): kept,
    /// written back and refused at start by name.
    pub unhandled: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// None: an empty cdrom/floppy.
    pub source: Option<DiskSource>,
    /// The source type as written (`file`, `block`, `volume`), also for empty drives.
    pub source_type: String,
    pub device: DiskDevice,
    pub driver: DiskDriver,
    pub target_dev: String,
    pub bus: Option<DiskBus>,
    pub readonly: bool,
    pub shareable: bool,
    pub serial: Option<String>,
    pub boot_order: Option<u32>,
    pub address: Option<Address>,
    /// Children this model does not handle (`<iotune>`, `<encryption>`, ...), kept
    /// verbatim and refused at start by name.
    pub unhandled: Vec<Element>,
}

/// The element children of `el` not named in `handled`: kept to be written back, and
/// refused at start, so nothing in a definition is silently ignored.
fn unhandled(el: &Element, handled: &[&str]) -> Vec<Element> {
    el.elements()
        .filter(|c| !handled.contains(&c.name.as_str()))
        .cloned()
        .collect()
}

/// Children libvirt writes into live XML that carry nothing to honour (it makes them
/// again): dropped on input.
const REGENERATED: &[&str] = &["alias", "backingStore"];

const CACHE_MODES: &[&str] = &[
    "default",
    "none",
    "writethrough",
    "writeback",
    "directsync",
    "unsafe",
];

impl Disk {
    fn parse(el: &Element) -> Result<Disk> {
        let source_type = el.get_attr("type").unwrap_or("file").to_owned();
        let device = match el.get_attr("device").unwrap_or("disk") {
            "disk" => DiskDevice::Disk,
            "cdrom" => DiskDevice::Cdrom,
            "floppy" => DiskDevice::Floppy,
            d => {
                return Err(DomainXmlError::unsupported(
                    "disk device",
                    d,
                    "expected disk, cdrom or floppy",
                ))
            }
        };
        let src = el.first("source");
        let source = match (source_type.as_str(), src) {
            ("file", Some(s)) => s
                .get_attr("file")
                .map(|f| DiskSource::File(PathBuf::from(f))),
            ("block", Some(s)) => s
                .get_attr("dev")
                .map(|f| DiskSource::Block(PathBuf::from(f))),
            ("volume", Some(s)) => Some(DiskSource::Volume {
                pool: s.req_attr("pool")?.to_owned(),
                volume: s.req_attr("volume")?.to_owned(),
            }),
            ("file" | "block" | "volume", None) => None,
            (t, _) => {
                return Err(DomainXmlError::unsupported(
                    "disk type",
                    t,
                    "supported disk types are file, block and volume",
                ))
            }
        };
        if source.is_none() && device == DiskDevice::Disk {
            return Err(missing(
                "disk",
                "<source> (only cdrom and floppy may be empty)",
            ));
        }
        let driver = match el.first("driver") {
            None => DiskDriver::default(),
            Some(d) => {
                if let Some(n) = d.get_attr("name") {
                    if n != "qemu" {
                        return Err(DomainXmlError::unsupported(
                            "disk driver name",
                            n,
                            "only 'qemu'",
                        ));
                    }
                }
                let format = d.get_attr("type").map(str::to_owned);
                if let Some(f) = &format {
                    if !matches!(
                        f.as_str(),
                        "raw" | "qcow2" | "qed" | "vmdk" | "vdi" | "vpc" | "vhdx"
                    ) {
                        return Err(DomainXmlError::unsupported(
                            "disk driver type",
                            f,
                            "unknown image format",
                        ));
                    }
                }
                let cache = d.get_attr("cache").map(str::to_owned);
                if let Some(c) = &cache {
                    if !CACHE_MODES.contains(&c.as_str()) {
                        return Err(invalid(
                            "driver",
                            "attribute 'cache'",
                            c,
                            "unknown cache mode",
                        ));
                    }
                }
                let io = d.get_attr("io").map(str::to_owned);
                if let Some(i) = &io {
                    if !matches!(i.as_str(), "threads" | "native" | "io_uring" | "default") {
                        return Err(invalid("driver", "attribute 'io'", i, "unknown io mode"));
                    }
                }
                let discard = d.get_attr("discard").map(str::to_owned);
                if let Some(x) = &discard {
                    if !matches!(x.as_str(), "unmap" | "ignore" | "default") {
                        return Err(invalid(
                            "driver",
                            "attribute 'discard'",
                            x,
                            "expected unmap or ignore",
                        ));
                    }
                }
                DiskDriver {
                    name: d.get_attr("name").map(str::to_owned),
                    format,
                    cache,
                    io,
                    discard,
                    unhandled: d
                        .attrs
                        .iter()
                        .filter(|(k, _)| {
                            !matches!(k.as_str(), "name" | "type" | "cache" | "io" | "discard")
                        })
                        .cloned()
                        .collect(),
                }
            }
        };
        let target = el
            .first("target")
            .ok_or_else(|| missing("disk", "<target>"))?;
        let target_dev = target.req_attr("dev")?.to_owned();
        if target_dev.is_empty() || !target_dev.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(invalid(
                "disk/target",
                "attribute 'dev'",
                &target_dev,
                "must be letters and digits",
            ));
        }
        let bus = match target.get_attr("bus") {
            None => None,
            Some("virtio") => Some(DiskBus::Virtio),
            Some("sata") => Some(DiskBus::Sata),
            Some("scsi") => Some(DiskBus::Scsi),
            Some("ide") => Some(DiskBus::Ide),
            Some("usb") => Some(DiskBus::Usb),
            Some("fdc") => Some(DiskBus::Fdc),
            Some(b) => {
                return Err(DomainXmlError::unsupported(
                    "disk target bus",
                    b,
                    "expected virtio, sata, scsi, ide, usb or fdc",
                ))
            }
        };
        let serial = el.child_text("serial");
        if let Some(s) = &serial {
            if s.len() > 36
                || !s
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            {
                return Err(invalid(
                    "disk/serial",
                    "value",
                    s,
                    "at most 36 of A-Z a-z 0-9 - _ .",
                ));
            }
        }
        Ok(Disk {
            source,
            source_type,
            device,
            driver,
            target_dev,
            bus,
            readonly: el.first("readonly").is_some() || device == DiskDevice::Cdrom,
            shareable: el.first("shareable").is_some(),
            serial,
            boot_order: boot_of(el)?,
            address: addr_of(el)?,
            unhandled: unhandled(
                el,
                &[
                    &[
                        "source",
                        "driver",
                        "target",
                        "boot",
                        "readonly",
                        "shareable",
                        "serial",
                        "address",
                    ][..],
                    REGENERATED,
                ]
                .concat(),
            ),
        })
    }

    fn to_element(&self) -> Element {
        let mut el = Element::new("disk").attr("type", &self.source_type).attr(
            "device",
            match self.device {
                DiskDevice::Disk => "disk",
                DiskDevice::Cdrom => "cdrom",
                DiskDevice::Floppy => "floppy",
            },
        );
        let d = &self.driver;
        if d.name.is_some()
            || d.format.is_some()
            || d.cache.is_some()
            || d.io.is_some()
            || d.discard.is_some()
            || !d.unhandled.is_empty()
        {
            let mut e = Element::new("driver")
                .attr_opt("name", d.name.as_deref())
                .attr_opt("type", d.format.as_deref())
                .attr_opt("cache", d.cache.as_deref())
                .attr_opt("io", d.io.as_deref())
                .attr_opt("discard", d.discard.as_deref());
            e.attrs.extend(d.unhandled.iter().cloned());
            el.push(e);
        }
        match &self.source {
            Some(DiskSource::File(p)) => el.push(Element::new("source").attr("file", path_text(p))),
            Some(DiskSource::Block(p)) => el.push(Element::new("source").attr("dev", path_text(p))),
            Some(DiskSource::Volume { pool, volume }) => el.push(
                Element::new("source")
                    .attr("pool", pool)
                    .attr("volume", volume),
            ),
            None => {}
        }
        el.push(
            Element::new("target")
                .attr("dev", &self.target_dev)
                .attr_opt("bus", self.bus.map(DiskBus::as_str)),
        );
        if let Some(o) = self.boot_order {
            el.push(Element::new("boot").attr("order", o));
        }
        if self.readonly {
            el.push(Element::new("readonly"));
        }
        if self.shareable {
            el.push(Element::new("shareable"));
        }
        if let Some(s) = &self.serial {
            el.push(Element::with_text("serial", s));
        }
        el.children
            .extend(self.unhandled.iter().cloned().map(Node::Element));
        push_addr(&mut el, &self.address);
        el
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Controller {
    /// `pci`, `usb`, `scsi`, `sata`, `ide`, `virtio-serial`, ...
    pub kind: String,
    pub index: u32,
    pub model: Option<String>,
    pub address: Option<Address>,
    /// `<target chassis=>` of a PCIe root port (`chassisNr` of a pci-bridge).
    pub target_chassis: Option<u32>,
    /// `<target port=>` of a PCIe root port.
    pub target_port: Option<u32>,
    /// `ports=` of a USB controller.
    pub ports: Option<u32>,
    /// Children not handled (`<driver>`, `<master>`, ...): kept, refused at start.
    pub unhandled: Vec<Element>,
}

/// The index of a controller written without one, until it is numbered.
const UNNUMBERED: u32 = u32::MAX;

/// PCI controller models that are bridges: devices sit on the bus they make.
pub const PCI_BRIDGES: &[&str] = &[
    "pcie-root-port",
    "pci-bridge",
    "pcie-to-pci-bridge",
    "dmi-to-pci-bridge",
];

impl Controller {
    pub fn new(kind: &str, index: u32, model: Option<&str>) -> Controller {
        Controller {
            kind: kind.to_owned(),
            index,
            model: model.map(str::to_owned),
            address: None,
            target_chassis: None,
            target_port: None,
            ports: None,
            unhandled: Vec::new(),
        }
    }

    fn parse(el: &Element) -> Result<Controller> {
        let target = el.first("target");
        let num = |key: &str| -> Result<Option<u32>> {
            match target.filter(|t| t.get_attr(key).is_some()) {
                Some(t) => parse_num(t, key).map(Some),
                None => Ok(None),
            }
        };
        Ok(Controller {
            kind: el.req_attr("type")?.to_owned(),
            // Absent: numbered by `Devices::number_controllers` once all are read.
            index: el.parse_attr::<u32>("index")?.unwrap_or(UNNUMBERED),
            model: el.get_attr("model").map(str::to_owned),
            address: addr_of(el)?,
            target_chassis: match num("chassis")? {
                Some(c) => Some(c),
                None => num("chassisNr")?,
            },
            target_port: num("port")?,
            ports: el.parse_attr::<u32>("ports")?,
            // `<model name>` repeats what the model attribute says; libvirt fills it.
            unhandled: unhandled(
                el,
                &[&["address", "target", "model"][..], REGENERATED].concat(),
            ),
        })
    }

    fn to_element(&self) -> Element {
        let mut el = Element::new("controller")
            .attr("type", &self.kind)
            .attr("index", self.index)
            .attr_opt("model", self.model.as_deref())
            .attr_opt("ports", self.ports);
        if self.target_chassis.is_some() || self.target_port.is_some() {
            let key = if self.model.as_deref() == Some("pci-bridge") {
                "chassisNr"
            } else {
                "chassis"
            };
            el.push(
                Element::new("target")
                    .attr_opt(key, self.target_chassis)
                    .attr_opt("port", self.target_port.map(|p| format!("0x{p:x}"))),
            );
        }
        el.children
            .extend(self.unhandled.iter().cloned().map(Node::Element));
        push_addr(&mut el, &self.address);
        el
    }

    /// A PCI bridge or root port: it makes bus `index`.
    pub fn is_pci_bridge(&self) -> bool {
        self.kind == "pci"
            && self
                .model
                .as_deref()
                .is_some_and(|m| PCI_BRIDGES.contains(&m))
    }

    /// Whether this controller is a PCI device that needs a slot.
    pub fn needs_pci_slot(&self) -> bool {
        match self.kind.as_str() {
            "usb" => self.model.as_deref() != Some("none"),
            "scsi" | "virtio-serial" => true,
            "pci" => self.is_pci_bridge(),
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterfaceKind {
    User,
    /// A tap device made by the caller or by QEMU; `target dev` names it.
    Ethernet,
    Bridge(String),
    Network(String),
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

impl Interface {
    fn parse(el: &Element) -> Result<Interface> {
        let ty = el.req_attr("type")?;
        let src = el.first("source");
        let kind = match ty {
            "user" => InterfaceKind::User,
            "ethernet" => InterfaceKind::Ethernet,
            "bridge" => {
                let b = src
                    .ok_or_else(|| missing("interface", "<source bridge>"))?
                    .req_attr("bridge")?;
                check_ifname("interface/source", b)?;
                InterfaceKind::Bridge(b.to_owned())
            }
            "network" => {
                let src = src.ok_or_else(|| missing("interface", "<source network>"))?;
                if let Some(b) = src.get_attr("bridge") {
                    check_ifname("interface/source", b)?;
                }
                InterfaceKind::Network(src.req_attr("network")?.to_owned())
            }
            t => {
                return Err(DomainXmlError::unsupported(
                    "interface type",
                    t,
                    "supported types are user, ethernet, bridge and network",
                ))
            }
        };
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
            if !matches!(m.as_str(), "virtio" | "e1000" | "e1000e" | "rtl8139") {
                return Err(DomainXmlError::unsupported(
                    "interface model",
                    m,
                    "expected virtio, e1000, e1000e or rtl8139",
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
        Ok(Interface {
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
            link_up: match el.first("link").map(|l| l.get_attr("state")) {
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
            },
            mtu: match el.first("mtu") {
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
            },
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

    fn to_element(&self) -> Element {
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

/// Backend of a serial/console/channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChardevSource {
    Pty,
    Null,
    File {
        path: PathBuf,
        append: Option<bool>,
    },
    /// `path` None: `<source mode='bind'/>` as virt-install writes it; the command
    /// line puts the socket under the launch runtime dir.
    Unix {
        path: Option<PathBuf>,
        listen: bool,
    },
    /// SPICE agent channel: parsed and kept, refused at launch (no SPICE here).
    SpiceVmc,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chardev {
    pub source: ChardevSource,
    /// `serial`/`console`: target type (`isa-serial`, `serial`, `virtio`);
    /// `channel`: `virtio`.
    pub target_type: Option<String>,
    pub target_port: Option<u32>,
    /// channel: `org.qemu.guest_agent.0`
    pub target_name: Option<String>,
}

impl Chardev {
    fn parse(el: &Element) -> Result<Chardev> {
        let ty = el.get_attr("type").unwrap_or("pty");
        let src = el.first("source");
        let source = match ty {
            "pty" => ChardevSource::Pty,
            "null" => ChardevSource::Null,
            "file" => {
                let s = src.ok_or_else(|| missing(&el.name, "<source path> for type 'file'"))?;
                ChardevSource::File {
                    path: PathBuf::from(s.req_attr("path")?),
                    append: yes_no(s, "append")?,
                }
            }
            "unix" => {
                let (path, mode) = match src {
                    Some(s) => (s.get_attr("path"), s.get_attr("mode").unwrap_or("bind")),
                    None => (None, "bind"),
                };
                if path.is_none() && mode != "bind" {
                    return Err(missing(&el.name, "<source path> for mode 'connect'"));
                }
                let listen = match mode {
                    "bind" => true,
                    "connect" => false,
                    m => {
                        return Err(invalid(
                            "source",
                            "attribute 'mode'",
                            m,
                            "expected bind or connect",
                        ))
                    }
                };
                ChardevSource::Unix {
                    path: path.map(PathBuf::from),
                    listen,
                }
            }
            "spicevmc" => ChardevSource::SpiceVmc,
            t => {
                return Err(DomainXmlError::unsupported(
                    &format!("{} type", el.name),
                    t,
                    "supported types are pty, null, file and unix",
                ))
            }
        };
        let target = el.first("target");
        let target_name = target.and_then(|t| t.get_attr("name")).map(str::to_owned);
        if let Some(n) = &target_name {
            if !n
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                || n.is_empty()
            {
                return Err(invalid(
                    "channel/target",
                    "attribute 'name'",
                    n,
                    "not a valid port name",
                ));
            }
        }
        Ok(Chardev {
            source,
            target_type: target.and_then(|t| t.get_attr("type")).map(str::to_owned),
            target_port: target
                .map(|t| t.parse_attr::<u32>("port"))
                .transpose()?
                .flatten(),
            target_name,
        })
    }

    fn to_element(&self, name: &str) -> Element {
        let (ty, src) = match &self.source {
            ChardevSource::Pty => ("pty", None),
            ChardevSource::Null => ("null", None),
            ChardevSource::File { path, append } => (
                "file",
                Some(
                    Element::new("source")
                        .attr("path", path_text(path))
                        .attr_opt("append", append.map(|a| if a { "on" } else { "off" })),
                ),
            ),
            ChardevSource::Unix { path, listen } => (
                "unix",
                Some(
                    Element::new("source")
                        .attr("mode", if *listen { "bind" } else { "connect" })
                        .attr_opt("path", path.as_deref().map(path_text)),
                ),
            ),
            ChardevSource::SpiceVmc => ("spicevmc", None),
        };
        let target = if self.target_type.is_some()
            || self.target_port.is_some()
            || self.target_name.is_some()
        {
            Some(
                Element::new("target")
                    .attr_opt("type", self.target_type.as_deref())
                    .attr_opt("name", self.target_name.as_deref())
                    .attr_opt("port", self.target_port),
            )
        } else {
            None
        };
        Element::new(name)
            .attr("type", ty)
            .child_opt(src)
            .child_opt(target)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// `tablet`, `mouse`, `keyboard`
    pub kind: String,
    /// `usb`, `ps2`, `virtio`
    pub bus: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphicsKind {
    Vnc,
    Spice,
}

impl GraphicsKind {
    pub fn as_str(self) -> &'static str {
        match self {
            GraphicsKind::Vnc => "vnc",
            GraphicsKind::Spice => "spice",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Graphics {
    pub kind: GraphicsKind,
    /// -1 or absent with `autoport`: chosen at start (VNC by QEMU, SPICE by the runtime).
    pub port: Option<i32>,
    /// SPICE's TLS port; only -1 (none) is honoured.
    pub tls_port: Option<i32>,
    pub autoport: bool,
    pub listen: Option<String>,
    /// The client's password; written back only for `VIR_DOMAIN_XML_SECURE`.
    pub passwd: Option<String>,
}

/// `<audio id='N' type='none|spice'/>`: an audio backend sound devices play through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audio {
    pub id: u32,
    /// `none` or `spice`; other backends are kept in [`Devices::other`].
    pub kind: String,
}

/// `<redirdev bus='usb' type='spicevmc'/>`: a USB device redirected from a SPICE client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirdev {
    pub address: Option<Address>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Video {
    /// `vga`, `cirrus`, `qxl`, `virtio`, `bochs`, `none`
    pub model: String,
    pub vram_kib: Option<u64>,
    pub heads: Option<u32>,
    pub address: Option<Address>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sound {
    /// `ich6`, `ich9`, `ac97`, `es1370`
    pub model: String,
    pub address: Option<Address>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rng {
    /// Host source, default /dev/urandom.
    pub backend: PathBuf,
    pub rate: Option<(u32, u32)>,
    pub address: Option<Address>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Memballoon {
    /// `virtio` or `none`
    pub model: String,
    pub stats_period: Option<u32>,
    pub address: Option<Address>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watchdog {
    /// `i6300esb`, `ib700`, `itco`
    pub model: String,
    /// `reset`, `shutdown`, `poweroff`, `pause`, `none`, `dump`, `inject-nmi`
    pub action: String,
    pub address: Option<Address>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tpm {
    /// `tpm-tis`, `tpm-crb`
    pub model: String,
    /// `emulator` or `passthrough`
    pub backend: String,
    pub version: Option<String>,
    pub device: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hostdev {
    /// The host PCI address.
    pub source: PciAddr,
    pub managed: bool,
    pub address: Option<Address>,
}

/// `<devices>`
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Devices {
    pub emulator: Option<PathBuf>,
    pub disks: Vec<Disk>,
    pub controllers: Vec<Controller>,
    pub interfaces: Vec<Interface>,
    pub serials: Vec<Chardev>,
    pub consoles: Vec<Chardev>,
    pub channels: Vec<Chardev>,
    pub inputs: Vec<Input>,
    pub graphics: Vec<Graphics>,
    pub videos: Vec<Video>,
    pub sounds: Vec<Sound>,
    pub audios: Vec<Audio>,
    pub redirdevs: Vec<Redirdev>,
    pub rngs: Vec<Rng>,
    pub memballoon: Option<Memballoon>,
    pub watchdogs: Vec<Watchdog>,
    pub tpms: Vec<Tpm>,
    pub hostdevs: Vec<Hostdev>,
    /// Devices this model does not type, kept verbatim and NOT given to QEMU; the
    /// command line refuses a domain that has any (see `command_line::build`).
    pub other: Vec<Element>,
}

fn model_attr(el: &Element, element: &str, allowed: &[&str], default: &str) -> Result<String> {
    let m = el
        .first("model")
        .and_then(|m| m.get_attr("type"))
        .or_else(|| el.get_attr("model"))
        .unwrap_or(default);
    if !allowed.contains(&m) {
        return Err(DomainXmlError::unsupported(
            element,
            m,
            format!("expected one of {}", allowed.join(", ")),
        ));
    }
    Ok(m.to_owned())
}

fn parse_graphics_port(el: &Element) -> Result<(Option<i32>, bool, Option<String>)> {
    let port = el.parse_attr::<i32>("port")?;
    let autoport = match yes_no(el, "autoport")? {
        Some(a) => a,
        None => port.is_none_or(|p| p == -1),
    };
    let listen = el
        .get_attr("listen")
        .or_else(|| el.first("listen").and_then(|l| l.get_attr("address")))
        .map(str::to_owned);
    if let Some(l) = &listen {
        if l.parse::<std::net::IpAddr>().is_err() {
            return Err(invalid(
                "graphics",
                "listen address",
                l,
                "must be an IP address",
            ));
        }
    }
    if let Some(p) = port {
        if p != -1 && !(5900..=65535).contains(&p) {
            return Err(invalid(
                "graphics",
                "attribute 'port'",
                &p.to_string(),
                "must be -1 or 5900 to 65535",
            ));
        }
    }
    Ok((port, autoport, listen))
}

impl Devices {
    pub(crate) fn parse(el: &Element) -> Result<Devices> {
        let mut d = Devices::default();
        for c in el.elements() {
            match c.name.as_str() {
                "emulator" => d.emulator = Some(PathBuf::from(c.text())),
                "disk" => d.disks.push(Disk::parse(c)?),
                "controller" => d.controllers.push(Controller::parse(c)?),
                "interface" => d.interfaces.push(Interface::parse(c)?),
                "serial" => d.serials.push(Chardev::parse(c)?),
                "console" => d.consoles.push(Chardev::parse(c)?),
                "channel" => {
                    let ch = Chardev::parse(c)?;
                    match ch.target_type.as_deref() {
                        Some("virtio") => {}
                        t => {
                            return Err(DomainXmlError::unsupported(
                                "channel target type",
                                t.unwrap_or(""),
                                "only virtio channels",
                            ))
                        }
                    }
                    d.channels.push(ch)
                }
                "input" => {
                    let kind = c.req_attr("type")?;
                    if !matches!(kind, "tablet" | "mouse" | "keyboard") {
                        return Err(DomainXmlError::unsupported(
                            "input type",
                            kind,
                            "expected tablet, mouse or keyboard",
                        ));
                    }
                    let bus =
                        c.get_attr("bus")
                            .unwrap_or(if kind == "tablet" { "usb" } else { "ps2" });
                    if !matches!(bus, "usb" | "ps2" | "virtio") {
                        return Err(DomainXmlError::unsupported(
                            "input bus",
                            bus,
                            "expected usb, ps2 or virtio",
                        ));
                    }
                    d.inputs.push(Input {
                        kind: kind.to_owned(),
                        bus: bus.to_owned(),
                    })
                }
                "graphics" => {
                    let (port, autoport, listen) = parse_graphics_port(c)?;
                    let kind = match c.req_attr("type")? {
                        "vnc" => GraphicsKind::Vnc,
                        "spice" => GraphicsKind::Spice,
                        t => {
                            return Err(DomainXmlError::unsupported(
                                "graphics type",
                                t,
                                "expected vnc or spice",
                            ))
                        }
                    };
                    let passwd = c.get_attr("passwd").map(str::to_owned);
                    if passwd
                        .as_deref()
                        .is_some_and(|p| p.chars().any(char::is_control))
                    {
                        return Err(invalid(
                            "graphics",
                            "attribute 'passwd'",
                            "(hidden)",
                            "must not contain control characters",
                        ));
                    }
                    d.graphics.push(Graphics {
                        kind,
                        port,
                        tls_port: c.parse_attr::<i32>("tlsPort")?,
                        autoport,
                        listen,
                        passwd,
                    })
                }
                "audio" if matches!(c.get_attr("type"), Some("none" | "spice")) => {
                    let id = c.parse_attr::<u32>("id")?.unwrap_or(1);
                    if id == 0 || d.audios.iter().any(|a| a.id == id) {
                        return Err(invalid(
                            "audio",
                            "attribute 'id'",
                            &id.to_string(),
                            "must be unique and at least 1",
                        ));
                    }
                    d.audios.push(Audio {
                        id,
                        kind: c.req_attr("type")?.to_owned(),
                    })
                }
                "redirdev"
                    if c.get_attr("bus").unwrap_or("usb") == "usb"
                        && c.get_attr("type") == Some("spicevmc") =>
                {
                    d.redirdevs.push(Redirdev {
                        address: addr_of(c)?,
                    })
                }
                "video" => {
                    let m = c.first("model");
                    let model = m.and_then(|m| m.get_attr("type")).unwrap_or("vga");
                    if !matches!(
                        model,
                        "vga" | "cirrus" | "qxl" | "virtio" | "bochs" | "none"
                    ) {
                        return Err(DomainXmlError::unsupported(
                            "video model",
                            model,
                            "expected vga, cirrus, qxl, virtio, bochs or none",
                        ));
                    }
                    d.videos.push(Video {
                        model: model.to_owned(),
                        vram_kib: m
                            .map(|m| m.parse_attr::<u64>("vram"))
                            .transpose()?
                            .flatten(),
                        heads: m
                            .map(|m| m.parse_attr::<u32>("heads"))
                            .transpose()?
                            .flatten(),
                        address: addr_of(c)?,
                    })
                }
                "sound" => d.sounds.push(Sound {
                    model: model_attr(
                        c,
                        "sound model",
                        &["ich6", "ich9", "ac97", "es1370"],
                        "ich6",
                    )?,
                    address: addr_of(c)?,
                }),
                "rng" => {
                    model_attr(c, "rng model", &["virtio"], "virtio")?;
                    let b = c
                        .first("backend")
                        .ok_or_else(|| missing("rng", "<backend>"))?;
                    if b.get_attr("model").unwrap_or("random") != "random" {
                        return Err(DomainXmlError::unsupported(
                            "rng backend model",
                            b.get_attr("model").unwrap_or(""),
                            "only 'random'",
                        ));
                    }
                    let path = b.text();
                    let backend = if path.is_empty() {
                        PathBuf::from("/dev/urandom")
                    } else {
                        PathBuf::from(path)
                    };
                    let rate = match c.first("rate") {
                        Some(r) => Some((
                            r.parse_attr::<u32>("bytes")?
                                .ok_or_else(|| missing("rate", "attribute 'bytes'"))?,
                            r.parse_attr::<u32>("period")?.unwrap_or(1000),
                        )),
                        None => None,
                    };
                    d.rngs.push(Rng {
                        backend,
                        rate,
                        address: addr_of(c)?,
                    })
                }
                "memballoon" => {
                    let model = c.req_attr("model")?;
                    if !matches!(model, "virtio" | "none") {
                        return Err(DomainXmlError::unsupported(
                            "memballoon model",
                            model,
                            "expected virtio or none",
                        ));
                    }
                    d.memballoon = Some(Memballoon {
                        model: model.to_owned(),
                        stats_period: c
                            .first("stats")
                            .map(|s| s.parse_attr::<u32>("period"))
                            .transpose()?
                            .flatten(),
                        address: addr_of(c)?,
                    })
                }
                "watchdog" => {
                    let model = c.req_attr("model")?;
                    if !matches!(model, "i6300esb" | "ib700" | "itco") {
                        return Err(DomainXmlError::unsupported(
                            "watchdog model",
                            model,
                            "expected i6300esb, ib700 or itco",
                        ));
                    }
                    let action = c.get_attr("action").unwrap_or("reset");
                    if !matches!(
                        action,
                        "reset"
                            | "shutdown"
                            | "poweroff"
                            | "pause"
                            | "none"
                            | "dump"
                            | "inject-nmi"
                    ) {
                        return Err(invalid(
                            "watchdog",
                            "attribute 'action'",
                            action,
                            "unknown action",
                        ));
                    }
                    d.watchdogs.push(Watchdog {
                        model: model.to_owned(),
                        action: action.to_owned(),
                        address: addr_of(c)?,
                    })
                }
                "tpm" => {
                    let model = c.get_attr("model").unwrap_or("tpm-tis");
                    if !matches!(model, "tpm-tis" | "tpm-crb") {
                        return Err(DomainXmlError::unsupported(
                            "tpm model",
                            model,
                            "expected tpm-tis or tpm-crb",
                        ));
                    }
                    let b = c
                        .first("backend")
                        .ok_or_else(|| missing("tpm", "<backend>"))?;
                    let backend = b.req_attr("type")?;
                    if !matches!(backend, "emulator" | "passthrough") {
                        return Err(DomainXmlError::unsupported(
                            "tpm backend type",
                            backend,
                            "expected emulator or passthrough",
                        ));
                    }
                    d.tpms.push(Tpm {
                        model: model.to_owned(),
                        backend: backend.to_owned(),
                        version: b.get_attr("version").map(str::to_owned),
                        device: b
                            .first("device")
                            .and_then(|x| x.get_attr("path"))
                            .map(PathBuf::from),
                    })
                }
                "hostdev" => {
                    if c.get_attr("mode").unwrap_or("subsystem") != "subsystem"
                        || c.get_attr("type") != Some("pci")
                    {
                        return Err(DomainXmlError::unsupported(
                            "hostdev type",
                            c.get_attr("type").unwrap_or(""),
                            "only PCI subsystem hostdevs",
                        ));
                    }
                    let a = c
                        .first("source")
                        .and_then(|s| s.first("address"))
                        .ok_or_else(|| missing("hostdev", "<source><address>"))?;
                    let source = match Address::parse(&a.clone().attr("type", "pci"))? {
                        Address::Pci(p) => p,
                        _ => return Err(missing("hostdev", "PCI source address")),
                    };
                    d.hostdevs.push(Hostdev {
                        source,
                        managed: yes_no(c, "managed")?.unwrap_or(false),
                        address: addr_of(c)?,
                    })
                }
                _ => d.other.push(c.clone()),
            }
        }
        d.number_controllers()?;
        if d.consoles.len() > 1 {
            return Err(DomainXmlError::unsupported(
                "console",
                "",
                "at most one console",
            ));
        }
        Ok(d)
    }

    /// `secure`: include graphics passwords (`VIR_DOMAIN_XML_SECURE`, and our files).
    pub(crate) fn to_element(&self, secure: bool) -> Element {
        let mut el = Element::new("devices");
        if let Some(e) = &self.emulator {
            el.push(Element::with_text("emulator", path_text(e)));
        }
        for d in &self.disks {
            el.push(d.to_element());
        }
        for c in &self.controllers {
            el.push(c.to_element());
        }
        for i in &self.interfaces {
            el.push(i.to_element());
        }
        for s in &self.serials {
            el.push(s.to_element("serial"));
        }
        for s in &self.consoles {
            el.push(s.to_element("console"));
        }
        for s in &self.channels {
            el.push(s.to_element("channel"));
        }
        for i in &self.inputs {
            el.push(
                Element::new("input")
                    .attr("type", &i.kind)
                    .attr("bus", &i.bus),
            );
        }
        for g in &self.graphics {
            el.push(
                Element::new("graphics")
                    .attr("type", g.kind.as_str())
                    .attr_opt("port", g.port)
                    .attr_opt("tlsPort", g.tls_port)
                    .attr("autoport", yn(g.autoport))
                    .attr_opt("listen", g.listen.as_deref())
                    .attr_opt("passwd", g.passwd.as_deref().filter(|_| secure)),
            );
        }
        for s in &self.sounds {
            let mut e = Element::new("sound").attr("model", &s.model);
            push_addr(&mut e, &s.address);
            el.push(e);
        }
        for a in &self.audios {
            el.push(Element::new("audio").attr("id", a.id).attr("type", &a.kind));
        }
        for v in &self.videos {
            let mut e = Element::new("video").child(
                Element::new("model")
                    .attr("type", &v.model)
                    .attr_opt("vram", v.vram_kib)
                    .attr_opt("heads", v.heads),
            );
            push_addr(&mut e, &v.address);
            el.push(e);
        }
        for w in &self.watchdogs {
            let mut e = Element::new("watchdog")
                .attr("model", &w.model)
                .attr("action", &w.action);
            push_addr(&mut e, &w.address);
            el.push(e);
        }
        for t in &self.tpms {
            let mut b = Element::new("backend")
                .attr("type", &t.backend)
                .attr_opt("version", t.version.as_deref());
            if let Some(p) = &t.device {
                b.push(Element::new("device").attr("path", path_text(p)));
            }
            el.push(Element::new("tpm").attr("model", &t.model).child(b));
        }
        for h in &self.hostdevs {
            let a = Address::Pci(h.source).to_element();
            let a = Element {
                attrs: a.attrs.into_iter().filter(|(k, _)| k != "type").collect(),
                ..a
            };
            let mut e = Element::new("hostdev")
                .attr("mode", "subsystem")
                .attr("type", "pci")
                .attr("managed", yn(h.managed))
                .child(Element::new("source").child(a));
            push_addr(&mut e, &h.address);
            el.push(e);
        }
        for r in &self.redirdevs {
            let mut e = Element::new("redirdev")
                .attr("bus", "usb")
                .attr("type", "spicevmc");
            push_addr(&mut e, &r.address);
            el.push(e);
        }
        for r in &self.rngs {
            let mut e = Element::new("rng")
                .attr("model", "virtio")
                .child(Element::with_text("backend", path_text(&r.backend)).attr("model", "random"))
                .child_opt(
                    r.rate
                        .map(|(b, p)| Element::new("rate").attr("bytes", b).attr("period", p)),
                );
            push_addr(&mut e, &r.address);
            el.push(e);
        }
        if let Some(m) = &self.memballoon {
            let mut e = Element::new("memballoon")
                .attr("model", &m.model)
                .child_opt(
                    m.stats_period
                        .map(|p| Element::new("stats").attr("period", p)),
                );
            push_addr(&mut e, &m.address);
            el.push(e);
        }
        for o in &self.other {
            el.push(o.clone());
        }
        el
    }

    pub(crate) fn fill_defaults(&mut self, q35: bool) -> Result<()> {
        // Disk buses from the target name, as libvirt guesses them.
        for d in &mut self.disks {
            if d.bus.is_none() {
                let t = d.target_dev.as_str();
                d.bus = Some(if t.starts_with("vd") {
                    DiskBus::Virtio
                } else if t.starts_with("sd") {
                    if q35 {
                        DiskBus::Sata
                    } else {
                        DiskBus::Scsi
                    }
                } else if t.starts_with("fd") {
                    DiskBus::Fdc
                } else if t.starts_with("hd") {
                    DiskBus::Ide
                } else {
                    return Err(invalid(
                        "disk/target",
                        "attribute 'dev'",
                        t,
                        "cannot guess the bus; set target bus",
                    ));
                });
            }
            if d.bus == Some(DiskBus::Ide) && q35 {
                return Err(DomainXmlError::unsupported(
                    "disk target bus",
                    "ide",
                    "q35 has no IDE bus; use sata",
                ));
            }
            if d.bus == Some(DiskBus::Sata) && !q35 {
                return Err(DomainXmlError::unsupported(
                    "disk target bus",
                    "sata",
                    "i440fx machines have no SATA controller here; use virtio or ide",
                ));
            }
        }
        let mut seen = BTreeSet::new();
        for d in &self.disks {
            if !seen.insert(d.target_dev.clone()) {
                return Err(invalid(
                    "disk/target",
                    "attribute 'dev'",
                    &d.target_dev,
                    "used twice",
                ));
            }
        }
        // Controllers libvirt adds.
        let has = |c: &[Controller], k: &str| c.iter().any(|x| x.kind == k);
        if !has(&self.controllers, "pci") {
            self.controllers.insert(
                0,
                Controller::new("pci", 0, Some(if q35 { "pcie-root" } else { "pci-root" })),
            );
        }
        let wants_usb = self.inputs.iter().any(|i| i.bus == "usb")
            || self.disks.iter().any(|d| d.bus == Some(DiskBus::Usb));
        if !has(&self.controllers, "usb") && wants_usb {
            self.controllers
                .push(Controller::new("usb", 0, Some("qemu-xhci")));
        }
        if !has(&self.controllers, "scsi")
            && self.disks.iter().any(|d| d.bus == Some(DiskBus::Scsi))
        {
            self.controllers
                .push(Controller::new("scsi", 0, Some("virtio-scsi")));
        }
        if !has(&self.controllers, "virtio-serial") && !self.channels.is_empty() {
            self.controllers
                .push(Controller::new("virtio-serial", 0, None));
        }
        for c in &self.controllers {
            if c.kind == "usb" {
                if let Some(m) = &c.model {
                    if !matches!(
                        m.as_str(),
                        "qemu-xhci" | "nec-xhci" | "ich9-ehci1" | "piix3-uhci" | "none"
                    ) {
                        return Err(DomainXmlError::unsupported(
                            "controller usb model",
                            m,
                            "expected qemu-xhci, nec-xhci, piix3-uhci or none",
                        ));
                    }
                }
            }
            if c.kind == "scsi" && c.model.as_deref().is_some_and(|m| m != "virtio-scsi") {
                return Err(DomainXmlError::unsupported(
                    "controller scsi model",
                    c.model.as_deref().unwrap_or(""),
                    "only virtio-scsi",
                ));
            }
        }
        // Console of a guest with a serial port: libvirt makes it the serial target.
        for (i, s) in self.serials.iter_mut().enumerate() {
            s.target_port.get_or_insert(i as u32);
            s.target_type.get_or_insert_with(|| "isa-serial".into());
        }
        for c in &mut self.consoles {
            c.target_type.get_or_insert_with(|| "serial".into());
            c.target_port.get_or_insert(0);
        }
        for c in &mut self.channels {
            c.target_type.get_or_insert_with(|| "virtio".into());
        }
        for i in &mut self.interfaces {
            i.mac.get_or_insert_with(Mac::random);
            i.model.get_or_insert_with(|| "virtio".into());
        }
        let mut macs = BTreeSet::new();
        for i in &self.interfaces {
            if let Some(m) = i.mac {
                if !macs.insert(m.0) {
                    return Err(invalid(
                        "mac",
                        "attribute 'address'",
                        &m.to_string(),
                        "used twice",
                    ));
                }
            }
        }
        if self.memballoon.is_none() {
            self.memballoon = Some(Memballoon {
                model: "virtio".into(),
                stats_period: None,
                address: None,
            });
        }
        if !self.graphics.is_empty() && self.videos.is_empty() {
            self.videos.push(Video {
                model: "vga".into(),
                vram_kib: None,
                heads: None,
                address: None,
            });
        }
        self.assign_pci(q35)
    }

    /// Gives controllers written without an index the next free one of their type, as
    /// libvirt does; PCI index 0 is the root bus's. Indexes must be unique per type.
    fn number_controllers(&mut self) -> Result<()> {
        let mut taken: BTreeSet<(String, u32)> = BTreeSet::new();
        for c in self.controllers.iter().filter(|c| c.index != UNNUMBERED) {
            if !taken.insert((c.kind.clone(), c.index)) {
                return Err(invalid(
                    "controller",
                    "attribute 'index'",
                    &format!("{} {}", c.kind, c.index),
                    "used by two controllers of this type",
                ));
            }
        }
        for c in self
            .controllers
            .iter_mut()
            .filter(|c| c.index == UNNUMBERED)
        {
            let root =
                c.kind == "pci" && matches!(c.model.as_deref(), Some("pcie-root" | "pci-root"));
            let mut i = if c.kind == "pci" && !root { 1 } else { 0 };
            while taken.contains(&(c.kind.clone(), i)) {
                i += 1;
            }
            taken.insert((c.kind.clone(), i));
            c.index = i;
        }
        Ok(())
    }

    /// The guest PCI addresses of every device and controller.
    pub fn pci_addresses(&self) -> Vec<PciAddr> {
        let addrs = self
            .controllers
            .iter()
            .map(|c| &c.address)
            .chain(self.disks.iter().map(|x| &x.address))
            .chain(self.interfaces.iter().map(|x| &x.address))
            .chain(self.videos.iter().map(|x| &x.address))
            .chain(self.sounds.iter().map(|x| &x.address))
            .chain(self.watchdogs.iter().map(|x| &x.address))
            .chain(self.hostdevs.iter().map(|x| &x.address))
            .chain(self.rngs.iter().map(|x| &x.address))
            .chain(self.memballoon.iter().map(|x| &x.address));
        addrs
            .filter_map(|a| a.as_ref().and_then(Address::pci))
            .collect()
    }

    /// Gives every PCI device without an address a slot on bus 0. On i440fx slot 1 is
    /// the PIIX3 and slot 2 the primary video; on q35 slot 1 is the primary video and
    /// 0x1f the ICH9. Devices go straight onto the root bus (integrated endpoints on q35).
    fn assign_pci(&mut self, q35: bool) -> Result<()> {
        // Buses made by bridges and root ports (libvirt's dumpxml puts devices there).
        let bridges: std::collections::BTreeMap<u32, String> = self
            .controllers
            .iter()
            .filter(|c| c.is_pci_bridge())
            .map(|c| (c.index, c.model.clone().unwrap_or_default()))
            .collect();
        let mut used_behind: BTreeSet<(u8, u8, u8)> = BTreeSet::new();
        let mut used: BTreeSet<(u8, u8)> = BTreeSet::new();
        used.insert((0, 0));
        used.insert((if q35 { 0x1f } else { 1 }, 0));
        let mut slots: Vec<&mut Option<Address>> = Vec::new();
        let primary_video = if q35 { 1 } else { 2 };
        let mut videos = self.videos.iter_mut().filter(|v| v.model != "none");
        let first_video = videos.next();
        for c in self.controllers.iter_mut().filter(|c| c.needs_pci_slot()) {
            slots.push(&mut c.address);
        }
        for d in self
            .disks
            .iter_mut()
            .filter(|d| d.bus == Some(DiskBus::Virtio))
        {
            slots.push(&mut d.address);
        }
        for i in self.interfaces.iter_mut() {
            slots.push(&mut i.address);
        }
        for v in videos {
            slots.push(&mut v.address);
        }
        for s in self.sounds.iter_mut() {
            slots.push(&mut s.address);
        }
        for w in self.watchdogs.iter_mut().filter(|w| w.model == "i6300esb") {
            slots.push(&mut w.address);
        }
        for h in self.hostdevs.iter_mut() {
            slots.push(&mut h.address);
        }
        for r in self.rngs.iter_mut() {
            slots.push(&mut r.address);
        }
        if let Some(m) = self.memballoon.as_mut().filter(|m| m.model == "virtio") {
            slots.push(&mut m.address);
        }
        let mut first_video_slot = first_video.map(|v| &mut v.address);
        let all: Vec<&Option<Address>> = slots
            .iter()
            .map(|a| &**a)
            .chain(first_video_slot.iter().map(|a| &**a))
            .collect();
        for a in all {
            if let Some(p) = a.as_ref().and_then(Address::pci) {
                let shown = format!(
                    "{:04x}:{:02x}:{:02x}.{}",
                    p.domain, p.bus, p.slot, p.function
                );
                if p.domain != 0 {
                    return Err(DomainXmlError::unsupported(
                        "address",
                        &shown,
                        "only PCI domain 0 is used here",
                    ));
                }
                if p.bus != 0 {
                    let Some(model) = bridges.get(&u32::from(p.bus)) else {
                        return Err(invalid(
                            "address",
                            "bus",
                            &shown,
                            "no PCI bridge or root port controller has this index",
                        ));
                    };
                    if model == "pcie-root-port" && p.slot != 0 {
                        return Err(invalid(
                            "address",
                            "slot",
                            &shown,
                            "a pcie-root-port has one slot, 0",
                        ));
                    }
                    if p.slot > 0x1f || !used_behind.insert((p.bus, p.slot, p.function)) {
                        return Err(invalid(
                            "address",
                            "slot",
                            &shown,
                            "used by two devices or out of range",
                        ));
                    }
                    continue;
                }
                if !used.insert((p.slot, p.function)) {
                    return Err(invalid(
                        "address",
                        "slot",
                        &format!("0x{:02x}.{}", p.slot, p.function),
                        "used by two devices",
                    ));
                }
            }
        }
        if let Some(a) = first_video_slot.as_mut() {
            if a.is_none() && used.insert((primary_video, 0)) {
                {
                    **a = Some(Address::Pci(PciAddr {
                        domain: 0,
                        bus: 0,
                        slot: primary_video,
                        function: 0,
                    }));
                }
            }
        }
        // Keep the primary video slot free either way, as libvirt does.
        used.insert((primary_video, 0));
        let mut next = 1u8;
        for a in slots {
            if a.is_some() {
                continue;
            }
            while used.contains(&(next, 0)) || used.iter().any(|(s, _)| *s == next) {
                next += 1;
            }
            if next > 0x1e {
                return Err(DomainXmlError::unsupported(
                    "devices",
                    "",
                    "more PCI devices than slots on bus 0",
                ));
            }
            used.insert((next, 0));
            *a = Some(Address::Pci(PciAddr {
                domain: 0,
                bus: 0,
                slot: next,
                function: 0,
            }));
        }
        Ok(())
    }
}
