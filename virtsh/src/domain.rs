//! Domain commands (virtqemud): lifecycle, XML, names and IDs.

use anyhow::Context as _;
use common::proxies::qemu::{DomainProxy, QemuConnectProxy};
use serde_json::json;
use zbus::zvariant::OwnedObjectPath;

use crate::cli::DomainCmd;
use crate::out::write_text;
use crate::{outln, read, Ctx};

/// virConnectListAllDomains flags.
const LIST_ACTIVE: u32 = 1;
const LIST_INACTIVE: u32 = 2;
const LIST_PERSISTENT: u32 = 4;
const LIST_TRANSIENT: u32 = 8;

/// What `list` prints: virsh's table, or one column (`--name`, `--uuid`).
enum Only {
    Table,
    Name,
    Uuid,
}

pub async fn run(x: &Ctx<'_>, cmd: DomainCmd) -> anyhow::Result<()> {
    match cmd {
        DomainCmd::List {
            all,
            inactive,
            persistent,
            transient,
            name,
            uuid,
        } => {
            let state = match (all, inactive) {
                (true, _) => 0,
                (_, true) => LIST_INACTIVE,
                _ => LIST_ACTIVE,
            };
            let kind = if persistent { LIST_PERSISTENT } else { 0 }
                | if transient { LIST_TRANSIENT } else { 0 };
            let only = match (name, uuid) {
                (true, _) => Only::Name,
                (_, true) => Only::Uuid,
                _ => Only::Table,
            };
            list(x, state | kind, only).await?
        }
        DomainCmd::Define { file } => {
            let q = x.qemu().await?;
            let p = q.domain_define_xml(&read(&file)?).await?;
            let d = x.domain_at(p).await?;
            outln!("Domain '{}' defined from {file}", d.name().await?);
        }
        DomainCmd::Create { file, paused } => {
            let q = x.qemu().await?;
            // VIR_DOMAIN_START_PAUSED = 1
            let p = q.domain_create_xml(&read(&file)?, paused as u32).await?;
            let d = x.domain_at(p).await?;
            outln!("Domain '{}' created from {file}", d.name().await?);
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
            x.domain(&n).await?.undefine(flags).await?;
            outln!("Domain '{n}' has been undefined");
        }
        DomainCmd::Start { domain: n, paused } => {
            x.domain(&n).await?.create(paused as u32).await?;
            outln!("Domain '{n}' started");
        }
        DomainCmd::Shutdown { domain: n } => {
            x.domain(&n).await?.shutdown(0).await?;
            outln!("Domain '{n}' is being shutdown");
        }
        DomainCmd::Destroy { domain: n } => {
            x.domain(&n).await?.destroy(0).await?;
            outln!("Domain '{n}' destroyed");
        }
        DomainCmd::Suspend { domain: n } => {
            x.domain(&n).await?.suspend().await?;
            outln!("Domain '{n}' suspended");
        }
        DomainCmd::Resume { domain: n } => {
            x.domain(&n).await?.resume().await?;
            outln!("Domain '{n}' resumed");
        }
        DomainCmd::Reboot { domain: n } => {
            x.domain(&n).await?.reboot(0).await?;
            outln!("Domain '{n}' is being rebooted");
        }
        DomainCmd::Dumpxml {
            domain: n,
            inactive,
        } => {
            // VIR_DOMAIN_XML_INACTIVE = 2
            let flags = if inactive { 2 } else { 0 };
            write_text(&x.domain(&n).await?.get_xml_desc(flags).await?)?;
        }
        DomainCmd::Autostart { domain: n, disable } => {
            x.domain(&n).await?.set_autostart(!disable).await?;
            let what = if disable { "unmarked" } else { "marked" };
            outln!("Domain '{n}' {what} as autostarted");
        }
        DomainCmd::Capabilities => write_text(&x.qemu().await?.get_capabilities().await?)?,
        DomainCmd::CpuCompare { file, error } => {
            let text = crate::read(&file)?;
            let cpu = cpu_elements(&text)?
                .into_iter()
                .next()
                .with_context(|| format!("no CPU definition found in '{file}'"))?;
            match x.qemu().await?.compare_cpu(&cpu, u32::from(error)).await? {
                1 => outln!("CPU described in {file} is identical to host CPU"),
                2 => outln!("Host CPU is a superset of CPU described in {file}"),
                _ => anyhow::bail!("CPU described in {file} is incompatible with host CPU"),
            }
        }
        DomainCmd::CpuBaseline {
            file,
            features,
            migratable,
        } => {
            let cpus = cpu_elements(&crate::read(&file)?)?;
            if cpus.is_empty() {
                anyhow::bail!("no CPU definitions found in '{file}'");
            }
            let refs: Vec<&str> = cpus.iter().map(String::as_str).collect();
            let flags = u32::from(features) | (u32::from(migratable) << 1);
            write_text(&x.qemu().await?.baseline_cpu(&refs, flags).await?)?;
        }
        cmd => ids(x, cmd).await?,
    }
    Ok(())
}

/// domstate, domid, domname, domuuid.
async fn ids(x: &Ctx<'_>, cmd: DomainCmd) -> anyhow::Result<()> {
    match cmd {
        DomainCmd::Domstate { domain, reason } => {
            let (s, r) = x.domain(&domain).await?.get_state(0).await?;
            if x.out.json {
                x.out
                    .value(&json!({"state": state_name(s), "reason": reason_name(s, r)}))?;
            } else if reason {
                outln!("{} ({})", state_name(s), reason_name(s, r));
            } else {
                outln!("{}", state_name(s));
            }
        }
        DomainCmd::Domid { domain } => {
            let d = x.domain(&domain).await?;
            let id = d.id().await?;
            if d.active().await? {
                x.out.scalar(&id.to_string(), json!(id))?;
            } else {
                x.out.scalar("-", serde_json::Value::Null)?;
            }
        }
        DomainCmd::Domname { domain } => {
            let n = x.domain(&domain).await?.name().await?;
            x.out.scalar(&n, json!(n))?;
        }
        DomainCmd::Domuuid { domain } => {
            let u = x.domain(&domain).await?.uuid().await?;
            x.out.scalar(&u, json!(u))?;
        }
        _ => {}
    }
    Ok(())
}

/// virsh's `list`: Id, Name, State in a table, or only names or UUIDs.
async fn list(x: &Ctx<'_>, flags: u32, only: Only) -> anyhow::Result<()> {
    let q = x.qemu().await?;
    let mut rows = Vec::new();
    for p in q.list_domains(flags).await? {
        let d = x.domain_at(p).await?;
        let row = match only {
            Only::Name => vec![d.name().await?],
            Only::Uuid => vec![d.uuid().await?],
            Only::Table => {
                let id = if d.active().await? {
                    d.id().await?.to_string()
                } else {
                    "-".into()
                };
                let (state, _) = d.get_state(0).await?;
                vec![id, d.name().await?, state_name(state).to_string()]
            }
        };
        rows.push(row);
    }
    match only {
        Only::Table => x.out.table(&["Id", "Name", "State"], &rows)?,
        Only::Name => x.out.column(&rows)?,
        Only::Uuid => x.out.column(&rows)?,
    }
    Ok(())
}

/// A name, a UUID or a numeric ID, as virsh accepts them.
pub async fn lookup(q: &QemuConnectProxy<'_>, s: &str) -> anyhow::Result<OwnedObjectPath> {
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

/// virsh's words for virDomainState.
pub fn state_name(s: i32) -> &'static str {
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

/// virsh's words for the reasons of each state (`domstate --reason`).
fn reason_name(state: i32, reason: i32) -> &'static str {
    let table: &[&str] = match state {
        1 => &[
            "unknown",
            "booted",
            "migrated",
            "restored",
            "from snapshot",
            "unpaused",
            "migration canceled",
            "save canceled",
            "event wakeup",
            "crashed",
            "post-copy",
            "post-copy failed",
        ],
        3 => &[
            "unknown",
            "user",
            "migrating",
            "saving",
            "dumping",
            "I/O error",
            "watchdog",
            "from snapshot",
            "shutting down",
            "creating snapshot",
            "crashed",
            "starting up",
            "post-copy",
            "post-copy failed",
            "api error",
        ],
        4 => &["unknown", "user"],
        5 => &[
            "unknown",
            "shutdown",
            "destroyed",
            "crashed",
            "migrated",
            "saved",
            "failed",
            "from snapshot",
            "daemon",
        ],
        6 => &["unknown", "panicked"],
        7 => &["unknown"],
        _ => &["unknown"],
    };
    usize::try_from(reason)
        .ok()
        .and_then(|r| table.get(r))
        .copied()
        .unwrap_or("unknown")
}

/// The domain XML, parsed for the readers that need its devices.
pub async fn xml(d: &DomainProxy<'_>, inactive: bool) -> anyhow::Result<String> {
    d.get_xml_desc(if inactive { 2 } else { 0 })
        .await
        .context("cannot read the domain XML")
}

/// Every `<cpu>` in `text` (not those inside a `<cpus>` list), each as its own
/// document: the file may hold several `<cpu>` elements one after another, a domain,
/// or capabilities documents, as virsh accepts for cpu-compare and cpu-baseline.
fn cpu_elements(text: &str) -> anyhow::Result<Vec<String>> {
    let body: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("<?xml"))
        .collect::<Vec<_>>()
        .join("\n");
    let root = common::xml::parse(&format!("<virtsh-cpus>{body}</virtsh-cpus>"))
        .context("the file is not XML")?;
    fn walk(el: &common::xml::Element, out: &mut Vec<String>) {
        for c in el.elements() {
            match c.name.as_str() {
                "cpu" => out.push(c.to_xml()),
                "cpus" => {}
                _ => walk(c, out),
            }
        }
    }
    let mut out = Vec::new();
    walk(&root, &mut out);
    Ok(out)
}
