//! `org.libvirt.DomainSnapshot`, one object per snapshot at
//! `common::objpath::domain_snapshot(&domain_uuid, &name)`.

use std::sync::Arc;

use common::error::{BusError, VirError};
use uuid::Uuid;
use zbus::zvariant::OwnedObjectPath;

use crate::driver::{Dom, Driver};

pub struct DomainSnapshot {
    pub driver: Arc<Driver>,
    pub domain: Uuid,
    pub name: String,
}

impl DomainSnapshot {
    fn dom(&self) -> Result<Arc<Dom>, VirError> {
        self.driver.lookup_uuid(&self.domain)
    }

    fn path(&self, name: &str) -> OwnedObjectPath {
        common::objpath::domain_snapshot(&self.domain, name)
    }
}

#[zbus::interface(name = "org.libvirt.DomainSnapshot")]
impl DomainSnapshot {
    #[zbus(name = "GetXMLDesc")]
    async fn get_xml_desc(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<String, BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.snapshot_xml(&*self.dom()?, &self.name, flags)?)
    }

    #[zbus(name = "GetParent")]
    async fn get_parent(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<OwnedObjectPath, BusError> {
        common::access::check(&hdr).await?;
        let parent = self
            .driver
            .snapshot_parent(&*self.dom()?, &self.name, flags)?;
        Ok(self.path(&parent))
    }

    #[zbus(name = "IsCurrent")]
    async fn is_current(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<bool, BusError> {
        common::access::check(&hdr).await?;
        Ok(self
            .driver
            .snapshot_is_current(&*self.dom()?, &self.name, flags)?)
    }

    #[zbus(name = "ListChildren")]
    async fn list_children(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<Vec<OwnedObjectPath>, BusError> {
        common::access::check(&hdr).await?;
        let names = self
            .driver
            .snapshot_children(&*self.dom()?, &self.name, flags)?;
        Ok(names.iter().map(|n| self.path(n)).collect())
    }

    #[zbus(name = "Delete")]
    async fn delete(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        Ok(self
            .driver
            .snapshot_delete(&self.dom()?, &self.name, flags)
            .await?)
    }

    #[zbus(name = "Revert")]
    async fn revert(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        Ok(self
            .driver
            .snapshot_revert(&self.dom()?, &self.name, flags)
            .await?)
    }
}
