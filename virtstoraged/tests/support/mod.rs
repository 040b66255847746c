//! Helpers shared by the pool tests that run on loop devices.

use std::time::Duration;

use common::proxies::storage::{StoragePoolEvent, StoragePoolProxy};
use futures_util::StreamExt;
use zbus::proxy::CacheProperties;
use zbus::zvariant::OwnedObjectPath;

/// The event numbers of the next `n` StoragePoolEvent signals (fewer if 10 s pass).
pub async fn events_n(
    s: &mut (impl futures_util::Stream<Item = StoragePoolEvent> + Unpin),
    n: usize,
) -> anyhow::Result<Vec<i32>> {
    let mut seen = Vec::new();
    while seen.len() < n {
        match tokio::time::timeout(Duration::from_secs(10), s.next()).await {
            Ok(Some(ev)) => seen.push(ev.args()?.event),
            _ => break,
        }
    }
    Ok(seen)
}

/// A pool proxy that reads properties afresh on every call.
pub async fn pool_proxy<'a>(
    c: &zbus::Connection,
    path: &OwnedObjectPath,
) -> anyhow::Result<StoragePoolProxy<'a>> {
    Ok(StoragePoolProxy::builder(c)
        .path(path.clone())?
        .cache_properties(CacheProperties::No)
        .build()
        .await?)
}
