//! Figures for virtqemud (printed, never asserted): start-up, define ×1000, ListDomains
//! and property reads with 1000 defined, GetXMLDesc, Create→running against the floor of
//! a hand-launched QEMU, Destroy→shutoff, daemon RSS. Run: cargo bench -p virtqemud

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

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// The floor: raw QEMU launched by hand until its QMP monitor answers.
async fn floor_once() -> Duration {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("q.sock");
    let t = Instant::now();
    let mut child = std::process::Command::new("qemu-system-x86_64")
        .args([
            "-S",
            "-nodefaults",
            "-m",
            "64",
            "-display",
            "none",
            "-machine",
            "pc,accel=tcg",
        ])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("qemu");
    loop {
        if let Ok(s) = tokio::net::UnixStream::connect(&sock).await {
            use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
            let (r, mut w) = s.into_split();
            let mut lines = BufReader::new(r).lines();
            let _ = lines.next_line().await;
            let _ = w.write_all(b"{\"execute\":\"qmp_capabilities\"}\n").await;
            let _ = lines.next_line().await;
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let e = t.elapsed();
    let _ = child.kill();
    let _ = child.wait();
    e
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let bus = TestBus::start()?;
    let t = Instant::now();
    let daemon = Daemon::builder(BIN, "virtqemud").spawn(&bus).await?;
    let conn = bus.connection().await?;
    let qc = QemuConnectProxy::new(&conn).await?;
    qc.list_domains(0).await?;
    println!(
        "daemon start -> first reply: {} (target <= 20 ms; includes harness polling)",
        ms(t.elapsed())
    );
    println!("idle RSS: {} KiB (target <= 8 MiB)", rss_kib(daemon.pid));

    let t = Instant::now();
    let mut paths = Vec::new();
    for i in 0..1000 {
        paths.push(qc.domain_define_xml(&xml(&format!("b{i:04}"))).await?);
    }
    println!(
        "DomainDefineXML x1000, one call at a time (each fsync'd before its reply): {} \
         (libvirt 9.0: ~1100 ms; target <= 600 ms)",
        ms(t.elapsed())
    );
    // The same connection with calls pipelined (D-Bus allows many in flight): the
    // daemon handles them concurrently and their journal records share syncs.
    let t = Instant::now();
    {
        use futures_util::stream::{self, StreamExt, TryStreamExt};
        let qc = &qc;
        let more: Vec<_> = stream::iter(0..1000)
            .map(|i| async move { qc.domain_define_xml(&xml(&format!("p{i:04}"))).await })
            .buffer_unordered(32)
            .try_collect()
            .await?;
        println!(
            "DomainDefineXML x1000, 32 in flight on one connection: {} (target <= 600 ms)",
            ms(t.elapsed())
        );
        for p in more {
            DomainProxy::builder(&conn)
                .path(p)?
                .build()
                .await?
                .undefine(0)
                .await?;
        }
    }

    let mut v = Vec::new();
    for _ in 0..30 {
        let t = Instant::now();
        let l = qc.list_domains(0).await?;
        v.push(t.elapsed());
        assert_eq!(l.len(), 1000);
    }
    println!(
        "ListDomains with 1000: median {} (target <= 3 ms)",
        ms(median(v))
    );

    let t = Instant::now();
    for p in &paths {
        let d = DomainProxy::builder(&conn)
            .path(p.clone())?
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await?;
        d.name().await?;
    }
    println!("Name property read x1000: {}", ms(t.elapsed()));
    let d0 = DomainProxy::builder(&conn)
        .path(paths[0].clone())?
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await?;
    let mut v = Vec::new();
    for _ in 0..100 {
        let t = Instant::now();
        d0.get_xml_desc(0).await?;
        v.push(t.elapsed());
    }
    println!("GetXMLDesc: median {}", ms(median(v)));
    println!(
        "RSS with 1000 defined: {} KiB (target <= 40 MiB)",
        rss_kib(daemon.pid)
    );

    let (mut create, mut destroy, mut floor) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..5 {
        floor.push(floor_once().await);
        let t = Instant::now();
        d0.create(0).await?;
        create.push(t.elapsed());
        let t = Instant::now();
        d0.destroy(0).await?;
        destroy.push(t.elapsed());
    }
    let (c, f) = (median(create), median(floor));
    println!(
        "Create->running (no guest OS): median {} vs floor {} = {:.2}x (target <= 1.3x)",
        ms(c),
        ms(f),
        c.as_secs_f64() / f.as_secs_f64()
    );
    println!(
        "Destroy->shutoff: median {} (target <= 50 ms)",
        ms(median(destroy))
    );
    drop(daemon);
    Ok(())
}
