//! How the guest boots: firmware (pflash blockdevs or `-bios`), direct kernel boot
//! (`-kernel`/`-initrd`/`-append`/`-dtb`) and the `-boot` order and menu.

use crate::xml::{BootDev, Domain};

use super::machine::uses_pflash;
use super::{json_str, path_opt, unsupported, Argv, CommandLineError, Result};

/// Firmware: pflash code (and NVRAM) as read-only/read-write blockdevs, or `-bios`.
pub(super) fn firmware(a: &mut Argv, dom: &Domain) -> Result<()> {
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
        if let Some(nv) = &dom.os.nvram {
            a.pair("-blockdev", format!("{{\"driver\":\"file\",\"filename\":{},\"node-name\":\"libvirt-pflash1-storage\"}}", json_str(nv)?));
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
            Some(true) => ",menu=on",
            _ => "",
        };
        a.pair("-boot", format!("order={order}{menu},strict=on"));
    } else if dom.os.bootmenu == Some(true) {
        a.pair("-boot", "menu=on,strict=on");
    }
}
