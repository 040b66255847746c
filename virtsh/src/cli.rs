//! The command line, one clap definition for the commands, the interactive shell, the
//! completion scripts and the man page.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "virtsh",
    version,
    about = "virsh-like client of the virt daemons",
    long_about = "virsh-like client of the virt daemons over their libvirt-dbus API. \
                  Without a command it reads commands from its standard input, a prompt \
                  on a terminal, as virsh does."
)]
pub struct Cli {
    /// The connection URI: qemu:///system, qemu:///session,
    /// qemu+unix:///system?socket=PATH, qemu+ssh://[user@]host[:port]/system
    /// (default: $LIBVIRT_DEFAULT_URI, else qemu:///session).
    #[arg(short = 'c', long = "connect", global = true, value_name = "URI")]
    pub connect: Option<String>,
    /// Use the system bus (same as -c qemu:///system).
    #[arg(long, global = true)]
    pub system: bool,
    /// A D-Bus address to use instead of a bus (e.g. a daemon's peer socket).
    #[arg(long, global = true, value_name = "ADDRESS")]
    pub address: Option<String>,
    /// Print listings and information as JSON.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub cmd: Option<Cmd>,
}

/// The commands, one enum per daemon they talk to, flattened into one list.
#[derive(Subcommand)]
pub enum Cmd {
    #[command(flatten)]
    Domain(DomainCmd),
    #[command(flatten)]
    Migrate(crate::migrate::MigrateCmd),
    #[command(flatten)]
    Stats(StatsCmd),
    #[command(flatten)]
    Network(NetworkCmd),
    #[command(flatten)]
    Interface(InterfaceCmd),
    #[command(flatten)]
    Nwfilter(NwfilterCmd),
    #[command(flatten)]
    Storage(StorageCmd),
    #[command(flatten)]
    Volume(VolCmd),
    #[command(flatten)]
    Secret(SecretCmd),
    #[command(flatten)]
    Nodedev(NodedevCmd),
    #[command(flatten)]
    Host(HostCmd),
    #[command(flatten)]
    Tool(ToolCmd),
}

/// Commands of virtqemud that change or show one domain.
#[derive(Subcommand)]
pub enum DomainCmd {
    /// List domains (running ones unless --all).
    List {
        #[arg(long)]
        all: bool,
        #[arg(long, conflicts_with = "all")]
        inactive: bool,
        /// Only persistent (defined) domains.
        #[arg(long)]
        persistent: bool,
        /// Only transient (created) domains.
        #[arg(long, conflicts_with = "persistent")]
        transient: bool,
        /// Print only the names, one a line.
        #[arg(long, conflicts_with = "uuid")]
        name: bool,
        /// Print only the UUIDs, one a line.
        #[arg(long)]
        uuid: bool,
    },
    /// Define a domain from an XML file.
    Define { file: String },
    /// Create (define and start) a transient domain from an XML file.
    Create {
        file: String,
        #[arg(long)]
        paused: bool,
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
    Shutdown { domain: String },
    /// Stop a domain at once.
    Destroy { domain: String },
    /// Pause a running domain.
    Suspend { domain: String },
    /// Resume a paused domain.
    Resume { domain: String },
    /// Ask the guest to reboot.
    Reboot { domain: String },
    /// Print a domain's state.
    Domstate {
        domain: String,
        /// Also print the reason.
        #[arg(long)]
        reason: bool,
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
    /// Compare a CPU description (a <cpu>, a domain's or capabilities' XML) with the
    /// CPU guests of this host get.
    CpuCompare {
        file: String,
        /// Fail with the reason when the CPU is incompatible.
        #[arg(long)]
        error: bool,
    },
    /// The CPU model every CPU described in the file (one or more <cpu> elements, or
    /// capabilities documents) can run.
    CpuBaseline {
        file: String,
        /// List every feature, not only those beyond the model.
        #[arg(long)]
        features: bool,
        /// Leave out features that block migration.
        #[arg(long)]
        migratable: bool,
    },
    /// Print a domain's ID ("-" when it is not running).
    Domid { domain: String },
    /// Print a domain's name.
    Domname { domain: String },
    /// Print a domain's UUID.
    Domuuid { domain: String },
}

/// Commands of virtqemud that read a domain's figures.
#[derive(Subcommand)]
pub enum StatsCmd {
    /// Print a domain's basic information.
    Dominfo { domain: String },
    /// Print statistics of domains (all of them when none is named).
    Domstats {
        domains: Vec<String>,
        /// Only running or paused domains (VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE).
        #[arg(long)]
        list_active: bool,
        #[arg(long)]
        list_inactive: bool,
        #[arg(long)]
        list_persistent: bool,
        #[arg(long)]
        list_transient: bool,
        #[arg(long)]
        list_running: bool,
        #[arg(long)]
        list_paused: bool,
        #[arg(long)]
        list_shutoff: bool,
        /// Fail on groups the daemon does not support instead of leaving them out.
        #[arg(long)]
        enforce: bool,
        #[arg(long)]
        state: bool,
        #[arg(long)]
        cpu_total: bool,
        #[arg(long)]
        balloon: bool,
        #[arg(long)]
        vcpu: bool,
        #[arg(long)]
        interface: bool,
        #[arg(long)]
        block: bool,
        /// The perf counters' values (`perf.<event>`).
        #[arg(long)]
        perf: bool,
    },
    /// Show or switch a domain's perf events.
    Perf {
        domain: String,
        /// Events to switch on, comma-separated (cpu_clock,page_faults).
        #[arg(long)]
        enable: Option<String>,
        /// Events to switch off, comma-separated.
        #[arg(long)]
        disable: Option<String>,
        #[arg(long)]
        live: bool,
        #[arg(long)]
        config: bool,
        #[arg(long)]
        current: bool,
    },
    /// Show or set a NIC's bandwidth limits.
    Domiftune {
        domain: String,
        /// The NIC's host device (vnet0) or MAC address.
        interface: String,
        /// average[,peak[,burst[,floor]]] in kilobytes per second (bursts in kilobytes).
        #[arg(long)]
        inbound: Option<String>,
        /// average[,peak[,burst]].
        #[arg(long)]
        outbound: Option<String>,
        #[arg(long)]
        live: bool,
        #[arg(long)]
        config: bool,
        #[arg(long)]
        current: bool,
    },
    /// List a domain's disks.
    Domblklist {
        domain: String,
        #[arg(long)]
        inactive: bool,
        /// Also print the type and device columns.
        #[arg(long)]
        details: bool,
    },
    /// List a domain's network interfaces.
    Domiflist {
        domain: String,
        #[arg(long)]
        inactive: bool,
    },
    /// Print a disk's I/O counters.
    Domblkstat {
        domain: String,
        /// The disk's target (vda) or source path; all disks when omitted.
        device: Option<String>,
    },
    /// Print a network interface's counters.
    Domifstat {
        domain: String,
        /// The interface's host device (vnet0) or MAC address.
        interface: String,
    },
    /// Print a domain's memory statistics.
    Dommemstat { domain: String },
    /// Print a domain's virtual CPUs.
    Vcpuinfo { domain: String },
}

/// Commands of virtnetworkd.
#[derive(Subcommand)]
// clap derives the command names from the variants: `NetList` is virsh's `net-list`.
#[allow(clippy::enum_variant_names)]
pub enum NetworkCmd {
    /// List virtual networks (active ones unless --all).
    NetList {
        #[arg(long)]
        all: bool,
        #[arg(long, conflicts_with = "all")]
        inactive: bool,
        /// Print only the names, one a line.
        #[arg(long)]
        name: bool,
    },
    /// Define a network from an XML file.
    NetDefine { file: String },
    /// Start a defined network.
    NetStart { network: String },
    /// Stop a network.
    NetDestroy { network: String },
    /// Undefine a network.
    NetUndefine { network: String },
    /// Print a network's XML.
    NetDumpxml { network: String },
    /// Print a network's DHCP leases.
    NetDhcpLeases { network: String },
    /// Set or clear a network's autostart flag.
    NetAutostart {
        network: String,
        #[arg(long)]
        disable: bool,
    },
    /// Print a network's basic information.
    NetInfo { network: String },
}

/// Commands of virtstoraged about secrets (libvirt's virtsecretd).
#[derive(Subcommand)]
// `SecretList` is virsh's `secret-list`.
#[allow(clippy::enum_variant_names)]
pub enum SecretCmd {
    /// List secrets.
    SecretList {
        #[arg(long)]
        ephemeral: bool,
        #[arg(long, conflicts_with = "ephemeral")]
        no_ephemeral: bool,
        #[arg(long)]
        private: bool,
        #[arg(long, conflicts_with = "private")]
        no_private: bool,
    },
    /// Define or modify a secret from an XML file.
    SecretDefine { file: String },
    /// Print a secret's XML.
    SecretDumpxml { secret: String },
    /// Set a secret's value: from a file (raw bytes), or base64 text as virsh takes it.
    SecretSetValue {
        secret: String,
        /// The value, base64-encoded.
        #[arg(long, conflicts_with = "file")]
        base64: Option<String>,
        /// A file with the value's bytes.
        #[arg(long)]
        file: Option<String>,
    },
    /// Print a secret's value, base64-encoded.
    SecretGetValue { secret: String },
    /// Undefine a secret.
    SecretUndefine { secret: String },
}

/// Commands about host interfaces (virtnetworkd). An interface is a name or a MAC.
#[derive(Subcommand)]
// `IfaceList` is virsh's `iface-list`.
#[allow(clippy::enum_variant_names)]
pub enum InterfaceCmd {
    /// List host interfaces (active ones unless --all).
    IfaceList {
        #[arg(long)]
        all: bool,
        #[arg(long, conflicts_with = "all")]
        inactive: bool,
    },
    /// Define (or redefine) a host interface from an XML file.
    IfaceDefine { file: String },
    /// Bring a defined interface up.
    IfaceStart { interface: String },
    /// Take a defined interface down.
    IfaceDestroy { interface: String },
    /// Remove an interface's stored definition.
    IfaceUndefine { interface: String },
    /// Print an interface's XML.
    IfaceDumpxml {
        interface: String,
        /// The stored definition rather than the live state.
        #[arg(long)]
        inactive: bool,
    },
    /// Print an interface's MAC address.
    IfaceMac { interface: String },
    /// Print the name of the interface with a MAC address.
    IfaceName { interface: String },
    /// Snapshot the interface definitions (netcf's transaction).
    IfaceBegin,
    /// Keep the changes made since iface-begin.
    IfaceCommit,
    /// Put back the definitions of iface-begin.
    IfaceRollback,
}

/// Commands about network filters and their bindings (virtnetworkd). A filter is a
/// name or a UUID; a binding is its tap's name.
#[derive(Subcommand)]
// `NwfilterList` is virsh's `nwfilter-list`.
#[allow(clippy::enum_variant_names)]
pub enum NwfilterCmd {
    /// List network filters.
    NwfilterList,
    /// Define (or redefine) a network filter from an XML file.
    NwfilterDefine { file: String },
    /// Undefine a network filter.
    NwfilterUndefine { nwfilter: String },
    /// Print a network filter's XML.
    NwfilterDumpxml { nwfilter: String },
    /// List the filter bindings (a filter on a tap).
    NwfilterBindingList,
    /// Bind a filter to a tap from a <filterbinding> XML file.
    NwfilterBindingCreate { file: String },
    /// Delete the binding of a tap.
    NwfilterBindingDelete { binding: String },
    /// Print the binding of a tap.
    NwfilterBindingDumpxml { binding: String },
}

/// Commands of virtstoraged about pools.
#[derive(Subcommand)]
// `PoolList` is virsh's `pool-list`.
#[allow(clippy::enum_variant_names)]
pub enum StorageCmd {
    /// List storage pools (active ones unless --all).
    PoolList {
        #[arg(long)]
        all: bool,
        #[arg(long, conflicts_with = "all")]
        inactive: bool,
        /// Print only the names, one a line.
        #[arg(long)]
        name: bool,
    },
    /// Define a pool from an XML file.
    PoolDefine { file: String },
    /// Build a pool (creates the directory, formats, creates the VG).
    PoolBuild { pool: String },
    /// Start a defined pool.
    PoolStart { pool: String },
    /// Stop a pool.
    PoolDestroy { pool: String },
    /// Undefine a pool.
    PoolUndefine { pool: String },
    /// Print a pool's XML.
    PoolDumpxml { pool: String },
    /// Rescan a pool's volumes.
    PoolRefresh { pool: String },
    /// Print a pool's basic information.
    PoolInfo {
        pool: String,
        /// Print sizes in bytes.
        #[arg(long)]
        bytes: bool,
    },
    /// Set or clear a pool's autostart flag.
    PoolAutostart {
        pool: String,
        #[arg(long)]
        disable: bool,
    },
}

/// Commands of virtstoraged about volumes. A volume is a name with `--pool`, a path or
/// a key.
#[derive(Subcommand)]
// `VolList` is virsh's `vol-list`.
#[allow(clippy::enum_variant_names)]
pub enum VolCmd {
    /// List a pool's volumes with their paths.
    VolList {
        pool: String,
        #[arg(long)]
        details: bool,
    },
    /// Create a volume in a pool from an XML file.
    VolCreate { pool: String, file: String },
    /// Create a volume from a size.
    VolCreateAs {
        pool: String,
        name: String,
        /// Size, with an optional suffix (k, M, G, T; KB for 1000).
        capacity: String,
        #[arg(long)]
        allocation: Option<String>,
        /// raw, qcow2...
        #[arg(long)]
        format: Option<String>,
    },
    /// Clone a volume within its pool.
    VolClone {
        vol: String,
        newname: String,
        #[arg(long)]
        pool: Option<String>,
    },
    /// Delete a volume (`vol-delete POOL VOL` or `vol-delete VOL --pool POOL`).
    VolDelete {
        #[arg(num_args = 1..=2, required = true)]
        args: Vec<String>,
        #[arg(long)]
        pool: Option<String>,
    },
    /// Print a volume's basic information.
    VolInfo {
        vol: String,
        #[arg(long)]
        pool: Option<String>,
        #[arg(long)]
        bytes: bool,
    },
    /// Print a volume's XML.
    VolDumpxml {
        vol: String,
        #[arg(long)]
        pool: Option<String>,
    },
    /// Change a volume's capacity.
    VolResize {
        vol: String,
        capacity: String,
        #[arg(long)]
        pool: Option<String>,
        /// Allocate the new space (VIR_STORAGE_VOL_RESIZE_ALLOCATE).
        #[arg(long)]
        allocate: bool,
        /// The capacity is a change of the current one.
        #[arg(long)]
        delta: bool,
        /// Allow shrinking.
        #[arg(long)]
        shrink: bool,
    },
    /// Overwrite a volume's content.
    VolWipe {
        vol: String,
        #[arg(long)]
        pool: Option<String>,
        /// zero, nnsa, dod, bsi, gutmann, schneier, pfitzner7, pfitzner33, random, trim.
        #[arg(long)]
        algorithm: Option<String>,
    },
    /// Write a file into a volume (a progress bar when stderr is a terminal).
    VolUpload {
        vol: String,
        file: String,
        #[arg(long)]
        pool: Option<String>,
        #[arg(long, default_value_t = 0)]
        offset: u64,
        /// Bytes to write (0: the whole file).
        #[arg(long, default_value_t = 0)]
        length: u64,
    },
    /// Read a volume into a file (a progress bar when stderr is a terminal).
    VolDownload {
        vol: String,
        file: String,
        #[arg(long)]
        pool: Option<String>,
        #[arg(long, default_value_t = 0)]
        offset: u64,
        /// Bytes to read (0: to the end).
        #[arg(long, default_value_t = 0)]
        length: u64,
    },
}

/// Commands of virtnodedevd.
#[derive(Subcommand)]
pub enum NodedevCmd {
    /// List node devices (optionally only those with a capability, e.g. pci, net).
    NodedevList {
        #[arg(long)]
        cap: Option<String>,
    },
    /// Print a node device's XML.
    NodedevDumpxml { device: String },
    /// Detach a PCI device from its host driver (for passthrough).
    NodedevDetach {
        device: String,
        /// The driver to bind instead (vfio).
        #[arg(long)]
        driver: Option<String>,
    },
    /// Give a detached PCI device back to its host driver.
    NodedevReattach { device: String },
    /// Reset a PCI device.
    NodedevReset { device: String },
    /// Print the node's CPU and memory summary.
    Nodeinfo,
    /// Print the node's memory statistics.
    Nodememstats {
        /// One NUMA cell (default: all).
        #[arg(long)]
        cell: Option<i32>,
    },
    /// Print the node's CPU time counters.
    Nodecpustats {
        /// One CPU (default: all).
        #[arg(long)]
        cpu: Option<i32>,
    },
    /// Print the host's SMBIOS information as XML.
    Sysinfo,
}

/// Commands about the connection itself.
#[derive(Subcommand)]
pub enum HostCmd {
    /// Print the host's name.
    Hostname,
    /// Print the connection URI.
    Uri,
    /// Print the versions of the library and hypervisor.
    Version,
    /// (Re)connect, to URI or to the current one.
    Connect { uri: Option<String> },
}

/// Commands that need no daemon.
#[derive(Subcommand)]
pub enum ToolCmd {
    /// Print a completion script for a shell (bash, zsh, fish, elvish, powershell).
    Completion { shell: clap_complete::Shell },
    /// Print the man page (roff).
    Man,
    /// Leave the interactive shell.
    #[command(alias = "exit")]
    Quit,
}
