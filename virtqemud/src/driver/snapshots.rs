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

/// Runs a QMP job command (`snapshot-save`, `-load`, `-delete`) to its end. The job's
/// id names this daemon process: one a killed daemon left in QEMU never collides.
async fn run_job(qmp: &Qmp, command: &str, mut args: Value) -> Result<(), VirError> {
    let id = format!(
        "{command}-{}-{}",
        std::process::id(),
        JOB_ID.fetch_add(1, Ordering::Relaxed)
    );
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

/// A snapshot operation under way, on disk before it touches an image: a daemon killed
/// during it finishes or undoes it at restart ([`Driver::settle_snapshots`]), so the
/// metadata and the images' snapshots always agree and no guest stays paused.
#[derive(serde::Serialize, serde::Deserialize)]
struct Pending {
    op: PendingOp,
    name: String,
    /// The guest ran, and the operation paused it.
    resume: bool,
}

#[derive(serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
enum PendingOp {
    /// Creating it: the metadata to adopt if every image got the snapshot.
    Create { file: String },
    /// Deleting it (and its state in the images).
    Delete,
    /// Loading its state into the running guest.
    Revert { run: bool },
}

const PENDING: &str = ".pending.json";

/// The snapshot names an image holds, from its own header (shared: QEMU may hold it).
fn image_snapshots(path: &std::path::Path) -> Result<Vec<String>, VirError> {
    let out = Command::new("qemu-img")
        .args(["info", "-U", "--output=json"])
        .arg(path)
        .output()
        .map_err(|e| VirError::operation_failed(format!("cannot run qemu-img: {e}")))?;
    if !out.status.success() {
        return Err(VirError::operation_failed(format!(
            "qemu-img info '{}': {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let info: Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| VirError::internal(format!("qemu-img info: {e}")))?;
    Ok(names_in(&info))
}

/// `snapshots[].name` of an image's info (qemu-img's or a QMP block node's `image`).
fn names_in(image: &Value) -> Vec<String> {
    image
        .get("snapshots")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| s.get("name").and_then(Value::as_str).map(str::to_owned))
        .collect()
}

/// Which of `disks` hold snapshot `name`: from QEMU's block nodes while it runs (after
/// its snapshot jobs ended), else from the images.
async fn holding(qmp: Option<&Qmp>, disks: &[Covered], name: &str) -> Result<Vec<bool>, VirError> {
    let Some(qmp) = qmp else {
        let paths: Vec<Option<PathBuf>> = disks.iter().map(|d| d.path.clone()).collect();
        let name = name.to_owned();
        return tokio::task::spawn_blocking(move || {
            paths
                .iter()
                .map(|p| match p {
                    Some(p) => Ok(image_snapshots(p)?.contains(&name)),
                    None => Ok(false),
                })
                .collect()
        })
        .await
        .map_err(|e| VirError::internal(format!("qemu-img task: {e}")))?;
    };
    let nodes = qmp
        .execute("query-named-block-nodes", Some(json!({ "flat": true })))
        .await?;
    Ok(disks
        .iter()
        .map(|d| {
            nodes
                .as_array()
                .into_iter()
                .flatten()
                .find(|n| n.get("node-name").and_then(Value::as_str) == Some(&node(d.index)))
                .and_then(|n| n.get("image"))
                .is_some_and(|i| names_in(i).iter().any(|t| t == name))
        })
        .collect())
}

/// Waits (bounded) for the snapshot jobs a killed daemon left in QEMU, and dismisses them.
async fn end_left_jobs(qmp: &Qmp) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let Ok(jobs) = qmp.execute("query-jobs", None).await else {
            return;
        };
        let ours: Vec<(String, String)> = jobs
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|j| {
                let id = j.get("id").and_then(Value::as_str)?;
                let status = j.get("status").and_then(Value::as_str)?;
                id.starts_with("snapshot-")
                    .then(|| (id.to_owned(), status.to_owned()))
            })
            .collect();
        let mut running = false;
        for (id, status) in ours {
            if status == "concluded" {
                let _ = qmp.execute("job-dismiss", Some(json!({ "id": id }))).await;
            } else {
                running = true;
            }
        }
        if !running || Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The disks of `def` that hold snapshot `snap`.
fn snapshot_disks(def: &DomainDef, snap: &Snapshot) -> Result<Vec<Covered>, VirError> {
    Ok(covered(def, &[])?
        .into_iter()
        .filter(|d| snap.disks.contains(&d.target))
        .collect())
}

/// Deletes snapshot `name` from those of `disks` that hold it (a delete cut short may
/// have done part of them already).
async fn delete_tags(qmp: Option<&Qmp>, disks: &[Covered], name: &str) -> Result<(), VirError> {
    let held = holding(qmp, disks, name).await?;
    let disks: Vec<&Covered> = disks
        .iter()
        .zip(held)
        .filter_map(|(d, h)| h.then_some(d))
        .collect();
    if disks.is_empty() {
        return Ok(());
    }
    match qmp {
        Some(qmp) => {
            let args = json!({
                "tag": name,
                "devices": disks.iter().map(|d| node(d.index)).collect::<Vec<_>>(),
            });
            run_job(qmp, "snapshot-delete", args).await
        }
        None => {
            let owned: Vec<Covered> = disks
                .iter()
                .map(|d| Covered {
                    index: d.index,
                    target: d.target.clone(),
                    path: d.path.clone(),
                })
                .collect();
            qemu_img_snapshot("-d", name, &owned).await
        }
    }
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

    /// Records an operation on snapshot `name` before it touches an image.
    fn record_pending(
        &self,
        domain: &str,
        op: PendingOp,
        name: &str,
        resume: bool,
    ) -> Result<(), VirError> {
        let dir = self.snapshot_dir(domain);
        common::persist::create_dir_all(&dir, 0o700).map_err(|e| io_err("create", &dir, &e))?;
        let p = Pending {
            op,
            name: name.to_owned(),
            resume,
        };
        let data = serde_json::to_vec(&p).map_err(|e| VirError::internal(e.to_string()))?;
        let file = dir.join(PENDING);
        common::persist::write_atomic(&file, &data, 0o600).map_err(|e| io_err("write", &file, &e))
    }

    fn clear_pending(&self, domain: &str) {
        let file = self.snapshot_dir(domain).join(PENDING);
        if let Err(e) = common::persist::remove_durable(&file) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::error!("{}: {e}", file.display());
            }
        }
    }

    /// After a restart (the runs adopted): every domain's snapshot operation that a
    /// kill cut short is finished or undone.
    pub(super) async fn settle_snapshots_all(&self) {
        let doms: Vec<Arc<Dom>> = self.reg().by_uuid.values().cloned().collect();
        for dom in doms {
            if self.snapshot_dir(&dom.name()).join(PENDING).exists() {
                self.settle_snapshots(&dom).await;
            }
        }
    }

    /// A create is adopted if every image got the snapshot, else its parts are deleted;
    /// a delete is finished; a revert is loaded again. A guest the operation paused runs
    /// again.
    async fn settle_snapshots(&self, dom: &Arc<Dom>) {
        let domain = dom.name();
        let file = self.snapshot_dir(&domain).join(PENDING);
        let pending: Pending = match std::fs::read(&file)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("ignoring {}: {e}", file.display());
                self.clear_pending(&domain);
                return;
            }
        };
        let _lock = dom.begin_job().await;
        let Ok((def, qmp, _)) = dom.current() else {
            self.clear_pending(&domain);
            return;
        };
        if let Some(q) = &qmp {
            end_left_jobs(q).await;
        }
        let name = pending.name.clone();
        let mut resume = pending.resume;
        let r = match pending.op {
            PendingOp::Create { file } => self.settle_create(dom, &def, qmp.as_ref(), &file).await,
            PendingOp::Delete => {
                // Bound first: the tree's guard must not live through the match.
                let snap = dom.snapshots().get(&name).cloned();
                self.settle_delete(dom, &def, qmp.as_ref(), snap).await
            }
            PendingOp::Revert { run } => {
                tracing::warn!(domain = %domain, "loading snapshot '{name}' again: its revert was cut short");
                resume = run;
                let snap = dom.snapshots().get(&name).cloned();
                match (&qmp, snap) {
                    (Some(qmp), Ok(snap)) => {
                        let r = async {
                            let disks = snapshot_disks(&def, &snap)?;
                            let first = disks.first().ok_or_else(|| {
                                VirError::operation_failed(
                                    "the snapshot's disks are not in the domain",
                                )
                            })?;
                            let args = json!({
                                "tag": name,
                                "vmstate": node(first.index),
                                "devices": disks.iter().map(|d| node(d.index)).collect::<Vec<_>>(),
                            });
                            let _ = qmp.execute("stop", None).await;
                            run_job(qmp, "snapshot-load", args).await?;
                            dom.snapshots().current = Some(name.clone());
                            self.write_current(&domain, Some(&name))
                        };
                        r.await
                    }
                    _ => Ok(()),
                }
            }
        };
        if let Err(e) = r {
            tracing::error!(domain = %domain, "settling snapshot '{name}': {e}");
        }
        if let (Some(qmp), true) = (&qmp, resume) {
            if qmp.execute("cont", None).await.is_ok() {
                self.transition(
                    dom,
                    &[DomainState::Paused],
                    StateReason::Running(RunningReason::Unpaused),
                );
                self.save_status(dom).await;
            }
        }
        self.clear_pending(&domain);
    }

    /// A delete cut short is finished: the snapshot's state goes from the images that
    /// still hold it, then its metadata.
    async fn settle_delete(
        &self,
        dom: &Arc<Dom>,
        def: &DomainDef,
        qmp: Option<&Qmp>,
        snap: Result<Snapshot, VirError>,
    ) -> Result<(), VirError> {
        let Ok(snap) = snap else {
            return Ok(());
        };
        let name = snap.name.clone();
        tracing::warn!(domain = %dom.name(), "finishing the deletion of snapshot '{name}'");
        let disks = snapshot_disks(def, &snap)?;
        delete_tags(qmp, &disks, &name).await?;
        self.reparent_children(dom, &name, snap.parent.as_deref())?;
        self.forget_snapshot(dom, &name).await?;
        let current = dom.snapshots().current.clone();
        self.write_current(&dom.name(), current.as_deref())
    }

    /// A create cut short: adopted when every disk holds the snapshot, else undone.
    async fn settle_create(
        &self,
        dom: &Arc<Dom>,
        def: &DomainDef,
        qmp: Option<&Qmp>,
        file: &str,
    ) -> Result<(), VirError> {
        let snap = Snapshot::from_file(file)?;
        let disks = snapshot_disks(def, &snap)?;
        let held = holding(qmp, &disks, &snap.name).await?;
        let domain = dom.name();
        if !disks.is_empty() && held.iter().all(|h| *h) {
            tracing::warn!(domain = %domain, "adopting snapshot '{}': its images hold it", snap.name);
            self.write_snapshot(&domain, &snap)?;
            self.write_current(&domain, Some(&snap.name))?;
            let name = snap.name.clone();
            {
                let mut t = dom.snapshots();
                t.snapshots.retain(|s| s.name != name);
                t.snapshots.push(snap);
                t.current = Some(name.clone());
            }
            self.outbox
                .send(Change::SnapshotAdded(dom.clone(), name))
                .await;
            return Ok(());
        }
        tracing::warn!(domain = %domain, "undoing snapshot '{}': not every image holds it", snap.name);
        delete_tags(qmp, &disks, &snap.name).await
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
        let resume = memory && state == DomainState::Running;
        let op = PendingOp::Create {
            file: snap.to_file()?,
        };
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
            self.record_pending(&domain, op, &name, resume)?;
            let r = self
                .quietly_paused(dom, qmp, state, async {
                    run_job(qmp, "snapshot-save", args).await
                })
                .await;
            if let Err(e) = r {
                self.clear_pending(&domain);
                return Err(e);
            }
        } else {
            self.record_pending(&domain, op, &name, false)?;
            if let Err(e) = qemu_img_snapshot("-c", &name, &disks).await {
                self.clear_pending(&domain);
                return Err(e);
            }
        }
        self.write_snapshot(&domain, &snap)?;
        self.write_current(&domain, Some(&name))?;
        self.clear_pending(&domain);
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
        let alone = gone.len() == 1 && gone[0] == name;
        // Children first: a snapshot's state goes after everything built on it.
        for n in gone.iter().rev() {
            if !f.contains(DeleteFlags::METADATA_ONLY) {
                self.record_pending(&domain, PendingOp::Delete, n, false)?;
                let disks = snapshot_disks(&def, &dom.snapshots().get(n)?.clone())?;
                if let Err(e) = delete_tags(qmp.as_ref(), &disks, n).await {
                    self.clear_pending(&domain);
                    return Err(e);
                }
            }
            // The children of a snapshot deleted alone hang off its parent: written
            // before its own metadata goes, so that no kill leaves a child pointing at
            // a parent that is gone (the restart's settling does the same).
            if alone {
                self.reparent_children(dom, name, parent.as_deref())?;
            }
            self.forget_snapshot(dom, n).await?;
            self.clear_pending(&domain);
        }
        let current = dom.snapshots().current.clone();
        self.write_current(&domain, current.as_deref())
    }

    /// The metadata of snapshot `n` gone, on disk and in the tree.
    async fn forget_snapshot(&self, dom: &Arc<Dom>, n: &str) -> Result<(), VirError> {
        let file = self.snapshot_dir(&dom.name()).join(format!("{n}.xml"));
        common::persist::remove_durable(&file).map_err(|e| io_err("remove", &file, &e))?;
        {
            let mut t = dom.snapshots();
            let new_parent = t.get(n).ok().and_then(|s| s.parent.clone());
            t.snapshots.retain(|s| s.name != n);
            if t.current.as_deref() == Some(n) {
                t.current = new_parent;
            }
        }
        self.outbox
            .send(Change::SnapshotRemoved(dom.clone(), n.to_owned()))
            .await;
        Ok(())
    }

    /// The children of snapshot `name` (gone) take `parent` as theirs.
    fn reparent_children(
        &self,
        dom: &Dom,
        name: &str,
        parent: Option<&str>,
    ) -> Result<(), VirError> {
        let kids: Vec<Snapshot> = {
            let mut t = dom.snapshots();
            let mut kids = Vec::new();
            for s in t
                .snapshots
                .iter_mut()
                .filter(|s| s.parent.as_deref() == Some(name))
            {
                s.parent = parent.map(str::to_owned);
                kids.push(s.clone());
            }
            kids
        };
        for k in kids {
            self.write_snapshot(&dom.name(), &k)?;
        }
        Ok(())
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
                self.record_pending(&dom.name(), PendingOp::Revert { run }, name, was_running)?;
                if was_running {
                    self.transition(
                        dom,
                        &[DomainState::Running],
                        StateReason::Paused(PausedReason::FromSnapshot),
                    );
                }
                let loaded = async {
                    if was_running {
                        qmp.execute("stop", None).await?;
                    }
                    run_job(qmp, "snapshot-load", args).await
                }
                .await;
                if let Err(e) = loaded {
                    self.clear_pending(&dom.name());
                    return Err(e);
                }
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
                self.clear_pending(&dom.name());
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
