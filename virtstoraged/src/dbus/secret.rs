//! `org.libvirt.Secret`.

use std::sync::Arc;

use common::error::BusError;
use uuid::Uuid;

use crate::driver::Driver;

pub struct Secret {
    pub driver: Arc<Driver>,
    pub uuid: Uuid,
}

#[zbus::interface(name = "org.libvirt.Secret")]
impl Secret {
    /// A private secret's value goes only to virtqemud (for the disks it opens), as
    /// libvirt's secret driver gives it only to its other drivers.
    async fn get_value(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<Vec<u8>, BusError> {
        common::access::check(&hdr).await?;
        let internal = common::access::caller_is_daemon(&hdr, "virtqemud").await;
        Ok(self.driver.secrets.value(&self.uuid, flags, internal)?)
    }

    #[zbus(name = "GetXMLDesc")]
    async fn get_xml_desc(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<String, BusError> {
        common::access::check(&hdr).await?;
        common::error::check_flags(flags, 0)?;
        Ok(self.driver.secrets.get(&self.uuid)?.to_xml())
    }

    async fn set_value(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        value: Vec<u8>,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        Ok(self
            .driver
            .secrets
            .set_value(&self.uuid, &value, flags)
            .await?)
    }

    async fn undefine(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.undefine_secret(&self.uuid).await?)
    }

    #[zbus(property(emits_changed_signal = "const"), name = "UUID")]
    fn uuid(&self) -> String {
        self.uuid.hyphenated().to_string()
    }

    #[zbus(property(emits_changed_signal = "const"), name = "UsageID")]
    fn usage_id(&self) -> String {
        self.driver
            .secrets
            .get(&self.uuid)
            .map(|d| d.usage.id().to_owned())
            .unwrap_or_default()
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn usage_type(&self) -> i32 {
        self.driver
            .secrets
            .get(&self.uuid)
            .map_or(0, |d| d.usage.wire())
    }
}
