//! libvirt's `startupPolicy` at start: a missing `optional` medium is dropped (a cdrom
//! stays, empty; a disk goes) and told by DiskChange; a missing `mandatory` one fails
//! the start naming the file; the definition itself keeps every medium.

use std::time::Duration;

use futures_util::StreamExt;

mod support;
use support::{bus_err, domain, qemud};

const BIN: &str = env!("CARGO_BIN_EXE_virtqemud");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_optional_media_are_dropped_and_told() {
    let q = qemud(BIN).await;
    let dir = tempfile::tempdir().expect("dir");
    let iso = dir.path().join("gone.iso");
    let img = dir.path().join("gone.img");
    let xml = |policy: &str| {
        format!(
            "<domain type='qemu'><name>sp</name><uuid>8e1f3c52-5b1e-4d4a-9c55-2a3b4c5d6e7f</uuid><memory unit='MiB'>64</memory>\
             <os><type arch='x86_64' machine='pc'>hvm</type></os><devices>\
             <disk type='file' device='cdrom'><source file='{}' startupPolicy='optional'/>\
             <target dev='hdc' bus='ide'/><readonly/></disk>\
             <disk type='file' device='disk'><source file='{}' startupPolicy='{policy}'/>\
             <target dev='vdb' bus='virtio'/></disk></devices></domain>",
            iso.display(),
            img.display()
        )
    };
    let path =
        q.qc.domain_define_xml(&xml("mandatory"))
            .await
            .expect("define");
    let d = domain(&q.conn, &path).await;
    let e = bus_err(d.create(0).await);
    assert!(
        e.contains(&img.display().to_string()),
        "a missing mandatory disk is named: {e}"
    );
    assert!(!d.active().await.expect("active"));

    q.qc.domain_define_xml(&xml("optional"))
        .await
        .expect("redefine");
    let mut changes = d.receive_disk_change().await.expect("subscribe");
    d.create(0).await.expect("starts without the missing media");
    let mut seen = Vec::new();
    for _ in 0..2 {
        let s = tokio::time::timeout(Duration::from_secs(10), changes.next())
            .await
            .expect("a DiskChange signal")
            .expect("stream");
        let a = s.args().expect("args");
        assert_eq!((a.new_src_path().as_str(), *a.reason()), ("", 0));
        seen.push(a.old_src_path().to_string());
    }
    seen.sort();
    let mut want = vec![img.display().to_string(), iso.display().to_string()];
    want.sort();
    assert_eq!(seen, want);
    let live = d.get_xml_desc(0).await.expect("live xml");
    assert!(
        live.contains("dev='hdc'") && !live.contains("gone.iso"),
        "the cdrom stays, empty:\n{live}"
    );
    assert!(!live.contains("dev='vdb'"), "the disk goes:\n{live}");
    let config = d.get_xml_desc(2).await.expect("inactive xml");
    assert!(
        config.contains("gone.iso") && config.contains("gone.img"),
        "{config}"
    );
    d.destroy(0).await.expect("destroy");
}
