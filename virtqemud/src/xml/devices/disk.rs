//! `<disk>`: the medium (file, block device or storage volume), its driver options,
//! the guest target and bus, and the default bus libvirt guesses from the target name.

use std::collections::BTreeSet;
use std::path::PathBuf;

use common::xml::{Element, Node};

use super::super::{invalid, missing, DomainXmlError, Result};
use super::{addr_of, boot_of, path_text, push_addr, unhandled, Address, Devices};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskSource {
    File(PathBuf),
    Block(PathBuf),
    Volume {
        pool: String,
        volume: String,
    },
    /// `type='network'`: QEMU's own block drivers (nbd, http, iscsi, ...). The
    /// `<source>` is kept as written (its `<auth>`, `<tls>`, ... children come back
    /// unchanged); protocol, name and hosts are read from it.
    Network {
        protocol: String,
        name: Option<String>,
        hosts: Vec<NetHost>,
        source: Element,
    },
    /// `type='nvme'`, `'dir'`, `'vhostuser'`: defined and written back as they came;
    /// the command line builder refuses them by name.
    Other(Element),
}

/// One `<source><host>` of a network disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetHost {
    /// `tcp` (default), `unix`, `rdma`
    pub transport: String,
    pub name: Option<String>,
    pub port: Option<String>,
    pub socket: Option<String>,
}

/// The protocols libvirt knows for `<disk type='network'>`.
const NET_PROTOCOLS: &[&str] = &[
    "nbd", "rbd", "sheepdog", "gluster", "iscsi", "http", "https", "ftp", "ftps", "tftp", "ssh",
    "vxhs", "nfs",
];

/// A network `<source protocol name><host .../>...</source>` (a disk's, or a firmware
/// variable store's).
pub(crate) fn network_source(s: &Element) -> Result<DiskSource> {
    let protocol = s.req_attr("protocol")?.to_owned();
    if !NET_PROTOCOLS.contains(&protocol.as_str()) {
        return Err(DomainXmlError::unsupported(
            "disk source protocol",
            &protocol,
            format!("expected one of {}", NET_PROTOCOLS.join(", ")),
        ));
    }
    let hosts = s
        .elements()
        .filter(|h| h.name == "host")
        .map(|h| NetHost {
            transport: h.get_attr("transport").unwrap_or("tcp").to_owned(),
            name: h.get_attr("name").map(str::to_owned),
            port: h.get_attr("port").map(str::to_owned),
            socket: h.get_attr("socket").map(str::to_owned),
        })
        .collect();
    Ok(DiskSource::Network {
        protocol,
        name: s.get_attr("name").map(str::to_owned),
        hosts,
        source: s.clone(),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskDevice {
    Disk,
    Cdrom,
    Floppy,
    /// A SCSI LUN passed through (`scsi-block`).
    Lun,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskBus {
    Virtio,
    Sata,
    Scsi,
    Ide,
    Usb,
    Fdc,
    /// An SD card (`-drive if=sd`): boards have the controller, QEMU's PC machines not.
    Sd,
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
            DiskBus::Sd => "sd",
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
    /// Element children (`<metadata_cache>`): kept, written back, refused at start.
    pub children: Vec<Element>,
    /// The other attributes (`detect_zeroes`, `error_policy`, `queues`, `iommu`, ...),
    /// kept as written: the command line honours the ones it knows and refuses the
    /// rest (`iothread`, ...) by name.
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
    /// Element children of a file, block or volume `<source>` (`<seclabel>`,
    /// `<reservations>`, ...): kept, written back and refused at start by name.
    pub source_children: Vec<Element>,
    /// Attributes this model does not type, as (element, name, value) with element
    /// `disk`, `source` (file, block, volume) or `target`: `startupPolicy`, `snapshot`,
    /// `rawio`, `rotation_rate`... Kept and written back; the command line refuses
    /// those it does not honour by name.
    pub extra_attrs: Vec<(String, String, String)>,
}

/// The attributes of `el` not named in `typed`, tagged with `element`.
fn extra_attrs(
    el: Option<&Element>,
    element: &str,
    typed: &[&str],
) -> Vec<(String, String, String)> {
    el.map(|e| {
        e.attrs
            .iter()
            .filter(|(k, _)| !typed.contains(&k.as_str()))
            .map(|(k, v)| (element.to_owned(), k.clone(), v.clone()))
            .collect()
    })
    .unwrap_or_default()
}

const CACHE_MODES: &[&str] = &[
    "default",
    "none",
    "writethrough",
    "writeback",
    "directsync",
    "unsafe",
];

impl Disk {
    pub(super) fn parse(el: &Element) -> Result<Disk> {
        let source_type = el.get_attr("type").unwrap_or("file").to_owned();
        let device = match el.get_attr("device").unwrap_or("disk") {
            "disk" => DiskDevice::Disk,
            "cdrom" => DiskDevice::Cdrom,
            "floppy" => DiskDevice::Floppy,
            "lun" => DiskDevice::Lun,
            d => {
                return Err(DomainXmlError::unsupported(
                    "disk device",
                    d,
                    "expected disk, cdrom, floppy or lun",
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
            ("network", Some(s)) => Some(network_source(s)?),
            ("nvme" | "dir" | "vhostuser", Some(s)) => Some(DiskSource::Other(s.clone())),
            ("file" | "block" | "volume" | "network", None) => None,
            (t, _) => return Err(DomainXmlError::unsupported(
                "disk type",
                t,
                "supported disk types are file, block, volume, network, nvme, dir and vhostuser",
            )),
        };
        if source.is_none() && matches!(device, DiskDevice::Disk | DiskDevice::Lun) {
            return Err(missing(
                "disk",
                &format!("<source> of type '{source_type}' (only cdrom and floppy may be empty)"),
            ));
        }
        let driver = match el.first("driver") {
            None => DiskDriver::default(),
            Some(d) => DiskDriver::parse(d)?,
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
        let bus = parse_bus(target.get_attr("bus"))?;
        let serial = el.child_text("serial");
        if let Some(s) = &serial {
            check_serial(s)?;
        }
        let source_children = match (&source, src) {
            (Some(DiskSource::Network { .. } | DiskSource::Other(_)), _) | (_, None) => Vec::new(),
            (_, Some(s)) => s.elements().cloned().collect(),
        };
        let mut extra = extra_attrs(Some(el), "disk", &["type", "device"]);
        if matches!(
            source,
            Some(DiskSource::File(_) | DiskSource::Block(_) | DiskSource::Volume { .. })
        ) {
            // `index` numbers the node of a running disk (live XML); libvirt reads it
            // only from status XML and makes it again at start.
            extra.extend(extra_attrs(
                src,
                "source",
                &["file", "dev", "pool", "volume", "index"],
            ));
        }
        extra.extend(extra_attrs(Some(target), "target", &["dev", "bus"]));
        Ok(Disk {
            extra_attrs: extra,
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
            source_children,
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
                    // `<backingStore>` is kept: libvirt keeps a written chain in the
                    // definition.
                    &["alias"],
                ]
                .concat(),
            ),
        })
    }

    pub(super) fn to_element(&self) -> Element {
        let extra = |el: &mut Element, which: &str| {
            el.attrs.extend(
                self.extra_attrs
                    .iter()
                    .filter(|(e, _, _)| e == which)
                    .map(|(_, k, v)| (k.clone(), v.clone())),
            );
        };
        let mut el = Element::new("disk").attr("type", &self.source_type).attr(
            "device",
            match self.device {
                DiskDevice::Disk => "disk",
                DiskDevice::Cdrom => "cdrom",
                DiskDevice::Floppy => "floppy",
                DiskDevice::Lun => "lun",
            },
        );
        let d = &self.driver;
        if d.name.is_some()
            || d.format.is_some()
            || d.cache.is_some()
            || d.io.is_some()
            || d.discard.is_some()
            || !d.unhandled.is_empty()
            || !d.children.is_empty()
        {
            let mut e = Element::new("driver")
                .attr_opt("name", d.name.as_deref())
                .attr_opt("type", d.format.as_deref())
                .attr_opt("cache", d.cache.as_deref())
                .attr_opt("io", d.io.as_deref())
                .attr_opt("discard", d.discard.as_deref());
            e.attrs.extend(d.unhandled.iter().cloned());
            for c in &d.children {
                e.push(c.clone());
            }
            el.push(e);
        }
        extra(&mut el, "disk");
        let with_children = |mut e: Element| {
            extra(&mut e, "source");
            for c in &self.source_children {
                e.push(c.clone());
            }
            e
        };
        match &self.source {
            Some(DiskSource::File(p)) => el.push(with_children(
                Element::new("source").attr("file", path_text(p)),
            )),
            Some(DiskSource::Block(p)) => el.push(with_children(
                Element::new("source").attr("dev", path_text(p)),
            )),
            Some(DiskSource::Volume { pool, volume }) => el.push(with_children(
                Element::new("source")
                    .attr("pool", pool)
                    .attr("volume", volume),
            )),
            Some(DiskSource::Network { source, .. }) | Some(DiskSource::Other(source)) => {
                el.push(source.clone())
            }
            None => {}
        }
        let mut target = Element::new("target")
            .attr("dev", &self.target_dev)
            .attr_opt("bus", self.bus.map(DiskBus::as_str));
        extra(&mut target, "target");
        el.push(target);
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

impl DiskDriver {
    /// `<driver>`: only QEMU's, with the formats, cache, io and discard modes it knows;
    /// other attributes are kept and refused at start.
    fn parse(d: &Element) -> Result<DiskDriver> {
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
                "raw" | "qcow2" | "qed" | "vmdk" | "vdi" | "vpc" | "vhdx" | "fat"
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
        Ok(DiskDriver {
            children: d.elements().cloned().collect(),
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
        })
    }
}

/// `<target bus>`; `None` until `fill_defaults` guesses it from the target name.
fn parse_bus(bus: Option<&str>) -> Result<Option<DiskBus>> {
    Ok(match bus {
        None => None,
        Some("virtio") => Some(DiskBus::Virtio),
        Some("sata") => Some(DiskBus::Sata),
        Some("scsi") => Some(DiskBus::Scsi),
        Some("ide") => Some(DiskBus::Ide),
        Some("usb") => Some(DiskBus::Usb),
        Some("fdc") => Some(DiskBus::Fdc),
        Some("sd") => Some(DiskBus::Sd),
        Some(b) => {
            return Err(DomainXmlError::unsupported(
                "disk target bus",
                b,
                "expected virtio, sata, scsi, ide, usb, fdc or sd",
            ))
        }
    })
}

/// A serial QEMU and guests take as written.
/// libvirt takes any serial (QEMU checks the length its device allows at start);
/// control characters are refused, as they cannot reach QEMU's option syntax.
fn check_serial(s: &str) -> Result<()> {
    if s.len() > 256 || s.chars().any(char::is_control) {
        return Err(invalid(
            "disk/serial",
            "value",
            s,
            "at most 256 characters, no control characters",
        ));
    }
    Ok(())
}

impl Devices {
    /// Disk buses from the target name, as libvirt guesses them, checked against the
    /// machine; target names must be unique.
    pub(super) fn fill_disk_buses(&mut self, q35: bool) -> Result<()> {
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
        }
        for d in &mut self.disks {
            // vhost-user disks cannot be snapshotted: libvirt says so by default.
            if d.source_type == "vhostuser"
                && !d
                    .extra_attrs
                    .iter()
                    .any(|(e, k, _)| e == "disk" && k == "snapshot")
            {
                d.extra_attrs
                    .push(("disk".into(), "snapshot".into(), "no".into()));
            }
            if d.address.is_none() {
                d.address = drive_address(d.bus, &d.target_dev);
            }
            if let Some(DiskSource::Network { source, .. }) = &d.source {
                let mut s = source.clone();
                net_source_defaults(&mut s);
                d.source = Some(network_source(&s)?);
            }
            // An empty drive has no source to be of a type: libvirt calls it a file.
            if d.source.is_none() {
                d.source_type = "file".to_owned();
            }
            // libvirt's encryption engine is QEMU's (the only one it has for disks),
            // also in a backing chain; a chain's `index`es number the nodes of a
            // running disk and are not part of a definition.
            let fix = &mut |e: &mut Element| {
                // A qcow2 metadata cache's size is written in bytes.
                if e.name == "metadata_cache" {
                    for c in e.children.iter_mut() {
                        if let Node::Element(m) = c {
                            let unit = m.get_attr("unit").unwrap_or("bytes");
                            let per = super::super::parse_memory_bytes(unit);
                            if let (true, Ok(n), Ok(per)) =
                                (m.name == "max_size", m.text().trim().parse::<u64>(), per)
                            {
                                *m = Element::with_text(
                                    "max_size",
                                    n.saturating_mul(per).to_string(),
                                )
                                .attr("unit", "bytes");
                            }
                        }
                    }
                }
                if e.name == "encryption" && e.get_attr("engine").is_none() {
                    e.attrs.push(("engine".into(), "qemu".into()));
                }
                if e.name == "backingStore" {
                    e.attrs.retain(|(k, _)| k != "index");
                    for c in e.children.iter_mut() {
                        if let Node::Element(s) = c {
                            if s.name == "source" {
                                s.attrs.retain(|(k, _)| k != "index");
                            }
                        }
                    }
                }
            };
            for e in (d.unhandled.iter_mut())
                .chain(d.source_children.iter_mut())
                .chain(d.driver.children.iter_mut())
            {
                walk_mut(e, fix);
            }
            // `labelskip` records that a running disk was not relabelled: status only.
            d.source_children
                .retain(|e| !(e.name == "seclabel" && e.get_attr("labelskip") == Some("yes")));
            if let Some(DiskSource::Network { source, .. } | DiskSource::Other(source)) =
                &mut d.source
            {
                walk_mut(source, fix);
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
        Ok(())
    }
}

/// libvirt's virDiskNameToIndex: `sda` 0, `sdz` 25, `sdaa` 26 (a partition number
/// after the letters is allowed).
pub(crate) fn disk_index(name: &str) -> Option<u32> {
    let rest = ["hd", "sd", "vd", "xvd", "ubd", "fd"]
        .iter()
        .find_map(|p| name.strip_prefix(p))?;
    let letters: Vec<u8> = rest.bytes().take_while(u8::is_ascii_lowercase).collect();
    if letters.is_empty() || !rest[letters.len()..].bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut idx: u32 = 0;
    for (i, c) in letters.iter().enumerate() {
        idx = idx.checked_add(u32::from(i > 0))?.checked_mul(26)?;
        idx = idx.checked_add(u32::from(c - b'a'))?;
    }
    Some(idx)
}

/// libvirt's virDomainDiskDefAssignAddress: the drive address a disk written without
/// one gets from its target name (QEMU's wide SCSI bus: 15 units per controller, unit
/// 7 being the controller's own; IDE 2 units on 2 buses per controller; SATA 6 units;
/// floppy 2).
fn drive_address(bus: Option<DiskBus>, target: &str) -> Option<Address> {
    let idx = disk_index(target)?;
    let (controller, bus, unit) = match bus? {
        DiskBus::Scsi => {
            let unit = idx % 15;
            (idx / 15, 0, if unit >= 7 { unit + 1 } else { unit })
        }
        DiskBus::Ide => (idx / 4, (idx % 4) / 2, idx % 2),
        DiskBus::Sata => (idx / 6, 0, idx % 6),
        DiskBus::Fdc => (idx / 2, 0, idx % 2),
        _ => return None,
    };
    Some(Address::Drive {
        controller,
        bus,
        target: 0,
        unit,
    })
}

/// libvirt's defaults in a network disk's `<source>`: each TCP host's port from its
/// protocol (virStorageSourceNetworkDefaultPort), and an iSCSI target without a LUN
/// gets LUN 0 (virDomainPostParseCheckISCSIPath).
pub(super) fn net_source_defaults(s: &mut Element) {
    // The node index of a running disk's source: status only.
    s.attrs.retain(|(k, _)| k != "index");
    let protocol = s.get_attr("protocol").unwrap_or("").to_owned();
    let port = match protocol.as_str() {
        "http" => 80,
        "https" => 443,
        "ftp" => 21,
        "ftps" => 990,
        "tftp" => 69,
        "sheepdog" => 7000,
        "nbd" => 10809,
        "ssh" => 22,
        "iscsi" => 3260,
        "gluster" => 24007,
        "vxhs" => 9999,
        _ => 0,
    };
    if protocol == "iscsi" {
        for (k, v) in s.attrs.iter_mut() {
            if k == "name" && !v.contains('/') {
                v.push_str("/0");
            }
        }
    }
    if port == 0 {
        return;
    }
    for c in s.children.iter_mut() {
        if let Node::Element(h) = c {
            let tcp = h.get_attr("transport").unwrap_or("tcp") == "tcp";
            if h.name == "host" && tcp && h.get_attr("port").is_none() {
                h.attrs.push(("port".into(), port.to_string()));
            }
        }
    }
}

/// Calls `f` on `e` and every element below it.
fn walk_mut(e: &mut Element, f: &mut impl FnMut(&mut Element)) {
    f(e);
    for c in e.children.iter_mut() {
        if let Node::Element(c) = c {
            walk_mut(c, f);
        }
    }
}
