//! The cgroup of each QEMU, laid out as libvirt lays it out without machined: the
//! domain's group `/machine/qemu-ID-NAME.libvirt-qemu` and, for the CPU controllers,
//! its thread groups `emulator`, `vcpuN` and `iothreadN`. Both hierarchies: v1 (one
//! mount per controller) and v2 (unified; the thread groups are threaded). Which one is
//! found once, at start ([`Cgroups::detect`]); nothing outside this file looks at the
//! files, only at the [`Backend`] trait through a [`DomainGroup`].

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::error::VirError;

/// VIR_DOMAIN_MEMORY_PARAM_UNLIMITED, in KiB: no limit.
pub const UNLIMITED_KIB: u64 = 9_007_199_254_740_991;
/// libvirt's default resource partition (`<resource><partition>`).
pub const PARTITION: &str = "machine";
/// The CFS bounds libvirt's cgroup layer checks (VIR_CGROUP_CPU_PERIOD_*/QUOTA_*).
pub const PERIOD_MIN: u64 = 1000;
pub const PERIOD_MAX: u64 = 1_000_000;
pub const QUOTA_MIN: i64 = 1000;
pub const QUOTA_MAX: i64 = 18_446_744_073_709_551;

/// qemu.conf `cgroup_controllers` names libvirt knows; those this daemon does not use
/// (devices, freezer, net_cls, perf_event, name=systemd) are accepted and have no effect.
pub const LIBVIRT_CONTROLLERS: [&str; 10] = [
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "blkio",
    "devices",
    "freezer",
    "net_cls",
    "perf_event",
    "name=systemd",
];

/// A controller libvirt uses for QEMU (v2 names `blkio` `io`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ctl {
    Cpu,
    Cpuacct,
    Cpuset,
    Memory,
    Blkio,
}

impl Ctl {
    const ALL: [Ctl; 5] = [Ctl::Cpu, Ctl::Cpuacct, Ctl::Cpuset, Ctl::Memory, Ctl::Blkio];

    fn v1_name(self) -> &'static str {
        match self {
            Ctl::Cpu => "cpu",
            Ctl::Cpuacct => "cpuacct",
            Ctl::Cpuset => "cpuset",
            Ctl::Memory => "memory",
            Ctl::Blkio => "blkio",
        }
    }

    /// Controllers with per-thread groups (libvirt's virCgroupNewThread mask).
    fn threaded(self) -> bool {
        matches!(self, Ctl::Cpu | Ctl::Cpuacct | Ctl::Cpuset)
    }
}

/// The domain's group or one of its thread groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sub {
    Domain,
    Emulator,
    Vcpu(u32),
    IoThread(u32),
}

impl Sub {
    fn dir(self) -> Option<String> {
        match self {
            Sub::Domain => None,
            Sub::Emulator => Some("emulator".into()),
            Sub::Vcpu(n) => Some(format!("vcpu{n}")),
            Sub::IoThread(n) => Some(format!("iothread{n}")),
        }
    }
}

/// The three memory limits of `<memtune>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mem {
    Hard,
    Soft,
    Swap,
}

/// A per-device knob of `<blkiotune><device>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dev {
    Weight,
    ReadIops,
    WriteIops,
    ReadBps,
    WriteBps,
}

/// One hierarchy's files. Paths are relative to the hierarchy roots (`rel`, e.g.
/// `machine/qemu-1-demo.libvirt-qemu`); values are libvirt's units (KiB, µs).
pub trait Backend: Send + Sync + std::fmt::Debug {
    fn kind(&self) -> &'static str;
    fn has(&self, c: Ctl) -> bool;
    /// Makes the group and its thread groups `subs` (existing ones are kept).
    fn create(&self, rel: &str, subs: &[Sub]) -> Result<(), VirError>;
    fn exists(&self, rel: &str) -> bool;
    /// The `cgroup.procs` files QEMU writes itself into before exec: the emulator
    /// group for the thread controllers, the domain group for the others.
    fn join_files(&self, rel: &str) -> Vec<PathBuf>;
    fn move_thread(&self, rel: &str, sub: Sub, tid: u32) -> Result<(), VirError>;
    /// The thread ids in a group, for the CPU controller.
    fn threads(&self, rel: &str, sub: Sub) -> Vec<u32>;
    /// The thread groups the group has.
    fn subs(&self, rel: &str) -> Vec<Sub>;
    /// Removes the group with its thread groups; false when something kept it.
    fn remove(&self, rel: &str) -> bool;
    fn set_shares(&self, rel: &str, shares: u64) -> Result<(), VirError>;
    fn shares(&self, rel: &str) -> Result<u64, VirError>;
    fn set_period(&self, rel: &str, sub: Sub, period: u64) -> Result<(), VirError>;
    fn set_quota(&self, rel: &str, sub: Sub, quota: i64) -> Result<(), VirError>;
    fn bandwidth(&self, rel: &str, sub: Sub) -> Result<(u64, i64), VirError>;
    fn set_mem(&self, rel: &str, m: Mem, kib: u64) -> Result<(), VirError>;
    fn mem(&self, rel: &str, m: Mem) -> Result<u64, VirError>;
    fn set_blkio_weight(&self, rel: &str, weight: u32) -> Result<(), VirError>;
    fn blkio_weight(&self, rel: &str) -> Result<u32, VirError>;
    /// `dev` is `MAJ:MIN`; 0 lifts the device's limit or weight.
    fn set_device(&self, rel: &str, what: Dev, dev: &str, value: u64) -> Result<(), VirError>;
    fn device(&self, rel: &str, what: Dev, dev: &str) -> Result<u64, VirError>;
    fn set_mems(&self, rel: &str, sub: Sub, nodes: &str) -> Result<(), VirError>;
    fn mems(&self, rel: &str, sub: Sub) -> Result<String, VirError>;
}

/// The hierarchy this host has, found once.
#[derive(Debug, Clone)]
pub struct Cgroups(Arc<dyn Backend>);

impl Cgroups {
    /// From `/proc/self/mountinfo`: v2 when `/sys/fs/cgroup` is cgroup2, else the v1
    /// mounts of the controllers libvirt uses; None without either.
    /// `allowed` is qemu.conf's `cgroup_controllers` (None: all).
    pub fn detect(allowed: Option<&[String]>) -> Option<Cgroups> {
        let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        Self::from_mountinfo(&info, allowed)
    }

    pub fn from_mountinfo(info: &str, allowed: Option<&[String]>) -> Option<Cgroups> {
        Self::parse(info, allowed, &|root| {
            std::fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default()
        })
    }

    /// `v2_controllers` reads a v2 root's `cgroup.controllers`.
    fn parse(
        info: &str,
        allowed: Option<&[String]>,
        v2_controllers: &dyn Fn(&Path) -> String,
    ) -> Option<Cgroups> {
        let ok = |c: Ctl| allowed.is_none_or(|a| a.iter().any(|n| n == c.v1_name()));
        let mut v1 = V1::default();
        for line in info.lines() {
            let (left, right) = line.split_once(" - ")?;
            let point = left.split(' ').nth(4)?.replace("\\040", " ");
            let mut r = right.split(' ');
            let (fstype, opts) = (r.next()?, r.nth(1).unwrap_or(""));
            match fstype {
                "cgroup2" if point == "/sys/fs/cgroup" => {
                    let root = PathBuf::from(point);
                    let mut v2 = V2 {
                        controllers: v2_controllers(&root)
                            .split_whitespace()
                            .map(str::to_owned)
                            .collect(),
                        root,
                    };
                    v2.controllers
                        .retain(|n| Ctl::ALL.iter().any(|c| V2::name(*c) == n && ok(*c)));
                    return (!v2.controllers.is_empty()).then(|| Cgroups(Arc::new(v2)));
                }
                "cgroup" => {
                    for c in Ctl::ALL.into_iter().filter(|c| ok(*c)) {
                        if opts.split(',').any(|o| o == c.v1_name()) {
                            v1.mounts.push((c, PathBuf::from(&point)));
                        }
                    }
                }
                _ => {}
            }
        }
        (!v1.mounts.is_empty()).then(|| Cgroups(Arc::new(v1)))
    }

    pub fn backend(&self) -> &dyn Backend {
        &*self.0
    }

    /// The group of run `id` of domain `name` (it may not exist).
    pub fn domain(&self, id: u32, name: &str) -> DomainGroup {
        DomainGroup {
            cg: self.clone(),
            rel: format!("{PARTITION}/{}.libvirt-qemu", machine_name(id, name)),
        }
    }
}

/// The group of one run of a domain.
#[derive(Debug, Clone)]
pub struct DomainGroup {
    cg: Cgroups,
    rel: String,
}

impl DomainGroup {
    pub fn b(&self) -> &dyn Backend {
        self.cg.backend()
    }
    pub fn rel(&self) -> &str {
        &self.rel
    }
    pub fn create(&self, subs: &[Sub]) -> Result<(), VirError> {
        self.b().create(&self.rel, subs)
    }
    pub fn exists(&self) -> bool {
        self.b().exists(&self.rel)
    }
    pub fn join_files(&self) -> Vec<PathBuf> {
        self.b().join_files(&self.rel)
    }
    /// Removes thread group `sub` (a vCPU unplugged), if its thread has left it.
    pub fn remove_sub(&self, sub: Sub) {
        if let Some(d) = sub.dir() {
            self.b().remove(&format!("{}/{d}", self.rel));
        }
    }

    /// Removes the group once QEMU's threads have left it (they leave as QEMU exits:
    /// a few tries, 50 ms apart).
    pub fn remove(&self) {
        for _ in 0..40 {
            if self.b().remove(&self.rel) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        tracing::warn!(group = %self.rel, "cgroup still busy, left in place");
    }
}

/// libvirt's machine name (virDomainDriverGenerateMachineName): `qemu-ID-NAME`, the
/// name reduced to hostname characters, no leading, doubled or trailing `-`/`.`, the
/// whole at most 64 characters.
pub fn machine_name(id: u32, name: &str) -> String {
    let mut s = format!("qemu-{id}-");
    let mut skip = true;
    for c in name.chars() {
        if s.len() >= 64 {
            break;
        }
        if c == '.' || c == '-' {
            if !skip {
                s.push(c);
            }
            skip = true;
            continue;
        }
        skip = false;
        if c.is_ascii_alphanumeric() {
            s.push(c);
        }
    }
    while s.ends_with(['-', '.']) {
        s.pop();
    }
    s
}

fn write(path: &Path, value: &str) -> Result<(), VirError> {
    std::fs::write(path, value)
        .map_err(|e| VirError::system(format!("Unable to write to '{}'", path.display()), &e))
}

fn read(path: &Path) -> Result<String, VirError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim_end().to_owned())
        .map_err(|e| VirError::system(format!("Unable to read from '{}'", path.display()), &e))
}

fn parse<T: std::str::FromStr>(path: &Path, text: &str) -> Result<T, VirError> {
    text.trim().parse().map_err(|_| {
        VirError::internal(format!(
            "Unable to parse '{text}' as an integer (from '{}')",
            path.display()
        ))
    })
}

fn mkdir(path: &Path) -> std::io::Result<()> {
    match std::fs::create_dir(path) {
        Err(e) if e.kind() != ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

/// Removes `dir` after its sub-folders (cgroup folders hold only kernel files, which
/// go with them); true when it is gone.
fn rmdir_tree(dir: &Path) -> bool {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                rmdir_tree(&e.path());
            }
        }
    }
    match std::fs::remove_dir(dir) {
        Ok(()) => true,
        Err(e) => e.kind() == ErrorKind::NotFound,
    }
}

/// The `vcpuN`/`iothreadN` folders in `dir`, vCPUs first, each kind in order.
fn subs_in(dir: Option<PathBuf>) -> Vec<Sub> {
    let mut out: Vec<Sub> = dir
        .and_then(|d| std::fs::read_dir(d).ok())
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().into_string().ok()?;
            if let Some(i) = n.strip_prefix("vcpu") {
                return i.parse().ok().map(Sub::Vcpu);
            }
            n.strip_prefix("iothread")?.parse().ok().map(Sub::IoThread)
        })
        .collect();
    out.sort_by_key(|s| match s {
        Sub::Vcpu(i) => (0, *i),
        Sub::IoThread(i) => (1, *i),
        _ => (2, 0),
    });
    out
}

fn kib_to_bytes(kib: u64) -> Result<u64, VirError> {
    if kib > UNLIMITED_KIB {
        return Err(VirError::invalid_arg(format!(
            "Memory '{kib}' must be less than {UNLIMITED_KIB}"
        )));
    }
    Ok(kib << 10)
}

/// The value of device `dev` in a `MAJ:MIN VALUE` list (v1 files, v2 `io.weight`).
fn device_value(text: &str, dev: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (d, v) = l.split_once(' ')?;
        (d == dev).then(|| v.trim().to_owned())
    })
}

/// The v1 hierarchy: one mount per controller (several controllers may share one).
#[derive(Debug, Default)]
struct V1 {
    mounts: Vec<(Ctl, PathBuf)>,
}

impl V1 {
    fn mount(&self, c: Ctl) -> Option<&Path> {
        self.mounts
            .iter()
            .find(|(m, _)| *m == c)
            .map(|(_, p)| p.as_path())
    }

    fn path(&self, c: Ctl, rel: &str, sub: Sub, file: &str) -> Result<PathBuf, VirError> {
        let mut p = self
            .mount(c)
            .ok_or_else(|| {
                VirError::operation_invalid(format!(
                    "cgroup {} controller is not mounted",
                    c.v1_name()
                ))
            })?
            .join(rel);
        if let Some(d) = sub.dir().filter(|_| c.threaded()) {
            p.push(d);
        }
        p.push(file);
        Ok(p)
    }

    /// A new cpuset group starts with no CPUs and no memory nodes: its parent's, as
    /// libvirt copies them (virCgroupV1CpuSetInherit).
    fn inherit_cpuset(dir: &Path) -> Result<(), VirError> {
        let Some(parent) = dir.parent() else {
            return Ok(());
        };
        for f in ["cpuset.cpus", "cpuset.mems"] {
            if read(&dir.join(f))?.is_empty() {
                write(&dir.join(f), &read(&parent.join(f))?)?;
            }
        }
        Ok(())
    }

    /// Makes one folder of the path; a cpuset folder left empty (also one another start
    /// made a moment ago and has not filled yet) gets its parent's CPUs and nodes.
    fn make(c: Ctl, dir: &Path) -> Result<(), VirError> {
        mkdir(dir).map_err(|e| {
            VirError::system(
                format!("Failed to create v1 controller {} for group", c.v1_name()),
                &e,
            )
        })?;
        if c == Ctl::Cpuset {
            Self::inherit_cpuset(dir)?;
        }
        Ok(())
    }

    fn blkio_weight_file(&self, rel: &str) -> Result<PathBuf, VirError> {
        for f in ["blkio.bfq.weight", "blkio.weight"] {
            let p = self.path(Ctl::Blkio, rel, Sub::Domain, f)?;
            if p.exists() {
                return Ok(p);
            }
        }
        Err(VirError::operation_invalid(
            "blkio device weight is valid only for bfq or cfq scheduler",
        ))
    }

    fn device_file(&self, rel: &str, what: Dev) -> Result<PathBuf, VirError> {
        let f = match what {
            Dev::Weight => {
                for f in ["blkio.bfq.weight_device", "blkio.weight_device"] {
                    let p = self.path(Ctl::Blkio, rel, Sub::Domain, f)?;
                    if p.exists() {
                        return Ok(p);
                    }
                }
                return Err(VirError::operation_invalid(
                    "blkio device weight is valid only for cfq scheduler",
                ));
            }
            Dev::ReadIops => "blkio.throttle.read_iops_device",
            Dev::WriteIops => "blkio.throttle.write_iops_device",
            Dev::ReadBps => "blkio.throttle.read_bps_device",
            Dev::WriteBps => "blkio.throttle.write_bps_device",
        };
        self.path(Ctl::Blkio, rel, Sub::Domain, f)
    }

    fn mem_file(m: Mem) -> &'static str {
        match m {
            Mem::Hard => "memory.limit_in_bytes",
            Mem::Soft => "memory.soft_limit_in_bytes",
            Mem::Swap => "memory.memsw.limit_in_bytes",
        }
    }
}

impl Backend for V1 {
    fn kind(&self) -> &'static str {
        "v1"
    }

    fn has(&self, c: Ctl) -> bool {
        self.mount(c).is_some()
    }

    fn create(&self, rel: &str, subs: &[Sub]) -> Result<(), VirError> {
        for (c, mount) in &self.mounts {
            let dir = mount.join(rel);
            // The partition first (libvirt creates /machine itself), then the group.
            let mut at = mount.clone();
            for part in Path::new(rel).components() {
                at.push(part);
                Self::make(*c, &at)?;
            }
            if c.threaded() {
                for s in subs.iter().filter_map(|s| s.dir()) {
                    Self::make(*c, &dir.join(s))?;
                }
            }
        }
        Ok(())
    }

    fn exists(&self, rel: &str) -> bool {
        self.mounts.iter().all(|(_, m)| m.join(rel).is_dir())
    }

    fn join_files(&self, rel: &str) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = Vec::new();
        for (c, m) in &self.mounts {
            let d = m.join(rel);
            let f = if c.threaded() {
                d.join("emulator/cgroup.procs")
            } else {
                d.join("cgroup.procs")
            };
            // Controllers mounted together (cpu,cpuacct) share one file.
            if !out.contains(&f) {
                out.push(f);
            }
        }
        out
    }

    fn move_thread(&self, rel: &str, sub: Sub, tid: u32) -> Result<(), VirError> {
        for (c, _) in self.mounts.iter().filter(|(c, _)| c.threaded()) {
            write(&self.path(*c, rel, sub, "tasks")?, &tid.to_string())?;
        }
        Ok(())
    }

    fn threads(&self, rel: &str, sub: Sub) -> Vec<u32> {
        self.path(Ctl::Cpu, rel, sub, "tasks")
            .and_then(|p| read(&p))
            .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    fn subs(&self, rel: &str) -> Vec<Sub> {
        subs_in(self.mount(Ctl::Cpu).map(|m| m.join(rel)))
    }

    fn remove(&self, rel: &str) -> bool {
        let mut gone = true;
        for (_, m) in &self.mounts {
            gone &= rmdir_tree(&m.join(rel));
        }
        gone
    }

    fn set_shares(&self, rel: &str, shares: u64) -> Result<(), VirError> {
        if !(2..=262_144).contains(&shares) {
            return Err(VirError::invalid_arg(format!(
                "shares '{shares}' must be in range [2, 262144]"
            )));
        }
        write(
            &self.path(Ctl::Cpu, rel, Sub::Domain, "cpu.shares")?,
            &shares.to_string(),
        )
    }

    fn shares(&self, rel: &str) -> Result<u64, VirError> {
        let p = self.path(Ctl::Cpu, rel, Sub::Domain, "cpu.shares")?;
        parse(&p, &read(&p)?)
    }

    fn set_period(&self, rel: &str, sub: Sub, period: u64) -> Result<(), VirError> {
        check_period(period)?;
        write(
            &self.path(Ctl::Cpu, rel, sub, "cpu.cfs_period_us")?,
            &period.to_string(),
        )
    }

    fn set_quota(&self, rel: &str, sub: Sub, quota: i64) -> Result<(), VirError> {
        check_quota(quota)?;
        write(
            &self.path(Ctl::Cpu, rel, sub, "cpu.cfs_quota_us")?,
            &quota.to_string(),
        )
    }

    fn bandwidth(&self, rel: &str, sub: Sub) -> Result<(u64, i64), VirError> {
        let p = self.path(Ctl::Cpu, rel, sub, "cpu.cfs_period_us")?;
        let q = self.path(Ctl::Cpu, rel, sub, "cpu.cfs_quota_us")?;
        Ok((parse(&p, &read(&p)?)?, parse(&q, &read(&q)?)?))
    }

    fn set_mem(&self, rel: &str, m: Mem, kib: u64) -> Result<(), VirError> {
        let bytes = kib_to_bytes(kib)?;
        let p = self.path(Ctl::Memory, rel, Sub::Domain, V1::mem_file(m))?;
        if kib == UNLIMITED_KIB {
            write(&p, "-1")
        } else {
            write(&p, &bytes.to_string())
        }
    }

    fn mem(&self, rel: &str, m: Mem) -> Result<u64, VirError> {
        let p = self.path(Ctl::Memory, rel, Sub::Domain, V1::mem_file(m))?;
        let kib = parse::<u64>(&p, &read(&p)?)? >> 10;
        // The root's limit is the largest the kernel has: that, or more, is no limit.
        let root = self
            .path(Ctl::Memory, "", Sub::Domain, "memory.limit_in_bytes")
            .and_then(|r| read(&r))
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok())
            .map_or(UNLIMITED_KIB, |b| b >> 10);
        Ok(if kib >= root { UNLIMITED_KIB } else { kib })
    }

    fn set_blkio_weight(&self, rel: &str, weight: u32) -> Result<(), VirError> {
        write(&self.blkio_weight_file(rel)?, &weight.to_string())
    }

    fn blkio_weight(&self, rel: &str) -> Result<u32, VirError> {
        let p = self.blkio_weight_file(rel)?;
        parse(&p, &read(&p)?)
    }

    fn set_device(&self, rel: &str, what: Dev, dev: &str, value: u64) -> Result<(), VirError> {
        write(&self.device_file(rel, what)?, &format!("{dev} {value}"))
    }

    fn device(&self, rel: &str, what: Dev, dev: &str) -> Result<u64, VirError> {
        let p = self.device_file(rel, what)?;
        match device_value(&read(&p)?, dev) {
            Some(v) => parse(&p, &v),
            None => Ok(0),
        }
    }

    fn set_mems(&self, rel: &str, sub: Sub, nodes: &str) -> Result<(), VirError> {
        write(&self.path(Ctl::Cpuset, rel, sub, "cpuset.mems")?, nodes)
    }

    fn mems(&self, rel: &str, sub: Sub) -> Result<String, VirError> {
        read(&self.path(Ctl::Cpuset, rel, sub, "cpuset.mems")?)
    }
}

/// The unified hierarchy. The domain group holds QEMU; its thread groups are
/// `threaded` children with the threaded controllers (cpu, cpuset) enabled for them.
#[derive(Debug)]
struct V2 {
    root: PathBuf,
    controllers: Vec<String>,
}

impl V2 {
    fn name(c: Ctl) -> &'static str {
        match c {
            Ctl::Cpu | Ctl::Cpuacct => "cpu",
            Ctl::Cpuset => "cpuset",
            Ctl::Memory => "memory",
            Ctl::Blkio => "io",
        }
    }

    fn path(&self, c: Ctl, rel: &str, sub: Sub, file: &str) -> Result<PathBuf, VirError> {
        if !self.has(c) {
            return Err(VirError::operation_invalid(format!(
                "cgroup {} controller is not mounted",
                V2::name(c)
            )));
        }
        let mut p = self.root.join(rel);
        if let Some(d) = sub.dir().filter(|_| c.threaded()) {
            p.push(d);
        }
        p.push(file);
        Ok(p)
    }

    /// Enables `wanted` (those the folder has) for the children of `dir`.
    fn enable(dir: &Path, wanted: &[&str]) -> Result<(), VirError> {
        let have = read(&dir.join("cgroup.controllers"))?;
        let on = read(&dir.join("cgroup.subtree_control"))?;
        let missing: Vec<String> = wanted
            .iter()
            .filter(|w| have.split_whitespace().any(|h| h == **w))
            .filter(|w| !on.split_whitespace().any(|h| h == **w))
            .map(|w| format!("+{w}"))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        write(&dir.join("cgroup.subtree_control"), &missing.join(" "))
    }

    fn weight_file(&self, rel: &str) -> Result<(PathBuf, bool), VirError> {
        let bfq = self.path(Ctl::Blkio, rel, Sub::Domain, "io.bfq.weight")?;
        if bfq.exists() {
            return Ok((bfq, true));
        }
        let p = self.path(Ctl::Blkio, rel, Sub::Domain, "io.weight")?;
        if p.exists() {
            return Ok((p, false));
        }
        Err(VirError::operation_invalid(
            "blkio weight is valid only for bfq or cfq scheduler",
        ))
    }

    fn mem_file(m: Mem) -> &'static str {
        match m {
            Mem::Hard => "memory.max",
            Mem::Soft => "memory.high",
            Mem::Swap => "memory.swap.max",
        }
    }

    fn io_max_key(what: Dev) -> &'static str {
        match what {
            Dev::ReadBps => "rbps",
            Dev::WriteBps => "wbps",
            Dev::ReadIops => "riops",
            Dev::WriteIops => "wiops",
            Dev::Weight => "",
        }
    }
}

/// cpu.max as (period, quota): `max` is libvirt's quota -1.
fn parse_cpu_max(text: &str) -> Option<(u64, i64)> {
    let (q, p) = text.trim().split_once(' ')?;
    let quota = if q == "max" { -1 } else { q.parse().ok()? };
    Some((p.parse().ok()?, quota))
}

fn check_period(period: u64) -> Result<(), VirError> {
    if !(PERIOD_MIN..=PERIOD_MAX).contains(&period) {
        return Err(VirError::invalid_arg(format!(
            "cfs_period '{period}' must be in range ({PERIOD_MIN}, {PERIOD_MAX})"
        )));
    }
    Ok(())
}

fn check_quota(quota: i64) -> Result<(), VirError> {
    if quota >= 0 && !(QUOTA_MIN..=QUOTA_MAX).contains(&quota) {
        return Err(VirError::invalid_arg(format!(
            "cfs_quota '{quota}' must be in range ({QUOTA_MIN}, {QUOTA_MAX})"
        )));
    }
    Ok(())
}

impl Backend for V2 {
    fn kind(&self) -> &'static str {
        "v2"
    }

    fn has(&self, c: Ctl) -> bool {
        self.controllers.iter().any(|n| n == V2::name(c))
    }

    fn create(&self, rel: &str, subs: &[Sub]) -> Result<(), VirError> {
        const ALL: &[&str] = &["cpu", "cpuset", "memory", "io"];
        let mut at = self.root.clone();
        for part in Path::new(rel).components() {
            V2::enable(&at, ALL)?;
            at.push(part);
            mkdir(&at).map_err(|e| {
                VirError::system(format!("Failed to create v2 cgroup '{}'", at.display()), &e)
            })?;
        }
        if subs.is_empty() {
            return Ok(());
        }
        // Only threaded controllers below a group that holds processes.
        V2::enable(&at, &["cpu", "cpuset"])?;
        for s in subs.iter().filter_map(|s| s.dir()) {
            let d = at.join(s);
            mkdir(&d).map_err(|e| {
                VirError::system(format!("Failed to create v2 cgroup '{}'", d.display()), &e)
            })?;
            write(&d.join("cgroup.type"), "threaded")?;
        }
        Ok(())
    }

    fn exists(&self, rel: &str) -> bool {
        self.root.join(rel).is_dir()
    }

    fn join_files(&self, rel: &str) -> Vec<PathBuf> {
        vec![self.root.join(rel).join("cgroup.procs")]
    }

    fn move_thread(&self, rel: &str, sub: Sub, tid: u32) -> Result<(), VirError> {
        let mut p = self.root.join(rel);
        if let Some(d) = sub.dir() {
            p.push(d);
        }
        write(&p.join("cgroup.threads"), &tid.to_string())
    }

    fn threads(&self, rel: &str, sub: Sub) -> Vec<u32> {
        let mut p = self.root.join(rel);
        if let Some(d) = sub.dir() {
            p.push(d);
        }
        read(&p.join("cgroup.threads"))
            .map(|t| t.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    fn subs(&self, rel: &str) -> Vec<Sub> {
        subs_in(Some(self.root.join(rel)))
    }

    fn remove(&self, rel: &str) -> bool {
        rmdir_tree(&self.root.join(rel))
    }

    fn set_shares(&self, rel: &str, shares: u64) -> Result<(), VirError> {
        if !(1..=10_000).contains(&shares) {
            return Err(VirError::invalid_arg(format!(
                "shares '{shares}' must be in range [1, 10000]"
            )));
        }
        write(
            &self.path(Ctl::Cpu, rel, Sub::Domain, "cpu.weight")?,
            &shares.to_string(),
        )
    }

    fn shares(&self, rel: &str) -> Result<u64, VirError> {
        let p = self.path(Ctl::Cpu, rel, Sub::Domain, "cpu.weight")?;
        parse(&p, &read(&p)?)
    }

    fn set_period(&self, rel: &str, sub: Sub, period: u64) -> Result<(), VirError> {
        check_period(period)?;
        let p = self.path(Ctl::Cpu, rel, sub, "cpu.max")?;
        let (_, quota) = self.bandwidth(rel, sub)?;
        let q = if quota < 0 {
            "max".to_owned()
        } else {
            quota.to_string()
        };
        write(&p, &format!("{q} {period}"))
    }

    fn set_quota(&self, rel: &str, sub: Sub, quota: i64) -> Result<(), VirError> {
        check_quota(quota)?;
        let p = self.path(Ctl::Cpu, rel, sub, "cpu.max")?;
        if quota < 0 {
            write(&p, "max")
        } else {
            write(&p, &quota.to_string())
        }
    }

    fn bandwidth(&self, rel: &str, sub: Sub) -> Result<(u64, i64), VirError> {
        let p = self.path(Ctl::Cpu, rel, sub, "cpu.max")?;
        let t = read(&p)?;
        parse_cpu_max(&t).ok_or_else(|| {
            VirError::internal(format!("Invalid format of '{}': '{t}'", p.display()))
        })
    }

    fn set_mem(&self, rel: &str, m: Mem, kib: u64) -> Result<(), VirError> {
        let bytes = kib_to_bytes(kib)?;
        let p = self.path(Ctl::Memory, rel, Sub::Domain, V2::mem_file(m))?;
        if kib == UNLIMITED_KIB {
            write(&p, "max")
        } else {
            write(&p, &bytes.to_string())
        }
    }

    fn mem(&self, rel: &str, m: Mem) -> Result<u64, VirError> {
        let p = self.path(Ctl::Memory, rel, Sub::Domain, V2::mem_file(m))?;
        let t = read(&p)?;
        if t == "max" {
            return Ok(UNLIMITED_KIB);
        }
        Ok((parse::<u64>(&p, &t)? >> 10).min(UNLIMITED_KIB))
    }

    fn set_blkio_weight(&self, rel: &str, weight: u32) -> Result<(), VirError> {
        let (p, bfq) = self.weight_file(rel)?;
        if bfq {
            write(&p, &weight.to_string())
        } else {
            write(&p, &format!("default {weight}"))
        }
    }

    fn blkio_weight(&self, rel: &str) -> Result<u32, VirError> {
        let (p, _) = self.weight_file(rel)?;
        let t = read(&p)?;
        let v = device_value(&t, "default").unwrap_or(t);
        parse(&p, &v)
    }

    fn set_device(&self, rel: &str, what: Dev, dev: &str, value: u64) -> Result<(), VirError> {
        if what == Dev::Weight {
            let (p, _) = self.weight_file(rel)?;
            return write(&p, &format!("{dev} {value}"));
        }
        let p = self.path(Ctl::Blkio, rel, Sub::Domain, "io.max")?;
        let v = if value == 0 {
            "max".to_owned()
        } else {
            value.to_string()
        };
        write(&p, &format!("{dev} {}={v}", V2::io_max_key(what)))
    }

    fn device(&self, rel: &str, what: Dev, dev: &str) -> Result<u64, VirError> {
        if what == Dev::Weight {
            let (p, _) = self.weight_file(rel)?;
            return match device_value(&read(&p)?, dev) {
                Some(v) => parse(&p, &v),
                None => Ok(0),
            };
        }
        let p = self.path(Ctl::Blkio, rel, Sub::Domain, "io.max")?;
        let line = device_value(&read(&p)?, dev).unwrap_or_default();
        let key = format!("{}=", V2::io_max_key(what));
        match line
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(key.as_str()))
        {
            Some("max") | None => Ok(0),
            Some(v) => parse(&p, v),
        }
    }

    fn set_mems(&self, rel: &str, sub: Sub, nodes: &str) -> Result<(), VirError> {
        write(&self.path(Ctl::Cpuset, rel, sub, "cpuset.mems")?, nodes)
    }

    fn mems(&self, rel: &str, sub: Sub) -> Result<String, VirError> {
        read(&self.path(Ctl::Cpuset, rel, sub, "cpuset.mems")?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_names_follow_libvirt() {
        assert_eq!(machine_name(1, "demo"), "qemu-1-demo");
        assert_eq!(machine_name(7, "-a..b_c d-"), "qemu-7-a.bcd");
        assert_eq!(machine_name(2, "x".repeat(100).as_str()).len(), 64);
    }

    #[test]
    fn hierarchies_are_told_from_mountinfo() {
        let v1 = "31 23 0:28 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755\n\
                  32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n\
                  34 31 0:31 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
                  35 31 0:32 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n";
        let c = Cgroups::from_mountinfo(v1, None).unwrap();
        assert_eq!(c.backend().kind(), "v1");
        assert!(c.backend().has(Ctl::Cpuacct) && c.backend().has(Ctl::Memory));
        assert!(!c.backend().has(Ctl::Blkio));
        let g = c.domain(3, "web");
        assert_eq!(g.rel(), "machine/qemu-3-web.libvirt-qemu");
        assert_eq!(
            g.join_files(),
            vec![
                PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/machine/qemu-3-web.libvirt-qemu/emulator/cgroup.procs"),
                PathBuf::from("/sys/fs/cgroup/memory/machine/qemu-3-web.libvirt-qemu/cgroup.procs"),
            ]
        );
        let v2 = "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n";
        let all = |_: &Path| "cpuset cpu io memory pids".to_owned();
        let c = Cgroups::parse(v2, None, &all).unwrap();
        assert_eq!(c.backend().kind(), "v2");
        assert!(c.backend().has(Ctl::Blkio) && c.backend().has(Ctl::Cpuacct));
        assert_eq!(
            c.domain(1, "a").join_files(),
            vec![PathBuf::from(
                "/sys/fs/cgroup/machine/qemu-1-a.libvirt-qemu/cgroup.procs"
            )]
        );
        let only = ["cpu".to_owned()];
        let c = Cgroups::parse(v2, Some(&only), &all).unwrap();
        assert!(c.backend().has(Ctl::Cpu) && !c.backend().has(Ctl::Memory));
        assert!(Cgroups::parse(v2, None, &|_: &Path| String::new()).is_none());
        assert!(Cgroups::from_mountinfo("1 0 0:1 / / rw - ext4 /dev/vda rw\n", None).is_none());
        // qemu.conf cgroup_controllers: only those; none at all with an empty list.
        let only = ["memory".to_owned(), "devices".to_owned()];
        let c = Cgroups::from_mountinfo(v1, Some(&only)).unwrap();
        assert!(c.backend().has(Ctl::Memory) && !c.backend().has(Ctl::Cpu));
        assert!(Cgroups::from_mountinfo(v1, Some(&[])).is_none());
    }

    #[test]
    fn v2_values_read_as_libvirt_reports_them() {
        assert_eq!(parse_cpu_max("max 100000"), Some((100_000, -1)));
        assert_eq!(parse_cpu_max("50000 100000\n"), Some((100_000, 50_000)));
        assert_eq!(parse_cpu_max("junk"), None);
        assert_eq!(
            device_value("default 100\n8:0 300", "8:0").as_deref(),
            Some("300")
        );
        assert!(check_quota(-1).is_ok() && check_quota(999).is_err());
        assert!(check_period(999).is_err() && check_period(100_000).is_ok());
        assert!(kib_to_bytes(UNLIMITED_KIB + 1).is_err());
    }
}
