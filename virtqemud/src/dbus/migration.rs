//! `org.libvirt.virtqemud.Migration` on `/org/libvirt/QEMU`: the destination's half of a
//! peer-to-peer migration, called by the source's virtqemud (libvirt's
//! Prepare3/Finish3 of its remote protocol, which libvirt-dbus has no part of). The
//! members are this project's own (common/api/additions.tsv).

use std::sync::Arc;

use common::error::BusError;
use common::typed_params::TypedParams;
use futures_util::future::BoxFuture;

use crate::driver::Driver;

pub struct Migration {
    pub driver: Arc<Driver>,
}

/// Resolves when the bus name `who` has gone: the calling source daemon died or
/// closed its connection. None on a peer connection, which has no names to watch.
/// Asked once a second with NameHasOwner rather than by a NameOwnerChanged stream: a
/// match-rule stream on the daemon's bus connection stalled the connection in the
/// SIGSTOP test (`a_cut_finish_settles_to_one_place`), and a poll holds nothing.
async fn gone(conn: &zbus::Connection, who: Option<String>) -> Option<BoxFuture<'static, ()>> {
    let name = zbus::names::BusName::try_from(who?).ok()?.into_owned();
    let conn = conn.clone();
    Some(Box::pin(async move {
        let Ok(dbus) = zbus::fdo::DBusProxy::builder(&conn)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
        else {
            return;
        };
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            // An error (the bus itself gone) counts as gone too.
            if !dbus.name_has_owner(name.clone()).await.unwrap_or(false) {
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
