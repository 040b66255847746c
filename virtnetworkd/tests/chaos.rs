//! kill -9 storm: virtnetworkd is killed at random moments while workers churn its
//! networks (start, stop, transient create, ports added and deleted), all inside a
//! network namespace of the test. After each restart:
//! - nothing lost: every defined network is still defined, every network the test saw
//!   started (and not stopped) is active with the same bridge and the same dnsmasq PID,
//!   and its ports are all there;
//! - nothing duplicated: one dnsmasq per active network, our nft tables hold exactly
//!   the rules of the active networks (once);
//! - no strays: no dnsmasq, link, nft table or rule, runtime or temp file that belongs to
//!   no active network.
//!
//! The one call in flight per worker at the kill may have happened or not; either is
//! accepted as long as the result is whole (fully active or cleanly inactive).
//!
//! `VIRT_CHAOS_ROUNDS` sets the number of kills (10 by default), `VIRT_CHAOS_SEED` the
//! seed of the random kill points and operations (1 by default).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::harness::{Daemon, NetNs, TestBus, TestDirs};
use common::proxies::network::{
    NetworkConnectProxy, NetworkPortProxy, NetworkPortsProxy, NetworkProxy,
};
use uuid::Uuid;
use virtnetworkd::firewall::{nft, FwNet};
use virtnetworkd::xml::Network;
use zbus::proxy::CacheProperties;
use zbus::zvariant::OwnedObjectPath;

const BIN: &str = env!("CARGO_BIN_EXE_virtnetworkd");
/// Workers, each with its own networks, so at most this many calls are in flight.
const WORKERS: usize = 2;
/// Persistent networks per worker, plus one transient slot each.
const PERSISTENT: usize = 2;
/// Kills land anywhere in this span after the churn starts.
const SPAN_MS: u64 = 400;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// xorshift64*: reproducible from the seed, no dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// One network of the test: what the daemon confirmed about it.
#[derive(Debug, Clone)]
struct Net {
    name: String,
    bridge: String,
    persistent: bool,
    xml: String,
    active: bool,
    /// dnsmasq's PID, read once a start was confirmed (or found after a restart).
    dnsmasq: Option<u32>,
    ports: BTreeSet<Uuid>,
    /// The call that was in flight at the kill: its outcome is unknown.
    in_flight: Option<Op>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Start,
    Stop,
    PortAdd(Uuid),
    PortDel(Uuid),
}

fn net_xml(name: &str, bridge: &str, subnet: &str, nat: bool) -> String {
    let fwd = if nat { "<forward mode='nat'/>" } else { "" };
    format!(
        "<network><name>{name}</name>{fwd}<bridge name='{bridge}' stp='off'/>\
         <ip address='{subnet}.1' prefix='24'><dhcp>\
         <range start='{subnet}.100' end='{subnet}.150'/></dhcp></ip></network>"
    )
}

fn port_xml(uuid: &Uuid) -> String {
    format!(
        "<networkport><uuid>{uuid}</uuid><owner><name>guest</name>\
         <uuid>06578fc1-2c30-4d94-a1ba-9ea3c2a3c1a4</uuid></owner>\
         <mac address='52:54:00:7b:35:93'/></networkport>"
    )
}

async fn network(conn: &zbus::Connection, name: &str) -> zbus::Result<NetworkProxy<'static>> {
    let c = NetworkConnectProxy::new(conn).await?;
    let p = c.network_lookup_by_name(name).await?;
    proxy_at(conn, p).await
}

async fn proxy_at(
    conn: &zbus::Connection,
    p: OwnedObjectPath,
) -> zbus::Result<NetworkProxy<'static>> {
    NetworkProxy::builder(conn)
        .path(p)?
        .cache_properties(CacheProperties::No)
        .build()
        .await
}

async fn ports_of(
    conn: &zbus::Connection,
    p: OwnedObjectPath,
) -> zbus::Result<NetworkPortsProxy<'static>> {
    NetworkPortsProxy::builder(conn)
        .path(p)?
        .cache_properties(CacheProperties::No)
        .build()
        .await
}

/// The live dnsmasqs started for networks under `root`: network name -> PIDs.
/// Zombies (empty command line) are not counted.
fn dnsmasqs(root: &Path) -> BTreeMap<String, Vec<u32>> {
    let run = root.join("run").join("network");
    let prefix = format!("--conf-file={}/", run.display());
    let mut out: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for pid in entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
    {
        let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<String> = raw
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if !args.first().is_some_and(|a| a.ends_with("dnsmasq")) {
            continue;
        }
        if let Some(conf) = args.iter().find_map(|a| a.strip_prefix(&prefix)) {
            let name = conf.strip_suffix(".conf").unwrap_or(conf).to_owned();
            out.entry(name).or_default().push(pid);
        }
    }
    out
}

/// Link names in the namespace.
fn links(ns: &NetNs) -> BTreeSet<String> {
    let text = ns.run_ok(&["ip", "-j", "link", "show"]).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|l| l.get("ifname")?.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// (chains, rules) of one of our tables, None when it does not exist; and its text.
fn table(ns: &NetNs, family: &str, name: &str) -> Option<((usize, usize), String)> {
    let out = ns.run(&["nft", "-j", "list", "table", family, name]).ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some((nft::counts(&v), text))
}

/// One worker's churn: a random call at a time on its own networks until the kill.
async fn churn(
    conn: zbus::Connection,
    model: Arc<Mutex<Vec<Net>>>,
    mine: Vec<usize>,
    mut rng: Rng,
    killed: Arc<AtomicBool>,
    failures: Arc<Mutex<Vec<String>>>,
    root: PathBuf,
) {
    while !killed.load(Ordering::SeqCst) {
        let i = mine[rng.below(mine.len() as u64) as usize];
        let net = model.lock().expect("model")[i].clone();
        let op = if !net.active {
            Op::Start
        } else {
            match rng.below(6) {
                0 | 1 => Op::Stop,
                2 | 3 if net.ports.len() < 3 => Op::PortAdd(Uuid::new_v4()),
                _ => match net.ports.iter().next() {
                    Some(p) => Op::PortDel(*p),
                    None => Op::PortAdd(Uuid::new_v4()),
                },
            }
        };
        model.lock().expect("model")[i].in_flight = Some(op);
        let res = run_op(&conn, &net, op).await;
        if killed.load(Ordering::SeqCst) {
            // The reply may be the kill's; the outcome stays unknown.
            return;
        }
        let mut m = model.lock().expect("model");
        let n = &mut m[i];
        n.in_flight = None;
        match res {
            Ok(()) => match op {
                Op::Start => {
                    n.active = true;
                    n.dnsmasq = None;
                }
                Op::Stop => {
                    n.active = false;
                    n.ports.clear();
                }
                Op::PortAdd(u) => {
                    n.ports.insert(u);
                }
                Op::PortDel(u) => {
                    n.ports.remove(&u);
                }
            },
            Err(e) => {
                failures
                    .lock()
                    .expect("failures")
                    .push(format!("{op:?} on {} failed: {e}", n.name));
                return;
            }
        }
        if op == Op::Start {
            // Create returns with dnsmasq's pidfile written: remember its PID.
            drop(m);
            if let Some(p) = dnsmasqs(&root).remove(&net.name).filter(|p| p.len() == 1) {
                model.lock().expect("model")[i].dnsmasq = Some(p[0]);
            }
        }
    }
}

async fn run_op(conn: &zbus::Connection, net: &Net, op: Op) -> anyhow::Result<()> {
    match op {
        Op::Start if !net.persistent => {
            NetworkConnectProxy::new(conn)
                .await?
                .network_create_xml(&net.xml)
                .await?;
        }
        Op::Start => network(conn, &net.name).await?.create().await?,
        Op::Stop => network(conn, &net.name).await?.destroy().await?,
        Op::PortAdd(u) => {
            let c = NetworkConnectProxy::new(conn).await?;
            let p = c.network_lookup_by_name(&net.name).await?;
            ports_of(conn, p)
                .await?
                .port_create_xml(&port_xml(&u), 0)
                .await?;
        }
        Op::PortDel(u) => {
            NetworkPortProxy::builder(conn)
                .path(common::objpath::network_port(&u))?
                .cache_properties(CacheProperties::No)
                .build()
                .await?
                .delete(0)
                .await?;
        }
    }
    Ok(())
}

/// What the restarted daemon and the kernel show.
#[derive(Debug, Default)]
struct Seen {
    /// name -> (active, bridge, ports, live XML)
    nets: BTreeMap<String, (bool, String, BTreeSet<Uuid>, String)>,
    dnsmasq: BTreeMap<String, Vec<u32>>,
    links: BTreeSet<String>,
    filter: Option<((usize, usize), String)>,
    nat: Option<((usize, usize), String)>,
    /// Files under the runtime and config folders of networks (names only).
    run_files: Vec<String>,
    temp_files: Vec<String>,
}

async fn observe(conn: &zbus::Connection, ns: &NetNs, root: &Path) -> anyhow::Result<Seen> {
    let c = NetworkConnectProxy::new(conn).await?;
    let mut seen = Seen::default();
    for p in c.list_networks(0).await? {
        let n = proxy_at(conn, p.clone()).await?;
        let np = ports_of(conn, p).await?;
        let name = n.name().await?;
        let active = n.active().await?;
        let bridge = np.bridge_name().await?;
        let mut ports = BTreeSet::new();
        if active {
            for pp in np.list_ports(0).await? {
                let port = NetworkPortProxy::builder(conn)
                    .path(pp)?
                    .cache_properties(CacheProperties::No)
                    .build()
                    .await?;
                ports.insert(port.uuid().await?.parse()?);
            }
        }
        let xml = n.get_xml_desc(0).await?;
        seen.nets.insert(name, (active, bridge, ports, xml));
    }
    seen.dnsmasq = dnsmasqs(root);
    seen.links = links(ns);
    seen.filter = table(ns, "inet", "libvirt_rs");
    seen.nat = table(ns, "ip", "libvirt_rs_nat");
    let run = root.join("run").join("network");
    for e in std::fs::read_dir(&run)?.flatten() {
        let f = e.file_name().to_string_lossy().into_owned();
        if f.starts_with('.') {
            seen.temp_files.push(format!("run/network/{f}"));
        } else {
            seen.run_files.push(f);
        }
    }
    for d in ["etc/network", "etc/network/autostart"] {
        for e in std::fs::read_dir(root.join(d))?.flatten() {
            let f = e.file_name().to_string_lossy().into_owned();
            if f.starts_with('.') {
                seen.temp_files.push(format!("{d}/{f}"));
            }
        }
    }
    Ok(seen)
}

/// Tallies of what a restart got wrong.
#[derive(Debug, Default)]
struct Tally {
    lost: Vec<String>,
    duplicated: Vec<String>,
    strays: Vec<String>,
    /// Half states: active without its bridge or dnsmasq, and the like.
    broken: Vec<String>,
}

impl Tally {
    fn is_empty(&self) -> bool {
        self.lost.is_empty()
            && self.duplicated.is_empty()
            && self.strays.is_empty()
            && self.broken.is_empty()
    }
    /// Adds a round's findings; a stray that stays is counted once, in the round that
    /// made it.
    fn absorb(&mut self, t: Tally) {
        let add = |to: &mut Vec<String>, v: Vec<String>| {
            for p in v {
                if !to.contains(&p) {
                    to.push(p);
                }
            }
        };
        add(&mut self.lost, t.lost);
        add(&mut self.duplicated, t.duplicated);
        add(&mut self.strays, t.strays);
        add(&mut self.broken, t.broken);
    }
    fn all(&self) -> Vec<String> {
        let tag = |t: &'static str, v: &[String]| {
            v.iter()
                .map(move |s| format!("{t}: {s}"))
                .collect::<Vec<_>>()
        };
        let mut out = tag("lost", &self.lost);
        out.extend(tag("duplicated", &self.duplicated));
        out.extend(tag("stray", &self.strays));
        out.extend(tag("broken", &self.broken));
        out
    }
}

/// The calls in flight at a kill, counted by kind in `flights`.
fn cut_calls(model: &[Net], flights: &mut BTreeMap<&'static str, usize>) -> Vec<String> {
    model
        .iter()
        .filter_map(|n| {
            let kind = match n.in_flight? {
                Op::Start => "start",
                Op::Stop => "stop",
                Op::PortAdd(_) => "port add",
                Op::PortDel(_) => "port delete",
            };
            *flights.entry(kind).or_default() += 1;
            Some(format!("{kind} {}", n.name))
        })
        .collect()
}

/// Compares what is seen with the model, then makes the model what is seen (the
/// in-flight calls resolved), so that the next round starts from the truth.
fn judge(model: &mut [Net], seen: &Seen, t: &mut Tally) {
    let mut active_bridges = BTreeSet::new();
    let mut active_fw = Vec::new();
    for n in model.iter_mut() {
        let flight = n.in_flight.take();
        let Some((active, bridge, ports, xml)) = seen.nets.get(&n.name) else {
            if n.persistent {
                t.lost
                    .push(format!("network {} is no longer defined", n.name));
            } else if n.active && flight != Some(Op::Stop) {
                t.lost.push(format!("transient network {} is gone", n.name));
            }
            n.active = false;
            n.ports.clear();
            n.dnsmasq = None;
            continue;
        };
        let active = *active;
        let may_change = matches!(flight, Some(Op::Start | Op::Stop));
        if active != n.active && !may_change {
            t.lost.push(format!(
                "network {} was {} and is now {}",
                n.name,
                if n.active { "active" } else { "inactive" },
                if active { "active" } else { "inactive" }
            ));
        }
        if !n.persistent && !active {
            t.strays
                .push(format!("transient network {} listed inactive", n.name));
        }
        let pids = seen.dnsmasq.get(&n.name).cloned().unwrap_or_default();
        if active {
            active_bridges.insert(bridge.clone());
            if let Ok(net) = Network::from_xml(xml) {
                active_fw.push(FwNet::of(&net));
            }
            if *bridge != n.bridge {
                t.lost
                    .push(format!("{}: bridge {bridge}, was {}", n.name, n.bridge));
            }
            if !seen.links.contains(bridge) {
                t.broken
                    .push(format!("{} is active without its bridge {bridge}", n.name));
            }
            match pids.len() {
                0 => t
                    .broken
                    .push(format!("{} is active without dnsmasq", n.name)),
                1 => {}
                k => t
                    .duplicated
                    .push(format!("{k} dnsmasqs for {}: {pids:?}", n.name)),
            }
            if n.active && !may_change {
                if let Some(old) = n.dnsmasq.filter(|p| !pids.contains(p)) {
                    t.lost
                        .push(format!("{}: dnsmasq {old} replaced by {pids:?}", n.name));
                }
                let mut want = n.ports.clone();
                match flight {
                    Some(Op::PortAdd(u)) if ports.contains(&u) => {
                        want.insert(u);
                    }
                    Some(Op::PortDel(u)) if !ports.contains(&u) => {
                        want.remove(&u);
                    }
                    _ => {}
                }
                if *ports != want {
                    t.lost
                        .push(format!("{}: ports {ports:?}, want {want:?}", n.name));
                }
            }
        } else if !pids.is_empty() {
            t.strays
                .push(format!("dnsmasq {pids:?} of inactive network {}", n.name));
        }
        n.active = active;
        n.ports = ports.clone();
        n.dnsmasq = (active && pids.len() == 1).then(|| pids[0]);
    }
    for (name, pids) in &seen.dnsmasq {
        if !model.iter().any(|n| &n.name == name) {
            t.strays.push(format!("dnsmasq {pids:?} of unknown {name}"));
        }
    }
    for l in &seen.links {
        if l != "lo" && !active_bridges.contains(l) {
            t.strays.push(format!("link {l}"));
        }
    }
    judge_rules(seen, &active_fw, model, t);
    for f in &seen.run_files {
        let owner = f.split('.').next().unwrap_or_default();
        let active = model.iter().any(|n| n.active && n.name == owner);
        // dnsmasq's log stays after a stop, as libvirt's does.
        if !active && !f.ends_with(".dnsmasq.log") {
            t.strays.push(format!("run/network/{f}"));
        }
    }
    for f in &seen.temp_files {
        t.strays.push(format!("temp file {f}"));
    }
}

/// Our two tables hold the rules of the active networks, once, and name no other bridge.
fn judge_rules(seen: &Seen, active: &[FwNet], model: &[Net], t: &mut Tally) {
    let want: BTreeMap<_, _> = nft::expected_counts(active).into_iter().collect();
    for (key, got) in [
        (("inet", "libvirt_rs"), &seen.filter),
        (("ip", "libvirt_rs_nat"), &seen.nat),
    ] {
        match (want.get(&key), got) {
            (None, None) => {}
            (None, Some((c, _))) => t.strays.push(format!(
                "table {} {} with {c:?} (chains, rules) and no active network",
                key.0, key.1
            )),
            (Some(w), None) => t
                .lost
                .push(format!("table {} {} missing, want {w:?}", key.0, key.1)),
            (Some(w), Some((c, _))) if c.1 > w.1 => t.duplicated.push(format!(
                "table {} {}: {c:?} (chains, rules), want {w:?}",
                key.0, key.1
            )),
            (Some(w), Some((c, _))) if c != w => t.lost.push(format!(
                "table {} {}: {c:?} (chains, rules), want {w:?}",
                key.0, key.1
            )),
            _ => {}
        }
    }
    if let Some((_, text)) = &seen.filter {
        for n in model.iter().filter(|n| !n.active) {
            if text.contains(&format!("\"{}\"", n.bridge)) {
                t.strays
                    .push(format!("rules for inactive network {}", n.name));
            }
        }
    }
}

/// The virtnetworkd processes started for the test folder `root`.
fn daemon_pids(root: &Path) -> Vec<u32> {
    let root = root.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let mut args = raw.split(|b| *b == 0);
            args.next().is_some_and(|a| a.ends_with(b"virtnetworkd"))
                && args.any(|a| String::from_utf8_lossy(a).contains(&root))
        })
        .collect()
}

/// Starts the daemon again and kills it `after` its process appears: in the middle of
/// its own start (taking down cut operations, adopting, spawning dnsmasq) or, when
/// the start is quicker, soon after it. Returns whether the kill landed before the
/// daemon owned its name.
async fn kill_during_restart(daemon: &Daemon, bus: &TestBus, root: &Path, after: Duration) -> bool {
    let spawn = daemon.restart_builder().spawn(bus);
    let killer = async {
        let t = Instant::now();
        let pid = loop {
            if let Some(p) = daemon_pids(root).first() {
                break Some(*p);
            }
            if t.elapsed() > Duration::from_secs(2) {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        tokio::time::sleep(after).await;
        if let Some(pid) = pid {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    };
    let (started, ()) = tokio::join!(spawn, killer);
    // A daemon that got to own its name was killed after; dropping it reaps it.
    started.is_err()
}

/// Starts the daemon again. A child the killed daemon was forking (dnsmasq, nft) holds
/// its instance lock (an inherited flock, closed at exec) for a moment: the new one
/// refuses to start as a second instance then, and is started again after 50 ms.
async fn restart(daemon: &Daemon, bus: &TestBus, waits: &mut usize) -> anyhow::Result<Daemon> {
    let mut tries = 0;
    loop {
        match daemon.restart_builder().spawn(bus).await {
            Ok(d) => return Ok(d),
            Err(e) if tries < 40 && e.to_string().contains("is already running") => {
                tries += 1;
                *waits += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

fn fresh_model() -> Vec<Net> {
    let mut nets = Vec::new();
    for w in 0..WORKERS {
        for k in 0..=PERSISTENT {
            let i = w * (PERSISTENT + 1) + k;
            let persistent = k < PERSISTENT;
            let name = if persistent {
                format!("chaos{i}")
            } else {
                format!("chaost{i}")
            };
            let bridge = format!("vch{i}");
            nets.push(Net {
                xml: net_xml(&name, &bridge, &format!("10.91.{i}"), i % 2 == 0),
                name,
                bridge,
                persistent,
                active: false,
                dnsmasq: None,
                ports: BTreeSet::new(),
                in_flight: None,
            });
        }
    }
    nets
}

fn owned_by(w: usize) -> Vec<usize> {
    (w * (PERSISTENT + 1)..(w + 1) * (PERSISTENT + 1)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_storm_loses_duplicates_and_leaks_nothing() -> anyhow::Result<()> {
    let rounds = env_or("VIRT_CHAOS_ROUNDS", 10).max(1);
    let seed = env_or("VIRT_CHAOS_SEED", 1);
    let bus = TestBus::start()?;
    let ns = NetNs::new()?;
    let mut daemon = Daemon::builder(BIN, "virtnetworkd")
        .netns(&ns)
        .dirs(TestDirs::new()?)
        .spawn(&bus)
        .await?;
    let root = daemon.dirs.root.path().to_owned();
    let conn = bus.connection().await?;
    let c = NetworkConnectProxy::new(&conn).await?;
    let model = Arc::new(Mutex::new(fresh_model()));
    let defs: Vec<String> = model
        .lock()
        .expect("model")
        .iter()
        .filter(|n| n.persistent)
        .map(|n| n.xml.clone())
        .collect();
    for xml in defs {
        c.network_define_xml(&xml).await?;
    }
    let mut rng = Rng::new(seed);
    let mut total = Tally::default();
    let mut broken_rounds = Vec::new();
    let mut flights: BTreeMap<&str, usize> = BTreeMap::new();
    let mut lock_waits = 0;
    let mut restarts_killed = 0;
    let started = Instant::now();
    for round in 0..rounds {
        let killed = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let workers: Vec<_> = (0..WORKERS)
            .map(|w| {
                tokio::spawn(churn(
                    conn.clone(),
                    model.clone(),
                    owned_by(w),
                    Rng::new(rng.next()),
                    killed.clone(),
                    failures.clone(),
                    root.clone(),
                ))
            })
            .collect();
        let delay = Duration::from_millis(rng.below(SPAN_MS + 1));
        tokio::time::sleep(delay).await;
        killed.store(true, Ordering::SeqCst);
        daemon.kill9();
        for w in workers {
            let _ = tokio::time::timeout(Duration::from_secs(30), w).await;
        }
        let cut = cut_calls(&model.lock().expect("model"), &mut flights);
        if rng.below(3) == 0 {
            let after = Duration::from_millis(rng.below(25));
            if kill_during_restart(&daemon, &bus, &root, after).await {
                restarts_killed += 1;
            }
        }
        daemon = restart(&daemon, &bus, &mut lock_waits).await?;
        let seen = observe(&conn, &ns, &root).await?;
        let mut t = Tally::default();
        t.broken
            .extend(failures.lock().expect("failures").drain(..));
        judge(&mut model.lock().expect("model"), &seen, &mut t);
        let active = model
            .lock()
            .expect("model")
            .iter()
            .filter(|n| n.active)
            .count();
        eprintln!(
            "round {round}: kill after {delay:?}, cut: [{}], {active} active after restart: {}",
            cut.join(", "),
            if t.is_empty() {
                "ok".to_owned()
            } else {
                t.all().join("; ")
            }
        );
        if !t.is_empty() {
            broken_rounds.push(format!("round {round}: {}", t.all().join("; ")));
        }
        total.absorb(t);
    }
    eprintln!(
        "{rounds} kill -9s in {:.1?} (seed {seed}); calls cut: {flights:?}; \
         {} lost, {} duplicated, {} strays, {} broken; {} of {rounds} rounds not clean",
        started.elapsed(),
        total.lost.len(),
        total.duplicated.len(),
        total.strays.len(),
        total.broken.len(),
        broken_rounds.len()
    );

    for p in total.all() {
        eprintln!("  {p}");
    }
    // What the restarts did, from the daemon's log (appended to across restarts).
    let log = daemon.log_text();
    let count = |what: &str| log.matches(what).count();
    eprintln!(
        "restarts: {restarts_killed} killed in their own start, {} cut starts/stops \
         taken down ({} dnsmasqs stopped), {} networks adopted, {} second dnsmasqs \
         stopped, {lock_waits} waits for the instance lock",
        count("was cut short"),
        count("stopping dnsmasq"),
        count("adopted running network"),
        count("stopping a second dnsmasq")
    );

    // Whatever survived stops cleanly: nothing of ours is left in the namespace.
    let last = model.lock().expect("model").clone();
    for n in last {
        if n.active {
            network(&conn, &n.name).await?.destroy().await?;
        }
    }
    let seen = observe(&conn, &ns, &root).await?;
    let mut m = fresh_model();
    let mut t = Tally::default();
    judge(&mut m, &seen, &mut t);
    let end: Vec<String> = t.all();
    assert!(
        broken_rounds.is_empty() && end.is_empty(),
        "{} of {rounds} rounds broken:\n{}\nafter the last stop: {end:?}",
        broken_rounds.len(),
        broken_rounds.join("\n")
    );
    drop(daemon);
    Ok(())
}

/// The state a kill -9 leaves when it cuts a Create after dnsmasq started but before
/// the status file was committed (and before dnsmasq's pidfile was seen): the restart
/// takes the bridge, dnsmasq and rules down, and the network is inactive and starts
/// again. Made by hand, so it does not depend on where a random kill lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_create_is_taken_down_whole_at_restart() -> anyhow::Result<()> {
    let bus = TestBus::start()?;
    let ns = NetNs::new()?;
    let mut daemon = Daemon::builder(BIN, "virtnetworkd")
        .netns(&ns)
        .dirs(TestDirs::new()?)
        .spawn(&bus)
        .await?;
    let root = daemon.dirs.root.path().to_owned();
    let run = daemon.dirs.runtime.join("network");
    let conn = bus.connection().await?;
    let c = NetworkConnectProxy::new(&conn).await?;
    c.network_define_xml(&net_xml("cut", "vcut0", "10.92.0", true))
        .await?;
    network(&conn, "cut").await?.create().await?;
    let pids = dnsmasqs(&root).remove("cut").unwrap_or_default();
    assert_eq!(pids.len(), 1, "one dnsmasq: {pids:?}");
    assert!(links(&ns).contains("vcut0"));

    daemon.kill9();
    std::fs::rename(run.join("cut.xml"), run.join("cut.pending"))?;
    std::fs::remove_file(run.join("cut.pid"))?;
    let daemon = daemon.restart_builder().spawn(&bus).await?;

    let n = network(&conn, "cut").await?;
    assert!(!n.active().await?, "a cut start is not adopted");
    assert!(
        common::harness::wait_gone(pids[0], Duration::from_secs(5)),
        "dnsmasq {} still runs after the restart (its pidfile was gone)",
        pids[0]
    );
    assert!(dnsmasqs(&root).is_empty());
    assert!(!links(&ns).contains("vcut0"), "bridge taken down");
    assert!(table(&ns, "inet", "libvirt_rs").is_none());
    assert!(table(&ns, "ip", "libvirt_rs_nat").is_none());
    let left: Vec<_> = std::fs::read_dir(&run)?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|f| f.starts_with("cut.") && !f.ends_with(".dnsmasq.log"))
        .collect();
    assert!(left.is_empty(), "runtime files left: {left:?}");

    n.create().await?;
    assert!(n.active().await?);
    assert_eq!(dnsmasqs(&root).remove("cut").map(|p| p.len()), Some(1));
    n.destroy().await?;
    drop(daemon);
    Ok(())
}
