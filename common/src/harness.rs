//! The integration-test harness: real parts, started by the test and torn down by PID.
//!
//! - [`TestBus`]: a private `dbus-daemon` with its own config and activation folder.
//! - [`TestDirs`]: temp config/state/runtime folders; dropping them kills every process
//!   that left a pidfile under the runtime folder and mentions it on its command line
//!   (daemons, QEMU, dnsmasq), so nothing leaks even when a test fails.
//! - [`Daemon`]: a daemon under test, started in session mode on a [`TestBus`],
//!   optionally inside a [`NetNs`].
//! - [`conformance`]: the runtime checks every daemon must pass, turned into tests by
//!   [`runtime_conformance_tests!`](crate::runtime_conformance_tests).

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub mod conformance;
pub mod contract;
pub mod fuzz;

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A private, real `dbus-daemon` (session type) that lives as long as this value.
pub struct TestBus {
    /// `unix:path=...`, usable from any network namespace.
    pub address: String,
    pub dir: tempfile::TempDir,
    child: Child,
}

impl TestBus {
    pub fn start() -> anyhow::Result<TestBus> {
        // Short folders under /tmp: UNIX socket paths are limited to 108 bytes.
        let dir = tempfile::Builder::new().prefix("vb").tempdir_in("/tmp")?;
        let services = dir.path().join("services");
        std::fs::create_dir(&services)?;
        let socket = dir.path().join("bus");
        let config = dir.path().join("bus.conf");
        std::fs::write(
            &config,
            format!(
                "<busconfig>\n  <type>session</type>\n  <listen>unix:path={}</listen>\n  \
                 <servicedir>{}</servicedir>\n  <auth>EXTERNAL</auth>\n  \
                 <policy context='default'>\n    <allow send_destination='*' eavesdrop='true'/>\n    \
                 <allow eavesdrop='true'/>\n    <allow own='*'/>\n  </policy>\n</busconfig>\n",
                socket.display(),
                services.display()
            ),
        )?;
        let log = File::create(dir.path().join("bus.log"))?;
        let mut child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .args(["--nofork", "--print-address=1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .context("cannot start dbus-daemon (is the dbus package installed?)")?;
        let mut line = String::new();
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        BufReader::new(stdout).read_line(&mut line)?;
        if line.trim().is_empty() {
            let _ = child.kill();
            let _ = child.wait();
            bail!("dbus-daemon printed no address");
        }
        Ok(TestBus {
            address: format!("unix:path={}", socket.display()),
            dir,
            child,
        })
    }

    pub async fn connection(&self) -> anyhow::Result<zbus::Connection> {
        Ok(zbus::connection::Builder::address(self.address.as_str())?
            .build()
            .await?)
    }

    /// The folder the bus reads `.service` activation files from.
    pub fn service_dir(&self) -> PathBuf {
        self.dir.path().join("services")
    }

    /// Makes `org.libvirt.<daemon>` bus-activatable with the given command line.
    pub fn add_activatable(&self, daemon: &str, exec: &[OsString]) -> anyhow::Result<()> {
        let exec: Vec<String> = exec
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        std::fs::write(
            self.service_dir()
                .join(format!("org.libvirt.{daemon}.service")),
            format!(
                "[D-BUS Service]\nName=org.libvirt.{daemon}\nExec={}\n",
                exec.join(" ")
            ),
        )?;
        Ok(())
    }

    /// The PID owning `name` on this bus, if anyone owns it.
    pub async fn owner_pid(&self, name: &str) -> anyhow::Result<Option<u32>> {
        let conn = self.connection().await?;
        let dbus = zbus::fdo::DBusProxy::new(&conn).await?;
        let Ok(bus_name) = zbus::names::BusName::try_from(name) else {
            bail!("bad bus name {name}");
        };
        match dbus.get_connection_unix_process_id(bus_name).await {
            Ok(pid) => Ok(Some(pid)),
            Err(zbus::fdo::Error::NameHasNoOwner(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

impl Drop for TestBus {
    fn drop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(3));
    }
}

/// Temp config/state/runtime folders for one daemon (kept across its restarts).
pub struct TestDirs {
    pub root: tempfile::TempDir,
    pub config: PathBuf,
    pub state: PathBuf,
    pub runtime: PathBuf,
}

impl TestDirs {
    pub fn new() -> anyhow::Result<Arc<TestDirs>> {
        let root = tempfile::Builder::new().prefix("vt").tempdir_in("/tmp")?;
        let config = root.path().join("etc");
        let state = root.path().join("lib");
        let runtime = root.path().join("run");
        for d in [&config, &state, &runtime] {
            std::fs::create_dir_all(d)?;
        }
        Ok(Arc::new(TestDirs {
            root,
            config,
            state,
            runtime,
        }))
    }

    /// The shared command-line arguments pointing a daemon at these folders.
    pub fn args(&self) -> Vec<OsString> {
        vec![
            "--session".into(),
            "--config-dir".into(),
            self.config.clone().into(),
            "--state-dir".into(),
            self.state.clone().into(),
            "--runtime-dir".into(),
            self.runtime.clone().into(),
        ]
    }

    /// Kills every process that left a pidfile under the runtime folder and whose
    /// command line mentions that folder (so a recycled PID is never hit).
    pub fn kill_leftovers(&self) {
        let marker = self.root.path().to_string_lossy().into_owned();
        for pidfile in find_pidfiles(&self.runtime) {
            let Some(pid) = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
            else {
                continue;
            };
            if pid <= 1 || pid as u32 == std::process::id() {
                continue;
            }
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains(&marker) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                wait_gone(pid as u32, Duration::from_secs(5));
            }
        }
    }
}

impl Drop for TestDirs {
    fn drop(&mut self) {
        self.kill_leftovers();
    }
}

fn find_pidfiles(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => out.extend(find_pidfiles(&p)),
            Ok(t) if t.is_file() && p.extension() == Some(OsStr::new("pid")) => out.push(p),
            _ => {}
        }
    }
    out
}

/// True once `pid` is gone or a zombie nobody here can reap.
pub fn is_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(") ")
            .map(|(_, rest)| rest.starts_with('Z') || rest.starts_with('X'))
            .unwrap_or(false),
    }
}

pub fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if is_gone(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    is_gone(pid)
}

fn stop_child(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(st)) = child.try_wait() {
        return Some(st);
    }
    let pid = Pid::from_raw(child.id() as i32);
    let _ = kill(pid, Signal::SIGTERM);
    let start = Instant::now();
    while start.elapsed() < grace {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = kill(pid, Signal::SIGKILL);
    child.wait().ok()
}

/// A named network namespace created for one test; deleted, with everything still
/// running in it, on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new() -> anyhow::Result<NetNs> {
        let name = unique("vt");
        run_ok(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = NetNs { name };
        run_ok(Command::new("ip").args(["-n", &ns.name, "link", "set", "lo", "up"]))?;
        Ok(ns)
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs a command inside the namespace and returns its output (any exit status).
    pub fn run(&self, argv: &[&str]) -> anyhow::Result<Output> {
        let (prog, args) = argv.split_first().ok_or_else(|| anyhow!("empty argv"))?;
        let mut cmd = Command::new(prog);
        cmd.args(args);
        let _ns = self.enter(&mut cmd)?;
        Ok(cmd.output()?)
    }

    /// Like [`run`](Self::run) but fails, with stderr, on a non-zero exit.
    pub fn run_ok(&self, argv: &[&str]) -> anyhow::Result<String> {
        let out = self.run(argv)?;
        if !out.status.success() {
            bail!(
                "{argv:?} in {} failed: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts a command inside the namespace. Unlike `ip netns exec` this does not
    /// remount /sys, so cgroups stay visible.
    pub fn spawn(&self, cmd: &mut Command) -> anyhow::Result<Child> {
        let _ns = self.enter(cmd)?;
        Ok(cmd.spawn()?)
    }

    /// Arranges for `cmd` to join the namespace; the returned file must outlive spawn.
    pub fn enter(&self, cmd: &mut Command) -> anyhow::Result<File> {
        let f =
            File::open(self.path()).with_context(|| format!("cannot open netns {}", self.name))?;
        let fd: RawFd = f.as_raw_fd();
        // SAFETY: setns is async-signal-safe; the fd stays open until spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(f)
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
            {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                wait_gone(pid as u32, Duration::from_secs(5));
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn run_ok(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output()?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// How to start (and restart) a daemon under test.
#[derive(Clone)]
pub struct DaemonBuilder {
    bin: PathBuf,
    daemon: String,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    netns: Option<PathBuf>,
    dirs: Option<Arc<TestDirs>>,
}

impl DaemonBuilder {
    pub fn arg(mut self, a: impl Into<OsString>) -> Self {
        self.args.push(a.into());
        self
    }

    pub fn env(mut self, k: impl Into<OsString>, v: impl Into<OsString>) -> Self {
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn netns(mut self, ns: &NetNs) -> Self {
        self.netns = Some(ns.path());
        self
    }

    pub fn dirs(mut self, dirs: Arc<TestDirs>) -> Self {
        self.dirs = Some(dirs);
        self
    }

    /// The full command line, for activation files and socket activation.
    pub fn command_line(&self, dirs: &TestDirs) -> Vec<OsString> {
        let mut argv = vec![self.bin.clone().into_os_string()];
        argv.extend(dirs.args());
        argv.extend(self.args.iter().cloned());
        argv
    }

    fn command(&self, dirs: &TestDirs, bus: &TestBus) -> anyhow::Result<(Command, PathBuf)> {
        let argv = self.command_line(dirs);
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .env("DBUS_SESSION_BUS_ADDRESS", &bus.address)
            .env_remove("DBUS_STARTER_ADDRESS")
            .env_remove("DBUS_STARTER_BUS_TYPE")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .stdin(Stdio::null());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let log = dirs.root.path().join(format!("{}.log", self.daemon));
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        cmd.stdout(f.try_clone()?).stderr(f);
        Ok((cmd, log))
    }

    /// Starts the daemon and returns once it owns its name on `bus`.
    pub async fn spawn(self, bus: &TestBus) -> anyhow::Result<Daemon> {
        let dirs = match &self.dirs {
            Some(d) => d.clone(),
            None => TestDirs::new()?,
        };
        let (mut cmd, log) = self.command(&dirs, bus)?;
        let ns_file = match &self.netns {
            Some(path) => {
                let f = File::open(path)?;
                let fd = f.as_raw_fd();
                // SAFETY: setns is async-signal-safe; the fd outlives spawn.
                unsafe {
                    cmd.pre_exec(move || {
                        if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
                Some(f)
            }
            None => None,
        };
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", self.bin.display()))?;
        drop(ns_file);
        let mut d = Daemon {
            pid: child.id(),
            child,
            dirs: dirs.clone(),
            log,
            builder: DaemonBuilder {
                dirs: Some(dirs),
                ..self
            },
        };
        d.wait_owned(bus, Duration::from_secs(30)).await?;
        Ok(d)
    }
}

/// A running daemon under test. Dropping it stops it (SIGTERM, then SIGKILL).
pub struct Daemon {
    pub pid: u32,
    child: Child,
    pub dirs: Arc<TestDirs>,
    pub log: PathBuf,
    builder: DaemonBuilder,
}

impl Daemon {
    pub fn builder(bin: impl Into<PathBuf>, daemon: &str) -> DaemonBuilder {
        DaemonBuilder {
            bin: bin.into(),
            daemon: daemon.to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            netns: None,
            dirs: None,
        }
    }

    /// The same daemon again (same binary, folders, arguments), for restarts.
    pub fn restart_builder(&self) -> DaemonBuilder {
        self.builder.clone()
    }

    pub fn name(&self) -> &str {
        &self.builder.daemon
    }

    pub fn bus_name(&self) -> String {
        format!("org.libvirt.{}", self.builder.daemon)
    }

    /// The daemon's peer-to-peer socket.
    pub fn socket(&self) -> PathBuf {
        self.dirs
            .runtime
            .join(format!("{}-sock", self.builder.daemon))
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A zbus connection straight to the daemon's socket (no bus).
    pub async fn peer_connection(&self) -> anyhow::Result<zbus::Connection> {
        let stream = tokio::net::UnixStream::connect(self.socket()).await?;
        Ok(zbus::connection::Builder::unix_stream(stream)
            .p2p()
            .build()
            .await?)
    }

    async fn wait_owned(&mut self, bus: &TestBus, timeout: Duration) -> anyhow::Result<()> {
        use futures_util::StreamExt;
        let start = Instant::now();
        let name = self.bus_name();
        let Ok(bus_name) = zbus::names::BusName::try_from(name.as_str()) else {
            bail!("bad bus name {name}");
        };
        // Woken by the bus when the name changes hands, not by polling, so that start-up
        // times measured through this are not rounded up to a polling interval.
        let conn = bus.connection().await?;
        let dbus = zbus::fdo::DBusProxy::new(&conn).await?;
        let mut changes = dbus
            .receive_name_owner_changed_with_args(&[(0, name.as_str())])
            .await?;
        loop {
            if let Some(st) = self.child.try_wait()? {
                bail!(
                    "{} exited with {st} before owning {name}; its log:\n{}",
                    self.builder.daemon,
                    self.log_text()
                );
            }
            let owner = match dbus.get_connection_unix_process_id(bus_name.clone()).await {
                Ok(pid) => Some(pid),
                Err(zbus::fdo::Error::NameHasNoOwner(_)) => None,
                Err(e) => return Err(e.into()),
            };
            if owner == Some(self.pid) && self.socket().exists() {
                return Ok(());
            }
            if start.elapsed() > timeout {
                bail!(
                    "{} did not own {name} within {timeout:?}; its log:\n{}",
                    self.builder.daemon,
                    self.log_text()
                );
            }
            // The peer socket and an early exit are not announced on the bus: look
            // again at least every 20 ms.
            let _ = tokio::time::timeout(Duration::from_millis(20), changes.next()).await;
        }
    }

    /// SIGKILL and reap, as a crash would (children such as QEMU keep running).
    pub fn kill9(&mut self) {
        let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
        let _ = self.child.wait();
    }

    /// SIGTERM and wait for the exit status (SIGKILL after 20 s, then an error).
    pub fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM);
        self.wait_exit(Duration::from_secs(20)).ok_or_else(|| {
            let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGKILL);
            let _ = self.child.wait();
            anyhow!(
                "{} did not exit within 20 s of SIGTERM",
                self.builder.daemon
            )
        })
    }

    /// Waits for the daemon to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            if start.elapsed() > timeout {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        stop_child(&mut self.child, Duration::from_secs(10));
    }
}

/// Generates one test per runtime conformance check for a daemon binary:
/// `common::runtime_conformance_tests!("virtqemud", env!("CARGO_BIN_EXE_virtqemud"));`
#[macro_export]
macro_rules! runtime_conformance_tests {
    ($daemon:expr, $bin:expr) => {
        $crate::runtime_conformance_tests!(@tests $daemon, $bin;
            starts_owns_name_and_notifies_ready,
            busctl_introspects_over_the_bus,
            busctl_works_peer_to_peer,
            bus_activation_starts_it,
            socket_activation_starts_it,
            idle_timeout_exits_zero,
            sigterm_exits_zero_and_cleans_up,
            second_instance_fails_clearly);
    };
    (@tests $daemon:expr, $bin:expr; $($check:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() -> anyhow::Result<()> {
                $crate::harness::conformance::$check($daemon, $bin).await
            }
        )*
    };
}

/// The upstream tarball of Debian 12's source package `package`, downloaded into `cache`
/// (kept there for later runs) with `apt-get source --download-only`, a private deb-src
/// list and private apt state, so the machine's apt setup is not touched. The tarball
/// is all the tests need, so apt's status is not the judge (some mirrors lack the
/// Debian part): a missing tarball is the error, with apt's words.
pub fn debian_source_tarball(package: &str, cache: &Path) -> anyhow::Result<PathBuf> {
    let find = || -> Option<PathBuf> {
        std::fs::read_dir(cache)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                    n.starts_with(&format!("{package}_")) && n.contains(".orig.tar.")
                })
            })
    };
    if let Some(t) = find() {
        return Ok(t);
    }
    let apt = tempfile::tempdir()?;
    let list = apt.path().join("sources.list");
    std::fs::write(
        &list,
        "deb-src http://deb.debian.org/debian bookworm main\n",
    )?;
    std::fs::create_dir_all(apt.path().join("lists/partial"))?;
    let opts = [
        format!("-o=Dir::Etc::SourceList={}", list.display()),
        "-o=Dir::Etc::SourceParts=/nonexistent".to_owned(),
        format!(
            "-o=Dir::State::Lists={}",
            apt.path().join("lists").display()
        ),
        format!("-o=Dir::Cache={}", apt.path().join("cache").display()),
    ];
    let out = Command::new("apt-get").args(&opts).arg("update").output()?;
    if !out.status.success() {
        bail!(
            "apt-get update (deb-src): {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::create_dir_all(cache)?;
    let out = Command::new("apt-get")
        .args(&opts)
        .args(["source", "--download-only", package])
        .current_dir(cache)
        .output()?;
    find().with_context(|| {
        format!(
            "apt-get source {package} fetched no upstream tarball: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// A private copy of virtnodedevd's fixture sysfs tree (hardware this machine lacks:
/// SR-IOV, USB, an FC HBA, mdevs), for a daemon run with `--sysfs-root`: what the
/// daemon or the test writes into it stays in the copy. Returns the folder (removed
/// when dropped) and the copy's `sysfs` root in it.
pub fn fixture_sysfs() -> anyhow::Result<(tempfile::TempDir, PathBuf)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../virtnodedevd/tests/fixtures/sysfs");
    let tmp = tempfile::tempdir()?;
    let st = Command::new("cp")
        .arg("-a")
        .arg(&src)
        .arg(tmp.path())
        .status()?;
    if !st.success() {
        bail!("cp -a {} failed", src.display());
    }
    let root = tmp.path().join("sysfs");
    Ok((tmp, root))
}
