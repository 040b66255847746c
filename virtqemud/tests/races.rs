//! Races on objects, through the public D-Bus API: a path is never handed out before
//! its object is served, and concurrent calls on one domain succeed exactly once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

mod support;

use support::{domain, qemud};

const BIN: &str = env!("CARGO_BIN_EXE_virtqemud");

fn xml(name: &str) -> String {
    format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>\
         <vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os></domain>"
    )
}

/// While domains are being defined, every path ListDomains returns answers at once
/// (no UnknownObject for an object not yet served).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listed_paths_are_always_served() {
    let q = qemud(BIN).await;
    let done = Arc::new(AtomicBool::new(false));
    let definer = {
        let qc = q.qc.clone();
        let done = done.clone();
        tokio::spawn(async move {
            for i in 0..200 {
                qc.domain_define_xml(&xml(&format!("race{i}")))
                    .await
                    .expect("define");
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    let mut checked = 0usize;
    while !done.load(Ordering::SeqCst) {
        let paths = q.qc.list_domains(0).await.expect("list");
        if let Some(newest) = paths.last() {
            let d = domain(&q.conn, newest).await;
            let name = d.name().await;
            assert!(name.is_ok(), "{newest} listed but not served: {name:?}");
            checked += 1;
        }
        for p in paths.iter().rev().take(3) {
            let d = domain(&q.conn, p).await;
            assert!(d.uuid().await.is_ok(), "{p} listed but not served");
        }
    }
    definer.await.expect("definer");
    assert!(checked > 0, "the race was never exercised");
    assert_eq!(q.qc.list_domains(0).await.expect("list").len(), 200);
}

/// Twenty concurrent Undefine calls on one domain: exactly one succeeds, the others
/// get libvirt's error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_undefine_succeeds_once() {
    let q = qemud(BIN).await;
    let path = q.qc.domain_define_xml(&xml("once")).await.expect("define");
    let d = domain(&q.conn, &path).await;
    let calls = (0..20).map(|_| {
        let d = d.clone();
        async move { d.undefine(0).await }
    });
    let results = futures_util::future::join_all(calls).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(ok, 1, "{results:?}");
    for r in results.iter().filter(|r| r.is_err()) {
        let e = format!("{r:?}");
        assert!(
            e.contains("Domain not found") || e.contains("UnknownObject"),
            "unexpected error: {e}"
        );
    }
}
