//! `org.libvirt.Interface`: one host interface, by name.

use std::sync::{Arc, Weak};

use common::error::{check_flags, flags as read_flags, BusError};

use super::gone;
use crate::interface::Ifaces;

pub struct Interface {
    pub ifaces: Weak<Ifaces>,
    pub name: String,
}

bitflags::bitflags! {
    /// `virInterfaceXMLFlags`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct XmlFlags: u32 {
        const INACTIVE = 1;
    }
}

impl Interface {
    fn get(&self) -> Result<Arc<Ifaces>, BusError> {
        self.ifaces.upgrade().ok_or_else(gone)
    }
}

#[zbus::interface(name = "org.libvirt.Interface")]
impl Interface {
    async fn create(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        check_flags(flags, 0)?;
        Ok(self.get()?.create(&self.name).await?)
    }

    async fn destroy(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        check_flags(flags, 0)?;
        Ok(self.get()?.destroy(&self.name).await?)
    }

    #[zbus(name = "GetXMLDesc")]
    async fn get_xml_desc(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<String, BusError> {
        common::access::check(&hdr).await?;
        let flags: XmlFlags = read_flags(flags)?;
        Ok(self
            .get()?
            .xml(&self.name, flags.contains(XmlFlags::INACTIVE))
            .await?)
    }

    async fn undefine(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        Ok(self.get()?.undefine(&self.name).await?)
    }

    #[zbus(property(emits_changed_signal = "false"))]
    async fn active(&self) -> bool {
        match self.get() {
            Ok(i) => i.active(&self.name).await.unwrap_or(false),
            Err(_) => false,
        }
    }

    #[zbus(property(emits_changed_signal = "const"), name = "MAC")]
    async fn mac(&self) -> String {
        match self.get() {
            Ok(i) => i.mac(&self.name).await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    #[zbus(property(emits_changed_signal = "const"))]
    async fn name(&self) -> String {
        self.name.clone()
    }
}
