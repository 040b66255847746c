//! The machine itself: `-machine` (type, accelerator, machine-level features), `-cpu`
//! (model, features, Hyper-V enlightenments), `-m`/`-smp`/`-uuid` and the clock.

use common::xml::Element;
use serde_json::json;

use crate::xml::{CpuMode, Domain, NvramSource, VirtType};

use super::{memory, qemu_opt_value, unsupported, Accel, Argv, LaunchContext, Result};

/// The top-level elements honoured here (the command line does not refuse them).
pub(super) const HANDLED: &[&str] = &[
    "genid",
    "iothreads",
    "iothreadids",
    "defaultiothread",
    "sysinfo",
    "cputune",
    "memtune",
    "blkiotune",
    // Opened by the runtime on QEMU's process (crate::perf).
    "perf",
];

fn top<'a>(dom: &'a Domain, name: &'a str) -> impl Iterator<Item = &'a Element> {
    dom.other.iter().filter(move |e| e.name == name)
}

/// Machine-level objects and devices without a bus: I/O threads, the VM generation
/// ID, SMBIOS tables and fw_cfg entries, as libvirt 9.0 writes them.
pub(super) fn extras(a: &mut Argv, dom: &Domain) -> Result<()> {
    iothreads(a, dom)?;
    if let Some(g) = top(dom, "genid").next() {
        let guid = g.text();
        let guid =
            uuid::Uuid::parse_str(guid.trim()).map_err(|e| unsupported("genid", &guid, e))?;
        a.pair(
            "-device",
            json!({"driver": "vmgenid", "guid": guid.to_string(), "id": "vmgenid0"}).to_string(),
        );
    }
    sysinfo(a, dom)
}

/// The host CPUs `<vcpu cpuset>` allows (libvirt's `1-4,^3,8` syntax), for the
/// runtime to pin QEMU to before exec; `None` without a cpuset.
pub fn host_cpus(dom: &Domain) -> Result<Option<Vec<usize>>> {
    let Some(set) = &dom.vcpu_cpuset else {
        return Ok(None);
    };
    let mut cpus = std::collections::BTreeSet::new();
    let mut minus = std::collections::BTreeSet::new();
    for part in set.split(',').map(str::trim) {
        let (target, part) = match part.strip_prefix('^') {
            Some(p) => (&mut minus, p),
            None => (&mut cpus, part),
        };
        let bad = || unsupported("vcpu cpuset", set, "expected CPU numbers and ranges");
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let lo: usize = lo.trim().parse().map_err(|_| bad())?;
        let hi: usize = hi.trim().parse().map_err(|_| bad())?;
        if hi < lo || hi >= 8192 {
            return Err(bad());
        }
        target.extend(lo..=hi);
    }
    Ok(Some(cpus.difference(&minus).copied().collect()))
}

/// `<cpu><cache>` and `<cpu><maxphysaddr>` as libvirt passes them to `-cpu`: an
/// emulated L3 cache (`l3-cache=on`), the host's cache information for passthrough
/// CPUs (`host-cache-info`), none (`l3-cache=off`); the host's or a fixed physical
/// address width.
fn cache_and_phys_bits(c: &crate::xml::Cpu) -> Result<String> {
    let passthrough = c.mode == CpuMode::HostPassthrough;
    let mut s = String::new();
    for e in &c.other {
        match e.name.as_str() {
            "cache" => {
                let mode = e.get_attr("mode").unwrap_or("");
                match (e.get_attr("level"), mode) {
                    (Some("3"), "emulate") => {
                        s.push_str(",l3-cache=on");
                        if passthrough {
                            s.push_str(",host-cache-info=off");
                        }
                    }
                    (None, "passthrough") if passthrough => s.push_str(",host-cache-info=on"),
                    (None, "disable") => {
                        if passthrough {
                            s.push_str(",host-cache-info=off");
                        }
                        s.push_str(",l3-cache=off");
                    }
                    (level, mode) => {
                        return Err(unsupported(
                            "cpu/cache",
                            &format!("{} {mode}", level.unwrap_or("")),
                            "QEMU emulates an L3 cache, passes the host's through (host-passthrough) or none",
                        ))
                    }
                }
            }
            "maxphysaddr" => {
                let bits = e.get_attr("bits");
                if let Some(b) = bits {
                    if b.parse::<u8>().map_or(true, |n| n == 0 || n > 64) {
                        return Err(unsupported("cpu/maxphysaddr bits", b, "expected 1 to 64"));
                    }
                }
                match (e.get_attr("mode"), bits) {
                    (Some("passthrough"), None) => s.push_str(",host-phys-bits=on"),
                    (Some("passthrough"), Some(b)) => {
                        s.push_str(&format!(",host-phys-bits=on,host-phys-bits-limit={b}"))
                    }
                    (Some("emulate"), Some(b)) => s.push_str(&format!(",phys-bits={b}")),
                    (m, _) => {
                        return Err(unsupported(
                            "cpu/maxphysaddr mode",
                            m.unwrap_or(""),
                            "expected passthrough, or emulate with bits",
                        ))
                    }
                }
            }
            _ => {}
        }
    }
    Ok(s)
}

/// `<cputune>`, `<memtune>` and `<blkiotune>` as libvirt treats them. Their cgroup
/// knobs (CPU shares, periods and quotas, memory limits, block I/O weights) are the
/// runtime's: applied through the domain's cgroup in system mode (`driver::tuning`),
/// skipped in session mode, where libvirt's session daemon has no cgroup either.
/// `min_guarantee` is refused in both, as libvirt refuses it for QEMU. `vcpupin`,
/// `emulatorpin` and `iothreadpin` are applied by the runtime (sched_setaffinity,
/// `crate::pinning`), as libvirt does in both modes; the `*sched` policies are refused
/// by name: not implemented.
pub(super) fn tuning(dom: &Domain) -> Result<()> {
    const CGROUP: &[&str] = &[
        "shares",
        "period",
        "quota",
        "global_period",
        "global_quota",
        "emulator_period",
        "emulator_quota",
        "iothread_period",
        "iothread_quota",
        "hard_limit",
        "soft_limit",
        "swap_hard_limit",
        "weight",
        "device",
    ];
    for name in ["cputune", "memtune", "blkiotune"] {
        for el in top(dom, name) {
            for c in el.elements() {
                // Applied by the runtime with sched_setaffinity (crate::pinning).
                if name == "cputune"
                    && matches!(c.name.as_str(), "vcpupin" | "emulatorpin" | "iothreadpin")
                {
                    let set = c.get_attr("cpuset").unwrap_or_default();
                    crate::pinning::parse_list(set)
                        .map_err(|_| unsupported("cputune", &c.name, "an invalid cpuset"))?;
                    continue;
                }
                if name == "memtune" && c.name == "min_guarantee" {
                    return Err(unsupported(
                        "memtune",
                        "min_guarantee",
                        "Parameter 'min_guarantee' not supported by QEMU.",
                    ));
                }
                if !CGROUP.contains(&c.name.as_str()) {
                    return Err(unsupported(
                        name,
                        &c.name,
                        "pinning and scheduling are not implemented",
                    ));
                }
            }
        }
    }
    Ok(())
}

/// `<seclabel>` as libvirt treats it for a QEMU it starts, with this host's only
/// security driver, DAC: `type='none'` runs unconfined; a dynamic DAC label is QEMU
/// running as qemu.conf's user with the domain's files handed to it, which the
/// runtime does. SELinux/AppArmor labels, static DAC labels (QEMU as another user)
/// and `relabel='no'` are refused by name rather than ignored.
pub(super) fn seclabels(dom: &Domain) -> Result<()> {
    for sl in top(dom, "seclabel") {
        let ty = sl.get_attr("type").unwrap_or("dynamic");
        let model = sl.get_attr("model").unwrap_or("dac");
        match (ty, model) {
            ("none", _) => {}
            (_, "dac") if ty != "dynamic" => {
                return Err(unsupported(
                    "seclabel type",
                    ty,
                    "running QEMU as the label's user and group is not implemented",
                ))
            }
            (_, "dac") if sl.get_attr("relabel") == Some("no") => {
                return Err(unsupported(
                    "seclabel relabel",
                    "no",
                    "the runtime always hands the domain's files to QEMU's user",
                ))
            }
            (_, "dac") => {}
            (_, m) => {
                return Err(unsupported(
                    "seclabel model",
                    m,
                    "this host's only security driver is dac (no SELinux or AppArmor labelling)",
                ))
            }
        }
    }
    Ok(())
}

/// `-object iothread` per `<iothreadids>` entry, then for the rest of the
/// `<iothreads>` count (libvirt numbers those with the lowest free ids).
fn iothreads(a: &mut Argv, dom: &Domain) -> Result<()> {
    let count: u32 = match top(dom, "iothreads").next() {
        Some(e) => e
            .text()
            .trim()
            .parse()
            .map_err(|_| unsupported("iothreads", &e.text(), "not a number"))?,
        None => 0,
    };
    let mut objects = Vec::new();
    let mut ids = std::collections::BTreeSet::new();
    for t in top(dom, "iothreadids").flat_map(|e| e.elements()) {
        if t.name != "iothread" {
            return Err(unsupported(
                &format!("iothreadids/{}", t.name),
                "",
                "not implemented",
            ));
        }
        let id: u32 = t
            .get_attr("id")
            .and_then(|i| i.parse().ok())
            .filter(|i| *i > 0)
            .ok_or_else(|| {
                unsupported(
                    "iothreadids/iothread id",
                    t.get_attr("id").unwrap_or(""),
                    "must be 1 or more",
                )
            })?;
        let mut o = serde_json::Map::new();
        o.insert("qom-type".into(), json!("iothread"));
        o.insert("id".into(), json!(format!("iothread{id}")));
        for (k, v) in &t.attrs {
            let opt = match k.as_str() {
                "id" => continue,
                "thread_pool_min" => "thread-pool-min",
                "thread_pool_max" => "thread-pool-max",
                k => {
                    return Err(unsupported(
                        &format!("iothreadids/iothread {k}"),
                        v,
                        "not implemented",
                    ))
                }
            };
            let n: i64 = v.parse().map_err(|_| {
                unsupported(&format!("iothreadids/iothread {k}"), v, "not a number")
            })?;
            o.insert(opt.into(), json!(n));
        }
        for c in t.elements() {
            if c.name != "poll" {
                return Err(unsupported(
                    &format!("iothreadids/iothread/{}", c.name),
                    "",
                    "not implemented",
                ));
            }
            for (k, v) in &c.attrs {
                let opt = match k.as_str() {
                    "max" => "poll-max-ns",
                    "grow" => "poll-grow",
                    "shrink" => "poll-shrink",
                    k => {
                        return Err(unsupported(
                            &format!("iothreadids/iothread/poll {k}"),
                            v,
                            "not implemented",
                        ))
                    }
                };
                let n: u64 = v
                    .parse()
                    .map_err(|_| unsupported("iothreadids/iothread/poll", v, "not a number"))?;
                o.insert(opt.into(), json!(n));
            }
        }
        if !ids.insert(id) {
            return Err(unsupported(
                "iothreadids/iothread id",
                &id.to_string(),
                "used twice",
            ));
        }
        objects.push(serde_json::Value::Object(o));
    }
    let mut next = 1;
    while (ids.len() as u32) < count {
        while ids.contains(&next) {
            next += 1;
        }
        ids.insert(next);
        objects.push(json!({"qom-type": "iothread", "id": format!("iothread{next}")}));
    }
    for o in objects {
        a.pair("-object", o.to_string());
    }
    // The main loop's thread pool (libvirt's <defaultiothread>).
    if let Some(d) = top(dom, "defaultiothread").next() {
        let mut o = serde_json::Map::new();
        o.insert("qom-type".into(), json!("main-loop"));
        o.insert("id".into(), json!("main-loop"));
        for (k, v) in &d.attrs {
            let opt = match k.as_str() {
                "thread_pool_min" => "thread-pool-min",
                "thread_pool_max" => "thread-pool-max",
                k => {
                    return Err(unsupported(
                        &format!("defaultiothread {k}"),
                        v,
                        "not implemented",
                    ))
                }
            };
            let n: i64 = v
                .parse()
                .map_err(|_| unsupported(&format!("defaultiothread {k}"), v, "not a number"))?;
            o.insert(opt.into(), json!(n));
        }
        a.pair("-object", serde_json::Value::Object(o).to_string());
    }
    Ok(())
}

/// `<sysinfo type='smbios'>` as `-smbios` tables (with `<os><smbios mode='sysinfo'/>`,
/// as libvirt), `<sysinfo type='fwcfg'>` as `-fw_cfg` entries.
fn sysinfo(a: &mut Argv, dom: &Domain) -> Result<()> {
    let mode = dom
        .os
        .other
        .iter()
        .find(|e| e.name == "smbios")
        .and_then(|e| e.get_attr("mode"));
    for si in top(dom, "sysinfo") {
        match si.get_attr("type") {
            Some("smbios") if mode == Some("sysinfo") => smbios(a, si)?,
            Some("smbios") => {}
            Some("fwcfg") => {
                for e in si.elements() {
                    let name = e.get_attr("name").unwrap_or_default();
                    let mut opt = format!("name={}", qemu_opt_value("sysinfo/entry name", name)?);
                    match e.get_attr("file") {
                        Some(f) => opt.push_str(&format!(
                            ",file={}",
                            super::path_opt("sysinfo/entry file", std::path::Path::new(f))?
                        )),
                        None => opt.push_str(&format!(
                            ",string={}",
                            qemu_opt_value("sysinfo/entry", &e.text())?
                        )),
                    }
                    a.pair("-fw_cfg", opt);
                }
            }
            t => {
                return Err(unsupported(
                    "sysinfo type",
                    t.unwrap_or(""),
                    "expected smbios or fwcfg",
                ))
            }
        }
    }
    if mode == Some("host") {
        return Err(unsupported(
            "os/smbios mode",
            "host",
            "copying the host's SMBIOS tables is not implemented",
        ));
    }
    Ok(())
}

fn smbios(a: &mut Argv, si: &Element) -> Result<()> {
    for block in si.elements() {
        let ty = match block.name.as_str() {
            "bios" => 0,
            "system" => 1,
            "baseBoard" => 2,
            "chassis" => 3,
            "oemStrings" => 11,
            n => return Err(unsupported(&format!("sysinfo/{n}"), "", "not implemented")),
        };
        let mut opt = format!("type={ty}");
        for e in block.elements() {
            let what = format!("sysinfo/{}/entry", block.name);
            let key = if ty == 11 {
                "value"
            } else {
                e.get_attr("name")
                    .ok_or_else(|| unsupported(&what, "", "no name"))?
            };
            if !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(unsupported(&what, key, "not an SMBIOS field name"));
            }
            opt.push_str(&format!(",{key}={}", qemu_opt_value(&what, &e.text())?));
        }
        a.pair("-smbios", opt);
    }
    Ok(())
}

/// Whether the firmware is a pflash device (its blockdevs are named on `-machine`).
pub(super) fn uses_pflash(dom: &Domain) -> bool {
    dom.os
        .loader
        .as_ref()
        .is_some_and(|l| l.kind.as_deref() == Some("pflash"))
        || dom.os.firmware.as_deref() == Some("efi")
}

/// Whether QEMU gets a firmware variable store as pflash1 (not for a stateless loader).
pub(super) fn has_nvram(dom: &Domain) -> bool {
    dom.os.loader_stateless != Some(true)
        && (dom.os.nvram.is_some() || matches!(dom.os.nvram_source, Some(NvramSource::Network(_))))
}

/// `-machine`; returns the accelerator name the rest of the command line depends on.
pub(super) fn machine(a: &mut Argv, dom: &Domain, ctx: &LaunchContext) -> Result<&'static str> {
    let machine = dom
        .os
        .machine
        .as_deref()
        .ok_or_else(|| unsupported("os/type", "", "no machine type (fill_defaults first)"))?;
    let accel = match (dom.virt_type, ctx.accel) {
        (VirtType::Kvm, Accel::Kvm) => "kvm",
        (VirtType::Kvm, Accel::Tcg) => {
            return Err(unsupported(
                "domain type",
                "kvm",
                "KVM is not usable on this host; use type='qemu'",
            ))
        }
        (VirtType::Qemu, _) => "tcg",
    };
    // Guest RAM stays out of QEMU's core dumps unless <memory dumpCore='on'> (qemu.conf's
    // dump_guest_core default, off).
    let dump = if dom.dump_core == Some(true) {
        "on"
    } else {
        "off"
    };
    let mut mopts = format!(
        "{},accel={accel},usb=off,dump-guest-core={dump}",
        qemu_opt_value("machine", machine)?
    );
    if dom.feature("smm").is_some() {
        mopts.push_str(if dom.has_feature("smm") {
            ",smm=on"
        } else {
            ",smm=off"
        });
    }
    if let Some(v) = dom.feature("vmport") {
        mopts.push_str(if v.get_attr("state") == Some("off") {
            ",vmport=off"
        } else {
            ",vmport=on"
        });
    }
    if dom.feature("acpi").is_none() && dom.features.is_some() {
        mopts.push_str(",acpi=off");
    }
    if dom.clock.as_ref().is_some_and(|c| {
        c.children_named("timer")
            .any(|t| t.get_attr("name") == Some("hpet") && t.get_attr("present") == Some("no"))
    }) {
        mopts.push_str(",hpet=off");
    }
    mopts.push_str(&memory::machine_opts(dom));
    // libvirt's <ioapic driver='qemu|kvm'/>; the irqchip is KVM's business only.
    match dom.feature("ioapic").and_then(|f| f.get_attr("driver")) {
        Some("qemu") if accel == "kvm" => mopts.push_str(",kernel_irqchip=split"),
        Some("kvm") if accel == "kvm" => mopts.push_str(",kernel_irqchip=on"),
        _ => {}
    }
    if uses_pflash(dom) {
        mopts.push_str(",pflash0=libvirt-pflash0-format");
        if has_nvram(dom) {
            mopts.push_str(",pflash1=libvirt-pflash1-format");
        }
    }
    a.pair("-machine", mopts);
    Ok(accel)
}

/// `-cpu`: the model and features of `<cpu>`, then Hyper-V flags (on qemu64 without one).
pub(super) fn cpu(a: &mut Argv, dom: &Domain, accel: &str, ctx: &LaunchContext) -> Result<()> {
    // libvirt pins QEMU's threads to these host CPUs (sched_setaffinity); unless the
    // runtime does the same it is refused rather than ignored.
    if let Some(set) = &dom.vcpu_cpuset {
        host_cpus(dom)?;
        if !ctx.pins_cpus {
            return Err(unsupported(
                "vcpu cpuset",
                set,
                "pinning to host CPUs is not implemented",
            ));
        }
    }
    let cpu = match &dom.cpu {
        Some(c) => {
            // NUMA cells are built with the memory (`memory.rs`).
            // NUMA cells are built with the memory (`memory.rs`); caches and the
            // physical address width below.
            if let Some(o) = c
                .other
                .iter()
                .find(|o| !matches!(o.name.as_str(), "numa" | "cache" | "maxphysaddr"))
            {
                return Err(unsupported(
                    &format!("cpu/{}", o.name),
                    c.mode.as_str(),
                    "not implemented",
                ));
            }
            let mut s = match c.mode {
                CpuMode::HostPassthrough | CpuMode::HostModel if accel == "kvm" => {
                    "host".to_owned()
                }
                CpuMode::HostPassthrough | CpuMode::HostModel => {
                    return Err(unsupported(
                        "cpu mode",
                        c.mode.as_str(),
                        "needs KVM; use 'maximum' or a custom model",
                    ))
                }
                CpuMode::Maximum => "max".to_owned(),
                CpuMode::Custom => {
                    let default = if dom.os.arch.as_deref() == Some("i686") {
                        "qemu32"
                    } else {
                        "qemu64"
                    };
                    qemu_opt_value("cpu model", c.model.as_deref().unwrap_or(default))?
                }
            };
            // libvirt passes host-passthrough's migratable on or off to QEMU.
            if let (CpuMode::HostPassthrough, Some(m)) = (c.mode, c.migratable.as_deref()) {
                if !matches!(m, "on" | "off") {
                    return Err(unsupported("cpu migratable", m, "expected on or off"));
                }
                s.push_str(&format!(",migratable={m}"));
            }
            for (policy, name) in &c.features {
                let name = qemu_opt_value("cpu feature", name)?;
                match policy.as_str() {
                    "force" | "require" => s.push_str(&format!(",{name}=on")),
                    "disable" | "forbid" => s.push_str(&format!(",{name}=off")),
                    _ => {}
                }
            }
            s.push_str(&cache_and_phys_bits(c)?);
            Some(s)
        }
        None => None,
    };
    let mut hyperv = hyperv_flags(dom)?;
    // <panic model='hyperv'/>: the guest reports crashes through Hyper-V's MSRs.
    if dom
        .devices
        .panics
        .iter()
        .any(|p| p.model.as_deref() == Some("hyperv"))
    {
        hyperv.push_str(",hv-crash");
    }
    let cpu = match (cpu, hyperv.is_empty()) {
        (c, true) => c,
        (Some(c), false) => Some(c + &hyperv),
        (None, false) => Some(format!("qemu64{hyperv}")),
    };
    if let Some(c) = cpu {
        a.pair("-cpu", c);
    }
    Ok(())
}

/// `<features><hyperv>` enlightenments as `-cpu` flags (`,hv-relaxed=on,...`).
fn hyperv_flags(dom: &Domain) -> Result<String> {
    let Some(hv) = dom.feature("hyperv") else {
        return Ok(String::new());
    };
    let mut out = String::new();
    for e in hv.elements() {
        if e.get_attr("state") != Some("on") {
            continue;
        }
        let name = match e.name.as_str() {
            "relaxed" | "vapic" | "vpindex" | "runtime" | "synic" | "stimer" | "reset"
            | "frequencies" | "reenlightenment" | "tlbflush" | "ipi" | "evmcs" | "avic" => {
                e.name.replace('_', "-")
            }
            "spinlocks" => {
                let retries = e
                    .parse_attr::<u32>("retries")
                    .ok()
                    .flatten()
                    .unwrap_or(8191);
                out.push_str(&format!(",hv-spinlocks=0x{retries:x}"));
                continue;
            }
            "vendor_id" => continue,
            other => {
                return Err(unsupported(
                    "features/hyperv",
                    other,
                    "unknown enlightenment",
                ))
            }
        };
        out.push_str(&format!(",hv-{name}=on"));
    }
    Ok(out)
}

/// `-m`, `-smp` (with `<cpu><topology>`) and `-uuid`.
pub(super) fn memory(a: &mut Argv, dom: &Domain) -> Result<()> {
    // With guest NUMA cells the RAM is what the cells add up to (as libvirt starts
    // it; QEMU refuses nodes that do not add up to the RAM size).
    let size = memory::numa_total_kib(dom)?.unwrap_or(dom.memory_kib);
    match dom.max_memory {
        Some((max, slots)) => a.pair("-m", format!("size={size}k,slots={slots},maxmem={max}k")),
        None => a.pair("-m", format!("size={size}k")),
    }
    let cur = dom.current_vcpus.unwrap_or(dom.vcpus);
    let mut smp = format!("{cur},maxcpus={}", dom.vcpus);
    if let Some(t) = dom.cpu.as_ref().and_then(|c| c.topology) {
        smp.push_str(&format!(
            ",sockets={},dies={},cores={},threads={}",
            t.sockets, t.dies, t.cores, t.threads
        ));
    }
    a.pair("-smp", smp);
    a.pair("-uuid", dom.uuid.to_string());
    Ok(())
}

/// Clock: utc by default, localtime for Windows guests.
pub(super) fn clock(a: &mut Argv, dom: &Domain, accel: &str) -> Result<()> {
    let timer = |name: &str, key: &str| -> Option<String> {
        dom.clock
            .as_ref()?
            .children_named("timer")
            .find(|t| t.get_attr("name") == Some(name))?
            .get_attr(key)
            .map(str::to_owned)
    };
    let offset = dom
        .clock
        .as_ref()
        .and_then(|c| c.get_attr("offset"))
        .unwrap_or("utc");
    let slew = if timer("rtc", "tickpolicy").as_deref() == Some("catchup") {
        ",driftfix=slew"
    } else {
        ""
    };
    let clock = dom.clock.as_ref();
    let attr = |k: &str| clock.and_then(|c| c.get_attr(k));
    // libvirt's absolute and variable offsets: the guest's RTC starts at a UTC time
    // (a fixed one, or now shifted by `adjustment` seconds).
    let base = match offset {
        "utc" | "localtime" => offset.to_owned(),
        "absolute" => {
            let start = attr("start").unwrap_or("");
            let t: i64 = start
                .parse()
                .map_err(|_| unsupported("clock start", start, "not a number of seconds"))?;
            rtc_time(t)
        }
        "variable" if attr("basis").unwrap_or("utc") == "utc" => {
            let adj = attr("adjustment").unwrap_or("0");
            let adj: i64 = adj
                .parse()
                .map_err(|_| unsupported("clock adjustment", adj, "not a number of seconds"))?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
            rtc_time(now.saturating_add(adj))
        }
        "variable" => {
            return Err(unsupported(
                "clock basis",
                attr("basis").unwrap_or(""),
                "only a UTC basis is implemented",
            ))
        }
        o => {
            return Err(unsupported(
                "clock offset",
                o,
                "expected utc, localtime, variable or absolute (a timezone needs QEMU's TZ)",
            ))
        }
    };
    a.pair("-rtc", format!("base={base}{slew}"));
    if timer("pit", "tickpolicy").as_deref() == Some("delay") && accel == "kvm" {
        a.pair("-global", "kvm-pit.lost_tick_policy=delay");
    }
    Ok(())
}

/// Seconds since the epoch as QEMU's `-rtc base=` date (UTC, `YYYY-MM-DDTHH:MM:SS`).
fn rtc_time(t: i64) -> String {
    let (days, secs) = (t.div_euclid(86_400), t.rem_euclid(86_400));
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtc_dates_are_utc_calendar_dates() {
        assert_eq!(rtc_time(0), "1970-01-01T00:00:00");
        assert_eq!(rtc_time(253_402_300_799), "9999-12-31T23:59:59");
        assert_eq!(rtc_time(1_234_567_890), "2009-02-13T23:31:30");
        assert_eq!(rtc_time(951_782_400), "2000-02-29T00:00:00");
    }

    fn dom(cpuset: &str) -> Domain {
        Domain::parse(&format!(
            "<domain type='kvm'><name>p</name><memory>65536</memory>\
             <vcpu cpuset='{cpuset}'>2</vcpu><os><type>hvm</type></os></domain>"
        ))
        .unwrap()
    }

    /// Cgroup tunables pass the command line in both modes (the runtime applies them
    /// through the domain's cgroup in system mode, skips them in session mode);
    /// `min_guarantee` is refused in both, as libvirt refuses it for QEMU.
    #[test]
    fn cgroup_tunables_follow_the_mode() {
        let mut d = Domain::parse(
            "<domain type='kvm'><name>t</name><memory>65536</memory>\
             <memtune><soft_limit>1024</soft_limit></memtune><os><type>hvm</type></os></domain>",
        )
        .unwrap();
        d.fill_defaults(&crate::caps::tests::fake()).unwrap();
        let mut ctx = LaunchContext::new(
            "/usr/bin/qemu-system-x86_64".into(),
            "/run/q".into(),
            "/run/p".into(),
            "/run".into(),
        );
        ctx.accel = Accel::Kvm;
        assert!(super::super::build(&d, &ctx).is_ok());
        ctx.sandbox = true;
        assert!(super::super::build(&d, &ctx).is_ok());
        let mut m = d.clone();
        for e in m.other.iter_mut().filter(|e| e.name == "memtune") {
            e.push(common::xml::Element::with_text("min_guarantee", "512"));
        }
        for sandbox in [false, true] {
            ctx.sandbox = sandbox;
            let e = super::super::build(&m, &ctx).unwrap_err().to_string();
            assert!(
                e.contains("Parameter 'min_guarantee' not supported by QEMU."),
                "{e}"
            );
        }
    }

    #[test]
    fn host_cpus_follow_libvirts_cpuset_syntax() {
        assert_eq!(host_cpus(&dom("1-4,^3,8")).unwrap(), Some(vec![1, 2, 4, 8]));
        assert_eq!(host_cpus(&dom("0")).unwrap(), Some(vec![0]));
    }
}
