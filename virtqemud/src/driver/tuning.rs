//! Tuning through the domain's cgroup (`crate::cgroup`), as libvirt's QEMU driver does
//! it: `<cputune>` shares, periods and quotas, `<memtune>` limits, `<blkiotune>`
//! weights and throttles and `<numatune>`'s memory nodes, applied at start and read
//! and changed by Get/Set{Memory,BlockIO,Scheduler,Numa}Parameters. Live values are
//! read back from the cgroup files; the definitions follow what was set.

use std::collections::HashMap;
use std::sync::Arc;

use common::error::{ErrorCode, VirError};
use common::xml::{Element, Node};
use serde_json::Value as Json;
use zbus::zvariant::{OwnedValue, Str, Value};

use super::{no_definition, not_running, Dom, Driver, Impact};
use crate::cgroup::{Ctl, Dev, DomainGroup, Mem, Sub, UNLIMITED_KIB};
use crate::events::Tuned;
use crate::model::DomainDef;
use crate::qmp::Qmp;
use crate::xml::Domain;

/// VIR_TYPED_PARAM_STRING_OKAY: a Get caller that reads strings says so.
const STRING_OKAY: u32 = 4;

/// A (period, quota) pair of `<cputune>`; 0 is unset.
type Bw = (u64, i64);

/// `<cputune>`'s cgroup values.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct CpuTune {
    pub shares: Option<u64>,
    pub vcpu: Bw,
    pub global: Bw,
    pub emulator: Bw,
    pub iothread: Bw,
}

/// One `<blkiotune><device>`; 0 is unset.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct BlkDev {
    pub path: String,
    pub weight: u64,
    pub riops: u64,
    pub wiops: u64,
    pub rbps: u64,
    pub wbps: u64,
}

impl BlkDev {
    fn get(&self, d: Dev) -> u64 {
        match d {
            Dev::Weight => self.weight,
            Dev::ReadIops => self.riops,
            Dev::WriteIops => self.wiops,
            Dev::ReadBps => self.rbps,
            Dev::WriteBps => self.wbps,
        }
    }
    fn set(&mut self, d: Dev, v: u64) {
        match d {
            Dev::Weight => self.weight = v,
            Dev::ReadIops => self.riops = v,
            Dev::WriteIops => self.wiops = v,
            Dev::ReadBps => self.rbps = v,
            Dev::WriteBps => self.wbps = v,
        }
    }
}

/// libvirt's typed-parameter name, `<device>` child and knob of each device field.
const DEV_FIELDS: [(&str, &str, Dev); 5] = [
    ("device_weight", "weight", Dev::Weight),
    ("device_read_iops_sec", "read_iops_sec", Dev::ReadIops),
    ("device_write_iops_sec", "write_iops_sec", Dev::WriteIops),
    ("device_read_bytes_sec", "read_bytes_sec", Dev::ReadBps),
    ("device_write_bytes_sec", "write_bytes_sec", Dev::WriteBps),
];

/// virDomainNumatuneMemMode.
const NUMA_MODES: [&str; 4] = ["strict", "preferred", "interleave", "restrictive"];

/// The cgroup-backed tuning of a definition.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Tuning {
    pub cpu: CpuTune,
    /// KiB; None is unlimited.
    pub hard: Option<u64>,
    pub soft: Option<u64>,
    pub swap: Option<u64>,
    pub min_guarantee: bool,
    pub weight: u32,
    pub devices: Vec<BlkDev>,
    pub numa_mode: i32,
    pub nodeset: Option<String>,
}

fn section<'a>(dom: &'a Domain, name: &str) -> Option<&'a Element> {
    dom.other.iter().find(|e| e.name == name)
}

fn num<T: std::str::FromStr>(sec: &str, e: &Element) -> Result<T, VirError> {
    let t = e.text();
    t.trim().parse().map_err(|_| {
        VirError::xml(format!(
            "invalid value '{}' of <{sec}><{}>",
            t.trim(),
            e.name
        ))
    })
}

impl Tuning {
    pub fn of(dom: &Domain) -> Result<Tuning, VirError> {
        let mut t = Tuning::default();
        if let Some(c) = section(dom, "cputune") {
            for e in c.elements() {
                let bw = match e.name.as_str() {
                    "shares" => {
                        t.cpu.shares = Some(num("cputune", e)?);
                        continue;
                    }
                    "period" | "quota" => &mut t.cpu.vcpu,
                    "global_period" | "global_quota" => &mut t.cpu.global,
                    "emulator_period" | "emulator_quota" => &mut t.cpu.emulator,
                    "iothread_period" | "iothread_quota" => &mut t.cpu.iothread,
                    _ => continue,
                };
                if e.name.ends_with("period") {
                    bw.0 = num("cputune", e)?;
                } else {
                    bw.1 = num("cputune", e)?;
                }
            }
        }
        if let Some(m) = section(dom, "memtune") {
            for e in m.elements() {
                let v: u64 = num("memtune", e)?;
                let v = Some(v).filter(|v| *v < UNLIMITED_KIB);
                match e.name.as_str() {
                    "hard_limit" => t.hard = v,
                    "soft_limit" => t.soft = v,
                    "swap_hard_limit" => t.swap = v,
                    "min_guarantee" => t.min_guarantee = true,
                    _ => {}
                }
            }
        }
        if let Some(b) = section(dom, "blkiotune") {
            for e in b.elements() {
                match e.name.as_str() {
                    "weight" => t.weight = num("blkiotune", e)?,
                    "device" => {
                        let mut d = BlkDev {
                            path: e.child_text("path").unwrap_or_default().trim().to_owned(),
                            ..BlkDev::default()
                        };
                        for f in e.elements() {
                            if let Some((_, _, k)) = DEV_FIELDS.iter().find(|x| x.1 == f.name) {
                                d.set(*k, num("blkiotune", f)?);
                            }
                        }
                        t.devices.push(d);
                    }
                    _ => {}
                }
            }
        }
        if let Some(m) = section(dom, "numatune").and_then(|n| n.first("memory")) {
            let mode = m.get_attr("mode").unwrap_or("strict");
            t.numa_mode = NUMA_MODES.iter().position(|x| *x == mode).unwrap_or(0) as i32;
            t.nodeset = m.get_attr("nodeset").map(str::to_owned);
        }
        Ok(t)
    }

    /// Writes the values back into `dom` as libvirt formats them, keeping the other
    /// children (pins, `memnode`s) where they are.
    pub fn put(&self, dom: &mut Domain) {
        let c = &self.cpu;
        let mut cpu = Vec::new();
        if let Some(s) = c.shares {
            cpu.push(Element::with_text("shares", s.to_string()));
        }
        for (p, q, bw) in [
            ("period", "quota", c.vcpu),
            ("global_period", "global_quota", c.global),
            ("emulator_period", "emulator_quota", c.emulator),
            ("iothread_period", "iothread_quota", c.iothread),
        ] {
            if bw.0 != 0 {
                cpu.push(Element::with_text(p, bw.0.to_string()));
            }
            if bw.1 != 0 {
                cpu.push(Element::with_text(q, bw.1.to_string()));
            }
        }
        const CPU: &[&str] = &[
            "shares",
            "period",
            "quota",
            "global_period",
            "global_quota",
            "emulator_period",
            "emulator_quota",
            "iothread_period",
            "iothread_quota",
        ];
        replace_section(dom, "cputune", cpu, CPU);
        let mut mem = Vec::new();
        for (n, v) in [("hard_limit", self.hard), ("soft_limit", self.soft)] {
            if let Some(v) = v {
                mem.push(Element::with_text(n, v.to_string()).attr("unit", "KiB"));
            }
        }
        if let Some(v) = self.swap {
            mem.push(Element::with_text("swap_hard_limit", v.to_string()).attr("unit", "KiB"));
        }
        replace_section(
            dom,
            "memtune",
            mem,
            &["hard_limit", "soft_limit", "swap_hard_limit"],
        );
        let mut blk = Vec::new();
        if self.weight != 0 {
            blk.push(Element::with_text("weight", self.weight.to_string()));
        }
        for d in &self.devices {
            let mut e = Element::new("device").child(Element::with_text("path", d.path.clone()));
            for (_, tag, k) in DEV_FIELDS {
                if d.get(k) != 0 {
                    e.push(Element::with_text(tag, d.get(k).to_string()));
                }
            }
            if e.elements().count() > 1 {
                blk.push(e);
            }
        }
        replace_section(dom, "blkiotune", blk, &["weight", "device"]);
        self.put_numa(dom);
    }

    fn put_numa(&self, dom: &mut Domain) {
        let mode = NUMA_MODES
            .get(self.numa_mode as usize)
            .copied()
            .unwrap_or("strict");
        let at = dom.other.iter().position(|e| e.name == "numatune");
        if at.is_none() && self.nodeset.is_none() {
            return;
        }
        let i = at.unwrap_or_else(|| {
            dom.other.push(Element::new("numatune"));
            dom.other.len() - 1
        });
        let n = &mut dom.other[i];
        let mem = n.children.iter_mut().find_map(|c| match c {
            Node::Element(e) if e.name == "memory" => Some(e),
            _ => None,
        });
        let mem = match mem {
            Some(m) => m,
            None => {
                n.children.insert(0, Node::Element(Element::new("memory")));
                match &mut n.children[0] {
                    Node::Element(e) => e,
                    Node::Text(_) => return,
                }
            }
        };
        mem.attrs.retain(|(k, _)| k != "mode" && k != "nodeset");
        mem.attrs.insert(0, ("mode".into(), mode.into()));
        if let Some(s) = &self.nodeset {
            mem.attrs.retain(|(k, _)| k != "placement");
            mem.attrs.push(("nodeset".into(), s.clone()));
        }
    }
}

/// Sets section `name` to `fields` followed by its other children (those not named in
/// `own`); drops it when nothing is left.
fn replace_section(dom: &mut Domain, name: &str, fields: Vec<Element>, own: &[&str]) {
    let at = dom.other.iter().position(|e| e.name == name);
    let mut el = match at {
        Some(i) => dom.other[i].clone(),
        None => Element::new(name),
    };
    let rest: Vec<Node> = el
        .children
        .drain(..)
        .filter(|c| match c {
            Node::Element(e) => !own.contains(&e.name.as_str()),
            Node::Text(_) => false,
        })
        .collect();
    el.children = fields.into_iter().map(Node::Element).collect();
    el.children.extend(rest);
    let empty = el.children.is_empty();
    match (at, empty) {
        (Some(i), true) => {
            dom.other.remove(i);
        }
        (Some(i), false) => dom.other[i] = el,
        (None, false) => dom.other.push(el),
        (None, true) => {}
    }
}

/// libvirt's typed-parameter types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    ULLong,
    LLong,
    UInt,
    Int,
    Str,
}

impl Ty {
    fn name(self) -> &'static str {
        match self {
            Ty::ULLong => "ullong",
            Ty::LLong => "llong",
            Ty::UInt => "uint",
            Ty::Int => "int",
            Ty::Str => "string",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Val {
    U(u64),
    I(i64),
    S(String),
}

fn type_of(v: &Value<'_>) -> (&'static str, Option<Val>) {
    match v {
        Value::U64(n) => ("ullong", Some(Val::U(*n))),
        Value::I64(n) => ("llong", Some(Val::I(*n))),
        Value::U32(n) => ("uint", Some(Val::U(u64::from(*n)))),
        Value::I32(n) => ("int", Some(Val::I(i64::from(*n)))),
        Value::Str(s) => ("string", Some(Val::S(s.to_string()))),
        Value::Bool(_) => ("boolean", None),
        Value::F64(_) => ("double", None),
        _ => ("unknown", None),
    }
}

/// virTypedParamsValidate: every name known, every value of its type. Sorted by name.
fn validate(
    params: &HashMap<String, OwnedValue>,
    allowed: &[(&str, Ty)],
) -> Result<Vec<(String, Val)>, VirError> {
    let mut names: Vec<&String> = params.keys().collect();
    names.sort();
    let mut out = Vec::new();
    for k in names {
        let Some((_, ty)) = allowed.iter().find(|(n, _)| *n == k.as_str()) else {
            return Err(VirError::new(
                ErrorCode::ArgumentUnsupported,
                format!("parameter '{k}' not supported"),
            ));
        };
        let (got, val) = type_of(&params[k]);
        match val {
            Some(v) if got == ty.name() => out.push((k.clone(), v)),
            _ => {
                return Err(VirError::invalid_arg(format!(
                    "invalid type '{got}' for parameter '{k}', expected '{}'",
                    ty.name()
                )))
            }
        }
    }
    Ok(out)
}

fn u(v: &Val) -> u64 {
    match v {
        Val::U(n) => *n,
        Val::I(n) => *n as u64,
        Val::S(_) => 0,
    }
}
fn i(v: &Val) -> i64 {
    match v {
        Val::I(n) => *n,
        Val::U(n) => *n as i64,
        Val::S(_) => 0,
    }
}

fn session_refusal(code: ErrorCode, what: &str) -> VirError {
    VirError::new(
        code,
        format!("{what} tuning is not available in session mode"),
    )
}

/// `MAJ:MIN ` of a block device, as libvirt's virCgroupGetBlockDevString needs it.
fn block_dev(path: &str) -> Result<String, VirError> {
    use std::os::unix::fs::FileTypeExt;
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(path)
        .map_err(|e| VirError::system(format!("Unable to get device ID '{path}'"), &e))?;
    if !md.file_type().is_block_device() {
        return Err(VirError::operation_invalid(format!(
            "Path '{path}' must be a block device"
        )));
    }
    let r = md.rdev();
    Ok(format!("{}:{}", libc::major(r), libc::minor(r)))
}

/// `path,value[,path,value...]` (virDomainDriverParseBlkioDeviceStr).
fn parse_devices(field: &str, s: &str) -> Result<Vec<(String, u64)>, VirError> {
    if s.is_empty() {
        return Ok(Vec::new());
    }
    let parts: Vec<&str> = s.split(',').collect();
    if parts.len() % 2 != 0 {
        return Err(VirError::invalid_arg(format!(
            "unable to parse blkio device '{field}' '{s}'"
        )));
    }
    parts
        .chunks(2)
        .map(|c| {
            let v = c[1].parse::<u64>().map_err(|_| {
                VirError::invalid_arg(format!(
                    "invalid value '{}' for parameter '{field}' of device '{}'",
                    c[1], c[0]
                ))
            })?;
            Ok((c[0].to_owned(), v))
        })
        .collect()
}

/// The nodes of this host (`/sys/devices/system/node/online`; one node without it).
fn host_nodes() -> Vec<usize> {
    std::fs::read_to_string("/sys/devices/system/node/online")
        .ok()
        .and_then(|s| crate::pinning::parse_list(s.trim()).ok())
        .unwrap_or_else(|| vec![0])
}

fn record(pairs: Vec<(&str, OwnedValue)>) -> HashMap<String, OwnedValue> {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

fn text(s: String) -> OwnedValue {
    OwnedValue::from(Str::from(s))
}

/// The thread groups that exist for the CPU controller, from QEMU's threads.
async fn vcpu_threads(qmp: &Qmp) -> Vec<(u32, u32)> {
    let Ok(cpus) = qmp.execute("query-cpus-fast", None).await else {
        return Vec::new();
    };
    cpus.as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| {
            let idx = c.get("cpu-index").and_then(Json::as_u64)?;
            let tid = c.get("thread-id").and_then(Json::as_u64)?;
            Some((idx as u32, tid as u32))
        })
        .collect()
}

async fn iothread_threads(qmp: &Qmp) -> Vec<(u32, u32)> {
    let Ok(list) = qmp.execute("query-iothreads", None).await else {
        return Vec::new();
    };
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| {
            let id = t
                .get("id")
                .and_then(Json::as_str)?
                .strip_prefix("iothread")?
                .parse()
                .ok()?;
            let tid = t.get("thread-id").and_then(Json::as_u64)?;
            Some((id, tid as u32))
        })
        .collect()
}

/// Moves thread `tid` to group `sub`, keeping its CPU affinity: the kernel resets it
/// to the cpuset group's CPUs on the move, which would undo `<vcpu cpuset>` and pins.
fn move_thread(g: &DomainGroup, sub: Sub, tid: u32) -> Result<(), VirError> {
    let t = nix::unistd::Pid::from_raw(tid as i32);
    let before = nix::sched::sched_getaffinity(t).ok();
    g.b().move_thread(g.rel(), sub, tid)?;
    if let Some(set) = before {
        // A thread that exited meanwhile has nothing to keep.
        let _ = nix::sched::sched_setaffinity(t, &set);
    }
    Ok(())
}

fn set_bw(g: &DomainGroup, sub: Sub, bw: Bw) -> Result<(), VirError> {
    if bw.0 != 0 {
        g.b().set_period(g.rel(), sub, bw.0)?;
    }
    if bw.1 != 0 {
        g.b().set_quota(g.rel(), sub, bw.1)?;
    }
    Ok(())
}

/// The thread groups of a running domain: its `vcpuN`, then its `iothreadN`.
fn thread_subs(g: &DomainGroup) -> (Vec<Sub>, Vec<Sub>) {
    g.b()
        .subs(g.rel())
        .into_iter()
        .partition(|s| matches!(s, Sub::Vcpu(_)))
}

/// Applies the domain-wide knobs (shares, global bandwidth, memory, block I/O): before
/// QEMU runs.
fn apply_domain(g: &DomainGroup, t: &Tuning) -> Result<(), VirError> {
    let (b, rel) = (g.b(), g.rel());
    if t.cpu.shares.is_some() && !b.has(Ctl::Cpu) {
        return Err(VirError::unsupported(
            "CPU tuning is not available on this host",
        ));
    }
    if let Some(s) = t.cpu.shares {
        b.set_shares(rel, s)?;
    }
    set_bw(g, Sub::Domain, t.cpu.global)?;
    let mem = [
        (Mem::Hard, t.hard),
        (Mem::Soft, t.soft),
        (Mem::Swap, t.swap),
    ];
    if mem.iter().any(|(_, v)| v.is_some()) && !b.has(Ctl::Memory) {
        return Err(VirError::unsupported(
            "Memory cgroup is not available on this host",
        ));
    }
    for (m, v) in mem {
        if let Some(kib) = v {
            b.set_mem(rel, m, kib)?;
        }
    }
    if (t.weight != 0 || !t.devices.is_empty()) && !b.has(Ctl::Blkio) {
        return Err(VirError::unsupported(
            "Block I/O tuning is not available on this host",
        ));
    }
    if t.weight != 0 {
        b.set_blkio_weight(rel, t.weight)?;
    }
    for d in &t.devices {
        let dev = block_dev(&d.path)?;
        for (_, _, k) in DEV_FIELDS {
            if d.get(k) != 0 {
                b.set_device(rel, k, &dev, d.get(k))?;
            }
        }
    }
    Ok(())
}

/// Puts QEMU's threads in their groups (all in `emulator`, each vCPU and I/O thread in
/// its own) and applies the per-thread knobs: after QMP answers, before the guest runs.
pub(super) async fn place_threads(
    g: &DomainGroup,
    qmp: &Qmp,
    pid: u32,
    def: &DomainDef,
) -> Result<(), VirError> {
    let t = Tuning::of(&def.dom)?;
    let (b, rel) = (g.b(), g.rel());
    // v1 put QEMU there before exec; v2 moves its threads down from the domain group.
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for tid in tasks
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse().ok())
        {
            let _ = move_thread(g, Sub::Emulator, tid);
        }
    }
    let vcpus = vcpu_threads(qmp).await;
    let iothreads = iothread_threads(qmp).await;
    let subs: Vec<Sub> = vcpus
        .iter()
        .map(|(i, _)| Sub::Vcpu(*i))
        .chain(iothreads.iter().map(|(i, _)| Sub::IoThread(*i)))
        .collect();
    g.create(&subs)?;
    for (i, tid) in &vcpus {
        move_thread(g, Sub::Vcpu(*i), *tid)?;
        set_bw(g, Sub::Vcpu(*i), t.cpu.vcpu)?;
    }
    for (i, tid) in &iothreads {
        move_thread(g, Sub::IoThread(*i), *tid)?;
        set_bw(g, Sub::IoThread(*i), t.cpu.iothread)?;
    }
    set_bw(g, Sub::Emulator, t.cpu.emulator)?;
    // Strict (or cgroup-only) memory nodes: cpuset.mems of every thread group.
    if let (Some(nodes), true) = (&t.nodeset, matches!(t.numa_mode, 0 | 3)) {
        if b.has(Ctl::Cpuset) {
            for s in std::iter::once(Sub::Emulator).chain(subs) {
                b.set_mems(rel, s, nodes)?;
            }
        }
    }
    Ok(())
}

impl Driver {
    /// After a vCPU hotplug or unplug: each online vCPU's thread in its own group with
    /// the definition's period and quota (and nodes), the groups of vCPUs gone removed,
    /// as libvirt's qemuProcessSetupVcpu and its unplug do. Best effort: the vCPUs run
    /// either way, a failure is logged.
    pub(super) async fn regroup_vcpus(&self, dom: &Dom) {
        let found = {
            let g = dom.lock();
            g.live.as_ref().and_then(|l| {
                let grp = self.cgroup_of(l.id, &l.def.name)?;
                Some((grp, l.qmp.clone(), l.def.clone()))
            })
        };
        let Some((g, qmp, def)) = found.filter(|(g, _, _)| g.exists()) else {
            return;
        };
        let online = vcpu_threads(&qmp).await;
        let r = (|| -> Result<(), VirError> {
            let t = Tuning::of(&def.dom)?;
            let (b, rel) = (g.b(), g.rel());
            let subs: Vec<Sub> = online.iter().map(|(i, _)| Sub::Vcpu(*i)).collect();
            g.create(&subs)?;
            for (i, tid) in &online {
                move_thread(&g, Sub::Vcpu(*i), *tid)?;
                set_bw(&g, Sub::Vcpu(*i), t.cpu.vcpu)?;
                if let (Some(nodes), true) = (&t.nodeset, matches!(t.numa_mode, 0 | 3)) {
                    if b.has(Ctl::Cpuset) {
                        b.set_mems(rel, Sub::Vcpu(*i), nodes)?;
                    }
                }
            }
            Ok(())
        })();
        if let Err(e) = r {
            tracing::warn!(domain = %def.name, "vCPU cgroups: {e}");
        }
        let (vcpus, _) = thread_subs(&g);
        for s in vcpus
            .into_iter()
            .filter(|s| !online.iter().any(|(i, _)| Sub::Vcpu(*i) == *s))
        {
            g.remove_sub(s);
        }
    }

    /// The group of run `id` of domain `name`: None in session mode and on a host
    /// without cgroups.
    pub(super) fn cgroup_of(&self, id: u32, name: &str) -> Option<DomainGroup> {
        self.cgroups.as_ref().map(|c| c.domain(id, name))
    }

    fn session(&self) -> bool {
        !matches!(self.ctx.settings.mode, common::cli::Mode::System)
    }

    /// Before QEMU exists: its group with the domain-wide knobs written. None in
    /// session mode, where libvirt places no cgroup and leaves the tunables be.
    /// `held` has the group before any folder is made, so a failure here still
    /// removes what was made.
    pub(super) fn make_group(
        &self,
        dom: &Domain,
        id: u32,
        name: &str,
        held: &mut Option<DomainGroup>,
    ) -> Result<(), VirError> {
        if self.session() {
            return Ok(());
        }
        let t = Tuning::of(dom)?;
        let Some(g) = self.cgroup_of(id, name) else {
            return apply_domain_without_cgroups(&t);
        };
        *held = Some(g.clone());
        g.create(&[Sub::Emulator])?;
        tracing::info!(domain = %name, group = %g.rel(), kind = g.b().kind(), "cgroup");
        Ok(())
    }

    /// The knobs of a group made by [`Driver::make_group`]; an error leaves the group
    /// to the run's release.
    pub(super) fn tune_group(g: &DomainGroup, dom: &Domain) -> Result<(), VirError> {
        apply_domain(g, &Tuning::of(dom)?)
    }

    /// The running domain's group and live definition, for the Set/Get calls.
    fn live_group(
        &self,
        dom: &Dom,
        ctl: Ctl,
        what: &str,
    ) -> Result<(DomainGroup, DomainDef), VirError> {
        let g = dom.lock();
        let l = g.live.as_ref().ok_or_else(not_running)?;
        let grp = self
            .cgroup_of(l.id, &l.def.name)
            .filter(|c| c.b().has(ctl) && c.exists())
            .ok_or_else(|| VirError::operation_invalid(what.to_owned()))?;
        Ok((grp, l.def.clone()))
    }

    /// Which definition a Get reads: the config (CONFIG, or CURRENT while inactive) or
    /// the running one.
    fn get_def(&self, dom: &Dom, flags: u32) -> Result<(bool, DomainDef), VirError> {
        let impact: Impact = common::error::flags(flags & !STRING_OKAY)?;
        let g = dom.lock();
        let config =
            impact.contains(Impact::CONFIG) || (!impact.contains(Impact::LIVE) && g.live.is_none());
        if config {
            let def = g.config.clone().ok_or_else(|| {
                VirError::operation_invalid("transient domains do not have any persistent config")
            })?;
            return Ok((true, def));
        }
        let l = g.live.as_ref().ok_or_else(not_running)?;
        Ok((false, l.def.clone()))
    }

    /// Runs `change` over the live and/or config definitions' tuning (libvirt's
    /// impact flags): `live` first applies it to the cgroup; the status and the config
    /// are written after. Nothing is written when `change` fails.
    async fn retune(
        &self,
        dom: &Arc<Dom>,
        flags: u32,
        live: impl FnOnce(&DomainGroup, &Tuning) -> Result<Tuning, VirError>,
        config: impl FnOnce(&Tuning) -> Result<Tuning, VirError>,
        ctl: (Ctl, &str),
    ) -> Result<Option<Tuning>, VirError> {
        let (on_live, on_config) = super::settings::affected(dom, flags)?;
        let mut cfg_def = None;
        if on_config {
            let mut def = dom.lock().config.clone().ok_or_else(no_definition)?;
            let t = config(&Tuning::of(&def.dom)?)?;
            t.put(&mut def.dom);
            cfg_def = Some(def);
        }
        let mut applied = None;
        if on_live {
            let (g, def) = self.live_group(dom, ctl.0, ctl.1)?;
            let t = live(&g, &Tuning::of(&def.dom)?)?;
            if let Some(l) = dom.lock().live.as_mut() {
                t.put(&mut l.def.dom);
            }
            self.save_status(dom).await;
            applied = Some(t);
        }
        if let Some(def) = cfg_def {
            self.put_config(dom, def).await?;
        }
        Ok(applied)
    }
}

fn apply_domain_without_cgroups(t: &Tuning) -> Result<(), VirError> {
    let cpu = &t.cpu;
    if cpu.shares.is_some() {
        return Err(VirError::unsupported(
            "CPU tuning is not available on this host",
        ));
    }
    if t.hard.is_some() || t.soft.is_some() || t.swap.is_some() {
        return Err(VirError::unsupported(
            "Memory cgroup is not available on this host",
        ));
    }
    if t.weight != 0 || !t.devices.is_empty() {
        return Err(VirError::unsupported(
            "Block I/O tuning is not available on this host",
        ));
    }
    if [cpu.vcpu, cpu.global, cpu.emulator, cpu.iothread]
        .iter()
        .any(|bw| *bw != (0, 0))
    {
        return Err(VirError::unsupported(
            "CPU tuning is not available on this host",
        ));
    }
    Ok(())
}

const MEM_FIELDS: [(&str, Mem); 3] = [
    ("hard_limit", Mem::Hard),
    ("soft_limit", Mem::Soft),
    ("swap_hard_limit", Mem::Swap),
];

fn mem_of(t: &Tuning, m: Mem) -> u64 {
    match m {
        Mem::Hard => t.hard,
        Mem::Soft => t.soft,
        Mem::Swap => t.swap,
    }
    .unwrap_or(UNLIMITED_KIB)
}

fn with_mem(t: &Tuning, set: &[(Mem, u64)]) -> Result<Tuning, VirError> {
    let mut n = t.clone();
    for (m, v) in set {
        let v = Some(*v).filter(|v| *v < UNLIMITED_KIB);
        match m {
            Mem::Hard => n.hard = v,
            Mem::Soft => n.soft = v,
            Mem::Swap => n.swap = v,
        }
    }
    Ok(n)
}

impl Driver {
    /// GetMemoryParameters: hard_limit, soft_limit, swap_hard_limit in KiB.
    pub fn memory_parameters(
        &self,
        dom: &Dom,
        flags: u32,
    ) -> Result<HashMap<String, OwnedValue>, VirError> {
        if self.session() {
            return Err(session_refusal(ErrorCode::OperationUnsupported, "Memory"));
        }
        let (config, def) = self.get_def(dom, flags)?;
        let mut vals = Vec::new();
        if config {
            let t = Tuning::of(&def.dom)?;
            for (n, m) in MEM_FIELDS {
                vals.push((n, OwnedValue::from(mem_of(&t, m))));
            }
        } else {
            let (g, _) =
                self.live_group(dom, Ctl::Memory, "cgroup memory controller is not mounted")?;
            for (n, m) in MEM_FIELDS {
                let v = match g.b().mem(g.rel(), m) {
                    Ok(v) => v,
                    // A kernel without swap accounting: libvirt answers unlimited.
                    Err(_) if m == Mem::Swap => UNLIMITED_KIB,
                    Err(e) => return Err(e),
                };
                vals.push((n, OwnedValue::from(v)));
            }
        }
        Ok(record(vals))
    }

    /// SetMemoryParameters, with libvirt's order: soft first; the hard limit before
    /// the swap limit when it goes down, after it otherwise.
    pub async fn set_memory_parameters(
        &self,
        dom: &Arc<Dom>,
        params: &HashMap<String, OwnedValue>,
        flags: u32,
    ) -> Result<(), VirError> {
        let allowed: Vec<(&str, Ty)> = MEM_FIELDS.iter().map(|(n, _)| (*n, Ty::ULLong)).collect();
        let vals = validate(params, &allowed)?;
        if self.session() {
            return Err(session_refusal(ErrorCode::OperationUnsupported, "Memory"));
        }
        let set: Vec<(Mem, u64)> = vals
            .iter()
            .filter_map(|(k, v)| MEM_FIELDS.iter().find(|f| f.0 == k).map(|f| (f.1, u(v))))
            .collect();
        let _call = self.calls.enter();
        let _lock = dom.begin_job().await;
        // Checked against the running definition when there is one, as libvirt does.
        let base = {
            let g = dom.lock();
            match (&g.live, &g.config) {
                (Some(l), _) => Tuning::of(&l.def.dom)?,
                (None, Some(c)) => Tuning::of(&c.dom)?,
                (None, None) => return Err(no_definition()),
            }
        };
        let next = with_mem(&base, &set)?;
        let has = |m: Mem| set.iter().any(|(x, _)| *x == m);
        if (has(Mem::Hard) || has(Mem::Swap)) && mem_of(&next, Mem::Hard) > mem_of(&next, Mem::Swap)
        {
            return Err(VirError::invalid_arg(
                "memory hard_limit tunable value must be lower than or equal to swap_hard_limit",
            ));
        }
        let value = |m: Mem| set.iter().find(|(x, _)| *x == m).map(|(_, v)| *v);
        self.retune(
            dom,
            flags,
            |g, t| {
                let (b, rel) = (g.b(), g.rel());
                if let Some(v) = value(Mem::Soft) {
                    b.set_mem(rel, Mem::Soft, v)?;
                }
                let hard = value(Mem::Hard);
                let lowering = hard.is_some_and(|h| h < mem_of(t, Mem::Hard));
                if let (Some(h), true) = (hard, lowering) {
                    b.set_mem(rel, Mem::Hard, h)?;
                }
                if let Some(v) = value(Mem::Swap) {
                    b.set_mem(rel, Mem::Swap, v)?;
                }
                if let (Some(h), false) = (hard, lowering) {
                    b.set_mem(rel, Mem::Hard, h)?;
                }
                with_mem(t, &set)
            },
            |t| with_mem(t, &set),
            (Ctl::Memory, "cgroup memory controller is not mounted"),
        )
        .await?;
        Ok(())
    }

    /// GetSchedulerParameters: the shares and every period/quota pair.
    pub fn scheduler_parameters(
        &self,
        dom: &Dom,
        flags: u32,
    ) -> Result<HashMap<String, OwnedValue>, VirError> {
        if self.session() {
            return Err(session_refusal(ErrorCode::ConfigUnsupported, "CPU"));
        }
        let (config, def) = self.get_def(dom, flags)?;
        let c = if config {
            Tuning::of(&def.dom)?.cpu
        } else {
            let (g, _) = self.live_group(dom, Ctl::Cpu, "cgroup CPU controller is not mounted")?;
            let (vcpus, io) = thread_subs(&g);
            let bw = |s: Option<&Sub>| s.map_or(Ok((0, 0)), |s| g.b().bandwidth(g.rel(), *s));
            CpuTune {
                shares: Some(g.b().shares(g.rel())?),
                vcpu: bw(vcpus.first())?,
                global: bw(Some(&Sub::Domain))?,
                emulator: bw(Some(&Sub::Emulator))?,
                iothread: bw(io.first())?,
            }
        };
        Ok(record(sched_pairs(&c)))
    }

    /// SetSchedulerParameters: libvirt's range checks first, then each value; a live
    /// change is told by the Tunable signal (`cputune.*`).
    pub async fn set_scheduler_parameters(
        &self,
        dom: &Arc<Dom>,
        params: &HashMap<String, OwnedValue>,
        flags: u32,
    ) -> Result<(), VirError> {
        let allowed: Vec<(&str, Ty)> = SCHED
            .iter()
            .map(|n| {
                (
                    *n,
                    if n.ends_with("_quota") {
                        Ty::LLong
                    } else {
                        Ty::ULLong
                    },
                )
            })
            .collect();
        let vals = validate(params, &allowed)?;
        if self.session() {
            return Err(session_refusal(ErrorCode::ConfigUnsupported, "CPU"));
        }
        for (k, v) in &vals {
            let (lo, hi, x) = if k.ends_with("_period") {
                (
                    crate::cgroup::PERIOD_MIN as i128,
                    crate::cgroup::PERIOD_MAX as i128,
                    u(v) as i128,
                )
            } else if k.ends_with("_quota") {
                (
                    crate::cgroup::QUOTA_MIN as i128,
                    crate::cgroup::QUOTA_MAX as i128,
                    i(v) as i128,
                )
            } else {
                continue;
            };
            if (x > 0 && x < lo) || x > hi {
                return Err(VirError::invalid_arg(format!(
                    "value of '{k}' is out of range [{lo}, {hi}]"
                )));
            }
        }
        let _call = self.calls.enter();
        let _lock = dom.begin_job().await;
        let merge = |t: &Tuning, vals: &[(String, Val)]| {
            let mut n = t.clone();
            for (k, v) in vals {
                let c = &mut n.cpu;
                match k.as_str() {
                    "cpu_shares" => c.shares = Some(u(v)),
                    "vcpu_period" => c.vcpu.0 = u(v),
                    "vcpu_quota" => c.vcpu.1 = i(v),
                    "global_period" => c.global.0 = u(v),
                    "global_quota" => c.global.1 = i(v),
                    "emulator_period" => c.emulator.0 = u(v),
                    "emulator_quota" => c.emulator.1 = i(v),
                    "iothread_period" => c.iothread.0 = u(v),
                    "iothread_quota" => c.iothread.1 = i(v),
                    _ => {}
                }
            }
            n
        };
        let mut event = Vec::new();
        let applied = self
            .retune(
                dom,
                flags,
                |g, t| {
                    let (b, rel) = (g.b(), g.rel());
                    let (vsubs, iosubs) = thread_subs(g);
                    // A period or quota of 0 changes nothing live (libvirt), not even
                    // the live definition.
                    let set: Vec<(String, Val)> = vals
                        .iter()
                        .filter(|(k, v)| k == "cpu_shares" || u(v) != 0)
                        .cloned()
                        .collect();
                    let mut n = merge(t, &set);
                    for (k, v) in &vals {
                        let subs: Vec<Sub> = match k.split('_').next() {
                            Some("vcpu") => vsubs.clone(),
                            Some("iothread") => iosubs.clone(),
                            Some("emulator") => vec![Sub::Emulator],
                            Some("global") => vec![Sub::Domain],
                            _ => {
                                b.set_shares(rel, u(v))?;
                                // The kernel may round it: what it took is the value.
                                let got = b.shares(rel)?;
                                n.cpu.shares = Some(got);
                                event.push(("cputune.cpu_shares".to_owned(), Tuned::Number(got)));
                                continue;
                            }
                        };
                        // 0 leaves the live value as it is (libvirt).
                        if u(v) == 0 {
                            continue;
                        }
                        for s in subs {
                            if k.ends_with("_period") {
                                b.set_period(rel, s, u(v))?;
                            } else {
                                b.set_quota(rel, s, i(v))?;
                            }
                        }
                        let tuned = if k.ends_with("_period") {
                            Tuned::Number(u(v))
                        } else {
                            Tuned::Signed(i(v))
                        };
                        event.push((format!("cputune.{k}"), tuned));
                    }
                    Ok(n)
                },
                |t| Ok(merge(t, &vals)),
                (Ctl::Cpu, "cgroup CPU controller is not mounted"),
            )
            .await?;
        if applied.is_some() && !event.is_empty() {
            self.tuned(dom, event).await;
        }
        Ok(())
    }

    /// GetBlockIOParameters: the weight (the cgroup's, live) and each device's
    /// weights and throttles as `path,value` lists.
    pub fn blkio_parameters(
        &self,
        dom: &Dom,
        flags: u32,
    ) -> Result<HashMap<String, OwnedValue>, VirError> {
        if self.session() {
            return Err(session_refusal(ErrorCode::ConfigUnsupported, "Block I/O"));
        }
        let (config, def) = self.get_def(dom, flags)?;
        let t = Tuning::of(&def.dom)?;
        let weight = if config {
            t.weight
        } else {
            let (g, _) = self.live_group(dom, Ctl::Blkio, "blkio cgroup isn't mounted")?;
            g.b().blkio_weight(g.rel())?
        };
        let mut vals = vec![("weight", OwnedValue::from(weight))];
        for (name, _, k) in DEV_FIELDS {
            let list: Vec<String> = t
                .devices
                .iter()
                .filter(|d| d.get(k) != 0)
                .map(|d| format!("{},{}", d.path, d.get(k)))
                .collect();
            vals.push((name, text(list.join(","))));
        }
        Ok(record(vals))
    }

    /// SetBlockIOParameters: `weight` and the `device_*` lists, merged into the
    /// definition's devices by path as libvirt merges them.
    pub async fn set_blkio_parameters(
        &self,
        dom: &Arc<Dom>,
        params: &HashMap<String, OwnedValue>,
        flags: u32,
    ) -> Result<(), VirError> {
        let mut allowed = vec![("weight", Ty::UInt)];
        allowed.extend(DEV_FIELDS.iter().map(|(n, _, _)| (*n, Ty::Str)));
        let vals = validate(params, &allowed)?;
        if self.session() {
            return Err(session_refusal(ErrorCode::ConfigUnsupported, "Block I/O"));
        }
        let mut weight = None;
        let mut devs: Vec<(Dev, String, u64)> = Vec::new();
        for (k, v) in &vals {
            match (k.as_str(), v) {
                ("weight", v) => weight = Some(u(v) as u32),
                (k, Val::S(s)) => {
                    let d = DEV_FIELDS.iter().find(|f| f.0 == k).map(|f| f.2);
                    for (path, n) in parse_devices(k, s)? {
                        devs.extend(d.map(|d| (d, path, n)));
                    }
                }
                _ => {}
            }
        }
        let merge = |t: &Tuning| {
            let mut n = t.clone();
            if let Some(w) = weight {
                n.weight = w;
            }
            for (k, path, v) in &devs {
                let i = match n.devices.iter().position(|d| &d.path == path) {
                    Some(i) => i,
                    None => {
                        n.devices.push(BlkDev {
                            path: path.clone(),
                            ..BlkDev::default()
                        });
                        n.devices.len() - 1
                    }
                };
                n.devices[i].set(*k, *v);
            }
            n.devices
                .retain(|d| DEV_FIELDS.iter().any(|f| d.get(f.2) != 0));
            n
        };
        let _call = self.calls.enter();
        let _lock = dom.begin_job().await;
        self.retune(
            dom,
            flags,
            |g, t| {
                let (b, rel) = (g.b(), g.rel());
                // Every path is resolved before anything is written.
                let ids = devs
                    .iter()
                    .map(|(_, p, _)| block_dev(p))
                    .collect::<Result<Vec<_>, _>>()?;
                let mut n = merge(t);
                if let Some(w) = weight {
                    b.set_blkio_weight(rel, w)?;
                    n.weight = b.blkio_weight(rel)?;
                }
                for ((k, _, v), id) in devs.iter().zip(&ids) {
                    b.set_device(rel, *k, id, *v)?;
                }
                Ok(n)
            },
            |t| Ok(merge(t)),
            (Ctl::Blkio, "blkio cgroup isn't mounted"),
        )
        .await?;
        Ok(())
    }

    /// GetNumaParameters: numa_mode (virDomainNumatuneMemMode) and numa_nodeset.
    pub fn numa_parameters(
        &self,
        dom: &Dom,
        flags: u32,
    ) -> Result<HashMap<String, OwnedValue>, VirError> {
        let (_, def) = self.get_def(dom, flags)?;
        let t = Tuning::of(&def.dom)?;
        Ok(record(vec![
            ("numa_mode", OwnedValue::from(t.numa_mode)),
            ("numa_nodeset", text(t.nodeset.unwrap_or_default())),
        ]))
    }

    /// SetNumaParameters: a running domain's nodes change through cpuset.mems of its
    /// thread groups, in strict mode only, and its mode never changes.
    pub async fn set_numa_parameters(
        &self,
        dom: &Arc<Dom>,
        params: &HashMap<String, OwnedValue>,
        flags: u32,
    ) -> Result<(), VirError> {
        let vals = validate(params, &[("numa_mode", Ty::Int), ("numa_nodeset", Ty::Str)])?;
        let mut mode = None;
        let mut nodeset = None;
        for (k, v) in &vals {
            if k == "numa_mode" {
                let m = i(v);
                if !(0..NUMA_MODES.len() as i64).contains(&m) {
                    return Err(VirError::invalid_arg(format!(
                        "unsupported numatune mode: '{m}'"
                    )));
                }
                mode = Some(m as i32);
            } else if let Val::S(s) = v {
                let canon = crate::xml::canonical_cpuset(s)
                    .filter(|c| !c.is_empty())
                    .ok_or_else(|| {
                        VirError::operation_invalid(format!("Invalid nodeset of 'numatune': {s}"))
                    })?;
                nodeset = Some(canon);
            }
        }
        let (on_live, _) = super::settings::affected(dom, flags)?;
        if on_live && self.session() {
            return Err(session_refusal(ErrorCode::OperationUnsupported, "NUMA"));
        }
        let merge = |t: &Tuning| {
            let mut n = t.clone();
            if let Some(m) = mode {
                n.numa_mode = m;
            }
            if let Some(s) = &nodeset {
                n.nodeset = Some(s.clone());
            }
            n
        };
        let _call = self.calls.enter();
        let _lock = dom.begin_job().await;
        self.retune(
            dom,
            flags,
            |g, t| {
                if mode.is_some_and(|m| m != t.numa_mode) {
                    return Err(VirError::operation_invalid(
                        "can't change numatune mode for running domain",
                    ));
                }
                if let Some(s) = &nodeset {
                    if t.numa_mode != 0 {
                        return Err(VirError::operation_invalid(
                            "change of nodeset for running domain requires strict numa mode",
                        ));
                    }
                    let host = host_nodes();
                    let want = crate::pinning::parse_list(s)?;
                    if let Some(n) = want.iter().find(|n| !host.contains(n)) {
                        return Err(VirError::invalid_arg(format!(
                            "NUMA node {n} is unavailable"
                        )));
                    }
                    let (v, io) = thread_subs(g);
                    for sub in std::iter::once(Sub::Emulator).chain(v).chain(io) {
                        g.b().set_mems(g.rel(), sub, s)?;
                    }
                }
                Ok(merge(t))
            },
            |t| Ok(merge(t)),
            (Ctl::Cpuset, "cgroup cpuset controller is not mounted"),
        )
        .await?;
        Ok(())
    }

    /// The SchedulerType property: ("posix", 9) with the CPU controller, as libvirt.
    pub fn scheduler_type(&self, dom: &Dom) -> Result<(String, i32), VirError> {
        if dom.active() {
            self.live_group(dom, Ctl::Cpu, "cgroup CPU controller is not mounted")?;
        }
        Ok(("posix".into(), 9))
    }
}

/// libvirt's scheduler parameters, in its order.
const SCHED: [&str; 9] = [
    "cpu_shares",
    "vcpu_period",
    "vcpu_quota",
    "emulator_period",
    "emulator_quota",
    "global_period",
    "global_quota",
    "iothread_period",
    "iothread_quota",
];

fn sched_pairs(c: &CpuTune) -> Vec<(&'static str, OwnedValue)> {
    let mut v = vec![(SCHED[0], OwnedValue::from(c.shares.unwrap_or(0)))];
    for (i, bw) in [c.vcpu, c.emulator, c.global, c.iothread]
        .into_iter()
        .enumerate()
    {
        v.push((SCHED[1 + 2 * i], OwnedValue::from(bw.0)));
        v.push((SCHED[2 + 2 * i], OwnedValue::from(bw.1)));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dom(extra: &str) -> Domain {
        Domain::parse(&format!(
            "<domain type='kvm'><name>t</name><memory>65536</memory><vcpu>2</vcpu>\
             <os><type>hvm</type></os>{extra}</domain>"
        ))
        .unwrap()
    }

    #[test]
    fn tuning_round_trips_through_the_definition() {
        let mut d = dom(
            "<cputune><shares>512</shares><vcpupin vcpu='0' cpuset='0'/>\
             <quota>-1</quota><emulator_period>20000</emulator_period></cputune>\
             <memtune><hard_limit unit='KiB'>524288</hard_limit></memtune>\
             <blkiotune><weight>300</weight><device><path>/dev/vda</path>\
             <read_bytes_sec>1000</read_bytes_sec></device></blkiotune>\
             <numatune><memory mode='strict' nodeset='0'/></numatune>",
        );
        let t = Tuning::of(&d).unwrap();
        assert_eq!(t.cpu.shares, Some(512));
        assert_eq!(t.cpu.vcpu, (0, -1));
        assert_eq!(t.cpu.emulator, (20000, 0));
        assert_eq!((t.hard, t.soft), (Some(524_288), None));
        assert_eq!(t.devices[0].rbps, 1000);
        assert_eq!((t.numa_mode, t.nodeset.as_deref()), (0, Some("0")));
        let mut n = t.clone();
        n.cpu.shares = None;
        n.cpu.global = (100_000, 50_000);
        n.soft = Some(1024);
        n.weight = 0;
        n.put(&mut d);
        let c = section(&d, "cputune").unwrap();
        let names: Vec<&str> = c.elements().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "quota",
                "global_period",
                "global_quota",
                "emulator_period",
                "vcpupin"
            ]
        );
        assert_eq!(Tuning::of(&d).unwrap(), n);
        // Nothing left: the section goes.
        let mut empty = n.clone();
        empty.devices.clear();
        empty.put(&mut d);
        assert!(section(&d, "blkiotune").is_none());
    }

    #[test]
    fn typed_parameters_are_checked_as_libvirt_checks_them() {
        let mut p = HashMap::new();
        p.insert("hard_limit".to_owned(), OwnedValue::from(5u32));
        let e = validate(&p, &[("hard_limit", Ty::ULLong)]).unwrap_err();
        assert!(
            e.to_string()
                .contains("invalid type 'uint' for parameter 'hard_limit', expected 'ullong'"),
            "{e}"
        );
        p.clear();
        p.insert("min_guarantee".to_owned(), OwnedValue::from(5u64));
        let e = validate(&p, &[("hard_limit", Ty::ULLong)]).unwrap_err();
        assert!(
            e.to_string()
                .contains("parameter 'min_guarantee' not supported"),
            "{e}"
        );
        assert_eq!(
            parse_devices("device_weight", "/dev/a,10,/dev/b,20").unwrap(),
            vec![("/dev/a".to_owned(), 10), ("/dev/b".to_owned(), 20)]
        );
        assert!(parse_devices("device_weight", "/dev/a").is_err());
        assert!(parse_devices("device_weight", "/dev/a,x").is_err());
        assert!(block_dev("/dev/null").is_err());
    }
}
