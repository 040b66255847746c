//! Racing calls on one object: 20 concurrent Undefine, Delete or Destroy succeed
//! exactly once; the others get libvirt's error (or, once the object is off the bus,
//! D-Bus's UnknownObject).

use common::harness::{Daemon, TestBus};
use common::proxies::storage::{StorageConnectProxy, StorageVolProxy};
use zbus::proxy::CacheProperties;

mod support;

const BIN: &str = env!("CARGO_BIN_EXE_virtstoraged");
const N: usize = 20;

/// Exactly one `Ok`; every error's text contains `want` (libvirt's error), or, for
/// a call that reached the daemon after the winner had taken the object off the bus,
/// is D-Bus's UnknownObject (what any call on a removed object gets; `removed` says
/// whether that can happen). Prints how the losers were answered.
fn exactly_once(results: Vec<zbus::Result<()>>, want: &str, removed: bool) -> anyhow::Result<()> {
    let ok = results.iter().filter(|r| r.is_ok()).count();
    anyhow::ensure!(ok == 1, "{ok} of {N} calls succeeded");
    let (mut libvirt, mut unknown) = (0, 0);
    for r in results {
        match r {
            Ok(()) => {}
            Err(e) if e.to_string().contains(want) => libvirt += 1,
            Err(zbus::Error::MethodError(name, _, _))
                if removed && name.as_str() == "org.freedesktop.DBus.Error.UnknownObject" =>
            {
                unknown += 1
            }
            Err(e) => anyhow::bail!("unexpected error: {e}"),
        }
    }
    println!("1 success, {libvirt} libvirt errors, {unknown} UnknownObject (object already gone)");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn racing_calls_succeed_exactly_once() -> anyhow::Result<()> {
    let bus = TestBus::start()?;
    let daemon = Daemon::builder(BIN, "virtstoraged").spawn(&bus).await?;
    let c = bus.connection().await?;
    let conn = StorageConnectProxy::new(&c).await?;
    let pool_xml = |name: &str| {
        format!(
            "<pool type='dir'><name>{name}</name><target><path>{}</path></target></pool>",
            daemon.dirs.root.path().join(name).display()
        )
    };

    // Undefine of a defined, inactive pool.
    let p = conn.storage_pool_define_xml(&pool_xml("u"), 0).await?;
    let pp = support::pool_proxy(&c, &p).await?;
    let uuid = pp.uuid().await?;
    let calls = (0..N).map(|_| pp.undefine());
    let results = futures_util::future::join_all(calls).await;
    exactly_once(
        results,
        &format!("Storage pool not found: no storage pool with matching uuid '{uuid}'"),
        true,
    )?;
    assert!(conn.list_storage_pools(0).await?.is_empty());

    // Delete of one volume.
    let p = conn.storage_pool_define_xml(&pool_xml("d"), 0).await?;
    let pp = support::pool_proxy(&c, &p).await?;
    pp.build(0).await?;
    pp.create(0).await?;
    let v = pp
        .storage_vol_create_xml(
            "<volume><name>v.img</name><capacity unit='M'>1</capacity></volume>",
            0,
        )
        .await?;
    let vv = StorageVolProxy::builder(&c)
        .path(v.clone())?
        .cache_properties(CacheProperties::No)
        .build()
        .await?;
    let calls = (0..N).map(|_| vv.delete(0));
    let results = futures_util::future::join_all(calls).await;
    exactly_once(
        results,
        "Storage volume not found: no storage vol with matching key",
        true,
    )?;
    assert!(pp.list_storage_volumes(0).await?.is_empty());

    // Destroy of one active (persistent) pool.
    let calls = (0..N).map(|_| pp.destroy());
    let results = futures_util::future::join_all(calls).await;
    exactly_once(
        results,
        "Requested operation is not valid: storage pool 'd' is not active",
        false,
    )?;
    assert!(!pp.active().await?);
    Ok(())
}

/// While pools are being defined (each definition is written to disk before its reply),
/// every path ListStoragePools returns answers at once: no UnknownObject for a pool
/// not yet served.
#[tokio::test(flavor = "multi_thread")]
async fn listed_pools_are_always_served() -> anyhow::Result<()> {
    let bus = TestBus::start()?;
    let daemon = Daemon::builder(BIN, "virtstoraged").spawn(&bus).await?;
    let c = bus.connection().await?;
    let conn = StorageConnectProxy::new(&c).await?;
    let root = daemon.dirs.root.path().to_owned();
    let definer = {
        let conn = conn.clone();
        tokio::spawn(async move {
            for i in 0..60 {
                let xml = format!(
                    "<pool type='dir'><name>race{i}</name><target><path>{}</path>\
                     </target></pool>",
                    root.join(format!("race{i}")).display()
                );
                conn.storage_pool_define_xml(&xml, 0).await?;
            }
            anyhow::Ok(())
        })
    };
    let mut seen = std::collections::BTreeSet::new();
    while !definer.is_finished() {
        for p in conn.list_storage_pools(0).await? {
            if seen.insert(p.to_string()) {
                let name = common::proxies::storage::StoragePoolProxy::builder(&c)
                    .path(p.clone())?
                    .cache_properties(CacheProperties::No)
                    .build()
                    .await?
                    .name()
                    .await;
                anyhow::ensure!(name.is_ok(), "{p} listed but not served: {name:?}");
            }
        }
    }
    definer.await??;
    anyhow::ensure!(!seen.is_empty(), "the race was never exercised");
    anyhow::ensure!(conn.list_storage_pools(0).await?.len() == 60);
    Ok(())
}

/// Autostart is set under the pool's job, like every other change of the pool: an
/// Undefine racing a SetAutostart(true) either comes first (the setter then finds no
/// pool) or second (and removes the link), never leaves an autostart link behind for
/// a pool that is gone.
#[tokio::test(flavor = "multi_thread")]
async fn autostart_and_undefine_never_leave_a_stray_link() -> anyhow::Result<()> {
    let bus = TestBus::start()?;
    let daemon = Daemon::builder(BIN, "virtstoraged").spawn(&bus).await?;
    let c = bus.connection().await?;
    let conn = StorageConnectProxy::new(&c).await?;
    let link = daemon.dirs.config.join("storage/autostart/a.xml");
    let xml = format!(
        "<pool type='dir'><name>a</name><target><path>{}</path></target></pool>",
        daemon.dirs.root.path().join("a").display()
    );
    let (mut setter_first, mut undefine_first) = (0, 0);
    for round in 0..40u64 {
        let p = conn.storage_pool_define_xml(&xml, 0).await?;
        let pp = support::pool_proxy(&c, &p).await?;
        // Spread the setter over the Undefine's run (two fsyncs): sent before it,
        // right after it, or up to ~4 ms later.
        let set = async {
            match round % 3 {
                0 => {}
                1 => tokio::task::yield_now().await,
                _ => tokio::time::sleep(std::time::Duration::from_micros(round * 100)).await,
            }
            pp.set_autostart(true).await
        };
        let (set, undef) = tokio::join!(set, pp.undefine());
        undef?;
        match set {
            Ok(()) => setter_first += 1,
            // libvirt's error, or D-Bus's once the pool is off the bus.
            Err(e)
                if [
                    "no storage pool with matching uuid",
                    "cannot set autostart for transient storage pool",
                    "UnknownInterface",
                    "UnknownObject",
                ]
                .iter()
                .any(|w| e.to_string().contains(w)) =>
            {
                undefine_first += 1
            }
            Err(e) => anyhow::bail!("round {round}: unexpected error: {e}"),
        }
        anyhow::ensure!(
            !link.exists(),
            "round {round}: autostart link left for an undefined pool"
        );
    }
    println!("40 rounds: setter first {setter_first}, undefine first {undefine_first}");
    Ok(())
}
