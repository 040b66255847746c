//! Malformed arguments for every method of every object kind of the four daemons, on
//! one private bus: each call gets a reply or an error and every daemon stays up and
//! answering (common::harness::fuzz). `VIRT_FUZZ_PER_METHOD` (default 8) sets how many
//! generated calls each method gets, `VIRT_FUZZ_SEED` the seed; docs/ARCHITECTURE.md
//! has the figures of the long run.

use std::path::Path;
use std::time::Duration;

use common::harness::fuzz::{fuzz_object, Gen, Tally};
use common::harness::{Daemon, NetNs, TestBus, TestDirs};
use zbus::zvariant::OwnedObjectPath;

mod support;
use support::sibling_daemon;

const BIN: &str = env!("CARGO_BIN_EXE_virtqemud");
const CONNECT: &str = "/org/libvirt/QEMU";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn make(
    conn: &zbus::Connection,
    daemon: &str,
    path: &str,
    iface: &str,
    member: &str,
    body: &(impl serde::Serialize + zbus::zvariant::DynamicType),
) -> String {
    let reply = conn
        .call_method(
            Some(format!("org.libvirt.{daemon}").as_str()),
            path,
            Some(iface),
            member,
            body,
        )
        .await
        .unwrap_or_else(|e| panic!("{iface}.{member}: {e}"));
    let p: OwnedObjectPath = reply.body().deserialize().expect("a path");
    p.to_string()
}

/// A size-bounded tmpfs, unmounted when dropped (also when the test fails).
struct SmallFs(std::path::PathBuf);

impl SmallFs {
    fn mount(at: &Path) -> SmallFs {
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64m,mode=0755", "fuzzpool"])
            .arg(at)
            .status()
            .expect("mount");
        assert!(st.success(), "cannot mount a tmpfs for the fuzzed pool");
        SmallFs(at.to_owned())
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// virtnetworkd's objects: an active network, one of its ports, and a defined bridge
/// (in virtnetworkd's namespace: fuzzed Create makes it, Destroy deletes it), a
/// network filter and its binding to the namespace's loopback link.
async fn network_objects(conn: &zbus::Connection) -> (String, String, String, String, String) {
    let net = make(
        conn,
        "virtnetworkd",
        CONNECT,
        "org.libvirt.Connect",
        "NetworkDefineXML",
        &("<network><name>fz</name><bridge name='vtfz0' stp='off'/>\
           <ip address='10.88.0.1' prefix='24'/></network>",),
    )
    .await;
    conn.call_method(
        Some("org.libvirt.virtnetworkd"),
        net.as_str(),
        Some("org.libvirt.Network"),
        "Create",
        &(),
    )
    .await
    .expect("network start");
    let port = make(
        conn,
        "virtnetworkd",
        &net,
        "org.libvirt.Network",
        "PortCreateXML",
        &(
            "<networkport><owner><name>fz</name><uuid>06578fc1-2c30-4d94-a1ba-9ea3c2a3c1d0</uuid>\
           </owner><mac address='52:54:00:7b:35:d0'/></networkport>",
            0u32,
        ),
    )
    .await;
    let iface = make(
        conn,
        "virtnetworkd",
        CONNECT,
        "org.libvirt.Connect",
        "InterfaceDefineXML",
        &(
            "<interface type='bridge' name='vtfzbr0'><bridge stp='off'/>\
           <protocol family='ipv4'><ip address='10.89.0.1' prefix='24'/></protocol></interface>",
            0u32,
        ),
    )
    .await;
    let filter = make(
        conn,
        "virtnetworkd",
        CONNECT,
        "org.libvirt.Connect",
        "NWFilterDefineXML",
        &("<filter name='fz'><rule action='drop' direction='in'><icmp type='8'/></rule></filter>",),
    )
    .await;
    let binding = make(
        conn,
        "virtnetworkd",
        CONNECT,
        "org.libvirt.Connect",
        "NWFilterBindingCreateXML",
        &(
            "<filterbinding><owner><name>fz</name><uuid>06578fc1-2c30-4d94-a1ba-9ea3c2a3c1d0</uuid>\
           </owner><portdev name='lo'/><mac address='52:54:00:7b:35:d0'/>\
           <filterref filter='fz'/></filterbinding>",
            0u32,
        ),
    )
    .await;
    (net, port, iface, filter, binding)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_survives_malformed_arguments() {
    let per_method = env_or("VIRT_FUZZ_PER_METHOD", 8) as usize;
    let seed = env_or("VIRT_FUZZ_SEED", 1);
    let bus = TestBus::start().expect("bus");
    let ns = NetNs::new().expect("netns");
    // virtnodedevd on a copy of its fixture tree: made-up Detach or Create calls then
    // write into files of the test's own, never into the host's /sys.
    let fixture = tempfile::tempdir().expect("tempdir");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../virtnodedevd/tests/fixtures/sysfs");
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(&src)
        .arg(fixture.path())
        .status()
        .expect("cp");
    assert!(st.success());
    let mut daemons = [
        Daemon::builder(BIN, "virtqemud")
            .spawn(&bus)
            .await
            .expect("virtqemud"),
        Daemon::builder(sibling_daemon("virtnetworkd"), "virtnetworkd")
            .netns(&ns)
            .dirs(TestDirs::new().expect("dirs"))
            .spawn(&bus)
            .await
            .expect("virtnetworkd"),
        Daemon::builder(sibling_daemon("virtstoraged"), "virtstoraged")
            .dirs(TestDirs::new().expect("dirs"))
            .spawn(&bus)
            .await
            .expect("virtstoraged"),
        Daemon::builder(sibling_daemon("virtnodedevd"), "virtnodedevd")
            .arg("--sysfs-root")
            .arg(fixture.path().join("sysfs"))
            .dirs(TestDirs::new().expect("dirs"))
            .spawn(&bus)
            .await
            .expect("virtnodedevd"),
    ];
    let conn = bus.connection().await.expect("conn");

    // One object of every kind, as the wire-contract test makes them.
    let images = tempfile::tempdir().expect("tempdir");
    let _images_fs = SmallFs::mount(images.path());
    let (dom, snap) = domain_with_snapshot(&conn, images.path()).await;
    let (net, port, iface, filter, binding) = network_objects(&conn).await;
    // The pool lives on a 64 MiB tmpfs of its own: a made-up Resize to terabytes
    // followed by a Wipe writes the whole capacity, and must fill this, not the host's
    // disk (a long run did fill the disk before this bound).
    let dir = tempfile::tempdir().expect("tempdir");
    let _pool_fs = SmallFs::mount(dir.path());
    let pool_xml = format!(
        "<pool type='dir'><name>fz</name><target><path>{}</path></target></pool>",
        dir.path().display()
    );
    let pool = make(
        &conn,
        "virtstoraged",
        CONNECT,
        "org.libvirt.Connect",
        "StoragePoolCreateXML",
        &(pool_xml.as_str(), 0u32),
    )
    .await;
    let vol = make(
        &conn,
        "virtstoraged",
        &pool,
        "org.libvirt.StoragePool",
        "StorageVolCreateXML",
        &(
            "<volume><name>fz.img</name><capacity unit='MiB'>1</capacity></volume>",
            0u32,
        ),
    )
    .await;
    let dev = common::objpath::node_device("pci_0000_03_10_0").to_string();

    let secret = make(
        &conn,
        "virtstoraged",
        CONNECT,
        "org.libvirt.Connect",
        "SecretDefineXML",
        &(
            "<secret ephemeral='no' private='no'><usage type='ceph'><name>fz</name></usage></secret>",
            0u32,
        ),
    )
    .await;
    let objects: [(&str, &str, &str); 15] = [
        ("virtqemud", CONNECT, "org.libvirt.Connect"),
        // Before its domain, whose Undefine comes last of the domain's methods.
        ("virtqemud", &snap, "org.libvirt.DomainSnapshot"),
        ("virtqemud", &dom, "org.libvirt.Domain"),
        ("virtnetworkd", CONNECT, "org.libvirt.Connect"),
        ("virtnetworkd", &port, "org.libvirt.NetworkPort"),
        ("virtnetworkd", &net, "org.libvirt.Network"),
        ("virtnetworkd", &iface, "org.libvirt.Interface"),
        // Before its filter, which it keeps in use.
        ("virtnetworkd", &binding, "org.libvirt.NWFilterBinding"),
        ("virtnetworkd", &filter, "org.libvirt.NWFilter"),
        ("virtstoraged", CONNECT, "org.libvirt.Connect"),
        ("virtstoraged", &vol, "org.libvirt.StorageVol"),
        ("virtstoraged", &pool, "org.libvirt.StoragePool"),
        ("virtstoraged", &secret, "org.libvirt.Secret"),
        ("virtnodedevd", CONNECT, "org.libvirt.Connect"),
        ("virtnodedevd", &dev, "org.libvirt.NodeDevice"),
    ];
    let paths: Vec<String> = objects.iter().map(|o| o.1.to_string()).collect();
    let mut gen = Gen::new(seed, paths);
    let mut total = Tally::default();
    for (daemon, path, iface) in objects {
        let t = fuzz_object(
            &conn,
            &format!("org.libvirt.{daemon}"),
            path,
            iface,
            &mut gen,
            per_method,
            Duration::from_secs(30),
        )
        .await
        .unwrap_or_else(|e| panic!("{daemon} {iface}: {e:#}"));
        eprintln!("{daemon} {iface}: {t:?}");
        total += t;
    }
    eprintln!("all: {total:?} (seed {seed}, {per_method} per method)");
    for d in daemons.iter_mut() {
        assert!(d.running(), "{} died", d.bus_name());
    }
    assert!(
        total.calls > 500,
        "too few calls to mean anything: {total:?}"
    );
}

/// The fuzzed domain, with a qcow2 disk in `dir` to hold its internal snapshot, and
/// that snapshot: their paths.
async fn domain_with_snapshot(conn: &zbus::Connection, dir: &Path) -> (String, String) {
    let disk = dir.join("fz.qcow2");
    let made = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&disk)
        .arg("16M")
        .status()
        .expect("qemu-img");
    assert!(made.success(), "qemu-img create");
    let dom_xml = format!(
        "<domain type='qemu'><name>fz</name><memory unit='MiB'>64</memory>\
         <os><type arch='x86_64'>hvm</type></os><devices><disk type='file' device='disk'>\
         <driver name='qemu' type='qcow2'/><source file='{}'/><target dev='vda'/></disk>\
         </devices></domain>",
        disk.display()
    );
    let dom = make(
        conn,
        "virtqemud",
        CONNECT,
        "org.libvirt.Connect",
        "DomainDefineXML",
        &(dom_xml.as_str(),),
    )
    .await;
    let snap = make(
        conn,
        "virtqemud",
        &dom,
        "org.libvirt.Domain",
        "SnapshotCreateXML",
        &("<domainsnapshot><name>fz</name></domainsnapshot>", 0u32),
    )
    .await;
    (dom, snap)
}

/// The same for a running domain (QEMU up, no guest kernel, a qcow2 disk on a small
/// tmpfs), so that methods which only say "not running" to an inactive domain get past
/// that: peeks, keys, vCPUs and memory, block and snapshot calls, the guest agent (none
/// here: each call must fail, not hang), state changes. Ends with no QEMU left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_domain_survives_malformed_arguments() {
    let per_method = env_or("VIRT_FUZZ_PER_METHOD", 8) as usize;
    let seed = env_or("VIRT_FUZZ_SEED", 1);
    let bus = TestBus::start().expect("bus");
    let mut daemon = Daemon::builder(BIN, "virtqemud")
        .spawn(&bus)
        .await
        .expect("virtqemud");
    let conn = bus.connection().await.expect("conn");
    let images = tempfile::tempdir().expect("tempdir");
    let _images_fs = SmallFs::mount(images.path());
    let (dom, _snap) = domain_with_snapshot(&conn, images.path()).await;
    conn.call_method(
        Some("org.libvirt.virtqemud"),
        dom.as_str(),
        Some("org.libvirt.Domain"),
        "Create",
        &(0u32,),
    )
    .await
    .expect("start the fuzzed domain");
    let mut gen = Gen::new(seed, vec![dom.clone()]);
    let t = fuzz_object(
        &conn,
        "org.libvirt.virtqemud",
        &dom,
        "org.libvirt.Domain",
        &mut gen,
        per_method,
        Duration::from_secs(30),
    )
    .await
    .unwrap_or_else(|e| panic!("running domain: {e:#}"));
    eprintln!("running org.libvirt.Domain: {t:?} (seed {seed}, {per_method} per method)");
    for l in daemon
        .log_text()
        .lines()
        .filter(|l| l.contains("domain event"))
    {
        eprintln!("  {}", l.split_once(" INFO ").map_or(l, |(_, r)| r));
    }
    assert!(daemon.running(), "virtqemud died");
    assert!(t.calls > 300, "too few calls to mean anything: {t:?}");
    // Whatever the calls did to it, Destroy (or an Undefine that followed) ends it.
    let _ = conn
        .call_method(
            Some("org.libvirt.virtqemud"),
            dom.as_str(),
            Some("org.libvirt.Domain"),
            "Destroy",
            &(0u32,),
        )
        .await;
    let root = daemon.dirs.root.path().to_string_lossy().into_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<u32> = std::fs::read_dir("/proc")
            .expect("/proc")
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                *pid != daemon.pid
                    && std::fs::read(format!("/proc/{pid}/cmdline"))
                        .map(|c| String::from_utf8_lossy(&c).contains(&root))
                        .unwrap_or(false)
            })
            .collect();
        if left.is_empty() {
            break;
        }
        if std::time::Instant::now() > deadline {
            let cmd = left
                .iter()
                .map(|p| {
                    String::from_utf8_lossy(
                        &std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default(),
                    )
                    .replace('\0', " ")
                })
                .collect::<Vec<_>>();
            let log = daemon.log_text();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            panic!(
                "left running: {cmd:?}\nlog:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
