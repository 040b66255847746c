//! Controllers: PCI bridges and root ports first, parents before children (libvirt
//! gives a parent a lower index), then USB, SCSI and virtio-serial controllers.

use crate::xml::{scsi_device, usb_device, Controller, Domain};

use super::device::{DeviceProps, PciBuses};
use super::{unsupported, Argv, Result};

pub(super) fn controllers(a: &mut Argv, dom: &Domain, buses: &PciBuses) -> Result<()> {
    let d = &dom.devices;
    if let Some(c) = d.controllers.iter().find(|c| !c.unhandled.is_empty()) {
        return Err(unsupported(
            &format!("controller/{}", c.unhandled[0].name),
            &c.kind,
            "not implemented",
        ));
    }
    let mut bridges: Vec<_> = d.controllers.iter().filter(|c| c.is_pci_bridge()).collect();
    bridges.sort_by_key(|c| c.index);
    for c in bridges {
        a.device(&bridge_props(c, buses))?;
    }
    let q35 = dom.is_q35();
    for c in &d.controllers {
        if let Some(dev) = controller_props(c, q35, buses)? {
            a.device(&dev)?;
        }
    }
    Ok(())
}

/// A PCI bridge or root port; it makes bus `pci.N`, N its index.
fn bridge_props(c: &Controller, buses: &PciBuses) -> DeviceProps {
    let (i, chassis) = (c.index, c.target_chassis.unwrap_or(c.index));
    let id = format!("pci.{i}");
    let dev = match c.model.as_deref().unwrap_or_default() {
        "pcie-root-port" => {
            let port = c.target_port.unwrap_or(0x10 + i.saturating_sub(1));
            DeviceProps::new("pcie-root-port")
                .hex("port", port.into())
                .uint("chassis", chassis.into())
                .str("id", id)
        }
        "pci-bridge" => DeviceProps::new("pci-bridge")
            .uint("chassis_nr", chassis.into())
            .str("id", id),
        "pcie-to-pci-bridge" => DeviceProps::new("pcie-pci-bridge").str("id", id),
        _ => DeviceProps::new("i82801b11-bridge").str("id", id),
    };
    dev.pci(buses, &c.address)
}

/// The device of a non-PCI controller; `None` for the ones the machine has built in
/// (PCI roots, SATA/IDE) and for bridges (made first by [`bridge_props`]).
fn controller_props(c: &Controller, q35: bool, buses: &PciBuses) -> Result<Option<DeviceProps>> {
    let dev = match (c.kind.as_str(), c.model.as_deref()) {
        ("pci", Some("pci-root" | "pcie-root") | None) => return Ok(None),
        ("pci", Some(m)) if c.is_pci_bridge() || m.is_empty() => return Ok(None),
        ("pci", Some(m)) => return Err(unsupported("controller pci model", m, "not implemented")),
        // An AHCI card on i440fx; its ports are buses `sataN.0` to `sataN.5`.
        ("sata", _) if !q35 => DeviceProps::new("ich9-ahci").str("id", format!("sata{}", c.index)),
        // i440fx has its floppy controller built in.
        ("fdc", _) if !q35 => return Ok(None),
        ("usb", Some("none")) | ("sata", _) | ("ide", _) => return Ok(None),
        // Built with the smart cards on it (misc.rs).
        ("ccid", _) => return Ok(None),
        ("usb", m) => {
            let model = m.unwrap_or("qemu-xhci");
            let qemu = usb_device(model)
                .ok_or_else(|| unsupported("controller usb model", model, "unknown"))?;
            let mut dev = DeviceProps::new(qemu);
            dev = match c.master_startport {
                // A companion serves its master's USB 1 ports; it has no bus of its own.
                Some(first) => dev
                    .str("masterbus", format!("usb{}.0", c.index))
                    .uint("firstport", first.into()),
                None => dev.str("id", format!("usb{}", c.index)),
            };
            // libvirt gives an xHCI controller's port count to both its USB 2 and 3 sides.
            if let (Some(p), "qemu-xhci" | "nec-xhci") = (c.ports, model) {
                dev = dev.uint("p2", p.into()).uint("p3", p.into());
            }
            dev
        }
        ("scsi", m) => {
            let model = m.unwrap_or("virtio-scsi");
            let qemu = scsi_device(model)
                .ok_or_else(|| unsupported("controller scsi model", model, "unknown"))?;
            DeviceProps::new(qemu).str("id", format!("scsi{}", c.index))
        }
        ("virtio-serial", _) => {
            DeviceProps::new("virtio-serial-pci").str("id", format!("virtio-serial{}", c.index))
        }
        (k, _) => return Err(unsupported("controller type", k, "not implemented")),
    };
    Ok(Some(dev.pci(buses, &c.address)))
}
