//! virt-install's XML as it really comes: every document in `data/virt-install/`
//! (written by Debian 12's `virt-install --print-xml` against Debian's libvirtd, see its
//! README) defines unchanged through the daemon, and then starts under TCG with its
//! disks replaced by small empty images. The same for libvirt's own host dumps
//! (`golden/libvirt-dumpxml-*.xml`, `virsh dumpxml` of running domains).
//!
//! virtqemud, virtnetworkd and virtstoraged share one private bus, the first two inside
//! a network namespace of the test: `network=default` NICs get a real port of a
//! `default` NAT network from virtnetworkd (not replaced by user NICs, so the path a
//! virt-install user takes is the one tested), `bridge=br0` NICs a tap on a bridge made
//! in the namespace, and `<disk type='volume'>` is resolved by virtstoraged in a pool
//! `default` of the test's own.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::harness::{Daemon, NetNs, TestBus, TestDirs};
use common::proxies::network::{NetworkConnectProxy, NetworkProxy};
use common::proxies::qemu::QemuConnectProxy;
use common::proxies::storage::{StorageConnectProxy, StoragePoolProxy};
use support::{domain, sibling_daemon, state};
use zbus::proxy::CacheProperties;

const BIN: &str = env!("CARGO_BIN_EXE_virtqemud");
/// Where virt-install put the disks and install media in the reference sandbox.
const IMAGES: &str = "/var/lib/libvirt/images/";

/// Documents that define but cannot start here, each with the reason. Empty: every
/// document of the matrix starts.
const EXPECTED_START_FAILURES: &[(&str, &str)] = &[];

/// The `.xml` files of `tests/{dir}` whose names start with `prefix`.
fn documents(dir: &str, prefix: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join(dir);
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "xml"))
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
        })
        .collect();
    v.sort();
    v
}

/// Every `attr` value of every element named `elem` in `xml`.
fn attrs(xml: &str, elem: &str, attr: &str) -> Vec<String> {
    let doc = roxmltree::Document::parse(xml).expect("virt-install's XML parses");
    doc.descendants()
        .filter(|n| n.has_tag_name(elem))
        .filter_map(|n| n.attribute(attr).map(str::to_owned))
        .collect()
}

/// A small empty image at `path`: qcow2 for `.qcow2`, raw otherwise.
fn make_image(path: &Path) {
    if path.exists() {
        return;
    }
    if path.extension().is_some_and(|e| e == "qcow2") {
        let st = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(path)
            .arg("16M")
            .status()
            .expect("qemu-img");
        assert!(st.success(), "qemu-img create {}", path.display());
    } else {
        let f = std::fs::File::create(path).expect("image");
        f.set_len(1 << 20).expect("size");
    }
}

/// libvirt's folders for chardev files and sockets in the host dumps, and where they
/// go in the test's scratch folder.
const HOST_DUMP_FOLDERS: &[(&str, &str)] = &[
    ("/var/log/libvirt/qemu/", "log"),
    ("/var/lib/libvirt/qemu/channel/target/", "channel"),
];

/// The runnable variant of a document: TCG instead of KVM, its files under `scratch`.
/// virt-install asks for `host-passthrough`, which needs KVM (libvirt refuses it for a
/// TCG domain too); TCG's equivalent is `maximum`, what virt-install would have written
/// on a host without KVM.
fn runnable(xml: &str, scratch: &Path) -> String {
    let images = scratch.join("images");
    for f in attrs(xml, "source", "file") {
        let name = f
            .strip_prefix(IMAGES)
            .unwrap_or_else(|| panic!("a disk outside {IMAGES}: {f}"));
        make_image(&images.join(name));
    }
    let mut out = xml.replace(IMAGES, &format!("{}/", images.display()));
    for q in ["\"", "'"] {
        out = out
            .replacen(
                &format!("<domain type={q}kvm{q}"),
                &format!("<domain type={q}qemu{q}"),
                1,
            )
            .replace(
                &format!("<cpu mode={q}host-passthrough{q}"),
                &format!("<cpu mode={q}maximum{q}"),
            );
    }
    for (from, to) in HOST_DUMP_FOLDERS {
        let to = scratch.join(to);
        for p in attrs(xml, "source", "path") {
            if let Some(rest) = p.strip_prefix(from) {
                let parent = to.join(rest);
                std::fs::create_dir_all(parent.parent().expect("a folder")).expect("mkdir");
            }
        }
        out = out.replace(from, &format!("{}/", to.display()));
    }
    out
}

struct Stack {
    conn: zbus::Connection,
    _daemons: Vec<Daemon>,
    _bus: TestBus,
    _ns: NetNs,
}

/// The three daemons, the `default` network and bridge `br0` in the namespace, and the
/// `default` pool (in `pool_dir`) holding every volume the documents name.
async fn stack(pool_dir: &Path, volumes: &BTreeSet<String>) -> Stack {
    let bus = TestBus::start().expect("bus");
    let ns = NetNs::new().expect("netns");
    ns.run_ok(&["ip", "link", "add", "br0", "type", "bridge"])
        .expect("bridge");
    ns.run_ok(&["ip", "link", "set", "br0", "up"])
        .expect("bridge up");
    let net = Daemon::builder(sibling_daemon("virtnetworkd"), "virtnetworkd")
        .netns(&ns)
        .dirs(TestDirs::new().expect("dirs"))
        .spawn(&bus)
        .await
        .expect("virtnetworkd");
    let stor = Daemon::builder(sibling_daemon("virtstoraged"), "virtstoraged")
        .dirs(TestDirs::new().expect("dirs"))
        .spawn(&bus)
        .await
        .expect("virtstoraged");
    let qemud = Daemon::builder(BIN, "virtqemud")
        .netns(&ns)
        .spawn(&bus)
        .await
        .expect("virtqemud");
    let conn = bus.connection().await.expect("conn");

    let nc = NetworkConnectProxy::new(&conn).await.expect("net proxy");
    let npath = nc
        .network_define_xml(
            "<network><name>default</name><forward mode='nat'/><bridge name='virbr0'/>\
             <ip address='192.168.122.1' prefix='24'><dhcp><range start='192.168.122.2' \
             end='192.168.122.254'/></dhcp></ip></network>",
        )
        .await
        .expect("define network");
    NetworkProxy::builder(&conn)
        .path(npath)
        .expect("path")
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .expect("network")
        .create()
        .await
        .expect("start network");

    let sc = StorageConnectProxy::new(&conn).await.expect("storage");
    let pp = sc
        .storage_pool_define_xml(
            &format!(
                "<pool type='dir'><name>default</name><target><path>{}</path></target></pool>",
                pool_dir.display()
            ),
            0,
        )
        .await
        .expect("define pool");
    let pool = StoragePoolProxy::builder(&conn)
        .path(pp)
        .expect("path")
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .expect("pool");
    pool.build(0).await.expect("build");
    pool.create(0).await.expect("start pool");
    for v in volumes {
        let format = if v.ends_with(".qcow2") {
            "qcow2"
        } else {
            "raw"
        };
        pool.storage_vol_create_xml(
            &format!(
                "<volume><name>{v}</name><capacity unit='MiB'>16</capacity>\
                 <target><format type='{format}'/></target></volume>"
            ),
            0,
        )
        .await
        .expect("volume");
    }
    Stack {
        conn,
        _daemons: vec![qemud, stor, net],
        _bus: bus,
        _ns: ns,
    }
}

/// Defines every document of `docs` unchanged, redefines it runnable here and starts
/// it: the failures (an expected start failure that starts is one), and how many ran.
async fn define_and_start_all(docs: &[PathBuf]) -> (Vec<String>, usize) {
    let texts: Vec<(String, String)> = docs
        .iter()
        .map(|p| {
            let name = p.file_name().expect("name").to_string_lossy().into_owned();
            (name, std::fs::read_to_string(p).expect("read"))
        })
        .collect();
    let volumes: BTreeSet<String> = texts
        .iter()
        .flat_map(|(_, x)| attrs(x, "source", "volume"))
        .collect();
    let scratch = tempfile::tempdir().expect("tmp");
    std::fs::create_dir(scratch.path().join("images")).expect("images");
    let s = stack(&scratch.path().join("pool"), &volumes).await;
    let qc = QemuConnectProxy::new(&s.conn).await.expect("proxy");

    let mut failures = Vec::new();
    let mut started = 0;
    for (name, xml) in &texts {
        // As the user would: the document, unchanged.
        let path = match qc.domain_define_xml(xml).await {
            Ok(p) => p,
            Err(e) => {
                failures.push(format!("{name}: define: {e}"));
                continue;
            }
        };
        // Then the same domain with empty images and TCG (a redefinition by UUID).
        let again = match qc.domain_define_xml(&runnable(xml, scratch.path())).await {
            Ok(p) => p,
            Err(e) => {
                failures.push(format!("{name}: redefine with test images: {e}"));
                continue;
            }
        };
        assert_eq!(path, again, "{name}: the redefinition made a second domain");
        let d = domain(&s.conn, &path).await;
        let expected = EXPECTED_START_FAILURES.iter().find(|(n, _)| n == name);
        match (d.create(0).await, expected) {
            (Ok(()), None) => {
                let st = state(&d).await;
                if st.state() != common::event::DomainState::Running {
                    failures.push(format!("{name}: started but is {st:?}"));
                }
                started += 1;
                if let Err(e) = d.destroy(0).await {
                    failures.push(format!("{name}: destroy: {e}"));
                }
            }
            (Err(e), None) => failures.push(format!("{name}: start: {e}")),
            (Err(_), Some(_)) => {}
            (Ok(()), Some((_, why))) => {
                let _ = d.destroy(0).await;
                failures.push(format!(
                    "{name} starts now: remove it from EXPECTED_START_FAILURES ({why})"
                ));
            }
        }
    }
    (failures, started)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_virt_install_document_defines_and_starts() {
    let docs = documents("data/virt-install", "");
    assert!(
        docs.len() >= 30,
        "the virt-install matrix lost documents: {docs:?}"
    );
    let (failures, started) = define_and_start_all(&docs).await;
    println!(
        "{} virt-install documents defined, {started} started",
        docs.len()
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// libvirt's `virsh dumpxml` of running domains (the golden test's host dumps, one per
/// device family) define unchanged through the daemon and start here too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libvirt_host_dumps_define_and_start() {
    let docs = documents("golden", "libvirt-dumpxml-");
    assert!(docs.len() >= 7, "host dumps went missing: {docs:?}");
    let (failures, started) = define_and_start_all(&docs).await;
    println!("{} host dumps defined, {started} started", docs.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
