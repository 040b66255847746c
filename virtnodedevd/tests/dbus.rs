//! virtnodedevd through its D-Bus API: the real machine's devices (compared with
//! lspci, ip and lsblk), hotplug events from a veth pair in a test namespace, node
//! resources against /proc and /sys, the fixture tree for SR-IOV, WWN lookup and PCI
//! detach, and the errors for bad input.

// Scenario tests are long stories by nature; the 150-line limit is for non-test code.
#![allow(clippy::too_many_lines)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use common::event::NodeDeviceEvent;
use common::harness::{Daemon, NetNs, TestBus};
use common::proxies::nodedev::{NodeDevConnectProxy, NodeDeviceProxy, NodeInfoProxy};
use futures_util::StreamExt;
use zbus::proxy::CacheProperties;

const BIN: &str = env!("CARGO_BIN_EXE_virtnodedevd");

async fn device<'a>(conn: &zbus::Connection, name: &str) -> anyhow::Result<NodeDeviceProxy<'a>> {
    Ok(NodeDeviceProxy::builder(conn)
        .path(common::objpath::node_device(name))?
        .cache_properties(CacheProperties::No)
        .build()
        .await?)
}

/// `org.libvirt.Error: <message>` of a failed call.
fn err_text<T: std::fmt::Debug>(r: zbus::Result<T>) -> String {
    match r {
        Err(zbus::Error::MethodError(name, msg, _)) => {
            format!("{}: {}", name.as_str(), msg.unwrap_or_default())
        }
        other => format!("unexpected: {other:?}"),
    }
}

fn run(argv: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(argv[0]).args(&argv[1..]).output()?;
    if !out.status.success() {
        bail!("{argv:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// name -> (parent, xml) of every device the daemon lists.
async fn all_devices(
    conn: &zbus::Connection,
    c: &NodeDevConnectProxy<'_>,
) -> anyhow::Result<BTreeMap<String, (String, String)>> {
    let mut out = BTreeMap::new();
    for p in c.list_node_devices(0).await? {
        let d = NodeDeviceProxy::builder(conn)
            .path(p)?
            .cache_properties(CacheProperties::No)
            .build()
            .await?;
        out.insert(
            d.name().await?,
            (d.parent().await?, d.get_xml_desc(0).await?),
        );
    }
    Ok(out)
}

fn pci_name(addr: &str) -> String {
    format!("pci_{}", addr.replace([':', '.'], "_"))
}

/// Tests that list the host's block devices and the one that adds a loop device would
/// see each other's changes; they take turns.
static HOST_BLOCK_DEVICES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread")]
async fn device_list_agrees_with_lspci_ip_and_lsblk() -> anyhow::Result<()> {
    let _turn = HOST_BLOCK_DEVICES.lock().await;
    let ns = NetNs::new()?;
    ns.run_ok(&[
        "ip", "link", "add", "vlist0", "type", "veth", "peer", "name", "vlist1",
    ])?;
    let bus = TestBus::start()?;
    let _d = Daemon::builder(BIN, "virtnodedevd")
        .netns(&ns)
        .spawn(&bus)
        .await?;
    let conn = bus.connection().await?;
    let c = NodeDevConnectProxy::new(&conn).await?;
    let devs = all_devices(&conn, &c).await?;

    // Closed tree: every parent is listed, only `computer` has none.
    for (name, (parent, xml)) in &devs {
        if name == "computer" {
            assert_eq!(parent, "");
        } else {
            assert!(
                devs.contains_key(parent),
                "{name}: parent {parent} not listed"
            );
        }
        assert!(xml.contains(&format!("<name>{name}</name>")));
    }

    // PCI: same addresses as `lspci -D`, same parents as its bridge path (-PP).
    let lspci = run(&["lspci", "-D", "-PP"])?;
    let mut want = BTreeMap::new();
    for line in lspci.lines() {
        let path = line.split_whitespace().next().unwrap_or("");
        let parts: Vec<&str> = path.split('/').collect();
        let dom = &parts[0][..5];
        let me = format!("{dom}{}", parts[parts.len() - 1].trim_start_matches(dom));
        let parent = match parts.len() {
            1 => "computer".to_string(),
            n => pci_name(&format!("{dom}{}", parts[n - 2].trim_start_matches(dom))),
        };
        want.insert(pci_name(&me), parent);
    }
    let got: BTreeMap<String, String> = devs
        .iter()
        .filter(|(n, _)| n.starts_with("pci_"))
        .map(|(n, (p, _))| (n.clone(), p.clone()))
        .collect();
    assert!(!want.is_empty());
    assert_eq!(got, want);
    let pci_paths = c.list_node_devices(2).await?;
    assert_eq!(pci_paths.len(), want.len());

    // Network: the links of the daemon's namespace, named net_<if>_<mac>.
    let links: serde_json::Value = serde_json::from_str(&ns.run_ok(&["ip", "-j", "link"])?)?;
    let mut want_net = BTreeSet::new();
    for l in links.as_array().context("ip -j link")? {
        let name = l["ifname"].as_str().context("ifname")?;
        let mac = l["address"].as_str().context("address")?;
        want_net.insert(format!("net_{name}_{}", mac.replace(':', "_")));
    }
    let got_net: BTreeSet<String> = devs
        .keys()
        .filter(|n| n.starts_with("net_"))
        .cloned()
        .collect();
    assert_eq!(got_net, want_net);
    assert_eq!(c.list_node_devices(16).await?.len(), want_net.len());

    // Block: lsblk's disks are the storage devices, under the device sysfs puts them.
    let lsblk: serde_json::Value =
        serde_json::from_str(&run(&["lsblk", "-J", "-d", "-o", "NAME,TYPE"])?)?;
    let mut want_blk = BTreeSet::new();
    for b in lsblk["blockdevices"].as_array().context("lsblk")? {
        // Loop devices come and go with other tests on this machine; the hotplug test
        // covers them.
        if b["type"] == "disk" || b["type"] == "rom" {
            want_blk.insert(format!("/dev/{}", b["name"].as_str().context("name")?));
        }
    }
    let mut got_blk = BTreeSet::new();
    for (name, (parent, xml)) in devs
        .iter()
        .filter(|(n, _)| n.starts_with("block_") && !n.starts_with("block_loop"))
    {
        let el = common::xml::parse_root(xml, "device")?;
        let block = el
            .first("capability")
            .and_then(|c| c.child_text("block"))
            .context("block")?;
        let sys = std::fs::canonicalize(format!("/sys/class/block/{}", &block[5..]))?;
        let want_parent = devs
            .iter()
            .filter_map(|(n, (_, x))| {
                let p = common::xml::parse_root(x, "device")
                    .ok()?
                    .child_text("path")?;
                (n != name && sys.starts_with(&p)).then(|| (p.len(), n.clone()))
            })
            .max()
            .map(|(_, n)| n)
            .unwrap_or_else(|| "computer".into());
        assert_eq!(parent, &want_parent, "{name}");
        got_blk.insert(block);
    }
    assert_eq!(got_blk, want_blk);
    Ok(())
}

async fn next_event(
    s: &mut common::proxies::nodedev::NodeDeviceEventStream,
) -> anyhow::Result<(String, NodeDeviceEvent)> {
    let ev = tokio::time::timeout(Duration::from_secs(10), s.next())
        .await
        .map_err(|_| anyhow!("no NodeDeviceEvent within 10 s"))?
        .context("signal stream ended")?;
    let a = ev.args()?;
    let event = NodeDeviceEvent::from_wire(a.event)
        .with_context(|| format!("NodeDeviceEvent {} is not libvirt's", a.event))?;
    Ok((a.dev.to_string(), event))
}

#[tokio::test(flavor = "multi_thread")]
async fn veth_pair_produces_created_and_deleted_events() -> anyhow::Result<()> {
    let ns = NetNs::new()?;
    let bus = TestBus::start()?;
    let _d = Daemon::builder(BIN, "virtnodedevd")
        .netns(&ns)
        .spawn(&bus)
        .await?;
    let conn = bus.connection().await?;
    let c = NodeDevConnectProxy::new(&conn).await?;
    let mut events = c.receive_node_device_event().await?;
    let before = c.list_node_devices(16).await?.len();

    let t0 = Instant::now();
    ns.run_ok(&[
        "ip", "link", "add", "vhp0", "type", "veth", "peer", "name", "vhp1",
    ])?;
    let links: serde_json::Value = serde_json::from_str(&ns.run_ok(&["ip", "-j", "link"])?)?;
    let mut want = BTreeSet::new();
    for l in links.as_array().context("links")? {
        let n = l["ifname"].as_str().unwrap_or("");
        if n.starts_with("vhp") {
            let mac = l["address"].as_str().unwrap_or("").replace(':', "_");
            want.insert(common::objpath::node_device(&format!("net_{n}_{mac}")).to_string());
        }
    }
    assert_eq!(want.len(), 2);
    let mut created = BTreeSet::new();
    while created.len() < 2 {
        let (dev, ev) = next_event(&mut events).await?;
        assert_eq!(ev, NodeDeviceEvent::Created, "{dev}");
        created.insert(dev);
    }
    eprintln!("veth add -> both CREATED signals: {:?}", t0.elapsed());
    assert_eq!(created, want);
    assert_eq!(c.list_node_devices(16).await?.len(), before + 2);
    let path = created
        .iter()
        .find(|p| p.contains("vhp0"))
        .context("vhp0")?;
    let name =
        common::objpath::decode_str(path.rsplit('/').next().unwrap_or("")).context("decode")?;
    let d = device(&conn, &name).await?;
    let xml = d.get_xml_desc(0).await?;
    assert!(xml.contains("<interface>vhp0</interface>"), "{xml}");
    // veth offloads checksums and scatter-gather by default (ethtool in the namespace).
    assert!(xml.contains("<feature name='sg'/>"), "{xml}");
    assert_eq!(d.list_caps().await?, vec!["net".to_string()]);

    // A rename is a kernel "move": the old name goes, the new one comes.
    ns.run_ok(&["ip", "link", "set", "vhp0", "name", "vhr0"])?;
    let new_name = name.replacen("net_vhp0_", "net_vhr0_", 1);
    let new_path = common::objpath::node_device(&new_name).to_string();
    if let Err(e) = wait_event(&mut events, path, NodeDeviceEvent::Deleted).await {
        eprintln!("LOG: {}", _d.log_text());
        return Err(e);
    }
    if let Err(e) = wait_event(&mut events, &new_path, NodeDeviceEvent::Created).await {
        eprintln!("LOG: {}", _d.log_text());
        return Err(e);
    }
    assert!(device(&conn, &new_name)
        .await?
        .get_xml_desc(0)
        .await?
        .contains("<interface>vhr0</interface>"));
    ns.run_ok(&["ip", "link", "set", "vhr0", "name", "vhp0"])?;
    wait_event(&mut events, &new_path, NodeDeviceEvent::Deleted).await?;
    wait_event(&mut events, path, NodeDeviceEvent::Created).await?;

    ns.run_ok(&["ip", "link", "del", "vhp0"])?;
    let mut deleted = BTreeSet::new();
    while deleted.len() < 2 {
        let (dev, ev) = next_event(&mut events).await?;
        assert_eq!(ev, NodeDeviceEvent::Deleted, "{dev}");
        deleted.insert(dev);
    }
    assert_eq!(deleted, want);
    assert_eq!(c.list_node_devices(16).await?.len(), before);
    let e = err_text(c.node_device_lookup_by_name(&name).await);
    assert_eq!(
        e,
        format!(
            "org.libvirt.Error: Node device not found: no node device with matching name '{name}'"
        )
    );
    Ok(())
}

fn meminfo(key: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo")?;
    text.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k == key).then(|| v.split_whitespace().next()?.parse().ok())?
        })
        .context(key.to_string())
}

#[tokio::test(flavor = "multi_thread")]
async fn node_resources_agree_with_proc_and_sys() -> anyhow::Result<()> {
    let bus = TestBus::start()?;
    let _d = Daemon::builder(BIN, "virtnodedevd").spawn(&bus).await?;
    let conn = bus.connection().await?;
    let c = NodeDevConnectProxy::new(&conn).await?;
    let ni = NodeInfoProxy::new(&conn).await?;

    let (model, mem, cpus, mhz, nodes, sockets, cores, threads) = ni.node_get_info().await?;
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo")?;
    let processors = cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count() as u32;
    assert_eq!(model, run(&["uname", "-m"])?.trim());
    assert_eq!(cpus, processors);
    assert_eq!(mem, meminfo("MemTotal")?);
    assert_eq!(nodes * sockets * cores * threads, cpus);
    if let Some(m) = cpuinfo.lines().find(|l| l.starts_with("cpu MHz")) {
        let want: f64 = m.split(':').nth(1).unwrap_or("").trim().parse()?;
        assert_eq!(mhz, want as u32);
    }

    let map = c.node_get_cpu_map(0).await?;
    let present = std::fs::read_to_string("/sys/devices/system/cpu/present")?;
    let last: usize = present
        .trim()
        .rsplit(['-', ','])
        .next()
        .unwrap_or("0")
        .parse()?;
    assert_eq!(map.len(), last + 1);
    assert_eq!(map.iter().filter(|b| **b).count() as u32, cpus);

    let stats = c.node_get_cpu_stats(-1, 0).await?;
    for k in ["kernel", "user", "idle", "iowait"] {
        assert!(stats.contains_key(k), "{k} missing: {stats:?}");
    }
    assert!(stats["idle"] > 0);
    let mem_stats = c.node_get_memory_stats(-1, 0).await?;
    assert_eq!(mem_stats["total"], meminfo("MemTotal")?);
    let free = c.node_get_free_memory().await?;
    let want_free = meminfo("MemFree")? * 1024;
    assert!(
        free.abs_diff(want_free) < want_free / 5 + (64 << 20),
        "{free} vs {want_free}"
    );
    let cells = ni.node_get_cells_free_memory(0, 64, 0).await?;
    assert_eq!(cells.len() as u32, nodes);

    let params = c.node_get_memory_parameters(0).await?;
    if Path::new("/sys/kernel/mm/ksm/pages_to_scan").exists() {
        assert!(params.contains_key("shm_pages_to_scan"), "{params:?}");
    }

    let sysinfo = c.get_sysinfo(0).await?;
    let si = common::xml::parse_root(&sysinfo, "sysinfo")?;
    assert_eq!(si.get_attr("type"), Some("smbios"));

    let host = ni.node_get_host_capabilities(0).await?;
    let h = common::xml::parse_root(&host, "host")?;
    let cpu = h.first("cpu").context("cpu")?;
    assert_eq!(cpu.child_text("arch").as_deref(), Some(model.as_str()));
    let cells_el = h
        .first("topology")
        .and_then(|t| t.first("cells"))
        .context("cells")?;
    let ncpus: usize = cells_el
        .children_named("cell")
        .filter_map(|c| c.first("cpus"))
        .map(|c| c.children_named("cpu").count())
        .sum();
    assert_eq!(ncpus as u32, cpus);

    // Bad input gets libvirt's errors.
    assert_eq!(
        err_text(c.node_get_memory_stats(4096, 0).await),
        "org.libvirt.Error: invalid argument: cell number 4096 out of range"
    );
    assert_eq!(
        err_text(c.node_get_cpu_stats(-5, 0).await),
        "org.libvirt.Error: invalid argument: CPU number -5 out of range"
    );
    assert_eq!(
        err_text(c.node_get_cpu_map(8).await),
        "org.libvirt.Error: invalid argument: unsupported flags (0x8)"
    );
    assert!(err_text(ni.node_get_cells_free_memory(99, 1, 0).await).contains("out of range"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_names_and_unknown_devices_get_clear_errors() -> anyhow::Result<()> {
    let bus = TestBus::start()?;
    let _d = Daemon::builder(BIN, "virtnodedevd").spawn(&bus).await?;
    let conn = bus.connection().await?;
    let c = NodeDevConnectProxy::new(&conn).await?;
    for bad in ["nope", "", "../../etc", "pci_0000_ff_1f_7", "pci/0000"] {
        assert_eq!(
            err_text(c.node_device_lookup_by_name(bad).await),
            format!("org.libvirt.Error: Node device not found: no node device with matching name '{bad}'")
        );
    }
    assert_eq!(
        err_text(c.list_node_devices(1 << 25).await),
        "org.libvirt.Error: invalid argument: unsupported flags (0x2000000)"
    );
    assert_eq!(
        err_text(c.node_device_lookup_scsi_host_by_wwn("1", "2", 0).await),
        "org.libvirt.Error: Node device not found: no node device with matching wwnn '1' and wwpn '2'"
    );
    let computer = device(&conn, "computer").await?;
    assert_eq!(
        err_text(computer.detach("vfio", 0).await),
        "org.libvirt.Error: invalid argument: device 'computer' is not a PCI device"
    );
    assert!(err_text(computer.destroy().await)
        .starts_with("org.libvirt.Error: Requested operation is not valid"));
    assert_eq!(computer.list_caps().await?, vec!["system".to_string()]);
    assert_eq!(
        err_text(computer.get_xml_desc(2).await),
        "org.libvirt.Error: invalid argument: unsupported flags (0x2)"
    );
    // An object that is not served.
    let ghost = device(&conn, "pci_ffff_ff_1f_7").await?;
    assert!(ghost.get_xml_desc(0).await.is_err());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn fixture_tree_over_dbus_detach_sriov_and_wwn() -> anyhow::Result<()> {
    let (_tmp, root) = common::harness::fixture_sysfs()?;
    let bus = TestBus::start()?;
    let _d = Daemon::builder(BIN, "virtnodedevd")
        .arg("--sysfs-root")
        .arg(&root)
        .spawn(&bus)
        .await?;
    let conn = bus.connection().await?;
    let c = NodeDevConnectProxy::new(&conn).await?;

    assert_eq!(c.list_node_devices(2).await?.len(), 7);
    assert_eq!(c.list_node_devices(8192 | 16384).await?.len(), 2);
    assert_eq!(
        c.list_node_devices(512).await?,
        vec![common::objpath::node_device("scsi_host5")]
    );
    assert_eq!(c.list_node_devices(4 | 8).await?.len(), 3);
    assert_eq!(
        c.node_device_lookup_scsi_host_by_wwn("0x20000000C9848140", "10000000c9848140", 0)
            .await?,
        common::objpath::node_device("scsi_host5")
    );

    let pf = device(&conn, "pci_0000_03_00_0").await?;
    assert_eq!(pf.name().await?, "pci_0000_03_00_0");
    assert_eq!(pf.parent().await?, "pci_0000_00_01_0");
    assert_eq!(pf.list_caps().await?, vec!["pci", "virt_functions"]);
    let xml = pf.get_xml_desc(0).await?;
    assert!(
        xml.contains("<capability type='virt_functions' maxCount='7'>"),
        "{xml}"
    );

    let vf = device(&conn, "pci_0000_03_10_0").await?;
    let dev = root.join("devices/pci0000:00/0000:00:01.0/0000:03:10.0");
    assert_eq!(
        err_text(vf.detach("xen", 0).await),
        "org.libvirt.Error: invalid argument: unknown driver name 'xen' (expected 'vfio' or 'kvm')"
    );
    vf.detach("vfio", 0).await?;
    assert_eq!(
        std::fs::read_to_string(dev.join("driver_override"))?,
        "vfio-pci\n"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("bus/pci/drivers/igbvf/unbind"))?,
        "0000:03:10.0"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("bus/pci/drivers_probe"))?,
        "0000:03:10.0"
    );
    vf.re_attach().await?;
    assert_eq!(std::fs::read_to_string(dev.join("driver_override"))?, "\n");
    vf.reset().await?;
    assert_eq!(std::fs::read_to_string(dev.join("reset"))?, "1");

    let mdev = device(
        &conn,
        "mdev_4b20d080_1b54_4048_85b3_a6a62d165c01_0000_00_02_0",
    )
    .await?;
    mdev.destroy().await?;
    let mdir = root.join("devices/pci0000:00/0000:00:02.0/4b20d080-1b54-4048-85b3-a6a62d165c01");
    assert_eq!(std::fs::read_to_string(mdir.join("remove"))?, "1");

    let usb = device(&conn, "usb_1_1").await?;
    assert!(err_text(usb.destroy().await).contains("is not a transient device"));
    assert_eq!(
        err_text(usb.reset().await),
        "org.libvirt.Error: invalid argument: device 'usb_1_1' is not a PCI device"
    );
    Ok(())
}

/// Plays the kernel for a fixture tree: waits until `trigger` holds a value, then makes
/// the device that write asks for with `make` (the daemon reads the tree again).
async fn kernel_answers(
    trigger: &Path,
    make: impl FnOnce(&str) -> anyhow::Result<()>,
) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = std::fs::read_to_string(trigger)?;
        if !v.is_empty() {
            make(&v)?;
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("nothing written to {}", trigger.display());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn write_file(p: &Path, text: &str) -> anyhow::Result<()> {
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d)?;
    }
    Ok(std::fs::write(p, text)?)
}

#[tokio::test(flavor = "multi_thread")]
async fn fixture_tree_create_and_destroy_vport_and_mdev() -> anyhow::Result<()> {
    let (_tmp, root) = common::harness::fixture_sysfs()?;
    let bus = TestBus::start()?;
    let _d = Daemon::builder(BIN, "virtnodedevd")
        .arg("--sysfs-root")
        .arg(&root)
        .spawn(&bus)
        .await?;
    let conn = bus.connection().await?;
    let c = NodeDevConnectProxy::new(&conn).await?;
    let mut events = c.receive_node_device_event().await?;

    // NPIV: "wwpn:wwnn" goes to the parent's vport_create; the kernel then adds a
    // scsi_host below vport-5:0-0 with those WWNs.
    let hba = root.join("devices/pci0000:00/0000:00:1f.2/host5");
    let fc5 = hba.join("fc_host/host5");
    let vport_xml = "<device><parent>scsi_host5</parent><capability type='scsi_host'>\
        <capability type='fc_host'><wwnn>20000000c9848199</wwnn><wwpn>10000000c9848199</wwpn>\
        </capability></capability></device>";
    let host6 = hba.join("vport-5:0-0/host6");
    let vport_create = fc5.join("vport_create");
    let (made, written) = tokio::join!(
        c.node_device_create_xml(vport_xml, 0),
        kernel_answers(&vport_create, |_| {
            write_file(&host6.join("uevent"), "DEVTYPE=scsi_host\n")?;
            write_file(
                &host6.join("fc_host/host6/node_name"),
                "0x20000000c9848199\n",
            )?;
            write_file(
                &host6.join("fc_host/host6/port_name"),
                "0x10000000c9848199\n",
            )?;
            std::os::unix::fs::symlink(
                "../../../devices/pci0000:00/0000:00:1f.2/host5/vport-5:0-0/host6",
                root.join("bus/scsi/devices/host6"),
            )?;
            Ok(())
        })
    );
    assert_eq!(written?, "10000000c9848199:20000000c9848199");
    let path = made?;
    assert_eq!(path, common::objpath::node_device("scsi_host6"));
    wait_event(&mut events, path.as_str(), NodeDeviceEvent::Created).await?;
    let vport = device(&conn, "scsi_host6").await?;
    assert_eq!(vport.parent().await?, "scsi_host5");
    assert_eq!(
        c.node_device_lookup_scsi_host_by_wwn("20000000c9848199", "10000000c9848199", 0)
            .await?,
        path
    );
    // The same WWNs again: refused before anything is written.
    std::fs::write(fc5.join("vport_create"), "")?;
    assert_eq!(
        err_text(c.node_device_create_xml(vport_xml, 0).await),
        "org.libvirt.Error: Requested operation is not valid: a device with wwnn \
         '20000000c9848199' and wwpn '10000000c9848199' exists already: 'scsi_host6'"
    );
    assert_eq!(std::fs::read_to_string(fc5.join("vport_create"))?, "");
    vport.destroy().await?;
    assert_eq!(
        std::fs::read_to_string(fc5.join("vport_delete"))?,
        "10000000c9848199:20000000c9848199"
    );
    // The kernel removes the vport; its DELETED event follows, as on a real sysfs.
    std::fs::remove_file(root.join("bus/scsi/devices/host6"))?;
    std::fs::remove_dir_all(hba.join("vport-5:0-0"))?;
    wait_event(&mut events, path.as_str(), NodeDeviceEvent::Deleted).await?;
    // Parent by fabric name, WWNs left to the daemon: random libvirt-style ones.
    std::fs::write(&vport_create, "")?;
    let host7 = hba.join("vport-5:0-1/host7");
    let (made, written) = tokio::join!(
        c.node_device_create_xml(
            "<device><parent fabric_wwn='0x2002000573DE9A81'/><capability type='scsi_host'>\
             <capability type='fc_host'/></capability></device>",
            0
        ),
        kernel_answers(&vport_create, |v| {
            let (wwpn, wwnn) = v.split_once(':').ok_or_else(|| anyhow!("bad write {v}"))?;
            write_file(&host7.join("uevent"), "DEVTYPE=scsi_host\n")?;
            write_file(
                &host7.join("fc_host/host7/node_name"),
                &format!("0x{wwnn}\n"),
            )?;
            write_file(
                &host7.join("fc_host/host7/port_name"),
                &format!("0x{wwpn}\n"),
            )?;
            std::os::unix::fs::symlink(
                "../../../devices/pci0000:00/0000:00:1f.2/host5/vport-5:0-1/host7",
                root.join("bus/scsi/devices/host7"),
            )?;
            Ok(())
        })
    );
    let written = written?;
    assert_eq!(made?, common::objpath::node_device("scsi_host7"));
    let (wwpn, wwnn) = written.split_once(':').unwrap_or_default();
    for w in [wwpn, wwnn] {
        assert!(
            w.len() == 16 && w.starts_with("5001a4a") && u64::from_str_radix(w, 16).is_ok(),
            "{written}"
        );
    }
    assert_ne!(wwpn, wwnn);

    // A host that cannot make vports is refused as a parent.
    let no_vports = vport_xml
        .replace("scsi_host5", "pci_0000_00_1f_2")
        .replace("99<", "98<");
    assert_eq!(
        err_text(c.node_device_create_xml(&no_vports, 0).await),
        "org.libvirt.Error: Requested operation is not valid: parent device \
         'pci_0000_00_1f_2' is not capable of vport operations"
    );

    // mdev: the UUID goes to the type's create file; the kernel adds the device below
    // its parent with an mdev_type link.
    let gpu = root.join("devices/pci0000:00/0000:00:02.0");
    let uuid = "0b3c8f5a-6b3d-4e0a-9c1d-2e3f4a5b6c7d";
    let mdev_xml = format!(
        "<device><parent>pci_0000_00_02_0</parent><capability type='mdev'>\
         <type id='i915-GVTg_V5_4'/><uuid>{uuid}</uuid></capability></device>"
    );
    let create = gpu.join("mdev_supported_types/i915-GVTg_V5_4/create");
    let mdir = gpu.join(uuid);
    let (made, written) = tokio::join!(
        c.node_device_create_xml(&mdev_xml, 0),
        kernel_answers(&create, |_| {
            write_file(&mdir.join("uevent"), "MDEV_TYPE=i915-GVTg_V5_4\n")?;
            write_file(&mdir.join("remove"), "")?;
            std::os::unix::fs::symlink(
                "../mdev_supported_types/i915-GVTg_V5_4",
                mdir.join("mdev_type"),
            )?;
            std::os::unix::fs::symlink(
                format!("../../../devices/pci0000:00/0000:00:02.0/{uuid}"),
                root.join("bus/mdev/devices").join(uuid),
            )?;
            Ok(())
        })
    );
    assert_eq!(written?, uuid);
    let name = "mdev_0b3c8f5a_6b3d_4e0a_9c1d_2e3f4a5b6c7d_0000_00_02_0";
    assert_eq!(made?, common::objpath::node_device(name));
    let mdev = device(&conn, name).await?;
    assert_eq!(mdev.parent().await?, "pci_0000_00_02_0");
    assert!(
        mdev.get_xml_desc(0)
            .await?
            .contains("<type id='i915-GVTg_V5_4'/>"),
        "{}",
        mdev.get_xml_desc(0).await?
    );
    mdev.destroy().await?;
    assert_eq!(std::fs::read_to_string(mdir.join("remove"))?, "1");

    // Bad requests: clear errors, nothing written.
    std::fs::write(&create, "")?;
    assert_eq!(
        err_text(
            c.node_device_create_xml(&mdev_xml.replace("i915-GVTg_V5_4", "nvidia-11"), 0)
                .await
        ),
        "org.libvirt.Error: Requested operation is not valid: device 'pci_0000_00_02_0' \
         does not offer mdev type 'nvidia-11'"
    );
    assert_eq!(
        err_text(
            c.node_device_create_xml(&mdev_xml.replace("i915-GVTg_V5_4", "../../../x"), 0)
                .await
        ),
        "org.libvirt.Error: XML error: invalid value '../../../x' for attribute 'id' in \
         <type>: expected letters, digits, '-', '_' or '.'"
    );
    assert_eq!(
        err_text(c.node_device_create_xml(&mdev_xml, 2).await),
        "org.libvirt.Error: invalid argument: unsupported flags (0x2)"
    );
    assert_eq!(std::fs::read_to_string(&create)?, "");
    Ok(())
}

/// Waits for `event` on `path`, skipping events of devices other tests create.
async fn wait_event(
    s: &mut common::proxies::nodedev::NodeDeviceEventStream,
    path: &str,
    event: NodeDeviceEvent,
) -> anyhow::Result<()> {
    loop {
        let (dev, ev) = next_event(s).await?;
        if dev == path && ev == event {
            return Ok(());
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn loop_device_attach_and_detach_produce_events() -> anyhow::Result<()> {
    let _turn = HOST_BLOCK_DEVICES.lock().await;
    let tmp = tempfile::tempdir()?;
    let img = tmp.path().join("disk.img");
    std::fs::File::create(&img)?.set_len(8 << 20)?;
    let bus = TestBus::start()?;
    let _d = Daemon::builder(BIN, "virtnodedevd").spawn(&bus).await?;
    let conn = bus.connection().await?;
    let c = NodeDevConnectProxy::new(&conn).await?;
    let ni = NodeInfoProxy::new(&conn).await?;
    let mut events = c.receive_node_device_event().await?;

    let dev = run(&["losetup", "--find", "--show", &img.to_string_lossy()])?;
    let dev = dev.trim().to_string();
    struct Detach(String);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = Command::new("losetup").args(["-d", &self.0]).status();
        }
    }
    let guard = Detach(dev.clone());
    let kname = dev.trim_start_matches("/dev/");
    let name = format!("block_{kname}");
    let path = common::objpath::node_device(&name).to_string();
    wait_event(&mut events, &path, NodeDeviceEvent::Created).await?;
    let d = device(&conn, &name).await?;
    let xml = d.get_xml_desc(0).await?;
    assert!(xml.contains(&format!("<block>{dev}</block>")), "{xml}");
    assert!(xml.contains("<size>8388608</size>"), "{xml}");
    assert_eq!(d.parent().await?, "computer");

    // A capacity change is a "change" uevent: the description differs -> NodeDeviceUpdate.
    let mut updates = ni.receive_node_device_update().await?;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)?
        .set_len(16 << 20)?;
    run(&["losetup", "-c", &dev])?;
    loop {
        let ev = tokio::time::timeout(Duration::from_secs(10), updates.next())
            .await
            .map_err(|_| anyhow!("no NodeDeviceUpdate within 10 s"))?
            .context("stream ended")?;
        if ev.args()?.dev.as_str() == path {
            break;
        }
    }
    assert!(d.get_xml_desc(0).await?.contains("<size>16777216</size>"));

    drop(guard);
    wait_event(&mut events, &path, NodeDeviceEvent::Deleted).await?;
    assert!(err_text(c.node_device_lookup_by_name(&name).await).contains("Node device not found"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn kill9_and_restart_lists_the_same_devices() -> anyhow::Result<()> {
    let _turn = HOST_BLOCK_DEVICES.lock().await;
    let ns = NetNs::new()?;
    ns.run_ok(&[
        "ip", "link", "add", "vrs0", "type", "veth", "peer", "name", "vrs1",
    ])?;
    let bus = TestBus::start()?;
    let mut d = Daemon::builder(BIN, "virtnodedevd")
        .netns(&ns)
        .spawn(&bus)
        .await?;
    let conn = bus.connection().await?;
    let c = NodeDevConnectProxy::new(&conn).await?;
    let before = all_devices(&conn, &c).await?;
    assert!(before.keys().any(|n| n.starts_with("net_vrs0_")));
    d.kill9();
    let _d2 = d.restart_builder().spawn(&bus).await?;
    let after = all_devices(&conn, &c).await?;
    let names = |m: &BTreeMap<String, (String, String)>| -> Vec<(String, String)> {
        m.iter().map(|(n, (p, _))| (n.clone(), p.clone())).collect()
    };
    assert_eq!(names(&after), names(&before));
    Ok(())
}

/// A property read or a list never waits behind an operation: an mdev create holds its
/// parent's job while it waits for the kernel (played by the test) to add the device;
/// the parent's properties, XML and caps and the device list answer meanwhile, and the
/// create then completes.
#[tokio::test(flavor = "multi_thread")]
async fn reads_do_not_wait_behind_a_create() -> anyhow::Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let (_tmp, root) = common::harness::fixture_sysfs()?;
    let bus = TestBus::start()?;
    let _d = Daemon::builder(BIN, "virtnodedevd")
        .arg("--sysfs-root")
        .arg(&root)
        .spawn(&bus)
        .await?;
    let conn = bus.connection().await?;
    let c = NodeDevConnectProxy::new(&conn).await?;
    let parent = "pci_0000_00_02_0";
    let gpu = device(&conn, parent).await?;
    let gpu_dir = root.join("devices/pci0000:00/0000:00:02.0");
    let uuid = "1c2d3e4f-5a6b-4c7d-8e9f-a0b1c2d3e4f5";
    let mdev_xml = format!(
        "<device><parent>{parent}</parent><capability type='mdev'>\
         <type id='i915-GVTg_V5_4'/><uuid>{uuid}</uuid></capability></device>"
    );
    let trigger = gpu_dir.join("mdev_supported_types/i915-GVTg_V5_4/create");
    let finished = AtomicBool::new(false);
    let creating = async {
        let r = c.node_device_create_xml(&mdev_xml, 0).await;
        finished.store(true, Ordering::SeqCst);
        r
    };
    let reads = async {
        // The daemon wrote the trigger: the create runs, waiting for the new device.
        while std::fs::read_to_string(&trigger)?.is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let out = (
            gpu.name().await?,
            gpu.parent().await?,
            gpu.get_xml_desc(0).await?,
            gpu.list_caps().await?,
            c.list_node_devices(0).await?,
        );
        let running = !finished.load(Ordering::SeqCst);
        // Now play the kernel: the mediated device appears below its parent.
        let mdir = gpu_dir.join(uuid);
        write_file(&mdir.join("uevent"), "MDEV_TYPE=i915-GVTg_V5_4\n")?;
        write_file(&mdir.join("remove"), "")?;
        std::os::unix::fs::symlink(
            "../mdev_supported_types/i915-GVTg_V5_4",
            mdir.join("mdev_type"),
        )?;
        std::os::unix::fs::symlink(
            format!("../../../devices/pci0000:00/0000:00:02.0/{uuid}"),
            root.join("bus/mdev/devices").join(uuid),
        )?;
        anyhow::Ok((out, running))
    };
    // Guards a hang only: each read is expected to answer at once.
    let (made, reads) = tokio::time::timeout(Duration::from_secs(30), async {
        tokio::join!(creating, reads)
    })
    .await?;
    let ((name, gpu_parent, xml, caps, list), running) = reads?;
    assert!(
        running,
        "the create was still running while the reads answered"
    );
    assert_eq!(name, parent);
    assert!(!gpu_parent.is_empty());
    assert!(xml.contains(&format!("<name>{parent}</name>")), "{xml}");
    assert!(caps.iter().any(|c| c == "pci"), "{caps:?}");
    assert!(list.contains(&common::objpath::node_device(parent)));
    let name = "mdev_1c2d3e4f_5a6b_4c7d_8e9f_a0b1c2d3e4f5_0000_00_02_0";
    assert_eq!(made?, common::objpath::node_device(name));
    Ok(())
}

/// NodeSetMemoryParameters writes KSM's tunables: here into the fixture tree's own
/// `kernel/mm/ksm` (never the host's), all checked before any is written.
#[tokio::test(flavor = "multi_thread")]
async fn node_memory_parameters_are_set_in_ksm() -> anyhow::Result<()> {
    use std::collections::HashMap;
    use zbus::zvariant::Value;
    let (_tmp, root) = common::harness::fixture_sysfs()?;
    let ksm = root.join("kernel/mm/ksm");
    std::fs::create_dir_all(&ksm)?;
    for (f, v) in [
        ("pages_to_scan", "100"),
        ("sleep_millisecs", "20"),
        ("merge_across_nodes", "1"),
        ("pages_shared", "0"),
    ] {
        std::fs::write(ksm.join(f), format!("{v}\n"))?;
    }
    let read = |f: &str| std::fs::read_to_string(ksm.join(f)).map(|s| s.trim().to_owned());
    let bus = TestBus::start()?;
    let _d = Daemon::builder(BIN, "virtnodedevd")
        .arg("--sysfs-root")
        .arg(&root)
        .spawn(&bus)
        .await?;
    let conn = bus.connection().await?;
    let c = NodeDevConnectProxy::new(&conn).await?;
    let set = |pairs: Vec<(&'static str, Value<'static>)>, flags: u32| {
        let c = c.clone();
        async move {
            let m: HashMap<&str, Value> = pairs.into_iter().collect();
            c.node_set_memory_parameters(&m, flags).await
        }
    };
    set(
        vec![
            ("shm_pages_to_scan", Value::from(250u32)),
            ("shm_sleep_millisecs", Value::from(50u32)),
            ("shm_merge_across_nodes", Value::from(0u32)),
        ],
        0,
    )
    .await?;
    assert_eq!(read("pages_to_scan")?, "250");
    assert_eq!(read("sleep_millisecs")?, "50");
    assert_eq!(read("merge_across_nodes")?, "0");
    let got = c.node_get_memory_parameters(0).await?;
    assert_eq!(u32::try_from(&got["shm_pages_to_scan"])?, 250);

    // One bad parameter and nothing is written.
    for (pairs, flags, says) in [
        (
            vec![
                ("shm_pages_to_scan", Value::from(1u32)),
                ("shm_pages_shared", Value::from(5u32)),
            ],
            0,
            "parameter 'shm_pages_shared' not supported",
        ),
        (
            vec![
                ("shm_pages_to_scan", Value::from(1u32)),
                ("shm_merge_across_nodes", Value::from(2u32)),
            ],
            0,
            "must be 0 or 1",
        ),
        (
            vec![("shm_pages_to_scan", Value::from(1u64))],
            0,
            "must be an unsigned int",
        ),
        (
            vec![("shm_pages_to_scan", Value::from(1u32))],
            1,
            "unsupported flags",
        ),
    ] {
        let e = set(pairs, flags).await.expect_err(says).to_string();
        assert!(e.contains(says), "{e}");
        assert_eq!(read("pages_to_scan")?, "250");
    }
    // A kernel without KSM.
    std::fs::remove_dir_all(&ksm)?;
    let e = set(vec![("shm_pages_to_scan", Value::from(1u32))], 0)
        .await
        .expect_err("no KSM")
        .to_string();
    assert!(e.contains("no KSM"), "{e}");
    Ok(())
}
