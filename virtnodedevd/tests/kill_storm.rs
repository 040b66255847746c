//! kill -9 storm on a copy of the fixture sysfs tree: the daemon is killed at random
//! points while a client detaches, reattaches and resets two SR-IOV VFs and creates
//! and destroys mediated devices of the GPU. The test plays the kernel (an unbind write
//! drops the device's driver link, a drivers_probe write binds it to its override or
//! its host driver, an mdev `create` write adds the device, a `remove` write takes it
//! away). After each restart every device is bound to a driver (never left unbound
//! between an unbind and a probe), to the one its override names, the one the last
//! successful call asked for (either one if the call was cut), the daemon reports that
//! driver, no rebind record is left, and the daemon lists exactly the mediated devices
//! that exist, each once: those a replied Create made and no replied Destroy removed.
//!
//! `VIRT_CHAOS_ROUNDS` sets the number of kills (10 by default), `VIRT_CHAOS_SEED` the
//! seed of the churn and kill times.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::harness::{Daemon, TestBus};
use common::proxies::nodedev::{NodeDevConnectProxy, NodeDeviceProxy};
use zbus::proxy::CacheProperties;

const BIN: &str = env!("CARGO_BIN_EXE_virtnodedevd");
const STUB: &str = "vfio-pci";
const HOST: &str = "igbvf";

/// The churned devices: name, address, folder below the tree's root.
const DEVS: [(&str, &str, &str); 2] = [
    (
        "pci_0000_03_10_0",
        "0000:03:10.0",
        "devices/pci0000:00/0000:00:01.0/0000:03:10.0",
    ),
    (
        "pci_0000_03_10_2",
        "0000:03:10.2",
        "devices/pci0000:00/0000:00:01.0/0000:03:10.2",
    ),
];

static KERNEL: Mutex<()> = Mutex::new(());

/// The GPU offering mdev types, its type, and the UUIDs the churn uses.
const GPU: &str = "devices/pci0000:00/0000:00:02.0";
const MDEV_TYPE: &str = "i915-GVTg_V5_4";
const UUIDS: [&str; 3] = [
    "7a0b1c2d-3e4f-4a5b-8c6d-7e8f9a0b1c2d",
    "8b1c2d3e-4f5a-4b6c-9d7e-8f9a0b1c2d3e",
    "9c2d3e4f-5a6b-4c7d-8e8f-9a0b1c2d3e4f",
];

fn mdev_name(uuid: &str) -> String {
    format!("mdev_{}_0000_00_02_0", uuid.replace('-', "_"))
}

/// Plays the kernel's mdev side: a UUID in the type's `create` file becomes a device
/// below the GPU; a `1` in a device's `remove` file takes it away.
fn settle_mdevs(root: &Path) -> anyhow::Result<()> {
    // One kernel: the background player and the settle after a kill take turns.
    let _k = KERNEL.lock().unwrap_or_else(|p| p.into_inner());
    let gpu = root.join(GPU);
    let trigger = gpu
        .join("mdev_supported_types")
        .join(MDEV_TYPE)
        .join("create");
    let asked = read(&trigger).trim().to_owned();
    if !asked.is_empty() {
        let dir = gpu.join(&asked);
        if !dir.exists() {
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join("uevent"), format!("MDEV_TYPE={MDEV_TYPE}\n"))?;
            std::fs::write(dir.join("remove"), "")?;
            std::os::unix::fs::symlink(
                format!("../mdev_supported_types/{MDEV_TYPE}"),
                dir.join("mdev_type"),
            )?;
            std::os::unix::fs::symlink(
                format!("../../../{GPU}/{asked}"),
                root.join("bus/mdev/devices").join(&asked),
            )?;
        }
        std::fs::write(&trigger, "")?;
    }
    for u in UUIDS {
        let dir = gpu.join(u);
        if read(&dir.join("remove")).trim() == "1" {
            std::fs::remove_file(root.join("bus/mdev/devices").join(u))?;
            std::fs::remove_dir_all(&dir)?;
        }
    }
    Ok(())
}

/// xorshift64*: reproducible by seed.
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

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// The driver a device is bound to (its `driver` link), if any.
fn bound(root: &Path, dir: &str) -> Option<String> {
    let link = std::fs::read_link(root.join(dir).join("driver")).ok()?;
    Some(link.file_name()?.to_string_lossy().into_owned())
}

/// Plays the kernel for what the daemon wrote since the last call: unbind writes drop
/// the driver link, a drivers_probe write binds the device to its override (or, with
/// none, to its host driver). The files are emptied, as the kernel keeps nothing.
fn settle(root: &Path) -> anyhow::Result<()> {
    for (_, addr, dir) in DEVS {
        if let Some(drv) = bound(root, dir) {
            let unbind = root.join("bus/pci/drivers").join(&drv).join("unbind");
            if read(&unbind).trim() == addr {
                std::fs::remove_file(root.join(dir).join("driver"))?;
                std::fs::write(&unbind, "")?;
            }
        }
    }
    let probe = root.join("bus/pci/drivers_probe");
    let asked = read(&probe).trim().to_owned();
    for (_, addr, dir) in DEVS {
        if asked == addr && bound(root, dir).is_none() {
            let ovr = read(&root.join(dir).join("driver_override"));
            let ovr = ovr.trim();
            let to = if ovr.is_empty() || ovr == "(null)" {
                HOST
            } else {
                ovr
            };
            std::os::unix::fs::symlink(
                format!("../../../../bus/pci/drivers/{to}"),
                root.join(dir).join("driver"),
            )?;
        }
    }
    std::fs::write(&probe, "")?;
    Ok(())
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Detach,
    ReAttach,
    Reset,
    Create(usize),
    Destroy(usize),
}

async fn device(c: &zbus::Connection, name: &str) -> zbus::Result<NodeDeviceProxy<'static>> {
    NodeDeviceProxy::builder(c)
        .path(common::objpath::node_device(name))?
        .cache_properties(CacheProperties::No)
        .build()
        .await
}

/// What may be true: which drivers each VF may be bound to, whether each mdev may
/// exist (one value after a call that replied, both after one the kill cut), and the
/// mdevs destroyed since the daemon last read the tree (the fixture sends no uevent,
/// so until then the daemon still lists them and refuses their UUID).
#[derive(Clone)]
struct Model {
    vfs: Vec<BTreeSet<&'static str>>,
    mdevs: Vec<BTreeSet<bool>>,
    unseen: BTreeSet<usize>,
    /// Replied calls: detach, reattach, reset, create, destroy (for the figures).
    replied: [usize; 5],
}

fn pick(m: &Model, rng: &mut Rng) -> (usize, Op) {
    loop {
        let i = rng.below(DEVS.len() as u64) as usize;
        let u = rng.below(UUIDS.len() as u64) as usize;
        let certain = m.mdevs[u].len() == 1;
        let op = match rng.below(7) {
            0 | 1 => Op::Detach,
            2 | 3 => Op::ReAttach,
            4 => Op::Reset,
            5 if certain && m.mdevs[u].contains(&false) && !m.unseen.contains(&u) => Op::Create(u),
            6 if certain && m.mdevs[u].contains(&true) => Op::Destroy(u),
            _ => continue,
        };
        return (i, op);
    }
}

async fn churn(
    c: zbus::Connection,
    root: PathBuf,
    model: Arc<Mutex<Model>>,
    killed: Arc<AtomicBool>,
    mut rng: Rng,
) -> Vec<String> {
    let mut wrong = Vec::new();
    while !killed.load(Ordering::SeqCst) {
        let (i, op) = pick(&model.lock().expect("model lock"), &mut rng);
        let r = async {
            match op {
                Op::Detach => device(&c, DEVS[i].0).await?.detach("vfio", 0).await,
                Op::ReAttach => device(&c, DEVS[i].0).await?.re_attach().await,
                Op::Reset => device(&c, DEVS[i].0).await?.reset().await,
                Op::Create(u) => {
                    let xml = format!(
                        "<device><parent>pci_0000_00_02_0</parent><capability type='mdev'>\
                         <type id='{MDEV_TYPE}'/><uuid>{}</uuid></capability></device>",
                        UUIDS[u]
                    );
                    NodeDevConnectProxy::new(&c)
                        .await?
                        .node_device_create_xml(&xml, 0)
                        .await
                        .map(drop)
                }
                Op::Destroy(u) => device(&c, &mdev_name(UUIDS[u])).await?.destroy().await,
            }
        };
        let r = tokio::time::timeout(Duration::from_secs(30), r).await;
        let want = match op {
            Op::Detach => Some(STUB),
            Op::ReAttach => Some(HOST),
            _ => None,
        };
        let mdev = match op {
            Op::Create(u) => Some((u, true)),
            Op::Destroy(u) => Some((u, false)),
            _ => None,
        };
        let mut m = model.lock().expect("model lock");
        match r {
            Ok(Ok(())) => {
                let kind = match op {
                    Op::Detach => 0,
                    Op::ReAttach => 1,
                    Op::Reset => 2,
                    Op::Create(_) => 3,
                    Op::Destroy(_) => 4,
                };
                m.replied[kind] += 1;
                if let Some(w) = want {
                    m.vfs[i] = [w].into();
                }
                if let Some((u, there)) = mdev {
                    m.mdevs[u] = [there].into();
                    if there {
                        // A create reads the tree again while it waits.
                        m.unseen.clear();
                    } else {
                        m.unseen.insert(u);
                    }
                }
                // The kernel acts during the write: before the next call, as it would.
                if let Err(e) = settle(&root).and_then(|()| settle_mdevs(&root)) {
                    wrong.push(format!("cannot play the kernel: {e}"));
                }
            }
            Ok(Err(e)) => {
                if let Some(w) = want {
                    m.vfs[i].insert(w);
                }
                if let Some((u, there)) = mdev {
                    m.mdevs[u].insert(there);
                }
                if !killed.load(Ordering::SeqCst) {
                    wrong.push(format!(
                        "{op:?} on {} failed while the daemon ran: {e}",
                        DEVS[i].0
                    ));
                }
                break;
            }
            Err(_) => {
                wrong.push(format!("a call on {} hung", DEVS[i].0));
                break;
            }
        }
    }
    wrong
}

/// The driver the daemon reports for a device (its XML's `<driver><name>`).
async fn reported(c: &zbus::Connection, name: &str) -> anyhow::Result<Option<String>> {
    let xml = device(c, name).await?.get_xml_desc(0).await?;
    Ok(xml
        .split_once("<driver>")
        .and_then(|(_, r)| r.split_once("<name>"))
        .and_then(|(_, r)| r.split_once("</name>"))
        .map(|(n, _)| n.to_owned()))
}

/// Checks the restarted daemon and the tree against the model, then makes the model
/// what the tree now says. `left`: the rebinds this start finished.
async fn check(
    c: &zbus::Connection,
    root: &Path,
    left: &BTreeSet<String>,
    model: &Mutex<Model>,
) -> anyhow::Result<Vec<String>> {
    let mut problems = Vec::new();
    let listed = NodeDevConnectProxy::new(c)
        .await?
        .list_node_devices(0)
        .await?;
    let mut m = model.lock().expect("model lock").clone();
    for (k, u) in UUIDS.iter().enumerate() {
        let exists = root.join(GPU).join(u).exists();
        let path = common::objpath::node_device(&mdev_name(u));
        let times = listed.iter().filter(|p| **p == path).count();
        if times != usize::from(exists) {
            problems.push(format!("mdev {u} exists={exists}, listed {times} times"));
        }
        if !m.mdevs[k].contains(&exists) {
            problems.push(format!(
                "mdev {u} exists={exists}, expected {:?}",
                m.mdevs[k]
            ));
        }
        m.mdevs[k] = [exists].into();
    }
    m.unseen.clear();
    for (k, (name, addr, dir)) in DEVS.iter().enumerate() {
        let path = common::objpath::node_device(name);
        let times = listed.iter().filter(|p| **p == path).count();
        if times != 1 {
            problems.push(format!("{name} listed {times} times"));
        }
        let Some(drv) = bound(root, dir) else {
            problems.push(format!("{name} is bound to no driver"));
            continue;
        };
        let ovr = read(&root.join(dir).join("driver_override"));
        let ovr_says = if ovr.trim() == STUB { STUB } else { HOST };
        if drv != ovr_says {
            problems.push(format!("{name} bound to {drv} with override {ovr:?}"));
        }
        if !m.vfs[k].contains(drv.as_str()) {
            problems.push(format!(
                "{name} bound to {drv}, expected one of {:?}",
                m.vfs[k]
            ));
        }
        // A rebind finished at this start was probed after the daemon read the
        // tree (the fixture's kernel answers late): its view is checked next round.
        if !left.contains(*addr) {
            let says = reported(c, name).await?;
            if says.as_deref() != Some(drv.as_str()) {
                problems.push(format!("{name} bound to {drv}, the daemon says {says:?}"));
            }
        }
        m.vfs[k] = [if drv == STUB { STUB } else { HOST }].into();
    }
    *model.lock().expect("model lock") = m;
    Ok(problems)
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_storm_leaves_every_device_bound_and_known() -> anyhow::Result<()> {
    let (_tmp, root) = common::harness::fixture_sysfs()?;
    let bus = TestBus::start()?;
    let mut daemon = Daemon::builder(BIN, "virtnodedevd")
        .arg("--sysfs-root")
        .arg(&root)
        .spawn(&bus)
        .await?;
    let records = daemon.dirs.runtime.join("nodedev/rebind");
    let c = bus.connection().await?;
    let model = Arc::new(Mutex::new(Model {
        vfs: vec![[HOST].into(); DEVS.len()],
        mdevs: vec![[false].into(); UUIDS.len()],
        unseen: BTreeSet::new(),
        replied: [0; 5],
    }));
    // The kernel's mdev side answers while a create waits for its device.
    let playing = Arc::new(AtomicBool::new(true));
    let player = {
        let (root, playing) = (root.clone(), playing.clone());
        tokio::spawn(async move {
            while playing.load(Ordering::SeqCst) {
                settle_mdevs(&root)?;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            anyhow::Ok(())
        })
    };
    let n = rounds();
    let mut rng = Rng(seed());
    eprintln!("seed {}", seed());
    let mut broken = Vec::new();
    let mut finished = 0;
    for i in 0..n {
        let killed = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(churn(
            c.clone(),
            root.clone(),
            model.clone(),
            killed.clone(),
            Rng(rng.next() | 1),
        ));
        let delay = Duration::from_millis(rng.below(150));
        tokio::time::sleep(delay).await;
        killed.store(true, Ordering::SeqCst);
        daemon.kill9();
        let mut problems = tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .map_err(|_| anyhow::anyhow!("round {i}: the churn hung after the kill"))??;
        // The kernel acts during each write: what the daemon wrote before dying is done.
        settle(&root)?;
        settle_mdevs(&root)?;
        let left: BTreeSet<String> = std::fs::read_dir(&records)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        finished += left.len();
        daemon = daemon.restart_builder().spawn(&bus).await?;
        settle(&root)?;
        if std::fs::read_dir(&records).is_ok_and(|mut rd| rd.next().is_some()) {
            problems.push("rebind records left after the restart".into());
        }
        problems.extend(check(&c, &root, &left, &model).await?);
        eprintln!(
            "round {i}: kill after {delay:?}, {} rebind(s) finished at start: {}",
            left.len(),
            if problems.is_empty() {
                "ok".to_string()
            } else {
                problems.join("; ")
            }
        );
        if !problems.is_empty() {
            broken.push(format!("round {i}: {}", problems.join("; ")));
        }
        // The daemon's view is refreshed by the next rebind; start the next round from
        // a daemon that read the settled tree.
        if !left.is_empty() {
            daemon.kill9();
            daemon = daemon.restart_builder().spawn(&bus).await?;
        }
    }
    playing.store(false, Ordering::SeqCst);
    player.await??;
    let r = model.lock().expect("model lock").replied;
    eprintln!(
        "{n} kills: {} broken, {finished} rebinds cut short and finished at start; \
         replied: {} detach, {} reattach, {} reset, {} mdev create, {} mdev destroy",
        broken.len(),
        r[0],
        r[1],
        r[2],
        r[3],
        r[4]
    );
    assert!(
        broken.is_empty(),
        "{} of {n} rounds broken:\n{}",
        broken.len(),
        broken.join("\n")
    );
    Ok(())
}
