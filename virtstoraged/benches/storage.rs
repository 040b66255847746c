//! Storage figures through the D-Bus API (printed, never asserted): 1000 raw volumes
//! created and listed, 100 qcow2 volumes, a pool start, 1 GiB upload/download against
//! `cat` of the same file, and the daemon's idle RSS.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::process::{Command, Stdio};
use std::time::Instant;

use common::harness::{Daemon, TestBus};
use common::proxies::storage::{StorageConnectProxy, StoragePoolProxy, StorageVolTransferProxy};
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
    let t = Instant::now();
    pool.refresh(0).await?;
    println!(
        "pool refresh (1100 volumes, nothing changed): {:?}",
        t.elapsed()
    );

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
    let vol = StorageVolTransferProxy::builder(&c)
        .path(vp.as_ref())?
        .build()
        .await?;
    // This machine's memory is noisy: the host takes back freed guest pages (virtio
    // free page reporting) and ext4 here discards freed blocks, so one 1 GiB write can
    // take anywhere from 0.4 s to 3 s whatever writes it. Each step therefore runs in
    // several rounds, each round in a new shuffled order (a step's time depends on what
    // ran just before it), each step after a `sync`; medians and bests of the same run
    // are compared with `cat`'s.
    const ROUNDS: usize = 7;
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); Step::ALL.len()];
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
    for _ in 0..ROUNDS {
        let mut order: Vec<usize> = (0..Step::ALL.len()).collect();
        for k in (1..order.len()).rev() {
            // xorshift64: a fixed sequence, so runs are comparable.
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            order.swap(k, (seed % (k as u64 + 1)) as usize);
        }
        for i in order {
            // SAFETY: sync(2) has no arguments and cannot fail.
            unsafe { libc::sync() };
            times[i].push(Step::ALL[i].run(&vol, &src, &root).await?);
        }
    }
    let stats = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        (v[v.len() / 2], v[0])
    };
    let (cat_med, cat_best) = stats(&times[0]);
    let (sync_med, sync_best) = stats(&times[1]);
    println!("1 GiB transfers, {ROUNDS} rounds: median (best) time, MiB/s, and x the reference");
    for (step, t) in Step::ALL.iter().zip(&times) {
        let (med, best) = stats(t);
        let (rmed, rbest, rname) = if step.syncs() {
            (sync_med, sync_best, "cat + fsync")
        } else {
            (cat_med, cat_best, "cat")
        };
        println!(
            "  {:<38} {med:.3} s ({best:.3} s)  {:>5.0} MiB/s  {:.2} x {rname} ({:.2} x best)",
            step.name(),
            1024.0 / med,
            rmed / med,
            rbest / best,
        );
    }
    println!("RSS after the run: {} KiB", rss_kib(daemon.pid));
    Ok(())
}

/// One timed 1 GiB step of the transfer comparison.
#[derive(Clone, Copy)]
enum Step {
    Cat,
    CatSync,
    UploadFile,
    UploadPipe,
    DownloadFile,
    DownloadPipe,
}

impl Step {
    const ALL: [Step; 6] = [
        Step::Cat,
        Step::CatSync,
        Step::UploadFile,
        Step::UploadPipe,
        Step::DownloadFile,
        Step::DownloadPipe,
    ];

    fn name(self) -> &'static str {
        match self {
            Step::Cat => "cat into a new file",
            Step::CatSync => "cat into a new file + fsync",
            Step::UploadFile => "upload from a file (fsync included)",
            Step::UploadPipe => "upload from a pipe (fsync included)",
            Step::DownloadFile => "download into a new file",
            Step::DownloadPipe => "download into a pipe",
        }
    }

    /// Uploads are answered once the data is on the disk; they compare with cat + fsync.
    fn syncs(self) -> bool {
        matches!(self, Step::CatSync | Step::UploadFile | Step::UploadPipe)
    }

    /// Runs the step; returns its time in seconds.
    async fn run(
        self,
        vol: &StorageVolTransferProxy<'_>,
        src: &std::path::Path,
        root: &std::path::Path,
    ) -> anyhow::Result<f64> {
        let out_path = root.join("out.bin");
        let t = Instant::now();
        match self {
            Step::Cat | Step::CatSync => {
                let out = File::create(&out_path)?;
                Command::new("cat")
                    .arg(src)
                    .stdout(Stdio::from(out.try_clone()?))
                    .status()?;
                if matches!(self, Step::CatSync) {
                    out.sync_all()?;
                }
            }
            Step::UploadFile => {
                let f = File::open(src)?;
                vol.upload(Fd::from(f.as_fd()), 0, 0, 0).await?;
            }
            Step::UploadPipe => {
                let mut child = Command::new("cat")
                    .arg(src)
                    .stdout(Stdio::piped())
                    .spawn()?;
                let pipe = child
                    .stdout
                    .take()
                    .ok_or_else(|| anyhow::anyhow!("cat has no stdout"))?;
                vol.upload(Fd::from(pipe.as_fd()), 0, 0, 0).await?;
                drop(pipe);
                child.wait()?;
            }
            Step::DownloadFile => {
                let out = File::create(&out_path)?;
                vol.download(Fd::from(out.as_fd()), 0, 0, 0).await?;
            }
            Step::DownloadPipe => {
                let mut child = Command::new("cat")
                    .stdin(Stdio::piped())
                    .stdout(Stdio::null())
                    .spawn()?;
                let pipe = child
                    .stdin
                    .take()
                    .ok_or_else(|| anyhow::anyhow!("cat has no stdin"))?;
                vol.download(Fd::from(pipe.as_fd()), 0, 0, 0).await?;
                drop(pipe);
                child.wait()?;
            }
        }
        let secs = t.elapsed().as_secs_f64();
        if out_path.exists() {
            std::fs::remove_file(&out_path)?;
        }
        Ok(secs)
    }
}
