//! D-Bus interfaces: translation between the wire and the driver, nothing else.

use std::sync::Arc;

use common::objpath;
use uuid::Uuid;

use crate::driver::Driver;

mod connect;
mod pool;
mod vol;

/// Registers the connect object and every pool and volume the driver holds.
pub async fn serve(driver: &Arc<Driver>) {
    let d = driver.clone();
    driver
        .ctx
        .hub
        .serve(objpath::connect(), move || connect::Connect {
            driver: d.clone(),
        })
        .await;
    for p in driver.pools() {
        serve_pool(driver, p.uuid).await;
    }
}

pub async fn serve_pool(driver: &Arc<Driver>, uuid: Uuid) {
    let d = driver.clone();
    driver
        .ctx
        .hub
        .serve(objpath::storage_pool(&uuid), move || pool::StoragePool {
            driver: d.clone(),
            uuid,
        })
        .await;
}

pub async fn unserve_pool(driver: &Arc<Driver>, uuid: Uuid) {
    driver
        .ctx
        .hub
        .unserve::<pool::StoragePool>(&objpath::storage_pool(&uuid))
        .await;
}

pub async fn serve_vol(driver: &Arc<Driver>, key: &str) {
    let d = driver.clone();
    let k = key.to_owned();
    driver
        .ctx
        .hub
        .serve(objpath::storage_vol(key), move || vol::StorageVol {
            driver: d.clone(),
            key: k.clone(),
        })
        .await;
}

pub async fn unserve_vol(driver: &Arc<Driver>, key: &str) {
    driver
        .ctx
        .hub
        .unserve::<vol::StorageVol>(&objpath::storage_vol(key))
        .await;
}
