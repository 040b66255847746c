//! `org.libvirt.NetworkPort`: this project's addition (libvirt's virNetworkPort API in
//! libvirt-dbus's style).

use std::sync::Weak;

use common::error::{check_flags, BusError};
use uuid::Uuid;
use zbus::zvariant::OwnedObjectPath;

use super::upgrade;
use crate::driver::Driver;

pub struct NetworkPort {
    pub driver: Weak<Driver>,
    pub uuid: Uuid,
}

#[zbus::interface(name = "org.libvirt.NetworkPort")]
impl NetworkPort {
    #[zbus(name = "GetXMLDesc")]
    async fn get_xml_desc(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<String, BusError> {
        common::access::check(&hdr).await?;
        check_flags(flags, 0)?;
        let d = upgrade(&self.driver)?;
        let (_, p) = d.find_port(&self.uuid)?;
        Ok(p.to_xml())
    }

    async fn delete(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        check_flags(flags, 0)?;
        let d = upgrade(&self.driver)?;
        let (n, _) = d.find_port(&self.uuid)?;
        Ok(d.port_delete(&n, &self.uuid).await?)
    }

    #[zbus(property, name = "UUID")]
    async fn uuid(&self) -> String {
        self.uuid.to_string()
    }

    #[zbus(property)]
    async fn network(&self) -> OwnedObjectPath {
        match upgrade(&self.driver) {
            Ok(d) => match d.find_port(&self.uuid) {
                Ok((n, _)) => common::objpath::network(&n.uuid),
                Err(_) => common::objpath::connect(),
            },
            Err(_) => common::objpath::connect(),
        }
    }
}
