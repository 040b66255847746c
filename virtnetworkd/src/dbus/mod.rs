//! D-Bus interfaces: translation between the wire and the driver, nothing else. The
//! driver's [`Change`]s become objects served on the hub and zbus-declared signals here;
//! interface, property and signal names appear nowhere else.

use std::sync::{Arc, Weak};

use common::objpath;
use common::publish::Publisher;
use common::Hub;
use futures_util::future::BoxFuture;

use crate::driver::{Change, Driver};
use crate::interface::{IfaceChange, Ifaces};
use crate::nwfilter::{FilterChange, NwFilters};

mod connect;
mod interface;
mod network;
mod nwfilter;
mod port;

/// Serves the connect object and connects the driver's outbox to the bus: from here
/// on every change the driver publishes is served/emitted before `send` returns.
pub async fn connect(driver: &Arc<Driver>) {
    let hub = driver.ctx.hub.clone();
    let d = Arc::downgrade(driver);
    hub.serve(objpath::connect(), move || connect::Connect {
        driver: d.clone(),
    })
    .await;
    driver.ifaces.outbox.connect(Arc::new(IfaceBus {
        hub: hub.clone(),
        ifaces: Arc::downgrade(&driver.ifaces),
    }));
    driver.nwfilters.outbox.connect(Arc::new(FilterBus {
        hub: hub.clone(),
        filters: Arc::downgrade(&driver.nwfilters),
    }));
    driver.outbox.connect(Arc::new(Bus {
        hub,
        driver: Arc::downgrade(driver),
    }));
}

/// The D-Bus side of the host interfaces' outbox.
struct IfaceBus {
    hub: Hub,
    ifaces: Weak<Ifaces>,
}

impl Publisher<IfaceChange> for IfaceBus {
    fn publish(&self, change: IfaceChange) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            match change {
                IfaceChange::Added(name) => {
                    let i = self.ifaces.clone();
                    let path = objpath::interface(&name);
                    self.hub
                        .serve(path, move || interface::Interface {
                            ifaces: i.clone(),
                            name: name.clone(),
                        })
                        .await;
                }
                IfaceChange::Removed(name) => {
                    self.hub
                        .unserve::<interface::Interface>(&objpath::interface(&name))
                        .await;
                }
            }
        })
    }
}

/// The D-Bus side of the network filters' outbox (libvirt-dbus has no nwfilter
/// signals: objects are only served and unserved).
struct FilterBus {
    hub: Hub,
    filters: Weak<NwFilters>,
}

impl Publisher<FilterChange> for FilterBus {
    fn publish(&self, change: FilterChange) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let f = self.filters.clone();
            match change {
                FilterChange::Added(uuid) => {
                    self.hub
                        .serve(objpath::nwfilter(&uuid), move || nwfilter::NWFilter {
                            filters: f.clone(),
                            uuid,
                        })
                        .await;
                }
                FilterChange::Removed(uuid) => {
                    self.hub
                        .unserve::<nwfilter::NWFilter>(&objpath::nwfilter(&uuid))
                        .await;
                }
                FilterChange::BindingAdded(tap) => {
                    let path = objpath::nwfilter_binding(&tap);
                    self.hub
                        .serve(path, move || nwfilter::NWFilterBinding {
                            filters: f.clone(),
                            portdev: tap.clone(),
                        })
                        .await;
                }
                FilterChange::BindingRemoved(tap) => {
                    self.hub
                        .unserve::<nwfilter::NWFilterBinding>(&objpath::nwfilter_binding(&tap))
                        .await;
                }
            }
        })
    }
}

/// The D-Bus side of the driver's outbox.
struct Bus {
    hub: Hub,
    driver: Weak<Driver>,
}

impl Publisher<Change> for Bus {
    fn publish(&self, change: Change) -> BoxFuture<'_, ()> {
        Box::pin(self.apply(change))
    }
}

impl Bus {
    async fn apply(&self, change: Change) {
        match change {
            Change::NetworkAdded(uuid) => {
                let d = self.driver.clone();
                self.hub
                    .serve(objpath::network(&uuid), move || network::Network {
                        driver: d.clone(),
                        uuid,
                    })
                    .await;
            }
            Change::NetworkRemoved(uuid) => {
                self.hub
                    .unserve::<network::Network>(&objpath::network(&uuid))
                    .await;
            }
            Change::Lifecycle(uuid, ev) => {
                let path = &objpath::network(&uuid);
                self.hub
                    .signal(&objpath::connect(), |e| async move {
                        connect::Connect::network_event(&e, path.as_ref(), ev.wire()).await
                    })
                    .await;
            }
            Change::ActiveChanged(uuid, active) => {
                tracing::debug!(network = %uuid, active, "Active changed");
                // libvirt-dbus declares Active without PropertiesChanged
                // (EmitsChangedSignal false); sending it anyway spares clients a poll.
                let iface = <network::Network as zbus::object_server::Interface>::name();
                self.hub
                    .properties_changed(
                        &objpath::network(&uuid),
                        iface.as_str(),
                        &[("Active", active.into())],
                    )
                    .await;
            }
            Change::PortAdded(uuid) => {
                let d = self.driver.clone();
                self.hub
                    .serve(objpath::network_port(&uuid), move || port::NetworkPort {
                        driver: d.clone(),
                        uuid,
                    })
                    .await;
            }
            Change::PortRemoved(uuid) => {
                self.hub
                    .unserve::<port::NetworkPort>(&objpath::network_port(&uuid))
                    .await;
            }
        }
    }
}

fn gone() -> common::error::BusError {
    common::error::VirError::internal("the daemon is shutting down").into()
}

fn upgrade(d: &Weak<Driver>) -> Result<Arc<Driver>, common::error::BusError> {
    d.upgrade().ok_or_else(gone)
}
