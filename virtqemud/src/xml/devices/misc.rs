//! Small devices: `<input>`, `<rng>`, `<memballoon>`, `<watchdog>` and `<tpm>`, each
//! read from and written back to its element.

use std::path::PathBuf;

use common::xml::Element;

use super::super::{invalid, missing, yes_no, yn, DomainXmlError, Result};
use super::{addr_of, model_attr, path_text, push_addr, Address};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// `tablet`, `mouse`, `keyboard`
    pub kind: String,
    /// `usb`, `ps2`, `virtio`
    pub bus: String,
    /// A USB port (`Address::Other` type usb) or a PCI slot (virtio).
    pub address: Option<Address>,
    /// `<driver>`'s attributes (a virtio device's options), as written.
    pub driver: Option<Vec<(String, String)>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rng {
    /// `virtio`, or its (non-)transitional variant.
    pub model: String,
    /// Host source, default /dev/urandom.
    pub backend: PathBuf,
    /// `<backend model='builtin'/>`: QEMU's own generator (getrandom), no host file.
    pub builtin: bool,
    pub rate: Option<(u32, u32)>,
    pub address: Option<Address>,
    /// `<driver>`'s attributes (virtio options), as written.
    pub driver: Option<Vec<(String, String)>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Memballoon {
    /// `virtio` or `none`
    pub model: String,
    pub stats_period: Option<u32>,
    pub address: Option<Address>,
    /// `<driver>`'s attributes (virtio options), as written.
    pub driver: Option<Vec<(String, String)>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watchdog {
    /// `i6300esb`, `ib700`, `itco`
    pub model: String,
    /// `reset`, `shutdown`, `poweroff`, `pause`, `none`, `dump`, `inject-nmi`
    pub action: String,
    pub address: Option<Address>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tpm {
    /// `tpm-tis`, `tpm-crb`
    pub model: String,
    /// `emulator`, `passthrough` or `external` (a swtpm someone else runs)
    pub backend: String,
    pub version: Option<String>,
    pub device: Option<PathBuf>,
    /// `external`: the UNIX socket of that swtpm (`<source type='unix' mode='connect'>`).
    pub socket: Option<PathBuf>,
    /// `<backend persistent_state>`: keep the state when a transient domain ends.
    pub persistent_state: Option<bool>,
}

/// The attributes of a device's `<driver>` (its children, if any, make the device one
/// kept whole, as any child the typed model drops).
fn driver_attrs(c: &Element) -> Option<Vec<(String, String)>> {
    c.first("driver").map(|d| d.attrs.clone())
}

fn push_driver(e: &mut Element, driver: &Option<Vec<(String, String)>>) {
    if let Some(attrs) = driver {
        let mut d = Element::new("driver");
        d.attrs = attrs.clone();
        e.push(d);
    }
}

impl Input {
    pub(super) fn parse(c: &Element) -> Result<Input> {
        let kind = c.req_attr("type")?;
        if !matches!(kind, "tablet" | "mouse" | "keyboard") {
            return Err(DomainXmlError::unsupported(
                "input type",
                kind,
                "expected tablet, mouse or keyboard",
            ));
        }
        let bus = c
            .get_attr("bus")
            .unwrap_or(if kind == "tablet" { "usb" } else { "ps2" });
        if !matches!(bus, "usb" | "ps2" | "virtio") {
            return Err(DomainXmlError::unsupported(
                "input bus",
                bus,
                "expected usb, ps2 or virtio",
            ));
        }
        Ok(Input {
            kind: kind.to_owned(),
            bus: bus.to_owned(),
            address: addr_of(c)?,
            driver: driver_attrs(c),
        })
    }

    pub(super) fn to_element(&self) -> Element {
        let mut e = Element::new("input")
            .attr("type", &self.kind)
            .attr("bus", &self.bus);
        push_driver(&mut e, &self.driver);
        push_addr(&mut e, &self.address);
        e
    }
}

impl Rng {
    pub(super) fn parse(c: &Element) -> Result<Rng> {
        let model = model_attr(
            c,
            "rng model",
            &["virtio", "virtio-transitional", "virtio-non-transitional"],
            "virtio",
        )?;
        let b = c
            .first("backend")
            .ok_or_else(|| missing("rng", "<backend>"))?;
        let builtin = match b.get_attr("model").unwrap_or("random") {
            "random" => false,
            "builtin" => true,
            m => {
                return Err(DomainXmlError::unsupported(
                    "rng backend model",
                    m,
                    "expected random or builtin",
                ))
            }
        };
        let path = b.text();
        let backend = if path.is_empty() {
            PathBuf::from("/dev/urandom")
        } else {
            PathBuf::from(path)
        };
        let rate = match c.first("rate") {
            Some(r) => Some((
                r.parse_attr::<u32>("bytes")?
                    .ok_or_else(|| missing("rate", "attribute 'bytes'"))?,
                r.parse_attr::<u32>("period")?.unwrap_or(1000),
            )),
            None => None,
        };
        Ok(Rng {
            model,
            backend,
            builtin,
            rate,
            address: addr_of(c)?,
            driver: driver_attrs(c),
        })
    }

    pub(super) fn to_element(&self) -> Element {
        let mut e = Element::new("rng")
            .attr("model", &self.model)
            .child(if self.builtin {
                Element::new("backend").attr("model", "builtin")
            } else {
                Element::with_text("backend", path_text(&self.backend)).attr("model", "random")
            })
            .child_opt(
                self.rate
                    .map(|(b, p)| Element::new("rate").attr("bytes", b).attr("period", p)),
            );
        push_driver(&mut e, &self.driver);
        push_addr(&mut e, &self.address);
        e
    }
}

impl Memballoon {
    pub(super) fn parse(c: &Element) -> Result<Memballoon> {
        let model = c.req_attr("model")?;
        if !matches!(
            model,
            "virtio" | "virtio-transitional" | "virtio-non-transitional" | "none"
        ) {
            return Err(DomainXmlError::unsupported(
                "memballoon model",
                model,
                "expected virtio, virtio-transitional, virtio-non-transitional or none",
            ));
        }
        Ok(Memballoon {
            model: model.to_owned(),
            stats_period: c
                .first("stats")
                .map(|s| s.parse_attr::<u32>("period"))
                .transpose()?
                .flatten(),
            address: addr_of(c)?,
            driver: driver_attrs(c),
        })
    }

    pub(super) fn to_element(&self) -> Element {
        let mut e = Element::new("memballoon")
            .attr("model", &self.model)
            .child_opt(
                self.stats_period
                    .map(|p| Element::new("stats").attr("period", p)),
            );
        push_driver(&mut e, &self.driver);
        push_addr(&mut e, &self.address);
        e
    }
}

impl Watchdog {
    pub(super) fn parse(c: &Element) -> Result<Watchdog> {
        let model = c.req_attr("model")?;
        if !matches!(model, "i6300esb" | "ib700" | "itco") {
            return Err(DomainXmlError::unsupported(
                "watchdog model",
                model,
                "expected i6300esb, ib700 or itco",
            ));
        }
        let action = c.get_attr("action").unwrap_or("reset");
        if !matches!(
            action,
            "reset" | "shutdown" | "poweroff" | "pause" | "none" | "dump" | "inject-nmi"
        ) {
            return Err(invalid(
                "watchdog",
                "attribute 'action'",
                action,
                "unknown action",
            ));
        }
        Ok(Watchdog {
            model: model.to_owned(),
            action: action.to_owned(),
            address: addr_of(c)?,
        })
    }

    pub(super) fn to_element(&self) -> Element {
        let mut e = Element::new("watchdog")
            .attr("model", &self.model)
            .attr("action", &self.action);
        push_addr(&mut e, &self.address);
        e
    }
}

impl Tpm {
    pub(super) fn parse(c: &Element) -> Result<Tpm> {
        let model = c.get_attr("model").unwrap_or("tpm-tis");
        if !matches!(model, "tpm-tis" | "tpm-crb") {
            return Err(DomainXmlError::unsupported(
                "tpm model",
                model,
                "expected tpm-tis or tpm-crb",
            ));
        }
        let b = c
            .first("backend")
            .ok_or_else(|| missing("tpm", "<backend>"))?;
        let backend = b.req_attr("type")?;
        if !matches!(backend, "emulator" | "passthrough" | "external") {
            return Err(DomainXmlError::unsupported(
                "tpm backend type",
                backend,
                "expected emulator, passthrough or external",
            ));
        }
        let socket = match b.first("source").filter(|_| backend == "external") {
            None if backend == "external" => return Err(missing("tpm/backend", "<source>")),
            None => None,
            Some(src) => {
                let ty = src.get_attr("type").unwrap_or("");
                if ty != "unix" {
                    return Err(DomainXmlError::unsupported(
                        "tpm/backend/source type",
                        ty,
                        "an external TPM is reached over a UNIX socket: expected unix",
                    ));
                }
                let mode = src.get_attr("mode").unwrap_or("connect");
                if mode != "connect" {
                    return Err(DomainXmlError::unsupported(
                        "tpm/backend/source mode",
                        mode,
                        "QEMU connects to an external TPM: expected connect",
                    ));
                }
                Some(PathBuf::from(src.req_attr("path")?))
            }
        };
        Ok(Tpm {
            model: model.to_owned(),
            backend: backend.to_owned(),
            version: b.get_attr("version").map(str::to_owned),
            device: b
                .first("device")
                .and_then(|x| x.get_attr("path"))
                .map(PathBuf::from),
            socket,
            persistent_state: yes_no(b, "persistent_state")?,
        })
    }

    pub(super) fn to_element(&self) -> Element {
        let mut b = Element::new("backend")
            .attr("type", &self.backend)
            .attr_opt("version", self.version.as_deref())
            .attr_opt("persistent_state", self.persistent_state.map(yn));
        if let Some(p) = &self.device {
            b.push(Element::new("device").attr("path", path_text(p)));
        }
        if let Some(p) = &self.socket {
            b.push(
                Element::new("source")
                    .attr("type", "unix")
                    .attr("mode", "connect")
                    .attr("path", path_text(p)),
            );
        }
        Element::new("tpm").attr("model", &self.model).child(b)
    }
}

/// `<hub type='usb'>`: a USB hub, on the port its `<address type='usb'>` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hub {
    pub address: Option<Address>,
}

impl Hub {
    pub(super) fn parse(c: &Element) -> Result<Hub> {
        Ok(Hub {
            address: addr_of(c)?,
        })
    }

    pub(super) fn to_element(&self) -> Element {
        let mut e = Element::new("hub").attr("type", "usb");
        push_addr(&mut e, &self.address);
        e
    }
}

/// `<panic model='isa'>`: the pvpanic ISA device (at its `<address type='isa' iobase>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Panic {
    pub model: Option<String>,
    pub address: Option<Address>,
}

impl Panic {
    pub(super) fn parse(c: &Element) -> Result<Panic> {
        Ok(Panic {
            model: c.get_attr("model").map(str::to_owned),
            address: addr_of(c)?,
        })
    }

    pub(super) fn to_element(&self) -> Element {
        let mut e = Element::new("panic").attr_opt("model", self.model.as_deref());
        push_addr(&mut e, &self.address);
        e
    }
}
