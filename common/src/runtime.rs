//! The daemon runtime: everything between `main` and a driver. It parses the shared
//! command line, takes the single-instance lock, connects to the bus and owns the
//! daemon's name, serves the same objects peer-to-peer on the daemon's socket, tells
//! systemd when it is ready, exits when idle, and shuts down cleanly on SIGTERM/SIGINT.

use std::fs::File;
use std::future::Future;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::Parser;
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};
use zbus::fdo::RequestNameFlags;
use zbus::fdo::RequestNameReply;

use crate::activation;
use crate::cli::{Args, Mode, Settings};
use crate::hub::Hub;
use crate::notify;

/// What the runtime needs from a daemon's driver.
pub trait Driver: Send + Sync + 'static {
    /// True while the driver has something to watch (running domains, active networks):
    /// a busy daemon does not exit on `--timeout`.
    fn busy(&self) -> bool {
        false
    }

    /// Called once on SIGTERM/SIGINT after the name is released: wait for running jobs
    /// and persist whatever is not yet on disk. Running guests are left running.
    fn shutdown(&self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// What a driver is started with.
#[derive(Clone)]
pub struct Context {
    /// The daemon's name, e.g. `virtqemud`.
    pub daemon: &'static str,
    pub settings: Settings,
    pub hub: Hub,
    /// Who may call what (polkit on the system bus); also installed process-wide for
    /// `common::access::check`.
    pub access: crate::access::Access,
}

impl Context {
    /// The daemon's own bus name, e.g. `org.libvirt.virtqemud`.
    pub fn bus_name(&self) -> String {
        bus_name(self.daemon)
    }
}

pub fn bus_name(daemon: &str) -> String {
    format!("org.libvirt.{daemon}")
}

/// Runs a daemon to completion. `init` builds the driver and registers its objects on
/// the hub before the daemon owns its name, so a caller never sees a half-served API.
pub fn main<D, F, Fut>(daemon: &'static str, init: F) -> ExitCode
where
    D: Driver,
    F: FnOnce(Context) -> Fut,
    Fut: Future<Output = anyhow::Result<Arc<D>>>,
{
    serve_main(daemon, |settings, activated| {
        run(daemon, settings, activated, init)
    })
}

/// What every daemon's `main` does before and after its own work (the four, and
/// virtproxyd): parse the command line, take a socket-activation listener, set up
/// logging and the settings, then run `body` on a two-thread runtime and turn its
/// error into a message and the exit status.
pub fn serve_main<F, Fut>(daemon: &'static str, body: F) -> ExitCode
where
    F: FnOnce(Settings, Option<std::os::unix::net::UnixListener>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let args = Args::parse();
    // Before any thread exists: the environment is changed here.
    let activated = activation::take_activated();
    init_logging(args.verbose);
    let settings = match Settings::resolve(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{daemon}: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{daemon}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(body(settings, activated)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("{daemon}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The daemons' logging: the journal under systemd, stderr otherwise.
pub fn init_logging(verbose: u8) {
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::EnvFilter;
    let level = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},zbus=warn")));
    let registry = tracing_subscriber::registry().with(filter);
    if stderr_is_journal() {
        if let Ok(journald) = tracing_journald::layer() {
            registry.with(journald).init();
            return;
        }
    }
    registry
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_target(false),
        )
        .init();
}

/// systemd sets `JOURNAL_STREAM=dev:ino` when stderr is connected to the journal.
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    v.to_string_lossy() == format!("{}:{}", meta.dev(), meta.ino())
}

/// The single-instance lock: `<runtime-dir>/<daemon>.pid`, locked for the process'
/// lifetime and holding its PID, as libvirt's daemons keep theirs.
pub struct PidFile {
    path: PathBuf,
    _file: File,
}

impl PidFile {
    pub fn acquire(path: PathBuf, daemon: &str) -> anyhow::Result<PidFile> {
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&path)
            .with_context(|| format!("cannot open pid file {}", path.display()))?;
        // A child the previous instance was spawning when it was killed holds the lock
        // between its fork and its exec (the descriptor is close-on-exec): wait that out
        // briefly rather than refuse to start.
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        let locked = loop {
            match nix::fcntl::Flock::lock(
                file.try_clone()?,
                nix::fcntl::FlockArg::LockExclusiveNonblock,
            ) {
                Ok(lock) => {
                    // Held for the life of the process.
                    std::mem::forget(lock);
                    break Ok(());
                }
                Err((_, e))
                    if e == nix::errno::Errno::EWOULDBLOCK
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => break Err(e),
            }
        };
        if let Err(e) = locked {
            let other = std::fs::read_to_string(&path).unwrap_or_default();
            bail!(
                "another {daemon} is already running (pid {}, lock {}): {}",
                other.trim(),
                path.display(),
                e.1
            );
        }
        file.set_len(0)?;
        writeln!(file, "{}", std::process::id())?;
        Ok(PidFile { path, _file: file })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The address of the bus `mode` uses (the activating bus first).
pub fn bus_address(mode: Mode) -> anyhow::Result<String> {
    let want = match mode {
        Mode::System => "system",
        Mode::Session => "session",
    };
    // A bus-activated daemon is told which bus started it.
    if std::env::var("DBUS_STARTER_BUS_TYPE").as_deref() == Ok(want) {
        if let Ok(a) = std::env::var("DBUS_STARTER_ADDRESS") {
            return Ok(a);
        }
    }
    match mode {
        Mode::System => Ok(std::env::var("DBUS_SYSTEM_BUS_ADDRESS")
            .unwrap_or_else(|_| "unix:path=/run/dbus/system_bus_socket".to_owned())),
        Mode::Session => std::env::var("DBUS_SESSION_BUS_ADDRESS").map_err(|_| {
            anyhow::anyhow!(
                "session mode needs a session bus, but DBUS_SESSION_BUS_ADDRESS is not set"
            )
        }),
    }
}

async fn run<D, F, Fut>(
    daemon: &'static str,
    settings: Settings,
    activated: Option<std::os::unix::net::UnixListener>,
    init: F,
) -> anyhow::Result<()>
where
    D: Driver,
    F: FnOnce(Context) -> Fut,
    Fut: Future<Output = anyhow::Result<Arc<D>>>,
{
    for dir in [
        &settings.config_dir,
        &settings.state_dir,
        &settings.runtime_dir,
    ] {
        crate::persist::create_dir_all(dir, 0o755)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let _pidfile = PidFile::acquire(settings.runtime_dir.join(format!("{daemon}.pid")), daemon)?;
    // Handled from here on: a SIGTERM that comes while the daemon starts (say, right
    // after it took its name) waits for the shutdown below instead of killing it.
    let signals = (
        signal(SignalKind::terminate())?,
        signal(SignalKind::interrupt())?,
    );
    // Children (QEMU, dnsmasq) and their orphans come back to us to be reaped.
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        tracing::warn!("cannot become a child subreaper: {e}");
    }

    let hub = Hub::new();
    let access = crate::access::Access::new(settings.mode);
    crate::access::install(access.clone());
    let ctx = Context {
        daemon,
        settings: settings.clone(),
        hub: hub.clone(),
        access: access.clone(),
    };
    let driver = init(ctx).await?;

    let name = bus_name(daemon);
    let address = bus_address(settings.mode)?;
    let bus = zbus::connection::Builder::address(address.as_str())?
        .build()
        .await
        .with_context(|| format!("cannot connect to the bus at {address}"))?;
    // Before any object is served on the bus: a call's check asks the bus and polkit.
    access.attach(bus.clone());
    hub.attach(bus.clone()).await;
    let reply = bus
        .request_name_with_flags(name.as_str(), RequestNameFlags::DoNotQueue.into())
        .await;
    match reply {
        Ok(RequestNameReply::PrimaryOwner) | Ok(RequestNameReply::AlreadyOwner) => {}
        Ok(_) | Err(zbus::Error::NameTaken) => {
            bail!("the name {name} is already owned on the bus: is another {daemon} running?")
        }
        Err(e) => bail!("cannot own {name}: {e}"),
    }

    let (listener, bound_path) = match activated {
        Some(l) => (l, None),
        None => activation::bind(&settings.socket_path(daemon))
            .with_context(|| "cannot listen on the daemon socket")?
            .into_std(),
    };
    listener.set_nonblocking(true)?;
    let listener = UnixListener::from_std(listener)?;
    let accept = tokio::spawn(accept_peers(listener, hub.clone()));

    tracing::info!(
        "{daemon} {} serving {name} ({:?} mode)",
        env!("CARGO_PKG_VERSION"),
        settings.mode
    );
    notify::ready(&format!("Serving {name}"));

    wait_for_exit(&hub, driver.as_ref(), settings.timeout, signals).await?;

    notify::stopping();
    accept.abort();
    let _ = bus.release_name(name.as_str()).await;
    driver.shutdown().await;
    if let Some(p) = bound_path {
        let _ = std::fs::remove_file(p);
    }
    tracing::info!("{daemon} stopped");
    Ok(())
}

async fn wait_for_exit<D: Driver>(
    hub: &Hub,
    driver: &D,
    timeout: u64,
    (mut term, mut int): (tokio::signal::unix::Signal, tokio::signal::unix::Signal),
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let timeout = Duration::from_secs(timeout);
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); return Ok(()) }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); return Ok(()) }
            _ = tick.tick() => {
                if timeout.is_zero() || driver.busy() {
                    continue;
                }
                if let Some(since) = hub.idle_since() {
                    if since.elapsed() >= timeout {
                        tracing::info!("idle for {}s: exiting", timeout.as_secs());
                        return Ok(());
                    }
                }
            }
        }
    }
}

async fn accept_peers(listener: UnixListener, hub: Hub) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("accept on the daemon socket failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let hub = hub.clone();
        tokio::spawn(async move {
            let attached = async {
                let builder =
                    zbus::connection::Builder::socket(crate::peer_socket::checked(stream))
                        .server(zbus::Guid::generate())?
                        .p2p();
                hub.attach_peer(builder, |b| {
                    b.serve_at("/org/freedesktop/DBus", PeerBusShim)
                })
                .await
            };
            // A client that never finishes the handshake must not pin a task forever.
            match tokio::time::timeout(Duration::from_secs(10), attached).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!("peer connection refused: {e}"),
                Err(_) => tracing::debug!("peer connection handshake timed out"),
            }
        });
    }
}

/// Tools built on sd-bus (busctl) greet every connection with `Hello` and read
/// the caller's unique name from the reply, even on a peer-to-peer socket. Answering it
/// makes `busctl --address=unix:path=<socket>` work without a bus.
struct PeerBusShim;

#[zbus::interface(name = "org.freedesktop.DBus")]
impl PeerBusShim {
    #[zbus(name = "Hello")]
    fn hello(&self) -> String {
        ":1.1".to_owned()
    }
}
