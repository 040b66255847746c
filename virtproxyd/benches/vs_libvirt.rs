//! `ListDomains(0)` with 1000 defined domains, the same zbus client code and the same
//! number of calls, in alternating rounds of one run:
//! (a) through the project's front `org.libvirt` (virtproxyd) to virtqemud, on a private
//!     bus;
//! (b) through Debian 12's libvirt-dbus over its libvirtd (QEMU driver), in the sandbox
//!     of scripts/reference-libvirt.sh (needs root and the packages, which the bench
//!     never installs: `scripts/reference-libvirt.sh true` installs them once).
//!
//! If (b) cannot run, the bench says why and prints (a) only. Prints median and p99;
//! asserts nothing.
//!
//!     cargo build -p virtqemud -p virtproxyd --release
//!     cargo bench -p virtproxyd --bench vs_libvirt      (VIRT_BENCH_CALLS=N, default 500)

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod support;
use support::{ms, percentile, Stack, CONNECT};

const DOMAINS: usize = 1000;

async fn list(conn: &zbus::Connection) -> usize {
    let reply = conn
        .call_method(
            Some("org.libvirt"),
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

/// The same 1000 small domains on either side, defined through `org.libvirt`.
async fn define_all(conn: &zbus::Connection) {
    for i in 0..DOMAINS {
        let xml = format!(
            "<domain type='qemu'><name>bench{i}</name><memory unit='MiB'>64</memory>\
             <os><type arch='x86_64' machine='pc'>hvm</type></os></domain>"
        );
        conn.call_method(
            Some("org.libvirt"),
            CONNECT,
            Some("org.libvirt.Connect"),
            "DomainDefineXML",
            &(xml,),
        )
        .await
        .expect("DomainDefineXML");
    }
    assert_eq!(list(conn).await, DOMAINS, "not every domain was defined");
}

/// Debian's libvirtd and libvirt-dbus in the sandbox, alive while this lives: the
/// sandbox's command waits for its stdin to close, then everything in it is stopped.
struct Reference {
    child: Child,
    address: String,
}

impl Reference {
    fn start() -> Result<Reference, String> {
        if !nix::unistd::geteuid().is_root() {
            return Err("needs root (namespaces and libvirtd)".into());
        }
        let script: PathBuf =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/reference-libvirt.sh");
        let mut child = Command::new(&script)
            .args([
                "--no-install",
                "--",
                "sh",
                "-c",
                "echo READY $REFERENCE_LIBVIRT_BUS; exec cat >/dev/null",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("{}: {e}", script.display()))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        match line.trim().strip_prefix("READY ") {
            Some(a) if !a.is_empty() => Ok(Reference {
                child,
                address: a.to_string(),
            }),
            _ => {
                drop(child.stdin.take());
                let status = child.wait().map_err(|e| e.to_string())?;
                Err(format!("the sandbox did not start ({status}); see above"))
            }
        }
    }
}

impl Drop for Reference {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

fn report(what: &str, sorted: &[Duration]) {
    println!(
        "ListDomains, {DOMAINS} domains, {what}: median {:.3} ms p99 {:.3} ms ({} calls)",
        ms(percentile(sorted, 0.5)),
        ms(percentile(sorted, 0.99)),
        sorted.len()
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let calls: usize = std::env::var("VIRT_BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let stack = Stack::start().await;
    let ours = stack.bus.connection().await.expect("conn");
    define_all(&ours).await;

    let reference = match Reference::start() {
        Ok(r) => Some(r),
        Err(e) => {
            println!("(b) libvirt-dbus over libvirtd cannot run here: {e}; printing (a) only");
            None
        }
    };
    let theirs = match &reference {
        Some(r) => {
            let conn = zbus::connection::Builder::address(r.address.as_str())
                .expect("address")
                .build()
                .await
                .expect("the sandbox's bus");
            define_all(&conn).await;
            Some(conn)
        }
        None => None,
    };

    // Warm-up, then alternating rounds so both sides see the same machine load.
    let sides: Vec<&zbus::Connection> = std::iter::once(&ours).chain(theirs.as_ref()).collect();
    for c in &sides {
        for _ in 0..20 {
            list(c).await;
        }
    }
    let rounds = 10;
    let per_round = calls.div_ceil(rounds);
    let mut times = vec![Vec::new(); sides.len()];
    for _ in 0..rounds {
        for (c, out) in sides.iter().zip(times.iter_mut()) {
            for _ in 0..per_round {
                let t = Instant::now();
                list(c).await;
                out.push(t.elapsed());
            }
        }
    }
    for t in &mut times {
        t.sort();
    }
    report("(a) org.libvirt -> virtproxyd -> virtqemud", &times[0]);
    if let Some(t) = times.get(1) {
        report("(b) org.libvirt = libvirt-dbus -> libvirtd 9.0", t);
        let (a, b) = (percentile(&times[0], 0.5), percentile(t, 0.5));
        println!(
            "median ratio libvirt-dbus / ours: {:.2}",
            b.as_secs_f64() / a.as_secs_f64()
        );
    }
    drop(theirs);
    drop(reference);
}
