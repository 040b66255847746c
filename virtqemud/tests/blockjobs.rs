//! Block jobs on real QEMU: BlockPull makes an overlay stand alone, BlockCommit merges
//! a middle layer into its base, a slow job is seen, re-paced and cancelled, and each
//! end comes as libvirt's BlockJob signal.

use std::collections::HashMap;
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

fn copy_dest(path: &Path) -> String {
    format!(
        "<disk type='file'><source file='{}'/><driver type='qcow2'/></disk>",
        path.display()
    )
}

fn read_pattern(img: &Path, pattern: u8, at: u64) -> bool {
    let out = std::process::Command::new("qemu-io")
        .args(["-r", "-U", "-f", "qcow2", "-c"])
        .arg(format!("read -P {pattern} {at}M 1M"))
        .arg(img)
        .output()
        .expect("qemu-io");
    let text = String::from_utf8_lossy(&out.stdout);
    // qemu-io reports a mismatch on stdout and still exits 0.
    out.status.success() && !text.contains("Pattern verification failed")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_pivots_or_cancels_and_rebase_copies_or_pulls() {
    let q = support::qemud(BIN).await;
    let dir = tempfile::tempdir().expect("dir");
    let base = layer(dir.path(), "base.qcow2", None, 0xab, 0);
    let top = layer(dir.path(), "top.qcow2", Some(&base), 0xcd, 1);
    let path =
        q.qc.domain_define_xml(&xml("copy", &top))
            .await
            .expect("define");
    let d = domain(&q.conn, &path).await;
    let mut jobs = d.receive_block_job().await.expect("subscribe");
    d.create(0).await.expect("create");
    let none = HashMap::<&str, zbus::zvariant::Value>::new();

    // A slow copy is not ready: no pivot yet; cancelled, the disk stays.
    let slow = dir.path().join("slow.qcow2");
    let one_byte: HashMap<&str, zbus::zvariant::Value> =
        [("bandwidth", zbus::zvariant::Value::from(1u64))].into();
    d.block_copy("vda", &copy_dest(&slow), &one_byte, 0)
        .await
        .expect("slow copy");
    assert_eq!(d.get_block_job_info("vda", 0).await.expect("info").0, 2);
    let e = bus_err(d.block_pull("vda", 0, 0).await);
    assert!(e.contains("already in active block job"), "{e}");
    let e = bus_err(d.block_copy("vda", &copy_dest(&slow), &none, 2).await);
    assert!(e.contains("already in active block job"), "{e}");
    let e = bus_err(d.block_job_abort("vda", 2).await);
    assert_eq!(
        e,
        "block copy still active: disk 'vda' not ready for pivot yet"
    );
    d.block_job_abort("vda", 0).await.expect("cancel");
    assert_eq!(
        next_job(&mut jobs).await,
        ("vda".to_owned(), 2, 2),
        "CANCELED"
    );
    assert_eq!(d.get_block_job_info("vda", 0).await.expect("info").0, 0);
    let live = d.get_xml_desc(0).await.expect("xml");
    assert!(live.contains(&top.display().to_string()), "{live}");
    assert!(
        slow.exists(),
        "a cancelled copy leaves its file, as libvirt does"
    );

    // A full copy: READY, pivoted, and the guest's disk is the copy, standing alone
    // with both layers' data.
    let full = dir.path().join("full.qcow2");
    d.block_copy("vda", &copy_dest(&full), &none, 0)
        .await
        .expect("copy");
    assert_eq!(next_job(&mut jobs).await, ("vda".to_owned(), 2, 3), "READY");
    d.block_job_abort("vda", 2).await.expect("pivot");
    assert_eq!(next_job(&mut jobs).await, ("vda".to_owned(), 2, 0));
    let live = d.get_xml_desc(0).await.expect("xml");
    assert!(live.contains(&full.display().to_string()), "{live}");
    assert!(!live.contains(&top.display().to_string()), "{live}");
    assert_eq!(backing_of(&full), None);
    // The disk's new nodes are the ones later jobs use.
    d.block_pull("vda", 0, 0).await.expect("pull on the copy");
    assert_eq!(next_job(&mut jobs).await, ("vda".to_owned(), 1, 0));

    // BlockRebase with COPY (shallow: the copy keeps the source's backing, here none),
    // into an image the caller made (REUSE_EXT), then pivoted by the async path.
    let pre = dir.path().join("pre.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        pre.to_str().expect("utf-8"),
        "16M",
    ]);
    d.block_rebase("vda", pre.to_str().expect("utf-8"), 0, 8 | 2 | 1)
        .await
        .expect("rebase copy");
    assert_eq!(next_job(&mut jobs).await, ("vda".to_owned(), 2, 3));
    d.block_job_abort("vda", 2 | 1).await.expect("async pivot");
    assert_eq!(next_job(&mut jobs).await, ("vda".to_owned(), 2, 0));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !d
        .get_xml_desc(0)
        .await
        .expect("xml")
        .contains(&pre.display().to_string())
    {
        assert!(std::time::Instant::now() < deadline, "the pivot is settled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The first copy, let go (so flushed) by QEMU: both layers' data, standing alone.
    assert!(read_pattern(&full, 0xab, 0) && read_pattern(&full, 0xcd, 1));
    // BlockRebase without COPY is a pull (all of the chain with no base).
    d.block_rebase("vda", "", 0, 0).await.expect("rebase pull");
    assert_eq!(next_job(&mut jobs).await, ("vda".to_owned(), 1, 0));

    // Bad requests name what is wrong and change nothing.
    let before = d.get_xml_desc(0).await.expect("xml");
    for (destxml, flags, says) in [
        (copy_dest(&full), 0, "exists already"),
        (
            copy_dest(&dir.path().join("missing.qcow2")),
            2,
            "does not exist",
        ),
        ("<interface type='user'/>".to_owned(), 0, "<disk>"),
        ("<disk".to_owned(), 0, "XML"),
        (
            "<disk type='network'><source protocol='nbd' name='x'><host name='127.0.0.1'/></source></disk>"
                .to_owned(),
            0,
            "local file or block device",
        ),
        (
            "<disk type='file'><source file='relative.qcow2'/></disk>".to_owned(),
            0,
            "absolute path",
        ),
        (copy_dest(&dir.path().join("x.qcow2")), 16, "unsupported flags"),
    ] {
        let e = bus_err(d.block_copy("vda", &destxml, &none, flags).await);
        assert!(e.contains(says), "{destxml}: {e}");
    }
    let odd: HashMap<&str, zbus::zvariant::Value> =
        [("speed", zbus::zvariant::Value::from(1u64))].into();
    let e = bus_err(
        d.block_copy("vda", &copy_dest(&dir.path().join("y.qcow2")), &odd, 0)
            .await,
    );
    assert!(e.contains("'speed' not supported"), "{e}");
    let e = bus_err(d.block_rebase("vda", "", 0, 4).await);
    assert!(e.contains("need COPY"), "{e}");
    let e = bus_err(
        d.block_copy("vdz", &copy_dest(&dir.path().join("z.qcow2")), &none, 0)
            .await,
    );
    assert!(e.contains("vdz"), "{e}");
    assert_eq!(d.get_xml_desc(0).await.expect("xml"), before);
    assert!(!dir.path().join("y.qcow2").exists());
    d.destroy(0).await.expect("destroy");
    let e = bus_err(
        d.block_copy("vda", &copy_dest(&dir.path().join("w.qcow2")), &none, 0)
            .await,
    );
    assert!(e.contains("not running"), "{e}");
}

/// kill -9 of the daemon while copies run and pivot: after each restart the live
/// definition names the image QEMU's disk really reads (asked through a monitor of the
/// test's own), a copy still running can still be pivoted or cancelled, and the disk's
/// nodes are the ones the definition names (a pull on them works).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_copy_and_pivot_keeps_the_disk_where_qemu_has_it() {
    let rounds: usize = std::env::var("VIRT_CHAOS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let mut q = support::qemud(BIN).await;
    let dir = tempfile::tempdir().expect("dir");
    let first = layer(dir.path(), "img0.qcow2", None, 0x5a, 0);
    let probe_sock = dir.path().join("probe.sock");
    let dom_xml = xml("storm", &first)
        .replace(
            "<domain type='qemu'>",
            "<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>",
        )
        .replace(
            "</devices>",
            &format!("</devices>{}", support::Probe::commandline(&probe_sock)),
        );
    let path = q.qc.domain_define_xml(&dom_xml).await.expect("define");
    let d = domain(&q.conn, &path).await;
    d.create(0).await.expect("create");
    let mut probe = support::Probe::connect(&probe_sock);
    let none = HashMap::<&str, zbus::zvariant::Value>::new();
    let mut broken = Vec::new();
    let (mut pivoted, mut kept, mut kills) = (0, 0, 0);
    for round in 0..rounds {
        let d = domain(&q.conn, &path).await;
        let mut jobs = d.receive_block_job().await.expect("subscribe");
        let dest = dir.path().join(format!("img{}.qcow2", round + 1));
        let delay = Duration::from_millis((round as u64 * 7) % 40);
        // Cut, by turns: the BlockCopy call itself; the pivot of a READY copy; a copy
        // just running; and a READY copy that QEMU pivots (3) or cancels (4) while the
        // daemon is dead, as a pivot the daemon asked for just before its end.
        if round % 5 >= 3 {
            d.block_copy("vda", &copy_dest(&dest), &none, 0)
                .await
                .expect("copy");
            assert_eq!(next_job(&mut jobs).await, ("vda".to_owned(), 2, 3));
            q.daemon.kill9();
            let verb = if round % 5 == 3 {
                "block-job-complete"
            } else {
                "block-job-cancel"
            };
            let id = "libvirt-copy-vda";
            let r =
                probe.execute(serde_json::json!({"execute": verb, "arguments": {"device": id}}));
            assert!(r.get("return").is_some(), "{verb}: {r}");
            while probe.execute(serde_json::json!({"execute": "query-block-jobs"}))["return"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            q.daemon = q
                .daemon
                .restart_builder()
                .spawn(&q.bus)
                .await
                .expect("restart");
            kills += 1;
        }
        let d2 = d.clone();
        let call = match round % 5 {
            3 | 4 => tokio::spawn(async move { d2.get_block_job_info("vda", 0).await.map(|_| ()) }),
            0 => {
                let x = copy_dest(&dest);
                tokio::spawn(async move { d2.block_copy("vda", &x, &HashMap::new(), 0).await })
            }
            phase => {
                d.block_copy("vda", &copy_dest(&dest), &none, 0)
                    .await
                    .expect("copy");
                if phase == 1 {
                    assert_eq!(next_job(&mut jobs).await, ("vda".to_owned(), 2, 3));
                    tokio::spawn(async move { d2.block_job_abort("vda", 2).await })
                } else {
                    tokio::spawn(async move { d2.get_block_job_info("vda", 0).await.map(|_| ()) })
                }
            }
        };
        let (_, daemon) = support::kill_during(q.daemon, &q.bus, delay, call).await;
        q.daemon = daemon;
        kills += 1;
        let d = domain(&q.conn, &path).await;
        // Let a copy the restart found running reach READY and pivot it.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while d.get_block_job_info("vda", 0).await.expect("info").0 == 2 {
            if d.block_job_abort("vda", 2).await.is_ok() {
                continue;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "round {round}: copy never ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let live = d.get_xml_desc(0).await.expect("xml");
        let blocks = probe.execute(serde_json::json!({"execute": "query-block"}));
        let file = blocks["return"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|b| b.pointer("/inserted/file").and_then(|f| f.as_str()))
            .unwrap_or_default()
            .to_owned();
        if !live.contains(&format!("file='{file}'")) {
            broken.push(format!(
                "round {round}: QEMU reads {file}, the XML says {live}"
            ));
        }
        // Nothing left of copies that were undone or pivoted away.
        let nodes = probe.execute(serde_json::json!(
            {"execute": "query-named-block-nodes", "arguments": {"flat": true}}
        ));
        let ours: Vec<&str> = nodes["return"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n.get("node-name").and_then(|v| v.as_str()))
            .filter(|n| n.starts_with("libvirt-"))
            .collect();
        if ours.len() != 2 {
            broken.push(format!("round {round}: block nodes {ours:?}"));
        }
        if file == dest.display().to_string() {
            pivoted += 1;
        } else {
            kept += 1;
        }
        // The nodes the definition names are QEMU's.
        let mut jobs = d.receive_block_job().await.expect("subscribe");
        match d.block_pull("vda", 0, 0).await {
            Ok(()) => {
                let _ = next_job(&mut jobs).await;
            }
            Err(e) => broken.push(format!("round {round}: pull after restart: {e}")),
        }
    }
    eprintln!(
        "{rounds} rounds, {kills} kills during copies and pivots: {pivoted} pivoted, {kept} kept the old disk; {}",
        support::verdict(&broken)
    );
    assert!(broken.is_empty(), "{broken:?}");
    domain(&q.conn, &path)
        .await
        .destroy(0)
        .await
        .expect("destroy");
}
