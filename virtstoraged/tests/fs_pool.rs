//! The `fs` pool on a real loop device: build formats it, start mounts it, a kill -9
//! of the daemon keeps it mounted and adopted, destroy unmounts, delete removes the
//! target. The loop device and mount are removed also when the test fails.

use std::path::{Path, PathBuf};
use std::process::Command;

use common::event::StoragePoolEvent;
use common::harness::{Daemon, TestBus};
use common::proxies::storage::StorageConnectProxy;

mod support;
use support::{events_n, pool_proxy};

const BIN: &str = env!("CARGO_BIN_EXE_virtstoraged");

/// A loop device over a sparse image; detached (after unmounting `target`) on drop.
struct LoopDev {
    dev: PathBuf,
    target: PathBuf,
}

impl LoopDev {
    fn new(image: &Path, size: u64, target: &Path) -> anyhow::Result<LoopDev> {
        std::fs::File::create(image)?.set_len(size)?;
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(image)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(LoopDev {
            dev: PathBuf::from(String::from_utf8(out.stdout)?.trim()),
            target: target.to_path_buf(),
        })
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        while is_mounted(&self.target) {
            if !Command::new("umount")
                .arg(&self.target)
                .status()
                .is_ok_and(|s| s.success())
            {
                break;
            }
        }
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

fn mount_source(target: &Path) -> Option<String> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let target = target.to_str()?;
    text.lines().rev().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        (pre.split(' ').nth(4)? == target).then(|| post.split(' ').nth(1).map(str::to_owned))?
    })
}

fn is_mounted(target: &Path) -> bool {
    mount_source(target).is_some()
}

fn fs_type(dev: &Path) -> String {
    let out = Command::new("blkid")
        .args(["-p", "-o", "value", "-s", "TYPE"])
        .arg(dev)
        .output()
        .expect("blkid");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn fs_pool_on_a_loop_device() -> anyhow::Result<()> {
    let bus = TestBus::start()?;
    let mut daemon = Daemon::builder(BIN, "virtstoraged").spawn(&bus).await?;
    let root = daemon.dirs.root.path().to_path_buf();
    let target = root.join("mnt");
    let lo = LoopDev::new(&root.join("fs.img"), 64 << 20, &target)?;

    let c = bus.connection().await?;
    let conn = StorageConnectProxy::new(&c).await?;
    let mut events = conn.receive_storage_pool_event().await?;
    let xml = format!(
        "<pool type='fs'><name>fspool</name><source><device path='{}'/>\
         <format type='ext4'/></source><target><path>{}</path></target></pool>",
        lo.dev.display(),
        target.display()
    );
    let p = conn.storage_pool_define_xml(&xml, 0).await?;
    let pp = pool_proxy(&c, &p).await?;

    // Build with NO_OVERWRITE (4) formats the empty device; a second one refuses.
    pp.build(4).await?;
    assert_eq!(fs_type(&lo.dev), "ext4");
    assert!(target.is_dir());
    let e = pp.build(4).await.expect_err("second build");
    assert!(e.to_string().contains("already built"), "{e}");

    pp.create(0).await?;
    assert!(pp.active().await?);
    assert_eq!(mount_source(&target).as_deref(), lo.dev.to_str());
    let v = pp
        .storage_vol_create_xml(
            "<volume><name>disk1.img</name><capacity unit='M'>8</capacity></volume>",
            0,
        )
        .await?;
    assert_eq!(std::fs::metadata(target.join("disk1.img"))?.len(), 8 << 20);

    // kill -9: the mount stays, the restarted daemon adopts it with its volume.
    daemon.kill9();
    assert!(is_mounted(&target));
    let _daemon = daemon.restart_builder().spawn(&bus).await?;
    let pp = pool_proxy(&c, &p).await?;
    assert!(pp.active().await?);
    assert_eq!(pp.list_storage_volumes(0).await?, vec![v]);
    assert_eq!(mount_source(&target).as_deref(), lo.dev.to_str());
    let mut after = StorageConnectProxy::new(&c)
        .await?
        .receive_storage_pool_event()
        .await?;

    pp.destroy().await?;
    assert!(!is_mounted(&target));
    pp.delete(0).await?;
    assert!(!target.exists());

    assert_eq!(
        events_n(&mut events, 3).await?,
        [
            StoragePoolEvent::Defined,
            StoragePoolEvent::Created,
            StoragePoolEvent::Started
        ]
    );
    assert_eq!(
        events_n(&mut after, 2).await?,
        [StoragePoolEvent::Stopped, StoragePoolEvent::Deleted]
    );
    Ok(())
}
