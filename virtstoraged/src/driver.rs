//! The driver: the pool registry, each pool's job lock, persistence and restarts, and
//! every operation the D-Bus interfaces translate to. It does not know D-Bus: what
//! clients must see goes out as a typed [`Change`].

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use common::error::{check_flags, flags as read_flags, ErrorCode, VirError};
use common::event::StoragePoolEvent;
use common::job::InFlight;
use common::objpath;
use common::publish::Outbox;
use common::runtime::Context;
use uuid::Uuid;
use zbus::zvariant::OwnedObjectPath;

use crate::backend::{self, BackendError, BuildFlags, PoolBackend, PoolSizes, WipePattern};
use crate::xml::{PoolDef, VolDef};

/// What clients must see of a change, in the order it happened. Publishing is awaited:
/// an added object is served before the reply that names it and before its event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    PoolAdded(Uuid),
    PoolRemoved(Uuid),
    Lifecycle(Uuid, StoragePoolEvent),
    /// The pool started (true) or stopped (false) and stays defined.
    ActiveChanged(Uuid, bool),
    /// A `Refresh` call re-read the pool.
    Refreshed(Uuid),
    /// A volume (by key) appeared or went away.
    VolumeAdded(String),
    VolumeRemoved(String),
    /// A secret appeared or went away, and its lifecycle event.
    SecretAdded(Uuid),
    SecretRemoved(Uuid),
    SecretLifecycle(Uuid, common::event::SecretEvent),
}

bitflags::bitflags! {
    /// `virConnectListAllStoragePoolsFlags` this daemon filters on.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct ListFlags: u32 {
        const INACTIVE = 1;
        const ACTIVE = 2;
        const PERSISTENT = 4;
        const TRANSIENT = 8;
        const AUTOSTART = 16;
        const NO_AUTOSTART = 32;
        const DIR = 64;
        const FS = 128;
        const NETFS = 256;
        const LOGICAL = 512;
        const DISK = 1024;
        const ISCSI = 2048;
        const SCSI = 4096;
        const MPATH = 8192;
        const RBD = 16384;
        const SHEEPDOG = 32768;
        const GLUSTER = 65536;
        const ZFS = 131072;
        const VSTORAGE = 262144;
        /// Every type bit above (dir .. vstorage), accepted and filtered.
        const ALL_TYPES = 0x7ffc0;
    }

    /// `virStoragePoolCreateFlags`: build (and how) before starting.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct CreateFlags: u32 {
        const WITH_BUILD = 1;
        const WITH_BUILD_OVERWRITE = 2;
        const WITH_BUILD_NO_OVERWRITE = 4;
    }

    /// `virStoragePoolDeleteFlags`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct DeleteFlags: u32 {
        const ZEROED = 1;
    }

    /// `virStorageXMLFlags`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct XmlFlags: u32 {
        const INACTIVE = 1;
    }

    /// `virStorageVolCreateFlags`: accepted; metadata preallocation is the default.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct VolCreateFlags: u32 {
        const PREALLOC_METADATA = 1;
        const REFLINK = 2;
    }

    /// `virStorageVolDeleteFlags`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct VolDeleteFlags: u32 {
        const ZEROED = 1;
        const WITH_SNAPSHOTS = 2;
    }

    /// `virStorageVolResizeFlags`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct ResizeFlags: u32 {
        const ALLOCATE = 1;
        const DELTA = 2;
        const SHRINK = 4;
    }
}

impl CreateFlags {
    /// The build a create asks for, as libvirt's storagePoolCreate translates it.
    fn build_flags(self) -> BuildFlags {
        let mut b = BuildFlags::empty();
        b.set(
            BuildFlags::OVERWRITE,
            self.contains(Self::WITH_BUILD_OVERWRITE),
        );
        b.set(
            BuildFlags::NO_OVERWRITE,
            self.contains(Self::WITH_BUILD_NO_OVERWRITE),
        );
        b
    }
}

type Res<T> = Result<T, VirError>;

struct PoolState {
    def: PoolDef,
    active: bool,
    persistent: bool,
    autostart: bool,
    vols: BTreeMap<String, VolDef>,
}

/// One pool. Operations hold `job` (libvirt's job model: one operation per pool at a
/// time, held across builds, refreshes, volume creation and deletion); reads take only
/// the state lock, held for a copy and never across an await or a blocking call, so a
/// property read or a list never waits behind a build. Volume transfers go at the
/// client's pace and so hold no lock while bytes move (see [`Transfer`]).
pub struct Pool {
    pub uuid: Uuid,
    /// Its object is served on every connection: only then do lookups and lists hand
    /// out its path (no UnknownObject for a path a client was given).
    served: std::sync::atomic::AtomicBool,
    backend: Arc<dyn PoolBackend>,
    state: Mutex<PoolState>,
    job: tokio::sync::Mutex<()>,
    /// Orders the Autostart setter with Undefine (which takes it inside its job, for
    /// file work only). The setter cannot wait for `job`: zbus holds its object
    /// server's lock across a property setter, and a job that publishes (an Undefine
    /// taking the pool off the bus) needs that lock: a deadlock.
    autostart_lock: tokio::sync::Mutex<()>,
}

impl Pool {
    fn served(&self) -> bool {
        self.served.load(std::sync::atomic::Ordering::Acquire)
    }

    fn state(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
    pub fn path(&self) -> OwnedObjectPath {
        objpath::storage_pool(&self.uuid)
    }
    pub fn name(&self) -> String {
        self.state().def.name.to_string()
    }
    pub fn active(&self) -> bool {
        self.state().active
    }
    pub fn persistent(&self) -> bool {
        self.state().persistent
    }
    pub fn autostart(&self) -> bool {
        self.state().autostart
    }
}

pub struct Driver {
    pub ctx: Context,
    pools: Mutex<HashMap<Uuid, Arc<Pool>>>,
    jobs: InFlight,
    pub outbox: Outbox<Change>,
    /// The running uploads and downloads, by volume key.
    transfers: Mutex<HashMap<String, Vec<Arc<Transfer>>>>,
    pub secrets: crate::secrets::Secrets,
}

/// A LUKS passphrase file for qemu-img, removed when dropped.
struct KeyFile {
    path: PathBuf,
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Why a transfer was stopped from outside.
#[derive(Debug, Clone, Copy)]
enum Abort {
    Deleted,
    Stopping,
}

/// A running Upload or Download of one volume. It holds no lock while bytes move, at
/// the client's pace: Delete finds it here and cancels it; Resize and Wipe of the
/// volume, a second Upload, and Destroy and Refresh of the pool refuse while it runs
/// (libvirt's `in_use` and `asyncjobs`). An upload takes the pool's job only to put its
/// finished copy in place, so a Delete comes either before (and cancels it) or after.
struct Transfer {
    pool: Uuid,
    upload: bool,
    moved: AtomicU64,
    cancel: crate::transfer::Cancel,
    why: Mutex<Option<Abort>>,
}

impl Transfer {
    fn abort(&self, why: Abort) {
        *self.why.lock().unwrap_or_else(|p| p.into_inner()) = Some(why);
        self.cancel.cancel();
    }

    /// The error of a transfer that failed: the reason it was stopped, if it was.
    fn explain(&self, vol: &VolDef, e: VirError) -> VirError {
        let what = if self.upload { "upload" } else { "download" };
        match *self.why.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(Abort::Deleted) => VirError::operation_failed(format!(
                "volume '{}' was deleted during the {what}",
                vol.name
            )),
            Some(Abort::Stopping) => VirError::operation_failed(format!(
                "the {what} of volume '{}' was stopped: the daemon is shutting down",
                vol.name
            )),
            None => e,
        }
    }
}

/// A transfer's entry in [`Driver::transfers`], removed when dropped.
struct Registered<'a> {
    driver: &'a Driver,
    key: String,
    t: Arc<Transfer>,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        let mut map = self.driver.transfer_map();
        if let Some(list) = map.get_mut(&self.key) {
            list.retain(|t| !Arc::ptr_eq(t, &self.t));
            if list.is_empty() {
                map.remove(&self.key);
            }
        }
    }
}

fn in_use(vol: &VolDef) -> VirError {
    VirError::operation_invalid(format!("volume '{}' is still in use.", vol.name))
}

fn no_pool(what: impl std::fmt::Display) -> VirError {
    VirError::new(ErrorCode::NoStoragePool, what)
}

fn no_vol(what: impl std::fmt::Display) -> VirError {
    VirError::new(ErrorCode::NoStorageVol, what)
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> VirError {
    VirError::system(format!("{what} '{}'", path.display()), &e)
}

/// Runs file work that may fsync off the async worker threads: a slow disk must not
/// stall every other call served by the same worker.
async fn blocking_io<T: Send + 'static>(
    what: &'static str,
    path: PathBuf,
    f: impl FnOnce(&Path) -> std::io::Result<T> + Send + 'static,
) -> Res<T> {
    tokio::task::spawn_blocking(move || f(&path).map_err(|e| io_err(what, &path, e)))
        .await
        .map_err(|e| VirError::internal(format!("worker failed: {e}")))?
}

/// `persist::write_atomic` (temp, fsync, rename) off the async threads.
async fn write_durable(what: &'static str, path: PathBuf, data: String) -> Res<()> {
    blocking_io(what, path, move |p| {
        common::persist::write_atomic(p, data.as_bytes(), 0o600)
    })
    .await
}

/// `persist::remove_durable` (unlink, fsync of the folder) off the async threads.
async fn remove_durable(what: &'static str, path: PathBuf) -> Res<()> {
    blocking_io(what, path, common::persist::remove_durable).await
}

/// Removes the temp files of `persist::write_atomic` (`.NAME.tmpPID`) that a daemon
/// killed mid-write left in `dir`: the file they were to replace is whole either way.
fn remove_stale_temps(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        let stale = name.starts_with('.')
            && name
                .rsplit_once(".tmp")
                .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if stale && e.file_type().is_ok_and(|t| t.is_file()) {
            tracing::info!("removing {}, left by a write cut short", e.path().display());
            let _ = std::fs::remove_file(e.path());
        }
    }
}

impl Driver {
    /// Builds the driver with nothing loaded yet. [`Driver::load`] reads the disk once
    /// the outbox is connected, so every pool and volume it finds is published.
    pub fn new(ctx: Context) -> anyhow::Result<Arc<Driver>> {
        // libvirt's place: /etc/libvirt/secrets, ~/.config/libvirt/secrets.
        let ctx_secrets_dir = ctx.settings.config_dir.join("secrets");
        let driver = Arc::new(Driver {
            ctx,
            pools: Mutex::new(HashMap::new()),
            jobs: InFlight::new(),
            outbox: Outbox::new(),
            transfers: Mutex::new(HashMap::new()),
            secrets: crate::secrets::Secrets::new(ctx_secrets_dir),
        });
        for d in [
            driver.config_dir(),
            driver.autostart_dir(),
            driver.status_dir(),
        ] {
            common::persist::create_dir_all(&d, 0o755)?;
        }
        Ok(driver)
    }

    fn config_dir(&self) -> PathBuf {
        self.ctx.settings.config_dir.join("storage")
    }
    fn autostart_dir(&self) -> PathBuf {
        self.config_dir().join("autostart")
    }
    fn status_dir(&self) -> PathBuf {
        self.ctx.settings.runtime_dir.join("storage")
    }
    fn file(dir: PathBuf, def: &PoolDef) -> PathBuf {
        dir.join(format!("{}.xml", def.name))
    }

    fn registry(&self) -> MutexGuard<'_, HashMap<Uuid, Arc<Pool>>> {
        self.pools.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn transfer_map(&self) -> MutexGuard<'_, HashMap<String, Vec<Arc<Transfer>>>> {
        self.transfers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Called with the pool's job held: the pool is still the one registered. Calls
    /// that found it before an Undefine or a transient pool's Destroy took it away
    /// then fail as libvirt's do, so such an operation succeeds exactly once.
    fn require_defined(&self, pool: &Arc<Pool>) -> Res<()> {
        match self.registry().get(&pool.uuid) {
            Some(p) if Arc::ptr_eq(p, pool) => Ok(()),
            _ => Err(no_pool(format!(
                "no storage pool with matching uuid '{}'",
                pool.uuid
            ))),
        }
    }

    /// Called with the pool's job held: the volume as it is now, or "not found" when a
    /// Delete (or a Destroy) came first.
    fn require_vol(&self, pool: &Arc<Pool>, key: &str) -> Res<VolDef> {
        pool.state()
            .vols
            .get(key)
            .cloned()
            .ok_or_else(|| no_vol(format!("no storage vol with matching key {key}")))
    }

    fn require_no_transfer(&self, pool: &Pool) -> Res<()> {
        if self
            .transfer_map()
            .values()
            .flatten()
            .any(|t| t.pool == pool.uuid)
        {
            return Err(VirError::operation_invalid(format!(
                "pool '{}' has asynchronous jobs running.",
                pool.name()
            )));
        }
        Ok(())
    }

    fn require_vol_idle(&self, vol: &VolDef) -> Res<()> {
        if self.transfer_map().contains_key(&vol.key) {
            return Err(in_use(vol));
        }
        Ok(())
    }

    fn read_defs(dir: &Path) -> Vec<PoolDef> {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut defs = Vec::new();
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) != Some("xml") {
                continue;
            }
            match std::fs::read_to_string(&p)
                .map_err(|e| e.to_string())
                .and_then(|t| PoolDef::parse(&t).map_err(|e| e.to_string()))
            {
                Ok(d) => defs.push(d),
                Err(e) => tracing::warn!("ignoring {}: {e}", p.display()),
            }
        }
        defs
    }

    /// Loads definitions and runtime status, adopts active pools and autostarts. Call
    /// it once, after the outbox is connected.
    pub async fn load(self: &Arc<Self>) {
        for dir in [self.config_dir(), self.autostart_dir(), self.status_dir()] {
            remove_stale_temps(&dir);
        }
        for uuid in self.secrets.load() {
            self.outbox.send(Change::SecretAdded(uuid)).await;
        }
        for def in Self::read_defs(&self.config_dir()) {
            let autostart = Self::file(self.autostart_dir(), &def).exists();
            match self.insert(def, true, autostart) {
                Ok(p) => self.publish_pool(&p).await,
                Err(e) => tracing::warn!("pool not loaded: {e}"),
            }
        }
        for def in Self::read_defs(&self.status_dir()) {
            let pool = match self.pool_by_uuid(&def.uuid) {
                Ok(p) => p,
                Err(_) => match self.insert(def.clone(), false, false) {
                    Ok(p) => {
                        self.publish_pool(&p).await;
                        p
                    }
                    Err(e) => {
                        tracing::warn!("pool status not loaded: {e}");
                        continue;
                    }
                },
            };
            // Adopt: the pool was active before the restart.
            if let Err(e) = self.activate(&pool).await {
                tracing::warn!(pool = %def.name, "cannot adopt active pool: {e}");
            }
        }
        let pools: Vec<_> = self.registry().values().cloned().collect();
        for pool in pools {
            if pool.autostart() && !pool.active() {
                if let Err(e) = self.activate(&pool).await {
                    tracing::warn!(pool = %pool.name(), "autostart failed: {e}");
                }
            }
        }
    }

    /// `SecretDefineXML`: the secret's path, served before the reply and the event.
    pub async fn define_secret(&self, xml: &str, flags: u32) -> Res<OwnedObjectPath> {
        use common::event::SecretEvent;
        let (def, how) = self.secrets.define(xml, flags).await?;
        if matches!(how, crate::secrets::Defined::New) {
            self.outbox.send(Change::SecretAdded(def.uuid)).await;
        }
        self.outbox
            .send(Change::SecretLifecycle(def.uuid, SecretEvent::Defined))
            .await;
        Ok(objpath::secret(&def.uuid))
    }

    pub async fn undefine_secret(&self, uuid: &Uuid) -> Res<()> {
        use common::event::SecretEvent;
        self.secrets.undefine(uuid).await?;
        self.outbox.send(Change::SecretRemoved(*uuid)).await;
        self.outbox
            .send(Change::SecretLifecycle(*uuid, SecretEvent::Undefined))
            .await;
        Ok(())
    }

    /// Adds a pool to the registry, refusing a duplicate name or UUID.
    fn insert(&self, def: PoolDef, persistent: bool, autostart: bool) -> Res<Arc<Pool>> {
        let backend: Arc<dyn PoolBackend> = Arc::from(backend::for_type(def.kind)?);
        let mut reg = self.registry();
        for p in reg.values() {
            let s = p.state();
            if s.def.name == def.name || p.uuid == def.uuid {
                return Err(VirError::operation_invalid(format!(
                    "pool '{}' is already defined with uuid {}",
                    s.def.name, p.uuid
                )));
            }
        }
        let pool = Arc::new(Pool {
            uuid: def.uuid,
            served: std::sync::atomic::AtomicBool::new(false),
            backend,
            state: Mutex::new(PoolState {
                def,
                active: false,
                persistent,
                autostart,
                vols: BTreeMap::new(),
            }),
            job: tokio::sync::Mutex::new(()),
            autostart_lock: tokio::sync::Mutex::new(()),
        });
        reg.insert(pool.uuid, pool.clone());
        Ok(pool)
    }

    pub fn busy(&self) -> bool {
        !self.jobs.idle()
    }

    pub fn pools(&self) -> Vec<Arc<Pool>> {
        let mut v: Vec<_> = self
            .registry()
            .values()
            .filter(|p| p.served())
            .cloned()
            .collect();
        v.sort_by_key(|p| p.name());
        v
    }

    /// Serves a new pool's object, then lets lookups and lists hand it out.
    async fn publish_pool(&self, pool: &Pool) {
        self.outbox.send(Change::PoolAdded(pool.uuid)).await;
        pool.served
            .store(true, std::sync::atomic::Ordering::Release);
    }

    pub fn pool_by_uuid(&self, uuid: &Uuid) -> Res<Arc<Pool>> {
        self.registry()
            .get(uuid)
            .filter(|p| p.served())
            .cloned()
            .ok_or_else(|| no_pool(format!("no storage pool with matching uuid '{uuid}'")))
    }

    pub fn pool_by_uuid_str(&self, s: &str) -> Res<Arc<Pool>> {
        let u = Uuid::parse_str(s)
            .map_err(|_| no_pool(format!("no storage pool with matching uuid '{s}'")))?;
        self.pool_by_uuid(&u)
    }

    pub fn pool_by_name(&self, name: &str) -> Res<Arc<Pool>> {
        self.registry()
            .values()
            .find(|p| p.served() && p.state().def.name.as_str() == name)
            .cloned()
            .ok_or_else(|| no_pool(format!("no storage pool with matching name '{name}'")))
    }

    /// The pool and volume holding `key` (or path: keys are paths here).
    pub fn vol_by_key(&self, key: &str) -> Res<(Arc<Pool>, VolDef)> {
        for p in self.registry().values() {
            let s = p.state();
            if let Some(v) = s.vols.values().find(|v| v.key == key) {
                return Ok((p.clone(), v.clone()));
            }
        }
        Err(no_vol(format!("no storage vol with matching key {key}")))
    }

    pub fn vol_by_path(&self, path: &str) -> Res<(Arc<Pool>, VolDef)> {
        let path = std::fs::canonicalize(path)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_else(|_| path.to_owned());
        self.vol_by_key(&path)
            .map_err(|_| no_vol(format!("no storage vol with matching path '{path}'")))
    }

    pub fn list_pools(&self, flags: u32) -> Res<Vec<OwnedObjectPath>> {
        let flags: ListFlags = read_flags(flags)?;
        let pair = |yes: ListFlags, no: ListFlags, v: bool| {
            !flags.intersects(yes | no) || (v && flags.contains(yes)) || (!v && flags.contains(no))
        };
        Ok(self
            .pools()
            .into_iter()
            .filter(|p| {
                let s = p.state();
                let tbit = match s.def.kind {
                    crate::xml::PoolType::Dir => ListFlags::DIR,
                    crate::xml::PoolType::Fs => ListFlags::FS,
                    crate::xml::PoolType::Logical => ListFlags::LOGICAL,
                };
                pair(ListFlags::ACTIVE, ListFlags::INACTIVE, s.active)
                    && pair(ListFlags::PERSISTENT, ListFlags::TRANSIENT, s.persistent)
                    && pair(ListFlags::AUTOSTART, ListFlags::NO_AUTOSTART, s.autostart)
                    && (!flags.intersects(ListFlags::ALL_TYPES) || flags.contains(tbit))
            })
            .map(|p| p.path())
            .collect())
    }

    async fn emit(&self, pool: &Pool, ev: StoragePoolEvent) {
        self.outbox.send(Change::Lifecycle(pool.uuid, ev)).await;
    }

    async fn blocking<T: Send + 'static>(
        f: impl FnOnce() -> Result<T, BackendError> + Send + 'static,
    ) -> Res<T> {
        tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| VirError::internal(format!("worker failed: {e}")))?
            .map_err(VirError::from)
    }

    /// Records runtime status, starts the backend, refreshes (caller holds the job).
    /// The status is on disk before anything is mounted: a daemon killed in between
    /// finds it on restart and adopts (or makes) the mount, never leaves one it does
    /// not know. A start that fails takes its status back.
    async fn activate(self: &Arc<Self>, pool: &Arc<Pool>) -> Res<()> {
        let def = pool.state().def.clone();
        let b = pool.backend.clone();
        let d2 = def.clone();
        let status = Self::file(self.status_dir(), &def);
        write_durable("cannot write status", status.clone(), def.to_xml()).await?;
        if let Err(e) = Self::blocking(move || b.start(&d2)).await {
            let _ = remove_durable("cannot remove", status).await;
            return Err(e);
        }
        pool.state().active = true;
        self.refresh_locked(pool).await?;
        Ok(())
    }

    async fn refresh_locked(self: &Arc<Self>, pool: &Arc<Pool>) -> Res<()> {
        let def = pool.state().def.clone();
        let b = pool.backend.clone();
        let (sizes, vols) = Self::blocking(move || b.refresh(&def)).await?;
        let (added, removed) = {
            let mut s = pool.state();
            let PoolSizes {
                capacity,
                allocation,
                available,
            } = sizes;
            s.def.capacity = capacity;
            s.def.allocation = allocation;
            s.def.available = available;
            let new: BTreeMap<String, VolDef> =
                vols.into_iter().map(|v| (v.key.clone(), v)).collect();
            let added: Vec<String> = new
                .keys()
                .filter(|k| !s.vols.contains_key(*k))
                .cloned()
                .collect();
            let removed: Vec<String> = s
                .vols
                .keys()
                .filter(|k| !new.contains_key(*k))
                .cloned()
                .collect();
            s.vols = new;
            (added, removed)
        };
        for k in removed {
            self.outbox.send(Change::VolumeRemoved(k)).await;
        }
        for k in added {
            self.outbox.send(Change::VolumeAdded(k)).await;
        }
        Ok(())
    }

    pub async fn define_xml(self: &Arc<Self>, xml: &str, flags: u32) -> Res<OwnedObjectPath> {
        check_flags(flags, 0)?;
        let def = PoolDef::parse(xml)?;
        // Redefining an existing pool (same name and uuid) replaces its config.
        if let Ok(p) = self.pool_by_uuid(&def.uuid) {
            let same = p.state().def.name == def.name;
            if !same {
                return Err(VirError::operation_invalid(format!(
                    "pool '{}' is already defined with uuid {}",
                    p.name(),
                    p.uuid
                )));
            }
            self.write_config(&def).await?;
            {
                let mut s = p.state();
                s.persistent = true;
                if !s.active {
                    s.def = def;
                }
            }
            self.emit(&p, StoragePoolEvent::Defined).await;
            return Ok(p.path());
        }
        let pool = self.insert(def.clone(), true, false)?;
        if let Err(e) = self.write_config(&def).await {
            self.registry().remove(&pool.uuid);
            return Err(e);
        }
        self.publish_pool(&pool).await;
        self.emit(&pool, StoragePoolEvent::Defined).await;
        Ok(pool.path())
    }

    async fn write_config(&self, def: &PoolDef) -> Res<()> {
        write_durable(
            "cannot write",
            Self::file(self.config_dir(), def),
            def.to_xml(),
        )
        .await
    }

    pub async fn create_xml(self: &Arc<Self>, xml: &str, flags: u32) -> Res<OwnedObjectPath> {
        // WITH_BUILD and the overwrite variants build before starting.
        let flags: CreateFlags = read_flags(flags)?;
        let def = PoolDef::parse(xml)?;
        let pool = self.insert(def.clone(), false, false)?;
        let _g = self.jobs.enter();
        let res = async {
            if !flags.is_empty() {
                let build_flags = flags.build_flags();
                let b = pool.backend.clone();
                let d = def.clone();
                Self::blocking(move || b.build(&d, build_flags)).await?;
            }
            self.activate(&pool).await
        }
        .await;
        if let Err(e) = res {
            self.registry().remove(&pool.uuid);
            return Err(e);
        }
        self.publish_pool(&pool).await;
        self.emit(&pool, StoragePoolEvent::Started).await;
        Ok(pool.path())
    }

    pub async fn build(self: &Arc<Self>, pool: &Arc<Pool>, flags: u32) -> Res<()> {
        let flags: BuildFlags = read_flags(flags)?;
        let _j = pool.job.lock().await;
        let _g = self.jobs.enter();
        self.require_defined(pool)?;
        self.require_inactive(pool)?;
        let def = pool.state().def.clone();
        let b = pool.backend.clone();
        Self::blocking(move || b.build(&def, flags)).await?;
        self.emit(pool, StoragePoolEvent::Created).await;
        Ok(())
    }

    pub async fn create(self: &Arc<Self>, pool: &Arc<Pool>, flags: u32) -> Res<()> {
        let flags: CreateFlags = read_flags(flags)?;
        let _j = pool.job.lock().await;
        let _g = self.jobs.enter();
        self.require_defined(pool)?;
        self.require_inactive(pool)?;
        if !flags.is_empty() {
            let build_flags = flags.build_flags();
            let def = pool.state().def.clone();
            let b = pool.backend.clone();
            Self::blocking(move || b.build(&def, build_flags)).await?;
        }
        self.activate(pool).await?;
        self.emit(pool, StoragePoolEvent::Started).await;
        self.outbox
            .send(Change::ActiveChanged(pool.uuid, true))
            .await;
        Ok(())
    }

    pub async fn destroy(self: &Arc<Self>, pool: &Arc<Pool>) -> Res<()> {
        let _j = pool.job.lock().await;
        let _g = self.jobs.enter();
        self.require_defined(pool)?;
        self.require_active(pool)?;
        self.require_no_transfer(pool)?;
        let def = pool.state().def.clone();
        let b = pool.backend.clone();
        let d2 = def.clone();
        Self::blocking(move || b.stop(&d2)).await?;
        let _ = remove_durable("cannot remove", Self::file(self.status_dir(), &def)).await;
        let (keys, transient) = {
            let mut s = pool.state();
            s.active = false;
            let keys: Vec<String> = std::mem::take(&mut s.vols).into_keys().collect();
            (keys, !s.persistent)
        };
        for k in keys {
            self.outbox.send(Change::VolumeRemoved(k)).await;
        }
        self.emit(pool, StoragePoolEvent::Stopped).await;
        if transient {
            self.registry().remove(&pool.uuid);
            self.outbox.send(Change::PoolRemoved(pool.uuid)).await;
        } else {
            self.outbox
                .send(Change::ActiveChanged(pool.uuid, false))
                .await;
        }
        Ok(())
    }

    pub async fn delete(self: &Arc<Self>, pool: &Arc<Pool>, flags: u32) -> Res<()> {
        read_flags::<DeleteFlags>(flags)?;
        let _j = pool.job.lock().await;
        let _g = self.jobs.enter();
        self.require_defined(pool)?;
        if pool.active() {
            return Err(VirError::operation_invalid(format!(
                "storage pool '{}' is still active",
                pool.name()
            )));
        }
        let def = pool.state().def.clone();
        let b = pool.backend.clone();
        Self::blocking(move || b.delete(&def)).await?;
        self.emit(pool, StoragePoolEvent::Deleted).await;
        Ok(())
    }

    pub async fn undefine(self: &Arc<Self>, pool: &Arc<Pool>) -> Res<()> {
        let _j = pool.job.lock().await;
        let _g = self.jobs.enter();
        self.require_defined(pool)?;
        let (def, active) = {
            let s = pool.state();
            if !s.persistent {
                return Err(VirError::operation_invalid(format!(
                    "storage pool '{}' is not persistent",
                    s.def.name
                )));
            }
            (s.def.clone(), s.active)
        };
        remove_durable("cannot remove", Self::file(self.config_dir(), &def)).await?;
        {
            // No publishing under this lock: the setter waits for it inside zbus.
            let _a = pool.autostart_lock.lock().await;
            let _ = remove_durable("cannot remove", Self::file(self.autostart_dir(), &def)).await;
            let mut s = pool.state();
            s.persistent = false;
            s.autostart = false;
        }
        self.emit(pool, StoragePoolEvent::Undefined).await;
        if !active {
            self.registry().remove(&pool.uuid);
            self.outbox.send(Change::PoolRemoved(pool.uuid)).await;
        }
        Ok(())
    }

    pub async fn refresh(self: &Arc<Self>, pool: &Arc<Pool>, flags: u32) -> Res<()> {
        check_flags(flags, 0)?;
        let _j = pool.job.lock().await;
        let _g = self.jobs.enter();
        self.require_defined(pool)?;
        self.require_active(pool)?;
        // A refresh removes `.part` files: the copy of a running upload is one.
        self.require_no_transfer(pool)?;
        self.refresh_locked(pool).await?;
        self.outbox.send(Change::Refreshed(pool.uuid)).await;
        Ok(())
    }

    fn require_inactive(&self, pool: &Pool) -> Res<()> {
        if pool.active() {
            Err(VirError::operation_invalid(format!(
                "storage pool '{}' is already active",
                pool.name()
            )))
        } else {
            Ok(())
        }
    }

    fn require_active(&self, pool: &Pool) -> Res<()> {
        if pool.active() {
            Ok(())
        } else {
            Err(VirError::operation_invalid(format!(
                "storage pool '{}' is not active",
                pool.name()
            )))
        }
    }

    pub fn info(&self, pool: &Arc<Pool>) -> (i32, u64, u64, u64) {
        let s = pool.state();
        // virStoragePoolState: INACTIVE 0, RUNNING 2.
        let state = if s.active { 2 } else { 0 };
        (state, s.def.capacity, s.def.allocation, s.def.available)
    }

    pub fn xml_desc(&self, pool: &Arc<Pool>, flags: u32) -> Res<String> {
        read_flags::<XmlFlags>(flags)?;
        Ok(pool.state().def.to_xml())
    }

    /// Serialized with Undefine through the pool's autostart lock (see [`Pool`]): an
    /// Undefine either comes first (the pool is then transient or gone, and refused)
    /// or removes the link this writes; it never leaves one for a pool that is gone.
    pub async fn set_autostart(&self, pool: &Arc<Pool>, on: bool) -> Res<()> {
        let _a = pool.autostart_lock.lock().await;
        let _g = self.jobs.enter();
        self.require_defined(pool)?;
        let def = {
            let s = pool.state();
            if !s.persistent {
                return Err(VirError::operation_invalid(
                    "cannot set autostart for transient storage pool",
                ));
            }
            s.def.clone()
        };
        let link = Self::file(self.autostart_dir(), &def);
        if on {
            write_durable("cannot write", link, def.name.as_str().to_owned()).await?;
        } else if link.exists() {
            remove_durable("cannot remove", link).await?;
        }
        pool.state().autostart = on;
        Ok(())
    }

    pub fn list_vols(&self, pool: &Arc<Pool>, flags: u32) -> Res<Vec<OwnedObjectPath>> {
        check_flags(flags, 0)?;
        self.require_active(pool)?;
        Ok(pool
            .state()
            .vols
            .keys()
            .map(|k| objpath::storage_vol(k))
            .collect())
    }

    pub fn vol_by_name(&self, pool: &Arc<Pool>, name: &str) -> Res<OwnedObjectPath> {
        self.require_active(pool)?;
        pool.state()
            .vols
            .values()
            .find(|v| v.name.as_str() == name)
            .map(|v| objpath::storage_vol(&v.key))
            .ok_or_else(|| no_vol(format!("no storage vol with matching name '{name}'")))
    }

    pub async fn vol_create(
        self: &Arc<Self>,
        pool: &Arc<Pool>,
        xml: &str,
        from_key: Option<&str>,
        flags: u32,
    ) -> Res<OwnedObjectPath> {
        read_flags::<VolCreateFlags>(flags)?;
        let mut vol = VolDef::parse(xml)?;
        // Held to the end: the passphrase file goes once the volume is made.
        let passphrase = self.luks_key_file(&vol)?;
        vol.key_file = passphrase.as_ref().map(|k| k.path.clone());
        let from = match from_key {
            Some(k) => Some(self.vol_by_key(k)?.1),
            None => None,
        };
        let _j = pool.job.lock().await;
        let _g = self.jobs.enter();
        self.require_defined(pool)?;
        self.require_active(pool)?;
        if pool.state().vols.values().any(|v| v.name == vol.name) {
            return Err(VirError::new(ErrorCode::StorageVolExist, &vol.name));
        }
        let def = pool.state().def.clone();
        let b = pool.backend.clone();
        let secret = vol.encryption.as_ref().and_then(|e| e.secret.clone());
        let mut made = Self::blocking(move || b.create_vol(&def, &vol, from.as_ref())).await?;
        if let Some(e) = made.encryption.as_mut() {
            e.secret = secret;
        }
        let key = made.key.clone();
        // Served first: a list or lookup can only name it once it answers.
        self.outbox.send(Change::VolumeAdded(key.clone())).await;
        pool.state().vols.insert(key.clone(), made);
        Ok(objpath::storage_vol(&key))
    }

    /// For a LUKS volume to create: its passphrase (the secret the XML names) in a file
    /// of the daemon's own for qemu-img, removed when the returned guard drops.
    fn luks_key_file(&self, vol: &VolDef) -> Res<Option<KeyFile>> {
        let Some(enc) = &vol.encryption else {
            return Ok(None);
        };
        let uuid = enc
            .secret
            .as_deref()
            .ok_or_else(|| VirError::invalid_arg("no secret provided for luks encryption"))?;
        let uuid = Uuid::parse_str(uuid).map_err(|_| crate::secrets::no_secret(&Uuid::nil()))?;
        let value = self.secrets.value(&uuid, 0, true)?;
        let path = self
            .status_dir()
            .join(format!(".luks-{}.key", Uuid::new_v4().simple()));
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)?;
            f.write_all(&value)
        };
        write().map_err(|e| io_err("write", &path, e))?;
        Ok(Some(KeyFile { path }))
    }

    fn vol_of(&self, key: &str) -> Res<(Arc<Pool>, VolDef)> {
        self.vol_by_key(key)
    }

    pub async fn vol_delete(self: &Arc<Self>, key: &str, flags: u32) -> Res<()> {
        read_flags::<VolDeleteFlags>(flags)?;
        let (pool, _) = self.vol_of(key)?;
        let _j = pool.job.lock().await;
        let _g = self.jobs.enter();
        let vol = self.require_vol(&pool, key)?;
        // A transfer of the volume stops now: its caller is told why, its copy goes.
        if let Some(running) = self.transfer_map().get(key) {
            for t in running {
                t.abort(Abort::Deleted);
            }
        }
        let def = pool.state().def.clone();
        let b = pool.backend.clone();
        Self::blocking(move || b.delete_vol(&def, &vol)).await?;
        pool.state().vols.remove(key);
        self.outbox
            .send(Change::VolumeRemoved(key.to_owned()))
            .await;
        Ok(())
    }

    pub fn vol_info(&self, key: &str) -> Res<(i32, u64, u64)> {
        let (_, v) = self.vol_of(key)?;
        // virStorageVolType FILE = 0.
        Ok((0, v.capacity, v.allocation.unwrap_or(0)))
    }

    pub fn vol_xml(&self, key: &str, flags: u32) -> Res<String> {
        check_flags(flags, 0)?;
        let mut vol = self.vol_of(key)?.1;
        // A LUKS volume found on disk names its secret by the volume's path (usage).
        if let Some(enc) = vol.encryption.as_mut().filter(|e| e.secret.is_none()) {
            let usage = crate::secret::Usage::Volume(vol.path.clone());
            enc.secret = self
                .secrets
                .by_usage(&usage)
                .ok()
                .map(|s| s.uuid.to_string());
        }
        Ok(vol.to_xml())
    }

    pub fn vol_name(&self, key: &str) -> String {
        self.vol_of(key)
            .map(|(_, v)| v.name.to_string())
            .unwrap_or_default()
    }

    async fn reread(&self, pool: &Arc<Pool>, vol: VolDef) -> Res<()> {
        let def = pool.state().def.clone();
        let b = pool.backend.clone();
        let fresh = Self::blocking(move || b.vol_info(&def, &vol)).await?;
        pool.state().vols.insert(fresh.key.clone(), fresh);
        Ok(())
    }

    pub async fn vol_resize(self: &Arc<Self>, key: &str, capacity: u64, flags: u32) -> Res<()> {
        let flags: ResizeFlags = read_flags(flags)?;
        let (pool, _) = self.vol_of(key)?;
        let _j = pool.job.lock().await;
        let _g = self.jobs.enter();
        let vol = self.require_vol(&pool, key)?;
        self.require_vol_idle(&vol)?;
        let shrink = flags.contains(ResizeFlags::SHRINK);
        let target = if flags.contains(ResizeFlags::DELTA) {
            if shrink {
                vol.capacity.saturating_sub(capacity)
            } else {
                vol.capacity.saturating_add(capacity)
            }
        } else {
            capacity
        };
        if target < vol.capacity && !shrink {
            return Err(VirError::invalid_arg(format!(
                "Can't shrink capacity below current capacity unless shrink flag explicitly specified (requested {target}, current {})",
                vol.capacity
            )));
        }
        let def = pool.state().def.clone();
        let b = pool.backend.clone();
        let v2 = vol.clone();
        Self::blocking(move || b.resize_vol(&def, &v2, target, shrink)).await?;
        self.reread(&pool, vol).await
    }

    pub async fn vol_wipe(self: &Arc<Self>, key: &str, pattern: u32, flags: u32) -> Res<()> {
        check_flags(flags, 0)?;
        let pattern = WipePattern::from_wire(pattern)?;
        let (pool, _) = self.vol_of(key)?;
        let _j = pool.job.lock().await;
        let _g = self.jobs.enter();
        let vol = self.require_vol(&pool, key)?;
        self.require_vol_idle(&vol)?;
        let def = pool.state().def.clone();
        let b = pool.backend.clone();
        let v2 = vol.clone();
        Self::blocking(move || b.wipe_vol(&def, &v2, pattern)).await?;
        self.reread(&pool, vol).await
    }

    /// `FindStoragePoolSources`: asks the backend of `kind` what it could use here.
    pub async fn find_sources(&self, kind: &str, spec: &str, flags: u32) -> Res<String> {
        check_flags(flags, 0)?;
        let Some(kind) = crate::xml::PoolType::from_name(kind) else {
            return Err(VirError::new(
                ErrorCode::InvalidArg,
                format!("unknown storage pool type '{kind}'"),
            ));
        };
        let b = backend::for_type(kind)?;
        let spec = (!spec.trim().is_empty()).then(|| spec.to_owned());
        Self::blocking(move || b.find_sources(spec.as_deref())).await
    }

    /// Bytes moved so far by the running transfers of a volume (0 when idle).
    pub fn transfer_progress(&self, key: &str) -> u64 {
        self.transfer_map()
            .get(key)
            .map(|l| l.iter().map(|t| t.moved.load(Ordering::Relaxed)).sum())
            .unwrap_or(0)
    }

    /// Where an upload into a device (an LV) is staged before it is copied in.
    fn scratch_dir(&self) -> PathBuf {
        self.ctx.settings.state_dir.join("storage").join("upload")
    }

    /// Registers a transfer of `key`, under the pool's job so that it is ordered with
    /// Delete, Resize and Wipe; the job is released before any byte moves.
    async fn begin_transfer(
        &self,
        pool: &Arc<Pool>,
        key: &str,
        upload: bool,
    ) -> Res<(Registered<'_>, VolDef)> {
        let _j = pool.job.lock().await;
        self.require_defined(pool)?;
        self.require_active(pool)?;
        let vol = self.require_vol(pool, key)?;
        let cancel = crate::transfer::Cancel::new()
            .map_err(|e| VirError::system("cannot start the transfer", &e))?;
        let t = Arc::new(Transfer {
            pool: pool.uuid,
            upload,
            moved: AtomicU64::new(0),
            cancel,
            why: Mutex::new(None),
        });
        let mut map = self.transfer_map();
        let list = map.entry(key.to_owned()).or_default();
        // Two uploads would each stage a copy and the second would undo the first.
        if upload && list.iter().any(|t| t.upload) {
            return Err(in_use(&vol));
        }
        list.push(t.clone());
        drop(map);
        let reg = Registered {
            driver: self,
            key: key.to_owned(),
            t,
        };
        Ok((reg, vol))
    }

    /// Upload (`upload` true: fd into the volume) or Download. No lock is held while
    /// bytes move: an upload reads into a copy of the volume and takes the pool's job
    /// only to put the finished copy in place.
    pub async fn vol_transfer(
        self: &Arc<Self>,
        key: &str,
        fd: std::os::fd::OwnedFd,
        offset: u64,
        length: u64,
        flags: u32,
        upload: bool,
    ) -> Res<()> {
        check_flags(flags, 0)?;
        let (pool, _) = self.vol_of(key)?;
        let _g = self.jobs.enter();
        let (reg, vol) = self.begin_transfer(&pool, key, upload).await?;
        let t = reg.t.clone();
        let path = PathBuf::from(&vol.path);
        let cap = vol.capacity;
        if !upload {
            return Self::blocking(move || {
                let mut progress = |n: u64| t.moved.store(n, Ordering::Relaxed);
                crate::transfer::download(&path, cap, fd, offset, length, &t.cancel, &mut progress)
            })
            .await
            .map_err(|e| reg.t.explain(&vol, e));
        }
        let scratch = self.scratch_dir();
        let staged = Self::blocking(move || {
            let mut progress = |n: u64| t.moved.store(n, Ordering::Relaxed);
            crate::transfer::stage_upload(
                &path,
                cap,
                fd,
                offset,
                length,
                &scratch,
                &t.cancel,
                &mut progress,
            )
        })
        .await
        .map_err(|e| reg.t.explain(&vol, e))?;
        let _j = pool.job.lock().await;
        if reg.t.cancel.is_cancelled() {
            drop(staged);
            return Err(reg.t.explain(&vol, VirError::from(BackendError::Cancelled)));
        }
        let t = reg.t.clone();
        Self::blocking(move || staged.commit(&t.cancel))
            .await
            .map_err(|e| reg.t.explain(&vol, e))?;
        self.reread(&pool, vol).await
    }
}

impl common::Driver for Driver {
    fn busy(&self) -> bool {
        Driver::busy(self)
    }

    async fn shutdown(&self) {
        // Transfers go at their clients' pace: they are stopped, not waited for (each
        // removes its copy, the volumes stay as they were), and gone within moments.
        let running: Vec<_> = self.transfer_map().values().flatten().cloned().collect();
        for t in running {
            t.abort(Abort::Stopping);
        }
        for _ in 0..500 {
            if self.transfer_map().is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        // Wait for running jobs; every state change is already on disk.
        let pools: Vec<_> = self.registry().values().cloned().collect();
        for p in pools {
            let _j = p.job.lock().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_flags_translate_to_build_flags() {
        let b = |f: u32| CreateFlags::from_bits_retain(f).build_flags();
        assert_eq!(b(1), BuildFlags::empty());
        assert_eq!(b(2), BuildFlags::OVERWRITE);
        assert_eq!(b(4), BuildFlags::NO_OVERWRITE);
        assert_eq!(b(6), BuildFlags::OVERWRITE | BuildFlags::NO_OVERWRITE);
    }

    #[test]
    fn unknown_flags_are_refused_as_before() {
        let e = read_flags::<ListFlags>(1 << 19).unwrap_err();
        assert_eq!(e, VirError::unsupported_flags(1 << 19));
        assert!(read_flags::<ListFlags>(0x7ffff).is_ok());
        assert!(read_flags::<BuildFlags>(16).is_err());
        assert!(read_flags::<ResizeFlags>(8).is_err());
    }
}
