//! The front's life, the same as the daemons' (common::runtime) where it can be: the
//! shared command line, single-instance lock, socket activation, READY=1, `--timeout`
//! idle exit, SIGTERM. It differs where forwarding needs it: the bus connection has no
//! object server (every call is read raw), and it owns two names, `org.libvirt` for
//! libvirt-dbus's clients and `org.libvirt.virtproxyd` like every daemon here.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::net::UnixListener;
use tokio::signal::unix::{signal, SignalKind};

use common::activation;
use common::cli::Settings;
use common::runtime::{bus_address, PidFile};

use crate::front::Front;

pub const DAEMON: &str = "virtproxyd";
/// The name libvirt-dbus owns, and the clients written for it call.
pub const COMPAT_NAME: &str = "org.libvirt";

pub fn main() -> ExitCode {
    common::runtime::serve_main(DAEMON, run)
}

/// Owns `name` or fails at once if someone else does (DO_NOT_QUEUE).
async fn own(bus: &zbus::Connection, name: &str) -> anyhow::Result<()> {
    let reply = bus
        .call_method(
            Some("org.freedesktop.DBus"),
            "/org/freedesktop/DBus",
            Some("org.freedesktop.DBus"),
            "RequestName",
            &(name, 4u32),
        )
        .await
        .with_context(|| format!("cannot own {name}"))?;
    match reply.body().deserialize::<u32>()? {
        1 | 4 => Ok(()),
        _ => bail!("the name {name} is already owned on the bus: is another {DAEMON} (or libvirt-dbus) running?"),
    }
}

async fn release(bus: &zbus::Connection, name: &str) {
    let _ = bus
        .call_method(
            Some("org.freedesktop.DBus"),
            "/org/freedesktop/DBus",
            Some("org.freedesktop.DBus"),
            "ReleaseName",
            &(name,),
        )
        .await;
}

async fn run(
    settings: Settings,
    activated: Option<std::os::unix::net::UnixListener>,
) -> anyhow::Result<()> {
    common::persist::create_dir_all(&settings.runtime_dir, 0o755)
        .with_context(|| format!("cannot create {}", settings.runtime_dir.display()))?;
    let _pidfile = PidFile::acquire(settings.runtime_dir.join(format!("{DAEMON}.pid")), DAEMON)?;
    let signals = (
        signal(SignalKind::terminate())?,
        signal(SignalKind::interrupt())?,
    );

    let address = bus_address(settings.mode)?;
    // Calls are read from a stream; a burst must wait in it, not be dropped.
    let stream = zbus::connection::Builder::address(address.as_str())?
        .max_queued(1 << 16)
        .build_message_stream()
        .await
        .with_context(|| format!("cannot connect to the bus at {address}"))?;
    let bus = zbus::Connection::from(&stream);
    let access = common::access::Access::new(settings.mode);
    access.attach(bus.clone());
    let front = Front::new(bus.clone(), access);
    let pump = tokio::spawn(front.clone().pump_bus(stream));
    front
        .subscribe_backends()
        .await
        .context("cannot subscribe to the daemons' signals")?;
    // org.libvirt first: whoever waits for org.libvirt.virtproxyd may then call either.
    let own_name = common::runtime::bus_name(DAEMON);
    own(&bus, COMPAT_NAME).await?;
    own(&bus, &own_name).await?;

    let (listener, bound_path) = match activated {
        Some(l) => (l, None),
        None => activation::bind(&settings.socket_path(DAEMON))
            .context("cannot listen on the daemon socket")?
            .into_std(),
    };
    listener.set_nonblocking(true)?;
    let listener = UnixListener::from_std(listener)?;
    let accept = tokio::spawn(accept_peers(listener, front.clone()));

    tracing::info!(
        "{DAEMON} {} serving {COMPAT_NAME} and {own_name} ({:?} mode)",
        env!("CARGO_PKG_VERSION"),
        settings.mode
    );
    common::notify::ready(&format!("Serving {COMPAT_NAME}"));

    wait_for_exit(&front, &pump, settings.timeout, signals).await;

    common::notify::stopping();
    accept.abort();
    release(&bus, COMPAT_NAME).await;
    release(&bus, &own_name).await;
    if let Some(p) = bound_path {
        let _ = std::fs::remove_file(p);
    }
    tracing::info!("{DAEMON} stopped");
    Ok(())
}

async fn wait_for_exit(
    front: &Front,
    pump: &tokio::task::JoinHandle<()>,
    timeout: u64,
    (mut term, mut int): (tokio::signal::unix::Signal, tokio::signal::unix::Signal),
) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let timeout = Duration::from_secs(timeout);
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); return }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); return }
            _ = tick.tick() => {
                if pump.is_finished() {
                    tracing::warn!("the bus connection closed: exiting");
                    return;
                }
                if timeout.is_zero() {
                    continue;
                }
                if front.idle_for().is_some_and(|d| d >= timeout) {
                    tracing::info!("idle for {}s: exiting", timeout.as_secs());
                    return;
                }
            }
        }
    }
}

async fn accept_peers(listener: UnixListener, front: Front) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("accept on the daemon socket failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let front = front.clone();
        tokio::spawn(async move {
            let built = zbus::connection::Builder::unix_stream(stream)
                .server(zbus::Guid::generate())
                .map(|b| b.p2p().max_queued(1 << 12).build_message_stream());
            let stream = match built {
                // A client that never finishes the handshake must not pin a task forever.
                Ok(fut) => match tokio::time::timeout(Duration::from_secs(10), fut).await {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => return tracing::debug!("peer connection refused: {e}"),
                    Err(_) => return tracing::debug!("peer connection handshake timed out"),
                },
                Err(e) => return tracing::debug!("peer connection refused: {e}"),
            };
            front.serve_peer(stream).await;
        });
    }
}
