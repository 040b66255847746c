//! `org.libvirt.StoragePool`: one object per pool, a thin handle onto the driver.

use std::sync::Arc;

use common::error::{BusError, VirError};
use uuid::Uuid;
use zbus::zvariant::OwnedObjectPath;

use crate::driver::{Driver, Pool};

/// `GetInfo`'s reply: state, capacity, allocation, available as ONE struct `(ittt)`.
#[derive(serde::Serialize, zbus::zvariant::Type)]
pub struct PoolInfo(i32, u64, u64, u64);

pub struct StoragePool {
    pub driver: Arc<Driver>,
    pub uuid: Uuid,
}

impl StoragePool {
    fn pool(&self) -> Result<Arc<Pool>, VirError> {
        self.driver.pool_by_uuid(&self.uuid)
    }
}

#[zbus::interface(name = "org.libvirt.StoragePool")]
impl StoragePool {
    async fn build(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.build(&self.pool()?, flags).await?)
    }

    async fn create(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.create(&self.pool()?, flags).await?)
    }

    async fn delete(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.delete(&self.pool()?, flags).await?)
    }

    async fn destroy(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.destroy(&self.pool()?).await?)
    }

    #[zbus(name = "GetInfo")]
    #[zbus(out_args("info"))]
    async fn get_info(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
    ) -> Result<(PoolInfo,), BusError> {
        common::access::check(&hdr).await?;
        let (state, capacity, allocation, available) = self.driver.info(&self.pool()?);
        Ok((PoolInfo(state, capacity, allocation, available),))
    }

    #[zbus(name = "GetXMLDesc")]
    async fn get_xml_desc(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<String, BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.xml_desc(&self.pool()?, flags)?)
    }

    async fn list_storage_volumes(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<Vec<OwnedObjectPath>, BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.list_vols(&self.pool()?, flags)?)
    }

    async fn refresh(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.refresh(&self.pool()?, flags).await?)
    }

    #[zbus(name = "StorageVolCreateXML")]
    async fn storage_vol_create_xml(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        xml: &str,
        flags: u32,
    ) -> Result<OwnedObjectPath, BusError> {
        common::access::check(&hdr).await?;
        Ok(self
            .driver
            .vol_create(&self.pool()?, xml, None, flags)
            .await?)
    }

    #[zbus(name = "StorageVolCreateXMLFrom")]
    async fn storage_vol_create_xml_from(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        xml: &str,
        key: &str,
        flags: u32,
    ) -> Result<OwnedObjectPath, BusError> {
        common::access::check(&hdr).await?;
        Ok(self
            .driver
            .vol_create(&self.pool()?, xml, Some(key), flags)
            .await?)
    }

    async fn storage_vol_lookup_by_name(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        name: &str,
    ) -> Result<OwnedObjectPath, BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.vol_by_name(&self.pool()?, name)?)
    }

    async fn undefine(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.undefine(&self.pool()?).await?)
    }

    #[zbus(property(emits_changed_signal = "false"))]
    fn active(&self) -> bool {
        self.pool().map(|p| p.active()).unwrap_or(false)
    }

    #[zbus(property(emits_changed_signal = "false"))]
    fn autostart(&self) -> bool {
        self.pool().map(|p| p.autostart()).unwrap_or(false)
    }

    #[zbus(property)]
    async fn set_autostart(
        &self,
        #[zbus(header)] hdr: Option<zbus::message::Header<'_>>,
        value: bool,
    ) -> zbus::fdo::Result<()> {
        common::access::check_set(hdr.as_ref()).await?;
        let pool = self
            .pool()
            .map_err(|e| zbus::fdo::Error::Failed(e.message))?;
        self.driver
            .set_autostart(&pool, value)
            .await
            .map_err(|e| zbus::fdo::Error::Failed(e.message))
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn name(&self) -> String {
        self.pool().map(|p| p.name()).unwrap_or_default()
    }

    #[zbus(property(emits_changed_signal = "false"))]
    fn persistent(&self) -> bool {
        self.pool().map(|p| p.persistent()).unwrap_or(false)
    }

    #[zbus(property(emits_changed_signal = "const"), name = "UUID")]
    fn uuid(&self) -> String {
        self.uuid.to_string()
    }

    /// Emitted after `Refresh`, by `dbus::Bus`.
    #[zbus(signal, name = "Refresh")]
    pub async fn refresh_signal(
        emitter: &zbus::object_server::SignalEmitter<'_>,
    ) -> zbus::Result<()>;
}
