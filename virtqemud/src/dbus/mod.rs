//! D-Bus interfaces: translation between the wire and the driver, nothing else.

use std::sync::Arc;

use crate::driver::{Dom, Driver};

mod connect;
mod domain;

/// Registers the connect object.
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

/// Registers one domain object at its path.
pub async fn serve_domain(driver: &Arc<Driver>, dom: &Arc<Dom>) {
    let d = driver.clone();
    let uuid = dom.uuid;
    driver
        .ctx
        .hub
        .serve(dom.path.clone(), move || domain::Domain {
            driver: d.clone(),
            uuid,
        })
        .await;
}

/// Removes a domain object.
pub async fn unserve_domain(driver: &Driver, dom: &Dom) {
    driver.ctx.hub.unserve::<domain::Domain>(&dom.path).await;
}
