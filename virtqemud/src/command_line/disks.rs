//! Disks: each medium as a `-blockdev` pair (protocol node `libvirt-N-storage`, format
//! node `libvirt-N-format`) and the guest device on its bus, numbered per bus.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::xml::{Address, Disk, DiskBus, DiskDevice, DiskSource, Domain, NetHost};

use super::device::{DeviceProps, PciBuses};
use super::{json_str, qemu_opt_value, unsupported, Argv, LaunchContext, Result};

/// The next free unit on each bus that numbers its drives.
#[derive(Default)]
pub(super) struct DiskUnits {
    ide: u32,
    sata: u32,
    /// Per SCSI controller index.
    scsi: BTreeMap<u32, u32>,
    fd: u32,
    /// The SCSI controllers there are, each with whether it takes one LUN per target
    /// (lsi53c895a and the other HBAs that are not virtio-scsi): their drives are
    /// numbered by `scsi-id`, not `lun`.
    scsi_by_target: BTreeMap<u32, bool>,
}

pub(super) fn disks(
    a: &mut Argv,
    dom: &Domain,
    ctx: &LaunchContext,
    buses: &PciBuses,
) -> Result<()> {
    let q35 = dom.is_q35();
    let mut units = DiskUnits {
        scsi_by_target: dom
            .devices
            .controllers
            .iter()
            .filter(|c| c.kind == "scsi")
            .map(|c| {
                let by_target = c.model.as_deref().is_some_and(|m| !m.starts_with("virtio"));
                (c.index, by_target)
            })
            .collect(),
        ..DiskUnits::default()
    };
    let mut groups = Vec::new();
    for (i, disk) in dom.devices.disks.iter().enumerate() {
        refuse_unhandled(disk)?;
        if let Some(enc) = crate::secrets::encryption(disk) {
            crate::secrets::luks_secret(disk).map_err(|e| {
                unsupported(&format!("disk/{}", enc.name), &disk.target_dev, e.message)
            })?;
            let file = ctx
                .disk_secrets
                .iter()
                .find(|(d, _)| *d == i)
                .map(|(_, f)| f)
                .ok_or_else(|| {
                    unsupported(
                        "disk/encryption",
                        &disk.target_dev,
                        "its secret was not resolved (virtstoraged serves secrets)",
                    )
                })?;
            a.pair(
                "-object",
                serde_json::json!({
                    "qom-type": "secret",
                    "id": luks_secret_id(i),
                    "format": "raw",
                    "file": file,
                })
                .to_string(),
            );
        }
        let bus = disk.bus.ok_or_else(|| {
            unsupported(
                "disk target",
                &disk.target_dev,
                "no bus (fill_defaults first)",
            )
        })?;
        let media = match &disk.source {
            Some(src) => {
                for b in blockdevs(i, disk, src, ctx)? {
                    a.pair("-blockdev", b);
                }
                Some(top_node(a, i, disk, &mut groups)?)
            }
            None => None,
        };
        let dev = disk_props(i, disk, bus, media, q35, &mut units, buses)?;
        a.device(&dev)?;
    }
    Ok(())
}

/// The `secret` object holding the passphrase of LUKS disk `i` (libvirt's name).
fn luks_secret_id(i: usize) -> String {
    format!("libvirt-{i}-format-encryption-secret0")
}

fn refuse_unhandled(disk: &Disk) -> Result<()> {
    // `<iotune>` is read by `top_node`, the device's own children by `disk_children`,
    // `<encryption>` by `disks`.
    if let Some(c) = disk
        .unhandled
        .iter()
        // A written `<backingStore>` chain is the image's own: QEMU opens the backing
        // files its header names (libvirt builds one node per layer from the XML).
        .find(|c| {
            !matches!(c.name.as_str(), "iotune" | "backingStore" | "encryption")
                && !crate::xml::user_alias(c)
                && !DEVICE_CHILDREN.contains(&c.name.as_str())
        })
    {
        return Err(unsupported(
            &format!("disk/{}", c.name),
            &disk.target_dev,
            "not implemented",
        ));
    }
    // `snapshot` says how snapshots treat the disk and a cdrom's `tray` is status
    // (libvirt passes neither to QEMU); `startupPolicy` only matters for a missing
    // source, which QEMU then refuses as with 'mandatory'. `rotation_rate` and
    // `removable` are device properties (`disk_props`).
    if let Some((e, k, v)) = disk.extra_attrs.iter().find(|(e, k, _)| {
        !matches!(
            (e.as_str(), k.as_str()),
            ("disk", "snapshot" | "model")
                | ("source", "startupPolicy")
                | ("target", "tray" | "rotation_rate" | "removable")
        )
    }) {
        let at = if e == "disk" {
            "disk".to_owned()
        } else {
            format!("disk/{e}")
        };
        return Err(unsupported(&format!("{at} {k}"), v, "not implemented"));
    }
    if let Some(c) = disk.source_children.iter().find(|c| c.name != "encryption") {
        return Err(unsupported(
            &format!("disk/source/{}", c.name),
            &disk.target_dev,
            "not implemented",
        ));
    }
    if let Some(c) = disk.driver.children.first() {
        return Err(unsupported(
            &format!("disk/driver/{}", c.name),
            &disk.target_dev,
            "not implemented",
        ));
    }
    if let Some((k, v)) = disk
        .driver
        .unhandled
        .iter()
        .find(|(k, _)| !DRIVER_OPTIONS.contains(&k.as_str()))
    {
        return Err(unsupported(
            &format!("disk/driver {k}"),
            v,
            "not implemented",
        ));
    }
    Ok(())
}

/// `<driver>` attributes beyond name, type, cache, io and discard that the command
/// line honours: the format node's `detect-zeroes`, a copy-on-read filter node, and
/// the guest device's error policies and virtio options.
const DRIVER_OPTIONS: &[&str] = &[
    "detect_zeroes",
    "copy_on_read",
    "error_policy",
    "rerror_policy",
    "event_idx",
    "ioeventfd",
    "iommu",
    "ats",
    "packed",
    "page_per_vq",
    "queues",
    "queue_size",
];

fn driver_opt<'a>(disk: &'a Disk, key: &str) -> Option<&'a str> {
    disk.driver
        .unhandled
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// An on/off driver option as QEMU's boolean.
fn on_off(disk: &Disk, key: &str) -> Result<Option<bool>> {
    match driver_opt(disk, key) {
        None => Ok(None),
        Some("on") => Ok(Some(true)),
        Some("off") => Ok(Some(false)),
        Some(v) => Err(unsupported(
            &format!("disk/driver {key}"),
            v,
            "expected on or off",
        )),
    }
}

/// The guest device's share of `<driver>`: error policies on every bus, the virtio
/// options on virtio-blk only (libvirt's mapping).
fn device_driver_options(mut dev: DeviceProps, disk: &Disk, virtio: bool) -> Result<DeviceProps> {
    let policy = |key: &str| -> Result<Option<&str>> {
        Ok(match driver_opt(disk, key) {
            None => None,
            Some("stop") => Some("stop"),
            Some("report") => Some("report"),
            Some("ignore") => Some("ignore"),
            Some("enospace") if key == "error_policy" => Some("enospc"),
            Some(v) => {
                return Err(unsupported(
                    &format!("disk/driver {key}"),
                    v,
                    "expected stop, report, ignore or enospace",
                ))
            }
        })
    };
    let werror = policy("error_policy")?;
    // libvirt applies error_policy to reads too, unless it is enospace (a write error).
    let rerror = policy("rerror_policy")?.or(werror.filter(|w| *w != "enospc"));
    if let Some(w) = werror {
        dev = dev.str("werror", w);
    }
    if let Some(r) = rerror {
        dev = dev.str("rerror", r);
    }
    let virtio_only = [
        ("event_idx", "event_idx"),
        ("ioeventfd", "ioeventfd"),
        ("iommu", "iommu_platform"),
        ("ats", "ats"),
        ("packed", "packed"),
        ("page_per_vq", "page-per-vq"),
    ];
    for (key, prop) in virtio_only {
        if let Some(b) = on_off(disk, key)? {
            if !virtio {
                return Err(unsupported(
                    &format!("disk/driver {key}"),
                    &disk.target_dev,
                    "only for virtio disks",
                ));
            }
            dev.props.push((prop, super::PropValue::Bool(b)));
        }
    }
    for (key, prop) in [("queues", "num-queues"), ("queue_size", "queue-size")] {
        if let Some(v) = driver_opt(disk, key) {
            let n: u64 = v
                .parse()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| unsupported(&format!("disk/driver {key}"), v, "not a count"))?;
            if !virtio {
                return Err(unsupported(
                    &format!("disk/driver {key}"),
                    &disk.target_dev,
                    "only for virtio disks",
                ));
            }
            dev = dev.uint(prop, n);
        }
    }
    Ok(dev)
}

/// The host path of a disk's medium (volumes as the storage daemon resolved them).
fn source_path(src: &DiskSource, ctx: &LaunchContext) -> Result<(&'static str, PathBuf)> {
    Ok(match src {
        DiskSource::File(p) => ("file", p.clone()),
        DiskSource::Block(p) => ("host_device", p.clone()),
        DiskSource::Network { protocol, .. } => {
            return Err(unsupported("disk source protocol", protocol, "not a file"))
        }
        DiskSource::Other(el) => {
            return Err(unsupported(
                "disk type",
                el.get_attr("type").unwrap_or("nvme, dir or vhostuser"),
                "not implemented",
            ))
        }
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

/// The storage node of a network disk: QEMU's own block driver for the protocol.
pub(super) fn network_storage(i: usize, src: &DiskSource) -> Result<serde_json::Value> {
    use serde_json::json;
    let DiskSource::Network {
        protocol,
        name,
        hosts,
        source,
    } = src
    else {
        return Err(unsupported("disk source", "", "not a network disk"));
    };
    if let Some(c) = source.elements().find(|c| c.name != "host") {
        return Err(unsupported(
            &format!("disk/source/{}", c.name),
            protocol,
            "not implemented",
        ));
    }
    let name = name.as_deref().unwrap_or("");
    let inet = |h: &NetHost, default_port: &str| -> Result<serde_json::Value> {
        match h.transport.as_str() {
            "tcp" => Ok(json!({"type": "inet",
                "host": h.name.as_deref().unwrap_or("localhost"),
                "port": h.port.as_deref().unwrap_or(default_port)})),
            "unix" => Ok(json!({"type": "unix", "path": h.socket.as_deref().unwrap_or("")})),
            t => Err(unsupported(
                "disk/source/host transport",
                t,
                "expected tcp or unix",
            )),
        }
    };
    let one_host = || {
        hosts
            .first()
            .ok_or_else(|| unsupported("disk/source/host", protocol, "a host is required"))
    };
    let mut node = match protocol.as_str() {
        "nbd" => {
            let mut n = json!({"driver": "nbd", "server": inet(one_host()?, "10809")?});
            if !name.is_empty() {
                n["export"] = json!(name);
            }
            n
        }
        "http" | "https" | "ftp" | "ftps" => {
            let h = one_host()?;
            let host = h.name.as_deref().unwrap_or("localhost");
            let port = h
                .port
                .as_deref()
                .map(|p| format!(":{p}"))
                .unwrap_or_default();
            let path = name.trim_start_matches('/');
            json!({"driver": protocol, "url": format!("{protocol}://{host}{port}/{path}")})
        }
        "iscsi" => {
            let h = one_host()?;
            let (target, lun) = name.rsplit_once('/').unwrap_or((name, "0"));
            let lun: u64 = lun
                .parse()
                .map_err(|_| unsupported("disk source name", name, "expected IQN/LUN"))?;
            json!({"driver": "iscsi", "transport": "tcp",
                "portal": format!("{}:{}", h.name.as_deref().unwrap_or("localhost"),
                    h.port.as_deref().unwrap_or("3260")),
                "target": target, "lun": lun})
        }
        "gluster" | "rbd" => {
            let (first, rest) = name
                .split_once('/')
                .ok_or_else(|| unsupported("disk source name", name, "expected POOL/IMAGE"))?;
            let servers = hosts
                .iter()
                .map(|h| inet(h, if protocol == "rbd" { "6789" } else { "24007" }))
                .collect::<Result<Vec<_>>>()?;
            if protocol == "rbd" {
                // rbd's servers are plain host/port pairs (InetSocketAddressBase).
                let servers: Vec<_> = servers
                    .into_iter()
                    .map(|mut s| {
                        if let Some(o) = s.as_object_mut() {
                            o.remove("type");
                        }
                        s
                    })
                    .collect();
                json!({"driver": "rbd", "pool": first, "image": rest, "server": servers})
            } else {
                json!({"driver": "gluster", "volume": first, "path": rest, "server": servers})
            }
        }
        p => {
            return Err(unsupported(
                "disk source protocol",
                p,
                "QEMU 7.2 here has no block driver for it",
            ))
        }
    };
    node["node-name"] = json!(format!("libvirt-{i}-storage"));
    node["auto-read-only"] = json!(true);
    Ok(node)
}

/// The two `-blockdev` JSON objects of disk `i`: storage, then format.
fn blockdevs(i: usize, disk: &Disk, src: &DiskSource, ctx: &LaunchContext) -> Result<[String; 2]> {
    let ro = disk.readonly;
    let luks = crate::secrets::encryption(disk).is_some();
    if let DiskSource::Network { .. } = src {
        let storage = network_storage(i, src)?;
        return Ok([storage.to_string(), format_node(i, disk, ro, luks)?]);
    }
    let (driver, path) = source_path(src, ctx)?;
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
    Ok([file, format_node(i, disk, ro, luks)?])
}

/// The format node; a LUKS disk's opens its encryption with its `secret` object: a raw
/// image is QEMU's `luks` format, a qcow2 one carries it inside (`encrypt`).
fn format_node(i: usize, disk: &Disk, ro: bool, luks: bool) -> Result<String> {
    if disk.driver.format.as_deref() == Some("fat") {
        return Err(unsupported(
            "disk driver type",
            "fat",
            "a directory as a FAT image (vvfat) is not implemented",
        ));
    }
    let format = disk.driver.format.as_deref().unwrap_or("raw");
    let detect_zeroes = match driver_opt(disk, "detect_zeroes") {
        None => String::new(),
        // As libvirt: 'unmap' only where discards are passed down, 'on' otherwise.
        Some(z @ ("off" | "on")) => format!(",\"detect-zeroes\":\"{z}\""),
        Some("unmap") if disk.driver.discard.as_deref() == Some("unmap") => {
            ",\"detect-zeroes\":\"unmap\"".to_owned()
        }
        Some("unmap") => ",\"detect-zeroes\":\"on\"".to_owned(),
        Some(v) => {
            return Err(unsupported(
                "disk/driver detect_zeroes",
                v,
                "expected on, off or unmap",
            ))
        }
    };
    let (format, encrypt) = match (format, luks) {
        (_, false) => (format, String::new()),
        ("raw", true) => ("luks", format!(",\"key-secret\":\"{}\"", luks_secret_id(i))),
        ("qcow2", true) => (
            format,
            format!(
                ",\"encrypt\":{{\"format\":\"luks\",\"key-secret\":\"{}\"}}",
                luks_secret_id(i)
            ),
        ),
        (f, true) => {
            return Err(unsupported(
                "disk/encryption",
                &disk.target_dev,
                format!("LUKS on a '{f}' image: only raw and qcow2 images"),
            ))
        }
    };
    Ok(format!(
        "{{\"node-name\":\"libvirt-{i}-format\",\"read-only\":{ro}{detect_zeroes},\"driver\":\"{format}\"{encrypt},\"file\":\"libvirt-{i}-storage\"}}"
    ))
}

/// The node the guest device reads: the format node, under a copy-on-read filter
/// (`<driver copy_on_read='on'>`, libvirt's `libvirt-CoR-TARGET`) and a throttle
/// filter (`<iotune>`) where asked.
fn top_node(a: &mut Argv, i: usize, disk: &Disk, groups: &mut Vec<String>) -> Result<String> {
    let mut top = format!("libvirt-{i}-format");
    if on_off(disk, "copy_on_read")? == Some(true) {
        let cor = format!("libvirt-CoR-{}", disk.target_dev);
        a.pair(
            "-blockdev",
            serde_json::json!({"driver": "copy-on-read", "node-name": cor, "file": top})
                .to_string(),
        );
        top = cor;
    }
    if let Some(t) = disk.unhandled.iter().find(|c| c.name == "iotune") {
        let group = throttle_group(a, i, t, groups)?;
        let node = format!("libvirt-{i}-throttle");
        a.pair(
            "-blockdev",
            serde_json::json!({"driver": "throttle", "node-name": node,
                "throttle-group": group, "file": top})
            .to_string(),
        );
        top = node;
    }
    Ok(top)
}

/// `<iotune>` children and the throttle-group limit each sets.
const IOTUNE_LIMITS: &[(&str, &str)] = &[
    ("total_bytes_sec", "bps-total"),
    ("read_bytes_sec", "bps-read"),
    ("write_bytes_sec", "bps-write"),
    ("total_iops_sec", "iops-total"),
    ("read_iops_sec", "iops-read"),
    ("write_iops_sec", "iops-write"),
    ("total_bytes_sec_max", "bps-total-max"),
    ("read_bytes_sec_max", "bps-read-max"),
    ("write_bytes_sec_max", "bps-write-max"),
    ("total_iops_sec_max", "iops-total-max"),
    ("read_iops_sec_max", "iops-read-max"),
    ("write_iops_sec_max", "iops-write-max"),
    ("total_bytes_sec_max_length", "bps-total-max-length"),
    ("read_bytes_sec_max_length", "bps-read-max-length"),
    ("write_bytes_sec_max_length", "bps-write-max-length"),
    ("total_iops_sec_max_length", "iops-total-max-length"),
    ("read_iops_sec_max_length", "iops-read-max-length"),
    ("write_iops_sec_max_length", "iops-write-max-length"),
    ("size_iops_sec", "iops-size"),
];

/// The throttle group of disk `i`'s `<iotune>`: its `<group_name>` (shared by every
/// disk that names it; made once, with the first one's limits), else a group of its
/// own. QEMU enforces the limits in its block layer, as for libvirt's
/// `block_set_io_throttle`.
fn throttle_group(
    a: &mut Argv,
    i: usize,
    t: &common::xml::Element,
    groups: &mut Vec<String>,
) -> Result<String> {
    let mut limits = serde_json::Map::new();
    let mut name = None;
    for c in t.elements() {
        if c.name == "group_name" {
            name = Some(c.text());
            continue;
        }
        let what = format!("disk/iotune/{}", c.name);
        let key = IOTUNE_LIMITS
            .iter()
            .find(|(x, _)| *x == c.name)
            .map(|l| l.1)
            .ok_or_else(|| unsupported(&what, "", "not implemented"))?;
        let text = c.text();
        let v: u64 = text
            .trim()
            .parse()
            .map_err(|_| unsupported(&what, &text, "not a number"))?;
        limits.insert(key.to_owned(), serde_json::json!(v));
    }
    let id = match name {
        Some(n) => {
            let ok = n.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-._".contains(c));
            if !ok {
                return Err(unsupported(
                    "disk/iotune/group_name",
                    &n,
                    "must start with a letter and hold only letters, digits, '-', '.' and '_'",
                ));
            }
            n
        }
        None => format!("throttle-libvirt-{i}"),
    };
    if !groups.contains(&id) {
        a.pair(
            "-object",
            serde_json::json!({"qom-type": "throttle-group", "id": id, "limits": limits})
                .to_string(),
        );
        groups.push(id.clone());
    }
    Ok(id)
}

/// The guest device of disk `i`; `media`: the node it reads (`drive=`), if any.
fn disk_props(
    i: usize,
    disk: &Disk,
    bus: DiskBus,
    media: Option<String>,
    q35: bool,
    units: &mut DiskUnits,
    buses: &PciBuses,
) -> Result<DeviceProps> {
    let cd = disk.device == DiskDevice::Cdrom;
    let mut dev = match (bus, disk.device) {
        // SCSI commands pass through to the host's LUN.
        (DiskBus::Scsi, DiskDevice::Lun) => {
            if !matches!(disk.source, Some(DiskSource::Block(_))) {
                return Err(unsupported(
                    "disk device",
                    "lun",
                    "passthrough needs a host block device (type='block')",
                ));
            }
            scsi_place(DeviceProps::new("scsi-block"), disk, units)?
        }
        (_, DiskDevice::Lun) => {
            return Err(unsupported(
                "disk device",
                "lun",
                "needs target bus 'scsi' (QEMU 7.2 has no virtio-blk SCSI passthrough)",
            ))
        }
        // `model` picks virtio-blk's (non-)transitional variant, as libvirt passes it.
        (DiskBus::Virtio, DiskDevice::Disk) => {
            let model = disk
                .extra_attrs
                .iter()
                .find(|(e, k, _)| e == "disk" && k == "model")
                .map(|(_, _, v)| v.as_str());
            let driver = match model {
                None | Some("virtio") => "virtio-blk-pci",
                Some("virtio-transitional") => "virtio-blk-pci-transitional",
                Some("virtio-non-transitional") => "virtio-blk-pci-non-transitional",
                Some(m) => return Err(unsupported("disk model", m, "not a virtio-blk model")),
            };
            DeviceProps::new(driver).pci(buses, &disk.address)
        }
        (DiskBus::Virtio, _) => {
            return Err(unsupported(
                "disk target bus",
                "virtio",
                "cdrom and floppy cannot be virtio",
            ))
        }
        (DiskBus::Sata, _) => {
            only_controller_0(disk)?;
            let u = drive_unit(&disk.address, units.sata, 6, &disk.target_dev)?;
            units.sata = u + 1;
            // q35's built-in AHCI makes buses ide.N; the AHCI card on i440fx sata0.N.
            let bus = if q35 {
                format!("ide.{u}")
            } else {
                format!("sata0.{u}")
            };
            DeviceProps::new(if cd { "ide-cd" } else { "ide-hd" }).str("bus", bus)
        }
        (DiskBus::Ide, _) => {
            only_controller_0(disk)?;
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
            let kind = if cd { "scsi-cd" } else { "scsi-hd" };
            scsi_place(DeviceProps::new(kind), disk, units)?
        }
        (DiskBus::Usb, _) => DeviceProps::new("usb-storage").str("bus", "usb0.0"),
        // libvirt passes `-drive if=sd`, which QEMU's PC machines leave unconnected.
        (DiskBus::Sd, _) => {
            return Err(unsupported(
                "disk target bus",
                "sd",
                "QEMU's x86 machines have no SD card controller",
            ))
        }
        (DiskBus::Fdc, _) => {
            only_controller_0(disk)?;
            let u = drive_unit(&disk.address, units.fd, 2, &disk.target_dev)?;
            units.fd = u + 1;
            DeviceProps::new("floppy").uint("unit", u.into())
        }
    };
    if let Some(node) = media {
        dev = dev.str("drive", node);
    }
    let target_attr = |key: &str| {
        disk.extra_attrs
            .iter()
            .find(|(e, k, _)| e == "target" && k == key)
            .map(|(_, _, v)| v.as_str())
    };
    if let Some(r) = target_attr("rotation_rate") {
        let r = r
            .parse::<u64>()
            .map_err(|_| unsupported("disk/target rotation_rate", r, "not a number"))?;
        dev = dev.uint("rotation_rate", r);
    }
    // libvirt says removable=off for USB disks unless the target says on.
    if bus == DiskBus::Usb {
        let on = match target_attr("removable") {
            None | Some("off") => false,
            Some("on") => true,
            Some(v) => {
                return Err(unsupported(
                    "disk/target removable",
                    v,
                    "expected on or off",
                ))
            }
        };
        dev.props
            .push(("removable", super::device::PropValue::Bool(on)));
    }
    dev = dev.str("id", format!("disk{i}"));
    if let Some(s) = &disk.serial {
        // Checked under the name the user knows; the renderer escapes it.
        qemu_opt_value("disk serial", s)?;
        dev = dev.str("serial", s.as_str());
    }
    // A floppy drive has no bootindex: its controller's bootindexA/B say it
    // (`controllers::floppy_boot`).
    if bus != DiskBus::Fdc {
        dev = dev.opt_uint("bootindex", disk.boot_order.map(u64::from));
    }
    if disk.shareable {
        dev = dev.on("share-rw");
    }
    let dev = disk_children(dev, disk)?;
    device_driver_options(dev, disk, bus == DiskBus::Virtio)
}

/// Disk children that are properties of the guest device.
const DEVICE_CHILDREN: &[&str] = &["wwn", "vendor", "product", "geometry", "blockio"];

/// `<wwn>`, `<vendor>`, `<product>`, `<geometry>` and `<blockio>` as the guest
/// device's properties, on the devices QEMU gives them (libvirt's mapping).
fn disk_children(mut dev: DeviceProps, disk: &Disk) -> Result<DeviceProps> {
    let driver = dev.driver.clone();
    let scsi = driver.starts_with("scsi-");
    let ide = driver.starts_with("ide-");
    for c in disk
        .unhandled
        .iter()
        .filter(|c| DEVICE_CHILDREN.contains(&c.name.as_str()))
    {
        let what = format!("disk/{}", c.name);
        let refuse = |why: &str| unsupported(&what, &disk.target_dev, why);
        let num = |key: &str| -> Result<Option<u64>> {
            c.get_attr(key)
                .map(|v| {
                    v.parse::<u64>()
                        .map_err(|_| unsupported(&format!("{what} {key}"), v, "not a number"))
                })
                .transpose()
        };
        match c.name.as_str() {
            "wwn" => {
                if !(scsi || ide) {
                    return Err(refuse("only for IDE, SATA and SCSI disks"));
                }
                let text = c.text();
                let hex = text.trim().trim_start_matches("0x");
                let n = u64::from_str_radix(hex, 16)
                    .ok()
                    .filter(|_| hex.len() == 16)
                    .ok_or_else(|| unsupported(&what, &text, "expected 16 hex digits"))?;
                dev = dev.uint("wwn", n);
            }
            "vendor" | "product" => {
                if !scsi {
                    return Err(refuse("only for SCSI disks"));
                }
                let text = c.text();
                let max = if c.name == "vendor" { 8 } else { 16 };
                if text.is_empty()
                    || text.len() > max
                    || !text.chars().all(|c| c.is_ascii_graphic() || c == ' ')
                {
                    return Err(unsupported(
                        &what,
                        &text,
                        format!("at most {max} printable characters"),
                    ));
                }
                let key = if c.name == "vendor" {
                    "vendor"
                } else {
                    "product"
                };
                dev = dev.str(key, text);
            }
            "geometry" => {
                if !(ide || driver.starts_with("virtio-blk")) {
                    return Err(refuse("only for IDE, SATA and virtio disks"));
                }
                dev = dev
                    .opt_uint("cyls", num("cyls")?)
                    .opt_uint("heads", num("heads")?)
                    .opt_uint("secs", num("secs")?);
                if let Some(t) = c.get_attr("trans") {
                    if !ide || !matches!(t, "none" | "lba" | "auto") {
                        return Err(unsupported(
                            &format!("{what} trans"),
                            t,
                            "expected none, lba or auto on IDE",
                        ));
                    }
                    dev = dev.str("bios-chs-trans", t);
                }
            }
            _ => {
                dev = dev
                    .opt_uint("logical_block_size", num("logical_block_size")?)
                    .opt_uint("physical_block_size", num("physical_block_size")?)
                    .opt_uint("discard_granularity", num("discard_granularity")?);
            }
        }
    }
    Ok(dev)
}

/// A SCSI drive's place, from its `<address type='drive' controller target unit>`
/// (else controller 0, target 0, the next unit): on the controller's bus `scsiC.0`,
/// the unit as the LUN of its target on virtio-scsi, as the target (LUN 0) on the
/// HBAs that have one LUN per target, as libvirt places them.
fn scsi_place(dev: DeviceProps, disk: &Disk, units: &mut DiskUnits) -> Result<DeviceProps> {
    let (controller, target) = match &disk.address {
        Some(Address::Drive {
            controller, target, ..
        }) => (*controller, *target),
        _ => (0, 0),
    };
    let by_target = *units.scsi_by_target.get(&controller).ok_or_else(|| {
        unsupported(
            "disk address controller",
            &controller.to_string(),
            "no SCSI controller has this index",
        )
    })?;
    let next = units.scsi.entry(controller).or_default();
    let u = drive_unit(&disk.address, *next, 16384, &disk.target_dev)?;
    *next = u + 1;
    let (id, lun) = if by_target { (u, 0) } else { (target, u) };
    Ok(dev
        .str("bus", format!("scsi{controller}.0"))
        .uint("channel", 0)
        .uint("scsi-id", id.into())
        .uint("lun", lun.into()))
}

/// IDE, SATA and floppy drives go on the machine's one controller of their kind
/// (libvirt would add a second AHCI or IDE card; not done here).
fn only_controller_0(disk: &Disk) -> Result<()> {
    match &disk.address {
        Some(Address::Drive { controller, .. }) if *controller != 0 => Err(unsupported(
            "disk address controller",
            &controller.to_string(),
            format!(
                "{} sits on a second controller, which is not implemented",
                disk.target_dev
            ),
        )),
        _ => Ok(()),
    }
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

/// For hotplug (`device_add` on a running QEMU): the `blockdev-add` arguments of disk
/// `i` of `dom` (storage node, then format node; none for an empty drive) on nodes
/// `libvirt-NODE-*`, and its guest device with id `qdev`, built by the same functions
/// as at start. Units on buses that number their drives continue after the disks
/// before it. Throttling and copy-on-read filters are refused: their nodes are made
/// at start only.
pub fn hotplug_disk(
    dom: &Domain,
    i: usize,
    node: usize,
    qdev: &str,
    ctx: &LaunchContext,
) -> Result<(Vec<serde_json::Value>, DeviceProps)> {
    let q35 = dom.is_q35();
    let disks = &dom.devices.disks;
    let disk = disks
        .get(i)
        .ok_or_else(|| unsupported("disk", "", "no such disk"))?;
    refuse_unhandled(disk)?;
    if disk.unhandled.iter().any(|c| c.name == "iotune") {
        return Err(unsupported(
            "disk/iotune",
            &disk.target_dev,
            "not on hotplug",
        ));
    }
    if on_off(disk, "copy_on_read")? == Some(true) {
        return Err(unsupported(
            "disk/driver copy_on_read",
            &disk.target_dev,
            "not on hotplug",
        ));
    }
    let buses = PciBuses::of(dom);
    let mut units = DiskUnits {
        scsi_by_target: dom
            .devices
            .controllers
            .iter()
            .filter(|c| c.kind == "scsi")
            .map(|c| {
                (
                    c.index,
                    c.model.as_deref().is_some_and(|m| !m.starts_with("virtio")),
                )
            })
            .collect(),
        ..DiskUnits::default()
    };
    for (j, before) in disks.iter().enumerate().take(i) {
        if let Some(bus) = before.bus {
            // Only the units they take count; they were accepted at their start.
            let _ = disk_props(j, before, bus, None, q35, &mut units, &buses);
        }
    }
    let bus = disk.bus.ok_or_else(|| {
        unsupported(
            "disk target",
            &disk.target_dev,
            "no bus (fill_defaults first)",
        )
    })?;
    let mut nodes = Vec::new();
    let media = match &disk.source {
        Some(src) => {
            for b in blockdevs(node, disk, src, ctx)? {
                let v: serde_json::Value = serde_json::from_str(&b)
                    .map_err(|e| unsupported("disk", &disk.target_dev, e))?;
                nodes.push(v);
            }
            Some(format!("libvirt-{node}-format"))
        }
        None => None,
    };
    let mut dev = disk_props(node, disk, bus, media, q35, &mut units, &buses)?;
    for (k, v) in dev.props.iter_mut() {
        if *k == "id" {
            *v = super::PropValue::Str(qdev.to_owned());
        }
    }
    Ok((nodes, dev))
}

/// For a media change (UpdateDevice of a cdrom or floppy): the `blockdev-add`
/// arguments of `disk`'s new medium on nodes `libvirt-NODE-*`.
pub fn medium_nodes(
    disk: &Disk,
    node: usize,
    ctx: &LaunchContext,
) -> Result<Vec<serde_json::Value>> {
    let Some(src) = &disk.source else {
        return Ok(Vec::new());
    };
    blockdevs(node, disk, src, ctx)?
        .iter()
        .map(|b| serde_json::from_str(b).map_err(|e| unsupported("disk", &disk.target_dev, e)))
        .collect()
}
