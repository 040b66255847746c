//! BlockCopy, and BlockRebase (its copy, and a pull down to a chosen base), as
//! libvirt's QEMU driver runs them: the destination opened as block nodes
//! `libvirt-M-*` of a fresh M, QEMU's `blockdev-mirror` from the disk's
//! `libvirt-N-format` to them (job `libvirt-copy-TARGET`), then, once the job is READY,
//! `BlockJobAbort` with PIVOT (`block-job-complete`: the guest's disk now is the copy)
//! or without (`block-job-cancel`: the copy stops, the guest keeps its disk).
//!
//! The disk moves to other nodes at the pivot, so what the live definition says of it
//! (its source, its N) changes then. A copy in progress is recorded in the run's status
//! before QEMU is asked, as a plug is (`super::hotplug::Pending`, the new disk element
//! and its M); whoever sees the job gone settles it from what QEMU itself has: the
//! disk's medium node is `libvirt-M-format` (pivoted: the definition takes the copy, the
//! old nodes go) or not (the copy's nodes go). That is the job's end event, the pivot
//! call, or a daemon restarted after `kill -9` (`super::reconcile`).

use std::sync::Arc;
use std::time::Duration;

use common::error::{ErrorCode, VirError};
use serde_json::{json, Value};
use zbus::zvariant::OwnedValue;

use super::hotplug::{del_nodes, nodes_of, parse_device, Pending, PendingKind};
use super::{not_running, Dom, Driver};
use crate::qmp::Qmp;
use crate::xml::{Disk, DiskSource};

/// `virDomainBlockJobType` of a copy.
pub const COPY: i32 = 2;

bitflags::bitflags! {
    /// `virDomainBlockCopyFlags`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct CopyFlags: u32 {
        const SHALLOW = 1;
        const REUSE_EXT = 2;
        const TRANSIENT_JOB = 4;
        const SYNCHRONOUS_WRITES = 8;
    }
    /// `virDomainBlockRebaseFlags`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct RebaseFlags: u32 {
        const SHALLOW = 1;
        const REUSE_EXT = 2;
        const COPY_RAW = 4;
        const COPY = 8;
        const RELATIVE = 16;
        const COPY_DEV = 32;
        const BANDWIDTH_BYTES = 64;
    }
}

/// How a copy runs: libvirt's BlockCopy parameters and flags.
#[derive(Debug, Default)]
struct CopyOpts {
    shallow: bool,
    reuse: bool,
    synchronous: bool,
    /// Bytes per second; 0 unlimited.
    bandwidth: u64,
    granularity: Option<u32>,
    buf_size: Option<u64>,
}

impl CopyOpts {
    /// `VIR_DOMAIN_BLOCK_COPY_BANDWIDTH` (bytes/s), `_GRANULARITY`, `_BUF_SIZE`.
    fn with_params(
        mut self,
        params: &std::collections::HashMap<String, OwnedValue>,
    ) -> Result<Self, VirError> {
        for (k, v) in params {
            let bad = |what: &str| VirError::invalid_arg(format!("parameter '{k}' must be {what}"));
            match k.as_str() {
                "bandwidth" => {
                    self.bandwidth =
                        u64::try_from(v).map_err(|_| bad("an unsigned 64-bit number"))?;
                }
                "granularity" => {
                    let g = u32::try_from(v).map_err(|_| bad("an unsigned 32-bit number"))?;
                    if !(512..=64 << 20).contains(&g) || !g.is_power_of_two() {
                        return Err(VirError::invalid_arg(
                            "granularity must be a power of 2 between 512 and 64 MiB",
                        ));
                    }
                    self.granularity = Some(g);
                }
                "buf-size" => {
                    self.buf_size =
                        Some(u64::try_from(v).map_err(|_| bad("an unsigned 64-bit number"))?);
                }
                _ => {
                    return Err(VirError::new(
                        ErrorCode::ArgumentUnsupported,
                        format!("parameter '{k}' not supported"),
                    ))
                }
            }
        }
        Ok(self)
    }
}

fn job_id(target: &str) -> String {
    format!("libvirt-copy-{target}")
}

/// The copy job of `target` as QEMU lists it, unless it has ended.
async fn copy_job(qmp: &Qmp, target: &str) -> Result<Option<Value>, VirError> {
    Ok(super::blockjobs::job_of(qmp, target)
        .await?
        .filter(|j| j.get("device").and_then(Value::as_str) == Some(job_id(target).as_str())))
}

/// The node QEMU's device `qdev` reads (`query-block`'s inserted node), if any.
async fn medium_node(qmp: &Qmp, qdev: &str) -> Result<Option<String>, VirError> {
    let blocks = qmp.execute("query-block", None).await?;
    Ok(blocks
        .as_array()
        .into_iter()
        .flatten()
        .find(|b| {
            b.get("qdev")
                .and_then(Value::as_str)
                .map(|q| q.strip_prefix("/machine/peripheral/").unwrap_or(q))
                .is_some_and(|q| q.split('/').next() == Some(qdev))
        })
        .and_then(|b| b.pointer("/inserted/node-name"))
        .and_then(Value::as_str)
        .map(str::to_owned))
}

/// The image's virtual size and, for SHALLOW, its backing file and format.
async fn image_of(qmp: &Qmp, node: &str) -> Result<(u64, Option<(String, String)>), VirError> {
    let nodes = qmp
        .execute("query-named-block-nodes", Some(json!({ "flat": true })))
        .await?;
    let n = nodes
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n.get("node-name").and_then(Value::as_str) == Some(node))
        .ok_or_else(|| VirError::internal(format!("block node '{node}' not found in QEMU")))?;
    let img = n.get("image").unwrap_or(&Value::Null);
    let size = img.get("virtual-size").and_then(Value::as_u64).unwrap_or(0);
    let backing = img
        .get("full-backing-filename")
        .or_else(|| img.get("backing-filename"))
        .and_then(Value::as_str)
        .map(|b| {
            let f = img
                .get("backing-filename-format")
                .and_then(Value::as_str)
                .unwrap_or("raw");
            (b.to_owned(), f.to_owned())
        });
    Ok((size, backing))
}

/// Creates the copy's image as libvirt does when the caller did not (no REUSE_EXT): of
/// the source's size, over the source's backing file for a shallow copy.
async fn create_image(
    path: &std::path::Path,
    format: &str,
    size: u64,
    backing: Option<&(String, String)>,
) -> Result<(), VirError> {
    let mut cmd = tokio::process::Command::new("qemu-img");
    cmd.args(["create", "-q", "-f", format]);
    if let Some((b, f)) = backing {
        cmd.args(["-F", f, "-b", b]);
    }
    cmd.arg(path).arg(size.to_string());
    let out = cmd
        .output()
        .await
        .map_err(|e| VirError::system("running qemu-img", &e))?;
    if !out.status.success() {
        return Err(VirError::operation_failed(format!(
            "cannot create '{}': {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// A copy's `<disk>`: only its type, source and format count (libvirt parses it as a
/// disk source), so it needs no `<target>`.
fn parse_destination(xml: &str) -> Result<Disk, VirError> {
    let mut el = common::xml::parse(xml)?;
    if el.name != "disk" {
        return Err(VirError::xml(
            "block copy destination must be a <disk> element",
        ));
    }
    if el.first("target").is_none() {
        el.push(common::xml::Element::new("target").attr("dev", "vda"));
    }
    let (_, devs) = parse_device(&el.to_xml())?;
    devs.disks
        .into_iter()
        .next()
        .ok_or_else(|| VirError::xml("block copy destination must be a <disk> element"))
}

/// The disk a copy goes to: the running disk with the destination's source and format.
fn destination(old: &Disk, dest: &Disk) -> Result<Disk, VirError> {
    let path = match &dest.source {
        Some(DiskSource::File(p) | DiskSource::Block(p)) => p.clone(),
        Some(_) => {
            return Err(VirError::new(
                ErrorCode::ConfigUnsupported,
                "block copy destination must be a local file or block device",
            ))
        }
        None => {
            return Err(VirError::invalid_arg(
                "block copy destination has no source",
            ))
        }
    };
    if !path.is_absolute() {
        return Err(VirError::invalid_arg(format!(
            "block copy destination '{}' must be an absolute path",
            path.display()
        )));
    }
    let mut new = old.clone();
    new.source = dest.source.clone();
    new.source_type = dest.source_type.clone();
    new.driver.format = dest
        .driver
        .format
        .clone()
        .or_else(|| old.driver.format.clone())
        .or_else(|| Some("raw".into()));
    Ok(new)
}

impl Driver {
    /// `BlockCopy(disk, destxml, params, flags)`.
    pub async fn block_copy(
        &self,
        dom: &Arc<Dom>,
        disk: &str,
        destxml: &str,
        params: &std::collections::HashMap<String, OwnedValue>,
        flags: u32,
    ) -> Result<(), VirError> {
        let f: CopyFlags = common::error::flags(flags)?;
        let dest = parse_destination(destxml)?;
        let opts = CopyOpts {
            shallow: f.contains(CopyFlags::SHALLOW),
            reuse: f.contains(CopyFlags::REUSE_EXT),
            synchronous: f.contains(CopyFlags::SYNCHRONOUS_WRITES),
            ..CopyOpts::default()
        }
        .with_params(params)?;
        self.copy(dom, disk, &dest, opts).await
    }

    /// `BlockRebase(disk, base, bandwidth, flags)`: with COPY, a copy to `base`; without,
    /// a pull of the chain above `base` into the top image (all of it when empty).
    pub async fn block_rebase(
        &self,
        dom: &Arc<Dom>,
        disk: &str,
        base: &str,
        bandwidth: u64,
        flags: u32,
    ) -> Result<(), VirError> {
        let f: RebaseFlags = common::error::flags(flags)?;
        let bytes = f.contains(RebaseFlags::BANDWIDTH_BYTES);
        if !f.contains(RebaseFlags::COPY) {
            if f.intersects(RebaseFlags::COPY_RAW | RebaseFlags::COPY_DEV | RebaseFlags::REUSE_EXT)
            {
                return Err(VirError::invalid_arg(
                    "flags COPY_RAW, COPY_DEV and REUSE_EXT need COPY",
                ));
            }
            return self.block_pull_to(dom, disk, base, bandwidth, bytes).await;
        }
        if base.is_empty() {
            return Err(VirError::invalid_arg("a block copy needs a destination"));
        }
        let (ty, tag) = if f.contains(RebaseFlags::COPY_DEV) {
            ("block", "dev")
        } else {
            ("file", "file")
        };
        let format = if f.contains(RebaseFlags::COPY_RAW) {
            "<driver type='raw'/>".to_owned()
        } else {
            String::new()
        };
        let destxml = format!(
            "<disk type='{ty}'><source {tag}='{}'/>{format}</disk>",
            common::xml::escape(base)
        );
        let dest = parse_destination(&destxml)?;
        let bandwidth = if bytes {
            bandwidth
        } else {
            bandwidth.checked_mul(1 << 20).ok_or_else(|| {
                VirError::invalid_arg(format!("bandwidth {bandwidth} MiB/s is too large"))
            })?
        };
        let opts = CopyOpts {
            shallow: f.contains(RebaseFlags::SHALLOW),
            reuse: f.contains(RebaseFlags::REUSE_EXT),
            bandwidth,
            ..CopyOpts::default()
        };
        self.copy(dom, disk, &dest, opts).await
    }

    /// Starts the mirror of `disk` to `dest`.
    async fn copy(
        &self,
        dom: &Dom,
        disk: &str,
        dest: &Disk,
        opts: CopyOpts,
    ) -> Result<(), VirError> {
        let _call = self.calls.enter();
        let _lock = dom.begin_job().await;
        let (qmp, pid, old, n, qdev, m, busy) = {
            let g = dom.lock();
            let l = g.live.as_ref().ok_or_else(not_running)?;
            let i = crate::stats::disk_index(&l.def, disk)?;
            (
                l.qmp.clone(),
                l.pid,
                l.def.dom.devices.disks[i].clone(),
                l.def.disk_node(i),
                l.def.disk_qdev(i),
                super::hotplug::next_node(&l.def, l.def.dom.devices.disks.len()),
                l.copying.is_some(),
            )
        };
        let target = old.target_dev.clone();
        if busy || super::blockjobs::has_job(&qmp, &target).await? {
            return Err(VirError::operation_invalid(format!(
                "disk '{target}' already in active block job"
            )));
        }
        let node = format!("libvirt-{n}-format");
        if medium_node(&qmp, &qdev).await?.as_deref() != Some(node.as_str()) {
            return Err(VirError::new(
                ErrorCode::OperationUnsupported,
                format!("block copy of disk '{target}': it has no medium, or a filter (<iotune>, copy_on_read) sits above its image"),
            ));
        }
        let new = destination(&old, dest)?;
        let Some(DiskSource::File(path) | DiskSource::Block(path)) = new.source.clone() else {
            return Err(VirError::invalid_arg(
                "block copy destination has no source",
            ));
        };
        let format = new.driver.format.clone().unwrap_or_else(|| "raw".into());
        let (size, backing) = image_of(&qmp, &node).await?;
        match (opts.reuse, path.exists()) {
            (true, false) => {
                return Err(VirError::invalid_arg(format!(
                    "destination '{}' does not exist (REUSE_EXT)",
                    path.display()
                )))
            }
            (false, true) if matches!(new.source, Some(DiskSource::File(_))) => {
                return Err(VirError::operation_invalid(format!(
                    "destination '{}' exists already: pass REUSE_EXT to use it",
                    path.display()
                )))
            }
            (false, false) => {
                let over = if opts.shallow { backing.as_ref() } else { None };
                create_image(&path, &format, size, over).await?;
            }
            _ => {}
        }
        let nodes =
            crate::command_line::medium_nodes(&new, m, &super::hotplug::hotplug_ctx(Vec::new()))?;
        let owners = self.hand_to_qemu(pid, std::slice::from_ref(&path))?;
        {
            let mut g = dom.lock();
            if let Some(l) = g.live.as_mut() {
                l.owners.extend(owners);
                l.copying = Some(Pending {
                    kind: PendingKind::Medium,
                    xml: super::hotplug::device_xml(super::hotplug::only_disk(&new)),
                    qdev: qdev.clone(),
                    n: m as u32,
                });
            }
        }
        self.save_status(dom).await;
        let started = start_mirror(&qmp, &nodes, &node, m, &target, &opts).await;
        if let Err(e) = started {
            self.settle_copy(dom).await;
            return Err(e);
        }
        tracing::info!(domain = %dom.name(), disk = %target, dest = %path.display(), "block copy started");
        Ok(())
    }

    /// A pull of the chain above `base` (all of it when empty) into the top image.
    async fn block_pull_to(
        &self,
        dom: &Dom,
        disk: &str,
        base: &str,
        bandwidth: u64,
        bytes: bool,
    ) -> Result<(), VirError> {
        let flags = if bytes { 64 } else { 0 };
        if base.is_empty() {
            return self.block_pull(dom, disk, bandwidth, flags).await;
        }
        self.block_stream(dom, disk, Some(base), bandwidth, bytes)
            .await
    }

    /// `BlockJobAbort` of a copy: PIVOT completes it (the disk becomes the copy), else
    /// it is cancelled; either way settled once QEMU's job is gone (unless ASYNC).
    pub(super) async fn copy_abort(
        &self,
        dom: &Dom,
        target: &str,
        pivot: bool,
        wait: bool,
    ) -> Result<(), VirError> {
        let _call = self.calls.enter();
        let _lock = dom.begin_job().await;
        let qmp = {
            let g = dom.lock();
            g.live.as_ref().ok_or_else(not_running)?.qmp.clone()
        };
        let job = copy_job(&qmp, target).await?.ok_or_else(|| {
            VirError::operation_invalid(format!(
                "disk '{target}' does not have an active block job"
            ))
        })?;
        let id = job_id(target);
        if pivot {
            if job.get("ready").and_then(Value::as_bool) != Some(true) {
                return Err(VirError::new(
                    ErrorCode::BlockCopyActive,
                    format!("disk '{target}' not ready for pivot yet"),
                ));
            }
            qmp.execute("block-job-complete", Some(json!({ "device": id })))
                .await?;
        } else {
            qmp.execute(
                "block-job-cancel",
                Some(json!({ "device": id, "force": true })),
            )
            .await?;
        }
        if wait {
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while copy_job(&qmp, target).await?.is_some() && std::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            self.settle_copy(dom).await;
        }
        Ok(())
    }

    /// Whether `target` has a copy this daemon started.
    pub(super) fn copying(&self, dom: &Dom, target: &str) -> bool {
        let g = dom.lock();
        g.live.as_ref().is_some_and(|l| {
            l.copying.as_ref().is_some_and(|p| {
                l.def
                    .disk_of_qdev(&p.qdev)
                    .and_then(|i| l.def.dom.devices.disks.get(i))
                    .is_some_and(|d| d.target_dev == target)
            })
        })
    }

    /// Settles a copy whose job has ended, from what QEMU has: the disk on the copy's
    /// nodes (pivoted) or not. A copy whose job still runs is left alone. True when the
    /// live definition changed.
    pub(super) async fn settle_copy(&self, dom: &Dom) -> bool {
        let (qmp, p) = {
            let g = dom.lock();
            let Some(l) = g.live.as_ref() else {
                return false;
            };
            let Some(p) = l.copying.clone() else {
                return false;
            };
            (l.qmp.clone(), p)
        };
        let Some(i) = dom
            .lock()
            .live
            .as_ref()
            .and_then(|l| l.def.disk_of_qdev(&p.qdev))
        else {
            // The disk itself is gone: its copy's nodes go too.
            del_nodes(&qmp, &nodes_of(p.n as usize)).await;
            self.clear_copy(dom, &p).await;
            return false;
        };
        let target = dom
            .lock()
            .live
            .as_ref()
            .map(|l| l.def.dom.devices.disks[i].target_dev.clone())
            .unwrap_or_default();
        match copy_job(&qmp, &target).await {
            Ok(Some(_)) => return false,
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(domain = %dom.name(), "cannot ask QEMU about the copy of {target}: {e}");
                return false;
            }
        }
        let now = medium_node(&qmp, &p.qdev).await.ok().flatten();
        let pivoted = now.as_deref() == Some(format!("libvirt-{}-format", p.n).as_str());
        let new = parse_device(&p.xml)
            .ok()
            .and_then(|(_, d)| d.disks.into_iter().next());
        let mut changed = false;
        let give_back = {
            let mut g = dom.lock();
            let Some(l) = g.live.as_mut() else {
                return false;
            };
            if l.copying.as_ref() != Some(&p) {
                return false; // settled meanwhile
            }
            l.copying = None;
            let (gone, old_n) = match (pivoted, new) {
                (true, Some(new)) => {
                    l.def.pin_ids();
                    let old = std::mem::replace(&mut l.def.dom.devices.disks[i], new);
                    let old_n = l.def.ids.disks[i].1;
                    l.def.ids.disks[i].1 = p.n;
                    changed = true;
                    (Some(old), old_n as usize)
                }
                (_, dest) => (dest, p.n as usize),
            };
            let back = gone
                .map(|d| super::hotplug::take_owners(&mut l.owners, &d))
                .unwrap_or_default();
            (back, old_n)
        };
        del_nodes(&qmp, &nodes_of(give_back.1)).await;
        crate::security::restore(&give_back.0);
        self.save_status(dom).await;
        tracing::info!(domain = %dom.name(), disk = %target, pivoted, "block copy ended");
        changed
    }

    async fn clear_copy(&self, dom: &Dom, p: &Pending) {
        {
            let mut g = dom.lock();
            if let Some(l) = g.live.as_mut() {
                if l.copying.as_ref() == Some(p) {
                    l.copying = None;
                }
            }
        }
        self.save_status(dom).await;
    }
}

/// `blockdev-add` of the copy's nodes, then `blockdev-mirror`; what was added is taken
/// back by the caller's settling on failure.
async fn start_mirror(
    qmp: &Qmp,
    nodes: &[Value],
    from: &str,
    m: usize,
    target: &str,
    opts: &CopyOpts,
) -> Result<(), VirError> {
    for node in nodes {
        qmp.execute("blockdev-add", Some(node.clone())).await?;
    }
    let mut args = json!({
        "job-id": job_id(target),
        "device": from,
        "target": format!("libvirt-{m}-format"),
        "sync": if opts.shallow { "top" } else { "full" },
    });
    if opts.bandwidth > 0 {
        args["speed"] = json!(opts.bandwidth);
    }
    if let Some(g) = opts.granularity {
        args["granularity"] = json!(g);
    }
    if let Some(b) = opts.buf_size {
        args["buf-size"] = json!(b);
    }
    if opts.synchronous {
        args["copy-mode"] = json!("write-blocking");
    }
    qmp.execute("blockdev-mirror", Some(args)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn copy_parameters_are_libvirts() {
        let mut p = HashMap::new();
        p.insert("bandwidth".to_owned(), OwnedValue::from(1_048_576u64));
        p.insert("granularity".to_owned(), OwnedValue::from(65536u32));
        let o = CopyOpts::default().with_params(&p).expect("params");
        assert_eq!((o.bandwidth, o.granularity), (1_048_576, Some(65536)));
        p.insert("granularity".to_owned(), OwnedValue::from(1000u32));
        let e = CopyOpts::default()
            .with_params(&p)
            .expect_err("odd granularity");
        assert!(e.to_string().contains("power of 2"), "{e}");
        let mut p = HashMap::new();
        p.insert("speed".to_owned(), OwnedValue::from(1u64));
        let e = CopyOpts::default().with_params(&p).expect_err("unknown");
        assert!(e.to_string().contains("'speed' not supported"), "{e}");
        let mut p = HashMap::new();
        p.insert("bandwidth".to_owned(), OwnedValue::from(1u32));
        let e = CopyOpts::default().with_params(&p).expect_err("wrong type");
        assert!(e.to_string().contains("unsigned 64-bit"), "{e}");
    }
}
