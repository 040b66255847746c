//! Device hotplug through virtqemud's D-Bus API (AttachDevice, DetachDevice,
//! UpdateDevice) on the tiny guest under real QEMU: the guest's kernel sees a disk and a
//! NIC appear and go (its device watcher prints `TINYGUEST-DEV add|remove ...` on the
//! serial console), DeviceAdded and DeviceRemoved carry libvirt's aliases, the config
//! keeps what CONFIG attaches across a restart, and a daemon killed with -9 in the
//! middle of a plug or unplug comes back knowing exactly the devices QEMU has.
//!
//! `VIRT_CHAOS_ROUNDS` sets the kills of the storm (8 by default).

use std::path::Path;
use std::time::{Duration, Instant};

mod support;

use futures_util::StreamExt;
use support::{bus_err, domain, wait_serial, Probe};

const BIN: &str = env!("CARGO_BIN_EXE_virtqemud");
const LIVE: u32 = 1;
const CONFIG: u32 = 2;
const INACTIVE_XML: u32 = 2;

/// A raw image of `mib` MiB.
fn image(dir: &Path, name: &str, mib: u64) -> std::path::PathBuf {
    let p = dir.join(name);
    let f = std::fs::File::create(&p).expect("image");
    f.set_len(mib << 20).expect("size");
    p
}

fn disk(img: &Path, target: &str, bus: &str) -> String {
    format!(
        "<disk type='file' device='disk'><driver name='qemu' type='raw'/>\
         <source file='{}'/><target dev='{target}' bus='{bus}'/></disk>",
        img.display()
    )
}

/// The guest of recipe 5 or later watches its devices; an older cached one does not.
fn check_recipe() {
    let r = support::guest_recipe();
    assert!(
        r >= 5,
        "the cached test guest is recipe {r}: scripts/build-test-guest.sh must rebuild it \
         (recipe 5 loads virtio_blk and watches devices)"
    );
}

async fn next_alias<S, M>(s: &mut S, what: &str) -> String
where
    S: futures_util::Stream<Item = M> + Unpin,
    M: AliasOf,
{
    let sig = tokio::time::timeout(Duration::from_secs(20), s.next())
        .await
        .unwrap_or_else(|_| panic!("{what} within 20 s"))
        .expect("stream open");
    sig.alias()
}

trait AliasOf {
    fn alias(&self) -> String;
}
impl AliasOf for common::proxies::libvirt::domain::DeviceAdded {
    fn alias(&self) -> String {
        self.args().expect("args").device.to_owned()
    }
}
impl AliasOf for common::proxies::libvirt::domain::DeviceRemoved {
    fn alias(&self) -> String {
        self.args().expect("args").device.to_owned()
    }
}

/// Waits until the serial log holds `marker` `n` times.
async fn wait_count(serial: &Path, marker: &str, n: usize, within: Duration) {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(serial).unwrap_or_default();
        if text.matches(marker).count() >= n {
            return;
        }
        assert!(
            start.elapsed() < within,
            "'{marker}' not seen {n} times within {within:?}; serial:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The tiny guest `name` with `devices`, defined through `qc` and booted until it watches
/// for devices; its DeviceAdded and DeviceRemoved streams, subscribed before the start.
async fn watching_guest<'a>(
    conn: &'a zbus::Connection,
    qc: &common::proxies::qemu::QemuConnectProxy<'_>,
    name: &str,
    serial: &Path,
    devices: &str,
) -> (
    common::proxies::qemu::DomainProxy<'a>,
    common::proxies::libvirt::domain::DeviceAddedStream,
    common::proxies::libvirt::domain::DeviceRemovedStream,
) {
    let path = qc
        .domain_define_xml(&support::guest_xml(name, serial, devices))
        .await
        .expect("define");
    let d = domain(conn, &path).await;
    let added = d.receive_device_added().await.expect("subscribe");
    let removed = d.receive_device_removed().await.expect("subscribe");
    d.create(0).await.expect("create");
    wait_serial(serial, "TINYGUEST-DEVWATCH", Duration::from_secs(90)).await;
    (d, added, removed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disks_and_nics_plug_in_and_out_of_a_running_guest() {
    check_recipe();
    let mut q = support::qemud(BIN).await;
    let dir = q.daemon.dirs.root.path().to_owned();
    let serial = dir.join("serial.log");
    let (b, c) = (image(&dir, "b.img", 16), image(&dir, "c.img", 16));
    let iso = image(&dir, "media.iso", 1);
    let cdrom = "<disk type='file' device='cdrom'><target dev='hdc' bus='ide'/><readonly/></disk>";
    let (d, mut added, mut removed) = watching_guest(&q.conn, &q.qc, "hp", &serial, cdrom).await;

    // A virtio disk, live ("current" of a running domain). The guest's kernel names
    // virtio disks in the order they come (the target is libvirt's name): vda.
    d.attach_device(&disk(&b, "vdb", "virtio"), 0)
        .await
        .expect("attach vdb");
    assert_eq!(next_alias(&mut added, "DeviceAdded").await, "virtio-disk1");
    wait_serial(
        &serial,
        "TINYGUEST-DEV add block/vda",
        Duration::from_secs(30),
    )
    .await;
    let live = d.get_xml_desc(0).await.expect("xml");
    assert!(live.contains("dev='vdb'"), "{live}");
    let config = d.get_xml_desc(INACTIVE_XML).await.expect("xml");
    assert!(!config.contains("dev='vdb'"), "{config}");
    refusals(&d, &c).await;
    assert_eq!(d.get_xml_desc(0).await.expect("xml"), live);

    // Live and config at once.
    d.attach_device(&disk(&c, "vdc", "virtio"), LIVE | CONFIG)
        .await
        .expect("attach vdc");
    assert_eq!(next_alias(&mut added, "DeviceAdded").await, "virtio-disk2");
    wait_serial(
        &serial,
        "TINYGUEST-DEV add block/vdb",
        Duration::from_secs(30),
    )
    .await;
    assert!(d
        .get_xml_desc(INACTIVE_XML)
        .await
        .expect("xml")
        .contains("dev='vdc'"));

    user_nic(&d, &serial, &mut added, &mut removed).await;

    virtio_rng(&d, &mut added, &mut removed).await;

    // Unplug: the guest lets vdb go.
    d.detach_device(&disk(&b, "vdb", "virtio"), 0)
        .await
        .expect("detach vdb");
    assert_eq!(
        next_alias(&mut removed, "DeviceRemoved").await,
        "virtio-disk1"
    );
    wait_serial(
        &serial,
        "TINYGUEST-DEV remove block/vda",
        Duration::from_secs(30),
    )
    .await;
    assert!(!d.get_xml_desc(0).await.expect("xml").contains("dev='vdb'"));
    assert_eq!(
        bus_err(d.detach_device(&disk(&b, "vdb", "virtio"), 0).await),
        "device not found: disk vdb not found"
    );
    // Plugged again, it gets a fresh block node and the same alias.
    d.attach_device(&disk(&b, "vdb", "virtio"), 0)
        .await
        .expect("attach vdb again");
    assert_eq!(next_alias(&mut added, "DeviceAdded").await, "virtio-disk1");
    wait_count(
        &serial,
        "TINYGUEST-DEV add block/vda",
        2,
        Duration::from_secs(30),
    )
    .await;

    // A cdrom's medium: inserted, then ejected (IDE is not hot-unpluggable).
    let medium = format!(
        "<disk type='file' device='cdrom'><source file='{}'/><target dev='hdc' bus='ide'/><readonly/></disk>",
        iso.display()
    );
    d.update_device(&medium, 0).await.expect("insert medium");
    assert!(d
        .get_xml_desc(0)
        .await
        .expect("xml")
        .contains(&iso.display().to_string()));
    assert_eq!(
        bus_err(d.detach_device(&medium, LIVE).await),
        "Operation not supported: disk bus 'ide' cannot be hotunplugged."
    );

    // kill -9 and restart: the live definition (vdb, vdc, the medium) comes back, and
    // the adopted QEMU still unplugs.
    let before = d.get_xml_desc(0).await.expect("xml");
    let path = zbus::zvariant::OwnedObjectPath::from(d.inner().path().to_owned());
    q.daemon.kill9();
    q.daemon = q
        .daemon
        .restart_builder()
        .spawn(&q.bus)
        .await
        .expect("restart");
    let d = domain(&q.conn, &path).await;
    assert_eq!(d.get_xml_desc(0).await.expect("xml"), before);
    let mut removed = d.receive_device_removed().await.expect("subscribe");
    d.update_device(
        "<disk type='file' device='cdrom'><target dev='hdc' bus='ide'/><readonly/></disk>",
        0,
    )
    .await
    .expect("eject");
    assert!(!d
        .get_xml_desc(0)
        .await
        .expect("xml")
        .contains(&iso.display().to_string()));
    d.detach_device(&disk(&c, "vdc", "virtio"), LIVE | CONFIG)
        .await
        .expect("detach vdc");
    assert_eq!(
        next_alias(&mut removed, "DeviceRemoved").await,
        "virtio-disk2"
    );
    wait_serial(
        &serial,
        "TINYGUEST-DEV remove block/vdb",
        Duration::from_secs(30),
    )
    .await;
    assert!(!d
        .get_xml_desc(INACTIVE_XML)
        .await
        .expect("xml")
        .contains("dev='vdc'"));
    d.destroy(0).await.expect("destroy");
}

/// The same target twice, bad fragments and a kind that does not plug in live: libvirt's
/// errors.
async fn refusals(d: &common::proxies::qemu::DomainProxy<'_>, c: &Path) {
    // The same target twice, and bad fragments: libvirt's errors, nothing changed.
    assert_eq!(
        bus_err(d.attach_device(&disk(c, "vdb", "virtio"), 0).await),
        "operation failed: target vdb already exists"
    );
    for bad in [
        "<disk",
        "<domain/>",
        "<disk type='file'><target dev='vdz'/></disk>",
    ] {
        bus_err(d.attach_device(bad, 0).await);
    }
    assert_eq!(
        bus_err(
            d.attach_device("<watchdog model='i6300esb' action='reset'/>", LIVE)
                .await
        ),
        "Operation not supported: live attach of device 'watchdog' is not supported"
    );
}

/// A virtio RNG, plugged in and out (the guest lets it go: DEVICE_DELETED).
async fn virtio_rng(
    d: &common::proxies::qemu::DomainProxy<'_>,
    added: &mut common::proxies::libvirt::domain::DeviceAddedStream,
    removed: &mut common::proxies::libvirt::domain::DeviceRemovedStream,
) {
    let rng = "<rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>";
    d.attach_device(rng, 0).await.expect("attach rng");
    assert_eq!(next_alias(added, "DeviceAdded").await, "rng0");
    assert!(d
        .get_xml_desc(0)
        .await
        .expect("xml")
        .contains("<rng model='virtio'>"));
    assert_eq!(
        bus_err(
            d.detach_device(
                "<rng model='virtio'><backend model='random'>/dev/hwrng</backend></rng>",
                0
            )
            .await
        ),
        "device not found: matching rng device not found"
    );
    d.detach_device(rng, 0).await.expect("detach rng");
    assert_eq!(next_alias(removed, "DeviceRemoved").await, "rng0");
    assert!(!d.get_xml_desc(0).await.expect("xml").contains("<rng"));
}

/// A user-mode NIC: the guest's eth0 appears and goes.
async fn user_nic(
    d: &common::proxies::qemu::DomainProxy<'_>,
    serial: &Path,
    added: &mut common::proxies::libvirt::domain::DeviceAddedStream,
    removed: &mut common::proxies::libvirt::domain::DeviceRemovedStream,
) {
    d.attach_device(
        "<interface type='user'><model type='virtio'/></interface>",
        0,
    )
    .await
    .expect("attach nic");
    assert_eq!(next_alias(added, "DeviceAdded").await, "net0");
    wait_serial(
        serial,
        "TINYGUEST-DEV add class/net/eth0",
        Duration::from_secs(30),
    )
    .await;
    d.detach_device("<interface type='user'/>", 0)
        .await
        .expect("detach nic");
    assert_eq!(next_alias(removed, "DeviceRemoved").await, "net0");
    wait_serial(
        serial,
        "TINYGUEST-DEV remove class/net/eth0",
        Duration::from_secs(30),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_attach_of_an_inactive_domain_is_kept() {
    let mut q = support::qemud(BIN).await;
    let dir = q.daemon.dirs.root.path().to_owned();
    let b = image(&dir, "b.img", 1);
    let path =
        q.qc.domain_define_xml(
            "<domain type='qemu'><name>cfg</name><memory unit='MiB'>64</memory>\
             <os><type arch='x86_64' machine='q35'>hvm</type></os></domain>",
        )
        .await
        .expect("define");
    let d = domain(&q.conn, &path).await;
    assert_eq!(
        bus_err(d.attach_device(&disk(&b, "vdb", "virtio"), LIVE).await),
        "Requested operation is not valid: domain is not running"
    );
    d.attach_device(&disk(&b, "vdb", "virtio"), 0)
        .await
        .expect("attach to config");
    d.attach_device(
        "<interface type='user'><mac address='52:54:00:00:00:42'/></interface>",
        CONFIG,
    )
    .await
    .expect("nic to config");
    // libvirt's defaults are filled in: the disk's driver, PCI addresses.
    let xml = d.get_xml_desc(0).await.expect("xml");
    assert!(
        xml.contains("dev='vdb'") && xml.contains("type='raw'"),
        "{xml}"
    );
    assert!(xml.contains("52:54:00:00:00:42"), "{xml}");
    assert!(xml.matches("<address type='pci'").count() >= 2, "{xml}");
    q.daemon.kill9();
    q.daemon = q
        .daemon
        .restart_builder()
        .spawn(&q.bus)
        .await
        .expect("restart");
    let d = domain(&q.conn, &path).await;
    assert_eq!(d.get_xml_desc(0).await.expect("xml"), xml);
    d.detach_device(&disk(&b, "vdb", "virtio"), CONFIG)
        .await
        .expect("detach from config");
    assert_eq!(
        bus_err(d.detach_device(&disk(&b, "vdb", "virtio"), CONFIG).await),
        "device not found: no target device vdb"
    );
    assert_eq!(
        bus_err(
            d.detach_device(
                "<interface type='user'><mac address='52:54:00:00:00:43'/></interface>",
                0
            )
            .await
        ),
        "device not found: no device matching MAC address 52:54:00:00:00:43 found"
    );
    d.detach_device("<interface type='user'/>", 0)
        .await
        .expect("detach the only nic");
    // A cdrom's medium in the config: inserted, then a disk's update refused.
    let cd = |src: &str| {
        format!(
            "<disk type='file' device='cdrom'>{src}<target dev='sdb' bus='sata'/><readonly/></disk>"
        )
    };
    d.attach_device(&cd(""), CONFIG).await.expect("empty cdrom");
    let src = format!("<source file='{}'/>", b.display());
    d.update_device(&cd(&src), 0).await.expect("insert");
    assert!(d.get_xml_desc(0).await.expect("xml").contains(&src));
    assert_eq!(
        bus_err(
            d.update_device(&cd(&src).replace("dev='sdb'", "dev='sdc'"), 0)
                .await
        ),
        "device not found: target sdc doesn't exist."
    );
    assert!(
        bus_err(d.update_device(&disk(&b, "vdz", "virtio"), 0).await)
            .contains("only the medium of a cdrom or floppy")
    );
    d.update_device(&cd(""), CONFIG).await.expect("eject");
    assert!(!d.get_xml_desc(0).await.expect("xml").contains(&src));
    d.detach_device(&cd(""), 0).await.expect("detach cdrom");
    let xml = d.get_xml_desc(0).await.expect("xml");
    assert!(
        !xml.contains("dev='vdb'") && !xml.contains("<interface"),
        "{xml}"
    );
}

/// q35: a hotplugged device goes behind a free pcie-root-port; with none free the
/// attach is libvirt's error and nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn q35_hotplug_needs_a_free_root_port() {
    let q = support::qemud(BIN).await;
    let dir = q.daemon.dirs.root.path().to_owned();
    let (b, c) = (image(&dir, "b.img", 1), image(&dir, "c.img", 1));
    let path =
        q.qc.domain_define_xml(
            "<domain type='qemu'><name>q</name><memory unit='MiB'>64</memory>\
             <os><type arch='x86_64' machine='q35'>hvm</type></os><devices>\
             <controller type='usb' model='none'/><memballoon model='none'/>\
             <controller type='pci' model='pcie-root-port'/></devices></domain>",
        )
        .await
        .expect("define");
    let d = domain(&q.conn, &path).await;
    d.create(0).await.expect("create");
    d.attach_device(&disk(&b, "vdb", "virtio"), 0)
        .await
        .expect("attach behind the root port");
    let xml = d.get_xml_desc(0).await.expect("xml");
    let vdb = &xml[xml.find("dev='vdb'").expect("vdb")..];
    assert!(vdb.contains("bus='0x01' slot='0x00'"), "{xml}");
    assert_eq!(
        bus_err(d.attach_device(&disk(&c, "vdc", "virtio"), 0).await),
        "internal error: No more available PCI slots"
    );
    assert_eq!(d.get_xml_desc(0).await.expect("xml"), xml);
    d.destroy(0).await.expect("destroy");
}

fn rounds() -> usize {
    std::env::var("VIRT_CHAOS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8)
        .max(1)
}

/// What QEMU has, asked on a monitor of its own: device ids, `libvirt-*` nodes and
/// the lines of `info network` (NICs and their backends; a backend without a NIC is a
/// top-level line of its own).
fn qemu_devices(probe: &mut Probe) -> (Vec<String>, Vec<String>, String) {
    let list = probe.execute(serde_json::json!({"execute": "qom-list",
        "arguments": {"path": "/machine/peripheral"}}));
    let mut ids: Vec<String> = list["return"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["type"].as_str().is_some_and(|t| t.starts_with("child<")))
        .filter_map(|p| p["name"].as_str().map(str::to_owned))
        .filter(|n| n.contains("disk") || n.starts_with("net") || n.starts_with("rng"))
        .collect();
    ids.sort();
    let nodes = probe.execute(serde_json::json!({"execute": "query-named-block-nodes",
        "arguments": {"flat": true}}));
    let mut names: Vec<String> = nodes["return"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["node-name"].as_str().map(str::to_owned))
        .filter(|n| n.starts_with("libvirt-"))
        .collect();
    names.sort();
    let net = probe.execute(serde_json::json!({"execute": "human-monitor-command",
        "arguments": {"command-line": "info network"}}));
    let mut net = net["return"].as_str().unwrap_or_default().to_owned();
    // RNG backends are objects: one line each, beside the network's.
    let objects = probe.execute(serde_json::json!({"execute": "qom-list",
        "arguments": {"path": "/objects"}}));
    for o in objects["return"].as_array().into_iter().flatten() {
        if let Some(name) = o["name"].as_str().filter(|n| n.starts_with("objrng")) {
            net.push_str(&format!("\n{name}"));
        }
    }
    (ids, names, net)
}

fn cpus_plugged(probe: &mut Probe) -> usize {
    let r = probe.execute(serde_json::json!({"execute": "query-hotpluggable-cpus"}));
    r["return"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c.get("qom-path").is_some())
        .count()
}

const STORM_MAC: &str = "52:54:00:00:00:77";
const STORM_RNG: &str = "<rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>";

fn storm_nic() -> String {
    format!("<interface type='user'><mac address='{STORM_MAC}'/><model type='virtio'/></interface>")
}

/// After a restart: what the daemon says against what QEMU has.
async fn check_round(
    i: usize,
    d: &common::proxies::qemu::DomainProxy<'_>,
    probe: &mut Probe,
) -> (Vec<String>, u32) {
    let mut broken = Vec::new();
    let live = d.get_xml_desc(0).await.expect("xml");
    let (ids, nodes, net) = qemu_devices(probe);
    let disks = ids.iter().filter(|id| id.contains("disk")).count();
    let nics = ids.iter().filter(|id| id.starts_with("net")).count();
    let rngs = ids.iter().filter(|id| id.starts_with("rng")).count();
    if live.contains("<rng") != (rngs == 1) {
        broken.push(format!(
            "round {i}: XML lists the RNG={}, QEMU has {ids:?}",
            live.contains("<rng")
        ));
    }
    if net.matches("objrng").count() != rngs {
        broken.push(format!(
            "round {i}: RNG backends {net:?} for devices {ids:?}"
        ));
    }
    if live.contains("dev='vdb'") != (disks == 1) {
        broken.push(format!(
            "round {i}: XML lists vdb={}, QEMU has {ids:?}",
            live.contains("dev='vdb'")
        ));
    }
    if live.contains(STORM_MAC) != (nics == 1) {
        broken.push(format!(
            "round {i}: XML lists the NIC={}, QEMU has {ids:?}",
            live.contains(STORM_MAC)
        ));
    }
    // Each disk QEMU has keeps its two nodes, each NIC its backend; nothing else.
    if nodes.len() != 2 * disks {
        broken.push(format!("round {i}: nodes {nodes:?} for devices {ids:?}"));
    }
    if net.matches("hostnet").count() != nics {
        broken.push(format!("round {i}: backends {net:?} for devices {ids:?}"));
    }
    let plugged = cpus_plugged(probe);
    let vcpus = d.get_vcpus(LIVE).await.expect("vcpus");
    if vcpus as usize != plugged {
        broken.push(format!(
            "round {i}: GetVcpus says {vcpus}, QEMU has {plugged}"
        ));
    }
    (broken, vcpus)
}

/// One round's calls: the disk plugged in or out, the NIC and the RNG likewise, one more
/// vCPU.
async fn round_calls(
    d: common::proxies::qemu::DomainProxy<'static>,
    img: std::path::PathBuf,
    vcpus: u32,
) -> bool {
    let live = d.get_xml_desc(0).await.unwrap_or_default();
    let plug = disk(&img, "vdb", "virtio");
    let r = if live.contains("dev='vdb'") {
        d.detach_device(&plug, 0).await
    } else {
        d.attach_device(&plug, 0).await
    };
    let n = if live.contains(STORM_MAC) {
        d.detach_device(&storm_nic(), 0).await
    } else {
        d.attach_device(&storm_nic(), 0).await
    };
    let g = if live.contains("<rng") {
        d.detach_device(STORM_RNG, 0).await
    } else {
        d.attach_device(STORM_RNG, 0).await
    };
    let v = d.set_vcpus((vcpus + 1).min(8), 0).await;
    r.is_ok() && n.is_ok() && g.is_ok() && v.is_ok()
}

/// kill -9 of virtqemud at spread points of AttachDevice and DetachDevice of a disk, a
/// NIC and an RNG, and of SetVcpus, on a running guest: after every restart, each is in
/// the live XML exactly when QEMU has it, QEMU has exactly the block nodes and backends
/// of the devices it has, and the live vCPU count is QEMU's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_hotplug_never_leaves_an_unknown_device() {
    check_recipe();
    let q = support::qemud(BIN).await;
    let (bus, conn, mut daemon) = (q.bus, q.conn, q.daemon);
    let dir = daemon.dirs.root.path().to_owned();
    let serial = dir.join("serial.log");
    let probe_sock = dir.join("probe.sock");
    let img = image(&dir, "b.img", 4);
    let xml = support::guest_xml("storm", &serial, "")
        .replace(
            "<domain type='kvm'>",
            "<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>",
        )
        .replace("<vcpu>1</vcpu>", "<vcpu current='1'>8</vcpu>")
        .replace(
            "</devices>",
            &format!("</devices>{}", Probe::commandline(&probe_sock)),
        );
    let path = q.qc.domain_define_xml(&xml).await.expect("define");
    let d = domain(&conn, &path).await;
    d.create(0).await.expect("create");
    wait_serial(&serial, "TINYGUEST-DEVWATCH", Duration::from_secs(90)).await;
    let mut probe = Probe::connect(&probe_sock);

    // How long one round's calls take here (plugging in, then out), to spread the
    // kills over them.
    let t = Instant::now();
    assert!(round_calls(domain(&conn, &path).await, img.clone(), 1).await);
    let t_in = t.elapsed();
    let t = Instant::now();
    assert!(round_calls(domain(&conn, &path).await, img.clone(), 2).await);
    let t_out = t.elapsed();
    eprintln!("a round plugging in takes {t_in:?}, plugging out {t_out:?} here");

    let n = rounds();
    let mut broken = Vec::new();
    let (mut cut, mut vcpus) = (0, 3u32);
    for i in 0..n {
        let d = domain(&conn, &path).await;
        let out = d.get_xml_desc(0).await.expect("xml").contains("dev='vdb'");
        // Spread evenly over the calls (a golden-ratio sequence, so that every count
        // of rounds covers the whole span).
        let span = if out { t_out } else { t_in };
        let delay = span.mul_f64(1.1 * (i as f64 * 0.618_034).fract());
        let call = tokio::spawn(round_calls(d, img.clone(), vcpus));
        tokio::time::sleep(delay).await;
        daemon.kill9();
        let done = tokio::time::timeout(Duration::from_secs(10), call).await;
        if !matches!(done, Ok(Ok(true))) {
            cut += 1;
        }
        daemon = daemon.restart_builder().spawn(&bus).await.expect("restart");
        // An unplug the guest finishes after the restart is the adopted monitor's: let it.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (found, v) = check_round(i, &domain(&conn, &path).await, &mut probe).await;
        eprintln!(
            "round {i}: delay {delay:?}, vcpus={v}, {} problems",
            found.len()
        );
        broken.extend(found);
        vcpus = v;
    }
    // What the restarted daemons found and fixed, for the figures.
    let log = daemon.log_text();
    let count = |what: &str| log.matches(what).count();
    eprintln!(
        "{n} kills, {cut} rounds cut, {} broken; restarts: {} disk, {} NIC and {} RNG \
         attaches finished, {} NIC attaches undone, {} devices found gone, {} stray node \
         sets deleted, {} vCPU counts taken from QEMU",
        broken.len(),
        count("finishing a disk attach"),
        count("finishing an interface attach"),
        count("finishing an rng attach"),
        count("undoing an interface attach"),
        count("device gone from QEMU"),
        count("deleting block nodes"),
        count("vCPU count taken from QEMU"),
    );
    assert!(broken.is_empty(), "{broken:#?}");
    domain(&conn, &path)
        .await
        .destroy(0)
        .await
        .expect("destroy");
}

/// A NIC of a virtual network plugged into a running guest, as start makes it: a port
/// from virtnetworkd, a tap on the port's bridge handed to QEMU (`getfd`), and the
/// guest's new eth0 gets a DHCP lease through it; unplugged, port and tap go. All
/// inside a network namespace of the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_nic_plugs_in_with_its_port_and_tap() {
    use common::harness::{Daemon, NetNs, TestBus, TestDirs};
    use common::proxies::network::{NetworkConnectProxy, NetworkPortsProxy, NetworkProxy};
    check_recipe();
    let netd = support::sibling_daemon("virtnetworkd");
    let bus = TestBus::start().expect("bus");
    let ns = NetNs::new().expect("netns");
    let _net = Daemon::builder(&netd, "virtnetworkd")
        .netns(&ns)
        .dirs(TestDirs::new().expect("dirs"))
        .spawn(&bus)
        .await
        .expect("virtnetworkd");
    let qemud = Daemon::builder(BIN, "virtqemud")
        .netns(&ns)
        .spawn(&bus)
        .await
        .expect("virtqemud");
    let conn = bus.connection().await.expect("conn");
    let nc = NetworkConnectProxy::new(&conn).await.expect("proxy");
    let npath = nc
        .network_define_xml(
            "<network><name>hpn</name><bridge name='hpbr0'/>\
             <ip address='10.92.0.1' prefix='24'><dhcp><range start='10.92.0.100' \
             end='10.92.0.150'/></dhcp></ip></network>",
        )
        .await
        .expect("define network");
    let builder = |p: zbus::zvariant::OwnedObjectPath| {
        NetworkPortsProxy::builder(&conn)
            .path(p)
            .expect("path")
            .cache_properties(zbus::proxy::CacheProperties::No)
    };
    let ports = builder(npath.clone()).build().await.expect("ports");
    NetworkProxy::builder(&conn)
        .path(npath)
        .expect("path")
        .build()
        .await
        .expect("network")
        .create()
        .await
        .expect("start network");
    let qc = common::proxies::qemu::QemuConnectProxy::new(&conn)
        .await
        .expect("proxy");
    let serial = qemud.dirs.state.join("n.serial");
    let (d, mut added, mut removed) = watching_guest(&conn, &qc, "hpnet", &serial, "").await;

    let nic = "<interface type='network'><mac address='52:54:00:92:00:05'/>\
               <source network='hpn'/><model type='virtio'/></interface>";
    d.attach_device(nic, 0).await.expect("attach");
    assert_eq!(next_alias(&mut added, "DeviceAdded").await, "net0");
    assert_eq!(ports.list_ports(0).await.expect("ports").len(), 1);
    let live = d.get_xml_desc(0).await.expect("xml");
    let tap = live
        .split("<target dev='")
        .nth(1)
        .and_then(|r| r.split('\'').next())
        .expect("the live XML names the tap")
        .to_owned();
    let master = ns
        .run(&["ip", "-j", "link", "show", "dev", &tap])
        .expect("ip");
    assert!(
        String::from_utf8_lossy(&master.stdout).contains("\"master\":\"hpbr0\""),
        "{tap} is on the network's bridge"
    );
    wait_serial(
        &serial,
        "TINYGUEST-DEV add class/net/eth0",
        Duration::from_secs(30),
    )
    .await;
    wait_serial(
        &serial,
        "TINYGUEST-DHCP bound 10.92.0.",
        Duration::from_secs(60),
    )
    .await;

    d.detach_device(nic, 0).await.expect("detach");
    assert_eq!(next_alias(&mut removed, "DeviceRemoved").await, "net0");
    wait_serial(
        &serial,
        "TINYGUEST-DEV remove class/net/eth0",
        Duration::from_secs(30),
    )
    .await;
    assert!(ports.list_ports(0).await.expect("ports").is_empty());
    let start = Instant::now();
    while ns
        .run(&["ip", "link", "show", "dev", &tap])
        .is_ok_and(|o| o.status.success())
    {
        assert!(start.elapsed() < Duration::from_secs(10), "tap {tap} left");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    d.destroy(0).await.expect("destroy");
}

/// A SCSI disk onto the domain's virtio-scsi controller and a USB disk onto its USB
/// controller: libvirt's aliases, and the guest's SCSI layer sees the disk come and go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scsi_and_usb_disks_plug_into_existing_controllers() {
    check_recipe();
    let q = support::qemud(BIN).await;
    let dir = q.daemon.dirs.root.path().to_owned();
    let serial = dir.join("serial.log");
    let (a, b) = (image(&dir, "a.img", 8), image(&dir, "b.img", 8));
    let scsi = "<controller type='scsi' model='virtio-scsi'/>";
    let (d, mut added, mut removed) = watching_guest(&q.conn, &q.qc, "hpscsi", &serial, scsi).await;
    d.attach_device(&disk(&a, "sdb", "scsi"), 0)
        .await
        .expect("attach scsi");
    // libvirt's drive address from the target name: sdb is unit 1.
    assert_eq!(next_alias(&mut added, "DeviceAdded").await, "scsi0-0-0-1");
    wait_serial(
        &serial,
        "TINYGUEST-DEV add block/sda",
        Duration::from_secs(30),
    )
    .await;
    d.attach_device(&disk(&b, "sdc", "usb"), 0)
        .await
        .expect("attach usb");
    assert_eq!(next_alias(&mut added, "DeviceAdded").await, "usb-disk2");
    // Each SCSI disk's unit comes from its target name, as libvirt assigns it.
    let c = image(&dir, "c.img", 8);
    d.attach_device(&disk(&c, "sdd", "scsi"), 0)
        .await
        .expect("attach scsi 2");
    assert_eq!(next_alias(&mut added, "DeviceAdded").await, "scsi0-0-0-3");
    d.detach_device(&disk(&a, "sdb", "scsi"), 0)
        .await
        .expect("detach scsi");
    assert_eq!(
        next_alias(&mut removed, "DeviceRemoved").await,
        "scsi0-0-0-1"
    );
    wait_serial(
        &serial,
        "TINYGUEST-DEV remove block/sda",
        Duration::from_secs(30),
    )
    .await;
    d.attach_device(&disk(&a, "sde", "scsi"), 0)
        .await
        .expect("attach scsi 3");
    assert_eq!(next_alias(&mut added, "DeviceAdded").await, "scsi0-0-0-4");
    let xml = d.get_xml_desc(0).await.expect("xml");
    assert!(
        xml.contains("<address type='drive' controller='0' bus='0' target='0' unit='3'/>"),
        "{xml}"
    );
    for (img, t) in [(&c, "sdd"), (&a, "sde")] {
        d.detach_device(&disk(img, t, "scsi"), 0)
            .await
            .expect("detach scsi");
        next_alias(&mut removed, "DeviceRemoved").await;
    }
    d.detach_device(&disk(&b, "sdc", "usb"), 0)
        .await
        .expect("detach usb");
    assert_eq!(next_alias(&mut removed, "DeviceRemoved").await, "usb-disk2");
    let xml = d.get_xml_desc(0).await.expect("xml");
    assert!(
        !xml.contains("dev='sdb'") && !xml.contains("dev='sdc'"),
        "{xml}"
    );
    d.destroy(0).await.expect("destroy");
}

/// With a uid per guest (qemu.conf `dynamic_user_range`), a plugged disk's image (root's,
/// 0600) is handed to the guest's uid, so that its QEMU opens it, and given back to
/// root when the run ends. Needs root.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugged_disk_is_handed_to_the_guests_uid() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test starts QEMU as another user and needs root"
    );
    let (first, last) = (66980u32, 66982u32);
    for id in first..=last {
        assert!(
            nix::unistd::User::from_uid(id.into())
                .ok()
                .flatten()
                .is_none(),
            "uid {id} exists on this machine; the test needs it free"
        );
    }
    let files = tempfile::Builder::new()
        .prefix("vthp")
        .tempdir_in("/tmp")
        .expect("tmp");
    std::fs::set_permissions(files.path(), PermissionsExt::from_mode(0o711)).expect("chmod");
    let img = image(files.path(), "p.img", 1);
    std::fs::set_permissions(&img, PermissionsExt::from_mode(0o600)).expect("chmod");
    let dirs = common::harness::TestDirs::new().expect("dirs");
    std::fs::create_dir_all(&dirs.config).expect("config dir");
    std::fs::write(
        dirs.config.join("qemu.conf"),
        format!("dynamic_user_range = \"{first}-{last}\"\n"),
    )
    .expect("qemu.conf");
    let bus = common::harness::TestBus::start().expect("bus");
    let _daemon = common::harness::Daemon::builder(BIN, "virtqemud")
        .dirs(dirs.clone())
        .spawn(&bus)
        .await
        .expect("daemon");
    let conn = bus.connection().await.expect("conn");
    let qc = common::proxies::qemu::QemuConnectProxy::new(&conn)
        .await
        .expect("proxy");
    let path = qc
        .domain_define_xml(
            "<domain type='qemu'><name>u</name><memory unit='MiB'>64</memory>\
             <os><type arch='x86_64' machine='pc'>hvm</type></os></domain>",
        )
        .await
        .expect("define");
    let d = domain(&conn, &path).await;
    d.create(1).await.expect("start paused");
    let pid = support::qemu_pid(&dirs.runtime, "u");
    let uid = support::ids(pid, "Uid:")[0];
    assert!((first..=last).contains(&uid), "QEMU runs as {uid}");
    d.attach_device(&disk(&img, "vdb", "virtio"), 0)
        .await
        .expect("QEMU opens the image handed to its uid");
    let m = std::fs::metadata(&img).expect("metadata");
    assert_eq!((m.uid(), m.mode() & 0o777), (uid, 0o600), "the guest's now");
    d.destroy(0).await.expect("destroy");
    let m = std::fs::metadata(&img).expect("metadata");
    assert_eq!((m.uid(), m.gid()), (0, 0), "root's again after the run");
}
