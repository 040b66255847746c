//! Network filter figures (printed, never asserted), inside a test network namespace:
//! binding clean-traffic to taps one by one (each bind rebuilds the whole table in one
//! nft transaction), the redefinition of a filter every binding uses, and unbinding.
//! `cargo bench -p virtnetworkd --bench nwfilter` (VIRT_BENCH_TAPS sets how many).

use std::time::{Duration, Instant};

use common::harness::{Daemon, NetNs, TestBus, TestDirs};
use common::proxies::network::{NWFilterBindingsProxy, NetworkConnectProxy};

const BIN: &str = env!("CARGO_BIN_EXE_virtnetworkd");

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn binding(tap: &str, n: usize) -> String {
    format!(
        "<filterbinding><owner><name>g{n}</name><uuid>06578fc1-2c30-4d94-a1ba-9ea3c2a3c1b0</uuid></owner>\
         <portdev name='{tap}'/><mac address='52:54:00:00:{:02x}:{:02x}'/>\
         <filterref filter='clean-traffic'><parameter name='IP' value='10.99.{}.{}'/></filterref>\
         </filterbinding>",
        n / 256,
        n % 256,
        n / 250,
        n % 250 + 2
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let taps: usize = std::env::var("VIRT_BENCH_TAPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let bus = TestBus::start()?;
    let ns = NetNs::new()?;
    let _daemon = Daemon::builder(BIN, "virtnetworkd")
        .netns(&ns)
        .dirs(TestDirs::new()?)
        .spawn(&bus)
        .await?;
    let conn = bus.connection().await?;
    let c = NetworkConnectProxy::new(&conn).await?;
    let b = NWFilterBindingsProxy::new(&conn).await?;
    for n in 0..taps {
        let (a, p) = (format!("bt{n}"), format!("bt{n}x"));
        ns.run_ok(&["ip", "link", "add", &a, "type", "veth", "peer", "name", &p])?;
    }
    let mut bind = Vec::new();
    for n in 0..taps {
        let t = Instant::now();
        b.nwfilter_binding_create_xml(&binding(&format!("bt{n}"), n), 0)
            .await?;
        bind.push(t.elapsed());
    }
    let last = bind.last().copied().unwrap_or_default();
    let listing = ns.run_ok(&["nft", "list", "table", "bridge", "libvirt_rs_nwfilter"])?;
    let rules = listing
        .lines()
        .filter(|l| {
            let l = l.trim();
            !l.is_empty() && !l.starts_with("chain") && !l.starts_with("type") && l != "}"
        })
        .count();
    let mut redefine = Vec::new();
    for i in 0..5 {
        let t = Instant::now();
        c.nw_filter_define_xml(&format!(
            "<filter name='no-other-l2-traffic' chain='root'>\
             <rule action='drop' direction='inout' priority='{}'/></filter>",
            1000 - i
        ))
        .await?;
        redefine.push(t.elapsed());
    }
    let t = Instant::now();
    for n in 0..taps {
        let p = b
            .nwfilter_binding_lookup_by_port_dev(&format!("bt{n}"))
            .await?;
        common::proxies::network::NWFilterBindingProxy::builder(&conn)
            .path(p)?
            .build()
            .await?
            .delete()
            .await?;
    }
    let unbind = t.elapsed();
    println!(
        "clean-traffic on {taps} taps: bind median {} (the {taps}th: {}), table then ~{rules} rules; \
         redefining a filter all use (rebuild of every binding) median of 5: {}; \
         unbinding all {taps}: {} ({} each)",
        ms(median(bind)),
        ms(last),
        ms(median(redefine)),
        ms(unbind),
        ms(unbind / taps.max(1) as u32)
    );
    Ok(())
}
