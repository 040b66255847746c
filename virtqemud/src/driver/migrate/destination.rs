//! The destination's side: Prepare, Finish, and Recover for a source that lost track.

use super::*;

impl Driver {
    /// Prepare: the domain of `xml` starts here with `-incoming defer`, paused, and
    /// QEMU listens; the URI the source's QEMU sends to. `source_gone` resolves when
    /// the calling source daemon disconnects: an incoming QEMU that never got Finish
    /// is ended then.
    pub async fn migrate_prepare(
        &self,
        xml: &str,
        params: &HashMap<String, OwnedValue>,
        flags: u32,
        source_gone: Option<BoxFuture<'static, ()>>,
    ) -> Result<String, VirError> {
        let f = check_migrate_flags(flags)?;
        let p = Params::parse(params)?;
        let caps = self.caps().await?;
        let _call = self.calls.enter();
        let def = DomainDef::parse_new(xml, &caps)?;
        let (host, port) = match &p.uri {
            Some(u) => split_tcp(u)?,
            None => (None, None),
        };
        let listen_on = p
            .listen_address
            .clone()
            .or_else(|| host.clone())
            .unwrap_or_else(|| "0.0.0.0".into());
        let port = match port {
            Some(p) => p,
            None => free_port(&listen_on)?,
        };
        let (dom, added) = {
            let mut reg = self.reg();
            check_conflicts(&reg, &def)?;
            match reg.by_uuid.get(&def.uuid).cloned() {
                Some(d) => (d, false),
                None => {
                    let d = Dom::new(def.uuid, def.name.clone(), None, false);
                    reg.insert(d.name(), d.clone());
                    (d, true)
                }
            }
        };
        if added {
            self.publish_added(&dom).await;
        }
        let incoming = Incoming {
            listen: tcp(&listen_on, port),
            record: Migration::In {
                phase: InPhase::Prepared,
                flags,
                persist_xml: p.persist_xml.clone(),
            },
            postcopy: f.contains(MigrateFlags::POSTCOPY),
        };
        let r = {
            let _lock = dom.begin_job().await;
            if dom.active() {
                Err(VirError::operation_invalid(format!(
                    "domain '{}' is already active",
                    def.name
                )))
            } else {
                let from = Some(crate::driver::save::StartFrom::Incoming(incoming));
                self.start_locked(&dom, def, StartFlags::PAUSED, from).await
            }
        };
        if let Err(e) = r {
            if added {
                self.remove(&dom).await;
            }
            return Err(e);
        }
        // The watch is this run's: a source that leaves late (its disconnect seen up to
        // a poll later) must not end the next incoming run of the same domain.
        let run = dom.lock().live.as_ref().map(|l| l.id);
        if let (Some(gone), Some(d), Some(run)) = (source_gone, self.arc(), run) {
            let dom = dom.clone();
            tokio::spawn(async move {
                gone.await;
                d.end_unfinished_incoming(&dom, run, "its source disconnected")
                    .await;
            });
        }
        // The source reaches QEMU where it asked to, else where it reached this daemon.
        Ok(tcp(host.as_deref().unwrap_or("127.0.0.1"), port))
    }

    /// Ends the incoming QEMU of `dom`'s run `run` if it never got Finish.
    pub(super) async fn end_unfinished_incoming(
        &self,
        dom: &Arc<Dom>,
        run: u32,
        why: &str,
    ) -> bool {
        let _lock = dom.begin_job().await;
        let unfinished = matches!(
            dom.lock()
                .live
                .as_ref()
                .filter(|l| l.id == run)
                .and_then(|l| l.migration.clone()),
            Some(Migration::In {
                phase: InPhase::Prepared,
                ..
            })
        );
        if unfinished {
            tracing::warn!(domain = %dom.name(), "ending an incoming migration: {why}");
            let _ = self.destroy_locked(dom).await;
        }
        unfinished
    }

    /// Finish: with `cancelled` the incoming QEMU ends; else once QEMU has the whole
    /// guest it runs here (RESUMED/MIGRATED), or stays paused with PAUSED, and with
    /// PERSIST_DEST the domain is defined here. A Finish that fails ends the QEMU.
    pub async fn migrate_finish(
        &self,
        uuid: &str,
        flags: u32,
        cancelled: bool,
    ) -> Result<(), VirError> {
        let f: MigrateFlags = common::error::flags(flags)?;
        let dom = self.lookup_uuid_str(uuid)?;
        let _call = self.calls.enter();
        let lock = dom.begin_job().await;
        // Read apart from the match: its arms take the state lock again.
        let record = dom.lock().live.as_ref().and_then(|l| l.migration.clone());
        let persist_xml = match record {
            Some(Migration::In { persist_xml, .. }) => persist_xml,
            _ => {
                return Err(VirError::operation_invalid(format!(
                    "domain '{}' is not being migrated in",
                    dom.name()
                )))
            }
        };
        if cancelled {
            let _ = self.destroy_locked(&dom).await;
            return Ok(());
        }
        let record = Migration::In {
            phase: InPhase::Finishing,
            flags,
            persist_xml: persist_xml.clone(),
        };
        self.record_migration(&dom, Some(record)).await;
        if let Err(e) = self.run_incoming(&dom, f).await {
            let _ = self.destroy_locked(&dom).await;
            return Err(e);
        }
        drop(lock);
        if f.contains(MigrateFlags::PERSIST_DEST) {
            self.persist_migrated(&dom, persist_xml).await?;
        }
        Ok(())
    }

    /// The guest, whole in QEMU, runs here (or stays paused with PAUSED).
    pub(super) async fn run_incoming(
        &self,
        dom: &Arc<Dom>,
        f: MigrateFlags,
    ) -> Result<(), VirError> {
        let qmp = self.qmp_of(dom)?;
        let deadline = Instant::now() + INCOMING_WAIT;
        loop {
            let q = qmp.execute("query-migrate", None).await?;
            match q.get("status").and_then(Value::as_str).unwrap_or("") {
                "completed" => break,
                "failed" | "cancelled" => {
                    return Err(VirError::operation_failed(
                        "job 'migration in' failed: the incoming stream broke",
                    ))
                }
                _ if Instant::now() >= deadline => {
                    return Err(VirError::new(
                        ErrorCode::OperationTimeout,
                        "job 'migration in': the guest's state did not arrive",
                    ))
                }
                _ => tokio::time::sleep(POLL).await,
            }
        }
        if f.contains(MigrateFlags::PAUSED) {
            self.transition(
                dom,
                &[DomainState::Paused],
                StateReason::Paused(PausedReason::User),
            );
            self.record_migration(dom, None).await;
            self.lifecycle(dom, DomainEvent::Suspended(SuspendedDetail::Paused))
                .await;
            return Ok(());
        }
        let migrated = StateReason::Running(RunningReason::Migrated);
        self.transition(dom, &[DomainState::Paused], migrated);
        if let Err(e) = qmp.execute("cont", None).await {
            self.transition(
                dom,
                &[DomainState::Running],
                StateReason::Paused(PausedReason::Migration),
            );
            return Err(e.into());
        }
        self.record_migration(dom, None).await;
        self.lifecycle(dom, DomainEvent::Resumed(ResumedDetail::Migrated))
            .await;
        Ok(())
    }

    /// PERSIST_DEST: the migrated domain is defined here (PERSIST_XML, else as it runs).
    pub(super) async fn persist_migrated(
        &self,
        dom: &Dom,
        xml: Option<String>,
    ) -> Result<(), VirError> {
        let xml = match xml {
            Some(x) => x,
            None => dom
                .lock()
                .live
                .as_ref()
                .map(|l| l.def.to_xml_for(None, true))
                .ok_or_else(not_running)?,
        };
        self.define(&xml).await.map(|_| ())
    }

    /// Recover: a source that lost track asks whether the guest `uuid` runs here (1) or
    /// not (0). An incoming migration is settled first, so the answer stays true: one
    /// that never got Finish ends, one cut in Finish runs the guest if all of it came.
    pub async fn migrate_recover(&self, uuid: &str) -> Result<i32, VirError> {
        let Ok(dom) = self.lookup_uuid_str(uuid) else {
            tracing::info!(%uuid, "Recover: no such domain here");
            return Ok(0);
        };
        let _call = self.calls.enter();
        let _lock = dom.begin_job().await;
        self.settle_incoming_locked(&dom, "its source gave it up")
            .await;
        let g = dom.lock();
        let runs = g.live.as_ref().is_some_and(|l| l.migration.is_none());
        tracing::info!(domain = %g.name, runs, "Recover: told the source");
        Ok(i32::from(runs))
    }

    /// Under the domain's job lock: an incoming migration as its record now says
    /// (Recover may have settled it already). Returns whether there was one.
    pub(super) async fn settle_incoming_locked(&self, dom: &Arc<Dom>, why: &str) -> bool {
        let record = dom.lock().live.as_ref().and_then(|l| l.migration.clone());
        let Some(Migration::In {
            phase,
            flags,
            persist_xml,
        }) = record
        else {
            return false;
        };
        if phase == InPhase::Prepared {
            tracing::warn!(domain = %dom.name(), "ending an incoming migration: {why}");
            let _ = self.destroy_locked(dom).await;
            return true;
        }
        let f = MigrateFlags::from_bits_retain(flags);
        if let Err(e) = self.run_incoming(dom, f).await {
            tracing::warn!(domain = %dom.name(), "ending an incoming migration cut in Finish: {e}");
            let _ = self.destroy_locked(dom).await;
            return true;
        }
        tracing::warn!(domain = %dom.name(), "finished an incoming migration cut in Finish");
        if f.contains(MigrateFlags::PERSIST_DEST) {
            // define() takes the job lock: after this one is let go.
            if let Some(d) = self.arc() {
                let dom = dom.clone();
                tokio::spawn(async move {
                    if let Err(e) = d.persist_migrated(&dom, persist_xml).await {
                        tracing::warn!(domain = %dom.name(), "defining the migrated domain: {e}");
                    }
                });
            }
        }
        true
    }
}
