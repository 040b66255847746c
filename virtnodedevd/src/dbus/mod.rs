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
use zbus::object_server::SignalEmitter;

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
                self.each(|e| async move {
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
        self.each(|e| async move {
            connect::Connect::node_device_event(&e, path.as_ref(), ev.wire(), 0).await
        })
        .await;
    }

    /// Emits through `emit` once per connection, from the connect object.
    async fn each<F, Fut>(&self, emit: F)
    where
        F: Fn(SignalEmitter<'static>) -> Fut,
        Fut: Future<Output = zbus::Result<()>>,
    {
        let path = objpath::connect();
        for conn in self.hub.connections() {
            let e = match SignalEmitter::new(&conn, path.clone()) {
                Ok(e) => e.into_owned(),
                Err(err) => {
                    tracing::debug!("no signal emitter for {path}: {err}");
                    continue;
                }
            };
            if let Err(err) = emit(e).await {
                tracing::debug!("signal from {path} not sent: {err}");
            }
        }
    }
}
