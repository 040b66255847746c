//! Domain readers (virtqemud): dominfo, domstats, the disk and NIC lists and counters,
//! memory and vCPU figures. libvirt-dbus has no virDomainGetInfo, BlockStats or
//! InterfaceStats: they come from `GetStats` records and the domain XML, as libvirt's
//! own bulk-stats readers give them.

use std::collections::HashMap;

use anyhow::{anyhow, bail};
use serde_json::{json, Value};
use zbus::zvariant::{OwnedValue, Value as ZValue};

use crate::cli::StatsCmd;
use crate::domain::{state_name, xml};
use crate::{outln, yes_no, Ctx};

/// virDomainStatsTypes bits.
const STATE: u32 = 1;
const CPU_TOTAL: u32 = 2;
const BALLOON: u32 = 4;
const VCPU: u32 = 8;
const INTERFACE: u32 = 16;
const BLOCK: u32 = 32;
const PERF: u32 = 64;

pub async fn run(x: &Ctx<'_>, cmd: StatsCmd) -> anyhow::Result<()> {
    match cmd {
        StatsCmd::Dominfo { domain } => dominfo(x, &domain).await,
        StatsCmd::Domstats {
            domains,
            list_active,
            list_inactive,
            list_persistent,
            list_transient,
            list_running,
            list_paused,
            list_shutoff,
            enforce,
            state,
            cpu_total,
            balloon,
            vcpu,
            interface,
            block,
            perf,
        } => {
            let groups = [
                (state, STATE),
                (cpu_total, CPU_TOTAL),
                (balloon, BALLOON),
                (vcpu, VCPU),
                (interface, INTERFACE),
                (block, BLOCK),
                (perf, PERF),
            ]
            .iter()
            .filter(|(on, _)| *on)
            .fold(0, |a, (_, b)| a | b);
            // virConnectGetAllDomainStatsFlags, the list filters of ListAllDomains.
            let flags = [
                (list_active, 1),
                (list_inactive, 2),
                (list_persistent, 4),
                (list_transient, 8),
                (list_running, 16),
                (list_paused, 32),
                (list_shutoff, 64),
                (enforce, 1 << 31),
            ]
            .iter()
            .filter(|(on, _)| *on)
            .fold(0u32, |a, (_, b)| a | b);
            domstats(x, &domains, groups, flags).await
        }
        StatsCmd::Perf {
            domain,
            enable,
            disable,
            live,
            config,
            current,
        } => perf(x, &domain, enable, disable, impact(live, config, current)?).await,
        StatsCmd::Domiftune {
            domain,
            interface,
            inbound,
            outbound,
            live,
            config,
            current,
        } => {
            let flags = impact(live, config, current)?;
            domiftune(x, &domain, &interface, inbound, outbound, flags).await
        }
        StatsCmd::Domblklist {
            domain,
            inactive,
            details,
        } => domblklist(x, &domain, inactive, details).await,
        StatsCmd::Domiflist { domain, inactive } => domiflist(x, &domain, inactive).await,
        StatsCmd::Domblkstat { domain, device } => domblkstat(x, &domain, device).await,
        StatsCmd::Domifstat { domain, interface } => domifstat(x, &domain, &interface).await,
        StatsCmd::Dommemstat { domain } => dommemstat(x, &domain).await,
        StatsCmd::Vcpuinfo { domain } => vcpuinfo(x, &domain).await,
    }
}

type Record = HashMap<String, OwnedValue>;

fn num(r: &Record, k: &str) -> Option<u64> {
    match &**r.get(k)? {
        ZValue::U8(v) => Some(u64::from(*v)),
        ZValue::U16(v) => Some(u64::from(*v)),
        ZValue::U32(v) => Some(u64::from(*v)),
        ZValue::U64(v) => Some(*v),
        ZValue::I16(v) => u64::try_from(*v).ok(),
        ZValue::I32(v) => u64::try_from(*v).ok(),
        ZValue::I64(v) => u64::try_from(*v).ok(),
        _ => None,
    }
}

fn text(r: &Record, k: &str) -> Option<String> {
    match &**r.get(k)? {
        ZValue::Str(s) => Some(s.to_string()),
        _ => None,
    }
}

/// A typed parameter as virsh prints it (virTypedParameterToString) and as JSON.
pub fn param(v: &OwnedValue) -> (String, Value) {
    match &**v {
        ZValue::Bool(b) => (yes_no(*b).into(), json!(b)),
        ZValue::U8(n) => (n.to_string(), json!(n)),
        ZValue::I16(n) => (n.to_string(), json!(n)),
        ZValue::U16(n) => (n.to_string(), json!(n)),
        ZValue::I32(n) => (n.to_string(), json!(n)),
        ZValue::U32(n) => (n.to_string(), json!(n)),
        ZValue::I64(n) => (n.to_string(), json!(n)),
        ZValue::U64(n) => (n.to_string(), json!(n)),
        ZValue::F64(n) => (format!("{n:.6}"), json!(n)),
        ZValue::Str(s) => (s.to_string(), json!(s.as_str())),
        other => (format!("{other}"), json!(format!("{other}"))),
    }
}

/// Memory sizes and vCPU count from the XML, for a domain that is not running.
struct Sizes {
    max_kib: u64,
    cur_kib: u64,
    vcpus: u64,
}

fn kib(n: roxmltree::Node<'_, '_>) -> Option<u64> {
    let v: u64 = n.text()?.trim().parse().ok()?;
    let mul: f64 = match n.attribute("unit").unwrap_or("KiB") {
        "b" | "bytes" => 1.0 / 1024.0,
        "KB" => 1000.0 / 1024.0,
        "k" | "KiB" => 1.0,
        "MB" => 1e6 / 1024.0,
        "M" | "MiB" => 1024.0,
        "GB" => 1e9 / 1024.0,
        "G" | "GiB" => 1024.0 * 1024.0,
        "T" | "TiB" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    Some((v as f64 * mul) as u64)
}

fn sizes(xml: &str) -> anyhow::Result<Sizes> {
    let doc = roxmltree::Document::parse(xml)?;
    let root = doc.root_element();
    let child = |name: &str| root.children().find(|c| c.has_tag_name(name));
    let max_kib = child("memory").and_then(kib).unwrap_or(0);
    let cur_kib = child("currentMemory").and_then(kib).unwrap_or(max_kib);
    let vcpus = child("vcpu")
        .and_then(|v| {
            v.attribute("current")
                .or(v.text())
                .and_then(|t| t.trim().parse().ok())
        })
        .unwrap_or(0);
    Ok(Sizes {
        max_kib,
        cur_kib,
        vcpus,
    })
}

async fn dominfo(x: &Ctx<'_>, name: &str) -> anyhow::Result<()> {
    let d = x.domain(name).await?;
    let active = d.active().await?;
    let (state, _) = d.get_state(0).await?;
    let sz = sizes(&xml(&d, false).await?)?;
    let rec: Record = if active {
        d.get_stats(CPU_TOTAL | BALLOON | VCPU, 0).await?.0
    } else {
        Record::new()
    };
    let cpu_ns = num(&rec, "cpu.time").unwrap_or(0);
    let used = num(&rec, "balloon.current").unwrap_or(sz.cur_kib);
    let vcpus = num(&rec, "vcpu.current").unwrap_or(sz.vcpus);
    let id = d.id().await?;
    let autostart = d.autostart().await?;
    // virsh prints "unknown" where the daemon cannot tell (no managed save here).
    let managed = match d.has_managed_save_image(0).await {
        Ok(b) => (yes_no(b).to_string(), json!(b)),
        Err(_) => ("unknown".into(), Value::Null),
    };
    let mut rows = vec![
        (
            "Id",
            if active { id.to_string() } else { "-".into() },
            if active { json!(id) } else { Value::Null },
        ),
        ("Name", d.name().await?, json!(d.name().await?)),
        ("UUID", d.uuid().await?, json!(d.uuid().await?)),
        ("OS Type", d.os_type().await?, json!(d.os_type().await?)),
        ("State", state_name(state).into(), json!(state_name(state))),
        ("CPU(s)", vcpus.to_string(), json!(vcpus)),
    ];
    // virsh leaves the CPU time out when it is zero (a domain that is not running).
    if cpu_ns != 0 {
        let secs = cpu_ns as f64 / 1e9;
        rows.push(("CPU time", format!("{secs:.1}s"), json!(secs)));
    }
    let persistent = d.persistent().await?;
    rows.extend([
        (
            "Max memory",
            format!("{} KiB", sz.max_kib),
            json!(sz.max_kib),
        ),
        ("Used memory", format!("{used} KiB"), json!(used)),
        ("Persistent", yes_no(persistent).into(), json!(persistent)),
        (
            "Autostart",
            if autostart { "enable" } else { "disable" }.into(),
            json!(autostart),
        ),
        ("Managed save", managed.0, managed.1),
    ]);
    let q = x.qemu().await?;
    if let Ok((model, doi)) = q.node_get_security_model().await {
        rows.push(("Security model", model.clone(), json!(model)));
        rows.push(("Security DOI", doi.clone(), json!(doi)));
    }
    x.out.info(&rows)?;
    Ok(())
}

/// libvirt's field order in each group of a stats record.
const FIELD_ORDER: [&str; 34] = [
    "state",
    "reason",
    "time",
    "user",
    "system",
    "current",
    "maximum",
    "swap_in",
    "swap_out",
    "major_fault",
    "minor_fault",
    "unused",
    "available",
    "usable",
    "last-update",
    "disk_caches",
    "rss",
    "count",
    "name",
    "backingIndex",
    "path",
    "wait",
    "rx.bytes",
    "rx.pkts",
    "rx.errs",
    "rx.drop",
    "tx.bytes",
    "tx.pkts",
    "tx.errs",
    "tx.drop",
    "rd.reqs",
    "rd.bytes",
    "rd.times",
    "wr.reqs",
];
const FIELD_ORDER_TAIL: [&str; 7] = [
    "wr.bytes",
    "wr.times",
    "fl.reqs",
    "fl.times",
    "errors",
    "allocation",
    "capacity",
];

/// The order libvirt fills a record in: by group, the group's own fields, then each
/// device's (`vcpu.N.*`, `net.N.*`, `block.N.*`) in its field order.
fn stat_order(k: &str) -> (usize, i64, usize, String) {
    let (group, rest) = k.split_once('.').unwrap_or((k, ""));
    let g = ["state", "cpu", "balloon", "vcpu", "net", "block"]
        .iter()
        .position(|x| *x == group)
        .unwrap_or(6);
    let (dev, field) = match rest.split_once('.') {
        Some((n, f)) if n.parse::<i64>().is_ok() => (n.parse().unwrap_or(-1), f),
        _ => (-1, rest),
    };
    let pos = FIELD_ORDER
        .iter()
        .chain(FIELD_ORDER_TAIL.iter())
        .position(|f| *f == field)
        .unwrap_or(usize::MAX);
    (g, dev, pos, k.to_string())
}

async fn domstats(x: &Ctx<'_>, domains: &[String], groups: u32, flags: u32) -> anyhow::Result<()> {
    let mut records: Vec<(String, Record)> = Vec::new();
    if domains.is_empty() {
        for (name, r) in x.qemu().await?.get_all_domain_stats(groups, flags).await? {
            records.push((name, r.0));
        }
    } else {
        for n in domains {
            let d = x.domain(n).await?;
            // Only ENFORCE applies to one domain; the list filters are for all of them.
            let one = flags & (1 << 31);
            records.push((d.name().await?, d.get_stats(groups, one).await?.0));
        }
    }
    let mut all = serde_json::Map::new();
    for (name, r) in records {
        let mut keys: Vec<&String> = r.keys().collect();
        keys.sort_by_key(|k| stat_order(k));
        if x.out.json {
            let m: serde_json::Map<String, Value> = keys
                .iter()
                .map(|k| ((*k).clone(), param(&r[*k]).1))
                .collect();
            all.insert(name, Value::Object(m));
            continue;
        }
        outln!("Domain: '{name}'");
        for k in keys {
            outln!("  {k}={}", param(&r[k]).0);
        }
        outln!("");
    }
    if x.out.json {
        x.out.value(&Value::Object(all))?;
    }
    Ok(())
}

/// A device's source as virsh's domblklist/domiflist show it.
fn source_of(dev: roxmltree::Node<'_, '_>, attrs: &[&str]) -> String {
    dev.children()
        .find(|c| c.has_tag_name("source"))
        .and_then(|s| attrs.iter().find_map(|a| s.attribute(*a)))
        .unwrap_or("-")
        .to_string()
}

fn attr_of(dev: roxmltree::Node<'_, '_>, child: &str, attr: &str) -> String {
    dev.children()
        .find(|c| c.has_tag_name(child))
        .and_then(|c| c.attribute(attr))
        .unwrap_or("-")
        .to_string()
}

fn devices<'a, 'i>(
    doc: &'a roxmltree::Document<'i>,
    tag: &'a str,
) -> impl Iterator<Item = roxmltree::Node<'a, 'i>> + 'a {
    doc.root_element()
        .children()
        .filter(|c| c.has_tag_name("devices"))
        .flat_map(|d| d.children())
        .filter(move |c| c.has_tag_name(tag))
}

async fn domblklist(x: &Ctx<'_>, n: &str, inactive: bool, details: bool) -> anyhow::Result<()> {
    let text = xml(&x.domain(n).await?, inactive).await?;
    let doc = roxmltree::Document::parse(&text)?;
    let mut rows = Vec::new();
    for disk in devices(&doc, "disk") {
        let target = attr_of(disk, "target", "dev");
        let source = source_of(disk, &["file", "dev", "dir", "name", "volume"]);
        let mut row = Vec::new();
        if details {
            row.push(disk.attribute("type").unwrap_or("-").to_string());
            row.push(disk.attribute("device").unwrap_or("disk").to_string());
        }
        row.extend([target, source]);
        rows.push(row);
    }
    let headers: &[&str] = if details {
        &["Type", "Device", "Target", "Source"]
    } else {
        &["Target", "Source"]
    };
    x.out.table(headers, &rows)?;
    Ok(())
}

async fn domiflist(x: &Ctx<'_>, n: &str, inactive: bool) -> anyhow::Result<()> {
    let text = xml(&x.domain(n).await?, inactive).await?;
    let doc = roxmltree::Document::parse(&text)?;
    let mut rows = Vec::new();
    for nic in devices(&doc, "interface") {
        rows.push(vec![
            attr_of(nic, "target", "dev"),
            nic.attribute("type").unwrap_or("-").to_string(),
            source_of(nic, &["network", "bridge", "dev", "path"]),
            attr_of(nic, "model", "type"),
            attr_of(nic, "mac", "address"),
        ]);
    }
    x.out
        .table(&["Interface", "Type", "Source", "Model", "MAC"], &rows)?;
    Ok(())
}

/// The index of the device `name` in a record's `PREFIX.N.name`/`.path` entries.
fn device_index(r: &Record, prefix: &str, name: &str) -> Option<u64> {
    (0..num(r, &format!("{prefix}.count"))?).find(|i| {
        text(r, &format!("{prefix}.{i}.name")).as_deref() == Some(name)
            || text(r, &format!("{prefix}.{i}.path")).as_deref() == Some(name)
    })
}

async fn domblkstat(x: &Ctx<'_>, n: &str, device: Option<String>) -> anyhow::Result<()> {
    let d = x.domain(n).await?;
    if !d.active().await? {
        bail!("Requested operation is not valid: domain is not running");
    }
    let r = d.get_stats(BLOCK, 0).await?.0;
    let indices: Vec<u64> = match &device {
        Some(dev) => vec![device_index(&r, "block", dev)
            .ok_or_else(|| anyhow!("invalid argument: invalid path: {dev}"))?],
        None => (0..num(&r, "block.count").unwrap_or(0)).collect(),
    };
    // virsh's names for the bulk-stats fields; without a device, the sum of all disks.
    let fields = [
        ("rd_req", "rd.reqs"),
        ("rd_bytes", "rd.bytes"),
        ("wr_req", "wr.reqs"),
        ("wr_bytes", "wr.bytes"),
        ("flush_operations", "fl.reqs"),
        ("rd_total_times", "rd.times"),
        ("wr_total_times", "wr.times"),
        ("flush_total_times", "fl.times"),
    ];
    let mut rows = Vec::new();
    for (name, k) in fields {
        let vals: Vec<u64> = indices
            .iter()
            .filter_map(|i| num(&r, &format!("block.{i}.{k}")))
            .collect();
        if !vals.is_empty() {
            rows.push((name.to_string(), json!(vals.iter().sum::<u64>())));
        }
    }
    let prefix = device.map(|d| format!("{d} ")).unwrap_or_default();
    x.out.pairs(&prefix, &rows)?;
    Ok(())
}

async fn domifstat(x: &Ctx<'_>, n: &str, iface: &str) -> anyhow::Result<()> {
    let d = x.domain(n).await?;
    if !d.active().await? {
        bail!("Requested operation is not valid: domain is not running");
    }
    let r = d.get_stats(INTERFACE, 0).await?.0;
    // A MAC address names the NIC through the XML's order, as the stats records do.
    let idx = match device_index(&r, "net", iface) {
        Some(i) => i,
        None => {
            let text = xml(&d, false).await?;
            let doc = roxmltree::Document::parse(&text)?;
            let pos = devices(&doc, "interface")
                .position(|nic| attr_of(nic, "mac", "address").eq_ignore_ascii_case(iface));
            pos.map(|p| p as u64).ok_or_else(|| {
                anyhow!("invalid argument: invalid path, '{iface}' is not a known interface")
            })?
        }
    };
    let fields = [
        ("rx_bytes", "rx.bytes"),
        ("rx_packets", "rx.pkts"),
        ("rx_errs", "rx.errs"),
        ("rx_drop", "rx.drop"),
        ("tx_bytes", "tx.bytes"),
        ("tx_packets", "tx.pkts"),
        ("tx_errs", "tx.errs"),
        ("tx_drop", "tx.drop"),
    ];
    let rows: Vec<(String, Value)> = fields
        .iter()
        .filter_map(|(name, k)| {
            num(&r, &format!("net.{idx}.{k}")).map(|v| (name.to_string(), json!(v)))
        })
        .collect();
    x.out.pairs(&format!("{iface} "), &rows)?;
    Ok(())
}

/// virDomainMemoryStatTags by number, as virsh names them.
const MEM_TAGS: [&str; 13] = [
    "swap_in",
    "swap_out",
    "major_fault",
    "minor_fault",
    "unused",
    "available",
    "actual",
    "rss",
    "usable",
    "last_update",
    "disk_caches",
    "hugetlb_pgalloc",
    "hugetlb_pgfail",
];

async fn dommemstat(x: &Ctx<'_>, n: &str) -> anyhow::Result<()> {
    let stats = x.domain(n).await?.memory_stats(0).await?;
    let mut tags: Vec<(&i32, &u64)> = stats.iter().collect();
    tags.sort();
    let rows: Vec<(String, Value)> = tags
        .into_iter()
        .map(|(t, v)| {
            let name = usize::try_from(*t)
                .ok()
                .and_then(|i| MEM_TAGS.get(i))
                .map(|s| s.to_string())
                .unwrap_or_else(|| format!("tag{t}"));
            (name, json!(v))
        })
        .collect();
    x.out.pairs("", &rows)?;
    Ok(())
}

async fn vcpuinfo(x: &Ctx<'_>, n: &str) -> anyhow::Result<()> {
    let d = x.domain(n).await?;
    let active = d.active().await?;
    let r = if active {
        d.get_stats(VCPU, 0).await?.0
    } else {
        Record::new()
    };
    let count = match num(&r, "vcpu.current") {
        Some(c) => c,
        None => sizes(&xml(&d, false).await?)?.vcpus,
    };
    let pins = d.get_vcpu_pin_info(0).await.ok();
    let mut all = Vec::new();
    for i in 0..count {
        // The daemon does not report which host CPU a vCPU last ran on.
        let state = match num(&r, &format!("vcpu.{i}.state")) {
            Some(1) => "running",
            Some(2) => "blocked",
            Some(_) => "offline",
            None => "N/A",
        };
        let time = num(&r, &format!("vcpu.{i}.time"))
            .map(|t| format!("{:.1}s", t as f64 / 1e9))
            .unwrap_or_else(|| "N/A".into());
        let affinity = pins
            .as_ref()
            .and_then(|p| usize::try_from(i).ok().and_then(|i| p.get(i)))
            .map(|m| m.iter().map(|b| if *b { 'y' } else { '-' }).collect())
            .unwrap_or_else(|| "N/A".to_string());
        if x.out.json {
            all.push(json!({"vcpu": i, "cpu": null, "state": state, "cpu_time": time, "cpu_affinity": affinity}));
            continue;
        }
        x.out.info(&[
            ("VCPU", i.to_string(), Value::Null),
            ("CPU", "N/A".into(), Value::Null),
            ("State", state.into(), Value::Null),
            ("CPU time", time, Value::Null),
            ("CPU Affinity", affinity, Value::Null),
        ])?;
        outln!("");
    }
    if x.out.json {
        x.out.value(&Value::Array(all))?;
    }
    Ok(())
}

/// virsh's --live/--config/--current: VIR_DOMAIN_AFFECT_* (--current alone excludes
/// the others).
fn impact(live: bool, config: bool, current: bool) -> anyhow::Result<u32> {
    if current && (live || config) {
        bail!("--current must not be given with --live or --config");
    }
    Ok(u32::from(live) | (u32::from(config) << 1))
}

/// `perf`: switches the named events, or lists every event as virsh does.
async fn perf(
    x: &Ctx<'_>,
    n: &str,
    enable: Option<String>,
    disable: Option<String>,
    flags: u32,
) -> anyhow::Result<()> {
    let d = x.domain(n).await?;
    let names = |list: &Option<String>| -> Vec<String> {
        list.as_deref()
            .unwrap_or("")
            .split(',')
            .filter(|e| !e.is_empty())
            .map(str::to_owned)
            .collect()
    };
    let (on, off) = (names(&enable), names(&disable));
    if on.is_empty() && off.is_empty() {
        let events = d.get_perf_events(flags).await?;
        let mut rows: Vec<(&String, bool)> = events
            .iter()
            .map(|(k, v)| (k, bool::try_from(v).unwrap_or(false)))
            .collect();
        rows.sort();
        for (k, v) in rows {
            crate::outln!("{k:<20}: {}", if v { "enabled" } else { "disabled" });
        }
        return Ok(());
    }
    let params: HashMap<&str, ZValue> = on
        .iter()
        .map(|e| (e.as_str(), ZValue::from(true)))
        .chain(off.iter().map(|e| (e.as_str(), ZValue::from(false))))
        .collect();
    d.set_perf_events(&params, flags).await?;
    Ok(())
}

/// `domiftune`: sets the given limits, or prints libvirt's seven numbers.
async fn domiftune(
    x: &Ctx<'_>,
    n: &str,
    iface: &str,
    inbound: Option<String>,
    outbound: Option<String>,
    flags: u32,
) -> anyhow::Result<()> {
    let d = x.domain(n).await?;
    if inbound.is_none() && outbound.is_none() {
        let p = d.get_interface_parameters(iface, flags).await?;
        for k in [
            "inbound.average",
            "inbound.peak",
            "inbound.burst",
            "inbound.floor",
            "outbound.average",
            "outbound.peak",
            "outbound.burst",
        ] {
            let v = p.get(k).and_then(|v| u32::try_from(v).ok()).unwrap_or(0);
            crate::outln!("{k:<15}: {v}");
        }
        return Ok(());
    }
    let mut params: HashMap<String, ZValue> = HashMap::new();
    for (dir, spec, fields) in [
        (
            "inbound",
            &inbound,
            &["average", "peak", "burst", "floor"][..],
        ),
        ("outbound", &outbound, &["average", "peak", "burst"][..]),
    ] {
        let Some(spec) = spec else { continue };
        let values: Vec<&str> = spec.split(',').collect();
        if values.len() > fields.len() {
            bail!(
                "inbound/outbound take at most {} numbers: '{spec}'",
                fields.len()
            );
        }
        for (f, v) in fields.iter().zip(values) {
            if v.is_empty() {
                continue;
            }
            let n: u32 = v
                .parse()
                .map_err(|_| anyhow!("{dir} {f} '{v}' is not a number"))?;
            params.insert(format!("{dir}.{f}"), ZValue::from(n));
        }
    }
    let params: HashMap<&str, ZValue> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    d.set_interface_parameters(iface, &params, flags).await?;
    Ok(())
}
