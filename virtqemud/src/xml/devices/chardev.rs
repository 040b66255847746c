//! `<serial>`, `<console>` and `<channel>`: a character device backend (pty, null,
//! file, unix socket, spicevmc) and the guest-side target it is wired to.

use std::path::PathBuf;

use common::xml::Element;

use super::super::{invalid, missing, yes_no, DomainXmlError, Result};
use super::path_text;

/// Backend of a serial/console/channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChardevSource {
    Pty,
    Null,
    File {
        path: PathBuf,
        append: Option<bool>,
    },
    /// `path` None: `<source mode='bind'/>` as virt-install writes it; the command
    /// line puts the socket under the launch runtime dir.
    Unix {
        path: Option<PathBuf>,
        listen: bool,
    },
    /// SPICE agent channel: parsed and kept, refused at launch (no SPICE here).
    SpiceVmc,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chardev {
    pub source: ChardevSource,
    /// `serial`/`console`: target type (`isa-serial`, `serial`, `virtio`);
    /// `channel`: `virtio`.
    pub target_type: Option<String>,
    pub target_port: Option<u32>,
    /// channel: `org.qemu.guest_agent.0`
    pub target_name: Option<String>,
}

impl Chardev {
    pub(super) fn parse(el: &Element) -> Result<Chardev> {
        let ty = el.get_attr("type").unwrap_or("pty");
        let src = el.first("source");
        let source = match ty {
            "pty" => ChardevSource::Pty,
            "null" => ChardevSource::Null,
            "file" => {
                let s = src.ok_or_else(|| missing(&el.name, "<source path> for type 'file'"))?;
                ChardevSource::File {
                    path: PathBuf::from(s.req_attr("path")?),
                    append: yes_no(s, "append")?,
                }
            }
            "unix" => {
                let (path, mode) = match src {
                    Some(s) => (s.get_attr("path"), s.get_attr("mode").unwrap_or("bind")),
                    None => (None, "bind"),
                };
                if path.is_none() && mode != "bind" {
                    return Err(missing(&el.name, "<source path> for mode 'connect'"));
                }
                let listen = match mode {
                    "bind" => true,
                    "connect" => false,
                    m => {
                        return Err(invalid(
                            "source",
                            "attribute 'mode'",
                            m,
                            "expected bind or connect",
                        ))
                    }
                };
                ChardevSource::Unix {
                    path: path.map(PathBuf::from),
                    listen,
                }
            }
            "spicevmc" => ChardevSource::SpiceVmc,
            t => {
                return Err(DomainXmlError::unsupported(
                    &format!("{} type", el.name),
                    t,
                    "supported types are pty, null, file and unix",
                ))
            }
        };
        let target = el.first("target");
        let target_name = target.and_then(|t| t.get_attr("name")).map(str::to_owned);
        if let Some(n) = &target_name {
            if !n
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                || n.is_empty()
            {
                return Err(invalid(
                    "channel/target",
                    "attribute 'name'",
                    n,
                    "not a valid port name",
                ));
            }
        }
        Ok(Chardev {
            source,
            target_type: target.and_then(|t| t.get_attr("type")).map(str::to_owned),
            target_port: target
                .map(|t| t.parse_attr::<u32>("port"))
                .transpose()?
                .flatten(),
            target_name,
        })
    }

    /// A `<channel>`: only virtio channels (ports of the virtio-serial controller).
    pub(super) fn parse_channel(el: &Element) -> Result<Chardev> {
        let ch = Chardev::parse(el)?;
        match ch.target_type.as_deref() {
            Some("virtio") => Ok(ch),
            t => Err(DomainXmlError::unsupported(
                "channel target type",
                t.unwrap_or(""),
                "only virtio channels",
            )),
        }
    }

    pub(super) fn to_element(&self, name: &str) -> Element {
        let (ty, src) = match &self.source {
            ChardevSource::Pty => ("pty", None),
            ChardevSource::Null => ("null", None),
            ChardevSource::File { path, append } => (
                "file",
                Some(
                    Element::new("source")
                        .attr("path", path_text(path))
                        .attr_opt("append", append.map(|a| if a { "on" } else { "off" })),
                ),
            ),
            ChardevSource::Unix { path, listen } => (
                "unix",
                Some(
                    Element::new("source")
                        .attr("mode", if *listen { "bind" } else { "connect" })
                        .attr_opt("path", path.as_deref().map(path_text)),
                ),
            ),
            ChardevSource::SpiceVmc => ("spicevmc", None),
        };
        let target = if self.target_type.is_some()
            || self.target_port.is_some()
            || self.target_name.is_some()
        {
            Some(
                Element::new("target")
                    .attr_opt("type", self.target_type.as_deref())
                    .attr_opt("name", self.target_name.as_deref())
                    .attr_opt("port", self.target_port),
            )
        } else {
            None
        };
        Element::new(name)
            .attr("type", ty)
            .child_opt(src)
            .child_opt(target)
    }
}
