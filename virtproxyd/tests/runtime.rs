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
/// signals), gone once it left and the front was idle for the timeout.
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
