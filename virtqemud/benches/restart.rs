//! Restart with running guests (printed, never asserted): N guests run (QEMU under TCG
//! or KVM, no guest OS: firmware only), virtqemud is killed with SIGKILL and started
//! again, three times. Prints the time from the new process to its bus name (owned only
//! once every QEMU is adopted, see `virtqemud::start`), then to a ListDomains that
//! lists all N active, and checks every guest kept its QEMU.
//! Run: cargo bench -p virtqemud --bench restart (RESTART_GUESTS to change N, 50).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::harness::{Daemon, TestBus};
use common::proxies::qemu::{DomainProxy, QemuConnectProxy};

const BIN: &str = env!("CARGO_BIN_EXE_virtqemud");
/// VIR_CONNECT_LIST_DOMAINS_ACTIVE
const ACTIVE: u32 = 1;

fn xml(name: &str) -> String {
    format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type></os></domain>"
    )
}

/// PID of every guest's QEMU, by domain name, from the daemon's pidfiles.
fn qemu_pids(daemon: &Daemon, names: &[String]) -> BTreeMap<String, String> {
    names
        .iter()
        .map(|n| {
            let f = daemon.dirs.runtime.join(format!("qemu/{n}.pid"));
            let pid = std::fs::read_to_string(f).unwrap_or_default();
            (n.clone(), pid.trim().to_owned())
        })
        .collect()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::var("RESTART_GUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    let bus = TestBus::start()?;
    let mut daemon = Daemon::builder(BIN, "virtqemud").spawn(&bus).await?;
    let conn = bus.connection().await?;
    let qc = QemuConnectProxy::new(&conn).await?;
    let names: Vec<String> = (0..n).map(|i| format!("guest{i}")).collect();
    let mut doms = Vec::new();
    let t = Instant::now();
    for name in &names {
        let path = qc.domain_define_xml(&xml(name)).await?;
        let d = DomainProxy::builder(&conn).path(path)?.build().await?;
        d.create(0).await?;
        doms.push(d);
    }
    println!("{n} guests started in {:.1} s", t.elapsed().as_secs_f64());
    let pids = qemu_pids(&daemon, &names);
    let result = restarts(&bus, &mut daemon, &qc, &names, &pids).await;
    for d in &doms {
        let _ = d.destroy(0).await;
    }
    result
}

async fn restarts(
    bus: &TestBus,
    daemon: &mut Daemon,
    qc: &QemuConnectProxy<'_>,
    names: &[String],
    pids: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let n = names.len();
    for round in 1..=3 {
        daemon.kill9();
        let t = Instant::now();
        *daemon = daemon.restart_builder().spawn(bus).await?;
        let owned = t.elapsed();
        let listed = loop {
            let active = qc.list_domains(ACTIVE).await?.len();
            if active == n {
                break t.elapsed();
            }
            if t.elapsed() > Duration::from_secs(30) {
                anyhow::bail!("only {active} of {n} guests active 30 s after the restart");
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        let same = qemu_pids(daemon, names) == *pids;
        println!(
            "restart {round} with {n} running guests: bus name owned (all adopted) after \
             {:.1} ms, ListDomains lists {n} active after {:.1} ms; every guest kept its \
             QEMU: {same}",
            owned.as_secs_f64() * 1e3,
            listed.as_secs_f64() * 1e3
        );
        if !same {
            anyhow::bail!("a guest's QEMU changed across the restart");
        }
    }
    Ok(())
}
