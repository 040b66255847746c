//! How the guest boots: firmware (pflash blockdevs or `-bios`), direct kernel boot
//! (`-kernel`/`-initrd`/`-append`/`-dtb`) and the `-boot` order and menu.

use std::path::PathBuf;

use crate::xml::{BootDev, DiskSource, Domain, NvramSource};

use super::disks::network_storage;
use super::machine::{has_nvram, uses_pflash};
use super::{json_str, path_opt, unsupported, Argv, CommandLineError, Result};

/// Firmware: pflash code (and NVRAM) as read-only/read-write blockdevs, or `-bios`.
pub(super) fn firmware(a: &mut Argv, dom: &Domain) -> Result<()> {
    let nv = nvram_storage(dom)?;
    if uses_pflash(dom) {
        let loader = dom
            .os
            .loader
            .as_ref()
            .and_then(|l| l.path.as_ref())
            .ok_or_else(|| {
                unsupported(
                    "os/loader",
                    "",
                    "a pflash loader needs a path (firmware='efi' chooses one at start)",
                )
            })?;
        a.pair("-blockdev", format!("{{\"driver\":\"file\",\"filename\":{},\"node-name\":\"libvirt-pflash0-storage\",\"read-only\":true}}", json_str(loader)?));
        a.pair("-blockdev", "{\"node-name\":\"libvirt-pflash0-format\",\"read-only\":true,\"driver\":\"raw\",\"file\":\"libvirt-pflash0-storage\"}");
        if let Some(nv) = nv {
            a.pair("-blockdev", nv);
            a.pair("-blockdev", "{\"node-name\":\"libvirt-pflash1-format\",\"read-only\":false,\"driver\":\"raw\",\"file\":\"libvirt-pflash1-storage\"}");
        }
        // Secure Boot firmware keeps its variables safe from the guest only with SMM.
        if dom.os.loader.as_ref().and_then(|l| l.secure) == Some(true) {
            a.pair("-global", "driver=cfi.pflash01,property=secure,value=on");
        }
    } else if let Some(l) = dom.os.loader.as_ref().and_then(|l| l.path.as_ref()) {
        a.pair("-bios", path_opt("os/loader", l)?);
    }
    Ok(())
}

/// The storage `-blockdev` of the variable store (pflash1): its file, or a network
/// store through QEMU's block driver for the protocol, as libvirt 9.0 builds it.
fn nvram_storage(dom: &Domain) -> Result<Option<String>> {
    if !has_nvram(dom) {
        return Ok(None);
    }
    if let Some(NvramSource::Network(src)) = &dom.os.nvram_source {
        if let DiskSource::Network {
            protocol, source, ..
        } = src
        {
            // `<auth>`, `<tls>`, ...: the network disks' key plumbing is not done.
            if let Some(c) = source.elements().find(|c| c.name != "host") {
                return Err(unsupported(
                    &format!("os/nvram/source/{}", c.name),
                    protocol,
                    "not implemented",
                ));
            }
        }
        let mut node = network_storage(0, src)?;
        node["node-name"] = serde_json::json!("libvirt-pflash1-storage");
        return Ok(Some(node.to_string()));
    }
    let Some(nv) = &dom.os.nvram else {
        return Ok(None);
    };
    Ok(Some(format!(
        "{{\"driver\":\"file\",\"filename\":{},\"node-name\":\"libvirt-pflash1-storage\"}}",
        json_str(nv)?
    )))
}

/// `<os>` children beyond the typed ones: `<smbios>` (read with `<sysinfo>`),
/// `<firmware>` (read when the firmware is chosen), `<bios rebootTimeout
/// useserial>` and `<acpi><table>`; anything else is refused by name.
pub(super) fn os_extras(a: &mut Argv, dom: &Domain) -> Result<()> {
    for e in &dom.os.other {
        match e.name.as_str() {
            "firmware" => {}
            "smbios" => match e.get_attr("mode") {
                Some("sysinfo" | "emulate" | "host") => {}
                m => return Err(unsupported("os/smbios mode", m.unwrap_or(""), "unknown")),
            },
            "bios" => {
                for (k, v) in &e.attrs {
                    match k.as_str() {
                        "rebootTimeout" => {
                            let t: i32 = v.parse().map_err(|_| {
                                unsupported("os/bios rebootTimeout", v, "not a number")
                            })?;
                            a.pair("-boot", format!("reboot-timeout={t}"));
                        }
                        // SeaBIOS' console on the first serial port.
                        "useserial" if v == "yes" => a.pair("-device", "sga"),
                        "useserial" => {}
                        k => {
                            return Err(unsupported(&format!("os/bios {k}"), v, "not implemented"))
                        }
                    }
                }
            }
            "acpi" => {
                for t in e.elements() {
                    let ty = t.get_attr("type").unwrap_or("");
                    if t.name != "table" || !matches!(ty, "slic" | "msdm") {
                        return Err(unsupported(
                            &format!("os/acpi/{}", t.name),
                            ty,
                            "expected table slic or msdm",
                        ));
                    }
                    let file = PathBuf::from(t.text().trim());
                    let sig = ty.to_ascii_uppercase();
                    a.pair(
                        "-acpitable",
                        format!("sig={sig},file={}", path_opt("os/acpi/table", &file)?),
                    );
                }
            }
            n => return Err(unsupported(&format!("os/{n}"), "", "not implemented")),
        }
    }
    Ok(())
}

/// Direct kernel boot.
pub(super) fn kernel(a: &mut Argv, dom: &Domain) -> Result<()> {
    let Some(k) = &dom.os.kernel else {
        return Ok(());
    };
    a.pair("-kernel", path_opt("os/kernel", k)?);
    if let Some(i) = &dom.os.initrd {
        a.pair("-initrd", path_opt("os/initrd", i)?);
    }
    if let Some(c) = &dom.os.cmdline {
        if c.chars().any(char::is_control) {
            return Err(CommandLineError::Unsafe {
                what: "os/cmdline".into(),
                value: c.clone(),
                reason: "contains control characters",
            });
        }
        // -append takes the whole argument verbatim (not option syntax).
        a.pair("-append", c.as_str());
    }
    if let Some(t) = &dom.os.dtb {
        a.pair("-dtb", path_opt("os/dtb", t)?);
    }
    Ok(())
}

/// `-boot`: `<os><boot dev>` order unless devices carry their own `<boot order>`
/// (then each device gets a `bootindex`).
pub(super) fn order(a: &mut Argv, dom: &Domain) {
    let d = &dom.devices;
    let per_device_boot = d.disks.iter().any(|x| x.boot_order.is_some())
        || d.interfaces.iter().any(|x| x.boot_order.is_some());
    if !per_device_boot && !dom.os.boot.is_empty() {
        let order: String = dom
            .os
            .boot
            .iter()
            .map(|b| match b {
                BootDev::Fd => 'a',
                BootDev::Hd => 'c',
                BootDev::Cdrom => 'd',
                BootDev::Network => 'n',
            })
            .collect();
        let menu = match dom.os.bootmenu {
            Some(true) => ",menu=on".to_owned() + &splash(dom),
            _ => String::new(),
        };
        a.pair("-boot", format!("order={order}{menu},strict=on"));
    } else if dom.os.bootmenu == Some(true) {
        a.pair("-boot", format!("menu=on{},strict=on", splash(dom)));
    }
}

/// `<bootmenu timeout>` as QEMU's `splash-time` (ms), as libvirt passes it.
fn splash(dom: &Domain) -> String {
    dom.os
        .bootmenu_timeout
        .map(|t| format!(",splash-time={t}"))
        .unwrap_or_default()
}
