//! Node resources: NodeGetInfo, CPU map and stats, memory stats and NUMA cells, KSM
//! parameters, SMBIOS sysinfo and the host part of the capabilities XML. All read from
//! /proc and the sysfs root on each call (cheap, and always current).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use common::error::{ErrorCode, VirError};
use common::xml::Element;

use crate::sysfs::Roots;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("cell number {0} out of range")]
    BadCell(i64),
    #[error("CPU number {0} out of range")]
    BadCpu(i64),
    #[error("cannot read '{path}': {err}")]
    Read { path: String, err: std::io::Error },
}

impl From<NodeError> for VirError {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::BadCell(_) | NodeError::BadCpu(_) => VirError::new(ErrorCode::InvalidArg, e),
            NodeError::Read { .. } => VirError::new(ErrorCode::SystemError, e),
        }
    }
}

fn read_text(p: &Path) -> Result<String, NodeError> {
    fs::read_to_string(p).map_err(|err| NodeError::Read {
        path: p.display().to_string(),
        err,
    })
}

fn read_opt(p: &Path) -> Option<String> {
    let s = fs::read_to_string(p).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_string())
}

/// A kernel CPU list ("0-3,8,10-11") as numbers; `None` on malformed text.
pub fn parse_cpulist(s: &str) -> Option<Vec<u32>> {
    let mut out = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (a.parse().ok()?, b.parse().ok()?);
                if b < a || b - a > 65536 {
                    return None;
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().ok()?),
        }
    }
    Some(out)
}

fn cpu_dir(roots: &Roots) -> PathBuf {
    roots.sys.join("devices/system/cpu")
}

pub fn online_cpus(roots: &Roots) -> Vec<u32> {
    read_opt(&cpu_dir(roots).join("online"))
        .and_then(|s| parse_cpulist(&s))
        .unwrap_or_default()
}

/// `/proc/meminfo`-style text ("MemTotal:  123 kB", or "Node 0 MemTotal: ...") as KiB.
pub fn parse_meminfo(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            let key = k.split_whitespace().last()?.to_string();
            let val = v.split_whitespace().next()?.parse().ok()?;
            Some((key, val))
        })
        .collect()
}

/// One NUMA cell: its id, CPUs, memory (KiB) and distances.
#[derive(Debug, Clone)]
pub struct Cell {
    pub id: u32,
    pub cpus: Vec<u32>,
    pub meminfo: BTreeMap<String, u64>,
    pub distances: Vec<u32>,
    pub dir: Option<PathBuf>,
}

/// The NUMA cells; one synthetic cell 0 (all CPUs and memory) without NUMA in sysfs.
pub fn cells(roots: &Roots) -> Vec<Cell> {
    let node_dir = roots.sys.join("devices/system/node");
    let mut out: Vec<Cell> = fs::read_dir(&node_dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    let id: u32 = n.strip_prefix("node")?.parse().ok()?;
                    let d = e.path();
                    Some(Cell {
                        id,
                        cpus: read_opt(&d.join("cpulist"))
                            .and_then(|s| parse_cpulist(&s))
                            .unwrap_or_default(),
                        meminfo: parse_meminfo(&read_opt(&d.join("meminfo")).unwrap_or_default()),
                        distances: read_opt(&d.join("distance"))
                            .map(|s| {
                                s.split_whitespace()
                                    .filter_map(|x| x.parse().ok())
                                    .collect()
                            })
                            .unwrap_or_default(),
                        dir: Some(d),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort_by_key(|c| c.id);
    if out.is_empty() {
        out.push(Cell {
            id: 0,
            cpus: online_cpus(roots),
            meminfo: parse_meminfo(&read_opt(&roots.proc.join("meminfo")).unwrap_or_default()),
            distances: vec![10],
            dir: None,
        });
    }
    out
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpuTopo {
    pub id: u32,
    pub socket: i64,
    pub die: i64,
    pub core: i64,
    pub siblings: String,
}

pub fn cpu_topology(roots: &Roots, cpu: u32) -> CpuTopo {
    let t = cpu_dir(roots).join(format!("cpu{cpu}/topology"));
    let num = |f: &str| {
        read_opt(&t.join(f))
            .and_then(|s| s.parse().ok())
            .unwrap_or(0)
    };
    CpuTopo {
        id: cpu,
        socket: num("physical_package_id"),
        die: num("die_id"),
        core: num("core_id"),
        siblings: read_opt(&t.join("thread_siblings_list")).unwrap_or_else(|| cpu.to_string()),
    }
}

/// libvirt's `virNodeInfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub model: String,
    pub memory_kib: u64,
    pub cpus: u32,
    pub mhz: u32,
    pub nodes: u32,
    pub sockets: u32,
    pub cores: u32,
    pub threads: u32,
}

fn cpuinfo(roots: &Roots) -> String {
    read_opt(&roots.proc.join("cpuinfo")).unwrap_or_default()
}

fn cpuinfo_field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim())
    })
}

pub fn node_info(roots: &Roots) -> Result<NodeInfo, NodeError> {
    let meminfo = parse_meminfo(&read_text(&roots.proc.join("meminfo"))?);
    let online = online_cpus(roots);
    let cpus = u32::try_from(online.len()).unwrap_or(u32::MAX);
    let info = cpuinfo(roots);
    let mhz = cpuinfo_field(&info, "cpu MHz")
        .and_then(|m| m.parse::<f64>().ok())
        .map(|m| m as u32)
        .or_else(|| {
            read_opt(&cpu_dir(roots).join("cpu0/cpufreq/cpuinfo_max_freq"))
                .and_then(|k| k.parse::<u32>().ok())
                .map(|k| k / 1000)
        })
        .unwrap_or(0);
    let topo: Vec<CpuTopo> = online.iter().map(|c| cpu_topology(roots, *c)).collect();
    let sockets_total = topo.iter().map(|t| t.socket).collect::<BTreeSet<_>>().len() as u32;
    let cores_total = topo
        .iter()
        .map(|t| (t.socket, t.die, t.core))
        .collect::<BTreeSet<_>>()
        .len() as u32;
    let nodes = cells(roots).len() as u32;
    let mut ni = NodeInfo {
        model: std::env::consts::ARCH.to_string(),
        memory_kib: meminfo.get("MemTotal").copied().unwrap_or(0),
        cpus,
        mhz,
        nodes: nodes.max(1),
        sockets: (sockets_total / nodes.max(1)).max(1),
        cores: (cores_total / sockets_total.max(1)).max(1),
        threads: (cpus / cores_total.max(1)).max(1),
    };
    // libvirt's fallback when the product does not add up (odd topologies).
    if ni.nodes * ni.sockets * ni.cores * ni.threads != ni.cpus {
        ni.nodes = 1;
        ni.sockets = 1;
        ni.cores = ni.cpus;
        ni.threads = 1;
    }
    Ok(ni)
}

/// One entry per possible CPU (up to the highest present), true when online.
pub fn cpu_map(roots: &Roots) -> Vec<bool> {
    let present = read_opt(&cpu_dir(roots).join("present"))
        .and_then(|s| parse_cpulist(&s))
        .unwrap_or_default();
    let online: BTreeSet<u32> = online_cpus(roots).into_iter().collect();
    let max = present.iter().chain(online.iter()).max().copied();
    match max {
        Some(m) => (0..=m).map(|c| online.contains(&c)).collect(),
        None => Vec::new(),
    }
}

/// `kernel`, `user`, `idle`, `iowait` in nanoseconds, for one CPU or all (-1).
pub fn cpu_stats(roots: &Roots, cpu: i32) -> Result<Vec<(String, u64)>, NodeError> {
    let stat = read_text(&roots.proc.join("stat"))?;
    let want = if cpu == -1 {
        "cpu".to_string()
    } else if cpu >= 0 {
        format!("cpu{cpu}")
    } else {
        return Err(NodeError::BadCpu(cpu.into()));
    };
    let line = stat
        .lines()
        .find(|l| l.split_whitespace().next() == Some(want.as_str()))
        .ok_or(NodeError::BadCpu(cpu.into()))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let get = |i: usize| v.get(i).copied().unwrap_or(0);
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ns = 1_000_000_000 / u64::try_from(hz).unwrap_or(100).max(1);
    Ok(vec![
        (
            "kernel".into(),
            get(2)
                .saturating_add(get(5))
                .saturating_add(get(6))
                .saturating_mul(ns),
        ),
        (
            "user".into(),
            get(0).saturating_add(get(1)).saturating_mul(ns),
        ),
        ("idle".into(), get(3).saturating_mul(ns)),
        ("iowait".into(), get(4).saturating_mul(ns)),
    ])
}

/// `total`, `free` (and for the whole node `buffers`, `cached`) in KiB.
pub fn memory_stats(roots: &Roots, cell: i32) -> Result<Vec<(String, u64)>, NodeError> {
    if cell == -1 {
        let m = parse_meminfo(&read_text(&roots.proc.join("meminfo"))?);
        let g = |k: &str| m.get(k).copied().unwrap_or(0);
        return Ok(vec![
            ("total".into(), g("MemTotal")),
            ("free".into(), g("MemFree")),
            ("buffers".into(), g("Buffers")),
            ("cached".into(), g("Cached")),
        ]);
    }
    let c = cells(roots)
        .into_iter()
        .find(|c| i64::from(c.id) == i64::from(cell))
        .ok_or(NodeError::BadCell(cell.into()))?;
    let g = |k: &str| c.meminfo.get(k).copied().unwrap_or(0);
    Ok(vec![
        ("total".into(), g("MemTotal")),
        ("free".into(), g("MemFree")),
    ])
}

/// Free memory of each cell from `start`, at most `max` cells, in bytes.
pub fn cells_free_memory(roots: &Roots, start: i32, max: i32) -> Result<Vec<u64>, NodeError> {
    let all = cells(roots);
    let last = all.iter().map(|c| c.id).max().unwrap_or(0);
    if start < 0 || i64::from(start) > i64::from(last) {
        return Err(NodeError::BadCell(start.into()));
    }
    if max <= 0 {
        return Err(NodeError::BadCell(max.into()));
    }
    Ok(all
        .iter()
        .filter(|c| i64::from(c.id) >= i64::from(start))
        .take(usize::try_from(max).unwrap_or(0))
        .map(|c| {
            c.meminfo
                .get("MemFree")
                .copied()
                .unwrap_or(0)
                .saturating_mul(1024)
        })
        .collect())
}

/// Free memory of the node in bytes, from /proc/meminfo (per-node counters can miss
/// hotplugged memory on virtual machines, so they are only used per cell).
pub fn free_memory(roots: &Roots) -> u64 {
    let m = parse_meminfo(&read_opt(&roots.proc.join("meminfo")).unwrap_or_default());
    m.get("MemFree").copied().unwrap_or(0).saturating_mul(1024)
}

/// KSM tunables and counters: (libvirt name, sysfs file, is a 32-bit parameter).
const KSM: &[(&str, &str, bool)] = &[
    ("shm_pages_to_scan", "pages_to_scan", true),
    ("shm_sleep_millisecs", "sleep_millisecs", true),
    ("shm_pages_shared", "pages_shared", false),
    ("shm_pages_sharing", "pages_sharing", false),
    ("shm_pages_unshared", "pages_unshared", false),
    ("shm_pages_volatile", "pages_volatile", false),
    ("shm_full_scans", "full_scans", false),
    ("shm_merge_across_nodes", "merge_across_nodes", true),
];

/// (name, value, is u32) of each KSM parameter the kernel has.
pub fn memory_parameters(roots: &Roots) -> Vec<(&'static str, u64, bool)> {
    let dir = roots.sys.join("kernel/mm/ksm");
    KSM.iter()
        .filter_map(|(name, file, small)| {
            let v = read_opt(&dir.join(file))?.parse().ok()?;
            Some((*name, v, *small))
        })
        .collect()
}

/// The KSM tunables `NodeSetMemoryParameters` may set, as libvirt's: (name, sysfs file).
const KSM_SETTABLE: &[(&str, &str)] = &[
    ("shm_pages_to_scan", "pages_to_scan"),
    ("shm_sleep_millisecs", "sleep_millisecs"),
    ("shm_merge_across_nodes", "merge_across_nodes"),
];

/// `NodeSetMemoryParameters`: every parameter is checked before any is written, so a
/// bad one changes nothing; then each is written to its KSM file.
pub fn set_memory_parameters(
    roots: &Roots,
    params: &[(String, Option<u32>)],
) -> Result<(), common::error::VirError> {
    use common::error::{ErrorCode, VirError};
    let dir = roots.sys.join("kernel/mm/ksm");
    if !dir.is_dir() {
        return Err(VirError::new(
            ErrorCode::NoSupport,
            "node memory parameters (this kernel has no KSM)",
        ));
    }
    let mut writes = Vec::with_capacity(params.len());
    for (name, value) in params {
        let file = KSM_SETTABLE
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, f)| *f)
            .ok_or_else(|| {
                VirError::new(
                    ErrorCode::ArgumentUnsupported,
                    format!("parameter '{name}' not supported"),
                )
            })?;
        let v = value.ok_or_else(|| {
            VirError::invalid_arg(format!("parameter '{name}' must be an unsigned int"))
        })?;
        if name == "shm_merge_across_nodes" && v > 1 {
            return Err(VirError::invalid_arg(format!(
                "parameter '{name}' must be 0 or 1, not {v}"
            )));
        }
        writes.push((name, dir.join(file), v));
    }
    for (name, path, v) in writes {
        // The kernel refuses merge_across_nodes with EBUSY while pages are shared.
        fs::write(&path, v.to_string())
            .map_err(|e| VirError::system(format!("unable to set {name}"), &e))?;
    }
    Ok(())
}

fn entries(name: &str, dir: &Path, pairs: &[(&str, &str)]) -> Option<Element> {
    let mut e = Element::new(name);
    let mut any = false;
    for (entry, file) in pairs {
        if let Some(v) = read_opt(&dir.join(file)) {
            e.push(Element::with_text("entry", v).attr("name", *entry));
            any = true;
        }
    }
    any.then_some(e)
}

/// libvirt's SMBIOS `<sysinfo>` document from /sys/class/dmi/id and /proc/cpuinfo.
pub fn sysinfo_xml(roots: &Roots) -> String {
    let dmi = roots.sys.join("class/dmi/id");
    let mut e = Element::new("sysinfo")
        .attr("type", "smbios")
        .child_opt(entries(
            "bios",
            &dmi,
            &[
                ("vendor", "bios_vendor"),
                ("version", "bios_version"),
                ("date", "bios_date"),
                ("release", "bios_release"),
            ],
        ))
        .child_opt(entries(
            "system",
            &dmi,
            &[
                ("manufacturer", "sys_vendor"),
                ("product", "product_name"),
                ("version", "product_version"),
                ("serial", "product_serial"),
                ("uuid", "product_uuid"),
                ("sku", "product_sku"),
                ("family", "product_family"),
            ],
        ))
        .child_opt(entries(
            "baseBoard",
            &dmi,
            &[
                ("manufacturer", "board_vendor"),
                ("product", "board_name"),
                ("version", "board_version"),
                ("serial", "board_serial"),
                ("asset", "board_asset_tag"),
            ],
        ))
        .child_opt(entries(
            "chassis",
            &dmi,
            &[
                ("manufacturer", "chassis_vendor"),
                ("version", "chassis_version"),
                ("serial", "chassis_serial"),
                ("asset", "chassis_asset_tag"),
            ],
        ));
    let info = cpuinfo(roots);
    let sockets: BTreeSet<i64> = online_cpus(roots)
        .iter()
        .map(|c| cpu_topology(roots, *c).socket)
        .collect();
    for s in sockets {
        let mut p = Element::new("processor").child(
            Element::with_text("entry", format!("CPU socket {s}"))
                .attr("name", "socket_destination"),
        );
        if let Some(v) = cpuinfo_field(&info, "vendor_id") {
            p.push(Element::with_text("entry", v).attr("name", "manufacturer"));
        }
        if let Some(v) = cpuinfo_field(&info, "model name") {
            p.push(Element::with_text("entry", v).attr("name", "version"));
        }
        e.push(p);
    }
    e.to_xml()
}

/// Huge page sizes (KiB) the kernel offers.
fn hugepage_sizes(roots: &Roots) -> Vec<u64> {
    let mut v: Vec<u64> = fs::read_dir(roots.sys.join("kernel/mm/hugepages"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.strip_prefix("hugepages-")?
                        .strip_suffix("kB")?
                        .parse()
                        .ok()
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable();
    v
}

/// The `<host>` element of libvirt's capabilities XML; virtqemud embeds it in its
/// `GetCapabilities` answer.
pub fn host_capabilities_xml(roots: &Roots) -> String {
    let info = cpuinfo(roots);
    let ni = node_info(roots).ok();
    let page_kib = {
        // SAFETY: sysconf has no memory-safety preconditions.
        let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        u64::try_from(p).unwrap_or(4096) / 1024
    };
    let huge = hugepage_sizes(roots);
    let uuid = read_opt(&roots.sys.join("class/dmi/id/product_uuid"))
        .or_else(|| read_opt(Path::new("/etc/machine-id")).map(|m| machine_id_uuid(&m)));

    let mut cpu = Element::new("cpu").child(Element::with_text("arch", std::env::consts::ARCH));
    if let Some(v) = cpuinfo_field(&info, "vendor_id") {
        let vendor = match v {
            "GenuineIntel" => "Intel",
            "AuthenticAMD" => "AMD",
            other => other,
        };
        cpu.push(Element::with_text("vendor", vendor));
    }
    if let Some(m) = cpuinfo_field(&info, "microcode") {
        cpu.push(Element::new("microcode").attr(
            "version",
            u64::from_str_radix(m.trim_start_matches("0x"), 16).unwrap_or(0),
        ));
    }
    if let Some(ni) = &ni {
        cpu.push(
            Element::new("topology")
                .attr("sockets", ni.sockets)
                .attr("dies", 1)
                .attr("clusters", 1)
                .attr("cores", ni.cores)
                .attr("threads", ni.threads),
        );
    }
    for f in cpuinfo_field(&info, "flags")
        .unwrap_or("")
        .split_whitespace()
    {
        cpu.push(Element::new("feature").attr("name", f));
    }
    cpu.push(
        Element::new("pages")
            .attr("unit", "KiB")
            .attr("size", page_kib),
    );
    for h in &huge {
        cpu.push(Element::new("pages").attr("unit", "KiB").attr("size", h));
    }

    let iommu = fs::read_dir(roots.sys.join("kernel/iommu_groups"))
        .map(|mut rd| rd.next().is_some())
        .unwrap_or(false);

    let all = cells(roots);
    let mut cells_el = Element::new("cells").attr("num", all.len());
    for c in &all {
        let total = c.meminfo.get("MemTotal").copied().unwrap_or(0);
        let mut cell = Element::new("cell")
            .attr("id", c.id)
            .child(Element::with_text("memory", total.to_string()).attr("unit", "KiB"));
        let mut huge_kib = 0;
        let mut huge_els = Vec::new();
        for h in &huge {
            let n: u64 = c
                .dir
                .as_ref()
                .map(|d| d.join(format!("hugepages/hugepages-{h}kB/nr_hugepages")))
                .or_else(|| {
                    Some(
                        roots
                            .sys
                            .join(format!("kernel/mm/hugepages/hugepages-{h}kB/nr_hugepages")),
                    )
                })
                .and_then(|p| read_opt(&p))
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            huge_kib = n.saturating_mul(*h).saturating_add(huge_kib);
            huge_els.push(
                Element::with_text("pages", n.to_string())
                    .attr("unit", "KiB")
                    .attr("size", h),
            );
        }
        cell.push(
            Element::with_text(
                "pages",
                (total.saturating_sub(huge_kib) / page_kib.max(1)).to_string(),
            )
            .attr("unit", "KiB")
            .attr("size", page_kib),
        );
        for h in huge_els {
            cell.push(h);
        }
        let mut dist = Element::new("distances");
        for (i, d) in c.distances.iter().enumerate() {
            let id = all.get(i).map(|x| x.id).unwrap_or(i as u32);
            dist.push(Element::new("sibling").attr("id", id).attr("value", d));
        }
        cell.push(dist);
        let mut cpus = Element::new("cpus").attr("num", c.cpus.len());
        for id in &c.cpus {
            let t = cpu_topology(roots, *id);
            cpus.push(
                Element::new("cpu")
                    .attr("id", t.id)
                    .attr("socket_id", t.socket)
                    .attr("die_id", t.die)
                    .attr("cluster_id", 0)
                    .attr("core_id", t.core)
                    .attr("siblings", t.siblings),
            );
        }
        cell.push(cpus);
        cells_el.push(cell);
    }

    Element::new("host")
        .child_opt(uuid.map(|u| Element::with_text("uuid", u)))
        .child(cpu)
        .child(Element::new("iommu").attr("support", if iommu { "yes" } else { "no" }))
        .child(Element::new("topology").child(cells_el))
        .to_xml()
}

/// systemd's machine-id (32 hex digits) written as a UUID, as libvirt does without DMI.
fn machine_id_uuid(m: &str) -> String {
    let m = m.trim();
    if m.len() == 32 && m.bytes().all(|b| b.is_ascii_hexdigit()) {
        format!(
            "{}-{}-{}-{}-{}",
            &m[..8],
            &m[8..12],
            &m[12..16],
            &m[16..20],
            &m[20..]
        )
    } else {
        m.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpulists_parse() {
        assert_eq!(
            parse_cpulist("0-3,8,10-11"),
            Some(vec![0, 1, 2, 3, 8, 10, 11])
        );
        assert_eq!(parse_cpulist("0\n"), Some(vec![0]));
        assert_eq!(parse_cpulist("3-1"), None);
        assert_eq!(parse_cpulist("x"), None);
    }

    #[test]
    fn meminfo_parses_both_layouts() {
        let m = parse_meminfo("MemTotal:       16318436 kB\nMemFree: 100 kB\n");
        assert_eq!(m.get("MemTotal"), Some(&16318436));
        let n = parse_meminfo("Node 0 MemTotal:       2048 kB\nNode 0 MemFree: 7 kB\n");
        assert_eq!(n.get("MemFree"), Some(&7));
    }

    #[test]
    fn bad_cells_and_cpus_are_rejected() {
        let r = Roots::host();
        assert!(matches!(
            memory_stats(&r, 4096),
            Err(NodeError::BadCell(4096))
        ));
        assert!(matches!(cpu_stats(&r, -2), Err(NodeError::BadCpu(-2))));
        assert!(matches!(cpu_stats(&r, 100_000), Err(NodeError::BadCpu(_))));
        assert!(cells_free_memory(&r, -1, 1).is_err());
        let e: VirError = NodeError::BadCell(7).into();
        assert_eq!(e.message, "invalid argument: cell number 7 out of range");
    }
}
