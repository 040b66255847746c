//! Host interface commands (virtnetworkd's org.libvirt.Interface), as virsh's iface-*.

use common::proxies::network::{InterfaceProxy, NetworkConnectProxy};
use zbus::zvariant::OwnedObjectPath;

use crate::cli::InterfaceCmd;
use crate::out::write_text;
use crate::{outln, read, Ctx};

/// virConnectListAllInterfaces flags.
const LIST_INACTIVE: u32 = 1;
const LIST_ACTIVE: u32 = 2;
/// VIR_INTERFACE_XML_INACTIVE.
const XML_INACTIVE: u32 = 1;

pub async fn run(x: &Ctx<'_>, cmd: InterfaceCmd) -> anyhow::Result<()> {
    let nd = x.dest("org.libvirt.virtnetworkd");
    let c = x.c;
    let conn: NetworkConnectProxy = connect!(NetworkConnectProxy, c, nd);
    // virsh takes a name first, then a MAC address.
    let find = |s: String| {
        let conn = conn.clone();
        async move {
            let path: OwnedObjectPath = match conn.interface_lookup_by_name(&s).await {
                Ok(p) => p,
                Err(e) if s.contains(':') => conn.interface_lookup_by_mac(&s).await.or(Err(e))?,
                Err(e) => return Err(e.into()),
            };
            let i: InterfaceProxy = object!(InterfaceProxy, c, path, nd);
            anyhow::Ok(i)
        }
    };
    match cmd {
        InterfaceCmd::IfaceList { all, inactive } => {
            let flags = match (all, inactive) {
                (true, _) => 0,
                (_, true) => LIST_INACTIVE,
                _ => LIST_ACTIVE,
            };
            let mut rows = Vec::new();
            for p in conn.list_interfaces(flags).await? {
                let i: InterfaceProxy = object!(InterfaceProxy, c, p, nd);
                // An interface may go between the list and the reads (a link deleted).
                let (Ok(name), Ok(active), Ok(mac)) =
                    (i.name().await, i.active().await, i.mac().await)
                else {
                    continue;
                };
                let state = if active { "active" } else { "inactive" };
                rows.push(vec![name, state.into(), mac]);
            }
            x.out.table(&["Name", "State", "MAC Address"], &rows)?;
        }
        InterfaceCmd::IfaceDefine { file } => {
            let p = conn.interface_define_xml(&read(&file)?, 0).await?;
            let i: InterfaceProxy = object!(InterfaceProxy, c, p, nd);
            outln!("Interface {} defined from {file}", i.name().await?);
        }
        InterfaceCmd::IfaceStart { interface } => {
            let i = find(interface).await?;
            i.create(0).await?;
            outln!("Interface {} started", i.name().await?);
        }
        InterfaceCmd::IfaceDestroy { interface } => {
            let i = find(interface).await?;
            i.destroy(0).await?;
            outln!("Interface {} destroyed", i.name().await?);
        }
        InterfaceCmd::IfaceUndefine { interface } => {
            let i = find(interface).await?;
            let name = i.name().await?;
            i.undefine().await?;
            outln!("Interface {name} undefined");
        }
        InterfaceCmd::IfaceDumpxml {
            interface,
            inactive,
        } => {
            let flags = if inactive { XML_INACTIVE } else { 0 };
            write_text(&find(interface).await?.get_xml_desc(flags).await?)?;
        }
        InterfaceCmd::IfaceMac { interface } => {
            let mac = find(interface).await?.mac().await?;
            x.out.scalar(&mac, serde_json::json!(mac))?;
        }
        InterfaceCmd::IfaceName { interface } => {
            let p = conn.interface_lookup_by_mac(&interface).await?;
            let i: InterfaceProxy = object!(InterfaceProxy, c, p, nd);
            let name = i.name().await?;
            x.out.scalar(&name, serde_json::json!(name))?;
        }
        InterfaceCmd::IfaceBegin => {
            conn.interface_change_begin(0).await?;
            outln!("Network config change transaction started");
        }
        InterfaceCmd::IfaceCommit => {
            conn.interface_change_commit(0).await?;
            outln!("Network config change transaction committed");
        }
        InterfaceCmd::IfaceRollback => {
            conn.interface_change_rollback(0).await?;
            outln!("Network config change transaction rolled back");
        }
    }
    Ok(())
}
