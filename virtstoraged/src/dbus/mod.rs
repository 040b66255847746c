//! D-Bus interfaces: translation between the wire and the driver, nothing else. The
//! driver's [`Change`]s become objects served on the hub and zbus-declared signals here;
//! interface, property and signal names appear nowhere else.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};

use common::objpath;
use common::publish::Publisher;
use common::Hub;

use crate::driver::{Change, Driver};

mod connect;
mod pool;
mod secret;
mod vol;

/// Serves the connect object and connects the driver's outbox to the bus: from here
/// on every change the driver publishes is served/emitted before `send` returns.
pub async fn connect(driver: &Arc<Driver>) {
    let hub = driver.ctx.hub.clone();
    let d = driver.clone();
    hub.serve(objpath::connect(), move || connect::Connect {
        driver: d.clone(),
    })
    .await;
    driver.outbox.connect(Arc::new(Bus {
        hub,
        driver: Arc::downgrade(driver),
    }));
}

/// The D-Bus side of the driver's outbox.
struct Bus {
    hub: Hub,
    driver: Weak<Driver>,
}

impl Publisher<Change> for Bus {
    fn publish(&self, change: Change) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(self.apply(change))
    }
}

impl Bus {
    async fn apply(&self, change: Change) {
        match change {
            Change::PoolAdded(uuid) => {
                let Some(d) = self.driver.upgrade() else {
                    return;
                };
                self.hub
                    .serve(objpath::storage_pool(&uuid), move || pool::StoragePool {
                        driver: d.clone(),
                        uuid,
                    })
                    .await;
            }
            Change::PoolRemoved(uuid) => {
                self.hub
                    .unserve::<pool::StoragePool>(&objpath::storage_pool(&uuid))
                    .await;
            }
            Change::Lifecycle(uuid, ev) => {
                let path = &objpath::storage_pool(&uuid);
                self.hub
                    .signal(&objpath::connect(), |e| async move {
                        connect::Connect::storage_pool_event(&e, path.as_ref(), ev.wire(), 0).await
                    })
                    .await;
            }
            Change::ActiveChanged(uuid, active) => {
                tracing::debug!(pool = %uuid, active, "Active changed");
                // libvirt-dbus declares Active without PropertiesChanged
                // (EmitsChangedSignal false); sending it anyway spares clients a poll.
                let iface = <pool::StoragePool as zbus::object_server::Interface>::name();
                self.hub
                    .properties_changed(
                        &objpath::storage_pool(&uuid),
                        iface.as_str(),
                        &[("Active", active.into())],
                    )
                    .await;
            }
            Change::Refreshed(uuid) => {
                self.hub
                    .signal(&objpath::storage_pool(&uuid), |e| async move {
                        pool::StoragePool::refresh_signal(&e).await
                    })
                    .await;
            }
            Change::VolumeAdded(key) => {
                let Some(d) = self.driver.upgrade() else {
                    return;
                };
                let path = objpath::storage_vol(&key);
                self.hub
                    .serve(path, move || vol::StorageVol {
                        driver: d.clone(),
                        key: key.clone(),
                    })
                    .await;
            }
            Change::VolumeRemoved(key) => {
                self.hub
                    .unserve::<vol::StorageVol>(&objpath::storage_vol(&key))
                    .await;
            }
            Change::SecretAdded(uuid) => {
                let Some(d) = self.driver.upgrade() else {
                    return;
                };
                self.hub
                    .serve(objpath::secret(&uuid), move || secret::Secret {
                        driver: d.clone(),
                        uuid,
                    })
                    .await;
            }
            Change::SecretRemoved(uuid) => {
                self.hub
                    .unserve::<secret::Secret>(&objpath::secret(&uuid))
                    .await;
            }
            Change::SecretLifecycle(uuid, ev) => {
                let path = &objpath::secret(&uuid);
                self.hub
                    .signal(&objpath::connect(), |e| async move {
                        connect::Connect::secret_event(&e, path.as_ref(), ev.wire(), 0).await
                    })
                    .await;
            }
        }
    }
}
