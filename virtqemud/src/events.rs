//! QMP events that become libvirt's per-domain signals on `org.libvirt.Domain`
//! (libvirt's `VIR_DOMAIN_EVENT_ID_*` other than lifecycle): what QEMU said, in
//! libvirt's numbers. Disks are named by their target (`vda`): the live definition
//! carries no device aliases. Hotplug's signals name the device by its alias, QEMU's
//! device id (`virtio-disk1`, `net1`), as libvirt's do.

use serde_json::Value;

use crate::model::DomainDef;
use crate::qmp::Event;
use crate::xml::DiskSource;

/// One address of a graphics client or server: (family 0 IPv4 | 1 IPv6 | 2 Unix,
/// node, service).
pub type GraphicsAddress = (i32, String, String);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainSignal {
    /// The balloon's actual size, KiB.
    BalloonChange(u64),
    Reboot,
    /// The guest's RTC offset from the host's clock, seconds.
    RtcChange(i64),
    /// `virDomainEventWatchdogAction`.
    Watchdog(i32),
    IoError {
        src_path: String,
        device: String,
        /// `virDomainEventIOErrorAction`: 0 none, 1 pause, 2 report.
        action: i32,
        reason: String,
    },
    /// 0 opened, 1 closed.
    TrayChange {
        device: String,
        reason: i32,
    },
    /// A write past a disk's threshold (`SetBlockThreshold`).
    BlockThreshold {
        device: String,
        path: String,
        threshold: u64,
        excess: u64,
    },
    PmSuspend,
    PmSuspendDisk,
    PmWakeup,
    /// A device plugged in (AttachDevice), by its alias.
    DeviceAdded(String),
    /// A device the guest let go of (DetachDevice, or later), by its alias.
    DeviceRemoved(String),
    /// The guest refused to let the device go.
    DeviceRemovalFailed(String),
    /// Tuning changed on the running domain (libvirt's `VIR_DOMAIN_EVENT_ID_TUNABLE`):
    /// libvirt's typed-parameter names (`cputune.vcpupin0`, `blkdeviotune.disk`, ...).
    Tunable(Vec<(String, Tuned)>),
    /// A disk's medium changed without the guest asking: dropped at start because its
    /// file is missing and its `startupPolicy` is `optional` (reason 0).
    DiskChange {
        old_src: String,
        new_src: String,
        device: String,
        reason: i32,
    },
    /// A block job's end or readiness: disk target, `virDomainBlockJobType`,
    /// `virConnectDomainEventBlockJobStatus` (0 completed, 1 failed, 2 canceled, 3 ready).
    BlockJob {
        disk: String,
        kind: i32,
        status: i32,
    },
    /// An outgoing migration's pass over the guest's memory (libvirt's
    /// `VIR_DOMAIN_EVENT_ID_MIGRATION_ITERATION`).
    MigrationIteration(i32),
    /// A job (a migration) completed, with its statistics (libvirt's
    /// `VIR_DOMAIN_EVENT_ID_JOB_COMPLETED`).
    JobCompleted(Vec<(String, Stat)>),
    Graphics {
        /// 0 connect, 1 initialize, 2 disconnect.
        phase: i32,
        local: GraphicsAddress,
        remote: GraphicsAddress,
        auth: String,
    },
}

/// One typed parameter of a job's statistics (libvirt's `virTypedParameter` kinds
/// that job statistics use).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stat {
    U64(u64),
    I32(i32),
    Bool(bool),
}

/// One tunable's new value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tuned {
    Text(String),
    Number(u64),
    /// A signed value (`cputune.*_quota`).
    Signed(i64),
}

/// The signal `ev` stands for in a domain running `def`, if any.
pub fn signal_of(ev: &Event, def: &DomainDef) -> Option<DomainSignal> {
    let d = &ev.data;
    let s = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
    Some(match ev.name.as_str() {
        "BALLOON_CHANGE" => DomainSignal::BalloonChange(d.get("actual")?.as_u64()? / 1024),
        "RESET" => DomainSignal::Reboot,
        "RTC_CHANGE" => DomainSignal::RtcChange(d.get("offset")?.as_i64()?),
        "WATCHDOG" => DomainSignal::Watchdog(match d.get("action")?.as_str()? {
            "pause" => 1,
            "reset" => 2,
            "poweroff" => 3,
            "shutdown" => 4,
            "debug" => 5,
            "inject-nmi" => 6,
            _ => 0,
        }),
        "BLOCK_IO_ERROR" => {
            let index = def.disk_of_node(disk_index(d.get("node-name")?.as_str()?)?)?;
            let disk = def.dom.devices.disks.get(index)?;
            let nospace = d.get("nospace").and_then(Value::as_bool) == Some(true);
            DomainSignal::IoError {
                src_path: source_path(&disk.source),
                device: disk.target_dev.clone(),
                action: match d.get("action")?.as_str()? {
                    "stop" => 1,
                    "report" => 2,
                    _ => 0,
                },
                reason: if nospace {
                    "enospc".into()
                } else {
                    s(d, "reason")
                },
            }
        }
        "DEVICE_TRAY_MOVED" => {
            let index = def.disk_of_qdev(d.get("id")?.as_str()?)?;
            let disk = def.dom.devices.disks.get(index)?;
            DomainSignal::TrayChange {
                device: disk.target_dev.clone(),
                reason: i32::from(!d.get("tray-open")?.as_bool()?),
            }
        }
        "BLOCK_WRITE_THRESHOLD" => {
            let node = d.get("node-name")?.as_str()?;
            let index = def.disk_of_node(disk_index(node).or_else(|| {
                node.strip_prefix("libvirt-")?
                    .strip_suffix("-storage")?
                    .parse()
                    .ok()
            })?)?;
            let disk = def.dom.devices.disks.get(index)?;
            DomainSignal::BlockThreshold {
                device: disk.target_dev.clone(),
                path: source_path(&disk.source),
                threshold: d.get("write-threshold")?.as_u64()?,
                excess: d.get("amount-exceeded")?.as_u64()?,
            }
        }
        "DEVICE_UNPLUG_GUEST_ERROR" => {
            DomainSignal::DeviceRemovalFailed(d.get("device")?.as_str()?.to_owned())
        }
        "BLOCK_JOB_COMPLETED" | "BLOCK_JOB_CANCELLED" | "BLOCK_JOB_READY" => {
            let (kind, target) = crate::driver::block_job_of(d.get("device")?.as_str()?)?;
            let status = match ev.name.as_str() {
                "BLOCK_JOB_COMPLETED" if d.get("error").is_some() => 1,
                "BLOCK_JOB_COMPLETED" => 0,
                "BLOCK_JOB_CANCELLED" => 2,
                _ => 3,
            };
            DomainSignal::BlockJob {
                disk: target.to_owned(),
                kind,
                status,
            }
        }
        // An outgoing migration began another pass over the guest's memory.
        "MIGRATION_PASS" => DomainSignal::MigrationIteration(
            i32::try_from(d.get("pass")?.as_u64()?).unwrap_or(i32::MAX),
        ),
        "SUSPEND" => DomainSignal::PmSuspend,
        "SUSPEND_DISK" => DomainSignal::PmSuspendDisk,
        "WAKEUP" => DomainSignal::PmWakeup,
        "VNC_CONNECTED" | "VNC_INITIALIZED" | "VNC_DISCONNECTED" | "SPICE_CONNECTED"
        | "SPICE_INITIALIZED" | "SPICE_DISCONNECTED" => {
            let phase = match ev.name.rsplit('_').next()? {
                "CONNECTED" => 0,
                "INITIALIZED" => 1,
                _ => 2,
            };
            let addr = |v: Option<&Value>| -> GraphicsAddress {
                let v = v.unwrap_or(&Value::Null);
                let family = match v.get("family").and_then(Value::as_str) {
                    Some("ipv6") => 1,
                    Some("unix") => 2,
                    _ => 0,
                };
                // VNC names the port `service`, SPICE `port`.
                let service = Some(s(v, "service"))
                    .filter(|p| !p.is_empty())
                    .unwrap_or_else(|| s(v, "port"));
                (family, s(v, "host"), service)
            };
            let server = d.get("server");
            DomainSignal::Graphics {
                phase,
                local: addr(server),
                remote: addr(d.get("client")),
                auth: server
                    .map(|v| s(v, "auth"))
                    .filter(|a| !a.is_empty())
                    .unwrap_or_else(|| "none".into()),
            }
        }
        _ => return None,
    })
}

/// The disk of a `libvirt-N-format` node (the command line's naming).
fn disk_index(node: &str) -> Option<usize> {
    node.strip_prefix("libvirt-")?
        .strip_suffix("-format")?
        .parse()
        .ok()
}

fn source_path(src: &Option<DiskSource>) -> String {
    match src {
        Some(DiskSource::File(p) | DiskSource::Block(p)) => p.display().to_string(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn def() -> DomainDef {
        DomainDef::from(
            crate::xml::Domain::parse(
                "<domain type='qemu'><name>e</name><memory>65536</memory><os><type>hvm</type></os>\
                 <devices><disk type='file'><source file='/img/a.qcow2'/><target dev='vda' bus='virtio'/></disk>\
                 <disk type='file' device='cdrom'><source file='/img/b.iso'/><target dev='hdc' bus='ide'/></disk>\
                 </devices></domain>",
            )
            .expect("domain"),
        )
    }

    fn ev(name: &str, data: Value) -> Event {
        Event {
            name: name.into(),
            data,
        }
    }

    #[test]
    fn qmp_events_become_libvirts_signals() {
        let d = def();
        let cases = [
            (
                ev("BALLOON_CHANGE", json!({"actual": 67108864})),
                Some(DomainSignal::BalloonChange(65536)),
            ),
            (
                ev("RESET", json!({"guest": true})),
                Some(DomainSignal::Reboot),
            ),
            (
                ev("RTC_CHANGE", json!({"offset": -3600})),
                Some(DomainSignal::RtcChange(-3600)),
            ),
            (
                ev("WATCHDOG", json!({"action": "inject-nmi"})),
                Some(DomainSignal::Watchdog(6)),
            ),
            (
                ev(
                    "BLOCK_IO_ERROR",
                    json!({"device": "", "node-name": "libvirt-0-format",
                    "operation": "write", "action": "stop", "nospace": true, "reason": "No space left on device"}),
                ),
                Some(DomainSignal::IoError {
                    src_path: "/img/a.qcow2".into(),
                    device: "vda".into(),
                    action: 1,
                    reason: "enospc".into(),
                }),
            ),
            (
                ev(
                    "DEVICE_TRAY_MOVED",
                    json!({"device": "", "id": "disk1", "tray-open": true}),
                ),
                Some(DomainSignal::TrayChange {
                    device: "hdc".into(),
                    reason: 0,
                }),
            ),
            (
                ev(
                    "VNC_CONNECTED",
                    json!({
                    "server": {"host": "127.0.0.1", "service": "5900", "family": "ipv4", "websocket": false, "auth": "none"},
                    "client": {"host": "127.0.0.1", "service": "41000", "family": "ipv4", "websocket": false}}),
                ),
                Some(DomainSignal::Graphics {
                    phase: 0,
                    local: (0, "127.0.0.1".into(), "5900".into()),
                    remote: (0, "127.0.0.1".into(), "41000".into()),
                    auth: "none".into(),
                }),
            ),
            (ev("SUSPEND", json!({})), Some(DomainSignal::PmSuspend)),
            (
                ev(
                    "BLOCK_WRITE_THRESHOLD",
                    json!({"node-name": "libvirt-0-storage",
                    "amount-exceeded": 512, "write-threshold": 4096}),
                ),
                Some(DomainSignal::BlockThreshold {
                    device: "vda".into(),
                    path: "/img/a.qcow2".into(),
                    threshold: 4096,
                    excess: 512,
                }),
            ),
            (ev("STOP", json!({})), None),
            (
                ev(
                    "BLOCK_IO_ERROR",
                    json!({"node-name": "libvirt-9-format", "action": "stop"}),
                ),
                None,
            ),
            (ev("RTC_CHANGE", json!({})), None),
        ];
        for (e, want) in cases {
            assert_eq!(signal_of(&e, &d), want, "{}", e.name);
        }
    }
}
