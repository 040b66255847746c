//! What a restarted daemon makes of the devices of a QEMU it adopts: the live
//! definition is made to say what QEMU itself has (`qom-list /machine/peripheral`,
//! `query-block`, `query-named-block-nodes`, `query-hotpluggable-cpus`), so that a
//! hotplug or vCPU plug a `kill -9` cut is finished or undone (see `super::hotplug`).

use std::collections::BTreeSet;
use std::sync::Arc;

use serde_json::{json, Value};

use super::hotplug::{
    del_nodes, dom_of, has_qdev, nodes_of, parse_device, take_device, Gone, Pending, PendingKind,
};
use super::{Dom, Driver};
use crate::events::DomainSignal;
use crate::model::DomainDef;
use crate::qmp::Qmp;
use crate::xml::{DiskDevice, Interface};

/// The ids of QEMU's devices (`/machine/peripheral`).
async fn peripheral_ids(qmp: &Qmp) -> Option<BTreeSet<String>> {
    let list = qmp
        .execute("qom-list", Some(json!({ "path": "/machine/peripheral" })))
        .await
        .ok()?;
    Some(
        list.as_array()?
            .iter()
            .filter(|p| {
                p.get("type")
                    .and_then(Value::as_str)
                    .is_some_and(|t| t.starts_with("child<"))
            })
            .filter_map(|p| p.get("name").and_then(Value::as_str).map(str::to_owned))
            .collect(),
    )
}

/// The medium node (`inserted.node-name`) of each device id in `query-block`.
async fn inserted_nodes(qmp: &Qmp) -> Option<std::collections::BTreeMap<String, Option<String>>> {
    let blocks = qmp.execute("query-block", None).await.ok()?;
    Some(
        blocks
            .as_array()?
            .iter()
            .filter_map(|b| {
                let qdev = b.get("qdev").and_then(Value::as_str)?;
                let id = qdev
                    .strip_prefix("/machine/peripheral/")
                    .unwrap_or(qdev)
                    .split('/')
                    .next()?
                    .to_owned();
                let node = b
                    .pointer("/inserted/node-name")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                Some((id, node))
            })
            .collect(),
    )
}

/// The `libvirt-N-*` nodes QEMU has.
async fn our_nodes(qmp: &Qmp) -> Vec<String> {
    let Ok(nodes) = qmp
        .execute("query-named-block-nodes", Some(json!({ "flat": true })))
        .await
    else {
        return Vec::new();
    };
    let mut out: Vec<String> = nodes
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n.get("node-name").and_then(Value::as_str))
        .filter(|n| n.starts_with("libvirt-"))
        .map(str::to_owned)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// What reconciling found to undo or announce, done once the state lock is let go.
#[derive(Default)]
struct Fixes {
    gone: Vec<(String, Gone)>,
    netdevs: Vec<String>,
    /// Backends (`objrngN`) of a plug undone.
    objects: Vec<String>,
    nics_to_release: Vec<Interface>,
    changed: bool,
}

impl Driver {
    /// After a restart: makes the live definition say what QEMU has. A plug the kill cut
    /// is finished (QEMU has the device) or undone (its block nodes, backend and port
    /// go); a device the guest let go of while the daemon was away leaves the
    /// definition; block nodes no device uses are deleted; the vCPU count is QEMU's.
    /// True when the definition changed.
    pub(super) async fn reconcile_devices(&self, dom: &Arc<Dom>) -> bool {
        let Some(qmp) = dom.lock().live.as_ref().map(|l| l.qmp.clone()) else {
            return false;
        };
        let (Some(ids), Some(inserted)) = (peripheral_ids(&qmp).await, inserted_nodes(&qmp).await)
        else {
            tracing::warn!(domain = %dom.name(), "cannot list QEMU's devices: not reconciled");
            return false;
        };
        let mut fixes = {
            let mut g = dom.lock();
            let Some(l) = g.live.as_mut() else {
                return false;
            };
            reconcile_live(l, &ids, &inserted)
        };
        for (qdev, gone) in std::mem::take(&mut fixes.gone) {
            tracing::warn!(domain = %dom.name(), device = %qdev, "device gone from QEMU while the daemon was away");
            self.release_device(dom, &qmp, gone).await;
            self.device_signal(dom, DomainSignal::DeviceRemoved(qdev))
                .await;
        }
        for id in &fixes.netdevs {
            let _ = qmp.execute("netdev_del", Some(json!({ "id": id }))).await;
        }
        for id in &fixes.objects {
            let _ = qmp.execute("object-del", Some(json!({ "id": id }))).await;
        }
        if !fixes.nics_to_release.is_empty() {
            if let Ok(mut one) = dom_of(dom) {
                one.devices.interfaces = std::mem::take(&mut fixes.nics_to_release);
                crate::nics::release(&one, self.ctx.settings.mode).await;
            }
        }
        // A block copy whose job ended while the daemon was away: pivoted or not.
        let copied = self.settle_copy(dom).await;
        // Block nodes no disk of the definition uses: a plug undone, an unplug finished.
        // A copy still running keeps its own.
        let used: BTreeSet<String> = {
            let g = dom.lock();
            g.live
                .as_ref()
                .map(|l| {
                    (0..l.def.dom.devices.disks.len())
                        .map(|i| l.def.disk_node(i))
                        .chain(l.copying.as_ref().map(|p| p.n as usize))
                        .flat_map(nodes_of)
                        .collect()
                })
                .unwrap_or_default()
        };
        let stray: Vec<String> = our_nodes(&qmp)
            .await
            .into_iter()
            .filter(|n| !used.contains(n) && (n.ends_with("-format") || n.ends_with("-storage")))
            .collect();
        if !stray.is_empty() {
            tracing::warn!(domain = %dom.name(), nodes = ?stray, "deleting block nodes no disk uses");
            del_nodes(&qmp, &stray).await;
        }
        fixes.changed | copied | self.reconcile_vcpus(dom, &qmp).await
    }

    /// The live vCPU count from `query-hotpluggable-cpus`: a SetVcpus cut between
    /// `device_add` and the status write left the record behind QEMU.
    async fn reconcile_vcpus(&self, dom: &Dom, qmp: &Qmp) -> bool {
        let Ok(online) = crate::vcpus::slots_online(qmp).await else {
            return false;
        };
        let mut g = dom.lock();
        let Some(l) = g.live.as_mut() else {
            return false;
        };
        if l.def.vcpus == online || online == 0 || online > l.def.dom.vcpus {
            return false;
        }
        tracing::warn!(domain = %l.def.name, recorded = l.def.vcpus, online, "vCPU count taken from QEMU");
        let mut d = l.def.dom.clone();
        d.current_vcpus = (online != d.vcpus).then_some(online);
        let ids = std::mem::take(&mut l.def.ids);
        l.def = DomainDef::from(d);
        l.def.ids = ids;
        true
    }
}

/// The state-lock half of [`Driver::reconcile_devices`].
fn reconcile_live(
    l: &mut super::domain::Live,
    ids: &BTreeSet<String>,
    inserted: &std::collections::BTreeMap<String, Option<String>>,
) -> Fixes {
    let mut fixes = Fixes::default();
    if let Some(p) = l.plugging.take() {
        fixes.changed = true;
        finish_or_undo(l, p, ids, inserted, &mut fixes);
    }
    // Devices the definition lists that QEMU does not have.
    let listed: Vec<String> = (0..l.def.dom.devices.disks.len())
        .map(|i| l.def.disk_qdev(i))
        .chain((0..l.def.dom.devices.interfaces.len()).map(|i| format!("net{}", l.def.nic_n(i))))
        .chain((0..l.def.dom.devices.rngs.len()).map(|i| format!("rng{}", l.def.rng_n(i))))
        .collect();
    for qdev in listed.into_iter().filter(|q| !ids.contains(q)) {
        if let Some(gone) = take_device(l, &qdev) {
            fixes.changed = true;
            fixes.gone.push((qdev, gone));
        }
    }
    // A cdrom or floppy whose medium QEMU no longer has (an eject the kill cut).
    for i in 0..l.def.dom.devices.disks.len() {
        let qdev = l.def.disk_qdev(i);
        let n = l.def.disk_node(i);
        let d = &mut l.def.dom.devices.disks[i];
        let removable = matches!(d.device, DiskDevice::Cdrom | DiskDevice::Floppy);
        if removable && d.source.is_some() {
            if let Some(None) = inserted.get(&qdev) {
                tracing::warn!(device = %qdev, "medium gone from QEMU");
                d.source = None;
                fixes.changed = true;
            } else if let Some(Some(node)) = inserted.get(&qdev) {
                if *node != format!("libvirt-{n}-format") {
                    tracing::warn!(device = %qdev, %node, "unknown medium in QEMU");
                }
            }
        }
    }
    fixes
}

/// A plug the kill cut: kept when QEMU has the device (or the new medium), else its
/// leftovers are marked for removal.
fn finish_or_undo(
    l: &mut super::domain::Live,
    p: Pending,
    ids: &BTreeSet<String>,
    inserted: &std::collections::BTreeMap<String, Option<String>>,
    fixes: &mut Fixes,
) {
    let parsed = parse_device(&p.xml).ok().map(|(_, d)| d);
    let Some(devs) = parsed else {
        tracing::warn!(device = %p.qdev, "unreadable record of a hotplug: dropped");
        return;
    };
    l.def.pin_ids();
    match p.kind {
        PendingKind::Disk => {
            let listed = l.def.disk_of_qdev(&p.qdev).is_some();
            if let (true, false, Some(d)) =
                (ids.contains(&p.qdev), listed, devs.disks.into_iter().next())
            {
                tracing::warn!(device = %p.qdev, "finishing a disk attach the daemon's exit cut");
                l.def.dom.devices.disks.push(d);
                l.def.ids.disks.push((p.qdev, p.n));
            }
            // Otherwise its nodes, if any, are strays: deleted by the caller.
        }
        PendingKind::Nic => {
            let listed = has_qdev(&l.def, &p.qdev);
            match (
                ids.contains(&p.qdev),
                listed,
                devs.interfaces.into_iter().next(),
            ) {
                (true, false, Some(n)) => {
                    tracing::warn!(device = %p.qdev, "finishing an interface attach the daemon's exit cut");
                    l.def.dom.devices.interfaces.push(n);
                    l.def.ids.nics.push(p.n);
                }
                (false, false, Some(n)) => {
                    tracing::warn!(device = %p.qdev, "undoing an interface attach the daemon's exit cut");
                    fixes.netdevs.push(format!("hostnet{}", p.n));
                    fixes.nics_to_release.push(n);
                }
                _ => {}
            }
        }
        PendingKind::Rng => {
            let listed = has_qdev(&l.def, &p.qdev);
            match (ids.contains(&p.qdev), listed, devs.rngs.into_iter().next()) {
                (true, false, Some(r)) => {
                    tracing::warn!(device = %p.qdev, "finishing an rng attach the daemon's exit cut");
                    l.def.dom.devices.rngs.push(r);
                    l.def.ids.rngs.push(p.n);
                }
                (false, false, _) => fixes.objects.push(format!("objrng{}", p.n)),
                _ => {}
            }
        }
        PendingKind::Medium => {
            let now = inserted.get(&p.qdev).cloned().flatten();
            let i = l.def.disk_of_qdev(&p.qdev);
            if let (Some(i), Some(d)) = (i, devs.disks.into_iter().next()) {
                let new_node = format!("libvirt-{}-format", p.n);
                if now.as_deref() == Some(new_node.as_str())
                    || (now.is_none() && d.source.is_none())
                {
                    tracing::warn!(device = %p.qdev, "finishing a media change the daemon's exit cut");
                    l.def.dom.devices.disks[i] = d;
                    l.def.ids.disks[i].1 = p.n;
                }
            }
        }
    }
}
