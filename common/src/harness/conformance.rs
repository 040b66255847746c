//! What every daemon's runtime must do, checked against the real binary: each function
//! is one test, generated for a daemon by `runtime_conformance_tests!`.

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};

use super::{is_gone, wait_gone, Daemon, TestBus, TestDirs};
use crate::proxies::ConnectProxy;

async fn connect_proxy<'a>(
    conn: &zbus::Connection,
    daemon: &str,
) -> anyhow::Result<ConnectProxy<'a>> {
    Ok(ConnectProxy::builder(conn)
        .destination(format!("org.libvirt.{daemon}"))?
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await?)
}

/// The daemon owns its name, tells systemd it is ready, and answers the shared
/// Connect properties.
pub async fn starts_owns_name_and_notifies_ready(daemon: &str, bin: &str) -> anyhow::Result<()> {
    let bus = TestBus::start()?;
    let dirs = TestDirs::new()?;
    let notify_path = dirs.root.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path)?;
    notify.set_read_timeout(Some(Duration::from_secs(10)))?;
    let d = Daemon::builder(bin, daemon)
        .dirs(dirs.clone())
        .env("NOTIFY_SOCKET", &notify_path)
        .spawn(&bus)
        .await?;
    let mut buf = [0u8; 512];
    let n = notify.recv(&mut buf).context("no sd_notify message")?;
    let msg = String::from_utf8_lossy(&buf[..n]);
    ensure!(msg.contains("READY=1"), "expected READY=1, got {msg:?}");
    ensure!(bus.owner_pid(&d.bus_name()).await? == Some(d.pid));

    let conn = bus.connection().await?;
    let p = connect_proxy(&conn, daemon).await?;
    ensure!(p.lib_version().await? == crate::connect::LIB_VERSION);
    ensure!(p.hostname().await? == crate::connect::hostname());
    ensure!(!p.encrypted().await?);
    ensure!(p.secure().await?);
    ensure!(p.version().await? > 0);
    Ok(())
}

fn busctl(address: &str, daemon: &str) -> anyhow::Result<String> {
    let out = Command::new("busctl")
        .arg(format!("--address={address}"))
        .args([
            "--timeout=10",
            "introspect",
            &format!("org.libvirt.{daemon}"),
            "/org/libvirt/QEMU",
        ])
        .output()
        .context("cannot run busctl")?;
    ensure!(
        out.status.success(),
        "busctl introspect failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn check_introspection(text: &str) -> anyhow::Result<()> {
    for want in [
        "org.libvirt.Connect",
        ".Hostname",
        ".LibVersion",
        ".Version",
        ".Encrypted",
        ".Secure",
    ] {
        ensure!(text.contains(want), "introspection lacks {want}:\n{text}");
    }
    Ok(())
}

pub async fn busctl_introspects_over_the_bus(daemon: &str, bin: &str) -> anyhow::Result<()> {
    let bus = TestBus::start()?;
    let _d = Daemon::builder(bin, daemon).spawn(&bus).await?;
    let address = bus.address.clone();
    let daemon = daemon.to_owned();
    let text = tokio::task::spawn_blocking(move || busctl(&address, &daemon)).await??;
    check_introspection(&text)
}

/// The same objects answer on the daemon's own socket, to busctl (which greets with
/// `Hello`) and to a plain peer-to-peer zbus client.
pub async fn busctl_works_peer_to_peer(daemon: &str, bin: &str) -> anyhow::Result<()> {
    let bus = TestBus::start()?;
    let d = Daemon::builder(bin, daemon).spawn(&bus).await?;
    let mode = std::fs::metadata(d.socket())?.permissions();
    ensure!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o077 == 0,
        "socket is accessible to others"
    );
    let address = format!("unix:path={}", d.socket().display());
    let name = daemon.to_owned();
    let text = tokio::task::spawn_blocking(move || busctl(&address, &name)).await??;
    check_introspection(&text)?;
    let conn = d.peer_connection().await?;
    let p = ConnectProxy::builder(&conn)
        .destination(d.bus_name())?
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await?;
    ensure!(p.hostname().await? == crate::connect::hostname());
    Ok(())
}

/// The first call to the name starts the daemon through the bus' activation file.
pub async fn bus_activation_starts_it(daemon: &str, bin: &str) -> anyhow::Result<()> {
    let bus = TestBus::start()?;
    let dirs = TestDirs::new()?;
    let cmdline = Daemon::builder(bin, daemon).command_line(&dirs);
    bus.add_activatable(daemon, &cmdline)?;
    let name = format!("org.libvirt.{daemon}");
    ensure!(
        bus.owner_pid(&name).await?.is_none(),
        "running before the first call"
    );

    let conn = bus.connection().await?;
    let p = connect_proxy(&conn, daemon).await?;
    ensure!(p.lib_version().await? == crate::connect::LIB_VERSION);
    let pid = bus
        .owner_pid(&name)
        .await?
        .context("nobody owns the name after activation")?;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))?;
    ensure!(
        exe == std::fs::canonicalize(bin)?,
        "the owner is {}, not {bin}",
        exe.display()
    );
    // It is the bus' child, not ours: stop it by PID and check it went.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    ensure!(
        wait_gone(pid, Duration::from_secs(10)),
        "activated daemon ignored SIGTERM"
    );
    Ok(())
}

/// `systemd-socket-activate` holds the socket; the daemon starts on the first
/// connection and serves on the socket it was handed.
pub async fn socket_activation_starts_it(daemon: &str, bin: &str) -> anyhow::Result<()> {
    let bus = TestBus::start()?;
    let dirs = TestDirs::new()?;
    let socket = dirs.runtime.join(format!("{daemon}-sock"));
    // systemd-socket-activate passes on only the variables named with -E.
    let mut argv = vec![
        "-l".into(),
        socket.clone().into_os_string(),
        "-E".into(),
        format!("DBUS_SESSION_BUS_ADDRESS={}", bus.address).into(),
    ];
    argv.extend(Daemon::builder(bin, daemon).command_line(&dirs));
    let log = std::fs::File::create(dirs.root.path().join("activate.log"))?;
    let mut child = Command::new("systemd-socket-activate")
        .args(&argv)
        .env("DBUS_SESSION_BUS_ADDRESS", &bus.address)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("cannot run systemd-socket-activate")?;
    let result = async {
        let start = Instant::now();
        while !socket.exists() {
            ensure!(
                start.elapsed() < Duration::from_secs(10),
                "socket never appeared"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let name = format!("org.libvirt.{daemon}");
        ensure!(
            bus.owner_pid(&name).await?.is_none(),
            "started before the first connection"
        );
        let address = format!("unix:path={}", socket.display());
        let d = daemon.to_owned();
        let text = tokio::task::spawn_blocking(move || busctl(&address, &d)).await??;
        check_introspection(&text)?;
        // systemd-socket-activate execs the daemon in its own process.
        ensure!(
            bus.owner_pid(&name).await? == Some(child.id()),
            "the activated daemon does not own its name"
        );
        Ok(())
    }
    .await;
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    let status = child.wait()?;
    result?;
    ensure!(status.success(), "exit status {status} after SIGTERM");
    Ok(())
}

/// With `--timeout 2` the daemon stays while called and exits 0 once idle.
pub async fn idle_timeout_exits_zero(daemon: &str, bin: &str) -> anyhow::Result<()> {
    let bus = TestBus::start()?;
    let mut d = Daemon::builder(bin, daemon)
        .arg("--timeout")
        .arg("2")
        .spawn(&bus)
        .await?;
    let conn = bus.connection().await?;
    let p = connect_proxy(&conn, daemon).await?;
    // Calls every 0.5 s for 3.5 s keep it alive past its timeout.
    for _ in 0..7 {
        p.hostname().await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    ensure!(d.running(), "exited although it was being called");
    let status = d
        .wait_exit(Duration::from_secs(15))
        .context("did not exit when idle")?;
    ensure!(status.success(), "idle exit status {status}");
    ensure!(!d.socket().exists(), "socket file left behind");
    Ok(())
}

pub async fn sigterm_exits_zero_and_cleans_up(daemon: &str, bin: &str) -> anyhow::Result<()> {
    let bus = TestBus::start()?;
    let mut d = Daemon::builder(bin, daemon).spawn(&bus).await?;
    let pid = d.pid;
    let status = d.terminate()?;
    ensure!(status.success(), "SIGTERM exit status {status}");
    ensure!(is_gone(pid));
    ensure!(!d.socket().exists(), "socket file left behind");
    let pidfile = d.dirs.runtime.join(format!("{daemon}.pid"));
    ensure!(!pidfile.exists(), "pid file left behind");
    ensure!(
        bus.owner_pid(&d.bus_name()).await?.is_none(),
        "name still owned"
    );
    Ok(())
}

/// A second instance fails with a clear message, whether it shares the first one's
/// folders (pid-file lock) or only its bus (name already owned); the first keeps serving.
pub async fn second_instance_fails_clearly(daemon: &str, bin: &str) -> anyhow::Result<()> {
    let bus = TestBus::start()?;
    let first = Daemon::builder(bin, daemon).spawn(&bus).await?;
    for (dirs, expect) in [
        (first.dirs.clone(), "already running"),
        (TestDirs::new()?, "already owned"),
    ] {
        let out = Command::new(bin)
            .args(dirs.args())
            .env("DBUS_SESSION_BUS_ADDRESS", &bus.address)
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            bail!("second instance exited 0: {stderr}");
        }
        ensure!(stderr.contains(expect), "expected '{expect}' in: {stderr}");
    }
    ensure!(bus.owner_pid(&first.bus_name()).await? == Some(first.pid));
    ensure!(first.socket().exists());
    Ok(())
}
