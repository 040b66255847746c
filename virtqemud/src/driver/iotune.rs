//! Disk I/O limits: `GetBlockIOTune` and `SetBlockIOTune`. A disk started with
//! `<iotune>` is throttled by a throttle-group object and filter node (its limits are
//! changed live by `qom-set` of the group's `limits`); one started without gets QEMU's
//! per-device throttling (`block_set_io_throttle`, libvirt's way for every disk). The
//! definition's `<iotune>` follows what was set, live and in the config.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use common::error::{ErrorCode, VirError};
use common::xml::Element;
use serde_json::{json, Value};
use zbus::zvariant::OwnedValue;

use super::{no_definition, not_running, Dom, Driver, Impact};
use crate::model::DomainDef;
use crate::qmp::Qmp;
use crate::xml::Disk;

/// libvirt's field, the throttle group's limit, `query-block`'s / `block_set_io_throttle`'s.
const FIELDS: &[(&str, &str, &str)] = &[
    ("total_bytes_sec", "bps-total", "bps"),
    ("read_bytes_sec", "bps-read", "bps_rd"),
    ("write_bytes_sec", "bps-write", "bps_wr"),
    ("total_iops_sec", "iops-total", "iops"),
    ("read_iops_sec", "iops-read", "iops_rd"),
    ("write_iops_sec", "iops-write", "iops_wr"),
    ("total_bytes_sec_max", "bps-total-max", "bps_max"),
    ("read_bytes_sec_max", "bps-read-max", "bps_rd_max"),
    ("write_bytes_sec_max", "bps-write-max", "bps_wr_max"),
    ("total_iops_sec_max", "iops-total-max", "iops_max"),
    ("read_iops_sec_max", "iops-read-max", "iops_rd_max"),
    ("write_iops_sec_max", "iops-write-max", "iops_wr_max"),
    ("size_iops_sec", "iops-size", "iops_size"),
    (
        "total_bytes_sec_max_length",
        "bps-total-max-length",
        "bps_max_length",
    ),
    (
        "read_bytes_sec_max_length",
        "bps-read-max-length",
        "bps_rd_max_length",
    ),
    (
        "write_bytes_sec_max_length",
        "bps-write-max-length",
        "bps_wr_max_length",
    ),
    (
        "total_iops_sec_max_length",
        "iops-total-max-length",
        "iops_max_length",
    ),
    (
        "read_iops_sec_max_length",
        "iops-read-max-length",
        "iops_rd_max_length",
    ),
    (
        "write_iops_sec_max_length",
        "iops-write-max-length",
        "iops_wr_max_length",
    ),
];

/// A disk's limits by libvirt's names (0: none) and its group name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Tune {
    pub limits: BTreeMap<&'static str, u64>,
    pub group: Option<String>,
}

impl Tune {
    /// From a disk's `<iotune>` (unreadable values count as none: the start refuses them).
    pub fn of(disk: &Disk) -> Tune {
        let mut t = Tune::default();
        let Some(el) = disk.unhandled.iter().find(|c| c.name == "iotune") else {
            return t;
        };
        for c in el.elements() {
            if c.name == "group_name" {
                t.group = Some(c.text().trim().to_owned()).filter(|g| !g.is_empty());
            } else if let Some((name, _, _)) = FIELDS.iter().find(|f| f.0 == c.name) {
                if let Ok(v) = c.text().trim().parse() {
                    t.limits.insert(name, v);
                }
            }
        }
        t
    }

    /// Into a disk's `<iotune>` (gone when nothing is limited), in libvirt's order.
    pub fn put(&self, disk: &mut Disk) {
        let at = disk.unhandled.iter().position(|c| c.name == "iotune");
        let mut el = Element::new("iotune");
        for (name, _, _) in FIELDS {
            if let Some(v) = self.limits.get(name).filter(|v| **v > 0) {
                el.push(Element::with_text(*name, v.to_string()));
            }
        }
        if let Some(g) = &self.group {
            el.push(Element::with_text("group_name", g.clone()));
        }
        let empty = el.elements().next().is_none();
        match (at, empty) {
            (Some(i), true) => {
                disk.unhandled.remove(i);
            }
            (Some(i), false) => disk.unhandled[i] = el,
            (None, false) => disk.unhandled.push(el),
            (None, true) => {}
        }
    }

    fn record(&self) -> HashMap<String, OwnedValue> {
        let mut out: HashMap<String, OwnedValue> = FIELDS
            .iter()
            .map(|(n, _, _)| {
                (
                    (*n).to_owned(),
                    OwnedValue::from(self.limits.get(n).copied().unwrap_or(0)),
                )
            })
            .collect();
        let group = zbus::zvariant::Str::from(self.group.clone().unwrap_or_default());
        out.insert("group_name".into(), OwnedValue::from(group));
        out
    }

    /// libvirt's Tunable parameters for disk `target` with these limits.
    fn tunable(&self, target: &str) -> Vec<(String, crate::events::Tuned)> {
        use crate::events::Tuned;
        let mut out = vec![(
            "blkdeviotune.disk".to_owned(),
            Tuned::Text(target.to_owned()),
        )];
        for (name, _, _) in FIELDS {
            let v = self.limits.get(name).copied().unwrap_or(0);
            out.push((format!("blkdeviotune.{name}"), Tuned::Number(v)));
        }
        if let Some(g) = &self.group {
            out.push(("blkdeviotune.group_name".to_owned(), Tuned::Text(g.clone())));
        }
        out
    }

    /// `params` over these limits, with libvirt's checks.
    fn merged(&self, params: &HashMap<String, OwnedValue>) -> Result<Tune, VirError> {
        let mut t = self.clone();
        for (k, v) in params {
            if k == "group_name" {
                let g: String = v
                    .try_clone()
                    .ok()
                    .and_then(|v| String::try_from(v).ok())
                    .ok_or_else(|| {
                        VirError::invalid_arg("parameter 'group_name' must be a string")
                    })?;
                t.group = Some(g).filter(|g| !g.is_empty());
                continue;
            }
            let (name, _, _) = FIELDS.iter().find(|f| f.0 == k).ok_or_else(|| {
                VirError::new(
                    ErrorCode::ArgumentUnsupported,
                    format!("parameter '{k}' not supported"),
                )
            })?;
            let n = u64::try_from(v).map_err(|_| {
                VirError::invalid_arg(format!("parameter '{k}' must be an unsigned 64-bit number"))
            })?;
            t.limits.insert(name, n);
        }
        // libvirt's rule: a total and its read/write parts are never both limited.
        for (total, rd, wr, what) in [
            (
                "total_bytes_sec",
                "read_bytes_sec",
                "write_bytes_sec",
                "bytes_sec",
            ),
            (
                "total_iops_sec",
                "read_iops_sec",
                "write_iops_sec",
                "iops_sec",
            ),
            (
                "total_bytes_sec_max",
                "read_bytes_sec_max",
                "write_bytes_sec_max",
                "bytes_sec_max",
            ),
            (
                "total_iops_sec_max",
                "read_iops_sec_max",
                "write_iops_sec_max",
                "iops_sec_max",
            ),
        ] {
            let on = |n: &str| t.limits.get(n).is_some_and(|v| *v > 0);
            if on(total) && (on(rd) || on(wr)) {
                return Err(VirError::new(
                    ErrorCode::ConfigUnsupported,
                    format!("total and read/write of {what} cannot be set at the same time"),
                ));
            }
        }
        Ok(t)
    }
}

/// The throttle group of disk `i` started with `<iotune>` (command_line::disks names it).
fn group_id(i: usize, t: &Tune) -> String {
    t.group
        .clone()
        .unwrap_or_else(|| format!("throttle-libvirt-{i}"))
}

/// The live limits of disk `i`: its throttle group's if it has one, else the device's.
async fn live_tune(qmp: &Qmp, def: &DomainDef, i: usize) -> Result<Tune, VirError> {
    let disk = &def.dom.devices.disks[i];
    let n = def.disk_node(i);
    let xml = Tune::of(disk);
    let group = group_id(n, &xml);
    if let Ok(limits) = qmp
        .execute(
            "qom-get",
            Some(json!({"path": format!("/objects/{group}"), "property": "limits"})),
        )
        .await
    {
        let mut t = Tune {
            limits: BTreeMap::new(),
            group: xml.group,
        };
        for (name, key, _) in FIELDS {
            t.limits
                .insert(name, limits.get(*key).and_then(Value::as_u64).unwrap_or(0));
        }
        return Ok(t);
    }
    let node = format!("libvirt-{n}-format");
    let blocks = qmp.execute("query-block", None).await?;
    let inserted = blocks
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b.get("inserted"))
        .find(|ins| ins.get("node-name").and_then(Value::as_str) == Some(node.as_str()))
        .ok_or_else(|| {
            VirError::invalid_arg(format!(
                "disk '{}' has no medium inserted in QEMU",
                disk.target_dev
            ))
        })?;
    let mut t = Tune {
        limits: BTreeMap::new(),
        group: inserted
            .get("group")
            .and_then(Value::as_str)
            .map(str::to_owned),
    };
    for (name, _, key) in FIELDS {
        t.limits.insert(
            name,
            inserted.get(*key).and_then(Value::as_u64).unwrap_or(0),
        );
    }
    Ok(t)
}

/// Applies `t` to running disk `i`: to its throttle group, else to its device.
async fn apply(qmp: &Qmp, def: &DomainDef, i: usize, t: &Tune) -> Result<(), VirError> {
    let disk = &def.dom.devices.disks[i];
    let group = group_id(def.disk_node(i), &Tune::of(disk));
    let exists = qmp
        .execute(
            "qom-get",
            Some(json!({"path": format!("/objects/{group}"), "property": "limits"})),
        )
        .await
        .is_ok();
    if exists {
        let limits: serde_json::Map<String, Value> = FIELDS
            .iter()
            .filter_map(|(n, key, _)| burst_or_limit(t, n).map(|v| ((*key).to_owned(), json!(v))))
            .collect();
        qmp.execute(
            "qom-set",
            Some(
                json!({"path": format!("/objects/{group}"), "property": "limits", "value": limits}),
            ),
        )
        .await?;
        return Ok(());
    }
    let mut args = serde_json::Map::new();
    // The guest device's block backend: a virtio-blk-pci proxy keeps it on its child.
    let qdev = def.disk_qdev(i);
    let id = match disk.bus {
        Some(crate::xml::DiskBus::Virtio) => format!("/machine/peripheral/{qdev}/virtio-backend"),
        _ => qdev,
    };
    args.insert("id".into(), json!(id));
    for (n, _, key) in FIELDS {
        if let Some(v) = burst_or_limit(t, n) {
            args.insert((*key).to_owned(), json!(v));
        }
    }
    if let Some(g) = &t.group {
        args.insert("group".into(), json!(g));
    }
    qmp.execute("block_set_io_throttle", Some(Value::Object(args)))
        .await?;
    Ok(())
}

/// The value QEMU is given for field `n`: a limit always (0 lifts it), a burst length
/// only when set (QEMU refuses 0 and keeps its default of 1 s otherwise).
fn burst_or_limit(t: &Tune, n: &str) -> Option<u64> {
    let v = t.limits.get(n).copied().unwrap_or(0);
    (!n.ends_with("_max_length") || v > 0).then_some(v)
}

fn disk_of(def: &DomainDef, disk: &str) -> Result<usize, VirError> {
    crate::stats::disk_index(def, disk)
}

impl Driver {
    /// `GetBlockIOTune`: the live limits of a running domain's disk (unless CONFIG),
    /// else those of its definition.
    pub async fn block_io_tune(
        &self,
        dom: &Dom,
        disk: &str,
        flags: u32,
    ) -> Result<HashMap<String, OwnedValue>, VirError> {
        let impact: Impact = common::error::flags(flags)?;
        let (live, config) = {
            let g = dom.lock();
            (
                g.live.as_ref().map(|l| (l.def.clone(), l.qmp.clone())),
                g.config.clone(),
            )
        };
        match (live, config) {
            (Some((def, qmp)), _) if !impact.contains(Impact::CONFIG) => {
                let i = disk_of(&def, disk)?;
                Ok(live_tune(&qmp, &def, i).await?.record())
            }
            (_, Some(def)) | (Some((def, _)), None) => {
                let i = disk_of(&def, disk)?;
                Ok(Tune::of(&def.dom.devices.disks[i]).record())
            }
            (None, None) => Err(no_definition()),
        }
    }

    /// `SetBlockIOTune`: the given limits over the current ones, live and/or in the
    /// config (libvirt's impact flags); the config is written first.
    pub async fn set_block_io_tune(
        &self,
        dom: &Arc<Dom>,
        disk: &str,
        params: &HashMap<String, OwnedValue>,
        flags: u32,
    ) -> Result<(), VirError> {
        let _call = self.calls.enter();
        let _lock = dom.begin_job().await;
        let (live, config) = super::settings::affected(dom, flags)?;
        if config {
            let mut def = dom.lock().config.clone().ok_or_else(no_definition)?;
            let i = disk_of(&def, disk)?;
            let d = &mut def.dom.devices.disks[i];
            Tune::of(d).merged(params)?.put(d);
            self.put_config(dom, def).await?;
        }
        if live {
            let (qmp, def) = {
                let g = dom.lock();
                let l = g.live.as_ref().ok_or_else(not_running)?;
                (l.qmp.clone(), l.def.clone())
            };
            let i = disk_of(&def, disk)?;
            let t = live_tune(&qmp, &def, i).await?.merged(params)?;
            apply(&qmp, &def, i, &t).await?;
            if let Some(l) = dom.lock().live.as_mut() {
                if let Some(d) = l.def.dom.devices.disks.get_mut(i) {
                    t.put(d);
                }
            }
            self.save_status(dom).await;
            self.tuned(dom, t.tunable(&def.dom.devices.disks[i].target_dev))
                .await;
        }
        Ok(())
    }
}
