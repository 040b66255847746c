//! Character devices: a `-chardev` backend per serial port, console and channel, and
//! the guest device reading it (`isa-serial`, `virtconsole`, `virtserialport`).

use std::collections::BTreeSet;

use common::xml::Element;

use crate::xml::{Chardev, ChardevSource, Devices, Domain, GraphicsKind};

use super::device::DeviceProps;
use super::{path_opt, qemu_opt_value, unsupported, Argv, LaunchContext, Result};

/// Refuses what a chardev keeps without honouring; `read` says which kept children
/// the command line reads itself (addresses it places the device by).
fn refuse_unhandled(kind: &str, c: &Chardev, read: impl Fn(&Element) -> bool) -> Result<()> {
    match c.unhandled.iter().find(|e| !read(e)) {
        Some(e) => Err(unsupported(
            &format!("{kind}/{}", e.name),
            e.get_attr("type").unwrap_or_default(),
            "not implemented",
        )),
        None => Ok(()),
    }
}

fn address(c: &Chardev) -> Option<&Element> {
    c.unhandled.iter().find(|e| e.name == "address")
}

fn isa_address(e: &Element) -> bool {
    e.name == "address" && e.get_attr("type") == Some("isa")
}

fn virtio_serial_address(e: &Element) -> bool {
    e.name == "address"
        && e.get_attr("type") == Some("virtio-serial")
        && e.get_attr("bus").unwrap_or("0") == "0"
}

/// A number written in decimal or as 0x hex, as libvirt's addresses are.
fn addr_num(e: &Element, key: &str) -> Result<Option<u32>> {
    let Some(v) = e.get_attr(key) else {
        return Ok(None);
    };
    let n = match v.strip_prefix("0x") {
        Some(h) => u32::from_str_radix(h, 16),
        None => v.parse(),
    };
    n.map(Some)
        .map_err(|_| unsupported(&format!("address {key}"), v, "not a number"))
}

/// The (virtio-serial controller, port) of each channel, as libvirt assigns them:
/// explicit addresses first, then the next free port from 1 on the channel's
/// controller (0 unless its address names another). Virtio consoles come first on
/// the command line and take ports 0, 1, ... of controller 0.
fn channel_places(d: &Devices) -> Result<Vec<(u32, u32)>> {
    let controllers: BTreeSet<u32> = d
        .controllers
        .iter()
        .filter(|c| c.kind == "virtio-serial")
        .map(|c| c.index)
        .collect();
    let consoles = d
        .consoles
        .iter()
        .filter(|c| c.target_type.as_deref() == Some("virtio"))
        .count() as u32;
    let mut used: BTreeSet<(u32, u32)> = (0..consoles).map(|p| (0, p)).collect();
    let mut wanted = Vec::new();
    for ch in d.channels.iter().filter(|c| !c.is_guestfwd()) {
        let a = address(ch);
        let controller = match a {
            Some(a) => addr_num(a, "controller")?.unwrap_or(0),
            None => 0,
        };
        if !controllers.contains(&controller) {
            return Err(unsupported(
                "channel/address controller",
                &controller.to_string(),
                "no virtio-serial controller has this index",
            ));
        }
        let port = match a {
            Some(a) => addr_num(a, "port")?,
            None => None,
        };
        if let Some(p) = port {
            if !used.insert((controller, p)) {
                return Err(unsupported(
                    "channel/address port",
                    &p.to_string(),
                    "used twice on one virtio-serial controller",
                ));
            }
        }
        wanted.push((controller, port));
    }
    let mut out = Vec::with_capacity(wanted.len());
    for (controller, port) in wanted {
        let port = match port {
            Some(p) => p,
            None => {
                let mut p = 1;
                while used.contains(&(controller, p)) {
                    p += 1;
                }
                used.insert((controller, p));
                p
            }
        };
        out.push((controller, port));
    }
    Ok(out)
}

pub(super) fn chardevs(a: &mut Argv, dom: &Domain, ctx: &LaunchContext) -> Result<()> {
    let d = &dom.devices;
    for s in &d.serials {
        refuse_unhandled("serial", s, isa_address)?;
    }
    for (i, c) in d.consoles.iter().enumerate() {
        // The first console may repeat its serial port's ISA address.
        refuse_unhandled("console", c, |e| i == 0 && isa_address(e))?;
    }
    for c in &d.channels {
        refuse_unhandled("channel", c, |e| {
            !c.is_guestfwd() && virtio_serial_address(e)
        })?;
    }
    for p in &d.parallels {
        refuse_unhandled("parallel", p, |_| false)?;
    }
    let places = channel_places(d)?;
    let spice = d.graphics.iter().any(|g| g.kind == GraphicsKind::Spice);
    let backend = |id: &str, c: &Chardev| -> Result<String> {
        let mut s = chardev(id, &c.source, ctx, spice)?;
        if let Some((file, append)) = &c.log {
            s.push_str(&format!(",logfile={}", path_opt("chardev log file", file)?));
            s.push_str(if *append == Some(true) {
                ",logappend=on"
            } else {
                ",logappend=off"
            });
        }
        Ok(s)
    };
    for (i, s) in d.serials.iter().enumerate() {
        let id = format!("charserial{i}");
        a.pair("-chardev", backend(&id, s)?);
        a.device(&serial_props(i, s, &id)?)?;
    }
    for (i, p) in d.parallels.iter().enumerate() {
        let id = format!("charparallel{i}");
        a.pair("-chardev", backend(&id, p)?);
        a.device(
            &DeviceProps::new("isa-parallel")
                .str("chardev", id.as_str())
                .str("id", format!("parallel{i}")),
        )?;
    }
    consoles(a, d, &backend)?;
    let mut places = places.into_iter();
    for (i, ch) in d.channels.iter().enumerate() {
        let id = format!("charchannel{i}");
        a.pair("-chardev", backend(&id, ch)?);
        if ch.is_guestfwd() {
            a.pair("-netdev", guestfwd(i, ch, &id)?);
            continue;
        }
        let (controller, port) = places
            .next()
            .ok_or_else(|| unsupported("channel", "", "no virtio-serial port"))?;
        a.device(&channel_props(i, ch, &id, controller, port)?)?;
    }
    Ok(())
}

/// A guestfwd channel: a user-networking netdev of its own (`channelI`, no NIC), whose
/// guest-side `ADDRESS:PORT` leads to the channel's backend, as libvirt writes it.
fn guestfwd(i: usize, ch: &Chardev, chardev: &str) -> Result<String> {
    let (Some(addr), Some(port)) = (ch.target_address, ch.target_port) else {
        return Err(unsupported(
            "channel/target",
            "guestfwd",
            "needs address and port",
        ));
    };
    Ok(format!(
        "user,guestfwd=tcp:{addr}:{port}-chardev:{chardev},id=channel{i}"
    ))
}

/// Consoles: the first one may be the first serial port (already on the command
/// line); the others are virtio consoles `consoleI`, I their place, as libvirt names
/// them.
fn consoles(
    a: &mut Argv,
    d: &Devices,
    backend: &dyn Fn(&str, &Chardev) -> Result<String>,
) -> Result<()> {
    for (i, c) in d.consoles.iter().enumerate() {
        match c.target_type.as_deref().unwrap_or("serial") {
            "serial" if i > 0 => {
                return Err(unsupported(
                    "console target type",
                    "serial",
                    "only the first console can be the serial port",
                ))
            }
            // A serial console is the first serial port, already on the command line.
            "serial" if !d.serials.is_empty() => {}
            "serial" => {
                let id = "charserial0";
                a.pair("-chardev", backend(id, c)?);
                a.device(&isa_serial(id, 0, 0))?;
            }
            "virtio" => {
                if !d
                    .controllers
                    .iter()
                    .any(|c| c.kind == "virtio-serial" && c.index == 0)
                {
                    a.device(&DeviceProps::new("virtio-serial-pci").str("id", "virtio-serial0"))?;
                }
                let id = format!("charconsole{i}");
                a.pair("-chardev", backend(&id, c)?);
                a.device(&virtconsole_props(i, &id))?;
            }
            t => {
                return Err(unsupported(
                    "console target type",
                    t,
                    "expected serial or virtio",
                ))
            }
        }
    }
    Ok(())
}

/// The `-chardev` backend `id`; Unix sockets without a path go under the runtime dir.
pub(super) fn chardev(
    id: &str,
    src: &ChardevSource,
    ctx: &LaunchContext,
    spice: bool,
) -> Result<String> {
    Ok(match src {
        ChardevSource::Pty => format!("pty,id={id}"),
        ChardevSource::Null => format!("null,id={id}"),
        ChardevSource::File { path, append } => format!(
            "file,id={id},path={}{}",
            path_opt("chardev file", path)?,
            if *append == Some(true) {
                ",append=on"
            } else {
                ""
            }
        ),
        ChardevSource::Unix { path, listen } => {
            let auto = ctx.runtime_dir.join(format!("{id}.sock"));
            format!(
                "socket,id={id},path={}{}",
                path_opt("chardev unix socket", path.as_deref().unwrap_or(&auto))?,
                if *listen { ",server=on,wait=off" } else { "" }
            )
        }
        ChardevSource::SpiceVmc => {
            if !spice {
                return Err(unsupported(
                    "channel type",
                    "spicevmc",
                    "needs <graphics type='spice'>",
                ));
            }
            format!("spicevmc,id={id},name=vdagent")
        }
        ChardevSource::Dev(p) => format!("tty,id={id},path={}", path_opt("chardev dev", p)?),
        ChardevSource::Vc => format!("vc,id={id}"),
        ChardevSource::QemuVdagent { clipboard, mouse } => {
            let mut s = format!("qemu-vdagent,id={id},name=vdagent");
            if let Some(c) = clipboard {
                s.push_str(if *c {
                    ",clipboard=on"
                } else {
                    ",clipboard=off"
                });
            }
            match mouse.as_deref() {
                Some("client") => s.push_str(",mouse=on"),
                Some(_) => s.push_str(",mouse=off"),
                None => {}
            }
            s
        }
        ChardevSource::Pipe(p) => format!("pipe,id={id},path={}", path_opt("chardev pipe", p)?),
        ChardevSource::Tcp {
            tls: Some(true), ..
        } => {
            return Err(unsupported(
                "chardev source tls",
                "yes",
                "TLS chardevs need certificates, not configured here",
            ))
        }
        ChardevSource::Tcp {
            host,
            service,
            listen,
            telnet,
            reconnect,
            tls: _,
        } => {
            let mut s = format!(
                "socket,id={id},host={},port={}",
                qemu_opt_value("chardev tcp host", host.as_deref().unwrap_or("localhost"))?,
                qemu_opt_value("chardev tcp service", service)?
            );
            if *telnet {
                s.push_str(",telnet=on");
            }
            if *listen {
                s.push_str(",server=on,wait=off");
            } else if let Some(t) = reconnect {
                s.push_str(&format!(",reconnect={t}"));
            }
            s
        }
        ChardevSource::Udp {
            host,
            service,
            bind_host,
            bind_service,
        } => {
            let mut s = format!(
                "udp,id={id},host={},port={}",
                qemu_opt_value("chardev udp host", host.as_deref().unwrap_or("localhost"))?,
                qemu_opt_value("chardev udp service", service)?
            );
            if let Some(h) = bind_host {
                s.push_str(&format!(
                    ",localaddr={}",
                    qemu_opt_value("chardev udp bind host", h)?
                ));
            }
            if let Some(p) = bind_service {
                s.push_str(&format!(
                    ",localport={}",
                    qemu_opt_value("chardev udp bind service", p)?
                ));
            }
            s
        }
    })
}

fn isa_serial(chardev: &str, i: usize, index: u32) -> DeviceProps {
    DeviceProps::new("isa-serial")
        .str("chardev", chardev)
        .str("id", format!("serial{i}"))
        .uint("index", index.into())
}

/// Serial port `i` on backend `chardev`: an `isa-serial` (at its ISA address when
/// one is given), or the `isa-debugcon` of `<target type='isa-debug'>`.
fn serial_props(i: usize, s: &Chardev, chardev: &str) -> Result<DeviceProps> {
    let (iobase, irq) = match address(s) {
        Some(a) => (addr_num(a, "iobase")?, addr_num(a, "irq")?),
        None => (None, None),
    };
    let (dev, model) = match s.target_type.as_deref().unwrap_or("isa-serial") {
        "isa-serial" | "serial" => (
            isa_serial(chardev, i, s.target_port.unwrap_or(i as u32)),
            "isa-serial",
        ),
        "isa-debug" => (
            DeviceProps::new("isa-debugcon")
                .str("chardev", chardev)
                .str("id", format!("serial{i}")),
            "isa-debugcon",
        ),
        t => {
            return Err(unsupported(
                "serial target type",
                t,
                "expected isa-serial or isa-debug",
            ))
        }
    };
    if let Some(m) = s.target_model.as_deref().filter(|m| *m != model) {
        return Err(unsupported(
            "serial/target/model",
            m,
            format!("expected {model}"),
        ));
    }
    Ok(dev
        .opt_uint("iobase", iobase.map(u64::from))
        .opt_uint("irq", irq.map(u64::from)))
}

/// Virtio console `n` on backend `chardev`.
/// On controller 0 (also when there are others), where QEMU numbers the consoles'
/// ports from 0 in order.
fn virtconsole_props(n: usize, chardev: &str) -> DeviceProps {
    DeviceProps::new("virtconsole")
        .str("bus", "virtio-serial0.0")
        .str("chardev", chardev)
        .str("id", format!("console{n}"))
}

/// Channel `i` as port `port` of virtio-serial controller `controller`.
fn channel_props(
    i: usize,
    ch: &Chardev,
    chardev: &str,
    controller: u32,
    port: u32,
) -> Result<DeviceProps> {
    let mut dev = DeviceProps::new("virtserialport")
        .str("bus", format!("virtio-serial{controller}.0"))
        .uint("nr", port.into())
        .str("chardev", chardev)
        .str("id", format!("channel{i}"));
    if let Some(n) = &ch.target_name {
        // Checked under the name the user knows; the renderer escapes it.
        qemu_opt_value("channel target name", n)?;
        dev = dev.str("name", n.as_str());
    }
    Ok(dev)
}
