//! D-Bus interfaces: translation between the wire and the driver, nothing else.

use std::sync::Arc;

use crate::driver::Driver;

mod connect;
mod nodedev;

/// Registers the connect object and one object per device.
pub async fn serve(driver: &Arc<Driver>) {
    let d = driver.clone();
    driver
        .ctx
        .hub
        .serve(common::objpath::connect(), move || connect::Connect {
            driver: d.clone(),
        })
        .await;
    for name in driver.names() {
        serve_device(driver, &name).await;
    }
}

pub async fn serve_device(driver: &Arc<Driver>, name: &str) {
    let d = driver.clone();
    let n = name.to_string();
    driver
        .ctx
        .hub
        .serve(common::objpath::node_device(name), move || {
            nodedev::NodeDevice {
                driver: d.clone(),
                name: n.clone(),
            }
        })
        .await;
}

pub async fn unserve_device(driver: &Arc<Driver>, name: &str) {
    driver
        .ctx
        .hub
        .unserve::<nodedev::NodeDevice>(&common::objpath::node_device(name))
        .await;
}
