//! virtnetworkd's part of `org.libvirt.Connect` at `/org/libvirt/QEMU`.

use std::sync::Weak;

use common::connect as base;
use common::error::{check_flags, flags as read_flags, BusError, VirError};
use zbus::zvariant::{ObjectPath, OwnedObjectPath};

use super::upgrade;
use crate::driver::{Driver, NetError};

pub struct Connect {
    pub driver: Weak<Driver>,
}

bitflags::bitflags! {
    /// `virConnectListAllNetworksFlags`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct ListFlags: u32 {
        const INACTIVE = 1;
        const ACTIVE = 2;
        const PERSISTENT = 4;
        const TRANSIENT = 8;
        const AUTOSTART = 16;
        const NO_AUTOSTART = 32;
    }
}

/// A pair filters only when exactly one of its two bits is set.
fn keep(flags: ListFlags, yes: ListFlags, no: ListFlags, v: bool) -> bool {
    let f = flags & (yes | no);
    f.is_empty() || f == (yes | no) || (v && f == yes) || (!v && f == no)
}

#[zbus::interface(name = "org.libvirt.Connect")]
impl Connect {
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

    async fn list_networks(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<Vec<OwnedObjectPath>, BusError> {
        common::access::check(&hdr).await?;
        let flags: ListFlags = read_flags(flags)?;
        let d = upgrade(&self.driver)?;
        let mut out = Vec::new();
        for o in d.list() {
            let st = o.state();
            if keep(
                flags,
                ListFlags::ACTIVE,
                ListFlags::INACTIVE,
                st.live.is_some(),
            ) && keep(
                flags,
                ListFlags::PERSISTENT,
                ListFlags::TRANSIENT,
                st.persistent,
            ) && keep(
                flags,
                ListFlags::AUTOSTART,
                ListFlags::NO_AUTOSTART,
                st.autostart,
            ) {
                out.push(common::objpath::network(&o.uuid));
            }
        }
        Ok(out)
    }

    #[zbus(name = "NetworkCreateXML")]
    async fn network_create_xml(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        xml: String,
    ) -> Result<OwnedObjectPath, BusError> {
        common::access::check(&hdr).await?;
        let d = upgrade(&self.driver)?;
        let o = d.create_xml(&xml).await?;
        Ok(common::objpath::network(&o.uuid))
    }

    #[zbus(name = "NetworkDefineXML")]
    async fn network_define_xml(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        xml: String,
    ) -> Result<OwnedObjectPath, BusError> {
        common::access::check(&hdr).await?;
        let d = upgrade(&self.driver)?;
        let o = d.define(&xml).await?;
        Ok(common::objpath::network(&o.uuid))
    }

    async fn network_lookup_by_name(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        name: String,
    ) -> Result<OwnedObjectPath, BusError> {
        common::access::check(&hdr).await?;
        let d = upgrade(&self.driver)?;
        Ok(common::objpath::network(&d.by_name(&name)?.uuid))
    }

    #[zbus(name = "NetworkLookupByUUID")]
    async fn network_lookup_by_uuid(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        uuid: String,
    ) -> Result<OwnedObjectPath, BusError> {
        common::access::check(&hdr).await?;
        let d = upgrade(&self.driver)?;
        let u = uuid::Uuid::parse_str(&uuid)
            .map_err(|_| VirError::from(NetError::NoNetwork(format!("uuid '{uuid}'"))))?;
        Ok(common::objpath::network(&d.by_uuid(&u)?.uuid))
    }

    /// `virConnectListAllInterfacesFlags`: INACTIVE 1, ACTIVE 2.
    async fn list_interfaces(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<Vec<OwnedObjectPath>, BusError> {
        common::access::check(&hdr).await?;
        check_flags(flags, 3)?;
        let d = upgrade(&self.driver)?;
        let (inactive, active) = (flags & 1 != 0, flags & 2 != 0);
        Ok(d.ifaces
            .list()
            .await?
            .into_iter()
            .filter(|(_, up)| inactive == active || (*up && active) || (!*up && inactive))
            .map(|(n, _)| common::objpath::interface(&n))
            .collect())
    }

    #[zbus(name = "InterfaceDefineXML")]
    async fn interface_define_xml(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        xml: String,
        flags: u32,
    ) -> Result<OwnedObjectPath, BusError> {
        common::access::check(&hdr).await?;
        // VIR_INTERFACE_DEFINE_VALIDATE (1): the document is checked either way.
        check_flags(flags, 1)?;
        let d = upgrade(&self.driver)?;
        Ok(common::objpath::interface(&d.ifaces.define(&xml).await?))
    }

    async fn interface_lookup_by_name(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        name: String,
    ) -> Result<OwnedObjectPath, BusError> {
        common::access::check(&hdr).await?;
        let d = upgrade(&self.driver)?;
        Ok(common::objpath::interface(&d.ifaces.by_name(&name).await?))
    }

    #[zbus(name = "InterfaceLookupByMAC")]
    async fn interface_lookup_by_mac(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        mac: String,
    ) -> Result<OwnedObjectPath, BusError> {
        common::access::check(&hdr).await?;
        let d = upgrade(&self.driver)?;
        Ok(common::objpath::interface(&d.ifaces.by_mac(&mac).await?))
    }

    async fn interface_change_begin(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        check_flags(flags, 0)?;
        Ok(upgrade(&self.driver)?.ifaces.change_begin().await?)
    }

    async fn interface_change_commit(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        check_flags(flags, 0)?;
        Ok(upgrade(&self.driver)?.ifaces.change_commit().await?)
    }

    async fn interface_change_rollback(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        check_flags(flags, 0)?;
        Ok(upgrade(&self.driver)?.ifaces.change_rollback().await?)
    }

    #[zbus(name = "ListNWFilters")]
    async fn list_nwfilters(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<Vec<OwnedObjectPath>, BusError> {
        common::access::check(&hdr).await?;
        check_flags(flags, 0)?;
        let d = upgrade(&self.driver)?;
        Ok(d.nwfilters
            .list()
            .iter()
            .map(common::objpath::nwfilter)
            .collect())
    }

    #[zbus(name = "NWFilterDefineXML")]
    async fn nwfilter_define_xml(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        xml: String,
    ) -> Result<OwnedObjectPath, BusError> {
        common::access::check(&hdr).await?;
        let d = upgrade(&self.driver)?;
        Ok(common::objpath::nwfilter(&d.nwfilters.define(&xml).await?))
    }

    #[zbus(name = "NWFilterLookupByName")]
    async fn nwfilter_lookup_by_name(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        name: String,
    ) -> Result<OwnedObjectPath, BusError> {
        common::access::check(&hdr).await?;
        let d = upgrade(&self.driver)?;
        Ok(common::objpath::nwfilter(&d.nwfilters.by_name(&name)?))
    }

    #[zbus(name = "NWFilterLookupByUUID")]
    async fn nwfilter_lookup_by_uuid(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        uuid: String,
    ) -> Result<OwnedObjectPath, BusError> {
        common::access::check(&hdr).await?;
        let d = upgrade(&self.driver)?;
        Ok(common::objpath::nwfilter(&d.nwfilters.by_uuid(&uuid)?.uuid))
    }

    /// libvirt's virNWFilterBindingCreateXML: virtqemud binds a NIC's filter to its tap.
    #[zbus(name = "NWFilterBindingCreateXML")]
    async fn nwfilter_binding_create_xml(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        xml: String,
        flags: u32,
    ) -> Result<OwnedObjectPath, BusError> {
        common::access::check(&hdr).await?;
        // VIR_NWFILTER_BINDING_CREATE_VALIDATE (1): the document is checked either way.
        check_flags(flags, 1)?;
        let d = upgrade(&self.driver)?;
        Ok(common::objpath::nwfilter_binding(
            &d.nwfilters.bind(&xml).await?,
        ))
    }

    #[zbus(name = "ListNWFilterBindings")]
    async fn list_nwfilter_bindings(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        flags: u32,
    ) -> Result<Vec<OwnedObjectPath>, BusError> {
        common::access::check(&hdr).await?;
        check_flags(flags, 0)?;
        let d = upgrade(&self.driver)?;
        Ok(d.nwfilters
            .bindings()
            .iter()
            .map(|t| common::objpath::nwfilter_binding(t))
            .collect())
    }

    #[zbus(name = "NWFilterBindingLookupByPortDev")]
    async fn nwfilter_binding_lookup_by_port_dev(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        name: String,
    ) -> Result<OwnedObjectPath, BusError> {
        common::access::check(&hdr).await?;
        let d = upgrade(&self.driver)?;
        d.nwfilters.binding(&name)?;
        Ok(common::objpath::nwfilter_binding(&name))
    }

    /// Lifecycle events (virNetworkEventLifecycleType), emitted by `dbus::Bus`.
    #[zbus(signal)]
    pub async fn network_event(
        emitter: &zbus::object_server::SignalEmitter<'_>,
        network: ObjectPath<'_>,
        event: i32,
    ) -> zbus::Result<()>;
}
