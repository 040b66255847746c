//! `org.libvirt.NodeDevice`, one object per host device.

use std::sync::Arc;

use common::error::{BusError, VirError};

use crate::driver::Driver;

pub struct NodeDevice {
    pub driver: Arc<Driver>,
    pub name: String,
}

#[zbus::interface(name = "org.libvirt.NodeDevice")]
impl NodeDevice {
    #[zbus(name = "Destroy")]
    async fn destroy(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.destroy(&self.name).await?)
    }

    #[zbus(name = "Detach")]
    async fn detach(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        driver_name: &str,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.detach(&self.name, driver_name, flags).await?)
    }

    #[zbus(name = "GetXMLDesc")]
    async fn get_xml_desc(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<String, BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.xml(&self.name, flags)?)
    }

    #[zbus(name = "ListCaps")]
    async fn list_caps(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
    ) -> Result<Vec<String>, BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.caps(&self.name)?)
    }

    #[zbus(name = "ReAttach")]
    async fn re_attach(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.reattach(&self.name).await?)
    }

    #[zbus(name = "Reset")]
    async fn reset(&self, #[zbus(header)] hdr: zbus::message::Header<'_>) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.reset(&self.name).await?)
    }

    #[zbus(property(emits_changed_signal = "const"), name = "Name")]
    fn name(&self) -> String {
        self.name.clone()
    }

    /// libvirt-dbus answers "" for the root device (`computer`).
    #[zbus(property(emits_changed_signal = "const"), name = "Parent")]
    fn parent(&self) -> zbus::fdo::Result<String> {
        match self.driver.lookup(&self.name) {
            Ok(_) => Ok(self.driver.parent(&self.name).unwrap_or_default()),
            Err(e) => Err(zbus::fdo::Error::Failed(VirError::to_string(&e))),
        }
    }
}
