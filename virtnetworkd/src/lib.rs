//! virtnetworkd: the daemon that manages virtual networks.

pub mod bridge;
pub mod dbus;
pub mod dnsmasq;
pub mod driver;
pub mod firewall;
pub mod interface;
pub mod nwfilter;
pub mod xml;

use std::sync::Arc;

pub use driver::Driver;

/// Builds the driver, serves it on the hub, then loads, adopts and autostarts the
/// networks: each is served as it is found, all before the runtime owns the bus name.
pub async fn start(ctx: common::Context) -> anyhow::Result<Arc<Driver>> {
    let driver = Driver::new(ctx)?;
    dbus::connect(&driver).await;
    driver.load().await;
    driver.ifaces.load().await;
    driver.nwfilters.load().await;
    driver.nwfilters.watch();
    Ok(driver)
}
