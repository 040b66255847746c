//! virtqemud with virtnodedevd and virtstoraged on one test bus: GetCapabilities' `<host>`
//! from virtnodedevd (with a local fallback), `<disk type='volume'>` resolved by virtstoraged,
//! managed PCI hostdevs detached and reattached by virtnodedevd.

use common::event::DomainState;
use common::harness::{Daemon, TestBus, TestDirs};

mod support;
use common::proxies::qemu::QemuConnectProxy;
use support::{bus_err, domain, sibling_daemon, state};

const BIN: &str = env!("CARGO_BIN_EXE_virtqemud");

fn host_of(xml: &str) -> (usize, bool, bool) {
    let doc = roxmltree::Document::parse(xml).expect("capabilities parse");
    let root = doc.root_element();
    assert_eq!(root.tag_name().name(), "capabilities");
    let hosts: Vec<_> = root.children().filter(|n| n.has_tag_name("host")).collect();
    assert_eq!(hosts.len(), 1, "{xml}");
    let host = hosts[0];
    let guests = root.children().filter(|n| n.has_tag_name("guest")).count();
    (
        guests,
        host.descendants().any(|n| n.has_tag_name("topology")),
        host.descendants().any(|n| n.has_tag_name("iommu")),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_part_comes_from_virtnodedevd_with_a_fallback() {
    let nodedevd = sibling_daemon("virtnodedevd");
    let bus = TestBus::start().expect("bus");
    let qemud = Daemon::builder(BIN, "virtqemud")
        .spawn(&bus)
        .await
        .expect("virtqemud");
    let conn = bus.connection().await.expect("conn");
    let qc = QemuConnectProxy::new(&conn).await.expect("proxy");

    // No virtnodedevd on this bus (and no activation file): the local minimum.
    let xml = qc.get_capabilities().await.expect("capabilities");
    let (guests, topology, iommu) = host_of(&xml);
    assert!(guests >= 1, "{xml}");
    assert!(!topology && !iommu, "local host part is minimal: {xml}");
    assert!(
        qemud
            .log_text()
            .contains("host capabilities from virtnodedevd unavailable"),
        "the fallback is logged"
    );

    // With virtnodedevd: its <host> (NUMA topology, IOMMU), the same guests.
    let _nd = Daemon::builder(&nodedevd, "virtnodedevd")
        .dirs(TestDirs::new().expect("dirs"))
        .spawn(&bus)
        .await
        .expect("virtnodedevd");
    let xml2 = qc.get_capabilities().await.expect("capabilities");
    let (guests2, topology, iommu) = host_of(&xml2);
    assert_eq!(guests2, guests);
    assert!(topology && iommu, "{xml2}");
}

fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

fn qemu_pid_of(name: &str) -> Option<u32> {
    let want = format!("guest={name},");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid = e.file_name().to_str()?.parse::<u32>().ok()?;
        cmdline(pid)
            .iter()
            .any(|a| a.starts_with(&want))
            .then_some(pid)
    })
}

/// `<disk type='volume'>`: virtstoraged resolves it at start; clear errors when the
/// volume is missing or the pool inactive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_disk_is_resolved_through_virtstoraged() {
    use common::proxies::storage::{StorageConnectProxy, StoragePoolProxy};
    let stor = sibling_daemon("virtstoraged");
    let bus = TestBus::start().expect("bus");
    let _sd = Daemon::builder(&stor, "virtstoraged")
        .dirs(TestDirs::new().expect("dirs"))
        .spawn(&bus)
        .await
        .expect("virtstoraged");
    let _qemud = Daemon::builder(BIN, "virtqemud")
        .spawn(&bus)
        .await
        .expect("virtqemud");
    let conn = bus.connection().await.expect("conn");
    let tmp = tempfile::tempdir().expect("tmp");
    let target = tmp.path().join("pool");
    let sc = StorageConnectProxy::new(&conn).await.expect("storage");
    let pp = sc
        .storage_pool_define_xml(
            &format!(
                "<pool type='dir'><name>vp</name><target><path>{}</path></target></pool>",
                target.display()
            ),
            0,
        )
        .await
        .expect("define pool");
    let pool = StoragePoolProxy::builder(&conn)
        .path(pp)
        .expect("path")
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .expect("pool");
    pool.build(0).await.expect("build");
    pool.create(0).await.expect("start pool");
    pool.storage_vol_create_xml(
        "<volume><name>d.qcow2</name><capacity unit='M'>64</capacity>\
         <target><format type='qcow2'/></target></volume>",
        0,
    )
    .await
    .expect("volume");

    let qc = QemuConnectProxy::new(&conn).await.expect("proxy");
    let xml = |name: &str, vol: &str| {
        format!(
            "<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>\
             <vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os><devices>\
             <disk type='volume' device='disk'><source pool='vp' volume='{vol}'/>\
             <target dev='vda' bus='virtio'/></disk></devices></domain>"
        )
    };
    let missing = domain(
        &conn,
        &qc.domain_define_xml(&xml("vmiss", "nope"))
            .await
            .expect("define"),
    )
    .await;
    let e = bus_err(missing.create(1).await);
    assert!(e.starts_with("Storage volume not found"), "{e}");

    let d = domain(
        &conn,
        &qc.domain_define_xml(&xml("vdisk", "d.qcow2"))
            .await
            .expect("define"),
    )
    .await;
    d.create(1).await.expect("start paused");
    let pid = qemu_pid_of("vdisk").expect("QEMU runs");
    let argv = cmdline(pid).join(" ");
    let path = target.join("d.qcow2");
    assert!(
        argv.contains(&format!("\"filename\":\"{}\"", path.display())),
        "{argv}"
    );
    assert!(argv.contains("\"driver\":\"qcow2\""), "{argv}");
    let live = d.get_xml_desc(0).await.expect("xml");
    assert!(live.contains("volume='d.qcow2'"), "{live}");
    d.destroy(0).await.expect("destroy");

    pool.destroy().await.expect("stop pool");
    let e = bus_err(d.create(1).await);
    assert!(
        e.contains("storage pool 'vp'") && e.contains("is not active"),
        "{e}"
    );
}

/// A managed PCI hostdev: virtnodedevd (on a copy of its fixture sysfs tree) detaches it
/// before QEMU starts; QEMU fails (the device is not real, vfio cannot open it) and the
/// device is given back: the fixture's files show detach, then reattach.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_hostdev_is_detached_then_reattached_on_a_failed_start() {
    let nodedevd = sibling_daemon("virtnodedevd");
    let tmp = tempfile::tempdir().expect("tmp");
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../virtnodedevd/tests/fixtures/sysfs");
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(&src)
        .arg(tmp.path())
        .status()
        .expect("cp");
    assert!(st.success(), "copy of {}", src.display());
    let root = tmp.path().join("sysfs");
    let bus = TestBus::start().expect("bus");
    let _nd = Daemon::builder(&nodedevd, "virtnodedevd")
        .arg("--sysfs-root")
        .arg(&root)
        .dirs(TestDirs::new().expect("dirs"))
        .spawn(&bus)
        .await
        .expect("virtnodedevd");
    let _qemud = Daemon::builder(BIN, "virtqemud")
        .spawn(&bus)
        .await
        .expect("virtqemud");
    let conn = bus.connection().await.expect("conn");
    let qc = QemuConnectProxy::new(&conn).await.expect("proxy");
    let hostdev = |dom: u16, bus: u8, slot: u8| {
        format!(
            "<domain type='qemu'><name>hd{slot}</name><memory unit='MiB'>64</memory>\
             <vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os><devices>\
             <hostdev mode='subsystem' type='pci' managed='yes'><source>\
             <address domain='0x{dom:04x}' bus='0x{bus:02x}' slot='0x{slot:02x}' function='0x0'/>\
             </source></hostdev></devices></domain>"
        )
    };
    // A device the host does not have: virtnodedevd's error, QEMU never started.
    let ghost = domain(
        &conn,
        &qc.domain_define_xml(&hostdev(0xffff, 0xff, 0x1f))
            .await
            .expect("define"),
    )
    .await;
    let e = bus_err(ghost.create(1).await);
    assert!(e.starts_with("Node device not found"), "{e}");

    let dev = root.join("devices/pci0000:00/0000:00:01.0/0000:03:10.0");
    let d = domain(
        &conn,
        &qc.domain_define_xml(&hostdev(0, 3, 0x10))
            .await
            .expect("define"),
    )
    .await;
    let e = bus_err(d.create(1).await);
    assert!(
        e.contains("did not start") && e.contains("vfio-pci,host=0000:03:10.0"),
        "{e}"
    );
    // Detached (unbound from its driver, probed for vfio-pci), then given back.
    assert_eq!(
        std::fs::read_to_string(root.join("bus/pci/drivers/igbvf/unbind")).expect("unbind"),
        "0000:03:10.0"
    );
    assert_eq!(
        std::fs::read_to_string(dev.join("driver_override")).expect("override"),
        "\n",
        "reattached: the override is cleared"
    );
    assert_eq!(state(&d).await.state(), DomainState::Shutoff);
}
