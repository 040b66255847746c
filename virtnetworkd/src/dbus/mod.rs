//! D-Bus interfaces: translation between the wire and the driver, nothing else.

use std::sync::Arc;

use uuid::Uuid;

use crate::driver::Driver;

mod connect;
mod network;
mod port;

/// Registers the connect object.
pub async fn serve_connect(driver: &Arc<Driver>) {
    let d = Arc::downgrade(driver);
    driver
        .ctx
        .hub
        .serve(common::objpath::connect(), move || connect::Connect {
            driver: d.clone(),
        })
        .await;
}

/// Registers one network object.
pub async fn serve_network(driver: &Arc<Driver>, uuid: Uuid) {
    let d = Arc::downgrade(driver);
    driver
        .ctx
        .hub
        .serve(common::objpath::network(&uuid), move || network::Network {
            driver: d.clone(),
            uuid,
        })
        .await;
}

pub async fn unserve_network(driver: &Driver, uuid: Uuid) {
    driver
        .ctx
        .hub
        .unserve::<network::Network>(&common::objpath::network(&uuid))
        .await;
}

/// Registers one port object.
pub async fn serve_port(driver: &Arc<Driver>, uuid: Uuid) {
    let d = Arc::downgrade(driver);
    driver
        .ctx
        .hub
        .serve(common::objpath::network_port(&uuid), move || {
            port::NetworkPort {
                driver: d.clone(),
                uuid,
            }
        })
        .await;
}

pub async fn unserve_port(driver: &Driver, uuid: Uuid) {
    driver
        .ctx
        .hub
        .unserve::<port::NetworkPort>(&common::objpath::network_port(&uuid))
        .await;
}

fn gone() -> common::error::BusError {
    common::error::VirError::internal("the daemon is shutting down").into()
}

fn upgrade(d: &std::sync::Weak<Driver>) -> Result<Arc<Driver>, common::error::BusError> {
    d.upgrade().ok_or_else(gone)
}
