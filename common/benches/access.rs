//! What the access check costs a caller polkit is never asked about, printed (never
//! asserted): the first check of a bus name (one `GetConnectionUnixUser` round trip to
//! the bus) and every later one (the uid cache). The non-root figure, one polkit round
//! trip, needs polkitd and is printed by `cargo test -p virtproxyd --test polkit`.
//!
//! `cargo bench -p common --features harness --bench access`

use std::time::{Duration, Instant};

use common::access::{Access, Action};
use common::cli::Mode;
use common::harness::TestBus;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let bus = TestBus::start()?;
    let mut first = Vec::new();
    for _ in 0..50 {
        // A fresh bus name each round: its first check asks the bus for the uid.
        let conn = bus.connection().await?;
        let caller = bus.connection().await?;
        let name = caller
            .unique_name()
            .map(|n| n.to_string())
            .unwrap_or_default();
        let access = Access::new(Mode::System);
        access.attach(conn);
        let t = Instant::now();
        access.check(Some(&name), Action::Manage, "Create").await?;
        first.push(t.elapsed());
    }
    let conn = bus.connection().await?;
    let name = conn
        .unique_name()
        .map(|n| n.to_string())
        .unwrap_or_default();
    let access = Access::new(Mode::System);
    access.attach(conn);
    access.check(Some(&name), Action::Manage, "Create").await?;
    const N: u32 = 200_000;
    let t = Instant::now();
    for _ in 0..N {
        access.check(Some(&name), Action::Manage, "Create").await?;
    }
    let later = t.elapsed() / N;
    println!(
        "access check, root caller: first check of a bus name {:.3} ms (median of 50), \
         later checks {} ns each (mean of {N})",
        median(first).as_secs_f64() * 1e3,
        later.as_nanos()
    );
    Ok(())
}
