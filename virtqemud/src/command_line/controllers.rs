//! Controllers: PCI bridges and root ports first, parents before children (libvirt
//! gives a parent a lower index), then USB, SCSI and virtio-serial controllers.

use crate::xml::{scsi_device, usb_device, Controller, Disk, DiskBus, Domain};

use super::device::{DeviceProps, PciBuses, PropValue};
use super::{unsupported, Argv, Result};

pub(super) fn controllers(a: &mut Argv, dom: &Domain, buses: &PciBuses) -> Result<()> {
    let d = &dom.devices;
    // `<driver>` of a virtio controller is read by `driver_props`; `<pcihole64>` of
    // the PCI root by `pcihole64`.
    let read_here = |c: &Controller, e: &common::xml::Element| {
        (e.name == "driver" && virtio_model(c))
            || (e.name == "pcihole64" && is_pci_root(c))
            || crate::xml::user_alias(e)
    };
    for c in &d.controllers {
        if let Some(e) = c.unhandled.iter().find(|e| !read_here(c, e)) {
            return Err(unsupported(
                &format!("controller/{}", e.name),
                &c.kind,
                "not implemented",
            ));
        }
    }
    pcihole64(a, dom)?;
    if !dom.is_q35() {
        // The built-in controller's boot indexes, as libvirt sets them.
        for (k, v) in floppy_boot(DeviceProps::new("isa-fdc"), &d.disks).props {
            if let PropValue::Uint(n) = v {
                a.pair("-global", format!("isa-fdc.{k}={n}"));
            }
        }
    }
    let mut bridges: Vec<_> = d.controllers.iter().filter(|c| c.is_pci_bridge()).collect();
    bridges.sort_by_key(|c| c.index);
    for c in bridges {
        a.device(&bridge_props(c, buses)?)?;
    }
    let q35 = dom.is_q35();
    for c in &d.controllers {
        if let Some(dev) = controller_props(c, q35, buses, &d.disks)? {
            a.device(&dev)?;
        }
    }
    Ok(())
}

/// The QEMU devices each PCI controller model may be (`<model name>`), the default
/// first.
const PCI_MODEL_NAMES: &[(&str, &[&str])] = &[
    ("pci-root", &["pci-root"]),
    ("pcie-root", &["pcie-root"]),
    ("pcie-root-port", &["pcie-root-port", "ioh3420"]),
    ("pci-bridge", &["pci-bridge"]),
    ("pcie-to-pci-bridge", &["pcie-pci-bridge"]),
    ("dmi-to-pci-bridge", &["i82801b11-bridge"]),
    ("pcie-switch-upstream-port", &["x3130-upstream"]),
    ("pcie-switch-downstream-port", &["xio3130-downstream"]),
];

/// A PCI controller's `<model name>`, checked against its model.
fn pci_model_name(c: &Controller) -> Result<Option<&str>> {
    let Some(name) = c.model_name.as_deref() else {
        return Ok(None);
    };
    let model = c.model.as_deref().unwrap_or_default();
    match PCI_MODEL_NAMES.iter().find(|(m, _)| *m == model) {
        Some((_, names)) if names.contains(&name) => Ok(Some(name)),
        _ => Err(unsupported(
            "controller/model name",
            name,
            format!("not a {model}"),
        )),
    }
}

/// A PCI bridge or root port; it makes bus `pci.N`, N its index.
fn bridge_props(c: &Controller, buses: &PciBuses) -> Result<DeviceProps> {
    let (i, chassis) = (c.index, c.target_chassis.unwrap_or(c.index));
    let id = format!("pci.{i}");
    let name = pci_model_name(c)?;
    let model = c.model.as_deref().unwrap_or_default();
    if c.target_hotplug.is_some()
        && !matches!(model, "pcie-root-port" | "pcie-switch-downstream-port")
    {
        return Err(unsupported(
            "controller/target hotplug",
            model,
            "only root and downstream ports",
        ));
    }
    // busNr and node are an expander bus's, which is not built (refused by model).
    if c.target_bus_nr.is_some() || c.target_node.is_some() {
        return Err(unsupported(
            "controller/target busNr",
            model,
            "only for expander buses",
        ));
    }
    let dev = match model {
        "pcie-root-port" => {
            let port = c.target_port.unwrap_or(0x10 + i.saturating_sub(1));
            DeviceProps::new(name.unwrap_or("pcie-root-port"))
                .hex("port", port.into())
                .uint("chassis", chassis.into())
                .str("id", id)
        }
        "pci-bridge" => DeviceProps::new("pci-bridge")
            .uint("chassis_nr", chassis.into())
            .str("id", id),
        "pcie-to-pci-bridge" => DeviceProps::new("pcie-pci-bridge").str("id", id),
        "pcie-switch-upstream-port" => DeviceProps::new("x3130-upstream").str("id", id),
        // libvirt numbers a downstream port by its slot on the upstream port's bus.
        "pcie-switch-downstream-port" => {
            let slot = match &c.address {
                Some(crate::xml::Address::Pci(p)) => u32::from(p.slot),
                _ => 0,
            };
            DeviceProps::new("xio3130-downstream")
                .uint("port", c.target_port.unwrap_or(slot).into())
                .uint("chassis", chassis.into())
                .str("id", id)
        }
        _ => DeviceProps::new("i82801b11-bridge").str("id", id),
    };
    let mut dev = dev;
    if let Some(h) = c.target_hotplug {
        dev.props.push(("hotplug", PropValue::Bool(h)));
    }
    Ok(dev.pci(buses, &c.address))
}

/// The device of a non-PCI controller; `None` for the ones the machine has built in
/// (PCI roots, SATA/IDE) and for bridges (made first by [`bridge_props`]).
fn controller_props(
    c: &Controller,
    q35: bool,
    buses: &PciBuses,
    dom_disks: &[Disk],
) -> Result<Option<DeviceProps>> {
    if let Some(n) = c.model_name.as_deref().filter(|_| c.kind != "pci") {
        return Err(unsupported(
            "controller/model name",
            n,
            "only for PCI controllers",
        ));
    }
    let dev = match (c.kind.as_str(), c.model.as_deref()) {
        ("pci", Some("pci-root" | "pcie-root") | None) => {
            pci_model_name(c)?;
            return Ok(None);
        }
        ("pci", Some(m)) if c.is_pci_bridge() || m.is_empty() => return Ok(None),
        ("pci", Some(m)) => return Err(unsupported("controller pci model", m, "not implemented")),
        // An AHCI card on i440fx; its ports are buses `sataN.0` to `sataN.5`.
        ("sata", _) if !q35 => DeviceProps::new("ich9-ahci").str("id", format!("sata{}", c.index)),
        // i440fx has its floppy controller built in; q35 gets an ISA one.
        ("fdc", _) if !q35 => return Ok(None),
        ("fdc", _) => floppy_boot(DeviceProps::new("isa-fdc"), dom_disks),
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
        // libvirt accepts it anywhere and passes spapr-vscsi, which is PowerPC's only.
        ("scsi", Some("ibmvscsi")) => {
            return Err(unsupported(
                "controller scsi model",
                "ibmvscsi",
                "spapr-vscsi is a PowerPC (pSeries) device that QEMU's x86 emulator lacks",
            ))
        }
        ("scsi", m) => {
            let model = m.unwrap_or("virtio-scsi");
            let qemu = scsi_device(model)
                .ok_or_else(|| unsupported("controller scsi model", model, "unknown"))?;
            let dev = DeviceProps::new(qemu).str("id", format!("scsi{}", c.index));
            driver_props(dev, c)?
        }
        ("virtio-serial", _) => {
            let driver = match c.model.as_deref() {
                None | Some("virtio") => "virtio-serial-pci",
                Some("virtio-transitional") => "virtio-serial-pci-transitional",
                Some("virtio-non-transitional") => "virtio-serial-pci-non-transitional",
                Some(m) => {
                    return Err(unsupported(
                        "controller virtio-serial model",
                        m,
                        "not a virtio model",
                    ))
                }
            };
            let dev = DeviceProps::new(driver)
                .str("id", format!("virtio-serial{}", c.index))
                .opt_uint("max_ports", c.ports.map(u64::from))
                .opt_uint("vectors", c.vectors.map(u64::from));
            driver_props(dev, c)?
        }
        (k, _) => return Err(unsupported("controller type", k, "not implemented")),
    };
    Ok(Some(dev.pci(buses, &c.address)))
}

fn is_pci_root(c: &Controller) -> bool {
    c.kind == "pci" && matches!(c.model.as_deref(), Some("pci-root" | "pcie-root"))
}

/// Controllers that are virtio devices (their `<driver>` holds virtio options).
fn virtio_model(c: &Controller) -> bool {
    match c.kind.as_str() {
        "virtio-serial" => true,
        "scsi" => c
            .model
            .as_deref()
            .unwrap_or("virtio-scsi")
            .starts_with("virtio"),
        _ => false,
    }
}

/// A virtio controller's `<driver>` as QEMU properties (libvirt's mapping).
/// `iothread` needs `<iothreads>`, refused by name with it.
fn driver_props(mut dev: DeviceProps, c: &Controller) -> Result<DeviceProps> {
    let Some(d) = c.unhandled.iter().find(|e| e.name == "driver") else {
        return Ok(dev);
    };
    if let Some(child) = d.elements().next() {
        return Err(unsupported(
            &format!("controller/driver/{}", child.name),
            &c.kind,
            "not implemented",
        ));
    }
    let scsi = c.kind == "scsi";
    for (k, v) in &d.attrs {
        let bad = |why: &str| unsupported(&format!("controller/driver {k}"), v, why);
        let flag = || match v.as_str() {
            "on" => Ok(PropValue::Bool(true)),
            "off" => Ok(PropValue::Bool(false)),
            _ => Err(bad("expected on or off")),
        };
        let count = || {
            v.parse::<u64>()
                .map(PropValue::Uint)
                .map_err(|_| bad("not a number"))
        };
        let (prop, value) = match k.as_str() {
            "ioeventfd" => ("ioeventfd", flag()?),
            "iommu" => ("iommu_platform", flag()?),
            "ats" => ("ats", flag()?),
            "packed" => ("packed", flag()?),
            "page_per_vq" => ("page-per-vq", flag()?),
            "queues" if scsi => ("num_queues", count()?),
            "cmd_per_lun" if scsi => ("cmd_per_lun", count()?),
            "max_sectors" if scsi => ("max_sectors", count()?),
            _ => return Err(bad("not implemented")),
        };
        dev.props.push((prop, value));
    }
    Ok(dev)
}

/// `<pcihole64>` of the PCI root: the 64-bit PCI hole's size, a property of the
/// machine's host bridge (given in KiB; QEMU takes bytes).
fn pcihole64(a: &mut Argv, dom: &Domain) -> Result<()> {
    let Some(root) = dom.devices.controllers.iter().find(|c| is_pci_root(c)) else {
        return Ok(());
    };
    let Some(h) = root.unhandled.iter().find(|e| e.name == "pcihole64") else {
        return Ok(());
    };
    let text = h.text();
    let n: u64 = text
        .trim()
        .parse()
        .map_err(|_| unsupported("controller/pcihole64", &text, "not a number"))?;
    let unit = match h.get_attr("unit").unwrap_or("KiB") {
        "KiB" | "k" | "K" => 1024,
        "MiB" | "M" => 1024 * 1024,
        "GiB" | "G" => 1024 * 1024 * 1024,
        "b" | "bytes" => 1,
        u => {
            return Err(unsupported(
                "controller/pcihole64 unit",
                u,
                "expected b, KiB, MiB or GiB",
            ))
        }
    };
    let host = if dom.is_q35() {
        "q35-pcihost"
    } else {
        "i440FX-pcihost"
    };
    let bytes = n
        .checked_mul(unit)
        .ok_or_else(|| unsupported("controller/pcihole64", &text, "too large"))?;
    a.pair("-global", format!("{host}.pci-hole64-size={bytes}"));
    Ok(())
}

/// The floppy drives' boot order as the floppy controller's `bootindexA`/`bootindexB`
/// (QEMU's floppy device has no bootindex of its own); drives in their order, A first.
fn floppy_boot(mut dev: DeviceProps, disks: &[Disk]) -> DeviceProps {
    let floppies = disks.iter().filter(|d| d.bus == Some(DiskBus::Fdc));
    for (d, key) in floppies.zip(["bootindexA", "bootindexB"]) {
        dev = dev.opt_uint(key, d.boot_order.map(u64::from));
    }
    dev
}
