//! libvirt's node device XML (formatnode.rst, schemas/nodedev.rng), written from the
//! typed records of [`crate::sysfs`].

use common::xml::Element;

use crate::sysfs::{Cap, Device, Pci, PciAddr, PciLink, Roots, ScsiHost};

fn addr_el(a: &PciAddr) -> Element {
    Element::new("address")
        .attr("domain", format!("0x{:04x}", a.domain))
        .attr("bus", format!("0x{:02x}", a.bus))
        .attr("slot", format!("0x{:02x}", a.slot))
        .attr("function", format!("0x{:x}", a.function))
}

fn text_opt(name: &str, v: Option<&String>) -> Option<Element> {
    v.map(|v| Element::with_text(name, v.as_str()))
}

fn id_el(name: &str, id: u16, label: Option<&String>) -> Element {
    let mut e = Element::new(name).attr("id", format!("0x{id:04x}"));
    if let Some(l) = label {
        e = Element::with_text(name, l.as_str()).attr("id", format!("0x{id:04x}"));
    }
    e
}

fn link_el(validity: &str, l: &PciLink) -> Element {
    Element::new("link")
        .attr("validity", validity)
        .attr_opt("port", l.port)
        .attr_opt("speed", l.speed.as_deref())
        .attr_opt("width", l.width)
}

/// A PCI device's `<capability type='pci'>`, with its SR-IOV, mdev, IOMMU, NUMA and
/// PCIe parts.
fn pci_capability(cap: Element, p: &Pci) -> Element {
    let mut c = cap
        .attr("type", "pci")
        .child(Element::with_text("class", format!("0x{:06x}", p.class)))
        .child(Element::with_text("domain", p.addr.domain.to_string()))
        .child(Element::with_text("bus", p.addr.bus.to_string()))
        .child(Element::with_text("slot", p.addr.slot.to_string()))
        .child(Element::with_text("function", p.addr.function.to_string()))
        .child(id_el("product", p.product_id, p.product_name.as_ref()))
        .child(id_el("vendor", p.vendor_id, p.vendor_name.as_ref()));
    if let Some(pf) = &p.phys_function {
        c.push(
            Element::new("capability")
                .attr("type", "phys_function")
                .child(addr_el(pf)),
        );
    }
    if p.max_vfs.is_some() || !p.virt_functions.is_empty() {
        let mut vf = Element::new("capability")
            .attr("type", "virt_functions")
            .attr_opt("maxCount", p.max_vfs);
        for a in &p.virt_functions {
            vf.push(addr_el(a));
        }
        c.push(vf);
    }
    if !p.mdev_types.is_empty() {
        let mut m = Element::new("capability").attr("type", "mdev_types");
        for t in &p.mdev_types {
            m.push(
                Element::new("type")
                    .attr("id", &t.id)
                    .child_opt(text_opt("name", t.name.as_ref()))
                    .child_opt(text_opt("deviceAPI", t.device_api.as_ref()))
                    .child(Element::with_text(
                        "availableInstances",
                        t.available.to_string(),
                    )),
            );
        }
        c.push(m);
    }
    if let Some((g, members)) = &p.iommu_group {
        let mut e = Element::new("iommuGroup").attr("number", g);
        for a in members {
            e.push(addr_el(a));
        }
        c.push(e);
    }
    if let Some(n) = p.numa_node {
        c.push(Element::new("numa").attr("node", n));
    }
    if p.link_cap.is_some() || p.link_sta.is_some() {
        c.push(
            Element::new("pci-express")
                .child_opt(p.link_cap.as_ref().map(|l| link_el("cap", l)))
                .child_opt(p.link_sta.as_ref().map(|l| link_el("sta", l))),
        );
    }
    c
}

/// A SCSI host's `<capability type='scsi_host'>`, with its fc_host and vport parts.
fn scsi_host_capability(cap: Element, h: &ScsiHost) -> Element {
    let mut c = cap
        .attr("type", "scsi_host")
        .child(Element::with_text("host", h.host.to_string()))
        .child_opt(
            h.unique_id
                .map(|u| Element::with_text("unique_id", u.to_string())),
        );
    if let Some(fc) = &h.fc {
        c.push(
            Element::new("capability")
                .attr("type", "fc_host")
                .child(Element::with_text("wwnn", fc.wwnn.as_str()))
                .child(Element::with_text("wwpn", fc.wwpn.as_str()))
                .child_opt(text_opt("fabric_wwn", fc.fabric_wwn.as_ref())),
        );
    }
    if let Some((max, used)) = h.vports {
        c.push(
            Element::new("capability")
                .attr("type", "vport_ops")
                .child(Element::with_text("max_vports", max.to_string()))
                .child(Element::with_text("vports", used.to_string())),
        );
    }
    c
}

fn capability(dev: &Device) -> Element {
    let cap = Element::new("capability");
    match &dev.cap {
        Cap::System(s) => {
            let hw = Element::new("hardware")
                .child_opt(text_opt("vendor", s.hw_vendor.as_ref()))
                .child_opt(text_opt("version", s.hw_version.as_ref()))
                .child_opt(text_opt("serial", s.hw_serial.as_ref()))
                .child_opt(text_opt("uuid", s.hw_uuid.as_ref()));
            let fw = Element::new("firmware")
                .child_opt(text_opt("vendor", s.fw_vendor.as_ref()))
                .child_opt(text_opt("version", s.fw_version.as_ref()))
                .child_opt(text_opt("release_date", s.fw_date.as_ref()));
            cap.attr("type", "system")
                .child_opt(text_opt("product", s.product.as_ref()))
                .child(hw)
                .child(fw)
        }
        Cap::Pci(p) => pci_capability(cap, p),
        Cap::UsbDevice(u) => cap
            .attr("type", "usb_device")
            .child(Element::with_text("bus", u.bus.to_string()))
            .child(Element::with_text("device", u.device.to_string()))
            .child(id_el("product", u.product_id, u.product_name.as_ref()))
            .child(id_el("vendor", u.vendor_id, u.vendor_name.as_ref())),
        Cap::UsbInterface(u) => cap
            .attr("type", "usb")
            .child(Element::with_text("number", u.number.to_string()))
            .child(Element::with_text("class", u.class.to_string()))
            .child(Element::with_text("subclass", u.subclass.to_string()))
            .child(Element::with_text("protocol", u.protocol.to_string())),
        Cap::Net(n) => {
            let link = n.state.as_ref().map(|s| {
                Element::new("link")
                    .attr_opt("speed", n.speed)
                    .attr("state", s)
            });
            let mut c = cap
                .attr("type", "net")
                .child(Element::with_text("interface", n.interface.as_str()))
                .child_opt(text_opt("address", n.address.as_ref()))
                .child_opt(link);
            for f in &n.features {
                c.push(Element::new("feature").attr("name", f));
            }
            if n.ethernet {
                c.push(Element::new("capability").attr("type", "80203"));
            }
            c
        }
        Cap::ScsiHost(h) => scsi_host_capability(cap, h),
        Cap::ScsiTarget { target } => cap
            .attr("type", "scsi_target")
            .child(Element::with_text("target", target.as_str())),
        Cap::Scsi(s) => cap
            .attr("type", "scsi")
            .child(Element::with_text("host", s.host.to_string()))
            .child(Element::with_text("bus", s.bus.to_string()))
            .child(Element::with_text("target", s.target.to_string()))
            .child(Element::with_text("lun", s.lun.to_string()))
            .child_opt(text_opt("type", s.kind.as_ref())),
        Cap::ScsiGeneric { char } => cap
            .attr("type", "scsi_generic")
            .child(Element::with_text("char", char.as_str())),
        Cap::Drm { kind } => cap
            .attr("type", "drm")
            .child(Element::with_text("type", kind.as_str())),
        Cap::Mdev(m) => cap
            .attr("type", "mdev")
            .child(Element::new("type").attr("id", &m.type_id))
            .child(Element::with_text("uuid", m.uuid.as_str()))
            .child_opt(
                m.iommu_group
                    .map(|g| Element::new("iommuGroup").attr("number", g)),
            ),
        Cap::Storage(s) => {
            let mut c = cap
                .attr("type", "storage")
                .child(Element::with_text("block", s.block.as_str()))
                .child_opt(text_opt("bus", s.bus.as_ref()))
                .child(Element::with_text("drive_type", s.drive_type.as_str()))
                .child_opt(text_opt("model", s.model.as_ref()))
                .child_opt(text_opt("vendor", s.vendor.as_ref()))
                .child_opt(text_opt("serial", s.serial.as_ref()));
            if s.removable {
                c.push(
                    Element::new("capability")
                        .attr("type", "removable")
                        .child(Element::with_text(
                            "media_available",
                            u8::from(s.media_available).to_string(),
                        ))
                        .child(Element::with_text("media_size", s.size.to_string())),
                );
            } else {
                c.push(Element::with_text("size", s.size.to_string()));
            }
            c.push(Element::with_text(
                "logical_block_size",
                s.logical_block_size.to_string(),
            ));
            c.push(Element::with_text(
                "num_blocks",
                (s.size / s.logical_block_size.max(1)).to_string(),
            ));
            c
        }
    }
}

/// The `<device>` document `GetXMLDesc` returns.
pub fn device_xml(roots: &Roots, dev: &Device) -> String {
    let mut e = Element::new("device").child(Element::with_text("name", dev.name.as_str()));
    if let Some(p) = &dev.sysfs {
        e.push(Element::with_text("path", roots.display_path(p)));
    }
    if let Some(n) = &dev.devnode {
        e.push(Element::with_text("devnode", n.as_str()).attr("type", "dev"));
    }
    if let Some(p) = &dev.parent {
        e.push(Element::with_text("parent", p.as_str()));
    }
    if let Some(d) = &dev.driver {
        e.push(Element::new("driver").child(Element::with_text("name", d.as_str())));
    }
    e.push(capability(dev));
    e.to_xml()
}
