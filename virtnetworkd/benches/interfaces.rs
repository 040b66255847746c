//! Host interface figures (printed, never asserted), inside a test network namespace:
//! Create and Destroy of a defined bridge with two ports through D-Bus against the same
//! steps by hand with `ip`, and ListInterfaces / GetXMLDesc with 200 links present.

use std::time::{Duration, Instant};

use common::harness::{Daemon, NetNs, TestBus, TestDirs};
use common::proxies::network::{InterfaceProxy, NetworkConnectProxy};
use zbus::proxy::CacheProperties;

const BIN: &str = env!("CARGO_BIN_EXE_virtnetworkd");
const RUNS: usize = 20;

const BRIDGE: &str = "<interface type='bridge' name='bbr0'>
  <protocol family='ipv4'><ip address='10.91.0.1' prefix='24'/></protocol>
  <bridge stp='off'><interface type='ethernet' name='bp0'/><interface type='ethernet' name='bp1'/></bridge>
</interface>";

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

fn by_hand(ns: &NetNs) -> anyhow::Result<(Duration, Duration)> {
    let t = Instant::now();
    for argv in [
        &[
            "ip",
            "link",
            "add",
            "hbr0",
            "type",
            "bridge",
            "stp_state",
            "0",
        ][..],
        &["ip", "link", "set", "bp0", "master", "hbr0", "up"],
        &["ip", "link", "set", "bp1", "master", "hbr0", "up"],
        &["ip", "link", "set", "hbr0", "up"],
        &["ip", "addr", "add", "10.92.0.1/24", "dev", "hbr0"],
    ] {
        ns.run_ok(argv)?;
    }
    let up = t.elapsed();
    let t = Instant::now();
    for argv in [
        &["ip", "addr", "del", "10.92.0.1/24", "dev", "hbr0"][..],
        &["ip", "link", "del", "hbr0"],
        &["ip", "link", "set", "bp0", "down"],
        &["ip", "link", "set", "bp1", "down"],
    ] {
        ns.run_ok(argv)?;
    }
    Ok((up, t.elapsed()))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let bus = TestBus::start()?;
    let ns = NetNs::new()?;
    let _daemon = Daemon::builder(BIN, "virtnetworkd")
        .netns(&ns)
        .dirs(TestDirs::new()?)
        .spawn(&bus)
        .await?;
    let conn = bus.connection().await?;
    let c = NetworkConnectProxy::builder(&conn)
        .cache_properties(CacheProperties::No)
        .build()
        .await?;
    for p in ["bp0", "bp1"] {
        let peer = format!("{p}x");
        ns.run_ok(&[
            "ip", "link", "add", p, "type", "veth", "peer", "name", &peer,
        ])?;
    }
    let path = c.interface_define_xml(BRIDGE, 0).await?;
    let i = InterfaceProxy::builder(&conn)
        .path(path)?
        .cache_properties(CacheProperties::No)
        .build()
        .await?;
    let (mut create, mut destroy, mut hand_up, mut hand_down) = (vec![], vec![], vec![], vec![]);
    for _ in 0..RUNS {
        let t = Instant::now();
        i.create(0).await?;
        create.push(t.elapsed());
        let t = Instant::now();
        i.destroy(0).await?;
        destroy.push(t.elapsed());
        let (u, d) = by_hand(&ns)?;
        hand_up.push(u);
        hand_down.push(d);
    }
    println!(
        "bridge with 2 ports and an address, median of {RUNS}: Create {} (by hand with ip: {}), Destroy {} (by hand: {})",
        ms(median(create)),
        ms(median(hand_up)),
        ms(median(destroy)),
        ms(median(hand_down))
    );
    for n in 0..100 {
        let a = format!("l{n}");
        let b = format!("l{n}x");
        ns.run_ok(&["ip", "link", "add", &a, "type", "veth", "peer", "name", &b])?;
    }
    let (mut list, mut xml) = (vec![], vec![]);
    let mut count = 0;
    for _ in 0..RUNS {
        let t = Instant::now();
        count = c.list_interfaces(0).await?.len();
        list.push(t.elapsed());
        let t = Instant::now();
        i.get_xml_desc(0).await?;
        xml.push(t.elapsed());
    }
    println!(
        "{count} interfaces, median of {RUNS}: ListInterfaces {}, GetXMLDesc of the bridge {}",
        ms(median(list)),
        ms(median(xml))
    );
    Ok(())
}
