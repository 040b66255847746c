//! `org.libvirt.NWFilter` (one filter, by UUID) and this project's
//! `org.libvirt.NWFilterBinding` (libvirt's virNWFilterBinding: a filter on one tap).

use std::sync::{Arc, Weak};

use common::error::{check_flags, BusError};

use super::gone;
use crate::nwfilter::NwFilters;

fn get(f: &Weak<NwFilters>) -> Result<Arc<NwFilters>, BusError> {
    f.upgrade().ok_or_else(gone)
}

pub struct NWFilter {
    pub filters: Weak<NwFilters>,
    pub uuid: uuid::Uuid,
}

#[zbus::interface(name = "org.libvirt.NWFilter")]
impl NWFilter {
    #[zbus(name = "GetXMLDesc")]
    async fn get_xml_desc(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<String, BusError> {
        common::access::check(&hdr).await?;
        check_flags(flags, 0)?;
        Ok(get(&self.filters)?
            .by_uuid(&self.uuid.to_string())?
            .to_xml())
    }

    async fn undefine(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        Ok(get(&self.filters)?.undefine(&self.uuid).await?)
    }

    #[zbus(property(emits_changed_signal = "const"))]
    async fn name(&self) -> String {
        get(&self.filters)
            .ok()
            .and_then(|f| f.by_uuid(&self.uuid.to_string()).ok())
            .map(|f| f.name)
            .unwrap_or_default()
    }

    #[zbus(property(emits_changed_signal = "const"), name = "UUID")]
    async fn uuid(&self) -> String {
        self.uuid.to_string()
    }
}

pub struct NWFilterBinding {
    pub filters: Weak<NwFilters>,
    pub portdev: String,
}

#[zbus::interface(name = "org.libvirt.NWFilterBinding")]
impl NWFilterBinding {
    #[zbus(name = "GetXMLDesc")]
    async fn get_xml_desc(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<String, BusError> {
        common::access::check(&hdr).await?;
        check_flags(flags, 0)?;
        Ok(get(&self.filters)?.binding(&self.portdev)?.to_xml())
    }

    async fn delete(&self, #[zbus(header)] hdr: zbus::message::Header<'_>) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        Ok(get(&self.filters)?.unbind(&self.portdev).await?)
    }

    #[zbus(property(emits_changed_signal = "const"))]
    async fn port_dev(&self) -> String {
        self.portdev.clone()
    }

    #[zbus(property(emits_changed_signal = "const"))]
    async fn filter_name(&self) -> String {
        get(&self.filters)
            .ok()
            .and_then(|f| f.binding(&self.portdev).ok())
            .map(|b| b.filter.filter)
            .unwrap_or_default()
    }
}
