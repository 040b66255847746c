//! virtnodedevd's part of `org.libvirt.Connect` at `/org/libvirt/QEMU`.

use std::sync::Arc;

use common::connect as base;

use crate::driver::Driver;

pub struct Connect {
    #[allow(dead_code)]
    pub driver: Arc<Driver>,
}

#[zbus::interface(name = "org.libvirt.Connect")]
impl Connect {
    #[zbus(property)]
    fn version(&self) -> u64 {
        base::own_version()
    }

    #[zbus(property)]
    fn lib_version(&self) -> u64 {
        base::LIB_VERSION
    }

    #[zbus(property)]
    fn hostname(&self) -> String {
        base::hostname()
    }

    #[zbus(property)]
    fn encrypted(&self) -> bool {
        base::ENCRYPTED
    }

    #[zbus(property)]
    fn secure(&self) -> bool {
        base::SECURE
    }
}
