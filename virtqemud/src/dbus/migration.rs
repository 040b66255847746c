//! `org.libvirt.virtqemud.Migration` on `/org/libvirt/QEMU`: the destination's half of a
//! peer-to-peer migration, called by the source's virtqemud (libvirt's
//! Prepare3/Finish3 of its remote protocol, which libvirt-dbus has no part of). The
//! members are this project's own (common/api/additions.tsv).

use std::sync::Arc;

use common::error::BusError;
use common::typed_params::TypedParams;
use futures_util::future::BoxFuture;
use futures_util::StreamExt;

use crate::driver::Driver;

pub struct Migration {
    pub driver: Arc<Driver>,
}

/// Resolves when the bus name `who` has gone: the calling source daemon died or
/// closed its connection. None on a peer connection, which has no names to watch.
async fn gone(conn: &zbus::Connection, who: Option<String>) -> Option<BoxFuture<'static, ()>> {
    let who = who?;
    let dbus = zbus::fdo::DBusProxy::new(conn).await.ok()?;
    let mut changes = dbus
        .receive_name_owner_changed_with_args(&[(0, who.as_str())])
        .await
        .ok()?;
    // Subscribed first, then checked: a source gone in between is not missed.
    let name = zbus::names::BusName::try_from(who.clone()).ok()?;
    let present = dbus.name_has_owner(name).await.unwrap_or(false);
    Some(Box::pin(async move {
        if !present {
            return;
        }
        while let Some(c) = changes.next().await {
            if c.args().is_ok_and(|a| a.new_owner.is_none()) {
                return;
            }
        }
    }))
}

#[zbus::interface(name = "org.libvirt.virtqemud.Migration")]
impl Migration {
    /// Starts the domain of `xml` waiting for the source's stream; the URI the
    /// source's QEMU sends to. `params`: libvirt's `migrate_uri`, `listen_address`,
    /// `persistent_xml`.
    #[zbus(name = "Prepare")]
    async fn prepare(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
        xml: &str,
        params: TypedParams,
        flags: u32,
    ) -> Result<String, BusError> {
        common::access::check(&hdr).await?;
        let caller = hdr.sender().map(|s| s.to_string());
        let watch = gone(conn, caller).await;
        Ok(self
            .driver
            .migrate_prepare(xml, &params, flags, watch)
            .await?)
    }

    /// Runs the migrated guest here, or with `cancelled` ends the incoming QEMU.
    #[zbus(name = "Finish")]
    async fn finish(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        uuid: &str,
        flags: u32,
        cancelled: bool,
    ) -> Result<(), BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.migrate_finish(uuid, flags, cancelled).await?)
    }

    /// Whether the guest `uuid` runs here (1) or not (0), for a source that lost track
    /// of a migration; an incoming QEMU that never got Finish is ended first.
    #[zbus(name = "Recover")]
    async fn recover(
        &self,
        #[zbus(header)] hdr: zbus::message::Header<'_>,
        uuid: &str,
    ) -> Result<i32, BusError> {
        common::access::check(&hdr).await?;
        Ok(self.driver.migrate_recover(uuid).await?)
    }
}
