//! Devices plugged into and out of a domain (AttachDevice, DetachDevice, UpdateDevice),
//! in the live definition through QMP and in the config, and what a restarted daemon
//! makes of a hotplug a `kill -9` cut (`reconcile.rs`).
//!
//! Live, a disk is `blockdev-add` (storage and format node) then `device_add`, a NIC
//! `netdev_add` (a tap passed with `getfd`) then `device_add`, built by the functions
//! start uses. What is about to be plugged is recorded in the status file first
//! ([`Pending`]); an unplug is `device_del`, finished when QEMU reports DEVICE_DELETED
//! (the monitor task, [`Driver::device_deleted`]), whenever the guest lets go.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use common::error::{ErrorCode, VirError};
use common::xml::Element;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::settings::affected;
use super::{not_running, Change, Dom, Driver, Impact};
use crate::events::DomainSignal;
use crate::model::DomainDef;
use crate::qmp::Qmp;
use crate::xml::{
    Address, Devices, Disk, DiskBus, DiskDevice, Interface, InterfaceKind, PciAddr, Rng,
};

/// How long DetachDevice waits for the guest to let a device go before it returns
/// (libvirt's 5 s); the removal still finishes later, with DeviceRemoved.
const UNPLUG_WAIT: Duration = Duration::from_secs(5);

/// `virDomainDeviceModifyFlags`: the impact bits and, for UpdateDevice, FORCE.
const FORCE: u32 = 4;

/// What is being plugged in, as the status file records it before QEMU is asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Pending {
    pub kind: PendingKind,
    /// The device element as the live definition will hold it.
    pub xml: String,
    /// QEMU's device id (the alias).
    pub qdev: String,
    /// The N of its `libvirt-N-*` block nodes (disk, medium) or `hostnetN` (NIC).
    pub n: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum PendingKind {
    Disk,
    Nic,
    Rng,
    /// A new medium for the cdrom or floppy `qdev`.
    Medium,
}

/// The device kinds of libvirt's `<devices>`; anything else is not a device.
const DEVICE_KINDS: &[&str] = &[
    "disk",
    "controller",
    "lease",
    "filesystem",
    "interface",
    "input",
    "sound",
    "hostdev",
    "graphics",
    "video",
    "audio",
    "watchdog",
    "redirdev",
    "redirfilter",
    "smartcard",
    "serial",
    "parallel",
    "console",
    "channel",
    "hub",
    "rng",
    "panic",
    "shmem",
    "tpm",
    "memory",
    "iommu",
    "vsock",
    "memballoon",
    "crypto",
    "pstore",
];

/// One device from a caller: its kind (element name) and itself, typed, alone in a
/// `Devices`.
pub(super) fn parse_device(xml: &str) -> Result<(String, Devices), VirError> {
    let el = common::xml::parse(xml)?;
    if !DEVICE_KINDS.contains(&el.name.as_str()) {
        return Err(VirError::xml(format!("unknown device type '{}'", el.name)));
    }
    let kind = el.name.clone();
    let devices = Devices::parse(&Element::new("devices").child(el))?;
    Ok((kind, devices))
}

/// The disk of a parsed fragment.
fn first_disk(d: &Devices) -> Result<&Disk, VirError> {
    d.disks
        .first()
        .ok_or_else(|| unsupported_kind("this operation", "disk"))
}

/// The NIC of a parsed fragment (a kind the model keeps untyped has none).
fn first_nic(d: &Devices) -> Result<&Interface, VirError> {
    d.interfaces
        .first()
        .ok_or_else(|| unsupported_kind("this operation", "interface"))
}

fn unsupported_kind(what: &str, kind: &str) -> VirError {
    VirError::new(
        ErrorCode::OperationUnsupported,
        format!("{what} of device '{kind}' is not supported"),
    )
}

/// Adds every device of `from` to `into` (a definition gets one device at a time).
fn merge(into: &mut Devices, from: Devices) -> Result<(), VirError> {
    if from.memballoon.is_some() && into.memballoon.is_some() {
        return Err(VirError::operation_invalid(
            "domain already has a memballoon device",
        ));
    }
    into.disks.extend(from.disks);
    into.controllers.extend(from.controllers);
    into.interfaces.extend(from.interfaces);
    into.serials.extend(from.serials);
    into.consoles.extend(from.consoles);
    into.parallels.extend(from.parallels);
    into.channels.extend(from.channels);
    into.inputs.extend(from.inputs);
    into.graphics.extend(from.graphics);
    into.videos.extend(from.videos);
    into.sounds.extend(from.sounds);
    into.audios.extend(from.audios);
    into.redirdevs.extend(from.redirdevs);
    into.rngs.extend(from.rngs);
    into.memballoon = into.memballoon.take().or(from.memballoon);
    into.watchdogs.extend(from.watchdogs);
    into.hubs.extend(from.hubs);
    into.panics.extend(from.panics);
    into.tpms.extend(from.tpms);
    into.hostdevs.extend(from.hostdevs);
    into.other.extend(from.other);
    Ok(())
}

fn target_exists(target: &str) -> VirError {
    VirError::operation_invalid(format!("target {target} already exists"))
}

/// The config with `new` added and libvirt's defaults filled in for it.
fn config_with(
    def: &DomainDef,
    new: Devices,
    caps: &crate::caps::Caps,
) -> Result<DomainDef, VirError> {
    let mut dom = def.dom.clone();
    if let Some(d) = new.disks.iter().find(|d| {
        dom.devices
            .disks
            .iter()
            .any(|x| x.target_dev == d.target_dev)
    }) {
        return Err(target_exists(&d.target_dev));
    }
    merge(&mut dom.devices, new)?;
    dom.fill_defaults(caps)?;
    Ok(DomainDef::from(dom))
}

/// The place of the disk `want` names (by target) in `devs`.
fn disk_place(devs: &Devices, want: &Disk) -> Option<usize> {
    devs.disks
        .iter()
        .position(|d| d.target_dev == want.target_dev)
}

/// The place of the NIC `want` names: by MAC, or the only NIC when it names none.
fn nic_place(devs: &Devices, want: &Interface) -> Result<usize, VirError> {
    match want.mac {
        Some(mac) => devs
            .interfaces
            .iter()
            .position(|n| n.mac == Some(mac))
            .ok_or_else(|| {
                VirError::new(
                    ErrorCode::DeviceMissing,
                    format!("no device matching MAC address {mac} found"),
                )
            }),
        None if devs.interfaces.len() == 1 => Ok(0),
        None if devs.interfaces.is_empty() => Err(VirError::new(
            ErrorCode::DeviceMissing,
            "no device matching MAC address found",
        )),
        None => Err(VirError::operation_failed(
            "multiple devices matching MAC address found",
        )),
    }
}

/// The place of the RNG `want` names: the one with the same backend (libvirt compares
/// the whole device; model, backend and rate are what this model has).
fn rng_place(devs: &Devices, want: &Devices) -> Result<usize, VirError> {
    let w = want
        .rngs
        .first()
        .ok_or_else(|| unsupported_kind("this operation", "rng"))?;
    devs.rngs
        .iter()
        .position(|r| r.builtin == w.builtin && r.backend == w.backend && r.rate == w.rate)
        .ok_or_else(|| VirError::new(ErrorCode::DeviceMissing, "matching rng device not found"))
}

/// The index libvirt reads from a disk target (`vda` 0, `vdb` 1, `sdaa` 26).
fn target_index(target: &str) -> Option<u32> {
    let suffix = ["xvd", "ubd", "vd", "sd", "hd", "fd"]
        .iter()
        .find_map(|p| target.strip_prefix(p))?;
    if suffix.is_empty() || !suffix.chars().all(|c| c.is_ascii_lowercase()) {
        return None;
    }
    let mut idx: u32 = 0;
    for c in suffix.chars() {
        idx = idx
            .checked_mul(26)?
            .checked_add(u32::from(c as u8 - b'a') + 1)?;
    }
    Some(idx - 1)
}

/// libvirt's alias of a hotplugged disk: `virtio-disk1`, `scsi0-0-0-1`, `usb-disk2`, ...
fn disk_alias(disk: &Disk, dev: &crate::command_line::DeviceProps) -> String {
    use crate::command_line::PropValue;
    let prop = |k: &str| {
        dev.props
            .iter()
            .find(|(key, _)| *key == k)
            .map(|(_, v)| match v {
                PropValue::Str(s) => s.clone(),
                PropValue::Uint(n) | PropValue::Hex(n) => n.to_string(),
                PropValue::Bool(b) => b.to_string(),
            })
    };
    let idx = target_index(&disk.target_dev).unwrap_or(0);
    match disk.bus {
        Some(DiskBus::Virtio) => format!("virtio-disk{idx}"),
        Some(DiskBus::Scsi) => {
            let ctrl = prop("bus")
                .and_then(|b| {
                    b.strip_prefix("scsi")?
                        .strip_suffix(".0")
                        .map(str::to_owned)
                })
                .unwrap_or_else(|| "0".into());
            format!(
                "scsi{ctrl}-0-{}-{}",
                prop("scsi-id").unwrap_or_default(),
                prop("lun").unwrap_or_default()
            )
        }
        Some(DiskBus::Usb) => format!("usb-disk{idx}"),
        Some(b) => format!("{}-disk{idx}", b.as_str()),
        None => format!("disk-{}", disk.target_dev),
    }
}

/// Where a hotplugged PCI device goes on q35: its own address if it names a bus behind
/// a port, else slot 0 of the first `pcie-root-port` nothing uses (the root complex
/// `pcie.0` takes no hotplug). libvirt's error when there is none.
fn q35_slot(devs: &Devices, current: &Option<Address>) -> Result<Option<Address>, VirError> {
    let Some(p) = current.as_ref().and_then(Address::pci) else {
        return Ok(current.clone());
    };
    if p.bus != 0 {
        return Ok(current.clone());
    }
    let used: BTreeSet<u8> = devs.pci_addresses().iter().map(|a| a.bus).collect();
    let port = devs
        .controllers
        .iter()
        .filter(|c| {
            c.kind == "pci"
                && c.model.as_deref() == Some("pcie-root-port")
                && c.target_hotplug != Some(false)
        })
        .filter_map(|c| u8::try_from(c.index).ok())
        .find(|b| !used.contains(b))
        .ok_or_else(|| VirError::internal("No more available PCI slots"))?;
    Ok(Some(Address::Pci(PciAddr {
        domain: 0,
        bus: port,
        slot: 0,
        function: 0,
        multi: None,
    })))
}

/// The `<address type='drive'>` of a SCSI disk from the properties it was plugged with
/// (`bus=scsiC.0`, `scsi-id`, `lun`): virtio-scsi numbers drives by LUN, the other HBAs
/// by target.
fn scsi_address(devs: &Devices, dev: &crate::command_line::DeviceProps) -> Option<Address> {
    use crate::command_line::PropValue;
    let num = |k: &str| {
        dev.props.iter().find_map(|(key, v)| match v {
            PropValue::Uint(n) if *key == k => u32::try_from(*n).ok(),
            _ => None,
        })
    };
    let controller: u32 = dev.props.iter().find_map(|(key, v)| match v {
        PropValue::Str(b) if *key == "bus" => {
            b.strip_prefix("scsi")?.strip_suffix(".0")?.parse().ok()
        }
        _ => None,
    })?;
    let by_target = devs.controllers.iter().any(|c| {
        c.kind == "scsi"
            && c.index == controller
            && c.model.as_deref().is_some_and(|m| !m.starts_with("virtio"))
    });
    let (id, lun) = (num("scsi-id")?, num("lun")?);
    Some(Address::Drive {
        controller,
        bus: 0,
        target: if by_target { 0 } else { id },
        unit: if by_target { id } else { lun },
    })
}

/// A fresh N for `libvirt-N-*` nodes: above every node the first `disks` disks of the
/// definition name.
pub(super) fn next_node(def: &DomainDef, disks: usize) -> usize {
    (0..disks).map(|i| def.disk_node(i) + 1).max().unwrap_or(0)
}

/// A fresh N for `netN`/`hostnetN` after the first `nics` NICs, as libvirt numbers a
/// hotplugged NIC's alias.
fn next_nic(def: &DomainDef, nics: usize) -> usize {
    (0..nics).map(|i| def.nic_n(i) + 1).max().unwrap_or(0)
}

/// The element of one device as a definition writes it, for the status file.
pub(super) fn device_xml(devices: Devices) -> String {
    devices
        .to_element(true)
        .elements()
        .next()
        .map(Element::to_xml)
        .unwrap_or_default()
}

pub(super) fn only_disk(d: &Disk) -> Devices {
    Devices {
        disks: vec![d.clone()],
        ..Devices::default()
    }
}

fn only_nic(n: &Interface) -> Devices {
    Devices {
        interfaces: vec![n.clone()],
        ..Devices::default()
    }
}

/// Deletes block nodes, format (or filter) nodes before the storage nodes under them.
/// A node still in use is tried again for a while: a device QEMU has just taken out of
/// its tree may hold its medium until it is finalized.
pub(super) async fn del_nodes(qmp: &Qmp, names: &[String]) {
    let (storage, top): (Vec<&String>, Vec<&String>) =
        names.iter().partition(|n| n.ends_with("-storage"));
    for n in top.into_iter().chain(storage) {
        for attempt in 0..40 {
            match qmp
                .execute("blockdev-del", Some(json!({ "node-name": n })))
                .await
            {
                Ok(_) => break,
                Err(crate::qmp::QmpError::Command { desc, .. }) if desc.contains("in use") => {
                    if attempt == 39 {
                        tracing::warn!(node = %n, "block node still in use: {desc}");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => {
                    tracing::debug!(node = %n, "blockdev-del: {e}");
                    break;
                }
            }
        }
    }
}

pub(super) fn nodes_of(n: usize) -> Vec<String> {
    vec![
        format!("libvirt-{n}-format"),
        format!("libvirt-{n}-storage"),
    ]
}

/// A launch context for the block nodes and devices of a hotplug.
pub(super) fn hotplug_ctx(
    volume_paths: Vec<(String, String, std::path::PathBuf)>,
) -> crate::command_line::LaunchContext {
    let mut ctx =
        crate::command_line::LaunchContext::new("/".into(), "/".into(), "/".into(), "/".into());
    ctx.volume_paths = volume_paths;
    ctx
}

/// The one device a fragment of `kind` holds, for a live attach.
fn only<T>(devices: Vec<T>, kind: &str) -> Result<T, VirError> {
    devices
        .into_iter()
        .next()
        .ok_or_else(|| unsupported_kind("live attach", kind))
}

impl Driver {
    /// `AttachDevice`.
    pub async fn attach_device(
        &self,
        dom: &Arc<Dom>,
        xml: &str,
        flags: u32,
    ) -> Result<(), VirError> {
        let _: Impact = common::error::flags(flags)?;
        let _call = self.calls.enter();
        let _lock = dom.begin_job().await;
        let (live, config) = affected(dom, flags)?;
        let (kind, new) = parse_device(xml)?;
        let caps = self.caps().await?;
        // The config is checked before QEMU is touched and written once the live part
        // worked (libvirt's order).
        let new_config = match config {
            true => Some(config_with(&Self::config_of(dom)?, new.clone(), &caps)?),
            false => None,
        };
        if live {
            match kind.as_str() {
                "disk" => {
                    self.attach_disk(dom, only(new.disks, &kind)?, &caps)
                        .await?
                }
                "interface" => {
                    self.attach_nic(dom, only(new.interfaces, &kind)?, &caps)
                        .await?
                }
                "rng" => self.attach_rng(dom, only(new.rngs, &kind)?, &caps).await?,
                _ => return Err(unsupported_kind("live attach", &kind)),
            }
        }
        if let Some(def) = new_config {
            self.put_config(dom, def).await?;
        }
        Ok(())
    }

    /// The running definition with `add` applied and libvirt's defaults filled in
    /// (address, bus, driver), or libvirt's error when the running machine has no place
    /// for the device (no free slot, a controller it lacks).
    fn live_with(
        dom: &Dom,
        add: impl FnOnce(&mut Devices) -> Result<(), VirError>,
        caps: &crate::caps::Caps,
    ) -> Result<(DomainDef, Qmp, u32), VirError> {
        let (mut def, qmp, pid) = {
            let g = dom.lock();
            let l = g.live.as_ref().ok_or_else(not_running)?;
            (l.def.clone(), l.qmp.clone(), l.pid)
        };
        def.pin_ids();
        let controllers = def.dom.devices.controllers.clone();
        add(&mut def.dom.devices)?;
        def.dom.fill_defaults(caps)?;
        if let Some(c) = def
            .dom
            .devices
            .controllers
            .iter()
            .find(|c| !controllers.contains(c))
        {
            if c.kind == "pci" {
                return Err(VirError::internal("No more available PCI slots"));
            }
            return Err(VirError::operation_failed(format!(
                "the device needs a {} controller the running domain does not have; attach one first",
                c.kind
            )));
        }
        Ok((def, qmp, pid))
    }

    async fn attach_disk(
        &self,
        dom: &Arc<Dom>,
        disk: Disk,
        caps: &crate::caps::Caps,
    ) -> Result<(), VirError> {
        let target = disk.target_dev.clone();
        let (def, qmp, pid) = Self::live_with(
            dom,
            |devs| {
                if devs.disks.iter().any(|d| d.target_dev == target) {
                    return Err(VirError::operation_failed(format!(
                        "target {target} already exists"
                    )));
                }
                devs.disks.push(disk);
                Ok(())
            },
            caps,
        )?;
        let mut def = def;
        let i = def.dom.devices.disks.len() - 1;
        if def.dom.is_q35() {
            let a = q35_slot(&def.dom.devices, &def.dom.devices.disks[i].address)?;
            def.dom.devices.disks[i].address = a;
        }
        let mut disk = def.dom.devices.disks[i].clone();
        let mut one = def.dom.clone();
        one.devices.disks = vec![disk.clone()];
        let volumes = crate::volumes::resolve(&mut one, self.ctx.settings.mode).await?;
        let n = next_node(&def, i);
        let ctx = hotplug_ctx(volumes.clone());
        let (nodes, mut dev) = crate::command_line::hotplug_disk(&def.dom, i, n, "", &ctx)?;
        let qdev = disk_alias(&disk, &dev);
        if (0..i).any(|j| def.disk_qdev(j) == qdev) {
            return Err(VirError::operation_failed(format!(
                "alias {qdev} is already in use"
            )));
        }
        for (k, v) in dev.props.iter_mut() {
            if *k == "id" {
                *v = crate::command_line::PropValue::Str(qdev.clone());
            }
        }
        disk.address = def.dom.devices.disks[i].address.clone();
        if disk.bus == Some(DiskBus::Scsi) && disk.address.is_none() {
            // Where it went, kept (as libvirt shows it): the units of later plugs are
            // counted from the disks before them, whatever left in between.
            disk.address = scsi_address(&def.dom.devices, &dev);
        }
        let owners = self.hand_to_qemu(pid, &disk_files(&disk, &volumes))?;
        self.set_plugging(
            dom,
            Some(Pending {
                kind: PendingKind::Disk,
                xml: device_xml(only_disk(&disk)),
                qdev: qdev.clone(),
                n: n as u32,
            }),
        )
        .await;
        let plugged = plug_disk(&qmp, &nodes, &dev).await;
        if let Err(e) = plugged {
            crate::security::restore(&owners);
            self.set_plugging(dom, None).await;
            return Err(e);
        }
        if let Some(l) = dom.lock().live.as_mut() {
            l.def.pin_ids();
            l.def.dom.devices.disks.push(disk);
            l.def.ids.disks.push((qdev.clone(), n as u32));
            l.owners.extend(owners);
            l.plugging = None;
        }
        self.save_status(dom).await;
        tracing::info!(domain = %dom.name(), device = %qdev, "disk attached");
        self.device_signal(dom, DomainSignal::DeviceAdded(qdev))
            .await;
        Ok(())
    }

    async fn attach_nic(
        &self,
        dom: &Arc<Dom>,
        nic: Interface,
        caps: &crate::caps::Caps,
    ) -> Result<(), VirError> {
        let (def, qmp, _) = Self::live_with(
            dom,
            |devs| {
                devs.interfaces.push(nic);
                Ok(())
            },
            caps,
        )?;
        let mut def = def;
        let i = def.dom.devices.interfaces.len() - 1;
        if def.dom.is_q35() {
            let a = q35_slot(&def.dom.devices, &def.dom.devices.interfaces[i].address)?;
            def.dom.devices.interfaces[i].address = a;
        }
        let n = next_nic(&def, i);
        // The tap and network port, made as start makes them, for this NIC alone.
        let mode = self.ctx.settings.mode;
        let mut one = def.dom.clone();
        one.devices.interfaces = vec![def.dom.devices.interfaces[i].clone()];
        if !matches!(
            one.devices.interfaces[0].kind,
            InterfaceKind::User | InterfaceKind::Bridge(_) | InterfaceKind::Network(_)
        ) {
            return Err(VirError::new(
                ErrorCode::OperationUnsupported,
                "live attach of this interface type is not supported (user, bridge and network are)",
            ));
        }
        let prepared = crate::nics::prepare(&mut one, mode).await?;
        def.dom.devices.interfaces[i] = one.devices.interfaces[0].clone();
        let nic = def.dom.devices.interfaces[i].clone();
        let qdev = format!("net{n}");
        let fdname = format!("fd-{qdev}");
        let tap = prepared.taps.first().and_then(Option::as_ref);
        let built = crate::command_line::hotplug_nic(&def.dom, i, n, tap.map(|_| fdname.as_str()));
        let (netdev, dev) = match built {
            Ok(b) => b,
            Err(e) => {
                crate::nics::release(&one, mode).await;
                return Err(e.into());
            }
        };
        self.set_plugging(
            dom,
            Some(Pending {
                kind: PendingKind::Nic,
                xml: device_xml(only_nic(&nic)),
                qdev: qdev.clone(),
                n: n as u32,
            }),
        )
        .await;
        let plugged = plug_nic(&qmp, tap, &fdname, netdev, &dev, n).await;
        drop(prepared);
        if let Err(e) = plugged {
            crate::nics::release(&one, mode).await;
            self.set_plugging(dom, None).await;
            return Err(e);
        }
        if let Some(l) = dom.lock().live.as_mut() {
            l.def.pin_ids();
            l.def.dom.devices.interfaces.push(nic);
            l.def.ids.nics.push(n as u32);
            l.plugging = None;
        }
        self.save_status(dom).await;
        tracing::info!(domain = %dom.name(), device = %qdev, "interface attached");
        self.device_signal(dom, DomainSignal::DeviceAdded(qdev))
            .await;
        Ok(())
    }

    async fn attach_rng(
        &self,
        dom: &Arc<Dom>,
        rng: Rng,
        caps: &crate::caps::Caps,
    ) -> Result<(), VirError> {
        let (mut def, qmp, _) = Self::live_with(
            dom,
            |devs| {
                devs.rngs.push(rng);
                Ok(())
            },
            caps,
        )?;
        let i = def.dom.devices.rngs.len() - 1;
        if def.dom.is_q35() {
            let a = q35_slot(&def.dom.devices, &def.dom.devices.rngs[i].address)?;
            def.dom.devices.rngs[i].address = a;
        }
        let n = (0..i).map(|j| def.rng_n(j) + 1).max().unwrap_or(0);
        let rng = def.dom.devices.rngs[i].clone();
        let (object, dev) = crate::command_line::hotplug_rng(&def.dom, i, n)?;
        let qdev = format!("rng{n}");
        self.set_plugging(
            dom,
            Some(Pending {
                kind: PendingKind::Rng,
                xml: device_xml(Devices {
                    rngs: vec![rng.clone()],
                    ..Devices::default()
                }),
                qdev: qdev.clone(),
                n: n as u32,
            }),
        )
        .await;
        let plugged = async {
            qmp.execute("object-add", Some(object)).await?;
            if let Err(e) = qmp.execute("device_add", Some(dev.to_qmp_json())).await {
                let _ = qmp
                    .execute("object-del", Some(json!({ "id": format!("objrng{n}") })))
                    .await;
                return Err(e);
            }
            Ok(())
        }
        .await;
        if let Err(e) = plugged {
            self.set_plugging(dom, None).await;
            return Err(e.into());
        }
        if let Some(l) = dom.lock().live.as_mut() {
            l.def.pin_ids();
            l.def.dom.devices.rngs.push(rng);
            l.def.ids.rngs.push(n as u32);
            l.plugging = None;
        }
        self.save_status(dom).await;
        tracing::info!(domain = %dom.name(), device = %qdev, "rng attached");
        self.device_signal(dom, DomainSignal::DeviceAdded(qdev))
            .await;
        Ok(())
    }

    /// Records (or clears) the device being plugged in, in the status file.
    async fn set_plugging(&self, dom: &Dom, p: Option<Pending>) {
        if let Some(l) = dom.lock().live.as_mut() {
            l.plugging = p;
        }
        self.save_status(dom).await;
    }

    pub(super) async fn device_signal(&self, dom: &Arc<Dom>, s: DomainSignal) {
        self.outbox.send(Change::Signal(dom.clone(), s)).await;
    }

    /// Hands `paths` to the user QEMU `pid` runs as (qemu.conf `dynamic_ownership`),
    /// returning their owners before.
    pub(super) fn hand_to_qemu(
        &self,
        pid: u32,
        paths: &[std::path::PathBuf],
    ) -> Result<Vec<crate::security::Owner>, VirError> {
        if !self.dynamic_ownership || !self.run_as.switches() || paths.is_empty() {
            return Ok(Vec::new());
        }
        let Some((uid, gid)) = proc_ids(pid) else {
            return Ok(Vec::new());
        };
        let id = crate::security::Identity {
            uid,
            gid,
            groups: Vec::new(),
            user: format!("+{uid}"),
            dynamic: false,
        };
        crate::security::take(paths, &id)
    }

    /// `DetachDevice`.
    pub async fn detach_device(
        &self,
        dom: &Arc<Dom>,
        xml: &str,
        flags: u32,
    ) -> Result<(), VirError> {
        let _: Impact = common::error::flags(flags)?;
        let _call = self.calls.enter();
        let _lock = dom.begin_job().await;
        let (live, config) = affected(dom, flags)?;
        let (kind, want) = parse_device(xml)?;
        let new_config = match config {
            true => {
                let mut def = Self::config_of(dom)?;
                let devs = &mut def.dom.devices;
                match kind.as_str() {
                    "disk" => {
                        let d = first_disk(&want)?;
                        let i = disk_place(devs, d).ok_or_else(|| {
                            VirError::new(
                                ErrorCode::DeviceMissing,
                                format!("no target device {}", d.target_dev),
                            )
                        })?;
                        devs.disks.remove(i);
                    }
                    "interface" => {
                        let i = nic_place(devs, first_nic(&want)?)?;
                        devs.interfaces.remove(i);
                    }
                    "rng" => {
                        let i = rng_place(devs, &want)?;
                        devs.rngs.remove(i);
                    }
                    _ => return Err(unsupported_kind("persistent detach", &kind)),
                }
                Some(DomainDef::from(def.dom))
            }
            false => None,
        };
        if live {
            self.detach_live(dom, &kind, &want).await?;
        }
        if let Some(def) = new_config {
            self.put_config(dom, def).await?;
        }
        Ok(())
    }

    async fn detach_live(
        &self,
        dom: &Arc<Dom>,
        kind: &str,
        want: &Devices,
    ) -> Result<(), VirError> {
        let (qdev, qmp) = {
            let g = dom.lock();
            let l = g.live.as_ref().ok_or_else(not_running)?;
            let devs = &l.def.dom.devices;
            let qdev = match kind {
                "disk" => {
                    let d = first_disk(want)?;
                    let i = disk_place(devs, d).ok_or_else(|| {
                        VirError::new(
                            ErrorCode::DeviceMissing,
                            format!("disk {} not found", d.target_dev),
                        )
                    })?;
                    let bus = devs.disks[i].bus;
                    if !matches!(bus, Some(DiskBus::Virtio | DiskBus::Scsi | DiskBus::Usb)) {
                        return Err(VirError::new(
                            ErrorCode::OperationUnsupported,
                            format!(
                                "disk bus '{}' cannot be hotunplugged.",
                                bus.map(DiskBus::as_str).unwrap_or("")
                            ),
                        ));
                    }
                    l.def.disk_qdev(i)
                }
                "rng" => format!("rng{}", l.def.rng_n(rng_place(devs, want)?)),
                "interface" => format!("net{}", l.def.nic_n(nic_place(devs, first_nic(want)?)?)),
                _ => return Err(unsupported_kind("live detach", kind)),
            };
            (qdev, l.qmp.clone())
        };
        qmp.execute("device_del", Some(json!({ "id": qdev })))
            .await?;
        // The monitor task finishes the removal on DEVICE_DELETED; wait a while for it.
        let start = std::time::Instant::now();
        while start.elapsed() < UNPLUG_WAIT {
            let present = dom
                .lock()
                .live
                .as_ref()
                .is_some_and(|l| has_qdev(&l.def, &qdev));
            if !present {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tracing::info!(domain = %dom.name(), device = %qdev, "unplug still in progress");
        Ok(())
    }

    /// QEMU's DEVICE_DELETED for device `qdev`: it is gone from the guest; its block
    /// nodes or backend go too, and it leaves the live definition.
    pub(super) async fn device_deleted(&self, dom: &Arc<Dom>, qdev: &str) {
        let (qmp, gone) = {
            let mut g = dom.lock();
            let Some(l) = g.live.as_mut() else { return };
            (l.qmp.clone(), take_device(l, qdev))
        };
        let Some(gone) = gone else { return };
        self.release_device(dom, &qmp, gone).await;
        self.save_status(dom).await;
        tracing::info!(domain = %dom.name(), device = %qdev, "device removed");
        self.device_signal(dom, DomainSignal::DeviceRemoved(qdev.to_owned()))
            .await;
    }

    /// Gives back what an unplugged device held: block nodes, files, backend, port.
    pub(super) async fn release_device(&self, dom: &Dom, qmp: &Qmp, gone: Gone) {
        match gone {
            Gone::Rng { n } => {
                if let Err(e) = qmp
                    .execute("object-del", Some(json!({ "id": format!("objrng{n}") })))
                    .await
                {
                    tracing::debug!("object-del: {e}");
                }
            }
            Gone::Disk { n, owners, .. } => {
                del_nodes(qmp, &nodes_of(n)).await;
                crate::security::restore(&owners);
            }
            Gone::Nic { n, nic } => {
                if let Err(e) = qmp
                    .execute("netdev_del", Some(json!({ "id": format!("hostnet{n}") })))
                    .await
                {
                    tracing::debug!("netdev_del: {e}");
                }
                let one = {
                    let g = dom.lock();
                    g.live.as_ref().map(|l| {
                        let mut d = l.def.dom.clone();
                        d.devices.interfaces = vec![*nic];
                        d
                    })
                };
                if let Some(one) = one {
                    crate::nics::release(&one, self.ctx.settings.mode).await;
                }
            }
        }
    }

    /// `UpdateDevice`: a cdrom's or floppy's medium, inserted, changed or ejected.
    pub async fn update_device(
        &self,
        dom: &Arc<Dom>,
        xml: &str,
        flags: u32,
    ) -> Result<(), VirError> {
        common::error::check_flags(flags, Impact::all().bits() | FORCE)?;
        let _call = self.calls.enter();
        let _lock = dom.begin_job().await;
        let (live, config) = affected(dom, flags & Impact::all().bits())?;
        let (kind, want) = parse_device(xml)?;
        if kind != "disk" {
            let what = if live {
                "live update"
            } else {
                "persistent update"
            };
            return Err(unsupported_kind(what, &kind));
        }
        let want = first_disk(&want)?;
        if !matches!(want.device, DiskDevice::Cdrom | DiskDevice::Floppy) {
            return Err(VirError::new(
                ErrorCode::OperationUnsupported,
                format!(
                    "disk '{}': only the medium of a cdrom or floppy can be updated",
                    want.target_dev
                ),
            ));
        }
        let new_config = match config {
            true => {
                let mut def = Self::config_of(dom)?;
                let i = disk_place(&def.dom.devices, want).ok_or_else(|| {
                    VirError::new(
                        ErrorCode::DeviceMissing,
                        format!("target {} doesn't exist.", want.target_dev),
                    )
                })?;
                with_medium(&mut def.dom.devices.disks[i], want)?;
                Some(DomainDef::from(def.dom))
            }
            false => None,
        };
        if live {
            self.change_medium(dom, want).await?;
        }
        if let Some(def) = new_config {
            self.put_config(dom, def).await?;
        }
        Ok(())
    }

    async fn change_medium(&self, dom: &Arc<Dom>, want: &Disk) -> Result<(), VirError> {
        let (i, old, mut new, qmp, pid, old_n, qdev, n) = {
            let g = dom.lock();
            let l = g.live.as_ref().ok_or_else(not_running)?;
            let i = disk_place(&l.def.dom.devices, want).ok_or_else(|| {
                VirError::new(
                    ErrorCode::DeviceMissing,
                    format!("target {} doesn't exist.", want.target_dev),
                )
            })?;
            let old = l.def.dom.devices.disks[i].clone();
            let new = old.clone();
            (
                i,
                old,
                new,
                l.qmp.clone(),
                l.pid,
                l.def.disk_node(i),
                l.def.disk_qdev(i),
                next_node(&l.def, l.def.dom.devices.disks.len()),
            )
        };
        with_medium(&mut new, want)?;
        let mut one = crate::xml::Domain::clone(&dom_of(dom)?);
        one.devices.disks = vec![new.clone()];
        let volumes = crate::volumes::resolve(&mut one, self.ctx.settings.mode).await?;
        let nodes = crate::command_line::medium_nodes(&new, n, &hotplug_ctx(volumes.clone()))?;
        let owners = self.hand_to_qemu(pid, &disk_files(&new, &volumes))?;
        self.set_plugging(
            dom,
            Some(Pending {
                kind: PendingKind::Medium,
                xml: device_xml(only_disk(&new)),
                qdev: qdev.clone(),
                n: n as u32,
            }),
        )
        .await;
        if let Err(e) = swap_medium(&qmp, &qdev, &nodes, n).await {
            del_nodes(&qmp, &nodes_of(n)).await;
            crate::security::restore(&owners);
            self.set_plugging(dom, None).await;
            return Err(e);
        }
        if old.source.is_some() {
            del_nodes(&qmp, &nodes_of(old_n)).await;
        }
        let old_owners = {
            let mut g = dom.lock();
            let mut back = Vec::new();
            if let Some(l) = g.live.as_mut() {
                l.def.pin_ids();
                if let Some(d) = l.def.dom.devices.disks.get_mut(i) {
                    *d = new;
                }
                if let Some(id) = l.def.ids.disks.get_mut(i) {
                    id.1 = n as u32;
                }
                back = take_owners(&mut l.owners, &old);
                l.owners.extend(owners);
                l.plugging = None;
            }
            back
        };
        crate::security::restore(&old_owners);
        self.save_status(dom).await;
        tracing::info!(domain = %dom.name(), device = %qdev, "medium changed");
        Ok(())
    }
}

/// The host files of `disk`'s medium, to hand to QEMU's user: its image or device, or
/// the path virtstoraged resolved its volume to.
fn disk_files(
    disk: &Disk,
    volumes: &[(String, String, std::path::PathBuf)],
) -> Vec<std::path::PathBuf> {
    use crate::xml::DiskSource;
    match &disk.source {
        Some(DiskSource::File(p) | DiskSource::Block(p)) => vec![p.clone()],
        Some(DiskSource::Volume { .. }) => volumes.iter().map(|v| v.2.clone()).collect(),
        _ => Vec::new(),
    }
}

/// The running domain's document.
pub(super) fn dom_of(dom: &Dom) -> Result<crate::xml::Domain, VirError> {
    let g = dom.lock();
    Ok(g.live.as_ref().ok_or_else(not_running)?.def.dom.clone())
}

/// `disk` with the medium `want` gives it (none: ejected).
fn with_medium(disk: &mut Disk, want: &Disk) -> Result<(), VirError> {
    if disk.device != want.device {
        return Err(VirError::operation_invalid(format!(
            "cannot change the device type of disk '{}'",
            disk.target_dev
        )));
    }
    disk.source = want.source.clone();
    disk.source_type = want.source_type.clone();
    if let Some(f) = &want.driver.format {
        disk.driver.format = Some(f.clone());
    } else if disk.source_type != "volume" {
        disk.driver.format = Some("raw".into());
    }
    Ok(())
}

/// Opens the tray, takes the medium out, puts the new one (nodes `libvirt-N-*`, if
/// any) in and closes the tray.
async fn swap_medium(qmp: &Qmp, qdev: &str, nodes: &[Value], n: usize) -> Result<(), VirError> {
    for node in nodes {
        qmp.execute("blockdev-add", Some(node.clone())).await?;
    }
    qmp.execute(
        "blockdev-open-tray",
        Some(json!({ "id": qdev, "force": true })),
    )
    .await?;
    qmp.execute("blockdev-remove-medium", Some(json!({ "id": qdev })))
        .await?;
    if !nodes.is_empty() {
        qmp.execute(
            "blockdev-insert-medium",
            Some(json!({ "id": qdev, "node-name": format!("libvirt-{n}-format") })),
        )
        .await?;
    }
    qmp.execute("blockdev-close-tray", Some(json!({ "id": qdev })))
        .await?;
    Ok(())
}

/// `blockdev-add` of each node, then `device_add`; what was added is taken back on
/// failure.
async fn plug_disk(
    qmp: &Qmp,
    nodes: &[Value],
    dev: &crate::command_line::DeviceProps,
) -> Result<(), VirError> {
    let mut added = Vec::new();
    for node in nodes {
        if let Err(e) = qmp.execute("blockdev-add", Some(node.clone())).await {
            del_nodes(qmp, &added).await;
            return Err(e.into());
        }
        if let Some(name) = node.get("node-name").and_then(Value::as_str) {
            added.push(name.to_owned());
        }
    }
    if let Err(e) = qmp.execute("device_add", Some(dev.to_qmp_json())).await {
        del_nodes(qmp, &added).await;
        return Err(e.into());
    }
    Ok(())
}

/// `getfd` of the tap (if any), `netdev_add`, then `device_add`; undone on failure.
async fn plug_nic(
    qmp: &Qmp,
    tap: Option<&std::os::fd::OwnedFd>,
    fdname: &str,
    netdev: Value,
    dev: &crate::command_line::DeviceProps,
    n: usize,
) -> Result<(), VirError> {
    use std::os::fd::AsFd;
    if let Some(fd) = tap {
        qmp.execute_with_fd("getfd", Some(json!({ "fdname": fdname })), fd.as_fd())
            .await?;
    }
    if let Err(e) = qmp.execute("netdev_add", Some(netdev)).await {
        if tap.is_some() {
            let _ = qmp
                .execute("closefd", Some(json!({ "fdname": fdname })))
                .await;
        }
        return Err(e.into());
    }
    if let Err(e) = qmp.execute("device_add", Some(dev.to_qmp_json())).await {
        let _ = qmp
            .execute("netdev_del", Some(json!({ "id": format!("hostnet{n}") })))
            .await;
        return Err(e.into());
    }
    Ok(())
}

/// What an unplugged device leaves to give back.
pub(super) enum Gone {
    Disk {
        n: usize,
        owners: Vec<crate::security::Owner>,
    },
    Nic {
        n: usize,
        nic: Box<Interface>,
    },
    Rng {
        n: usize,
    },
}

pub(super) fn has_qdev(def: &DomainDef, qdev: &str) -> bool {
    def.disk_of_qdev(qdev).is_some()
        || (0..def.dom.devices.rngs.len()).any(|i| format!("rng{}", def.rng_n(i)) == qdev)
        || (0..def.dom.devices.interfaces.len()).any(|i| format!("net{}", def.nic_n(i)) == qdev)
}

/// Takes device `qdev` out of the live definition.
pub(super) fn take_device(l: &mut super::domain::Live, qdev: &str) -> Option<Gone> {
    if let Some(i) = l.def.disk_of_qdev(qdev) {
        l.def.pin_ids();
        let n = l.def.disk_node(i);
        let disk = l.def.dom.devices.disks.remove(i);
        l.def.ids.disks.remove(i);
        let owners = take_owners(&mut l.owners, &disk);
        return Some(Gone::Disk { n, owners });
    }
    if let Some(i) =
        (0..l.def.dom.devices.rngs.len()).find(|i| format!("rng{}", l.def.rng_n(*i)) == qdev)
    {
        l.def.pin_ids();
        let n = l.def.rng_n(i);
        l.def.dom.devices.rngs.remove(i);
        l.def.ids.rngs.remove(i);
        return Some(Gone::Rng { n });
    }
    let i = (0..l.def.dom.devices.interfaces.len())
        .find(|i| format!("net{}", l.def.nic_n(*i)) == qdev)?;
    l.def.pin_ids();
    let n = l.def.nic_n(i);
    let nic = l.def.dom.devices.interfaces.remove(i);
    l.def.ids.nics.remove(i);
    Some(Gone::Nic {
        n,
        nic: Box::new(nic),
    })
}

/// The owners recorded for `disk`'s image, taken out of the run's list.
pub(super) fn take_owners(
    owners: &mut Vec<crate::security::Owner>,
    disk: &Disk,
) -> Vec<crate::security::Owner> {
    let Some(crate::xml::DiskSource::File(p) | crate::xml::DiskSource::Block(p)) = &disk.source
    else {
        return Vec::new();
    };
    let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(owners)
        .into_iter()
        .partition(|o| &o.path == p);
    *owners = rest;
    mine
}

/// The uid and gid a process runs as.
fn proc_ids(pid: u32) -> Option<(u32, u32)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |key: &str| -> Option<u32> {
        status
            .lines()
            .find(|l| l.starts_with(key))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    Some((field("Uid:")?, field("Gid:")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_number_as_libvirt_does() {
        assert_eq!(target_index("vda"), Some(0));
        assert_eq!(target_index("vdb"), Some(1));
        assert_eq!(target_index("sdz"), Some(25));
        assert_eq!(target_index("sdaa"), Some(26));
        assert_eq!(target_index("vd"), None);
        assert_eq!(target_index("vd1"), None);
    }

    #[test]
    fn fragments_are_one_known_device() {
        let (kind, d) = parse_device(
            "<disk type='file'><source file='/i.img'/><target dev='vdb' bus='virtio'/></disk>",
        )
        .expect("disk");
        assert_eq!(kind, "disk");
        assert_eq!(d.disks.len(), 1);
        for bad in [
            "<domain/>",
            "<foo/>",
            "not xml",
            "<disk><target/></disk>",
            "",
        ] {
            assert!(parse_device(bad).is_err(), "accepted {bad}");
        }
    }

    #[test]
    fn ids_follow_devices_once_pinned() {
        let caps = crate::caps::tests::fake();
        let mut def = DomainDef::parse_new(
            "<domain type='qemu'><name>h</name><memory>65536</memory><os><type>hvm</type></os><devices>\
             <disk type='file'><source file='/a'/><target dev='vda'/></disk>\
             <disk type='file'><source file='/b'/><target dev='vdb'/></disk></devices></domain>",
            &caps,
        )
        .expect("def");
        assert_eq!(def.disk_qdev(1), "disk1");
        assert_eq!(next_node(&def, 2), 2);
        def.pin_ids();
        def.dom.devices.disks.remove(0);
        def.ids.disks.remove(0);
        assert_eq!(def.disk_qdev(0), "disk1");
        assert_eq!(def.disk_node(0), 1);
        assert_eq!(def.disk_of_node(1), Some(0));
        assert_eq!(next_node(&def, 1), 2);
    }
}
