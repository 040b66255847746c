//! Internal snapshots, as libvirt's QEMU driver takes them: of a running domain by
//! QEMU's `snapshot-save` job (disks and memory state in the qcow2 images), of an
//! inactive one by `qemu-img snapshot` on each image; reverted by `snapshot-load`, by
//! starting QEMU with `-loadvm`, or by `qemu-img snapshot -a`. The metadata (libvirt's
//! `<domainsnapshot>` with the domain's definition) is kept one file per snapshot in
//! `<snapshot dir>/DOMAIN/NAME.xml`, the current one named in `.current`.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::error::{ErrorCode, VirError};
use common::event::{
    DomainEvent, DomainState, PausedReason, ResumedDetail, RunningReason, StateReason,
    SuspendedDetail,
};
use serde_json::{json, Value};

use super::{io_err, no_definition, Change, Dom, Driver, StartFlags};
use crate::model::DomainDef;
use crate::qmp::Qmp;
use crate::snapshot::{ListFlags, Request, Snapshot, Tree};
use crate::xml::{DiskDevice, DiskSource};

static JOB_ID: AtomicU64 = AtomicU64::new(1);

bitflags::bitflags! {
    /// `virDomainSnapshotCreateFlags` taken here: the rest need external snapshots or
    /// a redefinition, which are not served yet.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct CreateFlags: u32 {
        const HALT = 8;
        const ATOMIC = 128;
        const VALIDATE = 512;
    }

    /// `virDomainSnapshotDeleteFlags`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct DeleteFlags: u32 {
        const CHILDREN = 1;
        const METADATA_ONLY = 2;
        const CHILDREN_ONLY = 4;
    }

    /// `virDomainSnapshotRevertFlags` taken here.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct RevertFlags: u32 {
        const RUNNING = 1;
        const PAUSED = 2;
        const FORCE = 4;
    }
}

/// A disk a snapshot covers: its index (QEMU's `libvirt-N-format` node), target and
/// image path where it has one.
struct Covered {
    index: usize,
    target: String,
    path: Option<PathBuf>,
}

/// The disks of `def` that hold internal snapshots: writable qcow2 disks, minus `skip`;
/// any other writable disk not skipped is refused by name, as libvirt does.
fn covered(def: &DomainDef, skip: &[String]) -> Result<Vec<Covered>, VirError> {
    let mut out = Vec::new();
    for (index, d) in def.dom.devices.disks.iter().enumerate() {
        if d.device != DiskDevice::Disk || d.readonly || skip.contains(&d.target_dev) {
            continue;
        }
        let format = d.driver.format.as_deref().unwrap_or("raw");
        if format != "qcow2" {
            return Err(VirError::new(
                ErrorCode::ConfigUnsupported,
                format!(
                    "internal snapshot for disk {} unsupported for storage type {format}",
                    d.target_dev
                ),
            ));
        }
        let path = match &d.source {
            Some(DiskSource::File(p) | DiskSource::Block(p)) => Some(p.clone()),
            _ => None,
        };
        out.push(Covered {
            index: def.disk_node(index),
            target: d.target_dev.clone(),
            path,
        });
    }
    Ok(out)
}

fn node(index: usize) -> String {
    format!("libvirt-{index}-format")
}

/// Runs a QMP job command (`snapshot-save`, `-load`, `-delete`) to its end.
async fn run_job(qmp: &Qmp, command: &str, mut args: Value) -> Result<(), VirError> {
    let id = format!("{command}-{}", JOB_ID.fetch_add(1, Ordering::Relaxed));
    args["job-id"] = json!(id);
    qmp.execute(command, Some(args)).await?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let jobs = qmp.execute("query-jobs", None).await?;
        let job = jobs
            .as_array()
            .into_iter()
            .flatten()
            .find(|j| j.get("id").and_then(Value::as_str) == Some(id.as_str()))
            .cloned();
        match job {
            Some(j) if j.get("status").and_then(Value::as_str) == Some("concluded") => {
                let _ = qmp.execute("job-dismiss", Some(json!({ "id": id }))).await;
                return match j.get("error").and_then(Value::as_str) {
                    Some(e) => Err(VirError::operation_failed(format!("{command}: {e}"))),
                    None => Ok(()),
                };
            }
            None => return Ok(()),
            Some(_) if Instant::now() >= deadline => {
                return Err(VirError::new(
                    ErrorCode::OperationTimeout,
                    format!("{command} did not finish in 10 minutes"),
                ))
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// `qemu-img snapshot OP NAME` on every image (`-c` create, `-a` apply, `-d` delete).
async fn qemu_img_snapshot(op: &str, name: &str, disks: &[Covered]) -> Result<(), VirError> {
    let mut argvs = Vec::new();
    for d in disks {
        let path = d.path.clone().ok_or_else(|| {
            VirError::new(
                ErrorCode::ConfigUnsupported,
                format!(
                    "the image of disk {} is not a file or block device here: its internal snapshot needs the domain running",
                    d.target
                ),
            )
        })?;
        argvs.push(path);
    }
    let (op, name) = (op.to_owned(), name.to_owned());
    tokio::task::spawn_blocking(move || {
        for path in argvs {
            let out = Command::new("qemu-img")
                .args(["snapshot", "-q", &op, &name])
                .arg(&path)
                .output()
                .map_err(|e| VirError::operation_failed(format!("cannot run qemu-img: {e}")))?;
            if !out.status.success() {
                return Err(VirError::operation_failed(format!(
                    "qemu-img snapshot {op} on '{}': {}",
                    path.display(),
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
        }
        Ok(())
    })
    .await
    .map_err(|e| VirError::internal(format!("qemu-img task: {e}")))?
}

impl Driver {
    fn snapshot_dir(&self, domain: &str) -> PathBuf {
        self.paths.snapshot.join(domain)
    }

    /// Reads a domain's snapshot metadata (at start, for a defined domain).
    pub(super) fn load_snapshots(&self, dom: &Dom) {
        let dir = self.snapshot_dir(&dom.name());
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        let mut tree = Tree::default();
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) != Some("xml") {
                continue;
            }
            match std::fs::read_to_string(&p)
                .map_err(|e| e.to_string())
                .and_then(|t| Snapshot::from_file(&t).map_err(|e| e.message))
            {
                Ok(s) => tree.snapshots.push(s),
                Err(e) => tracing::warn!("ignoring snapshot file {}: {e}", p.display()),
            }
        }
        tree.current = std::fs::read_to_string(dir.join(".current"))
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|c| tree.snapshots.iter().any(|s| &s.name == c));
        *dom.snapshots() = tree;
    }

    fn write_snapshot(&self, domain: &str, s: &Snapshot) -> Result<(), VirError> {
        let dir = self.snapshot_dir(domain);
        common::persist::create_dir_all(&dir, 0o700).map_err(|e| io_err("create", &dir, &e))?;
        let file = dir.join(format!("{}.xml", s.name));
        common::persist::write_atomic(&file, s.to_file()?.as_bytes(), 0o600)
            .map_err(|e| io_err("write", &file, &e))
    }

    fn write_current(&self, domain: &str, current: Option<&str>) -> Result<(), VirError> {
        let file = self.snapshot_dir(domain).join(".current");
        match current {
            Some(c) => common::persist::write_atomic(&file, c.as_bytes(), 0o600)
                .map_err(|e| io_err("write", &file, &e)),
            None => {
                let _ = std::fs::remove_file(&file);
                Ok(())
            }
        }
    }

    /// `SnapshotCreateXML`: the new snapshot's name.
    pub async fn snapshot_create(
        &self,
        dom: &Arc<Dom>,
        xml: &str,
        flags: u32,
    ) -> Result<String, VirError> {
        let f: CreateFlags = common::error::flags(flags)?;
        let req = Request::parse(xml)?;
        let _call = self.calls.enter();
        let _lock = dom.begin_job().await;
        let (def, qmp, state) = dom.current()?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let name = req.name.clone().unwrap_or_else(|| now.to_string());
        if dom.snapshots().get(&name).is_ok() {
            return Err(VirError::operation_invalid(format!(
                "domain snapshot '{name}' already exists"
            )));
        }
        let disks = covered(&def, &req.skip)?;
        let memory = qmp.is_some();
        if let Some(qmp) = &qmp {
            if req.no_memory {
                return Err(VirError::new(
                    ErrorCode::ConfigUnsupported,
                    "a disk-only snapshot of a running domain is an external snapshot: not supported here",
                ));
            }
            let first = disks.first().ok_or_else(|| {
                VirError::new(
                    ErrorCode::OperationUnsupported,
                    "an internal snapshot of a running domain needs a qcow2 disk to hold the memory state",
                )
            })?;
            let args = json!({
                "tag": name,
                "vmstate": node(first.index),
                "devices": disks.iter().map(|d| node(d.index)).collect::<Vec<_>>(),
            });
            self.quietly_paused(dom, qmp, state, async {
                run_job(qmp, "snapshot-save", args).await
            })
            .await?;
        } else {
            qemu_img_snapshot("-c", &name, &disks).await?;
        }
        let snap = Snapshot {
            name: name.clone(),
            description: req.description,
            state: match state {
                DomainState::Running => "running",
                DomainState::Paused => "paused",
                _ => "shutoff",
            }
            .into(),
            parent: dom.snapshots().current.clone(),
            creation_time: now,
            memory,
            disks: disks.iter().map(|d| d.target.clone()).collect(),
            domain_xml: dom
                .lock()
                .config
                .as_ref()
                .unwrap_or(&def)
                .to_xml_for(None, true),
        };
        let domain = dom.name();
        self.write_snapshot(&domain, &snap)?;
        self.write_current(&domain, Some(&name))?;
        {
            let mut t = dom.snapshots();
            t.snapshots.push(snap);
            t.current = Some(name.clone());
        }
        self.outbox
            .send(Change::SnapshotAdded(dom.clone(), name.clone()))
            .await;
        if f.contains(CreateFlags::HALT) && memory {
            self.destroy_locked(dom).await?;
        }
        Ok(name)
    }

    /// Runs `work` with the guest paused, without lifecycle events for the pause: the
    /// state says paused (for a snapshot) meanwhile, and running again afterwards.
    async fn quietly_paused<F>(
        &self,
        dom: &Dom,
        qmp: &Qmp,
        state: DomainState,
        work: F,
    ) -> Result<(), VirError>
    where
        F: std::future::Future<Output = Result<(), VirError>>,
    {
        let running = state == DomainState::Running;
        if running {
            self.transition(
                dom,
                &[DomainState::Running],
                StateReason::Paused(PausedReason::Snapshot),
            );
            qmp.execute("stop", None).await?;
        }
        let r = work.await;
        if running {
            self.transition(
                dom,
                &[DomainState::Paused],
                StateReason::Running(RunningReason::Unpaused),
            );
            qmp.execute("cont", None).await?;
        }
        r
    }

    pub fn snapshot_names(&self, dom: &Dom, flags: u32) -> Result<Vec<String>, VirError> {
        let f: ListFlags = common::error::flags(flags)?;
        let t = dom.snapshots();
        Ok(t.select(None, f).iter().map(|s| s.name.clone()).collect())
    }

    pub fn snapshot_children(
        &self,
        dom: &Dom,
        name: &str,
        flags: u32,
    ) -> Result<Vec<String>, VirError> {
        let f: ListFlags = common::error::flags(flags)?;
        let t = dom.snapshots();
        t.get(name)?;
        // Bit 0 means DESCENDANTS for children.
        let descendants = f.contains(ListFlags::ROOTS);
        Ok(t.select(Some((name, descendants)), f - ListFlags::ROOTS)
            .iter()
            .map(|s| s.name.clone())
            .collect())
    }

    pub fn snapshot_lookup(&self, dom: &Dom, name: &str, flags: u32) -> Result<(), VirError> {
        common::error::check_flags(flags, 0)?;
        dom.snapshots().get(name).map(|_| ())
    }

    pub fn snapshot_current(&self, dom: &Dom, flags: u32) -> Result<String, VirError> {
        common::error::check_flags(flags, 0)?;
        dom.snapshots().current.clone().ok_or_else(|| {
            VirError::new(
                ErrorCode::NoDomainSnapshot,
                "the domain does not have a current snapshot",
            )
        })
    }

    pub fn snapshot_is_current(&self, dom: &Dom, name: &str, flags: u32) -> Result<bool, VirError> {
        common::error::check_flags(flags, 0)?;
        let t = dom.snapshots();
        t.get(name)?;
        Ok(t.current.as_deref() == Some(name))
    }

    pub fn snapshot_parent(&self, dom: &Dom, name: &str, flags: u32) -> Result<String, VirError> {
        common::error::check_flags(flags, 0)?;
        dom.snapshots().get(name)?.parent.clone().ok_or_else(|| {
            VirError::new(
                ErrorCode::NoDomainSnapshot,
                format!("snapshot '{name}' does not have a parent"),
            )
        })
    }

    /// libvirt's `<domainsnapshot>` (SECURE 1: the domain with its passwords).
    pub fn snapshot_xml(&self, dom: &Dom, name: &str, flags: u32) -> Result<String, VirError> {
        common::error::check_flags(flags, 1)?;
        let snap = dom.snapshots().get(name)?.clone();
        let domain = DomainDef::parse(&snap.domain_xml)?.to_xml_for(None, flags & 1 != 0);
        let domain = common::xml::parse(&domain)
            .map_err(|e| VirError::internal(format!("snapshot domain XML: {e}")))?;
        Ok(snap.to_element(Some(domain)).to_xml())
    }

    /// `DomainSnapshot.Delete`: the snapshot (its state in the images too, unless
    /// METADATA_ONLY), and with CHILDREN its descendants or with CHILDREN_ONLY only
    /// those. A snapshot's children take its parent as theirs.
    pub async fn snapshot_delete(
        &self,
        dom: &Arc<Dom>,
        name: &str,
        flags: u32,
    ) -> Result<(), VirError> {
        let f: DeleteFlags = common::error::flags(flags)?;
        let _call = self.calls.enter();
        let _lock = dom.begin_job().await;
        let (gone, parent) = {
            let t = dom.snapshots();
            let parent = t.get(name)?.parent.clone();
            let mut gone = t.subtree(name);
            if f.contains(DeleteFlags::CHILDREN_ONLY) {
                gone.remove(0);
            } else if !f.contains(DeleteFlags::CHILDREN) {
                gone.truncate(1);
            }
            (gone, parent)
        };
        let (def, qmp, _) = dom.current()?;
        let domain = dom.name();
        // Children first: a snapshot's state goes after everything built on it.
        for n in gone.iter().rev() {
            if !f.contains(DeleteFlags::METADATA_ONLY) {
                let snap = dom.snapshots().get(n)?.clone();
                let disks: Vec<Covered> = covered(&def, &[])?
                    .into_iter()
                    .filter(|d| snap.disks.contains(&d.target))
                    .collect();
                match &qmp {
                    Some(qmp) if !disks.is_empty() => {
                        let args = json!({
                            "tag": n,
                            "devices": disks.iter().map(|d| node(d.index)).collect::<Vec<_>>(),
                        });
                        run_job(qmp, "snapshot-delete", args).await?;
                    }
                    Some(_) => {}
                    None => qemu_img_snapshot("-d", n, &disks).await?,
                }
            }
            let file = self.snapshot_dir(&domain).join(format!("{n}.xml"));
            common::persist::remove_durable(&file).map_err(|e| io_err("remove", &file, &e))?;
            {
                let mut t = dom.snapshots();
                let new_parent = t.get(n).ok().and_then(|s| s.parent.clone());
                t.snapshots.retain(|s| &s.name != n);
                if t.current.as_deref() == Some(n.as_str()) {
                    t.current = new_parent;
                }
            }
            self.outbox
                .send(Change::SnapshotRemoved(dom.clone(), n.clone()))
                .await;
        }
        // The children of a snapshot deleted alone hang off its parent now.
        if gone.len() == 1 && gone[0] == name {
            let kids: Vec<Snapshot> = {
                let mut t = dom.snapshots();
                for s in t
                    .snapshots
                    .iter_mut()
                    .filter(|s| s.parent.as_deref() == Some(name))
                {
                    s.parent.clone_from(&parent);
                }
                t.snapshots
                    .iter()
                    .filter(|s| s.parent == parent)
                    .cloned()
                    .collect()
            };
            for k in kids {
                self.write_snapshot(&domain, &k)?;
            }
        }
        let current = dom.snapshots().current.clone();
        self.write_current(&domain, current.as_deref())
    }

    /// `DomainSnapshot.Revert`: the disks (and the memory, for a snapshot of a running
    /// domain) back to the snapshot; it becomes the current one.
    pub async fn snapshot_revert(
        &self,
        dom: &Arc<Dom>,
        name: &str,
        flags: u32,
    ) -> Result<(), VirError> {
        let f: RevertFlags = common::error::flags(flags)?;
        if f.contains(RevertFlags::RUNNING | RevertFlags::PAUSED) {
            return Err(VirError::invalid_arg(
                "flags 'running' and 'paused' are mutually exclusive",
            ));
        }
        let _call = self.calls.enter();
        let _lock = dom.begin_job().await;
        let snap = dom.snapshots().get(name)?.clone();
        let run = f.contains(RevertFlags::RUNNING)
            || (!f.contains(RevertFlags::PAUSED) && snap.state == "running");
        let (def, qmp, state) = dom.current()?;
        let disks: Vec<Covered> = covered(&def, &[])?
            .into_iter()
            .filter(|d| snap.disks.contains(&d.target))
            .collect();
        match (&qmp, snap.memory) {
            (Some(qmp), true) => {
                let first = disks.first().ok_or_else(|| {
                    VirError::operation_failed("the snapshot's disks are not in the domain")
                })?;
                let args = json!({
                    "tag": name,
                    "vmstate": node(first.index),
                    "devices": disks.iter().map(|d| node(d.index)).collect::<Vec<_>>(),
                });
                let was_running = state == DomainState::Running;
                if was_running {
                    self.transition(
                        dom,
                        &[DomainState::Running],
                        StateReason::Paused(PausedReason::FromSnapshot),
                    );
                    qmp.execute("stop", None).await?;
                }
                run_job(qmp, "snapshot-load", args).await?;
                if run {
                    self.transition(
                        dom,
                        &[DomainState::Paused],
                        StateReason::Running(RunningReason::FromSnapshot),
                    );
                    qmp.execute("cont", None).await?;
                    if !was_running {
                        self.lifecycle(dom, DomainEvent::Resumed(ResumedDetail::FromSnapshot))
                            .await;
                    }
                } else if was_running {
                    self.lifecycle(dom, DomainEvent::Suspended(SuspendedDetail::FromSnapshot))
                        .await;
                }
                self.save_status(dom).await;
            }
            (None, true) => {
                let def = DomainDef::parse(&snap.domain_xml)?;
                let flags = if run {
                    StartFlags::empty()
                } else {
                    StartFlags::PAUSED
                };
                let from = super::save::StartFrom::Snapshot(name.to_owned());
                self.start_locked(dom, def, flags, Some(from)).await?;
            }
            (live, false) => {
                if live.is_some() {
                    if !f.contains(RevertFlags::FORCE) && state != DomainState::Shutoff {
                        // libvirt reverts a running domain to a disk-only snapshot by
                        // stopping it; so does this daemon.
                        tracing::info!(domain = %dom.name(), "stopping the domain to revert to '{name}'");
                    }
                    self.destroy_locked(dom).await?;
                }
                qemu_img_snapshot("-a", name, &disks).await?;
                if f.intersects(RevertFlags::RUNNING | RevertFlags::PAUSED) {
                    let def = dom.lock().config.clone().ok_or_else(no_definition)?;
                    let flags = if f.contains(RevertFlags::PAUSED) {
                        StartFlags::PAUSED
                    } else {
                        StartFlags::empty()
                    };
                    self.start_locked(dom, def, flags, None).await?;
                }
            }
        }
        dom.snapshots().current = Some(name.to_owned());
        self.write_current(&dom.name(), Some(name))
    }

    /// Undefine's part: a domain with snapshots keeps its metadata unless asked
    /// (SNAPSHOTS_METADATA), as libvirt.
    pub(super) async fn drop_snapshot_metadata(
        &self,
        dom: &Arc<Dom>,
        allowed: bool,
    ) -> Result<(), VirError> {
        let names: Vec<String> = dom
            .snapshots()
            .snapshots
            .iter()
            .map(|s| s.name.clone())
            .collect();
        if names.is_empty() {
            return Ok(());
        }
        if !allowed {
            return Err(VirError::operation_invalid(format!(
                "cannot delete inactive domain with {} snapshots",
                names.len()
            )));
        }
        let dir = self.snapshot_dir(&dom.name());
        std::fs::remove_dir_all(&dir).map_err(|e| io_err("remove", &dir, &e))?;
        *dom.snapshots() = Tree::default();
        for n in names {
            self.outbox
                .send(Change::SnapshotRemoved(dom.clone(), n))
                .await;
        }
        Ok(())
    }
}
