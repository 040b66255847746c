//! Host devices given to the guest: PCI ones through VFIO (the runtime binds them to
//! vfio-pci before start), mediated devices by their sysfs path, and USB devices
//! found by vendor/product or bus/device among the host's.

use std::path::{Path, PathBuf};

use common::xml::Element;

use crate::xml::{Address, Domain, Hostdev};

use super::device::{DeviceProps, PciBuses};
use super::{qemu_opt_value, unsupported, Argv, LaunchContext, Result};

pub(super) fn hostdevs(a: &mut Argv, dom: &Domain, buses: &PciBuses) -> Result<()> {
    for (i, h) in dom.devices.hostdevs.iter().enumerate() {
        a.device(&hostdev_props(i, h, buses))?;
    }
    Ok(())
}

fn hostdev_props(i: usize, h: &Hostdev, buses: &PciBuses) -> DeviceProps {
    let s = h.source;
    DeviceProps::new("vfio-pci")
        .str(
            "host",
            format!(
                "{:04x}:{:02x}:{:02x}.{:x}",
                s.domain, s.bus, s.slot, s.function
            ),
        )
        .str("id", format!("hostdev{i}"))
        .pci(buses, &h.address)
}

/// A USB device of the host as sysfs shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsbHostDev {
    pub vendor: u16,
    pub product: u16,
    pub bus: u32,
    pub device: u32,
}

/// The USB devices of this host (`/sys/bus/usb/devices/*`), what `<hostdev type='usb'>`
/// sources are looked up in at start.
pub fn host_usb_devices() -> Vec<UsbHostDev> {
    let read = |d: &std::path::Path, f: &str| std::fs::read_to_string(d.join(f)).ok();
    let Ok(dir) = std::fs::read_dir("/sys/bus/usb/devices") else {
        return Vec::new();
    };
    let mut out: Vec<UsbHostDev> = dir
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|d| {
            Some(UsbHostDev {
                vendor: u16::from_str_radix(read(&d, "idVendor")?.trim(), 16).ok()?,
                product: u16::from_str_radix(read(&d, "idProduct")?.trim(), 16).ok()?,
                bus: read(&d, "busnum")?.trim().parse().ok()?,
                device: read(&d, "devnum")?.trim().parse().ok()?,
            })
        })
        .collect();
    out.sort_by_key(|d| (d.bus, d.device));
    out
}

/// Untyped host devices built here: USB, mediated and SCSI devices.
pub(super) fn handles(el: &Element) -> bool {
    el.name == "hostdev"
        && el.get_attr("mode").unwrap_or("subsystem") == "subsystem"
        && matches!(
            el.get_attr("type"),
            Some("usb" | "mdev" | "scsi" | "scsi_host")
        )
}

/// `<hostdev type='usb'|'mdev'>`, numbered after the PCI ones, as libvirt writes them.
pub(super) fn other_hostdevs(
    a: &mut Argv,
    dom: &Domain,
    ctx: &LaunchContext,
    buses: &PciBuses,
) -> Result<()> {
    let first = dom.devices.hostdevs.len();
    for (i, el) in dom.devices.other.iter().filter(|e| handles(e)).enumerate() {
        let id = format!("hostdev{}", first + i);
        let dev = match el.get_attr("type") {
            Some("usb") => usb_props(el, id, &ctx.usb_devices)?,
            Some("mdev") => mdev_props(el, id, buses)?,
            _ => scsi_props(a, dom, el, id, ctx, buses)?,
        };
        a.device(&dev)?;
    }
    Ok(())
}

/// Children and attributes a hostdev may have beyond those read here are refused.
fn check_children(el: &Element, kind: &str, attrs: &[&str]) -> Result<()> {
    if let Some(c) = el
        .elements()
        .find(|c| !matches!(c.name.as_str(), "source" | "address" | "alias"))
    {
        return Err(unsupported(
            &format!("hostdev/{}", c.name),
            kind,
            "not implemented",
        ));
    }
    if let Some((k, _)) = el.attrs.iter().find(|(k, _)| !attrs.contains(&k.as_str())) {
        return Err(unsupported(
            &format!("hostdev {k}"),
            kind,
            "not implemented",
        ));
    }
    Ok(())
}

/// A USB device by vendor/product and/or bus/device, found among the host's.
fn usb_props(el: &Element, id: String, host: &[UsbHostDev]) -> Result<DeviceProps> {
    check_children(el, "usb", &["mode", "type", "managed"])?;
    let src = el
        .first("source")
        .ok_or_else(|| unsupported("hostdev/source", "usb", "missing"))?;
    if let Some((k, _)) = src.attrs.first() {
        return Err(unsupported(
            &format!("hostdev/source {k}"),
            "usb",
            "not implemented",
        ));
    }
    let hex = |name: &str| -> Result<Option<u16>> {
        let Some(v) = src.first(name).and_then(|e| e.get_attr("id")) else {
            return Ok(None);
        };
        u16::from_str_radix(v.trim_start_matches("0x"), 16)
            .map(Some)
            .map_err(|_| unsupported(&format!("hostdev/source/{name} id"), v, "not a hex number"))
    };
    let num = |k: &str| -> Result<Option<u32>> {
        let Some(v) = src.first("address").and_then(|a| a.get_attr(k)) else {
            return Ok(None);
        };
        let parsed = match v.strip_prefix("0x") {
            Some(h) => u32::from_str_radix(h, 16),
            None => v.parse(),
        };
        parsed
            .map(Some)
            .map_err(|_| unsupported(&format!("hostdev/source/address {k}"), v, "not a number"))
    };
    let (vendor, product, bus, device) =
        (hex("vendor")?, hex("product")?, num("bus")?, num("device")?);
    if vendor.is_none() && bus.is_none() {
        return Err(unsupported(
            "hostdev/source",
            "usb",
            "needs <vendor>/<product> or <address>",
        ));
    }
    let found: Vec<&UsbHostDev> = host
        .iter()
        .filter(|d| vendor.is_none_or(|v| v == d.vendor) && product.is_none_or(|p| p == d.product))
        .filter(|d| bus.is_none_or(|b| b == d.bus) && device.is_none_or(|n| n == d.device))
        .collect();
    let shown = match (vendor, product) {
        (Some(v), Some(p)) => format!("{v:04x}:{p:04x}"),
        _ => format!("bus {} device {}", bus.unwrap_or(0), device.unwrap_or(0)),
    };
    let d = match found.as_slice() {
        [d] => *d,
        [] => {
            return Err(unsupported(
                "hostdev type='usb'",
                &shown,
                "no such USB device on this host",
            ))
        }
        _ => {
            return Err(unsupported(
                "hostdev type='usb'",
                &shown,
                "several USB devices match; add <address bus device>",
            ))
        }
    };
    let mut dev = DeviceProps::new("usb-host")
        .str(
            "hostdevice",
            format!("/dev/bus/usb/{:03}/{:03}", d.bus, d.device),
        )
        .str("id", id);
    // The guest side: a port of a USB controller (libvirt's `usbN.0` buses).
    if let Some(a) = el
        .children_named("address")
        .find(|a| a.get_attr("type") == Some("usb"))
    {
        let bus: u32 = a.get_attr("bus").unwrap_or("0").parse().map_err(|_| {
            unsupported(
                "hostdev/address bus",
                a.get_attr("bus").unwrap_or(""),
                "not a number",
            )
        })?;
        dev = dev.str("bus", format!("usb{bus}.0"));
        if let Some(p) = a.get_attr("port") {
            dev = dev.str("port", qemu_opt_value("hostdev/address port", p)?);
        }
    } else if let Some(a) = el.first("address") {
        return Err(unsupported(
            "hostdev/address",
            a.get_attr("type").unwrap_or(""),
            "expected a USB address",
        ));
    }
    Ok(dev)
}

/// A mediated device (vGPU and such) through vfio-pci by its sysfs path.
fn mdev_props(el: &Element, id: String, buses: &PciBuses) -> Result<DeviceProps> {
    check_children(
        el,
        "mdev",
        &["mode", "type", "managed", "model", "display", "ramfb"],
    )?;
    let model = el.get_attr("model").unwrap_or("");
    if model != "vfio-pci" {
        return Err(unsupported(
            "hostdev model",
            model,
            "only vfio-pci mediated devices on x86",
        ));
    }
    let uuid = el
        .first("source")
        .and_then(|s| s.first("address"))
        .and_then(|a| a.get_attr("uuid"))
        .ok_or_else(|| unsupported("hostdev/source/address", "mdev", "no uuid"))?;
    let uuid = uuid::Uuid::parse_str(uuid)
        .map_err(|e| unsupported("hostdev/source/address uuid", uuid, e))?;
    let mut dev = DeviceProps::new("vfio-pci")
        .str("id", id)
        .str("sysfsdev", format!("/sys/bus/mdev/devices/{uuid}"));
    for k in ["display", "ramfb"] {
        if let Some(v) = el.get_attr(k) {
            let on = match v {
                "on" => true,
                "off" => false,
                v => {
                    return Err(unsupported(
                        &format!("hostdev {k}"),
                        v,
                        "expected on or off",
                    ))
                }
            };
            dev = dev.str(
                if k == "ramfb" { "ramfb" } else { "display" },
                if on { "on" } else { "off" },
            );
        }
    }
    let addr = Address::of(el).map_err(|e| unsupported("hostdev/address", "mdev", e))?;
    if addr.as_ref().is_some_and(|a| a.pci().is_none()) {
        return Err(unsupported(
            "hostdev/address",
            "mdev",
            "expected a PCI address",
        ));
    }
    Ok(dev.pci(buses, &addr))
}

/// The host's SCSI devices as (`H:B:T:U`, its `/dev/sgN`), from sysfs: where
/// `<hostdev type='scsi'>` sources are found.
pub fn host_scsi_generic() -> Vec<(String, PathBuf)> {
    let Ok(dir) = std::fs::read_dir("/sys/bus/scsi/devices") else {
        return Vec::new();
    };
    let mut out: Vec<(String, PathBuf)> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let sg = std::fs::read_dir(e.path().join("scsi_generic"))
                .ok()?
                .filter_map(|s| s.ok())
                .next()?;
            Some((name, Path::new("/dev").join(sg.file_name())))
        })
        .collect();
    out.sort();
    out
}

/// `<hostdev type='scsi'>` (a host SCSI LUN by adapter and address, or an iSCSI LUN)
/// as a `-blockdev` and a `scsi-generic` on the guest's SCSI controller, or
/// `type='scsi_host'` (a vhost-scsi target by WWPN), as libvirt 9.0 writes them.
fn scsi_props(
    a: &mut Argv,
    dom: &Domain,
    el: &Element,
    id: String,
    ctx: &LaunchContext,
    buses: &PciBuses,
) -> Result<DeviceProps> {
    let ty = el.get_attr("type").unwrap_or_default();
    if let Some(c) = el
        .elements()
        .find(|c| !matches!(c.name.as_str(), "source" | "address" | "alias" | "readonly"))
    {
        return Err(unsupported(
            &format!("hostdev/{}", c.name),
            ty,
            "not implemented",
        ));
    }
    if let Some((k, _)) = el
        .attrs
        .iter()
        .find(|(k, _)| !matches!(k.as_str(), "mode" | "type" | "managed" | "sgio" | "rawio"))
        .filter(|(k, _)| !(ty == "scsi_host" && k == "model"))
    {
        return Err(unsupported(&format!("hostdev {k}"), ty, "not implemented"));
    }
    for k in ["sgio", "rawio"] {
        if let Some(v) = el.get_attr(k) {
            return Err(unsupported(&format!("hostdev {k}"), v, "not implemented"));
        }
    }
    let src = el
        .first("source")
        .ok_or_else(|| unsupported("hostdev/source", ty, "missing"))?;
    if ty == "scsi_host" {
        let wwpn = match (src.get_attr("protocol"), src.get_attr("wwpn")) {
            (Some("vhost"), Some(w)) => w,
            _ => {
                return Err(unsupported(
                    "hostdev/source",
                    ty,
                    "expected protocol='vhost' and a wwpn",
                ))
            }
        };
        let addr = Address::of(el).map_err(|e| unsupported("hostdev/address", ty, e))?;
        // `model` picks the (non-)transitional variant, as libvirt passes it.
        let driver = match el.get_attr("model") {
            None | Some("virtio") => "vhost-scsi-pci",
            Some("virtio-transitional") => "vhost-scsi-pci-transitional",
            Some("virtio-non-transitional") => "vhost-scsi-pci-non-transitional",
            Some(m) => return Err(unsupported("hostdev model", m, "not a vhost-scsi model")),
        };
        return Ok(DeviceProps::new(driver)
            .str("wwpn", qemu_opt_value("hostdev/source wwpn", wwpn)?)
            .str("id", id)
            .pci(buses, &addr));
    }
    let node = format!("libvirt-{id}-backend");
    let ro = el.first("readonly").is_some();
    let backend = match src.get_attr("protocol") {
        None => {
            let host: u32 = src
                .first("adapter")
                .and_then(|ad| ad.get_attr("name"))
                .and_then(|n| n.strip_prefix("scsi_host"))
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| {
                    unsupported("hostdev/source/adapter", ty, "expected name='scsi_hostN'")
                })?;
            let sa = src
                .first("address")
                .ok_or_else(|| unsupported("hostdev/source/address", ty, "missing"))?;
            let get = |k: &str| sa.get_attr(k).unwrap_or("0");
            let hbtu = format!("{host}:{}:{}:{}", get("bus"), get("target"), get("unit"));
            let sg = ctx
                .scsi_generic
                .iter()
                .find(|(n, _)| *n == hbtu)
                .map(|(_, p)| p.clone())
                .ok_or_else(|| {
                    unsupported(
                        "hostdev type='scsi'",
                        &hbtu,
                        "no such SCSI device on this host",
                    )
                })?;
            super::path_opt("hostdev/source", &sg)?;
            serde_json::json!({"driver": "host_device", "filename": sg.to_string_lossy(),
                               "node-name": node, "read-only": ro})
        }
        Some("iscsi") => {
            if let Some(c) = src.elements().find(|c| c.name != "host") {
                return Err(unsupported(
                    &format!("hostdev/source/{}", c.name),
                    "iscsi",
                    "not implemented",
                ));
            }
            let name = src.get_attr("name").unwrap_or_default();
            let (target, lun) = match name.rsplit_once('/') {
                Some((t, l)) if l.parse::<u32>().is_ok() => (t, l.parse::<u32>().unwrap_or(0)),
                _ => (name, 0),
            };
            let h = src
                .first("host")
                .ok_or_else(|| unsupported("hostdev/source/host", "iscsi", "missing"))?;
            let portal = format!(
                "{}:{}",
                h.get_attr("name").unwrap_or("localhost"),
                h.get_attr("port").unwrap_or("3260")
            );
            serde_json::json!({"driver": "iscsi", "portal": portal, "target": target, "lun": lun,
                               "transport": "tcp", "node-name": node, "read-only": ro})
        }
        Some(p) => return Err(unsupported("hostdev/source protocol", p, "expected iscsi")),
    };
    a.pair("-blockdev", backend.to_string());
    let mut dev = DeviceProps::new("scsi-generic")
        .str("drive", node)
        .str("id", id);
    if let Some(ad) = el
        .children_named("address")
        .find(|ad| ad.get_attr("type") == Some("drive"))
    {
        let num = |k: &str| -> Result<u64> {
            let v = ad.get_attr(k).unwrap_or("0");
            v.parse()
                .map_err(|_| unsupported(&format!("hostdev/address {k}"), v, "not a number"))
        };
        let ctrl = num("controller")?;
        let model = dom
            .devices
            .controllers
            .iter()
            .find(|c| c.kind == "scsi" && u64::from(c.index) == ctrl)
            .and_then(|c| c.model.as_deref())
            .unwrap_or("virtio-scsi");
        dev = dev.str("bus", format!("scsi{ctrl}.0"));
        dev = if model.starts_with("virtio-scsi") {
            dev.uint("channel", num("bus")?)
                .uint("scsi-id", num("target")?)
                .uint("lun", num("unit")?)
        } else {
            dev.uint("scsi-id", num("unit")?)
        };
    }
    Ok(dev)
}
