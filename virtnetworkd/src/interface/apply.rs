//! Create and Destroy of a defined interface over rtnetlink. What a Create will make
//! is on disk (`NAME.pending`) before it is made and becomes the status record
//! (`NAME.json`) once all is up; Destroy turns the record back into `NAME.pending`
//! before it takes anything down. A `NAME.pending` found at start is undone.

use std::net::IpAddr;
use std::path::PathBuf;

use super::link::LinkError;
use super::xml::{Iface, Kind};
use super::{IfaceError, Ifaces, Record, Result};

impl Ifaces {
    fn status_path(&self, name: &str) -> PathBuf {
        self.run_dir.join(format!("{name}.json"))
    }
    fn pending_path(&self, name: &str) -> PathBuf {
        self.run_dir.join(format!("{name}.pending"))
    }

    fn read_record(path: &std::path::Path) -> Option<Record> {
        let text = std::fs::read_to_string(path).ok()?;
        serde_json::from_str(&text).ok()
    }

    async fn write_record(&self, path: PathBuf, rec: &Record) -> Result<()> {
        let data = serde_json::to_vec(rec).map_err(|e| IfaceError::Io {
            what: "cannot encode an interface record".into(),
            err: std::io::Error::other(e),
        })?;
        let what = format!("cannot write {}", path.display());
        match tokio::task::spawn_blocking(move || {
            common::persist::write_atomic(&path, &data, 0o600)
        })
        .await
        {
            Ok(r) => r.map_err(super::io(what)),
            Err(e) => Err(IfaceError::Io {
                what,
                err: std::io::Error::other(e.to_string()),
            }),
        }
    }

    async fn rename_durable(&self, from: PathBuf, to: PathBuf) -> Result<()> {
        let what = format!("cannot rename {}", from.display());
        let r = tokio::task::spawn_blocking(move || {
            std::fs::rename(&from, &to)?;
            match to.parent() {
                Some(d) => std::fs::File::open(d)?.sync_all(),
                None => Ok(()),
            }
        })
        .await;
        match r {
            Ok(r) => r.map_err(super::io(what)),
            Err(e) => Err(IfaceError::Io {
                what,
                err: std::io::Error::other(e.to_string()),
            }),
        }
    }

    /// Brings a defined interface up: creates the bridge, bond or vlan link it names
    /// (and those of its ports), enslaves the ports, sets the MTU, brings the links
    /// up, adds the addresses and the default route. Applying it again to an active
    /// interface is not an error (libvirt's netcf backend runs ifup either way).
    pub async fn create(&self, name: &str) -> Result<()> {
        let _j = self.jobs.enter();
        let _job = self.job.lock().await;
        let def = self
            .definition(name)
            .ok_or_else(|| IfaceError::NotDefined(name.to_owned()))?;
        let k = self.kernel().await?;
        let previous = Self::read_record(&self.status_path(name));
        let was_active = previous.is_some();
        let mut created: Vec<String> = previous.map(|r| r.created).unwrap_or_default();
        let new_links: Vec<String> = links_made_by(&def)
            .into_iter()
            .filter(|n| k.link(n).is_none())
            .map(str::to_owned)
            .collect();
        for n in &new_links {
            if !created.contains(n) {
                created.push(n.clone());
            }
        }
        let rec = Record {
            created,
            def: def.to_xml(),
        };
        self.write_record(self.pending_path(name), &rec).await?;
        let _ = std::fs::remove_file(self.status_path(name));
        if let Err(e) = self.bring_up(&def).await {
            // Undo what this call made (its links, the addresses it added); links that
            // were there before keep their state, and an interface that was up before
            // keeps its record.
            self.undo_start(&def, &new_links, &k).await;
            if was_active {
                self.rename_durable(self.pending_path(name), self.status_path(name))
                    .await?;
            } else {
                let _ = common::persist::remove_durable(&self.pending_path(name));
            }
            return Err(IfaceError::Start(name.to_owned(), e.to_string()));
        }
        self.rename_durable(self.pending_path(name), self.status_path(name))
            .await?;
        drop(_job);
        self.sync().await?;
        tracing::info!(interface = %name, "started");
        Ok(())
    }

    /// Takes a defined interface down: removes its addresses, deletes the links its
    /// Create made, sets the others down. Destroying an inactive one is not an error.
    pub async fn destroy(&self, name: &str) -> Result<()> {
        let _j = self.jobs.enter();
        let _job = self.job.lock().await;
        let status = self.status_path(name);
        let rec = Self::read_record(&status);
        let def = match (&rec, self.definition(name)) {
            (Some(r), _) => Iface::from_xml(&r.def)?,
            (None, Some(d)) => d,
            (None, None) => return Err(IfaceError::NotDefined(name.to_owned())),
        };
        let rec = rec.unwrap_or_else(|| Record {
            created: Vec::new(),
            def: def.to_xml(),
        });
        if status.exists() {
            self.rename_durable(status, self.pending_path(name)).await?;
        } else {
            self.write_record(self.pending_path(name), &rec).await?;
        }
        let errors = self.take_down(&def, &rec.created).await;
        common::persist::remove_durable(&self.pending_path(name))
            .map_err(super::io("cannot remove the interface record"))?;
        drop(_job);
        self.sync().await?;
        if let Some(e) = errors {
            return Err(IfaceError::Stop(name.to_owned(), e.to_string()));
        }
        tracing::info!(interface = %name, "stopped");
        Ok(())
    }

    /// Undoes every Create or Destroy a kill -9 cut short.
    pub(super) async fn undo_pending(&self) {
        let Ok(entries) = std::fs::read_dir(&self.run_dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) != Some("pending") {
                continue;
            }
            let Some(rec) = Self::read_record(&p) else {
                tracing::warn!(file = %p.display(), "unreadable interface record removed");
                let _ = common::persist::remove_durable(&p);
                continue;
            };
            match Iface::from_xml(&rec.def) {
                Ok(def) => {
                    tracing::info!(interface = %def.name, "undoing a start or stop cut short");
                    if let Some(e) = self.take_down(&def, &rec.created).await {
                        tracing::warn!(interface = %def.name, "undo: {e}");
                    }
                }
                Err(e) => tracing::warn!(file = %p.display(), "bad record: {e}"),
            }
            let _ = common::persist::remove_durable(&p);
        }
    }

    async fn bring_up(&self, def: &Iface) -> std::result::Result<(), LinkError> {
        let idx = self.ensure_link(def).await?;
        let ports = match &def.kind {
            Kind::Bridge { ports, .. } | Kind::Bond { ports, .. } => ports.as_slice(),
            Kind::Ethernet | Kind::Vlan { .. } => &[],
        };
        for p in ports {
            let pidx = Box::pin(self.ensure_link(p)).await?;
            if matches!(def.kind, Kind::Bond { .. }) {
                // The bonding driver enslaves only links that are down.
                self.links.set_up(pidx, false).await?;
            }
            self.links.set_controller(pidx, idx).await?;
            if let Some(m) = p.mtu {
                self.links.set_mtu(pidx, m).await?;
            }
            self.links.set_up(pidx, true).await?;
        }
        if let Some(m) = def.mtu {
            self.links.set_mtu(idx, m).await?;
        }
        self.links.set_up(idx, true).await?;
        for p in &def.protocols {
            for (a, prefix) in &p.ips {
                self.links.add_address(idx, *a, *prefix).await?;
            }
        }
        for p in &def.protocols {
            if let Some(g) = p.gateway {
                self.links.add_default_route(idx, g).await?;
            }
        }
        Ok(())
    }

    /// The link a definition names: made if it is a bridge, bond or vlan that does
    /// not exist; an ethernet link must exist (this daemon makes no NICs).
    async fn ensure_link(&self, def: &Iface) -> std::result::Result<u32, LinkError> {
        let name = def.name.as_str();
        let existing = self.links.by_name(name).await?;
        let want = match &def.kind {
            Kind::Ethernet => None,
            Kind::Bridge { .. } => Some("bridge"),
            Kind::Bond { .. } => Some("bond"),
            Kind::Vlan { .. } => Some("vlan"),
        };
        if let Some(l) = existing {
            if let Some(w) = want {
                if l.kind.as_deref() != Some(w) {
                    return Err(LinkError::Netlink(format!(
                        "link '{name}' exists and is not a {w}"
                    )));
                }
            }
            return Ok(l.index);
        }
        match &def.kind {
            Kind::Ethernet => {
                return Err(LinkError::Netlink(format!("no link named '{name}'")));
            }
            Kind::Bridge { stp, delay_cs, .. } => {
                self.links
                    .add_bridge(name, stp.unwrap_or(false), delay_cs.unwrap_or(0))
                    .await?
            }
            Kind::Bond { mode, miimon, .. } => self.links.add_bond(name, *mode, *miimon).await?,
            Kind::Vlan { tag, device } => {
                let parent = self
                    .links
                    .by_name(device.as_str())
                    .await?
                    .ok_or_else(|| LinkError::Netlink(format!("no link named '{device}'")))?;
                self.links.add_vlan(name, parent.index, *tag).await?
            }
        }
        self.links
            .by_name(name)
            .await?
            .map(|l| l.index)
            .ok_or_else(|| LinkError::Netlink(format!("link '{name}' vanished")))
    }

    /// After a failed start: deletes the links this start made and removes the
    /// addresses it added (those the kernel did not have in `before`).
    async fn undo_start(&self, def: &Iface, new_links: &[String], before: &super::Snapshot) {
        for n in new_links {
            if let Err(e) = self.links.delete(n).await {
                tracing::warn!(interface = %def.name, "cannot delete {n}: {e}");
            }
        }
        let Ok(Some(l)) = self.links.by_name(def.name.as_str()).await else {
            return;
        };
        let had = |a: &IpAddr, p: u8| {
            before
                .link(def.name.as_str())
                .is_some_and(|old| before.addrs.contains(&(old.index, *a, p)))
        };
        for (a, p) in def.protocols.iter().flat_map(|p| p.ips.iter()) {
            if !had(a, *p) {
                if let Err(e) = self.links.del_address(l.index, *a, *p).await {
                    tracing::warn!(interface = %def.name, "cannot remove {a}/{p}: {e}");
                }
            }
        }
    }

    /// Removes the definition's addresses, deletes the links in `created`, sets the
    /// interface and its ports down. Goes on past errors; returns the first.
    async fn take_down(&self, def: &Iface, created: &[String]) -> Option<LinkError> {
        let mut first = None;
        let mut note = |r: std::result::Result<(), LinkError>| {
            if let Err(e) = r {
                first.get_or_insert(e);
            }
        };
        if let Ok(Some(l)) = self.links.by_name(def.name.as_str()).await {
            let addrs: Vec<(IpAddr, u8)> =
                def.protocols.iter().flat_map(|p| p.ips.clone()).collect();
            for (a, p) in addrs {
                note(self.links.del_address(l.index, a, p).await);
            }
        }
        for n in def.names() {
            let n = n.as_str();
            if created.iter().any(|c| c == n) {
                note(self.links.delete(n).await);
            } else if let Ok(Some(l)) = self.links.by_name(n).await {
                note(self.links.set_up(l.index, false).await);
            }
        }
        first
    }
}

/// The links a definition may create: itself and its ports, but not ethernet ones.
fn links_made_by(def: &Iface) -> Vec<&str> {
    let mut out = Vec::new();
    if def.kind != Kind::Ethernet {
        out.push(def.name.as_str());
    }
    if let Kind::Bridge { ports, .. } | Kind::Bond { ports, .. } = &def.kind {
        for p in ports {
            out.extend(links_made_by(p));
        }
    }
    out
}
