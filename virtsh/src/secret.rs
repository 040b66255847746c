//! Secret commands (virtstoraged serves libvirt's secrets): virsh's secret-*.

use anyhow::{bail, Context as _};
use common::proxies::storage::{SecretProxy, StorageConnectProxy};

use crate::cli::SecretCmd;
use crate::out::write_text;
use crate::{outln, read, Ctx};

/// virConnectListAllSecretsFlags.
const EPHEMERAL: u32 = 1;
const NO_EPHEMERAL: u32 = 2;
const PRIVATE: u32 = 4;
const NO_PRIVATE: u32 = 8;

/// libvirt's names of `virSecretUsageType`, for `secret-list`'s Usage column.
fn usage_name(kind: i32) -> &'static str {
    match kind {
        1 => "volume",
        2 => "ceph",
        3 => "iscsi",
        4 => "tls",
        5 => "vtpm",
        _ => "none",
    }
}

pub async fn run(x: &Ctx<'_>, cmd: SecretCmd) -> anyhow::Result<()> {
    let sd = x.dest("org.libvirt.virtstoraged");
    let c = x.c;
    let s: StorageConnectProxy = connect!(StorageConnectProxy, c, sd);
    let lookup = |uuid: String| {
        let s = s.clone();
        async move {
            s.secret_lookup_by_uuid(&uuid)
                .await
                .with_context(|| format!("failed to get secret '{uuid}'"))
        }
    };
    match cmd {
        SecretCmd::SecretList {
            ephemeral,
            no_ephemeral,
            private,
            no_private,
        } => {
            let flags = [
                (ephemeral, EPHEMERAL),
                (no_ephemeral, NO_EPHEMERAL),
                (private, PRIVATE),
                (no_private, NO_PRIVATE),
            ]
            .iter()
            .filter(|(on, _)| *on)
            .fold(0, |f, (_, bit)| f | bit);
            let mut rows = Vec::new();
            for p in s.list_secrets(flags).await? {
                let sec: SecretProxy = object!(SecretProxy, c, p, sd);
                let kind = sec.usage_type().await?;
                let usage = match kind {
                    0 => "Unused".to_owned(),
                    k => format!("{} {}", usage_name(k), sec.usage_id().await?),
                };
                rows.push(vec![sec.uuid().await?, usage]);
            }
            x.out.table(&["UUID", "Usage"], &rows)?;
        }
        SecretCmd::SecretDefine { file } => {
            let p = s.secret_define_xml(&read(&file)?, 0).await?;
            let sec: SecretProxy = object!(SecretProxy, c, p, sd);
            outln!("Secret {} created", sec.uuid().await?);
        }
        SecretCmd::SecretDumpxml { secret } => {
            let p = lookup(secret).await?;
            let sec: SecretProxy = object!(SecretProxy, c, p, sd);
            write_text(&sec.get_xml_desc(0).await?)?;
        }
        SecretCmd::SecretSetValue {
            secret,
            base64,
            file,
        } => {
            let value = match (base64, file) {
                (Some(b), _) => common::base64::decode(&b)
                    .ok_or_else(|| anyhow::anyhow!("failed to decode the base64 value"))?,
                (None, Some(f)) => {
                    std::fs::read(&f).with_context(|| format!("failed to read '{f}'"))?
                }
                (None, None) => bail!("give the value with --base64 or --file"),
            };
            let p = lookup(secret).await?;
            let sec: SecretProxy = object!(SecretProxy, c, p, sd);
            sec.set_value(&value, 0).await?;
            outln!("Secret value set");
        }
        SecretCmd::SecretGetValue { secret } => {
            let p = lookup(secret).await?;
            let sec: SecretProxy = object!(SecretProxy, c, p, sd);
            outln!("{}", common::base64::encode(&sec.get_value(0).await?));
        }
        SecretCmd::SecretUndefine { secret } => {
            let p = lookup(secret.clone()).await?;
            let sec: SecretProxy = object!(SecretProxy, c, p, sd);
            sec.undefine().await?;
            outln!("Secret {secret} deleted");
        }
    }
    Ok(())
}
