//! `<devices>`: typed devices, PCI addressing and MAC defaults. Each device family
//! has its own file (parsing, writing back, its defaults); this file holds the
//! `Devices` list, the dispatcher from element name to family and the defaults pass.

mod address;
mod chardev;
mod controller;
mod disk;
mod graphics;
mod hostdev;
mod interface;
mod misc;
mod pci;

use std::collections::BTreeSet;
use std::path::PathBuf;

use common::xml::Element;

use super::{invalid, DomainXmlError, Result};

use address::{addr_of, parse_num, push_addr};
pub use address::{Address, PciAddr};
pub use chardev::{Chardev, ChardevSource};
pub use controller::{scsi_device, usb_device, Controller, PCI_BRIDGES};
pub use disk::{Disk, DiskBus, DiskDevice, DiskDriver, DiskSource, NetHost};
pub use graphics::{Audio, Graphics, GraphicsKind, Redirdev, Sound, Video};
pub use hostdev::Hostdev;
pub(crate) use interface::check_ifname;
pub use interface::{Interface, InterfaceKind, Mac};
pub use misc::{Hub, Input, Memballoon, Panic, Rng, Tpm, Watchdog};

fn boot_of(el: &Element) -> Result<Option<u32>> {
    match el.first("boot") {
        None => Ok(None),
        Some(b) => match b.parse_attr::<u32>("order")? {
            Some(0) | None => Err(invalid(
                "boot",
                "attribute 'order'",
                b.get_attr("order").unwrap_or(""),
                "must be 1 or more",
            )),
            o => Ok(o),
        },
    }
}

fn path_text(p: &std::path::Path) -> String {
    p.display().to_string()
}

/// The element children of `el` not named in `handled`: kept to be written back, and
/// refused at start, so nothing in a definition is silently ignored.
fn unhandled(el: &Element, handled: &[&str]) -> Vec<Element> {
    el.elements()
        .filter(|c| !handled.contains(&c.name.as_str()))
        .cloned()
        .collect()
}

/// Children libvirt writes into live XML that carry nothing to honour (it makes them
/// again): dropped on input.
const REGENERATED: &[&str] = &["alias", "backingStore"];

/// `<devices>`
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Devices {
    pub emulator: Option<PathBuf>,
    pub disks: Vec<Disk>,
    pub controllers: Vec<Controller>,
    pub interfaces: Vec<Interface>,
    pub serials: Vec<Chardev>,
    pub consoles: Vec<Chardev>,
    pub channels: Vec<Chardev>,
    pub inputs: Vec<Input>,
    pub graphics: Vec<Graphics>,
    pub videos: Vec<Video>,
    pub sounds: Vec<Sound>,
    pub audios: Vec<Audio>,
    pub redirdevs: Vec<Redirdev>,
    pub rngs: Vec<Rng>,
    pub memballoon: Option<Memballoon>,
    pub watchdogs: Vec<Watchdog>,
    pub hubs: Vec<Hub>,
    pub panics: Vec<Panic>,
    pub tpms: Vec<Tpm>,
    pub hostdevs: Vec<Hostdev>,
    /// Devices this model does not type, kept verbatim and NOT given to QEMU; the
    /// command line refuses a domain that has any (see `command_line::build`).
    pub other: Vec<Element>,
}

fn model_attr(el: &Element, element: &str, allowed: &[&str], default: &str) -> Result<String> {
    let m = el
        .first("model")
        .and_then(|m| m.get_attr("type"))
        .or_else(|| el.get_attr("model"))
        .unwrap_or(default);
    if !allowed.contains(&m) {
        return Err(DomainXmlError::unsupported(
            element,
            m,
            format!("expected one of {}", allowed.join(", ")),
        ));
    }
    Ok(m.to_owned())
}

/// Chardev source types libvirt knows that this model does not type.
const UNTYPED_CHARDEVS: &[&str] = &["stdio", "vc", "spiceport", "dbus", "nmdm", "qemu-vdagent"];

/// A device of a kind libvirt defines but this model does not type (graphics `sdl`,
/// hostdev `usb`, interface `direct`, chardev `tcp`, ...): it is defined and written
/// back verbatim in [`Devices::other`], and the command line refuses it by name at
/// start. Values libvirt itself does not know stay errors of the typed parsers.
fn untyped_kind(c: &Element, d: &Devices) -> bool {
    let ty = c.get_attr("type").unwrap_or("");
    match c.name.as_str() {
        "graphics" => matches!(ty, "sdl" | "egl-headless" | "dbus" | "rdp" | "desktop"),
        "hostdev" => {
            c.get_attr("mode").unwrap_or("subsystem") != "subsystem"
                || matches!(ty, "usb" | "scsi" | "scsi_host" | "mdev")
        }
        "interface" => matches!(
            ty,
            "direct"
                | "vhostuser"
                | "server"
                | "client"
                | "mcast"
                | "udp"
                | "hostdev"
                | "vdpa"
                | "null"
                | "vds"
                | "internal"
        ),
        "serial" | "console" | "channel" | "parallel" => {
            UNTYPED_CHARDEVS.contains(&ty)
                // A second console, unless it is the first virtio one: libvirt's dumpxml
                // of a guest with a serial port and a virtio console lists both.
                || (c.name == "console" && !d.consoles.is_empty() && !first_virtio_console(c, d))
                || (c.name == "channel"
                    && c.first("target").and_then(|t| t.get_attr("type")) == Some("guestfwd"))
        }
        "input" => matches!(ty, "passthrough" | "evdev"),
        "rng" => c
            .first("backend")
            .and_then(|b| b.get_attr("model"))
            .is_some_and(|m| matches!(m, "egd" | "builtin")),
        _ => false,
    }
}

/// `c` is a virtio console and none of `d`'s consoles is one yet.
fn first_virtio_console(c: &Element, d: &Devices) -> bool {
    c.first("target").and_then(|t| t.get_attr("type")) == Some("virtio")
        && !d
            .consoles
            .iter()
            .any(|x| x.target_type.as_deref() == Some("virtio"))
}

/// The child element paths (`listen`, `model/acceleration`) of `el`, without the
/// children libvirt makes again.
fn child_paths(el: &Element) -> BTreeSet<String> {
    fn walk(el: &Element, prefix: &str, out: &mut BTreeSet<String>) {
        for c in el
            .elements()
            .filter(|c| !REGENERATED.contains(&c.name.as_str()))
        {
            let p = if prefix.is_empty() {
                c.name.clone()
            } else {
                format!("{prefix}/{}", c.name)
            };
            walk(c, &p, out);
            out.insert(p);
        }
    }
    let mut out = BTreeSet::new();
    walk(el, "", &mut out);
    out
}

/// The device as its typed model writes it back; `None` for the kinds that keep what
/// they do not type themselves (disks, NICs, controllers) or are not typed at all.
fn typed_form(c: &Element) -> Result<Option<Element>> {
    Ok(Some(match c.name.as_str() {
        "graphics" => Graphics::parse(c)?.to_element(true),
        "video" => Video::parse(c)?.to_element(),
        "sound" => Sound::parse(c)?.to_element(),
        "input" => Input::parse(c)?.to_element(),
        "rng" => Rng::parse(c)?.to_element(),
        "memballoon" => Memballoon::parse(c)?.to_element(),
        "watchdog" => Watchdog::parse(c)?.to_element(),
        "hub" => Hub::parse(c)?.to_element(),
        "panic" => Panic::parse(c)?.to_element(),
        "tpm" => Tpm::parse(c)?.to_element(),
        "hostdev" => Hostdev::parse(c)?.to_element(),
        "serial" | "console" => Chardev::parse(c)?.to_element(&c.name),
        "channel" => Chardev::parse_channel(c)?.to_element("channel"),
        _ => return Ok(None),
    }))
}

/// The first child (path) of a device that its typed model would drop: such a device
/// is kept verbatim instead and refused at start by that name, so that nothing in a
/// definition is silently ignored. `<driver name='vfio'/>` on a PCI hostdev is what
/// runs anyway.
pub fn dropped_child(c: &Element) -> Result<Option<String>> {
    let Some(typed) = typed_form(c)? else {
        return Ok(None);
    };
    let kept = child_paths(&typed);
    let live_pty_path = |p: &str| p == "source" && c.get_attr("type").unwrap_or("pty") == "pty";
    // `<listen type='address'/>` without an address is the default listen address
    // (virt-manager writes it); with one, the typed model writes it back.
    let default_listen = |p: &str| {
        p == "listen"
            && c.elements()
                .filter(|l| l.name == "listen")
                .all(|l| l.get_attr("type").unwrap_or("address") == "address")
    };
    let vfio = |p: &str| {
        c.name == "hostdev"
            && p == "driver"
            && c.first("driver").and_then(|d| d.get_attr("name")) == Some("vfio")
    };
    let chardev = matches!(c.name.as_str(), "serial" | "console" | "channel");
    let excused = |p: &str| {
        vfio(p)
            // The pty a running guest got, in live XML; a new one is made at start.
            || (chardev && live_pty_path(p))
            || (c.name == "graphics" && default_listen(p))
    };
    Ok(child_paths(c)
        .into_iter()
        .find(|p| !kept.contains(p) && !excused(p)))
}

impl Devices {
    pub(crate) fn parse(el: &Element) -> Result<Devices> {
        let mut d = Devices::default();
        for c in el.elements() {
            if untyped_kind(c, &d) || dropped_child(c)?.is_some() {
                d.other.push(c.clone());
                continue;
            }
            match c.name.as_str() {
                "emulator" => d.emulator = Some(PathBuf::from(c.text())),
                "disk" => d.disks.push(Disk::parse(c)?),
                "controller" => d.controllers.push(Controller::parse(c)?),
                "interface" => d.interfaces.push(Interface::parse(c)?),
                "serial" => d.serials.push(Chardev::parse(c)?),
                "console" => d.consoles.push(Chardev::parse(c)?),
                "channel" => d.channels.push(Chardev::parse_channel(c)?),
                "input" => d.inputs.push(Input::parse(c)?),
                "graphics" => d.graphics.push(Graphics::parse(c)?),
                // Other audio backends and redirdevs stay in `other`, refused at start.
                "audio" if matches!(c.get_attr("type"), Some("none" | "spice")) => {
                    let a = Audio::parse(c, &d.audios)?;
                    d.audios.push(a)
                }
                "redirdev"
                    if c.get_attr("bus").unwrap_or("usb") == "usb"
                        && c.get_attr("type") == Some("spicevmc") =>
                {
                    d.redirdevs.push(Redirdev::parse(c)?)
                }
                "video" => d.videos.push(Video::parse(c)?),
                "sound" => d.sounds.push(Sound::parse(c)?),
                "rng" => d.rngs.push(Rng::parse(c)?),
                "memballoon" => d.memballoon = Some(Memballoon::parse(c)?),
                "watchdog" => d.watchdogs.push(Watchdog::parse(c)?),
                "hub" if c.get_attr("type") == Some("usb") => d.hubs.push(Hub::parse(c)?),
                "panic" if matches!(c.get_attr("model"), None | Some("isa")) => {
                    d.panics.push(Panic::parse(c)?)
                }
                "tpm" => d.tpms.push(Tpm::parse(c)?),
                "hostdev" => d.hostdevs.push(Hostdev::parse(c)?),
                _ => d.other.push(c.clone()),
            }
        }
        d.number_controllers()?;
        let virtio = |c: &&Chardev| c.target_type.as_deref() == Some("virtio");
        if d.consoles.iter().filter(virtio).count() > 1
            || d.consoles.iter().filter(|c| !virtio(c)).count() > 1
        {
            return Err(DomainXmlError::unsupported(
                "console",
                "",
                "at most one serial and one virtio console",
            ));
        }
        Ok(d)
    }

    /// `secure`: include graphics passwords (`VIR_DOMAIN_XML_SECURE`, and our files).
    pub(crate) fn to_element(&self, secure: bool) -> Element {
        let mut el = Element::new("devices");
        if let Some(e) = &self.emulator {
            el.push(Element::with_text("emulator", path_text(e)));
        }
        for d in &self.disks {
            el.push(d.to_element());
        }
        for c in &self.controllers {
            el.push(c.to_element());
        }
        for i in &self.interfaces {
            el.push(i.to_element());
        }
        for s in &self.serials {
            el.push(s.to_element("serial"));
        }
        for s in &self.consoles {
            el.push(s.to_element("console"));
        }
        for s in &self.channels {
            el.push(s.to_element("channel"));
        }
        el.children.extend(
            (self.inputs.iter().map(Input::to_element))
                .chain(self.graphics.iter().map(|g| g.to_element(secure)))
                .chain(self.sounds.iter().map(Sound::to_element))
                .chain(self.audios.iter().map(Audio::to_element))
                .chain(self.videos.iter().map(Video::to_element))
                .chain(self.watchdogs.iter().map(Watchdog::to_element))
                .chain(self.hubs.iter().map(Hub::to_element))
                .chain(self.panics.iter().map(Panic::to_element))
                .chain(self.tpms.iter().map(Tpm::to_element))
                .chain(self.hostdevs.iter().map(Hostdev::to_element))
                .chain(self.redirdevs.iter().map(Redirdev::to_element))
                .chain(self.rngs.iter().map(Rng::to_element))
                .chain(self.memballoon.iter().map(Memballoon::to_element))
                .chain(self.other.iter().cloned())
                .map(common::xml::Node::Element),
        );
        el
    }

    pub(crate) fn fill_defaults(&mut self, q35: bool) -> Result<()> {
        self.fill_disk_buses(q35)?;
        self.add_implicit_controllers(q35)?;
        // Console of a guest with a serial port: libvirt makes it the serial target.
        for (i, s) in self.serials.iter_mut().enumerate() {
            s.target_port.get_or_insert(i as u32);
            s.target_type.get_or_insert_with(|| "isa-serial".into());
        }
        for c in &mut self.consoles {
            c.target_type.get_or_insert_with(|| "serial".into());
            c.target_port.get_or_insert(0);
        }
        for c in &mut self.channels {
            c.target_type.get_or_insert_with(|| "virtio".into());
        }
        for i in &mut self.interfaces {
            i.mac.get_or_insert_with(Mac::random);
            i.model.get_or_insert_with(|| "virtio".into());
        }
        let mut macs = BTreeSet::new();
        for i in &self.interfaces {
            if let Some(m) = i.mac {
                if !macs.insert(m.0) {
                    return Err(invalid(
                        "mac",
                        "attribute 'address'",
                        &m.to_string(),
                        "used twice",
                    ));
                }
            }
        }
        if self.memballoon.is_none() {
            self.memballoon = Some(Memballoon {
                model: "virtio".into(),
                stats_period: None,
                address: None,
            });
        }
        if !self.graphics.is_empty() && self.videos.is_empty() {
            self.videos.push(Video {
                model: "vga".into(),
                vram_kib: None,
                heads: None,
                address: None,
            });
        }
        self.assign_pci(q35)
    }
}
