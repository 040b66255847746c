//! Disks: each medium as a `-blockdev` pair (protocol node `libvirt-N-storage`, format
//! node `libvirt-N-format`) and the guest device on its bus, numbered per bus.

use std::path::PathBuf;

use crate::xml::{Address, Disk, DiskBus, DiskDevice, DiskSource, Domain};

use super::device::{DeviceProps, PciBuses};
use super::{json_str, qemu_opt_value, unsupported, Argv, LaunchContext, Result};

/// The next free unit on each bus that numbers its drives.
#[derive(Default)]
pub(super) struct DiskUnits {
    ide: u32,
    sata: u32,
    scsi: u32,
    fd: u32,
}

pub(super) fn disks(
    a: &mut Argv,
    dom: &Domain,
    ctx: &LaunchContext,
    buses: &PciBuses,
) -> Result<()> {
    let q35 = dom.is_q35();
    let mut units = DiskUnits::default();
    for (i, disk) in dom.devices.disks.iter().enumerate() {
        refuse_unhandled(disk)?;
        let bus = disk.bus.ok_or_else(|| {
            unsupported(
                "disk target",
                &disk.target_dev,
                "no bus (fill_defaults first)",
            )
        })?;
        let has_media = match &disk.source {
            Some(src) => {
                for b in blockdevs(i, disk, src, ctx)? {
                    a.pair("-blockdev", b);
                }
                true
            }
            None => false,
        };
        let dev = disk_props(i, disk, bus, has_media, q35, &mut units, buses)?;
        a.device(&dev)?;
    }
    Ok(())
}

fn refuse_unhandled(disk: &Disk) -> Result<()> {
    if let Some(c) = disk.unhandled.first() {
        return Err(unsupported(
            &format!("disk/{}", c.name),
            &disk.target_dev,
            "not implemented",
        ));
    }
    if let Some((k, v)) = disk.driver.unhandled.first() {
        return Err(unsupported(
            &format!("disk/driver {k}"),
            v,
            "not implemented",
        ));
    }
    Ok(())
}

/// The host path of a disk's medium (volumes as the storage daemon resolved them).
fn source_path(src: &DiskSource, ctx: &LaunchContext) -> Result<(&'static str, PathBuf)> {
    Ok(match src {
        DiskSource::File(p) => ("file", p.clone()),
        DiskSource::Block(p) => ("host_device", p.clone()),
        DiskSource::Volume { pool, volume } => (
            "file",
            ctx.volume_paths
                .iter()
                .find(|(p, v, _)| p == pool && v == volume)
                .map(|(_, _, path)| path.clone())
                .ok_or_else(|| {
                    unsupported(
                        "disk source",
                        &format!("{pool}/{volume}"),
                        "volume not resolved",
                    )
                })?,
        ),
    })
}

/// The two `-blockdev` JSON objects of disk `i`: storage, then format.
fn blockdevs(i: usize, disk: &Disk, src: &DiskSource, ctx: &LaunchContext) -> Result<[String; 2]> {
    let (driver, path) = source_path(src, ctx)?;
    let ro = disk.readonly;
    let cache_direct = matches!(
        disk.driver.cache.as_deref(),
        Some("none") | Some("directsync")
    );
    let no_flush = disk.driver.cache.as_deref() == Some("unsafe");
    let mut file = format!(
        "{{\"driver\":\"{driver}\",\"filename\":{},\"node-name\":\"libvirt-{i}-storage\",\"auto-read-only\":true",
        json_str(&path)?
    );
    if matches!(
        disk.driver.io.as_deref(),
        Some("native") | Some("io_uring") | Some("threads")
    ) {
        file.push_str(&format!(
            ",\"aio\":\"{}\"",
            disk.driver.io.as_deref().unwrap_or("threads")
        ));
    }
    if disk.driver.discard.as_deref() == Some("unmap") {
        file.push_str(",\"discard\":\"unmap\"");
    }
    file.push_str(&format!(
        ",\"cache\":{{\"direct\":{cache_direct},\"no-flush\":{no_flush}}}}}"
    ));
    let format = disk.driver.format.as_deref().unwrap_or("raw");
    let fmt = format!(
        "{{\"node-name\":\"libvirt-{i}-format\",\"read-only\":{ro},\"driver\":\"{format}\",\"file\":\"libvirt-{i}-storage\"}}"
    );
    Ok([file, fmt])
}

/// The guest device of disk `i`; `has_media`: its format node exists (`drive=`).
fn disk_props(
    i: usize,
    disk: &Disk,
    bus: DiskBus,
    has_media: bool,
    q35: bool,
    units: &mut DiskUnits,
    buses: &PciBuses,
) -> Result<DeviceProps> {
    let cd = disk.device == DiskDevice::Cdrom;
    let mut dev = match (bus, disk.device) {
        (DiskBus::Virtio, DiskDevice::Disk) => {
            DeviceProps::new("virtio-blk-pci").pci(buses, &disk.address)
        }
        (DiskBus::Virtio, _) => {
            return Err(unsupported(
                "disk target bus",
                "virtio",
                "cdrom and floppy cannot be virtio",
            ))
        }
        (DiskBus::Sata, _) => {
            if !q35 {
                return Err(unsupported(
                    "disk target bus",
                    "sata",
                    "needs a q35 machine",
                ));
            }
            let u = drive_unit(&disk.address, units.sata, 6, &disk.target_dev)?;
            units.sata = u + 1;
            DeviceProps::new(if cd { "ide-cd" } else { "ide-hd" }).str("bus", format!("ide.{u}"))
        }
        (DiskBus::Ide, _) => {
            let u = match &disk.address {
                Some(Address::Drive { bus, unit, .. }) => bus * 2 + unit,
                _ => units.ide,
            };
            units.ide = u + 1;
            if u > 3 {
                return Err(unsupported(
                    "disk target",
                    &disk.target_dev,
                    "at most 4 IDE drives",
                ));
            }
            DeviceProps::new(if cd { "ide-cd" } else { "ide-hd" })
                .str("bus", format!("ide.{}", u / 2))
                .uint("unit", (u % 2).into())
        }
        (DiskBus::Scsi, _) => {
            let u = drive_unit(&disk.address, units.scsi, 16384, &disk.target_dev)?;
            units.scsi = u + 1;
            DeviceProps::new(if cd { "scsi-cd" } else { "scsi-hd" })
                .str("bus", "scsi0.0")
                .uint("channel", 0)
                .uint("scsi-id", 0)
                .uint("lun", u.into())
        }
        (DiskBus::Usb, _) => DeviceProps::new("usb-storage").str("bus", "usb0.0"),
        (DiskBus::Fdc, _) => {
            let u = units.fd;
            units.fd += 1;
            DeviceProps::new("floppy").uint("unit", u.into())
        }
    };
    if has_media {
        dev = dev.str("drive", format!("libvirt-{i}-format"));
    }
    dev = dev.str("id", format!("disk{i}"));
    if let Some(s) = &disk.serial {
        // Checked under the name the user knows; the renderer escapes it.
        qemu_opt_value("disk serial", s)?;
        dev = dev.str("serial", s.as_str());
    }
    dev = dev.opt_uint("bootindex", disk.boot_order.map(u64::from));
    if disk.shareable {
        dev = dev.on("share-rw");
    }
    Ok(dev)
}

/// The unit of a drive: from its `<address type='drive' unit=...>` when given,
/// otherwise the next one in order.
fn drive_unit(a: &Option<Address>, next: u32, max: u32, target: &str) -> Result<u32> {
    let u = match a {
        Some(Address::Drive { unit, .. }) => *unit,
        _ => next,
    };
    if u >= max {
        return Err(unsupported(
            "disk address",
            target,
            format!("unit {u} is out of range (max {})", max - 1),
        ));
    }
    Ok(u)
}
