//! virtnetworkd through its D-Bus API, for real: the daemon runs inside a network
//! namespace the test creates; guests are further namespaces joined by veths to the
//! bridge, getting addresses from dnsmasq with busybox udhcpc.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use common::harness::{Daemon, NetNs, TestBus, TestDirs};
use common::proxies::network::{
    NetworkConnectProxy, NetworkPortProxy, NetworkPortsProxy, NetworkProxy,
};
use zbus::proxy::CacheProperties;
use zbus::zvariant::OwnedObjectPath;

const BIN: &str = env!("CARGO_BIN_EXE_virtnetworkd");

fn nat_xml(name: &str, bridge: &str, net: &str) -> String {
    format!(
        "<network><name>{name}</name><forward mode='nat'/><bridge name='{bridge}'/>
         <ip address='{net}.1' prefix='24'><dhcp><range start='{net}.100' end='{net}.150'/>
         <host mac='52:54:00:aa:00:01' name='fixed' ip='{net}.50'/></dhcp></ip></network>"
    )
}

fn isolated_xml(name: &str, bridge: &str, net: &str) -> String {
    format!(
        "<network><name>{name}</name><bridge name='{bridge}' stp='off'/>
         <ip address='{net}.1' prefix='24'><dhcp><range start='{net}.100' end='{net}.150'/></dhcp></ip></network>"
    )
}

async fn network<'a>(
    conn: &zbus::Connection,
    p: &OwnedObjectPath,
) -> anyhow::Result<NetworkProxy<'a>> {
    Ok(NetworkProxy::builder(conn)
        .path(p.clone())?
        .cache_properties(CacheProperties::No)
        .build()
        .await?)
}

/// The same network through this project's additions (ports, bridge name).
async fn ports<'a>(
    conn: &zbus::Connection,
    p: &OwnedObjectPath,
) -> anyhow::Result<NetworkPortsProxy<'a>> {
    Ok(NetworkPortsProxy::builder(conn)
        .path(p.clone())?
        .cache_properties(CacheProperties::No)
        .build()
        .await?)
}

fn err_text<T: std::fmt::Debug>(r: zbus::Result<T>) -> String {
    match r {
        Err(zbus::Error::MethodError(name, msg, _)) => {
            format!("{}: {}", name.as_str(), msg.unwrap_or_default())
        }
        other => format!("unexpected: {other:?}"),
    }
}

struct Setup {
    bus: TestBus,
    ns: NetNs,
    daemon: Daemon,
    conn: zbus::Connection,
}

async fn setup() -> anyhow::Result<Setup> {
    let bus = TestBus::start()?;
    let ns = NetNs::new()?;
    let daemon = Daemon::builder(BIN, "virtnetworkd")
        .netns(&ns)
        .dirs(TestDirs::new()?)
        .spawn(&bus)
        .await?;
    let conn = bus.connection().await?;
    Ok(Setup {
        bus,
        ns,
        daemon,
        conn,
    })
}

/// A guest: its own namespace, a veth whose peer is enslaved to `bridge` in `host`.
struct Guest {
    ns: NetNs,
    ifname: String,
}

fn guest(host: &NetNs, bridge: &str, tag: &str, mac: Option<&str>) -> anyhow::Result<Guest> {
    let ns = NetNs::new()?;
    let ifname = format!("g{tag}");
    let peer = format!("p{tag}");
    host.run_ok(&[
        "ip", "link", "add", &ifname, "type", "veth", "peer", "name", &peer,
    ])?;
    host.run_ok(&["ip", "link", "set", &peer, "master", bridge, "up"])?;
    host.run_ok(&["ip", "link", "set", &ifname, "netns", &ns.name])?;
    if let Some(m) = mac {
        ns.run_ok(&["ip", "link", "set", &ifname, "address", m])?;
    }
    ns.run_ok(&["ip", "link", "set", &ifname, "up"])?;
    Ok(Guest { ns, ifname })
}

fn dhcp_script(dir: &Path) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join("udhcpc.sh");
    std::fs::write(
        &p,
        "#!/bin/sh\nif [ \"$1\" = bound ]; then ip addr add \"$ip/$mask\" dev \"$interface\"; \
         [ -n \"$router\" ] && ip route add default via \"$router\"; fi\nexit 0\n",
    )?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
    Ok(p)
}

impl Guest {
    /// Runs udhcpc; returns the address it got.
    fn dhcp(&self, script: &Path) -> anyhow::Result<String> {
        let s = script.to_string_lossy();
        self.ns.run_ok(&[
            "busybox",
            "udhcpc",
            "-i",
            &self.ifname,
            "-q",
            "-n",
            "-t",
            "12",
            "-T",
            "1",
            "-s",
            &s,
        ])?;
        let out = self
            .ns
            .run_ok(&["ip", "-j", "-4", "addr", "show", "dev", &self.ifname])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        v[0]["addr_info"][0]["local"]
            .as_str()
            .map(str::to_owned)
            .context("guest has no address")
    }

    fn mac(&self) -> anyhow::Result<String> {
        let out = self
            .ns
            .run_ok(&["ip", "-j", "link", "show", "dev", &self.ifname])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        v[0]["address"]
            .as_str()
            .map(str::to_owned)
            .context("no mac")
    }

    fn ping(&self, addr: &str) -> bool {
        self.ns
            .run(&["busybox", "ping", "-c", "1", "-W", "2", addr])
            .map(|o| o.status.success())
            .unwrap_or(false)
    }
}

/// An "outside" host reachable from the daemon's namespace over a routed veth.
fn outside(host: &NetNs) -> anyhow::Result<NetNs> {
    let out = NetNs::new()?;
    host.run_ok(&[
        "ip", "link", "add", "up0", "type", "veth", "peer", "name", "up1",
    ])?;
    host.run_ok(&["ip", "link", "set", "up1", "netns", &out.name])?;
    host.run_ok(&["ip", "addr", "add", "10.250.0.1/24", "dev", "up0"])?;
    host.run_ok(&["ip", "link", "set", "up0", "up"])?;
    out.run_ok(&["ip", "addr", "add", "10.250.0.2/24", "dev", "up1"])?;
    out.run_ok(&["ip", "link", "set", "up1", "up"])?;
    host.run_ok(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])?;
    Ok(out)
}

fn bridge_addrs(ns: &NetNs, br: &str) -> anyhow::Result<Vec<String>> {
    let out = ns.run_ok(&["ip", "-j", "addr", "show", "dev", br])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    Ok(v[0]["addr_info"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| Some(format!("{}/{}", i["local"].as_str()?, i["prefixlen"])))
                .collect()
        })
        .unwrap_or_default())
}

fn link_exists(ns: &NetNs, name: &str) -> bool {
    ns.run(&["ip", "link", "show", "dev", name])
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn ruleset(ns: &NetNs) -> anyhow::Result<String> {
    ns.run_ok(&["nft", "-j", "list", "ruleset"])
}

fn pid_alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

fn dnsmasq_pid(dirs: &TestDirs, name: &str) -> Option<i32> {
    std::fs::read_to_string(dirs.runtime.join("network").join(format!("{name}.pid")))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A virtnetworkd in its own namespace with the NAT network `natnet` (bridge vtnat0,
/// 10.77.0.0/24) defined and then started.
struct Nat {
    s: Setup,
    c: NetworkConnectProxy<'static>,
    path: OwnedObjectPath,
    n: NetworkProxy<'static>,
}

async fn nat() -> anyhow::Result<Nat> {
    let s = setup().await?;
    let c = NetworkConnectProxy::new(&s.conn).await?;
    let path = c
        .network_define_xml(&nat_xml("natnet", "vtnat0", "10.77.0"))
        .await?;
    let n = network(&s.conn, &path).await?;
    assert!(!n.active().await?);
    n.create().await?;
    assert!(n.active().await?);
    Ok(Nat { s, c, path, n })
}

/// The started NAT network's bridge (address, STP, MAC as in the XML) and its rules
/// in our own tables; destroy leaves none of it, nor dnsmasq, behind.
#[tokio::test(flavor = "multi_thread")]
async fn nat_network_bridge_rules_and_clean_destroy() -> anyhow::Result<()> {
    let Nat { s, path, n, .. } = nat().await?;
    let np = ports(&s.conn, &path).await?;
    assert_eq!(np.bridge_name().await?, "vtnat0");

    // the bridge with its address, read back with ip -j
    assert_eq!(bridge_addrs(&s.ns, "vtnat0")?, vec!["10.77.0.1/24"]);
    let details: serde_json::Value = serde_json::from_str(
        &s.ns
            .run_ok(&["ip", "-j", "-d", "link", "show", "dev", "vtnat0"])?,
    )?;
    let info = &details[0]["linkinfo"]["info_data"];
    // STP on, as libvirt defaults; the kernel raises a forward delay of 0 to its STP
    // minimum of 2 s (200 centiseconds), as it does for libvirt's bridges.
    assert_eq!(
        (info["stp_state"].as_u64(), info["forward_delay"].as_u64()),
        (Some(1), Some(200))
    );
    let xml = n.get_xml_desc(0).await?;
    let mac = xml
        .split("<mac address='")
        .nth(1)
        .and_then(|r| r.get(..17))
        .context("no mac")?;
    assert_eq!(details[0]["address"].as_str(), Some(mac));
    assert!(
        xml.contains("<bridge name='vtnat0' stp='on' delay='0'/>"),
        "{xml}"
    );
    // the rules: masquerade of the subnet and the forward rules, in our own tables
    let rules = ruleset(&s.ns)?;
    assert!(rules.contains("\"masquerade\""), "{rules}");
    assert!(rules.contains("\"libvirt_rs_nat\"") && rules.contains("\"libvirt_rs\""));
    assert!(rules.contains("\"10.77.0.0\""));
    assert!(rules.contains("\"established\""));

    // destroy leaves nothing behind
    let pid = dnsmasq_pid(&s.daemon.dirs, "natnet").context("no dnsmasq pid")?;
    n.destroy().await?;
    assert!(!n.active().await?);
    assert!(!link_exists(&s.ns, "vtnat0"));
    assert!(!ruleset(&s.ns)?.contains("libvirt_rs"));
    let t = Instant::now();
    while pid_alive(pid) && t.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!pid_alive(pid), "dnsmasq left running");
    Ok(())
}

/// Guests get addresses in the range (or their static host entry) from an
/// unprivileged dnsmasq, GetDHCPLeases lists them, and they are NATed to the outside.
#[tokio::test(flavor = "multi_thread")]
async fn nat_network_serves_dhcp_and_forwards() -> anyhow::Result<()> {
    let Nat { s, n, .. } = nat().await?;
    // a guest gets an address in the range, and GetDHCPLeases lists it
    let tmp = tempfile::tempdir()?;
    let script = dhcp_script(tmp.path())?;
    let g = guest(&s.ns, "vtnat0", "a", None)?;
    let ip = g.dhcp(&script)?;
    let last: u32 = ip.rsplit('.').next().unwrap_or("0").parse()?;
    assert!(
        ip.starts_with("10.77.0.") && (100..=150).contains(&last),
        "{ip}"
    );
    let mac = g.mac()?;
    let leases = n.get_dhcp_leases("", 0).await?;
    let l = leases
        .iter()
        .find(|l| l.3 == mac)
        .context("lease not listed")?;
    assert_eq!(
        (l.0.as_str(), l.5.as_str(), l.6),
        ("vtnat0", ip.as_str(), 24)
    );
    assert!(l.1 > 0);
    assert_eq!(n.get_dhcp_leases(&mac, 0).await?.len(), 1);

    // a static host entry gets its fixed address
    let fixed = guest(&s.ns, "vtnat0", "b", Some("52:54:00:aa:00:01"))?;
    assert_eq!(fixed.dhcp(&script)?, "10.77.0.50");

    // the guest reaches the bridge address, and is NATed to the outside
    assert!(g.ping("10.77.0.1"));
    let _out = outside(&s.ns)?;
    assert!(g.ping("10.250.0.2"), "NAT to the outside failed");

    // dnsmasq dropped to the unprivileged `dnsmasq` user when it exists (else nobody),
    // and the leases above were still written and read back
    let pid = dnsmasq_pid(&s.daemon.dirs, "natnet").context("no dnsmasq pid")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let uid: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1)?.parse().ok())
        .context("no Uid")?;
    let want = nix::unistd::User::from_name("dnsmasq")?
        .or(nix::unistd::User::from_name("nobody")?)
        .context("neither dnsmasq nor nobody exists")?;
    assert_eq!(uid, want.uid.as_raw(), "dnsmasq runs as uid {uid}");
    Ok(())
}

/// kill -9 of the daemon leaves the guests' network up; the restarted daemon adopts
/// the network with its dnsmasq and puts back rules flushed meanwhile. The adopted
/// dnsmasq, when it dies, is restarted; destroy then stops the new one. (One test:
/// the dnsmasq part is about a dnsmasq the daemon adopted, not one it spawned.)
#[tokio::test(flavor = "multi_thread")]
async fn nat_network_survives_kill9_and_its_dnsmasq_is_kept_running() -> anyhow::Result<()> {
    let Nat { mut s, c, .. } = nat().await?;
    let tmp = tempfile::tempdir()?;
    let script = dhcp_script(tmp.path())?;
    let g = guest(&s.ns, "vtnat0", "a", None)?;
    g.dhcp(&script)?;
    let mac = g.mac()?;
    let _out = outside(&s.ns)?;
    assert!(g.ping("10.250.0.2"), "NAT to the outside failed");

    // kill -9, flush our rules behind its back, restart: the network is adopted
    let pid_before = dnsmasq_pid(&s.daemon.dirs, "natnet").context("no dnsmasq pid")?;
    s.daemon.kill9();
    s.ns.run_ok(&["nft", "delete", "table", "ip", "libvirt_rs_nat"])?;
    assert!(
        g.ping("10.77.0.1"),
        "bridge interrupted by the daemon's death"
    );
    let mut d2 = s.daemon.restart_builder().spawn(&s.bus).await?;
    let n = network(&s.conn, &c.network_lookup_by_name("natnet").await?).await?;
    assert!(n.active().await?);
    assert_eq!(dnsmasq_pid(&d2.dirs, "natnet"), Some(pid_before));
    assert!(pid_alive(pid_before));
    assert!(
        ruleset(&s.ns)?.contains("\"masquerade\""),
        "rules not put back"
    );
    assert!(g.ping("10.250.0.2"));
    assert!(n.get_dhcp_leases(&mac, 0).await?.len() == 1);

    // a dnsmasq that dies is restarted
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid_before),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    let t = Instant::now();
    let new_pid = loop {
        match dnsmasq_pid(&d2.dirs, "natnet") {
            Some(p) if p != pid_before && pid_alive(p) => break p,
            _ if t.elapsed() > Duration::from_secs(5) => bail!("dnsmasq not restarted"),
            _ => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let g2 = guest(&s.ns, "vtnat0", "c", None)?;
    assert!(g2.dhcp(&script)?.starts_with("10.77.0."));

    // destroy leaves nothing behind, the restarted dnsmasq included
    n.destroy().await?;
    assert!(!n.active().await?);
    assert!(!link_exists(&s.ns, "vtnat0"));
    assert!(!ruleset(&s.ns)?.contains("libvirt_rs"));
    let t = Instant::now();
    while pid_alive(new_pid) && t.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!pid_alive(new_pid), "dnsmasq left running");
    d2.terminate()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn isolated_network_does_not_forward() -> anyhow::Result<()> {
    let s = setup().await?;
    let c = NetworkConnectProxy::new(&s.conn).await?;
    let path = c
        .network_create_xml(&isolated_xml("iso", "vtiso0", "10.78.0"))
        .await?;
    let n = network(&s.conn, &path).await?;
    assert!(n.active().await? && !n.persistent().await?);
    let rules = ruleset(&s.ns)?;
    assert!(!rules.contains("masquerade"));
    let tmp = tempfile::tempdir()?;
    let script = dhcp_script(tmp.path())?;
    let g = guest(&s.ns, "vtiso0", "a", None)?;
    assert!(g.dhcp(&script)?.starts_with("10.78.0."));
    // no router option from an isolated network: add one by hand to try forwarding
    g.ns.run_ok(&["ip", "route", "replace", "default", "via", "10.78.0.1"])?;
    let _out = outside(&s.ns)?;
    assert!(g.ping("10.78.0.1"));
    assert!(
        !g.ping("10.250.0.2"),
        "an isolated network forwarded traffic"
    );
    // transient: destroy makes it disappear
    n.destroy().await?;
    assert!(c.list_networks(0).await?.is_empty());
    assert!(!link_exists(&s.ns, "vtiso0"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_a_clear_error_and_changes_nothing() -> anyhow::Result<()> {
    let s = setup().await?;
    let c = NetworkConnectProxy::new(&s.conn).await?;
    let p = c
        .network_define_xml(&isolated_xml("a", "vtbad0", "10.79.0"))
        .await?;
    network(&s.conn, &p).await?.create().await?;
    let before = c.list_networks(0).await?;

    let overlap = c
        .network_create_xml(&isolated_xml("b", "vtbad1", "10.79.0"))
        .await;
    assert!(err_text(overlap).contains("overlaps network a"));
    let range = c
        .network_define_xml(
            "<network><name>c</name><ip address='10.80.0.1' prefix='24'><dhcp>\
             <range start='10.81.0.2' end='10.81.0.9'/></dhcp></ip></network>",
        )
        .await;
    assert!(err_text(range).contains("outside the subnet 10.80.0.0/24"));
    let long = c
        .network_define_xml("<network><name>d</name><bridge name='abcdefghijklmnopq'/></network>")
        .await;
    assert!(err_text(long).contains("1 to 15 characters"));
    let used = c
        .network_create_xml(&isolated_xml("e", "vtbad0", "10.82.0"))
        .await;
    assert!(err_text(used).contains("bridge name 'vtbad0' already in use"));
    let slash = c
        .network_define_xml("<network><name>x/y</name></network>")
        .await;
    assert!(err_text(slash).contains("'/'"));
    let inject = c
        .network_define_xml(
            "<network><name>f</name><ip address='10.83.0.1' prefix='24'><dhcp>\
             <host mac='52:54:00:00:00:09' name='h&#10;dhcp-script=/bin/evil' ip='10.83.0.9'/>\
             </dhcp></ip></network>",
        )
        .await;
    let e = err_text(inject);
    assert!(
        e.starts_with("org.libvirt.Error: XML error") && e.contains("only letters"),
        "{e}"
    );
    // the bridge of the network that was refused at start is not there either
    assert!(!link_exists(&s.ns, "vtbad1"));
    assert_eq!(c.list_networks(0).await?, before);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn ports_update_persistence_and_autostart() -> anyhow::Result<()> {
    let mut s = setup().await?;
    let c = NetworkConnectProxy::new(&s.conn).await?;
    let path = c
        .network_define_xml(&nat_xml("pn", "vtport0", "10.84.0"))
        .await?;
    let n = network(&s.conn, &path).await?;
    let np = ports(&s.conn, &path).await?;
    let port_xml = "<networkport><owner><name>guest</name>\
        <uuid>06578fc1-2c30-4d94-a1ba-9ea3c2a3c1a4</uuid></owner>\
        <mac address='52:54:00:7b:35:93'/></networkport>";
    assert!(err_text(np.port_create_xml(port_xml, 0).await).contains("not active"));
    n.create().await?;

    // ports
    let pp = np.port_create_xml(port_xml, 0).await?;
    assert_eq!(np.list_ports(0).await?, vec![pp.clone()]);
    let port = NetworkPortProxy::builder(&s.conn)
        .path(pp.clone())?
        .cache_properties(CacheProperties::No)
        .build()
        .await?;
    let uuid = port.uuid().await?;
    assert_eq!(np.port_lookup_by_uuid(&uuid).await?, pp);
    assert_eq!(port.network().await?, path);
    let px = port.get_xml_desc(0).await?;
    assert!(
        px.contains("<plug type='network' bridge='vtport0'/>"),
        "{px}"
    );
    assert!(px.contains("52:54:00:7b:35:93") && px.contains("<name>guest</name>"));
    port.delete(0).await?;
    assert!(np.list_ports(0).await?.is_empty());
    assert!(err_text(np.port_lookup_by_uuid(&uuid).await).contains("network port not found"));

    // live + config update of DHCP hosts and DNS hosts
    n.update(
        3,
        4,
        -1,
        "<host mac='52:54:00:aa:00:07' name='seven' ip='10.84.0.7'/>",
        3,
    )
    .await?;
    n.update(
        3,
        10,
        -1,
        "<host ip='10.84.0.8'><hostname>eight</hostname></host>",
        3,
    )
    .await?;
    let x = n.get_xml_desc(0).await?;
    assert!(x.contains("name='seven' ip='10.84.0.7'") && x.contains("<hostname>eight</hostname>"));
    let hosts = std::fs::read_to_string(s.daemon.dirs.runtime.join("network/pn.hostsfile"))?;
    assert!(hosts.contains("52:54:00:aa:00:07,10.84.0.7,seven"));
    let bad = n
        .update(
            3,
            4,
            -1,
            "<host mac='52:54:00:aa:00:08' name='x' ip='10.99.0.7'/>",
            3,
        )
        .await;
    assert!(err_text(bad).contains("no <ip> with <dhcp>"));
    n.update(
        2,
        4,
        -1,
        "<host mac='52:54:00:aa:00:07' name='seven' ip='10.84.0.7'/>",
        3,
    )
    .await?;
    assert!(!n.get_xml_desc(1).await?.contains("seven"));

    // defined networks persist; autostart starts them with the daemon
    let xml_before = n.get_xml_desc(1).await?;
    n.set_autostart(true).await?;
    n.destroy().await?;
    s.daemon.terminate()?;
    let _d2 = s.daemon.restart_builder().spawn(&s.bus).await?;
    let n = network(&s.conn, &c.network_lookup_by_name("pn").await?).await?;
    assert!(n.autostart().await? && n.persistent().await?);
    assert!(n.active().await?, "autostart network not started");
    assert_eq!(n.get_xml_desc(1).await?, xml_before);
    assert_eq!(bridge_addrs(&s.ns, "vtport0")?, vec!["10.84.0.1/24"]);
    n.destroy().await?;
    n.undefine().await?;
    assert!(c.list_networks(0).await?.is_empty());
    Ok(())
}

/// Our two tables in nft's text form (no handles), or None when a table is missing.
fn our_tables(ns: &NetNs) -> Option<String> {
    let a = ns
        .run_ok(&["nft", "list", "table", "inet", "libvirt_rs"])
        .ok()?;
    let b = ns
        .run_ok(&["nft", "list", "table", "ip", "libvirt_rs_nat"])
        .ok()?;
    Some(a + &b)
}

/// Waits (bounded) until our tables read back as `want`.
async fn tables_back(ns: &NetNs, want: &str) -> anyhow::Result<Duration> {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        if our_tables(ns).as_deref() == Some(want) {
            return Ok(t.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("our rules were not put back within 5 s")
}

#[tokio::test(flavor = "multi_thread")]
async fn rules_flushed_while_running_are_put_back() -> anyhow::Result<()> {
    let s = setup().await?;
    let c = NetworkConnectProxy::new(&s.conn).await?;
    // with <nat> address and port ranges, which must reach the real rules
    let xml = nat_xml("fl", "vtfl0", "10.79.0").replace(
        "<forward mode='nat'/>",
        "<forward mode='nat'><nat><address start='10.250.0.7' end='10.250.0.9'/>\
         <port start='2000' end='3000'/></nat></forward>",
    );
    c.network_create_xml(&xml).await?;
    let want = our_tables(&s.ns).context("our tables after start")?;
    assert!(want.contains("10.79.0.0/24"));
    assert!(want.contains("snat to 10.250.0.7-10.250.0.9:2000-3000"));
    assert!(!want.contains("masquerade"));
    // someone else's table, which must survive our repairs
    s.ns.run_ok(&["nft", "add", "table", "inet", "admin"])?;

    s.ns.run_ok(&["nft", "delete", "table", "ip", "libvirt_rs_nat"])?;
    let d1 = tables_back(&s.ns, &want).await?;
    s.ns.run_ok(&["nft", "flush", "chain", "inet", "libvirt_rs", "forward"])?;
    let d2 = tables_back(&s.ns, &want).await?;
    s.ns.run_ok(&["nft", "flush", "ruleset"])?;
    let d3 = tables_back(&s.ns, &want).await?;
    eprintln!("put back after: delete table {d1:?}, flush chain {d2:?}, flush ruleset {d3:?}");
    // after the repair nothing churns: the rule handles stay the same
    let handles =
        s.ns.run_ok(&["nft", "-a", "list", "table", "inet", "libvirt_rs"])?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again =
        s.ns.run_ok(&["nft", "-a", "list", "table", "inet", "libvirt_rs"])?;
    assert_eq!(handles, again, "rules are re-applied in a loop");
    // changes to other tables are left alone and do not trigger a repair
    s.ns.run_ok(&["nft", "add", "table", "inet", "admin2"])?;
    s.ns.run_ok(&["nft", "delete", "table", "inet", "admin2"])?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        again,
        s.ns.run_ok(&["nft", "-a", "list", "table", "inet", "libvirt_rs"])?
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn bridge_mode_uses_an_existing_bridge_and_creates_nothing() -> anyhow::Result<()> {
    let s = setup().await?;
    let c = NetworkConnectProxy::new(&s.conn).await?;
    let xml = "<network><name>hb</name><forward mode='bridge'/><bridge name='vthost0'/></network>";
    let path = c.network_define_xml(xml).await?;
    let n = network(&s.conn, &path).await?;
    let np = ports(&s.conn, &path).await?;
    // the bridge does not exist yet: a clear error, nothing active
    let e = err_text(n.create().await);
    assert!(e.contains("bridge 'vthost0' does not exist"), "{e}");
    assert!(!n.active().await?);

    s.ns.run_ok(&["ip", "link", "add", "vthost0", "type", "bridge"])?;
    n.create().await?;
    assert!(n.active().await?);
    assert_eq!(np.bridge_name().await?, "vthost0");
    let port_xml = "<networkport><owner><name>guest</name>\
        <uuid>06578fc1-2c30-4d94-a1ba-9ea3c2a3c1a5</uuid></owner>\
        <mac address='52:54:00:7b:35:94'/></networkport>";
    let pp = np.port_create_xml(port_xml, 0).await?;
    let port = NetworkPortProxy::builder(&s.conn)
        .path(pp)?
        .cache_properties(CacheProperties::No)
        .build()
        .await?;
    let px = port.get_xml_desc(0).await?;
    assert!(px.contains("vthost0"), "{px}");
    // no rules, no dnsmasq
    let tables = s.ns.run_ok(&["nft", "list", "tables"])?;
    assert!(!tables.contains("libvirt_rs"), "{tables}");
    assert!(dnsmasq_pid(&s.daemon.dirs, "hb").is_none());
    // destroy leaves the host's bridge alone
    n.destroy().await?;
    assert!(!n.active().await?);
    assert!(link_exists(&s.ns, "vthost0"));
    Ok(())
}

/// A dual-stack network: the bridge carries both addresses and dnsmasq's router
/// advertisements give a guest its IPv6 address by SLAAC, as on libvirt's networks.
#[tokio::test(flavor = "multi_thread")]
async fn ipv6_network_advertises_its_prefix() -> anyhow::Result<()> {
    let s = setup().await?;
    let c = NetworkConnectProxy::new(&s.conn).await?;
    let path = c
        .network_create_xml(
            "<network><name>six</name><bridge name='vtsix0'/>\
             <ip address='10.83.0.1' prefix='24'/>\
             <ip family='ipv6' address='fd00:83::1' prefix='64'/></network>",
        )
        .await?;
    let n = network(&s.conn, &path).await?;
    assert!(n.active().await?);
    let addrs = bridge_addrs(&s.ns, "vtsix0")?;
    assert!(addrs.contains(&"fd00:83::1/64".to_owned()), "{addrs:?}");
    assert!(addrs.contains(&"10.83.0.1/24".to_owned()), "{addrs:?}");
    let g = guest(&s.ns, "vtsix0", "s6", None)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let slaac = loop {
        let out =
            g.ns.run_ok(&["ip", "-j", "-6", "addr", "show", "dev", &g.ifname])?;
        if let Some(a) = out
            .split('"')
            .find(|w| w.starts_with("fd00:83:") && *w != "fd00:83::1")
        {
            break a.to_owned();
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "no SLAAC address from a router advertisement: {out}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(slaac.starts_with("fd00:83::"), "{slaac}");
    n.destroy().await?;
    assert!(!link_exists(&s.ns, "vtsix0"));
    Ok(())
}

/// `nft` wrapped so that the daemon's firewall step waits for the test: `called` appears
/// when the daemon runs it, and it goes on only once `release` exists.
struct GatedNft {
    dir: tempfile::TempDir,
}

impl GatedNft {
    fn new() -> anyhow::Result<GatedNft> {
        use std::os::unix::fs::PermissionsExt;
        let real = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .map(|d| d.join("nft"))
            .find(|p| p.exists())
            .context("no nft")?;
        let dir = tempfile::tempdir()?;
        let d = dir.path().display();
        let script = format!(
            "#!/bin/sh\ntouch {d}/called\nwhile [ ! -e {d}/release ]; do sleep 0.02; done\nexec {} \"$@\"\n",
            real.display()
        );
        let p = dir.path().join("nft");
        std::fs::write(&p, script)?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
        Ok(GatedNft { dir })
    }

    fn path_env(&self) -> std::ffi::OsString {
        let mut paths = vec![self.dir.path().to_path_buf()];
        if let Some(p) = std::env::var_os("PATH") {
            paths.extend(std::env::split_paths(&p));
        }
        std::env::join_paths(paths).unwrap_or_default()
    }

    async fn wait_called(&self) -> anyhow::Result<()> {
        for _ in 0..3000 {
            if self.dir.path().join("called").exists() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        bail!("the daemon never ran nft")
    }

    fn release(&self) -> anyhow::Result<()> {
        std::fs::write(self.dir.path().join("release"), "")?;
        Ok(())
    }
}

/// A property read or a list never waits behind a network start: the start is held
/// inside its firewall step while Active, Name, Autostart, BridgeName, the XML and the
/// network list are read; they all answer while the start is still running.
#[tokio::test(flavor = "multi_thread")]
async fn reads_do_not_wait_behind_a_start() -> anyhow::Result<()> {
    let bus = TestBus::start()?;
    let ns = NetNs::new()?;
    let nft = GatedNft::new()?;
    let _daemon = Daemon::builder(BIN, "virtnetworkd")
        .netns(&ns)
        .dirs(TestDirs::new()?)
        .env("PATH", nft.path_env())
        .spawn(&bus)
        .await?;
    let conn = bus.connection().await?;
    let c = NetworkConnectProxy::new(&conn).await?;
    let path = c
        .network_define_xml("<network><name>slow</name><bridge name='vtslow0'/></network>")
        .await?;
    let n = network(&conn, &path).await?;
    let np = ports(&conn, &path).await?;
    let starting = {
        let n = n.clone();
        tokio::spawn(async move { n.create().await })
    };
    nft.wait_called().await?;
    // Guards a hang only: each read is expected to answer at once.
    let reads = async {
        let active = n.active().await?;
        let name = n.name().await?;
        let autostart = n.autostart().await?;
        let bridge = np.bridge_name().await?;
        let xml = n.get_xml_desc(0).await?;
        let list = c.list_networks(0).await?;
        anyhow::Ok((active, name, autostart, bridge, xml, list))
    };
    let (active, name, autostart, bridge, xml, list) =
        tokio::time::timeout(Duration::from_secs(20), reads)
            .await
            .context("a read waited behind the start")??;
    assert!(
        !starting.is_finished(),
        "the start is still held in nft while the reads answered"
    );
    assert!(!active, "not active before the start has finished");
    assert_eq!(name, "slow");
    assert!(!autostart);
    assert_eq!(bridge, "vtslow0");
    assert!(xml.contains("<name>slow</name>"));
    assert_eq!(list, vec![path.clone()]);
    nft.release()?;
    starting.await??;
    assert!(n.active().await?);
    n.destroy().await?;
    Ok(())
}

/// A port is an object as long as its network runs: a restarted daemon serves the ports
/// it adopted (virtqemud deletes them by their object when its guest stops), and a
/// network that stops takes its port objects with it.
#[tokio::test(flavor = "multi_thread")]
async fn port_objects_follow_restarts_and_network_stops() -> anyhow::Result<()> {
    let mut s = setup().await?;
    let c = NetworkConnectProxy::new(&s.conn).await?;
    let path = c
        .network_define_xml(&isolated_xml("po", "vtpo0", "10.87.0"))
        .await?;
    let n = network(&s.conn, &path).await?;
    let np = ports(&s.conn, &path).await?;
    n.create().await?;
    let port_xml = "<networkport><owner><name>guest</name>\
        <uuid>06578fc1-2c30-4d94-a1ba-9ea3c2a3c1c0</uuid></owner>\
        <mac address='52:54:00:7b:35:c0'/></networkport>";
    let pp = np.port_create_xml(port_xml, 0).await?;
    let uuid = {
        let port = NetworkPortProxy::builder(&s.conn)
            .path(pp.clone())?
            .cache_properties(CacheProperties::No)
            .build()
            .await?;
        port.uuid().await?
    };

    s.daemon.kill9();
    s.daemon = s.daemon.restart_builder().spawn(&s.bus).await?;
    let np = ports(&s.conn, &path).await?;
    assert_eq!(np.port_lookup_by_uuid(&uuid).await?, pp);
    let port = NetworkPortProxy::builder(&s.conn)
        .path(pp.clone())?
        .cache_properties(CacheProperties::No)
        .build()
        .await?;
    let px = port.get_xml_desc(0).await?;
    assert!(px.contains("52:54:00:7b:35:c0"), "{px}");

    network(&s.conn, &path).await?.destroy().await?;
    let gone = port.get_xml_desc(0).await;
    assert!(
        matches!(&gone, Err(zbus::Error::MethodError(name, _, _))
            if name.as_str() == "org.freedesktop.DBus.Error.UnknownObject"),
        "the port of a stopped network still answers: {gone:?}"
    );
    n.undefine().await?;
    Ok(())
}

/// While networks are being defined, every path ListNetworks returns answers at once
/// (no UnknownObject for an object not yet served).
#[tokio::test(flavor = "multi_thread")]
async fn listed_networks_are_always_served() -> anyhow::Result<()> {
    let s = setup().await?;
    let c = NetworkConnectProxy::new(&s.conn).await?;
    let definer = {
        let c = c.clone();
        tokio::spawn(async move {
            for i in 0..100 {
                let xml = format!("<network><name>race{i}</name></network>");
                c.network_define_xml(&xml).await?;
            }
            anyhow::Ok(())
        })
    };
    // Each path is checked the first time it is listed, when the race is closest.
    let mut seen = std::collections::BTreeSet::new();
    while !definer.is_finished() {
        for p in c.list_networks(0).await? {
            if seen.insert(p.to_string()) {
                let name = network(&s.conn, &p).await?.name().await;
                assert!(name.is_ok(), "{p} listed but not served: {name:?}");
            }
        }
    }
    let checked = seen.len();
    definer.await??;
    assert!(checked > 0, "the race was never exercised");
    assert_eq!(c.list_networks(0).await?.len(), 100);
    Ok(())
}
