//! What the user sees and hears: `<graphics>` (VNC, SPICE), `<video>`, `<sound>`,
//! `<audio>` backends and SPICE `<redirdev>` USB redirection.

use std::path::PathBuf;

use common::xml::Element;

use super::super::{invalid, yes_no, yn, DomainXmlError, Result};
use super::{addr_of, model_attr, path_text, push_addr, Address};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphicsKind {
    Vnc,
    Spice,
}

impl GraphicsKind {
    pub fn as_str(self) -> &'static str {
        match self {
            GraphicsKind::Vnc => "vnc",
            GraphicsKind::Spice => "spice",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Graphics {
    pub kind: GraphicsKind,
    /// -1 or absent with `autoport`: chosen at start (VNC by QEMU, SPICE by the runtime).
    pub port: Option<i32>,
    /// SPICE's TLS port; only -1 (none) is honoured.
    pub tls_port: Option<i32>,
    pub autoport: bool,
    pub listen: Option<String>,
    /// The client's password; written back only for `VIR_DOMAIN_XML_SECURE`.
    pub passwd: Option<String>,
    /// SPICE `<image compression>` (virt-install writes `off`).
    pub image_compression: Option<String>,
    /// `<listen type='socket' socket=PATH>`: a UNIX socket instead of TCP (`None`
    /// inside: one under the domain's runtime dir).
    pub listen_socket: Option<Option<PathBuf>>,
    /// `<listen type='none'/>`: no listener (clients through QMP only).
    pub listen_none: bool,
    /// SPICE `<gl enable rendernode>`: (enabled, the GPU render node).
    pub gl: Option<(bool, Option<PathBuf>)>,
    /// VNC `websocket=PORT`: QEMU's WebSocket listener beside the VNC one.
    pub websocket: Option<i32>,
    /// `keymap` (`en-us`, ...): the keyboard layout QEMU translates for (`-k`).
    pub keymap: Option<String>,
}

/// `<audio id='N' type='none|spice'/>`: an audio backend sound devices play through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Audio {
    pub id: u32,
    /// libvirt's backend type: none, spice, alsa, oss, pulseaudio, sdl, jack, file,
    /// dbus, coreaudio.
    pub kind: String,
    /// The element as written (its settings are read by the command line and written
    /// back unchanged).
    pub element: Element,
}

/// The audio backend types libvirt 9.0 knows.
pub const AUDIO_TYPES: &[&str] = &[
    "none",
    "spice",
    "alsa",
    "oss",
    "pulseaudio",
    "sdl",
    "jack",
    "file",
    "dbus",
    "coreaudio",
];

/// `<redirdev bus='usb' type='spicevmc'/>`: a USB device redirected from a SPICE client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirdev {
    pub address: Option<Address>,
    /// `type='tcp'|'unix'`: a USB redirection stream over that socket (a chardev);
    /// `None` for SPICE's (`spicevmc`). Its `<address>`, `<boot>`, ... children are
    /// the chardev's `unhandled` ones.
    pub socket: Option<super::Chardev>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Video {
    /// `vga`, `cirrus`, `qxl`, `virtio`, `bochs`, `none`
    pub model: String,
    pub vram_kib: Option<u64>,
    /// qxl's `ram=` and `vgamem=` (KiB).
    pub ram_kib: Option<u64>,
    pub vgamem_kib: Option<u64>,
    pub heads: Option<u32>,
    /// `primary='yes'`: libvirt marks the first video so.
    pub primary: bool,
    pub address: Option<Address>,
    /// A user's `<alias name='ua-...'>`, kept in the definition (QEMU's id is ours).
    pub user_alias: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sound {
    /// `ich6`, `ich9`, `ac97`, `es1370`
    pub model: String,
    pub address: Option<Address>,
}

/// The port, autoport and listen address of `<graphics>`. As in libvirt, VNC ports
/// are automatic unless one is written; SPICE's only with `autoport='yes'` or a port
/// (or TLS port) of -1.
fn parse_graphics_port(el: &Element, vnc: bool) -> Result<(Option<i32>, bool, Option<String>)> {
    let port = el.parse_attr::<i32>("port")?;
    let tls_auto = el.parse_attr::<i32>("tlsPort")? == Some(-1);
    let autoport = match yes_no(el, "autoport")? {
        Some(a) => a || port == Some(-1) || tls_auto,
        None if vnc => port.is_none_or(|p| p == -1),
        None => port == Some(-1) || tls_auto,
    };
    let listen = el
        .get_attr("listen")
        .or_else(|| el.first("listen").and_then(|l| l.get_attr("address")))
        .map(str::to_owned);
    if let Some(l) = &listen {
        // An address, or a name QEMU resolves ("0" is 0.0.0.0 to it, as oVirt writes);
        // nothing that could end QEMU's option.
        let name = !l.is_empty()
            && l.len() <= 253
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-".contains(c));
        if l.parse::<std::net::IpAddr>().is_err() && !name {
            return Err(invalid(
                "graphics",
                "listen address",
                l,
                "must be an IP address or a host name",
            ));
        }
    }
    if let Some(p) = port {
        if p != -1 && !(5900..=65535).contains(&p) {
            return Err(invalid(
                "graphics",
                "attribute 'port'",
                &p.to_string(),
                "must be -1 or 5900 to 65535",
            ));
        }
    }
    Ok((port, autoport, listen))
}

impl Graphics {
    pub(super) fn parse(c: &Element) -> Result<Graphics> {
        let vnc = c.get_attr("type") == Some("vnc");
        let (port, autoport, listen) = parse_graphics_port(c, vnc)?;
        let kind = match c.req_attr("type")? {
            "vnc" => GraphicsKind::Vnc,
            "spice" => GraphicsKind::Spice,
            t => {
                return Err(DomainXmlError::unsupported(
                    "graphics type",
                    t,
                    "expected vnc or spice",
                ))
            }
        };
        let passwd = c.get_attr("passwd").map(str::to_owned);
        if passwd
            .as_deref()
            .is_some_and(|p| p.chars().any(char::is_control))
        {
            return Err(invalid(
                "graphics",
                "attribute 'passwd'",
                "(hidden)",
                "must not contain control characters",
            ));
        }
        // SPICE's -1 ports mean autoport (set above); libvirt keeps them as 0.
        let spice_port = |p: Option<i32>| if vnc { p } else { p.filter(|p| *p > 0) };
        Ok(Graphics {
            kind,
            port: spice_port(port),
            tls_port: spice_port(c.parse_attr::<i32>("tlsPort")?),
            autoport,
            listen,
            passwd,
            // VNC's `socket` attribute is the old spelling of a socket listener.
            listen_socket: c
                .elements()
                .find(|l| l.name == "listen" && l.get_attr("type") == Some("socket"))
                .map(|l| l.get_attr("socket").map(PathBuf::from))
                .or_else(|| {
                    c.get_attr("socket")
                        .filter(|_| vnc)
                        .map(|s| Some(PathBuf::from(s)))
                }),
            websocket: c.parse_attr::<i32>("websocket")?.filter(|_| vnc),
            keymap: match c.get_attr("keymap") {
                Some(k)
                    if k.is_empty()
                        || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') =>
                {
                    return Err(invalid(
                        "graphics",
                        "attribute 'keymap'",
                        k,
                        "expected a layout such as en-us",
                    ))
                }
                k => k.map(str::to_owned),
            },
            listen_none: c
                .elements()
                .any(|l| l.name == "listen" && l.get_attr("type") == Some("none")),
            gl: match (kind, c.first("gl")) {
                (GraphicsKind::Spice, Some(g)) => Some((
                    yes_no(g, "enable")?.unwrap_or(false),
                    g.get_attr("rendernode").map(PathBuf::from),
                )),
                _ => None,
            },
            image_compression: match c.first("image").and_then(|i| i.get_attr("compression")) {
                Some(m @ ("auto_glz" | "auto_lz" | "quic" | "glz" | "lz" | "off")) => {
                    Some(m.to_owned())
                }
                Some(m) => {
                    return Err(invalid(
                        "graphics/image",
                        "attribute 'compression'",
                        m,
                        "expected auto_glz, auto_lz, quic, glz, lz or off",
                    ))
                }
                None => None,
            },
        })
    }

    /// `secure`: include the password (`VIR_DOMAIN_XML_SECURE`, and our files).
    pub(super) fn to_element(&self, secure: bool) -> Element {
        // libvirt writes the address both ways; ports only for a TCP listener (VNC's
        // automatic one as -1, SPICE's when set).
        let tcp = self.listen_socket.is_none() && !self.listen_none;
        let vnc = self.kind == GraphicsKind::Vnc;
        // A running VNC shows the port QEMU took (the runtime sets it); a defined one
        // with autoport shows -1 (`Devices::fill_defaults` drops a written port).
        let port = match (vnc, self.port) {
            (_, Some(p)) if p > 0 => Some(p),
            (true, _) if self.autoport => Some(-1),
            _ => None,
        };
        let vnc_socket = self
            .listen_socket
            .as_ref()
            .and_then(|s| s.as_deref())
            .filter(|_| vnc)
            .map(path_text);
        Element::new("graphics")
            .attr("type", self.kind.as_str())
            .attr_opt("port", port.filter(|_| tcp))
            .attr_opt("tlsPort", self.tls_port.filter(|p| *p > 0 && tcp))
            .attr_opt("autoport", tcp.then(|| yn(self.autoport)))
            .attr_opt("websocket", self.websocket.filter(|_| tcp))
            .attr_opt("socket", vnc_socket)
            .attr_opt("keymap", self.keymap.as_deref())
            .attr_opt("listen", self.listen.as_deref().filter(|_| tcp))
            .attr_opt("passwd", self.passwd.as_deref().filter(|_| secure))
            .child_opt(self.listen.as_deref().filter(|_| tcp).map(|l| {
                Element::new("listen")
                    .attr("type", "address")
                    .attr("address", l)
            }))
            .child_opt(self.listen_socket.as_ref().map(|s| {
                Element::new("listen")
                    .attr("type", "socket")
                    .attr_opt("socket", s.as_deref().map(path_text))
            }))
            .child_opt(
                self.listen_none
                    .then(|| Element::new("listen").attr("type", "none")),
            )
            // libvirt writes the default listener (qemu.conf's address) this way.
            .child_opt(
                (self.listen.is_none() && self.listen_socket.is_none() && !self.listen_none)
                    .then(|| Element::new("listen").attr("type", "address")),
            )
            .child_opt(
                self.image_compression
                    .as_deref()
                    .map(|m| Element::new("image").attr("compression", m)),
            )
            .child_opt(self.gl.as_ref().map(|(on, node)| {
                Element::new("gl")
                    .attr("enable", yn(*on))
                    .attr_opt("rendernode", node.as_deref().map(path_text))
            }))
    }
}

impl Audio {
    /// `taken`: the backends read so far (ids are unique).
    pub(super) fn parse(c: &Element, taken: &[Audio]) -> Result<Audio> {
        let id = c.parse_attr::<u32>("id")?.unwrap_or(1);
        if id == 0 || taken.iter().any(|a| a.id == id) {
            return Err(invalid(
                "audio",
                "attribute 'id'",
                &id.to_string(),
                "must be unique and at least 1",
            ));
        }
        let kind = c.req_attr("type")?;
        if !AUDIO_TYPES.contains(&kind) {
            return Err(DomainXmlError::unsupported(
                "audio type",
                kind,
                format!("expected one of {}", AUDIO_TYPES.join(", ")),
            ));
        }
        let mut element = c.clone();
        if element.get_attr("id").is_none() {
            element = element.attr("id", id);
        }
        Ok(Audio {
            id,
            kind: kind.to_owned(),
            element,
        })
    }

    /// A backend with no settings (libvirt's default one).
    pub fn new(id: u32, kind: &str) -> Audio {
        Audio {
            id,
            kind: kind.to_owned(),
            element: Element::new("audio").attr("id", id).attr("type", kind),
        }
    }

    pub(super) fn to_element(&self) -> Element {
        self.element.clone()
    }
}

impl Redirdev {
    pub(super) fn parse(c: &Element) -> Result<Redirdev> {
        let socket = match c.get_attr("type") {
            Some("tcp" | "unix") => Some(super::Chardev::parse(c)?),
            _ => None,
        };
        Ok(Redirdev {
            address: if socket.is_some() { None } else { addr_of(c)? },
            socket,
        })
    }

    pub(super) fn to_element(&self) -> Element {
        if let Some(ch) = &self.socket {
            let mut e = ch.to_element("redirdev");
            e.attrs.insert(0, ("bus".into(), "usb".into()));
            return e;
        }
        let mut e = Element::new("redirdev")
            .attr("bus", "usb")
            .attr("type", "spicevmc");
        push_addr(&mut e, &self.address);
        e
    }
}

impl Video {
    pub fn new(model: &str) -> Video {
        Video {
            model: model.to_owned(),
            vram_kib: None,
            ram_kib: None,
            vgamem_kib: None,
            heads: None,
            primary: false,
            address: None,
            user_alias: None,
        }
    }

    /// libvirt's defaults (virDomainVideoDefaultRAM): one head, 16 MiB of video RAM
    /// (qxl: 64 MiB, with 64 MiB RAM and 16 MiB VGA memory); virtio has none.
    pub(super) fn fill_defaults(&mut self) {
        if self.model == "none" {
            return;
        }
        self.heads.get_or_insert(1);
        match self.model.as_str() {
            "vga" | "cirrus" | "bochs" => {
                self.vram_kib.get_or_insert(16384);
            }
            "qxl" => {
                self.ram_kib.get_or_insert(65536);
                self.vram_kib.get_or_insert(65536);
                self.vgamem_kib.get_or_insert(16384);
            }
            _ => {}
        }
    }

    pub(super) fn parse(c: &Element) -> Result<Video> {
        let m = c.first("model");
        // libvirt's default model with a QEMU that has cirrus-vga (Debian's does).
        let model = m.and_then(|m| m.get_attr("type")).unwrap_or("cirrus");
        if !matches!(
            model,
            "vga" | "cirrus" | "qxl" | "virtio" | "bochs" | "ramfb" | "none"
        ) {
            return Err(DomainXmlError::unsupported(
                "video model",
                model,
                "expected vga, cirrus, qxl, virtio, bochs, ramfb or none",
            ));
        }
        let address = addr_of(c)?;
        // ramfb is a system bus device: libvirt refuses a PCI address for it.
        if let (Some(Address::Pci(_)), "ramfb") = (&address, model) {
            return Err(invalid(
                "video/address",
                "type",
                "pci",
                "a ramfb display sits on no PCI bus",
            ));
        }
        let num = |k: &str| -> Result<Option<u64>> {
            Ok(m.map(|m| m.parse_attr::<u64>(k)).transpose()?.flatten())
        };
        Ok(Video {
            model: model.to_owned(),
            vram_kib: num("vram")?,
            ram_kib: num("ram")?,
            vgamem_kib: num("vgamem")?,
            heads: m
                .map(|m| m.parse_attr::<u32>("heads"))
                .transpose()?
                .flatten(),
            primary: m.and_then(|m| m.get_attr("primary")) == Some("yes"),
            address,
            user_alias: c
                .elements()
                .find(|e| super::user_alias(e))
                .and_then(|e| e.get_attr("name"))
                .map(str::to_owned),
        })
    }

    pub(super) fn to_element(&self) -> Element {
        let mut e = Element::new("video").child(
            Element::new("model")
                .attr("type", &self.model)
                .attr_opt("ram", self.ram_kib)
                .attr_opt("vram", self.vram_kib)
                .attr_opt("vgamem", self.vgamem_kib)
                .attr_opt("heads", self.heads)
                .attr_opt("primary", self.primary.then_some("yes")),
        );
        if let Some(a) = &self.user_alias {
            e.push(Element::new("alias").attr("name", a));
        }
        push_addr(&mut e, &self.address);
        e
    }
}

impl Sound {
    /// A PCI sound card (`sb16` and `pcspk` are ISA, `usb` sits on USB).
    pub fn is_pci(&self) -> bool {
        !matches!(self.model.as_str(), "sb16" | "pcspk" | "usb")
    }

    pub(super) fn parse(c: &Element) -> Result<Sound> {
        Ok(Sound {
            model: model_attr(
                c,
                "sound model",
                &[
                    "ich6", "ich9", "ich7", "ac97", "es1370", "sb16", "pcspk", "usb",
                ],
                "ich6",
            )?,
            address: addr_of(c)?,
        })
    }

    pub(super) fn to_element(&self) -> Element {
        let mut e = Element::new("sound").attr("model", &self.model);
        push_addr(&mut e, &self.address);
        e
    }
}
