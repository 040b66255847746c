//! Helpers shared by the storage integration tests.

#![allow(dead_code)]

use std::time::Duration;

use common::event::StoragePoolEvent;
use common::proxies::storage::{StoragePoolEvent as PoolEventSignal, StoragePoolProxy};
use futures_util::StreamExt;
use zbus::proxy::CacheProperties;
use zbus::zvariant::OwnedObjectPath;

/// The next `n` StoragePoolEvent signals, typed (fewer if 10 s pass).
pub async fn events_n(
    s: &mut (impl futures_util::Stream<Item = PoolEventSignal> + Unpin),
    n: usize,
) -> anyhow::Result<Vec<StoragePoolEvent>> {
    let mut seen = Vec::new();
    while seen.len() < n {
        match tokio::time::timeout(Duration::from_secs(10), s.next()).await {
            Ok(Some(ev)) => seen.push(typed(ev.args()?.event)?),
            _ => break,
        }
    }
    Ok(seen)
}

/// A StoragePoolEvent signal's number as its type; a number libvirt does not define
/// fails the test.
fn typed(event: i32) -> anyhow::Result<StoragePoolEvent> {
    StoragePoolEvent::from_wire(event)
        .ok_or_else(|| anyhow::anyhow!("StoragePoolEvent {event} is not libvirt's"))
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
