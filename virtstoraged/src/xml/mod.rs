//! The typed storage documents: pool and volume XML in libvirt's format.
//!
//! Parsing checks every value once (names, sizes, formats); the rest of the daemon trusts
//! the types. Unknown children of `<source>` are kept as elements so they round-trip.

use std::fmt;
use std::path::PathBuf;

use common::xml::{parse_root, Element, XmlError};
use uuid::Uuid;

/// The longest pool or volume name accepted (a file name component).
pub const MAX_NAME: usize = 255;

/// A pool or volume name: one path component that cannot leave its directory.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(String);

impl Name {
    pub fn new(element: &str, value: &str) -> Result<Name, XmlError> {
        let bad = |reason: &str| XmlError::invalid(element, "name", value, reason);
        if value.is_empty() {
            return Err(bad("a name cannot be empty"));
        }
        if value.len() > MAX_NAME {
            return Err(bad(&format!("longer than {MAX_NAME} bytes")));
        }
        if value.contains('/') {
            return Err(bad("a name cannot contain '/'"));
        }
        if value.starts_with('.') {
            return Err(bad("a name cannot start with '.'"));
        }
        if value.chars().any(|c| c.is_control()) {
            return Err(bad("a name cannot contain control characters"));
        }
        Ok(Name(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Reads a size element (`<capacity unit='G'>10</capacity>`) in bytes.
pub fn parse_size(el: &Element) -> Result<u64, XmlError> {
    let text = el.text();
    let value = text.trim();
    let n: u64 = value
        .parse()
        .map_err(|_| XmlError::invalid(&el.name, "size", value, "not a number"))?;
    let unit = el.get_attr("unit").unwrap_or("bytes");
    let mult: u64 = match unit {
        "b" | "B" | "bytes" => 1,
        "KB" => 1000,
        "k" | "K" | "KiB" => 1 << 10,
        "MB" => 1_000_000,
        "m" | "M" | "MiB" => 1 << 20,
        "GB" => 1_000_000_000,
        "g" | "G" | "GiB" => 1 << 30,
        "TB" => 1_000_000_000_000,
        "t" | "T" | "TiB" => 1 << 40,
        "PB" => 1_000_000_000_000_000,
        "p" | "P" | "PiB" => 1 << 50,
        _ => return Err(XmlError::invalid(&el.name, "unit", unit, "unknown unit")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| XmlError::invalid(&el.name, "size", value, "too large"))
}

fn size_el(name: &str, bytes: u64) -> Element {
    Element::with_text(name, bytes.to_string()).attr("unit", "bytes")
}

/// `<permissions>`: mode (octal), owner, group.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    pub mode: Option<u32>,
    pub owner: Option<u32>,
    pub group: Option<u32>,
}

impl Permissions {
    fn parse(el: &Element) -> Result<Permissions, XmlError> {
        let mode = match el.child_text("mode") {
            Some(m) => {
                let m = m.trim().to_owned();
                let v = u32::from_str_radix(&m, 8)
                    .ok()
                    .filter(|v| *v <= 0o7777)
                    .ok_or_else(|| XmlError::invalid("mode", "value", &m, "not an octal mode"))?;
                Some(v)
            }
            None => None,
        };
        let id = |n: &str| -> Result<Option<u32>, XmlError> {
            match el.child_text(n) {
                Some(t) => {
                    let t = t.trim().to_owned();
                    // libvirt writes -1 for "unchanged".
                    if t == "-1" {
                        return Ok(None);
                    }
                    t.parse()
                        .map(Some)
                        .map_err(|_| XmlError::invalid(n, "value", &t, "not a numeric id"))
                }
                None => Ok(None),
            }
        };
        Ok(Permissions {
            mode,
            owner: id("owner")?,
            group: id("group")?,
        })
    }

    fn to_element(&self) -> Option<Element> {
        if self.mode.is_none() && self.owner.is_none() && self.group.is_none() {
            return None;
        }
        Some(
            Element::new("permissions")
                .child_opt(
                    self.mode
                        .map(|m| Element::with_text("mode", format!("{m:04o}"))),
                )
                .child_opt(
                    self.owner
                        .map(|o| Element::with_text("owner", o.to_string())),
                )
                .child_opt(
                    self.group
                        .map(|g| Element::with_text("group", g.to_string())),
                ),
        )
    }
}

/// The pool types this daemon knows about (each has a backend).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolType {
    Dir,
    Fs,
    Logical,
}

impl PoolType {
    pub fn from_name(name: &str) -> Option<PoolType> {
        match name {
            "dir" => Some(PoolType::Dir),
            "fs" => Some(PoolType::Fs),
            "logical" => Some(PoolType::Logical),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PoolType::Dir => "dir",
            PoolType::Fs => "fs",
            PoolType::Logical => "logical",
        }
    }
}

/// A pool definition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolDef {
    pub kind: PoolType,
    pub name: Name,
    pub uuid: Uuid,
    pub capacity: u64,
    pub allocation: u64,
    pub available: u64,
    /// `<source>` as written (device, dir, format, name...): backends read what they need.
    pub source: Option<Element>,
    pub target: PathBuf,
    pub permissions: Permissions,
}

impl PoolDef {
    pub fn parse(text: &str) -> Result<PoolDef, XmlError> {
        let root = parse_root(text, "pool")?;
        let kind_s = root.req_attr("type")?;
        let kind = match PoolType::from_name(kind_s) {
            Some(k) => k,
            None => {
                return Err(XmlError::invalid(
                    "pool",
                    "type",
                    kind_s,
                    "unsupported pool type",
                ))
            }
        };
        let name_s = root
            .child_text("name")
            .ok_or_else(|| XmlError::missing("pool", "<name>"))?;
        let name = Name::new("name", name_s.trim())?;
        let uuid = match root.child_text("uuid") {
            Some(u) => Uuid::parse_str(u.trim())
                .map_err(|e| XmlError::invalid("uuid", "value", u.trim(), e))?,
            None => Uuid::new_v4(),
        };
        let size = |n: &str| -> Result<u64, XmlError> {
            root.first(n)
                .map(parse_size)
                .transpose()
                .map(|v| v.unwrap_or(0))
        };
        let target_el = root
            .first("target")
            .ok_or_else(|| XmlError::missing("pool", "<target>"))?;
        let path = target_el
            .child_text("path")
            .ok_or_else(|| XmlError::missing("target", "<path>"))?;
        let path = path.trim();
        if !path.starts_with('/') || path.split('/').any(|c| c == "..") {
            return Err(XmlError::invalid(
                "path",
                "value",
                path,
                "target path must be absolute without '..'",
            ));
        }
        let permissions = target_el
            .first("permissions")
            .map(Permissions::parse)
            .transpose()?
            .unwrap_or_default();
        let source = root.first("source").cloned();
        if kind != PoolType::Dir {
            let has_device = source
                .as_ref()
                .and_then(|s| s.first("device"))
                .and_then(|d| d.get_attr("path"))
                .is_some();
            let has_name = source.as_ref().and_then(|s| s.child_text("name")).is_some();
            if kind == PoolType::Fs && !has_device {
                return Err(XmlError::missing("source", "<device path=...>"));
            }
            if kind == PoolType::Logical && !has_device && !has_name {
                return Err(XmlError::missing("source", "<name> or <device>"));
            }
        }
        Ok(PoolDef {
            kind,
            name,
            uuid,
            capacity: size("capacity")?,
            allocation: size("allocation")?,
            available: size("available")?,
            source,
            target: PathBuf::from(path),
            permissions,
        })
    }

    pub fn to_element(&self) -> Element {
        Element::new("pool")
            .attr("type", self.kind.as_str())
            .child(Element::with_text("name", self.name.as_str()))
            .child(Element::with_text("uuid", self.uuid.to_string()))
            .child(size_el("capacity", self.capacity))
            .child(size_el("allocation", self.allocation))
            .child(size_el("available", self.available))
            .child_opt(self.source.clone())
            .child(
                Element::new("target")
                    .child(Element::with_text(
                        "path",
                        self.target.to_string_lossy().into_owned(),
                    ))
                    .child_opt(self.permissions.to_element()),
            )
    }

    pub fn to_xml(&self) -> String {
        self.to_element().to_xml()
    }

    /// The source device path (`<source><device path=.../>`), if any.
    pub fn source_device(&self) -> Option<String> {
        self.source
            .as_ref()?
            .first("device")?
            .get_attr("path")
            .map(str::to_owned)
    }
}

/// Volume image formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolFormat {
    Raw,
    Qcow2,
}

impl VolFormat {
    pub fn parse(element: &str, s: &str) -> Result<VolFormat, XmlError> {
        match s {
            "raw" => Ok(VolFormat::Raw),
            "qcow2" => Ok(VolFormat::Qcow2),
            other => Err(XmlError::invalid(
                element,
                "format type",
                other,
                "supported formats are raw and qcow2",
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            VolFormat::Raw => "raw",
            VolFormat::Qcow2 => "qcow2",
        }
    }
}

/// `<backingStore>`: the image a qcow2 volume reads through to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackingStore {
    pub path: String,
    pub format: VolFormat,
}

/// A volume definition (as requested, or as read back from the pool).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolDef {
    pub name: Name,
    pub key: String,
    pub capacity: u64,
    /// Requested allocation: equal to capacity means "preallocate fully".
    pub allocation: Option<u64>,
    pub path: String,
    pub format: VolFormat,
    pub permissions: Permissions,
    pub compat: Option<String>,
    pub backing: Option<BackingStore>,
    /// `<target><encryption format='luks'>`: a LUKS volume, raw (QEMU's luks format)
    /// or qcow2 (LUKS inside).
    pub encryption: Option<VolEncryption>,
    /// While a LUKS volume is created: the daemon's file holding its passphrase for
    /// qemu-img (never the passphrase itself, never in XML).
    pub key_file: Option<std::path::PathBuf>,
}

/// A volume's encryption: always LUKS here, with the secret that holds its passphrase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolEncryption {
    /// The secret's UUID (`<secret type='passphrase' uuid=...>`), if known.
    pub secret: Option<String>,
}

impl VolEncryption {
    fn parse(el: &Element) -> Result<VolEncryption, XmlError> {
        match el.get_attr("format") {
            Some("luks") => {}
            Some(f) => {
                return Err(XmlError::invalid(
                    "encryption",
                    "format",
                    f,
                    "only luks volumes can be created",
                ))
            }
            None => return Err(XmlError::missing("encryption", "format")),
        }
        let secret = el
            .children_named("secret")
            .find(|s| s.get_attr("type") == Some("passphrase"))
            .map(|s| s.req_attr("uuid").map(str::to_owned))
            .transpose()?;
        if let Some(u) = &secret {
            uuid::Uuid::parse_str(u)
                .map_err(|_| XmlError::invalid("secret", "uuid", u, "not a UUID"))?;
        }
        Ok(VolEncryption { secret })
    }

    fn to_element(&self) -> Element {
        Element::new("encryption")
            .attr("format", "luks")
            .child_opt(self.secret.as_ref().map(|u| {
                Element::new("secret")
                    .attr("type", "passphrase")
                    .attr("uuid", u)
            }))
    }
}

impl VolDef {
    pub fn parse(text: &str) -> Result<VolDef, XmlError> {
        let root = parse_root(text, "volume")?;
        if let Some(t) = root.get_attr("type") {
            if t != "file" && t != "block" {
                return Err(XmlError::invalid(
                    "volume",
                    "type",
                    t,
                    "supported types are file and block",
                ));
            }
        }
        let name_s = root
            .child_text("name")
            .ok_or_else(|| XmlError::missing("volume", "<name>"))?;
        let name = Name::new("name", name_s.trim())?;
        let capacity = root
            .first("capacity")
            .map(parse_size)
            .transpose()?
            .ok_or_else(|| XmlError::missing("volume", "<capacity>"))?;
        let allocation = root.first("allocation").map(parse_size).transpose()?;
        let target = root.first("target");
        let format = match target.and_then(|t| t.first("format")) {
            Some(f) => VolFormat::parse("format", f.req_attr("type")?)?,
            None => VolFormat::Raw,
        };
        let permissions = target
            .and_then(|t| t.first("permissions"))
            .map(Permissions::parse)
            .transpose()?
            .unwrap_or_default();
        let encryption = target
            .and_then(|t| t.first("encryption"))
            .map(VolEncryption::parse)
            .transpose()?;
        let compat = target.and_then(|t| t.child_text("compat"));
        if let Some(c) = &compat {
            if c != "0.10" && c != "1.1" {
                return Err(XmlError::invalid(
                    "compat",
                    "value",
                    c,
                    "supported values are 0.10 and 1.1",
                ));
            }
        }
        let backing = match root.first("backingStore") {
            Some(b) => {
                let path = b
                    .child_text("path")
                    .ok_or_else(|| XmlError::missing("backingStore", "<path>"))?;
                let format = match b.first("format") {
                    Some(f) => VolFormat::parse("format", f.req_attr("type")?)?,
                    None => VolFormat::Raw,
                };
                Some(BackingStore {
                    path: path.trim().to_owned(),
                    format,
                })
            }
            None => None,
        };
        if backing.is_some() && format != VolFormat::Qcow2 {
            return Err(XmlError::invalid(
                "format",
                "type",
                format.as_str(),
                "a backing store needs format qcow2",
            ));
        }
        Ok(VolDef {
            name,
            key: String::new(),
            capacity,
            allocation,
            path: String::new(),
            format,
            permissions,
            compat,
            backing,
            encryption,
            key_file: None,
        })
    }

    pub fn to_xml(&self) -> String {
        let mut target = Element::new("target")
            .child(Element::with_text("path", self.path.clone()))
            .child(Element::new("format").attr("type", self.format.as_str()))
            .child_opt(self.permissions.to_element());
        if let Some(c) = &self.compat {
            target.push(Element::with_text("compat", c.clone()));
        }
        if let Some(e) = &self.encryption {
            target.push(e.to_element());
        }
        Element::new("volume")
            .attr("type", "file")
            .child(Element::with_text("name", self.name.as_str()))
            .child(Element::with_text("key", self.key.clone()))
            .child(size_el("capacity", self.capacity))
            .child(size_el("allocation", self.allocation.unwrap_or(0)))
            .child(target)
            .child_opt(self.backing.as_ref().map(|b| {
                Element::new("backingStore")
                    .child(Element::with_text("path", b.path.clone()))
                    .child(Element::new("format").attr("type", b.format.as_str()))
            }))
            .to_xml()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POOL: &str = "<pool type='dir'><name>images</name>\
        <uuid>0b7e4ce8-2a4c-4bd5-9c1a-2f3b1a4c5d6e</uuid>\
        <target><path>/var/lib/images</path><permissions><mode>0711</mode>\
        <owner>0</owner><group>0</group></permissions></target></pool>";

    #[test]
    fn pool_round_trips() {
        let p = PoolDef::parse(POOL).unwrap();
        assert_eq!(p.name.as_str(), "images");
        assert_eq!(p.permissions.mode, Some(0o711));
        let again = PoolDef::parse(&p.to_xml()).unwrap();
        assert_eq!(p, again);
        assert!(p.to_xml().contains("<mode>0711</mode>"));
    }

    #[test]
    fn fs_pool_keeps_source() {
        let x = "<pool type='fs'><name>f</name><source><device path='/dev/loop9'/>\
            <format type='ext4'/></source><target><path>/mnt/f</path></target></pool>";
        let p = PoolDef::parse(x).unwrap();
        assert_eq!(p.source_device().as_deref(), Some("/dev/loop9"));
        assert_eq!(PoolDef::parse(&p.to_xml()).unwrap(), p);
        let bad = "<pool type='fs'><name>f</name><target><path>/mnt/f</path></target></pool>";
        assert!(PoolDef::parse(bad).is_err());
    }

    #[test]
    fn names_cannot_escape() {
        for bad in ["../x", "a/b", ".hidden", "..", "", &"x".repeat(256)] {
            let err = Name::new("name", bad).unwrap_err().to_string();
            assert!(err.contains("name"), "{err}");
        }
        assert!(Name::new("name", "disk-1.qcow2").is_ok());
        let v = "<volume><name>../../etc/passwd</name><capacity>1</capacity></volume>";
        let err = VolDef::parse(v).unwrap_err().to_string();
        assert!(err.contains("../../etc/passwd"), "{err}");
    }

    #[test]
    fn sizes_with_units() {
        let v = VolDef::parse(
            "<volume><name>a</name><capacity unit='G'>2</capacity>\
             <allocation unit='KiB'>4</allocation></volume>",
        )
        .unwrap();
        assert_eq!(v.capacity, 2 << 30);
        assert_eq!(v.allocation, Some(4096));
        assert!(
            VolDef::parse("<volume><name>a</name><capacity unit='X'>2</capacity></volume>")
                .is_err()
        );
        assert!(VolDef::parse(
            "<volume><name>a</name><capacity unit='P'>99999999</capacity></volume>"
        )
        .is_err());
    }

    #[test]
    fn volume_round_trips_with_backing() {
        let x = "<volume><name>b.qcow2</name><capacity>1048576</capacity>\
            <target><format type='qcow2'/><compat>1.1</compat></target>\
            <backingStore><path>/p/base.qcow2</path><format type='qcow2'/></backingStore></volume>";
        let mut v = VolDef::parse(x).unwrap();
        v.path = "/p/b.qcow2".into();
        v.key = v.path.clone();
        v.allocation = Some(0);
        let again = VolDef::parse(&v.to_xml()).unwrap();
        assert_eq!(again.backing, v.backing);
        assert_eq!(again.compat.as_deref(), Some("1.1"));
        let raw_backing = "<volume><name>b</name><capacity>1</capacity>\
            <backingStore><path>/p/base</path></backingStore></volume>";
        assert!(VolDef::parse(raw_backing).is_err());
    }

    #[test]
    fn bad_pool_documents() {
        assert!(PoolDef::parse("<pool type='dir'><name>x</name></pool>").is_err());
        assert!(PoolDef::parse("<pool type='nfs'><name>x</name></pool>").is_err());
        assert!(PoolDef::parse(
            "<pool type='dir'><name>x</name><target><path>rel</path></target></pool>"
        )
        .is_err());
        assert!(PoolDef::parse("<pool").is_err());
    }
}
