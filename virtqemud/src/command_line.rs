//! Domain model -> QEMU argv, in the modern style (`-blockdev` + `-device` with ids,
//! `-netdev`, `-chardev`, `-machine TYPE,accel=`). Never goes through a shell: the
//! result is an argv vector. Every user value that lands in QEMU's key=value,comma
//! option syntax goes through [`qemu_opt_value`], the one escaping function.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::xml::{
    Address, BootDev, ChardevSource, CpuMode, DiskBus, DiskDevice, DiskSource, Domain,
    GraphicsKind, InterfaceKind, VirtType,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

/// What the runtime decides at launch time.
#[derive(Debug, Clone)]
pub struct LaunchContext {
    /// The emulator to run (normally the domain's `<emulator>`).
    pub emulator: PathBuf,
    pub qmp_socket: PathBuf,
    pub pidfile: PathBuf,
    pub accel: Accel,
    /// The runtime dir of this domain (pty-less helpers, sockets).
    pub runtime_dir: PathBuf,
    /// Add `-sandbox on,...` (system mode).
    pub sandbox: bool,
    /// Start paused (`-S`); the runtime resumes with `cont` unless asked to stay paused.
    pub start_paused: bool,
    /// Pre-opened tap file descriptors per `<interface type='ethernet'|'bridge'|'network'>`,
    /// in interface order; `None` lets QEMU open the tap by name (`ifname=`).
    pub tap_fds: Vec<Option<i32>>,
    /// Resolves `<disk type='volume'>` to a host path (the storage daemon's answer).
    pub volume_paths: Vec<(String, String, PathBuf)>,
    /// The control socket of the swtpm started for an emulated `<tpm>`.
    pub tpm_socket: Option<PathBuf>,
}

impl LaunchContext {
    pub fn new(
        emulator: PathBuf,
        qmp_socket: PathBuf,
        pidfile: PathBuf,
        runtime_dir: PathBuf,
    ) -> Self {
        LaunchContext {
            emulator,
            qmp_socket,
            pidfile,
            accel: Accel::Tcg,
            runtime_dir,
            sandbox: false,
            start_paused: true,
            tap_fds: Vec::new(),
            volume_paths: Vec::new(),
            tpm_socket: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CommandLineError {
    #[error("value '{value}' of {what} cannot be passed to QEMU: {reason}")]
    Unsafe {
        what: String,
        value: String,
        reason: &'static str,
    },
    #[error("<{element}> '{value}' is not supported by the command line builder: {reason}")]
    Unsupported {
        element: String,
        value: String,
        reason: String,
    },
}

impl From<CommandLineError> for common::error::VirError {
    fn from(e: CommandLineError) -> Self {
        common::error::VirError::unsupported(e)
    }
}

type Result<T> = std::result::Result<T, CommandLineError>;

fn unsupported(element: &str, value: &str, reason: impl ToString) -> CommandLineError {
    CommandLineError::Unsupported {
        element: element.to_owned(),
        value: value.to_owned(),
        reason: reason.to_string(),
    }
}

/// THE escaping function for QEMU's option syntax: commas are doubled; values with
/// control characters (newline, NUL, ...) cannot be made safe and are rejected, as are
/// empty values.
pub fn qemu_opt_value(what: &str, value: &str) -> Result<String> {
    let bad = |reason| CommandLineError::Unsafe {
        what: what.to_owned(),
        value: value.to_owned(),
        reason,
    };
    if value.is_empty() {
        return Err(bad("empty"));
    }
    if value.chars().any(char::is_control) {
        return Err(bad("contains control characters"));
    }
    Ok(value.replace(',', ",,"))
}

fn path_opt(what: &str, p: &Path) -> Result<String> {
    let s = p.to_str().ok_or_else(|| CommandLineError::Unsafe {
        what: what.to_owned(),
        value: p.display().to_string(),
        reason: "not UTF-8",
    })?;
    if !p.is_absolute() {
        return Err(CommandLineError::Unsafe {
            what: what.to_owned(),
            value: s.to_owned(),
            reason: "must be an absolute path",
        });
    }
    qemu_opt_value(what, s)
}

/// Where devices go on QEMU's PCI buses: the root bus (`pcie.0`/`pci.0`) or the bus of
/// a bridge or root port (`pci.N`, N its controller index, as libvirt names them).
struct PciBuses {
    q35: bool,
    /// Slots whose function 0 must say `multifunction=on` (other functions are used).
    multi: BTreeSet<(u8, u8)>,
}

impl PciBuses {
    fn of(dom: &Domain) -> PciBuses {
        PciBuses {
            q35: dom.is_q35(),
            multi: dom
                .devices
                .pci_addresses()
                .iter()
                .filter(|p| p.function != 0)
                .map(|p| (p.bus, p.slot))
                .collect(),
        }
    }

    /// `,bus=...,addr=...` for a device at `a`, or nothing for no address.
    fn suffix(&self, a: &Option<Address>) -> String {
        let Some(p) = a.as_ref().and_then(Address::pci) else {
            return String::new();
        };
        let bus = match (p.bus, self.q35) {
            (0, true) => "pcie.0".to_owned(),
            (0, false) => "pci.0".to_owned(),
            (b, _) => format!("pci.{b}"),
        };
        let mut s = format!(",bus={bus},addr=0x{:x}", p.slot);
        if p.function != 0 {
            s.push_str(&format!(".0x{:x}", p.function));
        } else if self.multi.contains(&(p.bus, p.slot)) {
            s.push_str(",multifunction=on");
        }
        s
    }
}

struct Argv(Vec<OsString>);

impl Argv {
    fn push(&mut self, a: impl Into<OsString>) {
        self.0.push(a.into());
    }
    fn pair(&mut self, k: &str, v: impl Into<OsString>) {
        self.0.push(k.into());
        self.0.push(v.into());
    }
}

/// Top-level elements that may be left out at start: `<resource>` places the domain in
/// a cgroup partition, and this runtime uses no cgroups; `<seclabel>` of model `dac` (or
/// type `none`) asks for what the runtime does anyway. Every other top-level element
/// it does not type is refused by name.
fn ignorable_top_level(el: &common::xml::Element) -> bool {
    match el.name.as_str() {
        "resource" => true,
        "seclabel" => {
            el.get_attr("type") == Some("none")
                || el.get_attr("model") == Some("dac") && el.get_attr("relabel") != Some("no")
        }
        _ => false,
    }
}

/// Builds the argv (argv[0] is the emulator) for a domain whose defaults are filled.
pub fn build(dom: &Domain, ctx: &LaunchContext) -> Result<Vec<OsString>> {
    let mut a = Argv(Vec::with_capacity(64));
    let d = &dom.devices;
    if let Some(o) = dom.other.iter().find(|o| !ignorable_top_level(o)) {
        return Err(unsupported(&o.name, "", "not implemented"));
    }
    if let Some(o) = d.other.first() {
        return Err(unsupported(
            &o.name,
            "",
            "this device type is not implemented",
        ));
    }
    let q35 = dom.is_q35();
    a.push(ctx.emulator.clone());
    a.pair(
        "-name",
        format!(
            "guest={},debug-threads=on",
            qemu_opt_value("name", dom.name.as_str())?
        ),
    );
    if ctx.start_paused {
        a.push("-S");
    }
    a.push("-no-user-config");
    a.push("-nodefaults");
    a.push("-no-shutdown");
    if ctx.sandbox {
        a.pair(
            "-sandbox",
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        );
    }
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
    let pflash = dom
        .os
        .loader
        .as_ref()
        .is_some_and(|l| l.kind.as_deref() == Some("pflash"))
        || dom.os.firmware.as_deref() == Some("efi");
    if pflash {
        mopts.push_str(",pflash0=libvirt-pflash0-format");
        if dom.os.nvram.is_some() {
            mopts.push_str(",pflash1=libvirt-pflash1-format");
        }
    }
    a.pair("-machine", mopts);
    // CPU
    let cpu = match &dom.cpu {
        Some(c) => {
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
                    qemu_opt_value("cpu model", c.model.as_deref().unwrap_or("qemu64"))?
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
    if pflash {
        let loader = dom
            .os
            .loader
            .as_ref()
            .and_then(|l| l.path.as_ref())
            .ok_or_else(|| {
                unsupported(
                    "os/loader",
                    "",
                    "a pflash loader needs a path (firmware='efi' chooses one at start)",
                )
            })?;
        a.pair("-blockdev", format!("{{\"driver\":\"file\",\"filename\":{},\"node-name\":\"libvirt-pflash0-storage\",\"read-only\":true}}", json_str(loader)?));
        a.pair("-blockdev", "{\"node-name\":\"libvirt-pflash0-format\",\"read-only\":true,\"driver\":\"raw\",\"file\":\"libvirt-pflash0-storage\"}");
        if let Some(nv) = &dom.os.nvram {
            a.pair("-blockdev", format!("{{\"driver\":\"file\",\"filename\":{},\"node-name\":\"libvirt-pflash1-storage\"}}", json_str(nv)?));
            a.pair("-blockdev", "{\"node-name\":\"libvirt-pflash1-format\",\"read-only\":false,\"driver\":\"raw\",\"file\":\"libvirt-pflash1-storage\"}");
        }
        // Secure Boot firmware keeps its variables safe from the guest only with SMM.
        if dom.os.loader.as_ref().and_then(|l| l.secure) == Some(true) {
            a.pair("-global", "driver=cfi.pflash01,property=secure,value=on");
        }
    } else if let Some(l) = dom.os.loader.as_ref().and_then(|l| l.path.as_ref()) {
        a.pair("-bios", path_opt("os/loader", l)?);
    }
    a.pair("-m", format!("size={}k", dom.memory_kib));
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
    // Clock: utc by default, localtime for Windows guests.
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
    // Monitor.
    a.pair(
        "-chardev",
        format!(
            "socket,id=charmonitor,path={},server=on,wait=off",
            path_opt("qmp socket", &ctx.qmp_socket)?
        ),
    );
    a.pair("-mon", "chardev=charmonitor,id=monitor,mode=control");
    a.pair("-pidfile", path_opt("pidfile", &ctx.pidfile)?);
    // Boot.
    if let Some(k) = &dom.os.kernel {
        a.pair("-kernel", path_opt("os/kernel", k)?);
        if let Some(i) = &dom.os.initrd {
            a.pair("-initrd", path_opt("os/initrd", i)?);
        }
        if let Some(c) = &dom.os.cmdline {
            if c.chars().any(char::is_control) {
                return Err(CommandLineError::Unsafe {
                    what: "os/cmdline".into(),
                    value: c.clone(),
                    reason: "contains control characters",
                });
            }
            // -append takes the whole argument verbatim (not option syntax).
            a.pair("-append", c.as_str());
        }
        if let Some(t) = &dom.os.dtb {
            a.pair("-dtb", path_opt("os/dtb", t)?);
        }
    }
    let per_device_boot = d.disks.iter().any(|x| x.boot_order.is_some())
        || d.interfaces.iter().any(|x| x.boot_order.is_some());
    if !per_device_boot && !dom.os.boot.is_empty() {
        let order: String = dom
            .os
            .boot
            .iter()
            .map(|b| match b {
                BootDev::Fd => 'a',
                BootDev::Hd => 'c',
                BootDev::Cdrom => 'd',
                BootDev::Network => 'n',
            })
            .collect();
        let menu = match dom.os.bootmenu {
            Some(true) => ",menu=on",
            _ => "",
        };
        a.pair("-boot", format!("order={order}{menu},strict=on"));
    } else if dom.os.bootmenu == Some(true) {
        a.pair("-boot", "menu=on,strict=on");
    }
    // Controllers: PCI bridges and root ports first, parents before children (libvirt
    // gives a parent a lower index), then the rest.
    let buses = PciBuses::of(dom);
    if let Some(c) = d.controllers.iter().find(|c| !c.unhandled.is_empty()) {
        return Err(unsupported(
            &format!("controller/{}", c.unhandled[0].name),
            &c.kind,
            "not implemented",
        ));
    }
    let mut bridges: Vec<_> = d.controllers.iter().filter(|c| c.is_pci_bridge()).collect();
    bridges.sort_by_key(|c| c.index);
    for c in bridges {
        let pci = buses.suffix(&c.address);
        let (i, chassis) = (c.index, c.target_chassis.unwrap_or(c.index));
        let dev = match c.model.as_deref().unwrap_or_default() {
            "pcie-root-port" => {
                let port = c.target_port.unwrap_or(0x10 + i.saturating_sub(1));
                format!("pcie-root-port,port=0x{port:x},chassis={chassis},id=pci.{i}{pci}")
            }
            "pci-bridge" => format!("pci-bridge,chassis_nr={chassis},id=pci.{i}{pci}"),
            "pcie-to-pci-bridge" => format!("pcie-pci-bridge,id=pci.{i}{pci}"),
            _ => format!("i82801b11-bridge,id=pci.{i}{pci}"),
        };
        a.pair("-device", dev);
    }
    for c in &d.controllers {
        let pci = buses.suffix(&c.address);
        match (c.kind.as_str(), c.model.as_deref()) {
            ("pci", Some("pci-root" | "pcie-root") | None) => {}
            ("pci", Some(m)) if c.is_pci_bridge() || m.is_empty() => {}
            ("pci", Some(m)) => {
                return Err(unsupported("controller pci model", m, "not implemented"))
            }
            ("usb", Some("none")) | ("sata", _) | ("ide", _) => {}
            ("usb", m) => {
                let model = m.unwrap_or("qemu-xhci");
                // libvirt gives an xHCI controller's port count to both its USB 2 and 3 sides.
                let ports = match (c.ports, model) {
                    (Some(p), "qemu-xhci" | "nec-xhci") => format!(",p2={p},p3={p}"),
                    _ => String::new(),
                };
                a.pair("-device", format!("{model},id=usb{}{ports}{pci}", c.index));
            }
            ("scsi", _) => a.pair(
                "-device",
                format!("virtio-scsi-pci,id=scsi{}{pci}", c.index),
            ),
            ("virtio-serial", _) => a.pair(
                "-device",
                format!("virtio-serial-pci,id=virtio-serial{}{pci}", c.index),
            ),
            (k, _) => return Err(unsupported("controller type", k, "not implemented")),
        }
    }
    // Disks.
    let mut ide_unit = 0u32;
    let mut sata_unit = 0u32;
    let mut scsi_unit = 0u32;
    let mut fd_unit = 0u32;
    for (i, disk) in d.disks.iter().enumerate() {
        if let Some(c) = disk.unhandled.first() {
            return Err(unsupported(
                &format!("disk/{}", c.name),
                &disk.target_dev,
                "not implemented",
            ));
        }
        if let Some((k, v)) = disk.driver.unhandled.first() {
            return Err(unsupported(
                &format!("disk/driver {k}"),
                v,
                "not implemented",
            ));
        }
        let bus = disk.bus.ok_or_else(|| {
            unsupported(
                "disk target",
                &disk.target_dev,
                "no bus (fill_defaults first)",
            )
        })?;
        let id = format!("disk{i}");
        let fmt_node = format!("libvirt-{i}-format");
        let has_media = match &disk.source {
            Some(src) => {
                let (driver, path) = match src {
                    DiskSource::File(p) => ("file", p.clone()),
                    DiskSource::Block(p) => ("host_device", p.clone()),
                    DiskSource::Volume { pool, volume } => (
                        "file",
                        ctx.volume_paths
                            .iter()
                            .find(|(p, v, _)| p == pool && v == volume)
                            .map(|(_, _, path)| path.clone())
                            .ok_or_else(|| {
                                unsupported(
                                    "disk source",
                                    &format!("{pool}/{volume}"),
                                    "volume not resolved",
                                )
                            })?,
                    ),
                };
                let ro = disk.readonly;
                let cache_direct = matches!(
                    disk.driver.cache.as_deref(),
                    Some("none") | Some("directsync")
                );
                let no_flush = disk.driver.cache.as_deref() == Some("unsafe");
                let mut file = format!(
                    "{{\"driver\":\"{driver}\",\"filename\":{},\"node-name\":\"libvirt-{i}-storage\",\"auto-read-only\":true",
                    json_str(&path)?
                );
                if matches!(
                    disk.driver.io.as_deref(),
                    Some("native") | Some("io_uring") | Some("threads")
                ) {
                    file.push_str(&format!(
                        ",\"aio\":\"{}\"",
                        disk.driver.io.as_deref().unwrap_or("threads")
                    ));
                }
                if disk.driver.discard.as_deref() == Some("unmap") {
                    file.push_str(",\"discard\":\"unmap\"");
                }
                file.push_str(&format!(
                    ",\"cache\":{{\"direct\":{cache_direct},\"no-flush\":{no_flush}}}}}"
                ));
                a.pair("-blockdev", file);
                let format = disk.driver.format.as_deref().unwrap_or("raw");
                a.pair(
                    "-blockdev",
                    format!(
                        "{{\"node-name\":\"{fmt_node}\",\"read-only\":{ro},\"driver\":\"{format}\",\"file\":\"libvirt-{i}-storage\"}}"
                    ),
                );
                true
            }
            None => false,
        };
        let mut dev = match (bus, disk.device) {
            (DiskBus::Virtio, DiskDevice::Disk) => {
                format!("virtio-blk-pci{}", buses.suffix(&disk.address))
            }
            (DiskBus::Virtio, _) => {
                return Err(unsupported(
                    "disk target bus",
                    "virtio",
                    "cdrom and floppy cannot be virtio",
                ))
            }
            (DiskBus::Sata, dv) => {
                if !q35 {
                    return Err(unsupported(
                        "disk target bus",
                        "sata",
                        "needs a q35 machine",
                    ));
                }
                let u = drive_unit(&disk.address, sata_unit, 6, &disk.target_dev)?;
                sata_unit = u + 1;
                format!(
                    "{},bus=ide.{u}",
                    if dv == DiskDevice::Cdrom {
                        "ide-cd"
                    } else {
                        "ide-hd"
                    }
                )
            }
            (DiskBus::Ide, dv) => {
                let u = match &disk.address {
                    Some(Address::Drive { bus, unit, .. }) => bus * 2 + unit,
                    _ => ide_unit,
                };
                ide_unit = u + 1;
                if u > 3 {
                    return Err(unsupported(
                        "disk target",
                        &disk.target_dev,
                        "at most 4 IDE drives",
                    ));
                }
                format!(
                    "{},bus=ide.{},unit={}",
                    if dv == DiskDevice::Cdrom {
                        "ide-cd"
                    } else {
                        "ide-hd"
                    },
                    u / 2,
                    u % 2
                )
            }
            (DiskBus::Scsi, dv) => {
                let u = drive_unit(&disk.address, scsi_unit, 16384, &disk.target_dev)?;
                scsi_unit = u + 1;
                format!(
                    "{},bus=scsi0.0,channel=0,scsi-id=0,lun={u}",
                    if dv == DiskDevice::Cdrom {
                        "scsi-cd"
                    } else {
                        "scsi-hd"
                    }
                )
            }
            (DiskBus::Usb, _) => "usb-storage,bus=usb0.0".to_owned(),
            (DiskBus::Fdc, _) => {
                let u = fd_unit;
                fd_unit += 1;
                format!("floppy,unit={u}")
            }
        };
        if has_media {
            dev.push_str(&format!(",drive={fmt_node}"));
        }
        dev.push_str(&format!(",id={id}"));
        if let Some(s) = &disk.serial {
            dev.push_str(&format!(",serial={}", qemu_opt_value("disk serial", s)?));
        }
        if let Some(o) = disk.boot_order {
            dev.push_str(&format!(",bootindex={o}"));
        }
        if disk.shareable {
            dev.push_str(",share-rw=on");
        }
        a.pair("-device", dev);
    }
    // Network.
    let mut tap_index = 0usize;
    for (i, nic) in d.interfaces.iter().enumerate() {
        if let Some(c) = nic.unhandled.first() {
            return Err(unsupported(
                &format!("interface/{}", c.name),
                nic.mac.map(|m| m.to_string()).as_deref().unwrap_or(""),
                "not implemented",
            ));
        }
        let id = format!("hostnet{i}");
        match &nic.kind {
            InterfaceKind::User => a.pair("-netdev", format!("user,id={id}")),
            InterfaceKind::Ethernet | InterfaceKind::Bridge(_) | InterfaceKind::Network(_) => {
                let fd = ctx.tap_fds.get(tap_index).copied().flatten();
                tap_index += 1;
                match (fd, &nic.target_dev, &nic.kind) {
                    (Some(fd), _, _) => a.pair("-netdev", format!("tap,fd={fd},id={id},vhost=off")),
                    (None, Some(dev), InterfaceKind::Ethernet) => {
                        crate::xml::check_ifname("interface/target", dev)
                            .map_err(|e| unsupported("interface target", dev, e))?;
                        a.pair(
                            "-netdev",
                            format!(
                                "tap,ifname={},script=no,downscript=no,id={id}",
                                qemu_opt_value("interface target dev", dev)?
                            ),
                        )
                    }
                    (None, None, InterfaceKind::Ethernet) => {
                        return Err(unsupported(
                            "interface",
                            "ethernet",
                            "needs <target dev> or a tap fd from the runtime",
                        ))
                    }
                    (None, _, k) => {
                        return Err(unsupported(
                            "interface",
                            if matches!(k, InterfaceKind::Bridge(_)) {
                                "bridge"
                            } else {
                                "network"
                            },
                            "the runtime must open the tap and pass its fd",
                        ))
                    }
                }
            }
        }
        let model = match nic.model.as_deref().unwrap_or("virtio") {
            "virtio" => "virtio-net-pci",
            "e1000" => "e1000",
            "e1000e" => "e1000e",
            "rtl8139" => "rtl8139",
            m => return Err(unsupported("interface model", m, "not implemented")),
        };
        let mac = nic
            .mac
            .ok_or_else(|| unsupported("interface", "", "no MAC (fill_defaults first)"))?;
        let mut dev = format!(
            "{model},netdev={id},id=net{i},mac={mac}{}",
            buses.suffix(&nic.address)
        );
        if let Some(o) = nic.boot_order {
            dev.push_str(&format!(",bootindex={o}"));
        }
        match (nic.mtu, model) {
            (Some(m), "virtio-net-pci") => dev.push_str(&format!(",host_mtu={m}")),
            (Some(_), _) if matches!(nic.kind, InterfaceKind::User) => {
                return Err(unsupported(
                    "interface/mtu",
                    "user",
                    "only tap-backed NICs have an MTU to set",
                ))
            }
            _ => {}
        }
        a.pair("-device", dev);
    }
    // Character devices.
    let spice = d.graphics.iter().any(|g| g.kind == GraphicsKind::Spice);
    let chardev = |id: &str, src: &ChardevSource| -> Result<String> {
        Ok(match src {
            ChardevSource::Pty => format!("pty,id={id}"),
            ChardevSource::Null => format!("null,id={id}"),
            ChardevSource::File { path, append } => format!(
                "file,id={id},path={}{}",
                path_opt("chardev file", path)?,
                if *append == Some(true) {
                    ",append=on"
                } else {
                    ""
                }
            ),
            ChardevSource::Unix { path, listen } => {
                let auto = ctx.runtime_dir.join(format!("{id}.sock"));
                format!(
                    "socket,id={id},path={}{}",
                    path_opt("chardev unix socket", path.as_deref().unwrap_or(&auto))?,
                    if *listen { ",server=on,wait=off" } else { "" }
                )
            }
            ChardevSource::SpiceVmc => {
                if !spice {
                    return Err(unsupported(
                        "channel type",
                        "spicevmc",
                        "needs <graphics type='spice'>",
                    ));
                }
                format!("spicevmc,id={id},name=vdagent")
            }
        })
    };
    for (i, s) in d.serials.iter().enumerate() {
        let id = format!("charserial{i}");
        a.pair("-chardev", chardev(&id, &s.source)?);
        match s.target_type.as_deref().unwrap_or("isa-serial") {
            "isa-serial" | "serial" => a.pair(
                "-device",
                format!(
                    "isa-serial,chardev={id},id=serial{i},index={}",
                    s.target_port.unwrap_or(i as u32)
                ),
            ),
            t => return Err(unsupported("serial target type", t, "only isa-serial")),
        }
    }
    let mut virtconsole = 0;
    for c in &d.consoles {
        match c.target_type.as_deref().unwrap_or("serial") {
            // A serial console is the first serial port, already on the command line.
            "serial" if !d.serials.is_empty() => {}
            "serial" => {
                let id = "charserial0";
                a.pair("-chardev", chardev(id, &c.source)?);
                a.pair(
                    "-device",
                    format!("isa-serial,chardev={id},id=serial0,index=0"),
                );
            }
            "virtio" => {
                if !d.controllers.iter().any(|c| c.kind == "virtio-serial") {
                    a.pair("-device", "virtio-serial-pci,id=virtio-serial0");
                }
                let id = format!("charconsole{virtconsole}");
                a.pair("-chardev", chardev(&id, &c.source)?);
                a.pair(
                    "-device",
                    format!("virtconsole,chardev={id},id=console{virtconsole}"),
                );
                virtconsole += 1;
            }
            t => {
                return Err(unsupported(
                    "console target type",
                    t,
                    "expected serial or virtio",
                ))
            }
        }
    }
    for (i, ch) in d.channels.iter().enumerate() {
        let id = format!("charchannel{i}");
        a.pair("-chardev", chardev(&id, &ch.source)?);
        let mut dev = format!(
            "virtserialport,bus=virtio-serial0.0,nr={},chardev={id},id=channel{i}",
            i + 1
        );
        if let Some(n) = &ch.target_name {
            dev.push_str(&format!(
                ",name={}",
                qemu_opt_value("channel target name", n)?
            ));
        }
        a.pair("-device", dev);
    }
    // Input.
    for (i, inp) in d.inputs.iter().enumerate() {
        match (inp.kind.as_str(), inp.bus.as_str()) {
            (_, "ps2") => {} // built into the PC machines
            ("tablet", "usb") => a.pair("-device", format!("usb-tablet,id=input{i},bus=usb0.0")),
            ("mouse", "usb") => a.pair("-device", format!("usb-mouse,id=input{i},bus=usb0.0")),
            ("keyboard", "usb") => a.pair("-device", format!("usb-kbd,id=input{i},bus=usb0.0")),
            ("tablet", "virtio") => a.pair("-device", format!("virtio-tablet-pci,id=input{i}")),
            ("mouse", "virtio") => a.pair("-device", format!("virtio-mouse-pci,id=input{i}")),
            ("keyboard", "virtio") => a.pair("-device", format!("virtio-keyboard-pci,id=input{i}")),
            (k, b) => return Err(unsupported("input", &format!("{k}/{b}"), "not implemented")),
        }
    }
    // Graphics and video.
    if d.graphics.is_empty() {
        a.pair("-display", "none");
    }
    for g in &d.graphics {
        let listen = g.listen.as_deref().unwrap_or("127.0.0.1");
        match g.kind {
            GraphicsKind::Vnc => {
                let host = if listen.contains(':') {
                    format!("[{listen}]")
                } else {
                    listen.to_owned()
                };
                let mut display = match (g.autoport, g.port) {
                    (false, Some(p)) if p >= 5900 => format!("{host}:{}", p - 5900),
                    // Auto port: QEMU takes the first free display from :0.
                    _ => format!("{host}:0,to=99"),
                };
                // The password itself goes over QMP (set_password), never on argv.
                if g.passwd.is_some() {
                    display.push_str(",password=on");
                }
                a.pair("-vnc", display);
            }
            GraphicsKind::Spice => {
                if g.tls_port.is_some_and(|p| p > 0) {
                    return Err(unsupported(
                        "graphics type='spice' tlsPort",
                        &g.tls_port.unwrap_or_default().to_string(),
                        "SPICE over TLS needs certificates, not configured here",
                    ));
                }
                let port = g.port.filter(|p| *p > 0).ok_or_else(|| {
                    unsupported(
                        "graphics type='spice'",
                        "",
                        "no port (the runtime assigns one at start)",
                    )
                })?;
                let mut opts = format!(
                    "port={port},addr={},seamless-migration=on",
                    qemu_opt_value("graphics listen", listen)?
                );
                if g.passwd.is_none() {
                    opts.push_str(",disable-ticketing=on");
                }
                a.pair("-spice", opts);
            }
        }
    }
    for (i, v) in d.videos.iter().enumerate() {
        let dev = match v.model.as_str() {
            "none" => continue,
            "vga" => "VGA",
            "cirrus" => "cirrus-vga",
            "qxl" if i == 0 => "qxl-vga",
            "qxl" => "qxl",
            "virtio" if i == 0 => "virtio-vga",
            "virtio" => "virtio-gpu-pci",
            "bochs" => "bochs-display",
            m => return Err(unsupported("video model", m, "not implemented")),
        };
        let mut s = format!("{dev},id=video{i}");
        if let (Some(vram), "qxl") = (v.vram_kib, v.model.as_str()) {
            s.push_str(&format!(",vram_size={}", vram * 1024));
        }
        s.push_str(&buses.suffix(&v.address));
        a.pair("-device", s);
    }
    // Audio backends; sound devices play through the first. Without one, libvirt's
    // implicit default: SPICE's when there is SPICE graphics, else none.
    for au in &d.audios {
        if au.kind == "spice" && !spice {
            return Err(unsupported(
                "audio type",
                "spice",
                "needs <graphics type='spice'>",
            ));
        }
        a.pair("-audiodev", format!("id=audio{},driver={}", au.id, au.kind));
    }
    let audiodev = match d.audios.first() {
        Some(au) => format!("audio{}", au.id),
        None if !d.sounds.is_empty() => {
            let driver = if spice { "spice" } else { "none" };
            a.pair("-audiodev", format!("id=audio1,driver={driver}"));
            "audio1".to_owned()
        }
        None => String::new(),
    };
    for (i, s) in d.sounds.iter().enumerate() {
        let pci = buses.suffix(&s.address);
        let hda = |a: &mut Argv, ctrl: &str| {
            a.pair("-device", format!("{ctrl},id=sound{i}{pci}"));
            a.pair(
                "-device",
                format!("hda-duplex,id=sound{i}-codec0,bus=sound{i}.0,cad=0,audiodev={audiodev}"),
            );
        };
        match s.model.as_str() {
            "ich6" => hda(&mut a, "intel-hda"),
            "ich9" => hda(&mut a, "ich9-intel-hda"),
            "ac97" => a.pair(
                "-device",
                format!("AC97,id=sound{i},audiodev={audiodev}{pci}"),
            ),
            "es1370" => a.pair(
                "-device",
                format!("ES1370,id=sound{i},audiodev={audiodev}{pci}"),
            ),
            m => return Err(unsupported("sound model", m, "not implemented")),
        }
    }
    // USB redirection from SPICE clients.
    for (i, _) in d.redirdevs.iter().enumerate() {
        if !spice {
            return Err(unsupported(
                "redirdev type",
                "spicevmc",
                "needs <graphics type='spice'>",
            ));
        }
        if !d
            .controllers
            .iter()
            .any(|c| c.kind == "usb" && c.model.as_deref() != Some("none"))
        {
            return Err(unsupported("redirdev", "usb", "needs a USB controller"));
        }
        a.pair(
            "-chardev",
            format!("spicevmc,id=charredir{i},name=usbredir"),
        );
        a.pair(
            "-device",
            format!("usb-redir,chardev=charredir{i},id=redir{i},bus=usb0.0"),
        );
    }
    for (i, w) in d.watchdogs.iter().enumerate() {
        match w.model.as_str() {
            "i6300esb" => a.pair(
                "-device",
                format!("i6300esb,id=watchdog{i}{}", buses.suffix(&w.address)),
            ),
            "ib700" => a.pair("-device", format!("ib700,id=watchdog{i}")),
            "itco" if q35 => {}
            m => return Err(unsupported("watchdog model", m, "needs a q35 machine")),
        }
        let action = match w.action.as_str() {
            "dump" => return Err(unsupported("watchdog action", "dump", "not implemented")),
            "shutdown" => "poweroff",
            x => x,
        };
        a.pair("-action", format!("watchdog={action}"));
    }
    if let Some(t) = d.tpms.first() {
        if t.backend != "emulator" {
            return Err(unsupported(
                "tpm backend type",
                &t.backend,
                "only 'emulator' (swtpm) is implemented",
            ));
        }
        let sock = ctx
            .tpm_socket
            .as_ref()
            .ok_or_else(|| unsupported("tpm", &t.model, "the runtime must start swtpm first"))?;
        a.pair(
            "-chardev",
            format!("socket,id=chrtpm,path={}", path_opt("tpm socket", sock)?),
        );
        a.pair("-tpmdev", "emulator,id=tpm-tpm0,chardev=chrtpm");
        a.pair("-device", format!("{},tpmdev=tpm-tpm0,id=tpm0", t.model));
    }
    for (i, h) in d.hostdevs.iter().enumerate() {
        let s = h.source;
        a.pair(
            "-device",
            format!(
                "vfio-pci,host={:04x}:{:02x}:{:02x}.{:x},id=hostdev{i}{}",
                s.domain,
                s.bus,
                s.slot,
                s.function,
                buses.suffix(&h.address)
            ),
        );
    }
    for (i, r) in d.rngs.iter().enumerate() {
        a.pair(
            "-object",
            format!(
                "{{\"qom-type\":\"rng-random\",\"id\":\"objrng{i}\",\"filename\":{}}}",
                json_str(&r.backend)?
            ),
        );
        let mut dev = format!("virtio-rng-pci,rng=objrng{i},id=rng{i}");
        if let Some((bytes, period)) = r.rate {
            dev.push_str(&format!(",max-bytes={bytes},period={period}"));
        }
        dev.push_str(&buses.suffix(&r.address));
        a.pair("-device", dev);
    }
    if let Some(m) = d.memballoon.as_ref().filter(|m| m.model == "virtio") {
        let mut dev = "virtio-balloon-pci,id=balloon0".to_owned();
        if let Some(p) = m.stats_period {
            dev.push_str(&format!(",guest-stats-polling-interval={p}"));
        }
        dev.push_str(&buses.suffix(&m.address));
        a.pair("-device", dev);
    }
    a.pair("-msg", "timestamp=on");
    // <qemu:commandline>: as written, last, as libvirt passes them (the domain is
    // tainted "custom-argv"; escaping is the author's business).
    if let Some(c) = &dom.qemu_commandline {
        for arg in &c.args {
            a.push(arg.as_str());
        }
    }
    Ok(a.0)
}

/// The unit of a drive: from its `<address type='drive' unit=...>` when given,
/// otherwise the next one in order.
fn drive_unit(a: &Option<Address>, next: u32, max: u32, target: &str) -> Result<u32> {
    let u = match a {
        Some(Address::Drive { unit, .. }) => *unit,
        _ => next,
    };
    if u >= max {
        return Err(unsupported(
            "disk address",
            target,
            format!("unit {u} is out of range (max {})", max - 1),
        ));
    }
    Ok(u)
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

/// A path as a JSON string (for `-blockdev`/`-object` JSON syntax, where commas need
/// no doubling but the value must be valid JSON and free of control characters).
fn json_str(p: &Path) -> Result<String> {
    let s = p.to_str().ok_or_else(|| CommandLineError::Unsafe {
        what: "path".into(),
        value: p.display().to_string(),
        reason: "not UTF-8",
    })?;
    if !p.is_absolute() {
        return Err(CommandLineError::Unsafe {
            what: "path".into(),
            value: s.to_owned(),
            reason: "must be an absolute path",
        });
    }
    if s.chars().any(char::is_control) {
        return Err(CommandLineError::Unsafe {
            what: "path".into(),
            value: s.to_owned(),
            reason: "contains control characters",
        });
    }
    Ok(serde_json::Value::from(s).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_doubles_commas_and_rejects_control_chars() {
        assert_eq!(qemu_opt_value("x", "a,b").unwrap(), "a,,b");
        assert_eq!(qemu_opt_value("x", "a,,b=c").unwrap(), "a,,,,b=c");
        assert!(qemu_opt_value("x", "a\nb").is_err());
        assert!(qemu_opt_value("x", "").is_err());
        assert!(json_str(Path::new("relative")).is_err());
        assert_eq!(
            json_str(Path::new("/a \"b\",c")).unwrap(),
            r#""/a \"b\",c""#
        );
    }
}

#[cfg(test)]
mod build_tests {
    use super::*;
    use crate::xml::Domain;

    fn dom(xml: &str) -> Domain {
        let mut d = Domain::parse(xml).unwrap();
        d.fill_defaults(&crate::caps::tests::fake()).unwrap();
        d
    }

    fn ctx() -> LaunchContext {
        LaunchContext::new(
            "/usr/bin/qemu-system-x86_64".into(),
            "/r/q".into(),
            "/r/p".into(),
            "/r".into(),
        )
    }

    #[test]
    fn kvm_domain_needs_kvm_and_host_cpu_needs_kvm() {
        let k = dom("<domain type='kvm'><name>k</name><memory>65536</memory><os><type>hvm</type></os></domain>");
        let e = build(&k, &ctx()).unwrap_err().to_string();
        assert!(e.contains("kvm"), "{e}");
        let mut c = ctx();
        c.accel = Accel::Kvm;
        let argv = build(&k, &c).unwrap();
        assert!(argv
            .iter()
            .any(|a| a.to_str().is_some_and(|s| s.contains("accel=kvm"))));
        let h = dom("<domain type='qemu'><name>h</name><memory>65536</memory><os><type>hvm</type></os><cpu mode='host-passthrough'/></domain>");
        let e = build(&h, &ctx()).unwrap_err().to_string();
        assert!(e.contains("host-passthrough"), "{e}");
    }

    #[test]
    fn options_follow_context() {
        let d = dom("<domain type='qemu'><name>o</name><memory>65536</memory><os><type>hvm</type></os><devices><interface type='bridge'><source bridge='br0'/></interface></devices></domain>");
        let mut c = ctx();
        let e = build(&d, &c).unwrap_err().to_string();
        assert!(e.contains("bridge") && e.contains("fd"), "{e}");
        c.tap_fds = vec![Some(7)];
        c.sandbox = true;
        c.start_paused = false;
        let argv: Vec<String> = build(&d, &c)
            .unwrap()
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert!(argv.contains(&"-sandbox".to_owned()));
        assert!(!argv.contains(&"-S".to_owned()));
        assert!(
            argv.contains(&"tap,fd=7,id=hostnet0,vhost=off".to_owned()),
            "{argv:?}"
        );
        assert!(argv.contains(&"-display".to_owned()));
        assert!(argv.contains(&"-no-shutdown".to_owned()));
    }
}
