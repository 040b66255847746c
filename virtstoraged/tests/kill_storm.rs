//! kill -9 storm: the daemon is killed at random points while a client churns volumes
//! (create, clone, delete, resize, upload, download) in a `dir` pool and an `fs` pool
//! whose source is an image file (the daemon attaches the loop device itself), and
//! starts, stops and refreshes the `fs` pool. After each restart: both pools defined,
//! the `dir` pool active, the `fs` pool active exactly when it is mounted (once, over
//! one loop device of its image), every volume a successful call made is listed with
//! its content and size, a call cut short left either nothing or a whole volume, and
//! no staged file is left behind.
//!
//! `VIRT_CHAOS_ROUNDS` sets the number of kills (10 by default), `VIRT_CHAOS_SEED` the
//! seed of the churn and kill times.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::harness::{Daemon, TestBus, TestDirs};
use common::proxies::storage::{
    StorageConnectProxy, StoragePoolProxy, StorageVolProxy, StorageVolTransferProxy,
};
use zbus::proxy::CacheProperties;
use zbus::zvariant::Fd;

mod support;

const BIN: &str = env!("CARGO_BIN_EXE_virtstoraged");
const MIB: u64 = 1 << 20;
/// Uploads write this many bytes of one tag value at offset 0.
const TAG_LEN: usize = 64 << 10;
const NAMES: usize = 5;

/// xorshift64*: enough randomness for choosing operations, reproducible by seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// What may be true of one volume: a call that got its reply makes one value certain,
/// a call cut by the kill adds the value it would have made.
#[derive(Clone, Debug, Default)]
struct Vol {
    exists: BTreeSet<bool>,
    tags: BTreeSet<u8>,
    caps: BTreeSet<u64>,
}

impl Vol {
    fn gone() -> Vol {
        Vol {
            exists: [false].into(),
            ..Vol::default()
        }
    }
    fn certain(&self) -> bool {
        self.exists.len() == 1 && self.tags.len() <= 1 && self.caps.len() <= 1
    }
    fn surely_there(&self) -> bool {
        self.certain() && self.exists.contains(&true)
    }
    fn surely_gone(&self) -> bool {
        self.exists.len() == 1 && self.exists.contains(&false)
    }
}

#[derive(Clone, Debug)]
struct Model {
    /// Volumes by pool ("d", "f") and name.
    vols: BTreeMap<(&'static str, String), Vol>,
    /// Whether the fs pool may be active.
    f_active: BTreeSet<bool>,
}

/// Unmounts the fs pool and detaches every loop device over its image, also when the
/// test fails; the folders are removed after.
struct Cleanup {
    target: PathBuf,
    image: PathBuf,
    _dirs: Arc<TestDirs>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        while mounts_at(&self.target) > 0 {
            if !Command::new("umount")
                .arg(&self.target)
                .status()
                .is_ok_and(|s| s.success())
            {
                break;
            }
        }
        for dev in loops_over(&self.image) {
            let _ = Command::new("losetup").arg("-d").arg(dev).status();
        }
    }
}

/// How many mounts sit on `target`.
fn mounts_at(target: &Path) -> usize {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let t = target.to_string_lossy();
    text.lines()
        .filter(|l| l.split(' ').nth(4) == Some(t.as_ref()))
        .count()
}

/// The loop devices attached over `image`.
fn loops_over(image: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let image = image.to_string_lossy().into_owned();
    rd.flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let b = std::fs::read_to_string(e.path().join("loop/backing_file")).ok()?;
            (b.trim_end() == image).then(|| PathBuf::from(format!("/dev/{name}")))
        })
        .collect()
}

/// Files whose name starts with a dot (staged copies, half-made volumes) under `dir`.
fn dot_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with('.') && n != ".." && n != ".")
                .collect()
        })
        .unwrap_or_default()
}

fn rounds() -> usize {
    std::env::var("VIRT_CHAOS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
        .max(1)
}

fn seed() -> u64 {
    std::env::var("VIRT_CHAOS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20261201)
        | 1
}

struct Client {
    c: zbus::Connection,
    d: StoragePoolProxy<'static>,
    f: StoragePoolProxy<'static>,
}

impl Client {
    fn pool(&self, p: &str) -> &StoragePoolProxy<'static> {
        if p == "d" {
            &self.d
        } else {
            &self.f
        }
    }

    async fn vol(
        &self,
        p: &str,
        name: &str,
    ) -> zbus::Result<(StorageVolProxy<'static>, StorageVolTransferProxy<'static>)> {
        let path = self.pool(p).storage_vol_lookup_by_name(name).await?;
        let v = StorageVolProxy::builder(&self.c)
            .path(path.clone())?
            .cache_properties(CacheProperties::No)
            .build()
            .await?;
        let t = StorageVolTransferProxy::builder(&self.c)
            .path(path)?
            .cache_properties(CacheProperties::No)
            .build()
            .await?;
        Ok((v, t))
    }
}

fn vol_xml(name: &str, cap: u64) -> String {
    format!("<volume><name>{name}</name><capacity>{cap}</capacity></volume>")
}

/// One operation: what it changes in the model if it completes, and its call.
enum Op {
    Create(&'static str, String),
    Clone(&'static str, String, String),
    Delete(&'static str, String),
    Resize(&'static str, String, u64),
    Upload(&'static str, String, u8),
    Download(&'static str, String),
    Refresh(&'static str),
    StopF,
    StartF,
}

/// Picks an operation the model says must succeed.
fn pick(m: &Model, rng: &mut Rng) -> Op {
    let f_on = m.f_active == BTreeSet::from([true]);
    let f_off = m.f_active == BTreeSet::from([false]);
    loop {
        let pool: &'static str = if f_on && rng.below(2) == 0 { "f" } else { "d" };
        let name = format!("v{}", rng.below(NAMES as u64));
        let v = m
            .vols
            .get(&(pool, name.clone()))
            .cloned()
            .unwrap_or_else(Vol::gone);
        let op = match rng.below(10) {
            0 | 1 if v.surely_gone() => Op::Create(pool, name),
            2 | 3 if v.surely_gone() => {
                let src = format!("v{}", rng.below(NAMES as u64));
                let ok = m
                    .vols
                    .get(&(pool, src.clone()))
                    .is_some_and(Vol::surely_there);
                if !ok {
                    continue;
                }
                Op::Clone(pool, src, name)
            }
            4 if v.surely_there() => Op::Delete(pool, name),
            5 if v.surely_there() && v.caps.iter().all(|c| *c < 4 * MIB) => {
                let to = v.caps.iter().next().copied().unwrap_or(MIB) + MIB;
                Op::Resize(pool, name, to)
            }
            6 if v.surely_there() => Op::Upload(pool, name, 1 + rng.below(254) as u8),
            7 if v.surely_there() => Op::Download(pool, name),
            8 => Op::Refresh(pool),
            9 if f_on && rng.below(3) == 0 => Op::StopF,
            9 if f_off => Op::StartF,
            _ => continue,
        };
        return op;
    }
}

/// How a call ended.
enum Outcome {
    Done,
    /// A Download completed with every byte of its range equal to this tag.
    Read(u8),
    /// The call failed: the daemon was killed under it, or refused it.
    Failed(String),
}

/// Runs `op`; Err on a wrong answer (a download of mixed or missing bytes).
async fn run(cl: &Client, op: &Op) -> Result<Outcome, String> {
    let r: zbus::Result<Option<u8>> = async {
        match op {
            Op::Create(p, n) => cl
                .pool(p)
                .storage_vol_create_xml(&vol_xml(n, MIB), 0)
                .await
                .map(|_| None),
            Op::Clone(p, src, n) => {
                let (sv, _) = cl.vol(p, src).await?;
                let key = sv.key().await?;
                cl.pool(p)
                    .storage_vol_create_xml_from(&vol_xml(n, MIB), &key, 0)
                    .await
                    .map(|_| None)
            }
            Op::Delete(p, n) => cl.vol(p, n).await?.0.delete(0).await.map(|_| None),
            Op::Resize(p, n, to) => cl.vol(p, n).await?.0.resize(*to, 0).await.map(|_| None),
            Op::Upload(p, n, tag) => {
                let (_, t) = cl.vol(p, n).await?;
                let src = tempfile::tempfile().map_err(|e| zbus::Error::Failure(e.to_string()))?;
                src.write_all_at(&vec![*tag; TAG_LEN], 0)
                    .map_err(|e| zbus::Error::Failure(e.to_string()))?;
                t.upload(Fd::from(src.as_fd()), 0, TAG_LEN as u64, 0)
                    .await
                    .map(|_| None)
            }
            Op::Download(p, n) => {
                let (_, t) = cl.vol(p, n).await?;
                let dst = tempfile::tempfile().map_err(|e| zbus::Error::Failure(e.to_string()))?;
                t.download(Fd::from(dst.as_fd()), 0, TAG_LEN as u64, 0)
                    .await?;
                let mut buf = vec![0u8; TAG_LEN];
                if dst.read_exact_at(&mut buf, 0).is_err() {
                    return Ok(Some(MIXED));
                }
                let first = buf[0];
                Ok(Some(if buf.iter().all(|b| *b == first) {
                    first
                } else {
                    MIXED
                }))
            }
            Op::Refresh(p) => cl.pool(p).refresh(0).await.map(|_| None),
            Op::StopF => cl.f.destroy().await.map(|_| None),
            Op::StartF => cl.f.create(0).await.map(|_| None),
        }
    }
    .await;
    match r {
        Ok(None) => Ok(Outcome::Done),
        Ok(Some(MIXED)) => Err(format!("{}: short or mixed bytes", describe(op))),
        Ok(Some(tag)) => Ok(Outcome::Read(tag)),
        Err(e) => Ok(Outcome::Failed(e.to_string())),
    }
}

/// Not a tag: uploads write 1..=254 and new volumes read 0.
const MIXED: u8 = 255;

/// Updates the model with the effect of `op`: certain when `done`, possible if not.
fn apply(m: &mut Model, op: &Op, done: bool) {
    let set = |m: &mut Model, p: &'static str, n: &str, f: &dyn Fn(&Vol) -> Vol| {
        let key = (p, n.to_owned());
        let old = m.vols.get(&key).cloned().unwrap_or_else(Vol::gone);
        let new = f(&old);
        let v = if done {
            new
        } else {
            Vol {
                exists: &old.exists | &new.exists,
                tags: &old.tags | &new.tags,
                caps: &old.caps | &new.caps,
            }
        };
        m.vols.insert(key, v);
    };
    match op {
        Op::Create(p, n) => set(m, p, n, &|_| Vol {
            exists: [true].into(),
            tags: [0].into(),
            caps: [MIB].into(),
        }),
        Op::Clone(p, src, n) => {
            let s = m.vols.get(&(*p, src.clone())).cloned().unwrap_or_default();
            set(m, p, n, &|_| Vol {
                exists: [true].into(),
                tags: s.tags.clone(),
                caps: [MIB].into(),
            })
        }
        Op::Delete(p, n) => set(m, p, n, &|_| Vol::gone()),
        Op::Resize(p, n, to) => set(m, p, n, &|v| Vol {
            caps: [*to].into(),
            ..v.clone()
        }),
        Op::Upload(p, n, tag) => set(m, p, n, &|v| Vol {
            tags: [*tag].into(),
            ..v.clone()
        }),
        Op::StopF | Op::StartF => {
            let to = matches!(op, Op::StartF);
            if done {
                m.f_active = [to].into();
            } else {
                m.f_active.insert(to);
            }
        }
        Op::Download(..) | Op::Refresh(_) => {}
    }
}

/// Churns until `killed`; returns the operations that failed while the daemon lived.
async fn churn(
    cl: Arc<Client>,
    model: Arc<Mutex<Model>>,
    killed: Arc<AtomicBool>,
    mut rng: Rng,
) -> Vec<String> {
    let mut wrong = Vec::new();
    while !killed.load(Ordering::SeqCst) {
        let op = pick(&model.lock().expect("model lock"), &mut rng);
        let r = tokio::time::timeout(Duration::from_secs(30), run(&cl, &op)).await;
        let dead = killed.load(Ordering::SeqCst);
        let mut m = model.lock().expect("model lock");
        match r {
            Ok(Ok(Outcome::Done)) => apply(&mut m, &op, true),
            Ok(Ok(Outcome::Read(tag))) => {
                if let Op::Download(p, n) = &op {
                    let v = m.vols.get(&(*p, n.clone())).cloned().unwrap_or_default();
                    if !v.tags.contains(&tag) {
                        wrong.push(format!(
                            "download of {p}/{n} read tag {tag}, not {:?}",
                            v.tags
                        ));
                    }
                }
            }
            Ok(Err(e)) => wrong.push(e),
            Ok(Ok(Outcome::Failed(e))) => {
                apply(&mut m, &op, false);
                if !dead {
                    wrong.push(format!(
                        "{} failed while the daemon ran: {e}",
                        describe(&op)
                    ));
                }
                break;
            }
            Err(_) => {
                apply(&mut m, &op, false);
                wrong.push(format!("{} hung", describe(&op)));
                break;
            }
        }
    }
    wrong
}

fn describe(op: &Op) -> String {
    match op {
        Op::Create(p, n) => format!("create {p}/{n}"),
        Op::Clone(p, s, n) => format!("clone {p}/{s} to {n}"),
        Op::Delete(p, n) => format!("delete {p}/{n}"),
        Op::Resize(p, n, c) => format!("resize {p}/{n} to {c}"),
        Op::Upload(p, n, t) => format!("upload {t} into {p}/{n}"),
        Op::Download(p, n) => format!("download {p}/{n}"),
        Op::Refresh(p) => format!("refresh {p}"),
        Op::StopF => "destroy f".into(),
        Op::StartF => "create f".into(),
    }
}

struct Setup {
    d_target: PathBuf,
    f_target: PathBuf,
    image: PathBuf,
    dirs: Arc<TestDirs>,
}

/// Checks the restarted daemon against the model and the kernel, then makes the
/// model certain where the daemon's answer is valid.
async fn check(cl: &Client, s: &Setup, m: &mut Model) -> anyhow::Result<Vec<String>> {
    let mut bad = Vec::new();
    let conn = StorageConnectProxy::new(&cl.c).await?;
    let mut names: Vec<String> = Vec::new();
    for p in conn.list_storage_pools(0).await? {
        names.push(support::pool_proxy(&cl.c, &p).await?.name().await?);
    }
    names.sort();
    if names != ["d", "f"] {
        bad.push(format!("pools listed: {names:?}"));
    }
    if !cl.d.active().await? {
        bad.push("dir pool inactive".into());
    }
    let f_active = cl.f.active().await?;
    if !m.f_active.contains(&f_active) {
        bad.push(format!(
            "fs pool active={f_active}, expected one of {:?}",
            m.f_active
        ));
    }
    let want = usize::from(f_active);
    let mounts = mounts_at(&s.f_target);
    let loops = loops_over(&s.image);
    if mounts != want || loops.len() != want {
        bad.push(format!(
            "fs pool active={f_active} with {mounts} mount(s) and loop devices {loops:?}"
        ));
    }
    let status: BTreeSet<String> = std::fs::read_dir(s.dirs.runtime.join("storage"))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let want_status: BTreeSet<String> = if f_active {
        ["d.xml".to_owned(), "f.xml".to_owned()].into()
    } else {
        ["d.xml".to_owned()].into()
    };
    if status != want_status {
        bad.push(format!("runtime status files {status:?}"));
    }
    m.f_active = [f_active].into();
    let mut pools = vec![("d", s.d_target.clone())];
    if f_active && mounts == 1 {
        pools.push(("f", s.f_target.clone()));
    }
    for (p, target) in pools {
        let dots = dot_files(&target);
        if !dots.is_empty() {
            bad.push(format!("pool {p} keeps staged files {dots:?}"));
        }
        let mut listed = BTreeSet::new();
        for path in cl.pool(p).list_storage_volumes(0).await? {
            let v = StorageVolProxy::builder(&cl.c)
                .path(path)?
                .cache_properties(CacheProperties::No)
                .build()
                .await?;
            let name = v.name().await?;
            if name == "lost+found" {
                continue;
            }
            if !listed.insert(name.clone()) {
                bad.push(format!("{p}/{name} listed twice"));
            }
        }
        for i in 0..NAMES {
            let n = format!("v{i}");
            let key = (p, n.clone());
            let v = m.vols.get(&key).cloned().unwrap_or_else(Vol::gone);
            let there = listed.contains(&n);
            if !v.exists.contains(&there) {
                bad.push(format!("{p}/{n} listed={there}, expected {:?}", v.exists));
            }
            if !there {
                m.vols.insert(key, Vol::gone());
                continue;
            }
            let file = target.join(&n);
            let size = std::fs::metadata(&file).map(|md| md.len()).unwrap_or(0);
            let mut head = vec![0u8; TAG_LEN];
            let read = std::fs::File::open(&file).and_then(|f| f.read_exact_at(&mut head, 0));
            let tag = head[0];
            if read.is_err() || head.iter().any(|b| *b != tag) || !v.tags.contains(&tag) {
                bad.push(format!(
                    "{p}/{n} holds a partial or wrong content (tags {:?})",
                    v.tags
                ));
            }
            if !v.caps.contains(&size) {
                bad.push(format!(
                    "{p}/{n} is {size} bytes, expected one of {:?}",
                    v.caps
                ));
            }
            m.vols.insert(
                key,
                Vol {
                    exists: [true].into(),
                    tags: [tag].into(),
                    caps: [size].into(),
                },
            );
        }
        for n in &listed {
            if !n.starts_with('v') || n.len() != 2 {
                bad.push(format!("{p}/{n}: a volume nobody made"));
            }
        }
    }
    let scratch = s.dirs.state.join("storage/upload");
    if !dot_files(&scratch).is_empty()
        || std::fs::read_dir(&scratch).is_ok_and(|mut r| r.next().is_some())
    {
        bad.push("upload scratch files left".into());
    }
    Ok(bad)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_storm_loses_duplicates_and_leaks_nothing() -> anyhow::Result<()> {
    let dirs = TestDirs::new()?;
    let root = dirs.root.path().to_path_buf();
    let s = Setup {
        d_target: root.join("d"),
        f_target: root.join("f"),
        image: root.join("fs.img"),
        dirs: dirs.clone(),
    };
    let _cleanup = Cleanup {
        target: s.f_target.clone(),
        image: s.image.clone(),
        _dirs: dirs.clone(),
    };
    std::fs::File::create(&s.image)?.set_len(64 * MIB)?;
    let bus = TestBus::start()?;
    let mut daemon = Daemon::builder(BIN, "virtstoraged")
        .dirs(dirs.clone())
        .spawn(&bus)
        .await?;
    let c = bus.connection().await?;
    let conn = StorageConnectProxy::new(&c).await?;
    let dp = conn
        .storage_pool_define_xml(
            &format!(
                "<pool type='dir'><name>d</name><target><path>{}</path></target></pool>",
                s.d_target.display()
            ),
            0,
        )
        .await?;
    let fp = conn
        .storage_pool_define_xml(
            &format!(
                "<pool type='fs'><name>f</name><source><device path='{}'/>\
                 <format type='ext4'/></source><target><path>{}</path></target></pool>",
                s.image.display(),
                s.f_target.display()
            ),
            0,
        )
        .await?;
    let cl = Arc::new(Client {
        d: support::pool_proxy(&c, &dp).await?,
        f: support::pool_proxy(&c, &fp).await?,
        c: c.clone(),
    });
    cl.d.build(0).await?;
    cl.d.create(0).await?;
    cl.d.set_autostart(true).await?;
    cl.f.build(4).await?;
    cl.f.create(0).await?;
    assert_eq!(mounts_at(&s.f_target), 1);
    assert_eq!(loops_over(&s.image).len(), 1);

    let model = Arc::new(Mutex::new(Model {
        vols: BTreeMap::new(),
        f_active: [true].into(),
    }));
    let n = rounds();
    let mut rng = Rng(seed());
    eprintln!("seed {}", seed());
    let mut broken = Vec::new();
    let mut cut = 0;
    for i in 0..n {
        let killed = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(churn(
            cl.clone(),
            model.clone(),
            killed.clone(),
            Rng(rng.next() | 1),
        ));
        let delay = Duration::from_millis(rng.below(400));
        tokio::time::sleep(delay).await;
        killed.store(true, Ordering::SeqCst);
        daemon.kill9();
        let wrong = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .map_err(|_| anyhow::anyhow!("round {i}: the churn hung after the kill"))??;
        daemon = daemon.restart_builder().spawn(&bus).await?;
        let mut m = model.lock().expect("model lock").clone();
        let uncertain =
            m.vols.values().filter(|v| !v.certain()).count() + usize::from(m.f_active.len() > 1);
        cut += usize::from(uncertain > 0);
        let mut problems = wrong;
        problems.extend(check(&cl, &s, &mut m).await?);
        *model.lock().expect("model lock") = m.clone();
        let vols = m.vols.values().filter(|v| v.surely_there()).count();
        eprintln!(
            "round {i}: kill after {delay:?}, {uncertain} uncertain, fs active={:?}, {vols} volumes: {}",
            m.f_active,
            if problems.is_empty() { "ok".to_string() } else { problems.join("; ") }
        );
        if !problems.is_empty() {
            broken.push(format!("round {i}: {}", problems.join("; ")));
        }
    }
    eprintln!(
        "{n} kills: {} broken, {cut} cut a change short",
        broken.len()
    );
    // Leave nothing mounted behind the daemon's back: stop the fs pool through it.
    if cl.f.active().await? {
        cl.f.destroy().await?;
    }
    assert_eq!(mounts_at(&s.f_target), 0);
    assert!(
        loops_over(&s.image).is_empty(),
        "destroy left the loop device"
    );
    drop(daemon);
    assert!(
        broken.is_empty(),
        "{} of {n} rounds broken:\n{}",
        broken.len(),
        broken.join("\n")
    );
    Ok(())
}
