//! virtstoraged: the daemon that manages storage pools and volumes.

pub mod dbus;
pub mod driver;

pub use driver::Driver;
