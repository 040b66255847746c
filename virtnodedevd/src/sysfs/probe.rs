//! Reading one device directory (or the whole tree) into a [`Device`].

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use super::ids;
use super::*;

fn read(p: &Path) -> Option<String> {
    let s = fs::read_to_string(p).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

fn read_hex<T: TryFrom<u64>>(p: &Path) -> Option<T> {
    let s = read(p)?;
    let v = u64::from_str_radix(s.trim_start_matches("0x"), 16).ok()?;
    T::try_from(v).ok()
}

fn read_num<T: std::str::FromStr>(p: &Path) -> Option<T> {
    read(p)?.parse().ok()
}

fn link_base(p: &Path) -> Option<String> {
    let t = fs::read_link(p).ok()?;
    Some(t.file_name()?.to_string_lossy().into_owned())
}

fn sysname(dir: &Path) -> Option<String> {
    Some(dir.file_name()?.to_string_lossy().into_owned())
}

/// The `KEY=value` lines of a device's `uevent` file.
fn uevent_file(dir: &Path) -> HashMap<String, String> {
    fs::read_to_string(dir.join("uevent"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// udev's properties (`E:KEY=value` lines) of a block or char device, by its
/// `dev` (major:minor); empty without a udev database.
fn udev_props(roots: &Roots, kind: char, dir: &Path) -> HashMap<String, String> {
    let Some(dev) = read(&dir.join("dev")) else {
        return HashMap::new();
    };
    if !dev.bytes().all(|b| b.is_ascii_digit() || b == b':') {
        return HashMap::new();
    }
    fs::read_to_string(roots.udev.join(format!("{kind}{dev}")))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("E:")?.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The whole device list: `computer` first, parents linked.
pub fn enumerate(roots: &Roots) -> Vec<Device> {
    let mut out = vec![computer(roots)];
    for (subsystem, list) in [
        ("pci", "bus/pci/devices"),
        ("usb", "bus/usb/devices"),
        ("scsi", "bus/scsi/devices"),
        ("block", "class/block"),
        ("scsi_generic", "class/scsi_generic"),
        ("drm", "class/drm"),
        ("mdev", "bus/mdev/devices"),
    ] {
        let Ok(rd) = fs::read_dir(roots.sys.join(list)) else {
            continue;
        };
        let mut entries: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        entries.sort();
        for e in entries {
            let Ok(dir) = fs::canonicalize(&e) else {
                continue;
            };
            if let Some(d) = probe_dir(roots, &dir, subsystem, &HashMap::new()) {
                out.push(d);
            }
        }
    }
    out.extend(net_devices(roots));
    link_parents(&mut out);
    out
}

/// Probes the device a uevent names (`DEVPATH`, `SUBSYSTEM` and the rest in `env`).
/// `None` when it is gone or is nothing libvirt lists. The parent is left unset.
pub fn probe_devpath(
    roots: &Roots,
    devpath: &str,
    subsystem: &str,
    env: &HashMap<String, String>,
) -> Option<Device> {
    if devpath.contains("/../") || !devpath.starts_with("/devices/") {
        return None;
    }
    if subsystem == "net" && roots.real {
        let name = env
            .get("INTERFACE")
            .cloned()
            .or_else(|| devpath.rsplit('/').next().map(str::to_string))?;
        let index = env.get("IFINDEX").and_then(|i| i.parse().ok());
        return net_in_namespace(roots, &name, index);
    }
    let dir = roots.sys.join(devpath.trim_start_matches('/'));
    if !dir.is_dir() {
        return None;
    }
    probe_dir(roots, &dir, subsystem, env)
}

fn devpath_of(roots: &Roots, dir: &Path) -> Option<String> {
    let rel = dir.strip_prefix(&roots.sys).ok()?;
    Some(format!("/{}", rel.display()))
}

fn base(roots: &Roots, dir: &Path, name: String, cap: Cap) -> Option<Device> {
    Some(Device {
        name,
        parent: None,
        sysfs: Some(dir.to_path_buf()),
        devpath: Some(devpath_of(roots, dir)?),
        driver: link_base(&dir.join("driver")),
        devnode: None,
        cap,
    })
}

/// A USB device: ids and names (from usb.ids, else its own strings), bus and number.
fn usb_device(
    roots: &Roots,
    dir: &Path,
    sys: &str,
    ue: &HashMap<String, String>,
) -> Option<Device> {
    let vendor_id = read_hex(&dir.join("idVendor"))?;
    let product_id = read_hex(&dir.join("idProduct"))?;
    let product_name = ids::name(roots, ids::Db::Usb, vendor_id, Some(product_id))
        .or_else(|| read(&dir.join("product")));
    let cap = UsbDevice {
        bus: read_num(&dir.join("busnum"))?,
        device: read_num(&dir.join("devnum"))?,
        vendor_id,
        vendor_name: ids::name(roots, ids::Db::Usb, vendor_id, None)
            .or_else(|| read(&dir.join("manufacturer"))),
        product_id,
        product_name,
    };
    let mut d = base(
        roots,
        dir,
        device_name("usb", sys, None),
        Cap::UsbDevice(cap),
    )?;
    d.devnode = ue.get("DEVNAME").map(|n| format!("/dev/{n}"));
    Some(d)
}

/// A SCSI host, with its FC WWNs and NPIV vport counts when it is an fc_host.
fn scsi_host(roots: &Roots, dir: &Path, sys: &str) -> Option<Device> {
    let host: u32 = sys.strip_prefix("host")?.parse().ok()?;
    let fcdir = dir.join("fc_host").join(sys);
    let wwn = |f: &str| read(&fcdir.join(f)).map(|s| s.trim_start_matches("0x").to_string());
    let fc = match (wwn("node_name"), wwn("port_name")) {
        (Some(wwnn), Some(wwpn)) => Some(FcHost {
            wwnn,
            wwpn,
            fabric_wwn: wwn("fabric_name"),
        }),
        _ => None,
    };
    let vports = read_num(&fcdir.join("max_npiv_vports"))
        .map(|max| (max, read_num(&fcdir.join("npiv_vports_inuse")).unwrap_or(0)));
    let cap = ScsiHost {
        host,
        unique_id: read_num(&dir.join("scsi_host").join(sys).join("unique_id")),
        fc,
        vports,
    };
    base(
        roots,
        dir,
        device_name("scsi", sys, None),
        Cap::ScsiHost(cap),
    )
}

fn probe_dir(
    roots: &Roots,
    dir: &Path,
    subsystem: &str,
    env: &HashMap<String, String>,
) -> Option<Device> {
    let mut ue = uevent_file(dir);
    for (k, v) in env {
        ue.entry(k.clone()).or_insert_with(|| v.clone());
    }
    let devtype = ue.get("DEVTYPE").map(String::as_str).unwrap_or("");
    let sys = sysname(dir)?;
    match subsystem {
        "pci" => {
            let pci = pci(roots, dir, &sys)?;
            base(
                roots,
                dir,
                device_name("pci", &sys, None),
                Cap::Pci(Box::new(pci)),
            )
        }
        "usb" if devtype == "usb_device" => usb_device(roots, dir, &sys, &ue),
        "usb" if devtype == "usb_interface" => {
            let cap = UsbInterface {
                number: read_hex(&dir.join("bInterfaceNumber"))?,
                class: read_hex(&dir.join("bInterfaceClass"))?,
                subclass: read_hex(&dir.join("bInterfaceSubClass"))?,
                protocol: read_hex(&dir.join("bInterfaceProtocol"))?,
            };
            base(
                roots,
                dir,
                device_name("usb", &sys, None),
                Cap::UsbInterface(cap),
            )
        }
        "scsi" if devtype == "scsi_host" => scsi_host(roots, dir, &sys),
        "scsi" if devtype == "scsi_target" => base(
            roots,
            dir,
            device_name("scsi", &sys, None),
            Cap::ScsiTarget {
                target: sys.clone(),
            },
        ),
        "scsi" if devtype == "scsi_device" => {
            let mut parts = sys.split(':');
            let mut next = || parts.next().and_then(|p| p.parse::<u64>().ok());
            let (host, bus, target, lun) = (next()?, next()?, next()?, next()?);
            let kind = read_num::<u32>(&dir.join("type")).map(scsi_type);
            let cap = Scsi {
                host: u32::try_from(host).ok()?,
                bus: u32::try_from(bus).ok()?,
                target: u32::try_from(target).ok()?,
                lun,
                kind,
            };
            base(roots, dir, device_name("scsi", &sys, None), Cap::Scsi(cap))
        }
        "block" if devtype == "disk" => storage(roots, dir, &sys),
        "drm" => {
            let kind = if sys.starts_with("card") && !sys.contains('-') {
                "primary"
            } else if sys.starts_with("renderD") {
                "render"
            } else if sys.starts_with("controlD") {
                "control"
            } else {
                // Connectors (card0-HDMI-A-1) are not devices libvirt lists.
                return None;
            };
            let mut d = base(
                roots,
                dir,
                device_name("drm", &sys, None),
                Cap::Drm { kind: kind.into() },
            )?;
            d.devnode = Some(format!("/dev/dri/{sys}"));
            Some(d)
        }
        "mdev" => {
            // libvirt names mediated devices by UUID and parent address.
            let uuid = sys.clone();
            if uuid.len() != 36 || !uuid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
                return None;
            }
            let parent = dir.parent().and_then(sysname).unwrap_or_default();
            let mdev = Mdev {
                uuid: uuid.clone(),
                type_id: link_base(&dir.join("mdev_type"))?,
                iommu_group: link_base(&dir.join("iommu_group")).and_then(|g| g.parse().ok()),
            };
            base(
                roots,
                dir,
                device_name("mdev", &uuid, Some(&parent)),
                Cap::Mdev(mdev),
            )
        }
        "scsi_generic" => {
            let mut d = base(
                roots,
                dir,
                device_name("scsi_generic", &sys, None),
                Cap::ScsiGeneric {
                    char: format!("/dev/{sys}"),
                },
            )?;
            d.devnode = Some(format!("/dev/{sys}"));
            Some(d)
        }
        "net" => net_from_sysfs(roots, dir, &sys),
        _ => None,
    }
}

/// SCSI peripheral device types as libvirt names them.
fn scsi_type(t: u32) -> String {
    match t {
        0 => "disk",
        1 => "tape",
        2 => "printer",
        3 => "processor",
        4 => "worm",
        5 => "cdrom",
        6 => "scanner",
        7 => "optical",
        8 => "changer",
        9 => "comm",
        0xc => "array",
        0xd => "enclosure",
        _ => "unknown",
    }
    .to_string()
}

fn pci_link(dir: &Path, speed: &str, width: &str) -> Option<PciLink> {
    let raw = read(&dir.join(speed))?;
    let gts: f64 = raw.split_whitespace().next()?.parse().ok()?;
    let speed = if gts.fract() == 0.0 {
        format!("{gts:.0}")
    } else {
        format!("{gts}")
    };
    Some(PciLink {
        port: None,
        speed: Some(speed),
        width: read_num(&dir.join(width)),
    })
}

fn pci(roots: &Roots, dir: &Path, sys: &str) -> Option<Pci> {
    let addr = PciAddr::parse(sys)?;
    let vendor_id: u16 = read_hex(&dir.join("vendor"))?;
    let product_id: u16 = read_hex(&dir.join("device"))?;
    let iommu_group = link_base(&dir.join("iommu_group"))
        .and_then(|g| g.parse::<u32>().ok())
        .map(|g| {
            let mut members: Vec<PciAddr> = fs::read_dir(dir.join("iommu_group/devices"))
                .map(|rd| {
                    rd.flatten()
                        .filter_map(|e| PciAddr::parse(&e.file_name().to_string_lossy()))
                        .collect()
                })
                .unwrap_or_default();
            members.sort();
            (g, members)
        });
    let mut vfs: Vec<(u32, PciAddr)> = fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    let idx: u32 = n.strip_prefix("virtfn")?.parse().ok()?;
                    Some((idx, PciAddr::parse(&link_base(&e.path())?)?))
                })
                .collect()
        })
        .unwrap_or_default();
    vfs.sort();
    let mut mdev_types: Vec<MdevType> = fs::read_dir(dir.join("mdev_supported_types"))
        .map(|rd| {
            rd.flatten()
                .map(|e| {
                    let p = e.path();
                    MdevType {
                        id: e.file_name().to_string_lossy().into_owned(),
                        name: read(&p.join("name")),
                        device_api: read(&p.join("device_api")),
                        available: read_num(&p.join("available_instances")).unwrap_or(0),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    mdev_types.sort_by(|a, b| a.id.cmp(&b.id));
    // Product first: its lookup caches the vendor's name too (one read of pci.ids).
    let product_name = ids::name(roots, ids::Db::Pci, vendor_id, Some(product_id));
    let link_cap = pci_link(dir, "max_link_speed", "max_link_width");
    let link_sta = pci_link(dir, "current_link_speed", "current_link_width");
    Some(Pci {
        addr,
        class: read_hex(&dir.join("class")).unwrap_or(0),
        vendor_id,
        vendor_name: ids::name(roots, ids::Db::Pci, vendor_id, None),
        product_id,
        product_name,
        iommu_group,
        numa_node: read_num::<i32>(&dir.join("numa_node")).filter(|n| *n >= 0),
        phys_function: link_base(&dir.join("physfn")).and_then(|p| PciAddr::parse(&p)),
        virt_functions: vfs.into_iter().map(|(_, a)| a).collect(),
        max_vfs: read_num(&dir.join("sriov_totalvfs")),
        link_cap,
        link_sta,
        mdev_types,
    })
}

fn storage(roots: &Roots, dir: &Path, sys: &str) -> Option<Device> {
    // Unattached loop devices are placeholders, not disks (lsblk hides them too).
    if sys.starts_with("loop") && !dir.join("loop/backing_file").exists() {
        return None;
    }
    let sectors: u64 = read_num(&dir.join("size")).unwrap_or(0);
    let removable = read_num::<u32>(&dir.join("removable")).unwrap_or(0) == 1;
    // udev's view first, as libvirt takes it; sysfs where udev has nothing.
    let udev = udev_props(roots, 'b', dir);
    let prop = |k: &str| udev.get(k).filter(|v| !v.is_empty()).cloned();
    let serial = prop("ID_SERIAL")
        .or_else(|| read(&dir.join("serial")))
        .or_else(|| read(&dir.join("device/serial")));
    let vendor = prop("ID_VENDOR")
        .or_else(|| read(&dir.join("device/vendor")).filter(|v| !v.starts_with("0x")));
    let model = prop("ID_MODEL").or_else(|| read(&dir.join("device/model")));
    let path = dir.to_string_lossy();
    let bus = prop("ID_BUS").or_else(|| {
        if path.contains("/virtio") {
            Some("virtio".into())
        } else if path.contains("/usb") {
            Some("usb".into())
        } else if path.contains("/ata") {
            Some("ata".into())
        } else if path.contains("/host") {
            Some("scsi".into())
        } else {
            None
        }
    });
    let drive_type = match prop("ID_TYPE").as_deref() {
        Some("cd") => "cdrom",
        Some("floppy") => "floppy",
        Some(_) => "disk",
        None if sys.starts_with("sr") => "cdrom",
        None if sys.starts_with("fd") => "floppy",
        None => "disk",
    };
    let cap = Storage {
        block: format!("/dev/{sys}"),
        bus,
        drive_type: drive_type.to_string(),
        model,
        vendor,
        serial: serial.clone(),
        size: sectors.saturating_mul(512),
        logical_block_size: read_num(&dir.join("queue/logical_block_size")).unwrap_or(512),
        removable,
        media_available: sectors > 0,
    };
    let mut d = base(
        roots,
        dir,
        device_name("block", sys, serial.as_deref()),
        Cap::Storage(cap),
    )?;
    d.devnode = Some(format!("/dev/{sys}"));
    Some(d)
}

fn net_cap(roots: &Roots, dir: &Path, name: &str, address: Option<String>) -> Net {
    Net {
        // Only the machine's own interfaces can be asked; a fixture has none.
        features: if roots.real {
            super::ethtool::features(name)
        } else {
            Vec::new()
        },
        interface: name.to_string(),
        address,
        state: read(&dir.join("operstate")),
        speed: read_num::<i64>(&dir.join("speed"))
            .filter(|s| *s > 0)
            .and_then(|s| u32::try_from(s).ok()),
        ethernet: read_num::<u32>(&dir.join("type")) == Some(1),
    }
}

fn net_from_sysfs(roots: &Roots, dir: &Path, name: &str) -> Option<Device> {
    let address = read(&dir.join("address"));
    let cap = net_cap(roots, dir, name, address.clone());
    base(
        roots,
        dir,
        device_name("net", name, address.as_deref()),
        Cap::Net(cap),
    )
}

fn net_devices(roots: &Roots) -> Vec<Device> {
    if roots.real {
        let links: Vec<(String, u32)> = nix::net::if_::if_nameindex()
            .map(|l| {
                l.iter()
                    .map(|i| (i.name().to_string_lossy().into_owned(), i.index()))
                    .collect()
            })
            .unwrap_or_default();
        return links
            .iter()
            .filter_map(|(n, i)| net_in_namespace(roots, n, Some(*i)))
            .collect();
    }
    let Ok(rd) = fs::read_dir(roots.sys.join("class/net")) else {
        return Vec::new();
    };
    let mut entries: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    entries.sort();
    entries
        .iter()
        .filter_map(|e| {
            let dir = fs::canonicalize(e).ok()?;
            net_from_sysfs(roots, &dir, &sysname(&dir)?)
        })
        .collect()
}

/// A network interface of the daemon's own namespace. sysfs gives details only when it
/// shows this very interface (same ifindex); otherwise (sysfs mounted by another
/// namespace) the device is described from netlink-visible facts.
///
/// Existence is judged from the netlink dump (getifaddrs): right after a rename the
/// kernel sends the uevent before lookups by the new name (`if_nametoindex`) work.
fn net_in_namespace(roots: &Roots, name: &str, index: Option<u32>) -> Option<Device> {
    let mut mac = None;
    let mut up = false;
    let mut ethernet = false;
    let mut found = false;
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs.filter(|a| a.interface_name == name) {
            found = true;
            up = a.flags.contains(nix::net::if_::InterfaceFlags::IFF_RUNNING);
            if let Some(l) = a.address.as_ref().and_then(|s| s.as_link_addr()) {
                if let Some(m) = l.addr() {
                    mac = Some(
                        m.iter()
                            .map(|b| format!("{b:02x}"))
                            .collect::<Vec<_>>()
                            .join(":"),
                    );
                }
                ethernet = l.hatype() == 1;
            }
        }
    }
    if !found {
        return None;
    }
    let index = index.or_else(|| nix::net::if_::if_nametoindex(name).ok());
    let dir = roots.sys.join("class/net").join(name);
    if index.is_some() && read_num::<u32>(&dir.join("ifindex")) == index {
        if let Ok(real) = fs::canonicalize(&dir) {
            return net_from_sysfs(roots, &real, name);
        }
    }
    Some(Device {
        name: device_name("net", name, mac.as_deref()),
        parent: None,
        sysfs: None,
        devpath: Some(format!("/devices/virtual/net/{name}")),
        driver: None,
        devnode: None,
        cap: Cap::Net(Net {
            interface: name.to_string(),
            address: mac,
            state: Some(if up { "up" } else { "down" }.to_string()),
            speed: None,
            ethernet,
            features: super::ethtool::features(name),
        }),
    })
}

fn computer(roots: &Roots) -> Device {
    let dmi = roots.sys.join("class/dmi/id");
    let r = |f: &str| read(&dmi.join(f));
    Device {
        name: "computer".to_string(),
        parent: None,
        sysfs: None,
        devpath: None,
        driver: None,
        devnode: None,
        cap: Cap::System(System {
            product: r("product_name"),
            hw_vendor: r("sys_vendor"),
            hw_version: r("product_version"),
            hw_serial: r("product_serial"),
            hw_uuid: r("product_uuid"),
            fw_vendor: r("bios_vendor"),
            fw_version: r("bios_version"),
            fw_date: r("bios_date"),
        }),
    }
}
