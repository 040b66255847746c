//! The source's side: Begin, Perform and Confirm, driven by `MigrateToURI3`, and
//! the undoing of a migration that failed.

use super::*;

impl Driver {
    /// `MigrateToURI3` with PEER2PEER: the whole migration, driven from here.
    pub async fn migrate_to_uri3(
        &self,
        dom: &Arc<Dom>,
        dconuri: &str,
        params: &HashMap<String, OwnedValue>,
        flags: u32,
    ) -> Result<(), VirError> {
        let f = check_migrate_flags(flags)?;
        let p = Params::parse(params)?;
        let caps = self.caps().await?;
        let _call = self.calls.enter();
        let lock = dom.begin_job().await;
        let (qmp, xml, was_running) = self.begin(dom, &p, &caps)?;
        let dest = Destination::dial(dconuri).await?;
        let job = Arc::new(OutJob {
            started: Instant::now(),
            qmp: qmp.clone(),
            flags: f,
            aborted: AtomicBool::new(false),
        });
        self.knobs(dom).job = Some(job.clone());
        let record = Migration::Out {
            dconuri: dconuri.to_owned(),
            phase: OutPhase::Perform,
            resume: was_running,
            flags,
        };
        self.record_migration(dom, Some(record)).await;
        let uuid = dom.uuid.to_string();
        let performed = async {
            let uri = dest.prepare(&xml, &p, flags).await?;
            self.perform(dom, &job, &uri, f, &p).await
        }
        .await;
        let stats = match performed {
            Ok(s) => s,
            Err(e) => {
                let _ = qmp.execute("migrate_cancel", None).await;
                let _ = dest.finish(&uuid, flags, true).await;
                self.end_out(dom, was_running).await;
                return Err(e);
            }
        };
        self.set_out_phase(dom, OutPhase::Finish).await;
        let runs_there = match dest.finish(&uuid, flags, false).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(refused)) => Err((refused, Some(false))),
            Err(e) => Err((e, ask_destination(dconuri, &uuid, RECOVER_WAIT).await)),
        };
        match runs_there {
            Ok(()) | Err((_, Some(true))) => self.confirm(dom, stats).await,
            Err((e, Some(false))) => {
                self.end_out(dom, was_running).await;
                return Err(e);
            }
            Err((e, None)) => {
                // Nobody can tell whether the destination runs it: the guest stays
                // paused here, as libvirt leaves it; the next restart asks again.
                tracing::error!(domain = %dom.name(), "the destination's Finish is unknown: {e}");
                self.knobs(dom).job = None;
                if let Some(d) = self.arc() {
                    let (dom, uri) = (dom.clone(), dconuri.to_owned());
                    tokio::spawn(async move {
                        d.settle_outgoing(&dom, &uri, OutPhase::Finish, was_running, flags)
                            .await;
                    });
                }
                return Err(e);
            }
        }
        drop(lock);
        if f.contains(MigrateFlags::UNDEFINE_SOURCE) && dom.persistent() {
            if let Err(e) = self.undefine(dom, 0).await {
                tracing::warn!(domain = %dom.name(), "undefining the migrated source: {e}");
            }
        }
        Ok(())
    }

    /// libvirt's Begin: the monitor, the definition the destination gets (DEST_XML, or
    /// the running one, renamed by DEST_NAME) and whether the guest runs.
    pub(super) fn begin(
        &self,
        dom: &Dom,
        p: &Params,
        caps: &crate::caps::Caps,
    ) -> Result<(Qmp, String, bool), VirError> {
        let (qmp, def, state, migrating) = {
            let g = dom.lock();
            let l = g.live.as_ref().ok_or_else(not_running)?;
            (
                l.qmp.clone(),
                l.def.clone(),
                g.state.state(),
                l.migration.is_some(),
            )
        };
        if migrating {
            return Err(VirError::operation_invalid(
                "domain has an unfinished migration; it is settled at the next restart",
            ));
        }
        let mut out = match &p.dest_xml {
            Some(x) => {
                let other = DomainDef::parse_new(x, caps)?;
                if other.uuid != def.uuid {
                    return Err(VirError::operation_invalid(format!(
                        "target domain uuid {} does not match source {}",
                        other.uuid, def.uuid
                    )));
                }
                other
            }
            None => def,
        };
        if let Some(n) = &p.dest_name {
            out.dom.name = crate::xml::DomainName::new(n)?;
            out.name = n.clone();
        }
        Ok((
            qmp,
            out.to_xml_for(None, true),
            state == DomainState::Running,
        ))
    }

    /// libvirt's Perform: the knobs to QEMU, the stream out, and its progress watched
    /// until QEMU has sent the whole guest (the source's QEMU is paused then).
    pub(super) async fn perform(
        &self,
        dom: &Arc<Dom>,
        job: &OutJob,
        uri: &str,
        f: MigrateFlags,
        p: &Params,
    ) -> Result<Vec<(String, Stat)>, VirError> {
        let qmp = &job.qmp;
        let caps = json!([
            {"capability": "events", "state": true},
            {"capability": "xbzrle", "state": f.contains(MigrateFlags::COMPRESSED)},
            {"capability": "auto-converge", "state": f.contains(MigrateFlags::AUTO_CONVERGE)},
            {"capability": "postcopy-ram", "state": f.contains(MigrateFlags::POSTCOPY)},
        ]);
        qmp.execute(
            "migrate-set-capabilities",
            Some(json!({ "capabilities": caps })),
        )
        .await?;
        let mib = p.bandwidth.unwrap_or_else(|| self.knobs(dom).max_speed);
        let mut params =
            json!({ "max-bandwidth": mib.saturating_mul(1 << 20).min(i64::MAX as u64 / 2) });
        if let Some(c) = p.xbzrle_cache {
            params["xbzrle-cache-size"] = c.into();
        }
        if let Some(i) = p.throttle_initial {
            params["cpu-throttle-initial"] = i.into();
        }
        if let Some(i) = p.throttle_increment {
            params["cpu-throttle-increment"] = i.into();
        }
        let postcopy = self.knobs(dom).max_speed_postcopy;
        if postcopy > 0 {
            params["max-postcopy-bandwidth"] = postcopy.saturating_mul(1 << 20).into();
        }
        qmp.execute("migrate-set-parameters", Some(params)).await?;
        if !f.contains(MigrateFlags::LIVE)
            && self.transition(
                dom,
                &[DomainState::Running],
                StateReason::Paused(PausedReason::Migration),
            )
        {
            // Not live: the guest stops first, as libvirt pauses it.
            qmp.execute("stop", None).await?;
            self.lifecycle(dom, DomainEvent::Suspended(SuspendedDetail::Migrated))
                .await;
        }
        qmp.execute("migrate", Some(json!({ "uri": uri }))).await?;
        loop {
            let q = qmp.execute("query-migrate", None).await?;
            let elapsed = job.started.elapsed().as_millis() as u64;
            match q.get("status").and_then(Value::as_str).unwrap_or("") {
                "completed" => {
                    // QEMU stopped the guest to send the last of it (its STOP may still
                    // be on the way to the monitor task, which then finds it told).
                    let paused = StateReason::Paused(PausedReason::Migration);
                    if self.transition(dom, &[DomainState::Running], paused) {
                        self.lifecycle(dom, DomainEvent::Suspended(SuspendedDetail::Migrated))
                            .await;
                    }
                    return Ok(stats_of(&q, elapsed, Some(true)));
                }
                "failed" => {
                    let why = q
                        .get("error-desc")
                        .and_then(Value::as_str)
                        .unwrap_or("unknown error");
                    return Err(VirError::operation_failed(format!(
                        "job 'migration out' failed: {why}"
                    )));
                }
                "cancelled" if job.aborted.load(Ordering::SeqCst) => {
                    return Err(VirError::new(
                        ErrorCode::OperationAborted,
                        "job 'migration out' canceled by client",
                    ))
                }
                "cancelled" => {
                    return Err(VirError::operation_failed(
                        "job 'migration out' unexpectedly canceled",
                    ))
                }
                _ => {}
            }
            if f.contains(MigrateFlags::ABORT_ON_ERROR) {
                let st = qmp.execute("query-status", None).await?;
                if st.get("status").and_then(Value::as_str) == Some("io-error") {
                    let _ = qmp.execute("migrate_cancel", None).await;
                    return Err(VirError::operation_failed(
                        "job 'migration out' failed due to I/O error",
                    ));
                }
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// libvirt's Confirm after a Finish that ran the guest there: the source's QEMU
    /// ends (STOPPED/MIGRATED), the statistics go out as JobCompleted.
    pub(super) async fn confirm(&self, dom: &Arc<Dom>, stats: Vec<(String, Stat)>) {
        self.set_out_phase(dom, OutPhase::Confirm).await;
        {
            let mut k = self.knobs(dom);
            k.job = None;
            k.completed = Some(stats.clone());
        }
        self.outbox
            .send(crate::driver::Change::Signal(
                dom.clone(),
                DomainSignal::JobCompleted(stats),
            ))
            .await;
        if let Err(e) = self.destroy_locked(dom).await {
            tracing::error!(domain = %dom.name(), "ending the migrated source: {e}");
        }
    }

    /// A migration undone on the source: the guest runs here again if it ran before
    /// (libvirt's RESUMED/MIGRATED), the record goes.
    pub(super) async fn end_out(&self, dom: &Arc<Dom>, resume: bool) {
        self.knobs(dom).job = None;
        if resume {
            self.resume_here(dom).await;
        }
        self.record_migration(dom, None).await;
    }

    pub(super) async fn resume_here(&self, dom: &Arc<Dom>) {
        let Ok(qmp) = self.qmp_of(dom) else { return };
        // Marked before QEMU's RESUME arrives, so the monitor sees no news in it.
        let canceled = StateReason::Running(RunningReason::MigrationCanceled);
        if !self.transition(dom, &[DomainState::Paused], canceled) {
            return;
        }
        match qmp.execute("cont", None).await {
            Ok(_) => {
                self.lifecycle(dom, DomainEvent::Resumed(ResumedDetail::Migrated))
                    .await
            }
            Err(e) => {
                tracing::error!(domain = %dom.name(), "cannot resume after the migration: {e}");
                self.transition(
                    dom,
                    &[DomainState::Running],
                    StateReason::Paused(PausedReason::Migration),
                );
            }
        }
    }
}
