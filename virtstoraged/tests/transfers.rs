//! Uploads and downloads against stalled, short, vanishing and unusable clients: no
//! other call waits on a client, Delete stops a transfer, and a failed upload leaves
//! the volume as it was.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use common::harness::{Daemon, TestBus};
use common::proxies::storage::{
    StorageConnectProxy, StoragePoolProxy, StorageVolProxy, StorageVolTransferProxy,
};
use zbus::proxy::CacheProperties;
use zbus::zvariant::{Fd, OwnedObjectPath};

mod support;

const BIN: &str = env!("CARGO_BIN_EXE_virtstoraged");
const MIB: usize = 1 << 20;

/// A daemon with the started dir pool `p`. Fields drop in order: proxies, daemon, bus.
struct Pool {
    pp: StoragePoolProxy<'static>,
    c: zbus::Connection,
    target: PathBuf,
    _daemon: Daemon,
    _bus: TestBus,
}

async fn pool() -> anyhow::Result<Pool> {
    let bus = TestBus::start()?;
    let daemon = Daemon::builder(BIN, "virtstoraged").spawn(&bus).await?;
    let c = bus.connection().await?;
    let conn = StorageConnectProxy::new(&c).await?;
    let target = daemon.dirs.root.path().join("p");
    let xml = format!(
        "<pool type='dir'><name>p</name><target><path>{}</path></target></pool>",
        target.display()
    );
    let p = conn.storage_pool_create_xml(&xml, 1).await?;
    let pp = support::pool_proxy(&c, &p).await?;
    Ok(Pool {
        pp,
        c,
        target,
        _daemon: daemon,
        _bus: bus,
    })
}

impl Pool {
    /// Creates the raw volume `name` of `mib` MiB: its path, proxy and transfer proxy.
    async fn vol(
        &self,
        name: &str,
        mib: usize,
    ) -> anyhow::Result<(
        OwnedObjectPath,
        StorageVolProxy<'static>,
        StorageVolTransferProxy<'static>,
    )> {
        let xml =
            format!("<volume><name>{name}</name><capacity unit='M'>{mib}</capacity></volume>");
        let path = self.pp.storage_vol_create_xml(&xml, 0).await?;
        let v = StorageVolProxy::builder(&self.c)
            .path(path.clone())?
            .cache_properties(CacheProperties::No)
            .build()
            .await?;
        let t = StorageVolTransferProxy::builder(&self.c)
            .path(path.clone())?
            .cache_properties(CacheProperties::No)
            .build()
            .await?;
        Ok((path, v, t))
    }

    /// Staged copies left in the pool folder (there must be none after a transfer).
    fn leftovers(&self) -> anyhow::Result<Vec<String>> {
        Ok(std::fs::read_dir(&self.target)?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect())
    }
}

/// A client that writes `first` bytes of 0x5a now, and the rest (0xa5) or nothing
/// (it then closes its end: the client went away) when told.
struct Feeder {
    go: std::sync::mpsc::Sender<bool>,
    thread: std::thread::JoinHandle<()>,
}

fn feeder(first: usize, rest: usize) -> anyhow::Result<(OwnedFd, Feeder)> {
    let (rd, wr) = nix::unistd::pipe()?;
    let (go, go_rx) = std::sync::mpsc::channel::<bool>();
    let thread = std::thread::spawn(move || {
        let mut w = File::from(wr);
        let _ = w.write_all(&vec![0x5a; first]);
        if go_rx.recv() == Ok(true) {
            // Fails with EPIPE when the daemon gave up on the transfer: expected.
            let _ = w.write_all(&vec![0xa5; rest]);
        }
    });
    Ok((rd, Feeder { go, thread }))
}

impl Feeder {
    fn finish(self, send_rest: bool) {
        let _ = self.go.send(send_rest);
        let _ = self.thread.join();
    }
}

async fn wait_for_bytes(t: &StorageVolTransferProxy<'_>, n: u64) -> anyhow::Result<()> {
    while t.transfer_bytes().await? < n {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Guards a hang only: nothing here is expected to take long.
async fn in_time<T>(f: impl std::future::Future<Output = T>) -> anyhow::Result<T> {
    Ok(tokio::time::timeout(Duration::from_secs(60), f).await?)
}

/// While an Upload's client has sent part and then nothing, other volumes of the same
/// pool are created, deleted, listed and read, and the pool's properties read; all of
/// them complete before the upload does, which then finishes with every byte.
#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_upload_blocks_no_other_call() -> anyhow::Result<()> {
    let s = pool().await?;
    let (_, _, vt) = s.vol("v.img", 4).await?;
    let (other, ov, _) = s.vol("other.img", 1).await?;
    let (rd, feed) = feeder(MIB, MIB)?;
    let order = Mutex::new(Vec::<&str>::new());
    let done = |what: &'static str| order.lock().unwrap().push(what);
    let upload = async {
        let r = vt.upload(Fd::from(rd.as_fd()), 0, 2 * MIB as u64, 0).await;
        done("upload");
        r
    };
    let others = async {
        wait_for_bytes(&vt, MIB as u64).await?;
        let (new, _, _) = s.vol("new.img", 1).await?;
        done("create");
        assert!(ov.get_xml_desc(0).await?.contains("<name>other.img</name>"));
        done("read other");
        ov.delete(0).await?;
        done("delete other");
        let vols = s.pp.list_storage_volumes(0).await?;
        assert!(vols.contains(&new) && !vols.contains(&other));
        done("list");
        assert!(s.pp.active().await? && s.pp.name().await? == "p");
        assert_eq!(s.pp.get_info().await?.0, 2);
        done("pool properties");
        // Only now does the client send the rest.
        let _ = feed.go.send(true);
        anyhow::Ok(())
    };
    let (up, others) = in_time(async { tokio::join!(upload, others) }).await?;
    others?;
    up?;
    let _ = feed.thread.join();
    assert_eq!(
        *order.lock().unwrap(),
        [
            "create",
            "read other",
            "delete other",
            "list",
            "pool properties",
            "upload"
        ],
        "every call completed before the stalled upload"
    );
    let data = std::fs::read(s.target.join("v.img"))?;
    assert!(data[..MIB].iter().all(|b| *b == 0x5a));
    assert!(data[MIB..2 * MIB].iter().all(|b| *b == 0xa5));
    assert!(data[2 * MIB..].iter().all(|b| *b == 0));
    assert!(s.leftovers()?.is_empty(), "{:?}", s.leftovers()?);
    Ok(())
}

/// Delete of a volume whose Upload is stalled answers at once and stops the upload,
/// whose caller is told why; likewise for a Download whose client reads nothing. No
/// staged copy is left behind.
#[tokio::test(flavor = "multi_thread")]
async fn delete_aborts_the_transfer_of_its_volume() -> anyhow::Result<()> {
    let s = pool().await?;
    let (_, vv, vt) = s.vol("v.img", 4).await?;
    let (rd, feed) = feeder(MIB, MIB)?;
    let order = Mutex::new(Vec::<&str>::new());
    let done = |what: &'static str| order.lock().unwrap().push(what);
    let upload = async {
        let r = vt.upload(Fd::from(rd.as_fd()), 0, 2 * MIB as u64, 0).await;
        done("upload");
        r
    };
    let delete = async {
        wait_for_bytes(&vt, MIB as u64).await?;
        let r = vv.delete(0).await;
        done("delete");
        anyhow::Ok(r?)
    };
    let (up, del) = in_time(async { tokio::join!(upload, delete) }).await?;
    // Nobody reads the pipe any more: the client's next write fails at once.
    drop(rd);
    feed.finish(true);
    del?;
    let err = up.unwrap_err().to_string();
    assert!(
        err.contains("operation failed: volume 'v.img' was deleted during the upload"),
        "{err}"
    );
    // Both ended while the client still held its pipe open and sent nothing (the feed
    // finishes only below): Delete did not wait for the client. Which reply comes
    // first is up to the scheduler: the aborted upload needs no lock Delete holds.
    let mut ended = order.lock().unwrap().clone();
    ended.sort_unstable();
    assert_eq!(ended, ["delete", "upload"]);
    assert!(!s.target.join("v.img").exists());
    assert!(s.leftovers()?.is_empty(), "{:?}", s.leftovers()?);

    // A download into a pipe nobody reads fills the pipe and waits.
    let (_, wv, wt) = s.vol("w.img", 8).await?;
    let (_rd, wr) = nix::unistd::pipe()?;
    let download = async {
        let r = wt.download(Fd::from(wr.as_fd()), 0, 0, 0).await;
        drop(wr);
        r
    };
    let delete = async {
        wait_for_bytes(&wt, 1).await?;
        anyhow::Ok(wv.delete(0).await?)
    };
    let (down, del) = in_time(async { tokio::join!(download, delete) }).await?;
    del?;
    let err = down.unwrap_err().to_string();
    assert!(
        err.contains("volume 'w.img' was deleted during the download"),
        "{err}"
    );
    assert!(s.pp.list_storage_volumes(0).await?.is_empty());
    Ok(())
}

/// Fills `v` with 0x11 from a file: the content the failed uploads must leave.
async fn fill(s: &Pool, vt: &StorageVolTransferProxy<'_>, mib: usize) -> anyhow::Result<Vec<u8>> {
    let src = s.target.parent().unwrap_or(Path::new("/")).join("fill.bin");
    std::fs::write(&src, vec![0x11u8; mib * MIB])?;
    vt.upload(Fd::from(File::open(&src)?.as_fd()), 0, 0, 0)
        .await?;
    Ok(std::fs::read(s.target.join("v.img"))?)
}

/// An upload that gets fewer bytes than announced, or reads from an fd that cannot be
/// read (write-only, a pipe's write end, a directory), fails with the reason and
/// leaves the volume as it was; an empty pipe with length 0 is an empty upload (as in
/// libvirt, 0 means "until EOF") and changes nothing either.
#[tokio::test(flavor = "multi_thread")]
async fn short_or_unreadable_uploads_change_nothing() -> anyhow::Result<()> {
    let s = pool().await?;
    let (_, _, vt) = s.vol("v.img", 4).await?;
    let before = fill(&s, &vt, 4).await?;
    let unchanged = |what: &str| -> anyhow::Result<()> {
        let now = std::fs::read(s.target.join("v.img"))?;
        anyhow::ensure!(now == before, "{what}: the volume changed");
        anyhow::ensure!(s.leftovers()?.is_empty(), "{what}: {:?}", s.leftovers()?);
        Ok(())
    };

    // 1 MiB of the announced 2, then EOF.
    let (rd, wr) = nix::unistd::pipe()?;
    let client = std::thread::spawn(move || File::from(wr).write_all(&vec![0x22; MIB]));
    let err = vt.upload(Fd::from(rd.as_fd()), 0, 2 * MIB as u64, 0).await;
    let err = err.unwrap_err().to_string();
    assert!(
        err.contains(
            "operation failed: the upload into 'v.img' ended after 1048576 of 2097152 bytes"
        ),
        "{err}"
    );
    let _ = client.join();
    unchanged("short pipe")?;

    // Nothing at all from an empty pipe, with a length.
    let (rd, wr) = nix::unistd::pipe()?;
    drop(wr);
    let err = vt.upload(Fd::from(rd.as_fd()), 0, MIB as u64, 0).await;
    assert!(err
        .unwrap_err()
        .to_string()
        .contains("ended after 0 of 1048576"));
    unchanged("empty pipe with a length")?;

    // A short regular file.
    let short = s
        .target
        .parent()
        .unwrap_or(Path::new("/"))
        .join("short.bin");
    std::fs::write(&short, vec![0x33u8; 1000])?;
    let err = vt
        .upload(Fd::from(File::open(&short)?.as_fd()), 5, 4000, 0)
        .await;
    assert!(err
        .unwrap_err()
        .to_string()
        .contains("ended after 1000 of 4000"));
    unchanged("short file")?;

    // Fds that cannot be read, with length 0 ("until EOF"): never an empty success.
    let wronly = File::create(s.target.parent().unwrap_or(Path::new("/")).join("w.bin"))?;
    let err = vt.upload(Fd::from(wronly.as_fd()), 0, 0, 0).await;
    let err = err.unwrap_err().to_string();
    assert!(
        err.contains("invalid argument: the file descriptor is not open for reading"),
        "{err}"
    );
    unchanged("write-only file")?;
    let (_rd, wr) = nix::unistd::pipe()?;
    let err = vt.upload(Fd::from(wr.as_fd()), 0, 0, 0).await;
    assert!(err
        .unwrap_err()
        .to_string()
        .contains("not open for reading"));
    unchanged("write end of a pipe")?;
    let dir = File::open(&s.target)?;
    let err = vt.upload(Fd::from(dir.as_fd()), 0, 0, 0).await;
    let err = err.unwrap_err().to_string();
    assert!(err.contains("is a directory"), "{err}");
    unchanged("directory")?;

    // Length 0 from an empty pipe: an empty upload, as libvirt's empty stream.
    let (rd, wr) = nix::unistd::pipe()?;
    drop(wr);
    vt.upload(Fd::from(rd.as_fd()), 0, 0, 0).await?;
    unchanged("empty pipe, length 0")?;
    assert_eq!(vt.transfer_bytes().await?, 0);
    Ok(())
}

/// A client that goes away half-way (it closes its end) fails its upload at once; the
/// volume is as before, nothing is left, and the volume is free for the next upload.
#[tokio::test(flavor = "multi_thread")]
async fn a_vanishing_client_frees_everything() -> anyhow::Result<()> {
    let s = pool().await?;
    let (_, vv, vt) = s.vol("v.img", 4).await?;
    let before = fill(&s, &vt, 4).await?;
    let (rd, feed) = feeder(MIB, MIB)?;
    let upload = vt.upload(Fd::from(rd.as_fd()), 0, 3 * MIB as u64, 0);
    let vanish = async {
        wait_for_bytes(&vt, MIB as u64).await?;
        // While it runs, the volume is in use: resize is refused, not queued.
        let err = vv.resize(8 * MIB as u64, 0).await.unwrap_err().to_string();
        anyhow::ensure!(err.contains("volume 'v.img' is still in use."), "{err}");
        let _ = feed.go.send(false);
        anyhow::Ok(())
    };
    let (up, vanish) = in_time(async { tokio::join!(upload, vanish) }).await?;
    drop(rd);
    let _ = feed.thread.join();
    vanish?;
    assert!(up
        .unwrap_err()
        .to_string()
        .contains("ended after 1048576 of 3145728"));
    assert_eq!(std::fs::read(s.target.join("v.img"))?, before);
    assert!(s.leftovers()?.is_empty(), "{:?}", s.leftovers()?);
    assert_eq!(vt.transfer_bytes().await?, 0);
    // Free again: a whole upload goes through and replaces the content.
    let src = s.target.parent().unwrap_or(Path::new("/")).join("new.bin");
    std::fs::write(&src, vec![0x44u8; 4 * MIB])?;
    vt.upload(Fd::from(File::open(&src)?.as_fd()), 0, 0, 0)
        .await?;
    assert_eq!(
        std::fs::read(s.target.join("v.img"))?,
        vec![0x44u8; 4 * MIB]
    );
    Ok(())
}
