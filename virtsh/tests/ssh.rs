//! `virtsh -c qemu+ssh://...` against an sshd the test starts on loopback inside a
//! network namespace it creates, with host and user keys generated for the test. The
//! remote side's `systemd-stdio-bridge` is pointed at the test's private bus through the
//! URI's `socket` parameter, so the domains listed and started are the test daemon's.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::harness::{Daemon, NetNs, TestBus};

mod support;
use support::{ok, sibling, virtsh};

const SSHD: &str = "/usr/sbin/sshd";
const PORT: u16 = 2222;

/// sshd, ended by PID when the test ends (the namespace's drop would kill it too).
struct Sshd(Child);

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn keygen(path: &Path) {
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen (openssh-client)");
    assert!(st.success());
}

fn start_sshd(ns: &NetNs, dir: &Path) -> Sshd {
    keygen(&dir.join("host"));
    keygen(&dir.join("user"));
    std::fs::copy(dir.join("user.pub"), dir.join("authorized_keys")).expect("authorized_keys");
    let host_pub = std::fs::read_to_string(dir.join("host.pub")).expect("host.pub");
    std::fs::write(
        dir.join("known_hosts"),
        format!("[127.0.0.1]:{PORT} {host_pub}"),
    )
    .expect("known_hosts");
    // The temp folders are under /tmp (world-writable): StrictModes would refuse them.
    let conf = format!(
        "Port {PORT}\nListenAddress 127.0.0.1\nHostKey {d}/host\nPidFile {d}/sshd.pid\n\
         AuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin prohibit-password\n\
         PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
         StrictModes no\n",
        d = dir.display()
    );
    std::fs::write(dir.join("sshd_config"), conf).expect("sshd_config");
    // sshd's privilege separation folder, which its service unit would create.
    std::fs::create_dir_all("/run/sshd").expect("/run/sshd");
    let log = std::fs::File::create(dir.join("sshd.log")).expect("log");
    let child = ns
        .spawn(
            Command::new(SSHD)
                .args(["-D", "-e", "-f"])
                .arg(dir.join("sshd_config"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log),
        )
        .expect("sshd (openssh-server)");
    let sshd = Sshd(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    let probe = format!("sport = :{PORT}");
    loop {
        let out = ns.run_ok(&["ss", "-Hltn", &probe]).unwrap_or_default();
        if !out.trim().is_empty() {
            return sshd;
        }
        assert!(
            Instant::now() < deadline,
            "sshd did not listen: {}",
            std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// virtsh inside the namespace, where the sshd listens.
fn virtsh_in(ns: &NetNs, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_virtsh"));
    c.args(args)
        .env_remove("LIBVIRT_DEFAULT_URI")
        .env("DBUS_SESSION_BUS_ADDRESS", "unix:path=/nonexistent")
        .stdin(Stdio::null());
    let _f = ns.enter(&mut c).expect("enter netns");
    c.output().expect("virtsh")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssh_transport_lists_and_starts() {
    let tmp = tempfile::Builder::new()
        .prefix("vssh")
        .tempdir_in("/tmp")
        .expect("tmp");
    let dir = tmp.path();
    let ns = NetNs::new().expect("netns");
    let _sshd = start_sshd(&ns, dir);

    let bus = TestBus::start().expect("bus");
    let daemon = Daemon::builder(sibling("virtqemud"), "virtqemud")
        .spawn(&bus)
        .await
        .expect("virtqemud");
    let xml = daemon.dirs.root.path().join("r.xml");
    std::fs::write(
        &xml,
        "<domain type='qemu'><name>remote1</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type></os></domain>",
    )
    .expect("xml");
    ok(virtsh(&bus, &["define", xml.to_str().expect("utf-8")]));

    let bus_socket = bus.address.trim_start_matches("unix:path=");
    let uri = format!(
        "qemu+ssh://root@127.0.0.1:{PORT}/system?keyfile={d}/user&known_hosts={d}/known_hosts\
         &no_tty=1&socket={bus_socket}",
        d = dir.display()
    );
    let list = ok(virtsh_in(&ns, &["-c", &uri, "list", "--all"]));
    assert!(list.contains(" -    remote1   shut off"), "{list}");
    assert_eq!(
        ok(virtsh_in(
            &ns,
            &["-c", &uri, "start", "remote1", "--paused"]
        )),
        "Domain 'remote1' started\n"
    );
    // Seen locally, on the private bus: it is the test daemon's domain that started.
    assert_eq!(ok(virtsh(&bus, &["domstate", "remote1"])), "paused\n");
    let j = ok(virtsh_in(&ns, &["-c", &uri, "list", "--json"]));
    assert!(j.contains("\"name\": \"remote1\""), "{j}");
    assert_eq!(ok(virtsh_in(&ns, &["-c", &uri, "uri"])), format!("{uri}\n"));

    // A key the server does not know: ssh's refusal, virtsh's status 1, no hang.
    keygen(&dir.join("stranger"));
    let bad = uri.replace("/user&", "/stranger&");
    let out = virtsh_in(&ns, &["-c", &bad, "list"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Permission denied"), "{err}");
    assert!(
        err.contains("error: failed to connect to 'qemu+ssh://"),
        "{err}"
    );

    // A printed figure, not a check: a whole `virtsh list` run over ssh and locally.
    let median = |f: &dyn Fn() -> Output| {
        let mut t: Vec<Duration> = (0..5)
            .map(|_| {
                let s = Instant::now();
                ok(f());
                s.elapsed()
            })
            .collect();
        t.sort();
        t[2]
    };
    let remote = median(&|| virtsh_in(&ns, &["-c", &uri, "list"]));
    let local = median(&|| virtsh(&bus, &["list"]));
    eprintln!("virtsh list, median of 5 runs: over ssh {remote:?}, on the local bus {local:?}");
    // The shell keeps one ssh connection: 100 commands in one session over ssh.
    let mut c = Command::new(env!("CARGO_BIN_EXE_virtsh"));
    c.args(["-c", &uri])
        .env_remove("LIBVIRT_DEFAULT_URI")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let _f = ns.enter(&mut c).expect("enter netns");
    let start = Instant::now();
    let mut child = c.spawn().expect("virtsh shell");
    let mut input = child.stdin.take().expect("stdin");
    std::io::Write::write_all(&mut input, "domname remote1\n".repeat(100).as_bytes())
        .expect("write");
    drop(input);
    let out = child.wait_with_output().expect("shell");
    let took = start.elapsed();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "remote1\n".repeat(100)
    );
    eprintln!("virtsh shell over ssh: 100 domname commands in {took:?} (one connection)");

    ok(virtsh(&bus, &["destroy", "remote1"]));
}
