//! GetBlockIOTune and SetBlockIOTune on real QEMU: a disk started with `<iotune>` (a
//! throttle group) and one without (QEMU's per-device throttling), live and config.

use std::collections::HashMap;

use futures_util::StreamExt;
use zbus::zvariant::Value;

mod support;
use support::{bus_err, domain, qcow2};

const BIN: &str = env!("CARGO_BIN_EXE_virtqemud");
const LIVE: u32 = 1;
const CONFIG: u32 = 2;

fn get(params: &common::typed_params::TypedParams, k: &str) -> u64 {
    u64::try_from(
        params
            .get(k)
            .unwrap_or_else(|| panic!("{k} missing: {params:?}")),
    )
    .unwrap_or_else(|_| panic!("{k} is not a number"))
}

fn set<'a>(pairs: &[(&'a str, u64)]) -> HashMap<&'a str, Value<'static>> {
    pairs.iter().map(|(k, v)| (*k, Value::from(*v))).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn io_limits_live_and_in_the_config() {
    let q = support::qemud(BIN).await;
    let scratch = tempfile::tempdir().expect("scratch");
    let (a, b) = (
        qcow2(scratch.path(), "a.qcow2", "16M"),
        qcow2(scratch.path(), "b.qcow2", "16M"),
    );
    let xml = format!(
        "<domain type='qemu'><name>tune</name><memory unit='MiB'>64</memory>\
         <os><type arch='x86_64' machine='pc'>hvm</type></os><devices>\
         <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{}'/>\
         <target dev='vda' bus='virtio'/><iotune><total_bytes_sec>1048576</total_bytes_sec></iotune></disk>\
         <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='{}'/>\
         <target dev='vdb' bus='virtio'/></disk></devices></domain>",
        a.display(),
        b.display()
    );
    let path = q.qc.domain_define_xml(&xml).await.expect("define");
    let d = domain(&q.conn, &path).await;
    // Inactive: the definition's limits.
    let t = d.get_block_io_tune("vda", 0).await.expect("get");
    assert_eq!(get(&t, "total_bytes_sec"), 1048576);
    assert_eq!(get(&t, "read_iops_sec"), 0);

    let mut tunables = d.receive_tunable().await.expect("subscribe");
    d.create(0).await.expect("create");
    // Live, from QEMU: vda's throttle group, vdb's device (nothing yet).
    assert_eq!(
        get(
            &d.get_block_io_tune("vda", 0).await.expect("get"),
            "total_bytes_sec"
        ),
        1048576
    );
    assert_eq!(
        get(
            &d.get_block_io_tune("vdb", 0).await.expect("get"),
            "total_iops_sec"
        ),
        0
    );
    d.set_block_io_tune("vda", &set(&[("read_iops_sec", 100)]), LIVE)
        .await
        .expect("set vda");
    // libvirt's Tunable signal for a live change: the disk and its limits.
    let sig = tokio::time::timeout(std::time::Duration::from_secs(10), tunables.next())
        .await
        .expect("a Tunable signal")
        .expect("stream");
    let args = sig.args().expect("args");
    let params = args.params();
    assert_eq!(
        params
            .get("blkdeviotune.disk")
            .and_then(|v| String::try_from(v.try_clone().ok()?).ok())
            .as_deref(),
        Some("vda")
    );
    assert_eq!(get(params, "blkdeviotune.read_iops_sec"), 100);
    let t = d.get_block_io_tune("vda", 0).await.expect("get");
    assert_eq!(
        (get(&t, "read_iops_sec"), get(&t, "total_bytes_sec")),
        (100, 1048576),
        "merged"
    );
    d.set_block_io_tune(
        "vdb",
        &set(&[("total_iops_sec", 50), ("write_bytes_sec", 4096)]),
        0,
    )
    .await
    .expect("set vdb (current: live)");
    let t = d.get_block_io_tune("vdb", 0).await.expect("get");
    assert_eq!(
        (get(&t, "total_iops_sec"), get(&t, "write_bytes_sec")),
        (50, 4096)
    );
    let live = d.get_xml_desc(0).await.expect("xml");
    assert!(
        live.contains("<total_iops_sec>50</total_iops_sec>")
            && live.contains("<read_iops_sec>100</read_iops_sec>"),
        "{live}"
    );
    // The config did not move; then it does, alone.
    let t = d
        .get_block_io_tune("vdb", CONFIG)
        .await
        .expect("get config");
    assert_eq!(get(&t, "total_iops_sec"), 0);
    d.set_block_io_tune("vdb", &set(&[("read_bytes_sec", 2048)]), CONFIG)
        .await
        .expect("set config");
    assert_eq!(
        get(
            &d.get_block_io_tune("vdb", CONFIG).await.expect("get"),
            "read_bytes_sec"
        ),
        2048
    );
    assert_eq!(
        get(
            &d.get_block_io_tune("vdb", 0).await.expect("get"),
            "read_bytes_sec"
        ),
        0
    );

    // libvirt's refusals, nothing changed.
    let e = bus_err(
        d.set_block_io_tune("vda", &set(&[("read_bytes_sec", 1)]), LIVE)
            .await,
    );
    assert!(
        e.contains("total and read/write of bytes_sec cannot be set at the same time"),
        "{e}"
    );
    let e = bus_err(
        d.set_block_io_tune("vda", &set(&[("bogus", 1)]), LIVE)
            .await,
    );
    assert!(e.contains("parameter 'bogus' not supported"), "{e}");
    let e = bus_err(
        d.set_block_io_tune("vdz", &set(&[("read_bytes_sec", 1)]), LIVE)
            .await,
    );
    assert!(e.contains("disk 'vdz' was not found"), "{e}");
    assert_eq!(
        get(
            &d.get_block_io_tune("vda", 0).await.expect("get"),
            "read_bytes_sec"
        ),
        0
    );

    d.destroy(0).await.expect("destroy");
    let config = d.get_xml_desc(0).await.expect("xml");
    assert!(
        config.contains("<read_bytes_sec>2048</read_bytes_sec>")
            && !config.contains("<total_iops_sec>50"),
        "{config}"
    );
    let e = bus_err(
        d.set_block_io_tune("vda", &set(&[("read_iops_sec", 1)]), LIVE)
            .await,
    );
    assert!(e.contains("not running"), "{e}");
}
