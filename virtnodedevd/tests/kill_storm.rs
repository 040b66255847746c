//! kill -9 storm on a copy of the fixture sysfs tree: the daemon is killed at random
//! points while a client detaches, reattaches and resets two SR-IOV VFs. The test plays
//! the kernel (an unbind write drops the device's driver link, a drivers_probe write
//! binds it to its override or its host driver), as the real one does during each
//! write. After each restart every device is bound to a driver (never left unbound
//! between an unbind and a probe), to the one its override names, the one the last
//! successful call asked for (either one if the call was cut), the daemon reports that
//! driver, and no rebind record is left.
//!
//! `VIRT_CHAOS_ROUNDS` sets the number of kills (10 by default), `VIRT_CHAOS_SEED` the
//! seed of the churn and kill times.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
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

#[derive(Clone, Copy)]
enum Op {
    Detach,
    ReAttach,
    Reset,
}

async fn device(c: &zbus::Connection, name: &str) -> zbus::Result<NodeDeviceProxy<'static>> {
    NodeDeviceProxy::builder(c)
        .path(common::objpath::node_device(name))?
        .cache_properties(CacheProperties::No)
        .build()
        .await
}

/// Which drivers each device may be bound to: one after a call that replied, both
/// after one the kill cut.
type Model = Vec<BTreeSet<&'static str>>;

async fn churn(
    c: zbus::Connection,
    root: PathBuf,
    model: Arc<Mutex<Model>>,
    killed: Arc<AtomicBool>,
    mut rng: Rng,
) -> Vec<String> {
    let mut wrong = Vec::new();
    while !killed.load(Ordering::SeqCst) {
        let i = rng.below(DEVS.len() as u64) as usize;
        let op = match rng.below(5) {
            0 | 1 => Op::Detach,
            2 | 3 => Op::ReAttach,
            _ => Op::Reset,
        };
        let r = async {
            let d = device(&c, DEVS[i].0).await?;
            match op {
                Op::Detach => d.detach("vfio", 0).await,
                Op::ReAttach => d.re_attach().await,
                Op::Reset => d.reset().await,
            }
        };
        let r = tokio::time::timeout(Duration::from_secs(30), r).await;
        let want = match op {
            Op::Detach => Some(STUB),
            Op::ReAttach => Some(HOST),
            Op::Reset => None,
        };
        let mut m = model.lock().expect("model lock");
        match r {
            Ok(Ok(())) => {
                if let Some(w) = want {
                    m[i] = [w].into();
                }
                if let Err(e) = settle(&root) {
                    wrong.push(format!("cannot play the kernel: {e}"));
                }
            }
            Ok(Err(e)) => {
                if let Some(w) = want {
                    m[i].insert(w);
                }
                if !killed.load(Ordering::SeqCst) {
                    wrong.push(format!("{} failed while the daemon ran: {e}", DEVS[i].0));
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_storm_leaves_every_device_bound_and_known() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sysfs");
    let st = Command::new("cp")
        .arg("-a")
        .arg(&src)
        .arg(tmp.path())
        .status()?;
    anyhow::ensure!(st.success(), "cp failed");
    let root = tmp.path().join("sysfs");
    let bus = TestBus::start()?;
    let mut daemon = Daemon::builder(BIN, "virtnodedevd")
        .arg("--sysfs-root")
        .arg(&root)
        .spawn(&bus)
        .await?;
    let records = daemon.dirs.runtime.join("nodedev/rebind");
    let c = bus.connection().await?;
    let model: Arc<Mutex<Model>> = Arc::new(Mutex::new(vec![[HOST].into(); DEVS.len()]));
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
        let listed = NodeDevConnectProxy::new(&c)
            .await?
            .list_node_devices(0)
            .await?;
        let mut m = model.lock().expect("model lock").clone();
        for (k, (name, addr, dir)) in DEVS.iter().enumerate() {
            let path = common::objpath::node_device(name);
            let times = listed.iter().filter(|p| **p == path).count();
            if times != 1 {
                problems.push(format!("{name} listed {times} times"));
            }
            let Some(drv) = bound(&root, dir) else {
                problems.push(format!("{name} is bound to no driver"));
                continue;
            };
            let ovr = read(&root.join(dir).join("driver_override"));
            let ovr_says = if ovr.trim() == STUB { STUB } else { HOST };
            if drv != ovr_says {
                problems.push(format!("{name} bound to {drv} with override {ovr:?}"));
            }
            if !m[k].contains(drv.as_str()) {
                problems.push(format!("{name} bound to {drv}, expected one of {:?}", m[k]));
            }
            // A rebind finished at this start was probed after the daemon read the
            // tree (the fixture's kernel answers late): its view is checked next round.
            if !left.contains(*addr) {
                let says = reported(&c, name).await?;
                if says.as_deref() != Some(drv.as_str()) {
                    problems.push(format!("{name} bound to {drv}, the daemon says {says:?}"));
                }
            }
            m[k] = [if drv == STUB { STUB } else { HOST }].into();
        }
        *model.lock().expect("model lock") = m;
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
    eprintln!(
        "{n} kills: {} broken, {finished} rebinds cut short and finished at start",
        broken.len()
    );
    assert!(
        broken.is_empty(),
        "{} of {n} rounds broken:\n{}",
        broken.len(),
        broken.join("\n")
    );
    Ok(())
}
