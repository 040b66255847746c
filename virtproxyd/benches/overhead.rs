//! What the front adds to a call: the same cheap call (`ListDomains` with no domains)
//! to `org.libvirt.virtqemud` directly and to `org.libvirt` through virtproxyd, in
//! alternating rounds on one private bus, then `ListDomains` with 1000 defined domains
//! both ways. Prints median and p99; asserts nothing.
//!
//!     cargo bench -p virtproxyd --bench overhead   (after cargo build --workspace)

use std::time::{Duration, Instant};

mod support;
use support::{ms, percentile, Stack, CONNECT};

async fn list(conn: &zbus::Connection, dest: &str) -> usize {
    let reply = conn
        .call_method(
            Some(dest),
            CONNECT,
            Some("org.libvirt.Connect"),
            "ListDomains",
            &(0u32,),
        )
        .await
        .expect("ListDomains");
    let paths: Vec<zbus::zvariant::OwnedObjectPath> = reply.body().deserialize().expect("ao");
    paths.len()
}

/// `rounds` rounds of `per_round` calls to each destination, alternating.
async fn measure(
    conn: &zbus::Connection,
    rounds: usize,
    per_round: usize,
) -> (Vec<Duration>, Vec<Duration>) {
    let (mut direct, mut front) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        for (dest, out) in [
            ("org.libvirt.virtqemud", &mut direct),
            ("org.libvirt", &mut front),
        ] {
            for _ in 0..per_round {
                let t = Instant::now();
                list(conn, dest).await;
                out.push(t.elapsed());
            }
        }
    }
    direct.sort();
    front.sort();
    (direct, front)
}

fn report(what: &str, direct: &[Duration], front: &[Duration]) {
    let (dm, fm) = (percentile(direct, 0.5), percentile(front, 0.5));
    println!(
        "{what}: direct median {:.3} ms p99 {:.3} ms | via org.libvirt median {:.3} ms p99 {:.3} ms | added median {:.3} ms ({} calls each)",
        ms(dm),
        ms(percentile(direct, 0.99)),
        ms(fm),
        ms(percentile(front, 0.99)),
        ms(fm.saturating_sub(dm)),
        direct.len()
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let stack = Stack::start().await;
    let conn = stack.bus.connection().await.expect("conn");
    // Warm both paths (first calls set up match rules and caches).
    measure(&conn, 1, 200).await;
    let (direct, front) = measure(&conn, 10, 500).await;
    report("ListDomains, 0 domains", &direct, &front);

    for i in 0..1000 {
        let xml = format!(
            "<domain type='qemu'><name>bench{i}</name><memory unit='MiB'>64</memory>\
             <os><type arch='x86_64'>hvm</type></os></domain>"
        );
        conn.call_method(
            Some("org.libvirt.virtqemud"),
            CONNECT,
            Some("org.libvirt.Connect"),
            "DomainDefineXML",
            &(xml,),
        )
        .await
        .expect("define");
    }
    assert_eq!(list(&conn, "org.libvirt").await, 1000);
    let (direct, front) = measure(&conn, 5, 20).await;
    report("ListDomains, 1000 domains", &direct, &front);
}
