//! Connection URIs: `-c`, `LIBVIRT_DEFAULT_URI`, `qemu:///session`, `qemu+unix` to a
//! bus socket and to a daemon's peer socket, `connect` in the shell, and `uri`,
//! `hostname`, `version`.

use common::harness::{Daemon, TestBus};

mod support;
use support::{command, fails, ok, sibling, virtsh, virtsh_stdin};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uris_reach_the_daemon() {
    let bus = TestBus::start().expect("bus");
    let daemon = Daemon::builder(sibling("virtqemud"), "virtqemud")
        .spawn(&bus)
        .await
        .expect("virtqemud");
    let xml = daemon.dirs.root.path().join("u.xml");
    std::fs::write(
        &xml,
        "<domain type='qemu'><name>u1</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type></os></domain>",
    )
    .expect("xml");
    ok(virtsh(&bus, &["define", xml.to_str().expect("utf-8")]));

    let bus_socket = bus.address.trim_start_matches("unix:path=").to_string();
    let via_bus = format!("qemu+unix:///system?socket={bus_socket}");
    let via_peer = format!("qemu+unix:///system?socket={}", daemon.socket().display());

    // The session bus by name, and the default when nothing is said.
    assert!(ok(virtsh(&bus, &["-c", "qemu:///session", "list", "--all"])).contains(" u1 "));
    assert_eq!(ok(virtsh(&bus, &["uri"])), "qemu:///session\n");
    // A bus through its socket, from LIBVIRT_DEFAULT_URI; the session bus is made
    // unusable so that only the URI can have reached it.
    let out = command(&bus, &["list", "--all"])
        .env("LIBVIRT_DEFAULT_URI", &via_bus)
        .env("DBUS_SESSION_BUS_ADDRESS", "unix:path=/nonexistent")
        .output()
        .expect("virtsh");
    assert!(ok(out).contains(" u1 "));
    let out = command(&bus, &["uri"])
        .env("LIBVIRT_DEFAULT_URI", &via_bus)
        .output()
        .expect("virtsh");
    assert_eq!(ok(out), format!("{via_bus}\n"));
    // -c wins over the environment.
    let out = command(&bus, &["-c", &via_peer, "domstate", "u1"])
        .env(
            "LIBVIRT_DEFAULT_URI",
            "qemu+unix:///system?socket=/nonexistent",
        )
        .env("DBUS_SESSION_BUS_ADDRESS", "unix:path=/nonexistent")
        .output()
        .expect("virtsh");
    assert_eq!(ok(out), "shut off\n");

    // The shell's connect switches connections; a failed one reports and goes on.
    let out = command(&bus, &[])
        .env("DBUS_SESSION_BUS_ADDRESS", "unix:path=/nonexistent")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write as _;
            let mut i = c.stdin.take().expect("stdin");
            writeln!(i, "list --all\nconnect {via_peer}\ndomname u1\nuri")?;
            drop(i);
            c.wait_with_output()
        })
        .expect("virtsh");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("u1\n{via_peer}\n")
    );
    assert!(String::from_utf8_lossy(&out.stderr)
        .starts_with("error: failed to connect to 'qemu:///session'"));
    let out = virtsh_stdin(&bus, &["-c", &via_bus], "domname u1\n");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "u1\n");

    // The connection's own facts.
    let host = nix::unistd::gethostname().expect("hostname");
    assert_eq!(
        ok(virtsh(&bus, &["hostname"])).trim(),
        host.to_string_lossy()
    );
    let v = ok(virtsh(&bus, &["version"]));
    let labels: Vec<&str> = v
        .lines()
        .map(|l| l.split(':').next().unwrap_or(""))
        .collect();
    assert_eq!(
        labels,
        [
            "Compiled against library",
            "Using library",
            "Using API",
            "Running against daemon"
        ]
    );

    // URIs virtsh cannot use: libvirt's kind of message, status 1.
    for (uri, msg) in [
        ("xen:///system", "unsupported connection URI"),
        ("qemu:///nowhere", "the path must be /system or /session"),
        ("qemu://remote/system", "needs a remote transport"),
        ("qemu+ssh:///system", "needs a host"),
        ("qemu+unix:///system?socket=/nonexistent", "cannot connect"),
    ] {
        let err = fails(virtsh(&bus, &["-c", uri, "list"]));
        assert!(
            err.starts_with(&format!("error: failed to connect to '{uri}'")),
            "{err}"
        );
        assert!(err.contains(msg), "{uri}: {err}");
    }
}
