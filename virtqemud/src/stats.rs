//! Statistics readers: the records of `GetStats`/`GetAllDomainStats` (libvirt's group and
//! field names) and `GetBlockIOTune` from QMP `query-block`. The cgroup-backed readers
//! (`GetBlockIOParameters`, `GetSchedulerParameters`, ...) are `driver::tuning`'s.
//!
//! Sources: QMP (`query-blockstats`, `query-block`, `query-cpus-fast`, `query-balloon`)
//! for what only QEMU knows; `/proc/PID/stat` and `/proc/PID/task/TID/stat` for CPU time;
//! `/proc/net/dev` (in the daemon's network namespace) for a NIC's host-side tap
//! counters, swapped as libvirt swaps them (what the tap receives, the guest sent).

use std::collections::HashMap;

use common::error::{ErrorCode, VirError};
use serde_json::Value as Json;
use zbus::zvariant::{OwnedValue, Value};

use crate::model::DomainDef;
use crate::qmp::Qmp;
use crate::xml::InterfaceKind;

/// virDomainStatsTypes.
pub mod group {
    pub const STATE: u32 = 1;
    pub const CPU_TOTAL: u32 = 2;
    pub const BALLOON: u32 = 4;
    pub const VCPU: u32 = 8;
    pub const INTERFACE: u32 = 16;
    pub const BLOCK: u32 = 32;
    /// `perf.<event>`: the counters `<perf>`/SetPerfEvents opened (`crate::perf`).
    pub const PERF: u32 = 64;
    /// The groups this daemon fills.
    pub const SUPPORTED: u32 = STATE | CPU_TOTAL | BALLOON | VCPU | INTERFACE | BLOCK | PERF;
}

/// VIR_CONNECT_GET_ALL_DOMAINS_STATS_ENFORCE_STATS.
pub const ENFORCE_STATS: u32 = 1 << 31;
/// The flags GetStats/GetAllDomainStats accept: the list filters, NOWAIT, BACKING,
/// ENFORCE_STATS.
pub const STATS_FLAGS: u32 = 0xff | (1 << 29) | (1 << 30) | ENFORCE_STATS;

/// Which groups a request asks for; an unsupported group is an error only when the
/// caller enforces it (libvirt's rule).
pub fn requested_groups(stats: u32, flags: u32) -> Result<u32, VirError> {
    let unsupported = stats & !group::SUPPORTED;
    if unsupported != 0 && flags & ENFORCE_STATS != 0 {
        return Err(VirError::new(
            ErrorCode::ArgumentUnsupported,
            format!("Stats types bits 0x{unsupported:x} are not supported by this daemon"),
        ));
    }
    Ok(if stats == 0 {
        group::SUPPORTED
    } else {
        stats & group::SUPPORTED
    })
}

/// What a stats record is read from.
pub struct Source<'a> {
    pub state: (i32, i32),
    pub def: Option<&'a DomainDef>,
    /// The running QEMU: its PID and monitor.
    pub live: Option<(u32, &'a Qmp)>,
}

#[derive(Default)]
struct Record(HashMap<String, OwnedValue>);

impl Record {
    fn put<'v>(&mut self, k: impl Into<String>, v: impl Into<Value<'v>>) {
        if let Ok(v) = OwnedValue::try_from(v.into()) {
            self.0.insert(k.into(), v);
        }
    }
}

/// One domain's record for the groups in `groups` (see [`requested_groups`]).
pub async fn record(src: &Source<'_>, groups: u32) -> HashMap<String, OwnedValue> {
    let mut r = Record::default();
    if groups & group::STATE != 0 {
        r.put("state.state", src.state.0);
        r.put("state.reason", src.state.1);
    }
    let Some((pid, qmp)) = src.live else {
        // libvirt reports only the state of an inactive domain.
        return r.0;
    };
    if groups & group::CPU_TOTAL != 0 {
        if let Some((user, system)) = proc_times_ns(&format!("/proc/{pid}/stat")) {
            r.put("cpu.time", user + system);
            r.put("cpu.user", user);
            r.put("cpu.system", system);
        }
    }
    if groups & group::BALLOON != 0 {
        if let Some(def) = src.def {
            let current = match qmp.execute("query-balloon", None).await {
                Ok(v) => v.get("actual").and_then(Json::as_u64).map(|b| b / 1024),
                Err(_) => None,
            };
            r.put(
                "balloon.current",
                current.unwrap_or(def.dom.current_memory_kib),
            );
            r.put("balloon.maximum", def.dom.memory_kib);
        }
        if let Some(rss) = proc_rss_kib(pid) {
            r.put("balloon.rss", rss);
        }
    }
    if groups & group::VCPU != 0 {
        vcpu_group(&mut r, src.def, pid, qmp).await;
    }
    if groups & group::INTERFACE != 0 {
        if let Some(def) = src.def {
            let dev = std::fs::read_to_string("/proc/net/dev").unwrap_or_default();
            interface_group(&mut r, def, &dev);
        }
    }
    if groups & group::BLOCK != 0 {
        if let Some(def) = src.def {
            block_group(&mut r, def, qmp).await;
        }
    }
    r.0
}

async fn vcpu_group(r: &mut Record, def: Option<&DomainDef>, pid: u32, qmp: &Qmp) {
    if let Some(def) = def {
        r.put("vcpu.current", def.vcpus);
        r.put("vcpu.maximum", def.dom.vcpus);
    }
    let Ok(cpus) = qmp.execute("query-cpus-fast", None).await else {
        return;
    };
    for c in cpus.as_array().into_iter().flatten() {
        let Some(idx) = c.get("cpu-index").and_then(Json::as_u64) else {
            continue;
        };
        r.put(format!("vcpu.{idx}.state"), 1i32); // VIR_VCPU_RUNNING
        if let Some(tid) = c.get("thread-id").and_then(Json::as_u64) {
            if let Some((u, s)) = proc_times_ns(&format!("/proc/{pid}/task/{tid}/stat")) {
                r.put(format!("vcpu.{idx}.time"), u + s);
            }
        }
    }
}

/// `net.*`: every NIC by its host-side device; counters where the device exists in this
/// network namespace. User-mode NICs have no host device and no counters (libvirt
/// reports none either).
fn interface_group(r: &mut Record, def: &DomainDef, proc_net_dev: &str) {
    let nics = &def.dom.devices.interfaces;
    r.put("net.count", nics.len() as u32);
    for (i, nic) in nics.iter().enumerate() {
        let name = match (&nic.kind, &nic.target_dev) {
            (InterfaceKind::User, _) | (_, None) => {
                r.put(format!("net.{i}.name"), "");
                continue;
            }
            (_, Some(dev)) => dev.as_str(),
        };
        r.put(format!("net.{i}.name"), name);
        if let Some(c) = net_dev_counters(proc_net_dev, name) {
            // The tap's receive side is the guest's transmit side.
            let [rxb, rxp, rxe, rxd, txb, txp, txe, txd] = c;
            for (k, v) in [
                ("rx.bytes", txb),
                ("rx.pkts", txp),
                ("rx.errs", txe),
                ("rx.drop", txd),
                ("tx.bytes", rxb),
                ("tx.pkts", rxp),
                ("tx.errs", rxe),
                ("tx.drop", rxd),
            ] {
                r.put(format!("net.{i}.{k}"), v);
            }
        }
    }
}

/// `block.*` from `query-blockstats` (matched by the disk's format node) and
/// `query-block` (capacity), in the domain's disk order.
async fn block_group(r: &mut Record, def: &DomainDef, qmp: &Qmp) {
    let disks = &def.dom.devices.disks;
    r.put("block.count", disks.len() as u32);
    let stats = qmp
        .execute("query-blockstats", None)
        .await
        .unwrap_or(Json::Null);
    let blocks = qmp.execute("query-block", None).await.unwrap_or(Json::Null);
    let nodes = qmp
        .execute(
            "query-named-block-nodes",
            Some(serde_json::json!({"flat": true})),
        )
        .await
        .unwrap_or(Json::Null);
    for (i, disk) in disks.iter().enumerate() {
        r.put(format!("block.{i}.name"), disk.target_dev.as_str());
        if let Some(path) = disk_path(disk) {
            r.put(format!("block.{i}.path"), path);
        }
        let n = def.disk_node(i);
        let node = format!("libvirt-{n}-format");
        let by_node = |list: &Json, key: &str| -> Option<Json> {
            list.as_array()?
                .iter()
                .find(|e| {
                    e.get(key).and_then(Json::as_str) == Some(node.as_str())
                        || e.pointer("/inserted/node-name").and_then(Json::as_str)
                            == Some(node.as_str())
                })
                .cloned()
        };
        if let Some(s) = by_node(&stats, "node-name").and_then(|e| e.get("stats").cloned()) {
            for (k, q) in [
                ("rd.reqs", "rd_operations"),
                ("rd.bytes", "rd_bytes"),
                ("rd.times", "rd_total_time_ns"),
                ("wr.reqs", "wr_operations"),
                ("wr.bytes", "wr_bytes"),
                ("wr.times", "wr_total_time_ns"),
                ("fl.reqs", "flush_operations"),
                ("fl.times", "flush_total_time_ns"),
            ] {
                if let Some(v) = s.get(q).and_then(Json::as_u64) {
                    r.put(format!("block.{i}.{k}"), v);
                }
            }
            if let Some(v) = s.get("wr_highest_offset").and_then(Json::as_u64) {
                r.put(format!("block.{i}.allocation"), v);
            }
        }
        // libvirt's block.N.threshold: the write threshold set on the storage node.
        let storage = format!("libvirt-{n}-storage");
        let threshold = nodes.as_array().into_iter().flatten().find_map(|n| {
            (n.get("node-name").and_then(Json::as_str) == Some(storage.as_str()))
                .then(|| n.get("write_threshold").and_then(Json::as_u64))
                .flatten()
        });
        if let Some(t) = threshold.filter(|t| *t > 0) {
            r.put(format!("block.{i}.threshold"), t);
        }
        if let Some(b) = by_node(&blocks, "node-name") {
            if let Some(size) = b
                .pointer("/inserted/image/virtual-size")
                .and_then(Json::as_u64)
            {
                r.put(format!("block.{i}.capacity"), size);
            }
            if let Some(size) = b
                .pointer("/inserted/image/actual-size")
                .and_then(Json::as_u64)
            {
                r.put(format!("block.{i}.physical"), size);
            }
        }
    }
}

/// The disks whose `query-block` entry (matched by format node) reports an I/O error:
/// (target, 1 unspecified | 2 no space).
pub fn disk_errors(def: &DomainDef, blocks: &Json) -> Vec<(String, i32)> {
    def.dom
        .devices
        .disks
        .iter()
        .enumerate()
        .filter_map(|(i, disk)| {
            let node = format!("libvirt-{}-format", def.disk_node(i));
            let entry = blocks.as_array()?.iter().find(|b| {
                b.pointer("/inserted/node-name").and_then(Json::as_str) == Some(node.as_str())
            })?;
            let code = match entry.get("io-status").and_then(Json::as_str)? {
                "failed" => 1,
                "nospace" => 2,
                _ => return None,
            };
            Some((disk.target_dev.clone(), code))
        })
        .collect()
}

pub fn disk_path(disk: &crate::xml::Disk) -> Option<String> {
    use crate::xml::DiskSource;
    match disk.source.as_ref()? {
        DiskSource::File(p) | DiskSource::Block(p) => Some(p.display().to_string()),
        DiskSource::Volume { .. } | DiskSource::Network { .. } | DiskSource::Other(_) => None,
    }
}

/// The index of `disk` (a target like `vda`, or its source path) in the definition:
/// QEMU's `libvirt-N-format` node.
pub fn disk_index(def: &DomainDef, disk: &str) -> Result<usize, VirError> {
    def.dom
        .devices
        .disks
        .iter()
        .position(|d| d.target_dev == disk || disk_path(d).as_deref() == Some(disk))
        .ok_or_else(|| VirError::invalid_arg(format!("disk '{disk}' was not found in the domain")))
}

/// The counters of `ifname` in `/proc/net/dev` text: rx bytes, packets, errs, drop, then
/// tx bytes, packets, errs, drop.
pub fn net_dev_counters(text: &str, ifname: &str) -> Option<[u64; 8]> {
    let line = text.lines().find_map(|l| {
        let (name, rest) = l.split_once(':')?;
        (name.trim() == ifname).then_some(rest)
    })?;
    let f: Vec<u64> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    if f.len() < 16 {
        return None;
    }
    Some([f[0], f[1], f[2], f[3], f[8], f[9], f[10], f[11]])
}

/// User and system CPU time of a `/proc/.../stat` file, in nanoseconds.
pub fn proc_times_ns(path: &str) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(path).ok()?;
    let rest = s.get(s.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let user: u64 = f.get(11)?.parse().ok()?;
    let system: u64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no memory effects.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    Some((user * 1_000_000_000 / hz, system * 1_000_000_000 / hz))
}

/// The resident set of a process in KiB (`VmRSS`).
pub fn proc_rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_errors_come_from_io_status() {
        let def = DomainDef::from(
            crate::xml::Domain::parse(
                "<domain type='qemu'><name>e</name><memory>65536</memory><os><type>hvm</type></os>\
                 <devices><disk type='file'><source file='/a'/><target dev='vda' bus='virtio'/></disk>\
                 <disk type='file'><source file='/b'/><target dev='vdb' bus='virtio'/></disk>\
                 <disk type='file'><source file='/c'/><target dev='vdc' bus='virtio'/></disk>\
                 </devices></domain>",
            )
            .expect("domain"),
        );
        let blocks = serde_json::json!([
            {"io-status": "ok", "inserted": {"node-name": "libvirt-0-format"}},
            {"io-status": "nospace", "inserted": {"node-name": "libvirt-1-format"}},
            {"io-status": "failed", "inserted": {"node-name": "libvirt-2-format"}},
        ]);
        assert_eq!(
            disk_errors(&def, &blocks),
            [("vdb".to_owned(), 2), ("vdc".to_owned(), 1)]
        );
    }

    #[test]
    fn proc_net_dev_counters() {
        let text = "Inter-|   Receive                                                |  Transmit\n \
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed\n    \
 lo:    1000      10    0    0    0     0          0         0     1000      10    0    0    0     0       0          0\n\
vnet0: 5 6 7 8 0 0 0 0 50 60 70 80 0 0 0 0\n";
        assert_eq!(
            net_dev_counters(text, "vnet0"),
            Some([5, 6, 7, 8, 50, 60, 70, 80])
        );
        assert_eq!(net_dev_counters(text, "lo").map(|c| c[0]), Some(1000));
        assert_eq!(net_dev_counters(text, "vnet"), None);
        assert_eq!(net_dev_counters("vnet0: 1 2\n", "vnet0"), None);
    }

    #[test]
    fn groups_and_enforcement() {
        assert_eq!(requested_groups(0, 0).ok(), Some(group::SUPPORTED));
        // 128 (iothread) is a group this daemon does not fill.
        assert_eq!(requested_groups(1 | 128, 0).ok(), Some(1));
        assert!(requested_groups(1 | 128, ENFORCE_STATS).is_err());
        assert_eq!(requested_groups(64, ENFORCE_STATS).ok(), Some(64));
        assert_eq!(requested_groups(32, ENFORCE_STATS).ok(), Some(32));
    }

    #[test]
    fn own_cpu_times() {
        assert!(proc_times_ns("/proc/self/stat").is_some());
        assert!(proc_times_ns("/proc/self/nonexistent").is_none());
    }
}
