//! Migration commands: `migrate` (libvirt's managed peer-to-peer migration through
//! `MigrateToURI3`, the only kind libvirt-dbus offers), `migrate-setspeed`,
//! `migrate-getspeed`, `migrate-setmaxdowntime`, `domjobinfo` and `domjobabort`.

use std::collections::HashMap;

use clap::Subcommand;
use zbus::zvariant::Value;

use crate::{outln, read, Ctx};

#[derive(Subcommand)]
pub enum MigrateCmd {
    /// Migrate a running domain to the node at DESTURI (a libvirt URI, as -c takes).
    Migrate {
        domain: String,
        desturi: String,
        /// Keep the guest running while its memory is copied (VIR_MIGRATE_LIVE).
        #[arg(long)]
        live: bool,
        /// Accepted for virsh's command lines: every migration here is peer-to-peer.
        #[arg(long)]
        p2p: bool,
        /// Define the domain on the destination (VIR_MIGRATE_PERSIST_DEST).
        #[arg(long)]
        persistent: bool,
        /// Undefine it here once it runs there (VIR_MIGRATE_UNDEFINE_SOURCE).
        #[arg(long)]
        undefinesource: bool,
        /// Leave it paused on the destination (VIR_MIGRATE_PAUSED).
        #[arg(long)]
        suspend: bool,
        #[arg(long)]
        compressed: bool,
        #[arg(long)]
        auto_converge: bool,
        #[arg(long)]
        abort_on_error: bool,
        #[arg(long)]
        postcopy: bool,
        /// Where QEMU's stream goes (tcp://HOST[:PORT]).
        #[arg(long)]
        migrateuri: Option<String>,
        /// Where the destination's QEMU listens.
        #[arg(long)]
        listen_address: Option<String>,
        /// The domain's name on the destination.
        #[arg(long)]
        dname: Option<String>,
        /// The domain's XML for the destination, from a file.
        #[arg(long)]
        xml: Option<String>,
        /// MiB/s.
        #[arg(long)]
        bandwidth: Option<u64>,
    },
    /// Set the bandwidth of the domain's migrations, MiB/s.
    MigrateSetspeed {
        domain: String,
        bandwidth: u64,
        #[arg(long)]
        postcopy: bool,
    },
    /// Print the bandwidth of the domain's migrations, MiB/s.
    MigrateGetspeed {
        domain: String,
        #[arg(long)]
        postcopy: bool,
    },
    /// Set the longest pause a live migration may cause, ms.
    MigrateSetmaxdowntime { domain: String, downtime: u64 },
    /// Print the domain's job in progress (a migration), or the last one's with --completed.
    Domjobinfo {
        domain: String,
        #[arg(long)]
        completed: bool,
    },
    /// Abort the domain's job in progress (a migration).
    Domjobabort { domain: String },
}

/// `virDomainJobType` as virsh prints it.
fn job_type(t: i32) -> &'static str {
    match t {
        1 => "Bounded",
        2 => "Unbounded",
        3 => "Completed",
        4 => "Failed",
        5 => "Cancelled",
        _ => "None",
    }
}

pub async fn run(x: &Ctx<'_>, cmd: MigrateCmd) -> anyhow::Result<()> {
    match cmd {
        MigrateCmd::Migrate {
            domain,
            desturi,
            live,
            p2p: _,
            persistent,
            undefinesource,
            suspend,
            compressed,
            auto_converge,
            abort_on_error,
            postcopy,
            migrateuri,
            listen_address,
            dname,
            xml,
            bandwidth,
        } => {
            let flags = [
                (live, 1),
                (true, 2),
                (persistent, 8),
                (undefinesource, 16),
                (suspend, 32),
                (compressed, 2048),
                (abort_on_error, 4096),
                (auto_converge, 8192),
                (postcopy, 32768),
            ]
            .iter()
            .filter(|(on, _)| *on)
            .fold(0u32, |f, (_, bit)| f | bit);
            let mut params: HashMap<&str, Value> = HashMap::new();
            for (k, v) in [
                ("migrate_uri", migrateuri),
                ("listen_address", listen_address),
                ("destination_name", dname),
                ("destination_xml", xml.map(|f| read(&f)).transpose()?),
            ] {
                if let Some(v) = v {
                    params.insert(k, Value::from(v));
                }
            }
            if let Some(b) = bandwidth {
                params.insert("bandwidth", Value::from(b));
            }
            x.domain(&domain)
                .await?
                .migrate_to_uri3(&desturi, &params, flags)
                .await?;
            outln!("Migration: [100 %]");
        }
        MigrateCmd::MigrateSetspeed {
            domain,
            bandwidth,
            postcopy,
        } => {
            let d = x.domain(&domain).await?;
            d.migrate_set_max_speed(bandwidth, postcopy as u32).await?;
        }
        MigrateCmd::MigrateGetspeed { domain, postcopy } => {
            let d = x.domain(&domain).await?;
            outln!("{}", d.migrate_get_max_speed(postcopy as u32).await?);
        }
        MigrateCmd::MigrateSetmaxdowntime { domain, downtime } => {
            let d = x.domain(&domain).await?;
            d.migrate_set_max_downtime(downtime, 0).await?;
        }
        MigrateCmd::Domjobinfo { domain, completed } => {
            let d = x.domain(&domain).await?;
            let (kind, stats) = d.get_job_stats(completed as u32).await?;
            outln!("{:<17}{}", "Job type:", job_type(kind));
            let mut keys: Vec<_> = stats.keys().cloned().collect();
            keys.sort();
            for k in keys {
                if let Some(v) = stats.get(&k) {
                    let v: &Value = v;
                    let v = match v {
                        Value::Value(inner) => format!("{}", **inner),
                        other => format!("{other}"),
                    };
                    outln!("{:<24}{v}", format!("{k}:"));
                }
            }
        }
        MigrateCmd::Domjobabort { domain } => {
            x.domain(&domain).await?.abort_job().await?;
        }
    }
    Ok(())
}
