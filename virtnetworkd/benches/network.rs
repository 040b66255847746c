//! Benchmarks (printed, never asserted), inside a test network namespace: network start
//! (bridge, address, rules, dnsmasq answering DHCP: a guest namespace veth'd to the
//! bridge gets a DHCPOFFER) and destroy through D-Bus against the same steps
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

// The probe's MAC has a static host entry: dnsmasq does not ping-check those, so the
// figure is the time to a real answer, not dnsmasq's 3 s in-use check.
const XML: &str = "<network><name>bench</name><forward mode='nat'/>
  <bridge name='vbench0' stp='off'/>
  <ip address='10.90.0.1' prefix='24'><dhcp><range start='10.90.0.100' end='10.90.0.200'/>
  <host mac='52:54:00:be:00:01' ip='10.90.0.50'/></dhcp></ip></network>";
const PROBE_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xbe, 0x00, 0x01];

/// A DHCP client in the guest namespace: a UDP socket on port 68 bound to the guest's
/// veth (made in a thread that entered the namespace), which sends DISCOVERs every
/// 2 ms until an OFFER for PROBE_MAC arrives.
struct Probe {
    sock: std::net::UdpSocket,
}

impl Probe {
    fn new(guest: &NetNs, ifname: &str) -> anyhow::Result<Probe> {
        let path = guest.path();
        let ifname = ifname.to_owned();
        std::thread::spawn(move || -> anyhow::Result<std::net::UdpSocket> {
            let f = std::fs::File::open(&path)?;
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)?;
            let sock = std::net::UdpSocket::bind("0.0.0.0:68")?;
            sock.set_broadcast(true)?;
            nix::sys::socket::setsockopt(
                &sock,
                nix::sys::socket::sockopt::BindToDevice,
                &std::ffi::OsString::from(ifname),
            )?;
            sock.set_read_timeout(Some(Duration::from_millis(2)))?;
            Ok(sock)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("probe thread panicked"))?
        .map(|sock| Probe { sock })
    }

    fn discover(xid: u32) -> Vec<u8> {
        let mut p = vec![0u8; 300];
        p[0] = 1; // BOOTREQUEST
        p[1] = 1; // ethernet
        p[2] = 6;
        p[4..8].copy_from_slice(&xid.to_be_bytes());
        p[10] = 0x80; // broadcast the reply
        p[28..34].copy_from_slice(&PROBE_MAC);
        p[236..240].copy_from_slice(&[99, 130, 83, 99]);
        p[240..244].copy_from_slice(&[53, 1, 1, 255]); // DHCPDISCOVER, end
        p
    }

    /// Sends DISCOVERs until an OFFER comes (5 s at most); returns the offered address.
    fn until_offer(&self, xid: u32) -> anyhow::Result<std::net::Ipv4Addr> {
        let msg = Self::discover(xid);
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buf = [0u8; 1500];
        while Instant::now() < deadline {
            let _ = self.sock.send_to(&msg, "255.255.255.255:67");
            while let Ok(n) = self.sock.recv(&mut buf) {
                if n >= 244 && buf[0] == 2 && buf[4..8] == xid.to_be_bytes() {
                    return Ok(std::net::Ipv4Addr::new(buf[16], buf[17], buf[18], buf[19]));
                }
            }
        }
        bail!("no DHCPOFFER within 5 s")
    }
}

/// A guest namespace joined by a veth whose host end `bh` waits in `host` to be
/// enslaved to the bridge once it exists.
fn guest(host: &NetNs) -> anyhow::Result<(NetNs, Probe)> {
    let g = NetNs::new()?;
    run_in(
        host,
        &[
            "ip", "link", "add", "bg", "type", "veth", "peer", "name", "bh",
        ],
    )?;
    run_in(host, &["ip", "link", "set", "bg", "netns", &g.name])?;
    run_in(host, &["ip", "link", "set", "bh", "up"])?;
    run_in(&g, &["ip", "addr", "add", "10.90.0.250/24", "dev", "bg"])?;
    run_in(&g, &["ip", "link", "set", "bg", "up"])?;
    let probe = Probe::new(&g, "bg")?;
    Ok((g, probe))
}

/// After the bridge exists: plug the guest in and wait for dnsmasq's answer.
fn dhcp_answered(host: &NetNs, probe: &Probe, xid: u32) -> anyhow::Result<()> {
    run_in(host, &["ip", "link", "set", "bh", "master", "vbench0"])?;
    let ip = probe.until_offer(xid)?;
    if ip != std::net::Ipv4Addr::new(10, 90, 0, 50) {
        bail!("offered {ip}, not the static host's address");
    }
    Ok(())
}

fn run_in(ns: &NetNs, argv: &[&str]) -> anyhow::Result<()> {
    ns.run_ok(argv).map(drop)
}

/// The same steps by hand: ip for the bridge, one `nft -f` for the rules, dnsmasq
/// with the same config, then the same DHCP probe.
fn by_hand(
    ns: &NetNs,
    dir: &Path,
    probe: &Probe,
    xid: u32,
) -> anyhow::Result<(Duration, Duration)> {
    let net = virtnetworkd::xml::Network::from_xml(XML)?;
    let paths = virtnetworkd::dnsmasq::Paths::new(dir, dir, "hand");
    std::fs::write(&paths.conf, virtnetworkd::dnsmasq::config(&net, &paths)?)?;
    std::fs::write(&paths.hostsfile, virtnetworkd::dnsmasq::hostsfile(&net)?)?;
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
    let user = virtnetworkd::dnsmasq::pick_user(true, None)?;
    cmd.args(virtnetworkd::dnsmasq::argv(&paths, user.as_deref()));
    let mut child = ns.spawn(&mut cmd)?;
    dhcp_answered(ns, probe, xid)?;
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
    let (_guest, probe) = guest(&ns)?;
    let (mut starts, mut stops) = (vec![], vec![]);
    for i in 0..RUNS {
        let t = Instant::now();
        n.create().await?;
        let probe_ref = &probe;
        let ns_ref = &ns;
        tokio::task::block_in_place(|| dhcp_answered(ns_ref, probe_ref, i as u32 + 1))?;
        starts.push(t.elapsed());
        let t = Instant::now();
        n.destroy().await?;
        stops.push(t.elapsed());
    }
    let (mut hstarts, mut hstops) = (vec![], vec![]);
    let tmp = tempfile::tempdir()?;
    for i in 0..RUNS {
        let (a, b) =
            tokio::task::block_in_place(|| by_hand(&ns, tmp.path(), &probe, 1000 + i as u32))?;
        hstarts.push(a);
        hstops.push(b);
    }
    println!(
        "network start (bridge, address, rules, dnsmasq answering DHCP), median of {RUNS}: virtnetworkd {}, by hand (ip/nft/dnsmasq) {}",
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
