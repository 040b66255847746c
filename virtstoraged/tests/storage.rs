//! virtstoraged through its D-Bus API, against a private dbus-daemon and real files.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::event::StoragePoolEvent;
use common::harness::{Daemon, TestBus};
use common::proxies::storage::{
    StorageConnectProxy, StoragePoolOfVolumeProxy, StoragePoolProxy, StorageVolProxy,
    StorageVolTransferProxy,
};
use zbus::proxy::CacheProperties;
use zbus::zvariant::{Fd, OwnedObjectPath};

mod support;
use support::events_n;

const BIN: &str = env!("CARGO_BIN_EXE_virtstoraged");

/// `qemu-img check` passes on the image and `qemu-img info --output=json` describes it.
fn qemu_img_checked(path: &str) -> anyhow::Result<serde_json::Value> {
    let check = std::process::Command::new("qemu-img")
        .args(["check", "-q", "-f", "qcow2", path])
        .output()?;
    anyhow::ensure!(
        check.status.success(),
        "qemu-img check {path}: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let info = std::process::Command::new("qemu-img")
        .args(["info", "--output=json", "-f", "qcow2", path])
        .output()?;
    anyhow::ensure!(info.status.success(), "qemu-img info {path}");
    Ok(serde_json::from_slice(&info.stdout)?)
}

fn pool_xml(name: &str, target: &Path) -> String {
    format!(
        "<pool type='dir'><name>{name}</name><target><path>{}</path>\
         <permissions><mode>0750</mode></permissions></target></pool>",
        target.display()
    )
}

async fn pool(
    c: &zbus::Connection,
    p: &OwnedObjectPath,
) -> anyhow::Result<StoragePoolProxy<'static>> {
    Ok(StoragePoolProxy::builder(c)
        .path(p.clone())?
        .cache_properties(CacheProperties::No)
        .build()
        .await?)
}

async fn vol(
    c: &zbus::Connection,
    p: &OwnedObjectPath,
) -> anyhow::Result<StorageVolProxy<'static>> {
    Ok(StorageVolProxy::builder(c)
        .path(p.clone())?
        .cache_properties(CacheProperties::No)
        .build()
        .await?)
}

/// Deterministic pseudo-random bytes (xorshift), written in chunks.
fn random_file(path: &Path, len: usize) -> anyhow::Result<()> {
    let mut f = File::create(path)?;
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = len;
    while left > 0 {
        for b in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            b.copy_from_slice(&x.to_le_bytes()[..b.len()]);
        }
        let n = left.min(buf.len());
        f.write_all(&buf[..n])?;
        left -= n;
    }
    Ok(())
}

fn same_content(a: &Path, b: &Path) -> anyhow::Result<bool> {
    let (mut fa, mut fb) = (File::open(a)?, File::open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let na = fa.read(&mut ba)?;
        let mut nb = 0;
        while nb < na {
            let k = fb.read(&mut bb[nb..na])?;
            if k == 0 {
                return Ok(false);
            }
            nb += k;
        }
        if ba[..na] != bb[..na] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(fb.read(&mut bb)? == 0);
        }
    }
}

/// A virtstoraged on a private bus with the dir pool `images` defined, built and
/// started. Fields drop in order: proxies, then the daemon, then its bus.
struct Images {
    pp: StoragePoolProxy<'static>,
    conn: StorageConnectProxy<'static>,
    c: zbus::Connection,
    p: OwnedObjectPath,
    target: PathBuf,
    daemon: Daemon,
    _bus: TestBus,
}

async fn images() -> anyhow::Result<Images> {
    let bus = TestBus::start()?;
    let daemon = Daemon::builder(BIN, "virtstoraged").spawn(&bus).await?;
    let c = bus.connection().await?;
    let conn = StorageConnectProxy::new(&c).await?;
    let target = daemon.dirs.root.path().join("images");
    let p = conn
        .storage_pool_define_xml(&pool_xml("images", &target), 0)
        .await?;
    let pp = pool(&c, &p).await?;
    pp.build(0).await?;
    pp.create(0).await?;
    Ok(Images {
        pp,
        conn,
        c,
        p,
        target,
        daemon,
        _bus: bus,
    })
}

impl Images {
    /// Creates the raw volume `name` of `mib` MiB; its path and proxy.
    async fn raw(
        &self,
        name: &str,
        mib: u64,
    ) -> anyhow::Result<(OwnedObjectPath, StorageVolProxy<'static>)> {
        let path = self
            .pp
            .storage_vol_create_xml(
                &format!("<volume><name>{name}</name><capacity unit='M'>{mib}</capacity></volume>"),
                0,
            )
            .await?;
        let v = vol(&self.c, &path).await?;
        Ok((path, v))
    }

    async fn transfer(
        &self,
        v: &OwnedObjectPath,
    ) -> anyhow::Result<StorageVolTransferProxy<'static>> {
        Ok(StorageVolTransferProxy::builder(&self.c)
            .path(v.clone())?
            .cache_properties(CacheProperties::No)
            .build()
            .await?)
    }
}

/// A dir pool from define to undefine: build makes the target with its mode, the
/// events say DEFINED, CREATED (by the build), STARTED; it is found and listed; a
/// deleted volume is gone; destroy, delete (the target goes) and undefine.
#[tokio::test(flavor = "multi_thread")]
async fn dir_pool_lifecycle_with_events() -> anyhow::Result<()> {
    let bus = TestBus::start()?;
    let daemon = Daemon::builder(BIN, "virtstoraged").spawn(&bus).await?;
    let c = bus.connection().await?;
    let conn = StorageConnectProxy::new(&c).await?;
    let mut events = conn.receive_storage_pool_event().await?;
    let target = daemon.dirs.root.path().join("images");

    let p = conn
        .storage_pool_define_xml(&pool_xml("images", &target), 0)
        .await?;
    let pp = pool(&c, &p).await?;
    pp.build(0).await?;
    assert_eq!(
        std::fs::metadata(&target)?.permissions().mode() & 0o777,
        0o750
    );
    pp.create(0).await?;
    assert!(pp.active().await?);
    assert_eq!(
        events_n(&mut events, 3).await?,
        [
            StoragePoolEvent::Defined,
            StoragePoolEvent::Created, // by the build
            StoragePoolEvent::Started
        ]
    );
    assert_eq!(conn.storage_pool_lookup_by_name("images").await?, p);
    assert_eq!(conn.list_storage_pools(2).await?, vec![p.clone()]);
    assert!(conn.list_storage_pools(1).await?.is_empty());

    // Delete a volume; destroy, delete and undefine the pool.
    for name in ["keep.img", "gone.img"] {
        pp.storage_vol_create_xml(
            &format!("<volume><name>{name}</name><capacity unit='M'>1</capacity></volume>"),
            0,
        )
        .await?;
    }
    let gone = pp.storage_vol_lookup_by_name("gone.img").await?;
    vol(&c, &gone).await?.delete(0).await?;
    assert!(pp.storage_vol_lookup_by_name("gone.img").await.is_err());
    for v in pp.list_storage_volumes(0).await? {
        vol(&c, &v).await?.delete(0).await?;
    }
    pp.destroy().await?;
    assert!(!pp.active().await?);
    pp.delete(0).await?;
    assert!(!target.exists());
    pp.undefine().await?;
    assert!(conn.list_storage_pools(0).await?.is_empty());
    Ok(())
}

/// raw, qcow2 with a backing store, an empty qcow2 (checked with qemu-img), and a
/// clone; volumes are found by path and their pool by volume.
#[tokio::test(flavor = "multi_thread")]
async fn raw_qcow2_backed_and_cloned_volumes() -> anyhow::Result<()> {
    let s = images().await?;
    let (c, conn, pp, p, target) = (&s.c, &s.conn, &s.pp, &s.p, &s.target);
    let (base, bv) = s.raw("base.img", 64).await?;
    let base_path = bv.path().await?;
    assert_eq!(base_path, target.join("base.img").to_string_lossy());
    let by_vol = StoragePoolOfVolumeProxy::new(c).await?;
    assert_eq!(
        by_vol.storage_pool_lookup_by_volume(&base.as_ref()).await?,
        *p
    );
    let bogus = zbus::zvariant::ObjectPath::try_from("/org/libvirt/QEMU/storagevol/_2fnope")?;
    let e = by_vol
        .storage_pool_lookup_by_volume(&bogus)
        .await
        .expect_err("unknown volume");
    assert!(e.to_string().contains("Storage volume not found"), "{e}");
    let (_, cap, alloc) = bv.get_info(0).await?;
    assert_eq!((cap, alloc), (64 << 20, 0));
    let q = pp
        .storage_vol_create_xml(
            &format!(
                "<volume><name>top.qcow2</name><capacity unit='M'>128</capacity>\
                <target><format type='qcow2'/></target><backingStore><path>{base_path}</path>\
                <format type='raw'/></backingStore></volume>"
            ),
            0,
        )
        .await?;
    let qv = vol(c, &q).await?;
    let qxml = qv.get_xml_desc(0).await?;
    assert!(
        qxml.contains("<format type='qcow2'/>") && qxml.contains(&base_path),
        "{qxml}"
    );
    let top = qemu_img_checked(&qv.path().await?)?;
    assert_eq!(top["virtual-size"], 128 << 20, "{top}");
    assert_eq!(top["backing-filename"], base_path.as_str(), "{top}");
    assert_eq!(top["backing-filename-format"], "raw", "{top}");
    let e = pp
        .storage_vol_create_xml(
            "<volume><name>empty.qcow2</name><capacity unit='G'>3</capacity>\
             <target><format type='qcow2'/></target></volume>",
            0,
        )
        .await?;
    let ev = vol(c, &e).await?;
    let empty = qemu_img_checked(&ev.path().await?)?;
    assert_eq!(empty["virtual-size"], 3u64 << 30, "{empty}");
    assert_eq!(empty["format-specific"]["data"]["compat"], "1.1", "{empty}");
    assert_eq!(ev.get_info(0).await?.1, 3 << 30);
    ev.delete(0).await?;
    let clone = pp
        .storage_vol_create_xml_from(
            "<volume><name>clone.qcow2</name><capacity unit='M'>128</capacity>\
             <target><format type='qcow2'/></target></volume>",
            &qv.key().await?,
            0,
        )
        .await?;
    assert_eq!(vol(c, &clone).await?.get_info(0).await?.1, 128 << 20);
    assert_eq!(conn.storage_vol_lookup_by_path(&base_path).await?, base);
    Ok(())
}

/// Resize: down only with SHRINK (4); up grows the file.
#[tokio::test(flavor = "multi_thread")]
async fn resize_shrinks_only_when_asked() -> anyhow::Result<()> {
    let s = images().await?;
    let (_, bv) = s.raw("base.img", 64).await?;
    let base_path = bv.path().await?;
    assert!(bv.resize(32 << 20, 0).await.is_err());
    assert_eq!(bv.get_info(0).await?.1, 64 << 20);
    bv.resize(32 << 20, 4).await?;
    assert_eq!(bv.get_info(0).await?.1, 32 << 20);
    bv.resize(96 << 20, 0).await?;
    assert_eq!(std::fs::metadata(&base_path)?.len(), 96 << 20);
    Ok(())
}

/// Upload 100 MiB of random data and download it again; an upload larger than the
/// volume writes only what fits.
#[tokio::test(flavor = "multi_thread")]
async fn upload_then_download_gives_the_same_bytes() -> anyhow::Result<()> {
    let s = images().await?;
    let (base, bv) = s.raw("base.img", 96).await?;
    let base_path = bv.path().await?;
    let src = s.daemon.dirs.root.path().join("random.bin");
    let back = s.daemon.dirs.root.path().join("back.bin");
    random_file(&src, 100 << 20)?;
    let bt = s.transfer(&base).await?;
    let f = File::open(&src)?;
    // 100 MiB do not fit the 96 MiB volume: only what fits is written.
    bt.upload(Fd::from(f.as_fd()), 0, 100 << 20, 0).await?;
    assert_eq!(std::fs::metadata(&base_path)?.len(), 96 << 20);
    bv.resize(100 << 20, 0).await?;
    let f = File::open(&src)?;
    bt.upload(Fd::from(f.as_fd()), 0, 0, 0).await?;
    let out = File::create(&back)?;
    bt.download(Fd::from(out.as_fd()), 0, 0, 0).await?;
    assert!(same_content(&src, &back)?, "downloaded data differs");
    assert_eq!(bt.transfer_bytes().await?, 0);
    Ok(())
}

/// Wipe zeroes (0) or writes random data (8) over what was uploaded; the scrub patterns,
/// trim, and any wipe of a qcow2 volume are refused with the volume untouched.
#[tokio::test(flavor = "multi_thread")]
async fn wipe_zeroes_or_randomizes_and_refuses_the_rest() -> anyhow::Result<()> {
    let s = images().await?;
    let (base, bv) = s.raw("base.img", 100).await?;
    let base_path = bv.path().await?;
    let src = s.daemon.dirs.root.path().join("random.bin");
    random_file(&src, 100 << 20)?;
    let f = File::open(&src)?;
    s.transfer(&base)
        .await?
        .upload(Fd::from(f.as_fd()), 0, 0, 0)
        .await?;
    assert!(same_content(&src, Path::new(&base_path))?, "upload differs");

    // Wipe zeroes the data.
    bv.wipe(0, 0).await?;
    let mut head = vec![0u8; 4096];
    File::open(&base_path)?.read_exact(&mut head)?;
    assert!(head.iter().all(|b| *b == 0));
    assert_eq!(
        bv.get_info(0).await?.2,
        0,
        "zeroed raw volume keeps no blocks"
    );

    // Random (8) writes every byte: fully allocated, no zero block left, not the upload.
    bv.wipe(8, 0).await?;
    // Allocation is the file's blocks (st_blocks, as libvirt): every data block, plus
    // the extent-tree block a fragmented file can take on ext4 (seen once in CI: 4 KiB).
    let allocation = bv.get_info(0).await?.2;
    assert!(
        (100 << 20..=(100 << 20) + (64 << 10)).contains(&allocation),
        "allocation {allocation} is not the whole volume"
    );
    let mut data = Vec::new();
    File::open(&base_path)?.read_to_end(&mut data)?;
    assert!(data.chunks(4096).all(|b| b.iter().any(|x| *x != 0)));
    assert!(!same_content(&src, Path::new(&base_path))?);
    // The scrub patterns and trim are refused by name, the volume untouched.
    for alg in [1u32, 2, 3, 4, 5, 6, 7, 9, 10] {
        let err = bv.wipe(alg, 0).await.unwrap_err().to_string();
        assert!(err.contains(&format!("algorithm {alg}")), "{err}");
    }
    let mut again = Vec::new();
    File::open(&base_path)?.read_to_end(&mut again)?;
    assert!(again == data, "a refused wipe changed the volume");

    let q =
        s.pp.storage_vol_create_xml(
            "<volume><name>top.qcow2</name><capacity unit='M'>128</capacity>\
             <target><format type='qcow2'/></target></volume>",
            0,
        )
        .await?;
    let qv = vol(&s.c, &q).await?;
    let err = qv.wipe(8, 0).await.unwrap_err().to_string();
    assert!(err.contains("qcow2"), "{err}");
    qemu_img_checked(&qv.path().await?)?;
    Ok(())
}

/// Path-escape names and bad XML are rejected with nothing changed.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_names_and_bad_xml_change_nothing() -> anyhow::Result<()> {
    let s = images().await?;
    let (conn, pp) = (&s.conn, &s.pp);
    s.raw("base.img", 1).await?;
    let before = pp.list_storage_volumes(0).await?;
    for name in ["../escape", "a/b", ".hidden", ".."] {
        let xml = format!("<volume><name>{name}</name><capacity>1024</capacity></volume>");
        let err = pp
            .storage_vol_create_xml(&xml, 0)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(name), "{err}");
    }
    for bad in [
        "<volume><name>x</name>",
        "<volume><name>x</name><capacity>-1</capacity></volume>",
        "<pool/>",
    ] {
        assert!(pp.storage_vol_create_xml(bad, 0).await.is_err());
        assert!(conn.storage_pool_define_xml(bad, 0).await.is_err());
    }
    assert_eq!(pp.list_storage_volumes(0).await?, before);
    assert_eq!(conn.list_storage_pools(0).await?, vec![s.p.clone()]);
    assert!(!s.daemon.dirs.root.path().join("escape").exists());
    assert_eq!(pp.get_xml_desc(0).await?.matches("<pool").count(), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn kill9_restart_keeps_pools_and_hides_half_made_volumes() -> anyhow::Result<()> {
    let bus = TestBus::start()?;
    let mut daemon = Daemon::builder(BIN, "virtstoraged").spawn(&bus).await?;
    let c = bus.connection().await?;
    let conn = StorageConnectProxy::new(&c).await?;
    let target = daemon.dirs.root.path().join("p");
    let auto_target = daemon.dirs.root.path().join("auto");
    let p = conn
        .storage_pool_define_xml(&pool_xml("p", &target), 0)
        .await?;
    let pp = pool(&c, &p).await?;
    pp.build(0).await?;
    pp.create(0).await?;
    pp.storage_vol_create_xml(
        "<volume><name>ok.img</name><capacity>4096</capacity></volume>",
        0,
    )
    .await?;
    let a = conn
        .storage_pool_define_xml(&pool_xml("auto", &auto_target), 0)
        .await?;
    let ap = pool(&c, &a).await?;
    ap.build(0).await?;
    ap.set_autostart(true).await?;
    let t = conn
        .storage_pool_create_xml(
            &pool_xml("transient", &daemon.dirs.root.path().join("t")),
            1,
        )
        .await?;

    daemon.kill9();
    // What a daemon killed mid-clone leaves behind.
    std::fs::write(target.join(".half.img.part"), b"partial")?;
    let _daemon = daemon.restart_builder().spawn(&bus).await?;

    let pp = pool(&c, &p).await?;
    assert!(pp.active().await?, "active pool stays active");
    let names: Vec<String> = {
        let mut v = Vec::new();
        for path in pp.list_storage_volumes(0).await? {
            v.push(vol(&c, &path).await?.name().await?);
        }
        v
    };
    assert_eq!(names, ["ok.img"]);
    assert!(!target.join(".half.img.part").exists());
    assert!(
        pool(&c, &a).await?.active().await?,
        "autostart pool started"
    );
    let tp = pool(&c, &t).await?;
    assert!(tp.active().await? && !tp.persistent().await?);
    Ok(())
}

/// A property read or a list never waits behind a volume transfer: an Upload whose
/// client has sent one chunk and then feeds nothing holds the pool's job while the
/// pool's and the volume's properties, the lists and the XML are read; they all answer
/// while the upload is still running, and the upload then completes.
#[tokio::test(flavor = "multi_thread")]
async fn reads_do_not_wait_behind_an_upload() -> anyhow::Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    const MIB: usize = 1 << 20;
    let bus = TestBus::start()?;
    let daemon = Daemon::builder(BIN, "virtstoraged").spawn(&bus).await?;
    let c = bus.connection().await?;
    let conn = StorageConnectProxy::new(&c).await?;
    let target = daemon.dirs.root.path().join("slow");
    let p = conn
        .storage_pool_create_xml(&pool_xml("slow", &target), 1)
        .await?;
    let pp = pool(&c, &p).await?;
    let v = pp
        .storage_vol_create_xml(
            "<volume><name>v.img</name><capacity unit='M'>4</capacity></volume>",
            0,
        )
        .await?;
    let vv = vol(&c, &v).await?;
    let vt = StorageVolTransferProxy::builder(&c)
        .path(v.as_ref())?
        .cache_properties(CacheProperties::No)
        .build()
        .await?;

    let (rd, wr) = nix::unistd::pipe()?;
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    // The client: one chunk now, the second only when the test says so.
    let feeder = std::thread::spawn(move || -> std::io::Result<()> {
        let mut w = File::from(wr);
        w.write_all(&vec![0x5a; MIB])?;
        let _ = go_rx.recv();
        w.write_all(&vec![0xa5; MIB])
    });
    let finished = AtomicBool::new(false);
    let upload = async {
        let r = vt.upload(Fd::from(rd.as_fd()), 0, 2 * MIB as u64, 0).await;
        finished.store(true, Ordering::SeqCst);
        r
    };
    let reads = async {
        // The daemon has the first chunk: the upload runs and waits for the second.
        while vt.transfer_bytes().await? < MIB as u64 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let out = (
            pp.active().await?,
            pp.name().await?,
            pp.autostart().await?,
            pp.persistent().await?,
            pp.get_xml_desc(0).await?,
            pp.list_storage_volumes(0).await?,
            conn.list_storage_pools(0).await?,
            vv.name().await?,
            vv.get_xml_desc(0).await?,
        );
        let running = !finished.load(Ordering::SeqCst);
        let _ = go_tx.send(());
        anyhow::Ok((out, running))
    };
    // Guards a hang only: each read is expected to answer at once.
    let (up, reads) = tokio::time::timeout(Duration::from_secs(60), async {
        tokio::join!(upload, reads)
    })
    .await?;
    let ((active, name, autostart, persistent, xml, vols, pools, vname, vxml), running) = reads?;
    up?;
    feeder
        .join()
        .map_err(|_| anyhow::anyhow!("feeder panicked"))??;
    assert!(
        running,
        "the upload was still running while the reads answered"
    );
    assert!(active);
    assert_eq!(name, "slow");
    assert!(!autostart);
    assert!(!persistent);
    assert!(xml.contains("<name>slow</name>"));
    assert_eq!(vols, vec![v.clone()]);
    assert_eq!(pools, vec![p.clone()]);
    assert_eq!(vname, "v.img");
    assert!(vxml.contains("<name>v.img</name>"));
    let data = std::fs::read(target.join("v.img"))?;
    assert!(data[..MIB].iter().all(|b| *b == 0x5a));
    assert!(data[MIB..2 * MIB].iter().all(|b| *b == 0xa5));
    Ok(())
}
