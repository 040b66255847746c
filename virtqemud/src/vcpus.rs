//! vCPU hotplug of a running QEMU, as libvirt does it for x86: QEMU starts with
//! `-smp CURRENT,maxcpus=MAX`; `query-hotpluggable-cpus` lists every slot (plugged
//! ones with their QOM path), `device_add` fills the lowest free slots and
//! `device_del` asks the guest to give up the highest plugged ones (it must
//! cooperate, through ACPI), which are gone when their slot is free again.

use std::time::{Duration, Instant};

use common::error::VirError;
use serde_json::{json, Map, Value};

use crate::qmp::Qmp;

/// How long an unplug may take the guest (libvirt's 5 s).
const UNPLUG_WAIT: Duration = Duration::from_secs(5);

/// One slot of `query-hotpluggable-cpus`.
#[derive(Debug, Clone)]
struct Slot {
    driver: String,
    props: Map<String, Value>,
    qom_path: Option<String>,
}

impl Slot {
    /// Topology order: socket, die, core, thread.
    fn key(&self) -> [i64; 4] {
        ["socket-id", "die-id", "core-id", "thread-id"]
            .map(|k| self.props.get(k).and_then(Value::as_i64).unwrap_or(0))
    }
}

async fn slots(qmp: &Qmp) -> Result<Vec<Slot>, VirError> {
    let reply = qmp.execute("query-hotpluggable-cpus", None).await?;
    let mut slots: Vec<Slot> = reply
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| {
            Some(Slot {
                driver: s.get("type")?.as_str()?.to_owned(),
                props: s.get("props")?.as_object()?.clone(),
                qom_path: s.get("qom-path").and_then(Value::as_str).map(str::to_owned),
            })
        })
        .collect();
    slots.sort_by_key(Slot::key);
    Ok(slots)
}

/// Plugs or unplugs vCPUs until `want` are online; returns how many are.
pub async fn set_online(qmp: &Qmp, want: u32) -> Result<u32, VirError> {
    let slots = slots(qmp).await?;
    let online = slots.iter().filter(|s| s.qom_path.is_some()).count() as u32;
    if want > online {
        let free = slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.qom_path.is_none());
        for (index, slot) in free.take((want - online) as usize) {
            let mut args = slot.props.clone();
            args.insert("driver".into(), json!(slot.driver));
            args.insert("id".into(), json!(format!("vcpu{index}")));
            qmp.execute("device_add", Some(Value::Object(args))).await?;
        }
    } else if want < online {
        // Never the boot CPU, the first slot.
        let gone: Vec<String> = slots
            .iter()
            .skip(1)
            .rev()
            .filter_map(|s| s.qom_path.clone())
            .take((online - want) as usize)
            .collect();
        for path in &gone {
            qmp.execute("device_del", Some(json!({ "id": path })))
                .await?;
        }
        let deadline = Instant::now() + UNPLUG_WAIT;
        loop {
            let left = slots_online(qmp).await?;
            if left <= want {
                return Ok(left);
            }
            if Instant::now() >= deadline {
                return Err(VirError::operation_failed(
                    "vcpu unplug request timed out. Unplug result must be manually inspected in the domain",
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    slots_online(qmp).await
}

/// How many vCPUs are plugged now.
pub async fn slots_online(qmp: &Qmp) -> Result<u32, VirError> {
    Ok(slots(qmp)
        .await?
        .iter()
        .filter(|s| s.qom_path.is_some())
        .count() as u32)
}
