//! Runtime figures of every daemon, printed (never asserted):
//! - cold bus activation: from the first call to a not-yet-running daemon to its reply;
//! - direct start: from spawning the daemon to its first reply;
//! - the median latency of a property read over the bus and peer-to-peer.
//!
//! Run with `scripts/bench.sh` (it builds the release binaries first), or
//! `cargo bench -p common --features harness` after `cargo build --release --bins`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::harness::{wait_gone, Daemon, TestBus, TestDirs};
use common::proxies::ConnectProxy;

const DAEMONS: [&str; 4] = ["virtqemud", "virtnetworkd", "virtstoraged", "virtnodedevd"];
const READS: usize = 2000;

fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("VIRT_BENCH_BIN_DIR") {
        return d.into();
    }
    // target/release/deps/runtime-HASH -> target/release
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent()?.parent().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("target/release"))
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

async fn proxy(conn: &zbus::Connection, daemon: &str) -> anyhow::Result<ConnectProxy<'static>> {
    Ok(ConnectProxy::builder(conn)
        .destination(format!("org.libvirt.{daemon}"))?
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await?)
}

async fn median_read(p: &ConnectProxy<'_>) -> anyhow::Result<Duration> {
    let mut samples = Vec::with_capacity(READS);
    for _ in 0..READS {
        let t = Instant::now();
        p.lib_version().await?;
        samples.push(t.elapsed());
    }
    samples.sort();
    Ok(samples[READS / 2])
}

async fn bench(daemon: &str, bin: &str) -> anyhow::Result<()> {
    let bus = TestBus::start()?;

    // Cold bus activation.
    let dirs = TestDirs::new()?;
    let cmdline = Daemon::builder(bin, daemon).command_line(&dirs);
    bus.add_activatable(daemon, &cmdline)?;
    let conn = bus.connection().await?;
    let p = proxy(&conn, daemon).await?;
    let t = Instant::now();
    p.lib_version().await?;
    let activation = t.elapsed();
    if let Some(pid) = bus.owner_pid(&format!("org.libvirt.{daemon}")).await? {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        wait_gone(pid, Duration::from_secs(10));
    }
    std::fs::remove_file(
        bus.service_dir()
            .join(format!("org.libvirt.{daemon}.service")),
    )?;

    // Direct start to first reply.
    let t = Instant::now();
    let d = Daemon::builder(bin, daemon).spawn(&bus).await?;
    p.lib_version().await?;
    let start = t.elapsed();

    let over_bus = median_read(&p).await?;
    let peer = d.peer_connection().await?;
    let pp = proxy(&peer, daemon).await?;
    let over_peer = median_read(&pp).await?;

    println!(
        "{daemon:<13} activation->reply {:>10}   spawn->reply {:>10}   property read: bus {:>9}  peer {:>9}",
        ms(activation),
        ms(start),
        ms(over_bus),
        ms(over_peer)
    );
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let dir = bin_dir();
    println!(
        "runtime benchmark (binaries in {}; medians of {READS} reads)",
        dir.display()
    );
    for daemon in DAEMONS {
        let bin = dir.join(daemon);
        if !bin.exists() {
            anyhow::bail!(
                "{} is missing: run `cargo build --release --bins` first",
                bin.display()
            );
        }
        bench(daemon, &bin.to_string_lossy()).await?;
    }
    Ok(())
}
