//! `org.libvirt.StorageVol`, plus this project's `Upload`/`Download` by file descriptor.

use std::sync::Arc;

use common::error::BusError;
use zbus::zvariant::OwnedFd;

use crate::driver::Driver;

/// `GetInfo`'s reply: type, capacity, allocation as ONE struct `(itt)`.
#[derive(serde::Serialize, zbus::zvariant::Type)]
pub struct VolInfo(i32, u64, u64);

pub struct StorageVol {
    pub driver: Arc<Driver>,
    pub key: String,
}

#[zbus::interface(name = "org.libvirt.StorageVol")]
impl StorageVol {
    async fn delete(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.vol_delete(&self.key, flags).await?)
    }

    #[zbus(name = "GetInfo")]
    #[zbus(out_args("info"))]
    async fn get_info(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<(VolInfo,), BusError> {
        common::access::check(&hdr).await?;
        common::error::check_flags(flags, 0)?;
        let (kind, capacity, allocation) = self.driver.vol_info(&self.key)?;
        Ok((VolInfo(kind, capacity, allocation),))
    }

    #[zbus(name = "GetXMLDesc")]
    async fn get_xml_desc(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<String, BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.vol_xml(&self.key, flags)?)
    }

    async fn resize(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        capacity: u64,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.vol_resize(&self.key, capacity, flags).await?)
    }

    async fn wipe(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        pattern: u32,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.vol_wipe(&self.key, pattern, flags).await?)
    }

    /// Project addition: writes what is read from `fd` into the volume at `offset`.
    async fn upload(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        fd: OwnedFd,
        offset: u64,
        length: u64,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        Ok(self
            .driver
            .vol_transfer(&self.key, fd.into(), offset, length, flags, true)
            .await?)
    }

    /// Project addition: writes the volume from `offset` into `fd`.
    async fn download(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        fd: OwnedFd,
        offset: u64,
        length: u64,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        Ok(self
            .driver
            .vol_transfer(&self.key, fd.into(), offset, length, flags, false)
            .await?)
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn name(&self) -> String {
        self.driver.vol_name(&self.key)
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn key(&self) -> String {
        self.key.clone()
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn path(&self) -> String {
        self.key.clone()
    }

    /// Project addition: bytes moved so far by the running upload/download (0 when idle).
    #[zbus(property)]
    fn transfer_bytes(&self) -> u64 {
        self.driver.transfer_progress(&self.key)
    }
}
