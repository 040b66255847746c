//! virtstoraged: the daemon that manages storage pools and volumes.

pub mod backend;
pub mod dbus;
pub mod driver;
pub mod qcow2;
pub mod qemu_img;
pub mod secret;
pub mod secrets;
pub mod transfer;
pub mod xml;

use std::sync::Arc;

pub use driver::Driver;

/// Builds the driver, serves it on the hub, then loads, adopts and autostarts the
/// pools: each pool and volume is served as it is found, all before the runtime owns
/// the bus name.
pub async fn start(ctx: common::Context) -> anyhow::Result<Arc<Driver>> {
    let driver = Driver::new(ctx)?;
    dbus::connect(&driver).await;
    driver.load().await;
    Ok(driver)
}
