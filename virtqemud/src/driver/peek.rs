//! Looking at and resizing a running domain's storage and memory: `BlockResize`,
//! `BlockPeek`, `MemoryPeek`, `SetBlockThreshold`.

use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;

use common::error::{check_flags, ErrorCode, VirError};
use serde_json::json;

use super::{io_err, not_running, Dom, Driver};

/// The most a peek returns at once (libvirt's RPC limit for both).
const PEEK_MAX: u64 = 4 << 20;

fn too_big(size: u64) -> Result<(), VirError> {
    if size > PEEK_MAX {
        return Err(VirError::invalid_arg(format!(
            "size {size} is larger than the {PEEK_MAX} bytes one call returns"
        )));
    }
    Ok(())
}

/// The index (QEMU's `libvirt-N-*` nodes) of `disk` in a running domain, and its
/// monitor.
fn running_disk(dom: &Dom, disk: &str) -> Result<(usize, crate::qmp::Qmp), VirError> {
    let g = dom.lock();
    let l = g.live.as_ref().ok_or_else(not_running)?;
    let i = crate::stats::disk_index(&l.def, disk)?;
    Ok((l.def.disk_node(i), l.qmp.clone()))
}

impl Driver {
    /// `BlockResize`: a running domain's disk grows (or shrinks) to `size` KiB, or
    /// bytes with BYTES (1); QEMU resizes the image (block_resize on its format node).
    pub async fn block_resize(
        &self,
        dom: &Arc<Dom>,
        disk: &str,
        size: u64,
        flags: u32,
    ) -> Result<(), VirError> {
        check_flags(flags, 1)?;
        let bytes = if flags & 1 != 0 {
            size
        } else {
            size.checked_mul(1024)
                .ok_or_else(|| VirError::invalid_arg(format!("size {size} KiB is too large")))?
        };
        // Images take whole sectors, as libvirt rounds for them.
        let bytes = bytes.div_ceil(512) * 512;
        let _call = self.calls.enter();
        let _lock = dom.begin_job().await;
        let (index, qmp) = running_disk(dom, disk)?;
        qmp.execute(
            "block_resize",
            Some(json!({ "node-name": format!("libvirt-{index}-format"), "size": bytes })),
        )
        .await?;
        Ok(())
    }

    /// `BlockPeek`: bytes of a raw disk's image as the host sees it.
    pub async fn block_peek(
        &self,
        dom: &Arc<Dom>,
        disk: &str,
        offset: u64,
        size: u64,
        flags: u32,
    ) -> Result<Vec<u8>, VirError> {
        check_flags(flags, 0)?;
        too_big(size)?;
        let def = dom.current()?.0;
        let index = crate::stats::disk_index(&def, disk)?;
        let d = &def.dom.devices.disks[index];
        if d.driver.format.as_deref().unwrap_or("raw") != "raw" {
            return Err(VirError::new(
                ErrorCode::OperationUnsupported,
                "peeking is only supported for disk with 'raw' format",
            ));
        }
        let path = crate::stats::disk_path(d).ok_or_else(|| {
            VirError::new(
                ErrorCode::OperationUnsupported,
                format!("disk '{disk}' has no file or block device to peek into"),
            )
        })?;
        let _call = self.calls.enter();
        tokio::task::spawn_blocking(move || {
            let mut f =
                std::fs::File::open(&path).map_err(|e| io_err("open", path.as_ref(), &e))?;
            f.seek(SeekFrom::Start(offset))
                .map_err(|e| io_err("seek in", path.as_ref(), &e))?;
            let mut buf = Vec::new();
            f.take(size)
                .read_to_end(&mut buf)
                .map_err(|e| io_err("read", path.as_ref(), &e))?;
            if (buf.len() as u64) < size {
                return Err(VirError::invalid_arg(format!(
                    "offset {offset} and size {size} reach past the end of disk '{}'",
                    path
                )));
            }
            Ok(buf)
        })
        .await
        .map_err(|e| VirError::internal(format!("file task: {e}")))?
    }

    /// `MemoryPeek`: guest memory, by virtual address of vCPU 0 (VIRTUAL 1) or by
    /// physical address (PHYSICAL 2). QEMU writes it into a file of the run's folder
    /// (memsave/pmemsave), read back and removed.
    pub async fn memory_peek(
        &self,
        dom: &Arc<Dom>,
        offset: u64,
        size: u64,
        flags: u32,
    ) -> Result<Vec<u8>, VirError> {
        check_flags(flags, 3)?;
        if flags.count_ones() != 1 {
            return Err(VirError::invalid_arg(
                "flags must be exactly one of VIRTUAL (1) and PHYSICAL (2)",
            ));
        }
        too_big(size)?;
        let _call = self.calls.enter();
        let _lock = dom.begin_job().await;
        let (qmp, dir) = {
            let g = dom.lock();
            let l = g.live.as_ref().ok_or_else(not_running)?;
            (l.qmp.clone(), l.qmp_path.with_file_name("memory-peek"))
        };
        let _ = std::fs::remove_file(&dir);
        let file = dir.display().to_string();
        let (cmd, args) = if flags & 1 != 0 {
            (
                "memsave",
                json!({ "val": offset, "size": size, "filename": file, "cpu-index": 0 }),
            )
        } else {
            (
                "pmemsave",
                json!({ "val": offset, "size": size, "filename": file }),
            )
        };
        let r = qmp.execute(cmd, Some(args)).await;
        let data = r
            .map_err(VirError::from)
            .and_then(|_| std::fs::read(&dir).map_err(|e| io_err("read", &dir, &e)));
        let _ = std::fs::remove_file(&dir);
        data
    }
}

impl Driver {
    /// `SetBlockThreshold`: QEMU reports (BlockThreshold) when the guest writes past
    /// `threshold` bytes of the disk's image (its storage node, as libvirt sets it);
    /// 0 clears it. Only the top image (`vda`, not `vda[1]`).
    pub async fn set_block_threshold(
        &self,
        dom: &Arc<Dom>,
        dev: &str,
        threshold: u64,
        flags: u32,
    ) -> Result<(), VirError> {
        check_flags(flags, 0)?;
        if dev.contains('[') {
            return Err(VirError::new(
                ErrorCode::OperationUnsupported,
                format!("'{dev}': thresholds on backing images are not supported here"),
            ));
        }
        let _call = self.calls.enter();
        let _lock = dom.begin_job().await;
        let (index, qmp) = running_disk(dom, dev)?;
        qmp.execute(
            "block-set-write-threshold",
            Some(json!({
                "node-name": format!("libvirt-{index}-storage"),
                "write-threshold": threshold,
            })),
        )
        .await?;
        Ok(())
    }
}
