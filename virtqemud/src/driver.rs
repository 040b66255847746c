//! The driver: the registry of domains, one job lock and one state machine per domain,
//! QEMU lifecycle, the files that let a restarted daemon reattach, and the events.
//!
//! The registry lock is a std mutex held only to look up or insert. Each domain has a
//! tokio job mutex that serialises API calls on it; a monitor task per running domain
//! turns QMP events and process exit into state changes and signals.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use common::error::{check_flags, ErrorCode, VirError};
use common::runtime::Context;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;
use zbus::zvariant::OwnedObjectPath;

use crate::model::{self, Action, DomainDef};
use crate::process::{self, PidFd};
use crate::qmp::{self, Qmp};

/// virDomainState.
pub mod state {
    pub const RUNNING: i32 = 1;
    pub const PAUSED: i32 = 3;
    pub const SHUTDOWN: i32 = 4;
    pub const SHUTOFF: i32 = 5;
    pub const CRASHED: i32 = 6;
    pub const PMSUSPENDED: i32 = 7;
}

/// virDomainEventType and the details used here.
/// virDomainUndefineFlagsValues bits this driver acts on.
pub mod undefine {
    pub const NVRAM: u32 = 4;
    pub const KEEP_NVRAM: u32 = 8;
    pub const KEEP_TPM: u32 = 64;
}

/// Firmware descriptor folders; `VIRTQEMUD_FIRMWARE_DIRS` (colon-separated) replaces
/// them, for tests and for hosts that keep firmware elsewhere.
fn firmware_dirs() -> Vec<PathBuf> {
    match std::env::var_os("VIRTQEMUD_FIRMWARE_DIRS") {
        Some(v) => std::env::split_paths(&v).collect(),
        None => crate::firmware::DIRS.iter().map(PathBuf::from).collect(),
    }
}

pub mod event {
    pub const DEFINED: i32 = 0;
    pub const UNDEFINED: i32 = 1;
    pub const STARTED: i32 = 2;
    pub const SUSPENDED: i32 = 3;
    pub const RESUMED: i32 = 4;
    pub const STOPPED: i32 = 5;
    pub const SHUTDOWN: i32 = 6;
    pub const PMSUSPENDED: i32 = 7;
    pub const CRASHED: i32 = 8;
}

/// VIR_CONNECT_LIST_DOMAINS_*.
pub mod list {
    pub const ACTIVE: u32 = 1;
    pub const INACTIVE: u32 = 2;
    pub const PERSISTENT: u32 = 4;
    pub const TRANSIENT: u32 = 8;
    pub const RUNNING: u32 = 16;
    pub const PAUSED: u32 = 32;
    pub const SHUTOFF: u32 = 64;
    pub const OTHER: u32 = 128;
    pub const AUTOSTART: u32 = 256;
    pub const NO_AUTOSTART: u32 = 512;
    pub const HAS_SNAPSHOT: u32 = 1024;
    pub const NO_SNAPSHOT: u32 = 2048;
    pub const HAS_CHECKPOINT: u32 = 4096;
    pub const NO_CHECKPOINT: u32 = 8192;
}

pub const START_PAUSED: u32 = 1;
const START_KNOWN: u32 = 1 | 4 | 8 | 16; // PAUSED, BYPASS_CACHE, FORCE_BOOT, VALIDATE
pub const XML_SECURE: u32 = 1;
pub const XML_INACTIVE: u32 = 2;
/// How long Destroy waits after SIGTERM before SIGKILL.
const DESTROY_GRACE: Duration = Duration::from_secs(5);
/// How long a starting QEMU may take to open its monitor.
const MONITOR_WAIT: Duration = Duration::from_secs(30);

struct Live {
    id: u32,
    pid: u32,
    /// Files handed to QEMU's user (qemu.conf), given back when QEMU is gone.
    owners: Vec<crate::security::Owner>,
    qmp_path: PathBuf,
    qmp: Qmp,
    def: DomainDef,
    destroying: bool,
    shutdown_seen: bool,
    crashed: bool,
    fake_reboot: bool,
    exited: watch::Receiver<bool>,
}

struct Inner {
    name: String,
    config: Option<DomainDef>,
    live: Option<Live>,
    state: (i32, i32),
    autostart: bool,
}

/// One domain: its job lock and its state.
pub struct Dom {
    pub uuid: Uuid,
    pub path: OwnedObjectPath,
    job: tokio::sync::Mutex<()>,
    inner: Mutex<Inner>,
}

impl Dom {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
    pub fn name(&self) -> String {
        self.lock().name.clone()
    }
    pub fn id(&self) -> Option<u32> {
        self.lock().live.as_ref().map(|l| l.id)
    }
    pub fn active(&self) -> bool {
        self.lock().live.is_some()
    }
    pub fn persistent(&self) -> bool {
        self.lock().config.is_some()
    }
    pub fn autostart(&self) -> bool {
        self.lock().autostart
    }
    pub fn state(&self) -> (i32, i32) {
        self.lock().state
    }
    pub fn pid(&self) -> Option<u32> {
        self.lock().live.as_ref().map(|l| l.pid)
    }
    pub fn os_type(&self) -> String {
        let g = self.lock();
        g.live
            .as_ref()
            .map(|l| &l.def)
            .or(g.config.as_ref())
            .map(|d| d.os_type.clone())
            .unwrap_or_else(|| "hvm".into())
    }
    fn def(&self) -> Option<DomainDef> {
        let g = self.lock();
        g.live
            .as_ref()
            .map(|l| l.def.clone())
            .or_else(|| g.config.clone())
    }
}

/// Every domain sorted by name, and their paths in the same order.
type Sorted = (Arc<[Arc<Dom>]>, Arc<[OwnedObjectPath]>);

#[derive(Default)]
struct Registry {
    by_uuid: HashMap<Uuid, Arc<Dom>>,
    by_name: HashMap<String, Uuid>,
    /// Every domain sorted by name, with its path: built on the first ListDomains after
    /// a change, so listing 1000 domains neither sorts nor allocates 1000 paths.
    sorted: Option<Sorted>,
}

impl Registry {
    fn insert(&mut self, name: String, dom: Arc<Dom>) {
        self.sorted = None;
        self.by_name.insert(name, dom.uuid);
        self.by_uuid.insert(dom.uuid, dom);
    }

    fn remove(&mut self, name: Option<&str>, uuid: &Uuid) {
        self.sorted = None;
        if let Some(n) = name {
            self.by_name.remove(n);
        }
        self.by_uuid.remove(uuid);
    }

    fn sorted(&mut self) -> Sorted {
        if let Some(s) = &self.sorted {
            return s.clone();
        }
        let mut v: Vec<(String, Arc<Dom>)> = self
            .by_uuid
            .values()
            .map(|d| (d.name(), d.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        let doms: Arc<[Arc<Dom>]> = v.into_iter().map(|(_, d)| d).collect();
        let paths: Arc<[OwnedObjectPath]> = doms.iter().map(|d| d.path.clone()).collect();
        self.sorted = Some((doms.clone(), paths.clone()));
        (doms, paths)
    }
}

/// What a restarted daemon needs to reattach to a running QEMU.
#[derive(Serialize, Deserialize)]
struct Status {
    name: String,
    uuid: Uuid,
    id: u32,
    pid: u32,
    qmp: PathBuf,
    xml: String,
    persistent: bool,
    state: i32,
    reason: i32,
    /// Files handed to QEMU's user for this run, with their owners before.
    #[serde(default)]
    owners: Vec<crate::security::Owner>,
}

struct Paths {
    config: PathBuf,
    autostart: PathBuf,
    run: PathBuf,
    log: PathBuf,
    /// Per-domain UEFI variable stores (libvirt: /var/lib/libvirt/qemu/nvram in system
    /// mode, ~/.config/libvirt/qemu/nvram in session mode).
    nvram: PathBuf,
    /// Emulated TPM states (libvirt: /var/lib/libvirt/swtpm, ~/.config/libvirt/qemu/swtpm).
    swtpm: PathBuf,
}

pub struct Driver {
    pub ctx: Context,
    this: Weak<Driver>,
    paths: Paths,
    reg: Mutex<Registry>,
    /// Durable writes of the domain configs in `paths.config`.
    configs: common::journal::Journal,
    next_id: AtomicU32,
    jobs: AtomicUsize,
    sandbox: bool,
    /// Whom QEMU runs as (qemu.conf `user`/`group`); `None`: the daemon's user.
    identity: Option<crate::security::Identity>,
    /// qemu.conf `dynamic_ownership`: hand QEMU's files to its user for the run.
    dynamic_ownership: bool,
    /// The emulator's capabilities as last loaded, reused while the binary is unchanged.
    caps: Mutex<Option<Arc<crate::caps::Caps>>>,
}

fn io_err(what: &str, path: &Path, e: &std::io::Error) -> VirError {
    VirError::system(format!("cannot {what} '{}'", path.display()), e)
}

fn no_domain(what: impl std::fmt::Display) -> VirError {
    VirError::new(ErrorCode::NoDomain, what)
}

fn not_running() -> VirError {
    VirError::operation_invalid("domain is not running")
}

/// Counts a running API call so `busy()` keeps the daemon alive meanwhile.
struct JobGuard<'a>(&'a AtomicUsize);
impl Drop for JobGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Driver {
    /// Where probed emulator capabilities are cached across restarts.
    pub fn caps_cache_dir(&self) -> PathBuf {
        self.ctx.settings.state_dir.join("cache").join("qemu")
    }

    /// The emulator's capabilities: probed on first need, then from the cache file
    /// (so start-up never waits for a probe).
    async fn caps(&self) -> Result<Arc<crate::caps::Caps>, VirError> {
        let emulator = Path::new(crate::host_caps::EMULATOR);
        let id = crate::caps::BinaryId::of(emulator).ok();
        let memo = self.caps.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(c) = memo.filter(|c| id.is_some() && c.binary == id) {
            return Ok(c);
        }
        let caps =
            Arc::new(crate::caps::Caps::load_or_probe(emulator, &self.caps_cache_dir()).await?);
        *self.caps.lock().unwrap_or_else(|e| e.into_inner()) = Some(caps.clone());
        Ok(caps)
    }

    /// Builds the driver, loads configs, reattaches to running QEMUs and registers objects.
    pub async fn start(ctx: Context) -> anyhow::Result<Arc<Driver>> {
        let s = &ctx.settings;
        let paths = Paths {
            config: s.config_dir.join("qemu"),
            autostart: s.config_dir.join("qemu").join("autostart"),
            run: s.runtime_dir.join("qemu"),
            log: s.state_dir.join("log").join("qemu"),
            nvram: match s.mode {
                common::cli::Mode::System => s.state_dir.join("qemu").join("nvram"),
                common::cli::Mode::Session => s.config_dir.join("qemu").join("nvram"),
            },
            swtpm: match s.mode {
                common::cli::Mode::System => s.state_dir.join("swtpm"),
                common::cli::Mode::Session => s.config_dir.join("qemu").join("swtpm"),
            },
        };
        for d in [&paths.config, &paths.autostart, &paths.run, &paths.log] {
            common::persist::create_dir_all(d, 0o700)?;
        }
        let next_id = std::fs::read_to_string(paths.run.join("next-id"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1u32);
        let system = matches!(s.mode, common::cli::Mode::System);
        let conf = crate::security::QemuConf::load(&s.config_dir.join("qemu.conf"))?;
        let identity = crate::security::identity(&conf, system)?;
        let sandbox = conf.seccomp_sandbox.unwrap_or(true) && (system || identity.is_some());
        if let Some(id) = &identity {
            tracing::info!(user = %id.user, uid = id.uid, gid = id.gid, "QEMU runs unprivileged");
            // QEMU's user must reach, by name only, its own folder in the run folder and
            // the UEFI variable stores (files there stay 0600, handed over per run).
            common::persist::create_dir_all(&paths.nvram, 0o711)?;
            let nvram_parents = paths.nvram.ancestors().take(3);
            for d in [s.runtime_dir.as_path(), paths.run.as_path()]
                .into_iter()
                .chain(nvram_parents)
            {
                crate::security::make_traversable(d)?;
            }
        }
        // Replays what a crash left in the journal before the configs are read.
        let configs = common::journal::Journal::open(&paths.config)?;
        let driver = Arc::new_cyclic(|this| Driver {
            ctx,
            this: this.clone(),
            paths,
            reg: Mutex::new(Registry::default()),
            configs,
            next_id: AtomicU32::new(next_id.max(1)),
            jobs: AtomicUsize::new(0),
            sandbox,
            identity,
            dynamic_ownership: conf.dynamic_ownership.unwrap_or(true),
            caps: Mutex::new(None),
        });
        driver.load_configs();
        crate::dbus::serve(&driver).await;
        let doms: Vec<Arc<Dom>> = driver.reg().by_uuid.values().cloned().collect();
        for d in &doms {
            crate::dbus::serve_domain(&driver, d).await;
        }
        driver.reattach_all().await;
        driver.autostart_all();
        Ok(driver)
    }

    fn arc(&self) -> Option<Arc<Driver>> {
        self.this.upgrade()
    }

    fn reg(&self) -> MutexGuard<'_, Registry> {
        self.reg.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `dom` is still the registered domain of its uuid.
    fn registered(&self, dom: &Arc<Dom>) -> bool {
        self.reg()
            .by_uuid
            .get(&dom.uuid)
            .is_some_and(|d| Arc::ptr_eq(d, dom))
    }

    fn job(&self) -> JobGuard<'_> {
        self.jobs.fetch_add(1, Ordering::SeqCst);
        JobGuard(&self.jobs)
    }

    fn config_file(&self, name: &str) -> PathBuf {
        self.paths.config.join(format!("{name}.xml"))
    }
    fn autostart_link(&self, name: &str) -> PathBuf {
        self.paths.autostart.join(format!("{name}.xml"))
    }
    fn status_file(&self, name: &str) -> PathBuf {
        self.paths.run.join(format!("{name}.json"))
    }
    fn pid_file(&self, name: &str) -> PathBuf {
        self.paths.run.join(format!("{name}.pid"))
    }
    pub fn log_file(&self, name: &str) -> PathBuf {
        self.paths.log.join(format!("{name}.log"))
    }

    fn load_configs(&self) {
        let Ok(entries) = std::fs::read_dir(&self.paths.config) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) != Some("xml") {
                continue;
            }
            let def = match std::fs::read_to_string(&p)
                .map_err(|e| e.to_string())
                .and_then(|t| DomainDef::parse(&t).map_err(|e| e.to_string()))
            {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!("ignoring domain config {}: {e}", p.display());
                    continue;
                }
            };
            let autostart = self.autostart_link(&def.name).exists();
            let mut reg = self.reg();
            if reg.by_name.contains_key(&def.name) || reg.by_uuid.contains_key(&def.uuid) {
                tracing::warn!("ignoring duplicate domain config {}", p.display());
                continue;
            }
            let dom = new_dom(def.uuid, def.name.clone(), Some(def), autostart);
            reg.insert(dom.name(), dom);
        }
    }

    // ---- lookups ------------------------------------------------------------------

    pub fn lookup_uuid(&self, uuid: &Uuid) -> Result<Arc<Dom>, VirError> {
        self.reg()
            .by_uuid
            .get(uuid)
            .cloned()
            .ok_or_else(|| no_domain(format!("no domain with matching uuid '{uuid}'")))
    }

    pub fn lookup_uuid_str(&self, s: &str) -> Result<Arc<Dom>, VirError> {
        let uuid = Uuid::parse_str(s.trim())
            .map_err(|_| no_domain(format!("no domain with matching uuid '{s}'")))?;
        self.lookup_uuid(&uuid)
    }

    pub fn lookup_name(&self, name: &str) -> Result<Arc<Dom>, VirError> {
        let reg = self.reg();
        reg.by_name
            .get(name)
            .and_then(|u| reg.by_uuid.get(u))
            .cloned()
            .ok_or_else(|| no_domain(format!("no domain with matching name '{name}'")))
    }

    pub fn lookup_id(&self, id: i32) -> Result<Arc<Dom>, VirError> {
        let doms: Vec<Arc<Dom>> = self.reg().by_uuid.values().cloned().collect();
        doms.into_iter()
            .find(|d| d.id().map(|i| i as i64) == Some(id as i64))
            .ok_or_else(|| no_domain(format!("no domain with matching id {id}")))
    }

    /// ListDomains: the paths of the domains `flags` selects, sorted by name.
    pub fn list_paths(&self, flags: u32) -> Result<Vec<OwnedObjectPath>, VirError> {
        check_flags(flags, 0x3fff)?;
        if flags == 0 {
            return Ok(self.reg().sorted().1.to_vec());
        }
        Ok(self.list(flags)?.iter().map(|d| d.path.clone()).collect())
    }

    pub fn list(&self, flags: u32) -> Result<Vec<Arc<Dom>>, VirError> {
        check_flags(flags, 0x3fff)?;
        let doms = self.reg().sorted().0;
        let pick = |set: u32, a: bool, b: bool| -> bool {
            // Each pair of flags filters only when one of them is given.
            let (fa, fb) = (set & 1 != 0, set & 2 != 0);
            !(fa || fb) || (fa && a) || (fb && b)
        };
        let out: Vec<Arc<Dom>> = doms
            .iter()
            .filter(|d| {
                let g = d.lock();
                let active = g.live.is_some();
                let persistent = g.config.is_some();
                let st = g.state.0;
                let acts = (flags & list::ACTIVE != 0) as u32
                    | (((flags & list::INACTIVE) != 0) as u32) << 1;
                let pers = (flags & list::PERSISTENT != 0) as u32
                    | (((flags & list::TRANSIENT) != 0) as u32) << 1;
                let auto = (flags & list::AUTOSTART != 0) as u32
                    | (((flags & list::NO_AUTOSTART) != 0) as u32) << 1;
                let snap = (flags & list::NO_SNAPSHOT != 0) as u32
                    | (((flags & list::HAS_SNAPSHOT) != 0) as u32) << 1;
                let ckpt = (flags & list::NO_CHECKPOINT != 0) as u32
                    | (((flags & list::HAS_CHECKPOINT) != 0) as u32) << 1;
                let states = flags & (list::RUNNING | list::PAUSED | list::SHUTOFF | list::OTHER);
                let state_ok = states == 0
                    || (flags & list::RUNNING != 0 && st == state::RUNNING)
                    || (flags & list::PAUSED != 0 && st == state::PAUSED)
                    || (flags & list::SHUTOFF != 0 && st == state::SHUTOFF)
                    || (flags & list::OTHER != 0
                        && !matches!(st, state::RUNNING | state::PAUSED | state::SHUTOFF));
                pick(acts, active, !active)
                    && pick(pers, persistent, !persistent)
                    && pick(auto, g.autostart, !g.autostart)
                    && pick(snap, true, false)
                    && pick(ckpt, true, false)
                    && state_ok
            })
            .cloned()
            .collect();
        Ok(out)
    }

    // ---- events -------------------------------------------------------------------

    async fn emit(&self, dom: &Dom, ev: i32, detail: i32) {
        tracing::info!(domain = %dom.name(), event = ev, detail, "domain event");
        self.ctx
            .hub
            .emit(
                &common::objpath::connect(),
                "org.libvirt.Connect",
                "DomainEvent",
                &(dom.path.clone(), ev, detail),
            )
            .await;
    }

    async fn props_changed(&self, dom: &Dom) {
        let (active, id, persistent, autostart) = {
            let g = dom.lock();
            (
                g.live.is_some(),
                g.live.as_ref().map(|l| l.id).unwrap_or(u32::MAX),
                g.config.is_some(),
                g.autostart,
            )
        };
        self.ctx
            .hub
            .properties_changed(
                &dom.path,
                "org.libvirt.Domain",
                &[
                    ("Active", active.into()),
                    ("Id", id.into()),
                    ("Persistent", persistent.into()),
                    ("Autostart", autostart.into()),
                ],
            )
            .await;
    }

    // ---- define / undefine --------------------------------------------------------

    pub async fn define(&self, xml: &str) -> Result<Arc<Dom>, VirError> {
        let caps = self.caps().await?;
        let _job = self.job();
        let def = DomainDef::parse_new(xml, &caps)?;
        let text = def.to_xml(None);
        let name = def.name.clone();
        // libvirt's order: into the registry, then to disk; a failed write undoes the
        // first. Definitions of different domains reach the journal together and share
        // its sync; the domain's job lock orders those of one domain.
        let (dom, added) = {
            let mut reg = self.reg();
            check_conflicts(&reg, &def)?;
            match reg.by_uuid.get(&def.uuid).cloned() {
                Some(dom) => (dom, false),
                None => {
                    let dom = new_dom(def.uuid, name.clone(), Some(def.clone()), false);
                    reg.insert(name.clone(), dom.clone());
                    (dom, true)
                }
            }
        };
        let lock = dom.job.lock().await;
        if !self.registered(&dom) {
            return Err(VirError::operation_failed(format!(
                "domain '{name}' was undefined while being defined"
            )));
        }
        let old = dom.lock().config.replace(def);
        let file = format!("{name}.xml");
        if let Err(e) = self.configs.put(&file, text.as_bytes(), 0o600).await {
            if added {
                let mut reg = self.reg();
                reg.remove(Some(&name), &dom.uuid);
            } else {
                dom.lock().config = old;
            }
            return Err(io_err("write", &self.config_file(&name), &e));
        }
        drop(lock);
        if added {
            if let Some(d) = self.arc() {
                crate::dbus::serve_domain(&d, &dom).await;
            }
        } else {
            self.props_changed(&dom).await;
        }
        self.emit(&dom, event::DEFINED, if added { 0 } else { 1 })
            .await;
        Ok(dom)
    }

    pub async fn undefine(&self, dom: &Arc<Dom>, flags: u32) -> Result<(), VirError> {
        check_flags(flags, 0x7f)?;
        let _job = self.job();
        let _lock = dom.job.lock().await;
        let (name, active) = {
            let g = dom.lock();
            if g.config.is_none() {
                return Err(VirError::operation_invalid(
                    "cannot undefine transient domain",
                ));
            }
            (g.name.clone(), g.live.is_some())
        };
        let nvram = self.nvram_file(dom);
        if nvram.exists() {
            if flags & undefine::NVRAM != 0 {
                std::fs::remove_file(&nvram).map_err(|e| io_err("remove", &nvram, &e))?;
            } else if flags & undefine::KEEP_NVRAM == 0 {
                return Err(VirError::operation_invalid(
                    "cannot undefine domain with nvram",
                ));
            }
        }
        // libvirt removes the TPM's state unless asked to keep it.
        let tpm_state = self.paths.swtpm.join(dom.uuid.to_string());
        if flags & undefine::KEEP_TPM == 0 && tpm_state.exists() {
            std::fs::remove_dir_all(&tpm_state).map_err(|e| io_err("remove", &tpm_state, &e))?;
        }
        let _ = common::persist::remove_durable(&self.autostart_link(&name));
        self.configs
            .remove(&format!("{name}.xml"))
            .await
            .map_err(|e| io_err("remove", &self.config_file(&name), &e))?;
        {
            let mut g = dom.lock();
            g.config = None;
            g.autostart = false;
        }
        self.emit(dom, event::UNDEFINED, 0).await;
        if active {
            self.props_changed(dom).await;
            self.save_status(dom);
        } else {
            self.remove(dom).await;
        }
        Ok(())
    }

    /// Creates QEMU's own folder for a run, owned by the user QEMU runs as.
    fn make_domain_dir(&self, dir: &Path) -> Result<(), VirError> {
        let _ = std::fs::remove_dir_all(dir);
        common::persist::create_dir_all(dir, 0o700).map_err(|e| io_err("create", dir, &e))?;
        if let Some(u) = &self.identity {
            std::os::unix::fs::chown(dir, Some(u.uid), Some(u.gid))
                .map_err(|e| io_err("chown", dir, &e))?;
        }
        Ok(())
    }

    /// Hands the files QEMU opens itself to its user (qemu.conf `dynamic_ownership`);
    /// returns their owners before, to give them back when QEMU is gone.
    fn take_files(
        &self,
        dom: &crate::xml::Domain,
        extra: &[PathBuf],
    ) -> Result<Vec<crate::security::Owner>, VirError> {
        match &self.identity {
            Some(id) if self.dynamic_ownership => {
                crate::security::precreate_chardev_files(dom)?;
                crate::security::take(&crate::security::files(dom, extra), id)
            }
            _ => Ok(Vec::new()),
        }
    }

    /// The domain's UEFI variable store: its `<nvram>` path or libvirt's default one.
    fn nvram_file(&self, dom: &Dom) -> PathBuf {
        let g = dom.lock();
        g.config
            .as_ref()
            .and_then(|c| c.dom.os.nvram.clone())
            .unwrap_or_else(|| crate::firmware::nvram_path(&self.paths.nvram, &g.name))
    }

    async fn remove(&self, dom: &Arc<Dom>) {
        {
            let mut reg = self.reg();
            let name = dom.name();
            let owns_name = reg.by_name.get(&name) == Some(&dom.uuid);
            reg.remove(owns_name.then_some(name.as_str()), &dom.uuid);
        }
        crate::dbus::unserve_domain(self, dom).await;
    }

    pub async fn set_autostart(&self, dom: &Arc<Dom>, on: bool) -> Result<(), VirError> {
        let _job = self.job();
        let _lock = dom.job.lock().await;
        let name = {
            let g = dom.lock();
            if g.config.is_none() {
                return Err(VirError::operation_invalid(
                    "cannot set autostart for transient domain",
                ));
            }
            g.name.clone()
        };
        let link = self.autostart_link(&name);
        if on {
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(self.config_file(&name), &link)
                    .map_err(|e| io_err("create symlink", &link, &e))?;
            }
        } else if std::fs::symlink_metadata(&link).is_ok() {
            common::persist::remove_durable(&link).map_err(|e| io_err("remove", &link, &e))?;
        }
        dom.lock().autostart = on;
        self.props_changed(dom).await;
        Ok(())
    }

    // ---- start --------------------------------------------------------------------

    /// DomainCreateXML: a transient domain, started at once.
    pub async fn create_xml(&self, xml: &str, flags: u32) -> Result<Arc<Dom>, VirError> {
        check_flags(flags, START_KNOWN | 2)?;
        let caps = self.caps().await?;
        let _job = self.job();
        let def = DomainDef::parse_new(xml, &caps)?;
        let dom = {
            let mut reg = self.reg();
            check_conflicts(&reg, &def)?;
            if let Some(d) = reg.by_uuid.get(&def.uuid) {
                if d.active() {
                    return Err(VirError::operation_invalid(format!(
                        "domain '{}' is already active",
                        def.name
                    )));
                }
                return Err(VirError::operation_failed(format!(
                    "domain '{}' already exists with uuid {}",
                    def.name, def.uuid
                )));
            }
            let dom = new_dom(def.uuid, def.name.clone(), None, false);
            reg.insert(dom.name(), dom.clone());
            dom
        };
        if let Some(d) = self.arc() {
            crate::dbus::serve_domain(&d, &dom).await;
        }
        let r = {
            let _lock = dom.job.lock().await;
            self.start_locked(&dom, def, flags).await
        };
        if let Err(e) = r {
            self.remove(&dom).await;
            return Err(e);
        }
        Ok(dom)
    }

    /// Domain.Create: starts a defined domain.
    pub async fn create(&self, dom: &Arc<Dom>, flags: u32) -> Result<(), VirError> {
        check_flags(flags, START_KNOWN)?;
        let _job = self.job();
        let _lock = dom.job.lock().await;
        let def = {
            let g = dom.lock();
            if g.live.is_some() {
                return Err(VirError::operation_invalid("domain is already running"));
            }
            g.config
                .clone()
                .ok_or_else(|| VirError::internal("domain has no definition"))?
        };
        self.start_locked(dom, def, flags).await
    }

    async fn start_locked(
        &self,
        dom: &Arc<Dom>,
        mut def: DomainDef,
        flags: u32,
    ) -> Result<(), VirError> {
        // UEFI firmware and its variable store are chosen now, into the live definition.
        let dirs = firmware_dirs();
        let dirs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
        crate::firmware::prepare(&mut def.dom, &dirs, &self.paths.nvram)?;
        crate::graphics::assign_ports(&mut def.dom)?;
        // swtpm before QEMU, which connects to it at once; it ends with QEMU.
        let swtpm = crate::tpm::start(
            &def.dom,
            &dom.uuid.to_string(),
            &self.paths.swtpm,
            &self.paths.run,
            &self.paths.log.join(format!("{}-swtpm.log", def.name)),
        )
        .await?;
        // Taps and network ports first (recorded in the live definition); undone below
        // when anything after them fails.
        let mode = self.ctx.settings.mode;
        let volume_paths = crate::volumes::resolve(&mut def.dom, mode).await?;
        crate::hostdevs::detach(&def.dom, mode).await?;
        let nics = match crate::nics::prepare(&mut def.dom, mode).await {
            Ok(n) => n,
            Err(e) => {
                crate::hostdevs::reattach(&def.dom, mode).await;
                return Err(e);
            }
        };
        let tap_fds = nics.raw_fds();
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let _ = common::persist::write_atomic(
            &self.paths.run.join("next-id"),
            (id + 1).to_string().as_bytes(),
            0o600,
        );
        // QEMU's own folder, owned by its user: monitor socket, its pidfile, helper
        // sockets. The daemon keeps NAME.pid beside it, as libvirt does.
        let dom_dir = self.paths.run.join(format!("domain-{id}"));
        let qmp_path = dom_dir.join("monitor.sock");
        let pidfile = self.pid_file(&def.name);
        let _ = std::fs::remove_file(&pidfile);
        if let Err(e) = self.make_domain_dir(&dom_dir) {
            drop(nics);
            crate::nics::release(&def.dom, mode).await;
            crate::hostdevs::reattach(&def.dom, mode).await;
            return Err(e);
        }
        let argv = model::argv(
            &def,
            &model::LaunchPaths {
                qmp: &qmp_path,
                pidfile: &dom_dir.join("qemu.pid"),
                runtime_dir: &dom_dir,
                tap_fds: &tap_fds,
                volume_paths: &volume_paths,
                tpm_socket: swtpm.as_ref().map(|t| t.socket.as_path()),
            },
            self.sandbox,
        );
        let mut extra: Vec<PathBuf> = volume_paths.iter().map(|v| v.2.clone()).collect();
        extra.extend(swtpm.as_ref().map(|t| t.socket.clone()));
        let argv = argv.and_then(|a| Ok((a, self.take_files(&def.dom, &extra)?)));
        let (argv, owners) = match argv {
            Ok(a) => a,
            Err(e) => {
                drop(nics);
                let _ = std::fs::remove_dir_all(&dom_dir);
                crate::nics::release(&def.dom, mode).await;
                crate::hostdevs::reattach(&def.dom, mode).await;
                return Err(e);
            }
        };
        let log = self.log_file(&def.name);
        tracing::info!(domain = %def.name, "starting: {}", argv.join(" "));
        let keep: Vec<i32> = tap_fds.iter().flatten().copied().collect();
        let env = def
            .dom
            .qemu_commandline
            .as_ref()
            .map(|c| c.env.clone())
            .unwrap_or_default();
        if def.dom.qemu_commandline.is_some() {
            // As libvirt, in QEMU's log: this domain runs with arguments we did not make.
            tracing::warn!(domain = %def.name, "Domain id={id} is tainted: custom-argv");
            use std::io::Write;
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
            {
                let _ = writeln!(f, "Domain id={id} is tainted: custom-argv");
            }
        }
        let spawned = process::spawn_keeping(&argv, &log, &keep, &env, self.identity.as_ref())
            .map_err(|e| {
                VirError::operation_failed(format!("cannot start QEMU '{}': {e}", argv[0]))
            })
            .and_then(|pid| {
                PidFd::open(pid)
                    .map(|fd| (pid, fd))
                    .map_err(|e| VirError::system("pidfd_open", &e))
            });
        // QEMU holds its own copies now: a tap lives exactly as long as QEMU does.
        drop(nics);
        let (pid, pidfd) = match spawned {
            Ok(p) => p,
            Err(e) => {
                crate::security::restore(&owners);
                let _ = std::fs::remove_dir_all(&dom_dir);
                crate::nics::release(&def.dom, mode).await;
                crate::hostdevs::reattach(&def.dom, mode).await;
                return Err(e);
            }
        };
        let (qmp, events) = match connect_monitor(&qmp_path, &pidfd).await {
            Ok(c) => c,
            Err(e) => {
                process::terminate(&pidfd, Duration::from_secs(1)).await;
                crate::security::restore(&owners);
                let _ = std::fs::remove_dir_all(&dom_dir);
                crate::nics::release(&def.dom, mode).await;
                crate::hostdevs::reattach(&def.dom, mode).await;
                let tail = log_tail(&log);
                return Err(VirError::operation_failed(format!(
                    "QEMU for domain '{}' did not start: {e}{tail}",
                    def.name
                )));
            }
        };
        // Passwords before anything can connect to a running guest (QEMU is at -S), and
        // links that start down.
        let prepared = match crate::graphics::set_passwords(&qmp, &def.dom).await {
            Ok(()) => crate::graphics::set_links(&qmp, &def.dom).await,
            Err(e) => Err(e),
        };
        if let Err(e) = prepared {
            process::terminate(&pidfd, Duration::from_secs(1)).await;
            crate::security::restore(&owners);
            let _ = std::fs::remove_dir_all(&dom_dir);
            crate::nics::release(&def.dom, mode).await;
            crate::hostdevs::reattach(&def.dom, mode).await;
            return Err(e);
        }
        crate::graphics::record_vnc_port(&qmp, &mut def.dom).await;
        // For people and tools, like libvirt's: nothing here reads it back, so no fsync.
        let _ = std::fs::write(&pidfile, format!("{pid}\n"));
        if let Some(t) = swtpm {
            t.handed_over();
        }
        let paused = flags & START_PAUSED != 0;
        let (exit_tx, exit_rx) = watch::channel(false);
        {
            let mut g = dom.lock();
            g.live = Some(Live {
                id,
                pid,
                owners,
                qmp_path,
                qmp: qmp.clone(),
                def,
                destroying: false,
                shutdown_seen: false,
                crashed: false,
                fake_reboot: false,
                exited: exit_rx,
            });
            g.state = if paused {
                (state::PAUSED, 1)
            } else {
                (state::RUNNING, 1)
            };
            if let Some(l) = g.live.as_ref() {
                if let Err(e) = self.write_status_of_inner(&g, dom.uuid, l) {
                    tracing::warn!("status not written: {e}");
                }
            }
        }
        if let Some(d) = self.arc() {
            tokio::spawn(monitor(d, dom.clone(), events, pidfd, exit_tx));
        }
        if !paused {
            if let Err(e) = qmp.execute("cont", None).await {
                drop(self.destroy_locked(dom).await);
                return Err(e.into());
            }
        }
        self.emit(dom, event::STARTED, 0).await;
        if paused {
            self.emit(dom, event::SUSPENDED, 0).await;
        }
        self.props_changed(dom).await;
        Ok(())
    }

    fn write_status_of_inner(&self, g: &Inner, uuid: Uuid, l: &Live) -> std::io::Result<()> {
        let st = Status {
            name: g.name.clone(),
            uuid,
            id: l.id,
            pid: l.pid,
            qmp: l.qmp_path.clone(),
            xml: l.def.to_xml(None),
            persistent: g.config.is_some(),
            state: g.state.0,
            reason: g.state.1,
            owners: l.owners.clone(),
        };
        let data = serde_json::to_vec(&st).map_err(std::io::Error::other)?;
        common::persist::write_atomic(&self.status_file(&g.name), &data, 0o600)
    }

    fn save_status(&self, dom: &Dom) {
        let g = dom.lock();
        if let Some(l) = g.live.as_ref() {
            if let Err(e) = self.write_status_of_inner(&g, dom.uuid, l) {
                tracing::warn!("status not written: {e}");
            }
        }
    }

    // ---- running-domain operations ------------------------------------------------

    fn qmp_of(&self, dom: &Dom) -> Result<Qmp, VirError> {
        dom.lock()
            .live
            .as_ref()
            .map(|l| l.qmp.clone())
            .ok_or_else(not_running)
    }

    pub async fn destroy(&self, dom: &Arc<Dom>, flags: u32) -> Result<(), VirError> {
        check_flags(flags, 1)?; // GRACEFUL
        let _job = self.job();
        let _lock = dom.job.lock().await;
        self.destroy_locked(dom).await
    }

    async fn destroy_locked(&self, dom: &Arc<Dom>) -> Result<(), VirError> {
        let (pid, mut exited) = {
            let mut g = dom.lock();
            let l = g.live.as_mut().ok_or_else(not_running)?;
            l.destroying = true;
            (l.pid, l.exited.clone())
        };
        process::signal(pid, nix::sys::signal::Signal::SIGTERM);
        let wait = |rx: &mut watch::Receiver<bool>| {
            let mut rx = rx.clone();
            async move {
                let _ = rx.wait_for(|e| *e).await;
            }
        };
        if tokio::time::timeout(DESTROY_GRACE, wait(&mut exited))
            .await
            .is_err()
        {
            process::signal(pid, nix::sys::signal::Signal::SIGKILL);
            if tokio::time::timeout(DESTROY_GRACE, wait(&mut exited))
                .await
                .is_err()
            {
                return Err(VirError::operation_failed(
                    "QEMU did not exit after SIGKILL",
                ));
            }
        }
        Ok(())
    }

    pub async fn shutdown(&self, dom: &Arc<Dom>, flags: u32) -> Result<(), VirError> {
        check_flags(flags, 0x1f)?;
        let _job = self.job();
        let _lock = dom.job.lock().await;
        let qmp = self.qmp_of(dom)?;
        qmp.execute("system_powerdown", None).await?;
        Ok(())
    }

    pub async fn reboot(&self, dom: &Arc<Dom>, flags: u32) -> Result<(), VirError> {
        check_flags(flags, 0x1f)?;
        let _job = self.job();
        let _lock = dom.job.lock().await;
        let qmp = self.qmp_of(dom)?;
        // libvirt's "fake reboot": ACPI power-off, then reset and continue on SHUTDOWN.
        if let Some(l) = dom.lock().live.as_mut() {
            l.fake_reboot = true;
        }
        qmp.execute("system_powerdown", None).await?;
        Ok(())
    }

    pub async fn reset(&self, dom: &Arc<Dom>, flags: u32) -> Result<(), VirError> {
        check_flags(flags, 0)?;
        let _job = self.job();
        let _lock = dom.job.lock().await;
        self.qmp_of(dom)?.execute("system_reset", None).await?;
        Ok(())
    }

    pub async fn suspend(&self, dom: &Arc<Dom>) -> Result<(), VirError> {
        let _job = self.job();
        let _lock = dom.job.lock().await;
        let qmp = self.qmp_of(dom)?;
        if dom.state().0 == state::PAUSED {
            return Ok(());
        }
        qmp.execute("stop", None).await?;
        if self.transition(dom, &[state::RUNNING], (state::PAUSED, 1)) {
            self.emit(dom, event::SUSPENDED, 0).await;
            self.save_status(dom);
        }
        Ok(())
    }

    pub async fn resume(&self, dom: &Arc<Dom>) -> Result<(), VirError> {
        let _job = self.job();
        let _lock = dom.job.lock().await;
        let qmp = self.qmp_of(dom)?;
        qmp.execute("cont", None).await?;
        if self.transition(dom, &[state::PAUSED], (state::RUNNING, 5)) {
            self.emit(dom, event::RESUMED, 0).await;
            self.save_status(dom);
        }
        Ok(())
    }

    /// Moves `dom` to `to` when its state is one of `from`; true when it did. The
    /// caller emits the event, then writes the status ([`Self::save_status`]): the
    /// signal does not wait for the file, and a daemon that dies in between reads the
    /// state back from QEMU when it reattaches.
    fn transition(&self, dom: &Dom, from: &[i32], to: (i32, i32)) -> bool {
        let mut g = dom.lock();
        if g.live.is_some() && from.contains(&g.state.0) {
            g.state = to;
            true
        } else {
            false
        }
    }

    pub fn xml_desc(&self, dom: &Dom, flags: u32) -> Result<String, VirError> {
        check_flags(flags, 1 | 2 | 4 | 8)?;
        let g = dom.lock();
        let secure = flags & XML_SECURE != 0;
        if flags & XML_INACTIVE != 0 {
            if let Some(c) = &g.config {
                return Ok(c.to_xml_for(None, secure));
            }
        }
        match (&g.live, &g.config) {
            (Some(l), _) => Ok(l.def.to_xml_for(Some(l.id), secure)),
            (None, Some(c)) => Ok(c.to_xml_for(None, secure)),
            (None, None) => Err(VirError::internal("domain has no definition")),
        }
    }

    pub fn vcpus(&self, dom: &Dom, flags: u32) -> Result<u32, VirError> {
        check_flags(flags, 0xf)?;
        dom.def()
            .map(|d| d.vcpus)
            .ok_or_else(|| VirError::internal("domain has no definition"))
    }

    /// Memory statistics (virDomainMemoryStatTags): actual balloon (6) and RSS (7), KiB.
    pub fn memory_stats(&self, dom: &Dom, flags: u32) -> Result<HashMap<i32, u64>, VirError> {
        check_flags(flags, 0)?;
        let (pid, mem) = {
            let g = dom.lock();
            let l = g.live.as_ref().ok_or_else(not_running)?;
            (l.pid, l.def.memory_kib)
        };
        let mut m = HashMap::new();
        m.insert(6, mem);
        if let Some(rss) = crate::stats::proc_rss_kib(pid) {
            m.insert(7, rss);
        }
        Ok(m)
    }

    /// A stats record as virDomainListGetStats fills it, for the groups in `groups`
    /// (see `stats::requested_groups`).
    pub async fn stats(
        &self,
        dom: &Dom,
        groups: u32,
    ) -> HashMap<String, zbus::zvariant::OwnedValue> {
        let (st, def, live) = {
            let g = dom.lock();
            (
                g.state,
                g.live.as_ref().map(|l| l.def.clone()).or(g.config.clone()),
                g.live.as_ref().map(|l| (l.pid, l.qmp.clone())),
            )
        };
        let src = crate::stats::Source {
            state: st,
            def: def.as_ref(),
            live: live.as_ref().map(|(pid, q)| (*pid, q)),
        };
        crate::stats::record(&src, groups).await
    }

    /// GetBlockIOTune: QEMU's throttle settings of one disk.
    pub async fn block_io_tune(
        &self,
        dom: &Dom,
        disk: &str,
        flags: u32,
    ) -> Result<HashMap<String, zbus::zvariant::OwnedValue>, VirError> {
        check_flags(flags, 1 | 2)?; // AFFECT_LIVE, AFFECT_CONFIG
        let (live, config) = {
            let g = dom.lock();
            (
                g.live.as_ref().map(|l| (l.def.clone(), l.qmp.clone())),
                g.config.clone(),
            )
        };
        match (live, config) {
            (Some((def, qmp)), _) if flags & 2 == 0 => {
                crate::stats::block_io_tune(&def, &qmp, disk).await
            }
            (_, Some(def)) => crate::stats::block_io_tune_inactive(&def, disk),
            (Some((def, _)), None) => crate::stats::block_io_tune_inactive(&def, disk),
            (None, None) => Err(VirError::internal("domain has no definition")),
        }
    }

    /// GetBlockIOParameters / GetSchedulerParameters: cgroup readers. QEMU runs in no
    /// cgroup of this daemon's, so a running domain gets libvirt's "not mounted" answer
    /// and an inactive one the unset defaults of its config.
    pub fn cgroup_parameters(
        &self,
        dom: &Dom,
        controller: &str,
        flags: u32,
    ) -> Result<HashMap<String, zbus::zvariant::OwnedValue>, VirError> {
        check_flags(flags, 1 | 2)?;
        if dom.active() && flags & 2 == 0 {
            return Err(crate::stats::no_cgroup(controller));
        }
        Ok(if controller == "blkio" {
            crate::stats::blkio_inactive()
        } else {
            crate::stats::sched_inactive()
        })
    }

    /// The SchedulerType property: libvirt answers ("posix", 9) for an inactive domain
    /// and needs the cpu cgroup controller for a running one.
    pub fn scheduler_type(&self, dom: &Dom) -> Result<(String, i32), VirError> {
        if dom.active() {
            return Err(crate::stats::no_cgroup("CPU"));
        }
        Ok(("posix".into(), 9))
    }

    // ---- restarts -----------------------------------------------------------------

    async fn reattach_all(&self) {
        let Ok(entries) = std::fs::read_dir(&self.paths.run) else {
            return;
        };
        let files: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().and_then(|x| x.to_str()) == Some("json"))
            .collect();
        for f in files {
            let st: Status = match std::fs::read(&f)
                .map_err(|e| e.to_string())
                .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
            {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("ignoring status file {}: {e}", f.display());
                    let _ = std::fs::remove_file(&f);
                    continue;
                }
            };
            if st.id >= self.next_id.load(Ordering::SeqCst) {
                self.next_id.store(st.id + 1, Ordering::SeqCst);
            }
            self.reattach(st, &f).await;
        }
    }

    async fn reattach(&self, st: Status, file: &Path) {
        let Ok(def) = DomainDef::parse(&st.xml) else {
            tracing::warn!("status of '{}' holds an unusable definition", st.name);
            let _ = std::fs::remove_file(file);
            return;
        };
        let dom = {
            let mut reg = self.reg();
            match reg.by_uuid.get(&st.uuid).cloned() {
                Some(d) => Some((d, false)),
                None if reg.by_name.contains_key(&st.name) => None,
                None => {
                    let d = new_dom(st.uuid, st.name.clone(), None, false);
                    reg.insert(st.name.clone(), d.clone());
                    Some((d, true))
                }
            }
        };
        let Some((dom, added)) = dom else {
            let _ = std::fs::remove_file(file);
            return;
        };
        if added {
            if let Some(d) = self.arc() {
                crate::dbus::serve_domain(&d, &dom).await;
            }
        }
        let marker = st.qmp.to_string_lossy().into_owned();
        let ours = process::alive(st.pid) && process::cmdline_mentions(st.pid, &marker);
        let attached = if ours {
            match PidFd::open(st.pid) {
                Ok(fd) => match Qmp::connect(&st.qmp, Duration::from_secs(5)).await {
                    Ok((qmp, events)) => Some((fd, qmp, events)),
                    Err(e) => {
                        tracing::warn!("domain '{}': monitor unusable: {e}", st.name);
                        None
                    }
                },
                Err(_) => None,
            }
        } else {
            None
        };
        let Some((pidfd, qmp, events)) = attached else {
            tracing::warn!("domain '{}' died while the daemon was away", st.name);
            crate::security::restore(&st.owners);
            self.cleanup_files(&st.name, &st.qmp);
            crate::nics::release(&def.dom, self.ctx.settings.mode).await;
            crate::hostdevs::reattach(&def.dom, self.ctx.settings.mode).await;
            dom.lock().state = (state::SHUTOFF, 3);
            self.emit(&dom, event::STOPPED, 5).await;
            if !dom.persistent() {
                self.remove(&dom).await;
            }
            return;
        };
        let status = qmp.execute("query-status", None).await.ok();
        let run_state = status
            .as_ref()
            .and_then(|s| s.get("status"))
            .and_then(Value::as_str)
            .unwrap_or("running")
            .to_string();
        let new_state = match run_state.as_str() {
            "running" => (
                state::RUNNING,
                if st.state == state::RUNNING {
                    st.reason
                } else {
                    0
                },
            ),
            "shutdown" => (state::SHUTDOWN, 1),
            "guest-panicked" => (state::CRASHED, 1),
            "suspended" => (state::PMSUSPENDED, 0),
            _ => (
                state::PAUSED,
                if st.state == state::PAUSED {
                    st.reason
                } else {
                    0
                },
            ),
        };
        let (exit_tx, exit_rx) = watch::channel(false);
        {
            let mut g = dom.lock();
            g.state = new_state;
            g.live = Some(Live {
                id: st.id,
                pid: st.pid,
                owners: st.owners.clone(),
                qmp_path: st.qmp.clone(),
                qmp,
                def,
                destroying: false,
                shutdown_seen: run_state == "shutdown",
                crashed: false,
                fake_reboot: false,
                exited: exit_rx,
            });
        }
        self.save_status(&dom);
        tracing::info!(domain = %st.name, pid = st.pid, "reattached ({run_state})");
        if let Some(d) = self.arc() {
            tokio::spawn(monitor(d, dom.clone(), events, pidfd, exit_tx));
        }
    }

    fn cleanup_files(&self, name: &str, qmp: &Path) {
        let _ = std::fs::remove_file(qmp);
        // The domain's own folder (monitor, helper sockets), never the run folder itself.
        if let Some(dir) = qmp.parent().filter(|d| {
            d.parent() == Some(self.paths.run.as_path())
                && d.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("domain-"))
        }) {
            let _ = std::fs::remove_dir_all(dir);
        }
        let _ = std::fs::remove_file(self.pid_file(name));
        let _ = common::persist::remove_durable(&self.status_file(name));
    }

    fn autostart_all(&self) {
        let doms: Vec<Arc<Dom>> = self
            .reg()
            .by_uuid
            .values()
            .filter(|d| d.autostart() && !d.active())
            .cloned()
            .collect();
        for dom in doms {
            let Some(d) = self.arc() else { return };
            tokio::spawn(async move {
                if let Err(e) = d.create(&dom, 0).await {
                    tracing::warn!(domain = %dom.name(), "autostart failed: {e}");
                }
            });
        }
    }

    // ---- the state machine --------------------------------------------------------

    async fn on_event(&self, dom: &Arc<Dom>, ev: &qmp::Event) {
        match ev.name.as_str() {
            "STOP" if self.transition(dom, &[state::RUNNING], (state::PAUSED, 0)) => {
                self.emit(dom, event::SUSPENDED, 0).await;
                self.save_status(dom);
            }
            "RESUME"
                if self.transition(
                    dom,
                    &[state::PAUSED, state::PMSUSPENDED],
                    (state::RUNNING, 5),
                ) =>
            {
                self.emit(dom, event::RESUMED, 0).await;
                self.save_status(dom);
            }
            "SUSPEND" if self.transition(dom, &[state::RUNNING], (state::PMSUSPENDED, 0)) => {
                self.emit(dom, event::PMSUSPENDED, 0).await;
                self.save_status(dom);
            }
            "WAKEUP" if self.transition(dom, &[state::PMSUSPENDED], (state::RUNNING, 8)) => {
                self.emit(dom, event::STARTED, 4).await;
                self.save_status(dom);
            }
            "SHUTDOWN" => {
                let guest = ev
                    .data
                    .get("guest")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
                let reset = ev.data.get("reason").and_then(Value::as_str) == Some("guest-reset");
                let (fake_reboot, action, qmp) = {
                    let mut g = dom.lock();
                    let Some(l) = g.live.as_mut() else { return };
                    if l.destroying {
                        // Our own SIGTERM: the exit is reported as destroyed, not shutdown.
                        return;
                    }
                    let fr = std::mem::take(&mut l.fake_reboot);
                    let action = if reset {
                        l.def.on_reboot
                    } else {
                        l.def.on_poweroff
                    };
                    (fr, action, l.qmp.clone())
                };
                if fake_reboot || action == Action::Restart {
                    let _ = qmp.execute("system_reset", None).await;
                    let _ = qmp.execute("cont", None).await;
                    return;
                }
                if self.transition(dom, &[state::RUNNING, state::PAUSED], (state::SHUTDOWN, 1)) {
                    self.emit(dom, event::SHUTDOWN, if guest { 1 } else { 2 })
                        .await;
                    self.save_status(dom);
                }
                if action == Action::Destroy {
                    if let Some(l) = dom.lock().live.as_mut() {
                        l.shutdown_seen = true;
                    }
                    let _ = qmp.execute("quit", None).await;
                }
            }
            "GUEST_PANICKED" => {
                let (action, qmp) = {
                    let mut g = dom.lock();
                    let Some(l) = g.live.as_mut() else { return };
                    l.crashed = true;
                    (l.def.on_crash, l.qmp.clone())
                };
                if self.transition(dom, &[state::RUNNING, state::PAUSED], (state::CRASHED, 1)) {
                    self.emit(dom, event::CRASHED, 0).await;
                    self.save_status(dom);
                }
                match action {
                    Action::Destroy => {
                        let _ = qmp.execute("quit", None).await;
                    }
                    Action::Restart => {
                        let _ = qmp.execute("system_reset", None).await;
                        let _ = qmp.execute("cont", None).await;
                        if self.transition(dom, &[state::CRASHED], (state::RUNNING, 0)) {
                            self.save_status(dom);
                        }
                    }
                    Action::Preserve => {}
                }
            }
            _ => {}
        }
    }

    async fn on_exit(&self, dom: &Arc<Dom>) {
        let (live, persistent) = {
            let mut g = dom.lock();
            let live = g.live.take();
            (live, g.config.is_some())
        };
        let Some(l) = live else { return };
        let (reason, detail) = if l.destroying {
            (2, 1)
        } else if l.shutdown_seen {
            (1, 0)
        } else if l.crashed {
            (3, 2)
        } else {
            (3, 5)
        };
        dom.lock().state = (state::SHUTOFF, reason);
        let name = dom.name();
        crate::security::restore(&l.owners);
        self.cleanup_files(&name, &l.qmp_path);
        crate::nics::release(&l.def.dom, self.ctx.settings.mode).await;
        crate::hostdevs::reattach(&l.def.dom, self.ctx.settings.mode).await;
        tracing::info!(domain = %name, pid = l.pid, reason, "QEMU exited");
        self.emit(dom, event::STOPPED, detail).await;
        if persistent {
            self.props_changed(dom).await;
        } else {
            self.remove(dom).await;
        }
    }

    pub fn busy_now(&self) -> bool {
        self.jobs.load(Ordering::SeqCst) > 0 || self.reg().by_uuid.values().any(|d| d.active())
    }
}

fn new_dom(uuid: Uuid, name: String, config: Option<DomainDef>, autostart: bool) -> Arc<Dom> {
    Arc::new(Dom {
        uuid,
        path: common::objpath::domain(&uuid),
        job: tokio::sync::Mutex::new(()),
        inner: Mutex::new(Inner {
            name,
            config,
            live: None,
            state: (state::SHUTOFF, 0),
            autostart,
        }),
    })
}

/// libvirt's rules: a name belongs to one uuid and a uuid to one name.
fn check_conflicts(reg: &Registry, def: &DomainDef) -> Result<(), VirError> {
    if let Some(u) = reg.by_name.get(&def.name) {
        if *u != def.uuid {
            return Err(VirError::operation_failed(format!(
                "domain '{}' already exists with uuid {u}",
                def.name
            )));
        }
    }
    if let Some(d) = reg.by_uuid.get(&def.uuid) {
        let existing = d.name();
        if existing != def.name {
            return Err(VirError::operation_failed(format!(
                "domain '{existing}' is already defined with uuid {}",
                def.uuid
            )));
        }
    }
    Ok(())
}

async fn connect_monitor(
    path: &Path,
    pidfd: &PidFd,
) -> Result<(Qmp, mpsc::UnboundedReceiver<qmp::Event>), String> {
    let deadline = tokio::time::Instant::now() + MONITOR_WAIT;
    let mut delay = Duration::from_millis(1);
    loop {
        if path.exists() {
            match Qmp::connect(path, qmp::DEFAULT_TIMEOUT).await {
                Ok(c) => return Ok(c),
                Err(e) if tokio::time::Instant::now() > deadline => return Err(e.to_string()),
                Err(_) => {}
            }
        }
        if !process::alive(pidfd.pid()) {
            return Err("QEMU exited".into());
        }
        if tokio::time::Instant::now() > deadline {
            return Err("timed out waiting for the monitor".into());
        }
        tokio::select! {
            _ = pidfd.wait() => return Err("QEMU exited".into()),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_millis(2));
    }
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(3).collect();
    if lines.is_empty() {
        String::new()
    } else {
        let mut l = lines;
        l.reverse();
        format!(": {}", l.join(" | "))
    }
}

/// One per running domain: QMP events drive the state machine; process exit ends it.
async fn monitor(
    driver: Arc<Driver>,
    dom: Arc<Dom>,
    mut events: mpsc::UnboundedReceiver<qmp::Event>,
    pidfd: PidFd,
    exited: watch::Sender<bool>,
) {
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Some(ev) => driver.on_event(&dom, &ev).await,
                None => {
                    // The monitor closed: QEMU is exiting. If it lingers, it is killed.
                    if tokio::time::timeout(Duration::from_secs(10), pidfd.wait()).await.is_err() {
                        process::signal(pidfd.pid(), nix::sys::signal::Signal::SIGKILL);
                        pidfd.wait().await;
                    }
                    break;
                }
            },
            _ = pidfd.wait() => break,
        }
    }
    // Events QEMU sent just before exiting still count (e.g. SHUTDOWN before quit).
    while let Ok(ev) = events.try_recv() {
        driver.on_event(&dom, &ev).await;
    }
    driver.on_exit(&dom).await;
    let _ = exited.send(true);
}

impl common::Driver for Driver {
    fn busy(&self) -> bool {
        self.busy_now()
    }

    async fn shutdown(&self) {
        // Wait (bounded) for API calls in flight; running guests are left running and
        // their status files are already on disk.
        for _ in 0..200 {
            if self.jobs.load(Ordering::SeqCst) == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Err(e) = self.configs.checkpoint().await {
            tracing::warn!("cannot checkpoint the config journal: {e}");
        }
    }
}
