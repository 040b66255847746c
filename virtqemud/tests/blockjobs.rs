//! Block jobs on real QEMU: BlockPull makes an overlay stand alone, BlockCommit merges
//! a middle layer into its base, a slow job is seen, re-paced and cancelled, and each
//! end comes as libvirt's BlockJob signal.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;

mod support;
use support::{bus_err, domain};

const BIN: &str = env!("CARGO_BIN_EXE_virtqemud");

fn qemu_img(args: &[&str]) -> String {
    let out = std::process::Command::new("qemu-img")
        .args(args)
        .output()
        .expect("qemu-img");
    assert!(
        out.status.success(),
        "qemu-img {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A qcow2 image over `backing` (or none), with 1 MiB of `pattern` at `at` MiB.
fn layer(dir: &Path, name: &str, backing: Option<&Path>, pattern: u8, at: u64) -> PathBuf {
    let img = dir.join(name);
    let img_s = img.to_str().expect("utf-8");
    match backing {
        Some(b) => qemu_img(&[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            "-b",
            b.to_str().expect("utf-8"),
            img_s,
        ]),
        None => qemu_img(&["create", "-q", "-f", "qcow2", img_s, "16M"]),
    };
    let st = std::process::Command::new("qemu-io")
        .args(["-f", "qcow2", "-c"])
        .arg(format!("write -P {pattern} {at}M 1M"))
        .arg(&img)
        .output()
        .expect("qemu-io");
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    img
}

fn backing_of(img: &Path) -> Option<String> {
    let info: serde_json::Value = serde_json::from_str(&qemu_img(&[
        "info",
        "-U",
        "--output=json",
        img.to_str().expect("utf-8"),
    ]))
    .expect("json");
    info.get("backing-filename")
        .and_then(|b| b.as_str())
        .map(str::to_owned)
}

/// The next BlockJob signal: (disk, type, status).
async fn next_job(
    jobs: &mut common::proxies::libvirt::domain::BlockJobStream,
) -> (String, i32, i32) {
    let s = tokio::time::timeout(Duration::from_secs(60), jobs.next())
        .await
        .expect("a BlockJob signal")
        .expect("stream");
    let a = s.args().expect("args");
    (a.disk().to_string(), *a.r#type(), *a.status())
}

fn xml(name: &str, img: &Path) -> String {
    format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>\
         <os><type arch='x86_64' machine='pc'>hvm</type></os><devices>\
         <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>\
         <source file='{}'/><target dev='vda' bus='virtio'/></disk></devices></domain>",
        img.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_commit_and_a_cancelled_job() {
    let q = support::qemud(BIN).await;
    let dir = tempfile::tempdir().expect("dir");
    let base = layer(dir.path(), "base.qcow2", None, 0xab, 0);
    let top = layer(dir.path(), "top.qcow2", Some(&base), 0xcd, 1);
    let path =
        q.qc.domain_define_xml(&xml("pull", &top))
            .await
            .expect("define");
    let d = domain(&q.conn, &path).await;
    let mut jobs = d.receive_block_job().await.expect("subscribe");
    d.create(0).await.expect("create");

    // Pull: the base's data into the overlay, which then has no backing file.
    assert_eq!(backing_of(&top).as_deref(), base.to_str());
    d.block_pull("vda", 0, 0).await.expect("pull");
    assert_eq!(next_job(&mut jobs).await, ("vda".to_owned(), 1, 0));
    assert_eq!(backing_of(&top), None, "the overlay stands alone");
    assert_eq!(
        d.get_block_job_info("vda", 0).await.expect("info"),
        (0, 0, 0, 0)
    );
    let e = bus_err(d.block_job_abort("vda", 0).await);
    assert!(e.contains("does not have an active block job"), "{e}");
    let e = bus_err(d.block_commit("vda", "", "", 0, 4).await);
    assert!(e.contains("active layer"), "{e}");
    d.destroy(0).await.expect("destroy");

    // Commit a middle layer into the base: the top then sits on the base directly.
    let base2 = layer(dir.path(), "b2.qcow2", None, 0x11, 0);
    let mid = layer(dir.path(), "m2.qcow2", Some(&base2), 0x22, 2);
    let top2 = layer(dir.path(), "t2.qcow2", Some(&mid), 0x33, 3);
    let path =
        q.qc.domain_define_xml(&xml("commit", &top2))
            .await
            .expect("define");
    let d = domain(&q.conn, &path).await;
    let mut jobs = d.receive_block_job().await.expect("subscribe");
    d.create(0).await.expect("create");
    d.block_commit(
        "vda",
        base2.to_str().expect("utf-8"),
        mid.to_str().expect("utf-8"),
        0,
        0,
    )
    .await
    .expect("commit");
    assert_eq!(next_job(&mut jobs).await, ("vda".to_owned(), 3, 0));
    assert_eq!(
        backing_of(&top2).as_deref(),
        base2.to_str(),
        "the middle layer is merged out"
    );

    // A slow pull: seen in GetBlockJobInfo, one job per disk, re-paced, cancelled.
    d.block_pull("vda", 1, 64)
        .await
        .expect("slow pull (1 byte/s)");
    let (kind, bw, _, end) = d.get_block_job_info("vda", 1).await.expect("info");
    assert_eq!((kind, bw), (1, 1));
    assert!(end > 0);
    let e = bus_err(d.block_pull("vda", 0, 0).await);
    assert!(e.contains("already in active block job"), "{e}");
    d.block_job_set_speed("vda", 2, 0).await.expect("2 MiB/s");
    assert_eq!(d.get_block_job_info("vda", 0).await.expect("info").1, 2);
    let e = bus_err(d.block_job_abort("vda", 2).await);
    assert!(e.contains("no copy or active commit to pivot to"), "{e}");
    d.block_job_abort("vda", 0).await.expect("abort");
    assert_eq!(next_job(&mut jobs).await, ("vda".to_owned(), 1, 2));
    assert_eq!(
        d.get_block_job_info("vda", 0).await.expect("info"),
        (0, 0, 0, 0)
    );
    d.destroy(0).await.expect("destroy");
    assert!(bus_err(d.block_pull("vda", 0, 0).await).contains("not running"));
}
