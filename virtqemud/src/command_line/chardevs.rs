//! Character devices: a `-chardev` backend per serial port, console and channel, and
//! the guest device reading it (`isa-serial`, `virtconsole`, `virtserialport`).

use crate::xml::{Chardev, ChardevSource, Domain, GraphicsKind};

use super::device::DeviceProps;
use super::{path_opt, qemu_opt_value, unsupported, Argv, LaunchContext, Result};

/// Refuses what a chardev keeps without honouring; a channel's virtio-serial address
/// is fine when it is the port the command line gives it (`nr`, from 1).
fn refuse_unhandled(kind: &str, c: &Chardev, port: Option<usize>) -> Result<()> {
    for e in &c.unhandled {
        let same_port = e.name == "address"
            && e.get_attr("type") == Some("virtio-serial")
            && e.get_attr("controller").unwrap_or("0") == "0"
            && e.get_attr("bus").unwrap_or("0") == "0"
            && port.is_some_and(|p| e.get_attr("port") == Some(p.to_string().as_str()));
        if !same_port {
            return Err(unsupported(
                &format!("{kind}/{}", e.name),
                e.get_attr("type").unwrap_or_default(),
                "not implemented",
            ));
        }
    }
    Ok(())
}

pub(super) fn chardevs(a: &mut Argv, dom: &Domain, ctx: &LaunchContext) -> Result<()> {
    let d = &dom.devices;
    for s in &d.serials {
        refuse_unhandled("serial", s, None)?;
    }
    for c in &d.consoles {
        refuse_unhandled("console", c, None)?;
    }
    for (i, c) in d.channels.iter().enumerate() {
        refuse_unhandled("channel", c, Some(i + 1))?;
    }
    let spice = d.graphics.iter().any(|g| g.kind == GraphicsKind::Spice);
    let backend = |id: &str, src: &ChardevSource| chardev(id, src, ctx, spice);
    for (i, s) in d.serials.iter().enumerate() {
        let id = format!("charserial{i}");
        a.pair("-chardev", backend(&id, &s.source)?);
        a.device(&serial_props(i, s, &id)?)?;
    }
    let mut virtconsole = 0;
    for c in &d.consoles {
        match c.target_type.as_deref().unwrap_or("serial") {
            // A serial console is the first serial port, already on the command line.
            "serial" if !d.serials.is_empty() => {}
            "serial" => {
                let id = "charserial0";
                a.pair("-chardev", backend(id, &c.source)?);
                a.device(&isa_serial(id, 0, 0))?;
            }
            "virtio" => {
                if !d.controllers.iter().any(|c| c.kind == "virtio-serial") {
                    a.device(&DeviceProps::new("virtio-serial-pci").str("id", "virtio-serial0"))?;
                }
                let id = format!("charconsole{virtconsole}");
                a.pair("-chardev", backend(&id, &c.source)?);
                a.device(&virtconsole_props(virtconsole, &id))?;
                virtconsole += 1;
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
    for (i, ch) in d.channels.iter().enumerate() {
        let id = format!("charchannel{i}");
        a.pair("-chardev", backend(&id, &ch.source)?);
        a.device(&channel_props(i, ch, &id)?)?;
    }
    Ok(())
}

/// The `-chardev` backend `id`; Unix sockets without a path go under the runtime dir.
fn chardev(id: &str, src: &ChardevSource, ctx: &LaunchContext, spice: bool) -> Result<String> {
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
        ChardevSource::Pipe(p) => format!("pipe,id={id},path={}", path_opt("chardev pipe", p)?),
        ChardevSource::Tcp {
            host,
            service,
            listen,
            telnet,
            reconnect,
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

/// Serial port `i` on backend `chardev`.
fn serial_props(i: usize, s: &Chardev, chardev: &str) -> Result<DeviceProps> {
    if let Some(m) = s.target_model.as_deref().filter(|m| *m != "isa-serial") {
        return Err(unsupported("serial/target/model", m, "only isa-serial"));
    }
    match s.target_type.as_deref().unwrap_or("isa-serial") {
        "isa-serial" | "serial" => Ok(isa_serial(chardev, i, s.target_port.unwrap_or(i as u32))),
        t => Err(unsupported("serial target type", t, "only isa-serial")),
    }
}

/// Virtio console `n` on backend `chardev`.
fn virtconsole_props(n: usize, chardev: &str) -> DeviceProps {
    DeviceProps::new("virtconsole")
        .str("chardev", chardev)
        .str("id", format!("console{n}"))
}

/// Channel `i` as port `i + 1` of `virtio-serial0` (port 0 is reserved for consoles).
fn channel_props(i: usize, ch: &Chardev, chardev: &str) -> Result<DeviceProps> {
    let mut dev = DeviceProps::new("virtserialport")
        .str("bus", "virtio-serial0.0")
        .uint("nr", i as u64 + 1)
        .str("chardev", chardev)
        .str("id", format!("channel{i}"));
    if let Some(n) = &ch.target_name {
        // Checked under the name the user knows; the renderer escapes it.
        qemu_opt_value("channel target name", n)?;
        dev = dev.str("name", n.as_str());
    }
    Ok(dev)
}
