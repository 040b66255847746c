//! D-Bus interfaces: translation between the wire and the driver, nothing else. The
//! driver's [`Change`]s become objects served on the hub and zbus-declared signals here;
//! interface and signal names appear nowhere else.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};

use common::event::NodeDeviceEvent;
use common::objpath;
use common::publish::Publisher;
use common::Hub;

use crate::driver::{Change, Driver};

mod connect;
mod nodedev;

/// Serves the connect object and one object per device the driver holds, then
/// connects the driver's outbox to the bus: from here on every change the driver
/// publishes is served/emitted before `send` returns.
pub async fn connect(driver: &Arc<Driver>) {
    let bus = Arc::new(Bus {
        hub: driver.ctx.hub.clone(),
        driver: Arc::downgrade(driver),
    });
    let d = driver.clone();
    bus.hub
        .serve(objpath::connect(), move || connect::Connect {
            driver: d.clone(),
        })
        .await;
    for name in driver.names() {
        bus.serve_device(driver, name).await;
    }
    driver.outbox.connect(bus);
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
            Change::Created(name) => {
                let Some(d) = self.driver.upgrade() else {
                    return;
                };
                let path = objpath::node_device(&name);
                self.serve_device(&d, name).await;
                self.lifecycle(&path, NodeDeviceEvent::Created).await;
            }
            Change::Deleted(name) => {
                let path = objpath::node_device(&name);
                self.lifecycle(&path, NodeDeviceEvent::Deleted).await;
                self.hub.unserve::<nodedev::NodeDevice>(&path).await;
            }
            Change::Updated(name) => {
                let path = &objpath::node_device(&name);
                self.hub
                    .signal(&objpath::connect(), |e| async move {
                        connect::Connect::node_device_update(&e, path.as_ref()).await
                    })
                    .await;
            }
        }
    }

    async fn serve_device(&self, driver: &Arc<Driver>, name: String) {
        let d = driver.clone();
        self.hub
            .serve(objpath::node_device(&name), move || nodedev::NodeDevice {
                driver: d.clone(),
                name: name.clone(),
            })
            .await;
    }

    async fn lifecycle(&self, path: &zbus::zvariant::OwnedObjectPath, ev: NodeDeviceEvent) {
        self.hub
            .signal(&objpath::connect(), |e| async move {
                connect::Connect::node_device_event(&e, path.as_ref(), ev.wire(), 0).await
            })
            .await;
    }
}
