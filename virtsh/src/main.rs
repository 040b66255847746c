//! virtsh: a small virsh-like client of the virt daemons, speaking their libvirt-dbus
//! API. It talks to the session bus unless told `--system` or given a bus address
//! (`--address unix:path=/run/.../virtqemud-sock` reaches one daemon peer-to-peer).

use std::collections::HashMap;

use anyhow::{anyhow, Context as _};
use clap::{Parser, Subcommand};
use common::proxies::network::{NetworkConnectProxy, NetworkPortsProxy, NetworkProxy};
use common::proxies::nodedev::{NodeDevConnectProxy, NodeDeviceProxy, NodeInfoProxy};
use common::proxies::qemu::{DomainProxy, QemuConnectProxy};
use common::proxies::storage::{StorageConnectProxy, StoragePoolProxy, StorageVolProxy};
use zbus::proxy::CacheProperties;
use zbus::zvariant::OwnedObjectPath;

#[derive(Parser)]
#[command(
    name = "virtsh",
    version,
    about = "virsh-like client of the virt daemons"
)]
struct Cli {
    /// Use the system bus (default: the session bus).
    #[arg(long, global = true)]
    system: bool,
    /// A D-Bus address to use instead of a bus (e.g. a daemon's peer socket).
    #[arg(long, global = true, value_name = "ADDRESS")]
    address: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

/// The commands, one enum per daemon they talk to, flattened into one list.
#[derive(Subcommand)]
enum Cmd {
    #[command(flatten)]
    Domain(DomainCmd),
    #[command(flatten)]
    Network(NetworkCmd),
    #[command(flatten)]
    Storage(StorageCmd),
    #[command(flatten)]
    Nodedev(NodedevCmd),
}

/// Commands of virtqemud.
#[derive(Subcommand)]
enum DomainCmd {
    /// List domains (running ones unless --all).
    List {
        #[arg(long)]
        all: bool,
    },
    /// Define a domain from an XML file.
    Define {
        file: String,
    },
    /// Undefine a domain.
    Undefine {
        domain: String,
        /// Also remove its UEFI variable store (VIR_DOMAIN_UNDEFINE_NVRAM).
        #[arg(long, conflicts_with = "keep_nvram")]
        nvram: bool,
        /// Keep its UEFI variable store (VIR_DOMAIN_UNDEFINE_KEEP_NVRAM).
        #[arg(long)]
        keep_nvram: bool,
        /// Keep its emulated TPM's state (VIR_DOMAIN_UNDEFINE_KEEP_TPM).
        #[arg(long)]
        keep_tpm: bool,
    },
    /// Start a defined domain.
    Start {
        domain: String,
        #[arg(long)]
        paused: bool,
    },
    /// Ask the guest to power off (ACPI).
    Shutdown {
        domain: String,
    },
    /// Stop a domain at once.
    Destroy {
        domain: String,
    },
    Suspend {
        domain: String,
    },
    Resume {
        domain: String,
    },
    Reboot {
        domain: String,
    },
    /// Print a domain's state and reason.
    Domstate {
        domain: String,
    },
    /// Print a domain's XML.
    Dumpxml {
        domain: String,
        #[arg(long)]
        inactive: bool,
    },
    /// Set or clear a domain's autostart flag.
    Autostart {
        domain: String,
        #[arg(long)]
        disable: bool,
    },
    /// Print the capabilities XML.
    Capabilities,
}

/// Commands of virtnetworkd.
#[derive(Subcommand)]
// clap derives the command names from the variants: `NetList` is virsh's `net-list`.
#[allow(clippy::enum_variant_names)]
enum NetworkCmd {
    /// List virtual networks.
    NetList,
    NetDefine {
        file: String,
    },
    NetStart {
        network: String,
    },
    NetDestroy {
        network: String,
    },
    NetUndefine {
        network: String,
    },
    NetDumpxml {
        network: String,
    },
    /// Print a network's DHCP leases.
    NetDhcpLeases {
        network: String,
    },
}

/// Commands of virtstoraged.
#[derive(Subcommand)]
enum StorageCmd {
    /// List storage pools.
    PoolList,
    PoolDefine {
        file: String,
    },
    /// Build a pool (creates the directory, formats, creates the VG).
    PoolBuild {
        pool: String,
    },
    PoolStart {
        pool: String,
    },
    PoolDestroy {
        pool: String,
    },
    PoolUndefine {
        pool: String,
    },
    PoolDumpxml {
        pool: String,
    },
    /// List a pool's volumes with their paths.
    VolList {
        pool: String,
    },
    /// Create a volume in a pool from an XML file.
    VolCreate {
        pool: String,
        file: String,
    },
    VolDelete {
        pool: String,
        volume: String,
    },
}

/// Commands of virtnodedevd.
#[derive(Subcommand)]
enum NodedevCmd {
    /// List node devices (optionally only those with a capability, e.g. pci, net).
    NodedevList {
        #[arg(long)]
        cap: Option<String>,
    },
    NodedevDumpxml {
        device: String,
    },
    /// Print the node's CPU and memory summary.
    Nodeinfo,
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli).await {
        eprintln!("error: {}", message(&e));
        std::process::exit(1);
    }
}

/// libvirt's message without the D-Bus wrapping, as virsh prints it.
fn message(e: &anyhow::Error) -> String {
    for cause in e.chain() {
        if let Some(zbus::Error::MethodError(_, Some(msg), _)) = cause.downcast_ref() {
            return msg.clone();
        }
    }
    format!("{e:#}")
}

async fn connection(cli: &Cli) -> anyhow::Result<zbus::Connection> {
    let conn = match (&cli.address, cli.system) {
        (Some(a), _) => {
            zbus::connection::Builder::address(a.as_str())?
                .p2p()
                .build()
                .await?
        }
        (None, true) => zbus::Connection::system().await?,
        (None, false) => zbus::Connection::session().await?,
    };
    Ok(conn)
}

/// Proxies of objects other than the connect object take the same destination as
/// the connect proxy (none on a peer connection).
macro_rules! object {
    ($ty:ident, $conn:expr, $path:expr, $dest:expr) => {{
        let b = $ty::builder($conn)
            .path($path.clone())?
            .cache_properties(CacheProperties::No);
        match $dest {
            Some(d) => b.destination(d)?.build().await?,
            None => b.build().await?,
        }
    }};
}

/// On a peer connection there is no bus name to address.
fn dest(peer: bool, name: &'static str) -> Option<&'static str> {
    (!peer).then_some(name)
}

/// A daemon's connect object (`/org/libvirt/QEMU`), addressed as `object!` does.
macro_rules! connect {
    ($ty:ident, $conn:expr, $dest:expr) => {{
        let b = $ty::builder($conn).cache_properties(CacheProperties::No);
        match $dest {
            Some(d) => b.destination(d)?.build().await?,
            None => b.build().await?,
        }
    }};
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let conn = connection(&cli).await.context("cannot connect")?;
    let c = &conn;
    let peer = cli.address.is_some();
    match cli.cmd {
        Cmd::Domain(cmd) => domain_cmd(c, dest(peer, "org.libvirt.virtqemud"), cmd).await,
        Cmd::Network(cmd) => network_cmd(c, dest(peer, "org.libvirt.virtnetworkd"), cmd).await,
        Cmd::Storage(cmd) => storage_cmd(c, dest(peer, "org.libvirt.virtstoraged"), cmd).await,
        Cmd::Nodedev(cmd) => nodedev_cmd(c, dest(peer, "org.libvirt.virtnodedevd"), cmd).await,
    }
}

/// Runs a command of virtqemud, at bus name `qd` (none on a peer connection).
async fn domain_cmd(
    c: &zbus::Connection,
    qd: Option<&'static str>,
    cmd: DomainCmd,
) -> anyhow::Result<()> {
    let domain = |name: String| async move {
        let q: QemuConnectProxy = connect!(QemuConnectProxy, c, qd);
        let path = lookup_domain(&q, &name).await?;
        let d: DomainProxy = object!(DomainProxy, c, path, qd);
        anyhow::Ok(d)
    };
    match cmd {
        DomainCmd::List { all } => {
            let q: QemuConnectProxy = connect!(QemuConnectProxy, c, qd);
            // virConnectListAllDomains: ACTIVE=1, or 0 for all.
            let paths = q.list_domains(if all { 0 } else { 1 }).await?;
            header(&[("Id", 5), ("Name", 30), ("State", 0)], 50);
            for p in paths {
                let d: DomainProxy = object!(DomainProxy, c, p, qd);
                let id = if d.active().await? {
                    d.id().await?.to_string()
                } else {
                    "-".into()
                };
                let (state, _) = d.get_state(0).await?;
                println!(" {:<5} {:<30} {}", id, d.name().await?, state_name(state));
            }
        }
        DomainCmd::Define { file } => {
            let q: QemuConnectProxy = connect!(QemuConnectProxy, c, qd);
            let p = q.domain_define_xml(&read(&file)?).await?;
            let d: DomainProxy = object!(DomainProxy, c, p, qd);
            println!("Domain '{}' defined from {file}", d.name().await?);
        }
        DomainCmd::Undefine {
            domain: n,
            nvram,
            keep_nvram,
            keep_tpm,
        } => {
            let flags = if nvram { 4 } else { 0 }
                | if keep_nvram { 8 } else { 0 }
                | if keep_tpm { 64 } else { 0 };
            domain(n.clone()).await?.undefine(flags).await?;
            println!("Domain '{n}' has been undefined");
        }
        DomainCmd::Start { domain: n, paused } => {
            domain(n.clone()).await?.create(paused as u32).await?;
            println!("Domain '{n}' started");
        }
        DomainCmd::Shutdown { domain: n } => {
            domain(n.clone()).await?.shutdown(0).await?;
            println!("Domain '{n}' is being shutdown");
        }
        DomainCmd::Destroy { domain: n } => {
            domain(n.clone()).await?.destroy(0).await?;
            println!("Domain '{n}' destroyed");
        }
        DomainCmd::Suspend { domain: n } => {
            domain(n.clone()).await?.suspend().await?;
            println!("Domain '{n}' suspended");
        }
        DomainCmd::Resume { domain: n } => {
            domain(n.clone()).await?.resume().await?;
            println!("Domain '{n}' resumed");
        }
        DomainCmd::Reboot { domain: n } => {
            domain(n.clone()).await?.reboot(0).await?;
            println!("Domain '{n}' is being rebooted");
        }
        DomainCmd::Domstate { domain: n } => {
            let (s, _) = domain(n).await?.get_state(0).await?;
            println!("{}", state_name(s));
        }
        DomainCmd::Dumpxml {
            domain: n,
            inactive,
        } => {
            // VIR_DOMAIN_XML_INACTIVE = 2
            let flags = if inactive { 2 } else { 0 };
            print!("{}", ensure_nl(domain(n).await?.get_xml_desc(flags).await?));
        }
        DomainCmd::Autostart { domain: n, disable } => {
            domain(n.clone()).await?.set_autostart(!disable).await?;
            let what = if disable { "unmarked" } else { "marked" };
            println!("Domain '{n}' {what} as autostarted");
        }
        DomainCmd::Capabilities => {
            let q: QemuConnectProxy = connect!(QemuConnectProxy, c, qd);
            print!("{}", ensure_nl(q.get_capabilities().await?));
        }
    }
    Ok(())
}

/// Runs a command of virtnetworkd, at bus name `nd` (none on a peer connection).
async fn network_cmd(
    c: &zbus::Connection,
    nd: Option<&'static str>,
    cmd: NetworkCmd,
) -> anyhow::Result<()> {
    let network = |name: String| async move {
        let n: NetworkConnectProxy = connect!(NetworkConnectProxy, c, nd);
        let path = n.network_lookup_by_name(&name).await?;
        let p: NetworkProxy = object!(NetworkProxy, c, path, nd);
        anyhow::Ok(p)
    };
    match cmd {
        NetworkCmd::NetList => {
            let n: NetworkConnectProxy = connect!(NetworkConnectProxy, c, nd);
            header(
                &[
                    ("Name", 20),
                    ("State", 10),
                    ("Autostart", 10),
                    ("Bridge", 0),
                ],
                55,
            );
            for p in n.list_networks(0).await? {
                let net: NetworkProxy = object!(NetworkProxy, c, p.clone(), nd);
                let ports: NetworkPortsProxy = object!(NetworkPortsProxy, c, p, nd);
                println!(
                    " {:<20} {:<10} {:<10} {}",
                    net.name().await?,
                    if net.active().await? {
                        "active"
                    } else {
                        "inactive"
                    },
                    yes_no(net.autostart().await?),
                    ports.bridge_name().await.unwrap_or_default()
                );
            }
        }
        NetworkCmd::NetDefine { file } => {
            let n: NetworkConnectProxy = connect!(NetworkConnectProxy, c, nd);
            let p = n.network_define_xml(&read(&file)?).await?;
            let net: NetworkProxy = object!(NetworkProxy, c, p, nd);
            println!("Network {} defined from {file}", net.name().await?);
        }
        NetworkCmd::NetStart { network: n } => {
            network(n.clone()).await?.create().await?;
            println!("Network {n} started");
        }
        NetworkCmd::NetDestroy { network: n } => {
            network(n.clone()).await?.destroy().await?;
            println!("Network {n} destroyed");
        }
        NetworkCmd::NetUndefine { network: n } => {
            network(n.clone()).await?.undefine().await?;
            println!("Network {n} has been undefined");
        }
        NetworkCmd::NetDumpxml { network: n } => {
            print!("{}", ensure_nl(network(n).await?.get_xml_desc(0).await?));
        }
        NetworkCmd::NetDhcpLeases { network: n } => {
            let leases = network(n).await?.get_dhcp_leases("", 0).await?;
            header(
                &[
                    ("MAC address", 19),
                    ("IP address", 20),
                    ("Hostname", 18),
                    ("Client ID", 0),
                ],
                75,
            );
            for (_iface, _exp, _kind, mac, _iaid, ip, prefix, host, client) in leases {
                let host = if host.is_empty() {
                    "-".to_owned()
                } else {
                    host
                };
                let client = if client.is_empty() {
                    "-".to_owned()
                } else {
                    client
                };
                println!(
                    " {mac:<19} {:<20} {host:<18} {client}",
                    format!("{ip}/{prefix}")
                );
            }
        }
    }
    Ok(())
}

/// Runs a command of virtstoraged, at bus name `sd` (none on a peer connection).
async fn storage_cmd(
    c: &zbus::Connection,
    sd: Option<&'static str>,
    cmd: StorageCmd,
) -> anyhow::Result<()> {
    let pool = |name: String| async move {
        let s: StorageConnectProxy = connect!(StorageConnectProxy, c, sd);
        let path = s.storage_pool_lookup_by_name(&name).await?;
        let p: StoragePoolProxy = object!(StoragePoolProxy, c, path, sd);
        anyhow::Ok(p)
    };
    match cmd {
        StorageCmd::PoolList => {
            let s: StorageConnectProxy = connect!(StorageConnectProxy, c, sd);
            header(&[("Name", 20), ("State", 10), ("Autostart", 0)], 42);
            for p in s.list_storage_pools(0).await? {
                let pool: StoragePoolProxy = object!(StoragePoolProxy, c, p, sd);
                println!(
                    " {:<20} {:<10} {}",
                    pool.name().await?,
                    if pool.active().await? {
                        "active"
                    } else {
                        "inactive"
                    },
                    yes_no(pool.autostart().await?)
                );
            }
        }
        StorageCmd::PoolDefine { file } => {
            let s: StorageConnectProxy = connect!(StorageConnectProxy, c, sd);
            let p = s.storage_pool_define_xml(&read(&file)?, 0).await?;
            let pool: StoragePoolProxy = object!(StoragePoolProxy, c, p, sd);
            println!("Pool {} defined from {file}", pool.name().await?);
        }
        StorageCmd::PoolBuild { pool: n } => {
            pool(n.clone()).await?.build(0).await?;
            println!("Pool {n} built");
        }
        StorageCmd::PoolStart { pool: n } => {
            pool(n.clone()).await?.create(0).await?;
            println!("Pool {n} started");
        }
        StorageCmd::PoolDestroy { pool: n } => {
            pool(n.clone()).await?.destroy().await?;
            println!("Pool {n} destroyed");
        }
        StorageCmd::PoolUndefine { pool: n } => {
            pool(n.clone()).await?.undefine().await?;
            println!("Pool {n} has been undefined");
        }
        StorageCmd::PoolDumpxml { pool: n } => {
            print!("{}", ensure_nl(pool(n).await?.get_xml_desc(0).await?));
        }
        StorageCmd::VolList { pool: n } => {
            let p = pool(n).await?;
            header(&[("Name", 24), ("Path", 0)], 60);
            for v in p.list_storage_volumes(0).await? {
                let vol: StorageVolProxy = object!(StorageVolProxy, c, v, sd);
                println!(" {:<24} {}", vol.name().await?, vol.path().await?);
            }
        }
        StorageCmd::VolCreate { pool: n, file } => {
            let v = pool(n)
                .await?
                .storage_vol_create_xml(&read(&file)?, 0)
                .await?;
            let vol: StorageVolProxy = object!(StorageVolProxy, c, v, sd);
            println!("Vol {} created from {file}", vol.name().await?);
        }
        StorageCmd::VolDelete { pool: n, volume } => {
            let v = pool(n).await?.storage_vol_lookup_by_name(&volume).await?;
            let vol: StorageVolProxy = object!(StorageVolProxy, c, v, sd);
            vol.delete(0).await?;
            println!("Vol {volume} deleted");
        }
    }
    Ok(())
}

/// Runs a command of virtnodedevd, at bus name `dd` (none on a peer connection).
async fn nodedev_cmd(
    c: &zbus::Connection,
    dd: Option<&'static str>,
    cmd: NodedevCmd,
) -> anyhow::Result<()> {
    match cmd {
        NodedevCmd::NodedevList { cap } => {
            let d: NodeDevConnectProxy = connect!(NodeDevConnectProxy, c, dd);
            let flags = match cap.as_deref() {
                None => 0,
                Some(c) => cap_flag(c).ok_or_else(|| anyhow!("unknown capability '{c}'"))?,
            };
            for p in d.list_node_devices(flags).await? {
                let dev: NodeDeviceProxy = object!(NodeDeviceProxy, c, p, dd);
                println!("{}", dev.name().await?);
            }
        }
        NodedevCmd::NodedevDumpxml { device } => {
            let d: NodeDevConnectProxy = connect!(NodeDevConnectProxy, c, dd);
            let p = d.node_device_lookup_by_name(&device).await?;
            let dev: NodeDeviceProxy = object!(NodeDeviceProxy, c, p, dd);
            print!("{}", ensure_nl(dev.get_xml_desc(0).await?));
        }
        NodedevCmd::Nodeinfo => {
            let d: NodeInfoProxy = connect!(NodeInfoProxy, c, dd);
            let (model, mem, cpus, mhz, nodes, sockets, cores, threads) = d.node_get_info().await?;
            let rows: [(&str, String); 8] = [
                ("CPU model", model),
                ("CPU(s)", cpus.to_string()),
                ("CPU frequency", format!("{mhz} MHz")),
                ("CPU socket(s)", sockets.to_string()),
                ("Core(s) per socket", cores.to_string()),
                ("Thread(s) per core", threads.to_string()),
                ("NUMA cell(s)", nodes.to_string()),
                ("Memory size", format!("{mem} KiB")),
            ];
            for (k, v) in rows {
                println!("{:<20}{v}", format!("{k}:"));
            }
        }
    }
    Ok(())
}

/// A name, a UUID or a numeric ID, as virsh accepts them.
async fn lookup_domain(q: &QemuConnectProxy<'_>, s: &str) -> anyhow::Result<OwnedObjectPath> {
    if let Ok(p) = q.domain_lookup_by_name(s).await {
        return Ok(p);
    }
    if let Ok(id) = s.parse::<i32>() {
        if let Ok(p) = q.domain_lookup_by_id(id).await {
            return Ok(p);
        }
    }
    if s.len() == 36 {
        if let Ok(p) = q.domain_lookup_by_uuid(s).await {
            return Ok(p);
        }
    }
    // The name lookup's own error names what was missing.
    Ok(q.domain_lookup_by_name(s).await?)
}

/// A table header as virsh prints it: padded column names, then a rule.
fn header(cols: &[(&str, usize)], rule: usize) {
    let line: String = cols.iter().map(|(c, w)| format!(" {c:<w$}")).collect();
    println!("{}", line.trim_end());
    println!("{}", "-".repeat(rule));
}

fn read(file: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(file).with_context(|| format!("cannot read '{file}'"))
}

fn ensure_nl(mut s: String) -> String {
    if !s.ends_with('\n') {
        s.push('\n');
    }
    s
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// virsh's words for virDomainState.
fn state_name(s: i32) -> &'static str {
    match s {
        1 => "running",
        2 => "idle",
        3 => "paused",
        4 => "in shutdown",
        5 => "shut off",
        6 => "crashed",
        7 => "pmsuspended",
        _ => "no state",
    }
}

/// virConnectListAllNodeDevices capability flags by virsh's names.
fn cap_flag(cap: &str) -> Option<u32> {
    let table: HashMap<&str, u32> = [
        ("system", 1),
        ("pci", 2),
        ("usb_device", 4),
        ("usb", 8),
        ("net", 16),
        ("scsi_host", 32),
        ("scsi_target", 64),
        ("scsi", 128),
        ("storage", 256),
        ("fc_host", 512),
        ("vports", 1024),
        ("scsi_generic", 2048),
        ("drm", 4096),
        ("mdev_types", 8192),
        ("mdev", 16384),
    ]
    .into_iter()
    .collect();
    table.get(cap).copied()
}
