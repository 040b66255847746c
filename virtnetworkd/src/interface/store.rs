//! Stored definitions: define, undefine, netcf's transactions (a snapshot of every
//! definition, kept until commit or put back by rollback) and loading at start.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::xml::Iface;
use super::{io, IfaceError, Ifaces, Result};

/// Marks a rollback under way: found at start, the rollback is finished.
const ROLLBACK_MARK: &str = ".rollback";

async fn blocking<T: Send + 'static>(
    what: String,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(io(what)),
        Err(e) => Err(IfaceError::Io {
            what,
            err: std::io::Error::other(e.to_string()),
        }),
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// The definitions in a folder: `NAME.xml` files whose document names NAME. Others
/// (temp files, a file edited by hand into nonsense) are skipped with a warning.
fn read_defs(dir: &Path) -> std::io::Result<BTreeMap<String, Iface>> {
    let mut out = BTreeMap::new();
    for (stem, p) in common::persist::named_files(dir, ".xml")? {
        let text = std::fs::read_to_string(&p)?;
        match Iface::from_xml(&text) {
            Ok(d) if d.name.as_str() == stem => {
                out.insert(stem.to_owned(), d);
            }
            Ok(d) => {
                tracing::warn!(file = %p.display(), name = %d.name, "definition names another interface; skipped")
            }
            Err(e) => {
                tracing::warn!(file = %p.display(), "unreadable interface definition skipped: {e}")
            }
        }
    }
    Ok(out)
}

/// Removes temp files a killed daemon's atomic writes left (`.NAME.tmpPID`).
fn remove_temp_files(dir: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let n = e.file_name();
        let n = n.to_string_lossy();
        if n.starts_with('.') && n.contains(".tmp") {
            std::fs::remove_file(e.path())?;
        }
    }
    Ok(())
}

/// Makes `dir`'s definitions exactly `want`'s (atomic writes, durable removals).
fn put_back(dir: &Path, want: &BTreeMap<String, Iface>) -> std::io::Result<()> {
    let have = read_defs(dir)?;
    for (n, d) in want {
        if have.get(n) != Some(d) {
            common::persist::write_atomic(
                &dir.join(format!("{n}.xml")),
                d.to_xml().as_bytes(),
                0o600,
            )?;
        }
    }
    for n in have.keys().filter(|n| !want.contains_key(*n)) {
        common::persist::remove_durable(&dir.join(format!("{n}.xml")))?;
    }
    Ok(())
}

fn remove_snapshot(snap: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(snap) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    match snap.parent() {
        Some(p) => sync_dir(p),
        None => Ok(()),
    }
}

impl Ifaces {
    fn def_path(&self, name: &str) -> PathBuf {
        self.config_dir.join(format!("{name}.xml"))
    }

    /// Stores a definition (replacing one of the same name). Nothing changes unless
    /// the document parses whole.
    pub async fn define(&self, text: &str) -> Result<String> {
        let _j = self.jobs.enter();
        let def = Iface::from_xml(text)?;
        let name = def.name.as_str().to_owned();
        let _job = self.job.lock().await;
        let path = self.def_path(&name);
        let data = def.to_xml();
        blocking(
            format!("cannot write the definition of interface '{name}'"),
            move || common::persist::write_atomic(&path, data.as_bytes(), 0o600),
        )
        .await?;
        self.lock_defs().insert(name.clone(), def);
        drop(_job);
        self.sync().await?;
        tracing::info!(interface = %name, "defined");
        Ok(name)
    }

    pub async fn undefine(&self, name: &str) -> Result<()> {
        let _j = self.jobs.enter();
        let _job = self.job.lock().await;
        if !self.lock_defs().contains_key(name) {
            return Err(IfaceError::NotDefined(name.to_owned()));
        }
        let path = self.def_path(name);
        blocking(
            format!("cannot remove the definition of interface '{name}'"),
            move || common::persist::remove_durable(&path),
        )
        .await?;
        self.lock_defs().remove(name);
        drop(_job);
        self.sync().await?;
        tracing::info!(interface = %name, "undefined");
        Ok(())
    }

    /// netcf's `ncf_change_begin`: a snapshot of every definition, taken whole (a
    /// temp folder renamed into place) so a kill -9 leaves none or all of it.
    pub async fn change_begin(&self) -> Result<()> {
        let _j = self.jobs.enter();
        let _job = self.job.lock().await;
        let (dir, snap) = (self.config_dir.clone(), self.snapshot_dir.clone());
        let r = blocking("cannot snapshot interface definitions".into(), move || {
            if snap.exists() {
                return Ok(false);
            }
            let tmp = snap.with_extension("tmp");
            let _ = std::fs::remove_dir_all(&tmp);
            common::persist::create_dir_all(&tmp, 0o700)?;
            for (n, d) in read_defs(&dir)? {
                let p = tmp.join(format!("{n}.xml"));
                std::fs::write(&p, d.to_xml())?;
                std::fs::File::open(&p)?.sync_all()?;
            }
            sync_dir(&tmp)?;
            std::fs::rename(&tmp, &snap)?;
            if let Some(parent) = snap.parent() {
                sync_dir(parent)?;
            }
            Ok(true)
        })
        .await?;
        if !r {
            return Err(IfaceError::Transaction(
                "begin",
                "a transaction is already open".into(),
            ));
        }
        tracing::info!("interface transaction begun");
        Ok(())
    }

    pub async fn change_commit(&self) -> Result<()> {
        let _j = self.jobs.enter();
        let _job = self.job.lock().await;
        let snap = self.snapshot_dir.clone();
        if !snap.is_dir() {
            return Err(IfaceError::Transaction(
                "commit",
                "no transaction is open".into(),
            ));
        }
        blocking("cannot remove the interface snapshot".into(), move || {
            remove_snapshot(&snap)
        })
        .await?;
        tracing::info!("interface transaction committed");
        Ok(())
    }

    /// Puts the snapshot's definitions back. Live links are left as they are, as
    /// netcf leaves them until the next ifup/ifdown; Create applies the restored one.
    pub async fn change_rollback(&self) -> Result<()> {
        let _j = self.jobs.enter();
        let _job = self.job.lock().await;
        if !self.snapshot_dir.is_dir() {
            return Err(IfaceError::Transaction(
                "rollback",
                "no transaction is open".into(),
            ));
        }
        self.finish_rollback().await?;
        drop(_job);
        self.sync().await?;
        tracing::info!("interface transaction rolled back");
        Ok(())
    }

    /// Marks the rollback, restores the definitions, drops the snapshot: idempotent,
    /// so a rollback a kill -9 cut short is finished at the next start.
    async fn finish_rollback(&self) -> Result<()> {
        let (dir, snap) = (self.config_dir.clone(), self.snapshot_dir.clone());
        let defs = blocking("cannot roll back interface definitions".into(), move || {
            let mark = snap.join(ROLLBACK_MARK);
            if !mark.exists() {
                common::persist::write_atomic(&mark, b"", 0o600)?;
            }
            let want = read_defs(&snap)?;
            put_back(&dir, &want)?;
            remove_snapshot(&snap)?;
            Ok(want)
        })
        .await?;
        *self.lock_defs() = defs;
        Ok(())
    }

    /// At start: definitions, a rollback to finish, Creates a kill -9 cut short to
    /// undo; then every interface is served.
    pub async fn load(&self) {
        let (dir, run) = (self.config_dir.clone(), self.run_dir.clone());
        let loaded = blocking("cannot read interface definitions".into(), move || {
            remove_temp_files(&dir)?;
            remove_temp_files(&run)?;
            read_defs(&dir)
        })
        .await;
        match loaded {
            Ok(d) => *self.lock_defs() = d,
            Err(e) => tracing::error!("{e}"),
        }
        if self.snapshot_dir.join(ROLLBACK_MARK).exists() {
            if let Err(e) = self.finish_rollback().await {
                tracing::error!("cannot finish an interrupted rollback: {e}");
            }
        }
        self.undo_pending().await;
        if let Err(e) = self.sync().await {
            tracing::error!("cannot list host interfaces: {e}");
        }
    }
}
