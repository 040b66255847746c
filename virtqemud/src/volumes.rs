//! `<disk type='volume'>` at start: virtstoraged resolves pool + volume into the path
//! QEMU opens (`StoragePoolLookupByName` → `Active` → `StorageVolLookupByName` → `Path`
//! and the `<format>` of the volume's XML). The definition keeps `type='volume'`.

use std::path::PathBuf;

use common::cli::Mode;
use common::error::VirError;
use common::proxies::storage::{StorageConnectProxy, StoragePoolProxy, StorageVolProxy};
use zbus::proxy::CacheProperties;

use crate::xml::{DiskSource, Domain};

fn remote(what: &str, e: zbus::Error) -> VirError {
    VirError::from_remote(&e).unwrap_or_else(|| {
        VirError::operation_failed(format!("{what}: virtstoraged did not answer: {e}"))
    })
}

/// (pool, volume, path) of every volume disk of `dom`, for the command line; a volume
/// disk without a driver format gets the volume's (raw or qcow2) in `dom`.
pub async fn resolve(
    dom: &mut Domain,
    mode: Mode,
) -> Result<Vec<(String, String, PathBuf)>, VirError> {
    let mut out = Vec::new();
    for disk in dom.devices.disks.iter_mut() {
        let Some(DiskSource::Volume { pool, volume }) = &disk.source else {
            continue;
        };
        let conn = crate::nics::bus(mode).await?;
        let c = StorageConnectProxy::new(&conn)
            .await
            .map_err(|e| remote("storage", e))?;
        let pp = c
            .storage_pool_lookup_by_name(pool)
            .await
            .map_err(|e| remote("storage pool lookup", e))?;
        let p = StoragePoolProxy::builder(&conn)
            .path(pp)
            .map(|b| b.cache_properties(CacheProperties::No))
            .map_err(|e| remote("storage pool", e))?
            .build()
            .await
            .map_err(|e| remote("storage pool", e))?;
        if !p.active().await.map_err(|e| remote("storage pool", e))? {
            return Err(VirError::operation_invalid(format!(
                "storage pool '{pool}' containing volume '{volume}' is not active"
            )));
        }
        let vp = p
            .storage_vol_lookup_by_name(volume)
            .await
            .map_err(|e| remote("storage volume lookup", e))?;
        let v = StorageVolProxy::builder(&conn)
            .path(vp)
            .map(|b| b.cache_properties(CacheProperties::No))
            .map_err(|e| remote("storage volume", e))?
            .build()
            .await
            .map_err(|e| remote("storage volume", e))?;
        let path = v.path().await.map_err(|e| remote("storage volume", e))?;
        let xml = v
            .get_xml_desc(0)
            .await
            .map_err(|e| remote("storage volume", e))?;
        let format = common::xml::parse_root(&xml, "volume").ok().and_then(|r| {
            r.first("target")
                .and_then(|t| t.first("format"))
                .and_then(|f| f.get_attr("type"))
                .map(str::to_owned)
        });
        if disk.driver.format.is_none() {
            disk.driver.format = format.filter(|f| f == "raw" || f == "qcow2");
        }
        out.push((pool.clone(), volume.clone(), PathBuf::from(path)));
    }
    Ok(out)
}
