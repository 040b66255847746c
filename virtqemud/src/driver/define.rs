//! Defining and undefining domains, and their autostart flag.

use std::path::PathBuf;
use std::sync::Arc;

use common::error::VirError;
use common::event::{DefinedDetail, DomainEvent, UndefinedDetail};

use super::registry::check_conflicts;
use super::{io_err, Dom, Driver, UndefineFlags};
use crate::model::DomainDef;

impl Driver {
    pub async fn define(&self, xml: &str) -> Result<Arc<Dom>, VirError> {
        let caps = self.caps().await?;
        let _call = self.calls.enter();
        let def = DomainDef::parse_new(xml, &caps)?;
        let text = def.to_xml(None);
        let name = def.name.clone();
        // libvirt's order: into the registry, then to disk; a failed write undoes the
        // first. Definitions of different domains reach the journal together and share
        // its sync; the domain's job lock orders those of one domain.
        let (dom, added) = {
            let mut reg = self.reg();
            check_conflicts(&reg, &def)?;
            match reg.by_uuid.get(&def.uuid).cloned() {
                Some(dom) => (dom, false),
                None => {
                    let dom = Dom::new(def.uuid, name.clone(), Some(def.clone()), false);
                    reg.insert(name.clone(), dom.clone());
                    (dom, true)
                }
            }
        };
        let lock = dom.begin_job().await;
        if !self.registered(&dom) {
            return Err(VirError::operation_failed(format!(
                "domain '{name}' was undefined while being defined"
            )));
        }
        let old = dom.lock().config.replace(def);
        let file = format!("{name}.xml");
        if let Err(e) = self.configs.put(&file, text.as_bytes(), 0o600).await {
            if added {
                let mut reg = self.reg();
                reg.remove(Some(&name), &dom.uuid);
            } else {
                dom.lock().config = old;
            }
            return Err(io_err("write", &self.config_file(&name), &e));
        }
        drop(lock);
        if added {
            self.publish_added(&dom).await;
        } else {
            self.props_changed(&dom).await;
        }
        // libvirt's: ADDED when there was no persistent definition before, also for a
        // running transient domain that becomes persistent.
        let detail = if added || old.is_none() {
            DefinedDetail::Added
        } else {
            DefinedDetail::Updated
        };
        self.lifecycle(&dom, DomainEvent::Defined(detail)).await;
        Ok(dom)
    }

    pub async fn undefine(&self, dom: &Arc<Dom>, flags: u32) -> Result<(), VirError> {
        let flags: UndefineFlags = common::error::flags(flags)?;
        let _call = self.calls.enter();
        let _lock = dom.begin_job().await;
        // A concurrent Undefine that went first has removed it while this one waited.
        let registered = self
            .reg()
            .by_uuid
            .get(&dom.uuid)
            .is_some_and(|d| Arc::ptr_eq(d, dom));
        if !registered {
            return Err(super::no_domain(format!(
                "no domain with matching uuid '{}'",
                dom.uuid
            )));
        }
        let (name, active) = {
            let g = dom.lock();
            if g.config.is_none() {
                return Err(VirError::operation_invalid(
                    "cannot undefine transient domain",
                ));
            }
            (g.name.clone(), g.live.is_some())
        };
        if !active {
            self.drop_snapshot_metadata(dom, flags.contains(UndefineFlags::SNAPSHOTS_METADATA))
                .await?;
        }
        let image = self.managed_save_path(&name);
        if image.exists() {
            if !flags.contains(UndefineFlags::MANAGED_SAVE) {
                return Err(VirError::operation_invalid(
                    "Refusing to undefine while domain managed save image exists",
                ));
            }
            std::fs::remove_file(&image).map_err(|e| io_err("remove", &image, &e))?;
        }
        let nvram = self.nvram_file(dom);
        let tpm_state = self.paths.swtpm.join(dom.uuid.to_string());
        let link = self.autostart_link(&name);
        // Off the async workers: removing a TPM state and the durable unlink sync.
        blocking(move || {
            if nvram.exists() {
                if flags.contains(UndefineFlags::NVRAM) {
                    std::fs::remove_file(&nvram).map_err(|e| io_err("remove", &nvram, &e))?;
                } else if !flags.contains(UndefineFlags::KEEP_NVRAM) {
                    return Err(VirError::operation_invalid(
                        "cannot undefine domain with nvram",
                    ));
                }
            }
            // libvirt removes the TPM's state unless asked to keep it.
            if !flags.contains(UndefineFlags::KEEP_TPM) && tpm_state.exists() {
                std::fs::remove_dir_all(&tpm_state)
                    .map_err(|e| io_err("remove", &tpm_state, &e))?;
            }
            let _ = common::persist::remove_durable(&link);
            Ok(())
        })
        .await?;
        self.configs
            .remove(&format!("{name}.xml"))
            .await
            .map_err(|e| io_err("remove", &self.config_file(&name), &e))?;
        {
            let mut g = dom.lock();
            g.config = None;
            g.autostart = false;
        }
        self.lifecycle(dom, DomainEvent::Undefined(UndefinedDetail::Removed))
            .await;
        if active {
            self.props_changed(dom).await;
            self.save_status(dom).await;
        } else {
            self.remove(dom).await;
        }
        Ok(())
    }

    /// The domain's UEFI variable store: its `<nvram>` path or libvirt's default one.
    fn nvram_file(&self, dom: &Dom) -> PathBuf {
        let g = dom.lock();
        g.config
            .as_ref()
            .and_then(|c| c.dom.os.nvram.clone())
            .unwrap_or_else(|| crate::firmware::nvram_path(&self.paths.nvram, &g.name))
    }

    pub async fn set_autostart(&self, dom: &Arc<Dom>, on: bool) -> Result<(), VirError> {
        let _call = self.calls.enter();
        let _lock = dom.begin_job().await;
        let name = {
            let g = dom.lock();
            if g.config.is_none() {
                return Err(VirError::operation_invalid(
                    "cannot set autostart for transient domain",
                ));
            }
            g.name.clone()
        };
        let link = self.autostart_link(&name);
        let target = self.config_file(&name);
        blocking(move || {
            if on {
                if std::fs::symlink_metadata(&link).is_err() {
                    std::os::unix::fs::symlink(&target, &link)
                        .map_err(|e| io_err("create symlink", &link, &e))?;
                }
            } else if std::fs::symlink_metadata(&link).is_ok() {
                common::persist::remove_durable(&link).map_err(|e| io_err("remove", &link, &e))?;
            }
            Ok(())
        })
        .await?;
        dom.lock().autostart = on;
        self.props_changed(dom).await;
        Ok(())
    }
}

/// Runs file work that syncs on a blocking thread, not on an async worker.
async fn blocking(
    f: impl FnOnce() -> Result<(), VirError> + Send + 'static,
) -> Result<(), VirError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| VirError::internal(format!("file task: {e}")))?
}

impl Driver {
    /// `Rename`: an inactive persistent domain takes another name, as libvirt renames
    /// it: the config file, the autostart link and a variable store at the default
    /// place follow; its object (by UUID) stays; UNDEFINED/RENAMED then
    /// DEFINED/RENAMED. A domain with snapshots or a managed save image keeps its name.
    pub async fn rename(&self, dom: &Arc<Dom>, new: &str, flags: u32) -> Result<(), VirError> {
        common::error::check_flags(flags, 0)?;
        let new = crate::xml::DomainName::new(new)?.as_str().to_owned();
        let _call = self.calls.enter();
        let _lock = dom.begin_job().await;
        let (old, mut def) = {
            let g = dom.lock();
            if g.live.is_some() {
                return Err(VirError::operation_invalid("cannot rename active domain"));
            }
            let def = g
                .config
                .clone()
                .ok_or_else(|| VirError::operation_invalid("cannot rename a transient domain"))?;
            (g.name.clone(), def)
        };
        if old == new {
            return Err(VirError::operation_invalid(format!(
                "domain '{new}' is already called so"
            )));
        }
        if !dom.snapshots().snapshots.is_empty() {
            return Err(VirError::operation_invalid(
                "cannot rename a domain with snapshots",
            ));
        }
        if self.managed_save_path(&old).exists() {
            return Err(VirError::operation_invalid(
                "domain with a managed saved state can't be renamed",
            ));
        }
        {
            let reg = self.reg();
            if reg.by_name.contains_key(&new) {
                return Err(VirError::operation_invalid(format!(
                    "domain with name '{new}' already exists"
                )));
            }
        }
        def.dom.name = crate::xml::DomainName::new(&new)?;
        def.name.clone_from(&new);
        let default_nvram = crate::firmware::nvram_path(&self.paths.nvram, &old);
        let moves_nvram =
            def.dom.os.nvram.as_ref() == Some(&default_nvram) && default_nvram.exists();
        if moves_nvram {
            def.dom.os.nvram = Some(crate::firmware::nvram_path(&self.paths.nvram, &new));
        }
        let def = DomainDef::from(def.dom);
        // The new file first: a crash in between leaves both, never neither.
        let text = def.to_xml(None);
        self.configs
            .put(&format!("{new}.xml"), text.as_bytes(), 0o600)
            .await
            .map_err(|e| io_err("write", &self.config_file(&new), &e))?;
        if moves_nvram {
            let to = crate::firmware::nvram_path(&self.paths.nvram, &new);
            std::fs::rename(&default_nvram, &to).map_err(|e| io_err("rename", &to, &e))?;
        }
        let (old_link, new_link) = (self.autostart_link(&old), self.autostart_link(&new));
        if std::fs::symlink_metadata(&old_link).is_ok() {
            let _ = std::os::unix::fs::symlink(self.config_file(&new), &new_link);
            let _ = common::persist::remove_durable(&old_link);
        }
        self.configs
            .remove(&format!("{old}.xml"))
            .await
            .map_err(|e| io_err("remove", &self.config_file(&old), &e))?;
        {
            let mut reg = self.reg();
            reg.by_name.remove(&old);
            reg.insert(new.clone(), dom.clone());
            let mut g = dom.lock();
            g.name.clone_from(&new);
            g.config = Some(def);
        }
        self.lifecycle(dom, DomainEvent::Undefined(UndefinedDetail::Renamed))
            .await;
        self.lifecycle(dom, DomainEvent::Defined(DefinedDetail::Renamed))
            .await;
        self.props_changed(dom).await;
        Ok(())
    }
}
