//! The driver: the daemon's state and the operations its D-Bus interfaces translate to.

use std::sync::Arc;

use common::runtime::Context;

pub struct Driver {
    pub ctx: Context,
}

impl Driver {
    /// Builds the driver and registers its objects on the hub.
    pub async fn start(ctx: Context) -> anyhow::Result<Arc<Driver>> {
        let driver = Arc::new(Driver { ctx });
        crate::dbus::serve(&driver).await;
        Ok(driver)
    }
}

impl common::Driver for Driver {}
