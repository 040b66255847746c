//! virtstoraged: the daemon that manages storage pools and volumes.

pub mod backend;
pub mod dbus;
pub mod driver;
pub mod qcow2;
pub mod qemu_img;
pub mod transfer;
pub mod xml;

pub use driver::Driver;
