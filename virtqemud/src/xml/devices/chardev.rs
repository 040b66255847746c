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
    /// `type='tcp'`: `<source mode host service>`, `<protocol type='raw|telnet'>`,
    /// `<reconnect enabled timeout>` on a connecting one.
    Tcp {
        host: Option<String>,
        service: String,
        listen: bool,
        telnet: bool,
        reconnect: Option<u32>,
        /// `tls='yes|no'`: TLS over the socket (libvirt's chardev_tls certificates).
        tls: Option<bool>,
    },
    /// `type='udp'`: the remote end (`mode='connect'`) and the optional local one.
    Udp {
        host: Option<String>,
        service: String,
        bind_host: Option<String>,
        bind_service: Option<String>,
    },
    /// `type='dev'`: a host tty.
    Dev(PathBuf),
    /// `type='pipe'`: a named pipe (QEMU opens PATH.in/PATH.out, or PATH).
    Pipe(PathBuf),
    /// `type='vc'`: a text console of QEMU's display (none here: QEMU keeps it).
    Vc,
    /// `type='qemu-vdagent'`: QEMU's own SPICE agent (clipboard and mouse with VNC),
    /// `<source><clipboard copypaste>` and `<mouse mode='client|server'>`.
    QemuVdagent {
        clipboard: Option<bool>,
        mouse: Option<String>,
    },
}

fn vdagent_source(el: &Element) -> Result<ChardevSource> {
    let src = el.first("source");
    let clipboard = match src.and_then(|s| s.first("clipboard")) {
        Some(c) => yes_no(c, "copypaste")?,
        None => None,
    };
    let mouse = match src
        .and_then(|s| s.first("mouse"))
        .and_then(|m| m.get_attr("mode"))
    {
        None => None,
        Some(m @ ("client" | "server")) => Some(m.to_owned()),
        Some(m) => {
            return Err(invalid(
                "mouse",
                "attribute 'mode'",
                m,
                "expected client or server",
            ))
        }
    };
    Ok(ChardevSource::QemuVdagent { clipboard, mouse })
}

fn tcp_source(el: &Element) -> Result<ChardevSource> {
    let s = el
        .first("source")
        .ok_or_else(|| missing(&el.name, "<source service> for type 'tcp'"))?;
    let listen = match s.get_attr("mode").unwrap_or("connect") {
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
    let telnet = match el.first("protocol").and_then(|p| p.get_attr("type")) {
        None | Some("raw") => false,
        Some("telnet") => true,
        Some(p) => {
            return Err(DomainXmlError::unsupported(
                "protocol type",
                p,
                "expected raw or telnet",
            ))
        }
    };
    let reconnect = match s.first("reconnect") {
        Some(r) if r.get_attr("enabled") == Some("yes") => {
            Some(r.parse_attr::<u32>("timeout")?.unwrap_or(0))
        }
        _ => None,
    };
    Ok(ChardevSource::Tcp {
        host: s.get_attr("host").map(str::to_owned),
        service: s.req_attr("service")?.to_owned(),
        listen,
        telnet,
        reconnect,
        tls: yes_no(s, "tls")?,
    })
}

fn udp_source(el: &Element) -> Result<ChardevSource> {
    let mut remote = None;
    let mut local = None;
    for s in el.elements().filter(|s| s.name == "source") {
        if s.get_attr("mode") == Some("bind") {
            local = Some(s);
        } else {
            remote = Some(s);
        }
    }
    let r = remote.ok_or_else(|| missing(&el.name, "<source mode='connect'> for type 'udp'"))?;
    Ok(ChardevSource::Udp {
        host: r.get_attr("host").map(str::to_owned),
        service: r.req_attr("service")?.to_owned(),
        bind_host: local.and_then(|l| l.get_attr("host")).map(str::to_owned),
        bind_service: local.and_then(|l| l.get_attr("service")).map(str::to_owned),
    })
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
    /// A guestfwd channel's `<target address>` (with `port`): where the guest's TCP
    /// connections to it are forwarded to the backend, through user networking.
    pub target_address: Option<std::net::Ipv4Addr>,
    /// `<target><model name>`: the serial device (`isa-serial`), as libvirt fills it.
    pub target_model: Option<String>,
    /// `<log file append>`: QEMU copies what the guest writes to this file.
    pub log: Option<(PathBuf, Option<bool>)>,
    /// Children not handled (`<address>`, ...): kept, written back, and refused at
    /// start by name unless the command line reads them (ISA and virtio-serial
    /// addresses).
    pub unhandled: Vec<Element>,
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
            "vc" => ChardevSource::Vc,
            "qemu-vdagent" => vdagent_source(el)?,
            "tcp" => tcp_source(el)?,
            "udp" => udp_source(el)?,
            "dev" | "pipe" => {
                let s = src.ok_or_else(|| missing(&el.name, "<source path>"))?;
                let path = PathBuf::from(s.req_attr("path")?);
                if ty == "dev" {
                    ChardevSource::Dev(path)
                } else {
                    ChardevSource::Pipe(path)
                }
            }
            t => {
                return Err(DomainXmlError::unsupported(
                    &format!("{} type", el.name),
                    t,
                    "supported types are pty, null, file, unix, tcp, udp, dev, pipe, vc and qemu-vdagent",
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
            target_address: target
                .and_then(|t| t.get_attr("address"))
                .map(|a| {
                    a.parse().map_err(|_| {
                        invalid("target", "attribute 'address'", a, "not an IPv4 address")
                    })
                })
                .transpose()?,
            target_model: target
                .and_then(|t| t.first("model"))
                .and_then(|m| m.get_attr("name"))
                .map(str::to_owned),
            log: match el.first("log") {
                Some(l) => {
                    let file = l.req_attr("file")?;
                    if !file.starts_with('/') {
                        return Err(invalid("log", "attribute 'file'", file, "must be absolute"));
                    }
                    Some((PathBuf::from(file), yes_no(l, "append")?))
                }
                None => None,
            },
            unhandled: super::unhandled(
                el,
                &[
                    &["source", "target", "protocol", "log"][..],
                    super::REGENERATED,
                ]
                .concat(),
            ),
        })
    }

    /// A `<channel>`: a virtio channel (a port of a virtio-serial controller) or a
    /// guestfwd one (an address and port of user networking, both required).
    pub(super) fn parse_channel(el: &Element) -> Result<Chardev> {
        let ch = Chardev::parse(el)?;
        match ch.target_type.as_deref() {
            Some("virtio") => Ok(ch),
            Some("guestfwd") => {
                if ch.target_address.is_none() {
                    return Err(missing("channel/target", "attribute 'address'"));
                }
                if ch.target_port.is_none() {
                    return Err(missing("channel/target", "attribute 'port'"));
                }
                Ok(ch)
            }
            t => Err(DomainXmlError::unsupported(
                "channel target type",
                t.unwrap_or(""),
                "expected virtio or guestfwd",
            )),
        }
    }

    pub fn is_guestfwd(&self) -> bool {
        self.target_type.as_deref() == Some("guestfwd")
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
            // A listening socket without a path is made at start: libvirt writes no
            // source for it.
            ChardevSource::Unix {
                path: None,
                listen: true,
            } => ("unix", None),
            ChardevSource::Unix { path, listen } => (
                "unix",
                Some(
                    Element::new("source")
                        .attr("mode", if *listen { "bind" } else { "connect" })
                        .attr_opt("path", path.as_deref().map(path_text)),
                ),
            ),
            ChardevSource::SpiceVmc => ("spicevmc", None),
            ChardevSource::Vc => ("vc", None),
            ChardevSource::QemuVdagent { clipboard, mouse } => (
                "qemu-vdagent",
                (clipboard.is_some() || mouse.is_some()).then(|| {
                    Element::new("source")
                        .child_opt(clipboard.map(|c| {
                            Element::new("clipboard")
                                .attr("copypaste", if c { "yes" } else { "no" })
                        }))
                        .child_opt(
                            mouse
                                .as_deref()
                                .map(|m| Element::new("mouse").attr("mode", m)),
                        )
                }),
            ),
            ChardevSource::Dev(p) => (
                "dev",
                Some(Element::new("source").attr("path", path_text(p))),
            ),
            ChardevSource::Pipe(p) => (
                "pipe",
                Some(Element::new("source").attr("path", path_text(p))),
            ),
            ChardevSource::Tcp {
                host,
                service,
                listen,
                telnet: _,
                reconnect,
                tls,
            } => (
                "tcp",
                Some(
                    Element::new("source")
                        .attr("mode", if *listen { "bind" } else { "connect" })
                        .attr_opt("host", host.as_deref())
                        .attr("service", service)
                        .attr_opt("tls", tls.map(|t| if t { "yes" } else { "no" }))
                        .child_opt(reconnect.map(|t| {
                            Element::new("reconnect")
                                .attr("enabled", "yes")
                                .attr("timeout", t)
                        })),
                ),
            ),
            ChardevSource::Udp { .. } => ("udp", None),
        };
        let mut extra = Vec::new();
        match &self.source {
            ChardevSource::Tcp { telnet, .. } => extra.push(
                Element::new("protocol").attr("type", if *telnet { "telnet" } else { "raw" }),
            ),
            ChardevSource::Udp {
                host,
                service,
                bind_host,
                bind_service,
            } => {
                if bind_host.is_some() || bind_service.is_some() {
                    extra.push(
                        Element::new("source")
                            .attr("mode", "bind")
                            .attr_opt("host", bind_host.as_deref())
                            .attr_opt("service", bind_service.as_deref()),
                    );
                }
                extra.push(
                    Element::new("source")
                        .attr("mode", "connect")
                        .attr_opt("host", host.as_deref())
                        .attr("service", service),
                );
            }
            _ => {}
        }
        let target = if self.target_type.is_some()
            || self.target_port.is_some()
            || self.target_name.is_some()
            || self.target_address.is_some()
            || self.target_model.is_some()
        {
            Some(
                Element::new("target")
                    .attr_opt("type", self.target_type.as_deref())
                    .attr_opt("name", self.target_name.as_deref())
                    .attr_opt("address", self.target_address)
                    .attr_opt("port", self.target_port)
                    .child_opt(
                        self.target_model
                            .as_deref()
                            .map(|m| Element::new("model").attr("name", m)),
                    ),
            )
        } else {
            None
        };
        let mut el = Element::new(name).attr("type", ty).child_opt(src);
        for e in extra {
            el.push(e);
        }
        let mut el = el
            .child_opt(target)
            .child_opt(self.log.as_ref().map(|(f, append)| {
                Element::new("log")
                    .attr("file", path_text(f))
                    .attr_opt("append", append.map(|a| if a { "on" } else { "off" }))
            }));
        for e in &self.unhandled {
            el.push(e.clone());
        }
        el
    }
}
