//! Internal snapshots through virtqemud's D-Bus API, with real QEMU and real qcow2
//! images: of an inactive domain (qemu-img) and of a running one (QEMU's
//! snapshot-save), the tree (current, parent, children), reverting in every
//! direction, deleting, and the metadata kept across a daemon killed with -9. What
//! the images hold is read with `qemu-img snapshot -l`, not from the daemon.

use std::path::Path;
use std::time::Duration;

mod support;

use common::event::DomainState;
use futures_util::StreamExt;
use support::{bus_err, domain, qcow2, state};
use zbus::zvariant::OwnedObjectPath;

const BIN: &str = env!("CARGO_BIN_EXE_virtqemud");
/// `VIR_CONNECT_LIST_DOMAINS_HAS_SNAPSHOT` / `_NO_SNAPSHOT`.
const HAS_SNAPSHOT: u32 = 4096;
const NO_SNAPSHOT: u32 = 8192;

/// The snapshot tags in an image, by qemu-img (sharing it with a running QEMU).
/// A domain of 64 MiB with one virtio disk of `format` at `img`.
fn one_disk_domain(name: &str, format: &str, img: &Path) -> String {
    format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>\
         <os><type arch='x86_64' machine='pc'>hvm</type></os><devices>\
         <disk type='file' device='disk'><driver name='qemu' type='{format}'/>\
         <source file='{}'/><target dev='vda' bus='virtio'/></disk></devices></domain>",
        img.display()
    )
}

fn tags(img: &Path) -> Vec<String> {
    let out = std::process::Command::new("qemu-img")
        .args(["snapshot", "-l", "-U"])
        .arg(img)
        .output()
        .expect("qemu-img");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(2)
        .filter_map(|l| l.split_whitespace().nth(1).map(str::to_owned))
        .collect()
}

fn snapshot_proxy<'a>(
    conn: &zbus::Connection,
    path: &OwnedObjectPath,
) -> impl std::future::Future<Output = common::proxies::qemu::DomainSnapshotProxy<'a>> {
    let conn = conn.clone();
    let path = path.clone();
    async move {
        common::proxies::qemu::DomainSnapshotProxy::builder(&conn)
            .path(path)
            .expect("path")
            .build()
            .await
            .expect("snapshot proxy")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::too_many_lines)]
async fn snapshots_of_inactive_and_running_domains() {
    let mut q = support::qemud(BIN).await;
    let scratch = tempfile::tempdir().expect("scratch");
    let img = qcow2(scratch.path(), "disk.qcow2", "16M");
    let x = one_disk_domain("snappy", "qcow2", &img);
    let path = q.qc.domain_define_xml(&x).await.expect("define");
    let d = domain(&q.conn, &path).await;
    let uuid = d.uuid().await.expect("uuid");
    let snap_path =
        |n: &str| common::objpath::domain_snapshot(&uuid::Uuid::parse_str(&uuid).expect("uuid"), n);
    assert!(bus_err(d.snapshot_current(0).await).contains("does not have a current snapshot"));

    // Inactive: qemu-img puts the snapshot into the image.
    let s1 = d
        .snapshot_create_xml(
            "<domainsnapshot><name>s1</name><description>fresh</description></domainsnapshot>",
            0,
        )
        .await
        .expect("s1");
    assert_eq!(s1, snap_path("s1"));
    assert_eq!(tags(&img), ["s1"]);
    let p1 = snapshot_proxy(&q.conn, &s1).await;
    let xml = p1.get_xml_desc(0).await.expect("xml");
    for want in [
        "<name>s1</name>",
        "<description>fresh</description>",
        "<state>shutoff</state>",
        "<memory snapshot='no'/>",
        "<disk name='vda' snapshot='internal'/>",
        "<name>snappy</name>",
    ] {
        assert!(xml.contains(want), "{want} missing:\n{xml}");
    }
    assert!(bus_err(
        d.snapshot_create_xml("<domainsnapshot><name>s1</name></domainsnapshot>", 0)
            .await
    )
    .contains("already exists"));
    assert!(bus_err(p1.get_parent(0).await).contains("does not have a parent"));
    let s2 = d
        .snapshot_create_xml("<domainsnapshot><name>s2</name></domainsnapshot>", 0)
        .await
        .expect("s2");
    let p2 = snapshot_proxy(&q.conn, &s2).await;
    assert_eq!(p2.get_parent(0).await.expect("parent"), s1);
    assert!(p2.is_current(0).await.expect("current"));
    assert!(!p1.is_current(0).await.expect("current"));
    assert_eq!(
        p1.list_children(0).await.expect("children"),
        vec![s2.clone()]
    );
    assert_eq!(
        q.qc.list_domains(HAS_SNAPSHOT).await.expect("list"),
        vec![path.clone()]
    );
    assert!(q
        .qc
        .list_domains(NO_SNAPSHOT)
        .await
        .expect("list")
        .is_empty());

    // Running: QEMU's snapshot-save, memory and disks, the guest running on after it.
    d.create(0).await.expect("create");
    let s3 = d
        .snapshot_create_xml("<domainsnapshot><name>s3</name></domainsnapshot>", 0)
        .await
        .expect("s3");
    assert_eq!(state(&d).await.state(), DomainState::Running);
    assert_eq!(tags(&img), ["s1", "s2", "s3"]);
    let p3 = snapshot_proxy(&q.conn, &s3).await;
    let xml = p3.get_xml_desc(0).await.expect("xml");
    assert!(
        xml.contains("<state>running</state>") && xml.contains("<memory snapshot='internal'/>"),
        "{xml}"
    );
    assert_eq!(p3.get_parent(0).await.expect("parent"), s2);
    assert_eq!(d.snapshot_current(0).await.expect("current"), s3);

    // Back to s3 while running (snapshot-load), paused as asked.
    p3.revert(2).await.expect("revert paused");
    assert_eq!(state(&d).await.state(), DomainState::Paused);
    p3.revert(1).await.expect("revert running");
    assert_eq!(state(&d).await.state(), DomainState::Running);

    // To the disk-only s1: the domain stops, its disk goes back.
    let mut events = q.qc.receive_domain_event().await.expect("subscribe");
    p1.revert(0).await.expect("revert to s1");
    assert_eq!(state(&d).await.state(), DomainState::Shutoff);
    assert!(tokio::time::timeout(Duration::from_secs(10), events.next())
        .await
        .is_ok());
    assert!(p1.is_current(0).await.expect("current"));

    // To s3 from shut off: QEMU starts from it (-loadvm).
    p3.revert(0).await.expect("revert to s3");
    assert_eq!(state(&d).await.state(), DomainState::Running);
    assert_eq!(
        d.get_state(0).await.expect("state"),
        (1, 4),
        "running from snapshot"
    );

    // kill -9 and restart: the tree and its objects come back.
    q.daemon.kill9();
    let daemon = q
        .daemon
        .restart_builder()
        .spawn(&q.bus)
        .await
        .expect("restart");
    let d = domain(&q.conn, &path).await;
    assert_eq!(
        d.list_domain_snapshots(0).await.expect("list"),
        vec![s1.clone(), s2.clone(), s3.clone()]
    );
    assert_eq!(d.snapshot_current(0).await.expect("current"), s3);
    let p2 = snapshot_proxy(&q.conn, &s2).await;
    assert_eq!(p2.get_parent(0).await.expect("parent"), s1);

    // Delete s2 alone (running: snapshot-delete): s3 hangs off s1 now.
    p2.delete(0).await.expect("delete s2");
    assert_eq!(tags(&img), ["s1", "s3"]);
    let p3 = snapshot_proxy(&q.conn, &s3).await;
    assert_eq!(p3.get_parent(0).await.expect("parent"), s1);
    // Its object is gone (the front answers libvirt's "not found" for it).
    match p2.get_xml_desc(0).await {
        Err(zbus::Error::MethodError(name, _, _)) => {
            assert_eq!(name.as_str(), "org.freedesktop.DBus.Error.UnknownObject");
        }
        other => panic!("s2 still answers: {other:?}"),
    }
    d.destroy(0).await.expect("destroy");

    // Undefine keeps snapshots unless asked; then the metadata goes.
    assert!(bus_err(d.undefine(0).await).contains("with 2 snapshots"));
    let p1 = snapshot_proxy(&q.conn, &s1).await;
    p1.delete(1).await.expect("delete s1 and its children");
    assert!(tags(&img).is_empty());
    assert!(d.list_domain_snapshots(0).await.expect("list").is_empty());
    d.snapshot_create_xml("<domainsnapshot><name>last</name></domainsnapshot>", 0)
        .await
        .expect("last");
    d.undefine(2)
        .await
        .expect("undefine with its snapshot metadata");
    assert_eq!(tags(&img), ["last"], "the image keeps its own snapshot");
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_qcow2_disks_hold_internal_snapshots() {
    let q = support::qemud(BIN).await;
    let scratch = tempfile::tempdir().expect("scratch");
    let raw = scratch.path().join("disk.raw");
    std::fs::File::create(&raw)
        .expect("raw")
        .set_len(1 << 20)
        .expect("size");
    let x = one_disk_domain("rawdisk", "raw", &raw);
    let path = q.qc.domain_define_xml(&x).await.expect("define");
    let d = domain(&q.conn, &path).await;
    assert_eq!(
        bus_err(d.snapshot_create_xml("<domainsnapshot/>", 0).await),
        "unsupported configuration: internal snapshot for disk vda unsupported for storage type raw"
    );
    assert!(bus_err(
        d.snapshot_create_xml(
            "<domainsnapshot><memory snapshot='external' file='/tmp/m'/></domainsnapshot>",
            0
        )
        .await
    )
    .contains("only internal snapshots"));
    assert!(bus_err(d.snapshot_create_xml("<domainsnapshot/>", 16).await).contains("flags"));
    // The disk skipped, the snapshot holds nothing but the definition.
    d.snapshot_create_xml(
        "<domainsnapshot><name>meta</name><disks><disk name='vda' snapshot='no'/></disks></domainsnapshot>",
        0,
    )
    .await
    .expect("no disk");
    assert!(d.list_domain_snapshots(0).await.expect("list").len() == 1);
}

/// The names of a domain's snapshots by its metadata (sorted).
async fn metadata_names(
    conn: &zbus::Connection,
    d: &common::proxies::qemu::DomainProxy<'_>,
) -> Vec<String> {
    let mut names = Vec::new();
    for p in d.list_domain_snapshots(0).await.expect("list") {
        let xml = snapshot_proxy(conn, &p)
            .await
            .get_xml_desc(0)
            .await
            .expect("snapshot xml");
        let name = xml
            .split_once("<name>")
            .and_then(|(_, r)| r.split_once("</name>"))
            .map(|(n, _)| n.to_owned())
            .expect("a snapshot has a name");
        names.push(name);
    }
    names.sort();
    names
}

/// kill -9 of virtqemud during SnapshotCreateXML, Revert and Delete of a running domain,
/// at spread points. After every restart the metadata names exactly the snapshots the
/// image holds, the guest runs (no operation leaves it paused) and the next operation
/// works. `VIRT_CHAOS_ROUNDS` sets the number of kills (12 by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_snapshot_operations_keeps_metadata_and_images_in_step() {
    let q = support::qemud(BIN).await;
    let mut daemon = q.daemon;
    let scratch = tempfile::tempdir().expect("scratch");
    let img = qcow2(scratch.path(), "disk.qcow2", "16M");
    let x = one_disk_domain("snapstorm", "qcow2", &img);
    let path = q.qc.domain_define_xml(&x).await.expect("define");
    let d = domain(&q.conn, &path).await;
    let uuid = uuid::Uuid::parse_str(&d.uuid().await.expect("uuid")).expect("uuid");
    d.create(0).await.expect("create");
    let snap = |n: &str| common::objpath::domain_snapshot(&uuid, n);
    let create_xml = |n: &str| format!("<domainsnapshot><name>{n}</name></domainsnapshot>");

    // Warm-up: how long each operation takes here.
    let t = std::time::Instant::now();
    d.snapshot_create_xml(&create_xml("w"), 0)
        .await
        .expect("warm-up create");
    let span = t.elapsed().mul_f64(1.3);
    eprintln!("a snapshot of the running domain takes about {span:?} here (kills spread over it)");

    let n: usize = std::env::var("VIRT_CHAOS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12)
        .max(1);
    let mut broken = Vec::new();
    let mut next = 0;
    for i in 0..n {
        let d = domain(&q.conn, &path).await;
        let have = metadata_names(&q.conn, &d).await;
        let op = i % 3;
        let delay = span.mul_f64(((i / 3) as f64 + 0.5) / n.div_ceil(3) as f64);
        let (what, call) = match (op, have.last()) {
            (1, Some(last)) => {
                let p = snapshot_proxy(&q.conn, &snap(last)).await;
                ("revert", tokio::spawn(async move { p.revert(0).await }))
            }
            (2, Some(last)) => {
                let p = snapshot_proxy(&q.conn, &snap(last)).await;
                ("delete", tokio::spawn(async move { p.delete(0).await }))
            }
            _ => {
                next += 1;
                let xml = create_xml(&format!("s{next}"));
                let d2 = domain(&q.conn, &path).await;
                (
                    "create",
                    tokio::spawn(async move { d2.snapshot_create_xml(&xml, 0).await.map(|_| ()) }),
                )
            }
        };
        let replied;
        (replied, daemon) = support::kill_during(daemon, &q.bus, delay, call).await;
        let d = domain(&q.conn, &path).await;
        let mut problems = Vec::new();
        let meta = metadata_names(&q.conn, &d).await;
        let mut held = tags(&img);
        held.sort();
        if meta != held {
            problems.push(format!("metadata {meta:?}, image {held:?}"));
        }
        let st = state(&d).await;
        if st.state() != DomainState::Running {
            problems.push(format!("left {st:?}"));
        }
        eprintln!(
            "round {i}: kill {delay:?} into {what} ({}): snapshots {meta:?}: {}",
            if replied { "replied" } else { "cut" },
            support::verdict(&problems)
        );
        if !problems.is_empty() {
            broken.push(format!(
                "round {i} ({what}, {delay:?}): {}",
                problems.join("; ")
            ));
            let _ = d.resume().await;
        }
        // The next operation must work: a job a killed daemon left in QEMU is no obstacle.
        let probe = format!("probe{i}");
        match d.snapshot_create_xml(&create_xml(&probe), 0).await {
            Ok(p) => {
                let del = snapshot_proxy(&q.conn, &p).await.delete(0).await;
                if let Err(e) = del {
                    broken.push(format!("round {i}: delete after restart: {e}"));
                }
            }
            Err(e) => broken.push(format!("round {i}: create after restart: {e}")),
        }
    }
    let log = daemon.log_text();
    let mended = [
        "adopting snapshot",
        "undoing snapshot",
        "finishing the deletion",
        "loading snapshot",
    ]
    .map(|m| format!("{m}: {}", log.matches(m).count()));
    eprintln!("{n} rounds: {} broken; {}", broken.len(), mended.join(", "));
    d.destroy(0).await.expect("destroy");
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}
