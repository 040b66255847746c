//! `<controller>`: PCI roots, bridges and root ports, USB, SCSI, SATA, IDE and
//! virtio-serial controllers, with the index numbering libvirt applies.

use std::collections::BTreeSet;

use common::xml::{Element, Node};

use super::super::{invalid, DomainXmlError, Result};
use super::{addr_of, parse_num, push_addr, unhandled, Address, Devices, DiskBus, REGENERATED};

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
    /// `<target hotplug='on|off'>` of a root or downstream port.
    pub target_hotplug: Option<bool>,
    /// `<target busNr>` of a PCI(e) expander bus: the guest bus number it starts at.
    pub target_bus_nr: Option<u32>,
    /// `<target><node>` of a PCI(e) expander bus: the guest NUMA node it belongs to.
    pub target_node: Option<u32>,
    /// `<model name>`: QEMU's device for a PCI controller (`ioh3420` for a root port);
    /// libvirt fills it, the command line honours it.
    pub model_name: Option<String>,
    /// `ports=` of a USB or virtio-serial controller.
    pub ports: Option<u32>,
    /// `vectors=` of a virtio-serial controller (its MSI-X vectors).
    pub vectors: Option<u32>,
    /// `<master startport=>` of a USB companion controller (`ich9-uhci1` beside its
    /// `ich9-ehci1`): it shares its master's index.
    pub master_startport: Option<u32>,
    /// Children not handled (`<driver>`, `<master>`, ...): kept, refused at start.
    pub unhandled: Vec<Element>,
}

/// The index of a controller written without one, until it is numbered.
const UNNUMBERED: u32 = u32::MAX;

/// PCI controller models that are bridges: devices sit on the bus they make.
pub const PCI_BRIDGES: &[&str] = &[
    "pcie-root-port",
    "pcie-switch-upstream-port",
    "pcie-switch-downstream-port",
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
            target_hotplug: None,
            target_bus_nr: None,
            target_node: None,
            model_name: None,
            target_port: None,
            ports: None,
            vectors: None,
            master_startport: None,
            unhandled: Vec::new(),
        }
    }

    pub(super) fn parse(el: &Element) -> Result<Controller> {
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
            target_hotplug: match target.and_then(|t| t.get_attr("hotplug")) {
                None => None,
                Some("on") => Some(true),
                Some("off") => Some(false),
                Some(v) => {
                    return Err(invalid(
                        "controller/target",
                        "attribute 'hotplug'",
                        v,
                        "expected on or off",
                    ))
                }
            },
            target_bus_nr: num("busNr")?,
            target_node: match target.and_then(|t| t.first("node")) {
                Some(n) => {
                    let v = n.text();
                    Some(
                        v.trim()
                            .parse::<u32>()
                            .map_err(|e| invalid("controller/target/node", "value", &v, e))?,
                    )
                }
                None => None,
            },
            model_name: el
                .first("model")
                .and_then(|m| m.get_attr("name"))
                .map(str::to_owned),
            ports: el.parse_attr::<u32>("ports")?,
            vectors: el.parse_attr::<u32>("vectors")?,
            master_startport: match el.first("master") {
                Some(m) => Some(parse_num(m, "startport")?),
                None => None,
            },
            // `<model name>` is read above.
            unhandled: unhandled(
                el,
                &[&["address", "target", "model", "master"][..], REGENERATED].concat(),
            ),
        })
    }

    pub(super) fn to_element(&self) -> Element {
        let mut el = Element::new("controller")
            .attr("type", &self.kind)
            .attr("index", self.index)
            .attr_opt("model", self.model.as_deref())
            .attr_opt("ports", self.ports)
            .attr_opt("vectors", self.vectors);
        if let Some(n) = &self.model_name {
            el.push(Element::new("model").attr("name", n));
        }
        if self.target_chassis.is_some()
            || self.target_port.is_some()
            || self.target_hotplug.is_some()
            || self.target_bus_nr.is_some()
            || self.target_node.is_some()
        {
            let key = if self.model.as_deref() == Some("pci-bridge") {
                "chassisNr"
            } else {
                "chassis"
            };
            el.push(
                Element::new("target")
                    .attr_opt(key, self.target_chassis)
                    .attr_opt("port", self.target_port.map(|p| format!("0x{p:x}")))
                    .attr_opt(
                        "hotplug",
                        self.target_hotplug.map(|h| if h { "on" } else { "off" }),
                    )
                    .attr_opt("busNr", self.target_bus_nr)
                    .child_opt(
                        self.target_node
                            .map(|n| Element::with_text("node", n.to_string())),
                    ),
            );
        }
        if let Some(p) = self.master_startport {
            el.push(Element::new("master").attr("startport", p));
        }
        el.children
            .extend(self.unhandled.iter().cloned().map(Node::Element));
        push_addr(&mut el, &self.address);
        el
    }

    /// A USB companion controller: it shares its master's index.
    pub fn is_usb_companion(&self) -> bool {
        self.kind == "usb" && self.master_startport.is_some()
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
            "scsi" => self.model.as_deref() != Some("ibmvscsi"),
            "virtio-serial" => true,
            "pci" => self.is_pci_bridge(),
            _ => false,
        }
    }
}

impl Devices {
    /// Gives controllers written without an index the next free one of their type, as
    /// libvirt does (virDomainDefPostParseControllers); PCI index 0 is the root bus's.
    /// A USB2 controller (EHCI or an ICH9 UHCI) right after another USB2 one joins its
    /// index unless that index has one of its model already. Every `ich9-uhciN` is a
    /// companion on ports 2(N-1).. (libvirt's implicit `<master startport>`). Indexes
    /// must be unique per type, companions aside.
    pub(super) fn number_controllers(&mut self) -> Result<()> {
        for c in &mut self.controllers {
            let n = c.model.as_deref().and_then(|m| m.strip_prefix("ich9-uhci"));
            if let (Some(n), None) = (n, c.master_startport) {
                c.master_startport = n.parse::<u32>().ok().map(|n| 2 * n.saturating_sub(1));
            }
        }
        let mut taken: BTreeSet<(String, u32)> = BTreeSet::new();
        for c in self
            .controllers
            .iter()
            .filter(|c| c.index != UNNUMBERED && !c.is_usb_companion())
        {
            if !taken.insert((c.kind.clone(), c.index)) {
                return Err(invalid(
                    "controller",
                    "attribute 'index'",
                    &format!("{} {}", c.kind, c.index),
                    "used by two controllers of this type",
                ));
            }
        }
        for i in 0..self.controllers.len() {
            if self.controllers[i].index != UNNUMBERED {
                continue;
            }
            let c = &self.controllers[i];
            let joined = (is_usb2(c)).then(|| {
                let prev = self.controllers[..i]
                    .iter()
                    .rev()
                    .find(|p| p.kind == "usb")?;
                let clash = self
                    .controllers
                    .iter()
                    .any(|o| o.kind == "usb" && o.index == prev.index && o.model == c.model);
                (is_usb2(prev) && !clash).then_some(prev.index)
            });
            let index = match joined.flatten() {
                Some(index) => index,
                None => {
                    let root = c.kind == "pci"
                        && matches!(c.model.as_deref(), Some("pcie-root" | "pci-root"));
                    let mut n = if c.kind == "pci" && !root { 1 } else { 0 };
                    while self
                        .controllers
                        .iter()
                        .any(|o| o.kind == c.kind && o.index == n)
                    {
                        n += 1;
                    }
                    n
                }
            };
            self.controllers[i].index = index;
        }
        Ok(())
    }
}

/// libvirt's IS_USB2_CONTROLLER.
fn is_usb2(c: &Controller) -> bool {
    c.kind == "usb"
        && matches!(
            c.model.as_deref(),
            Some("ehci" | "ich9-ehci1" | "ich9-uhci1" | "ich9-uhci2" | "ich9-uhci3")
        )
}

impl Devices {
    /// Adds the controllers libvirt adds implicitly and checks the models of the
    /// USB and SCSI ones.
    pub(super) fn add_implicit_controllers(&mut self, q35: bool) -> Result<()> {
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
        // The SCSI controller of each SCSI disk (its drive address's, else 0).
        let scsi: BTreeSet<u32> = self
            .disks
            .iter()
            .filter(|d| d.bus == Some(DiskBus::Scsi))
            .map(|d| match &d.address {
                Some(Address::Drive { controller, .. }) => *controller,
                _ => 0,
            })
            .collect();
        for i in scsi {
            if !self
                .controllers
                .iter()
                .any(|c| c.kind == "scsi" && c.index == i)
            {
                self.controllers
                    .push(Controller::new("scsi", i, Some(SCSI_DEFAULT)));
            }
        }
        // q35 has no floppy controller of its own: one is added for floppy drives.
        if q35
            && !has(&self.controllers, "fdc")
            && self.disks.iter().any(|d| d.bus == Some(DiskBus::Fdc))
        {
            self.controllers.push(Controller::new("fdc", 0, None));
        }
        // i440fx has no SATA: libvirt adds an AHCI controller (ich9-ahci) for SATA disks.
        if !q35
            && !has(&self.controllers, "sata")
            && self.disks.iter().any(|d| d.bus == Some(DiskBus::Sata))
        {
            self.controllers.push(Controller::new("sata", 0, None));
        }
        // Each channel's virtio-serial controller (its address's, else 0): libvirt adds
        // the ones missing.
        let named: BTreeSet<u32> = self
            .channels
            .iter()
            .filter(|c| !c.is_guestfwd())
            .map(|c| {
                c.unhandled
                    .iter()
                    .find(|e| e.name == "address" && e.get_attr("type") == Some("virtio-serial"))
                    .and_then(|e| e.get_attr("controller"))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            })
            .collect();
        for i in named {
            let exists = self
                .controllers
                .iter()
                .any(|c| c.kind == "virtio-serial" && c.index == i);
            if !exists {
                self.controllers
                    .push(Controller::new("virtio-serial", i, None));
            }
        }
        // libvirt's SCSI controller model when none is written
        // (qemuDomainGetSCSIControllerModel: LSI's when QEMU has it, as Debian's does).
        for c in self.controllers.iter_mut().filter(|c| c.kind == "scsi") {
            c.model.get_or_insert_with(|| SCSI_DEFAULT.to_owned());
        }
        // qemuDomainAssignSpaprVIOAddresses: VIO SCSI controllers get the next free
        // `reg` from 0x2000, in steps of 0x1000, whatever the machine.
        let vio_reg = |c: &Controller| match &c.address {
            Some(Address::Other(a)) if a.get_attr("type") == Some("spapr-vio") => a
                .get_attr("reg")
                .and_then(|r| u64::from_str_radix(r.trim_start_matches("0x"), 16).ok()),
            _ => None,
        };
        let mut taken: BTreeSet<u64> = self.controllers.iter().filter_map(vio_reg).collect();
        for c in self.controllers.iter_mut().filter(|c| {
            c.kind == "scsi" && c.model.as_deref() == Some("ibmvscsi") && c.address.is_none()
        }) {
            let reg = (0x2000u64..)
                .step_by(0x1000)
                .find(|r| !taken.contains(r))
                .unwrap_or(0x2000);
            taken.insert(reg);
            c.address = Some(Address::Other(
                Element::new("address")
                    .attr("type", "spapr-vio")
                    .attr("reg", format!("0x{reg:08x}")),
            ));
        }
        for c in &self.controllers {
            if c.kind == "usb" {
                if let Some(m) = &c.model {
                    if usb_device(m).is_none() && m != "none" {
                        return Err(DomainXmlError::unsupported(
                            "controller usb model",
                            m,
                            format!("expected none or one of {}", model_names(USB_MODELS)),
                        ));
                    }
                }
            }
            if let Some(m) = c.model.as_deref().filter(|_| c.kind == "scsi") {
                if scsi_device(m).is_none() {
                    return Err(DomainXmlError::unsupported(
                        "controller scsi model",
                        m,
                        format!("expected one of {}", model_names(SCSI_MODELS)),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// libvirt's default `<model name>` of a PCI controller model.
pub(super) fn pci_model_name(model: &str) -> Option<&'static str> {
    Some(match model {
        "pcie-root-port" => "pcie-root-port",
        "pci-bridge" => "pci-bridge",
        "dmi-to-pci-bridge" => "i82801b11-bridge",
        "pcie-switch-upstream-port" => "x3130-upstream",
        "pcie-switch-downstream-port" => "xio3130-downstream",
        "pcie-to-pci-bridge" => "pcie-pci-bridge",
        "pci-expander-bus" => "pxb",
        "pcie-expander-bus" => "pxb-pcie",
        _ => return None,
    })
}

/// libvirt's default SCSI controller model on x86 with a QEMU that has LSI's HBA.
pub(super) const SCSI_DEFAULT: &str = "lsilogic";

/// libvirt's USB controller models and QEMU's device for each.
const USB_MODELS: &[(&str, &str)] = &[
    ("qemu-xhci", "qemu-xhci"),
    ("nec-xhci", "nec-usb-xhci"),
    ("piix3-uhci", "piix3-usb-uhci"),
    ("piix4-uhci", "piix4-usb-uhci"),
    ("ich9-ehci1", "ich9-usb-ehci1"),
    ("ich9-uhci1", "ich9-usb-uhci1"),
    ("ich9-uhci2", "ich9-usb-uhci2"),
    ("ich9-uhci3", "ich9-usb-uhci3"),
    ("vt82c686b-uhci", "vt82c686b-usb-uhci"),
    ("pci-ohci", "pci-ohci"),
];

/// libvirt's SCSI controller models and QEMU's device for each (the x86 ones).
const SCSI_MODELS: &[(&str, &str)] = &[
    ("virtio-scsi", "virtio-scsi-pci"),
    ("virtio-transitional", "virtio-scsi-pci-transitional"),
    (
        "virtio-non-transitional",
        "virtio-scsi-pci-non-transitional",
    ),
    ("lsilogic", "lsi53c895a"),
    ("lsisas1068", "mptsas1068"),
    ("lsisas1078", "megasas-gen2"),
    ("vmpvscsi", "pvscsi"),
    ("am53c974", "am53c974"),
    ("dc390", "dc390"),
    // pSeries' VIO SCSI: defined as libvirt does (with a spapr-vio address), never run.
    ("ibmvscsi", "spapr-vscsi"),
];

fn model_names(models: &[(&str, &str)]) -> String {
    models.iter().map(|m| m.0).collect::<Vec<_>>().join(", ")
}

/// QEMU's device for a libvirt USB controller model.
pub fn usb_device(model: &str) -> Option<&'static str> {
    USB_MODELS.iter().find(|m| m.0 == model).map(|m| m.1)
}

/// QEMU's device for a libvirt SCSI controller model.
pub fn scsi_device(model: &str) -> Option<&'static str> {
    SCSI_MODELS.iter().find(|m| m.0 == model).map(|m| m.1)
}
