//! Network filter commands (virtnetworkd's org.libvirt.NWFilter and its filter
//! bindings), as virsh's nwfilter-* and nwfilter-binding-*.

use common::proxies::network::{
    NWFilterBindingProxy, NWFilterBindingsProxy, NWFilterProxy, NetworkConnectProxy,
};

use crate::cli::NwfilterCmd;
use crate::out::write_text;
use crate::{outln, read, Ctx};

pub async fn run(x: &Ctx<'_>, cmd: NwfilterCmd) -> anyhow::Result<()> {
    let nd = x.dest("org.libvirt.virtnetworkd");
    let c = x.c;
    let conn: NetworkConnectProxy = connect!(NetworkConnectProxy, c, nd);
    let bindings: NWFilterBindingsProxy = connect!(NWFilterBindingsProxy, c, nd);
    // virsh takes a name, or a UUID.
    let find = |s: String| {
        let conn = conn.clone();
        async move {
            let path = match conn.nw_filter_lookup_by_name(&s).await {
                Ok(p) => p,
                Err(e) if s.len() == 36 && s.matches('-').count() == 4 => {
                    conn.nw_filter_lookup_by_uuid(&s).await.or(Err(e))?
                }
                Err(e) => return Err(e.into()),
            };
            let f: NWFilterProxy = object!(NWFilterProxy, c, path, nd);
            anyhow::Ok(f)
        }
    };
    let binding = |port: String| {
        let bindings = bindings.clone();
        async move {
            let path = bindings.nwfilter_binding_lookup_by_port_dev(&port).await?;
            let b: NWFilterBindingProxy = object!(NWFilterBindingProxy, c, path, nd);
            anyhow::Ok(b)
        }
    };
    match cmd {
        NwfilterCmd::NwfilterList => {
            let mut rows = Vec::new();
            for p in conn.list_nw_filters(0).await? {
                let f: NWFilterProxy = object!(NWFilterProxy, c, p, nd);
                let (Ok(uuid), Ok(name)) = (f.uuid().await, f.name().await) else {
                    continue;
                };
                rows.push(vec![uuid, name]);
            }
            rows.sort_by(|a, b| a[1].cmp(&b[1]));
            x.out.table(&["UUID", "Name"], &rows)?;
        }
        NwfilterCmd::NwfilterDefine { file } => {
            let p = conn.nw_filter_define_xml(&read(&file)?).await?;
            let f: NWFilterProxy = object!(NWFilterProxy, c, p, nd);
            outln!("Network filter {} defined from {file}", f.name().await?);
        }
        NwfilterCmd::NwfilterUndefine { nwfilter } => {
            let f = find(nwfilter).await?;
            let name = f.name().await?;
            f.undefine().await?;
            outln!("Network filter {name} undefined");
        }
        NwfilterCmd::NwfilterDumpxml { nwfilter } => {
            write_text(&find(nwfilter).await?.get_xml_desc(0).await?)?;
        }
        NwfilterCmd::NwfilterBindingList => {
            let mut rows = Vec::new();
            for p in bindings.list_nwfilter_bindings(0).await? {
                let b: NWFilterBindingProxy = object!(NWFilterBindingProxy, c, p, nd);
                let (Ok(port), Ok(filter)) = (b.port_dev().await, b.filter_name().await) else {
                    continue;
                };
                rows.push(vec![port, filter]);
            }
            x.out.table(&["Port Dev", "Filter"], &rows)?;
        }
        NwfilterCmd::NwfilterBindingCreate { file } => {
            let p = bindings
                .nwfilter_binding_create_xml(&read(&file)?, 0)
                .await?;
            let b: NWFilterBindingProxy = object!(NWFilterBindingProxy, c, p, nd);
            outln!(
                "Network filter binding on {} created from {file}",
                b.port_dev().await?
            );
        }
        NwfilterCmd::NwfilterBindingDelete { binding: port } => {
            binding(port.clone()).await?.delete().await?;
            outln!("Network filter binding on {port} deleted");
        }
        NwfilterCmd::NwfilterBindingDumpxml { binding: port } => {
            write_text(&binding(port).await?.get_xml_desc(0).await?)?;
        }
    }
    Ok(())
}
