//! D-Bus interfaces: translation between the wire and the driver, nothing else. This
//! layer also owns publishing: it serves the objects the driver announces and emits
//! the signals of its changes (`Publisher`).

use std::sync::{Arc, Weak};
use zbus::zvariant;

use futures_util::future::BoxFuture;

use crate::driver::{Change, Dom, Driver};

mod connect;
mod domain;
mod migration;
mod snapshot;

/// Serves the connect object and every domain the driver has, and connects the
/// driver's outbox, so every later change reaches the bus.
pub async fn attach(driver: &Arc<Driver>) {
    let publisher = Arc::new(Publisher {
        hub: driver.ctx.hub.clone(),
        driver: Arc::downgrade(driver),
    });
    driver.outbox.connect(publisher.clone());
    let d = driver.clone();
    driver
        .ctx
        .hub
        .serve(common::objpath::connect(), move || connect::Connect {
            driver: d.clone(),
        })
        .await;
    let d = driver.clone();
    driver
        .ctx
        .hub
        .serve(common::objpath::connect(), move || migration::Migration {
            driver: d.clone(),
        })
        .await;
    for dom in driver.list(0).unwrap_or_default() {
        publisher.serve(&dom).await;
        for name in dom.snapshot_names_all() {
            publisher.serve_snapshot(&dom, name).await;
        }
    }
}

struct Publisher {
    hub: common::Hub,
    driver: Weak<Driver>,
}

impl Publisher {
    async fn serve(&self, dom: &Dom) {
        let Some(driver) = self.driver.upgrade() else {
            return;
        };
        let uuid = dom.uuid;
        self.hub
            .serve(dom.path.clone(), move || domain::Domain {
                driver: driver.clone(),
                uuid,
            })
            .await;
    }

    async fn serve_snapshot(&self, dom: &Dom, name: String) {
        let Some(driver) = self.driver.upgrade() else {
            return;
        };
        let domain = dom.uuid;
        self.hub
            .serve(
                common::objpath::domain_snapshot(&domain, &name),
                move || snapshot::DomainSnapshot {
                    driver: driver.clone(),
                    domain,
                    name: name.clone(),
                },
            )
            .await;
    }

    async fn lifecycle(&self, dom: &Dom, event: common::event::DomainEvent) {
        let (event, detail) = event.wire();
        let path = &dom.path;
        self.hub
            .signal(&common::objpath::connect(), |e| async move {
                connect::Connect::domain_event(&e, path.clone(), event, detail).await
            })
            .await;
    }

    /// A domain's own signal (not lifecycle) on its object.
    async fn signal(&self, dom: &Dom, s: crate::events::DomainSignal) {
        use crate::events::DomainSignal as S;
        use domain::Domain as D;
        self.hub
            .signal(&dom.path, |e| {
                let s = s.clone();
                async move {
                    match s {
                        S::BalloonChange(kib) => D::balloon_change(&e, kib).await,
                        S::Reboot => D::reboot_signal(&e).await,
                        S::RtcChange(offset) => D::rtc_change(&e, offset).await,
                        S::Watchdog(action) => D::watchdog(&e, action).await,
                        S::IoError {
                            src_path,
                            device,
                            action,
                            reason,
                        } => D::io_error(&e, &src_path, &device, action, &reason).await,
                        S::TrayChange { device, reason } => {
                            D::tray_change(&e, &device, reason).await
                        }
                        S::BlockThreshold {
                            device,
                            path,
                            threshold,
                            excess,
                        } => D::block_threshold(&e, &device, &path, threshold, excess).await,
                        S::PmSuspend => D::pm_suspend(&e, 0).await,
                        S::PmSuspendDisk => D::pm_suspend_disk(&e, 0).await,
                        S::PmWakeup => D::pm_wakeup_signal(&e, 0).await,
                        S::Graphics {
                            phase,
                            local,
                            remote,
                            auth,
                        } => D::graphics(&e, phase, local, remote, &auth, Vec::new()).await,
                        S::DeviceAdded(alias) => D::device_added(&e, &alias).await,
                        S::DeviceRemoved(alias) => D::device_removed(&e, &alias).await,
                        S::DeviceRemovalFailed(alias) => D::device_removal_failed(&e, &alias).await,
                        S::MigrationIteration(n) => D::migration_iteration(&e, n).await,
                        S::JobCompleted(stats) => {
                            D::job_completed(&e, domain::stat_params(stats)).await
                        }
                        S::BlockJob { disk, kind, status } => {
                            D::block_job(&e, &disk, kind, status).await
                        }
                        S::DiskChange {
                            old_src,
                            new_src,
                            device,
                            reason,
                        } => D::disk_change(&e, &old_src, &new_src, &device, reason).await,
                        S::Tunable(params) => {
                            use crate::events::Tuned;
                            let map = params
                                .into_iter()
                                .map(|(k, v)| {
                                    let v = match v {
                                        Tuned::Text(t) => {
                                            zvariant::OwnedValue::from(zvariant::Str::from(t))
                                        }
                                        Tuned::Number(n) => zvariant::OwnedValue::from(n),
                                        Tuned::Signed(n) => zvariant::OwnedValue::from(n),
                                    };
                                    (k, v)
                                })
                                .collect::<std::collections::HashMap<_, _>>();
                            D::tunable(&e, common::typed_params::TypedParams(map)).await
                        }
                    }
                }
            })
            .await;
    }

    /// libvirt-dbus declares these properties without PropertiesChanged
    /// (EmitsChangedSignal false); sending it anyway spares clients a poll.
    async fn properties(&self, dom: &Dom) {
        let (active, id, persistent, autostart) = (
            dom.active(),
            dom.id().unwrap_or(u32::MAX),
            dom.persistent(),
            dom.autostart(),
        );
        self.hub
            .properties_changed(
                &dom.path,
                domain::INTERFACE,
                &[
                    ("Active", active.into()),
                    ("Id", id.into()),
                    ("Persistent", persistent.into()),
                    ("Autostart", autostart.into()),
                ],
            )
            .await;
    }
}

impl common::publish::Publisher<Change> for Publisher {
    fn publish(&self, change: Change) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            match change {
                Change::Added(dom) => self.serve(&dom).await,
                Change::Removed(dom) => self.hub.unserve::<domain::Domain>(&dom.path).await,
                Change::Lifecycle(dom, event) => self.lifecycle(&dom, event).await,
                Change::Properties(dom) => self.properties(&dom).await,
                Change::Signal(dom, s) => self.signal(&dom, s).await,
                Change::SnapshotAdded(dom, name) => self.serve_snapshot(&dom, name).await,
                Change::SnapshotRemoved(dom, name) => {
                    let path = common::objpath::domain_snapshot(&dom.uuid, &name);
                    self.hub.unserve::<snapshot::DomainSnapshot>(&path).await;
                }
                Change::Agent(dom, state, reason) => {
                    self.hub
                        .signal(&dom.path, |e| async move {
                            domain::Domain::agent_event(&e, state, reason).await
                        })
                        .await;
                }
                Change::Metadata(dom, kind, uri) => {
                    let uri = uri.as_str();
                    self.hub
                        .signal(&dom.path, |e| async move {
                            domain::Domain::metadata_change(&e, kind, uri).await
                        })
                        .await;
                }
            }
        })
    }
}
