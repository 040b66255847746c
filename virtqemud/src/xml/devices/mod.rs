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

use crate::caps::DefaultCaps;
use std::collections::BTreeSet;
use std::path::PathBuf;

use common::xml::Element;

use super::{invalid, DomainXmlError, Result};

use address::{addr_of, parse_num, push_addr};
pub use address::{Address, PciAddr};
pub use chardev::{Chardev, ChardevSource};
pub use controller::{scsi_device, usb_device, Controller, PCI_BRIDGES};
#[cfg(test)]
pub(crate) use disk::disk_index;
pub(crate) use disk::network_source;
pub use disk::{Disk, DiskBus, DiskDevice, DiskDriver, DiskSource, NetHost};
pub use graphics::{Audio, Graphics, GraphicsKind, Redirdev, Sound, Video};
pub use hostdev::Hostdev;
pub(crate) use interface::check_ifname;
pub use interface::{Interface, InterfaceKind, Mac, SocketNet};
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
        .filter(|c| !handled.contains(&c.name.as_str()) || user_alias(c))
        .cloned()
        .collect()
}

/// An `<alias name='ua-...'>`: a name the user gave the device, which libvirt keeps
/// in the definition (other aliases are its own, made again at start).
pub(crate) fn user_alias(c: &Element) -> bool {
    c.name == "alias" && c.get_attr("name").is_some_and(|n| n.starts_with("ua-"))
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
    pub parallels: Vec<Chardev>,
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
const UNTYPED_CHARDEVS: &[&str] = &["stdio", "spiceport", "dbus", "nmdm"];

/// A device of a kind libvirt defines but this model does not type (graphics `sdl`,
/// hostdev `usb`, interface `hostdev`, chardev `spiceport`, ...): it is defined and written
/// back verbatim in [`Devices::other`], and the command line refuses it by name at
/// start. Values libvirt itself does not know stay errors of the typed parsers.
fn untyped_kind(c: &Element) -> bool {
    let ty = c.get_attr("type").unwrap_or("");
    match c.name.as_str() {
        "graphics" => matches!(ty, "sdl" | "egl-headless" | "dbus" | "rdp" | "desktop"),
        "hostdev" => {
            c.get_attr("mode").unwrap_or("subsystem") != "subsystem"
                || matches!(ty, "usb" | "scsi" | "scsi_host" | "mdev")
        }
        "interface" => matches!(ty, "hostdev" | "vdpa" | "null" | "vds" | "internal"),
        "serial" | "console" | "channel" | "parallel" => UNTYPED_CHARDEVS.contains(&ty),
        "input" => matches!(ty, "passthrough" | "evdev"),
        "rng" => c
            .first("backend")
            .and_then(|b| b.get_attr("model"))
            .is_some_and(|m| m == "egd"),
        _ => false,
    }
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
        "serial" | "console" | "parallel" => Chardev::parse(c)?.to_element(&c.name),
        "channel" => Chardev::parse_channel(c)?.to_element("channel"),
        "redirdev" if matches!(c.get_attr("type"), Some("spicevmc" | "tcp" | "unix")) => {
            Redirdev::parse(c)?.to_element()
        }
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
    let chardev = matches!(
        c.name.as_str(),
        "serial" | "console" | "channel" | "parallel"
    );
    // `<address type='pci'/>`: a PCI address to be picked, which the typed model
    // writes once it is.
    let empty_pci_address = |p: &str| p == "address" && matches!(addr_of(c), Ok(None));
    // `<protocol type='raw'/>` on a non-TCP socket: what it carries anyway.
    let raw_protocol = |p: &str| {
        p == "protocol"
            && c.get_attr("type") != Some("tcp")
            && c.first("protocol").and_then(|x| x.get_attr("type")) == Some("raw")
    };
    let excused = |p: &str| {
        vfio(p)
            || empty_pci_address(p)
            || raw_protocol(p)
            // The pty a running guest got, in live XML; a new one is made at start.
            || (chardev && live_pty_path(p))
            // A listening UNIX socket without a path: made at start, not written.
            || (chardev && p == "source" && c.get_attr("type") == Some("unix")
                && c.first("source").is_some_and(|s| {
                    s.get_attr("path").is_none() && s.get_attr("mode").unwrap_or("bind") == "bind"
                }))
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
            if untyped_kind(c) || dropped_child(c)?.is_some() {
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
                "parallel" => d.parallels.push(Chardev::parse(c)?),
                "channel" => d.channels.push(Chardev::parse_channel(c)?),
                "input" => d.inputs.push(Input::parse(c)?),
                "graphics" => d.graphics.push(Graphics::parse(c)?),
                // Redirdevs other than SPICE's stay in `other`, refused at start.
                "audio" if c.get_attr("type").is_some() => {
                    let a = Audio::parse(c, &d.audios)?;
                    d.audios.push(a)
                }
                "redirdev"
                    if c.get_attr("bus").unwrap_or("usb") == "usb"
                        && matches!(c.get_attr("type"), Some("spicevmc" | "tcp" | "unix")) =>
                {
                    d.redirdevs.push(Redirdev::parse(c)?)
                }
                "video" => d.videos.push(Video::parse(c)?),
                "sound" => d.sounds.push(Sound::parse(c)?),
                "rng" => d.rngs.push(Rng::parse(c)?),
                "memballoon" => d.memballoon = Some(Memballoon::parse(c)?),
                "watchdog" => d.watchdogs.push(Watchdog::parse(c)?),
                "hub" if c.get_attr("type") == Some("usb") => d.hubs.push(Hub::parse(c)?),
                "panic"
                    if matches!(
                        c.get_attr("model"),
                        None | Some("isa" | "hyperv" | "pvpanic")
                    ) =>
                {
                    d.panics.push(Panic::parse(c)?)
                }
                "tpm" => d.tpms.push(Tpm::parse(c)?),
                "hostdev" => d.hostdevs.push(Hostdev::parse(c)?),
                _ => d.other.push(c.clone()),
            }
        }
        d.number_controllers()?;
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
        for s in &self.parallels {
            el.push(s.to_element("parallel"));
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

    pub(crate) fn fill_defaults(&mut self, q35: bool, qemu: &DefaultCaps) -> Result<()> {
        self.fill_disk_buses(q35)?;
        self.add_machine_controllers(q35, qemu);
        self.add_implicit_controllers(q35)?;
        // libvirt's qemuDomainDeviceDiskDefPostParse: QEMU's driver, raw unless said
        // otherwise (a volume's format is its pool's business).
        for d in &mut self.disks {
            d.driver.name.get_or_insert_with(|| "qemu".to_owned());
            if d.source_type != "volume" {
                d.driver.format.get_or_insert_with(|| "raw".to_owned());
            }
        }
        // A serial console without a serial port: libvirt adds the port it stands for
        // (virDomainDefAddConsoleCompat), the same chardev.
        if let Some(c) = self.consoles.first().filter(|c| {
            self.serials.is_empty() && c.target_type.as_deref().is_none_or(|t| t == "serial")
        }) {
            let mut serial = c.clone();
            serial.target_type = Some("isa-serial".into());
            serial.target_port = Some(0);
            serial.target_model = None;
            self.serials.push(serial);
        }
        // Console of a guest with a serial port: libvirt makes it the serial target.
        for (i, s) in self.serials.iter_mut().enumerate() {
            s.target_port.get_or_insert(i as u32);
            s.target_type.get_or_insert_with(|| "isa-serial".into());
            // libvirt names the device of a serial port in <target><model>.
            if let Some(m) = s.target_type.as_deref().and_then(serial_model) {
                s.target_model.get_or_insert_with(|| m.into());
            }
        }
        // The first console is the serial port's (or a virtio console); libvirt's
        // further consoles are virtio consoles numbered by their place.
        for (i, c) in self.consoles.iter_mut().enumerate() {
            c.target_type
                .get_or_insert_with(|| if i == 0 { "serial" } else { "virtio" }.into());
            c.target_port.get_or_insert(i as u32);
        }
        for (i, p) in self.parallels.iter_mut().enumerate() {
            p.target_port.get_or_insert(i as u32);
        }
        for c in &mut self.channels {
            c.target_type.get_or_insert_with(|| "virtio".into());
        }
        self.assign_channel_ports();
        self.fill_untyped_defaults()?;
        // libvirt's default NIC model on x86 (qemuDomainDefaultNetModel) is rtl8139,
        // and it writes it down; a vDPA NIC can only be virtio.
        for i in &mut self.interfaces {
            i.mac.get_or_insert_with(Mac::random);
            i.model.get_or_insert_with(|| "rtl8139".into());
            // libvirt knows its model names in any case and writes its own spelling.
            if let Some(m) = i.model.as_mut() {
                if let Some(k) = NET_MODELS.iter().find(|k| k.eq_ignore_ascii_case(m)) {
                    *m = (*k).to_owned();
                }
            }
        }
        for e in self.other.iter_mut().filter(|e| {
            e.name == "interface"
                && e.get_attr("type") == Some("vdpa")
                && e.first("model").is_none()
        }) {
            e.push(common::xml::Element::new("model").attr("type", "virtio"));
        }
        // Two NICs may share a MAC address: libvirt defines such a domain (the
        // guest decides what to make of it).
        if self.memballoon.is_none() && !self.other.iter().any(|e| e.name == "memballoon") {
            self.memballoon = Some(Memballoon {
                model: "virtio".into(),
                stats_period: None,
                address: None,
                driver: None,
            });
        }
        let any_graphics =
            !self.graphics.is_empty() || self.other.iter().any(|e| e.name == "graphics");
        if any_graphics && self.videos.is_empty() && !self.other.iter().any(|e| e.name == "video") {
            self.videos.push(Video::new("cirrus"));
        }
        for v in &mut self.videos {
            v.fill_defaults();
        }
        // libvirt keeps an automatic VNC port as port='-1'. A SPICE with neither port
        // nor autoport listens nowhere (virDomainDefPostParseGraphics).
        for g in &mut self.graphics {
            if g.kind == GraphicsKind::Vnc && g.autoport {
                g.port = Some(-1);
            }
            let no_port = g.port.is_none_or(|p| p <= 0) && g.tls_port.is_none_or(|p| p <= 0);
            if g.kind == GraphicsKind::Spice && g.listen_socket.is_none() && !g.autoport && no_port
            {
                g.listen_none = true;
                g.listen = None;
            }
        }
        // The video written primary='yes' is libvirt's first one.
        if let Some(i) = self.videos.iter().position(|v| v.primary) {
            let v = self.videos.remove(i);
            self.videos.insert(0, v);
            for v in &mut self.videos {
                v.primary = false;
            }
        }
        if let Some(v) = self.videos.first_mut().filter(|v| v.model != "none") {
            v.primary = true;
        } else if self.videos.is_empty() {
            // A video kept whole (for a child the model does not type) is libvirt's
            // primary one all the same.
            let model = (self.other.iter_mut())
                .find(|e| e.name == "video")
                .and_then(|v| {
                    v.children.iter_mut().find_map(|c| match c {
                        common::xml::Node::Element(m) if m.name == "model" => Some(m),
                        _ => None,
                    })
                });
            if let Some(m) = model
                .filter(|m| m.get_attr("type") != Some("none") && m.get_attr("primary").is_none())
            {
                m.attrs.push(("primary".into(), "yes".into()));
            }
        }
        self.add_default_audio();
        self.add_implicit_inputs();
        self.assign_pci(q35, qemu.pcie_root_port)
    }

    /// The controllers libvirt gives every PC machine (qemuDomainDefAddDefaultDevices):
    /// a USB controller (PIIX3's UHCI at 00:01.2 on i440fx; on q35 the first QEMU has
    /// of qemu-xhci, nec-xhci and ICH9's USB2 set, or none) unless one is written
    /// (`model='none'` for none), the IDE controller of i440fx's PIIX3 (00:01.1) for IDE
    /// disks, and q35's built-in AHCI (00:1f.2). USB controllers written without a model
    /// are PIIX3's UHCI, as in libvirt, also on q35.
    fn add_machine_controllers(&mut self, q35: bool, qemu: &DefaultCaps) {
        let usb_model = match () {
            _ if !q35 => Some("piix3-uhci"),
            _ if qemu.qemu_xhci => Some("qemu-xhci"),
            _ if qemu.nec_usb_xhci => Some("nec-xhci"),
            _ if qemu.ich9_usb_ehci1 => Some("ich9-ehci1"),
            _ => None,
        };
        if let Some(m) = usb_model.filter(|_| !self.controllers.iter().any(|c| c.kind == "usb")) {
            self.controllers.push(Controller::new("usb", 0, Some(m)));
            // virDomainDefAddUSBController: EHCI comes with its three companions.
            if m == "ich9-ehci1" {
                for (n, port) in [(1, 0), (2, 2), (3, 4)] {
                    let mut c = Controller::new("usb", 0, Some(&format!("ich9-uhci{n}")));
                    c.master_startport = Some(port);
                    self.controllers.push(c);
                }
            }
        }
        let ide = !q35 && self.disks.iter().any(|d| d.bus == Some(DiskBus::Ide));
        if ide && !self.controllers.iter().any(|c| c.kind == "ide") {
            self.controllers.push(Controller::new("ide", 0, None));
        }
        // SCSI host devices sit on a SCSI controller, as SCSI disks do.
        let scsi_hostdev = self
            .other
            .iter()
            .any(|e| e.name == "hostdev" && e.get_attr("type") == Some("scsi"));
        if scsi_hostdev && !self.controllers.iter().any(|c| c.kind == "scsi") {
            self.controllers
                .push(Controller::new("scsi", 0, Some(controller::SCSI_DEFAULT)));
        }
        // Smart cards sit on a CCID controller (a USB device).
        let smartcard = self.other.iter().any(|e| e.name == "smartcard");
        if smartcard && !self.controllers.iter().any(|c| c.kind == "ccid") {
            self.controllers.push(Controller::new("ccid", 0, None));
        }
        // Virtio consoles sit on a virtio-serial controller, as channels do.
        let virtio_console = self
            .consoles
            .iter()
            .any(|c| c.target_type.as_deref() == Some("virtio"));
        if virtio_console && !self.controllers.iter().any(|c| c.kind == "virtio-serial") {
            self.controllers
                .push(Controller::new("virtio-serial", 0, None));
        }
        if q35
            && !self
                .controllers
                .iter()
                .any(|c| c.kind == "sata" && c.index == 0)
        {
            self.controllers.push(Controller::new("sata", 0, None));
        }
        let fixed = |slot, function| {
            Some(Address::Pci(PciAddr {
                domain: 0,
                bus: 0,
                slot,
                function,
                multi: None,
            }))
        };
        for c in &mut self.controllers {
            // qemuDomainControllerDefPostParse: a USB controller written without a
            // model is PIIX3's UHCI on x86, whatever the machine.
            if c.kind == "usb" && c.model.is_none() && qemu.piix3_usb_uhci {
                c.model = Some("piix3-uhci".to_owned());
            }
            if c.index != 0 || c.address.is_some() {
                continue;
            }
            c.address = match (c.kind.as_str(), c.model.as_deref(), q35) {
                ("usb", Some("piix3-uhci"), false) => fixed(1, 2),
                ("ide", _, false) => fixed(1, 1),
                ("sata", _, true) => fixed(0x1f, 2),
                _ => None,
            };
        }
    }

    /// libvirt's virtio-serial addresses of channels (qemuDomainAssignVirtioSerialAddresses):
    /// the channel's controller (0 unless its address names one), the next free port
    /// from 1; virtio consoles hold ports 0.. of controller 0. The command line reads
    /// them back (`channel_places`).
    fn assign_channel_ports(&mut self) {
        fn num(e: &Element, k: &str) -> Option<u32> {
            let v = e.get_attr(k)?;
            match v.strip_prefix("0x") {
                Some(h) => u32::from_str_radix(h, 16).ok(),
                None => v.parse().ok(),
            }
        }
        let is_addr = |e: &Element| {
            e.name == "address"
                && e.get_attr("type") == Some("virtio-serial")
                && e.get_attr("bus").unwrap_or("0") == "0"
        };
        let consoles = self
            .consoles
            .iter()
            .filter(|c| c.target_type.as_deref() == Some("virtio"))
            .count() as u32;
        let mut used: BTreeSet<(u32, u32)> = (0..consoles).map(|p| (0, p)).collect();
        for ch in self.channels.iter().filter(|c| !c.is_guestfwd()) {
            if let Some(a) = ch.unhandled.iter().find(|e| is_addr(e)) {
                if let Some(p) = num(a, "port") {
                    used.insert((num(a, "controller").unwrap_or(0), p));
                }
            }
        }
        for ch in self.channels.iter_mut().filter(|c| !c.is_guestfwd()) {
            let at = ch.unhandled.iter().position(|e| e.name == "address");
            let controller = match at.map(|i| &ch.unhandled[i]) {
                Some(a) if !is_addr(a) || num(a, "port").is_some() => continue,
                Some(a) => num(a, "controller").unwrap_or(0),
                None => 0,
            };
            let mut port = 1;
            while used.contains(&(controller, port)) {
                port += 1;
            }
            used.insert((controller, port));
            let el = Element::new("address")
                .attr("type", "virtio-serial")
                .attr("controller", controller)
                .attr("bus", 0)
                .attr("port", port);
            match at {
                Some(i) => ch.unhandled[i] = el,
                None => ch.unhandled.push(el),
            }
        }
    }

    /// The defaults libvirt writes into devices this model keeps whole: a vsock's
    /// virtio model, a filesystem's `accessmode='passthrough'` (not for a virtiofs
    /// on a given socket) and its modes as four octal digits; an x86 panic device is
    /// ISA's; a USB redirection filter's device version as libvirt writes it.
    fn fill_untyped_defaults(&mut self) -> Result<()> {
        for p in &mut self.panics {
            p.model.get_or_insert_with(|| "isa".to_owned());
        }
        let mut ccid_slots: BTreeSet<(String, String)> = self
            .other
            .iter()
            .filter(|e| e.name == "smartcard")
            .filter_map(|e| e.first("address"))
            .filter(|a| a.get_attr("type") == Some("ccid"))
            .map(|a| {
                let v = |k| a.get_attr(k).unwrap_or("0").to_owned();
                (v("controller"), v("slot"))
            })
            .collect();
        // DIMMs take the first free memory slot (qemuDomainAssignMemorySlots).
        let dimm = |e: &Element| {
            e.name == "memory" && matches!(e.get_attr("model"), Some("dimm" | "nvdimm"))
        };
        let mut slots: BTreeSet<u32> = self
            .other
            .iter()
            .filter(|e| dimm(e))
            .filter_map(|e| e.first("address"))
            .filter_map(|a| a.get_attr("slot").and_then(|s| s.parse().ok()))
            .collect();
        for e in &mut self.other {
            let has = |e: &Element, k: &str| e.get_attr(k).is_some();
            if dimm(e) && e.first("address").is_none() {
                let slot = (0u32..).find(|s| !slots.contains(s)).unwrap_or(0);
                slots.insert(slot);
                e.push(
                    Element::new("address")
                        .attr("type", "dimm")
                        .attr("slot", slot),
                );
                continue;
            }
            match e.name.as_str() {
                "shmem" => shmem_defaults(e),
                // A USB redirection filter's -1s are its wildcards, which libvirt
                // writes by leaving the attribute out.
                "redirfilter" => {
                    for c in e.children.iter_mut() {
                        if let common::xml::Node::Element(u) = c {
                            u.attrs.retain(|(k, v)| k == "allow" || v != "-1");
                            for (k, v) in u.attrs.iter_mut().filter(|(k, _)| k == "version") {
                                *v = usb_version(v).ok_or_else(|| {
                                    invalid(
                                        "redirfilter/usbdev",
                                        k,
                                        v,
                                        "expected a USB version MAJOR.MINOR (each below 100)",
                                    )
                                })?;
                            }
                        }
                    }
                }
                // A smart card's place on its CCID controller (the first free slot).
                "smartcard" if e.first("address").is_none() => {
                    let slot = (0u32..)
                        .find(|s| !ccid_slots.contains(&("0".to_owned(), s.to_string())))
                        .unwrap_or(0);
                    ccid_slots.insert(("0".to_owned(), slot.to_string()));
                    e.push(
                        Element::new("address")
                            .attr("type", "ccid")
                            .attr("controller", 0)
                            .attr("slot", slot),
                    );
                }
                // A serial port kept whole (a spiceport, ...) is ISA's as typed ones.
                "serial" => {
                    if e.first("target").is_none() {
                        e.push(Element::new("target"));
                    }
                    for c in e.children.iter_mut() {
                        if let common::xml::Node::Element(t) = c {
                            if t.name != "target" {
                                continue;
                            }
                            if t.get_attr("type").is_none() {
                                t.attrs.push(("type".into(), "isa-serial".into()));
                            }
                            if t.get_attr("port").is_none() {
                                t.attrs.push(("port".into(), "0".into()));
                            }
                            let m = t.get_attr("type").and_then(serial_model);
                            if let (Some(m), None) = (m, t.first("model")) {
                                t.push(Element::new("model").attr("name", m));
                            }
                        }
                    }
                }
                // An iSCSI host device's target without a LUN is LUN 0.
                "hostdev" if e.get_attr("type") == Some("scsi") => {
                    for c in e.children.iter_mut() {
                        if let common::xml::Node::Element(src) = c {
                            if src.name == "source" && src.get_attr("protocol") == Some("iscsi") {
                                for (k, v) in src.attrs.iter_mut() {
                                    if k == "name" && !v.contains('/') {
                                        v.push_str("/0");
                                    }
                                }
                            }
                        }
                    }
                }
                // Mediated devices are never managed by libvirt.
                "hostdev" if e.get_attr("type") == Some("mdev") && !has(e, "managed") => {
                    e.attrs.push(("managed".into(), "no".into()))
                }
                "vsock" if !has(e, "model") => e.attrs.push(("model".into(), "virtio".into())),
                "filesystem" => {
                    let socket = e
                        .first("source")
                        .is_some_and(|s| s.get_attr("socket").is_some());
                    let virtiofs =
                        e.first("driver").and_then(|d| d.get_attr("type")) == Some("virtiofs");
                    if !(has(e, "accessmode") || (virtiofs && socket)) {
                        e.attrs.push(("accessmode".into(), "passthrough".into()));
                    }
                    for (k, v) in e.attrs.iter_mut() {
                        if k == "fmode" || k == "dmode" {
                            if let Ok(m) = u32::from_str_radix(v, 8) {
                                *v = format!("{m:04o}");
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// libvirt's implicit PS/2 mouse and keyboard of every x86 machine (QEMU has them
    /// built in, so they put nothing on the command line).
    fn add_implicit_inputs(&mut self) {
        for kind in ["mouse", "keyboard"] {
            if !self.inputs.iter().any(|i| i.kind == kind && i.bus == "ps2") {
                self.inputs.push(Input {
                    kind: kind.to_owned(),
                    bus: "ps2".to_owned(),
                    address: None,
                    driver: None,
                });
            }
        }
    }

    /// libvirt's default audio backend (qemuDomainDefAddDefaultAudioBackend) when
    /// none is written: SPICE's with SPICE graphics, SDL's with SDL, else `none`
    /// (VNC, no graphics; qemu.conf's `vnc_allow_host_audio` is not read here). Other
    /// graphics alone (egl-headless, dbus) get none.
    fn add_default_audio(&mut self) {
        if !self.audios.is_empty() {
            return;
        }
        let kinds = self.graphics.iter().map(|g| g.kind.as_str()).chain(
            self.other
                .iter()
                .filter(|e| e.name == "graphics")
                .filter_map(|e| e.get_attr("type")),
        );
        // (add, passthrough, backend) as qemuDomainDefSuggestDefaultAudioBackend: the
        // last graphics decides; SDL passes the host's audio through, which libvirt
        // only configures from its QEMU_AUDIO_DRV environment (not read here), so it
        // gets none written.
        let (mut add, mut passthrough, mut backend) = (false, false, "none");
        let mut any = false;
        for k in kinds {
            any = true;
            match k {
                "vnc" => (add, passthrough, backend) = (true, false, "none"),
                "spice" => (add, passthrough, backend) = (true, false, "spice"),
                "sdl" => (add, passthrough) = (true, true),
                _ => {}
            }
        }
        if !any {
            (add, passthrough, backend) = (true, false, "none");
        }
        if add && !passthrough {
            self.audios.push(Audio::new(1, backend));
        }
    }
}

/// The device libvirt names in a serial port's `<target><model>` for its target type.
fn serial_model(target: &str) -> Option<&'static str> {
    Some(match target {
        "isa-serial" => "isa-serial",
        "usb-serial" => "usb-serial",
        "pci-serial" => "pci-serial",
        "isa-debug" => "isa-debugcon",
        _ => return None,
    })
}

/// The NIC models libvirt 9.0 knows by name (virDomainNetModel).
const NET_MODELS: &[&str] = &[
    "netfront",
    "rtl8139",
    "virtio",
    "e1000",
    "e1000e",
    "virtio-transitional",
    "virtio-non-transitional",
    "usb-net",
    "spapr-vlan",
    "lan9118",
    "scm91c111",
    "vlance",
    "vmxnet",
    "vmxnet2",
    "vmxnet3",
    "Am79C970A",
    "Am79C973",
    "82540EM",
    "82545EM",
    "82543GC",
];

/// qemuDomainShmemDefPostParse: the `ivshmem` model unless written, 4 MiB for the
/// models that have a size (written in MiB, as libvirt does), and MSI with
/// `ioeventfd='on'` for a plain or doorbell device on a server.
fn shmem_defaults(e: &mut Element) {
    use common::xml::Node;
    if e.first("model").is_none() {
        e.push(Element::new("model").attr("type", "ivshmem"));
    }
    let model = e
        .first("model")
        .and_then(|m| m.get_attr("type"))
        .unwrap_or("ivshmem")
        .to_owned();
    if model != "ivshmem-doorbell" && e.first("size").is_none() {
        e.push(Element::with_text("size", "4").attr("unit", "M"));
    }
    for c in e.children.iter_mut() {
        if let Node::Element(sz) = c {
            if sz.name != "size" {
                continue;
            }
            let unit = sz.get_attr("unit").unwrap_or("b");
            if let (Ok(n), Ok(bytes)) = (
                sz.text().trim().parse::<u64>(),
                super::parse_memory_bytes(unit),
            ) {
                *sz = Element::with_text("size", (n.saturating_mul(bytes) >> 20).to_string())
                    .attr("unit", "M");
            }
        }
    }
    if model != "ivshmem" && e.first("server").is_some() {
        if e.first("msi").is_none() {
            e.push(Element::new("msi"));
        }
        for c in e.children.iter_mut() {
            if let Node::Element(m) = c {
                if m.name == "msi" && m.get_attr("ioeventfd").is_none() {
                    m.attrs.push(("ioeventfd".into(), "on".into()));
                }
            }
        }
    }
}

/// A USB device version as libvirt writes it (virDomainRedirFilterUSBVersionHelper):
/// `J.M` is `J.M0`, not `J.0M`, and the minor part has two digits.
pub(crate) fn usb_version(v: &str) -> Option<String> {
    let (major, minor) = v.split_once('.')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(major) || !digits(minor) {
        return None;
    }
    let (j, mut m): (u32, u32) = (major.parse().ok()?, minor.parse().ok()?);
    if j >= 100 || m >= 100 {
        return None;
    }
    if minor.len() == 1 {
        m *= 10;
    }
    Some(format!("{j}.{m:02}"))
}
