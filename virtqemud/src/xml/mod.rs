//! The domain XML model: libvirt's format parsed into typed structs and written back.
//!
//! # For the runtime (how to use this module)
//!
//! ```text
//! let mut dom = Domain::parse(xml)?;          // DomainXmlError -> VirError via From
//! let caps = Caps::load_or_probe(&emulator, &cache_dir).await?;   // crate::caps
//! dom.fill_defaults(&caps)?;                 // uuid/MACs/machine/controllers/PCI slots
//! let text = dom.to_xml(XmlOpts::default()); // persist this (inactive config)
//! let argv = crate::command_line::build(&dom, &LaunchContext { .. })?;
//! ```
//!
//! `Domain::parse` already validates (names the element and value on error); a parsed
//! domain without `<uuid>` gets a random one at parse time, as libvirt does.
//! `fill_defaults` is idempotent: run it at define time and store the result, so the
//! MAC addresses and PCI slots stay stable across starts. Elements this model does not
//! type (`<metadata>`, unknown top-level elements, unknown devices, `<features>`,
//! `<clock>`, `<pm>`) are kept verbatim and written back.

mod devices;

use std::fmt;
use std::path::PathBuf;

use common::error::VirError;
use common::xml::{Element, XmlError};
use uuid::Uuid;

pub use devices::*;

use crate::caps::Caps;

/// Errors of the domain XML layer. Each names the element and the offending value.
#[derive(Debug, thiserror::Error)]
pub enum DomainXmlError {
    #[error(transparent)]
    Xml(#[from] XmlError),
    #[error("<{element}> value '{value}' is not supported: {reason}")]
    Unsupported {
        element: String,
        value: String,
        reason: String,
    },
}

impl DomainXmlError {
    pub fn unsupported(element: &str, value: &str, reason: impl ToString) -> Self {
        DomainXmlError::Unsupported {
            element: element.to_owned(),
            value: value.to_owned(),
            reason: reason.to_string(),
        }
    }
}

impl From<DomainXmlError> for VirError {
    fn from(e: DomainXmlError) -> Self {
        match e {
            DomainXmlError::Xml(x) => VirError::xml(x),
            u @ DomainXmlError::Unsupported { .. } => VirError::unsupported(u),
        }
    }
}

pub type Result<T> = std::result::Result<T, DomainXmlError>;

pub(crate) fn invalid(
    element: &str,
    what: &str,
    value: &str,
    reason: impl ToString,
) -> DomainXmlError {
    DomainXmlError::Xml(XmlError::invalid(element, what, value, reason))
}

pub(crate) fn missing(element: &str, what: &str) -> DomainXmlError {
    DomainXmlError::Xml(XmlError::missing(element, what))
}

/// A validated domain name: 1..=200 characters, no '/', no control characters, not
/// starting with '.'.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DomainName(String);

impl DomainName {
    pub fn new(name: &str) -> Result<DomainName> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 200 {
            return Err(invalid(
                "name",
                "value",
                name,
                "must be 1 to 200 characters",
            ));
        }
        if name.contains('/') || name.chars().any(char::is_control) || name.starts_with('.') {
            return Err(invalid(
                "name",
                "value",
                name,
                "must not contain '/' or control characters nor start with '.'",
            ));
        }
        Ok(DomainName(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `<domain type=...>`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VirtType {
    Qemu,
    Kvm,
}

impl VirtType {
    pub fn as_str(self) -> &'static str {
        match self {
            VirtType::Qemu => "qemu",
            VirtType::Kvm => "kvm",
        }
    }
}

/// on_poweroff / on_reboot / on_crash
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleAction {
    Destroy,
    Restart,
    RenameRestart,
    Preserve,
    CoredumpDestroy,
    CoredumpRestart,
}

impl LifecycleAction {
    pub fn as_str(self) -> &'static str {
        match self {
            LifecycleAction::Destroy => "destroy",
            LifecycleAction::Restart => "restart",
            LifecycleAction::RenameRestart => "rename-restart",
            LifecycleAction::Preserve => "preserve",
            LifecycleAction::CoredumpDestroy => "coredump-destroy",
            LifecycleAction::CoredumpRestart => "coredump-restart",
        }
    }

    fn parse(element: &str, s: &str) -> Result<LifecycleAction> {
        Ok(match s {
            "destroy" => LifecycleAction::Destroy,
            "restart" => LifecycleAction::Restart,
            "rename-restart" => LifecycleAction::RenameRestart,
            "preserve" => LifecycleAction::Preserve,
            "coredump-destroy" => LifecycleAction::CoredumpDestroy,
            "coredump-restart" => LifecycleAction::CoredumpRestart,
            _ => return Err(invalid(element, "value", s, "unknown lifecycle action")),
        })
    }
}

/// Boot device of `<os><boot dev=.../>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootDev {
    Hd,
    Cdrom,
    Network,
    Fd,
}

impl BootDev {
    pub fn as_str(self) -> &'static str {
        match self {
            BootDev::Hd => "hd",
            BootDev::Cdrom => "cdrom",
            BootDev::Network => "network",
            BootDev::Fd => "fd",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Loader {
    pub path: Option<PathBuf>,
    pub readonly: Option<bool>,
    /// `rom` or `pflash`
    pub kind: Option<String>,
    pub secure: Option<bool>,
}

/// How a variable store given in libvirt's `<nvram type=...><source>` form is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NvramSource {
    /// `type='file'`: the store is `Os::nvram`; written back in that form.
    File,
    /// `type='network'` (NBD, iSCSI, ...): a `DiskSource::Network`, opened by QEMU's
    /// block driver for the protocol as a network disk is.
    Network(DiskSource),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Os {
    /// Always `hvm` for QEMU.
    pub os_type: String,
    pub arch: Option<String>,
    pub machine: Option<String>,
    /// `firmware='efi'` / `'bios'`
    pub firmware: Option<String>,
    pub loader: Option<Loader>,
    /// `<loader stateless='yes'>`: firmware without a variable store (kept beside the
    /// loader so that the runtime's firmware choice can replace the loader whole).
    pub loader_stateless: Option<bool>,
    pub nvram: Option<PathBuf>,
    pub nvram_template: Option<PathBuf>,
    /// `<nvram type='file'|'network'>` with a `<source>` instead of a path as text.
    pub nvram_source: Option<NvramSource>,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub cmdline: Option<String>,
    pub dtb: Option<PathBuf>,
    pub boot: Vec<BootDev>,
    pub bootmenu: Option<bool>,
    /// `<bootmenu timeout>` in ms: how long the menu waits (QEMU's splash-time).
    pub bootmenu_timeout: Option<u32>,
    /// Elements of `<os>` not typed here (`<smbios>`, `<bios>`, ...), kept verbatim.
    pub other: Vec<Element>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpuMode {
    HostPassthrough,
    HostModel,
    Maximum,
    Custom,
}

impl CpuMode {
    pub fn as_str(self) -> &'static str {
        match self {
            CpuMode::HostPassthrough => "host-passthrough",
            CpuMode::HostModel => "host-model",
            CpuMode::Maximum => "maximum",
            CpuMode::Custom => "custom",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topology {
    pub sockets: u32,
    pub dies: u32,
    pub cores: u32,
    pub threads: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cpu {
    pub mode: CpuMode,
    /// `match=` minimum|exact|strict (how a custom model is compared with the host's).
    pub match_: Option<String>,
    pub check: Option<String>,
    pub migratable: Option<String>,
    pub model: Option<String>,
    pub fallback: Option<String>,
    pub topology: Option<Topology>,
    /// `<feature policy name/>` as (policy, name)
    pub features: Vec<(String, String)>,
    /// Children this model does not type (`<numa>`, `<cache>`, `<vendor>`, ...): kept,
    /// written back and refused at start by name.
    pub other: Vec<Element>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    Static,
    Auto,
}

/// The domain definition.
#[derive(Debug, Clone, PartialEq)]
pub struct Domain {
    pub virt_type: VirtType,
    pub name: DomainName,
    pub uuid: Uuid,
    pub title: Option<String>,
    pub description: Option<String>,
    /// `<metadata>` verbatim.
    pub metadata: Option<Element>,
    pub memory_kib: u64,
    /// `<memory dumpCore='on|off'>`: whether guest RAM goes into QEMU's core dumps.
    pub dump_core: Option<bool>,
    pub current_memory_kib: u64,
    pub max_memory: Option<(u64, u32)>,
    /// `<vcpu>` maximum
    pub vcpus: u32,
    /// `<vcpu current=>`
    pub current_vcpus: Option<u32>,
    /// `<vcpu cpuset=>`: the host CPUs the guest may run on (libvirt's cpuset syntax).
    pub vcpu_cpuset: Option<String>,
    pub placement: Option<Placement>,
    pub cpu: Option<Cpu>,
    pub os: Os,
    /// `<features>` verbatim; see [`Domain::has_feature`].
    pub features: Option<Element>,
    /// `<clock>` verbatim
    pub clock: Option<Element>,
    /// `<pm>` verbatim
    pub pm: Option<Element>,
    pub on_poweroff: LifecycleAction,
    pub on_reboot: LifecycleAction,
    pub on_crash: LifecycleAction,
    pub devices: Devices,
    /// `<qemu:commandline>` (libvirt's QEMU namespace): arguments and environment
    /// passed to QEMU as written.
    pub qemu_commandline: Option<QemuCommandline>,
    /// Namespace declarations made on `<domain>` (`xmlns:P`), written back as they came.
    pub namespaces: Vec<(String, String)>,
    /// Top-level elements not typed here, kept verbatim (refused at start unless known
    /// to be safe to leave out: see `command_line::build`).
    pub other: Vec<Element>,
}

/// libvirt's QEMU namespace for domain XML.
pub const QEMU_NS: &str = "http://libvirt.org/schemas/domain/qemu/1.0";

/// `<qemu:commandline>`: extra QEMU arguments (appended in order) and environment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QemuCommandline {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl QemuCommandline {
    /// The `<qemu:commandline>` element if `el` is one: its prefix is bound to
    /// [`QEMU_NS`] on `el` itself or among `root_ns` (the root's declarations).
    fn parse(el: &Element, root_ns: &[(String, String)]) -> Result<Option<QemuCommandline>> {
        let Some((prefix, "commandline")) = el.name.split_once(':') else {
            return Ok(None);
        };
        let decl = format!("xmlns:{prefix}");
        let bound = el
            .attrs
            .iter()
            .chain(root_ns)
            .find(|(k, _)| *k == decl)
            .is_some_and(|(_, v)| v == QEMU_NS);
        if !bound {
            return Ok(None);
        }
        let mut c = QemuCommandline::default();
        for child in el.elements() {
            // A child is the namespace's by its own prefix, which may be declared on
            // the child itself (libvirt resolves namespaces by URI, not by prefix).
            let local = child.name.split_once(':').and_then(|(p, local)| {
                let decl = format!("xmlns:{p}");
                let in_ns = (child.attrs.iter().chain(&el.attrs).chain(root_ns))
                    .find(|(k, _)| *k == decl)
                    .is_some_and(|(_, v)| v == QEMU_NS);
                in_ns.then_some(local)
            });
            match local {
                Some("arg") => c.args.push(child.req_attr("value")?.to_owned()),
                Some("env") => {
                    let name = child.req_attr("name")?;
                    let mut chars = name.chars();
                    let ok = chars
                        .next()
                        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
                        && chars.all(|ch| ch.is_ascii_alphanumeric() || ch == '_');
                    if !ok {
                        return Err(invalid(
                            "qemu:env",
                            "attribute 'name'",
                            name,
                            "must match [A-Za-z_][A-Za-z0-9_]*",
                        ));
                    }
                    c.env.push((
                        name.to_owned(),
                        child.get_attr("value").unwrap_or_default().to_owned(),
                    ));
                }
                _ => {
                    return Err(DomainXmlError::unsupported(
                        "qemu:commandline child",
                        &child.name,
                        "expected qemu:arg or qemu:env",
                    ))
                }
            }
        }
        Ok(Some(c))
    }

    fn to_element(&self) -> Element {
        let mut el = Element::new("qemu:commandline");
        for a in &self.args {
            el.push(Element::new("qemu:arg").attr("value", a));
        }
        for (k, v) in &self.env {
            // libvirt writes an empty value as none at all.
            el.push(
                Element::new("qemu:env")
                    .attr("name", k)
                    .attr_opt("value", Some(v).filter(|v| !v.is_empty())),
            );
        }
        el
    }
}

/// Options of [`Domain::to_xml`].
#[derive(Debug, Clone, Copy, Default)]
pub struct XmlOpts {
    /// Omit live-only data (`<domain id=...>`). The model keeps no live data, so this
    /// only controls the `id` attribute.
    pub inactive: bool,
    /// The running id to put in `<domain id=...>` when not inactive.
    pub id: Option<u32>,
    /// Include secrets (graphics passwords): `VIR_DOMAIN_XML_SECURE`, and our own files.
    pub secure: bool,
}

pub(crate) fn unit_to_kib(element: &str, value: u64, unit: &str) -> Result<u64> {
    let bytes: u128 = match unit {
        "b" | "bytes" => 1,
        "k" | "K" | "KiB" => 1 << 10,
        "KB" => 1000,
        "m" | "M" | "MiB" => 1 << 20,
        "MB" => 1_000_000,
        "g" | "G" | "GiB" => 1 << 30,
        "GB" => 1_000_000_000,
        "t" | "T" | "TiB" => 1 << 40,
        "TB" => 1_000_000_000_000,
        _ => return Err(invalid(element, "attribute 'unit'", unit, "unknown unit")),
    };
    let kib = (u128::from(value) * bytes).div_ceil(1024);
    u64::try_from(kib).map_err(|_| invalid(element, "value", &value.to_string(), "too large"))
}

pub(crate) fn parse_memory(el: &Element) -> Result<u64> {
    let text = el.text();
    let v: u64 = text
        .parse()
        .map_err(|e| invalid(&el.name, "value", &text, e))?;
    unit_to_kib(&el.name, v, el.get_attr("unit").unwrap_or("KiB"))
}

/// `<nvram>`: a path as text (with a `template`), or libvirt's `type='file'` /
/// `type='network'` form with a `<source>` (the network one kept whole).
fn parse_nvram(c: &Element, os: &mut Os) -> Result<()> {
    os.nvram_template = c.get_attr("template").map(PathBuf::from);
    match c.get_attr("type") {
        None => {
            let text = c.text();
            os.nvram = (!text.is_empty()).then(|| PathBuf::from(text));
        }
        Some("file") => {
            let src = c
                .first("source")
                .ok_or_else(|| missing("nvram", "<source>"))?;
            os.nvram = Some(PathBuf::from(src.req_attr("file")?));
            os.nvram_source = Some(NvramSource::File);
        }
        Some("network") => {
            let src = c
                .first("source")
                .ok_or_else(|| missing("nvram", "<source>"))?;
            os.nvram = None;
            os.nvram_source = Some(NvramSource::Network(network_source(src)?));
        }
        Some(t) => {
            return Err(DomainXmlError::unsupported(
                "nvram type",
                t,
                "expected file or network",
            ))
        }
    }
    Ok(())
}

pub(crate) fn yes_no(el: &Element, key: &str) -> Result<Option<bool>> {
    match el.get_attr(key) {
        None => Ok(None),
        Some("yes") | Some("on") => Ok(Some(true)),
        Some("no") | Some("off") => Ok(Some(false)),
        Some(v) => Err(invalid(
            &el.name,
            &format!("attribute '{key}'"),
            v,
            "expected yes or no",
        )),
    }
}

pub(crate) fn yn(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn parse_u32(el: &Element, key: &str) -> Result<Option<u32>> {
    Ok(el.parse_attr::<u32>(key)?)
}

fn parse_os(el: &Element) -> Result<Os> {
    let ty = el.first("type").ok_or_else(|| missing("os", "<type>"))?;
    let os_type = ty.text();
    if os_type != "hvm" {
        return Err(DomainXmlError::unsupported(
            "os/type",
            &os_type,
            "QEMU guests are 'hvm'",
        ));
    }
    let firmware = el.get_attr("firmware").map(str::to_owned);
    if let Some(f) = &firmware {
        if f != "efi" && f != "bios" {
            return Err(invalid(
                "os",
                "attribute 'firmware'",
                f,
                "expected efi or bios",
            ));
        }
    }
    let mut os = Os {
        os_type,
        arch: ty.get_attr("arch").map(str::to_owned),
        machine: ty.get_attr("machine").map(str::to_owned),
        firmware,
        ..Os::default()
    };
    for c in el.elements() {
        match c.name.as_str() {
            "type" => {}
            "loader" => {
                let text = c.text();
                let kind = c.get_attr("type").map(str::to_owned);
                if let Some(k) = &kind {
                    if k != "rom" && k != "pflash" {
                        return Err(invalid(
                            "loader",
                            "attribute 'type'",
                            k,
                            "expected rom or pflash",
                        ));
                    }
                }
                os.loader = Some(Loader {
                    path: (!text.is_empty()).then(|| PathBuf::from(text)),
                    readonly: yes_no(c, "readonly")?,
                    kind,
                    secure: yes_no(c, "secure")?,
                });
                os.loader_stateless = yes_no(c, "stateless")?;
            }
            "nvram" => parse_nvram(c, &mut os)?,
            "kernel" => os.kernel = Some(PathBuf::from(c.text())),
            "initrd" => os.initrd = Some(PathBuf::from(c.text())),
            "cmdline" => os.cmdline = Some(c.text()),
            "dtb" => os.dtb = Some(PathBuf::from(c.text())),
            "boot" => {
                let dev = c.req_attr("dev")?;
                os.boot.push(match dev {
                    "hd" => BootDev::Hd,
                    "cdrom" => BootDev::Cdrom,
                    "network" => BootDev::Network,
                    "fd" => BootDev::Fd,
                    _ => {
                        return Err(invalid(
                            "boot",
                            "attribute 'dev'",
                            dev,
                            "expected hd, cdrom, network or fd",
                        ))
                    }
                });
            }
            "bootmenu" => {
                os.bootmenu = yes_no(c, "enable")?;
                os.bootmenu_timeout = c.parse_attr::<u32>("timeout")?;
            }
            _ => os.other.push(c.clone()),
        }
    }
    Ok(os)
}

fn parse_cpu(el: &Element) -> Result<Cpu> {
    let mode = match el.get_attr("mode").unwrap_or("custom") {
        "host-passthrough" => CpuMode::HostPassthrough,
        "host-model" => CpuMode::HostModel,
        "maximum" => CpuMode::Maximum,
        "custom" => CpuMode::Custom,
        m => return Err(invalid("cpu", "attribute 'mode'", m, "unknown CPU mode")),
    };
    let model_el = el.first("model");
    let model = model_el.map(Element::text).filter(|s| !s.is_empty());
    if let Some(m) = &model {
        if !m
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(invalid("cpu/model", "value", m, "not a CPU model name"));
        }
    }
    // A custom `<cpu>` may carry only topology or NUMA cells (the default model then);
    // features need a model to apply to, as libvirt says.
    if mode == CpuMode::Custom && model.is_none() && el.first("feature").is_some() {
        return Err(missing("cpu", "<model> for the features of mode 'custom'"));
    }
    let topology = match el.first("topology") {
        None => None,
        Some(t) => {
            let get = |k: &str| -> Result<u32> {
                let v = parse_u32(t, k)?.unwrap_or(1);
                if v == 0 {
                    return Err(invalid(
                        "topology",
                        &format!("attribute '{k}'"),
                        "0",
                        "must be at least 1",
                    ));
                }
                Ok(v)
            };
            Some(Topology {
                sockets: get("sockets")?,
                dies: get("dies")?,
                cores: get("cores")?,
                threads: get("threads")?,
            })
        }
    };
    let mut features = Vec::new();
    for f in el.children_named("feature") {
        let policy = f.get_attr("policy").unwrap_or("require");
        if !matches!(
            policy,
            "force" | "require" | "optional" | "disable" | "forbid"
        ) {
            return Err(invalid(
                "cpu/feature",
                "attribute 'policy'",
                policy,
                "unknown policy",
            ));
        }
        let name = f.req_attr("name")?;
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(invalid(
                "cpu/feature",
                "attribute 'name'",
                name,
                "not a CPU feature name",
            ));
        }
        features.push((policy.to_owned(), name.to_owned()));
    }
    let match_ = el.get_attr("match").map(str::to_owned);
    if let Some(m) = match_.as_deref() {
        if !matches!(m, "minimum" | "exact" | "strict") {
            return Err(invalid(
                "cpu",
                "attribute 'match'",
                m,
                "expected minimum, exact or strict",
            ));
        }
    }
    Ok(Cpu {
        mode,
        match_,
        check: el.get_attr("check").map(str::to_owned),
        migratable: el.get_attr("migratable").map(str::to_owned),
        model,
        fallback: model_el
            .and_then(|m| m.get_attr("fallback"))
            .map(str::to_owned),
        topology,
        features,
        other: el
            .elements()
            .filter(|c| !matches!(c.name.as_str(), "model" | "topology" | "feature"))
            .cloned()
            .collect(),
    })
}

/// `<domain type=>`: the accelerators this daemon runs.
fn parse_virt_type(root: &Element) -> Result<VirtType> {
    match root.req_attr("type")? {
        "qemu" => Ok(VirtType::Qemu),
        "kvm" => Ok(VirtType::Kvm),
        "hvf" => Err(DomainXmlError::unsupported(
            "domain type",
            "hvf",
            "hvf is macOS's Hypervisor.framework, which this Linux host lacks: use 'qemu' or 'kvm'",
        )),
        t => Err(DomainXmlError::unsupported(
            "domain type",
            t,
            "this daemon runs 'qemu' and 'kvm' domains",
        )),
    }
}

/// `<memory>`, `<currentMemory>` and `<maxMemory>`, as [`Domain`] holds them.
struct Memories {
    memory_kib: u64,
    current_memory_kib: u64,
    max_memory: Option<(u64, u32)>,
}

/// `<memory>`, `<currentMemory>` and `<maxMemory>`, checked against each other.
fn parse_memories(root: &Element) -> Result<Memories> {
    let memory_kib = match root.first("memory") {
        Some(m) => parse_memory(m)?,
        // libvirt takes the guest's memory from its NUMA cells when they give it
        // (virDomainDefPostParseMemory).
        None => numa_memory_kib(root)?.ok_or_else(|| missing("domain", "<memory>"))?,
    };
    if memory_kib < 1024 {
        return Err(invalid(
            "memory",
            "value",
            &memory_kib.to_string(),
            "at least 1 MiB is needed",
        ));
    }
    let current_memory_kib = match root.first("currentMemory") {
        Some(c) => parse_memory(c)?,
        None => memory_kib,
    };
    if current_memory_kib > memory_kib {
        return Err(invalid(
            "currentMemory",
            "value",
            &current_memory_kib.to_string(),
            "larger than <memory>",
        ));
    }
    let max_memory = match root.first("maxMemory") {
        Some(m) => Some((parse_memory(m)?, parse_u32(m, "slots")?.unwrap_or(0))),
        None => None,
    };
    Ok(Memories {
        memory_kib,
        current_memory_kib,
        max_memory,
    })
}

/// The sum of `<cpu><numa><cell memory unit>`; `None` without cells.
fn numa_memory_kib(root: &Element) -> Result<Option<u64>> {
    let Some(numa) = root.first("cpu").and_then(|c| c.first("numa")) else {
        return Ok(None);
    };
    let mut total: Option<u64> = None;
    for cell in numa.elements().filter(|c| c.name == "cell") {
        let v = cell.req_attr("memory")?;
        let n: u64 = v
            .parse()
            .map_err(|e| invalid("cpu/numa/cell", "attribute 'memory'", v, e))?;
        let kib = unit_to_kib("cpu/numa/cell", n, cell.get_attr("unit").unwrap_or("KiB"))?;
        total = Some(total.unwrap_or(0).checked_add(kib).ok_or_else(|| {
            invalid("cpu/numa/cell", "attribute 'memory'", v, "too large in sum")
        })?);
    }
    Ok(total)
}

/// `<vcpu current= placement=>N</vcpu>`: (maximum, current, placement).
fn parse_vcpu(v: &Element) -> Result<(u32, Option<u32>, Option<Placement>)> {
    let text = v.text();
    let n: u32 = text
        .parse()
        .map_err(|e| invalid("vcpu", "value", &text, e))?;
    if !(1..=1024).contains(&n) {
        return Err(invalid("vcpu", "value", &text, "must be 1 to 1024"));
    }
    let cur = parse_u32(v, "current")?;
    if let Some(c) = cur {
        if c == 0 || c > n {
            return Err(invalid(
                "vcpu",
                "attribute 'current'",
                &c.to_string(),
                "must be 1 to the maximum",
            ));
        }
    }
    let placement = match v.get_attr("placement") {
        None => None,
        Some("static") => Some(Placement::Static),
        Some("auto") => Some(Placement::Auto),
        Some(p) => {
            return Err(invalid(
                "vcpu",
                "attribute 'placement'",
                p,
                "expected static or auto",
            ))
        }
    };
    Ok((n, cur, placement))
}

/// libvirt's cpuset syntax (`1-4,^3,8`): checked, kept as written.
fn parse_cpuset(element: &str, v: &str) -> Result<String> {
    let ok = !v.is_empty()
        && v.split(',').all(|part| {
            let part = part.trim().strip_prefix('^').unwrap_or(part.trim());
            let mut ends = part.splitn(2, '-');
            let n = |s: Option<&str>| s.is_some_and(|s| s.trim().parse::<u16>().is_ok());
            let first = ends.next();
            let second = ends.next();
            n(first) && (second.is_none() || n(second))
        });
    if !ok {
        return Err(invalid(
            element,
            "attribute 'cpuset'",
            v,
            "expected a list of CPU numbers and ranges",
        ));
    }
    Ok(v.to_owned())
}

/// A `<cpu><topology>` must account for exactly the `<vcpu>` maximum.
fn check_topology(cpu: Option<&Cpu>, vcpus: u32) -> Result<()> {
    if let Some(t) = cpu.and_then(|c| c.topology) {
        let total =
            u64::from(t.sockets) * u64::from(t.dies) * u64::from(t.cores) * u64::from(t.threads);
        if total != u64::from(vcpus) {
            return Err(invalid(
                "cpu/topology",
                "product",
                &total.to_string(),
                format!("sockets*dies*cores*threads must equal <vcpu> {vcpus}"),
            ));
        }
    }
    Ok(())
}

/// `<on_poweroff>`, `<on_reboot>`, `<on_crash>`: the action, or `default` when absent.
fn parse_lifecycle(
    root: &Element,
    name: &str,
    default: LifecycleAction,
) -> Result<LifecycleAction> {
    match root.child_text(name) {
        None => Ok(default),
        Some(s) => LifecycleAction::parse(name, &s),
    }
}

/// The top-level elements not typed here, as [`Domain`] holds them.
struct Untyped {
    qemu_commandline: Option<QemuCommandline>,
    namespaces: Vec<(String, String)>,
    other: Vec<Element>,
}

/// The top-level elements not typed here: `<qemu:commandline>` (several add up), the
/// namespace declarations to write back, and the rest kept verbatim.
fn parse_untyped(root: &Element) -> Result<Untyped> {
    const TYPED: &[&str] = &[
        "name",
        "uuid",
        "title",
        "description",
        "metadata",
        "memory",
        "currentMemory",
        "maxMemory",
        "vcpu",
        "cpu",
        "os",
        "features",
        "clock",
        "pm",
        "on_poweroff",
        "on_reboot",
        "on_crash",
        "devices",
    ];
    let namespaces: Vec<(String, String)> = root
        .attrs
        .iter()
        .filter(|(k, _)| k.starts_with("xmlns:"))
        .cloned()
        .collect();
    let mut qemu_commandline: Option<QemuCommandline> = None;
    let mut other = Vec::new();
    for e in root
        .elements()
        .filter(|e| !TYPED.contains(&e.name.as_str()))
    {
        match QemuCommandline::parse(e, &namespaces)? {
            Some(c) => {
                // Several elements add up, as libvirt reads them.
                let all = qemu_commandline.get_or_insert_with(QemuCommandline::default);
                all.args.extend(c.args);
                all.env.extend(c.env);
            }
            None => other.push(e.clone()),
        }
    }
    crate::perf::check(&other).map_err(|why| invalid("perf", "event", "", why))?;
    // The writer declares the namespace whenever there is a commandline; the root's own
    // `xmlns:qemu` (maybe another URI, the commandline declaring the real one on
    // itself) would be a second declaration of the prefix. libvirt drops it too.
    let namespaces = match qemu_commandline {
        Some(_) => namespaces
            .into_iter()
            .filter(|(k, _)| k != "xmlns:qemu")
            .collect(),
        None => namespaces,
    };
    Ok(Untyped {
        qemu_commandline,
        namespaces,
        other,
    })
}

impl Domain {
    /// Parses and validates libvirt domain XML.
    pub fn parse(xml: &str) -> Result<Domain> {
        let root = common::xml::parse_root(xml, "domain")?;
        let virt_type = parse_virt_type(&root)?;
        let name = DomainName::new(
            &root
                .child_text("name")
                .ok_or_else(|| missing("domain", "<name>"))?,
        )?;
        // An empty <uuid/> is no UUID, as libvirt reads it (vagrant-libvirt sends one).
        let uuid = match root.child_text("uuid").filter(|u| !u.trim().is_empty()) {
            Some(u) => Uuid::parse_str(u.trim()).map_err(|e| invalid("uuid", "value", &u, e))?,
            None => Uuid::new_v4(),
        };
        let Memories {
            memory_kib,
            current_memory_kib,
            max_memory,
        } = parse_memories(&root)?;
        let (vcpus, current_vcpus, placement) = match root.first("vcpu") {
            None => (1, None, None),
            Some(v) => parse_vcpu(v)?,
        };
        let vcpu_cpuset = root
            .first("vcpu")
            .and_then(|v| v.get_attr("cpuset"))
            .map(|c| parse_cpuset("vcpu", c))
            .transpose()?;
        let cpu = root.first("cpu").map(parse_cpu).transpose()?;
        check_topology(cpu.as_ref(), vcpus)?;
        let os = parse_os(root.first("os").ok_or_else(|| missing("domain", "<os>"))?)?;
        let on_poweroff = parse_lifecycle(&root, "on_poweroff", LifecycleAction::Destroy)?;
        let on_reboot = parse_lifecycle(&root, "on_reboot", LifecycleAction::Restart)?;
        let on_crash = parse_lifecycle(&root, "on_crash", LifecycleAction::Destroy)?;
        let devices = match root.first("devices") {
            Some(d) => Devices::parse(d)?,
            None => Devices::default(),
        };
        let Untyped {
            qemu_commandline,
            namespaces,
            other,
        } = parse_untyped(&root)?;
        let dom = Domain {
            dump_core: match root.first("memory") {
                Some(m) => yes_no_on_off(m, "dumpCore")?,
                None => None,
            },
            virt_type,
            name,
            uuid,
            title: root.child_text("title"),
            description: root.child_text("description"),
            metadata: root.first("metadata").cloned(),
            memory_kib,
            current_memory_kib,
            max_memory,
            vcpus,
            current_vcpus,
            vcpu_cpuset,
            placement,
            cpu,
            os,
            features: root.first("features").cloned(),
            clock: root.first("clock").cloned(),
            pm: root.first("pm").cloned(),
            on_poweroff,
            on_reboot,
            on_crash,
            devices,
            qemu_commandline,
            namespaces,
            other,
        };
        if let Some(t) = &dom.title {
            if t.contains('\n') {
                return Err(invalid("title", "value", t, "must be a single line"));
            }
        }
        Ok(dom)
    }

    /// True when `<features>` holds `<name/>` (not `state='off'`).
    pub fn has_feature(&self, name: &str) -> bool {
        self.features
            .as_ref()
            .and_then(|f| f.first(name))
            .is_some_and(|e| e.get_attr("state") != Some("off"))
    }

    /// The `<features>` child element, if any.
    pub fn feature(&self, name: &str) -> Option<&Element> {
        self.features.as_ref().and_then(|f| f.first(name))
    }

    pub fn is_q35(&self) -> bool {
        self.os
            .machine
            .as_deref()
            .is_some_and(|m| m == "q35" || m.starts_with("pc-q35"))
    }

    /// Fills what libvirt fills at define time, using the emulator's capabilities:
    /// arch, concrete machine type, emulator path, disk buses, controllers, MAC
    /// addresses and PCI addresses. Idempotent.
    pub fn fill_defaults(&mut self, caps: &Caps) -> Result<()> {
        let arch = self.os.arch.get_or_insert_with(|| caps.arch.clone());
        // qemu-system-x86_64's machines and devices are qemu-system-i386's too (one
        // Debian package, one QEMU build): an i686 guest is defined against them and
        // runs on the i386 emulator beside it, as libvirt's capabilities pair them.
        let i686_on_x86_64 = arch == "i686" && caps.arch == "x86_64";
        if *arch != caps.arch && !i686_on_x86_64 {
            return Err(DomainXmlError::unsupported(
                "os/type arch",
                arch,
                format!("the emulator runs {}", caps.arch),
            ));
        }
        let machine = self
            .os
            .machine
            .clone()
            .or_else(|| caps.default_machine().map(str::to_owned))
            .ok_or_else(|| {
                missing(
                    "os/type",
                    "attribute 'machine' (the emulator has no default)",
                )
            })?;
        let concrete = caps.machine_alias(&machine).unwrap_or(&machine).to_owned();
        if !caps.machines.is_empty() && !caps.machines.iter().any(|m| m.name == concrete) {
            return Err(DomainXmlError::unsupported(
                "os/type machine",
                &machine,
                "the emulator does not offer this machine type",
            ));
        }
        self.os.machine = Some(concrete);
        self.placement.get_or_insert(Placement::Static);
        if self.clock.is_none() {
            self.clock = Some(Element::new("clock").attr("offset", "utc"));
        }
        // `<genid/>`: libvirt makes the VM generation ID at define and keeps it.
        for g in self.other.iter_mut().filter(|e| e.name == "genid") {
            if g.text().trim().is_empty() {
                *g = Element::with_text("genid", Uuid::new_v4().to_string());
            }
        }
        // libvirt's virDomainDefBootOrderPostParse: boot from the disk when neither
        // <os> nor any device says otherwise.
        let device_boot = || {
            self.devices
                .to_element(false)
                .elements()
                .any(|d| d.first("boot").is_some())
        };
        if self.os.os_type == "hvm" && self.os.boot.is_empty() && !device_boot() {
            self.os.boot.push(BootDev::Hd);
        }
        if let Some(m) = self.cpu.as_ref().and_then(|c| c.model.as_deref()) {
            let builtin = matches!(m, "qemu64" | "qemu32");
            if !builtin && !caps.cpu_models.is_empty() && !caps.cpu_models.iter().any(|x| x == m) {
                return Err(DomainXmlError::unsupported(
                    "cpu model",
                    m,
                    "the emulator does not know this CPU model",
                ));
            }
        }
        if self.devices.emulator.is_none() {
            self.devices.emulator = Some(if i686_on_x86_64 {
                caps.emulator.with_file_name("qemu-system-i386")
            } else {
                caps.emulator.clone()
            });
        }
        // After the check above: QEMU's own default model need not be listed. It is
        // the emulator's machine default: an i686 guest run by qemu-system-x86_64 (as
        // libvirt runs one under KVM) gets qemu64, by qemu-system-i386 qemu32.
        let emulator_64 = (self.devices.emulator.as_ref())
            .and_then(|e| e.file_name())
            .is_some_and(|n| n == "qemu-system-x86_64");
        let i686 = i686_on_x86_64 || self.os.arch.as_deref() == Some("i686");
        self.fill_cpu_defaults(i686 && !emulator_64, caps.defaults.cpu_migratable);
        if self.virt_type == VirtType::Kvm && !caps.kvm_usable {
            // Defining is allowed (libvirt checks at start); the runtime reports it then.
            tracing::debug!(domain = %self.name, "kvm domain defined while KVM is unusable");
        }
        if let Some(f) = self.features.as_mut() {
            fill_feature_defaults(f);
        }
        self.fill_top_level_defaults();
        // A loader given by path alone is a ROM image (libvirt writes type='rom').
        if let Some(l) = self.os.loader.as_mut().filter(|l| l.path.is_some()) {
            l.kind.get_or_insert_with(|| "rom".to_owned());
        }
        let q35 = self.is_q35();
        self.devices.fill_defaults(q35, &caps.defaults)?;
        Ok(())
    }

    /// libvirt's CPU defaults (qemuDomainDefSetDefaultCPU, qemuDomainDefCPUPostParse):
    /// a custom CPU without a model gets the machine's default model (QEMU's
    /// `qemu64`, `qemu32` for i686) with `fallback='forbid'` and `check='none'`; a
    /// custom model is matched exactly; `check` is `none` where nothing is compared
    /// with the host (passthrough, maximum, custom under TCG), else `partial`.
    fn fill_cpu_defaults(&mut self, i686: bool, migratable: bool) {
        let cpu = self.cpu.get_or_insert_with(|| Cpu {
            mode: CpuMode::Custom,
            match_: None,
            check: None,
            migratable: None,
            model: None,
            fallback: None,
            topology: None,
            features: Vec::new(),
            other: Vec::new(),
        });
        if cpu.mode == CpuMode::Custom && cpu.model.is_none() {
            cpu.model = Some(if i686 { "qemu32" } else { "qemu64" }.to_owned());
            cpu.fallback = Some("forbid".to_owned());
            cpu.check.get_or_insert_with(|| "none".to_owned());
        }
        if cpu.mode == CpuMode::Custom {
            cpu.match_.get_or_insert_with(|| "exact".to_owned());
            cpu.fallback.get_or_insert_with(|| "allow".to_owned());
        }
        let check = match cpu.mode {
            CpuMode::HostPassthrough | CpuMode::Maximum => "none",
            CpuMode::HostModel => "partial",
            CpuMode::Custom if self.virt_type == VirtType::Qemu => "none",
            CpuMode::Custom => "partial",
        };
        cpu.check.get_or_insert_with(|| check.to_owned());
        // libvirt turns `migratable` on for host-passthrough when QEMU knows it (2.12
        // on), else off on x86.
        if cpu.mode == CpuMode::HostPassthrough {
            let on = if migratable { "on" } else { "off" };
            cpu.migratable.get_or_insert_with(|| on.to_owned());
        }
        // NUMA cells are numbered by their place when the ids are not written.
        for numa in cpu.other.iter_mut().filter(|e| e.name == "numa") {
            let mut i = 0;
            for c in numa.children.iter_mut() {
                if let common::xml::Node::Element(cell) = c {
                    if cell.name == "cell" {
                        if cell.get_attr("id").is_none() {
                            cell.attrs.insert(0, ("id".into(), i.to_string()));
                        }
                        i += 1;
                    }
                }
            }
        }
    }

    /// libvirt's defaults in top-level parts this model keeps as written: vCPU
    /// placement follows a numatune placed by numad when nothing pins CPUs; a
    /// `<seclabel type='none'>` is the 'none' model's; an `enrolled-keys` firmware
    /// implies `secure-boot`; memtune limits are in KiB, unlimited ones left out.
    fn fill_top_level_defaults(&mut self) {
        let find = |name: &str| self.other.iter().find(|e| e.name == name);
        let numad = find("numatune")
            .and_then(|n| n.first("memory"))
            .is_some_and(|m| m.get_attr("placement") == Some("auto"));
        let pinned = find("cputune").is_some_and(|c| {
            c.elements()
                .any(|p| matches!(p.name.as_str(), "vcpupin" | "emulatorpin" | "iothreadpin"))
        });
        if numad && self.vcpu_cpuset.is_none() && !pinned {
            self.placement = Some(Placement::Auto);
        }
        let vcpu_auto = self.placement == Some(Placement::Auto);
        let iothreads: u32 = find("iothreads")
            .and_then(|e| e.text().trim().parse().ok())
            .unwrap_or(0);
        for e in self.other.iter_mut() {
            match e.name.as_str() {
                "numatune" => normalize_numatune(e, vcpu_auto),
                "seclabel"
                    if e.get_attr("type") == Some("none") && e.get_attr("model").is_none() =>
                {
                    e.attrs.push(("model".into(), "none".into()))
                }
                "memtune" => normalize_memtune(e),
                "iothreadids" => iothread_ids(e, iothreads),
                _ => {}
            }
        }
        self.other
            .retain(|e| !(e.name == "memtune" && e.elements().next().is_none()));
        if let Some(fw) = self.os.other.iter_mut().find(|e| e.name == "firmware") {
            let on = |fw: &Element, n: &str| {
                fw.elements().any(|f| {
                    f.name == "feature"
                        && f.get_attr("name") == Some(n)
                        && f.get_attr("enabled") == Some("yes")
                })
            };
            let named = |fw: &Element, n: &str| {
                fw.elements()
                    .any(|f| f.name == "feature" && f.get_attr("name") == Some(n))
            };
            if on(fw, "enrolled-keys") && !named(fw, "secure-boot") {
                fw.push(
                    Element::new("feature")
                        .attr("enabled", "yes")
                        .attr("name", "secure-boot"),
                );
            }
        }
    }

    /// Writes the definition in libvirt's layout.
    pub fn to_xml(&self, opts: XmlOpts) -> String {
        self.to_element(opts).to_xml()
    }

    pub fn to_element(&self, opts: XmlOpts) -> Element {
        let mut root = Element::new("domain").attr("type", self.virt_type.as_str());
        root.attrs.extend(self.namespaces.iter().cloned());
        let qemu_decl = ("xmlns:qemu".to_owned(), QEMU_NS.to_owned());
        if self.qemu_commandline.is_some() && !self.namespaces.contains(&qemu_decl) {
            root.attrs.push(qemu_decl);
        }
        if !opts.inactive {
            if let Some(id) = opts.id {
                root = root.attr("id", id);
            }
        }
        root = root
            .child(Element::with_text("name", self.name.as_str()))
            .child(Element::with_text("uuid", self.uuid.to_string()))
            .child_opt(self.title.as_ref().map(|t| Element::with_text("title", t)))
            .child_opt(
                self.description
                    .as_ref()
                    .map(|t| Element::with_text("description", t)),
            )
            .child_opt(self.metadata.clone());
        if let Some((kib, slots)) = self.max_memory {
            root.push(
                Element::with_text("maxMemory", kib.to_string())
                    .attr("slots", slots)
                    .attr("unit", "KiB"),
            );
        }
        root.push(
            Element::with_text("memory", self.memory_kib.to_string())
                .attr("unit", "KiB")
                .attr_opt(
                    "dumpCore",
                    self.dump_core.map(|d| if d { "on" } else { "off" }),
                ),
        );
        root.push(
            Element::with_text("currentMemory", self.current_memory_kib.to_string())
                .attr("unit", "KiB"),
        );
        root.push(
            Element::with_text("vcpu", self.vcpus.to_string())
                .attr(
                    "placement",
                    match self.placement {
                        Some(Placement::Auto) => "auto",
                        _ => "static",
                    },
                )
                .attr_opt("cpuset", self.vcpu_cpuset.as_deref())
                .attr_opt("current", self.current_vcpus),
        );
        root.push(self.os_element());
        root = root.child_opt(self.features.clone());
        if let Some(cpu) = &self.cpu {
            // libvirt's virCPUDefFormat: a custom CPU without a model (topology
            // only) has no mode, and match= goes with a custom model only.
            let custom = cpu.mode == CpuMode::Custom;
            let mut c = Element::new("cpu")
                .attr_opt(
                    "mode",
                    (!custom || cpu.model.is_some()).then(|| cpu.mode.as_str()),
                )
                .attr_opt(
                    "match",
                    cpu.match_
                        .as_deref()
                        .filter(|_| custom && cpu.model.is_some()),
                )
                .attr_opt("check", cpu.check.as_deref())
                .attr_opt("migratable", cpu.migratable.as_deref());
            if let Some(m) = &cpu.model {
                c.push(
                    Element::with_text("model", m).attr_opt("fallback", cpu.fallback.as_deref()),
                );
            } else if let Some(f) = &cpu.fallback {
                c.push(Element::new("model").attr("fallback", f));
            }
            if let Some(t) = cpu.topology {
                c.push(
                    Element::new("topology")
                        .attr("sockets", t.sockets)
                        .attr("dies", t.dies)
                        .attr("cores", t.cores)
                        .attr("threads", t.threads),
                );
            }
            for (policy, name) in &cpu.features {
                c.push(
                    Element::new("feature")
                        .attr("policy", policy)
                        .attr("name", name),
                );
            }
            c.children
                .extend(cpu.other.iter().cloned().map(common::xml::Node::Element));
            root.push(c);
        }
        root = root
            .child_opt(self.clock.clone())
            .child(Element::with_text("on_poweroff", self.on_poweroff.as_str()))
            .child(Element::with_text("on_reboot", self.on_reboot.as_str()))
            .child(Element::with_text("on_crash", self.on_crash.as_str()))
            .child_opt(self.pm.clone())
            .child(self.devices.to_element(opts.secure));
        for o in &self.other {
            root.push(o.clone());
        }
        if let Some(c) = &self.qemu_commandline {
            root.push(c.to_element());
        }
        root
    }

    fn os_element(&self) -> Element {
        let os = &self.os;
        let mut el = Element::new("os").attr_opt("firmware", os.firmware.as_deref());
        el.push(
            Element::with_text("type", &os.os_type)
                .attr_opt("arch", os.arch.as_deref())
                .attr_opt("machine", os.machine.as_deref()),
        );
        if let Some(l) = &os.loader {
            let mut e = Element::new("loader")
                .attr_opt("readonly", l.readonly.map(yn))
                .attr_opt("secure", l.secure.map(yn))
                .attr_opt("stateless", os.loader_stateless.map(yn))
                .attr_opt("type", l.kind.as_deref());
            if let Some(p) = &l.path {
                e.children
                    .push(common::xml::Node::Text(p.display().to_string()));
            }
            el.push(e);
        }
        match (&os.nvram_source, &os.nvram) {
            (Some(NvramSource::Network(DiskSource::Network { source, .. })), _) => el.push(
                Element::new("nvram")
                    .attr_opt("template", os.nvram_template.as_ref().map(|p| p.display()))
                    .attr("type", "network")
                    .child(source.clone()),
            ),
            (Some(NvramSource::File), Some(p)) => el.push(
                Element::new("nvram")
                    .attr_opt("template", os.nvram_template.as_ref().map(|p| p.display()))
                    .attr("type", "file")
                    .child(Element::new("source").attr("file", p.display())),
            ),
            _ if os.nvram.is_some() || os.nvram_template.is_some() => {
                let mut e = Element::new("nvram")
                    .attr_opt("template", os.nvram_template.as_ref().map(|p| p.display()));
                if let Some(p) = &os.nvram {
                    e.children
                        .push(common::xml::Node::Text(p.display().to_string()));
                }
                el.push(e);
            }
            _ => {}
        }
        let text = |n: &str, v: &Option<PathBuf>| {
            v.as_ref()
                .map(|p| Element::with_text(n, p.display().to_string()))
        };
        el = el
            .child_opt(text("kernel", &os.kernel))
            .child_opt(text("initrd", &os.initrd))
            .child_opt(
                os.cmdline
                    .as_ref()
                    .map(|c| Element::with_text("cmdline", c)),
            )
            .child_opt(text("dtb", &os.dtb));
        for b in &os.boot {
            el.push(Element::new("boot").attr("dev", b.as_str()));
        }
        if let Some(m) = os.bootmenu {
            el.push(
                Element::new("bootmenu")
                    .attr("enable", yn(m))
                    .attr_opt("timeout", os.bootmenu_timeout),
            );
        }
        for o in &os.other {
            el.push(o.clone());
        }
        el
    }
}

#[cfg(test)]
mod tests;

/// What libvirt writes for `<features>` children given bare (virDomainDefFormatFeatures):
/// `state='on'` for the switches it always spells out, `<hyperv mode='custom'>`, and
/// the TSEG size's unit (MiB when none is written).
fn fill_feature_defaults(features: &mut Element) {
    const STATEFUL: &[&str] = &[
        "vmcoreinfo",
        "hap",
        "pmu",
        "pvspinlock",
        "vmport",
        "htm",
        "nested-hv",
        "ccf-assist",
        "smm",
    ];
    for c in features.children.iter_mut() {
        let common::xml::Node::Element(e) = c else {
            continue;
        };
        if STATEFUL.contains(&e.name.as_str()) && e.get_attr("state").is_none() {
            e.attrs.push(("state".into(), "on".into()));
        }
        if e.name == "hyperv" && e.get_attr("mode").is_none() {
            e.attrs.push(("mode".into(), "custom".into()));
        }
        if e.name == "smm" {
            for t in e.children.iter_mut() {
                if let common::xml::Node::Element(t) = t {
                    if t.name == "tseg" && t.get_attr("unit").is_none() {
                        t.attrs.push(("unit".into(), "MiB".into()));
                    }
                }
            }
        }
    }
}

/// `<memtune>` limits as libvirt writes them: in KiB (rounded up), and left out when
/// unlimited (2^53-1 KiB, VIR_DOMAIN_MEMORY_PARAM_UNLIMITED, or more).
fn normalize_memtune(m: &mut Element) {
    const UNLIMITED_KIB: u64 = 9_007_199_254_740_991;
    m.children.retain_mut(|c| {
        let common::xml::Node::Element(e) = c else {
            return true;
        };
        let Ok(n) = e.text().trim().parse::<u64>() else {
            return true;
        };
        let unit = e.get_attr("unit").unwrap_or("KiB");
        let bytes_per: u64 = match unit {
            "b" | "bytes" => 1,
            "k" | "KiB" => 1 << 10,
            "KB" => 1000,
            "M" | "MiB" => 1 << 20,
            "MB" => 1_000_000,
            "G" | "GiB" => 1 << 30,
            "GB" => 1_000_000_000,
            "T" | "TiB" => 1 << 40,
            "TB" => 1_000_000_000_000,
            _ => return true,
        };
        let kib = (u128::from(n) * u128::from(bytes_per)).div_ceil(1024);
        if kib >= u128::from(UNLIMITED_KIB) {
            return false;
        }
        *e = Element::with_text(e.name.clone(), kib.to_string()).attr("unit", "KiB");
        true
    });
}

/// An `on`/`off` attribute.
fn yes_no_on_off(el: &Element, key: &str) -> Result<Option<bool>> {
    match el.get_attr(key) {
        None => Ok(None),
        Some("on") => Ok(Some(true)),
        Some("off") => Ok(Some(false)),
        Some(v) => Err(invalid(
            &el.name,
            &format!("attribute '{key}'"),
            v,
            "expected on or off",
        )),
    }
}

/// `<numatune>` as libvirt writes it (virDomainNumatuneFormatXML): the memory's mode
/// (strict by default) with either its nodeset, written canonically, or
/// `placement='auto'` (also when a nodeless memory follows an automatic vCPU
/// placement); memnode nodesets canonical too.
fn normalize_numatune(n: &mut Element, vcpu_auto: bool) {
    for c in n.children.iter_mut() {
        let common::xml::Node::Element(e) = c else {
            continue;
        };
        if let Some(set) = e.get_attr("nodeset").and_then(canonical_cpuset) {
            e.attrs.retain(|(k, _)| k != "nodeset");
            e.attrs.push(("nodeset".into(), set));
        }
        if e.name != "memory" {
            continue;
        }
        if e.get_attr("mode").is_none() {
            e.attrs.push(("mode".into(), "strict".into()));
        }
        if e.get_attr("nodeset").is_some() {
            e.attrs
                .retain(|(k, v)| !(k == "placement" && v == "static"));
        } else if e.get_attr("placement").is_none() && vcpu_auto {
            e.attrs.push(("placement".into(), "auto".into()));
        }
    }
}

/// A CPU or node list (`0-3,^2,7`) written as libvirt's virBitmapFormat does
/// (`0-1,3,7`); None when it does not parse.
pub(crate) fn canonical_cpuset(s: &str) -> Option<String> {
    let mut set = std::collections::BTreeSet::new();
    let mut minus = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (neg, part) = match part.strip_prefix('^') {
            Some(p) => (true, p),
            None => (false, part),
        };
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.trim().parse::<u32>().ok()?, b.trim().parse::<u32>().ok()?),
            None => {
                let n = part.parse::<u32>().ok()?;
                (n, n)
            }
        };
        if a > b || b > 65535 {
            return None;
        }
        if neg {
            minus.extend(a..=b);
        } else {
            set.extend(a..=b);
        }
    }
    for m in minus {
        set.remove(&m);
    }
    let v: Vec<u32> = set.into_iter().collect();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        out.push(if j > i {
            format!("{}-{}", v[i], v[j])
        } else {
            v[i].to_string()
        });
        i = j + 1;
    }
    Some(out.join(","))
}

/// Bytes per unit of libvirt's size units (`b`, `KiB`, `M`, `GB`, ...).
pub(crate) fn parse_memory_bytes(unit: &str) -> std::result::Result<u64, ()> {
    Ok(match unit {
        "b" | "bytes" => 1,
        "k" | "KiB" | "kiB" => 1 << 10,
        "KB" => 1000,
        "M" | "MiB" => 1 << 20,
        "MB" => 1_000_000,
        "G" | "GiB" => 1 << 30,
        "GB" => 1_000_000_000,
        "T" | "TiB" => 1 << 40,
        "TB" => 1_000_000_000_000,
        _ => return Err(()),
    })
}

/// `<iothreadids>` listing fewer threads than `<iothreads>` says: libvirt adds the
/// rest with the lowest free ids.
fn iothread_ids(e: &mut Element, count: u32) {
    let used: std::collections::BTreeSet<u32> = e
        .elements()
        .filter(|t| t.name == "iothread")
        .filter_map(|t| t.get_attr("id").and_then(|i| i.parse().ok()))
        .collect();
    let missing = (count as usize).saturating_sub(used.len());
    let ids: Vec<u32> = (1..).filter(|i| !used.contains(i)).take(missing).collect();
    for id in ids {
        e.push(Element::new("iothread").attr("id", id));
    }
}
