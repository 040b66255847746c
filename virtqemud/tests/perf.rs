//! libvirt's perf events on real QEMU: `<perf>` opens counters at start, SetPerfEvents
//! switches them live and in the config, GetStats reads `perf.*`, and a daemon killed
//! with -9 opens them again. Only the kernel's software events are used: the hardware
//! ones need a PMU these virtual machines do not give.

use std::collections::HashMap;
use std::time::Duration;

use zbus::zvariant::Value;

mod support;
use support::{bus_err, domain};

const BIN: &str = env!("CARGO_BIN_EXE_virtqemud");
const LIVE: u32 = 1;
const CONFIG: u32 = 2;
const PERF: u32 = 64;

fn on(events: &common::typed_params::TypedParams) -> Vec<String> {
    let mut v: Vec<String> = events
        .iter()
        .filter(|(_, v)| bool::try_from(*v).unwrap_or(false))
        .map(|(k, _)| k.clone())
        .collect();
    v.sort();
    v
}

fn counter(stats: &common::typed_params::TypedParams, name: &str) -> Option<u64> {
    stats
        .get(&format!("perf.{name}"))
        .and_then(|v| u64::try_from(v).ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn perf_events_are_counted_switched_and_reopened() {
    let mut q = support::qemud(BIN).await;
    let xml = "<domain type='qemu'><name>perf</name><memory unit='MiB'>64</memory>\
               <os><type arch='x86_64' machine='pc'>hvm</type></os>\
               <perf><event name='task_clock' enabled='yes'/><event name='cpu_cycles' enabled='no'/></perf>\
               </domain>";
    let path = q.qc.domain_define_xml(xml).await.expect("define");
    let d = domain(&q.conn, &path).await;
    let events = d.get_perf_events(0).await.expect("config events");
    assert_eq!(on(&events), vec!["task_clock"]);
    assert!(events.contains_key("page_faults") && events.contains_key("cmt"));

    d.create(0).await.expect("create");
    assert_eq!(
        on(&d.get_perf_events(LIVE).await.expect("live")),
        vec!["task_clock"]
    );
    let first = counter(&d.get_stats(PERF, 0).await.expect("stats"), "task_clock")
        .expect("perf.task_clock");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let later = counter(&d.get_stats(PERF, 0).await.expect("stats"), "task_clock")
        .expect("perf.task_clock");
    assert!(
        later > first,
        "QEMU's main thread ran: {first} then {later}"
    );

    // Live only: page faults on, the task clock off; the config keeps its own.
    let set: HashMap<&str, Value> = [
        ("page_faults", Value::from(true)),
        ("task_clock", Value::from(false)),
    ]
    .into();
    d.set_perf_events(&set, LIVE).await.expect("set live");
    let stats = d.get_stats(PERF, 0).await.expect("stats");
    assert!(counter(&stats, "page_faults").is_some(), "{stats:?}");
    assert!(counter(&stats, "task_clock").is_none(), "{stats:?}");
    let live = d.get_xml_desc(0).await.expect("xml");
    assert!(
        live.contains("<event name='page_faults' enabled='yes'/>"),
        "{live}"
    );
    assert_eq!(
        on(&d.get_perf_events(CONFIG).await.expect("config")),
        vec!["task_clock"]
    );

    // Bad requests change nothing.
    for (k, v, says) in [
        ("cmt", Value::from(true), "'cmt'"),
        (
            "warp_drive",
            Value::from(true),
            "parameter 'warp_drive' not supported",
        ),
        ("page_faults", Value::from(1u32), "must be a boolean"),
    ] {
        let m: HashMap<&str, Value> = [(k, v)].into();
        let e = bus_err(d.set_perf_events(&m, LIVE).await);
        assert!(e.contains(says), "{k}: {e}");
    }
    assert_eq!(
        on(&d.get_perf_events(LIVE).await.expect("live")),
        vec!["page_faults"]
    );
    let e = bus_err(d.get_perf_events(8).await);
    assert!(e.contains("unsupported flags"), "{e}");

    // kill -9: the restarted daemon opens the live definition's counters again.
    q.daemon.kill9();
    q.daemon = q
        .daemon
        .restart_builder()
        .spawn(&q.bus)
        .await
        .expect("restart");
    let d = domain(&q.conn, &path).await;
    assert_eq!(
        on(&d.get_perf_events(LIVE).await.expect("live")),
        vec!["page_faults"]
    );
    assert!(counter(&d.get_stats(PERF, 0).await.expect("stats"), "page_faults").is_some());

    // The config's change comes with the next start.
    let set: HashMap<&str, Value> = [("context_switches", Value::from(true))].into();
    d.set_perf_events(&set, CONFIG).await.expect("set config");
    d.destroy(0).await.expect("destroy");
    let e = bus_err(d.set_perf_events(&set, LIVE).await);
    assert!(e.contains("not running"), "{e}");
    d.create(0).await.expect("create again");
    assert_eq!(
        on(&d.get_perf_events(LIVE).await.expect("live")),
        vec!["context_switches", "task_clock"]
    );
    d.destroy(0).await.expect("destroy");

    // A definition naming an event libvirt does not know is refused by name.
    let e = bus_err(
        q.qc.domain_define_xml(&xml.replace("cpu_cycles", "cpu_warp"))
            .await,
    );
    assert!(e.contains("cpu_warp"), "{e}");
}
