//! `org.libvirt.Network`, plus this project's port methods (libvirt's
//! virNetworkPortCreateXML family, which libvirt-dbus 1.4 lacks).

use std::sync::{Arc, Weak};

use common::error::{check_flags, flags as read_flags, BusError, VirError};
use uuid::Uuid;
use zbus::zvariant::OwnedObjectPath;

use super::upgrade;
use crate::driver::{Driver, NetError, NetObj, UpdateFlags};

pub struct Network {
    pub driver: Weak<Driver>,
    pub uuid: Uuid,
}

impl Network {
    fn get(&self) -> Result<(Arc<Driver>, Arc<NetObj>), BusError> {
        let d = upgrade(&self.driver)?;
        let o = d.by_uuid(&self.uuid)?;
        Ok((d, o))
    }
}

bitflags::bitflags! {
    /// `virNetworkXMLFlags`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct XmlFlags: u32 {
        const INACTIVE = 1;
    }
}

#[zbus::interface(name = "org.libvirt.Network")]
impl Network {
    async fn create(&self, #[zbus(header)] hdr: zbus::message::Header<'_>) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        let (d, o) = self.get()?;
        Ok(d.create(&o).await?)
    }

    async fn destroy(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        let (d, o) = self.get()?;
        Ok(d.destroy(&o).await?)
    }

    async fn undefine(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        let (d, o) = self.get()?;
        Ok(d.undefine(&o).await?)
    }

    #[zbus(name = "GetXMLDesc")]
    async fn get_xml_desc(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<String, BusError> {
        common::access::check(&hdr).await?;
        let flags: XmlFlags = read_flags(flags)?;
        let (d, o) = self.get()?;
        Ok(d.xml_desc(&o, flags.contains(XmlFlags::INACTIVE)))
    }

    /// (iface, expirytime, type, mac, iaid, ipaddr, prefix, hostname, clientid)
    #[zbus(name = "GetDHCPLeases")]
    #[allow(clippy::type_complexity)]
    async fn get_dhcp_leases(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        mac: String,
        flags: u32,
    ) -> Result<
        Vec<(
            String,
            i64,
            i32,
            String,
            String,
            String,
            u32,
            String,
            String,
        )>,
        BusError,
    > {
        common::access::check(&hdr).await?;
        check_flags(flags, 0)?;
        let (d, o) = self.get()?;
        Ok(d.leases(&o, &mac)?
            .into_iter()
            .map(|(iface, l, prefix)| {
                let v6 = l.ip.is_ipv6();
                (
                    iface,
                    l.expiry,
                    i32::from(v6),
                    if v6 { String::new() } else { l.mac.clone() },
                    if v6 { l.mac } else { String::new() },
                    l.ip.to_string(),
                    u32::from(prefix),
                    l.hostname,
                    l.client_id,
                )
            })
            .collect())
    }

    async fn update(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        command: u32,
        section: u32,
        parent_index: i32,
        xml: String,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        let flags: UpdateFlags = read_flags(flags)?;
        let (d, o) = self.get()?;
        Ok(d.update(&o, command, section, parent_index, &xml, flags)
            .await?)
    }

    #[zbus(name = "PortCreateXML")]
    async fn port_create_xml(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        xml: String,
        flags: u32,
    ) -> Result<OwnedObjectPath, BusError> {
        common::access::check(&hdr).await?;
        check_flags(flags, 0)?;
        let (d, o) = self.get()?;
        let u = d.port_create(&o, &xml).await?;
        Ok(common::objpath::network_port(&u))
    }

    async fn list_ports(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<Vec<OwnedObjectPath>, BusError> {
        common::access::check(&hdr).await?;
        check_flags(flags, 0)?;
        let (_, o) = self.get()?;
        let st = o.state();
        Ok(st.ports.keys().map(common::objpath::network_port).collect())
    }

    #[zbus(name = "PortLookupByUUID")]
    async fn port_lookup_by_uuid(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        uuid: String,
    ) -> Result<OwnedObjectPath, BusError> {
        common::access::check(&hdr).await?;
        let (_, o) = self.get()?;
        let u =
            Uuid::parse_str(&uuid).map_err(|_| VirError::from(NetError::NoPort(uuid.clone())))?;
        if o.state().ports.contains_key(&u) {
            Ok(common::objpath::network_port(&u))
        } else {
            Err(VirError::from(NetError::NoPort(uuid)).into())
        }
    }

    #[zbus(property(emits_changed_signal = "const"))]
    async fn name(&self) -> String {
        self.get().map(|(_, o)| o.name.clone()).unwrap_or_default()
    }

    #[zbus(property(emits_changed_signal = "const"), name = "UUID")]
    async fn uuid(&self) -> String {
        self.uuid.to_string()
    }

    #[zbus(property(emits_changed_signal = "false"))]
    async fn active(&self) -> bool {
        match self.get() {
            Ok((_, o)) => o.state().live.is_some(),
            Err(_) => false,
        }
    }

    #[zbus(property(emits_changed_signal = "false"))]
    async fn persistent(&self) -> bool {
        match self.get() {
            Ok((_, o)) => o.state().persistent,
            Err(_) => false,
        }
    }

    #[zbus(property(emits_changed_signal = "false"))]
    async fn autostart(&self) -> bool {
        match self.get() {
            Ok((_, o)) => o.state().autostart,
            Err(_) => false,
        }
    }

    #[zbus(property)]
    async fn set_autostart(
        &self,
        #[zbus(header)] hdr: Option<zbus::message::Header<'_>>,
        value: bool,
    ) -> zbus::fdo::Result<()> {
        common::access::check_set(hdr.as_ref()).await?;
        let (d, o) = self
            .get()
            .map_err(|e| zbus::fdo::Error::Failed(format!("{e:?}")))?;
        d.set_autostart(&o, value)
            .await
            .map_err(|e| zbus::fdo::Error::Failed(VirError::from(e).message))
    }

    #[zbus(property)]
    async fn bridge_name(&self) -> String {
        match self.get() {
            Ok((_, o)) => {
                let st = o.state();
                st.live.as_ref().unwrap_or(&st.def).bridge_name().to_owned()
            }
            Err(_) => String::new(),
        }
    }
}
