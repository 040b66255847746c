//! The runtime's view of a domain definition: the typed libvirt model
//! (`crate::xml::Domain`) with the few fields lifecycle reads pulled out, and the argv
//! that launches it (`crate::command_line`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use common::error::VirError;
use uuid::Uuid;

use crate::caps::Caps;
use crate::command_line::{self, Accel, LaunchContext};
use crate::xml::{Domain, LifecycleAction, VirtType, XmlOpts};

/// What the guest's power events turn into (`on_poweroff`, `on_reboot`, `on_crash`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Destroy,
    Restart,
    Preserve,
}

impl From<LifecycleAction> for Action {
    fn from(a: LifecycleAction) -> Action {
        match a {
            LifecycleAction::Destroy => Action::Destroy,
            LifecycleAction::Restart | LifecycleAction::RenameRestart => Action::Restart,
            LifecycleAction::Preserve
            | LifecycleAction::CoredumpDestroy
            | LifecycleAction::CoredumpRestart => Action::Preserve,
        }
    }
}

#[derive(Debug, Clone)]
pub struct DomainDef {
    /// The whole typed document.
    pub dom: Domain,
    pub name: String,
    pub uuid: Uuid,
    pub memory_kib: u64,
    /// The vCPUs the guest runs with (`<vcpu current=>`, else the maximum).
    pub vcpus: u32,
    pub os_type: String,
    pub on_poweroff: Action,
    pub on_reboot: Action,
    pub on_crash: Action,
    /// QEMU's names for the disks and NICs of a running definition (see [`QemuIds`]).
    pub ids: QemuIds,
}

/// QEMU's names for the disks and NICs of a running domain. At start they follow the
/// devices' places (disk `i` is device `diskI` on nodes `libvirt-I-*`, NIC `i` is
/// `netI` on `hostnetI`) and the lists stay empty; once a device is plugged in or out
/// they are recorded per device, in device order, since places shift and QEMU's names
/// do not. A hotplugged device gets libvirt's alias as its id (`virtio-disk1`, `net2`).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QemuIds {
    /// Per disk: its device id and the N of its `libvirt-N-*` block nodes.
    #[serde(default)]
    pub disks: Vec<(String, u32)>,
    /// Per NIC: the N of its `netN` device and `hostnetN` backend.
    #[serde(default)]
    pub nics: Vec<u32>,
    /// Per RNG: the N of its `rngN` device and `objrngN` backend.
    #[serde(default)]
    pub rngs: Vec<u32>,
}

impl From<Domain> for DomainDef {
    fn from(dom: Domain) -> DomainDef {
        DomainDef {
            name: dom.name.as_str().to_owned(),
            uuid: dom.uuid,
            memory_kib: dom.memory_kib,
            vcpus: dom.current_vcpus.unwrap_or(dom.vcpus),
            os_type: dom.os.os_type.clone(),
            on_poweroff: dom.on_poweroff.into(),
            on_reboot: dom.on_reboot.into(),
            on_crash: dom.on_crash.into(),
            ids: QemuIds::default(),
            dom,
        }
    }
}

impl DomainDef {
    /// The N of disk `i`'s `libvirt-N-*` block nodes in QEMU.
    pub fn disk_node(&self, i: usize) -> usize {
        self.ids.disks.get(i).map_or(i, |d| d.1 as usize)
    }

    /// QEMU's device id of disk `i`: its alias.
    pub fn disk_qdev(&self, i: usize) -> String {
        self.ids
            .disks
            .get(i)
            .map_or_else(|| format!("disk{i}"), |d| d.0.clone())
    }

    /// The N of NIC `i`'s `netN` device and `hostnetN` backend.
    pub fn nic_n(&self, i: usize) -> usize {
        self.ids.nics.get(i).map_or(i, |n| *n as usize)
    }

    /// The N of RNG `i`'s `rngN` device and `objrngN` backend.
    pub fn rng_n(&self, i: usize) -> usize {
        self.ids.rngs.get(i).map_or(i, |n| *n as usize)
    }

    /// The disk whose block nodes are `libvirt-N-*`.
    pub fn disk_of_node(&self, n: usize) -> Option<usize> {
        (0..self.dom.devices.disks.len()).find(|i| self.disk_node(*i) == n)
    }

    /// The disk whose QEMU device id is `qdev`.
    pub fn disk_of_qdev(&self, qdev: &str) -> Option<usize> {
        (0..self.dom.devices.disks.len()).find(|i| self.disk_qdev(*i) == qdev)
    }

    /// Records every disk's and NIC's QEMU names explicitly (as they are now), before
    /// a device is added or removed and places shift.
    pub fn pin_ids(&mut self) {
        let disks = self.dom.devices.disks.len();
        if self.ids.disks.len() != disks {
            self.ids.disks = (0..disks)
                .map(|i| (self.disk_qdev(i), self.disk_node(i) as u32))
                .collect();
        }
        let nics = self.dom.devices.interfaces.len();
        if self.ids.nics.len() != nics {
            self.ids.nics = (0..nics).map(|i| self.nic_n(i) as u32).collect();
        }
        let rngs = self.dom.devices.rngs.len();
        if self.ids.rngs.len() != rngs {
            self.ids.rngs = (0..rngs).map(|i| self.rng_n(i) as u32).collect();
        }
    }
}

impl DomainDef {
    /// A definition this daemon wrote (defaults already filled in).
    pub fn parse(text: &str) -> Result<DomainDef, VirError> {
        Ok(Domain::parse(text)?.into())
    }

    /// A definition from a user: libvirt's defaults are filled in against the
    /// emulator's capabilities (machine alias, MACs, PCI slots, controllers), once, so
    /// they stay stable across starts.
    pub fn parse_new(text: &str, caps: &Caps) -> Result<DomainDef, VirError> {
        let mut dom = Domain::parse(text)?;
        dom.fill_defaults(caps)?;
        Ok(dom.into())
    }

    /// The XML for our own files: with secrets (the files are 0600).
    pub fn to_xml(&self, id: Option<u32>) -> String {
        self.to_xml_for(id, true)
    }

    /// The XML for a caller; graphics passwords only when `secure`.
    pub fn to_xml_for(&self, id: Option<u32>, secure: bool) -> String {
        self.dom.to_xml(XmlOpts {
            inactive: id.is_none(),
            id,
            secure,
        })
    }
}

/// Where one running domain's files live.
pub struct LaunchPaths<'a> {
    pub qmp: &'a Path,
    pub pidfile: &'a Path,
    pub runtime_dir: &'a Path,
    /// Tap descriptors per tap-backed NIC, in order (`crate::nics::Prepared::raw_fds`).
    pub tap_fds: &'a [Option<i32>],
    /// `<disk type='volume'>` resolved by virtstoraged (`crate::volumes::resolve`).
    pub volume_paths: &'a [(String, String, PathBuf)],
    /// swtpm's control socket (`crate::tpm::start`).
    pub tpm_socket: Option<&'a Path>,
    /// LUKS passphrase files by disk index (`crate::secrets::prepare`).
    pub disk_secrets: &'a [(usize, PathBuf)],
}

/// The argv (program first) that launches `def` stopped (`-S`, resumed over QMP) with
/// `-no-shutdown`. A `type='kvm'` domain runs under TCG where KVM cannot boot a guest
/// (see `caps::host_kvm_usable`), so that it still starts, more slowly.
pub fn argv(def: &DomainDef, paths: &LaunchPaths, sandbox: bool) -> Result<Vec<String>, VirError> {
    let kvm = crate::caps::host_kvm_usable();
    let mut dom = def.dom.clone();
    let accel = match (dom.virt_type, kvm) {
        (VirtType::Kvm, true) => Accel::Kvm,
        (VirtType::Kvm, false) => {
            tracing::warn!(domain = %def.name, "KVM cannot run guests here: using TCG");
            dom.virt_type = VirtType::Qemu;
            Accel::Tcg
        }
        (VirtType::Qemu, _) => Accel::Tcg,
    };
    let emulator = dom
        .devices
        .emulator
        .clone()
        .unwrap_or_else(|| PathBuf::from(crate::host_caps::EMULATOR));
    let mut ctx = LaunchContext::new(
        emulator,
        paths.qmp.to_path_buf(),
        paths.pidfile.to_path_buf(),
        paths.runtime_dir.to_path_buf(),
    );
    ctx.accel = accel;
    ctx.sandbox = sandbox;
    ctx.start_paused = true;
    // The runtime pins QEMU to `<vcpu cpuset>` before exec (`process::spawn_keeping`).
    ctx.pins_cpus = true;
    ctx.tap_fds = paths.tap_fds.to_vec();
    ctx.volume_paths = paths.volume_paths.to_vec();
    ctx.tpm_socket = paths.tpm_socket.map(Path::to_path_buf);
    ctx.disk_secrets = paths.disk_secrets.to_vec();
    let argv = command_line::build(&dom, &ctx)?;
    argv.into_iter()
        .map(|a: OsString| {
            a.into_string()
                .map_err(|a| VirError::unsupported(format!("argument {a:?} is not valid UTF-8")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const XML: &str = "<domain type='qemu'><name>a,b</name><memory unit='MiB'>128</memory>\
        <vcpu>2</vcpu><os><type arch='x86_64'>hvm</type><kernel>/k</kernel>\
        <cmdline>console=ttyS0 x=1,2</cmdline></os><on_reboot>destroy</on_reboot>\
        <metadata><x:y xmlns:x='urn:x'>kept</x:y></metadata>\
        <devices><serial type='file'><source path='/tmp/s,1.log'/></serial></devices></domain>";

    #[test]
    fn parses_fills_defaults_and_builds_argv() {
        let d = DomainDef::parse_new(XML, &crate::caps::tests::fake()).expect("parse");
        assert_eq!(d.memory_kib, 128 * 1024);
        assert_eq!(d.on_reboot, Action::Destroy);
        assert_eq!(d.on_poweroff, Action::Destroy);
        let a = argv(
            &d,
            &LaunchPaths {
                qmp: Path::new("/run/q,1.sock"),
                pidfile: Path::new("/run/q.pid"),
                runtime_dir: Path::new("/run"),
                tap_fds: &[],
                volume_paths: &[],
                tpm_socket: None,
                disk_secrets: &[],
            },
            false,
        )
        .expect("argv");
        let joined = a.join(" ");
        assert!(joined.contains("guest=a,,b"), "{joined}");
        assert!(joined.contains("/run/q,,1.sock"), "{joined}");
        assert!(joined.contains("/tmp/s,,1.log"), "{joined}");
        assert!(a.iter().any(|x| x == "-S"), "{joined}");
        assert!(a.iter().any(|x| x == "-no-shutdown"), "{joined}");
        // -append is a whole argument of its own: no escaping, no shell.
        assert!(a.iter().any(|x| x == "console=ttyS0 x=1,2"));
        // The document round-trips with a generated uuid, defaults and the live id.
        let xml = d.to_xml(Some(7));
        assert!(xml.contains("id='7'"));
        assert!(xml.contains(&d.uuid.to_string()));
        assert!(xml.contains("kept"));
        let again = DomainDef::parse(&xml).expect("reparse");
        assert_eq!(again.uuid, d.uuid);
        assert_eq!(again.to_xml(None), d.to_xml(None));
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            "<domain type='xen'><name>x</name><memory>1024</memory><os><type>hvm</type></os></domain>",
            "<domain type='qemu'><memory>1024</memory><os><type>hvm</type></os></domain>",
            "<domain type='qemu'><name>a/b</name><memory>1024</memory><os><type>hvm</type></os></domain>",
            "<domain type='qemu'><name>x</name><memory unit='parsec'>1</memory><os><type>hvm</type></os></domain>",
            "<domain type='qemu'><name>x</name><uuid>nope</uuid><memory>1024</memory><os><type>hvm</type></os></domain>",
            "<domain type='qemu'><name>x</name><memory>1024</memory><os><type>hvm</type></os><on_crash>explode</on_crash></domain>",
            "<network/>",
            "not xml",
        ] {
            assert!(DomainDef::parse(bad).is_err(), "accepted {bad}");
        }
    }
}
