//! The registry of domains: lookups by UUID, name and ID, ListDomains, and the
//! configs read at start.

use std::collections::HashMap;
use std::sync::Arc;

use common::error::VirError;
use common::event::DomainState;
use uuid::Uuid;
use zbus::zvariant::OwnedObjectPath;

use super::{no_domain, Dom, Driver, ListFlags};
use crate::model::DomainDef;

/// Every domain sorted by name, and their paths in the same order.
type Sorted = (Arc<[Arc<Dom>]>, Arc<[OwnedObjectPath]>);

#[derive(Default)]
pub(super) struct Registry {
    pub by_uuid: HashMap<Uuid, Arc<Dom>>,
    pub by_name: HashMap<String, Uuid>,
    /// Every domain sorted by name, with its path: built on the first ListDomains after
    /// a change, so listing 1000 domains neither sorts nor allocates 1000 paths.
    sorted: Option<Sorted>,
}

impl Registry {
    pub fn insert(&mut self, name: String, dom: Arc<Dom>) {
        self.sorted = None;
        self.by_name.insert(name, dom.uuid);
        self.by_uuid.insert(dom.uuid, dom);
    }

    pub fn remove(&mut self, name: Option<&str>, uuid: &Uuid) {
        self.sorted = None;
        if let Some(n) = name {
            self.by_name.remove(n);
        }
        self.by_uuid.remove(uuid);
    }

    pub fn sorted(&mut self) -> Sorted {
        if let Some(s) = &self.sorted {
            return s.clone();
        }
        let mut v: Vec<(String, Arc<Dom>)> = self
            .by_uuid
            .values()
            .filter(|d| d.served())
            .map(|d| (d.name(), d.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        let doms: Arc<[Arc<Dom>]> = v.into_iter().map(|(_, d)| d).collect();
        let paths: Arc<[OwnedObjectPath]> = doms.iter().map(|d| d.path.clone()).collect();
        self.sorted = Some((doms.clone(), paths.clone()));
        (doms, paths)
    }
}

impl Driver {
    pub(super) fn load_configs(&self) {
        let Ok(entries) = std::fs::read_dir(&self.paths.config) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) != Some("xml") {
                continue;
            }
            let def = match std::fs::read_to_string(&p)
                .map_err(|e| e.to_string())
                .and_then(|t| DomainDef::parse(&t).map_err(|e| e.to_string()))
            {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!("ignoring domain config {}: {e}", p.display());
                    continue;
                }
            };
            let autostart = self.autostart_link(&def.name).exists();
            let mut reg = self.reg();
            if reg.by_name.contains_key(&def.name) || reg.by_uuid.contains_key(&def.uuid) {
                tracing::warn!("ignoring duplicate domain config {}", p.display());
                continue;
            }
            let dom = Dom::new(def.uuid, def.name.clone(), Some(def), autostart);
            self.load_snapshots(&dom);
            // Loaded before the D-Bus layer serves everything there is, and before
            // the bus name is owned: no client can meet it unserved.
            dom.set_served();
            reg.insert(dom.name(), dom);
        }
    }

    /// Whether `dom` is still the registered domain of its uuid.
    pub(super) fn registered(&self, dom: &Arc<Dom>) -> bool {
        self.reg()
            .by_uuid
            .get(&dom.uuid)
            .is_some_and(|d| Arc::ptr_eq(d, dom))
    }

    /// Tells the world `dom` exists, then lets lookups and lists hand it out.
    pub(super) async fn publish_added(&self, dom: &Arc<Dom>) {
        self.outbox.send(super::Change::Added(dom.clone())).await;
        dom.set_served();
        self.reg().sorted = None;
    }

    /// Takes `dom` out of the registry and tells the world it is gone.
    pub(super) async fn remove(&self, dom: &Arc<Dom>) {
        {
            let mut reg = self.reg();
            let name = dom.name();
            let owns_name = reg.by_name.get(&name) == Some(&dom.uuid);
            reg.remove(owns_name.then_some(name.as_str()), &dom.uuid);
        }
        self.outbox.send(super::Change::Removed(dom.clone())).await;
    }

    pub fn lookup_uuid(&self, uuid: &Uuid) -> Result<Arc<Dom>, VirError> {
        self.reg()
            .by_uuid
            .get(uuid)
            .filter(|d| d.served())
            .cloned()
            .ok_or_else(|| no_domain(format!("no domain with matching uuid '{uuid}'")))
    }

    pub fn lookup_uuid_str(&self, s: &str) -> Result<Arc<Dom>, VirError> {
        let uuid = Uuid::parse_str(s.trim())
            .map_err(|_| no_domain(format!("no domain with matching uuid '{s}'")))?;
        self.lookup_uuid(&uuid)
    }

    pub fn lookup_name(&self, name: &str) -> Result<Arc<Dom>, VirError> {
        let reg = self.reg();
        reg.by_name
            .get(name)
            .and_then(|u| reg.by_uuid.get(u))
            .filter(|d| d.served())
            .cloned()
            .ok_or_else(|| no_domain(format!("no domain with matching name '{name}'")))
    }

    pub fn lookup_id(&self, id: i32) -> Result<Arc<Dom>, VirError> {
        let doms: Vec<Arc<Dom>> = self.reg().by_uuid.values().cloned().collect();
        doms.into_iter()
            .filter(|d| d.served())
            .find(|d| d.id().map(|i| i as i64) == Some(id as i64))
            .ok_or_else(|| no_domain(format!("no domain with matching id {id}")))
    }

    /// ListDomains: the paths of the domains `flags` selects, sorted by name.
    pub fn list_paths(&self, flags: u32) -> Result<Vec<OwnedObjectPath>, VirError> {
        let flags: ListFlags = common::error::flags(flags)?;
        if flags.is_empty() {
            return Ok(self.reg().sorted().1.to_vec());
        }
        Ok(self.select(flags).iter().map(|d| d.path.clone()).collect())
    }

    pub fn list(&self, flags: u32) -> Result<Vec<Arc<Dom>>, VirError> {
        Ok(self.select(common::error::flags(flags)?))
    }

    /// The domains `flags` selects, sorted by name. Each pair of opposite flags filters
    /// only when one of them is given; the state flags select any of those given.
    fn select(&self, flags: ListFlags) -> Vec<Arc<Dom>> {
        let doms = self.reg().sorted().0;
        let pick = |yes: ListFlags, no: ListFlags, is: bool| {
            let (y, n) = (flags.contains(yes), flags.contains(no));
            !(y || n) || (y && is) || (n && !is)
        };
        let states = ListFlags::RUNNING | ListFlags::PAUSED | ListFlags::SHUTOFF | ListFlags::OTHER;
        doms.iter()
            .filter(|d| {
                let g = d.lock();
                let st = g.state.state();
                let state_ok = !flags.intersects(states)
                    || match st {
                        DomainState::Running => flags.contains(ListFlags::RUNNING),
                        DomainState::Paused => flags.contains(ListFlags::PAUSED),
                        DomainState::Shutoff => flags.contains(ListFlags::SHUTOFF),
                        _ => flags.contains(ListFlags::OTHER),
                    };
                let managed_save = || self.managed_save_path(&g.name).exists();
                pick(ListFlags::ACTIVE, ListFlags::INACTIVE, g.live.is_some())
                    && (!flags.intersects(ListFlags::MANAGEDSAVE | ListFlags::NO_MANAGEDSAVE)
                        || pick(ListFlags::MANAGEDSAVE, ListFlags::NO_MANAGEDSAVE, managed_save()))
                    && pick(ListFlags::PERSISTENT, ListFlags::TRANSIENT, g.config.is_some())
                    && pick(ListFlags::AUTOSTART, ListFlags::NO_AUTOSTART, g.autostart)
                    && (!flags.intersects(ListFlags::HAS_SNAPSHOT | ListFlags::NO_SNAPSHOT)
                        || pick(ListFlags::HAS_SNAPSHOT, ListFlags::NO_SNAPSHOT,
                            !d.snapshots().snapshots.is_empty()))
                    // No domain here has checkpoints yet.
                    && pick(ListFlags::NO_CHECKPOINT, ListFlags::HAS_CHECKPOINT, true)
                    && state_ok
            })
            .cloned()
            .collect()
    }
}

/// libvirt's rules: a name belongs to one uuid and a uuid to one name.
pub(super) fn check_conflicts(reg: &Registry, def: &DomainDef) -> Result<(), VirError> {
    if let Some(u) = reg.by_name.get(&def.name) {
        if *u != def.uuid {
            return Err(VirError::operation_failed(format!(
                "domain '{}' already exists with uuid {u}",
                def.name
            )));
        }
    }
    if let Some(d) = reg.by_uuid.get(&def.uuid) {
        let existing = d.name();
        if existing != def.name {
            return Err(VirError::operation_failed(format!(
                "domain '{existing}' is already defined with uuid {}",
                def.uuid
            )));
        }
    }
    Ok(())
}
