//! Small devices with one guest device each: input devices, watchdogs (with the
//! `-action` they trigger), virtio RNGs (with their `rng-random` object) and the balloon.

use common::xml::Element;

use crate::xml::{Address, Domain, Input, Memballoon, Rng, Watchdog};

use super::device::{virtio_options, DeviceProps, PciBuses};
use std::path::Path;

use super::{json_str, path_opt, qemu_opt_value, unsupported, Argv, Result};

pub(super) fn inputs(a: &mut Argv, dom: &Domain, buses: &PciBuses) -> Result<()> {
    for (i, inp) in dom.devices.inputs.iter().enumerate() {
        if let Some(dev) = input_props(i, inp, buses)? {
            a.device(&dev)?;
        }
    }
    Ok(())
}

/// Input device `i`; `None` for PS/2, built into the PC machines.
fn input_props(i: usize, inp: &Input, buses: &PciBuses) -> Result<Option<DeviceProps>> {
    let id = format!("input{i}");
    // `<address type='usb' bus port>`: that controller and port.
    let usb_addr = match &inp.address {
        Some(Address::Other(e)) if e.get_attr("type") == Some("usb") => Some(e),
        None => None,
        Some(Address::Pci(_)) if inp.bus == "virtio" => None,
        Some(_) => {
            return Err(unsupported(
                "input/address",
                &inp.bus,
                "a USB input takes a USB address, a virtio one a PCI address",
            ))
        }
    };
    if inp.bus != "usb" && usb_addr.is_some() {
        return Err(unsupported(
            "input/address",
            "usb",
            "the input is not on USB",
        ));
    }
    let usb = |driver: &str| -> Result<DeviceProps> {
        let bus = usb_addr.and_then(|e| e.get_attr("bus")).unwrap_or("0");
        let mut dev = DeviceProps::new(driver).str("id", id.as_str()).str(
            "bus",
            format!("usb{}.0", qemu_opt_value("input address bus", bus)?),
        );
        if let Some(p) = usb_addr.and_then(|e| e.get_attr("port")) {
            dev = dev.str("port", qemu_opt_value("input address port", p)?);
        }
        Ok(dev)
    };
    let options = inp.driver.as_deref().unwrap_or_default();
    if inp.bus != "virtio" {
        if let Some((k, v)) = options.first() {
            return Err(unsupported(
                &format!("input/driver {k}"),
                v,
                "virtio options are for virtio inputs",
            ));
        }
    }
    let virtio = |driver: &str| -> Result<DeviceProps> {
        let dev = DeviceProps::new(driver).str("id", id.as_str());
        Ok(virtio_options(dev, "input", options, &[])?.pci(buses, &inp.address))
    };
    Ok(Some(match (inp.kind.as_str(), inp.bus.as_str()) {
        (_, "ps2") => return Ok(None),
        ("tablet", "usb") => usb("usb-tablet")?,
        ("mouse", "usb") => usb("usb-mouse")?,
        ("keyboard", "usb") => usb("usb-kbd")?,
        ("tablet", "virtio") => virtio("virtio-tablet-pci")?,
        ("mouse", "virtio") => virtio("virtio-mouse-pci")?,
        ("keyboard", "virtio") => virtio("virtio-keyboard-pci")?,
        (k, b) => return Err(unsupported("input", &format!("{k}/{b}"), "not implemented")),
    }))
}

/// A USB device on the controller and port of its `<address type='usb' bus port>`
/// (port `1.2`: port 2 of the hub on port 1), else on `usb0` where QEMU finds room.
fn usb_placed(dev: DeviceProps, addr: Option<&Element>) -> Result<DeviceProps> {
    let bus = addr.and_then(|e| e.get_attr("bus")).unwrap_or("0");
    let mut dev = dev.str(
        "bus",
        format!("usb{}.0", qemu_opt_value("usb address bus", bus)?),
    );
    if let Some(p) = addr.and_then(|e| e.get_attr("port")) {
        dev = dev.str("port", qemu_opt_value("usb address port", p)?);
    }
    Ok(dev)
}

/// USB hubs, before the devices on their ports.
pub(super) fn hubs(a: &mut Argv, dom: &Domain) -> Result<()> {
    for (i, h) in dom.devices.hubs.iter().enumerate() {
        let addr = match &h.address {
            Some(Address::Other(e)) if e.get_attr("type") == Some("usb") => Some(e),
            None => None,
            Some(_) => return Err(unsupported("hub/address", "usb", "expected a USB address")),
        };
        a.device(&usb_placed(
            DeviceProps::new("usb-hub").str("id", format!("hub{i}")),
            addr,
        )?)?;
    }
    Ok(())
}

/// pvpanic on the ISA bus (`iobase`, default 0x505).
pub(super) fn panics(a: &mut Argv, dom: &Domain, buses: &PciBuses) -> Result<()> {
    for (i, p) in dom.devices.panics.iter().enumerate() {
        match p.model.as_deref() {
            // Hyper-V's crash MSRs: `hv-crash` on -cpu (machine.rs).
            Some("hyperv") => continue,
            Some("pvpanic") => {
                let dev = DeviceProps::new("pvpanic-pci").str("id", format!("panic{i}"));
                a.device(&dev.pci(buses, &p.address))?;
                continue;
            }
            _ => {}
        }
        let mut dev = DeviceProps::new("pvpanic");
        match &p.address {
            None => {}
            Some(Address::Other(e)) if e.get_attr("type") == Some("isa") => {
                if let Some(io) = e.get_attr("iobase") {
                    let v = io
                        .strip_prefix("0x")
                        .map_or_else(|| io.parse(), |h| u64::from_str_radix(h, 16))
                        .map_err(|_| unsupported("panic/address iobase", io, "not a number"))?;
                    dev = dev.hex("ioport", v);
                }
            }
            Some(_) => {
                return Err(unsupported(
                    "panic/address",
                    "isa",
                    "expected an ISA address",
                ))
            }
        }
        a.device(&dev)?;
    }
    Ok(())
}

pub(super) fn watchdogs(a: &mut Argv, dom: &Domain, buses: &PciBuses) -> Result<()> {
    let q35 = dom.is_q35();
    for (i, w) in dom.devices.watchdogs.iter().enumerate() {
        if let Some(dev) = watchdog_props(i, w, q35, buses)? {
            a.device(&dev)?;
        }
        let action = match w.action.as_str() {
            "dump" => return Err(unsupported("watchdog action", "dump", "not implemented")),
            "shutdown" => "poweroff",
            x => x,
        };
        a.pair("-action", format!("watchdog={action}"));
    }
    Ok(())
}

/// Watchdog `i`; `None` for q35's iTCO, part of the ICH9 chipset.
fn watchdog_props(
    i: usize,
    w: &Watchdog,
    q35: bool,
    buses: &PciBuses,
) -> Result<Option<DeviceProps>> {
    let id = format!("watchdog{i}");
    Ok(Some(match w.model.as_str() {
        "i6300esb" => DeviceProps::new("i6300esb")
            .str("id", id)
            .pci(buses, &w.address),
        "ib700" => DeviceProps::new("ib700").str("id", id),
        "itco" if q35 => return Ok(None),
        m => return Err(unsupported("watchdog model", m, "needs a q35 machine")),
    }))
}

pub(super) fn rngs(a: &mut Argv, dom: &Domain, buses: &PciBuses) -> Result<()> {
    for (i, r) in dom.devices.rngs.iter().enumerate() {
        if r.builtin {
            a.pair(
                "-object",
                format!("{{\"qom-type\":\"rng-builtin\",\"id\":\"objrng{i}\"}}"),
            );
            a.device(&rng_props(i, r, buses)?)?;
            continue;
        }
        a.pair(
            "-object",
            format!(
                "{{\"qom-type\":\"rng-random\",\"id\":\"objrng{i}\",\"filename\":{}}}",
                json_str(&r.backend)?
            ),
        );
        a.device(&rng_props(i, r, buses)?)?;
    }
    Ok(())
}

/// RNG `i`, reading object `objrngI`.
fn rng_props(i: usize, r: &Rng, buses: &PciBuses) -> Result<DeviceProps> {
    let driver = match r.model.as_str() {
        "virtio-transitional" => "virtio-rng-pci-transitional",
        "virtio-non-transitional" => "virtio-rng-pci-non-transitional",
        _ => "virtio-rng-pci",
    };
    let mut dev = DeviceProps::new(driver)
        .str("rng", format!("objrng{i}"))
        .str("id", format!("rng{i}"));
    if let Some((bytes, period)) = r.rate {
        dev = dev
            .uint("max-bytes", bytes.into())
            .uint("period", period.into());
    }
    let options = r.driver.as_deref().unwrap_or_default();
    Ok(virtio_options(dev, "rng", options, &[])?.pci(buses, &r.address))
}

pub(super) fn memballoon(a: &mut Argv, dom: &Domain, buses: &PciBuses) -> Result<()> {
    if let Some(m) = dom
        .devices
        .memballoon
        .as_ref()
        .filter(|m| m.model != "none")
    {
        a.device(&memballoon_props(m, buses)?)?;
    }
    Ok(())
}

fn memballoon_props(m: &Memballoon, buses: &PciBuses) -> Result<DeviceProps> {
    let driver = match m.model.as_str() {
        "virtio-transitional" => "virtio-balloon-pci-transitional",
        "virtio-non-transitional" => "virtio-balloon-pci-non-transitional",
        _ => "virtio-balloon-pci",
    };
    let dev = DeviceProps::new(driver).str("id", "balloon0").opt_uint(
        "guest-stats-polling-interval",
        m.stats_period.map(u64::from),
    );
    let options = m.driver.as_deref().unwrap_or_default();
    Ok(virtio_options(dev, "memballoon", options, &[])?.pci(buses, &m.address))
}

/// Untyped devices built here: IOMMUs, vsock, filesystems, smart cards, EGD RNGs and
/// the host's input devices.
pub(super) fn handles(el: &Element) -> bool {
    matches!(
        el.name.as_str(),
        "iommu" | "vsock" | "filesystem" | "smartcard" | "rng"
    ) || host_input(el)
}

/// `<input type='passthrough'|'evdev'>`: an input device of the host.
fn host_input(el: &Element) -> bool {
    el.name == "input" && matches!(el.get_attr("type"), Some("passthrough" | "evdev"))
}

/// The host's input devices, as libvirt 9.0 passes them: `passthrough` as a
/// virtio-input-host-pci on the guest's PCI bus, `evdev` as an `input-linux` object
/// that grabs the host device for the guest (QEMU opens the device at start, so it
/// must exist). Ids follow the typed inputs'.
pub(super) fn host_inputs(a: &mut Argv, dom: &Domain, buses: &PciBuses) -> Result<()> {
    let first = dom.devices.inputs.len();
    let hosts = dom.devices.other.iter().filter(|e| host_input(e));
    for (n, el) in hosts.enumerate() {
        let ty = el.get_attr("type").unwrap_or_default();
        let id = format!("input{}", first + n);
        let src = el
            .first("source")
            .ok_or_else(|| unsupported("input/source", ty, "a host device is needed"))?;
        let known: &[&str] = if ty == "passthrough" {
            &["source", "address", "alias", "driver"]
        } else {
            &["source", "alias"]
        };
        if let Some(c) = el.elements().find(|c| {
            !known.contains(&c.name.as_str()) || (c.name == "alias" && !crate::xml::user_alias(c))
        }) {
            return Err(unsupported(
                &format!("input/{}", c.name),
                ty,
                "not implemented",
            ));
        }
        if ty == "passthrough" {
            if el.get_attr("bus").unwrap_or("virtio") != "virtio" {
                return Err(unsupported(
                    "input bus",
                    el.get_attr("bus").unwrap_or(""),
                    "passthrough is virtio's",
                ));
            }
            let evdev = src
                .get_attr("evdev")
                .ok_or_else(|| unsupported("input/source evdev", ty, "missing"))?;
            let dev = DeviceProps::new("virtio-input-host-pci")
                .str("id", id.as_str())
                .str("evdev", evdev);
            let options = el
                .first("driver")
                .map(|d| d.attrs.as_slice())
                .unwrap_or(&[]);
            let dev = virtio_options(dev, "input", options, &[])?;
            a.device(&dev.pci(buses, &other_address(el)?))?;
            continue;
        }
        let mut obj = serde_json::json!({"qom-type": "input-linux", "id": id});
        for (k, v) in &src.attrs {
            let what = format!("input/source {k}");
            match (k.as_str(), v.as_str()) {
                ("dev", p) => obj["evdev"] = serde_json::json!(p),
                ("repeat", "on" | "off") => obj["repeat"] = serde_json::json!(v == "on"),
                ("grab", "all") => obj["grab_all"] = serde_json::json!(true),
                ("grabToggle", t) => obj["grab-toggle"] = serde_json::json!(t),
                _ => return Err(unsupported(&what, v, "not implemented")),
            }
        }
        if obj.get("evdev").is_none() {
            return Err(unsupported("input/source dev", ty, "missing"));
        }
        a.pair("-object", obj.to_string());
    }
    Ok(())
}

/// The `<address>` of an untyped device; `None` lets QEMU choose the slot.
fn other_address(el: &Element) -> Result<Option<Address>> {
    Address::of(el).map_err(|e| unsupported(&format!("{}/address", el.name), "", e))
}

/// `<iommu model='intel|virtio'>` and `<vsock>`, as libvirt 9.0 writes them.
pub(super) fn iommu_vsock(a: &mut Argv, dom: &Domain, accel: &str, buses: &PciBuses) -> Result<()> {
    for el in dom
        .devices
        .other
        .iter()
        .filter(|e| matches!(e.name.as_str(), "iommu" | "vsock"))
    {
        let model = el.get_attr("model").unwrap_or("virtio");
        let dev = match (el.name.as_str(), model) {
            ("iommu", "intel") => {
                if !dom.is_q35() {
                    return Err(unsupported("iommu model", "intel", "needs a q35 machine"));
                }
                let mut dev = DeviceProps::new("intel-iommu").str("id", "iommu0");
                for (k, v) in el
                    .first("driver")
                    .map(|d| d.attrs.as_slice())
                    .unwrap_or(&[])
                {
                    let (opt, what) = match k.as_str() {
                        "intremap" => ("intremap", "iommu/driver intremap"),
                        "caching_mode" => ("caching-mode", "iommu/driver caching_mode"),
                        "eim" => ("eim", "iommu/driver eim"),
                        "iotlb" => ("device-iotlb", "iommu/driver iotlb"),
                        "aw_bits" => {
                            let n: u64 = v.parse().map_err(|_| {
                                unsupported("iommu/driver aw_bits", v, "not a number")
                            })?;
                            dev = dev.uint("aw-bits", n);
                            continue;
                        }
                        k => {
                            return Err(unsupported(
                                &format!("iommu/driver {k}"),
                                v,
                                "not implemented",
                            ))
                        }
                    };
                    let on = match v.as_str() {
                        "on" => true,
                        "off" => false,
                        v => return Err(unsupported(what, v, "expected on or off")),
                    };
                    // Interrupt remapping needs QEMU's own IOAPIC (split irqchip with KVM).
                    if opt == "intremap" && on && accel == "kvm" && !split_irqchip(dom) {
                        return Err(unsupported(
                            what,
                            v,
                            "needs <features><ioapic driver='qemu'/>",
                        ));
                    }
                    // QEMU: x2APIC mode needs KVM's split irqchip.
                    if opt == "eim" && on && (accel != "kvm" || !split_irqchip(dom)) {
                        return Err(unsupported(
                            what,
                            v,
                            "needs KVM and <features><ioapic driver='qemu'/>",
                        ));
                    }
                    dev = dev.str(opt, if on { "on" } else { "off" });
                }
                dev
            }
            ("iommu", "virtio") => DeviceProps::new("virtio-iommu-pci")
                .str("id", "iommu0")
                .pci(buses, &other_address(el)?),
            ("iommu", m) => return Err(unsupported("iommu model", m, "not for x86")),
            ("vsock", m) => {
                let driver = match m {
                    "virtio" => "vhost-vsock-pci",
                    "virtio-transitional" => "vhost-vsock-pci-transitional",
                    "virtio-non-transitional" => "vhost-vsock-pci-non-transitional",
                    m => return Err(unsupported("vsock model", m, "unknown")),
                };
                let cid = el.first("cid");
                let addr = cid
                    .and_then(|c| c.get_attr("address"))
                    .filter(|_| cid.and_then(|c| c.get_attr("auto")) != Some("yes"))
                    .ok_or_else(|| {
                        unsupported(
                            "vsock/cid",
                            "auto",
                            "choosing a free CID is not implemented; give an address",
                        )
                    })?;
                let n: u64 = addr
                    .parse()
                    .map_err(|_| unsupported("vsock/cid address", addr, "not a number"))?;
                if n < 3 {
                    return Err(unsupported(
                        "vsock/cid address",
                        addr,
                        "guest CIDs start at 3",
                    ));
                }
                DeviceProps::new(driver)
                    .str("id", "vsock0")
                    .uint("guest-cid", n)
                    .pci(buses, &other_address(el)?)
            }
            (n, _) => return Err(unsupported(n, model, "not implemented")),
        };
        a.device(&dev)?;
    }
    Ok(())
}

/// `<features><ioapic driver='qemu'/>`: the split irqchip (KVM only).
pub(super) fn split_irqchip(dom: &Domain) -> bool {
    dom.feature("ioapic").and_then(|f| f.get_attr("driver")) == Some("qemu")
}

/// Whether the guest's memory is shared with other processes (vhost-user needs it).
fn shared_memory(dom: &Domain) -> bool {
    let global = dom
        .other
        .iter()
        .find(|e| e.name == "memoryBacking")
        .and_then(|m| m.first("access"))
        .and_then(|a| a.get_attr("mode"))
        == Some("shared");
    let cells: Vec<&Element> = dom
        .cpu
        .iter()
        .flat_map(|c| c.other.iter().filter(|e| e.name == "numa"))
        .flat_map(|n| n.children_named("cell"))
        .collect();
    if cells.is_empty() {
        return global;
    }
    cells.iter().all(|c| match c.get_attr("memAccess") {
        Some(m) => m == "shared",
        None => global,
    })
}

/// The 9p device of a filesystem's `model`: the (non-)transitional variant, as
/// libvirt passes it.
fn virtio_9p_driver(fs: &Element) -> Result<&'static str> {
    Ok(match fs.get_attr("model") {
        None | Some("virtio") => "virtio-9p-pci",
        Some("virtio-transitional") => "virtio-9p-pci-transitional",
        Some("virtio-non-transitional") => "virtio-9p-pci-non-transitional",
        Some(m) => return Err(unsupported("filesystem model", m, "not a virtio model")),
    })
}

/// `<filesystem type='mount'>`: a host directory through 9p (`-fsdev local` +
/// virtio-9p-pci), or through virtio-fs from a running virtiofsd's `<source socket>`.
pub(super) fn filesystems(a: &mut Argv, dom: &Domain, buses: &PciBuses) -> Result<()> {
    let fss = dom.devices.other.iter().filter(|e| e.name == "filesystem");
    for (i, fs) in fss.enumerate() {
        let ty = fs.get_attr("type").unwrap_or("mount");
        if ty != "mount" {
            return Err(unsupported(
                "filesystem type",
                ty,
                "only 'mount' (a host directory)",
            ));
        }
        let driver = fs.first("driver");
        let dtype = driver.and_then(|d| d.get_attr("type")).unwrap_or("path");
        let tag = fs
            .first("target")
            .and_then(|t| t.get_attr("dir"))
            .ok_or_else(|| unsupported("filesystem/target", "", "no dir (the mount tag)"))?;
        // virtiofs' <binary> is refused below, with the reason.
        let known = [
            "driver", "source", "target", "address", "alias", "readonly", "binary",
        ];
        if dtype != "virtiofs" && fs.first("binary").is_some() {
            return Err(unsupported("filesystem/binary", dtype, "only for virtiofs"));
        }
        if let Some(c) = fs.elements().find(|c| !known.contains(&c.name.as_str())) {
            return Err(unsupported(
                &format!("filesystem/{}", c.name),
                dtype,
                "not implemented",
            ));
        }
        let addr = Address::of(fs).map_err(|e| unsupported("filesystem/address", "", e))?;
        let id = format!("fs{i}");
        let dev = match dtype {
            "path" => {
                let dir = fs
                    .first("source")
                    .and_then(|s| s.get_attr("dir"))
                    .ok_or_else(|| unsupported("filesystem/source", "", "no dir"))?;
                let model = match fs.get_attr("accessmode").unwrap_or("passthrough") {
                    "passthrough" => "passthrough",
                    "mapped" => "mapped",
                    "squash" => "none",
                    m => return Err(unsupported("filesystem accessmode", m, "unknown")),
                };
                let mut o = format!("local,security_model={model}");
                if let Some(m) = fs.get_attr("multidevs") {
                    if !matches!(m, "remap" | "forbid" | "warn" | "default") {
                        return Err(unsupported("filesystem multidevs", m, "unknown"));
                    }
                    if m != "default" {
                        o.push_str(&format!(",multidevs={m}"));
                    }
                }
                for k in ["fmode", "dmode"] {
                    if let Some(v) = fs.get_attr(k) {
                        if !v.chars().all(|c| c.is_digit(8)) {
                            return Err(unsupported(
                                &format!("filesystem {k}"),
                                v,
                                "not an octal mode",
                            ));
                        }
                        o.push_str(&format!(",{k}={v}"));
                    }
                }
                match driver.and_then(|d| d.get_attr("wrpolicy")) {
                    None => {}
                    Some("immediate") => o.push_str(",writeout=immediate"),
                    Some(w) => return Err(unsupported("filesystem/driver wrpolicy", w, "unknown")),
                }
                o.push_str(&format!(
                    ",id=fsdev-{id},path={}",
                    path_opt("filesystem/source dir", Path::new(dir))?
                ));
                if fs.first("readonly").is_some() {
                    o.push_str(",readonly=on");
                }
                a.pair("-fsdev", o);
                DeviceProps::new(virtio_9p_driver(fs)?)
                    .str("id", id.as_str())
                    .str("fsdev", format!("fsdev-{id}"))
                    .str("mount_tag", tag)
            }
            "virtiofs" => {
                if let Some(m) = fs.get_attr("model").filter(|m| *m != "virtio") {
                    return Err(unsupported(
                        "filesystem model",
                        m,
                        "virtiofs has no such variant",
                    ));
                }
                let sock = fs.first("source").and_then(|s| s.get_attr("socket"));
                let sock = sock.filter(|_| fs.first("binary").is_none()).ok_or_else(|| {
                    unsupported(
                        "filesystem/driver type='virtiofs'",
                        "",
                        "starting virtiofsd is not implemented; name a running one's <source socket>",
                    )
                })?;
                if !shared_memory(dom) {
                    return Err(unsupported(
                        "filesystem/driver type='virtiofs'",
                        "",
                        "needs shared memory (<memoryBacking><access mode='shared'/>)",
                    ));
                }
                if fs.first("readonly").is_some() {
                    return Err(unsupported(
                        "filesystem/readonly",
                        "virtiofs",
                        "virtiofsd decides this",
                    ));
                }
                a.pair(
                    "-chardev",
                    format!(
                        "socket,id=chr-vu-{id},path={}",
                        path_opt("filesystem/source socket", Path::new(sock))?
                    ),
                );
                let mut dev = DeviceProps::new("vhost-user-fs-pci")
                    .str("id", id.as_str())
                    .str("chardev", format!("chr-vu-{id}"));
                if let Some(q) = driver.and_then(|d| d.get_attr("queue")) {
                    let n: u64 = q
                        .parse()
                        .map_err(|_| unsupported("filesystem/driver queue", q, "not a number"))?;
                    dev = dev.uint("queue-size", n);
                }
                dev.str("tag", tag)
            }
            t => {
                return Err(unsupported(
                    "filesystem/driver type",
                    t,
                    "expected path or virtiofs",
                ))
            }
        };
        let options = driver.map(|d| d.attrs.as_slice()).unwrap_or(&[]);
        let dev = virtio_options(dev, "filesystem", options, &["type", "wrpolicy", "queue"])?;
        a.device(&dev.pci(buses, &addr))?;
    }
    Ok(())
}

/// CCID controllers (`usb-ccid`) and the smart cards on them, as libvirt 9.0 writes
/// them: a card emulated from the host's NSS database or three of its certificates,
/// or passed through from a SPICE client or a socket.
pub(super) fn smartcards(a: &mut Argv, dom: &Domain) -> Result<()> {
    for c in dom.devices.controllers.iter().filter(|c| c.kind == "ccid") {
        a.device(&DeviceProps::new("usb-ccid").str("id", format!("ccid{}", c.index)))?;
    }
    let cards = dom.devices.other.iter().filter(|e| e.name == "smartcard");
    let mut taken = std::collections::BTreeSet::new();
    for (i, sc) in cards.enumerate() {
        let mode = sc.get_attr("mode").unwrap_or("");
        let ccid = match sc.first("address") {
            Some(ad) if ad.get_attr("type") == Some("ccid") => {
                ad.get_attr("controller").unwrap_or("0").to_owned()
            }
            Some(_) => {
                return Err(unsupported(
                    "smartcard/address",
                    mode,
                    "expected a CCID address",
                ))
            }
            None => "0".to_owned(),
        };
        // QEMU's CCID reader has one slot.
        if !taken.insert(ccid.clone()) {
            return Err(unsupported(
                "smartcard/address controller",
                &ccid,
                "a CCID controller holds one card",
            ));
        }
        let bus = format!(
            "ccid{}.0",
            qemu_opt_value("smartcard/address controller", &ccid)?
        );
        let id = format!("smartcard{i}");
        let known: &[&str] = match mode {
            "host-certificates" => &["certificate", "database", "address", "alias"],
            "passthrough" => &["source", "protocol", "address", "alias"],
            _ => &["address", "alias"],
        };
        if let Some(c) = sc.elements().find(|c| !known.contains(&c.name.as_str())) {
            return Err(unsupported(
                &format!("smartcard/{}", c.name),
                mode,
                "not implemented",
            ));
        }
        let dev = match mode {
            "host" => DeviceProps::new("ccid-card-emulated").str("backend", "nss-emulated"),
            "host-certificates" => {
                let certs: Vec<String> =
                    sc.children_named("certificate").map(|c| c.text()).collect();
                if certs.len() != 3 {
                    return Err(unsupported(
                        "smartcard/certificate",
                        mode,
                        "exactly three are needed",
                    ));
                }
                let db = sc
                    .first("database")
                    .map_or_else(|| "/etc/pki/nssdb".to_owned(), |d| d.text());
                let mut dev = DeviceProps::new("ccid-card-emulated").str("backend", "certificates");
                for (n, c) in certs.iter().enumerate() {
                    dev = dev.str(["cert1", "cert2", "cert3"][n], c.as_str());
                }
                dev.str("db", path_opt("smartcard/database", Path::new(&db))?)
            }
            "passthrough" => {
                let chr = format!("charsmartcard{i}");
                a.pair("-chardev", smartcard_chardev(dom, sc, &chr)?);
                DeviceProps::new("ccid-card-passthru").str("chardev", chr)
            }
            m => {
                return Err(unsupported(
                    "smartcard mode",
                    m,
                    "expected host, host-certificates or passthrough",
                ))
            }
        };
        a.device(&dev.str("id", id).str("bus", bus))?;
    }
    Ok(())
}

/// The chardev a passed-through smart card reads: SPICE's, or a TCP/UNIX socket.
fn smartcard_chardev(dom: &Domain, sc: &Element, id: &str) -> Result<String> {
    let ty = sc.get_attr("type").unwrap_or("");
    if ty == "spicevmc" {
        if !dom
            .devices
            .graphics
            .iter()
            .any(|g| g.kind == crate::xml::GraphicsKind::Spice)
        {
            return Err(unsupported(
                "smartcard type",
                ty,
                "needs <graphics type='spice'>",
            ));
        }
        return Ok(format!("spicevmc,id={id},name=smartcard"));
    }
    socket_chardev("smartcard", sc, id)
}

/// A TCP or UNIX socket chardev (`type`, `<source mode host service path>` with
/// `<reconnect>`, `<protocol type>`) of a device outside the serial family: a
/// passed-through smart card, an EGD entropy source.
fn socket_chardev(what: &str, el: &Element, id: &str) -> Result<String> {
    let ty = el.get_attr("type").unwrap_or("");
    let src = el
        .first("source")
        .ok_or_else(|| unsupported(&format!("{what}/source"), ty, "missing"))?;
    let mut reconnect = String::new();
    for c in src.elements() {
        match (
            c.name.as_str(),
            c.get_attr("enabled"),
            c.get_attr("timeout"),
        ) {
            ("reconnect", Some("yes"), Some(t)) => {
                let t: u32 = t.parse().map_err(|_| {
                    unsupported(
                        &format!("{what}/source/reconnect timeout"),
                        t,
                        "not a number",
                    )
                })?;
                reconnect = format!(",reconnect={t}");
            }
            ("reconnect", Some("no"), _) => {}
            (n, _, _) => {
                return Err(unsupported(
                    &format!("{what}/source/{n}"),
                    ty,
                    "not implemented",
                ))
            }
        }
    }
    let server = match src.get_attr("mode").unwrap_or("connect") {
        "bind" => ",server=on,wait=off",
        "connect" => reconnect.as_str(),
        m => {
            return Err(unsupported(
                &format!("{what}/source mode"),
                m,
                "expected bind or connect",
            ))
        }
    };
    let telnet = match el.first("protocol").and_then(|p| p.get_attr("type")) {
        None | Some("raw") => "",
        Some("telnet") => ",telnet=on",
        Some(p) => {
            return Err(unsupported(
                &format!("{what}/protocol type"),
                p,
                "expected raw or telnet",
            ))
        }
    };
    match ty {
        "tcp" => {
            let host = src.get_attr("host").unwrap_or("localhost");
            let port = src
                .get_attr("service")
                .ok_or_else(|| unsupported(&format!("{what}/source"), "tcp", "no service"))?;
            Ok(format!(
                "socket,id={id},host={},port={}{telnet}{server}",
                qemu_opt_value("source host", host)?,
                qemu_opt_value("source service", port)?
            ))
        }
        "unix" => {
            let path = src
                .get_attr("path")
                .ok_or_else(|| unsupported(&format!("{what}/source"), "unix", "no path"))?;
            Ok(format!(
                "socket,id={id},path={}{server}",
                path_opt("source path", Path::new(path))?
            ))
        }
        t => Err(unsupported(
            &format!("{what} type"),
            t,
            "expected tcp or unix",
        )),
    }
}

/// Entropy from an EGD daemon on a socket (`<rng><backend model='egd'>`): an
/// `rng-egd` object on the socket's chardev and a virtio-rng device, numbered after
/// the other RNGs.
pub(super) fn egd_rngs(a: &mut Argv, dom: &Domain, buses: &PciBuses) -> Result<()> {
    let first = dom.devices.rngs.len();
    let egds = dom.devices.other.iter().filter(|e| e.name == "rng");
    for (k, el) in egds.enumerate() {
        let i = first + k;
        let model = el.get_attr("model").unwrap_or("virtio");
        if model != "virtio" {
            return Err(unsupported("rng model", model, "expected virtio"));
        }
        let backend = el
            .first("backend")
            .ok_or_else(|| unsupported("rng/backend", "", "missing"))?;
        let bm = backend.get_attr("model").unwrap_or("");
        if let Some(c) = el
            .elements()
            .find(|c| !matches!(c.name.as_str(), "backend" | "address" | "alias" | "rate"))
        {
            return Err(unsupported(
                &format!("rng/{}", c.name),
                bm,
                "not implemented",
            ));
        }
        if bm != "egd" {
            return Err(unsupported("rng/backend model", bm, "not implemented"));
        }
        let chr = format!("charrng{i}");
        a.pair("-chardev", socket_chardev("rng/backend", backend, &chr)?);
        a.pair(
            "-object",
            format!("{{\"qom-type\":\"rng-egd\",\"id\":\"objrng{i}\",\"chardev\":\"{chr}\"}}"),
        );
        let mut dev = DeviceProps::new("virtio-rng-pci")
            .str("rng", format!("objrng{i}"))
            .str("id", format!("rng{i}"));
        if let Some(r) = el.first("rate") {
            let bytes: u64 = r
                .parse_attr("bytes")
                .map_err(|e| unsupported("rng/rate bytes", "", e))?
                .ok_or_else(|| unsupported("rng/rate", "", "no bytes"))?;
            let period: u64 = r
                .parse_attr("period")
                .map_err(|e| unsupported("rng/rate period", "", e))?
                .unwrap_or(1000);
            dev = dev.uint("max-bytes", bytes).uint("period", period);
        }
        let addr = Address::of(el).map_err(|e| unsupported("rng/address", "egd", e))?;
        a.device(&dev.pci(buses, &addr))?;
    }
    Ok(())
}

/// For hotplug: the QMP `object-add` arguments of RNG `i` of `dom` as backend
/// `objrngN` (`n`) and its device `rngN`, as start builds them.
pub fn hotplug_rng(dom: &Domain, i: usize, n: usize) -> Result<(serde_json::Value, DeviceProps)> {
    let r = dom
        .devices
        .rngs
        .get(i)
        .ok_or_else(|| unsupported("rng", "", "no such RNG"))?;
    let object = if r.builtin {
        serde_json::json!({"qom-type": "rng-builtin", "id": format!("objrng{n}")})
    } else {
        let file: serde_json::Value = serde_json::from_str(&json_str(&r.backend)?)
            .map_err(|e| unsupported("rng backend", "", e))?;
        serde_json::json!({"qom-type": "rng-random", "id": format!("objrng{n}"), "filename": file})
    };
    Ok((object, rng_props(n, r, &PciBuses::of(dom))?))
}
