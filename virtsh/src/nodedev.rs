//! Node commands (virtnodedevd): devices, the node's CPU and memory, SMBIOS.

use std::collections::HashMap;

use anyhow::anyhow;
use common::proxies::nodedev::{NodeDevConnectProxy, NodeDeviceProxy, NodeInfoProxy};
use serde_json::{json, Value};

use crate::cli::NodedevCmd;
use crate::out::write_text;
use crate::{outln, Ctx};

pub async fn run(x: &Ctx<'_>, cmd: NodedevCmd) -> anyhow::Result<()> {
    let dd = x.dest("org.libvirt.virtnodedevd");
    let c = x.c;
    let device = |name: String| async move {
        let d: NodeDevConnectProxy = connect!(NodeDevConnectProxy, c, dd);
        let p = d.node_device_lookup_by_name(&name).await?;
        let dev: NodeDeviceProxy = object!(NodeDeviceProxy, c, p, dd);
        anyhow::Ok(dev)
    };
    match cmd {
        NodedevCmd::NodedevList { cap } => {
            let d: NodeDevConnectProxy = connect!(NodeDevConnectProxy, c, dd);
            let flags = match cap.as_deref() {
                None => 0,
                Some(c) => cap_flag(c).ok_or_else(|| anyhow!("invalid capability type '{c}'"))?,
            };
            let mut names = Vec::new();
            for p in d.list_node_devices(flags).await? {
                let dev: NodeDeviceProxy = object!(NodeDeviceProxy, c, p, dd);
                names.push(dev.name().await?);
            }
            names.sort();
            if x.out.json {
                x.out.value(&json!(names))?;
            } else {
                for n in names {
                    outln!("{n}");
                }
            }
        }
        NodedevCmd::NodedevDumpxml { device: n } => {
            write_text(&device(n).await?.get_xml_desc(0).await?)?;
        }
        NodedevCmd::NodedevDetach { device: n, driver } => {
            device(n.clone())
                .await?
                .detach(driver.as_deref().unwrap_or(""), 0)
                .await?;
            outln!("Device {n} detached");
        }
        NodedevCmd::NodedevReattach { device: n } => {
            device(n.clone()).await?.re_attach().await?;
            outln!("Device {n} re-attached");
        }
        NodedevCmd::NodedevReset { device: n } => {
            device(n.clone()).await?.reset().await?;
            outln!("Device {n} reset");
        }
        NodedevCmd::Nodeinfo => nodeinfo(x).await?,
        NodedevCmd::Nodememstats { cell } => {
            let d: NodeDevConnectProxy = connect!(NodeDevConnectProxy, c, dd);
            let stats = d.node_get_memory_stats(cell.unwrap_or(-1), 0).await?;
            print_node_stats(
                x,
                &stats,
                &["total", "free", "buffers", "cached"],
                |k, v| format!("{k:<7}: {v:>20} KiB"),
            )?;
        }
        NodedevCmd::Nodecpustats { cpu } => {
            let d: NodeDevConnectProxy = connect!(NodeDevConnectProxy, c, dd);
            let stats = d.node_get_cpu_stats(cpu.unwrap_or(-1), 0).await?;
            // virsh calls the kernel's time "system".
            let stats: HashMap<String, u64> = stats
                .into_iter()
                .map(|(k, v)| (if k == "kernel" { "system".into() } else { k }, v))
                .collect();
            print_node_stats(x, &stats, &["user", "system", "idle", "iowait"], |k, v| {
                format!("{:<15} {v:>20}", format!("{k}:"))
            })?;
        }
        NodedevCmd::Sysinfo => {
            let d: NodeDevConnectProxy = connect!(NodeDevConnectProxy, c, dd);
            write_text(&d.get_sysinfo(0).await?)?;
        }
    }
    Ok(())
}

/// Known fields first in virsh's order, then any others by name.
fn print_node_stats(
    x: &Ctx<'_>,
    stats: &HashMap<String, u64>,
    order: &[&str],
    line: impl Fn(&str, u64) -> String,
) -> anyhow::Result<()> {
    let mut keys: Vec<&String> = stats.keys().collect();
    keys.sort_by_key(|k| {
        (
            order.iter().position(|o| o == k).unwrap_or(order.len()),
            (*k).clone(),
        )
    });
    if x.out.json {
        let m: serde_json::Map<String, Value> = keys
            .iter()
            .map(|k| ((*k).clone(), json!(stats[*k])))
            .collect();
        x.out.value(&Value::Object(m))?;
        return Ok(());
    }
    for k in keys {
        outln!("{}", line(k, stats[k]));
    }
    Ok(())
}

async fn nodeinfo(x: &Ctx<'_>) -> anyhow::Result<()> {
    let dd = x.dest("org.libvirt.virtnodedevd");
    let d: NodeInfoProxy = connect!(NodeInfoProxy, x.c, dd);
    let (model, mem, cpus, mhz, nodes, sockets, cores, threads) = d.node_get_info().await?;
    x.out.info_w(
        20,
        &[
            ("CPU model", model.clone(), json!(model)),
            ("CPU(s)", cpus.to_string(), json!(cpus)),
            ("CPU frequency", format!("{mhz} MHz"), json!(mhz)),
            ("CPU socket(s)", sockets.to_string(), json!(sockets)),
            ("Core(s) per socket", cores.to_string(), json!(cores)),
            ("Thread(s) per core", threads.to_string(), json!(threads)),
            ("NUMA cell(s)", nodes.to_string(), json!(nodes)),
            ("Memory size", format!("{mem} KiB"), json!(mem)),
        ],
    )?;
    Ok(())
}

/// virConnectListAllNodeDevices capability flags by virsh's names.
fn cap_flag(cap: &str) -> Option<u32> {
    let names = [
        "system",
        "pci",
        "usb_device",
        "usb",
        "net",
        "scsi_host",
        "scsi_target",
        "scsi",
        "storage",
        "fc_host",
        "vports",
        "scsi_generic",
        "drm",
        "mdev_types",
        "mdev",
    ];
    names
        .iter()
        .position(|n| *n == cap)
        .and_then(|i| 1u32.checked_shl(u32::try_from(i).ok()?))
}
