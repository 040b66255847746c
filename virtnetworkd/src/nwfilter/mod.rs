//! Network filters (libvirt's virtnwfilterd), hosted by virtnetworkd: definitions in
//! `<config>/nwfilter/NAME.xml`, libvirt's standard set installed with a fresh config,
//! and bindings (a filter with its parameters on one tap) in
//! `<runtime>/nwfilter-binding/TAP.json`, turned into nftables rules (rules.rs).
//!
//! A binding records the tap's ifindex and the rules match that index, so a rule can
//! never catch a later tap that reuses the name; at start, and before every change,
//! bindings whose tap is gone are dropped, and the table is rebuilt from the rest.

pub mod builtin;
pub mod rules;
pub mod xml;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use common::error::{ErrorCode, VirError};
use common::job::InFlight;
use common::publish::Outbox;
use common::xml::XmlError;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use self::rules::{InstError, Instance};
use self::xml::{Binding, Filter};

/// What clients must see: filter and binding objects that appeared or went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FilterChange {
    Added(Uuid),
    Removed(Uuid),
    BindingAdded(String),
    BindingRemoved(String),
}

#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error(transparent)]
    Xml(#[from] XmlError),
    #[error("no nwfilter with matching name '{0}'")]
    NoName(String),
    #[error("no nwfilter with matching uuid '{0}'")]
    NoUuid(String),
    #[error("filter '{0}' already exists with uuid {1}")]
    NameTaken(String, Uuid),
    #[error("filter with same UUID but different name ('{0}') already exists")]
    UuidTaken(String),
    #[error("filter would introduce a loop")]
    Loop,
    #[error("nwfilter is in use")]
    InUse,
    #[error("no nwfilter binding for port dev '{0}'")]
    NoBinding(String),
    #[error("filter binding for port dev '{0}' already exists")]
    BindingExists(String),
    #[error("cannot find interface '{0}' to bind a filter to")]
    NoTap(String),
    #[error(transparent)]
    Instantiate(#[from] InstError),
    #[error("{0}")]
    Firewall(String),
    #[error("{what}: {err}")]
    Io { what: String, err: std::io::Error },
}

impl From<FilterError> for VirError {
    fn from(e: FilterError) -> VirError {
        use FilterError::*;
        match &e {
            Xml(x) => VirError::xml(x),
            NoName(_) | NoUuid(_) => VirError::new(ErrorCode::NoNwfilter, e),
            NameTaken(..) | UuidTaken(_) | Loop | BindingExists(_) | NoTap(_) => {
                VirError::operation_failed(e)
            }
            InUse => VirError::operation_invalid(e),
            NoBinding(_) => VirError::new(ErrorCode::NoNwfilterBinding, e),
            Instantiate(InstError::Missing(_)) => VirError::internal(e),
            Instantiate(InstError::Unsupported { .. }) => VirError::unsupported(e),
            Instantiate(_) => VirError::new(ErrorCode::BuildFirewall, e),
            Firewall(_) => VirError::new(ErrorCode::BuildFirewall, e),
            Io { what, err } => VirError::system(what, err),
        }
    }
}

impl From<FilterError> for common::error::BusError {
    fn from(e: FilterError) -> Self {
        VirError::from(e).into()
    }
}

pub type Result<T> = std::result::Result<T, FilterError>;

fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> FilterError {
    let what = what.to_string();
    move |err| FilterError::Io { what, err }
}

/// A binding as its runtime file holds it: the document and the tap's ifindex when
/// it was bound.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    ifindex: u32,
    xml: String,
}

#[derive(Debug, Clone)]
struct Bound {
    ifindex: u32,
    def: Binding,
}

pub struct NwFilters {
    config_dir: PathBuf,
    run_dir: PathBuf,
    /// A fresh config folder gets libvirt's standard filters.
    fresh: bool,
    filters: Mutex<BTreeMap<String, Filter>>,
    bindings: Mutex<BTreeMap<String, Bound>>,
    /// One change at a time: the ruleset is a function of all filters and bindings.
    job: tokio::sync::Mutex<()>,
    jobs: InFlight,
    pub outbox: Outbox<FilterChange>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The tap's ifindex in this daemon's network namespace.
fn ifindex(name: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(name).ok()
}

async fn blocking<T: Send + 'static>(
    what: String,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> Result<T> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(io(what)),
        Err(e) => Err(FilterError::Io {
            what,
            err: std::io::Error::other(e.to_string()),
        }),
    }
}

/// Whether `from`'s tree (through `filters`) reaches `target`.
fn reaches(filters: &BTreeMap<String, Filter>, from: &Filter, target: &str) -> bool {
    let mut stack: Vec<&Filter> = vec![from];
    let mut seen = BTreeSet::new();
    while let Some(f) = stack.pop() {
        for r in f.refs() {
            if r.filter == target {
                return true;
            }
            if seen.insert(r.filter.as_str()) {
                if let Some(c) = filters.get(&r.filter) {
                    stack.push(c);
                }
            }
        }
    }
    false
}

/// Whether binding `b`'s filter tree holds the filter `name`.
fn uses(filters: &BTreeMap<String, Filter>, b: &Binding, name: &str) -> bool {
    b.filter.filter == name
        || filters
            .get(&b.filter.filter)
            .is_some_and(|top| reaches(filters, top, name))
}

/// Every binding's rules, with `filters` as the definitions.
fn instances(
    filters: &BTreeMap<String, Filter>,
    bindings: &BTreeMap<String, Bound>,
) -> Result<Vec<Instance>> {
    let lookup = |n: &str| filters.get(n).cloned();
    bindings
        .values()
        .map(|b| {
            let mut i = rules::instantiate(&b.def, &lookup)?;
            i.ifindex = b.ifindex;
            Ok(i)
        })
        .collect()
}

impl NwFilters {
    pub fn new(config: &Path, runtime: &Path) -> anyhow::Result<Arc<NwFilters>> {
        let config_dir = config.join("nwfilter");
        let run_dir = runtime.join("nwfilter-binding");
        let fresh = !config_dir.exists();
        for d in [&config_dir, &run_dir] {
            common::persist::create_dir_all(d, 0o755)?;
        }
        Ok(Arc::new(NwFilters {
            config_dir,
            run_dir,
            fresh,
            filters: Mutex::new(BTreeMap::new()),
            bindings: Mutex::new(BTreeMap::new()),
            job: tokio::sync::Mutex::new(()),
            jobs: InFlight::new(),
            outbox: Outbox::new(),
        }))
    }

    pub fn idle(&self) -> bool {
        self.jobs.idle()
    }

    fn def_path(&self, name: &str) -> PathBuf {
        self.config_dir.join(format!("{name}.xml"))
    }

    fn binding_path(&self, tap: &str) -> PathBuf {
        self.run_dir.join(format!("{tap}.json"))
    }

    pub fn list(&self) -> Vec<Uuid> {
        lock(&self.filters).values().map(|f| f.uuid).collect()
    }

    pub fn by_name(&self, name: &str) -> Result<Uuid> {
        lock(&self.filters)
            .get(name)
            .map(|f| f.uuid)
            .ok_or_else(|| FilterError::NoName(name.to_owned()))
    }

    pub fn by_uuid(&self, uuid: &str) -> Result<Filter> {
        let u = Uuid::parse_str(uuid.trim()).map_err(|_| FilterError::NoUuid(uuid.to_owned()))?;
        lock(&self.filters)
            .values()
            .find(|f| f.uuid == u)
            .cloned()
            .ok_or_else(|| FilterError::NoUuid(uuid.to_owned()))
    }

    /// Applies the rules of `bindings` with `filters` (nft off the async threads).
    async fn apply(
        &self,
        filters: &BTreeMap<String, Filter>,
        bindings: &BTreeMap<String, Bound>,
    ) -> Result<()> {
        let insts = instances(filters, bindings)?;
        match tokio::task::spawn_blocking(move || rules::apply(&insts)).await {
            Ok(r) => r.map_err(FilterError::Firewall),
            Err(e) => Err(FilterError::Firewall(e.to_string())),
        }
    }

    /// Puts the table back when someone flushed or deleted any of it: the watcher's
    /// answer to a deletion in our table. Our own transactions (which delete and re-add
    /// the table) find it intact and change nothing, so this never loops.
    pub async fn heal(&self) -> Result<()> {
        let _job = self.job.lock().await;
        let bindings = self.live_bindings().await;
        let filters = lock(&self.filters).clone();
        let insts = instances(&filters, &bindings)?;
        let intact = match tokio::task::spawn_blocking(move || rules::intact(&insts)).await {
            Ok(r) => r.map_err(FilterError::Firewall)?,
            Err(e) => return Err(FilterError::Firewall(e.to_string())),
        };
        if !intact {
            tracing::warn!("network filter rules were changed behind our back; putting them back");
            self.apply(&filters, &bindings).await?;
        }
        Ok(())
    }

    /// Watches our table (firewall::watch, as the network tables are watched) and
    /// heals it after a deletion, once changes settle.
    pub fn watch(self: &Arc<Self>) {
        const SETTLE: std::time::Duration = std::time::Duration::from_millis(50);
        const TABLES: &[&str] = &[rules::TABLE];
        let mut watch = match crate::firewall::watch::NftWatch::open() {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!("cannot watch nftables changes ({e}); flushed filter rules are only put back at the next change or start");
                return;
            }
        };
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                match watch.next(TABLES).await {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(e) => {
                        tracing::error!("nftables watch failed: {e}");
                        return;
                    }
                }
                while let Ok(r) = tokio::time::timeout(SETTLE, watch.next(TABLES)).await {
                    if let Err(e) = r {
                        tracing::error!("nftables watch failed: {e}");
                        return;
                    }
                }
                let Some(f) = me.upgrade() else { return };
                if let Err(e) = f.heal().await {
                    tracing::error!("cannot put network filter rules back: {e}");
                }
            }
        });
    }

    /// Stores a definition (replacing the one of that name). A redefinition that
    /// bindings use is instantiated for all of them before anything is kept.
    pub async fn define(&self, text: &str) -> Result<Uuid> {
        let _j = self.jobs.enter();
        let mut def = Filter::from_xml(text)?;
        let _job = self.job.lock().await;
        let mut filters = lock(&self.filters).clone();
        if let Some(old) = filters.get(&def.name) {
            if !def.uuid_given {
                def.uuid = old.uuid;
            } else if old.uuid != def.uuid {
                return Err(FilterError::NameTaken(def.name.clone(), old.uuid));
            }
        }
        if let Some(other) = filters
            .values()
            .find(|f| f.uuid == def.uuid && f.name != def.name)
        {
            return Err(FilterError::UuidTaken(other.name.clone()));
        }
        if def.refs().any(|r| r.filter == def.name) || reaches(&filters, &def, &def.name) {
            return Err(FilterError::Loop);
        }
        let new = !filters.contains_key(&def.name);
        let (bindings, pruned) = self.prune().await;
        // Only trees that held the name change (a binding cannot use a filter that
        // did not exist: its instantiation needed all of them).
        let used = bindings.values().any(|b| uses(&filters, &b.def, &def.name));
        filters.insert(def.name.clone(), def.clone());
        if used || pruned {
            self.apply(&filters, &bindings).await?;
        }
        let (path, data) = (self.def_path(&def.name), def.to_xml());
        blocking(
            format!("cannot write the definition of nwfilter '{}'", def.name),
            move || common::persist::write_atomic(&path, data.as_bytes(), 0o600),
        )
        .await?;
        lock(&self.filters).insert(def.name.clone(), def.clone());
        drop(_job);
        if new {
            self.outbox.send(FilterChange::Added(def.uuid)).await;
        }
        tracing::info!(nwfilter = %def.name, "defined");
        Ok(def.uuid)
    }

    /// libvirt refuses to undefine a filter any binding's tree holds.
    pub async fn undefine(&self, uuid: &Uuid) -> Result<()> {
        let _j = self.jobs.enter();
        let _job = self.job.lock().await;
        let filters = lock(&self.filters).clone();
        let def = filters
            .values()
            .find(|f| f.uuid == *uuid)
            .cloned()
            .ok_or_else(|| FilterError::NoUuid(uuid.to_string()))?;
        let in_use = self
            .live_bindings()
            .await
            .values()
            .any(|b| uses(&filters, &b.def, &def.name));
        if in_use {
            return Err(FilterError::InUse);
        }
        let path = self.def_path(&def.name);
        blocking(
            format!("cannot remove the definition of nwfilter '{}'", def.name),
            move || common::persist::remove_durable(&path),
        )
        .await?;
        lock(&self.filters).remove(&def.name);
        drop(_job);
        self.outbox.send(FilterChange::Removed(def.uuid)).await;
        tracing::info!(nwfilter = %def.name, "undefined");
        Ok(())
    }

    /// The bindings whose tap is still the one they were made for; the others are
    /// dropped (their files removed, their objects unserved). Called under the job.
    async fn live_bindings(&self) -> BTreeMap<String, Bound> {
        self.prune().await.0
    }

    /// [`live_bindings`](Self::live_bindings), and whether any was dropped (its
    /// chains may then still be in the table: only a rebuild takes them out).
    async fn prune(&self) -> (BTreeMap<String, Bound>, bool) {
        let all = lock(&self.bindings).clone();
        let (live, gone): (BTreeMap<_, _>, BTreeMap<_, _>) = all
            .into_iter()
            .partition(|(tap, b)| ifindex(tap) == Some(b.ifindex));
        for tap in gone.keys() {
            let path = self.binding_path(tap);
            if let Err(e) = blocking(String::new(), move || {
                common::persist::remove_durable(&path)
            })
            .await
            {
                tracing::warn!(tap = %tap, "cannot remove the binding of a gone tap: {e}");
            }
            lock(&self.bindings).remove(tap);
            tracing::info!(tap = %tap, "tap gone: its filter binding dropped");
            self.outbox
                .send(FilterChange::BindingRemoved(tap.clone()))
                .await;
        }
        (live, !gone.is_empty())
    }

    /// One tap's rules added to (or taken from) the table in a transaction of its own
    /// when the table holds exactly the other bindings; else, or when that fails (the
    /// table flushed meanwhile), the whole table rebuilt.
    async fn apply_one(
        &self,
        filters: &BTreeMap<String, Filter>,
        bindings: &BTreeMap<String, Bound>,
        tap: &Bound,
        add: bool,
        incremental: bool,
    ) -> Result<()> {
        if incremental {
            let lookup = |n: &str| filters.get(n).cloned();
            let mut inst = rules::instantiate(&tap.def, &lookup)?;
            inst.ifindex = tap.ifindex;
            let r = tokio::task::spawn_blocking(move || {
                if add {
                    rules::apply_add(&inst)
                } else {
                    rules::apply_remove(&inst)
                }
            })
            .await;
            match r {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(e)) => tracing::warn!("rebuilding the filter table: {e}"),
                Err(e) => tracing::warn!("rebuilding the filter table: {e}"),
            }
        }
        self.apply(filters, bindings).await
    }

    /// Binds a filter to a tap: the runtime file first (so a restart knows the tap
    /// is to be filtered), then the rules; if they cannot be applied, the file goes.
    pub async fn bind(&self, text: &str) -> Result<String> {
        let _j = self.jobs.enter();
        let def = Binding::from_xml(text)?;
        let tap = def.portdev.clone();
        let _job = self.job.lock().await;
        let (mut bindings, pruned) = self.prune().await;
        if bindings.contains_key(&tap) {
            return Err(FilterError::BindingExists(tap));
        }
        let incremental = !pruned && !bindings.is_empty();
        let idx = ifindex(&tap).ok_or_else(|| FilterError::NoTap(tap.clone()))?;
        let filters = lock(&self.filters).clone();
        bindings.insert(
            tap.clone(),
            Bound {
                ifindex: idx,
                def: def.clone(),
            },
        );
        // Instantiate before anything is written: a bad binding leaves no trace.
        instances(&filters, &bindings)?;
        let rec = Record {
            ifindex: idx,
            xml: def.to_xml(),
        };
        let data = serde_json::to_vec(&rec).map_err(|e| FilterError::Firewall(e.to_string()))?;
        let path = self.binding_path(&tap);
        blocking(format!("cannot record the binding of '{tap}'"), move || {
            common::persist::write_atomic(&path, &data, 0o600)
        })
        .await?;
        let bound = Bound {
            ifindex: idx,
            def: def.clone(),
        };
        if let Err(e) = self
            .apply_one(&filters, &bindings, &bound, true, incremental)
            .await
        {
            let path = self.binding_path(&tap);
            let _ = blocking(String::new(), move || {
                common::persist::remove_durable(&path)
            })
            .await;
            return Err(e);
        }
        lock(&self.bindings).insert(tap.clone(), Bound { ifindex: idx, def });
        drop(_job);
        self.outbox
            .send(FilterChange::BindingAdded(tap.clone()))
            .await;
        tracing::info!(tap = %tap, "filter bound");
        Ok(tap)
    }

    /// Removes a binding: its rules first, then its file.
    pub async fn unbind(&self, tap: &str) -> Result<()> {
        let _j = self.jobs.enter();
        let _job = self.job.lock().await;
        if !lock(&self.bindings).contains_key(tap) {
            return Err(FilterError::NoBinding(tap.to_owned()));
        }
        let (mut bindings, pruned) = self.prune().await;
        let filters = lock(&self.filters).clone();
        match bindings.remove(tap) {
            Some(b) => {
                let incremental = !pruned && !bindings.is_empty();
                self.apply_one(&filters, &bindings, &b, false, incremental)
                    .await?
            }
            // Its tap went: dropped with its rules already by the rebuild below.
            None => self.apply(&filters, &bindings).await?,
        }
        if lock(&self.bindings).remove(tap).is_some() {
            let path = self.binding_path(tap);
            blocking(format!("cannot remove the binding of '{tap}'"), move || {
                common::persist::remove_durable(&path)
            })
            .await?;
            drop(_job);
            self.outbox
                .send(FilterChange::BindingRemoved(tap.to_owned()))
                .await;
        }
        tracing::info!(tap = %tap, "filter unbound");
        Ok(())
    }

    pub fn binding(&self, tap: &str) -> Result<Binding> {
        lock(&self.bindings)
            .get(tap)
            .map(|b| b.def.clone())
            .ok_or_else(|| FilterError::NoBinding(tap.to_owned()))
    }

    pub fn bindings(&self) -> Vec<String> {
        lock(&self.bindings).keys().cloned().collect()
    }

    /// At start: definitions (libvirt's standard set into a fresh folder), bindings
    /// whose tap is still there, and the ruleset rebuilt from them.
    pub async fn load(&self) {
        let (dir, run, fresh) = (self.config_dir.clone(), self.run_dir.clone(), self.fresh);
        let loaded = blocking("cannot read nwfilter definitions".into(), move || {
            if fresh {
                builtin::install(&dir)?;
            }
            Ok((read_filters(&dir)?, read_bindings(&run)?))
        })
        .await;
        let (filters, bindings) = match loaded {
            Ok(x) => x,
            Err(e) => {
                tracing::error!("{e}");
                return;
            }
        };
        *lock(&self.filters) = filters.clone();
        // No binding on disk: nothing of ours can be in the kernel worth an nft run
        // (a start stays free of nft, as a daemon without networks is).
        let any = !bindings.is_empty();
        *lock(&self.bindings) = bindings;
        for f in filters.values() {
            self.outbox.send(FilterChange::Added(f.uuid)).await;
        }
        let _job = self.job.lock().await;
        let live = self.live_bindings().await;
        for tap in live.keys() {
            self.outbox
                .send(FilterChange::BindingAdded(tap.clone()))
                .await;
        }
        if !any {
            return;
        }
        if let Err(e) = self.apply(&filters, &live).await {
            tracing::error!("cannot rebuild the network filter rules: {e}");
        }
    }
}

/// `NAME.xml` files whose document names NAME; others are skipped with a warning.
fn read_filters(dir: &Path) -> std::io::Result<BTreeMap<String, Filter>> {
    let mut out = BTreeMap::new();
    for (stem, p) in common::persist::named_files(dir, ".xml")? {
        match Filter::from_xml(&std::fs::read_to_string(&p)?) {
            Ok(f) if f.name == stem => {
                out.insert(f.name.clone(), f);
            }
            Ok(_) => {
                tracing::warn!(file = %p.display(), "definition names another filter; skipped")
            }
            Err(e) => tracing::warn!(file = %p.display(), "unreadable nwfilter skipped: {e}"),
        }
    }
    Ok(out)
}

fn read_bindings(dir: &Path) -> std::io::Result<BTreeMap<String, Bound>> {
    let mut out = BTreeMap::new();
    for (stem, p) in common::persist::named_files(dir, ".json")? {
        let rec: Option<Record> = serde_json::from_slice(&std::fs::read(&p)?).ok();
        match rec.and_then(|r| Some((r.ifindex, Binding::from_xml(&r.xml).ok()?))) {
            Some((ifindex, def)) if def.portdev == stem => {
                out.insert(stem.to_owned(), Bound { ifindex, def });
            }
            _ => {
                tracing::warn!(file = %p.display(), "unreadable filter binding removed");
                std::fs::remove_file(&p)?;
            }
        }
    }
    Ok(out)
}
