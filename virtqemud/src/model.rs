//! The runtime's adapter over the domain XML: the few fields lifecycle needs, and the
//! argv to launch QEMU with. It stands in until `crate::xml::Domain` and
//! `crate::command_line::build` are published; the original document is kept whole so
//! `GetXMLDesc` round-trips everything the user wrote.

use std::path::{Path, PathBuf};

use common::error::VirError;
use common::xml::{Element, Node, XmlError};
use uuid::Uuid;

/// What the guest's power events turn into (`on_poweroff`, `on_reboot`, `on_crash`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Destroy,
    Restart,
    Preserve,
}

impl Action {
    fn parse(el: &Element, name: &str, default: Action) -> Result<Action, XmlError> {
        match el.child_text(name).as_deref().map(str::trim) {
            None => Ok(default),
            Some("destroy") => Ok(Action::Destroy),
            Some("restart") | Some("rename-restart") => Ok(Action::Restart),
            Some("preserve") | Some("coredump-destroy") | Some("coredump-restart") => {
                Ok(Action::Preserve)
            }
            Some(other) => Err(XmlError::invalid(name, "value", other, "unknown action")),
        }
    }
}

/// One serial port, as far as the runtime honours it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Serial {
    File(PathBuf),
    Pty,
    Null,
}

#[derive(Debug, Clone)]
pub struct DomainDef {
    /// The whole document, with the defaults the runtime fills (uuid) applied.
    pub root: Element,
    pub name: String,
    pub uuid: Uuid,
    pub virt_type: String,
    pub os_type: String,
    pub memory_kib: u64,
    pub vcpus: u32,
    pub emulator: Option<String>,
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    pub cmdline: Option<String>,
    pub machine: Option<String>,
    pub on_poweroff: Action,
    pub on_reboot: Action,
    pub on_crash: Action,
    pub serials: Vec<Serial>,
}

fn unit_to_kib(value: u64, unit: &str) -> Option<u64> {
    let bytes: u128 = match unit {
        "b" | "bytes" => 1,
        "k" | "KiB" => 1 << 10,
        "KB" => 1000,
        "M" | "MiB" => 1 << 20,
        "MB" => 1_000_000,
        "G" | "GiB" => 1 << 30,
        "GB" => 1_000_000_000,
        "T" | "TiB" => 1 << 40,
        "TB" => 1_000_000_000_000,
        _ => return None,
    };
    u64::try_from((value as u128).checked_mul(bytes)? / 1024).ok()
}

/// Checks a domain name as libvirt does (non-empty, no '/', printable).
pub fn check_name(name: &str) -> Result<(), XmlError> {
    if name.is_empty() || name.len() > 200 {
        return Err(XmlError::invalid(
            "name",
            "value",
            name,
            "must be 1 to 200 characters",
        ));
    }
    if name.contains('/') || name.chars().any(char::is_control) || name.starts_with('.') {
        return Err(XmlError::invalid(
            "name",
            "value",
            name,
            "must not contain '/' or control characters nor start with '.'",
        ));
    }
    Ok(())
}

impl DomainDef {
    pub fn parse(text: &str) -> Result<DomainDef, XmlError> {
        let mut root = common::xml::parse_root(text, "domain")?;
        let virt_type = root.req_attr("type")?.to_string();
        if !matches!(virt_type.as_str(), "qemu" | "kvm") {
            return Err(XmlError::invalid(
                "domain",
                "type",
                &virt_type,
                "only 'qemu' and 'kvm' are supported",
            ));
        }
        let name = root
            .child_text("name")
            .map(|s| s.trim().to_string())
            .ok_or_else(|| XmlError::missing("domain", "name"))?;
        check_name(&name)?;
        let uuid = match root.child_text("uuid") {
            Some(u) => Uuid::parse_str(u.trim())
                .map_err(|e| XmlError::invalid("uuid", "value", u.trim(), e))?,
            None => {
                let u = Uuid::new_v4();
                root.children
                    .push(Node::Element(Element::with_text("uuid", u.to_string())));
                u
            }
        };
        let mem = root
            .first("memory")
            .ok_or_else(|| XmlError::missing("domain", "memory"))?;
        let mem_value: u64 = mem
            .text()
            .trim()
            .parse()
            .map_err(|e| XmlError::invalid("memory", "value", &mem.text(), e))?;
        let unit = mem.get_attr("unit").unwrap_or("KiB");
        let memory_kib = unit_to_kib(mem_value, unit)
            .ok_or_else(|| XmlError::invalid("memory", "unit", unit, "unknown unit"))?;
        if memory_kib < 1024 {
            return Err(XmlError::invalid(
                "memory",
                "value",
                &mem_value.to_string(),
                "at least 1 MiB",
            ));
        }
        let vcpus = match root.first("vcpu") {
            Some(v) => v
                .text()
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=255).contains(n))
                .ok_or_else(|| XmlError::invalid("vcpu", "value", &v.text(), "1 to 255"))?,
            None => 1,
        };
        let os = root
            .first("os")
            .ok_or_else(|| XmlError::missing("domain", "os"))?;
        let ty = os
            .first("type")
            .ok_or_else(|| XmlError::missing("os", "type"))?;
        let os_type = ty.text().trim().to_string();
        if os_type != "hvm" {
            return Err(XmlError::invalid(
                "os/type",
                "value",
                &os_type,
                "only 'hvm' is supported",
            ));
        }
        let machine = ty.get_attr("machine").map(str::to_string);
        if let Some(arch) = ty.get_attr("arch") {
            if arch != "x86_64" {
                return Err(XmlError::invalid(
                    "os/type",
                    "arch",
                    arch,
                    "only x86_64 is supported",
                ));
            }
        }
        let text_of = |n: &str| os.child_text(n).map(|s| s.trim().to_string());
        let (kernel, initrd, cmdline) = (text_of("kernel"), text_of("initrd"), text_of("cmdline"));
        let mut serials = Vec::new();
        let mut emulator = None;
        if let Some(devices) = root.first("devices") {
            emulator = devices.child_text("emulator").map(|s| s.trim().to_string());
            for s in devices.children_named("serial") {
                let kind = s.get_attr("type").unwrap_or("pty");
                serials.push(match kind {
                    "file" => Serial::File(PathBuf::from(
                        s.first("source")
                            .ok_or_else(|| XmlError::missing("serial", "source"))?
                            .req_attr("path")?,
                    )),
                    "pty" => Serial::Pty,
                    "null" => Serial::Null,
                    other => {
                        return Err(XmlError::invalid(
                            "serial",
                            "type",
                            other,
                            "only file, pty and null are supported",
                        ))
                    }
                });
            }
        }
        Ok(DomainDef {
            on_poweroff: Action::parse(&root, "on_poweroff", Action::Destroy)?,
            on_reboot: Action::parse(&root, "on_reboot", Action::Restart)?,
            on_crash: Action::parse(&root, "on_crash", Action::Destroy)?,
            root,
            name,
            uuid,
            virt_type,
            os_type,
            memory_kib,
            vcpus,
            emulator,
            kernel,
            initrd,
            cmdline,
            machine,
            serials,
        })
    }

    /// The document; `id` is set on the root while the domain runs.
    pub fn to_xml(&self, id: Option<u32>) -> String {
        let mut root = self.root.clone();
        root.attrs.retain(|(k, _)| k != "id");
        if let Some(id) = id {
            root.attrs.push(("id".into(), id.to_string()));
        }
        root.to_xml()
    }
}

/// QEMU's option syntax doubles commas; control characters are refused outright.
pub fn qemu_escape(value: &str) -> Result<String, VirError> {
    if value.chars().any(char::is_control) {
        return Err(VirError::unsupported(format!(
            "value '{}' contains control characters",
            value.escape_debug()
        )));
    }
    Ok(value.replace(',', ",,"))
}

/// Where one running domain's files live.
pub struct LaunchPaths<'a> {
    pub qmp: &'a Path,
    pub pidfile: &'a Path,
}

/// How to accelerate: KVM only where it can boot a stock kernel (not under PVM).
pub fn accel(def: &DomainDef) -> &'static str {
    let kvm_usable = Path::new("/dev/kvm").exists() && !Path::new("/sys/module/kvm_pvm").exists();
    if def.virt_type == "kvm" && kvm_usable {
        "kvm"
    } else {
        "tcg"
    }
}

/// The argv (program first) that launches `def`, stopped (`-S`) and with `-no-shutdown`.
pub fn argv(def: &DomainDef, paths: &LaunchPaths, sandbox: bool) -> Result<Vec<String>, VirError> {
    let esc = qemu_escape;
    let path = |p: &Path| esc(&p.to_string_lossy());
    let mut a = vec![
        def.emulator
            .clone()
            .unwrap_or_else(|| "qemu-system-x86_64".into()),
        "-name".into(),
        format!("guest={},debug-threads=on", esc(&def.name)?),
        "-S".into(),
        "-no-user-config".into(),
        "-nodefaults".into(),
        "-no-shutdown".into(),
        "-machine".into(),
        format!(
            "{},accel={}",
            esc(def.machine.as_deref().unwrap_or("pc"))?,
            accel(def)
        ),
        "-m".into(),
        format!("size={}k", def.memory_kib),
        "-smp".into(),
        def.vcpus.to_string(),
        "-uuid".into(),
        def.uuid.to_string(),
        "-display".into(),
        "none".into(),
        "-chardev".into(),
        format!(
            "socket,id=charmonitor,path={},server=on,wait=off",
            path(paths.qmp)?
        ),
        "-mon".into(),
        "chardev=charmonitor,id=monitor,mode=control".into(),
        "-pidfile".into(),
        paths.pidfile.to_string_lossy().into_owned(),
    ];
    if def.on_reboot == Action::Destroy {
        a.push("-no-reboot".into());
    }
    if let Some(k) = &def.kernel {
        a.extend(["-kernel".into(), k.clone()]);
    }
    if let Some(i) = &def.initrd {
        a.extend(["-initrd".into(), i.clone()]);
    }
    if let Some(c) = &def.cmdline {
        a.extend(["-append".into(), c.clone()]);
    }
    for (n, s) in def.serials.iter().enumerate() {
        let backend = match s {
            Serial::File(p) => format!("file,id=charserial{n},path={}", path(p)?),
            Serial::Pty => format!("pty,id=charserial{n}"),
            Serial::Null => format!("null,id=charserial{n}"),
        };
        a.extend([
            "-chardev".into(),
            backend,
            "-device".into(),
            format!("isa-serial,chardev=charserial{n},id=serial{n}"),
        ]);
    }
    if sandbox {
        a.extend([
            "-sandbox".into(),
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny".into(),
        ]);
    }
    Ok(a)
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
    fn parses_and_builds_argv() {
        let d = DomainDef::parse(XML).expect("parse");
        assert_eq!(d.memory_kib, 128 * 1024);
        assert_eq!(d.vcpus, 2);
        assert_eq!(d.on_reboot, Action::Destroy);
        assert_eq!(d.on_poweroff, Action::Destroy);
        let a = argv(
            &d,
            &LaunchPaths {
                qmp: Path::new("/run/q,1.sock"),
                pidfile: Path::new("/run/q.pid"),
            },
            false,
        )
        .expect("argv");
        let joined = a.join(" ");
        assert!(
            joined.contains("-name guest=a,,b,debug-threads=on"),
            "{joined}"
        );
        assert!(joined.contains("path=/run/q,,1.sock,server=on"), "{joined}");
        assert!(
            joined.contains("file,id=charserial0,path=/tmp/s,,1.log"),
            "{joined}"
        );
        assert!(joined.contains("-no-reboot"));
        assert!(joined.contains("-m size=131072k"));
        // -append is a whole argument of its own: no escaping, no shell.
        assert!(a.iter().any(|x| x == "console=ttyS0 x=1,2"));
        // The document round-trips, with a generated uuid and the live id.
        let xml = d.to_xml(Some(7));
        assert!(xml.contains("id='7'"));
        assert!(xml.contains(&d.uuid.to_string()));
        assert!(xml.contains("kept"));
        let again = DomainDef::parse(&xml).expect("reparse");
        assert_eq!(again.uuid, d.uuid);
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
            "<domain type='qemu'><name>x</name><memory>1024</memory></domain>",
            "<network/>",
            "not xml",
        ] {
            assert!(DomainDef::parse(bad).is_err(), "accepted {bad}");
        }
        assert!(qemu_escape("a\nb").is_err());
        assert_eq!(qemu_escape("a,b").expect("esc"), "a,,b");
    }
}
