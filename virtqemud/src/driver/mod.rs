//! The driver: the registry of domains, one job lock and one state machine per domain,
//! QEMU's lifecycle, the files that let a restarted daemon reattach. It knows nothing
//! of D-Bus: what changes goes out as a typed [`Change`] through its outbox.
//!
//! The registry lock is a std mutex held only to look up or insert. Each domain has a
//! tokio job mutex that serialises API calls on it and a short std mutex for its state,
//! so reads never wait behind an operation; a monitor task per running domain turns QMP
//! events and process exit into state changes and events.
//!
//! | file | what |
//! |---|---|
//! | `domain.rs` | one domain: its locks, config, live run and state |
//! | `registry.rs` | lookups, listing, loading the configs |
//! | `define.rs` | define, undefine, autostart |
//! | `start.rs` | starting QEMU, and the one release step of a run |
//! | `status.rs` | the status files a restarted daemon reattaches from |
//! | `control.rs` | operations on a running domain |
//! | `queries.rs` | XML, vCPUs, statistics |
//! | `peek.rs` | block resize, block and memory peek |
//! | `iotune.rs` | disk I/O limits: GetBlockIOTune, SetBlockIOTune |
//! | `blockjobs.rs` | BlockPull, BlockCommit (below the top), job info, abort, speed |
//! | `graphics_fd.rs` | OpenGraphicsFD: a VNC/SPICE connection through a socket pair |
//! | `settings.rs` | changes short of a redefinition: metadata, vCPUs, memory |
//! | `guest.rs` | the guest agent's answers, guest addresses |
//! | `save.rs` | save images: save, managed save, restore |
//! | `migrate/` | live migration to and from another node (source, destination, settling after a restart), its knobs and job info |
//! | `dump.rs` | core dumps |
//! | `snapshots.rs` | internal snapshots: create, list, revert, delete |
//! | `hotplug.rs` | devices plugged in and out: attach, detach, update |
//! | `reconcile.rs` | the devices and vCPUs of an adopted QEMU, as QEMU has them |
//! | `monitor.rs` | QMP events and exit: the state machine |
//! | `reattach.rs` | adopting running QEMUs after a restart, autostart |

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use common::error::{ErrorCode, VirError};
use common::event::DomainEvent;
use common::job::InFlight;
use common::publish::Outbox;
use common::runtime::Context;

mod blockcopy;
mod blockjobs;
mod control;
mod define;
mod domain;
mod dump;
mod graphics_fd;
mod guest;
mod hotplug;
mod iotune;
mod migrate;
mod monitor;
mod netparams;
mod peek;
mod perf;
mod queries;
mod reattach;
mod reconcile;
mod registry;
mod save;
mod settings;
mod snapshots;
mod start;
mod status;
mod tuning;

pub use blockjobs::parse_job_id as block_job_of;
pub use domain::Dom;
pub use guest::GuestInterface;
use registry::Registry;

bitflags::bitflags! {
    /// `virConnectListAllDomainsFlags`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct ListFlags: u32 {
        const ACTIVE = 1;
        const INACTIVE = 2;
        const PERSISTENT = 4;
        const TRANSIENT = 8;
        const RUNNING = 16;
        const PAUSED = 32;
        const SHUTOFF = 64;
        const OTHER = 128;
        const MANAGEDSAVE = 256;
        const NO_MANAGEDSAVE = 512;
        const AUTOSTART = 1024;
        const NO_AUTOSTART = 2048;
        const HAS_SNAPSHOT = 4096;
        const NO_SNAPSHOT = 8192;
        const HAS_CHECKPOINT = 16384;
        const NO_CHECKPOINT = 32768;
    }

    /// `virDomainCreateFlags` this driver accepts.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct StartFlags: u32 {
        const PAUSED = 1;
        /// Only for DomainCreateXML.
        const AUTODESTROY = 2;
        const BYPASS_CACHE = 4;
        const FORCE_BOOT = 8;
        const VALIDATE = 16;
    }

    /// `virDomainUndefineFlagsValues`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct UndefineFlags: u32 {
        const MANAGED_SAVE = 1;
        const SNAPSHOTS_METADATA = 2;
        const NVRAM = 4;
        const KEEP_NVRAM = 8;
        const CHECKPOINTS_METADATA = 16;
        const TPM = 32;
        const KEEP_TPM = 64;
    }

    /// `virDomainXMLFlags`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct XmlFlags: u32 {
        const SECURE = 1;
        const INACTIVE = 2;
        const UPDATE_CPU = 4;
        const MIGRATABLE = 8;
    }

    /// `virDomainShutdownFlagValues` (also Reboot's): every method is accepted, ACPI
    /// is what this driver does.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct ShutdownFlags: u32 {
        const ACPI_POWER_BTN = 1;
        const GUEST_AGENT = 2;
        const INITCTL = 4;
        const SIGNAL = 8;
        const PARAVIRT = 16;
    }

    /// `virDomainDestroyFlagsValues`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct DestroyFlags: u32 {
        const GRACEFUL = 1;
    }

    /// `virDomainVcpuFlags`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct VcpuFlags: u32 {
        const LIVE = 1;
        const CONFIG = 2;
        const MAXIMUM = 4;
        const GUEST = 8;
    }

    /// `virDomainModificationImpact`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct Impact: u32 {
        const LIVE = 1;
        const CONFIG = 2;
    }
}

/// What the driver tells the outside world; the D-Bus layer turns it into objects,
/// signals and property changes (the `Publisher` in the dbus module).
#[derive(Debug)]
pub enum Change {
    /// A new domain: served before any reply or event names it.
    Added(Arc<Dom>),
    /// A domain that no longer exists.
    Removed(Arc<Dom>),
    /// A lifecycle event (`DomainEvent`).
    Lifecycle(Arc<Dom>, DomainEvent),
    /// Its Active, Id, Persistent or Autostart may have changed.
    Properties(Arc<Dom>),
    /// Its metadata of a `virDomainMetadataType` (and namespace, for an element) changed.
    Metadata(Arc<Dom>, i32, String),
    /// Its guest agent connected (1) or disconnected (2), for a reason (`AgentEvent`).
    Agent(Arc<Dom>, i32, i32),
    /// A snapshot made (served at once) or gone.
    SnapshotAdded(Arc<Dom>, String),
    SnapshotRemoved(Arc<Dom>, String),
    /// Something QEMU reported that has a signal of its own on the domain.
    Signal(Arc<Dom>, crate::events::DomainSignal),
}

/// How long Destroy waits after SIGTERM before SIGKILL.
const DESTROY_GRACE: Duration = Duration::from_secs(5);
/// How long a starting QEMU may take to open its monitor.
const MONITOR_WAIT: Duration = Duration::from_secs(30);

/// Firmware descriptor folders; `VIRTQEMUD_FIRMWARE_DIRS` (colon-separated) replaces
/// them, for tests and for hosts that keep firmware elsewhere.
fn firmware_dirs() -> Vec<PathBuf> {
    match std::env::var_os("VIRTQEMUD_FIRMWARE_DIRS") {
        Some(v) => std::env::split_paths(&v).collect(),
        None => crate::firmware::DIRS.iter().map(PathBuf::from).collect(),
    }
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
    /// Managed save images (libvirt: /var/lib/libvirt/qemu/save,
    /// ~/.config/libvirt/qemu/save).
    save: PathBuf,
    /// Snapshot metadata, a folder per domain (libvirt: /var/lib/libvirt/qemu/snapshot,
    /// ~/.config/libvirt/qemu/snapshot).
    snapshot: PathBuf,
}

impl Paths {
    fn of(s: &common::cli::Settings) -> Paths {
        let system = matches!(s.mode, common::cli::Mode::System);
        Paths {
            config: s.config_dir.join("qemu"),
            autostart: s.config_dir.join("qemu").join("autostart"),
            run: s.runtime_dir.join("qemu"),
            log: s.state_dir.join("log").join("qemu"),
            nvram: if system {
                s.state_dir.join("qemu").join("nvram")
            } else {
                s.config_dir.join("qemu").join("nvram")
            },
            swtpm: if system {
                s.state_dir.join("swtpm")
            } else {
                s.config_dir.join("qemu").join("swtpm")
            },
            save: if system {
                s.state_dir.join("qemu").join("save")
            } else {
                s.config_dir.join("qemu").join("save")
            },
            snapshot: if system {
                s.state_dir.join("qemu").join("snapshot")
            } else {
                s.config_dir.join("qemu").join("snapshot")
            },
        }
    }
}

pub struct Driver {
    pub ctx: Context,
    /// For the monitor tasks and autostart jobs it spawns.
    this: Weak<Driver>,
    /// Where changes go: the D-Bus layer, once connected.
    pub outbox: Outbox<Change>,
    paths: Paths,
    reg: Mutex<Registry>,
    /// Durable writes of the domain configs in `paths.config`.
    configs: common::journal::Journal,
    next_id: AtomicU32,
    calls: InFlight,
    sandbox: bool,
    /// Whom QEMU runs as: the daemon's user, qemu.conf's `user`, or a uid per guest.
    run_as: crate::security::RunAs,
    /// qemu.conf `dynamic_ownership`: hand QEMU's files to its user for the run.
    dynamic_ownership: bool,
    /// The emulator's capabilities as last loaded, reused while the binary is unchanged.
    caps: Mutex<Option<Arc<crate::caps::Caps>>>,
    /// The host's cgroup hierarchy, in system mode (libvirt's session daemon places no
    /// cgroups).
    cgroups: Option<crate::cgroup::Cgroups>,
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

fn no_definition() -> VirError {
    VirError::internal("domain has no definition")
}

impl Driver {
    /// Builds the driver and loads the configs; nothing is published yet. The daemon
    /// then connects the D-Bus layer and calls [`Driver::resume`] (see `crate::start`).
    pub async fn open(ctx: Context) -> anyhow::Result<Arc<Driver>> {
        let s = &ctx.settings;
        let paths = Paths::of(s);
        for d in [&paths.config, &paths.autostart, &paths.run, &paths.log] {
            common::persist::create_dir_all(d, 0o700)?;
        }
        let next_id = std::fs::read_to_string(paths.run.join("next-id"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(1u32);
        let system = matches!(s.mode, common::cli::Mode::System);
        let conf = crate::security::QemuConf::load(&s.config_dir.join("qemu.conf"))?;
        let run_as = crate::security::RunAs::from_conf(&conf, system)?;
        let sandbox = conf.seccomp_sandbox.unwrap_or(true) && (system || run_as.switches());
        if run_as.switches() {
            tracing::info!(?run_as, "QEMU runs unprivileged");
            // QEMU's user must reach, by name only, its own folder in the run folder, the
            // UEFI variable stores, swtpm's state and its log (files there stay 0600,
            // handed over per run; folders become 0711, so nobody lists them).
            for d in [&paths.nvram, &paths.swtpm] {
                common::persist::create_dir_all(d, 0o711)?;
            }
            let parents = [&paths.nvram, &paths.swtpm, &paths.log]
                .into_iter()
                .flat_map(|d| d.ancestors().take(3));
            for d in [s.runtime_dir.as_path(), paths.run.as_path()]
                .into_iter()
                .chain(parents)
            {
                crate::security::make_traversable(d)?;
            }
        }
        let cgroups = system
            .then(|| crate::cgroup::Cgroups::detect(conf.cgroup_controllers.as_deref()))
            .flatten();
        match &cgroups {
            Some(c) => tracing::info!(kind = c.backend().kind(), "cgroups"),
            None if system => tracing::warn!("no cgroup controllers mounted: no domain cgroups"),
            None => {}
        }
        // Replays what a crash left in the journal before the configs are read.
        let configs = common::journal::Journal::open(&paths.config)?;
        let driver = Arc::new_cyclic(|this| Driver {
            ctx,
            this: this.clone(),
            outbox: Outbox::new(),
            paths,
            reg: Mutex::new(Registry::default()),
            configs,
            next_id: AtomicU32::new(next_id.max(1)),
            calls: InFlight::new(),
            sandbox,
            run_as,
            dynamic_ownership: conf.dynamic_ownership.unwrap_or(true),
            caps: Mutex::new(None),
            cgroups,
        });
        driver.load_configs();
        driver.remove_partial_saves();
        Ok(driver)
    }

    /// Adopts the QEMUs still running and starts the autostart domains.
    pub async fn adopt_and_autostart(&self) {
        self.reattach_all().await;
        self.settle_snapshots_all().await;
        self.autostart_all();
    }

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

    fn arc(&self) -> Option<Arc<Driver>> {
        self.this.upgrade()
    }

    fn reg(&self) -> MutexGuard<'_, Registry> {
        self.reg.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn lifecycle(&self, dom: &Arc<Dom>, event: DomainEvent) {
        tracing::info!(domain = %dom.name(), ?event, "domain event");
        self.outbox
            .send(Change::Lifecycle(dom.clone(), event))
            .await;
    }

    async fn props_changed(&self, dom: &Arc<Dom>) {
        self.outbox.send(Change::Properties(dom.clone())).await;
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
    fn lock_file(&self, name: &str) -> PathBuf {
        self.paths.run.join(format!("{name}.lock"))
    }
    pub fn log_file(&self, name: &str) -> PathBuf {
        self.paths.log.join(format!("{name}.log"))
    }

    pub fn busy_now(&self) -> bool {
        !self.calls.idle() || self.reg().by_uuid.values().any(|d| d.active())
    }
}

impl common::Driver for Driver {
    fn busy(&self) -> bool {
        self.busy_now()
    }

    async fn shutdown(&self) {
        // Wait (bounded) for API calls in flight; running guests are left running and
        // their status files are already on disk.
        for _ in 0..200 {
            if self.calls.idle() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if let Err(e) = self.configs.checkpoint().await {
            tracing::warn!("cannot checkpoint the config journal: {e}");
        }
    }
}
