//! virtqemud: the daemon that manages domains (QEMU/KVM).

pub mod caps;
pub mod command_line;
pub mod dbus;
pub mod driver;
pub mod firmware;
pub mod graphics;
pub mod host_caps;
pub mod hostdevs;
pub mod model;
pub mod nics;
pub mod process;
pub mod qmp;
pub mod security;
pub mod stats;
pub mod tap;
pub mod tpm;
pub mod volumes;
pub mod xml;

pub use driver::Driver;
