//! Storage figures through the D-Bus API (printed, never asserted): 1000 raw volumes
//! created and listed, 100 qcow2 volumes, a pool start, 1 GiB upload/download against
//! `cat` of the same file, and the daemon's idle RSS.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::time::Instant;

use common::harness::{Daemon, TestBus};
use common::proxies::storage::{StorageConnectProxy, StoragePoolProxy, StorageVolProxy};
use zbus::zvariant::Fd;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let bus = TestBus::start()?;
    let daemon = Daemon::builder(env!("CARGO_BIN_EXE_virtstoraged"), "virtstoraged")
        .spawn(&bus)
        .await?;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    println!("idle RSS: {} KiB", rss_kib(daemon.pid));
    let c = bus.connection().await?;
    let conn = StorageConnectProxy::new(&c).await?;
    let root = daemon.dirs.root.path().to_owned();
    let xml = |n: &str| {
        format!(
            "<pool type='dir'><name>{n}</name><target><path>{}</path></target></pool>",
            root.join(n).display()
        )
    };
    let p = conn.storage_pool_define_xml(&xml("bench"), 0).await?;
    let pool = StoragePoolProxy::builder(&c)
        .path(p.as_ref())?
        .build()
        .await?;
    pool.build(0).await?;
    let t = Instant::now();
    pool.create(0).await?;
    println!("pool start (empty): {:?}", t.elapsed());

    let t = Instant::now();
    for i in 0..1000 {
        let v = format!("<volume><name>r{i}.img</name><capacity unit='M'>1</capacity></volume>");
        pool.storage_vol_create_xml(&v, 0).await?;
    }
    println!("1000 raw volumes created: {:?}", t.elapsed());
    let t = Instant::now();
    let n = pool.list_storage_volumes(0).await?.len();
    println!("list {n} volumes: {:?}", t.elapsed());
    let t = Instant::now();
    for i in 0..100 {
        let v = format!(
            "<volume><name>q{i}.qcow2</name><capacity unit='G'>1</capacity>\
             <target><format type='qcow2'/></target></volume>"
        );
        pool.storage_vol_create_xml(&v, 0).await?;
    }
    println!("100 qcow2 volumes created: {:?}", t.elapsed());
    pool.destroy().await?;
    let t = Instant::now();
    pool.create(0).await?;
    println!("pool start (1100 volumes): {:?}", t.elapsed());

    // 1 GiB of non-zero data, so sparseness detection cannot skip the work.
    let src = root.join("src.bin");
    {
        let mut f = File::create(&src)?;
        let chunk: Vec<u8> = (0..1 << 20).map(|i| (i % 251 + 1) as u8).collect();
        for _ in 0..1024 {
            f.write_all(&chunk)?;
        }
        f.sync_all()?;
    }
    let vp = pool
        .storage_vol_create_xml(
            "<volume><name>big.img</name><capacity unit='G'>1</capacity></volume>",
            0,
        )
        .await?;
    let vol = StorageVolProxy::builder(&c)
        .path(vp.as_ref())?
        .build()
        .await?;
    let mib = |d: std::time::Duration| 1024.0 / d.as_secs_f64();
    // Two rounds, cat and our transfers interleaved, each started with no dirty pages
    // left (sync) so one step's writeback does not land in the next one's time.
    for round in 1..=2 {
        // SAFETY: sync(2) has no arguments and cannot fail.
        unsafe { libc::sync() };
        let t = Instant::now();
        let out = File::create(root.join("cat.bin"))?;
        Command::new("cat")
            .arg(&src)
            .stdout(Stdio::from(out.try_clone()?))
            .status()?;
        let cat = t.elapsed();
        out.sync_all()?;
        let cat_sync = t.elapsed();
        drop(out);
        std::fs::remove_file(root.join("cat.bin"))?;
        println!(
            "round {round}: cat 1 GiB {cat:?} ({:.0} MiB/s); cat + fsync {cat_sync:?}",
            mib(cat)
        );

        unsafe { libc::sync() };
        let f = File::open(&src)?;
        let t = Instant::now();
        vol.upload(Fd::from(f.as_fd()), 0, 0, 0).await?;
        let up = t.elapsed();
        println!(
            "round {round}: upload 1 GiB from a file (fsync included) {up:?} ({:.0} MiB/s, \
             {:.2} x cat, {:.2} x cat + fsync)",
            mib(up),
            cat.as_secs_f64() / up.as_secs_f64(),
            cat_sync.as_secs_f64() / up.as_secs_f64()
        );

        unsafe { libc::sync() };
        let mut child = Command::new("cat")
            .arg(&src)
            .stdout(Stdio::piped())
            .spawn()?;
        let pipe = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("cat has no stdout"))?;
        let t = Instant::now();
        vol.upload(Fd::from(pipe.as_fd()), 0, 0, 0).await?;
        let up_pipe = t.elapsed();
        drop(pipe);
        child.wait()?;
        println!(
            "round {round}: upload 1 GiB from a pipe (fsync included) {up_pipe:?} \
             ({:.0} MiB/s, {:.2} x cat + fsync)",
            mib(up_pipe),
            cat_sync.as_secs_f64() / up_pipe.as_secs_f64()
        );

        unsafe { libc::sync() };
        let out = File::create(root.join("down.bin"))?;
        let t = Instant::now();
        vol.download(Fd::from(out.as_fd()), 0, 0, 0).await?;
        let down = t.elapsed();
        drop(out);
        std::fs::remove_file(root.join("down.bin"))?;
        println!(
            "round {round}: download 1 GiB into a file {down:?} ({:.0} MiB/s, {:.2} x cat)",
            mib(down),
            cat.as_secs_f64() / down.as_secs_f64()
        );

        unsafe { libc::sync() };
        let mut child = Command::new("cat")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()?;
        let pipe = child
            .stdin
            .take()
            .ok_or_else(|| anyhow::anyhow!("cat has no stdin"))?;
        let t = Instant::now();
        vol.download(Fd::from(pipe.as_fd()), 0, 0, 0).await?;
        let down_pipe = t.elapsed();
        drop(pipe);
        child.wait()?;
        println!(
            "round {round}: download 1 GiB into a pipe {down_pipe:?} ({:.0} MiB/s, {:.2} x cat)",
            mib(down_pipe),
            cat.as_secs_f64() / down_pipe.as_secs_f64()
        );
    }
    println!("RSS after the run: {} KiB", rss_kib(daemon.pid));
    Ok(())
}
