//! Guest memory as QEMU backs it: `<memoryBacking>` (hugepages, memfd/file sources,
//! shared access, preallocation, discard, locking, KSM), guest NUMA cells
//! (`<cpu><numa>`: one memory backend and `-numa node` per cell, distances) and
//! `<numatune>` (host NUMA policy of each backend), as libvirt 9.0 builds them for
//! QEMU 7.2. libvirt's memory-backend JSON objects, ids `pc.ram` / `ram-nodeN`.

use std::collections::BTreeSet;
use std::path::PathBuf;

use common::xml::Element;
use serde_json::{json, Map, Value};

use crate::xml::{unit_to_kib, Address, Domain};

use super::device::DeviceProps;
use super::{json_str, unsupported, Argv, LaunchContext, Result};

/// A top-level element of the domain this module reads (kept verbatim by the model).
fn top<'a>(dom: &'a Domain, name: &str) -> Option<&'a Element> {
    dom.other.iter().find(|e| e.name == name)
}

/// The top-level elements honoured here (the command line does not refuse them).
pub(super) const HANDLED: &[&str] = &["memoryBacking", "numatune"];

/// Refuses what is written but not honoured: unknown children, numad placement,
/// cgroup-only modes, NUMA cells' caches and interconnects.
fn check(dom: &Domain) -> Result<()> {
    if let Some(mb) = top(dom, "memoryBacking") {
        const KNOWN: &[&str] = &[
            "hugepages",
            "nosharepages",
            "locked",
            "source",
            "access",
            "allocation",
            "discard",
        ];
        if let Some(c) = mb.elements().find(|c| !KNOWN.contains(&c.name.as_str())) {
            return Err(unsupported(
                &format!("memoryBacking/{}", c.name),
                "",
                "not implemented",
            ));
        }
        if let Some(s) = mb.first("source").and_then(|s| s.get_attr("type")) {
            if !matches!(s, "file" | "anonymous" | "memfd") {
                return Err(unsupported("memoryBacking/source type", s, "unknown"));
            }
        }
    }
    if let Some(nt) = top(dom, "numatune") {
        for m in nt.elements() {
            let what = format!("numatune/{}", m.name);
            match m.name.as_str() {
                "memory" | "memnode" => {}
                _ => return Err(unsupported(&what, "", "not implemented")),
            }
            if m.get_attr("placement") == Some("auto") {
                return Err(unsupported(
                    &format!("{what} placement"),
                    "auto",
                    "placement by numad is not implemented",
                ));
            }
            if let Some(mode @ "restrictive") = m.get_attr("mode") {
                return Err(unsupported(
                    &format!("{what} mode"),
                    mode,
                    "this runtime places no cgroups (use strict, preferred or interleave)",
                ));
            }
        }
    }
    if let Some(numa) = numa(dom) {
        if let Some(c) = numa.elements().find(|c| c.name != "cell").or_else(|| {
            numa.children_named("cell")
                .flat_map(|c| c.elements())
                .find(|c| c.name != "distances")
        }) {
            return Err(unsupported(
                &format!("cpu/numa/{}", c.name),
                "",
                "not implemented",
            ));
        }
    }
    Ok(())
}

fn numa(dom: &Domain) -> Option<&Element> {
    dom.cpu
        .as_ref()
        .and_then(|c| c.other.iter().find(|e| e.name == "numa"))
}

/// `-machine` options of the memory: KSM off, the main RAM's backend (without NUMA
/// cells, when something asks for a backend of its own).
pub(super) fn machine_opts(dom: &Domain) -> String {
    let mut s = String::new();
    let mb = top(dom, "memoryBacking");
    if mb.is_some_and(|m| m.first("nosharepages").is_some()) {
        s.push_str(",mem-merge=off");
    }
    if numa(dom).is_none() && needs_backend(dom) {
        s.push_str(",memory-backend=pc.ram");
    }
    if has_nvdimm(dom) {
        s.push_str(",nvdimm=on");
    }
    s
}

/// Whether the main RAM needs an explicit backend object.
fn needs_backend(dom: &Domain) -> bool {
    let mb = top(dom, "memoryBacking");
    let strict_nodes = top(dom, "numatune")
        .and_then(|n| n.first("memory"))
        .is_some_and(|m| m.get_attr("nodeset").is_some());
    strict_nodes
        || mb.is_some_and(|m| {
            ["hugepages", "source", "access", "discard"]
                .iter()
                .any(|c| m.first(c).is_some())
                || m.first("allocation").and_then(|a| a.get_attr("mode")) == Some("immediate")
        })
}

/// libvirt's set syntax (`0-3,8,^2`) as a sorted set.
fn parse_set(what: &str, text: &str) -> Result<BTreeSet<u32>> {
    let bad = || unsupported(what, text, "expected a list of numbers and ranges");
    let mut set = BTreeSet::new();
    let mut minus = BTreeSet::new();
    for part in text.split(',').map(str::trim) {
        let (neg, part) = match part.strip_prefix('^') {
            Some(p) => (true, p),
            None => (false, part),
        };
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let lo: u32 = lo.parse().map_err(|_| bad())?;
        let hi: u32 = hi.parse().map_err(|_| bad())?;
        if hi < lo || hi - lo > 4096 {
            return Err(bad());
        }
        let target = if neg { &mut minus } else { &mut set };
        target.extend(lo..=hi);
    }
    Ok(set.difference(&minus).copied().collect())
}

/// A set as QEMU's repeated `cpus=A-B` ranges.
fn ranges(set: &BTreeSet<u32>) -> Vec<String> {
    let mut out = Vec::new();
    let mut it = set.iter().copied().peekable();
    while let Some(lo) = it.next() {
        let mut hi = lo;
        while it.peek() == Some(&(hi + 1)) {
            hi += 1;
            it.next();
        }
        out.push(if lo == hi {
            lo.to_string()
        } else {
            format!("{lo}-{hi}")
        });
    }
    out
}

/// One memory region: the main RAM or a NUMA cell.
struct Region {
    id: String,
    cell: Option<u32>,
    bytes: u64,
    /// `memAccess` of the cell.
    access: Option<String>,
    /// `discard` of the cell.
    discard: Option<bool>,
}

/// The host NUMA policy for a region: (host nodes, QEMU policy).
fn host_policy(dom: &Domain, cell: Option<u32>) -> Result<Option<(Vec<u32>, &'static str)>> {
    let Some(nt) = top(dom, "numatune") else {
        return Ok(None);
    };
    let node = cell
        .and_then(|id| {
            nt.children_named("memnode")
                .find(|m| m.get_attr("cellid").and_then(|c| c.parse().ok()) == Some(id))
        })
        .or_else(|| nt.first("memory"));
    let Some(node) = node else {
        return Ok(None);
    };
    let Some(set) = node.get_attr("nodeset") else {
        return Ok(None);
    };
    let mode = node.get_attr("mode").unwrap_or("strict");
    let policy = match mode {
        "strict" => "bind",
        "preferred" => "preferred",
        "interleave" => "interleave",
        m => return Err(unsupported("numatune mode", m, "unknown")),
    };
    let nodes = parse_set("numatune nodeset", set)?;
    Ok(Some((nodes.into_iter().collect(), policy)))
}

/// The hugepage size (KiB; `None`: the host's default) a region uses, if any.
fn hugepage(mb: Option<&Element>, cell: Option<u32>) -> Result<Option<Option<u64>>> {
    let Some(hp) = mb.and_then(|m| m.first("hugepages")) else {
        return Ok(None);
    };
    let mut pages = hp.children_named("page").peekable();
    if pages.peek().is_none() {
        return Ok(Some(None));
    }
    let mut fallback = None;
    for p in pages {
        let size: u64 = p
            .parse_attr("size")
            .map_err(|e| unsupported("memoryBacking/hugepages/page size", "", e))?
            .ok_or_else(|| unsupported("memoryBacking/hugepages/page", "", "no size"))?;
        let kib = unit_to_kib("page", size, p.get_attr("unit").unwrap_or("KiB"))
            .map_err(|e| unsupported("memoryBacking/hugepages/page size", "", e))?;
        match p.get_attr("nodeset") {
            None => fallback = Some(kib),
            Some(set) => {
                if parse_set("page nodeset", set)?.contains(&cell.unwrap_or(0)) {
                    return Ok(Some(Some(kib)));
                }
            }
        }
    }
    Ok(fallback.map(Some))
}

/// The backend object of one region, as libvirt writes it.
fn backend(dom: &Domain, ctx: &LaunchContext, r: &Region) -> Result<Value> {
    let mb = top(dom, "memoryBacking");
    let source = mb
        .and_then(|m| m.first("source"))
        .and_then(|s| s.get_attr("type"))
        .unwrap_or("anonymous");
    let access = r.access.clone().or_else(|| {
        mb.and_then(|m| m.first("access"))
            .and_then(|a| a.get_attr("mode"))
            .map(str::to_owned)
    });
    let page = hugepage(mb, r.cell)?;
    let alloc = mb.and_then(|m| m.first("allocation"));
    let mut o = Map::new();
    let kind = match (source, page) {
        ("memfd", Some(size)) => {
            o.insert("hugetlb".into(), json!(true));
            if let Some(kib) = size {
                o.insert("hugetlbsize".into(), json!(kib * 1024));
            }
            "memory-backend-memfd"
        }
        ("memfd", None) => "memory-backend-memfd",
        (_, Some(size)) => {
            let mount = ctx
                .hugetlbfs
                .iter()
                .find(|(kib, _)| size.is_none_or(|s| s == *kib))
                .map(|(_, p)| p.clone())
                .ok_or_else(|| {
                    unsupported(
                        "memoryBacking/hugepages",
                        &size.map_or("default".to_owned(), |s| format!("{s} KiB")),
                        "no hugetlbfs is mounted for this page size",
                    )
                })?;
            o.insert("mem-path".into(), Value::String(json_path(&mount)?));
            "memory-backend-file"
        }
        ("file", None) => {
            o.insert(
                "mem-path".into(),
                Value::String(json_path(&ctx.runtime_dir)?),
            );
            "memory-backend-file"
        }
        _ => "memory-backend-ram",
    };
    if r.id == "pc.ram" && kind != "memory-backend-ram" {
        o.insert("x-use-canonical-path-for-ramblock-id".into(), json!(false));
    }
    if let Some(a) = access.as_deref() {
        match a {
            "shared" => o.insert("share".into(), json!(true)),
            "private" => o.insert("share".into(), json!(false)),
            a => return Err(unsupported("memoryBacking/access mode", a, "unknown")),
        };
    }
    let discard = r
        .discard
        .or_else(|| mb.and_then(|m| m.first("discard")).map(|_| true));
    if let (Some(d), "memory-backend-file") = (discard, kind) {
        o.insert("discard-data".into(), json!(d));
    }
    if page.is_some() || alloc.and_then(|a| a.get_attr("mode")) == Some("immediate") {
        o.insert("prealloc".into(), json!(true));
        if let Some(t) = alloc.and_then(|a| a.get_attr("threads")) {
            let t: u32 = t
                .parse()
                .map_err(|_| unsupported("memoryBacking/allocation threads", t, "not a number"))?;
            o.insert("prealloc-threads".into(), json!(t));
        }
    }
    o.insert("size".into(), json!(r.bytes));
    if let Some((nodes, policy)) = host_policy(dom, r.cell)? {
        o.insert("host-nodes".into(), json!(nodes));
        o.insert("policy".into(), json!(policy));
    }
    let mut obj = Map::new();
    obj.insert("qom-type".into(), json!(kind));
    obj.insert("id".into(), json!(r.id));
    obj.extend(o);
    Ok(Value::Object(obj))
}

/// A path for a JSON object: checked as every path given to QEMU (absolute, UTF-8).
fn json_path(p: &std::path::Path) -> Result<String> {
    json_str(p)?;
    Ok(p.to_string_lossy().into_owned())
}

/// The memory backends and NUMA nodes, after `-m`; `-overcommit` for `<locked/>`.
pub(super) fn memory(a: &mut Argv, dom: &Domain, ctx: &LaunchContext) -> Result<()> {
    check(dom)?;
    if let Some(numa) = numa(dom) {
        cells(a, dom, ctx, numa)?;
    } else if needs_backend(dom) {
        let r = Region {
            id: "pc.ram".into(),
            cell: None,
            bytes: dom.memory_kib * 1024,
            access: None,
            discard: None,
        };
        a.pair("-object", backend(dom, ctx, &r)?.to_string());
    }
    if top(dom, "memoryBacking").is_some_and(|m| m.first("locked").is_some()) {
        a.pair("-overcommit", "mem-lock=on");
    }
    Ok(())
}

/// The memory of a cell in KiB.
fn cell_kib(cell: &Element) -> Result<u64> {
    let mem: u64 = cell
        .parse_attr("memory")
        .map_err(|e| unsupported("cpu/numa/cell memory", "", e))?
        .ok_or_else(|| unsupported("cpu/numa/cell", "", "no memory size"))?;
    unit_to_kib("cell", mem, cell.get_attr("unit").unwrap_or("KiB"))
        .map_err(|e| unsupported("cpu/numa/cell memory", "", e))
}

/// The sum of the guest NUMA cells' memory (KiB), if there are cells.
pub(super) fn numa_total_kib(dom: &Domain) -> Result<Option<u64>> {
    let Some(numa) = numa(dom) else {
        return Ok(None);
    };
    let mut total = 0u64;
    for c in numa.children_named("cell") {
        total = total.saturating_add(cell_kib(c)?);
    }
    Ok(Some(total))
}

/// One backend and `-numa node` per cell, then the distances between them.
fn cells(a: &mut Argv, dom: &Domain, ctx: &LaunchContext, numa: &Element) -> Result<()> {
    let mut dists = Vec::new();
    for (i, cell) in numa.children_named("cell").enumerate() {
        let id: u32 = cell
            .parse_attr("id")
            .map_err(|e| unsupported("cpu/numa/cell id", "", e))?
            .unwrap_or(i as u32);
        let kib = cell_kib(cell)?;
        let discard = match cell.get_attr("discard") {
            None => None,
            Some("yes") => Some(true),
            Some("no") => Some(false),
            Some(d) => {
                return Err(unsupported(
                    "cpu/numa/cell discard",
                    d,
                    "expected yes or no",
                ))
            }
        };
        let r = Region {
            id: format!("ram-node{id}"),
            cell: Some(id),
            bytes: kib * 1024,
            access: cell.get_attr("memAccess").map(str::to_owned),
            discard,
        };
        a.pair("-object", backend(dom, ctx, &r)?.to_string());
        let mut node = format!("node,nodeid={id}");
        if let Some(cpus) = cell.get_attr("cpus") {
            let set = parse_set("cpu/numa/cell cpus", cpus)?;
            if set.iter().any(|c| *c >= dom.vcpus) {
                return Err(unsupported(
                    "cpu/numa/cell cpus",
                    cpus,
                    "names a vCPU beyond <vcpu>",
                ));
            }
            for r in ranges(&set) {
                node.push_str(&format!(",cpus={r}"));
            }
        }
        node.push_str(&format!(",memdev=ram-node{id}"));
        a.pair("-numa", node);
        for s in cell
            .first("distances")
            .into_iter()
            .flat_map(|d| d.children_named("sibling"))
        {
            let get = |k: &str| -> Result<u32> {
                s.parse_attr(k)
                    .map_err(|e| unsupported("cpu/numa/cell/distances/sibling", "", e))?
                    .ok_or_else(|| unsupported("cpu/numa/cell/distances/sibling", k, "missing"))
            };
            dists.push(format!(
                "dist,src={id},dst={},val={}",
                get("id")?,
                get("value")?
            ));
        }
    }
    for d in dists {
        a.pair("-numa", d);
    }
    Ok(())
}

/// The hugetlbfs mounts of this host as (page size KiB, mount point), the default
/// page size first: what `<hugepages>` is backed by.
pub fn hugetlbfs_mounts() -> Vec<(u64, PathBuf)> {
    let default_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("Hugepagesize:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(2048u64);
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut out: Vec<(u64, PathBuf)> = mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"hugetlbfs")).then_some(())?;
            let size = f
                .get(3)?
                .split(',')
                .find_map(|o| o.strip_prefix("pagesize="))
                .and_then(parse_page_size)
                .unwrap_or(default_kib);
            Some((size, PathBuf::from(f.get(1)?)))
        })
        .collect();
    out.sort_by_key(|(s, _)| *s != default_kib);
    out
}

/// `2M`, `1G`, `2048k` as KiB.
fn parse_page_size(s: &str) -> Option<u64> {
    let (num, mult) = match s.chars().last()? {
        'k' | 'K' => (&s[..s.len() - 1], 1),
        'M' => (&s[..s.len() - 1], 1024),
        'G' => (&s[..s.len() - 1], 1024 * 1024),
        _ => (s, 1),
    };
    num.parse::<u64>().ok().map(|n| n * mult)
}

/// Memory devices (`<devices><memory>`) built here.
pub(super) fn handles(el: &Element) -> bool {
    el.name == "memory"
        && matches!(
            el.get_attr("model"),
            Some("dimm" | "nvdimm" | "virtio-mem" | "virtio-pmem")
        )
}

/// A size child (`<size unit>N</size>`) in bytes.
fn size_bytes(el: Option<&Element>, what: &str) -> Result<Option<u64>> {
    let Some(el) = el else {
        return Ok(None);
    };
    let text = el.text();
    let v: u64 = text
        .trim()
        .parse()
        .map_err(|_| unsupported(what, &text, "not a number"))?;
    let kib = unit_to_kib(what, v, el.get_attr("unit").unwrap_or("KiB"))
        .map_err(|e| unsupported(what, &text, e))?;
    Ok(Some(kib * 1024))
}

/// The backend of a memory device: a file for NVDIMMs/virtio-pmem (its path) and
/// hugepages (the mount of its page size), else RAM; with its sharing, discard,
/// preallocation and host NUMA policy.
fn device_backend(
    dom: &Domain,
    ctx: &LaunchContext,
    m: &Element,
    node: Option<u32>,
    size: u64,
) -> Result<(&'static str, Map<String, Value>)> {
    const MIB2: u64 = 2 << 20;
    let model = m.get_attr("model").unwrap_or_default();
    let src = m.first("source");
    // The backend: a file for NVDIMMs/virtio-pmem and hugepages, else RAM.
    let mut o = Map::new();
    let path = src
        .and_then(|s| s.first("path"))
        .map(|p| PathBuf::from(p.text().trim()));
    let page = match src.and_then(|s| s.first("pagesize")) {
        Some(p) => Some(size_bytes(Some(p), "memory/source/pagesize")?.map(|b| b / 1024)),
        None if path.is_none() => hugepage(top(dom, "memoryBacking"), node)?,
        None => None,
    };
    let kind = if let Some(p) = &path {
        o.insert("mem-path".into(), Value::String(json_path(p)?));
        "memory-backend-file"
    } else if let Some(size) = page {
        let mount = ctx
            .hugetlbfs
            .iter()
            .find(|(kib, _)| size.is_none_or(|s| s == *kib))
            .map(|(_, p)| p.clone())
            .ok_or_else(|| {
                unsupported(
                    "memory/source/pagesize",
                    model,
                    "no hugetlbfs is mounted for this page size",
                )
            })?;
        o.insert("mem-path".into(), Value::String(json_path(&mount)?));
        "memory-backend-file"
    } else {
        "memory-backend-ram"
    };
    match m.get_attr("access") {
        None => {}
        Some("shared") => {
            o.insert("share".into(), json!(true));
        }
        Some("private") => {
            o.insert("share".into(), json!(false));
        }
        Some(x) => {
            return Err(unsupported(
                "memory access",
                x,
                "expected shared or private",
            ))
        }
    }
    if model == "virtio-pmem" {
        o.insert("share".into(), json!(true));
    }
    if let (Some(d), "memory-backend-file") = (m.get_attr("discard"), kind) {
        o.insert("discard-data".into(), json!(d == "yes"));
    }
    if model == "virtio-mem" {
        o.insert("reserve".into(), json!(false));
    } else if page.is_some() {
        o.insert("prealloc".into(), json!(true));
    }
    let aligned = if matches!(model, "dimm" | "nvdimm") {
        size.div_ceil(MIB2) * MIB2
    } else {
        size
    };
    o.insert("size".into(), json!(aligned));
    if let Some(mask) = src.and_then(|s| s.first("nodemask")) {
        let nodes = parse_set("memory/source/nodemask", mask.text().trim())?;
        o.insert(
            "host-nodes".into(),
            json!(nodes.into_iter().collect::<Vec<_>>()),
        );
        o.insert("policy".into(), json!("bind"));
    } else if let Some((nodes, policy)) = host_policy(dom, node)? {
        o.insert("host-nodes".into(), json!(nodes));
        o.insert("policy".into(), json!(policy));
    }
    Ok((kind, o))
}

/// Whether a memory device needs `-machine nvdimm=on`.
pub(super) fn has_nvdimm(dom: &Domain) -> bool {
    dom.devices
        .other
        .iter()
        .any(|e| e.name == "memory" && e.get_attr("model") == Some("nvdimm"))
}

/// DIMMs, NVDIMMs, virtio-mem and virtio-pmem devices with their backends, as libvirt
/// 9.0 writes them (DIMMs named by slot, sizes aligned to 2 MiB).
pub(super) fn memory_devices(
    a: &mut Argv,
    dom: &Domain,
    ctx: &LaunchContext,
    buses: &super::device::PciBuses,
) -> Result<()> {
    let mems: Vec<&Element> = dom.devices.other.iter().filter(|e| handles(e)).collect();
    if !mems.is_empty()
        && dom.max_memory.is_none()
        && mems
            .iter()
            .any(|m| m.get_attr("model") != Some("virtio-pmem"))
    {
        return Err(unsupported(
            "memory",
            "",
            "memory devices need <maxMemory slots>",
        ));
    }
    let mut slots_taken: BTreeSet<u32> = mems
        .iter()
        .filter_map(|m| m.first("address").and_then(|ad| ad.get_attr("slot")))
        .filter_map(|s| s.parse().ok())
        .collect();
    let mut counts = std::collections::BTreeMap::new();
    for m in mems {
        let model = m.get_attr("model").unwrap_or_default();
        let n = counts.entry(model).or_insert(0u32);
        let index = *n;
        *n += 1;
        let tgt = m.first("target");
        for c in m.elements() {
            if !matches!(c.name.as_str(), "source" | "target" | "address" | "alias") {
                return Err(unsupported(
                    &format!("memory/{}", c.name),
                    model,
                    "not implemented",
                ));
            }
        }
        let size = size_bytes(tgt.and_then(|t| t.first("size")), "memory/target/size")?
            .ok_or_else(|| unsupported("memory/target/size", model, "missing"))?;
        let node: Option<u32> = match tgt.and_then(|t| t.first("node")) {
            Some(n) => Some(
                n.text()
                    .trim()
                    .parse()
                    .map_err(|_| unsupported("memory/target/node", &n.text(), "not a number"))?,
            ),
            None => None,
        };
        let addr = Address::of(m).map_err(|e| unsupported("memory/address", model, e))?;
        let (prefix, dev_name) = match model {
            "dimm" => ("dimm", "pc-dimm"),
            "nvdimm" => ("nvdimm", "nvdimm"),
            "virtio-mem" => ("virtiomem", "virtio-mem-pci"),
            _ => ("virtiopmem", "virtio-pmem-pci"),
        };
        let slot = if matches!(model, "dimm" | "nvdimm") {
            let given = m
                .first("address")
                .and_then(|ad| ad.get_attr("slot"))
                .and_then(|s| s.parse::<u32>().ok());
            Some(match given {
                Some(s) => s,
                None => {
                    let s = (0..).find(|s| !slots_taken.contains(s)).unwrap_or(0);
                    slots_taken.insert(s);
                    s
                }
            })
        } else {
            None
        };
        let id = match slot {
            Some(s) => format!("{prefix}{s}"),
            None => format!("{prefix}{index}"),
        };
        let (kind, o) = device_backend(dom, ctx, m, node, size)?;
        let mut obj = Map::new();
        obj.insert("qom-type".into(), json!(kind));
        obj.insert("id".into(), json!(format!("mem{id}")));
        obj.extend(o);
        a.pair("-object", Value::Object(obj).to_string());
        let mut dev = DeviceProps::new(dev_name);
        if let Some(n) = node.filter(|_| model != "virtio-pmem") {
            dev = dev.uint("node", n.into());
        }
        if model == "virtio-mem" {
            let block = size_bytes(tgt.and_then(|t| t.first("block")), "memory/target/block")?
                .ok_or_else(|| unsupported("memory/target/block", model, "missing"))?;
            let req = size_bytes(
                tgt.and_then(|t| t.first("requested")),
                "memory/target/requested",
            )?
            .unwrap_or(0);
            dev = dev.uint("block-size", block).uint("requested-size", req);
        }
        dev = dev.str("memdev", format!("mem{id}")).str("id", id.as_str());
        if let Some(s) = slot {
            dev = dev.uint("slot", s.into());
            if let Some(base) = m.first("address").and_then(|ad| ad.get_attr("base")) {
                let b = u64::from_str_radix(base.trim_start_matches("0x"), 16)
                    .map_err(|_| unsupported("memory/address base", base, "not a hex number"))?;
                dev = dev.uint("addr", b);
            }
        } else {
            dev = dev.pci(buses, &addr);
        }
        a.device(&dev)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_and_ranges() {
        let s = parse_set("x", "0-3,8,^2,10-11").unwrap();
        assert_eq!(ranges(&s), vec!["0-1", "3", "8", "10-11"]);
        assert!(parse_set("x", "3-1").is_err());
        assert!(parse_set("x", "a").is_err());
        assert_eq!(parse_page_size("2M"), Some(2048));
        assert_eq!(parse_page_size("1G"), Some(1048576));
    }
}
