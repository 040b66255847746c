//! Block jobs on a running domain's disks, as libvirt's QEMU driver runs them: BlockPull
//! (QEMU's `block-stream`: the backing chain's data copied into the top image, which
//! then stands alone) and BlockCommit of a layer below the top (`block-commit`: that
//! layer's data merged down into its base). One job per disk, named for it
//! (`libvirt-pull-vda`), so its QMP events become libvirt's BlockJob signal
//! (`events.rs`). QEMU runs the job; a restarted daemon finds it in `query-block-jobs`.
//! Copies (BlockCopy, BlockRebase with COPY) are `super::blockcopy`'s; active-layer
//! commit (which moves the disk to a node QEMU opened and named itself) is not served.

use common::error::{ErrorCode, VirError};
use serde_json::{json, Value};

use super::{not_running, Dom, Driver};
use crate::qmp::Qmp;

/// `virDomainBlockJobType`.
pub const PULL: i32 = 1;
pub const COMMIT: i32 = 3;

bitflags::bitflags! {
    /// `virDomainBlockPullFlags`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct PullFlags: u32 {
        const BANDWIDTH_BYTES = 64;
    }
    /// `virDomainBlockCommitFlags` taken here.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct CommitFlags: u32 {
        const SHALLOW = 1;
        const ACTIVE = 4;
        const BANDWIDTH_BYTES = 16;
    }
    /// `virDomainBlockJobAbortFlags`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct AbortFlags: u32 {
        const ASYNC = 1;
        const PIVOT = 2;
    }
    /// `virDomainBlockJobInfoFlags` / `virDomainBlockJobSetSpeedFlags`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct SpeedFlags: u32 {
        const BANDWIDTH_BYTES = 1;
    }
}

/// The job id of a job of `kind` (`pull`, `commit`) on disk `target`.
fn job_id(kind: &str, target: &str) -> String {
    format!("libvirt-{kind}-{target}")
}

/// (libvirt's job type, disk target) of one of this daemon's job ids.
pub fn parse_job_id(id: &str) -> Option<(i32, &str)> {
    let rest = id.strip_prefix("libvirt-")?;
    let (kind, target) = rest.split_once('-')?;
    let t = match kind {
        "pull" => PULL,
        "copy" => super::blockcopy::COPY,
        "commit" => COMMIT,
        _ => return None,
    };
    Some((t, target))
}

/// Bytes per second from libvirt's bandwidth (MiB/s unless given in bytes).
fn speed(bandwidth: u64, bytes: bool) -> Result<u64, VirError> {
    if bytes {
        return Ok(bandwidth);
    }
    bandwidth
        .checked_mul(1 << 20)
        .filter(|b| *b <= i64::MAX as u64)
        .ok_or_else(|| {
            VirError::new(
                ErrorCode::OperationFailed,
                format!(
                    "bandwidth must be less than {} MiB/s",
                    (i64::MAX as u64) >> 20
                ),
            )
        })
}

/// The disk's running job (from QEMU), if any; one that has ended and waits to be
/// dismissed does not count.
pub(super) async fn job_of(qmp: &Qmp, target: &str) -> Result<Option<Value>, VirError> {
    let jobs = qmp.execute("query-block-jobs", None).await?;
    Ok(jobs
        .as_array()
        .into_iter()
        .flatten()
        .find(|j| {
            j.get("device")
                .and_then(Value::as_str)
                .and_then(parse_job_id)
                .is_some_and(|(_, t)| t == target)
                && !matches!(
                    j.get("status").and_then(Value::as_str),
                    Some("concluded" | "null")
                )
        })
        .cloned())
}

/// Whether the disk has a job in QEMU.
pub(super) async fn has_job(qmp: &Qmp, target: &str) -> Result<bool, VirError> {
    Ok(job_of(qmp, target).await?.is_some())
}

/// The id of the disk's running job, or libvirt's error that it has none.
async fn running_job(qmp: &Qmp, target: &str) -> Result<String, VirError> {
    job_of(qmp, target)
        .await?
        .and_then(|j| j.get("device").and_then(Value::as_str).map(str::to_owned))
        .ok_or_else(|| {
            VirError::operation_invalid(format!(
                "disk '{target}' does not have an active block job"
            ))
        })
}

impl Driver {
    /// The running domain's QMP and the `libvirt-N-format` node and target of `disk`.
    fn job_disk(&self, dom: &Dom, disk: &str) -> Result<(Qmp, String, String), VirError> {
        let g = dom.lock();
        let l = g.live.as_ref().ok_or_else(not_running)?;
        let i = crate::stats::disk_index(&l.def, disk)?;
        let target = l.def.dom.devices.disks[i].target_dev.clone();
        Ok((
            l.qmp.clone(),
            format!("libvirt-{}-format", l.def.disk_node(i)),
            target,
        ))
    }

    async fn refuse_second_job(qmp: &Qmp, target: &str) -> Result<(), VirError> {
        if job_of(qmp, target).await?.is_some() {
            return Err(VirError::operation_invalid(format!(
                "disk '{target}' already in active block job"
            )));
        }
        Ok(())
    }

    /// `BlockPull`: the backing chain's data into the top image.
    pub async fn block_pull(
        &self,
        dom: &Dom,
        disk: &str,
        bandwidth: u64,
        flags: u32,
    ) -> Result<(), VirError> {
        let f: PullFlags = common::error::flags(flags)?;
        self.block_stream(
            dom,
            disk,
            None,
            bandwidth,
            f.contains(PullFlags::BANDWIDTH_BYTES),
        )
        .await
    }

    /// `block-stream` of the chain above `base` (all of it when none) into the top.
    pub(super) async fn block_stream(
        &self,
        dom: &Dom,
        disk: &str,
        base: Option<&str>,
        bandwidth: u64,
        bytes: bool,
    ) -> Result<(), VirError> {
        let (qmp, node, target) = self.job_disk(dom, disk)?;
        Self::refuse_second_job(&qmp, &target).await?;
        let mut args = json!({ "job-id": job_id("pull", &target), "device": node });
        if let Some(b) = base {
            args["base"] = json!(b);
        }
        if bandwidth > 0 {
            args["speed"] = json!(speed(bandwidth, bytes)?);
        }
        qmp.execute("block-stream", Some(args)).await?;
        Ok(())
    }

    /// `BlockCommit` of `top` (a backing image below the active one) into `base` (its
    /// backing file when empty, or with SHALLOW).
    pub async fn block_commit(
        &self,
        dom: &Dom,
        disk: &str,
        base: &str,
        top: &str,
        bandwidth: u64,
        flags: u32,
    ) -> Result<(), VirError> {
        let f: CommitFlags = common::error::flags(flags)?;
        let (qmp, node, target) = self.job_disk(dom, disk)?;
        let active = {
            let g = dom.lock();
            g.live
                .as_ref()
                .and_then(|l| {
                    l.def
                        .dom
                        .devices
                        .disks
                        .iter()
                        .find(|d| d.target_dev == target)
                })
                .and_then(crate::stats::disk_path)
        };
        if f.contains(CommitFlags::ACTIVE) || top.is_empty() || Some(top) == active.as_deref() {
            return Err(VirError::new(
                ErrorCode::OperationUnsupported,
                "committing the active layer (it moves the disk to its base) is not supported here; commit a lower layer or use BlockPull",
            ));
        }
        Self::refuse_second_job(&qmp, &target).await?;
        let mut args = json!({ "job-id": job_id("commit", &target), "device": node, "top": top });
        if !base.is_empty() && !f.contains(CommitFlags::SHALLOW) {
            args["base"] = json!(base);
        }
        if bandwidth > 0 {
            args["speed"] = json!(speed(bandwidth, f.contains(CommitFlags::BANDWIDTH_BYTES))?);
        }
        qmp.execute("block-commit", Some(args)).await?;
        Ok(())
    }

    /// `GetBlockJobInfo`: (type, bandwidth, cur, end); all 0 with no job.
    pub async fn block_job_info(
        &self,
        dom: &Dom,
        disk: &str,
        flags: u32,
    ) -> Result<(i32, u64, u64, u64), VirError> {
        let f: SpeedFlags = common::error::flags(flags)?;
        let (qmp, _, target) = self.job_disk(dom, disk)?;
        let Some(j) = job_of(&qmp, &target).await? else {
            return Ok((0, 0, 0, 0));
        };
        let kind = j
            .get("device")
            .and_then(Value::as_str)
            .and_then(parse_job_id)
            .map_or(0, |(t, _)| t);
        let n = |k: &str| j.get(k).and_then(Value::as_u64).unwrap_or(0);
        let bw = if f.contains(SpeedFlags::BANDWIDTH_BYTES) {
            n("speed")
        } else {
            n("speed") >> 20
        };
        Ok((kind, bw, n("offset"), n("len")))
    }

    /// `BlockJobAbort`: cancels the disk's job (waiting for its end unless ASYNC).
    pub async fn block_job_abort(&self, dom: &Dom, disk: &str, flags: u32) -> Result<(), VirError> {
        let f: AbortFlags = common::error::flags(flags)?;
        let (qmp, _, target) = self.job_disk(dom, disk)?;
        if self.copying(dom, &target) {
            return self
                .copy_abort(
                    dom,
                    &target,
                    f.contains(AbortFlags::PIVOT),
                    !f.contains(AbortFlags::ASYNC),
                )
                .await;
        }
        let id = running_job(&qmp, &target).await?;
        if f.contains(AbortFlags::PIVOT) {
            return Err(VirError::operation_invalid(format!(
                "disk '{target}' has no copy or active commit to pivot to"
            )));
        }
        qmp.execute(
            "block-job-cancel",
            Some(json!({ "device": id, "force": true })),
        )
        .await?;
        if !f.contains(AbortFlags::ASYNC) {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while job_of(&qmp, &target).await?.is_some() && std::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    /// `BlockJobSetSpeed`.
    pub async fn block_job_set_speed(
        &self,
        dom: &Dom,
        disk: &str,
        bandwidth: u64,
        flags: u32,
    ) -> Result<(), VirError> {
        let f: SpeedFlags = common::error::flags(flags)?;
        let (qmp, _, target) = self.job_disk(dom, disk)?;
        let id = running_job(&qmp, &target).await?;
        let bps = speed(bandwidth, f.contains(SpeedFlags::BANDWIDTH_BYTES))?;
        qmp.execute(
            "block-job-set-speed",
            Some(json!({ "device": id, "speed": bps })),
        )
        .await?;
        Ok(())
    }
}
