//! One domain: its job lock (operations), its state lock (reads, held briefly) and what
//! it is: persistent config, the live run when QEMU runs, and its state with reason.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use common::event::{ShutoffReason, StateReason};
use tokio::sync::watch;
use uuid::Uuid;
use zbus::zvariant::OwnedObjectPath;

use crate::model::DomainDef;
use crate::qmp::Qmp;

/// A running QEMU and what belongs to its run.
pub(super) struct Live {
    pub id: u32,
    pub pid: u32,
    /// Files handed to QEMU's user (qemu.conf), given back when QEMU is gone.
    pub owners: Vec<crate::security::Owner>,
    /// The uid of its own this run has (from qemu.conf `dynamic_user_range`).
    pub dynamic_uid: Option<u32>,
    pub qmp_path: PathBuf,
    pub qmp: Qmp,
    pub def: DomainDef,
    pub destroying: bool,
    pub shutdown_seen: bool,
    pub crashed: bool,
    pub fake_reboot: bool,
    /// Its state went to a save image: its end is STOPPED/SAVED.
    pub saved: bool,
    /// Ended by a core dump with CRASH: its end is STOPPED/CRASHED.
    pub dumped_crash: bool,
    /// A save in progress (recorded in the status file).
    pub saving: Option<super::save::SaveIntent>,
    /// A device being plugged in (or a medium changed): recorded in the status file
    /// before QEMU is asked, so a restarted daemon can finish or undo it.
    pub plugging: Option<super::hotplug::Pending>,
    /// A block copy in progress: the disk as it will be after the pivot and the N of
    /// the copy's nodes (`super::blockcopy`), recorded in the status file.
    pub copying: Option<super::hotplug::Pending>,
    /// The perf counters its `<perf>` enables, open on QEMU (not persisted: a restarted
    /// daemon opens them again).
    pub perf: crate::perf::Counters,
    /// A migration in or out, at the phase recorded in the status file.
    pub migration: Option<super::migrate::Migration>,
    pub exited: watch::Receiver<bool>,
}

pub(super) struct Inner {
    pub name: String,
    pub config: Option<DomainDef>,
    pub live: Option<Live>,
    pub state: StateReason,
    pub autostart: bool,
}

/// The domain's job, held: [`Dom::begin_job`].
pub(super) struct JobGuard<'a> {
    _lock: tokio::sync::MutexGuard<'a, ()>,
    since: &'a Mutex<Option<std::time::Instant>>,
}

impl Drop for JobGuard<'_> {
    fn drop(&mut self) {
        *self.since.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}

/// One domain: its job lock and its state.
pub struct Dom {
    pub uuid: Uuid,
    pub path: OwnedObjectPath,
    /// Serialises operations on this domain (libvirt's job); taken by [`Dom::begin_job`].
    job: tokio::sync::Mutex<()>,
    /// Serialises guest agent exchanges (one client on its channel at a time), apart
    /// from the job lock so that a silent guest holds up no other operation.
    pub(super) agent: tokio::sync::Mutex<()>,
    /// Its snapshots' metadata (`crate::snapshot`), changed under the job lock.
    snapshots: Mutex<crate::snapshot::Tree>,
    /// When the job in progress began (GetControlInfo's state time).
    job_since: Mutex<Option<std::time::Instant>>,
    /// Its migration knobs and the outgoing migration in progress, read without the
    /// job lock that the migration holds.
    pub(super) migration: Mutex<super::migrate::Knobs>,
    /// Orders the writes of its status file, off the state lock.
    pub(super) status_write: tokio::sync::Mutex<()>,
    /// Its object is served on every connection: only then do lookups and lists hand
    /// out its path, so no client meets UnknownObject for a path it was given.
    served: AtomicBool,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Dom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "domain {}", self.uuid)
    }
}

impl Dom {
    pub(super) fn new(
        uuid: Uuid,
        name: String,
        config: Option<DomainDef>,
        autostart: bool,
    ) -> Arc<Dom> {
        Arc::new(Dom {
            uuid,
            path: common::objpath::domain(&uuid),
            job: tokio::sync::Mutex::new(()),
            job_since: Mutex::new(None),
            agent: tokio::sync::Mutex::new(()),
            snapshots: Mutex::new(crate::snapshot::Tree::default()),
            status_write: tokio::sync::Mutex::new(()),
            migration: Mutex::new(Default::default()),
            served: AtomicBool::new(false),
            inner: Mutex::new(Inner {
                name,
                config,
                live: None,
                state: StateReason::Shutoff(ShutoffReason::Unknown),
                autostart,
            }),
        })
    }

    /// Waits for the domain's job lock and holds it until the guard is dropped.
    pub(super) async fn begin_job(&self) -> JobGuard<'_> {
        let lock = self.job.lock().await;
        *self.job_since.lock().unwrap_or_else(|p| p.into_inner()) = Some(std::time::Instant::now());
        JobGuard {
            _lock: lock,
            since: &self.job_since,
        }
    }

    pub(super) fn snapshots(&self) -> MutexGuard<'_, crate::snapshot::Tree> {
        self.snapshots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The names of its snapshots.
    pub fn snapshot_names_all(&self) -> Vec<String> {
        self.snapshots()
            .snapshots
            .iter()
            .map(|s| s.name.clone())
            .collect()
    }

    /// The definition a read with `live`/`config` (virDomainModificationImpact bits,
    /// at most one of them) is about, handed to `read`: the running one, the config,
    /// or with neither the running one of an active domain, else the config.
    pub(super) fn read_definition<T>(
        &self,
        live: bool,
        config: bool,
        read: impl FnOnce(&DomainDef) -> T,
    ) -> Result<T, common::error::VirError> {
        use common::error::VirError;
        if live && config {
            return Err(VirError::invalid_arg(
                "flags 'affect live' and 'affect config' are mutually exclusive",
            ));
        }
        let g = self.lock();
        let def = match (live, config) {
            (true, _) => g
                .live
                .as_ref()
                .map(|l| &l.def)
                .ok_or_else(|| VirError::operation_invalid("domain is not running"))?,
            (_, true) => g.config.as_ref().ok_or_else(|| {
                VirError::operation_invalid("transient domains do not have any persistent config")
            })?,
            _ => g
                .live
                .as_ref()
                .map(|l| &l.def)
                .or(g.config.as_ref())
                .ok_or_else(|| VirError::internal("domain has no definition"))?,
        };
        Ok(read(def))
    }

    /// What an operation works on: the running definition (else the config), the
    /// running QEMU's monitor and the state.
    pub(super) fn current(
        &self,
    ) -> Result<
        (
            DomainDef,
            Option<crate::qmp::Qmp>,
            common::event::DomainState,
        ),
        common::error::VirError,
    > {
        let g = self.lock();
        let def = g
            .live
            .as_ref()
            .map(|l| l.def.clone())
            .or_else(|| g.config.clone())
            .ok_or_else(|| common::error::VirError::internal("domain has no definition"))?;
        Ok((def, g.live.as_ref().map(|l| l.qmp.clone()), g.state.state()))
    }

    /// When the operation running on the domain began, if one does.
    pub fn job_since(&self) -> Option<std::time::Instant> {
        *self.job_since.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn served(&self) -> bool {
        self.served.load(Ordering::Acquire)
    }

    pub(super) fn set_served(&self) {
        self.served.store(true, Ordering::Release);
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
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
    pub fn state(&self) -> StateReason {
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
}
