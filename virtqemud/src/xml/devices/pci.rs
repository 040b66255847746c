//! PCI addressing of `<devices>`: the addresses in use and the slots given to devices
//! written without one, checked against the buses bridges and root ports make.

use std::collections::BTreeSet;

use super::super::{invalid, DomainXmlError, Result};
use super::{addr_of, push_addr, Address, Devices, DiskBus, PciAddr};

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

    /// Gives every PCI device without an address a slot on bus 0, then on the buses of
    /// `pci-bridge`s and root ports when bus 0 is full. On i440fx, as libvirt does, the
    /// bridges that addresses name and those more devices need are added; on q35 the
    /// `pcie-root-port`s more devices need, eight to a slot of bus 0 (functions 0-7).
    pub(super) fn assign_pci(&mut self, q35: bool) -> Result<()> {
        if !q35 {
            self.add_named_bridges();
        }
        for _ in 0..8 {
            let before = self.clone();
            match self.assign_pci_once(q35)? {
                None => return Ok(()),
                Some(left) if !q35 => {
                    // Each new bridge takes one slot of bus 0 and offers 31.
                    *self = before;
                    for _ in 0..left.div_ceil(30).max(1) {
                        let index = self.free_pci_index();
                        self.controllers.push(super::Controller::new(
                            "pci",
                            index,
                            Some("pci-bridge"),
                        ));
                    }
                }
                Some(left) => {
                    // Each slot given to root ports offers eight and takes one.
                    *self = before;
                    if !self.add_root_ports(left.div_ceil(7)) {
                        break;
                    }
                }
            }
        }
        Err(DomainXmlError::unsupported(
            "devices",
            "",
            "more PCI devices than slots on bus 0 and its bridges",
        ))
    }

    /// Adds eight `pcie-root-port`s on each of the `slots` highest slots of bus 0 that
    /// no address names; false when there is no such slot left.
    fn add_root_ports(&mut self, slots: usize) -> bool {
        let named: BTreeSet<u8> = self
            .pci_addresses()
            .iter()
            .filter(|p| p.bus == 0)
            .map(|p| p.slot)
            .collect();
        // 0x1f is the ICH9's, 1 the primary video's.
        let free: Vec<u8> = (2..=0x1eu8)
            .rev()
            .filter(|s| !named.contains(s))
            .take(slots)
            .collect();
        if free.is_empty() {
            return false;
        }
        for slot in free {
            for function in 0..8 {
                let index = self.free_pci_index();
                let mut port = super::Controller::new("pci", index, Some("pcie-root-port"));
                port.address = Some(Address::Pci(PciAddr {
                    domain: 0,
                    bus: 0,
                    slot,
                    function,
                }));
                self.controllers.push(port);
            }
        }
        true
    }

    fn free_pci_index(&self) -> u32 {
        let mut i = 1;
        while self
            .controllers
            .iter()
            .any(|c| c.kind == "pci" && c.index == i)
        {
            i += 1;
        }
        i
    }

    /// A `pci-bridge` for every bus from 1 to the highest an address names, where no
    /// controller makes it yet (libvirt's auto-added bridges on i440fx).
    fn add_named_bridges(&mut self) {
        let Some(max) = self.pci_addresses().iter().map(|p| u32::from(p.bus)).max() else {
            return;
        };
        for index in 1..=max {
            if !self
                .controllers
                .iter()
                .any(|c| c.kind == "pci" && c.index == index)
            {
                self.controllers
                    .push(super::Controller::new("pci", index, Some("pci-bridge")));
            }
        }
    }

    /// PCIe switch ports written without an address go where libvirt puts them: an
    /// upstream port in slot 0 of the first root port or downstream port (by index)
    /// whose slot is free, a downstream port in the first free slot of the first
    /// upstream port that has one.
    fn place_switch_ports(&mut self) -> Result<()> {
        let mut used: BTreeSet<(u8, u8)> = self
            .pci_addresses()
            .iter()
            .filter(|p| p.bus != 0)
            .map(|p| (p.bus, p.slot))
            .collect();
        let buses: Vec<(u32, String)> = self
            .controllers
            .iter()
            .filter(|c| c.is_pci_bridge())
            .map(|c| (c.index, c.model.clone().unwrap_or_default()))
            .collect();
        let mut order: Vec<usize> = (0..self.controllers.len()).collect();
        order.sort_by_key(|i| self.controllers[*i].index);
        for i in order {
            let c = &self.controllers[i];
            let (parents, slots): (&[&str], u8) = match c.model.as_deref() {
                _ if c.kind != "pci" || c.address.is_some() => continue,
                Some("pcie-switch-upstream-port") => {
                    (&["pcie-root-port", "pcie-switch-downstream-port"], 0)
                }
                Some("pcie-switch-downstream-port") => (&["pcie-switch-upstream-port"], 0x1f),
                _ => continue,
            };
            let own = c.index;
            let place = buses
                .iter()
                .filter(|(b, m)| *b != own && parents.contains(&m.as_str()))
                .filter_map(|(b, _)| u8::try_from(*b).ok())
                .flat_map(|b| (0..=slots).map(move |s| (b, s)))
                .find(|p| !used.contains(p));
            let Some((bus, slot)) = place else {
                return Err(DomainXmlError::unsupported(
                    "controller",
                    c.model.as_deref().unwrap_or_default(),
                    format!("no free {} slot to plug it into", parents.join(" or ")),
                ));
            };
            used.insert((bus, slot));
            self.controllers[i].address = Some(Address::Pci(PciAddr {
                domain: 0,
                bus,
                slot,
                function: 0,
            }));
        }
        Ok(())
    }

    /// One pass of [`Devices::assign_pci`]; `Some(n)`: `n` devices found no slot.
    fn assign_pci_once(&mut self, q35: bool) -> Result<Option<usize>> {
        self.place_switch_ports()?;
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
        let has_video = first_video.is_some();
        // libvirt's order (qemuDomainAssignDevicePCISlots): bridges, NICs, sound
        // cards, other controllers, disks, host devices, balloon, RNGs, watchdogs,
        // further videos, virtio inputs. q35's first SATA controller is the ICH9's
        // own (0x1f.2); i440fx's is an AHCI card.
        // Devices the model keeps untyped but the command line builds on PCI
        // (filesystems, vsock, virtio IOMMU, mediated devices) get slots too; their
        // `<address>` is written into the kept element afterwards.
        let mut untyped: Vec<(usize, Option<Address>)> = self
            .other
            .iter()
            .enumerate()
            .filter(|(_, e)| untyped_on_pci(e))
            .map(|(i, e)| Ok((i, addr_of(e)?)))
            .collect::<Result<_>>()?;
        let (fs, rest): (Vec<_>, Vec<_>) = untyped
            .iter_mut()
            .partition(|(i, _)| self.other[*i].name == "filesystem");
        let (nets, rest): (Vec<_>, Vec<_>) = rest
            .into_iter()
            .partition(|(i, _)| self.other[*i].name == "interface");
        let (bridge_ctrls, other_ctrls): (Vec<_>, Vec<_>) = self
            .controllers
            .iter_mut()
            .filter(|c| c.needs_pci_slot() || (!q35 && c.kind == "sata"))
            .partition(|c| c.is_pci_bridge());
        slots.extend(bridge_ctrls.into_iter().map(|c| &mut c.address));
        slots.extend(fs.into_iter().map(|(_, a)| a));
        slots.extend(self.interfaces.iter_mut().map(|i| &mut i.address));
        slots.extend(nets.into_iter().map(|(_, a)| a));
        slots.extend(
            self.sounds
                .iter_mut()
                .filter(|s| s.is_pci())
                .map(|s| &mut s.address),
        );
        slots.extend(other_ctrls.into_iter().map(|c| &mut c.address));
        slots.extend(
            self.disks
                .iter_mut()
                .filter(|d| d.bus == Some(DiskBus::Virtio))
                .map(|d| &mut d.address),
        );
        slots.extend(self.hostdevs.iter_mut().map(|h| &mut h.address));
        if let Some(m) = self.memballoon.as_mut().filter(|m| m.model == "virtio") {
            slots.push(&mut m.address);
        }
        slots.extend(self.rngs.iter_mut().map(|r| &mut r.address));
        slots.extend(
            self.watchdogs
                .iter_mut()
                .filter(|w| w.model == "i6300esb")
                .map(|w| &mut w.address),
        );
        slots.extend(videos.map(|v| &mut v.address));
        slots.extend(
            self.panics
                .iter_mut()
                .filter(|p| p.model.as_deref() == Some("pvpanic"))
                .map(|p| &mut p.address),
        );
        slots.extend(
            self.inputs
                .iter_mut()
                .filter(|i| i.bus == "virtio")
                .map(|i| &mut i.address),
        );
        slots.extend(rest.into_iter().map(|(_, a)| a));
        let mut first_video_slot = first_video.map(|v| &mut v.address);
        let all: Vec<&Option<Address>> = slots
            .iter()
            .map(|a| &**a)
            .chain(first_video_slot.iter().map(|a| &**a))
            .collect();
        for a in all {
            if let Some(p) = a.as_ref().and_then(Address::pci) {
                reserve(p, &bridges, &mut used, &mut used_behind)?;
            }
        }
        if let Some(a) = first_video_slot.as_mut() {
            if a.is_none() && used.insert((primary_video, 0)) {
                **a = Some(Address::Pci(PciAddr {
                    domain: 0,
                    bus: 0,
                    slot: primary_video,
                    function: 0,
                }));
            }
        }
        // The primary video's slot stays its own; without a video it is free, as in
        // libvirt with a current QEMU.
        if has_video {
            used.insert((primary_video, 0));
        }
        let mut next = 1u8;
        // Slots 1 to 31 of each pci-bridge, slot 0 of each root port, for when bus 0
        // is full.
        let mut behind = bridges
            .iter()
            .filter_map(|(b, m)| {
                let slots = match m.as_str() {
                    "pci-bridge" => 1..=0x1fu8,
                    "pcie-root-port" => 0..=0u8,
                    _ => return None,
                };
                Some((u8::try_from(*b).ok()?, slots))
            })
            .flat_map(|(b, slots)| slots.map(move |s| (b, s)));
        for i in 0..slots.len() {
            if slots[i].is_some() {
                continue;
            }
            while used.contains(&(next, 0)) || used.iter().any(|(s, _)| *s == next) {
                next += 1;
            }
            if next > 0x1e {
                let Some((bus, slot)) = behind.find(|(b, s)| !used_behind.contains(&(*b, *s, 0)))
                else {
                    return Ok(Some(slots[i..].iter().filter(|a| a.is_none()).count()));
                };
                used_behind.insert((bus, slot, 0));
                *slots[i] = Some(Address::Pci(PciAddr {
                    domain: 0,
                    bus,
                    slot,
                    function: 0,
                }));
                continue;
            }
            used.insert((next, 0));
            *slots[i] = Some(Address::Pci(PciAddr {
                domain: 0,
                bus: 0,
                slot: next,
                function: 0,
            }));
        }
        drop(slots);
        for (i, a) in untyped {
            let el = &mut self.other[i];
            el.children
                .retain(|c| !matches!(c, common::xml::Node::Element(e) if e.name == "address"));
            push_addr(el, &a);
        }
        Ok(None)
    }
}

/// An untyped device the command line puts on PCI.
fn untyped_on_pci(e: &common::xml::Element) -> bool {
    match e.name.as_str() {
        "filesystem" | "vsock" | "shmem" => true,
        // NICs of the kinds the model keeps as written; a USB NIC sits on USB.
        "interface" => e.first("model").and_then(|m| m.get_attr("type")) != Some("usb-net"),
        "rng" => true,
        "input" => e.get_attr("bus") == Some("virtio"),
        "memory" => matches!(e.get_attr("model"), Some("virtio-mem" | "virtio-pmem")),
        "iommu" => e.get_attr("model") == Some("virtio"),
        "hostdev" => matches!(e.get_attr("type"), Some("mdev" | "scsi_host")),
        _ => false,
    }
}

/// Marks an explicit address used, checked against the buses the bridges make.
fn reserve(
    p: PciAddr,
    bridges: &std::collections::BTreeMap<u32, String>,
    used: &mut BTreeSet<(u8, u8)>,
    used_behind: &mut BTreeSet<(u8, u8, u8)>,
) -> Result<()> {
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
        if matches!(
            model.as_str(),
            "pcie-root-port" | "pcie-switch-downstream-port"
        ) && p.slot != 0
        {
            return Err(invalid(
                "address",
                "slot",
                &shown,
                "a pcie-root-port or downstream port has one slot, 0",
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
        return Ok(());
    }
    if !used.insert((p.slot, p.function)) {
        return Err(invalid(
            "address",
            "slot",
            &format!("0x{:02x}.{}", p.slot, p.function),
            "used by two devices",
        ));
    }
    Ok(())
}
