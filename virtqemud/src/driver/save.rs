//! Save and restore: a running domain's state to a file (`Save`, `ManagedSave`) and a
//! domain started from one (`DomainRestore`, `Create` of a domain with a managed save
//! image). QEMU migrates to and from a Unix socket in the run's own folder, which the
//! daemon copies between and the image file (`crate::save` has the layout): no shell
//! command for QEMU to run and no descriptor to pass over the monitor.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::error::{ErrorCode, VirError};
use common::event::{
    DomainEvent, DomainState, PausedReason, RunningReason, StateReason, SuspendedDetail,
};
use serde_json::{json, Value};

use super::registry::check_conflicts;
use super::{io_err, not_running, Dom, Driver, StartFlags};
use crate::model::DomainDef;
use crate::qmp::Qmp;
use crate::save::{self as image, Header};

bitflags::bitflags! {
    /// `virDomainSaveRestoreFlags`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct SaveFlags: u32 {
        const BYPASS_CACHE = 1;
        const RUNNING = 2;
        const PAUSED = 4;
    }
}

/// A save image to start from: its stream (the file past its header) and whether
/// the domain runs afterwards.
pub struct Restore {
    pub file: std::fs::File,
    pub running: bool,
}

/// Where a start takes the guest's state from instead of booting it.
pub enum StartFrom {
    /// A save image, over QEMU's incoming migration.
    Image(Restore),
    /// An internal snapshot of the disks, by name (QEMU's `-loadvm`).
    Snapshot(String),
    /// A migration's source, over the network (`super::migrate`).
    Incoming(super::migrate::Incoming),
}

/// A save in progress, recorded in the run's status before the guest is paused: a
/// daemon killed during the save finishes it at restart (the image is whole: QEMU ends,
/// STOPPED/SAVED) or undoes it (no image: the partial file goes, the guest resumes), so
/// a guest is never lost between its QEMU and its image.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct SaveIntent {
    /// Where the image appears, whole, by a rename.
    pub image: PathBuf,
    /// The file being written.
    pub temp: PathBuf,
    /// The guest ran before the save paused it.
    pub resume: bool,
}

/// How long QEMU may take to connect for a save, and a migration to finish.
const CONNECT_WAIT: Duration = Duration::from_secs(30);
const MIGRATION_WAIT: Duration = Duration::from_secs(600);

fn save_flags(flags: u32) -> Result<SaveFlags, VirError> {
    let f: SaveFlags = common::error::flags(flags)?;
    if f.contains(SaveFlags::RUNNING | SaveFlags::PAUSED) {
        return Err(VirError::invalid_arg(
            "flags 'running' and 'paused' are mutually exclusive",
        ));
    }
    Ok(f)
}

/// Where QEMU's migration stream is heard: `unix:PATH` (QEMU's own syntax).
fn uri(sock: &Path) -> String {
    format!("unix:{}", sock.display())
}

/// Waits until QEMU's migration has completed, in either direction.
async fn migration_done(qmp: &Qmp) -> Result<(), VirError> {
    let deadline = Instant::now() + MIGRATION_WAIT;
    loop {
        let q = qmp.execute("query-migrate", None).await?;
        match q.get("status").and_then(Value::as_str).unwrap_or("") {
            "completed" => return Ok(()),
            "failed" | "cancelled" => {
                let why = q
                    .get("error-desc")
                    .and_then(Value::as_str)
                    .unwrap_or("no reason given");
                return Err(VirError::operation_failed(format!(
                    "QEMU's migration stream failed: {why}"
                )));
            }
            _ if Instant::now() >= deadline => {
                return Err(VirError::new(
                    ErrorCode::OperationTimeout,
                    "QEMU's migration stream did not finish in 10 minutes",
                ))
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// QEMU writes the running guest's state to `file` (past its header).
pub(super) async fn migrate_out(
    qmp: &Qmp,
    dom_dir: &Path,
    file: std::fs::File,
) -> Result<(), VirError> {
    let sock = dom_dir.join("save.sock");
    let _ = std::fs::remove_file(&sock);
    let listener =
        tokio::net::UnixListener::bind(&sock).map_err(|e| io_err("listen on", &sock, &e))?;
    // QEMU runs as the folder's owner: its socket is that user's to connect to.
    let owner = std::fs::metadata(dom_dir).map_err(|e| io_err("stat", dom_dir, &e))?;
    std::os::unix::fs::chown(
        &sock,
        Some(std::os::unix::fs::MetadataExt::uid(&owner)),
        Some(std::os::unix::fs::MetadataExt::gid(&owner)),
    )
    .map_err(|e| io_err("chown", &sock, &e))?;
    let r = async {
        // As libvirt for a save: no bandwidth limit.
        qmp.execute(
            "migrate-set-parameters",
            Some(json!({ "max-bandwidth": i64::MAX / 2 })),
        )
        .await?;
        qmp.execute("migrate", Some(json!({ "uri": uri(&sock) })))
            .await?;
        let (mut stream, _) = tokio::time::timeout(CONNECT_WAIT, listener.accept())
            .await
            .map_err(|_| VirError::operation_failed("QEMU did not connect to save its state"))?
            .map_err(|e| io_err("accept on", &sock, &e))?;
        let mut out = tokio::fs::File::from_std(file);
        tokio::io::copy(&mut stream, &mut out)
            .await
            .map_err(|e| VirError::operation_failed(format!("writing the save image: {e}")))?;
        out.sync_all()
            .await
            .map_err(|e| VirError::operation_failed(format!("syncing the save image: {e}")))?;
        migration_done(qmp).await
    }
    .await;
    let _ = std::fs::remove_file(&sock);
    r
}

/// QEMU, started with `-incoming defer`, reads the guest's state from `file`.
pub(super) async fn migrate_in(
    qmp: &Qmp,
    dom_dir: &Path,
    file: std::fs::File,
) -> Result<(), VirError> {
    let sock = dom_dir.join("restore.sock");
    qmp.execute("migrate-incoming", Some(json!({ "uri": uri(&sock) })))
        .await?;
    let mut stream = tokio::net::UnixStream::connect(&sock)
        .await
        .map_err(|e| io_err("connect to", &sock, &e))?;
    let mut input = tokio::fs::File::from_std(file);
    tokio::io::copy(&mut input, &mut stream)
        .await
        .map_err(|e| VirError::operation_failed(format!("reading the save image: {e}")))?;
    drop(stream);
    let r = migration_done(qmp).await;
    let _ = std::fs::remove_file(&sock);
    r
}

impl Driver {
    /// libvirt's managed save image of the domain `name`.
    pub(super) fn managed_save_path(&self, name: &str) -> PathBuf {
        self.paths.save.join(format!("{name}.save"))
    }

    /// `Save` (`to` given) and `ManagedSave`: the domain's state to an image, then
    /// its QEMU ends (STOPPED/SAVED). A save that fails leaves the domain as it was and
    /// no image behind.
    pub async fn save(
        &self,
        dom: &Arc<Dom>,
        to: Option<&str>,
        xml: &str,
        flags: u32,
    ) -> Result<(), VirError> {
        let f = save_flags(flags)?;
        let target = match to {
            Some(p) => image::check_path(p)?,
            None => {
                if !dom.persistent() {
                    return Err(VirError::operation_invalid(
                        "cannot do managed save for transient domain",
                    ));
                }
                common::persist::create_dir_all(&self.paths.save, 0o700)
                    .map_err(|e| io_err("create", &self.paths.save, &e))?;
                self.managed_save_path(&dom.name())
            }
        };
        let caps = self.caps().await?;
        let _call = self.calls.enter();
        let _lock = dom.begin_job().await;
        let (qmp, def, state, dom_dir) = {
            let g = dom.lock();
            let l = g.live.as_ref().ok_or_else(not_running)?;
            let dir = l.qmp_path.parent().map(Path::to_path_buf);
            (l.qmp.clone(), l.def.clone(), g.state.state(), dir)
        };
        let dom_dir = dom_dir.ok_or_else(|| VirError::internal("the run has no folder"))?;
        let xml = if xml.is_empty() {
            def.to_xml_for(None, true)
        } else {
            let other = DomainDef::parse_new(xml, &caps)?;
            same_domain(&def, &other)?;
            other.to_xml_for(None, true)
        };
        let was_running = state == DomainState::Running;
        let tmp = image::temp_beside(&target);
        let intent = SaveIntent {
            image: target.clone(),
            temp: tmp.clone(),
            resume: was_running,
        };
        self.record_save(dom, Some(intent)).await;
        // An image already there is replaced, as libvirt truncates it: from here on
        // the image's presence means that this save finished.
        if let Err(e) = std::fs::remove_file(&target) {
            if e.kind() != std::io::ErrorKind::NotFound {
                self.record_save(dom, None).await;
                return Err(io_err("remove", &target, &e));
            }
        }
        let header = Header {
            xml,
            running: if f.contains(SaveFlags::RUNNING) {
                true
            } else if f.contains(SaveFlags::PAUSED) {
                false
            } else {
                was_running
            },
        };
        if was_running {
            // Paused by the save before QEMU stops, so its STOP event is no news; the
            // SUSPENDED event is libvirt's for a save.
            self.transition(
                dom,
                &[DomainState::Running],
                StateReason::Paused(PausedReason::Save),
            );
            if let Err(e) = qmp.execute("stop", None).await {
                self.transition(
                    dom,
                    &[DomainState::Paused],
                    StateReason::Running(RunningReason::SaveCanceled),
                );
                self.record_save(dom, None).await;
                return Err(e.into());
            }
            self.lifecycle(dom, DomainEvent::Suspended(SuspendedDetail::Paused))
                .await;
        }
        let r = async {
            let (t, h) = (tmp.clone(), header.clone());
            let file = tokio::task::spawn_blocking(move || {
                let mut file = image::create(&t)?;
                image::write_header(&mut file, &h)?;
                Ok::<_, std::io::Error>(file)
            })
            .await
            .map_err(|e| VirError::internal(format!("file task: {e}")))?
            .map_err(|e| io_err("write", &tmp, &e))?;
            migrate_out(&qmp, &dom_dir, file).await?;
            std::fs::rename(&tmp, &target).map_err(|e| io_err("rename", &target, &e))
        }
        .await;
        if let Err(e) = r {
            let _ = std::fs::remove_file(&tmp);
            if was_running {
                // QEMU keeps the guest; it runs again as before.
                let _ = qmp.execute("migrate_cancel", None).await;
                if qmp.execute("cont", None).await.is_ok() {
                    self.transition(
                        dom,
                        &[DomainState::Paused],
                        StateReason::Running(RunningReason::SaveCanceled),
                    );
                }
            }
            self.record_save(dom, None).await;
            return Err(e);
        }
        if let Some(l) = dom.lock().live.as_mut() {
            l.saved = true;
        }
        self.destroy_locked(dom).await
    }

    /// Sets (or clears) the run's save in progress, on disk before anything depends on it.
    async fn record_save(&self, dom: &Dom, intent: Option<SaveIntent>) {
        if let Some(l) = dom.lock().live.as_mut() {
            l.saving = intent;
        }
        self.save_status(dom).await;
    }

    /// At re-adoption, a save the daemon's death cut short: finished if its image is
    /// whole (QEMU has nothing more to give; it ends as a save ends), else undone.
    pub(super) async fn finish_interrupted_save(&self, dom: &Arc<Dom>, intent: SaveIntent) {
        let _lock = dom.begin_job().await;
        if intent.image.exists() {
            tracing::warn!(domain = %dom.name(), "finishing a save cut short: its image is whole");
            if let Some(l) = dom.lock().live.as_mut() {
                l.saved = true;
            }
            if let Err(e) = self.destroy_locked(dom).await {
                tracing::error!(domain = %dom.name(), "ending the saved QEMU: {e}");
            }
            return;
        }
        tracing::warn!(domain = %dom.name(), "undoing a save cut short: no image was made");
        let _ = std::fs::remove_file(&intent.temp);
        let qmp = dom.lock().live.as_ref().map(|l| l.qmp.clone());
        if let Some(qmp) = qmp {
            // The outgoing stream lost its reader with the daemon; make sure QEMU gave up.
            let _ = qmp.execute("migrate_cancel", None).await;
            if intent.resume && qmp.execute("cont", None).await.is_ok() {
                self.transition(
                    dom,
                    &[DomainState::Paused],
                    StateReason::Running(RunningReason::SaveCanceled),
                );
            }
        }
        self.record_save(dom, None).await;
    }

    /// At re-adoption of a run with no save in progress: a managed save image of the
    /// domain is stale (the run was restored from it and the daemon died before it
    /// removed it). Left, a later Create would resume the guest from the past over
    /// disks that have moved on.
    pub(super) fn drop_consumed_managed_save(&self, dom: &Dom) {
        if !dom.persistent() {
            return;
        }
        let path = self.managed_save_path(&dom.name());
        if path.exists() {
            tracing::warn!(domain = %dom.name(), "removing the managed save image it was restored from");
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::error!("{}: {e}", path.display());
            }
        }
    }

    pub fn has_managed_save(&self, dom: &Dom, flags: u32) -> Result<bool, VirError> {
        common::error::check_flags(flags, 0)?;
        Ok(self.managed_save_path(&dom.name()).exists())
    }

    pub async fn managed_save_remove(&self, dom: &Arc<Dom>, flags: u32) -> Result<(), VirError> {
        common::error::check_flags(flags, 0)?;
        let _call = self.calls.enter();
        let _lock = dom.begin_job().await;
        let path = self.managed_save_path(&dom.name());
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err("remove", &path, &e)),
            _ => Ok(()),
        }
    }

    /// `Create` of a domain with a managed save image: the run resumes from it, and
    /// the image is gone once the domain runs.
    pub(super) async fn start_from_managed_save(
        &self,
        dom: &Arc<Dom>,
        path: &Path,
        flags: StartFlags,
    ) -> Result<(), VirError> {
        let caps = self.caps().await?;
        let (header, file) = open_image(path).await?;
        let def = DomainDef::parse_new(&header.xml, &caps)?;
        if def.uuid != dom.uuid {
            return Err(VirError::operation_invalid(format!(
                "the managed save image '{}' belongs to another domain",
                path.display()
            )));
        }
        let restore = Restore {
            file,
            running: header.running,
        };
        self.start_locked(dom, def, flags, Some(StartFrom::Image(restore)))
            .await?;
        std::fs::remove_file(path).map_err(|e| io_err("remove", path, &e))
    }

    /// `DomainRestore`: the domain of the image (or `xml`, the same domain) runs from
    /// it, as the persistent domain of that UUID if one is defined, else transient.
    pub async fn restore(&self, from: &str, xml: &str, flags: u32) -> Result<Arc<Dom>, VirError> {
        let f = save_flags(flags)?;
        let path = image::check_path(from)?;
        let caps = self.caps().await?;
        let _call = self.calls.enter();
        let (header, file) = open_image(&path).await?;
        let mut def = DomainDef::parse_new(&header.xml, &caps)?;
        if !xml.is_empty() {
            let other = DomainDef::parse_new(xml, &caps)?;
            same_domain(&def, &other)?;
            def = other;
        }
        let running = if f.contains(SaveFlags::RUNNING) {
            true
        } else if f.contains(SaveFlags::PAUSED) {
            false
        } else {
            header.running
        };
        let (dom, added) = {
            let mut reg = self.reg();
            match reg.by_uuid.get(&def.uuid).cloned() {
                Some(d) => (d, false),
                None => {
                    check_conflicts(&reg, &def)?;
                    let d = Dom::new(def.uuid, def.name.clone(), None, false);
                    reg.insert(d.name(), d.clone());
                    (d, true)
                }
            }
        };
        if added {
            self.publish_added(&dom).await;
        }
        let r = {
            let _lock = dom.begin_job().await;
            if dom.active() {
                Err(VirError::operation_invalid(format!(
                    "domain '{}' is already active",
                    def.name
                )))
            } else {
                let restore = Restore { file, running };
                let from = Some(StartFrom::Image(restore));
                self.start_locked(&dom, def, StartFlags::empty(), from)
                    .await
            }
        };
        if let Err(e) = r {
            if added {
                self.remove(&dom).await;
            }
            return Err(e);
        }
        Ok(dom)
    }

    /// `DomainSaveImageGetXMLDesc`: the definition in an image (SECURE 1: with
    /// passwords).
    pub async fn save_image_xml(&self, file: &str, flags: u32) -> Result<String, VirError> {
        common::error::check_flags(flags, 1)?;
        let path = image::check_path(file)?;
        let (header, _) = open_image(&path).await?;
        let def = DomainDef::parse(&header.xml)?;
        Ok(def.to_xml_for(None, flags & 1 != 0))
    }

    /// `DomainSaveImageDefineXML`: another definition of the same domain for an image,
    /// and with RUNNING/PAUSED how it starts.
    pub async fn save_image_define(
        &self,
        file: &str,
        xml: &str,
        flags: u32,
    ) -> Result<(), VirError> {
        let f = save_flags(flags)?;
        if f.contains(SaveFlags::BYPASS_CACHE) {
            return Err(VirError::unsupported_flags(SaveFlags::BYPASS_CACHE.bits()));
        }
        let path = image::check_path(file)?;
        let caps = self.caps().await?;
        let (header, _) = open_image(&path).await?;
        let old = DomainDef::parse(&header.xml)?;
        let new = DomainDef::parse_new(xml, &caps)?;
        same_domain(&old, &new)?;
        let header = Header {
            xml: new.to_xml_for(None, true),
            running: if f.contains(SaveFlags::RUNNING) {
                true
            } else if f.contains(SaveFlags::PAUSED) {
                false
            } else {
                header.running
            },
        };
        tokio::task::spawn_blocking(move || image::rewrite(&path, &header))
            .await
            .map_err(|e| VirError::internal(format!("file task: {e}")))?
    }

    /// Managed save images a save cut short (the daemon killed) left half written.
    pub(super) fn remove_partial_saves(&self) {
        let Ok(dir) = std::fs::read_dir(&self.paths.save) else {
            return;
        };
        for e in dir.flatten() {
            if e.file_name().to_string_lossy().contains(".save.part-") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

async fn open_image(path: &Path) -> Result<(Header, std::fs::File), VirError> {
    let p = path.to_path_buf();
    tokio::task::spawn_blocking(move || image::open(&p))
        .await
        .map_err(|e| VirError::internal(format!("file task: {e}")))?
}

/// An image's definition may change, but not whose it is.
fn same_domain(old: &DomainDef, new: &DomainDef) -> Result<(), VirError> {
    if old.uuid != new.uuid || old.name != new.name {
        return Err(VirError::operation_invalid(format!(
            "the definition must be of domain '{}' ({}), not '{}' ({})",
            old.name, old.uuid, new.name, new.uuid
        )));
    }
    Ok(())
}
