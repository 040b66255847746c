//! libvirt's `<secret>` (formatsecret): a value (a passphrase, a key) that disks and
//! storage use without clients passing it around, named by UUID and by what it is for
//! (its usage). libvirt keeps them in a daemon of their own (virtsecretd); here
//! virtstoraged serves them, storage being what uses them (docs/virtstoraged.md).

use common::error::{ErrorCode, VirError};
use common::xml::Element;
use uuid::Uuid;

/// What a secret is for, and the identifier that names it within that use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Usage {
    None,
    /// A LUKS volume, by its path.
    Volume(String),
    /// A Ceph client, by a name of the user's choosing.
    Ceph(String),
    /// An iSCSI target, by a name of the user's choosing.
    Iscsi(String),
    Tls(String),
    Vtpm(String),
}

impl Usage {
    /// `virSecretUsageType`.
    pub fn wire(&self) -> i32 {
        match self {
            Usage::None => 0,
            Usage::Volume(_) => 1,
            Usage::Ceph(_) => 2,
            Usage::Iscsi(_) => 3,
            Usage::Tls(_) => 4,
            Usage::Vtpm(_) => 5,
        }
    }

    /// The usage ID (`UsageID`): "" for none.
    pub fn id(&self) -> &str {
        match self {
            Usage::None => "",
            Usage::Volume(s)
            | Usage::Ceph(s)
            | Usage::Iscsi(s)
            | Usage::Tls(s)
            | Usage::Vtpm(s) => s,
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            Usage::None => "none",
            Usage::Volume(_) => "volume",
            Usage::Ceph(_) => "ceph",
            Usage::Iscsi(_) => "iscsi",
            Usage::Tls(_) => "tls",
            Usage::Vtpm(_) => "vtpm",
        }
    }

    /// The element that holds the ID, per type.
    fn id_element(&self) -> Option<&'static str> {
        match self {
            Usage::None => None,
            Usage::Volume(_) => Some("volume"),
            Usage::Iscsi(_) => Some("target"),
            Usage::Ceph(_) | Usage::Tls(_) | Usage::Vtpm(_) => Some("name"),
        }
    }

    /// The usage of type `wire` with ID `id`, as `SecretLookupByUsage` names it.
    pub fn from_wire(wire: i32, id: &str) -> Result<Usage, VirError> {
        let id = id.to_owned();
        Ok(match wire {
            0 => Usage::None,
            1 => Usage::Volume(id),
            2 => Usage::Ceph(id),
            3 => Usage::Iscsi(id),
            4 => Usage::Tls(id),
            5 => Usage::Vtpm(id),
            n => {
                return Err(VirError::invalid_arg(format!(
                    "unknown secret usage type {n}"
                )))
            }
        })
    }

    /// libvirt's words for a usage in its errors: "volume /var/lib/x.img".
    pub fn describe(&self) -> String {
        match self {
            Usage::None => "none".into(),
            u => format!("{} {}", u.type_name(), u.id()),
        }
    }
}

/// One secret's definition (its value is kept apart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretDef {
    pub uuid: Uuid,
    pub description: Option<String>,
    /// Kept in memory only, never on disk.
    pub ephemeral: bool,
    /// Its value is never given to a client, only to the daemons that use it.
    pub private: bool,
    pub usage: Usage,
}

fn invalid(detail: impl std::fmt::Display) -> VirError {
    VirError::new(ErrorCode::XmlError, detail)
}

fn yes_no(el: &Element, attr: &str) -> Result<bool, VirError> {
    match el.get_attr(attr) {
        None | Some("no") => Ok(false),
        Some("yes") => Ok(true),
        Some(v) => Err(invalid(format!("invalid value of '{attr}': '{v}'"))),
    }
}

impl SecretDef {
    /// Parses a `<secret>` document; a missing UUID is made up, as libvirt does.
    pub fn parse(xml: &str) -> Result<SecretDef, VirError> {
        let root = common::xml::parse_root(xml, "secret").map_err(|e| invalid(e.to_string()))?;
        let uuid = match root.child_text("uuid") {
            Some(u) => Uuid::parse_str(u.trim())
                .map_err(|_| invalid(format!("malformed uuid element '{}'", u.trim())))?,
            None => Uuid::new_v4(),
        };
        let usage = match root.first("usage") {
            None => Usage::None,
            Some(u) => {
                let kind = u
                    .get_attr("type")
                    .ok_or_else(|| invalid("missing secret usage type"))?;
                let id = |el: &str| -> Result<String, VirError> {
                    let v = u
                        .child_text(el)
                        .map(|t| t.trim().to_owned())
                        .unwrap_or_default();
                    if v.is_empty() {
                        return Err(invalid(format!(
                            "{kind} usage specified, but {el} is missing"
                        )));
                    }
                    if v.chars().any(char::is_control) {
                        return Err(invalid(format!("invalid secret usage {el}")));
                    }
                    Ok(v)
                };
                match kind {
                    "none" => Usage::None,
                    "volume" => Usage::Volume(id("volume")?),
                    "ceph" => Usage::Ceph(id("name")?),
                    "iscsi" => Usage::Iscsi(id("target")?),
                    "tls" => Usage::Tls(id("name")?),
                    "vtpm" => Usage::Vtpm(id("name")?),
                    other => return Err(invalid(format!("unknown secret usage type {other}"))),
                }
            }
        };
        Ok(SecretDef {
            uuid,
            description: root.child_text("description"),
            ephemeral: yes_no(&root, "ephemeral")?,
            private: yes_no(&root, "private")?,
            usage,
        })
    }

    pub fn to_xml(&self) -> String {
        let yn = |b: bool| if b { "yes" } else { "no" };
        let usage = self.usage.id_element().map_or_else(
            || Element::new("usage").attr("type", "none"),
            |el| {
                Element::new("usage")
                    .attr("type", self.usage.type_name())
                    .child(Element::with_text(el, self.usage.id()))
            },
        );
        Element::new("secret")
            .attr("ephemeral", yn(self.ephemeral))
            .attr("private", yn(self.private))
            .child(Element::with_text(
                "uuid",
                self.uuid.hyphenated().to_string(),
            ))
            .child_opt(
                self.description
                    .as_ref()
                    .map(|d| Element::with_text("description", d)),
            )
            .child_opt((self.usage != Usage::None).then_some(usage))
            .to_xml()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_writes_each_usage() {
        for (xml, usage) in [
            (
                "<usage type='volume'><volume>/var/lib/a.img</volume></usage>",
                Usage::Volume("/var/lib/a.img".into()),
            ),
            (
                "<usage type='ceph'><name>client.admin</name></usage>",
                Usage::Ceph("client.admin".into()),
            ),
            (
                "<usage type='iscsi'><target>libvirtiscsi</target></usage>",
                Usage::Iscsi("libvirtiscsi".into()),
            ),
            (
                "<usage type='tls'><name>tls0</name></usage>",
                Usage::Tls("tls0".into()),
            ),
            (
                "<usage type='vtpm'><name>vtpm0</name></usage>",
                Usage::Vtpm("vtpm0".into()),
            ),
        ] {
            let doc = format!(
                "<secret ephemeral='no' private='yes'><uuid>0a81f5b2-8403-7b23-c8d6-21ccc2f80d6f</uuid>\
                 <description>d</description>{xml}</secret>"
            );
            let s = SecretDef::parse(&doc).unwrap();
            assert_eq!(s.usage, usage);
            assert!(s.private && !s.ephemeral);
            assert_eq!(SecretDef::parse(&s.to_xml()).unwrap(), s);
        }
    }

    #[test]
    fn refuses_what_libvirt_refuses() {
        for (doc, want) in [
            (
                "<secret><usage type='volume'/></secret>",
                "volume usage specified, but volume is missing",
            ),
            (
                "<secret><usage type='disk'><name>x</name></usage></secret>",
                "unknown secret usage type disk",
            ),
            (
                "<secret><uuid>nope</uuid></secret>",
                "malformed uuid element 'nope'",
            ),
            ("<secret private='maybe'/>", "invalid value of 'private'"),
            ("<domain/>", "secret"),
        ] {
            let e = SecretDef::parse(doc).unwrap_err();
            assert!(e.message.contains(want), "{doc}: {}", e.message);
        }
        assert_eq!(SecretDef::parse("<secret/>").unwrap().usage, Usage::None);
    }
}
