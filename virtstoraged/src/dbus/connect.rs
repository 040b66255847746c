//! virtstoraged's part of `org.libvirt.Connect` at `/org/libvirt/QEMU`.

// zbus introspects a signal's arguments by their Rust names, and libvirt-dbus names
// StoragePoolEvent's first one `storagePool`.
#![allow(non_snake_case)]

use std::sync::Arc;

use common::connect as base;
use common::error::{BusError, ErrorCode, VirError};
use zbus::zvariant::{ObjectPath, OwnedObjectPath};

use crate::driver::Driver;

pub struct Connect {
    pub driver: Arc<Driver>,
}

#[zbus::interface(name = "org.libvirt.Connect")]
impl Connect {
    async fn find_storage_pool_sources(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        kind: &str,
        src_spec: &str,
        flags: u32,
    ) -> Result<String, BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.find_sources(kind, src_spec, flags).await?)
    }

    async fn list_storage_pools(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<Vec<OwnedObjectPath>, BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.list_pools(flags)?)
    }

    #[zbus(name = "StoragePoolCreateXML")]
    async fn storage_pool_create_xml(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        xml: &str,
        flags: u32,
    ) -> Result<OwnedObjectPath, BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.create_xml(xml, flags).await?)
    }

    #[zbus(name = "StoragePoolDefineXML")]
    async fn storage_pool_define_xml(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        xml: &str,
        flags: u32,
    ) -> Result<OwnedObjectPath, BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.define_xml(xml, flags).await?)
    }

    async fn storage_pool_lookup_by_name(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        name: &str,
    ) -> Result<OwnedObjectPath, BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.pool_by_name(name)?.path())
    }

    #[zbus(name = "StoragePoolLookupByUUID")]
    async fn storage_pool_lookup_by_uuid(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        uuid: &str,
    ) -> Result<OwnedObjectPath, BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.pool_by_uuid_str(uuid)?.path())
    }

    /// This project's addition (libvirt's virStoragePoolLookupByVolume, which
    /// libvirt-dbus lacks): the pool that holds the volume at object path `vol`.
    async fn storage_pool_lookup_by_volume(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        vol: ObjectPath<'_>,
    ) -> Result<OwnedObjectPath, BusError> {
        common::access::check(&hdr).await?;
        let key = vol
            .as_str()
            .strip_prefix(common::objpath::CONNECT_PATH)
            .and_then(|p| p.strip_prefix("/storagevol/"))
            .and_then(common::objpath::decode_str)
            .ok_or_else(|| {
                VirError::new(
                    ErrorCode::NoStorageVol,
                    format!("no storage vol with matching path '{}'", vol.as_str()),
                )
            })?;
        Ok(self.driver.vol_by_key(&key)?.0.path())
    }

    async fn storage_vol_lookup_by_key(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        key: &str,
    ) -> Result<OwnedObjectPath, BusError> {
        common::access::check(&hdr).await?;
        Ok(common::objpath::storage_vol(
            &self.driver.vol_by_key(key)?.1.key,
        ))
    }

    async fn storage_vol_lookup_by_path(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        path: &str,
    ) -> Result<OwnedObjectPath, BusError> {
        common::access::check(&hdr).await?;
        Ok(common::objpath::storage_vol(
            &self.driver.vol_by_path(path)?.1.key,
        ))
    }

    async fn list_secrets(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<Vec<OwnedObjectPath>, BusError> {
        common::access::check(&hdr).await?;
        let uuids = self.driver.secrets.list(flags)?;
        Ok(uuids.iter().map(common::objpath::secret).collect())
    }

    #[zbus(name = "SecretDefineXML")]
    async fn secret_define_xml(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        xml: &str,
        flags: u32,
    ) -> Result<OwnedObjectPath, BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.define_secret(xml, flags).await?)
    }

    #[zbus(name = "SecretLookupByUUID")]
    async fn secret_lookup_by_uuid(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        uuid: &str,
    ) -> Result<OwnedObjectPath, BusError> {
        common::access::check(&hdr).await?;
        let def = self.driver.secrets.by_uuid_str(uuid)?;
        Ok(common::objpath::secret(&def.uuid))
    }

    async fn secret_lookup_by_usage(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        usageType: i32,
        usageID: &str,
    ) -> Result<OwnedObjectPath, BusError> {
        common::access::check(&hdr).await?;
        let usage = crate::secret::Usage::from_wire(usageType, usageID)?;
        let def = self.driver.secrets.by_usage(&usage)?;
        Ok(common::objpath::secret(&def.uuid))
    }

    /// `virSecretEventLifecycleType`, emitted by `dbus::Bus`; libvirt-dbus's names.
    #[zbus(signal)]
    pub async fn secret_event(
        emitter: &zbus::object_server::SignalEmitter<'_>,
        secret: ObjectPath<'_>,
        event: i32,
        detail: i32,
    ) -> zbus::Result<()>;

    /// Lifecycle events (virStoragePoolEventLifecycleType), emitted by `dbus::Bus`.
    /// The argument names are libvirt-dbus's.
    #[zbus(signal)]
    pub async fn storage_pool_event(
        emitter: &zbus::object_server::SignalEmitter<'_>,
        storagePool: ObjectPath<'_>,
        event: i32,
        detail: i32,
    ) -> zbus::Result<()>;

    #[zbus(property(emits_changed_signal = "false"))]
    fn version(&self) -> u64 {
        base::own_version()
    }

    #[zbus(property(emits_changed_signal = "false"))]
    fn lib_version(&self) -> u64 {
        base::LIB_VERSION
    }

    #[zbus(property(emits_changed_signal = "false"))]
    fn hostname(&self) -> String {
        base::hostname()
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn encrypted(&self) -> bool {
        base::ENCRYPTED
    }

    #[zbus(property(emits_changed_signal = "const"))]
    fn secure(&self) -> bool {
        base::SECURE
    }
}
