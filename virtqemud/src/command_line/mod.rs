//! Domain model -> QEMU argv, in the modern style (`-blockdev` + `-device` with ids,
//! `-netdev`, `-chardev`, `-machine TYPE,accel=`). Never goes through a shell: the
//! result is an argv vector. Every user value that lands in QEMU's key=value,comma
//! option syntax goes through [`qemu_opt_value`], the one escaping function.

//!
//! `build` runs one builder per section in argv order; each device kind has one
//! function giving its [`DeviceProps`], rendered once for `-device` (and reusable for
//! QMP `device_add` on hotplug).

mod boot;
mod chardevs;
mod controllers;
mod device;
mod disks;
mod graphics;
mod hostdev;
mod machine;
mod memory;
mod misc;
mod net;
mod tpm;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::xml::Domain;

use device::PciBuses;
pub use device::{DeviceProps, PropValue};
pub use disks::{hotplug_disk, medium_nodes};
pub use hostdev::UsbHostDev;
pub use machine::host_cpus;
pub use misc::hotplug_rng;
pub use net::hotplug_nic;

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
    /// hugetlbfs mounts as (page size KiB, mount point), the host's default size
    /// first: where `<memoryBacking><hugepages>` memory comes from.
    pub hugetlbfs: Vec<(u64, PathBuf)>,
    /// The X11/Wayland display QEMU inherits (the daemon's `DISPLAY` or
    /// `WAYLAND_DISPLAY`): `<graphics type='sdl'>` needs one.
    pub display: Option<String>,
    /// A GPU render node (`/dev/dri/renderD*`) for OpenGL displays without one named.
    pub render_node: Option<PathBuf>,
    /// The host's USB devices, where `<hostdev type='usb'>` sources are found.
    pub usb_devices: Vec<hostdev::UsbHostDev>,
    /// The host's SCSI devices as (`H:B:T:U`, `/dev/sgN`), where `<hostdev
    /// type='scsi'>` sources are found.
    pub scsi_generic: Vec<(String, PathBuf)>,
    /// The runtime pins QEMU to [`host_cpus`] (sched_setaffinity before exec, as
    /// libvirt does for `<vcpu cpuset>`); without it such a domain is refused.
    pub pins_cpus: bool,
    /// The passphrase file of each LUKS-encrypted disk, by disk index
    /// (`crate::secrets::prepare`).
    pub disk_secrets: Vec<(usize, PathBuf)>,
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
            hugetlbfs: memory::hugetlbfs_mounts(),
            display: std::env::var("DISPLAY")
                .or_else(|_| std::env::var("WAYLAND_DISPLAY"))
                .ok()
                .filter(|d| !d.is_empty()),
            render_node: graphics::first_render_node(),
            usb_devices: hostdev::host_usb_devices(),
            scsi_generic: hostdev::host_scsi_generic(),
            pins_cpus: false,
            disk_secrets: Vec::new(),
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

struct Argv(Vec<OsString>);

impl Argv {
    fn push(&mut self, a: impl Into<OsString>) {
        self.0.push(a.into());
    }
    fn pair(&mut self, k: &str, v: impl Into<OsString>) {
        self.0.push(k.into());
        self.0.push(v.into());
    }
    /// `-device` with the one rendering of a device's properties.
    fn device(&mut self, dev: &DeviceProps) -> Result<()> {
        self.pair("-device", dev.to_device_arg()?);
        Ok(())
    }
}

/// Top-level elements that may be left out at start: `<resource>` places the domain in
/// a cgroup partition, and this runtime uses no cgroups; `<idmap>` maps a container's
/// user namespace (LXC's), which libvirt's QEMU driver never reads either; `<seclabel>`
/// of model `dac` (or type `none`) asks for what the runtime does anyway. Every other
/// top-level element it does not type is refused by name.
fn ignorable_top_level(el: &common::xml::Element) -> bool {
    match el.name.as_str() {
        "resource" | "idmap" => true,
        n if memory::HANDLED.contains(&n) || machine::HANDLED.contains(&n) => true,
        // Checked with its reasons by machine::seclabels.
        "seclabel" => true,
        _ => false,
    }
}

/// Builds the argv (argv[0] is the emulator) for a domain whose defaults are filled.
/// The sections run in argv order; the first refusal wins, as users see it.
pub fn build(dom: &Domain, ctx: &LaunchContext) -> Result<Vec<OsString>> {
    let mut a = Argv(Vec::with_capacity(64));
    refuse_untyped(dom)?;
    preamble(&mut a, dom, ctx)?;
    let accel = machine::machine(&mut a, dom, ctx)?;
    machine::cpu(&mut a, dom, accel, ctx)?;
    boot::firmware(&mut a, dom)?;
    machine::memory(&mut a, dom)?;
    memory::memory(&mut a, dom, ctx)?;
    machine::extras(&mut a, dom)?;
    machine::seclabels(dom)?;
    machine::tuning(dom)?;
    machine::clock(&mut a, dom, accel)?;
    monitor(&mut a, ctx)?;
    boot::kernel(&mut a, dom)?;
    boot::order(&mut a, dom);
    boot::os_extras(&mut a, dom)?;
    let buses = PciBuses::of(dom);
    controllers::controllers(&mut a, dom, &buses)?;
    misc::filesystems(&mut a, dom, &buses)?;
    disks::disks(&mut a, dom, ctx, &buses)?;
    net::nics(&mut a, dom, ctx, &buses)?;
    chardevs::chardevs(&mut a, dom, ctx)?;
    misc::hubs(&mut a, dom)?;
    misc::smartcards(&mut a, dom)?;
    misc::inputs(&mut a, dom, &buses)?;
    misc::host_inputs(&mut a, dom, &buses)?;
    graphics::graphics(&mut a, dom, ctx)?;
    graphics::videos(&mut a, dom, &buses)?;
    graphics::sounds(&mut a, dom, &buses)?;
    graphics::redirdevs(&mut a, dom, ctx)?;
    misc::watchdogs(&mut a, dom, &buses)?;
    misc::panics(&mut a, dom, &buses)?;
    misc::iommu_vsock(&mut a, dom, accel, &buses)?;
    tpm::tpm(&mut a, dom, ctx)?;
    hostdev::hostdevs(&mut a, dom, &buses)?;
    hostdev::other_hostdevs(&mut a, dom, ctx, &buses)?;
    memory::memory_devices(&mut a, dom, ctx, &buses)?;
    misc::rngs(&mut a, dom, &buses)?;
    misc::egd_rngs(&mut a, dom, &buses)?;
    misc::memballoon(&mut a, dom, &buses)?;
    a.pair("-msg", "timestamp=on");
    qemu_commandline(&mut a, dom);
    Ok(a.0)
}

/// Anything the model keeps without typing it would be silently dropped: refuse it.
fn refuse_untyped(dom: &Domain) -> Result<()> {
    if let Some(o) = dom.other.iter().find(|o| !ignorable_top_level(o)) {
        return Err(unsupported(&o.name, "", "not implemented"));
    }
    let built_here = |o: &&common::xml::Element| {
        graphics::handles(o)
            || misc::handles(o)
            || hostdev::handles(o)
            || memory::handles(o)
            // The filter of every USB redirection device (graphics::redirdevs).
            || o.name == "redirfilter"
    };
    if let Some(o) = dom.devices.other.iter().find(|o| !built_here(o)) {
        // A typed kind kept whole because of a child its model does not honour.
        if let Ok(Some(child)) = crate::xml::dropped_child(o) {
            return Err(unsupported(
                &format!("{}/{child}", o.name),
                o.get_attr("type")
                    .or_else(|| o.get_attr("model"))
                    .unwrap_or_default(),
                "not implemented",
            ));
        }
        return Err(unsupported(
            &o.name,
            o.get_attr("type").unwrap_or_default(),
            "this device type is not implemented",
        ));
    }
    Ok(())
}

/// The emulator, the guest name and the options every domain gets.
fn preamble(a: &mut Argv, dom: &Domain, ctx: &LaunchContext) -> Result<()> {
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
    Ok(())
}

/// The QMP monitor socket and the pidfile the runtime watches.
fn monitor(a: &mut Argv, ctx: &LaunchContext) -> Result<()> {
    a.pair(
        "-chardev",
        format!(
            "socket,id=charmonitor,path={},server=on,wait=off",
            path_opt("qmp socket", &ctx.qmp_socket)?
        ),
    );
    a.pair("-mon", "chardev=charmonitor,id=monitor,mode=control");
    a.pair("-pidfile", path_opt("pidfile", &ctx.pidfile)?);
    Ok(())
}

/// `<qemu:commandline>`: as written, last, as libvirt passes them (the domain is
/// tainted "custom-argv"; escaping is the author's business).
fn qemu_commandline(a: &mut Argv, dom: &Domain) {
    if let Some(c) = &dom.qemu_commandline {
        for arg in &c.args {
            a.push(arg.as_str());
        }
    }
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

#[cfg(test)]
mod props_tests {
    use super::*;
    use crate::xml::Domain;

    /// The QMP form of a NIC carries exactly the `-device` form's properties, so a
    /// hotplugged NIC matches one given at start.
    #[test]
    fn nic_qmp_json_matches_device_arg() {
        let mut dom = Domain::parse("<domain type='qemu'><name>n</name><memory>65536</memory><os><type>hvm</type></os><devices><interface type='user'><mac address='52:54:00:aa:bb:cc'/><model type='virtio'/><boot order='1'/></interface></devices></domain>").unwrap();
        dom.fill_defaults(&crate::caps::tests::fake()).unwrap();
        let ctx = LaunchContext::new("/q".into(), "/r/q".into(), "/r/p".into(), "/r".into());
        let argv: Vec<String> = build(&dom, &ctx)
            .unwrap()
            .into_iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let arg = argv
            .iter()
            .find(|a| a.starts_with("virtio-net-pci,"))
            .unwrap();
        let buses = PciBuses::of(&dom);
        let dev = net::nic_props(0, &dom.devices.interfaces[0], &buses).unwrap();
        assert_eq!(&dev.to_device_arg().unwrap(), arg);
        let json = dev.to_qmp_json();
        let mut parts = arg.split(',');
        assert_eq!(json["driver"], parts.next().unwrap());
        let mut keys = 1;
        for kv in parts {
            let (k, v) = kv.split_once('=').unwrap();
            let j = &json[k];
            let shown = match j {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Bool(b) => if *b { "on" } else { "off" }.to_owned(),
                other => other.to_string(),
            };
            assert_eq!(shown, v, "{k}");
            keys += 1;
        }
        assert_eq!(json.as_object().unwrap().len(), keys);
    }
}
