//! Network commands (virtnetworkd).

use common::proxies::network::{NetworkConnectProxy, NetworkPortsProxy, NetworkProxy};
use serde_json::json;

use crate::cli::NetworkCmd;
use crate::out::write_text;
use crate::{outln, read, yes_no, Ctx};

/// virConnectListAllNetworks flags.
const LIST_INACTIVE: u32 = 1;
const LIST_ACTIVE: u32 = 2;

pub async fn run(x: &Ctx<'_>, cmd: NetworkCmd) -> anyhow::Result<()> {
    let nd = x.dest("org.libvirt.virtnetworkd");
    let c = x.c;
    let network = |name: String| async move {
        let n: NetworkConnectProxy = connect!(NetworkConnectProxy, c, nd);
        let path = n.network_lookup_by_name(&name).await?;
        let p: NetworkProxy = object!(NetworkProxy, c, path, nd);
        anyhow::Ok(p)
    };
    match cmd {
        NetworkCmd::NetList {
            all,
            inactive,
            name,
        } => {
            let n: NetworkConnectProxy = connect!(NetworkConnectProxy, c, nd);
            let flags = match (all, inactive) {
                (true, _) => 0,
                (_, true) => LIST_INACTIVE,
                _ => LIST_ACTIVE,
            };
            let mut rows = Vec::new();
            for p in n.list_networks(flags).await? {
                let net: NetworkProxy = object!(NetworkProxy, c, p, nd);
                rows.push(vec![
                    net.name().await?,
                    if net.active().await? {
                        "active"
                    } else {
                        "inactive"
                    }
                    .into(),
                    yes_no(net.autostart().await?).into(),
                    yes_no(net.persistent().await?).into(),
                ]);
            }
            if name {
                x.out.column(&rows)?;
            } else {
                x.out
                    .table(&["Name", "State", "Autostart", "Persistent"], &rows)?;
            }
        }
        NetworkCmd::NetDefine { file } => {
            let n: NetworkConnectProxy = connect!(NetworkConnectProxy, c, nd);
            let p = n.network_define_xml(&read(&file)?).await?;
            let net: NetworkProxy = object!(NetworkProxy, c, p, nd);
            outln!("Network {} defined from {file}", net.name().await?);
        }
        NetworkCmd::NetStart { network: n } => {
            network(n.clone()).await?.create().await?;
            outln!("Network {n} started");
        }
        NetworkCmd::NetDestroy { network: n } => {
            network(n.clone()).await?.destroy().await?;
            outln!("Network {n} destroyed");
        }
        NetworkCmd::NetUndefine { network: n } => {
            network(n.clone()).await?.undefine().await?;
            outln!("Network {n} has been undefined");
        }
        NetworkCmd::NetDumpxml { network: n } => {
            write_text(&network(n).await?.get_xml_desc(0).await?)?;
        }
        NetworkCmd::NetAutostart {
            network: n,
            disable,
        } => {
            network(n.clone()).await?.set_autostart(!disable).await?;
            let what = if disable { "unmarked" } else { "marked" };
            outln!("Network {n} {what} as autostarted");
        }
        NetworkCmd::NetInfo { network: n } => {
            let net = network(n).await?;
            let path = net.inner().path().to_owned();
            let ports: NetworkPortsProxy = object!(NetworkPortsProxy, c, path, nd);
            let (name, uuid) = (net.name().await?, net.uuid().await?);
            let (active, persistent, autostart) = (
                net.active().await?,
                net.persistent().await?,
                net.autostart().await?,
            );
            let mut rows = vec![
                ("Name", name.clone(), json!(name)),
                ("UUID", uuid.clone(), json!(uuid)),
                ("Active", yes_no(active).into(), json!(active)),
                ("Persistent", yes_no(persistent).into(), json!(persistent)),
                ("Autostart", yes_no(autostart).into(), json!(autostart)),
            ];
            // virsh leaves the bridge out when the network has none.
            if let Ok(b) = ports.bridge_name().await {
                if !b.is_empty() {
                    rows.push(("Bridge", b.clone(), json!(b)));
                }
            }
            x.out.info(&rows)?;
        }
        NetworkCmd::NetDhcpLeases { network: n } => {
            let leases = network(n).await?.get_dhcp_leases("", 0).await?;
            let dash = |s: String| if s.is_empty() { "-".to_owned() } else { s };
            let rows: Vec<Vec<String>> = leases
                .into_iter()
                .map(|(iface, exp, kind, mac, _iaid, ip, prefix, host, client)| {
                    vec![
                        expiry(exp),
                        mac,
                        if kind == 1 { "ipv6" } else { "ipv4" }.into(),
                        format!("{ip}/{prefix}"),
                        dash(host),
                        dash(client),
                        iface,
                    ]
                })
                .collect();
            let headers = [
                "Expiry Time",
                "MAC address",
                "Protocol",
                "IP address",
                "Hostname",
                "Client ID or DUID",
            ];
            // The interface column is only for JSON: virsh does not print it.
            if x.out.json {
                let mut h = headers.to_vec();
                h.push("Interface");
                x.out.table(&h, &rows)?;
            } else {
                let rows: Vec<Vec<String>> = rows
                    .into_iter()
                    .map(|mut r| {
                        r.pop();
                        r
                    })
                    .collect();
                x.out.table(&headers, &rows)?;
            }
        }
    }
    Ok(())
}

/// A lease's expiry as virsh prints it: local time, `%Y-%m-%d %H:%M:%S`.
fn expiry(secs: i64) -> String {
    let t = secs as libc::time_t;
    // SAFETY: an all-zero tm is valid; localtime_r only writes to it.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to live locals.
    if unsafe { libc::localtime_r(&t, &mut tm) }.is_null() {
        return secs.to_string();
    }
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}
