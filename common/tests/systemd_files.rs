//! The files in systemd/: the units pass `systemd-analyze verify`, every daemon has its
//! full set, and the system-bus policy lets root own and call while other users may
//! only introspect and read properties — checked on a real system-type dbus-daemon.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{ensure, Context as _};

const DAEMONS: [&str; 4] = ["virtqemud", "virtnetworkd", "virtstoraged", "virtnodedevd"];

fn systemd_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../systemd")
}

#[test]
fn every_daemon_has_units_activation_and_policy() {
    let dir = systemd_dir();
    for d in DAEMONS {
        let service = std::fs::read_to_string(dir.join(format!("{d}.service"))).unwrap();
        assert!(service.contains("Type=notify"), "{d}.service");
        assert!(
            service.contains(&format!("BusName=org.libvirt.{d}")),
            "{d}.service"
        );
        let socket = std::fs::read_to_string(dir.join(format!("{d}.socket"))).unwrap();
        assert!(socket.contains(&format!("ListenStream=/run/libvirt/{d}-sock")));
        assert!(socket.contains("SocketMode=0600"));
        let sys = std::fs::read_to_string(
            dir.join(format!("dbus-1/system-services/org.libvirt.{d}.service")),
        )
        .unwrap();
        assert!(sys.contains(&format!("SystemdService={d}.service")));
        let ses =
            std::fs::read_to_string(dir.join(format!("dbus-1/services/org.libvirt.{d}.service")))
                .unwrap();
        assert!(ses.contains(&format!("Name=org.libvirt.{d}")) && ses.contains("--session"));
        common::xml::parse(
            // The policy's DOCTYPE is what dbus-daemon expects; our reader refuses DTDs.
            &std::fs::read_to_string(dir.join(format!("dbus-1/system.d/org.libvirt.{d}.conf")))
                .unwrap()
                .lines()
                .filter(|l| !l.starts_with("<!DOCTYPE") && !l.starts_with(" \"http"))
                .collect::<Vec<_>>()
                .join("\n"),
        )
        .unwrap();
    }
}

#[test]
fn units_pass_systemd_analyze_verify() {
    let dir = systemd_dir();
    let units: Vec<PathBuf> = DAEMONS
        .iter()
        .flat_map(|d| {
            [
                dir.join(format!("{d}.service")),
                dir.join(format!("{d}.socket")),
            ]
        })
        .collect();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&units)
        .output()
        .expect("systemd-analyze (package systemd) is needed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The binaries are not installed on a build machine; anything else is a defect.
    let problems: Vec<&str> = stderr
        .lines()
        .filter(|l| !l.contains("is not executable: No such file or directory"))
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert!(problems.is_empty(), "systemd-analyze verify:\n{stderr}");
}

struct Fake;

#[zbus::interface(name = "org.libvirt.Connect")]
impl Fake {
    #[zbus(property)]
    fn hostname(&self) -> String {
        "policy-test".into()
    }

    #[zbus(name = "ListDomains")]
    fn list_domains(&self, _flags: u32) -> Vec<zbus::zvariant::OwnedObjectPath> {
        Vec::new()
    }
}

fn busctl_as(uid: Option<u32>, address: &str, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new("busctl");
    cmd.arg(format!("--address={address}"))
        .arg("--timeout=10")
        .args(args)
        .stdin(Stdio::null());
    if let Some(uid) = uid {
        std::os::unix::process::CommandExt::uid(&mut cmd, uid);
        std::os::unix::process::CommandExt::gid(&mut cmd, uid);
    }
    cmd.output().expect("busctl")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn system_bus_policy_lets_everyone_call_and_keeps_properties_for_root() -> anyhow::Result<()>
{
    ensure!(
        nix::unistd::geteuid().is_root(),
        "this test checks root against another user and must run as root"
    );
    let dir = tempfile::Builder::new().prefix("vp").tempdir_in("/tmp")?;
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let socket = dir.path().join("system_bus");
    let conf = dir.path().join("system.conf");
    // The default-deny shape of Debian's system.conf, plus our policy files.
    std::fs::write(
        &conf,
        format!(
            "<busconfig>\n <type>system</type>\n <listen>unix:path={}</listen>\n \
             <auth>EXTERNAL</auth>\n <policy context='default'>\n  <allow user='*'/>\n  \
             <deny own='*'/>\n  <deny send_type='method_call'/>\n  <allow send_type='signal'/>\n  \
             <allow send_requested_reply='true' send_type='method_return'/>\n  \
             <allow send_requested_reply='true' send_type='error'/>\n  \
             <allow receive_type='method_call'/>\n  <allow receive_type='method_return'/>\n  \
             <allow receive_type='error'/>\n  <allow receive_type='signal'/>\n  \
             <allow send_destination='org.freedesktop.DBus' send_interface='org.freedesktop.DBus'/>\n  \
             <allow send_destination='org.freedesktop.DBus' send_interface='org.freedesktop.DBus.Introspectable'/>\n \
             </policy>\n <includedir>{}</includedir>\n</busconfig>\n",
            socket.display(),
            systemd_dir().join("dbus-1/system.d").canonicalize()?.display()
        ),
    )?;
    let mut bus = Command::new("dbus-daemon")
        .arg(format!("--config-file={}", conf.display()))
        .args(["--nofork", "--print-address=1"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("dbus-daemon")?;
    let checks = async {
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(bus.stdout.take().context("stdout")?),
            &mut line,
        )?;
        let address = format!("unix:path={}", socket.display());
        // Root may own the name (this test plays the daemon) ...
        let conn = zbus::connection::Builder::address(address.as_str())?
            .serve_at("/org/libvirt/QEMU", Fake)?
            .name("org.libvirt.virtqemud")?
            .build()
            .await
            .context("root could not own org.libvirt.virtqemud")?;
        let nobody = Some(65534);
        let addr = address.clone();
        let (read, introspect, call_other, call_root) = tokio::task::spawn_blocking(move || {
            let d = "org.libvirt.virtqemud";
            let p = "/org/libvirt/QEMU";
            (
                busctl_as(
                    nobody,
                    &addr,
                    &["get-property", d, p, "org.libvirt.Connect", "Hostname"],
                ),
                // The XML only: a plain `busctl introspect` also reads every property.
                busctl_as(nobody, &addr, &["introspect", "--xml-interface", d, p]),
                busctl_as(
                    nobody,
                    &addr,
                    &["call", d, p, "org.libvirt.Connect", "ListDomains", "u", "0"],
                ),
                busctl_as(
                    None,
                    &addr,
                    &["call", d, p, "org.libvirt.Connect", "ListDomains", "u", "0"],
                ),
            )
        })
        .await?;
        let text = |o: &std::process::Output| {
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            )
        };
        // Properties are answered by zbus before a daemon could ask polkit: root's only
        // (other users read them through org.libvirt, which checks first).
        ensure!(
            !read.status.success(),
            "nobody could read a property directly"
        );
        ensure!(
            text(&read).contains("denied") || text(&read).contains("Access"),
            "unexpected refusal of a property read: {}",
            text(&read)
        );
        ensure!(
            introspect.status.success(),
            "nobody cannot introspect: {}",
            text(&introspect)
        );
        // Methods reach the daemon, whose decision is polkit's (docs/access.md); the
        // fake here answers everyone.
        ensure!(
            call_other.status.success(),
            "the bus refused nobody's method call: {}",
            text(&call_other)
        );
        ensure!(
            call_root.status.success(),
            "root cannot call: {}",
            text(&call_root)
        );
        // ... and another user may not own it.
        let own = Command::new("dbus-send")
            .arg(format!("--bus={address}"))
            .args([
                "--print-reply",
                "--dest=org.freedesktop.DBus",
                "/org/freedesktop/DBus",
                "org.freedesktop.DBus.RequestName",
                "string:org.libvirt.virtnetworkd",
                "uint32:4",
            ])
            .uid(65534)
            .gid(65534)
            .output()?;
        ensure!(
            !own.status.success(),
            "nobody could own org.libvirt.virtnetworkd"
        );
        drop(conn);
        Ok(())
    };
    // A policy that drops replies shows up as a hang: bound it.
    let result = match tokio::time::timeout(std::time::Duration::from_secs(60), checks).await {
        Ok(r) => r,
        Err(_) => Err(anyhow::anyhow!(
            "policy checks timed out (replies dropped by policy?)"
        )),
    };
    let _ = bus.kill();
    let _ = bus.wait();
    result
}

use std::os::unix::process::CommandExt as _;
