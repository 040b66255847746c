//! The front's life: a daemon killed mid-call is answered with an error (never a hang),
//! idle exit (but not while a caller that may wait for signals is still connected),
//! SIGTERM, a second instance, bus activation by `org.libvirt`, the peer socket, and
//! `busctl tree org.libvirt` showing the daemons' objects.

#![allow(clippy::too_many_lines)]

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use common::harness::{Daemon, TestDirs};
use zbus::zvariant::Fd;

mod support;
use support::*;

/// A child stopped (SIGTERM, reaped) when dropped, if it was not stopped before.
struct StopOnDrop(std::process::Child);

impl StopOnDrop {
    fn stop(&mut self) -> std::io::Result<std::process::ExitStatus> {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        self.0.wait()
    }
}

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.stop();
        }
    }
}

fn pipe() -> (std::fs::File, std::fs::File) {
    let (r, w) = nix::unistd::pipe().expect("pipe");
    (r.into(), w.into())
}

/// An upload that waits on a pipe nobody writes to is pending in virtstoraged when
/// virtstoraged is killed: the caller gets libvirt's error at once, and the next call
/// starts virtstoraged again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_during_a_call_is_an_error_not_a_hang() {
    let s = Stack::start(&[]).await;
    let c = s.conn.clone();
    let pool = path_of(
        &ok(
            &c,
            CONNECT,
            "org.libvirt.Connect",
            "StoragePoolCreateXML",
            &(pool_xml(s.scratch.path()), 0u32),
        )
        .await,
    );
    let vol = path_of(
        &ok(
            &c,
            &pool,
            "org.libvirt.StoragePool",
            "StorageVolCreateXML",
            &(VOL_XML, 0u32),
        )
        .await,
    );
    let (r, mut w) = pipe();
    // A part of the volume: whole blocks, as the copy moves whole blocks.
    w.write_all(&[0x55u8; 16384]).expect("write");
    let vol2 = vol.clone();
    let c2 = c.clone();
    let upload = tokio::spawn(async move {
        call(
            &c2,
            &vol2,
            "org.libvirt.StorageVol",
            "Upload",
            &(Fd::from(&r), 0u64, 1u64 << 20, 0u32),
        )
        .await
    });
    // The call is in virtstoraged once virtstoraged holds the pipe the fd went out as.
    let pipe_link = format!(
        "pipe:[{}]",
        std::os::unix::fs::MetadataExt::ino(&w.metadata().expect("pipe stat"))
    );
    let pid = s
        .bus
        .owner_pid("org.libvirt.virtstoraged")
        .await
        .expect("owner")
        .expect("virtstoraged runs");
    let holds_pipe = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| {
                d.flatten().any(|e| {
                    std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy() == pipe_link)
                })
            })
            .unwrap_or(false)
    };
    let start = Instant::now();
    while !holds_pipe() {
        if upload.is_finished() {
            panic!("the upload ended early: {:?}", upload.await);
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the upload never reached virtstoraged"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!upload.is_finished());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill");
    let answer = tokio::time::timeout(Duration::from_secs(20), upload)
        .await
        .expect("the caller was left hanging")
        .expect("task");
    drop(w);
    match answer {
        Err(zbus::Error::MethodError(name, Some(text), _)) => {
            assert_eq!(name.as_str(), "org.libvirt.Error");
            assert!(text.starts_with("internal error: virtstoraged exited before answering org.libvirt.StorageVol.Upload"), "{text}");
        }
        other => panic!("expected org.libvirt.Error, got {other:?}"),
    }
    // The front lives on and the next call brings virtstoraged back.
    let pools = paths_of(
        &ok(
            &c,
            CONNECT,
            "org.libvirt.Connect",
            "ListStoragePools",
            &(0u32,),
        )
        .await,
    );
    assert!(pools.contains(&pool), "{pools:?}");
    let again = s
        .bus
        .owner_pid("org.libvirt.virtstoraged")
        .await
        .expect("owner")
        .expect("virtstoraged again");
    assert_ne!(again, pid);
}

/// `--timeout 2`: alive while a caller stays on the bus (it may be waiting for
/// signals) or a peer is connected, gone once they left and the front was idle for the
/// timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_exit_once_its_callers_are_gone() {
    let mut s = Stack::start(&["--timeout", "2"]).await;
    let client = s.bus.connection().await.expect("client");
    ok(
        &client,
        CONNECT,
        "org.libvirt.Connect",
        "ListDomains",
        &(0u32,),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(s.front.running(), "exited while a caller was connected");
    drop(client);
    // A peer connection keeps it too, until it closes.
    let peer = s.front.peer_connection().await.expect("peer");
    peer.call_method(
        Some("org.libvirt"),
        CONNECT,
        Some("org.libvirt.Connect"),
        "ListDomains",
        &(0u32,),
    )
    .await
    .expect("ListDomains over the peer socket");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(s.front.running(), "exited while a peer was connected");
    drop(peer);
    let status = s
        .front
        .wait_exit(Duration::from_secs(15))
        .expect("did not exit when idle");
    assert!(status.success(), "idle exit status {status}");
    assert!(!s.front.socket().exists(), "socket file left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_and_a_second_instance() {
    let mut s = Stack::start(&[]).await;
    for (dirs, expect) in [
        (s.front.dirs.clone(), "already running"),
        (TestDirs::new().expect("dirs"), "already owned"),
    ] {
        let out = Command::new(FRONT)
            .args(dirs.args())
            .env("DBUS_SESSION_BUS_ADDRESS", &s.bus.address)
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "second instance exited 0");
        assert!(stderr.contains(expect), "expected '{expect}' in: {stderr}");
    }
    let status = s.front.terminate().expect("terminate");
    assert!(status.success(), "{status}");
    assert!(!s.front.socket().exists());
    assert!(!s.front.dirs.runtime.join("virtproxyd.pid").exists());
    for name in ["org.libvirt", "org.libvirt.virtproxyd"] {
        assert!(
            s.bus.owner_pid(name).await.expect("owner").is_none(),
            "{name}"
        );
    }
}

/// A libvirt-dbus client's first call starts the front (activation file for
/// `org.libvirt`), which starts the daemon it forwards to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_activation_by_org_libvirt() {
    let s = Stack::start(&[]).await;
    let mut front = s.front;
    front.terminate().expect("stop the started one");
    let dirs = TestDirs::new().expect("dirs");
    let exec: Vec<String> = Daemon::builder(FRONT, "virtproxyd")
        .command_line(&dirs)
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    std::fs::write(
        s.bus.service_dir().join("org.libvirt.service"),
        format!(
            "[D-BUS Service]\nName=org.libvirt\nExec={}\n",
            exec.join(" ")
        ),
    )
    .expect("activation file");
    let c = s.bus.connection().await.expect("conn");
    let nets = paths_of(&ok(&c, CONNECT, "org.libvirt.Connect", "ListNetworks", &(0u32,)).await);
    assert!(nets.is_empty(), "{nets:?}");
    let pid = s
        .bus
        .owner_pid("org.libvirt")
        .await
        .expect("owner")
        .expect("front");
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("exe");
    assert_eq!(exe, std::fs::canonicalize(FRONT).expect("canonical"));
    assert!(s
        .bus
        .owner_pid("org.libvirt.virtnetworkd")
        .await
        .expect("owner")
        .is_some());
    drop(dirs);
}

/// `busctl tree org.libvirt` walks the whole tree (item 7's demo command), on the bus
/// and on the front's own socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busctl_tree_shows_the_daemons_objects() {
    let s = Stack::start(&[]).await;
    let dom = path_of(
        &ok(
            &s.conn,
            CONNECT,
            "org.libvirt.Connect",
            "DomainDefineXML",
            &(domain_xml("tree"),),
        )
        .await,
    );
    let computer = path_of(
        &ok(
            &s.conn,
            CONNECT,
            "org.libvirt.Connect",
            "NodeDeviceLookupByName",
            &("computer",),
        )
        .await,
    );
    for address in [
        s.bus.address.clone(),
        format!("unix:path={}", s.front.socket().display()),
    ] {
        let out = tokio::task::spawn_blocking(move || {
            Command::new("busctl")
                .arg(format!("--address={address}"))
                .args(["--timeout=20", "--list", "tree", "org.libvirt"])
                .output()
        })
        .await
        .expect("task")
        .expect("busctl");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for want in [CONNECT, dom.as_str(), computer.as_str()] {
            assert!(
                text.lines().any(|l| l.trim() == want),
                "{want} not in:\n{text}"
            );
        }
    }
}

/// READY=1 reaches systemd's notify socket once both names are owned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifies_ready_after_owning_both_names() {
    let bus = common::harness::TestBus::start().expect("bus");
    let dirs = TestDirs::new().expect("dirs");
    let notify_path = dirs.root.path().join("notify");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).expect("bind");
    notify
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let d = Daemon::builder(FRONT, "virtproxyd")
        .dirs(dirs.clone())
        .env("NOTIFY_SOCKET", &notify_path)
        .spawn(&bus)
        .await
        .expect("virtproxyd");
    let mut buf = [0u8; 512];
    let n = notify.recv(&mut buf).expect("no sd_notify message");
    let msg = String::from_utf8_lossy(&buf[..n]);
    assert!(msg.contains("READY=1"), "{msg}");
    for name in ["org.libvirt", "org.libvirt.virtproxyd"] {
        assert_eq!(
            bus.owner_pid(name).await.expect("owner"),
            Some(d.pid),
            "{name}"
        );
    }
}

/// `systemd-socket-activate` holds the socket; the front starts on the first
/// connection, serves on the socket it was handed and owns its names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_activation_starts_it() {
    let s = Stack::start(&[]).await;
    let mut stopped = s.front;
    stopped.terminate().expect("stop the started one");
    let dirs = TestDirs::new().expect("dirs");
    let socket = dirs.runtime.join("virtproxyd-sock");
    let mut argv: Vec<std::ffi::OsString> = vec![
        "-l".into(),
        socket.clone().into_os_string(),
        "-E".into(),
        format!("DBUS_SESSION_BUS_ADDRESS={}", s.bus.address).into(),
        // Shown only when the test fails: what the front did with the connection.
        "-E".into(),
        "RUST_LOG=debug,zbus=info".into(),
    ];
    argv.extend(Daemon::builder(FRONT, "virtproxyd").command_line(&dirs));
    let log = std::fs::File::create(dirs.root.path().join("activate.log")).expect("log");
    let child = Command::new("systemd-socket-activate")
        .args(&argv)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("systemd-socket-activate");
    // Stopped by PID also when an assertion below fails.
    let mut child = StopOnDrop(child);
    let start = Instant::now();
    while !socket.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "socket never appeared"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(s
        .bus
        .owner_pid("org.libvirt")
        .await
        .expect("owner")
        .is_none());
    let address = format!("unix:path={}", socket.display());
    let out = tokio::task::spawn_blocking(move || {
        Command::new("busctl")
            .arg(format!("--address={address}"))
            .args(["--timeout=20", "introspect", "org.libvirt", CONNECT])
            .output()
    })
    .await
    .expect("task")
    .expect("busctl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let read = |p: std::path::PathBuf| std::fs::read_to_string(p).unwrap_or_default();
        panic!(
            "busctl: {}\n--- the front (activate.log):\n{}\n--- the bus and the daemons it \
             activated (bus.log):\n{}",
            String::from_utf8_lossy(&out.stderr),
            read(dirs.root.path().join("activate.log")),
            read(s.bus.dir.path().join("bus.log")),
        );
    }
    for want in [
        ".ListDomains",
        ".ListNetworks",
        ".ListStoragePools",
        ".ListNodeDevices",
    ] {
        assert!(text.contains(want), "{want} missing:\n{text}");
    }
    assert_eq!(
        s.bus.owner_pid("org.libvirt").await.expect("owner"),
        Some(child.0.id())
    );
    let status = child.stop().expect("wait");
    assert!(status.success(), "exit status {status} after SIGTERM");
}

/// On the front's own socket, calls are forwarded and the daemons' signals arrive too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_socket_forwards_calls_and_signals() {
    use futures_util::StreamExt;
    let s = Stack::start(&[]).await;
    let peer = s.front.peer_connection().await.expect("peer");
    // On a peer connection every message arrives; no match rule is needed.
    let mut stream = zbus::MessageStream::from(&peer);
    let dom = path_of(
        &ok(
            &peer,
            CONNECT,
            "org.libvirt.Connect",
            "DomainDefineXML",
            &(domain_xml("peer"),),
        )
        .await,
    );
    let wait = async {
        while let Some(Ok(m)) = stream.next().await {
            let h = m.header();
            if m.message_type() == zbus::message::Type::Signal
                && h.member().is_some_and(|n| n.as_str() == "DomainEvent")
                && m.body()
                    .deserialize::<(zbus::zvariant::OwnedObjectPath, i32, i32)>()
                    .is_ok_and(|(p, _, _)| p.as_str() == dom)
            {
                return;
            }
        }
        panic!("the peer connection closed");
    };
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .expect("no DomainEvent on the peer socket within 30 s");
}
