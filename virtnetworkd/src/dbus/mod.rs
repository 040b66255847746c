//! D-Bus interfaces: translation between the wire and the driver, nothing else.

use std::sync::Arc;

use crate::driver::Driver;

mod connect;

/// Registers the connect object (and, later, every object the driver holds).
pub async fn serve(driver: &Arc<Driver>) {
    let d = driver.clone();
    driver
        .ctx
        .hub
        .serve(common::objpath::connect(), move || connect::Connect {
            driver: d.clone(),
        })
        .await;
}
