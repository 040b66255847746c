//! The machine itself: `-machine` (type, accelerator, machine-level features), `-cpu`
//! (model, features, Hyper-V enlightenments), `-m`/`-smp`/`-uuid` and the clock.

use crate::xml::{CpuMode, Domain, VirtType};

use super::{memory, qemu_opt_value, unsupported, Accel, Argv, LaunchContext, Result};

/// The top-level elements honoured here (the command line does not refuse them).
pub(super) const HANDLED: &[&str] = &[];

/// Whether the firmware is a pflash device (its blockdevs are named on `-machine`).
pub(super) fn uses_pflash(dom: &Domain) -> bool {
    dom.os
        .loader
        .as_ref()
        .is_some_and(|l| l.kind.as_deref() == Some("pflash"))
        || dom.os.firmware.as_deref() == Some("efi")
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
    let mut mopts = format!(
        "{},accel={accel},usb=off,dump-guest-core=off",
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
    if uses_pflash(dom) {
        mopts.push_str(",pflash0=libvirt-pflash0-format");
        if dom.os.nvram.is_some() {
            mopts.push_str(",pflash1=libvirt-pflash1-format");
        }
    }
    a.pair("-machine", mopts);
    Ok(accel)
}

/// `-cpu`: the model and features of `<cpu>`, then Hyper-V flags (on qemu64 without one).
pub(super) fn cpu(a: &mut Argv, dom: &Domain, accel: &str) -> Result<()> {
    // libvirt pins QEMU's threads to these host CPUs (sched_setaffinity); the
    // runtime here does not yet, so it is refused rather than ignored.
    if let Some(set) = &dom.vcpu_cpuset {
        return Err(unsupported(
            "vcpu cpuset",
            set,
            "pinning to host CPUs is not implemented",
        ));
    }
    let cpu = match &dom.cpu {
        Some(c) => {
            // NUMA cells are built with the memory (`memory.rs`).
            if let Some(o) = c.other.iter().find(|o| o.name != "numa") {
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
            for (policy, name) in &c.features {
                let name = qemu_opt_value("cpu feature", name)?;
                match policy.as_str() {
                    "force" | "require" => s.push_str(&format!(",{name}=on")),
                    "disable" | "forbid" => s.push_str(&format!(",{name}=off")),
                    _ => {}
                }
            }
            Some(s)
        }
        None => None,
    };
    let hyperv = hyperv_flags(dom)?;
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
    match offset {
        "utc" | "localtime" => {
            let slew = if timer("rtc", "tickpolicy").as_deref() == Some("catchup") {
                ",driftfix=slew"
            } else {
                ""
            };
            a.pair("-rtc", format!("base={offset}{slew}"))
        }
        o => return Err(unsupported("clock offset", o, "expected utc or localtime")),
    }
    if timer("pit", "tickpolicy").as_deref() == Some("delay") && accel == "kvm" {
        a.pair("-global", "kvm-pit.lost_tick_policy=delay");
    }
    Ok(())
}
