//! What the user sees and hears: `-vnc`/`-spice` (or `-display none`), video devices,
//! audio backends with the sound devices playing through them, and SPICE USB redirection.

use std::path::PathBuf;

use common::xml::Element;

use crate::xml::{Audio, ChardevSource, Domain, GraphicsKind, Sound, Video};

use super::device::{DeviceProps, PciBuses};
use super::{path_opt, qemu_opt_value, unsupported, Argv, LaunchContext, Result};

fn has_spice(dom: &Domain) -> bool {
    dom.devices
        .graphics
        .iter()
        .any(|g| g.kind == GraphicsKind::Spice)
}

/// Graphics kinds the model keeps untyped (in `Devices::other`) that are built here.
const LOCAL_DISPLAYS: &[&str] = &["sdl", "egl-headless", "dbus"];

/// Whether an untyped device is built here (SDL, egl-headless and D-Bus displays).
pub(super) fn handles(el: &Element) -> bool {
    el.name == "graphics"
        && el
            .get_attr("type")
            .is_some_and(|t| LOCAL_DISPLAYS.contains(&t))
}

/// The first GPU render node of the host, for OpenGL without one named.
pub(super) fn first_render_node() -> Option<PathBuf> {
    let mut nodes: Vec<PathBuf> = std::fs::read_dir("/dev/dri")
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("renderD"))
        })
        .collect();
    nodes.sort();
    nodes.into_iter().next()
}

/// `-display` for an SDL, egl-headless or D-Bus display, as libvirt 9.0 writes it.
fn local_display(a: &mut Argv, el: &Element, ctx: &LaunchContext) -> Result<()> {
    let ty = el.get_attr("type").unwrap_or_default();
    let known: &[&str] = match ty {
        "sdl" => &["type", "fullscreen"],
        "dbus" => &["type", "address"],
        _ => &["type"],
    };
    if let Some((k, _)) = el.attrs.iter().find(|(k, _)| !known.contains(&k.as_str())) {
        return Err(unsupported(&format!("graphics {k}"), ty, "not implemented"));
    }
    let mut opts = ty.to_owned();
    let mut rendernode = None;
    for c in el.elements() {
        match (c.name.as_str(), ty) {
            ("gl", _) => {
                if c.get_attr("enable") == Some("yes") && ty != "egl-headless" {
                    opts.push_str(",gl=on");
                }
                rendernode = c.get_attr("rendernode").map(PathBuf::from);
            }
            ("audio", "dbus") => {
                let id = c.get_attr("id").unwrap_or("1");
                opts.push_str(&format!(
                    ",audiodev=audio{}",
                    qemu_opt_value("graphics/audio id", id)?
                ));
            }
            (n, _) => return Err(unsupported(&format!("graphics/{n}"), ty, "not implemented")),
        }
    }
    match ty {
        "sdl" if ctx.display.is_none() => {
            return Err(unsupported(
                "graphics type='sdl'",
                "",
                "the daemon has no X11 or Wayland display (DISPLAY) for QEMU's window",
            ))
        }
        "egl-headless" => {
            let node = rendernode
                .or_else(|| ctx.render_node.clone())
                .ok_or_else(|| {
                    unsupported(
                        "graphics type='egl-headless'",
                        "",
                        "this host has no GPU render node (/dev/dri/renderD*)",
                    )
                })?;
            opts.push_str(&format!(
                ",rendernode={}",
                path_opt("graphics/gl rendernode", &node)?
            ));
        }
        "dbus" => {
            let addr = el.get_attr("address").ok_or_else(|| {
                unsupported(
                    "graphics type='dbus'",
                    "",
                    "a private D-Bus bus per domain is not implemented; give an address",
                )
            })?;
            opts.push_str(&format!(
                ",addr={}",
                qemu_opt_value("graphics address", addr)?
            ));
            if let Some(n) = rendernode {
                opts.push_str(&format!(
                    ",rendernode={}",
                    path_opt("graphics/gl rendernode", &n)?
                ));
            }
        }
        _ => {}
    }
    a.pair("-display", opts);
    if ty == "sdl" && el.get_attr("fullscreen") == Some("yes") {
        a.push("-full-screen");
    }
    Ok(())
}

pub(super) fn graphics(a: &mut Argv, dom: &Domain, ctx: &LaunchContext) -> Result<()> {
    let d = &dom.devices;
    let local: Vec<&Element> = d.other.iter().filter(|o| handles(o)).collect();
    if d.graphics.is_empty() && local.is_empty() {
        a.pair("-display", "none");
    }
    for el in local {
        local_display(a, el, ctx)?;
    }
    // libvirt passes a VNC or SPICE keymap as QEMU's global -k.
    if let Some(k) = d.graphics.iter().find_map(|g| g.keymap.as_deref()) {
        a.pair("-k", k);
    }
    for g in &d.graphics {
        let listen = g.listen.as_deref().unwrap_or("127.0.0.1");
        match g.kind {
            // No listener, yet clients come through QMP (OpenGraphicsFD): the password
            // still holds for them.
            GraphicsKind::Vnc if g.listen_none => a.pair(
                "-vnc",
                if g.passwd.is_some() {
                    "none,password=on"
                } else {
                    "none"
                },
            ),
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
                match g.websocket {
                    Some(w) if w > 0 => display.push_str(&format!(",websocket={w}")),
                    Some(w) => {
                        return Err(unsupported(
                            "graphics websocket",
                            &w.to_string(),
                            "an automatic WebSocket port is not implemented",
                        ))
                    }
                    None => {}
                }
                a.pair("-vnc", display);
            }
            // SPICE without a network listener (clients come through a passed fd or
            // QEMU's display) or on a UNIX socket, as libvirt writes them.
            GraphicsKind::Spice if g.listen_none || g.listen_socket.is_some() => {
                let mut opts = match &g.listen_socket {
                    Some(path) => {
                        let auto = ctx.runtime_dir.join("spice.sock");
                        format!(
                            "unix=on,addr={}",
                            path_opt("graphics listen socket", path.as_deref().unwrap_or(&auto))?
                        )
                    }
                    None => "port=0".to_owned(),
                };
                opts.push_str(",seamless-migration=on");
                if g.passwd.is_none() {
                    opts.push_str(",disable-ticketing=on");
                }
                if let Some(m) = &g.image_compression {
                    opts.push_str(&format!(",image-compression={m}"));
                }
                // OpenGL is local-only in QEMU: here, with no TCP listener.
                if let Some((true, node)) = &g.gl {
                    let node = node
                        .clone()
                        .or_else(|| ctx.render_node.clone())
                        .ok_or_else(|| {
                            unsupported(
                                "graphics/gl",
                                "spice",
                                "this host has no GPU render node (/dev/dri/renderD*)",
                            )
                        })?;
                    opts.push_str(&format!(
                        ",gl=on,rendernode={}",
                        path_opt("graphics/gl rendernode", &node)?
                    ));
                }
                a.pair("-spice", opts);
            }
            GraphicsKind::Spice => {
                if matches!(g.gl, Some((true, _))) {
                    return Err(unsupported(
                        "graphics/gl",
                        "spice",
                        "SPICE OpenGL is local only: needs <listen type='none'> or 'socket'",
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
        // A framebuffer in guest RAM the firmware finds through fw_cfg, on no bus.
        "ramfb" => {
            return Ok(Some(
                DeviceProps::new("ramfb").str("id", format!("video{i}")),
            ))
        }
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
        "vga" => {
            if let Some(vram) = v.vram_kib {
                dev = dev.uint("vgamem_mb", vram / 1024);
            }
        }
        // bochs-display's property is `vgamem`, a size (libvirt writes it in KiB).
        "bochs" => {
            if let Some(vram) = v.vram_kib {
                dev = dev.str("vgamem", format!("{vram}k"));
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
        let dbus_display = d
            .other
            .iter()
            .any(|o| handles(o) && o.get_attr("type") == Some("dbus"));
        if au.kind == "dbus" && !dbus_display {
            return Err(unsupported(
                "audio type",
                "dbus",
                "needs <graphics type='dbus'>",
            ));
        }
        a.pair("-audiodev", audiodev(au)?);
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

/// `-audiodev` of a backend, its settings as libvirt 9.0 passes them (QEMU's
/// `in.`/`out.` per-direction options). coreaudio exists only on macOS builds.
fn audiodev(au: &Audio) -> Result<String> {
    let el = &au.element;
    let driver = match au.kind.as_str() {
        "pulseaudio" => "pa",
        "file" => "wav",
        "coreaudio" => {
            return Err(unsupported(
                "audio type",
                "coreaudio",
                "QEMU has it on macOS only",
            ))
        }
        k => k,
    };
    let mut o = format!("id=audio{},driver={driver}", au.id);
    // Attributes of <audio> per backend: (libvirt's name, QEMU's option).
    let own: &[(&str, &str)] = match au.kind.as_str() {
        "pulseaudio" => &[("serverName", "server")],
        "oss" => &[
            ("tryMMap", "try-mmap"),
            ("exclusive", "exclusive"),
            ("dspPolicy", "dsp-policy"),
        ],
        "file" => &[("path", "path")],
        _ => &[],
    };
    for (k, v) in &el.attrs {
        let opt = match k.as_str() {
            "id" | "type" => continue,
            "timerPeriod" => "timer-period",
            k => own
                .iter()
                .find(|(x, _)| *x == k)
                .map(|(_, q)| *q)
                .ok_or_else(|| unsupported(&format!("audio {k}"), &au.kind, "not implemented"))?,
        };
        if opt == "path" && !v.starts_with('/') {
            return Err(unsupported("audio path", v, "must be an absolute path"));
        }
        o.push_str(&format!(
            ",{opt}={}",
            audio_value(&format!("audio {k}"), v)?
        ));
    }
    for dir in el.elements() {
        let prefix = match dir.name.as_str() {
            "input" => "in",
            "output" => "out",
            n => {
                return Err(unsupported(
                    &format!("audio/{n}"),
                    &au.kind,
                    "not implemented",
                ))
            }
        };
        o.push_str(&direction(au, dir, prefix)?);
    }
    Ok(o)
}

/// The `in.`/`out.` options of an `<input>`/`<output>` of a backend.
fn direction(au: &Audio, dir: &common::xml::Element, prefix: &str) -> Result<String> {
    let own: &[(&str, &str)] = match au.kind.as_str() {
        "alsa" => &[("dev", "dev")],
        "oss" => &[
            ("dev", "dev"),
            ("bufferCount", "buffer-count"),
            ("tryPoll", "try-poll"),
        ],
        "pulseaudio" => &[
            ("name", "name"),
            ("streamName", "stream-name"),
            ("latency", "latency"),
        ],
        "sdl" => &[("bufferCount", "buffer-count")],
        "jack" => &[
            ("serverName", "server-name"),
            ("clientName", "client-name"),
            ("connectPorts", "connect-ports"),
            ("exactName", "exact-name"),
        ],
        _ => &[],
    };
    let common: &[(&str, &str)] = &[
        ("mixingEngine", "mixing-engine"),
        ("fixedSettings", "fixed-settings"),
        ("voices", "voices"),
        ("bufferLength", "buffer-length"),
    ];
    let mut o = String::new();
    for (k, v) in &dir.attrs {
        let what = format!("audio/{} {k}", dir.name);
        let opt = common
            .iter()
            .chain(own)
            .find(|(x, _)| x == k)
            .map(|(_, q)| *q)
            .ok_or_else(|| unsupported(&what, &au.kind, "not implemented"))?;
        o.push_str(&format!(",{prefix}.{opt}={}", audio_value(&what, v)?));
    }
    for s in dir.elements() {
        if s.name != "settings" {
            return Err(unsupported(
                &format!("audio/{}/{}", dir.name, s.name),
                &au.kind,
                "not implemented",
            ));
        }
        for (k, v) in &s.attrs {
            let what = format!("audio/{}/settings {k}", dir.name);
            if !matches!(k.as_str(), "frequency" | "channels" | "format") {
                return Err(unsupported(&what, v, "not implemented"));
            }
            o.push_str(&format!(",{prefix}.{k}={}", audio_value(&what, v)?));
        }
    }
    Ok(o)
}

/// libvirt's yes/no as QEMU's on/off; anything else escaped as an option value.
fn audio_value(what: &str, v: &str) -> Result<String> {
    Ok(match v {
        "yes" => "on".to_owned(),
        "no" => "off".to_owned(),
        v => qemu_opt_value(what, v)?,
    })
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

/// USB redirection from SPICE clients, or over a TCP or UNIX socket (libvirt's
/// `type='tcp'|'unix'`: a usbredir stream from a `usbredirect` or such).
pub(super) fn redirdevs(a: &mut Argv, dom: &Domain, ctx: &LaunchContext) -> Result<()> {
    let d = &dom.devices;
    let spice = has_spice(dom);
    let filter = redir_filter(dom)?;
    let with_filter = |dev: DeviceProps, f: &Option<String>| match f {
        Some(f) => dev.str("filter", f.as_str()),
        None => dev,
    };
    for (i, r) in d.redirdevs.iter().enumerate() {
        if let Some(ch) = &r.socket {
            if !d
                .controllers
                .iter()
                .any(|c| c.kind == "usb" && c.model.as_deref() != Some("none"))
            {
                return Err(unsupported("redirdev", "usb", "needs a USB controller"));
            }
            let id = format!("charredir{i}");
            a.pair(
                "-chardev",
                super::chardevs::chardev(&id, &ch.source, ctx, spice)?,
            );
            let mut dev = with_filter(redirdev_props(i), &filter);
            for e in &ch.unhandled {
                match (e.name.as_str(), e.get_attr("type")) {
                    // A USB port as libvirt writes it (`bus`, `port`).
                    ("address", Some("usb")) => dev = usb_port(dev, Some(e))?,
                    _ => {
                        return Err(unsupported(
                            &format!("redirdev/{}", e.name),
                            if matches!(ch.source, ChardevSource::Tcp { .. }) {
                                "tcp"
                            } else {
                                "unix"
                            },
                            "not implemented",
                        ))
                    }
                }
            }
            a.device(&dev)?;
            continue;
        }
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
        let addr = match &r.address {
            Some(crate::xml::Address::Other(e)) => Some(e),
            _ => None,
        };
        a.device(&usb_port(with_filter(redirdev_props(i), &filter), addr)?)?;
    }
    Ok(())
}

fn redirdev_props(i: usize) -> DeviceProps {
    DeviceProps::new("usb-redir")
        .str("chardev", format!("charredir{i}"))
        .str("id", format!("redir{i}"))
        .str("bus", "usb0.0")
}

/// `<redirfilter>` as usb-redir's `filter`: `class:vendor:product:version:allow` rules
/// joined by `|`, -1 for what a rule leaves open, the version in BCD (`9.40` is
/// 0x0940), as libvirt 9.0 writes it (qemuBuildRedirdevDevProps).
fn redir_filter(dom: &Domain) -> Result<Option<String>> {
    let Some(f) = dom.devices.other.iter().find(|e| e.name == "redirfilter") else {
        return Ok(None);
    };
    let mut rules = Vec::new();
    for u in f.elements() {
        if u.name != "usbdev" {
            return Err(unsupported(
                &format!("redirfilter/{}", u.name),
                "",
                "not implemented",
            ));
        }
        let hex = |k: &str, width: usize| -> Result<String> {
            let Some(v) = u.get_attr(k).filter(|v| *v != "-1") else {
                return Ok("-1".into());
            };
            let digits = v.trim_start_matches("0x").trim_start_matches("0X");
            let n = u32::from_str_radix(digits, 16).map_err(|_| {
                unsupported(&format!("redirfilter/usbdev {k}"), v, "not a hex number")
            })?;
            Ok(format!("0x{n:0width$X}"))
        };
        let version = match u.get_attr("version").filter(|v| *v != "-1") {
            None => "-1".to_owned(),
            Some(v) => {
                let bad = || unsupported("redirfilter/usbdev version", v, "expected MAJOR.MINOR");
                let (j, m) = v.split_once('.').ok_or_else(bad)?;
                let j: u32 = j.parse().map_err(|_| bad())?;
                let m: u32 = m.parse().map_err(|_| bad())?;
                format!(
                    "0x{:X}{:X}{:X}{:X}",
                    j / 10 % 10,
                    j % 10,
                    m / 10 % 10,
                    m % 10
                )
            }
        };
        let allow = match u.get_attr("allow") {
            Some("yes") => 1,
            Some("no") => 0,
            a => {
                return Err(unsupported(
                    "redirfilter/usbdev allow",
                    a.unwrap_or(""),
                    "expected yes or no",
                ))
            }
        };
        rules.push(format!(
            "{}:{}:{}:{version}:{allow}",
            hex("class", 2)?,
            hex("vendor", 4)?,
            hex("product", 4)?
        ));
    }
    Ok(Some(rules.join("|")))
}

/// The USB port of a redirdev's `<address type='usb' port>`, if it names one.
fn usb_port(dev: DeviceProps, a: Option<&Element>) -> Result<DeviceProps> {
    let port = a
        .filter(|e| e.get_attr("type") == Some("usb"))
        .and_then(|e| e.get_attr("port"));
    match port {
        Some(p) => Ok(dev.str("port", qemu_opt_value("redirdev/address port", p)?)),
        None => Ok(dev),
    }
}
