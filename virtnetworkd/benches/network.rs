//! Benchmarks (printed, never asserted), inside a test network namespace: network start
//! (bridge, address, rules, dnsmasq up) and destroy through D-Bus against the same steps
//! done by hand with ip, nft and dnsmasq; 100 networks defined and listed; idle RSS.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use common::harness::{Daemon, NetNs, TestBus, TestDirs};
use common::proxies::network::{NetworkConnectProxy, NetworkProxy};

const BIN: &str = env!("CARGO_BIN_EXE_virtnetworkd");
const RUNS: usize = 10;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no VmRSS")
}

const XML: &str = "<network><name>bench</name><forward mode='nat'/>
  <bridge name='vbench0' stp='off'/>
  <ip address='10.90.0.1' prefix='24'><dhcp><range start='10.90.0.100' end='10.90.0.200'/>
  </dhcp></ip></network>";

fn run_in(ns: &NetNs, argv: &[&str]) -> anyhow::Result<()> {
    ns.run_ok(argv).map(drop)
}

/// The same steps by hand: ip for the bridge, one `nft -f` for the rules, dnsmasq
/// with the same config, waiting for its pidfile like the daemon does.
fn by_hand(ns: &NetNs, dir: &Path) -> anyhow::Result<(Duration, Duration)> {
    let net = virtnetworkd::xml::Network::from_xml(XML)?;
    let paths = virtnetworkd::dnsmasq::Paths::new(dir, dir, "hand");
    std::fs::write(&paths.conf, virtnetworkd::dnsmasq::config(&net, &paths)?)?;
    std::fs::write(&paths.hostsfile, "")?;
    std::fs::write(&paths.addnhosts, "")?;
    let rules = "table ip hand_nat {
  chain postrouting {
    type nat hook postrouting priority 100;
    ip saddr 10.90.0.0/24 ip daddr 224.0.0.0/24 return
    ip saddr 10.90.0.0/24 ip daddr 255.255.255.255 return
    ip saddr 10.90.0.0/24 ip daddr != 10.90.0.0/24 masquerade
  }
}
table inet hand {
  chain forward {
    type filter hook forward priority 0;
    iifname vbench0 ip saddr 10.90.0.0/24 accept
    oifname vbench0 ip daddr 10.90.0.0/24 ct state established,related accept
    iifname vbench0 oifname vbench0 accept
    iifname vbench0 reject
    oifname vbench0 reject
  }
  chain input {
    type filter hook input priority 0;
    iifname vbench0 udp dport 67 accept
    iifname vbench0 udp dport 53 accept
    iifname vbench0 tcp dport 53 accept
  }
}
";
    let rules_file = dir.join("hand.nft");
    std::fs::write(&rules_file, rules)?;
    let rf = rules_file.to_string_lossy().into_owned();
    let _ = std::fs::remove_file(&paths.pid);

    let t = Instant::now();
    run_in(ns, &["ip", "link", "add", "vbench0", "type", "bridge"])?;
    run_in(ns, &["ip", "addr", "add", "10.90.0.1/24", "dev", "vbench0"])?;
    run_in(ns, &["ip", "link", "set", "vbench0", "up"])?;
    run_in(ns, &["nft", "-f", &rf])?;
    let mut cmd = Command::new("dnsmasq");
    cmd.args(virtnetworkd::dnsmasq::argv(&paths));
    let mut child = ns.spawn(&mut cmd)?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read_to_string(&paths.pid).map_or(true, |s| s.trim().is_empty()) {
        if Instant::now() > deadline {
            bail!("dnsmasq did not start");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let start = t.elapsed();

    let t = Instant::now();
    child.kill()?;
    child.wait()?;
    run_in(ns, &["nft", "delete", "table", "ip", "hand_nat"])?;
    run_in(ns, &["nft", "delete", "table", "inet", "hand"])?;
    run_in(ns, &["ip", "link", "del", "vbench0"])?;
    Ok((start, t.elapsed()))
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> anyhow::Result<()> {
    let bus = TestBus::start()?;
    let ns = NetNs::new()?;
    let dirs = TestDirs::new()?;
    let daemon = Daemon::builder(BIN, "virtnetworkd")
        .netns(&ns)
        .dirs(dirs.clone())
        .spawn(&bus)
        .await?;
    let conn = bus.connection().await?;
    let c = NetworkConnectProxy::new(&conn).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rss_idle = rss_kib(daemon.pid)?;

    let path = c.network_define_xml(XML).await?;
    let n = NetworkProxy::builder(&conn).path(path)?.build().await?;
    let (mut starts, mut stops) = (vec![], vec![]);
    for _ in 0..RUNS {
        let t = Instant::now();
        n.create().await?;
        starts.push(t.elapsed());
        let t = Instant::now();
        n.destroy().await?;
        stops.push(t.elapsed());
    }
    let (mut hstarts, mut hstops) = (vec![], vec![]);
    let tmp = tempfile::tempdir()?;
    for _ in 0..RUNS {
        let (a, b) = by_hand(&ns, tmp.path())?;
        hstarts.push(a);
        hstops.push(b);
    }
    println!(
        "network start (bridge, address, rules, dnsmasq up), median of {RUNS}: virtnetworkd {}, by hand (ip/nft/dnsmasq) {}",
        ms(median(starts)),
        ms(median(hstarts))
    );
    println!(
        "network destroy, median of {RUNS}: virtnetworkd {}, by hand {}",
        ms(median(stops)),
        ms(median(hstops))
    );

    let t = Instant::now();
    for i in 0..100 {
        c.network_define_xml(&format!(
            "<network><name>many{i}</name><ip address='10.{}.{}.1' prefix='24'/></network>",
            100 + i / 200,
            i % 200
        ))
        .await?;
    }
    let listed = c.list_networks(0).await?.len();
    println!(
        "100 networks defined and listed ({listed} listed): {}",
        ms(t.elapsed())
    );
    println!(
        "idle RSS: {} KiB at start, {} KiB with 101 networks defined",
        rss_idle,
        rss_kib(daemon.pid)?
    );
    Ok(())
}
