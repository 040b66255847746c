//! The `logical` pool on a real loop device with LVM: build (pvcreate + vgcreate),
//! start, kill -9 + adoption, destroy, delete (vgremove + pvremove), with the events.
//! Logical volumes need the kernel's device-mapper; where it is missing (this test
//! reads /proc/misc) the volume part checks that creation fails with LVM's
//! reason and changes nothing, and says so on stderr.

use std::path::{Path, PathBuf};
use std::process::Command;

use common::event::StoragePoolEvent;
use common::harness::{Daemon, TestBus};
use common::proxies::storage::StorageConnectProxy;

mod support;
use support::{events_n, pool_proxy};

const BIN: &str = env!("CARGO_BIN_EXE_virtstoraged");

fn lvm(args: &[&str]) -> std::process::Output {
    Command::new("lvm")
        .args(args)
        .env("LVM_SUPPRESS_FD_WARNINGS", "1")
        .output()
        .expect("lvm")
}

fn vg_exists(vg: &str) -> bool {
    lvm(&["vgs", "--", vg]).status.success()
}

/// A loop device for one test VG; on drop the VG (only ours, by its unique name), the
/// PV label and the loop device are removed.
struct LvmLoop {
    dev: PathBuf,
    vg: String,
}

impl LvmLoop {
    fn new(image: &Path) -> anyhow::Result<LvmLoop> {
        std::fs::File::create(image)?.set_len(64 << 20)?;
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .arg(image)
            .output()?;
        anyhow::ensure!(out.status.success(), "losetup failed");
        let nonce = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .subsec_nanos();
        Ok(LvmLoop {
            dev: PathBuf::from(String::from_utf8(out.stdout)?.trim()),
            vg: format!("vrstest_{}_{nonce}", std::process::id()),
        })
    }
}

impl Drop for LvmLoop {
    fn drop(&mut self) {
        if vg_exists(&self.vg) {
            lvm(&["vgremove", "-q", "-f", "--", &self.vg]);
        }
        if let Some(d) = self.dev.to_str() {
            lvm(&["pvremove", "-q", "-ff", "-y", "--", d]);
        }
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn logical_pool_on_a_loop_device() -> anyhow::Result<()> {
    let bus = TestBus::start()?;
    let mut daemon = Daemon::builder(BIN, "virtstoraged").spawn(&bus).await?;
    let lo = LvmLoop::new(&daemon.dirs.root.path().join("pv.img"))?;
    let c = bus.connection().await?;
    let conn = StorageConnectProxy::new(&c).await?;
    let mut events = conn.receive_storage_pool_event().await?;

    // Bad input first: a VG name that would be an option changes nothing.
    let bad = format!(
        "<pool type='logical'><name>lvbad</name><source><device path='{}'/>\
         <name>-ff</name></source><target><path>/dev/x</path></target></pool>",
        lo.dev.display()
    );
    let bp = conn.storage_pool_define_xml(&bad, 0).await?;
    let bpp = pool_proxy(&c, &bp).await?;
    let e = bpp.build(0).await.expect_err("hostile VG name");
    assert!(e.to_string().contains("invalid volume group name"), "{e}");
    bpp.undefine().await?;
    assert!(!lvm(&["pvs", "--", lo.dev.to_str().unwrap_or("")])
        .status
        .success());

    let xml = format!(
        "<pool type='logical'><name>lvpool</name><source><device path='{}'/>\
         <name>{}</name><format type='lvm2'/></source><target><path>/dev/{}</path></target></pool>",
        lo.dev.display(),
        lo.vg,
        lo.vg
    );
    let p = conn.storage_pool_define_xml(&xml, 0).await?;
    let pp = pool_proxy(&c, &p).await?;
    pp.build(0).await?;
    assert!(vg_exists(&lo.vg));
    // FindStoragePoolSources lists the new VG with its PV (other VGs may be listed too).
    let found = conn.find_storage_pool_sources("logical", "", 0).await?;
    let doc = common::xml::parse_root(&found, "sources")?;
    let ours = doc
        .children_named("source")
        .find(|s| s.child_text("name").as_deref() == Some(lo.vg.as_str()))
        .ok_or_else(|| anyhow::anyhow!("VG {} not in {found}", lo.vg))?;
    let dev = lo.dev.to_string_lossy();
    assert!(
        ours.children_named("device")
            .any(|d| d.get_attr("path") == Some(dev.as_ref())),
        "{found}"
    );
    let e = conn.find_storage_pool_sources("dir", "", 0).await;
    assert!(e.is_err_and(|e| e.to_string().contains("no source discovery")));
    let e = conn.find_storage_pool_sources("nosuch", "", 0).await;
    assert!(e.is_err_and(|e| e.to_string().contains("unknown storage pool type")));
    pp.create(0).await?;
    let (state, cap, alloc, avail) = pp.get_info().await?;
    assert_eq!(state, 2, "running");
    assert!(cap > 32 << 20 && cap <= 64 << 20, "VG size {cap}");
    assert_eq!(alloc + avail, cap);
    let mut seen = events_n(&mut events, 5).await?;
    seen.retain(|e| *e != StoragePoolEvent::Undefined); // the hostile pool's
    assert_eq!(
        seen,
        [
            StoragePoolEvent::Defined,
            StoragePoolEvent::Defined,
            StoragePoolEvent::Created,
            StoragePoolEvent::Started
        ]
    );

    let vol_xml = "<volume><name>lv1</name><capacity unit='M'>8</capacity></volume>";
    let dm = std::fs::read_to_string("/proc/misc").unwrap_or_default();
    if dm.lines().any(|l| l.trim().ends_with(" device-mapper")) {
        let v = pp.storage_vol_create_xml(vol_xml, 0).await?;
        assert_eq!(pp.list_storage_volumes(0).await?, vec![v.clone()]);
        assert_eq!(pp.get_info().await?.2, 8 << 20);
    } else {
        eprintln!(
            "device-mapper is unusable on this machine (not in /proc/misc: the kernel lacks \
             dm-mod): \
             logical volume creation is checked to fail cleanly instead"
        );
        let e = pp
            .storage_vol_create_xml(vol_xml, 0)
            .await
            .expect_err("lvcreate without device-mapper");
        assert!(e.to_string().contains("lvcreate failed"), "{e}");
        assert!(pp.list_storage_volumes(0).await?.is_empty());
    }

    // kill -9: the restarted daemon adopts the active pool.
    daemon.kill9();
    let _daemon = daemon.restart_builder().spawn(&bus).await?;
    let mut events = StorageConnectProxy::new(&c)
        .await?
        .receive_storage_pool_event()
        .await?;
    let pp = pool_proxy(&c, &p).await?;
    assert!(pp.active().await?);
    assert_eq!(pp.get_info().await?.1, cap);
    for v in pp.list_storage_volumes(0).await? {
        common::proxies::storage::StorageVolProxy::builder(&c)
            .path(v)?
            .build()
            .await?
            .delete(0)
            .await?;
    }
    pp.destroy().await?;
    pp.delete(0).await?;
    assert!(!vg_exists(&lo.vg));
    assert!(!lvm(&["pvs", "--", lo.dev.to_str().unwrap_or("")])
        .status
        .success());
    assert_eq!(
        events_n(&mut events, 2).await?,
        [StoragePoolEvent::Stopped, StoragePoolEvent::Deleted]
    );
    Ok(())
}
