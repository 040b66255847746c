//! virtnodedevd: the daemon that manages host devices and node resources.

pub mod create;
pub mod dbus;
pub mod driver;
pub mod node;
pub mod pci;
pub mod sysfs;
pub mod uevent;
pub mod xml;

use std::sync::Arc;

pub use driver::Driver;

/// Listens to uevents, reads the device tree, serves every device on the hub (all
/// before the runtime owns the bus name), then follows hotplug.
pub async fn start(ctx: common::Context) -> anyhow::Result<Arc<Driver>> {
    let roots = sysfs::Roots::from_settings(&ctx.settings);
    // Listen before enumerating so that nothing happening in between is missed.
    let uevents = driver::listen(&roots)?;
    let driver = Arc::new(Driver::new(ctx, roots));
    dbus::connect(&driver).await;
    driver.follow(uevents);
    Ok(driver)
}
