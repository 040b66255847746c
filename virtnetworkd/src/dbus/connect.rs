//! virtnetworkd's part of `org.libvirt.Connect` at `/org/libvirt/QEMU`.

use std::sync::Weak;

use common::connect as base;
use common::error::{check_flags, BusError, VirError};
use zbus::zvariant::{ObjectPath, OwnedObjectPath};

use super::upgrade;
use crate::driver::{Driver, NetError};

pub struct Connect {
    pub driver: Weak<Driver>,
}

/// virConnectListAllNetworksFlags.
const LIST_INACTIVE: u32 = 1;
const LIST_ACTIVE: u32 = 2;
const LIST_PERSISTENT: u32 = 4;
const LIST_TRANSIENT: u32 = 8;
const LIST_AUTOSTART: u32 = 16;
const LIST_NO_AUTOSTART: u32 = 32;

fn keep(flags: u32, yes: u32, no: u32, v: bool) -> bool {
    let f = flags & (yes | no);
    f == 0 || f == (yes | no) || (v && f == yes) || (!v && f == no)
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

    async fn list_networks(&self, flags: u32) -> Result<Vec<OwnedObjectPath>, BusError> {
        check_flags(flags, 63)?;
        let d = upgrade(&self.driver)?;
        let mut out = Vec::new();
        for o in d.list() {
            let st = o.state();
            if keep(flags, LIST_ACTIVE, LIST_INACTIVE, st.live.is_some())
                && keep(flags, LIST_PERSISTENT, LIST_TRANSIENT, st.persistent)
                && keep(flags, LIST_AUTOSTART, LIST_NO_AUTOSTART, st.autostart)
            {
                out.push(common::objpath::network(&o.uuid));
            }
        }
        Ok(out)
    }

    #[zbus(name = "NetworkCreateXML")]
    async fn network_create_xml(&self, xml: String) -> Result<OwnedObjectPath, BusError> {
        let d = upgrade(&self.driver)?;
        let o = d.create_xml(&xml).await?;
        Ok(common::objpath::network(&o.uuid))
    }

    #[zbus(name = "NetworkDefineXML")]
    async fn network_define_xml(&self, xml: String) -> Result<OwnedObjectPath, BusError> {
        let d = upgrade(&self.driver)?;
        let o = d.define(&xml).await?;
        Ok(common::objpath::network(&o.uuid))
    }

    async fn network_lookup_by_name(&self, name: String) -> Result<OwnedObjectPath, BusError> {
        let d = upgrade(&self.driver)?;
        Ok(common::objpath::network(&d.by_name(&name)?.uuid))
    }

    #[zbus(name = "NetworkLookupByUUID")]
    async fn network_lookup_by_uuid(&self, uuid: String) -> Result<OwnedObjectPath, BusError> {
        let d = upgrade(&self.driver)?;
        let u = uuid::Uuid::parse_str(&uuid)
            .map_err(|_| VirError::from(NetError::NoNetwork(format!("uuid '{uuid}'"))))?;
        Ok(common::objpath::network(&d.by_uuid(&u)?.uuid))
    }

    /// Lifecycle events (virNetworkEventLifecycleType), emitted by `dbus::Bus`.
    #[zbus(signal)]
    pub async fn network_event(
        emitter: &zbus::object_server::SignalEmitter<'_>,
        network: ObjectPath<'_>,
        event: i32,
    ) -> zbus::Result<()>;
}
