//! QEMU capabilities: probed once per emulator binary through QMP, cached on disk.
//!
//! `Caps::load_or_probe(emulator, cache_dir)` returns the cached probe when the
//! binary's identity (path, size, mtime, inode) is unchanged, and otherwise runs
//! `EMULATOR -S -nodefaults -nographic -machine none -qmp stdio` once, asks
//! query-version, query-machines, query-kvm, query-cpu-definitions and
//! qom-list-types, and stores the answer with `common::persist::write_atomic`.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use common::xml::Element;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    #[error("cannot run emulator '{0}': {1}")]
    Spawn(PathBuf, std::io::Error),
    #[error("emulator '{0}' probe failed: {1}")]
    Probe(PathBuf, String),
    #[error("{0}: {1}")]
    Command(String, String),
    #[error("emulator '{0}' did not answer QMP within {1:?}")]
    Timeout(PathBuf, Duration),
}

impl From<CapsError> for common::error::VirError {
    fn from(e: CapsError) -> Self {
        common::error::VirError::internal(e)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    pub name: String,
    pub alias: Option<String>,
    pub is_default: bool,
    pub cpu_max: u32,
    pub deprecated: bool,
}

/// What the binary identity is made of; the cache is valid while it matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BinaryId {
    pub path: PathBuf,
    pub size: u64,
    pub mtime_ns: i128,
    pub inode: u64,
}

impl BinaryId {
    pub fn of(path: &Path) -> std::io::Result<BinaryId> {
        let m = std::fs::metadata(path)?;
        Ok(BinaryId {
            path: path.to_path_buf(),
            size: m.len(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
            inode: m.ino(),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caps {
    pub emulator: PathBuf,
    pub binary: Option<BinaryId>,
    /// e.g. `x86_64`
    pub arch: String,
    pub version: (u32, u32, u32),
    pub machines: Vec<Machine>,
    /// QEMU has KVM compiled in and enabled (query-kvm).
    pub kvm_present: bool,
    /// KVM can boot ordinary guests here: /dev/kvm usable and not the paravirtual
    /// nested KVM (kvm_pvm). Decides `accel=kvm` vs `tcg`.
    pub kvm_usable: bool,
    pub cpu_models: Vec<String>,
    pub device_types: Vec<String>,
    /// What libvirt's defaults read of this QEMU (see `DefaultCaps`).
    #[serde(default)]
    pub defaults: DefaultCaps,
}

/// The QEMU capabilities libvirt's define-time defaults depend on (its `QEMU_CAPS_*`
/// flags of the same names): which USB controller a q35 machine gets, the PCIe root
/// port model, whether host-passthrough CPUs are migratable. The probe reads them from
/// QEMU's device types and version; a cache file written before they existed, and the
/// fixture, mean QEMU 7.2's, which has them all. libvirt's own tests run some documents
/// with fewer of them (the corpus test gives those the same set).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DefaultCaps {
    /// `qemu-xhci` (QEMU_CAPS_DEVICE_QEMU_XHCI): q35's default USB controller.
    pub qemu_xhci: bool,
    /// `nec-usb-xhci` (QEMU_CAPS_NEC_USB_XHCI): the next choice.
    pub nec_usb_xhci: bool,
    /// `ich9-usb-ehci1` (QEMU_CAPS_ICH9_USB_EHCI1): USB2 with its companions, the last.
    pub ich9_usb_ehci1: bool,
    /// `piix3-usb-uhci` (QEMU_CAPS_PIIX3_USB_UHCI): the model of a USB controller
    /// written without one, on every x86 machine.
    pub piix3_usb_uhci: bool,
    /// `pcie-root-port` (QEMU_CAPS_DEVICE_PCIE_ROOT_PORT); `ioh3420` without it.
    pub pcie_root_port: bool,
    /// QEMU_CAPS_CPU_MIGRATABLE (QEMU 2.12 on): host-passthrough defaults to
    /// `migratable='on'`, else `off`.
    pub cpu_migratable: bool,
}

impl Default for DefaultCaps {
    fn default() -> Self {
        DefaultCaps {
            qemu_xhci: true,
            nec_usb_xhci: true,
            ich9_usb_ehci1: true,
            piix3_usb_uhci: true,
            pcie_root_port: true,
            cpu_migratable: true,
        }
    }
}

impl DefaultCaps {
    /// As libvirt probes them: devices by QOM type, `migratable` by version.
    pub fn probed(device_types: &[String], version: (u32, u32, u32)) -> DefaultCaps {
        let has = |t: &str| device_types.iter().any(|d| d == t);
        DefaultCaps {
            qemu_xhci: has("qemu-xhci"),
            nec_usb_xhci: has("nec-usb-xhci"),
            ich9_usb_ehci1: has("ich9-usb-ehci1"),
            piix3_usb_uhci: has("piix3-usb-uhci"),
            pcie_root_port: has("pcie-root-port"),
            cpu_migratable: version >= (2, 12, 0),
        }
    }

    /// None of them (libvirt's tests with fixed capabilities start from an empty set).
    pub fn none() -> DefaultCaps {
        DefaultCaps {
            qemu_xhci: false,
            nec_usb_xhci: false,
            ich9_usb_ehci1: false,
            piix3_usb_uhci: false,
            pcie_root_port: false,
            cpu_migratable: false,
        }
    }
}

const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// Whether KVM can boot stock kernels on this host (see design/test-guest.md).
pub fn host_kvm_usable() -> bool {
    if Path::new("/sys/module/kvm_pvm").exists() {
        return false;
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// An emulator with no guest (`-machine none`), spoken to through QMP on its stdio:
/// the capability probe and the CPU model questions (`crate::cpu_model`) use it.
pub struct StdioQmp {
    emulator: PathBuf,
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    next_id: u64,
}

impl StdioQmp {
    /// Starts `emulator` with `extra` arguments and negotiates QMP.
    pub async fn spawn(emulator: &Path, extra: &[&str]) -> Result<StdioQmp, CapsError> {
        let err = |m: String| CapsError::Probe(emulator.to_path_buf(), m);
        let mut child = tokio::process::Command::new(emulator)
            .args([
                "-S",
                "-nodefaults",
                "-nographic",
                "-machine",
                "none",
                "-qmp",
                "stdio",
            ])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| CapsError::Spawn(emulator.to_path_buf(), e))?;
        let stdin = child.stdin.take().ok_or_else(|| err("no stdin".into()))?;
        let stdout = child.stdout.take().ok_or_else(|| err("no stdout".into()))?;
        let mut lines = BufReader::new(stdout).lines();
        let greeting = lines.next_line().await.map_err(|e| err(e.to_string()))?;
        let greeting: Value = serde_json::from_str(greeting.as_deref().unwrap_or(""))
            .map_err(|e| err(format!("bad QMP greeting: {e}")))?;
        if greeting.get("QMP").is_none() {
            return Err(err("no QMP greeting".into()));
        }
        let mut qmp = StdioQmp {
            emulator: emulator.to_path_buf(),
            child,
            stdin,
            lines,
            next_id: 0,
        };
        qmp.exec("qmp_capabilities", Value::Null).await?;
        Ok(qmp)
    }

    /// Runs one command and returns its `return` value; events in between are skipped.
    pub async fn exec(&mut self, cmd: &str, args: Value) -> Result<Value, CapsError> {
        let err = |m: String| CapsError::Probe(self.emulator.clone(), m);
        self.next_id += 1;
        let mut msg = json!({"execute": cmd, "id": self.next_id});
        if !args.is_null() {
            msg["arguments"] = args;
        }
        let mut line = msg.to_string();
        line.push('\n');
        self.stdin
            .write_all(line.as_bytes())
            .await
            .map_err(|e| err(e.to_string()))?;
        loop {
            let Some(l) = self
                .lines
                .next_line()
                .await
                .map_err(|e| err(e.to_string()))?
            else {
                return Err(err(format!("emulator exited during {cmd}")));
            };
            let v: Value =
                serde_json::from_str(&l).map_err(|e| err(format!("bad QMP reply: {e}")))?;
            if v.get("id").and_then(Value::as_u64) != Some(self.next_id) {
                continue; // an event
            }
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            return Err(CapsError::Command(
                cmd.to_owned(),
                v.get("error")
                    .and_then(|e| e.get("desc"))
                    .and_then(Value::as_str)
                    .map_or_else(|| v.to_string(), str::to_owned),
            ));
        }
    }

    /// Asks the emulator to quit and waits a little for it; `kill_on_drop` ends it
    /// otherwise.
    pub async fn quit(mut self) {
        let _ = self.exec("quit", Value::Null).await;
        drop(self.stdin);
        let _ = tokio::time::timeout(Duration::from_secs(2), self.child.wait()).await;
    }
}

fn arch_of(emulator: &Path) -> String {
    emulator
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("qemu-system-"))
        .unwrap_or("x86_64")
        .to_owned()
}

impl Caps {
    /// The machine type marked default by QEMU (`pc` alias resolved by the caller).
    pub fn default_machine(&self) -> Option<&str> {
        self.machines
            .iter()
            .find(|m| m.is_default)
            .map(|m| m.alias.as_deref().unwrap_or(&m.name))
    }

    /// Resolves an alias (`pc`, `q35`) to the concrete versioned type; a concrete name
    /// is returned as it is when known.
    pub fn machine_alias(&self, name: &str) -> Option<&str> {
        self.machines
            .iter()
            .find(|m| m.alias.as_deref() == Some(name))
            .or_else(|| self.machines.iter().find(|m| m.name == name))
            .map(|m| m.name.as_str())
    }

    pub fn has_device(&self, ty: &str) -> bool {
        self.device_types.iter().any(|d| d == ty)
    }

    /// A fixed capability set (what QEMU 7.2 on x86_64 reports, trimmed, KVM usable) for
    /// golden files, unit tests and benchmarks, which must not depend on this host.
    pub fn fixture() -> Caps {
        let m = |name: &str, alias: &str, is_default: bool| Machine {
            name: name.into(),
            alias: Some(alias.into()),
            is_default,
            cpu_max: 255,
            deprecated: false,
        };
        Caps {
            emulator: PathBuf::from("/usr/bin/qemu-system-x86_64"),
            binary: None,
            arch: "x86_64".into(),
            version: (7, 2, 0),
            machines: vec![
                m("pc-i440fx-7.2", "pc", true),
                m("pc-q35-7.2", "q35", false),
            ],
            kvm_present: true,
            kvm_usable: true,
            cpu_models: vec!["qemu64".into(), "Skylake-Client".into()],
            device_types: vec![],
            defaults: DefaultCaps::default(),
        }
    }

    fn cache_file(cache_dir: &Path, id: &BinaryId) -> PathBuf {
        let name: String = id
            .path
            .to_string_lossy()
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        cache_dir.join(format!("{name}.json"))
    }

    /// Cached capabilities when the binary has not changed; probes otherwise.
    pub async fn load_or_probe(emulator: &Path, cache_dir: &Path) -> Result<Caps, CapsError> {
        let id = BinaryId::of(emulator).map_err(|e| CapsError::Spawn(emulator.to_path_buf(), e))?;
        let file = Self::cache_file(cache_dir, &id);
        if let Some(c) = Self::load_cached(&file, &id) {
            return Ok(c);
        }
        let mut caps = Self::probe(emulator).await?;
        caps.binary = Some(id);
        if let Ok(bytes) = serde_json::to_vec(&caps) {
            let _ = common::persist::create_dir_all(cache_dir, 0o755);
            if let Err(e) = common::persist::write_atomic(&file, &bytes, 0o644) {
                tracing::warn!("cannot cache capabilities in {}: {e}", file.display());
            }
        }
        Ok(caps)
    }

    fn load_cached(file: &Path, id: &BinaryId) -> Option<Caps> {
        let bytes = std::fs::read(file).ok()?;
        let mut caps: Caps = serde_json::from_slice(&bytes).ok()?;
        if caps.binary.as_ref() != Some(id) {
            return None;
        }
        // KVM usability is a property of the host now, not of the binary.
        caps.kvm_usable = caps.kvm_present && host_kvm_usable();
        Some(caps)
    }

    /// Probes the emulator through QMP on stdio.
    pub async fn probe(emulator: &Path) -> Result<Caps, CapsError> {
        match tokio::time::timeout(PROBE_TIMEOUT, Self::probe_inner(emulator)).await {
            Ok(r) => r,
            Err(_) => Err(CapsError::Timeout(emulator.to_path_buf(), PROBE_TIMEOUT)),
        }
    }

    async fn probe_inner(emulator: &Path) -> Result<Caps, CapsError> {
        let mut qmp = StdioQmp::spawn(emulator, &[]).await?;
        let ver = qmp.exec("query-version", Value::Null).await?;
        let q = &ver["qemu"];
        let n = |k: &str| {
            q[k].as_u64()
                .and_then(|x| u32::try_from(x).ok())
                .unwrap_or(0)
        };
        let version = (n("major"), n("minor"), n("micro"));
        let machines = qmp.exec("query-machines", Value::Null).await?;
        let mut machines: Vec<Machine> = machines
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|m| {
                        Some(Machine {
                            name: m["name"].as_str()?.to_owned(),
                            alias: m["alias"].as_str().map(str::to_owned),
                            is_default: m["is-default"].as_bool().unwrap_or(false),
                            cpu_max: m["cpu-max"]
                                .as_u64()
                                .and_then(|x| u32::try_from(x).ok())
                                .unwrap_or(1),
                            deprecated: m["deprecated"].as_bool().unwrap_or(false),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        machines.sort_by(|a, b| a.name.cmp(&b.name));
        let kvm = qmp.exec("query-kvm", Value::Null).await?;
        let kvm_present = kvm["present"].as_bool().unwrap_or(false);
        // -machine none has no CPU; query-cpu-definitions still lists the models.
        let cpus = qmp
            .exec("query-cpu-definitions", Value::Null)
            .await
            .unwrap_or(Value::Null);
        let mut cpu_models: Vec<String> = cpus
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        cpu_models.sort();
        let types = qmp
            .exec(
                "qom-list-types",
                json!({"implements": "device", "abstract": false}),
            )
            .await?;
        let mut device_types: Vec<String> = types
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        device_types.sort();
        qmp.quit().await;
        Ok(Caps {
            emulator: emulator.to_path_buf(),
            binary: None,
            arch: arch_of(emulator),
            version,
            machines,
            kvm_present,
            kvm_usable: kvm_present && host_kvm_usable(),
            cpu_models,
            defaults: DefaultCaps::probed(&device_types, version),
            device_types,
        })
    }

    /// The `<guest>` part of `GetCapabilities` for this emulator.
    pub fn guest_element(&self) -> Element {
        let mut arch = Element::new("arch")
            .attr("name", &self.arch)
            .child(Element::with_text(
                "wordsize",
                if self.arch.ends_with("64") {
                    "64"
                } else {
                    "32"
                },
            ))
            .child(Element::with_text(
                "emulator",
                self.emulator.display().to_string(),
            ));
        for m in &self.machines {
            if let Some(a) = &m.alias {
                arch.push(
                    Element::with_text("machine", a)
                        .attr("canonical", &m.name)
                        .attr("maxCpus", m.cpu_max),
                );
            }
            arch.push(Element::with_text("machine", &m.name).attr("maxCpus", m.cpu_max));
        }
        arch.push(Element::new("domain").attr("type", "qemu"));
        if self.kvm_usable {
            arch.push(Element::new("domain").attr("type", "kvm"));
        }
        Element::new("guest")
            .child(Element::with_text("os_type", "hvm"))
            .child(arch)
            .child(
                Element::new("features")
                    .child(
                        Element::new("acpi")
                            .attr("default", "on")
                            .attr("toggle", "yes"),
                    )
                    .child(
                        Element::new("apic")
                            .attr("default", "on")
                            .attr("toggle", "no"),
                    )
                    .child(Element::new("pae")),
            )
    }
}

/// `GetCapabilities`: a host part (given by the caller: uuid, CPU arch) and one guest
/// per emulator.
pub fn capabilities_xml(host_uuid: &uuid::Uuid, caps: &[Caps]) -> String {
    let host_arch = std::env::consts::ARCH;
    let mut root = Element::new("capabilities").child(
        Element::new("host")
            .child(Element::with_text("uuid", host_uuid.to_string()))
            .child(Element::new("cpu").child(Element::with_text("arch", host_arch))),
    );
    for c in caps {
        root.push(c.guest_element());
    }
    root.to_xml()
}

/// `GetDomainCapabilities(emulator, arch, machine, virttype)` as a pure function of
/// `Caps`. Empty strings mean "the default".
pub fn domain_capabilities_xml(
    caps: &Caps,
    machine: &str,
    virt_type: &str,
) -> Result<String, String> {
    let vt = if virt_type.is_empty() {
        "qemu"
    } else {
        virt_type
    };
    if vt != "qemu" && vt != "kvm" {
        return Err(format!("unknown virttype '{vt}'"));
    }
    if vt == "kvm" && !caps.kvm_usable {
        return Err("KVM is not usable on this host".into());
    }
    let wanted = if machine.is_empty() {
        caps.default_machine().unwrap_or("")
    } else {
        machine
    };
    let concrete = caps
        .machine_alias(wanted)
        .ok_or_else(|| format!("the emulator does not support machine type '{wanted}'"))?;
    let max = caps
        .machines
        .iter()
        .find(|m| m.name == concrete)
        .map(|m| m.cpu_max)
        .unwrap_or(1);
    let enum_el = |name: &str, values: &[&str]| {
        let mut e = Element::new("enum").attr("name", name);
        for v in values {
            e.push(Element::with_text("value", *v));
        }
        e
    };
    let mut custom = Element::new("mode")
        .attr("name", "custom")
        .attr("supported", "yes");
    for m in &caps.cpu_models {
        custom.push(Element::with_text("model", m).attr("usable", "unknown"));
    }
    let yes = |n: &str| Element::new(n).attr("supported", "yes");
    let root = Element::new("domainCapabilities")
        .child(Element::with_text(
            "path",
            caps.emulator.display().to_string(),
        ))
        .child(Element::with_text("domain", vt))
        .child(Element::with_text("machine", concrete))
        .child(Element::with_text("arch", &caps.arch))
        .child(Element::new("vcpu").attr("max", max))
        .child(
            Element::new("os").attr("supported", "yes").child(
                Element::new("loader")
                    .attr("supported", "yes")
                    .child(enum_el("type", &["rom", "pflash"]))
                    .child(enum_el("readonly", &["yes", "no"])),
            ),
        )
        .child(
            Element::new("cpu")
                .child(
                    Element::new("mode")
                        .attr("name", "host-passthrough")
                        .attr("supported", if vt == "kvm" { "yes" } else { "no" }),
                )
                .child(
                    Element::new("mode")
                        .attr("name", "maximum")
                        .attr("supported", "yes"),
                )
                .child(custom),
        )
        .child(
            Element::new("devices")
                .child(
                    yes("disk")
                        .child(enum_el("diskDevice", &["disk", "cdrom", "floppy"]))
                        .child(enum_el(
                            "bus",
                            &["virtio", "sata", "scsi", "ide", "usb", "fdc"],
                        )),
                )
                .child(yes("graphics").child(enum_el("type", &["vnc", "spice"])))
                .child(yes("video").child(enum_el(
                    "modelType",
                    &["vga", "cirrus", "qxl", "virtio", "bochs", "none"],
                )))
                .child(
                    yes("rng")
                        .child(enum_el("model", &["virtio"]))
                        .child(enum_el("backendModel", &["random"])),
                )
                .child(
                    yes("hostdev")
                        .child(enum_el("mode", &["subsystem"]))
                        .child(enum_el("subsysType", &["pci"])),
                ),
        )
        .child(Element::new("features").child(Element::new("vmcoreinfo").attr("supported", "yes")));
    Ok(root.to_xml())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The fixture without KVM, with the `none` machine and one known device type.
    pub fn fake() -> Caps {
        let mut c = Caps::fixture();
        c.kvm_present = false;
        c.kvm_usable = false;
        c.machines.push(Machine {
            name: "none".into(),
            alias: None,
            is_default: false,
            cpu_max: 255,
            deprecated: false,
        });
        c.device_types = vec!["virtio-net-pci".into()];
        c
    }

    #[test]
    fn default_caps_follow_device_types_and_version() {
        let types: Vec<String> = ["nec-usb-xhci", "ioh3420"].map(String::from).to_vec();
        let old = DefaultCaps::probed(&types, (2, 11, 0));
        assert_eq!(
            old,
            DefaultCaps {
                nec_usb_xhci: true,
                ..DefaultCaps::none()
            }
        );
        assert!(DefaultCaps::probed(&[], (2, 12, 0)).cpu_migratable);
        // A cache file from before the field: QEMU 7.2's set.
        let mut v = serde_json::to_value(Caps::fixture()).unwrap();
        v.as_object_mut().unwrap().remove("defaults");
        let back: Caps = serde_json::from_value(v).unwrap();
        assert_eq!(back.defaults, DefaultCaps::default());
    }

    #[test]
    fn alias_resolves_to_concrete_machine() {
        let c = fake();
        assert_eq!(c.machine_alias("pc"), Some("pc-i440fx-7.2"));
        assert_eq!(c.machine_alias("q35"), Some("pc-q35-7.2"));
        assert_eq!(c.machine_alias("pc-q35-7.2"), Some("pc-q35-7.2"));
        assert_eq!(c.machine_alias("nonesuch"), None);
        assert_eq!(c.default_machine(), Some("pc"));
    }

    #[test]
    fn domain_capabilities_names_machine_and_rejects_unknown() {
        let c = fake();
        let x = domain_capabilities_xml(&c, "q35", "").unwrap();
        assert!(x.contains("<machine>pc-q35-7.2</machine>"), "{x}");
        assert!(x.contains("Skylake-Client"));
        assert!(domain_capabilities_xml(&c, "nonesuch", "")
            .unwrap_err()
            .contains("nonesuch"));
        assert!(domain_capabilities_xml(&c, "", "kvm").is_err());
        let caps = capabilities_xml(&uuid::Uuid::nil(), &[c]);
        let parsed = common::xml::parse_root(&caps, "capabilities").unwrap();
        let guest = parsed.first("guest").unwrap();
        assert_eq!(guest.child_text("os_type").as_deref(), Some("hvm"));
        let arch = guest.first("arch").unwrap();
        assert!(arch
            .children_named("machine")
            .any(|m| m.text() == "pc" && m.get_attr("canonical") == Some("pc-i440fx-7.2")));
    }

    #[tokio::test]
    async fn probe_real_emulator_and_cache() {
        let emu = PathBuf::from("/usr/bin/qemu-system-x86_64");
        let dir = tempfile::tempdir().unwrap();
        let c = Caps::load_or_probe(&emu, dir.path()).await.unwrap();
        assert!(c.version.0 >= 5, "{:?}", c.version);
        let pc = c.machine_alias("pc").unwrap();
        assert!(pc.starts_with("pc-i440fx-"), "{pc}");
        assert!(c.has_device("virtio-net-pci"));
        // Debian's QEMU 7.2 has everything libvirt's defaults look for.
        assert_eq!(c.defaults, DefaultCaps::default());
        assert!(c.cpu_models.iter().any(|m| m == "qemu64"));
        if Path::new("/sys/module/kvm_pvm").exists() {
            assert!(!c.kvm_usable);
        }
        // The second call is served from the cache file (no process: make the cache
        // recognisable by editing it and checking the edit comes back).
        let file = Caps::cache_file(dir.path(), c.binary.as_ref().unwrap());
        let mut edited = c.clone();
        edited.cpu_models.push("from-cache".into());
        std::fs::write(&file, serde_json::to_vec(&edited).unwrap()).unwrap();
        let again = Caps::load_or_probe(&emu, dir.path()).await.unwrap();
        assert!(again.cpu_models.iter().any(|m| m == "from-cache"));
        // A changed identity (different inode/mtime recorded) forces a new probe.
        let mut stale = edited.clone();
        if let Some(b) = stale.binary.as_mut() {
            b.mtime_ns -= 1;
        }
        std::fs::write(&file, serde_json::to_vec(&stale).unwrap()).unwrap();
        let fresh = Caps::load_or_probe(&emu, dir.path()).await.unwrap();
        assert!(!fresh.cpu_models.iter().any(|m| m == "from-cache"));
    }
}
