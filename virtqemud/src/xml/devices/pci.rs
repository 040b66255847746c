//! PCI addressing of `<devices>`, as libvirt 9.0 does it (qemuDomainAssignPCIAddresses,
//! domain_addr.c): each device has connect flags (PCI or PCIe endpoint, which kind of
//! controller), each bus accepts some; a dry run finds how many buses are needed and
//! adds the controllers for them (a `pcie-root-port` per PCIe endpoint on q35, a
//! `pci-bridge` when i440fx's bus 0 is full), then the real run gives out the slots.
//! Running it again on its own output changes nothing, so addresses are stable.

use std::collections::BTreeSet;

use super::super::{invalid, DomainXmlError, Result};
use super::{addr_of, push_addr, Address, Controller, Devices, DiskBus, PciAddr};

// libvirt's virDomainPCIConnectFlags.
const AUTOASSIGN: u32 = 1;
const HOTPLUGGABLE: u32 = 1 << 1;
const INTEGRATED: u32 = 1 << 2;
const AGGREGATE: u32 = 1 << 3;
const PCI_DEVICE: u32 = 1 << 4;
const PCIE_DEVICE: u32 = 1 << 5;
const ROOT_PORT: u32 = 1 << 6;
const UPSTREAM: u32 = 1 << 7;
const DOWNSTREAM: u32 = 1 << 8;
const DMI_BRIDGE: u32 = 1 << 9;
const PXB: u32 = 1 << 10;
const PXB_PCIE: u32 = 1 << 11;
const PCI_BRIDGE: u32 = 1 << 12;
const PCIE_TO_PCI: u32 = 1 << 13;
const TYPES: u32 = PCI_DEVICE
    | PCIE_DEVICE
    | ROOT_PORT
    | UPSTREAM
    | DOWNSTREAM
    | DMI_BRIDGE
    | PXB
    | PXB_PCIE
    | PCI_BRIDGE
    | PCIE_TO_PCI;
const ENDPOINT: u32 = PCI_DEVICE | PCIE_DEVICE;

/// What a PCI controller model plugs into (virDomainPCIControllerModelToConnectType).
fn controller_connect(model: &str) -> u32 {
    match model {
        "pci-bridge" => PCI_BRIDGE,
        "pci-expander-bus" => PXB,
        "pcie-expander-bus" => PXB_PCIE,
        "dmi-to-pci-bridge" => DMI_BRIDGE,
        "pcie-to-pci-bridge" => PCIE_TO_PCI,
        "pcie-root-port" => ROOT_PORT | AGGREGATE,
        "pcie-switch-upstream-port" => UPSTREAM,
        "pcie-switch-downstream-port" => DOWNSTREAM,
        _ => 0,
    }
}

/// One bus of the address set: what it accepts and which functions are taken.
#[derive(Clone)]
struct Bus {
    model: String,
    flags: u32,
    min_slot: u8,
    max_slot: u8,
    functions: [u8; 32],
    aggregate: [bool; 32],
}

impl Bus {
    /// virDomainPCIAddressBusSetModel: what can be plugged *into* a bus of `model`.
    fn new(model: &str, hotplug: bool) -> Option<Bus> {
        let hp = if hotplug { HOTPLUGGABLE } else { 0 };
        let (flags, min_slot, max_slot) = match model {
            "pci-root" => (AUTOASSIGN | PCI_DEVICE | PCI_BRIDGE | PXB | hp, 1, 31),
            "pci-bridge" | "pcie-to-pci-bridge" => {
                (AUTOASSIGN | PCI_DEVICE | PCI_BRIDGE | hp, 1, 31)
            }
            "pci-expander-bus" => (AUTOASSIGN | PCI_DEVICE | PCI_BRIDGE | hp, 0, 31),
            "pcie-root" => (PCIE_DEVICE | ROOT_PORT | DMI_BRIDGE | PXB_PCIE, 1, 31),
            "dmi-to-pci-bridge" => (PCI_DEVICE | PCI_BRIDGE, 0, 31),
            "pcie-root-port" | "pcie-switch-downstream-port" => {
                (AUTOASSIGN | PCIE_DEVICE | UPSTREAM | PCIE_TO_PCI | hp, 0, 0)
            }
            "pcie-switch-upstream-port" => (DOWNSTREAM, 0, 31),
            "pcie-expander-bus" => (ROOT_PORT | DMI_BRIDGE, 0, 31),
            _ => return None,
        };
        Some(Bus {
            model: model.to_owned(),
            flags,
            min_slot,
            max_slot,
            functions: [0; 32],
            aggregate: [false; 32],
        })
    }

    fn fully_reserved(&self) -> bool {
        (self.min_slot..=self.max_slot).all(|s| self.functions[usize::from(s)] != 0)
    }
}

fn shown(p: &PciAddr) -> String {
    format!(
        "{:04x}:{:02x}:{:02x}.{}",
        p.domain, p.bus, p.slot, p.function
    )
}

fn pci(bus: u8, slot: u8, function: u8) -> PciAddr {
    PciAddr {
        domain: 0,
        bus,
        slot,
        function,
        multi: None,
    }
}

/// virDomainPCIAddressFlagsCompatible without its messages.
fn compatible(bus: u8, bus_flags: u32, dev_flags: u32, from_config: bool) -> bool {
    let (mut bf, mut df) = (bus_flags, dev_flags);
    if df & INTEGRATED != 0 {
        if bus != 0 {
            return false;
        }
        bf |= AUTOASSIGN;
    }
    if from_config {
        // A written address may put a PCI device on a PCIe slot and the other way round.
        if bf & ENDPOINT != 0 {
            bf |= ENDPOINT;
        }
        if df & PCI_BRIDGE != 0 {
            df |= PCI_DEVICE;
        }
    } else if df & AUTOASSIGN != 0 && bf & AUTOASSIGN == 0 {
        return false;
    }
    if df & HOTPLUGGABLE != 0 && bf & HOTPLUGGABLE == 0 {
        return false;
    }
    df & bf & TYPES != 0
}

/// libvirt's virDomainPCIAddressSet.
struct AddrSet {
    buses: Vec<Bus>,
    /// The first pass: addresses are only counted, and buses are added as needed.
    dry_run: bool,
}

impl AddrSet {
    /// virDomainPCIAddressSetGrow: adds the buses `*bus` needs for a device of `flags`
    /// (pcie-to-pci-bridge behind a root port when a PCI device meets a PCIe-only
    /// topology; the device then goes one bus further).
    fn grow(&mut self, bus: &mut usize, flags: u32) -> Result<()> {
        let Some(mut add) = (*bus + 1).checked_sub(self.buses.len()).filter(|a| *a > 0) else {
            return Ok(());
        };
        let mut need_bridge = false;
        let model = if flags & PCI_DEVICE != 0 {
            need_bridge = !self.buses.iter().any(|b| b.flags & PCI_BRIDGE != 0);
            if need_bridge && add == 1 {
                add += 1;
                *bus += 1;
            }
            "pci-bridge"
        } else if flags & (PCIE_DEVICE | UPSTREAM) != 0 {
            "pcie-root-port"
        } else {
            return Err(DomainXmlError::unsupported(
                "controller",
                "pci",
                "a PCI slot is needed for a PCI controller, but none is available, and it cannot be automatically added",
            ));
        };
        if self.buses.len() + add > 256 {
            return Err(DomainXmlError::unsupported(
                "devices",
                "",
                "more PCI devices than 256 buses can hold",
            ));
        }
        let mut added = 0;
        if need_bridge {
            // The root port only takes the pcie-to-pci-bridge; libvirt keeps it from
            // being used as the spare hot-plug port.
            let mut port = bus_of("pcie-root-port", true)?;
            port.flags = PCIE_TO_PCI;
            self.buses.push(port);
            self.buses.push(bus_of("pcie-to-pci-bridge", true)?);
            added = 2;
        }
        for _ in added..add {
            self.buses.push(bus_of(model, true)?);
        }
        Ok(())
    }

    /// virDomainPCIAddressValidate.
    fn validate(&self, p: &PciAddr, flags: u32, from_config: bool) -> Result<()> {
        let bad = |why: String| invalid("address", "pci", &shown(p), why);
        if p.domain != 0 {
            return Err(bad("only PCI domain 0 is available".into()));
        }
        let Some(bus) = self.buses.get(usize::from(p.bus)) else {
            return Err(bad(format!(
                "only PCI buses up to {} are available",
                self.buses.len().saturating_sub(1)
            )));
        };
        if !compatible(p.bus, bus.flags, flags, from_config) {
            return Err(bad(format!(
                "the {} controller with index='{}' cannot take this device",
                bus.model, p.bus
            )));
        }
        if p.slot < bus.min_slot || p.slot > bus.max_slot {
            return Err(bad(format!(
                "slot must be >= {} and <= {}",
                bus.min_slot, bus.max_slot
            )));
        }
        if p.function > 7 {
            return Err(bad("function must be <= 7".into()));
        }
        Ok(())
    }

    /// virDomainPCIAddressReserveAddrInternal.
    fn reserve(&mut self, p: &PciAddr, flags: u32, from_config: bool) -> Result<()> {
        if self.dry_run {
            let mut bus = usize::from(p.bus);
            self.grow(&mut bus, flags)?;
        }
        self.validate(p, flags, from_config)?;
        let bus = &mut self.buses[usize::from(p.bus)];
        let (slot, bit) = (usize::from(p.slot), 1u8 << p.function);
        if bus.functions[slot] & bit != 0 {
            return Err(invalid("address", "slot", &shown(p), "used by two devices"));
        }
        if bus.functions[slot] == 0 && flags & AGGREGATE != 0 {
            bus.aggregate[slot] = true;
        }
        bus.functions[slot] |= bit;
        Ok(())
    }

    fn in_use(&self, bus: u8, slot: u8) -> bool {
        self.buses
            .get(usize::from(bus))
            .is_some_and(|b| b.functions[usize::from(slot)] != 0)
    }

    /// virDomainPCIAddressGetNextAddr: the first free slot (or, for root ports, a free
    /// function of a slot other root ports share) of the first bus that takes the
    /// device; in the dry run a new bus when there is none.
    fn next_addr(&mut self, flags: u32, function: Option<u8>) -> Result<PciAddr> {
        let f0 = function.unwrap_or(0);
        for (b, bus) in self.buses.iter().enumerate() {
            let bn = u8::try_from(b).unwrap_or(u8::MAX);
            if !compatible(bn, bus.flags, flags, false) {
                continue;
            }
            for slot in bus.min_slot..=bus.max_slot {
                let used = bus.functions[usize::from(slot)];
                if used == 0 {
                    return Ok(pci(bn, slot, f0));
                }
                if flags & AGGREGATE != 0 && bus.aggregate[usize::from(slot)] {
                    if used & (1 << f0) == 0 {
                        return Ok(pci(bn, slot, f0));
                    }
                    if function.is_none() {
                        if let Some(f) = (0..8u8).find(|f| used & (1 << f) == 0) {
                            return Ok(pci(bn, slot, f));
                        }
                    }
                }
            }
        }
        if self.dry_run {
            let mut bus = self.buses.len();
            self.grow(&mut bus, flags)?;
            let min = self.buses.get(bus).map_or(0, |b| b.min_slot);
            return Ok(pci(u8::try_from(bus).unwrap_or(u8::MAX), min, f0));
        }
        Err(DomainXmlError::unsupported(
            "devices",
            "",
            "no more available PCI slots",
        ))
    }

    /// virDomainPCIAddressReserveNextAddr.
    fn reserve_next(&mut self, flags: u32, function: Option<u8>) -> Result<PciAddr> {
        let p = self.next_addr(flags, function)?;
        self.reserve(&p, flags, false)?;
        Ok(p)
    }
}

fn bus_of(model: &str, hotplug: bool) -> Result<Bus> {
    Bus::new(model, hotplug).ok_or_else(|| {
        DomainXmlError::unsupported("controller pci model", model, "not a PCI bus model")
    })
}

/// Where a device's address lives: typed devices by list and place, untyped ones by
/// their place in `Devices::other` (their address is kept apart meanwhile).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Dev {
    Controller(usize),
    Disk(usize),
    Interface(usize),
    Sound(usize),
    Video(usize),
    Hostdev(usize),
    Balloon,
    Rng(usize),
    Watchdog(usize),
    Input(usize),
    Panic(usize),
    Other(usize),
}

/// The addresses of the untyped devices, kept apart for the time of the assignment
/// (written back into their elements at the end).
struct Others {
    addrs: Vec<Option<Address>>,
    /// Stands for a missing balloon, which no list names.
    spare: Option<Address>,
}

fn usb2(c: &Controller) -> bool {
    c.kind == "usb"
        && matches!(
            c.model.as_deref(),
            Some("ehci" | "ich9-ehci1" | "ich9-uhci1" | "ich9-uhci2" | "ich9-uhci3")
        )
}

impl Devices {
    /// The guest PCI addresses of every device and controller.
    pub fn pci_addresses(&self) -> Vec<PciAddr> {
        let addrs = self
            .controllers
            .iter()
            .map(|c| &c.address)
            .chain(self.disks.iter().map(|x| &x.address))
            .chain(self.interfaces.iter().map(|x| &x.address))
            .chain(self.inputs.iter().map(|x| &x.address))
            .chain(self.videos.iter().map(|x| &x.address))
            .chain(self.sounds.iter().map(|x| &x.address))
            .chain(self.watchdogs.iter().map(|x| &x.address))
            .chain(self.hostdevs.iter().map(|x| &x.address))
            .chain(self.rngs.iter().map(|x| &x.address))
            .chain(self.panics.iter().map(|x| &x.address))
            .chain(self.memballoon.iter().map(|x| &x.address));
        addrs
            .filter_map(|a| a.as_ref().and_then(Address::pci))
            .collect()
    }

    fn addr_mut<'a>(&'a mut self, others: &'a mut Others, d: Dev) -> &'a mut Option<Address> {
        match d {
            Dev::Controller(i) => &mut self.controllers[i].address,
            Dev::Disk(i) => &mut self.disks[i].address,
            Dev::Interface(i) => &mut self.interfaces[i].address,
            Dev::Sound(i) => &mut self.sounds[i].address,
            Dev::Video(i) => &mut self.videos[i].address,
            Dev::Hostdev(i) => &mut self.hostdevs[i].address,
            Dev::Balloon => match self.memballoon.as_mut() {
                Some(m) => &mut m.address,
                None => &mut others.spare,
            },
            Dev::Rng(i) => &mut self.rngs[i].address,
            Dev::Watchdog(i) => &mut self.watchdogs[i].address,
            Dev::Input(i) => &mut self.inputs[i].address,
            Dev::Panic(i) => &mut self.panics[i].address,
            Dev::Other(i) => &mut others.addrs[i],
        }
    }

    fn addr_of_dev(&self, others: &Others, d: Dev) -> Option<Address> {
        match d {
            Dev::Controller(i) => self.controllers[i].address.clone(),
            Dev::Disk(i) => self.disks[i].address.clone(),
            Dev::Interface(i) => self.interfaces[i].address.clone(),
            Dev::Sound(i) => self.sounds[i].address.clone(),
            Dev::Video(i) => self.videos[i].address.clone(),
            Dev::Hostdev(i) => self.hostdevs[i].address.clone(),
            Dev::Balloon => self.memballoon.as_ref().and_then(|m| m.address.clone()),
            Dev::Rng(i) => self.rngs[i].address.clone(),
            Dev::Watchdog(i) => self.watchdogs[i].address.clone(),
            Dev::Input(i) => self.inputs[i].address.clone(),
            Dev::Panic(i) => self.panics[i].address.clone(),
            Dev::Other(i) => others.addrs[i].clone(),
        }
    }

    /// qemuDomainDeviceCalculatePCIConnectFlags with QEMU 7.2's capabilities (virtio
    /// devices are PCIe ones, as transitional models exist).
    fn connect_flags(&self, d: Dev, q35: bool) -> u32 {
        let pci = PCI_DEVICE | AUTOASSIGN;
        let pcie = if q35 { PCIE_DEVICE | AUTOASSIGN } else { pci };
        let virtio = |model: Option<&str>| {
            if model == Some("virtio-transitional") {
                pci
            } else {
                pcie
            }
        };
        match d {
            Dev::Controller(i) => {
                let c = &self.controllers[i];
                let m = c.model.as_deref();
                match c.kind.as_str() {
                    "pci" => controller_connect(m.unwrap_or("")),
                    "sata" | "ide" => pci,
                    "usb" => match m {
                        Some("nec-xhci" | "qemu-xhci") => pcie,
                        Some("none") => 0,
                        _ => pci,
                    },
                    "scsi" => match m {
                        Some("virtio-scsi" | "virtio-non-transitional") | None => pcie,
                        Some("ncr53c90" | "ibmvscsi") => 0,
                        _ => pci,
                    },
                    "virtio-serial" => virtio(m),
                    _ => 0,
                }
            }
            Dev::Disk(i) => {
                let d = &self.disks[i];
                let model = d
                    .extra_attrs
                    .iter()
                    .find(|(e, k, _)| e == "disk" && k == "model")
                    .map(|(_, _, v)| v.as_str());
                match d.bus {
                    Some(DiskBus::Virtio) => virtio(model),
                    _ => 0,
                }
            }
            Dev::Interface(i) => match self.interfaces[i].model.as_deref() {
                Some("usb-net") => 0,
                Some("virtio" | "virtio-non-transitional") => pcie,
                Some("e1000e") => pcie,
                Some("virtio-transitional") => pci,
                _ => pci,
            },
            Dev::Sound(i) => match self.sounds[i].model.as_str() {
                "es1370" | "ac97" | "ich6" | "ich9" => pci,
                _ => 0,
            },
            Dev::Video(i) => match self.videos[i].model.as_str() {
                "virtio" => pcie,
                "bochs" => pcie,
                "none" | "ramfb" => 0,
                _ => pci,
            },
            // A host device whose PCIe-ness cannot be read is taken as PCIe, as
            // libvirt does (most assignable devices are).
            Dev::Hostdev(_) => pcie,
            Dev::Balloon => match self.memballoon.as_ref().map(|m| m.model.as_str()) {
                Some("virtio-transitional") => pci,
                Some("none") | None => 0,
                _ => pcie,
            },
            Dev::Rng(i) => virtio(Some(self.rngs[i].model.as_str())),
            Dev::Watchdog(i) => {
                if self.watchdogs[i].model == "i6300esb" {
                    pci
                } else {
                    0
                }
            }
            Dev::Input(i) => {
                if self.inputs[i].bus == "virtio" {
                    pcie
                } else {
                    0
                }
            }
            Dev::Panic(i) => {
                if self.panics[i].model.as_deref() == Some("pvpanic") {
                    pci
                } else {
                    0
                }
            }
            Dev::Other(i) => other_flags(&self.other[i], pci, pcie),
        }
    }

    /// Every device that may have a PCI address, in the order libvirt walks them
    /// (virDomainDeviceInfoIterate): for collecting the written addresses.
    fn all_devs(&self, others: &Others) -> Vec<Dev> {
        let mut v: Vec<Dev> = Vec::new();
        v.extend((0..self.disks.len()).map(Dev::Disk));
        v.extend((0..self.interfaces.len()).map(Dev::Interface));
        v.extend((0..self.sounds.len()).map(Dev::Sound));
        v.extend((0..self.hostdevs.len()).map(Dev::Hostdev));
        v.extend((0..self.videos.len()).map(Dev::Video));
        v.extend((0..self.controllers.len()).map(Dev::Controller));
        v.extend((0..self.inputs.len()).map(Dev::Input));
        v.extend((0..self.watchdogs.len()).map(Dev::Watchdog));
        if self.memballoon.is_some() {
            v.push(Dev::Balloon);
        }
        v.extend((0..self.rngs.len()).map(Dev::Rng));
        v.extend((0..self.panics.len()).map(Dev::Panic));
        v.extend(
            (0..self.other.len())
                .filter(|i| others.addrs[*i].is_some())
                .map(Dev::Other),
        );
        v
    }

    /// qemuDomainPCIAddressSetCreate: the buses the PCI controllers make (`nbuses` of
    /// them, missing ones of the machine's default kind) with the written addresses
    /// reserved.
    fn addr_set(
        &self,
        others: &Others,
        nbuses: usize,
        q35: bool,
        dry_run: bool,
    ) -> Result<AddrSet> {
        let mut buses: Vec<Option<Bus>> = vec![None; nbuses];
        for c in self.controllers.iter().filter(|c| c.kind == "pci") {
            let Some(slot) = buses.get_mut(c.index as usize) else {
                continue;
            };
            let model = c.model.as_deref().unwrap_or(if c.index == 0 {
                if q35 {
                    "pcie-root"
                } else {
                    "pci-root"
                }
            } else if q35 {
                "pcie-root-port"
            } else {
                "pci-bridge"
            });
            *slot = Some(bus_of(model, c.target_hotplug != Some(false))?);
        }
        let root = if q35 { "pcie-root" } else { "pci-root" };
        let default = if q35 { "pcie-root-port" } else { "pci-bridge" };
        let mut set = AddrSet {
            buses: Vec::with_capacity(nbuses),
            dry_run,
        };
        for (i, b) in buses.into_iter().enumerate() {
            set.buses.push(match b {
                Some(b) => b,
                None => bus_of(if i == 0 { root } else { default }, true)?,
            });
        }
        for d in self.all_devs(others) {
            let Some(p) = self.addr_of_dev(others, d).as_ref().and_then(Address::pci) else {
                continue;
            };
            // PIIX3's own IDE and USB functions are reserved with the chipset.
            if let Dev::Controller(i) = d {
                let c = &self.controllers[i];
                if !q35 && p.bus == 0 && p.slot == 1 && c.index == 0 {
                    let piix3_usb = c.kind == "usb"
                        && matches!(c.model.as_deref(), None | Some("piix3-uhci"))
                        && p.function == 2;
                    if (c.kind == "ide" && p.function == 1) || piix3_usb {
                        continue;
                    }
                }
            }
            let flags = match self.connect_flags(d, q35) {
                0 => PCI_DEVICE,
                f => f,
            };
            set.reserve(&p, flags, true)?;
        }
        Ok(set)
    }
}

/// The connect flags of a device the model keeps untyped.
fn other_flags(e: &common::xml::Element, pci: u32, pcie: u32) -> u32 {
    let model = e
        .get_attr("model")
        .or_else(|| e.first("model").and_then(|m| m.get_attr("type")));
    let virtio = if model == Some("virtio-transitional") {
        pci
    } else {
        pcie
    };
    match e.name.as_str() {
        "filesystem" => {
            let driver = e.first("driver").and_then(|d| d.get_attr("type"));
            if matches!(driver, Some("loop" | "nbd" | "ploop")) {
                0
            } else {
                virtio
            }
        }
        "interface" => match (e.get_attr("type"), model) {
            // A host device behind a NIC: taken as PCIe, as other host devices.
            (Some("hostdev"), _) => pcie,
            (_, Some("usb-net")) => 0,
            (_, Some("virtio" | "virtio-non-transitional") | None) => pcie,
            (_, Some("e1000e")) => pcie,
            _ => pci,
        },
        "shmem" | "sound" | "watchdog" => pci,
        "video" => match e.first("model").and_then(|m| m.get_attr("type")) {
            Some("virtio" | "bochs") => pcie,
            _ => pci,
        },
        "iommu" => virtio | INTEGRATED,
        "hostdev" => {
            if e.get_attr("type") == Some("scsi_host") {
                virtio
            } else {
                pcie
            }
        }
        _ => virtio,
    }
}

/// An untyped device the command line puts on PCI.
fn untyped_on_pci(e: &common::xml::Element) -> bool {
    match e.name.as_str() {
        "filesystem" | "vsock" | "shmem" => true,
        // NICs of the kinds the model keeps as written; a USB NIC sits on USB, a
        // hostdev NIC gets its address with the host devices.
        "interface" => e.first("model").and_then(|m| m.get_attr("type")) != Some("usb-net"),
        "rng" => true,
        "input" => e.get_attr("bus") == Some("virtio"),
        "memory" => matches!(e.get_attr("model"), Some("virtio-mem" | "virtio-pmem")),
        "iommu" => e.get_attr("model") == Some("virtio"),
        "hostdev" => {
            e.get_attr("mode").unwrap_or("subsystem") == "subsystem"
                && match e.get_attr("type") {
                    Some("mdev") => e.get_attr("model").is_none_or(|m| m == "vfio-pci"),
                    Some("scsi_host" | "pci") => true,
                    _ => false,
                }
        }
        // Typed kinds kept whole for a child the model does not type (a `<rom>`,
        // `<codec>`, `<driver>`): they sit on PCI all the same.
        "sound" => matches!(
            e.get_attr("model"),
            Some("es1370" | "ac97" | "ich6" | "ich9")
        ),
        "watchdog" => e.get_attr("model") == Some("i6300esb"),
        "video" => !matches!(
            e.first("model").and_then(|m| m.get_attr("type")),
            Some("none" | "ramfb")
        ),
        _ => false,
    }
}

/// Whether a device wants a PCI address given to it (virDeviceInfoPCIAddressIsWanted).
fn wanted(a: &Option<Address>) -> bool {
    a.is_none()
}

impl Devices {
    /// libvirt's qemuDomainAssignPCIAddresses: a dry run that adds the buses the
    /// devices need (and, for a q35 domain whose PCI controllers libvirt manages, one
    /// spare root port for hot-plug), then the real assignment, `multifunction='on'`
    /// where a slot has several functions, and the controllers' model names and
    /// targets.
    /// `generic_root_port`: QEMU has `pcie-root-port`; else root ports are `ioh3420`s.
    pub(super) fn assign_pci(&mut self, q35: bool, generic_root_port: bool) -> Result<()> {
        let mut others = Others {
            addrs: self
                .other
                .iter()
                .map(|e| {
                    if untyped_on_pci(e) {
                        addr_of(e)
                    } else {
                        Ok(None)
                    }
                })
                .collect::<Result<_>>()?,
            spare: None,
        };
        let max_idx = self
            .controllers
            .iter()
            .filter(|c| c.kind == "pci")
            .map(|c| c.index as usize)
            .max()
            .unwrap_or(0);
        if max_idx > 255 {
            return Err(invalid(
                "controller",
                "attribute 'index'",
                &max_idx.to_string(),
                "PCI controller indexes go up to 255",
            ));
        }
        let mut set = self.addr_set(&others, max_idx + 1, q35, true)?;
        self.chipset_slots(&mut set, &mut others, q35)?;
        // i440fx: one slot kept back so that a bridge can still be plugged in.
        if !q35 && !set.buses.iter().all(Bus::fully_reserved) {
            set.reserve_next(PCI_DEVICE | AUTOASSIGN, None)?;
        }
        self.device_slots(&mut set, &mut others, q35)?;
        if q35 && max_idx == 0 && set.buses.len() > 1 {
            set.reserve_next(PCIE_DEVICE | AUTOASSIGN, None)?;
        }
        let mut i = 1;
        while i < set.buses.len() {
            let index = u32::try_from(i).unwrap_or(u32::MAX);
            if !self
                .controllers
                .iter()
                .any(|c| c.kind == "pci" && c.index == index)
            {
                let model = set.buses[i].model.clone();
                self.controllers
                    .push(Controller::new("pci", index, Some(&model)));
                set.reserve_next(controller_connect(&model), None)?;
            }
            i += 1;
        }
        let nbuses = set.buses.len();
        let mut set = self.addr_set(&others, nbuses, q35, false)?;
        self.chipset_slots(&mut set, &mut others, q35)?;
        self.device_slots(&mut set, &mut others, q35)?;
        self.set_all_multi(&mut others);
        for (i, a) in others.addrs.into_iter().enumerate() {
            if a.is_none() {
                continue;
            }
            let el = &mut self.other[i];
            el.children
                .retain(|c| !matches!(c, common::xml::Node::Element(e) if e.name == "address"));
            push_addr(el, &a);
        }
        self.fill_pci_targets(generic_root_port)
    }

    /// A fixed address for `d`, reserved (qemuDomainValidateDevicePCISlots*).
    fn place(
        &mut self,
        set: &mut AddrSet,
        others: &mut Others,
        d: Dev,
        p: PciAddr,
        flags: u32,
    ) -> Result<()> {
        set.reserve(&p, flags, true)?;
        *self.addr_mut(others, d) = Some(Address::Pci(p));
        Ok(())
    }

    /// The chipset's own devices: PIIX3's IDE and USB functions (00:01.1, 00:01.2) on
    /// i440fx, ICH9's AHCI (00:1f.2), USB2 (00:1d.0 then 00:1a.0), DMI bridge (00:1e.0)
    /// and HD audio (00:1b.0) on q35, and the primary video's slot (2, or 1 on q35).
    fn chipset_slots(&mut self, set: &mut AddrSet, others: &mut Others, q35: bool) -> Result<()> {
        let pci_flags = AUTOASSIGN | PCI_DEVICE;
        let flags = if q35 { PCIE_DEVICE } else { pci_flags };
        for i in 0..self.controllers.len() {
            let c = &self.controllers[i];
            let fixed = match (q35, c.kind.as_str(), c.model.as_deref()) {
                (false, "ide", _) if c.index == 0 => Some(pci(0, 1, 1)),
                (false, "usb", None | Some("piix3-uhci")) if c.index == 0 => Some(pci(0, 1, 2)),
                (true, "sata", _) if c.index == 0 => Some(pci(0, 0x1f, 2)),
                _ => None,
            };
            if let Some(want) = fixed {
                match c.address.as_ref().and_then(Address::pci) {
                    Some(p) if (p.bus, p.slot, p.function) != (0, want.slot, want.function) => {
                        return Err(invalid(
                            "controller/address",
                            c.kind.as_str(),
                            &shown(&p),
                            format!("the primary one must be at {}", shown(&want)),
                        ))
                    }
                    Some(_) => {}
                    None => self.controllers[i].address = Some(Address::Pci(want)),
                }
                // q35's AHCI is only named here; the ISA bridge keeps its slot taken.
                if !q35 {
                    set.reserve(&want, pci_flags, true)?;
                }
                continue;
            }
            if !q35 || c.address.is_some() {
                continue;
            }
            let (slots, multi): (&[u8], _) = match (c.kind.as_str(), c.model.as_deref()) {
                ("usb", Some("ich9-uhci1")) => (&[0x1d, 0x1a], Some(true)),
                ("pci", Some("dmi-to-pci-bridge")) => (&[0x1e], None),
                _ => continue,
            };
            if let Some(slot) = slots.iter().copied().find(|s| !set.in_use(0, *s)) {
                let mut p = pci(0, slot, 0);
                p.multi = multi;
                self.place(set, others, Dev::Controller(i), p, flags)?;
            }
        }
        if q35 {
            set.reserve(&pci(0, 0x1f, 0), flags, true)?;
            set.reserve(&pci(0, 0x1f, 3), flags, true)?;
        } else {
            set.reserve(&pci(0, 1, 0), flags, true)?;
            set.reserve(&pci(0, 1, 3), flags, true)?;
        }
        // The first video, typed or kept whole for a child the model does not type.
        let primary = match self.videos.first() {
            Some(v) => (!matches!(v.model.as_str(), "none" | "ramfb")).then_some(Dev::Video(0)),
            None => (0..self.other.len())
                .find(|i| self.other[*i].name == "video")
                .filter(|i| untyped_on_pci(&self.other[*i]))
                .map(Dev::Other),
        };
        if let Some(d) = primary.filter(|d| wanted(&self.addr_of_dev(others, *d))) {
            let p = pci(0, if q35 { 1 } else { 2 }, 0);
            set.validate(&p, flags, true)?;
            if set.in_use(0, p.slot) {
                self.reserve_next_for(set, others, d, q35)?;
            } else {
                self.place(set, others, d, p, flags)?;
            }
        }
        if q35 && !set.in_use(0, 0x1b) {
            if let Some(i) = self
                .sounds
                .iter()
                .position(|s| s.model == "ich9" && wanted(&s.address))
            {
                self.place(set, others, Dev::Sound(i), pci(0, 0x1b, 0), flags)?;
            }
        }
        Ok(())
    }

    /// qemuDomainPCIAddressReserveNextAddr for a device: the address is written in
    /// the real run only.
    fn reserve_next_for(
        &mut self,
        set: &mut AddrSet,
        others: &mut Others,
        d: Dev,
        q35: bool,
    ) -> Result<()> {
        let flags = self.connect_flags(d, q35);
        if flags == 0 {
            return Ok(());
        }
        let p = set.reserve_next(flags, None)?;
        if !set.dry_run {
            *self.addr_mut(others, d) = Some(Address::Pci(p));
        }
        Ok(())
    }

    /// The devices that get the next free slot, in libvirt's order
    /// (qemuDomainAssignDevicePCISlots).
    fn device_slots(&mut self, set: &mut AddrSet, others: &mut Others, q35: bool) -> Result<()> {
        // A hostdev NIC gets its address with the host devices, as in libvirt.
        let is = |e: &common::xml::Element, name: &str| {
            let hostdev_nic = e.name == "interface" && e.get_attr("type") == Some("hostdev");
            let kind = if hostdev_nic {
                "hostdev"
            } else {
                e.name.as_str()
            };
            kind == name && untyped_on_pci(e)
        };
        let other_of = |name: &str| -> Vec<Dev> {
            (0..self.other.len())
                .filter(|i| is(&self.other[*i], name))
                .map(Dev::Other)
                .collect()
        };
        let mut order: Vec<Dev> = Vec::new();
        order.extend(
            (0..self.controllers.len())
                .filter(|i| {
                    let c = &self.controllers[*i];
                    c.kind == "pci" && !matches!(c.model.as_deref(), Some("pci-root" | "pcie-root"))
                })
                .map(Dev::Controller),
        );
        order.extend(other_of("filesystem"));
        order.extend((0..self.interfaces.len()).map(Dev::Interface));
        order.extend(other_of("interface"));
        order.extend((0..self.sounds.len()).map(Dev::Sound));
        order.extend(other_of("sound"));
        let mut rest: Vec<Dev> = Vec::new();
        rest.extend(
            (0..self.disks.len())
                .filter(|i| self.disks[*i].bus == Some(DiskBus::Virtio))
                .map(Dev::Disk),
        );
        rest.extend((0..self.hostdevs.len()).map(Dev::Hostdev));
        rest.extend(other_of("hostdev"));
        if self.memballoon.is_some() {
            rest.push(Dev::Balloon);
        }
        rest.extend((0..self.rngs.len()).map(Dev::Rng));
        rest.extend(other_of("rng"));
        rest.extend((0..self.watchdogs.len()).map(Dev::Watchdog));
        rest.extend(other_of("watchdog"));
        rest.extend((0..self.videos.len()).map(Dev::Video));
        rest.extend(other_of("video"));
        rest.extend(other_of("shmem"));
        rest.extend((0..self.inputs.len()).map(Dev::Input));
        rest.extend(other_of("input"));
        rest.extend((0..self.panics.len()).map(Dev::Panic));
        rest.extend(other_of("iommu"));
        rest.extend(other_of("vsock"));
        rest.extend(other_of("memory"));
        for d in order {
            if wanted(&self.addr_of_dev(others, d)) {
                self.reserve_next_for(set, others, d, q35)?;
            }
        }
        self.controller_slots(set, others, q35)?;
        for d in rest {
            let unassigned = matches!(self.addr_of_dev(others, d),
                Some(Address::Other(e)) if e.get_attr("type") == Some("unassigned"));
            if wanted(&self.addr_of_dev(others, d)) && !unassigned {
                self.reserve_next_for(set, others, d, q35)?;
            }
        }
        Ok(())
    }

    /// The controllers other than PCI ones; a USB2 controller and its companions
    /// share one slot (EHCI function 7, UHCI1-3 functions 0-2).
    fn controller_slots(
        &mut self,
        set: &mut AddrSet,
        others: &mut Others,
        q35: bool,
    ) -> Result<()> {
        for i in 0..self.controllers.len() {
            let c = &self.controllers[i];
            let skip = match c.kind.as_str() {
                "pci" | "fdc" | "ccid" => true,
                "usb" => c.model.as_deref() == Some("none"),
                "ide" => c.index == 0 && !q35,
                "scsi" => c.model.as_deref() == Some("ncr53c90"),
                _ => false,
            };
            if skip || !wanted(&c.address) {
                continue;
            }
            if !usb2(c) {
                self.reserve_next_for(set, others, Dev::Controller(i), q35)?;
                continue;
            }
            let flags = self.connect_flags(Dev::Controller(i), q35);
            let found = self
                .controllers
                .iter()
                .filter(|o| usb2(o) && o.index == c.index)
                .find_map(|o| o.address.as_ref().and_then(Address::pci));
            let (function, multi) = match c.model.as_deref() {
                Some("ich9-ehci1") => (7, None),
                Some("ich9-uhci1") => (0, Some(true)),
                Some("ich9-uhci2") => (1, None),
                Some("ich9-uhci3") => (2, None),
                _ => (found.map_or(0, |p| p.function), None),
            };
            match found {
                Some(p) => {
                    let mut p = pci(p.bus, p.slot, function);
                    p.multi = multi;
                    self.place(set, others, Dev::Controller(i), p, flags)?;
                }
                None => {
                    let mut p = set.reserve_next(flags, Some(function))?;
                    p.multi = multi;
                    if !set.dry_run {
                        self.controllers[i].address = Some(Address::Pci(p));
                    }
                }
            }
        }
        Ok(())
    }

    /// virDomainPCIAddressSetAllMulti: function 0 of a slot with several functions
    /// in use says `multifunction='on'` (unless written 'off').
    fn set_all_multi(&mut self, others: &mut Others) {
        let all = self.all_devs(others);
        let multi: BTreeSet<(u16, u8, u8)> = all
            .iter()
            .filter_map(|d| self.addr_of_dev(others, *d).as_ref().and_then(Address::pci))
            .filter(|p| p.function != 0)
            .map(|p| (p.domain, p.bus, p.slot))
            .collect();
        for d in all {
            if let Some(Address::Pci(p)) = self.addr_mut(others, d) {
                if p.function == 0
                    && p.multi.is_none()
                    && multi.contains(&(p.domain, p.bus, p.slot))
                {
                    p.multi = Some(true);
                }
            }
        }
    }

    /// qemuDomainAddressFindNewBusNr: an expander bus without a `busNr` starts two
    /// below the lowest one given (one number for itself, one for its built-in bridge),
    /// from 256 down; none left below 3 is refused, as libvirt refuses it.
    fn fill_expander_bus_numbers(&mut self) -> Result<()> {
        let expander = |c: &Controller| {
            matches!(
                c.model.as_deref(),
                Some("pci-expander-bus" | "pcie-expander-bus")
            )
        };
        for i in 0..self.controllers.len() {
            let c = &self.controllers[i];
            if c.kind != "pci" || !expander(c) || c.target_bus_nr.is_some() {
                continue;
            }
            let lowest = (self.controllers.iter())
                .filter(|c| c.kind == "pci")
                .filter_map(|c| c.target_bus_nr)
                .min()
                .unwrap_or(256);
            if lowest <= 2 {
                return Err(invalid(
                    "controller/target",
                    "attribute 'busNr'",
                    "",
                    format!(
                        "no free bus number below {lowest} for the expander bus with index='{}': give one",
                        c.index
                    ),
                ));
            }
            self.controllers[i].target_bus_nr = Some(lowest - 2);
        }
        Ok(())
    }

    /// libvirt's `<model name>` and `<target>` of PCI controllers: chassis = index (a
    /// pci-bridge's chassisNr), a root port's port from its own slot and function
    /// (`slot << 3 | function`), a downstream port's from its slot; a pci-bridge must
    /// have a higher index than the bus it sits on.
    fn fill_pci_targets(&mut self, generic_root_port: bool) -> Result<()> {
        self.fill_expander_bus_numbers()?;
        for c in self.controllers.iter_mut().filter(|c| c.kind == "pci") {
            if c.model_name.is_none() && c.model.as_deref() == Some("pcie-root-port") {
                // qemuDomainPCIControllerSetDefaultModelName: Intel's port before QEMU 2.9.
                let name = if generic_root_port {
                    "pcie-root-port"
                } else {
                    "ioh3420"
                };
                c.model_name = Some(name.to_owned());
            }
            if c.model_name.is_none() {
                c.model_name = c
                    .model
                    .as_deref()
                    .and_then(super::controller::pci_model_name)
                    .map(str::to_owned);
            }
            let at = c.address.as_ref().and_then(Address::pci);
            match c.model.as_deref() {
                Some("pcie-root-port") => {
                    c.target_chassis.get_or_insert(c.index);
                    if let (None, Some(p)) = (c.target_port, at) {
                        c.target_port = Some(u32::from(p.slot) << 3 | u32::from(p.function));
                    }
                }
                Some("pcie-switch-downstream-port") => {
                    c.target_chassis.get_or_insert(c.index);
                    if let (None, Some(p)) = (c.target_port, at) {
                        c.target_port = Some(u32::from(p.slot));
                    }
                }
                Some("pci-bridge") => {
                    c.target_chassis.get_or_insert(c.index);
                    if let Some(p) = at.filter(|p| c.index <= u32::from(p.bus)) {
                        return Err(invalid(
                            "controller",
                            "attribute 'index'",
                            &c.index.to_string(),
                            format!(
                                "a pci-bridge's index must be larger than its bus 0x{:02x}",
                                p.bus
                            ),
                        ));
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}
