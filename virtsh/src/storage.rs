//! Storage commands (virtstoraged): pools, volumes and volume transfers.

use std::io::{IsTerminal as _, Write as _};
use std::os::fd::AsFd as _;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use common::proxies::storage::{
    StorageConnectProxy, StoragePoolOfVolumeProxy, StoragePoolProxy, StorageVolProxy,
    StorageVolTransferProxy,
};
use serde_json::json;

use crate::cli::{StorageCmd, VolCmd};
use crate::out::{parse_size, pretty_capacity, write_text};
use crate::{outln, read, yes_no, Ctx};

/// virConnectListAllStoragePools flags.
const LIST_INACTIVE: u32 = 1;
const LIST_ACTIVE: u32 = 2;

async fn pool<'a>(x: &'a Ctx<'_>, name: &str) -> anyhow::Result<StoragePoolProxy<'a>> {
    let sd = x.dest("org.libvirt.virtstoraged");
    let s: StorageConnectProxy = connect!(StorageConnectProxy, x.c, sd);
    let path = s.storage_pool_lookup_by_name(name).await?;
    Ok(object!(StoragePoolProxy, x.c, path, sd))
}

pub async fn pools(x: &Ctx<'_>, cmd: StorageCmd) -> anyhow::Result<()> {
    let sd = x.dest("org.libvirt.virtstoraged");
    let c = x.c;
    match cmd {
        StorageCmd::PoolList {
            all,
            inactive,
            name,
        } => {
            let s: StorageConnectProxy = connect!(StorageConnectProxy, c, sd);
            let flags = match (all, inactive) {
                (true, _) => 0,
                (_, true) => LIST_INACTIVE,
                _ => LIST_ACTIVE,
            };
            let mut rows = Vec::new();
            for p in s.list_storage_pools(flags).await? {
                let pool: StoragePoolProxy = object!(StoragePoolProxy, c, p, sd);
                rows.push(vec![
                    pool.name().await?,
                    if pool.active().await? {
                        "active"
                    } else {
                        "inactive"
                    }
                    .into(),
                    yes_no(pool.autostart().await?).into(),
                ]);
            }
            if name {
                x.out.column(&rows)?;
            } else {
                x.out.table(&["Name", "State", "Autostart"], &rows)?;
            }
        }
        StorageCmd::PoolDefine { file } => {
            let s: StorageConnectProxy = connect!(StorageConnectProxy, c, sd);
            let p = s.storage_pool_define_xml(&read(&file)?, 0).await?;
            let pool: StoragePoolProxy = object!(StoragePoolProxy, c, p, sd);
            outln!("Pool {} defined from {file}", pool.name().await?);
        }
        StorageCmd::PoolBuild { pool: n } => {
            pool(x, &n).await?.build(0).await?;
            outln!("Pool {n} built");
        }
        StorageCmd::PoolStart { pool: n } => {
            pool(x, &n).await?.create(0).await?;
            outln!("Pool {n} started");
        }
        StorageCmd::PoolDestroy { pool: n } => {
            pool(x, &n).await?.destroy().await?;
            outln!("Pool {n} destroyed");
        }
        StorageCmd::PoolUndefine { pool: n } => {
            pool(x, &n).await?.undefine().await?;
            outln!("Pool {n} has been undefined");
        }
        StorageCmd::PoolDumpxml { pool: n } => {
            write_text(&pool(x, &n).await?.get_xml_desc(0).await?)?;
        }
        StorageCmd::PoolRefresh { pool: n } => {
            pool(x, &n).await?.refresh(0).await?;
            outln!("Pool {n} refreshed");
        }
        StorageCmd::PoolAutostart { pool: n, disable } => {
            pool(x, &n).await?.set_autostart(!disable).await?;
            let what = if disable { "unmarked" } else { "marked" };
            outln!("Pool {n} {what} as autostarted");
        }
        StorageCmd::PoolInfo { pool: n, bytes } => pool_info(x, &n, bytes).await?,
    }
    Ok(())
}

fn size_text(v: u64, bytes: bool) -> String {
    if bytes {
        format!("{v}")
    } else {
        pretty_capacity(v)
    }
}

async fn pool_info(x: &Ctx<'_>, n: &str, bytes: bool) -> anyhow::Result<()> {
    let p = pool(x, n).await?;
    let (state, cap, alloc, avail) = p.get_info().await?;
    // virStoragePoolState as virsh words it.
    let state_name = match state {
        0 => "inactive",
        1 => "building",
        2 => "running",
        3 => "degraded",
        4 => "inaccessible",
        _ => "unknown",
    };
    let (name, uuid) = (p.name().await?, p.uuid().await?);
    let (persistent, autostart) = (p.persistent().await?, p.autostart().await?);
    let mut rows = vec![
        ("Name", name.clone(), json!(name)),
        ("UUID", uuid.clone(), json!(uuid)),
        ("State", state_name.into(), json!(state_name)),
        ("Persistent", yes_no(persistent).into(), json!(persistent)),
        ("Autostart", yes_no(autostart).into(), json!(autostart)),
    ];
    // Sizes only mean something for a running pool.
    if state == 2 || state == 3 {
        rows.extend([
            ("Capacity", size_text(cap, bytes), json!(cap)),
            ("Allocation", size_text(alloc, bytes), json!(alloc)),
            ("Available", size_text(avail, bytes), json!(avail)),
        ]);
    }
    x.out.info(&rows)?;
    Ok(())
}

/// A volume by name in `--pool`, else by path (starting with `/`) or key, as virsh's
/// virshCommandOptVol looks it up.
async fn vol<'a>(
    x: &'a Ctx<'_>,
    v: &str,
    pool_name: Option<&str>,
) -> anyhow::Result<StorageVolProxy<'a>> {
    let sd = x.dest("org.libvirt.virtstoraged");
    let path = match pool_name {
        Some(p) => pool(x, p).await?.storage_vol_lookup_by_name(v).await?,
        None => {
            let s: StorageConnectProxy = connect!(StorageConnectProxy, x.c, sd);
            match s.storage_vol_lookup_by_path(v).await {
                Ok(p) => p,
                Err(_) => s.storage_vol_lookup_by_key(v).await.map_err(|e| {
                    anyhow!(
                        "failed to get vol '{v}', specifying --pool might help: {}",
                        crate::message(&e.into())
                    )
                })?,
            }
        }
    };
    Ok(object!(StorageVolProxy, x.c, path, sd))
}

/// virStorageVolType as virsh words it.
fn vol_type(t: i32) -> &'static str {
    match t {
        0 => "file",
        1 => "block",
        2 => "dir",
        3 => "network",
        4 => "netdir",
        5 => "ploop",
        _ => "unknown",
    }
}

/// virStorageVolWipeAlgorithm by virsh's names.
fn wipe_algorithm(s: &str) -> Option<u32> {
    [
        "zero",
        "nnsa",
        "dod",
        "bsi",
        "gutmann",
        "schneier",
        "pfitzner7",
        "pfitzner33",
        "random",
        "trim",
    ]
    .iter()
    .position(|a| *a == s)
    .and_then(|i| u32::try_from(i).ok())
}

fn size_arg(s: &str) -> anyhow::Result<u64> {
    parse_size(s).ok_or_else(|| {
        anyhow!("Scaled numeric value '{s}' for <capacity> option is malformed or out of range")
    })
}

/// XML text escaping for names put into a volume document.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
}

fn vol_xml(name: &str, capacity: u64, allocation: Option<u64>, format: Option<&str>) -> String {
    let mut s = format!(
        "<volume><name>{}</name><capacity unit='bytes'>{capacity}</capacity>",
        esc(name)
    );
    if let Some(a) = allocation {
        s.push_str(&format!("<allocation unit='bytes'>{a}</allocation>"));
    }
    if let Some(f) = format {
        s.push_str(&format!("<target><format type='{}'/></target>", esc(f)));
    }
    s.push_str("</volume>");
    s
}

pub async fn vols(x: &Ctx<'_>, cmd: VolCmd) -> anyhow::Result<()> {
    let sd = x.dest("org.libvirt.virtstoraged");
    match cmd {
        VolCmd::VolList { pool: n, details } => {
            let p = pool(x, &n).await?;
            let mut rows = Vec::new();
            for v in p.list_storage_volumes(0).await? {
                let vol: StorageVolProxy = object!(StorageVolProxy, x.c, v, sd);
                let mut row = vec![vol.name().await?, vol.path().await?];
                if details {
                    let (t, cap, alloc) = vol.get_info(0).await?;
                    row.extend([
                        vol_type(t).into(),
                        pretty_capacity(cap),
                        pretty_capacity(alloc),
                    ]);
                }
                rows.push(row);
            }
            let headers: &[&str] = if details {
                &["Name", "Path", "Type", "Capacity", "Allocation"]
            } else {
                &["Name", "Path"]
            };
            x.out.table(headers, &rows)?;
        }
        VolCmd::VolCreate { pool: n, file } => {
            let v = pool(x, &n)
                .await?
                .storage_vol_create_xml(&read(&file)?, 0)
                .await?;
            let vol: StorageVolProxy = object!(StorageVolProxy, x.c, v, sd);
            outln!("Vol {} created from {file}", vol.name().await?);
        }
        VolCmd::VolCreateAs {
            pool: n,
            name,
            capacity,
            allocation,
            format,
        } => {
            let cap = size_arg(&capacity)?;
            let alloc = allocation.as_deref().map(size_arg).transpose()?;
            let xml = vol_xml(&name, cap, alloc, format.as_deref());
            pool(x, &n).await?.storage_vol_create_xml(&xml, 0).await?;
            outln!("Vol {name} created");
        }
        VolCmd::VolClone {
            vol: v,
            newname,
            pool: p,
        } => {
            let src = vol(x, &v, p.as_deref()).await?;
            let key = src.key().await?;
            let (_, cap, _) = src.get_info(0).await?;
            let sxml = src.get_xml_desc(0).await?;
            // The clone keeps the source's format and lands in the source's pool.
            let format = roxmltree::Document::parse(&sxml).ok().and_then(|d| {
                d.descendants()
                    .find(|n| {
                        n.has_tag_name("format")
                            && n.parent().is_some_and(|p| p.has_tag_name("target"))
                    })
                    .and_then(|n| n.attribute("type").map(str::to_string))
            });
            let pool_name = match p {
                Some(p) => p,
                None => {
                    let s: StoragePoolOfVolumeProxy = connect!(StoragePoolOfVolumeProxy, x.c, sd);
                    let pp = s.storage_pool_lookup_by_volume(src.inner().path()).await?;
                    let pool: StoragePoolProxy = object!(StoragePoolProxy, x.c, pp, sd);
                    pool.name().await?
                }
            };
            let xml = vol_xml(&newname, cap, None, format.as_deref());
            pool(x, &pool_name)
                .await?
                .storage_vol_create_xml_from(&xml, &key, 0)
                .await?;
            outln!("Vol {newname} cloned from {}", src.name().await?);
        }
        VolCmd::VolDelete { args, pool: p } => {
            // `vol-delete POOL VOL` (this tool's first form) or virsh's `VOL --pool P`.
            let (p, v) = match (args.as_slice(), p) {
                ([p, v], _) => (Some(p.clone()), v.clone()),
                ([v], p) => (p, v.clone()),
                _ => bail!("vol-delete needs a volume"),
            };
            vol(x, &v, p.as_deref()).await?.delete(0).await?;
            outln!("Vol {v} deleted");
        }
        cmd => vol_more(x, cmd).await?,
    }
    Ok(())
}

async fn vol_more(x: &Ctx<'_>, cmd: VolCmd) -> anyhow::Result<()> {
    match cmd {
        VolCmd::VolInfo {
            vol: v,
            pool: p,
            bytes,
        } => {
            let vol = vol(x, &v, p.as_deref()).await?;
            let (t, cap, alloc) = vol.get_info(0).await?;
            let name = vol.name().await?;
            x.out.info(&[
                ("Name", name.clone(), json!(name)),
                ("Type", vol_type(t).into(), json!(vol_type(t))),
                ("Capacity", size_text(cap, bytes), json!(cap)),
                ("Allocation", size_text(alloc, bytes), json!(alloc)),
            ])?;
        }
        VolCmd::VolDumpxml { vol: v, pool: p } => {
            write_text(&vol(x, &v, p.as_deref()).await?.get_xml_desc(0).await?)?;
        }
        VolCmd::VolResize {
            vol: v,
            capacity,
            pool: p,
            allocate,
            delta,
            shrink,
        } => {
            let size = size_arg(capacity.trim_start_matches('-'))?;
            let shrink = shrink || capacity.starts_with('-');
            let flags = u32::from(allocate) | u32::from(delta) << 1 | u32::from(shrink) << 2;
            let vol = vol(x, &v, p.as_deref()).await?;
            vol.resize(size, flags).await?;
            outln!(
                "Size of volume '{}' successfully changed to {capacity}",
                vol.name().await?
            );
        }
        VolCmd::VolWipe {
            vol: v,
            pool: p,
            algorithm,
        } => {
            let alg = match algorithm.as_deref() {
                None => 0,
                Some(a) => {
                    wipe_algorithm(a).ok_or_else(|| anyhow!("Unsupported algorithm '{a}'"))?
                }
            };
            let vol = vol(x, &v, p.as_deref()).await?;
            vol.wipe(alg, 0).await?;
            outln!("Vol {v} wiped");
        }
        VolCmd::VolUpload {
            vol: v,
            file,
            pool: p,
            offset,
            length,
        } => transfer(x, &v, p.as_deref(), &file, offset, length, true).await?,
        VolCmd::VolDownload {
            vol: v,
            file,
            pool: p,
            offset,
            length,
        } => transfer(x, &v, p.as_deref(), &file, offset, length, false).await?,
        _ => {}
    }
    Ok(())
}

/// vol-upload and vol-download: the file is passed to the daemon as a descriptor; a
/// progress bar on stderr follows the volume's TransferBytes when stderr is a terminal.
async fn transfer(
    x: &Ctx<'_>,
    v: &str,
    pool_name: Option<&str>,
    file: &str,
    offset: u64,
    length: u64,
    upload: bool,
) -> anyhow::Result<()> {
    let sd = x.dest("org.libvirt.virtstoraged");
    let vol = vol(x, v, pool_name).await?;
    let path = vol.inner().path().to_owned();
    let t: StorageVolTransferProxy = object!(StorageVolTransferProxy, x.c, path, sd);
    let f = if upload {
        std::fs::File::open(file).with_context(|| format!("cannot read '{file}'"))?
    } else {
        std::fs::File::create(file).with_context(|| format!("cannot create '{file}'"))?
    };
    let total = match (length, upload) {
        (0, true) => f.metadata()?.len(),
        (0, false) => vol.get_info(0).await?.1.saturating_sub(offset),
        (n, _) => n,
    };
    let call = async {
        if upload {
            t.upload(f.as_fd().into(), offset, length, 0).await
        } else {
            t.download(f.as_fd().into(), offset, length, 0).await
        }
    };
    if !std::io::stderr().is_terminal() {
        call.await?;
        return Ok(());
    }
    let label = if upload { "Upload" } else { "Download" };
    tokio::pin!(call);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let res = loop {
        tokio::select! {
            r = &mut call => break r,
            _ = tick.tick() => {
                if let Ok(done) = t.transfer_bytes().await {
                    progress(label, done, total);
                }
            }
        }
    };
    if res.is_ok() {
        progress(label, total, total);
    }
    // The bar's line ends whether the transfer ended well or not.
    let _ = writeln!(std::io::stderr());
    res?;
    Ok(())
}

/// `Upload: [ 45 %] [#########           ] 12.00 MiB / 27.00 MiB` on one line.
fn progress(label: &str, done: u64, total: u64) {
    // In u128: a percentage of any u64 size without overflow; an empty volume is done.
    let pct = (u128::from(done.min(total)) * 100)
        .checked_div(u128::from(total))
        .map_or(100, |p| p as usize);
    let width = 30;
    let filled = pct * width / 100;
    let _ = write!(
        std::io::stderr(),
        "\r{label}: [{pct:3} %] [{}{}] {} / {}",
        "#".repeat(filled),
        " ".repeat(width - filled),
        pretty_capacity(done.min(total)),
        pretty_capacity(total)
    );
    let _ = std::io::stderr().flush();
}
