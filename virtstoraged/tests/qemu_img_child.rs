//! A qemu-img the daemon runs into a temporary file dies with the daemon: after a
//! kill -9 in the middle of a qcow2 clone (qemu-img convert of 1 GiB of data, stopped
//! with SIGSTOP so that it cannot finish on its own), no qemu-img of that pool is left
//! running, and the restarted daemon lists the clone either whole or not at all.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use common::harness::{Daemon, TestBus};
use common::proxies::storage::{StorageConnectProxy, StoragePoolProxy};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use zbus::proxy::CacheProperties;

const BIN: &str = env!("CARGO_BIN_EXE_virtstoraged");

/// qemu-img processes whose command line names a file under `dir`.
fn qemu_imgs_in(dir: &Path) -> Vec<u32> {
    let dir = dir.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<String> = raw
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            args.first().is_some_and(|a| a.ends_with("qemu-img"))
                && args.iter().any(|a| a.contains(&dir))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_img_dies_with_the_daemon() {
    let target = tempfile::tempdir().expect("tempdir");
    // 1 GiB of data that is not zeros, so that qemu-img copies all of it.
    let source = target.path().join("data.img");
    {
        let mut f = std::fs::File::create(&source).expect("create");
        let block = vec![0xa5u8; 1 << 20];
        for _ in 0..1024 {
            f.write_all(&block).expect("write");
        }
        f.sync_all().expect("sync");
    }
    let bus = TestBus::start().expect("bus");
    let mut daemon = Daemon::builder(BIN, "virtstoraged")
        .spawn(&bus)
        .await
        .expect("virtstoraged");
    let conn = bus.connection().await.expect("conn");
    let sc = StorageConnectProxy::new(&conn).await.expect("proxy");
    let pool_xml = format!(
        "<pool type='dir'><name>img</name><target><path>{}</path></target></pool>",
        target.path().display()
    );
    let path = sc
        .storage_pool_create_xml(&pool_xml, 0)
        .await
        .expect("pool");
    let pool = StoragePoolProxy::builder(&conn)
        .path(path)
        .expect("path")
        .cache_properties(CacheProperties::No)
        .build()
        .await
        .expect("pool proxy");
    let key = source.to_string_lossy().into_owned();

    let clone_xml = "<volume><name>clone.qcow2</name><capacity unit='G'>1</capacity>\
                     <target><format type='qcow2'/></target></volume>";
    let call = {
        let pool = pool.clone();
        let key = key.clone();
        tokio::spawn(async move { pool.storage_vol_create_xml_from(clone_xml, &key, 0).await })
    };
    // Kill the daemon as soon as its qemu-img runs.
    let since = Instant::now();
    let running = loop {
        let pids = qemu_imgs_in(target.path());
        if !pids.is_empty() {
            break pids;
        }
        assert!(
            !call.is_finished() && since.elapsed() < Duration::from_secs(30),
            "the clone ended before its qemu-img could be seen"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    // Stopped, it cannot finish on its own: only the daemon's death can end it now.
    for &pid in &running {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGSTOP);
    }
    daemon.kill9();
    let gone = Instant::now();
    while !qemu_imgs_in(target.path()).is_empty() && gone.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let left = qemu_imgs_in(target.path());
    for &pid in &left {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
    assert!(
        left.is_empty(),
        "qemu-img {running:?} of the killed daemon still runs as {left:?}"
    );

    // The restarted daemon: the clone is whole or absent, and a new one works.
    let _daemon = daemon.restart_builder().spawn(&bus).await.expect("restart");
    pool.refresh(0).await.expect("refresh");
    let files: Vec<String> = std::fs::read_dir(target.path())
        .expect("read dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        files.iter().all(|n| !n.starts_with('.')),
        "temporary files left after the refresh: {files:?}"
    );
    let volumes = pool.list_storage_volumes(0).await.expect("list").len();
    let clone = target.path().join("clone.qcow2");
    if clone.exists() {
        // Whole: the rename happens only after qemu-img has finished.
        let check = std::process::Command::new("qemu-img")
            .args(["check", "-q", "-f", "qcow2"])
            .arg(&clone)
            .status()
            .expect("qemu-img check");
        assert!(
            check.success(),
            "a listed clone that qemu-img check refuses"
        );
        assert_eq!(volumes, 2, "the clone is on disk but not listed");
    } else {
        assert_eq!(volumes, 1, "only the source is there");
        pool.storage_vol_create_xml_from(clone_xml, &key, 0)
            .await
            .expect("clone after the restart");
    }
    drop(call);
}
