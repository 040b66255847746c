//! Load (printed, never asserted): 50 clients at once, half on the bus and half on the
//! daemon's own socket, each running a mix of calls for a fixed time against 200
//! defined domains: ListDomains, property reads, GetXMLDesc, GetState, and a define +
//! undefine of a domain of its own now and then. Prints p50/p99/max latency per kind,
//! errors, calls per second and the daemon's RSS before and after.
//!
//! Two kinds of round. Paced: every client starts a call every `clients / LOAD_RATE`
//! seconds (all together `LOAD_RATE` calls/s, 4,200 by default, the rate the issue's
//! own measurement ran at), and a call's latency counts from when it was due, so a
//! daemon that falls behind is charged for the wait. Closed loop: every client calls
//! again as soon as it has its answer, which saturates the machine and measures
//! throughput; there a call's latency is about clients / throughput by construction.
//! Run: cargo bench -p virtqemud --bench load (LOAD_SECS, LOAD_CLIENTS, LOAD_RATE).

use std::time::{Duration, Instant};

use common::harness::{Daemon, TestBus};
use common::proxies::qemu::{DomainProxy, QemuConnectProxy};

const BIN: &str = env!("CARGO_BIN_EXE_virtqemud");

fn xml(name: &str) -> String {
    format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type></os></domain>"
    )
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

#[derive(Default)]
struct Samples {
    /// (kind, latency) of every call that succeeded.
    ok: Vec<(usize, Duration)>,
    errors: usize,
}

const KINDS: [&str; 5] = [
    "ListDomains",
    "Name",
    "GetXMLDesc",
    "GetState",
    "Define+Undefine",
];

async fn client(
    conn: zbus::Connection,
    id: usize,
    paths: Vec<zbus::zvariant::OwnedObjectPath>,
    until: Instant,
    every: Option<Duration>,
) -> Samples {
    let mut s = Samples::default();
    let Ok(qc) = QemuConnectProxy::new(&conn).await else {
        s.errors += 1;
        return s;
    };
    let mut n = 0usize;
    // Paced clients start at spread offsets, so the calls do not come in bursts.
    let first =
        Instant::now() + every.map_or(Duration::ZERO, |e| e.mul_f64((id % 50) as f64 / 50.0));
    while Instant::now() < until {
        n += 1;
        let due = match every {
            Some(e) => {
                let due = first + e * (n as u32 - 1);
                tokio::time::sleep_until(due.into()).await;
                due
            }
            None => Instant::now(),
        };
        let kind = match n % 20 {
            0 => 4,
            k if k % 4 == 0 => 0,
            k if k % 4 == 1 => 1,
            k if k % 4 == 2 => 2,
            _ => 3,
        };
        let path = &paths[(id * 7 + n) % paths.len()];
        let t = due;
        let ok = match kind {
            0 => qc.list_domains(0).await.is_ok(),
            4 => {
                let name = format!("load-{id}-{n}");
                match qc.domain_define_xml(&xml(&name)).await {
                    Ok(p) => match DomainProxy::builder(&conn).path(p) {
                        Ok(b) => match b.build().await {
                            Ok(d) => d.undefine(0).await.is_ok(),
                            Err(_) => false,
                        },
                        Err(_) => false,
                    },
                    Err(_) => false,
                }
            }
            _ => match DomainProxy::builder(&conn)
                .path(path.clone())
                .map(|b| b.cache_properties(zbus::proxy::CacheProperties::No))
            {
                Ok(b) => match b.build().await {
                    Ok(d) => match kind {
                        1 => d.name().await.is_ok(),
                        2 => d.get_xml_desc(0).await.is_ok(),
                        _ => d.get_state(0).await.is_ok(),
                    },
                    Err(_) => false,
                },
                Err(_) => false,
            },
        };
        if ok {
            s.ok.push((kind, t.elapsed()));
        } else {
            s.errors += 1;
        }
    }
    s
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

async fn round_of(
    bus: &TestBus,
    daemon: &Daemon,
    clients: usize,
    paths: &[zbus::zvariant::OwnedObjectPath],
    secs: u64,
    every: Option<Duration>,
) -> anyhow::Result<Samples> {
    let until = Instant::now() + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for id in 0..clients {
        // Half on the bus, half peer-to-peer on the daemon's own socket.
        let conn = if id % 2 == 0 {
            bus.connection().await?
        } else {
            daemon.peer_connection().await?
        };
        tasks.push(tokio::spawn(client(conn, id, paths.to_vec(), until, every)));
    }
    let mut all = Samples::default();
    for t in tasks {
        let s = t.await?;
        all.ok.extend(s.ok);
        all.errors += s.errors;
    }
    Ok(all)
}

fn report(round: &str, clients: usize, secs: u64, all: Samples, before: u64, after: u64) {
    let total = all.ok.len();
    println!(
        "load round {round}: {clients} clients (half bus, half peer-to-peer) for {secs} s: \
         {total} calls ({:.0}/s), {} errors",
        total as f64 / secs as f64,
        all.errors
    );
    let mut every: Vec<Duration> = all.ok.iter().map(|(_, d)| *d).collect();
    println!(
        "  all calls: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(&mut every, 0.5).as_secs_f64() * 1e3,
        pct(&mut every, 0.99).as_secs_f64() * 1e3,
        pct(&mut every, 1.0).as_secs_f64() * 1e3
    );
    for (k, name) in KINDS.iter().enumerate() {
        let mut v: Vec<Duration> = all
            .ok
            .iter()
            .filter(|(kk, _)| *kk == k)
            .map(|(_, d)| *d)
            .collect();
        println!(
            "  {name:<16} n={:<7} p50 {:.2} ms, p99 {:.2} ms",
            v.len(),
            pct(&mut v, 0.5).as_secs_f64() * 1e3,
            pct(&mut v, 0.99).as_secs_f64() * 1e3
        );
    }
    println!("  daemon RSS with 200 defined: {before} KiB before the load, {after} KiB after");
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let secs: u64 = std::env::var("LOAD_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let clients: usize = std::env::var("LOAD_CLIENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let bus = TestBus::start()?;
    let daemon = Daemon::builder(BIN, "virtqemud").spawn(&bus).await?;
    let setup = bus.connection().await?;
    let qc = QemuConnectProxy::new(&setup).await?;
    let mut paths = Vec::new();
    for i in 0..200 {
        paths.push(qc.domain_define_xml(&xml(&format!("base{i}"))).await?);
    }
    let rate: f64 = std::env::var("LOAD_RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4200.0);
    let every = Duration::from_secs_f64(clients as f64 / rate.max(1.0));
    let before = rss_kib(daemon.pid);
    // Paced rounds, then closed-loop ones; RSS after the second of a kind against after
    // the first tells a leak (it grows again) from the allocator keeping a peak.
    let rounds = [
        (format!("1 (paced, {rate:.0} calls/s offered)"), Some(every)),
        (format!("2 (paced, {rate:.0} calls/s offered)"), Some(every)),
        ("3 (closed loop)".to_string(), None),
        ("4 (closed loop)".to_string(), None),
    ];
    for (round, pace) in rounds {
        let all = round_of(&bus, &daemon, clients, &paths, secs, pace).await?;
        // Let the daemon settle, then read its RSS again.
        tokio::time::sleep(Duration::from_secs(1)).await;
        report(&round, clients, secs, all, before, rss_kib(daemon.pid));
    }
    Ok(())
}
