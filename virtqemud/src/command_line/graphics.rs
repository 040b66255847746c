//! What the user sees and hears: `-vnc`/`-spice` (or `-display none`), video devices,
//! audio backends with the sound devices playing through them, and SPICE USB redirection.

use crate::xml::{Domain, GraphicsKind, Sound, Video};

use super::device::{DeviceProps, PciBuses};
use super::{path_opt, qemu_opt_value, unsupported, Argv, LaunchContext, Result};

fn has_spice(dom: &Domain) -> bool {
    dom.devices
        .graphics
        .iter()
        .any(|g| g.kind == GraphicsKind::Spice)
}

pub(super) fn graphics(a: &mut Argv, dom: &Domain, ctx: &LaunchContext) -> Result<()> {
    let d = &dom.devices;
    if d.graphics.is_empty() {
        a.pair("-display", "none");
    }
    for g in &d.graphics {
        let listen = g.listen.as_deref().unwrap_or("127.0.0.1");
        match g.kind {
            GraphicsKind::Vnc if g.listen_none => a.pair("-vnc", "none"),
            GraphicsKind::Vnc if g.listen_socket.is_some() => {
                let auto = ctx.runtime_dir.join("vnc.sock");
                let path = g.listen_socket.as_ref().and_then(|s| s.as_deref());
                let mut display = format!(
                    "unix:{}",
                    path_opt("graphics listen socket", path.unwrap_or(&auto))?
                );
                if g.passwd.is_some() {
                    display.push_str(",password=on");
                }
                a.pair("-vnc", display);
            }
            GraphicsKind::Vnc => {
                let host = if listen.contains(':') {
                    format!("[{listen}]")
                } else {
                    listen.to_owned()
                };
                let mut display = match (g.autoport, g.port) {
                    (false, Some(p)) if p >= 5900 => format!("{host}:{}", p - 5900),
                    // Auto port: QEMU takes the first free display from :0.
                    _ => format!("{host}:0,to=99"),
                };
                // The password itself goes over QMP (set_password), never on argv.
                if g.passwd.is_some() {
                    display.push_str(",password=on");
                }
                a.pair("-vnc", display);
            }
            GraphicsKind::Spice => {
                if g.listen_none || g.listen_socket.is_some() {
                    return Err(unsupported(
                        "graphics/listen",
                        "spice",
                        "SPICE over a UNIX socket or without a listener is not implemented",
                    ));
                }
                if g.tls_port.is_some_and(|p| p > 0) {
                    return Err(unsupported(
                        "graphics type='spice' tlsPort",
                        &g.tls_port.unwrap_or_default().to_string(),
                        "SPICE over TLS needs certificates, not configured here",
                    ));
                }
                let port = g.port.filter(|p| *p > 0).ok_or_else(|| {
                    unsupported(
                        "graphics type='spice'",
                        "",
                        "no port (the runtime assigns one at start)",
                    )
                })?;
                let mut opts = format!(
                    "port={port},addr={},seamless-migration=on",
                    qemu_opt_value("graphics listen", listen)?
                );
                if g.passwd.is_none() {
                    opts.push_str(",disable-ticketing=on");
                }
                if let Some(m) = &g.image_compression {
                    opts.push_str(&format!(",image-compression={m}"));
                }
                a.pair("-spice", opts);
            }
        }
    }
    Ok(())
}

pub(super) fn videos(a: &mut Argv, dom: &Domain, buses: &PciBuses) -> Result<()> {
    for (i, v) in dom.devices.videos.iter().enumerate() {
        if let Some(dev) = video_props(i, v, buses)? {
            a.device(&dev)?;
        }
    }
    Ok(())
}

/// Video device `i` (the first is the primary, VGA-compatible one); `None` for `none`.
fn video_props(i: usize, v: &Video, buses: &PciBuses) -> Result<Option<DeviceProps>> {
    let driver = match v.model.as_str() {
        "none" => return Ok(None),
        "vga" => "VGA",
        "cirrus" => "cirrus-vga",
        "qxl" if i == 0 => "qxl-vga",
        "qxl" => "qxl",
        "virtio" if i == 0 => "virtio-vga",
        "virtio" => "virtio-gpu-pci",
        "bochs" => "bochs-display",
        m => return Err(unsupported("video model", m, "not implemented")),
    };
    let mut dev = DeviceProps::new(driver).str("id", format!("video{i}"));
    // As libvirt passes them: qxl's three memory sizes, VGA memory for the
    // VGA-compatible models, the head count where the device has outputs.
    match v.model.as_str() {
        "qxl" => {
            if let Some(ram) = v.ram_kib {
                dev = dev.uint("ram_size", ram * 1024);
            }
            if let Some(vram) = v.vram_kib {
                dev = dev.uint("vram_size", vram * 1024);
            }
            if let Some(vgamem) = v.vgamem_kib {
                dev = dev.uint("vgamem_mb", vgamem / 1024);
            }
        }
        "vga" | "bochs" => {
            if let Some(vram) = v.vram_kib {
                dev = dev.uint("vgamem_mb", vram / 1024);
            }
        }
        _ => {}
    }
    if let (Some(h), "qxl" | "virtio") = (v.heads, v.model.as_str()) {
        dev = dev.uint("max_outputs", h.into());
    }
    Ok(Some(dev.pci(buses, &v.address)))
}

/// Audio backends, then sound devices playing through the first. Without one,
/// libvirt's implicit default: SPICE's when there is SPICE graphics, else none.
pub(super) fn sounds(a: &mut Argv, dom: &Domain, buses: &PciBuses) -> Result<()> {
    let d = &dom.devices;
    let spice = has_spice(dom);
    for au in &d.audios {
        if au.kind == "spice" && !spice {
            return Err(unsupported(
                "audio type",
                "spice",
                "needs <graphics type='spice'>",
            ));
        }
        a.pair("-audiodev", format!("id=audio{},driver={}", au.id, au.kind));
    }
    let audiodev = match d.audios.first() {
        Some(au) => format!("audio{}", au.id),
        None if !d.sounds.is_empty() => {
            let driver = if spice { "spice" } else { "none" };
            a.pair("-audiodev", format!("id=audio1,driver={driver}"));
            "audio1".to_owned()
        }
        None => String::new(),
    };
    for (i, s) in d.sounds.iter().enumerate() {
        for dev in sound_props(i, s, &audiodev, buses)? {
            a.device(&dev)?;
        }
    }
    Ok(())
}

/// Sound device `i`: an HDA controller with its codec, or a single AC97/ES1370.
fn sound_props(i: usize, s: &Sound, audiodev: &str, buses: &PciBuses) -> Result<Vec<DeviceProps>> {
    let id = format!("sound{i}");
    let hda = |ctrl: &str| {
        vec![
            DeviceProps::new(ctrl)
                .str("id", id.as_str())
                .pci(buses, &s.address),
            DeviceProps::new("hda-duplex")
                .str("id", format!("{id}-codec0"))
                .str("bus", format!("{id}.0"))
                .uint("cad", 0)
                .str("audiodev", audiodev),
        ]
    };
    let single = |driver: &str| {
        vec![DeviceProps::new(driver)
            .str("id", id.as_str())
            .str("audiodev", audiodev)
            .pci(buses, &s.address)]
    };
    Ok(match s.model.as_str() {
        "ich6" => hda("intel-hda"),
        "ich9" => hda("ich9-intel-hda"),
        "ac97" => single("AC97"),
        "es1370" => single("ES1370"),
        m => return Err(unsupported("sound model", m, "not implemented")),
    })
}

/// USB redirection from SPICE clients.
pub(super) fn redirdevs(a: &mut Argv, dom: &Domain) -> Result<()> {
    let d = &dom.devices;
    let spice = has_spice(dom);
    for (i, _) in d.redirdevs.iter().enumerate() {
        if !spice {
            return Err(unsupported(
                "redirdev type",
                "spicevmc",
                "needs <graphics type='spice'>",
            ));
        }
        if !d
            .controllers
            .iter()
            .any(|c| c.kind == "usb" && c.model.as_deref() != Some("none"))
        {
            return Err(unsupported("redirdev", "usb", "needs a USB controller"));
        }
        a.pair(
            "-chardev",
            format!("spicevmc,id=charredir{i},name=usbredir"),
        );
        a.device(&redirdev_props(i))?;
    }
    Ok(())
}

fn redirdev_props(i: usize) -> DeviceProps {
    DeviceProps::new("usb-redir")
        .str("chardev", format!("charredir{i}"))
        .str("id", format!("redir{i}"))
        .str("bus", "usb0.0")
}
