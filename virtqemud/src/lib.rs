//! virtqemud: the daemon that manages domains (QEMU/KVM).

pub mod agent;
pub mod bandwidth;
pub mod caps;
pub mod cgroup;
pub mod command_line;
pub mod cpu_model;
pub mod dbus;
pub mod driver;
pub mod events;
pub mod firmware;
pub mod graphics;
pub mod host_caps;
pub mod hostdevs;
pub mod iothreads;
pub mod keys;
pub mod metadata;
pub mod model;
pub mod nics;
pub mod perf;
pub mod pinning;
pub mod process;
pub mod qmp;
pub mod save;
pub mod secrets;
pub mod security;
pub mod snapshot;
pub mod stats;
pub mod tap;
pub mod tpm;
pub mod vcpus;
pub mod volumes;
pub mod xml;

pub use driver::Driver;

/// Opens the driver, connects its D-Bus layer, then adopts running QEMUs and starts
/// autostart domains: every object is served before the runtime owns the bus name.
pub async fn start(ctx: common::Context) -> anyhow::Result<std::sync::Arc<Driver>> {
    let driver = Driver::open(ctx).await?;
    dbus::attach(&driver).await;
    driver.adopt_and_autostart().await;
    Ok(driver)
}
