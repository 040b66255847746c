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
            dom,
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
