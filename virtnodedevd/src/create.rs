//! `NodeDeviceCreateXML` requests: the two kinds of transient device the kernel creates
//! on request (NPIV vports on an fc_host, mediated devices on a parent offering mdev
//! types), parsed from libvirt's nodedev XML into checked values, and the sysfs writes.

use std::fmt;
use std::io::Write;
use std::path::Path;

use common::error::{ErrorCode, VirError};
use common::xml::{self, Element, XmlError};

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error(transparent)]
    Xml(#[from] XmlError),
    #[error("{0}")]
    Unsupported(String),
    #[error("cannot write '{value}' to '{path}': {err}")]
    Write {
        path: String,
        value: String,
        err: std::io::Error,
    },
}

impl From<CreateError> for VirError {
    fn from(e: CreateError) -> Self {
        match e {
            CreateError::Xml(x) => VirError::from(x),
            CreateError::Unsupported(_) => VirError::new(ErrorCode::ConfigUnsupported, e),
            CreateError::Write { .. } => VirError::new(ErrorCode::SystemError, e),
        }
    }
}

/// A world wide name: 16 hex digits, kept lowercase without `0x`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wwn(String);

impl Wwn {
    pub fn parse(element: &str, s: &str) -> Result<Wwn, XmlError> {
        let t = s.trim();
        let t = t
            .strip_prefix("0x")
            .or_else(|| t.strip_prefix("0X"))
            .unwrap_or(t);
        if t.len() != 16 || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(XmlError::invalid(
                element,
                "WWN",
                s,
                "expected 16 hexadecimal digits",
            ));
        }
        Ok(Wwn(t.to_ascii_lowercase()))
    }

    /// A random WWN as libvirt makes them: NAA 5, the OUI libvirt uses for QEMU
    /// (00:1a:4a), 36 random bits.
    pub fn random() -> Wwn {
        let r = u64::from_ne_bytes(random_bytes::<8>()) & 0xf_ffff_ffff;
        Wwn(format!("5001a4a{r:09x}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Wwn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A UUID in its canonical 8-4-4-4-12 form, lowercase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uuid(String);

impl Uuid {
    pub fn parse(s: &str) -> Result<Uuid, XmlError> {
        let t = s.trim().to_ascii_lowercase();
        let ok = t.len() == 36
            && t.bytes().enumerate().all(|(i, b)| match i {
                8 | 13 | 18 | 23 => b == b'-',
                _ => b.is_ascii_hexdigit(),
            });
        if !ok {
            return Err(XmlError::invalid(
                "uuid",
                "UUID",
                s,
                "expected xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx",
            ));
        }
        Ok(Uuid(t))
    }

    /// A random (version 4) UUID.
    pub fn random() -> Uuid {
        let mut b = random_bytes::<16>();
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
        Uuid(format!(
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An mdev type id as the kernel names its `mdev_supported_types` entries; it becomes
/// a path component, so nothing that could leave that folder is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MdevTypeId(String);

impl MdevTypeId {
    pub fn parse(s: &str) -> Result<MdevTypeId, XmlError> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && !s.starts_with('.')
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !ok {
            return Err(XmlError::invalid(
                "type",
                "attribute 'id'",
                s,
                "expected letters, digits, '-', '_' or '.'",
            ));
        }
        Ok(MdevTypeId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How the request names the vport's parent HBA (libvirt's `<parent>` forms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VportParent {
    /// Any vport-capable fc_host.
    Any,
    Name(String),
    Wwn {
        wwnn: Wwn,
        wwpn: Wwn,
    },
    Fabric(Wwn),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Vport {
        parent: VportParent,
        wwnn: Wwn,
        wwpn: Wwn,
    },
    Mdev {
        parent: String,
        type_id: MdevTypeId,
        uuid: Uuid,
    },
}

fn capability<'a>(e: &'a Element, kind: &str) -> Option<&'a Element> {
    e.children_named("capability")
        .find(|c| c.get_attr("type") == Some(kind))
}

/// Parses a `NodeDeviceCreateXML` document. Missing WWNs and UUIDs are generated, as
/// libvirt does.
pub fn parse(text: &str) -> Result<Request, CreateError> {
    let root = xml::parse_root(text, "device")?;
    let parent_el = root.first("parent");
    let parent_name = parent_el
        .map(|p| p.text().trim().to_string())
        .filter(|s| !s.is_empty());
    let caps: Vec<&Element> = root.children_named("capability").collect();
    let [cap] = caps.as_slice() else {
        return Err(CreateError::Unsupported(format!(
            "a device to create needs exactly one <capability>, found {}",
            caps.len()
        )));
    };
    match cap.req_attr("type")? {
        "scsi_host" => {
            let fc = capability(cap, "fc_host").ok_or_else(|| {
                CreateError::Unsupported(
                    "only NPIV vports (scsi_host with an fc_host capability) can be created".into(),
                )
            })?;
            let wwn = |name: &str| -> Result<Option<Wwn>, XmlError> {
                fc.child_text(name)
                    .map(|t| Wwn::parse(name, &t))
                    .transpose()
            };
            let (wwnn, wwpn) = match (wwn("wwnn")?, wwn("wwpn")?) {
                (Some(n), Some(p)) => (n, p),
                (None, None) => (Wwn::random(), Wwn::random()),
                _ => return Err(XmlError::missing("capability", "both <wwnn> and <wwpn>").into()),
            };
            let attr = |k: &str| -> Result<Option<Wwn>, XmlError> {
                parent_el
                    .and_then(|p| p.get_attr(k))
                    .map(|v| Wwn::parse("parent", v))
                    .transpose()
            };
            let parent = match (
                parent_name,
                attr("wwnn")?,
                attr("wwpn")?,
                attr("fabric_wwn")?,
            ) {
                (Some(n), None, None, None) => VportParent::Name(n),
                (None, Some(wwnn), Some(wwpn), None) => VportParent::Wwn { wwnn, wwpn },
                (None, None, None, Some(f)) => VportParent::Fabric(f),
                (None, None, None, None) => VportParent::Any,
                _ => {
                    return Err(XmlError::invalid(
                        "parent",
                        "parent",
                        "",
                        "give either a name, both wwnn and wwpn, or fabric_wwn",
                    )
                    .into())
                }
            };
            Ok(Request::Vport { parent, wwnn, wwpn })
        }
        "mdev" => {
            let parent =
                parent_name.ok_or_else(|| XmlError::missing("device", "<parent> of the mdev"))?;
            let type_id = cap
                .first("type")
                .ok_or_else(|| XmlError::missing("capability", "<type>"))?
                .req_attr("id")?;
            let type_id = MdevTypeId::parse(type_id)?;
            if cap.first("attr").is_some() {
                return Err(CreateError::Unsupported(
                    "mdev <attr> values cannot be set through the kernel's create file".into(),
                ));
            }
            let uuid = match cap.child_text("uuid") {
                Some(u) => Uuid::parse(&u)?,
                None => Uuid::random(),
            };
            Ok(Request::Mdev {
                parent,
                type_id,
                uuid,
            })
        }
        other => Err(CreateError::Unsupported(format!(
            "devices of type '{other}' cannot be created (only NPIV vports and mdevs)"
        ))),
    }
}

/// Writes `value` to a kernel trigger file (vport_create, vport_delete, create).
pub fn write_trigger(path: &Path, value: &str) -> Result<(), CreateError> {
    let err = |err| CreateError::Write {
        path: path.display().to_string(),
        value: value.to_string(),
        err,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(err)?;
    f.write_all(value.as_bytes()).map_err(err)
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    // getrandom(2) on a buffer this small does not fail short once the pool is ready;
    // should it fail, the time and PID still make a WWN/UUID unlikely to collide.
    // SAFETY: b is live and its length is passed.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), N, 0) };
    if n != N as isize {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
            ^ u128::from(std::process::id());
        for (i, x) in b.iter_mut().enumerate() {
            *x = (t >> ((i % 16) * 8)) as u8;
        }
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_vport_requests() {
        let r = parse(
            "<device><parent>scsi_host5</parent><capability type='scsi_host'>\
             <capability type='fc_host'><wwnn>0x20000000C9848141</wwnn>\
             <wwpn>10000000c9848141</wwpn></capability></capability></device>",
        )
        .ok();
        assert_eq!(
            r,
            Some(Request::Vport {
                parent: VportParent::Name("scsi_host5".into()),
                wwnn: Wwn("20000000c9848141".into()),
                wwpn: Wwn("10000000c9848141".into()),
            })
        );
        let r = parse(
            "<device><parent fabric_wwn='2002000573de9a81'/><capability type='scsi_host'>\
             <capability type='fc_host'/></capability></device>",
        );
        match r {
            Ok(Request::Vport {
                parent: VportParent::Fabric(f),
                wwnn,
                wwpn,
            }) => {
                assert_eq!(f.as_str(), "2002000573de9a81");
                assert!(wwnn.as_str().starts_with("5001a4a") && wwnn.as_str().len() == 16);
                assert_ne!(wwnn, wwpn);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_mdev_requests() {
        let r = parse(
            "<device><parent>pci_0000_00_02_0</parent><capability type='mdev'>\
             <type id='i915-GVTg_V5_4'/><uuid>0B3C8F5A-6B3D-4E0A-9C1D-2E3F4A5B6C7D</uuid>\
             </capability></device>",
        )
        .ok();
        assert_eq!(
            r,
            Some(Request::Mdev {
                parent: "pci_0000_00_02_0".into(),
                type_id: MdevTypeId("i915-GVTg_V5_4".into()),
                uuid: Uuid("0b3c8f5a-6b3d-4e0a-9c1d-2e3f4a5b6c7d".into()),
            })
        );
        let generated = Uuid::random();
        assert!(Uuid::parse(generated.as_str()).is_ok(), "{generated:?}");
    }

    #[test]
    fn refuses_bad_requests() {
        let msg = |x: &str| match parse(x) {
            Ok(r) => format!("accepted {r:?}"),
            Err(e) => VirError::from(e).message,
        };
        assert_eq!(
            msg("<device><parent>p</parent><capability type='mdev'><type id='../../x'/></capability></device>"),
            "XML error: invalid value '../../x' for attribute 'id' in <type>: expected letters, digits, '-', '_' or '.'"
        );
        assert_eq!(
            msg("<device><capability type='scsi_host'><capability type='fc_host'><wwnn>12</wwnn><wwpn>10000000c9848141</wwpn></capability></capability></device>"),
            "XML error: invalid value '12' for WWN in <wwnn>: expected 16 hexadecimal digits"
        );
        assert_eq!(
            msg("<device><capability type='pci'/></device>"),
            "unsupported configuration: devices of type 'pci' cannot be created (only NPIV vports and mdevs)"
        );
        assert_eq!(
            msg("<device><capability type='mdev'><type id='t'/></capability></device>"),
            "XML error: missing <parent> of the mdev in <device>"
        );
        assert!(msg("<domain/>").contains("expected root element <device>"));
    }
}
