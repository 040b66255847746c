//! virtsh: a virsh-like client of the virt daemons, speaking their libvirt-dbus API.
//! It connects by libvirt URI (`-c`, `LIBVIRT_DEFAULT_URI`; see [`conn`]), runs one
//! command, or reads commands from stdin as virsh's shell does when given none.

use std::io::Write as _;

use anyhow::Context as _;
use clap::{CommandFactory as _, Parser as _};
use common::proxies::qemu::{DomainProxy, QemuConnectProxy};
use serde_json::json;
use zbus::zvariant::OwnedObjectPath;

/// Proxies of objects other than the connect object take the same destination as
/// the connect proxy (none on a peer connection).
#[macro_export]
macro_rules! object {
    ($ty:ident, $conn:expr, $path:expr, $dest:expr) => {{
        let b = $ty::builder($conn)
            .path($path.clone())?
            .cache_properties(zbus::proxy::CacheProperties::No);
        match $dest {
            Some(d) => b.destination(d)?.build().await?,
            None => b.build().await?,
        }
    }};
}

/// A daemon's connect object (`/org/libvirt/QEMU`), addressed as `object!` does.
#[macro_export]
macro_rules! connect {
    ($ty:ident, $conn:expr, $dest:expr) => {{
        let b = $ty::builder($conn).cache_properties(zbus::proxy::CacheProperties::No);
        match $dest {
            Some(d) => b.destination(d)?.build().await?,
            None => b.build().await?,
        }
    }};
}

mod cli;
mod conn;
mod domain;
mod interface;
mod migrate;
mod network;
mod nodedev;
mod nwfilter;
mod out;
mod secret;
mod shell;
mod stats;
mod storage;

use cli::{Cli, Cmd, HostCmd, ToolCmd};
use conn::{Choice, Conn};
use out::Out;

/// What one command runs against.
pub struct Ctx<'a> {
    pub c: &'a zbus::Connection,
    pub peer: bool,
    pub out: Out,
}

impl Ctx<'_> {
    /// On a peer connection there is no bus name to address.
    pub fn dest(&self, name: &'static str) -> Option<&'static str> {
        (!self.peer).then_some(name)
    }

    pub async fn qemu(&self) -> anyhow::Result<QemuConnectProxy<'_>> {
        Ok(connect!(
            QemuConnectProxy,
            self.c,
            self.dest("org.libvirt.virtqemud")
        ))
    }

    pub async fn domain_at(&self, path: OwnedObjectPath) -> anyhow::Result<DomainProxy<'_>> {
        Ok(object!(
            DomainProxy,
            self.c,
            path,
            self.dest("org.libvirt.virtqemud")
        ))
    }

    /// A domain by name, ID or UUID.
    pub async fn domain(&self, name: &str) -> anyhow::Result<DomainProxy<'_>> {
        let q = self.qemu().await?;
        let path = domain::lookup(&q, name).await?;
        self.domain_at(path).await
    }
}

/// The connection of a run or a shell session, opened when a command first needs it.
pub struct Session {
    choice: Choice,
    conn: Option<Conn>,
}

impl Session {
    async fn conn(&mut self) -> anyhow::Result<&Conn> {
        if self.conn.is_none() {
            let c = conn::open(&self.choice)
                .await
                .with_context(|| format!("failed to connect to '{}'", self.choice.text()))?;
            self.conn = Some(c);
        }
        self.conn
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("not connected"))
    }
}

/// Whether the shell goes on after a command.
#[derive(PartialEq)]
pub enum Flow {
    Continue,
    Quit,
}

fn main() {
    let code = match Cli::try_parse() {
        Ok(cli) => start(cli),
        Err(e) => usage_error(&e),
    };
    std::process::exit(code);
}

/// clap's help and version go to stdout with status 0; a usage error is virsh's status 1.
fn usage_error(e: &clap::Error) -> i32 {
    let _ = e.print();
    match e.kind() {
        clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => 0,
        _ => 1,
    }
}

fn start(cli: Cli) -> i32 {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            report(&anyhow::anyhow!(e));
            return 1;
        }
    };
    rt.block_on(async {
        let mut s = Session {
            choice: conn::choose_uri(cli.address.as_deref(), cli.connect.as_deref(), cli.system),
            conn: None,
        };
        if cli.cmd.is_none() {
            return shell::run(&mut s).await;
        }
        match run_line(&mut s, cli).await {
            Ok(_) => 0,
            Err(e) if broken_pipe(&e) => 0,
            Err(e) => {
                report(&e);
                1
            }
        }
    })
}

/// A reader that closed the pipe (`virtsh list | head -1`) wanted no more: not an error.
pub fn broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// `error: MESSAGE` on stderr, as virsh prints it; a closed stderr is ignored.
pub fn report(e: &anyhow::Error) {
    let _ = writeln!(std::io::stderr(), "error: {}", message(e));
}

/// libvirt's message without the D-Bus wrapping, as virsh prints it.
pub fn message(e: &anyhow::Error) -> String {
    for cause in e.chain() {
        if let Some(zbus::Error::MethodError(_, Some(msg), _)) = cause.downcast_ref() {
            return msg.clone();
        }
    }
    format!("{e:#}")
}

/// Runs one parsed command line; a line with its own connection options gets its own
/// connection for that line.
pub async fn run_line(s: &mut Session, cli: Cli) -> anyhow::Result<Flow> {
    let out = Out { json: cli.json };
    let Some(cmd) = cli.cmd else {
        return Ok(Flow::Continue);
    };
    let own = cli.connect.is_some() || cli.address.is_some() || cli.system;
    let mut line_session;
    let s = if own {
        line_session = Session {
            choice: conn::choose_uri(cli.address.as_deref(), cli.connect.as_deref(), cli.system),
            conn: None,
        };
        &mut line_session
    } else {
        s
    };
    match cmd {
        Cmd::Tool(t) => return tool(t),
        Cmd::Host(HostCmd::Connect { uri }) => {
            if let Some(u) = uri {
                s.choice = Choice::Uri(u);
            }
            s.conn = None;
            s.conn().await?;
            return Ok(Flow::Continue);
        }
        Cmd::Host(HostCmd::Uri) => {
            let u = s.conn().await?.uri.clone();
            out.scalar(&u, json!(u))?;
            return Ok(Flow::Continue);
        }
        _ => {}
    }
    let c = s.conn().await?;
    let x = Ctx {
        c: &c.bus,
        peer: c.peer,
        out,
    };
    match cmd {
        Cmd::Domain(cmd) => domain::run(&x, cmd).await?,
        Cmd::Stats(cmd) => stats::run(&x, cmd).await?,
        Cmd::Migrate(cmd) => migrate::run(&x, cmd).await?,
        Cmd::Network(cmd) => network::run(&x, cmd).await?,
        Cmd::Interface(cmd) => interface::run(&x, cmd).await?,
        Cmd::Nwfilter(cmd) => nwfilter::run(&x, cmd).await?,
        Cmd::Storage(cmd) => storage::pools(&x, cmd).await?,
        Cmd::Volume(cmd) => storage::vols(&x, cmd).await?,
        Cmd::Secret(cmd) => secret::run(&x, cmd).await?,
        Cmd::Nodedev(cmd) => nodedev::run(&x, cmd).await?,
        Cmd::Host(cmd) => host(&x, cmd).await?,
        Cmd::Tool(_) => {}
    }
    Ok(Flow::Continue)
}

/// hostname and version, answered by virtqemud's connect object.
async fn host(x: &Ctx<'_>, cmd: HostCmd) -> anyhow::Result<()> {
    let q = x.qemu().await?;
    match cmd {
        HostCmd::Hostname => {
            let h = q.hostname().await?;
            x.out.scalar(&h, json!(h))?;
        }
        HostCmd::Version => {
            let (lib, hv) = (q.lib_version().await?, q.version().await?);
            let v = |n: u64| format!("{}.{}.{}", n / 1_000_000, n / 1000 % 1000, n % 1000);
            if x.out.json {
                x.out.value(&json!({
                    "client": env!("CARGO_PKG_VERSION"),
                    "library": v(lib),
                    "daemon": {"name": "virtqemud", "version": v(hv)},
                }))?;
            } else {
                outln!(
                    "Compiled against library: virtsh {}",
                    env!("CARGO_PKG_VERSION")
                );
                outln!("Using library: libvirt {}", v(lib));
                outln!("Using API: QEMU {}", v(lib));
                // Version is the daemon's own, not QEMU's: libvirt-dbus has no other.
                outln!("Running against daemon: virtqemud {}", v(hv));
            }
        }
        HostCmd::Uri | HostCmd::Connect { .. } => {}
    }
    Ok(())
}

/// Commands that need no daemon: completion scripts, the man page, quit.
fn tool(t: ToolCmd) -> anyhow::Result<Flow> {
    let mut buf = Vec::new();
    match t {
        ToolCmd::Completion { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "virtsh", &mut buf);
        }
        ToolCmd::Man => clap_mangen::Man::new(Cli::command()).render(&mut buf)?,
        ToolCmd::Quit => return Ok(Flow::Quit),
    }
    let mut o = std::io::stdout().lock();
    o.write_all(&buf)?;
    o.flush()?;
    Ok(Flow::Continue)
}

pub fn read(file: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(file).with_context(|| format!("cannot read '{file}'"))
}

pub fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}
