//! Benchmarks (printed, never asserted): listing every device with its XML over D-Bus
//! and in process, uevent -> NodeDeviceEvent latency, idle RSS.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use common::harness::{Daemon, NetNs, TestBus};
use common::proxies::nodedev::{NodeDevConnectProxy, NodeDeviceProxy};
use futures_util::StreamExt;
use virtnodedevd::sysfs::{self, Roots};

const BIN: &str = env!("CARGO_BIN_EXE_virtnodedevd");

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn list_with_xml(conn: &zbus::Connection) -> anyhow::Result<usize> {
    let c = NodeDevConnectProxy::new(conn).await?;
    let mut n = 0;
    for p in c.list_node_devices(0).await? {
        let d = NodeDeviceProxy::builder(conn).path(p)?.build().await?;
        n += d.get_xml_desc(0).await?.len();
    }
    Ok(n)
}

fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS"))
}

/// Receives the kernel's uevents of `ns` on a thread that joined it; sends arrival times.
fn watch_ns(ns: &NetNs) -> anyhow::Result<std::sync::mpsc::Receiver<(String, Instant)>> {
    let f = std::fs::File::open(ns.path())?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // SAFETY: setns on this thread only (network namespaces are per thread).
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return;
        }
        let Ok(sock) = virtnodedevd::uevent::open() else {
            return;
        };
        let mut buf = vec![0u8; 65536];
        loop {
            // SAFETY: buf is live and its length is passed.
            let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            let t = Instant::now();
            if n <= 0 {
                return;
            }
            if let Some(ev) = virtnodedevd::uevent::parse(&buf[..n as usize]) {
                if tx
                    .send((format!("{}@{}", ev.action, ev.devpath), t))
                    .is_err()
                {
                    return;
                }
            }
        }
    });
    Ok(rx)
}

async fn run() -> anyhow::Result<()> {
    // In process: enumerate the machine and write every XML.
    let roots = Roots::host();
    let mut t = Vec::new();
    let mut count = 0;
    for _ in 0..20 {
        let t0 = Instant::now();
        let devs = sysfs::enumerate(&roots);
        count = devs.len();
        let bytes: usize = devs
            .iter()
            .map(|d| virtnodedevd::xml::device_xml(&roots, d).len())
            .sum();
        std::hint::black_box(bytes);
        t.push(t0.elapsed());
    }
    println!(
        "enumerate + XML of {count} devices in process: median {:?}",
        median(t)
    );

    let ns = NetNs::new()?;
    let bus = TestBus::start()?;
    let d = Daemon::builder(BIN, "virtnodedevd")
        .netns(&ns)
        .spawn(&bus)
        .await?;
    let conn = bus.connection().await?;

    let mut t = Vec::new();
    for _ in 0..20 {
        let t0 = Instant::now();
        std::hint::black_box(list_with_xml(&conn).await?);
        t.push(t0.elapsed());
    }
    println!(
        "ListNodeDevices + GetXMLDesc of every device over D-Bus: median {:?} (target <= 50 ms)",
        median(t)
    );

    tokio::time::sleep(Duration::from_secs(1)).await;
    let rollup = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", d.pid))?;
    let field = |k: &str| {
        rollup
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.split_whitespace().next())
            .unwrap_or("?")
            .to_string()
    };
    println!(
        "idle RSS: {} KiB (anonymous {} KiB, file-backed {} KiB; target <= 8192 KiB)",
        rss_kib(d.pid)?,
        field("Anonymous:"),
        field("Rss:").parse::<i64>().unwrap_or(0) - field("Anonymous:").parse::<i64>().unwrap_or(0)
    );

    let c = NodeDevConnectProxy::new(&conn).await?;
    let mut events = c.receive_node_device_event().await?;
    let kernel = watch_ns(&ns)?;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut lat = Vec::new();
    for i in 0..10 {
        let a = format!("vb{i}a");
        let b = format!("vb{i}b");
        ns.run_ok(&["ip", "link", "add", &a, "type", "veth", "peer", "name", &b])?;
        let mut got = 0;
        while got < 2 {
            let ev = tokio::time::timeout(Duration::from_secs(5), events.next())
                .await?
                .ok_or_else(|| anyhow::anyhow!("stream ended"))?;
            let now = Instant::now();
            let path = ev.args()?.dev.to_string();
            let ifname = if path.contains(&format!("{a}_5f")) {
                &a
            } else {
                &b
            };
            // The kernel's uevent for that link, as seen in the namespace.
            let want = format!("add@/devices/virtual/net/{ifname}");
            let mut sent = None;
            while let Ok((k, at)) = kernel.recv_timeout(Duration::from_secs(1)) {
                if k == want {
                    sent = Some(at);
                    break;
                }
            }
            if let Some(at) = sent {
                lat.push(now.saturating_duration_since(at));
            }
            got += 1;
        }
        ns.run_ok(&["ip", "link", "del", &a])?;
        // Drain the two DELETED events.
        for _ in 0..2 {
            let _ = tokio::time::timeout(Duration::from_secs(5), events.next()).await?;
        }
    }
    if lat.is_empty() {
        println!("uevent -> NodeDeviceEvent: no samples");
    } else {
        println!(
            "uevent -> NodeDeviceEvent signal at the client: median {:?}, max {:?} over {} links (target <= 10 ms)",
            median(lat.clone()),
            lat.iter().max().copied().unwrap_or_default(),
            lat.len()
        );
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}
