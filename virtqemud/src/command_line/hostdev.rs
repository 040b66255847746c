//! Host devices given to the guest: PCI ones through VFIO (the runtime binds them to
//! vfio-pci before start), mediated devices by their sysfs path, and USB devices
//! found by vendor/product or bus/device among the host's.

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

/// Untyped host devices built here: USB devices and mediated devices.
pub(super) fn handles(el: &Element) -> bool {
    el.name == "hostdev"
        && el.get_attr("mode").unwrap_or("subsystem") == "subsystem"
        && matches!(el.get_attr("type"), Some("usb" | "mdev"))
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
            _ => mdev_props(el, id, buses)?,
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
