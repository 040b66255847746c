//! The job of a migration in progress as libvirt reports it (GetJobInfo, GetJobStats,
//! AbortJob) and the Migrate* knobs.

use super::*;

impl Driver {
    /// `GetJobInfo`: the migration in progress with libvirt's numbers, else NONE.
    pub async fn job_info(&self, dom: &Dom) -> Result<(i32, [u64; 11]), VirError> {
        let Some((kind, s)) = self.job_now(dom).await? else {
            return Ok((JOB_NONE, [0; 11]));
        };
        let g = |k| stat_u64(&s, k);
        Ok((
            kind,
            [
                g("time_elapsed"),
                g("time_remaining"),
                g("data_total"),
                g("data_processed"),
                g("data_remaining"),
                g("memory_total"),
                g("memory_processed"),
                g("memory_remaining"),
                0,
                0,
                0,
            ],
        ))
    }

    /// `GetJobStats`: the migration in progress, or with COMPLETED (1) the last one's.
    pub async fn job_stats(
        &self,
        dom: &Dom,
        flags: u32,
    ) -> Result<(i32, Vec<(String, Stat)>), VirError> {
        common::error::check_flags(flags, 1 | 2)?;
        if flags & 1 != 0 {
            let done = self.knobs(dom).completed.clone();
            return Ok(match done {
                Some(s) => (JOB_COMPLETED, s),
                None => (JOB_NONE, Vec::new()),
            });
        }
        Ok(self.job_now(dom).await?.unwrap_or((JOB_NONE, Vec::new())))
    }

    pub(super) async fn job_now(
        &self,
        dom: &Dom,
    ) -> Result<Option<(i32, Vec<(String, Stat)>)>, VirError> {
        if !dom.active() {
            return Err(not_running());
        }
        let job = self.knobs(dom).job.clone();
        let Some(job) = job else { return Ok(None) };
        let q = job.qmp.execute("query-migrate", None).await?;
        let elapsed = job.started.elapsed().as_millis() as u64;
        Ok(Some((JOB_UNBOUNDED, stats_of(&q, elapsed, None))))
    }

    /// `AbortJob`: cancels the outgoing migration (QEMU's `migrate_cancel`); the
    /// migration call then undoes it and fails with libvirt's "canceled by client".
    pub async fn abort_job(&self, dom: &Arc<Dom>) -> Result<(), VirError> {
        if !dom.active() {
            return Err(not_running());
        }
        let job = self.knobs(dom).job.clone();
        let Some(job) = job else {
            return Err(VirError::operation_invalid(
                "no job is active on the domain",
            ));
        };
        job.aborted.store(true, Ordering::SeqCst);
        job.qmp.execute("migrate_cancel", None).await?;
        Ok(())
    }

    /// `MigrateSetMaxSpeed` (MiB/s; flags POSTCOPY 1: after a switch to post-copy):
    /// kept for the next migration and given to the QEMU of one in progress.
    pub async fn migrate_set_max_speed(
        &self,
        dom: &Dom,
        mib: u64,
        flags: u32,
    ) -> Result<(), VirError> {
        common::error::check_flags(flags, 1)?;
        if mib > BANDWIDTH_MAX {
            return Err(VirError::invalid_arg(format!(
                "bandwidth must be less than {}",
                BANDWIDTH_MAX + 1
            )));
        }
        let postcopy = flags & 1 != 0;
        let qmp = dom.lock().live.as_ref().map(|l| l.qmp.clone());
        if let Some(qmp) = qmp {
            let key = if postcopy {
                "max-postcopy-bandwidth"
            } else {
                "max-bandwidth"
            };
            let bytes = mib.saturating_mul(1 << 20).min(i64::MAX as u64 / 2);
            qmp.execute("migrate-set-parameters", Some(json!({ key: bytes })))
                .await?;
        }
        let mut k = self.knobs(dom);
        if postcopy {
            k.max_speed_postcopy = mib;
        } else {
            k.max_speed = mib;
        }
        Ok(())
    }

    pub fn migrate_get_max_speed(&self, dom: &Dom, flags: u32) -> Result<u64, VirError> {
        common::error::check_flags(flags, 1)?;
        let k = self.knobs(dom);
        Ok(if flags & 1 != 0 {
            k.max_speed_postcopy
        } else {
            k.max_speed
        })
    }

    /// `MigrateSetMaxDowntime` (ms): QEMU's `downtime-limit`, for the migration in
    /// progress and the next.
    pub async fn migrate_set_max_downtime(
        &self,
        dom: &Dom,
        ms: u64,
        flags: u32,
    ) -> Result<(), VirError> {
        self.set_migrate_parameters(dom, flags, json!({ "downtime-limit": ms }))
            .await
    }

    /// One `migrate-set-parameters` on the running domain's QEMU (no flags taken).
    async fn set_migrate_parameters(
        &self,
        dom: &Dom,
        flags: u32,
        params: Value,
    ) -> Result<(), VirError> {
        common::error::check_flags(flags, 0)?;
        self.qmp_of(dom)?
            .execute("migrate-set-parameters", Some(params))
            .await?;
        Ok(())
    }

    /// `MigrateGetCompressionCache`: QEMU's XBZRLE cache size, bytes.
    pub async fn migrate_get_compression_cache(
        &self,
        dom: &Dom,
        flags: u32,
    ) -> Result<u64, VirError> {
        common::error::check_flags(flags, 0)?;
        let p = self
            .qmp_of(dom)?
            .execute("query-migrate-parameters", None)
            .await?;
        Ok(p.get("xbzrle-cache-size")
            .and_then(Value::as_u64)
            .unwrap_or(0))
    }

    pub async fn migrate_set_compression_cache(
        &self,
        dom: &Dom,
        bytes: u64,
        flags: u32,
    ) -> Result<(), VirError> {
        self.set_migrate_parameters(dom, flags, json!({ "xbzrle-cache-size": bytes }))
            .await
    }

    /// `MigrateStartPostCopy`: the migration in progress switches to post-copy.
    pub async fn migrate_start_postcopy(&self, dom: &Dom, flags: u32) -> Result<(), VirError> {
        common::error::check_flags(flags, 0)?;
        if !dom.active() {
            return Err(not_running());
        }
        let job = self.knobs(dom).job.clone();
        let Some(job) = job else {
            return Err(VirError::operation_invalid(
                "post-copy can only be started while outgoing migration is in progress",
            ));
        };
        if !job.flags.contains(MigrateFlags::POSTCOPY) {
            return Err(VirError::operation_invalid(
                "switching to post-copy requires migration to be started with VIR_MIGRATE_POSTCOPY flag",
            ));
        }
        job.qmp.execute("migrate-start-postcopy", None).await?;
        Ok(())
    }
}
