//! `<hostdev mode='subsystem' type='pci' managed='yes'>`: before QEMU starts, virtnodedevd
//! detaches the device from its host driver (`NodeDevice.Detach("vfio", 0)` on
//! `pci_DDDD_BB_SS_F`); after QEMU is gone, or when the start fails, `ReAttach` gives it
//! back. Unmanaged hostdevs are left as the administrator prepared them.

use common::cli::Mode;
use common::error::VirError;
use common::proxies::nodedev::NodeDeviceProxy;
use zbus::proxy::CacheProperties;

use crate::xml::Domain;

fn remote(what: &str, e: zbus::Error) -> VirError {
    VirError::from_remote(&e).unwrap_or_else(|| {
        VirError::operation_failed(format!("{what}: virtnodedevd did not answer: {e}"))
    })
}

/// libvirt's node device names of the managed PCI hostdevs of `dom`.
fn managed(dom: &Domain) -> Vec<String> {
    dom.devices
        .hostdevs
        .iter()
        .filter(|h| h.managed)
        .map(|h| {
            let a = &h.source;
            format!(
                "pci_{:04x}_{:02x}_{:02x}_{:x}",
                a.domain, a.bus, a.slot, a.function
            )
        })
        .collect()
}

/// Whether `dom` has host devices the daemon detaches for a run.
pub fn any_managed(dom: &Domain) -> bool {
    dom.devices.hostdevs.iter().any(|h| h.managed)
}

async fn device<'a>(conn: &zbus::Connection, name: &str) -> zbus::Result<NodeDeviceProxy<'a>> {
    let path = common::proxies::nodedev::NodeDevConnectProxy::new(conn)
        .await?
        .node_device_lookup_by_name(name)
        .await?;
    NodeDeviceProxy::builder(conn)
        .path(path)?
        .cache_properties(CacheProperties::No)
        .build()
        .await
}

/// Detaches every managed hostdev; on failure the ones already detached are given back.
pub async fn detach(dom: &Domain, mode: Mode) -> Result<(), VirError> {
    let names = managed(dom);
    if names.is_empty() {
        return Ok(());
    }
    let conn = crate::nics::bus(mode).await?;
    let mut done: Vec<String> = Vec::new();
    for name in names {
        let r = match device(&conn, &name).await {
            Ok(d) => d.detach("vfio", 0).await,
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            reattach_names(&conn, &done).await;
            return Err(remote(&format!("detach of {name}"), e));
        }
        tracing::info!(device = %name, "hostdev detached");
        done.push(name);
    }
    Ok(())
}

async fn reattach_names(conn: &zbus::Connection, names: &[String]) {
    for name in names {
        let r = match device(conn, name).await {
            Ok(d) => d.re_attach().await,
            Err(e) => Err(e),
        };
        match r {
            Ok(()) => tracing::info!(device = %name, "hostdev given back to its host driver"),
            Err(e) => tracing::warn!(device = %name, "hostdev not reattached: {e}"),
        }
    }
}

/// Gives every managed hostdev of `dom` back to its host driver (stop, failed start).
pub async fn reattach(dom: &Domain, mode: Mode) {
    let names = managed(dom);
    if names.is_empty() {
        return;
    }
    match crate::nics::bus(mode).await {
        Ok(conn) => reattach_names(&conn, &names).await,
        Err(e) => tracing::warn!("hostdevs not reattached: {e}"),
    }
}
