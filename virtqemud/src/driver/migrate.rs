//! Live migration between two nodes, libvirt's managed peer-to-peer way
//! (`VIR_MIGRATE_PEER2PEER`): the source virtqemud dials the destination's URI
//! (`common::uri`) and drives libvirt's phases over the destination's
//! `org.libvirt.virtqemud.Migration` interface. Begin (the XML to send) → Prepare (the
//! destination starts QEMU with `-incoming defer` and listens) → Perform (the source's
//! QEMU streams the guest) → Finish (the destination runs it) → Confirm (the source's
//! QEMU ends). Each side records its phase in the run's status before it acts, so that a
//! daemon killed at any instant settles at restart with the guest running in exactly one
//! place (`settle_*` below): a destination runs the guest only after Finish, and a source
//! ends its QEMU only after a Finish it knows succeeded.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::error::{ErrorCode, VirError};
use common::event::{
    DomainEvent, DomainState, PausedReason, ResumedDetail, RunningReason, StateReason,
    SuspendedDetail,
};
use common::proxies::qemu::MigrationProxy;
use common::typed_params::TypedParams;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use zbus::zvariant::{OwnedValue, Value as ZValue};

use super::registry::check_conflicts;
use super::{not_running, Dom, Driver, StartFlags};
use crate::events::{DomainSignal, Stat};
use crate::model::DomainDef;
use crate::qmp::Qmp;

bitflags::bitflags! {
    /// `virDomainMigrateFlags`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct MigrateFlags: u32 {
        const LIVE = 1;
        const PEER2PEER = 2;
        const TUNNELLED = 4;
        const PERSIST_DEST = 8;
        const UNDEFINE_SOURCE = 16;
        const PAUSED = 32;
        const NON_SHARED_DISK = 64;
        const NON_SHARED_INC = 128;
        const CHANGE_PROTECTION = 256;
        const UNSAFE = 512;
        const OFFLINE = 1024;
        const COMPRESSED = 2048;
        const ABORT_ON_ERROR = 4096;
        const AUTO_CONVERGE = 8192;
        const RDMA_PIN_ALL = 16384;
        const POSTCOPY = 32768;
        const TLS = 65536;
        const PARALLEL = 131072;
        const NON_SHARED_SYNCHRONOUS_WRITES = 262144;
        const POSTCOPY_RESUME = 524288;
        const ZEROCOPY = 1048576;
    }
}

/// The flags of what this driver does not do, with the words of its refusal.
const NOT_HERE: &[(MigrateFlags, &str)] = &[
    (MigrateFlags::TUNNELLED, "tunnelled migration"),
    (
        MigrateFlags::NON_SHARED_DISK,
        "migration of non-shared storage",
    ),
    (
        MigrateFlags::NON_SHARED_INC,
        "migration of non-shared storage",
    ),
    (MigrateFlags::OFFLINE, "offline migration"),
    (MigrateFlags::RDMA_PIN_ALL, "RDMA migration"),
    (MigrateFlags::TLS, "TLS migration"),
    (MigrateFlags::PARALLEL, "parallel migration"),
    (
        MigrateFlags::NON_SHARED_SYNCHRONOUS_WRITES,
        "migration of non-shared storage",
    ),
    (MigrateFlags::POSTCOPY_RESUME, "post-copy recovery"),
    (MigrateFlags::ZEROCOPY, "zero-copy migration"),
];

/// libvirt's `QEMU_DOMAIN_MIG_BANDWIDTH_MAX` (MiB/s): "no limit", MigrateGetMaxSpeed's
/// answer until one is set.
pub(super) const BANDWIDTH_MAX: u64 = (i64::MAX as u64) / (1024 * 1024);
/// `VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT`.
const OPERATION_MIGRATION_OUT: i32 = 5;
/// `virDomainJobType`: none, unbounded (a migration), completed.
const JOB_NONE: i32 = 0;
const JOB_UNBOUNDED: i32 = 2;
const JOB_COMPLETED: i32 = 3;
/// libvirt's port range for incoming migrations (`migration_port_min/max`).
const PORTS: std::ops::RangeInclusive<u16> = 49152..=49215;
/// How long the destination may take to answer each phase.
const DIAL_WAIT: Duration = Duration::from_secs(30);
const PREPARE_WAIT: Duration = Duration::from_secs(90);
const FINISH_WAIT: Duration = Duration::from_secs(120);
/// How long a source that lost the destination keeps asking it what became of the guest.
const RECOVER_WAIT: Duration = Duration::from_secs(60);
/// How long the destination's QEMU may take to load the last of the state after the
/// source's side completed.
const INCOMING_WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(50);

/// Where a migration of the run stands, in its status file before each step.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub(super) enum Migration {
    /// The source's side.
    Out {
        dconuri: String,
        phase: OutPhase,
        /// The guest ran before: it runs again here if the migration is undone.
        resume: bool,
        flags: u32,
    },
    /// The destination's side: QEMU listening or loading, the guest not run yet.
    In {
        phase: InPhase,
        flags: u32,
        /// `VIR_MIGRATE_PARAM_PERSIST_XML`, for PERSIST_DEST.
        #[serde(default)]
        persist_xml: Option<String>,
    },
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(super) enum OutPhase {
    /// Prepare and Perform: the destination has not been asked to run the guest.
    Perform,
    /// Finish asked: the destination may run the guest.
    Finish,
    /// The destination runs it: the source's QEMU ends.
    Confirm,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(super) enum InPhase {
    Prepared,
    /// Finish began: the guest may be running here.
    Finishing,
}

/// Per domain: libvirt's migration knobs and the job in progress.
pub(super) struct Knobs {
    /// MiB/s (MigrateSetMaxSpeed, VIR_MIGRATE_PARAM_BANDWIDTH overrides it per call).
    pub max_speed: u64,
    /// MiB/s after a switch to post-copy; 0 is no limit.
    pub max_speed_postcopy: u64,
    pub job: Option<Arc<OutJob>>,
    /// The last migration's statistics (GetJobStats with COMPLETED).
    pub completed: Option<Vec<(String, Stat)>>,
}

impl Default for Knobs {
    fn default() -> Knobs {
        Knobs {
            max_speed: BANDWIDTH_MAX,
            max_speed_postcopy: 0,
            job: None,
            completed: None,
        }
    }
}

/// An outgoing migration in progress: what GetJobInfo, AbortJob and
/// MigrateStartPostCopy need without the domain's job lock, which the migration holds.
pub(super) struct OutJob {
    started: Instant,
    qmp: Qmp,
    flags: MigrateFlags,
    aborted: AtomicBool,
}

/// `VIR_MIGRATE_PARAM_*` this driver reads.
#[derive(Default, Debug)]
struct Params {
    uri: Option<String>,
    listen_address: Option<String>,
    dest_name: Option<String>,
    dest_xml: Option<String>,
    persist_xml: Option<String>,
    bandwidth: Option<u64>,
    xbzrle_cache: Option<u64>,
    throttle_initial: Option<i64>,
    throttle_increment: Option<i64>,
}

fn bad_type(k: &str) -> VirError {
    VirError::invalid_arg(format!("invalid type for parameter '{k}'"))
}

fn text_of(k: &str, v: &OwnedValue) -> Result<String, VirError> {
    match &**v {
        ZValue::Str(s) => Ok(s.to_string()),
        _ => Err(bad_type(k)),
    }
}

fn number_of(k: &str, v: &OwnedValue) -> Result<i64, VirError> {
    match &**v {
        ZValue::U64(n) => i64::try_from(*n).map_err(|_| bad_type(k)),
        ZValue::I64(n) => Ok(*n),
        ZValue::U32(n) => Ok(i64::from(*n)),
        ZValue::I32(n) => Ok(i64::from(*n)),
        _ => Err(bad_type(k)),
    }
}

impl Params {
    fn parse(p: &HashMap<String, OwnedValue>) -> Result<Params, VirError> {
        let mut out = Params::default();
        for (k, v) in p {
            let unsigned = |v| u64::try_from(number_of(k, v)?).map_err(|_| bad_type(k));
            match k.as_str() {
                "migrate_uri" => out.uri = Some(text_of(k, v)?),
                "listen_address" => out.listen_address = Some(text_of(k, v)?),
                "destination_name" => out.dest_name = Some(text_of(k, v)?),
                "destination_xml" => out.dest_xml = Some(text_of(k, v)?),
                "persistent_xml" => out.persist_xml = Some(text_of(k, v)?),
                "bandwidth" => out.bandwidth = Some(unsigned(v)?),
                "compression" => {
                    let c = text_of(k, v)?;
                    if c != "xbzrle" {
                        return Err(VirError::new(
                            ErrorCode::ArgumentUnsupported,
                            format!("unsupported compression method '{c}'"),
                        ));
                    }
                }
                "compression.xbzrle.cache" => out.xbzrle_cache = Some(unsigned(v)?),
                "auto_converge.initial" => out.throttle_initial = Some(number_of(k, v)?),
                "auto_converge.increment" => out.throttle_increment = Some(number_of(k, v)?),
                _ => {
                    return Err(VirError::new(
                        ErrorCode::ArgumentUnsupported,
                        format!("parameter '{k}' not supported"),
                    ))
                }
            }
        }
        Ok(out)
    }
}

/// The flags a migration may carry here; the refusal of any other.
fn check_migrate_flags(flags: u32) -> Result<MigrateFlags, VirError> {
    let f: MigrateFlags = common::error::flags(flags)?;
    if !f.contains(MigrateFlags::PEER2PEER) {
        // What libvirt's QEMU driver answers: it has no direct (unmanaged) migration,
        // and libvirt-dbus's MigrateToURI3 migrates only with PEER2PEER.
        return Err(VirError::new(
            ErrorCode::ArgumentUnsupported,
            "direct migration is not supported by the source host",
        ));
    }
    if let Some((_, what)) = NOT_HERE.iter().find(|(b, _)| f.intersects(*b)) {
        return Err(VirError::new(
            ErrorCode::ArgumentUnsupported,
            format!("{what} is not supported by this daemon"),
        ));
    }
    Ok(f)
}

fn lost(uri: &str, e: impl std::fmt::Display) -> VirError {
    VirError::operation_failed(format!(
        "Failed to connect to remote libvirt URI {uri}: {e}"
    ))
}

/// The destination daemon, dialled by its libvirt URI.
struct Destination {
    conn: common::uri::Conn,
    uri: String,
}

impl Destination {
    async fn dial(uri: &str) -> Result<Destination, VirError> {
        let choice = common::uri::Choice::Uri(uri.to_owned());
        let conn = tokio::time::timeout(DIAL_WAIT, common::uri::open(&choice))
            .await
            .map_err(|_| lost(uri, "timed out"))?
            .map_err(|e| lost(uri, format!("{e:#}")))?;
        Ok(Destination {
            conn,
            uri: uri.to_owned(),
        })
    }

    async fn proxy(&self) -> Result<MigrationProxy<'_>, VirError> {
        MigrationProxy::builder(&self.conn.bus)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .map_err(|e| lost(&self.uri, e))
    }

    /// A remote failure as the caller's error: the destination's libvirt error as it
    /// was, anything else as a lost connection.
    fn error(&self, e: &zbus::Error) -> VirError {
        VirError::from_remote(e).unwrap_or_else(|| lost(&self.uri, e))
    }

    async fn prepare(&self, xml: &str, p: &Params, flags: u32) -> Result<String, VirError> {
        let mut params = TypedParams::default();
        let mut put = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                params.insert(
                    k.into(),
                    OwnedValue::from(zbus::zvariant::Str::from(v.clone())),
                );
            }
        };
        put("migrate_uri", &p.uri);
        put("listen_address", &p.listen_address);
        put("persistent_xml", &p.persist_xml);
        let call = async {
            self.proxy()
                .await?
                .prepare(xml, &params, flags)
                .await
                .map_err(|e| self.error(&e))
        };
        tokio::time::timeout(PREPARE_WAIT, call)
            .await
            .map_err(|_| lost(&self.uri, "no answer to Prepare"))?
    }

    /// Finish on the destination: Ok(true) it runs the guest, Ok(false) it refused
    /// (its QEMU is gone), Err: no answer, nobody knows yet.
    async fn finish(
        &self,
        uuid: &str,
        flags: u32,
        cancelled: bool,
    ) -> Result<Result<(), VirError>, VirError> {
        let call = async {
            match self.proxy().await?.finish(uuid, flags, cancelled).await {
                Ok(()) => Ok(Ok(())),
                Err(e) => match VirError::from_remote(&e) {
                    Some(v) => Ok(Err(v)),
                    None => Err(lost(&self.uri, e)),
                },
            }
        };
        tokio::time::timeout(FINISH_WAIT, call)
            .await
            .map_err(|_| lost(&self.uri, "no answer to Finish"))?
    }
}

/// Asks the destination at `dconuri`, until it answers or `within` passes, whether it
/// runs the guest `uuid`; it ends an incoming QEMU it holds that never got Finish.
async fn ask_destination(dconuri: &str, uuid: &str, within: Duration) -> Option<bool> {
    let deadline = Instant::now() + within;
    loop {
        let answer = async {
            let d = Destination::dial(dconuri).await.ok()?;
            let p = d.proxy().await.ok()?;
            tokio::time::timeout(FINISH_WAIT, p.recover(uuid))
                .await
                .ok()?
                .ok()
        }
        .await;
        if let Some(runs) = answer {
            return Some(runs == 1);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// libvirt's job statistics from QEMU's `query-migrate`.
fn stats_of(q: &Value, elapsed_ms: u64, success: Option<bool>) -> Vec<(String, Stat)> {
    let ram = q.get("ram").cloned().unwrap_or(Value::Null);
    let n = |v: &Value, k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
    let (total, done, left) = (
        n(&ram, "total"),
        n(&ram, "transferred"),
        n(&ram, "remaining"),
    );
    let bps = ram.get("mbps").and_then(Value::as_f64).unwrap_or(0.0) * 125_000.0;
    let mut s: Vec<(&str, Stat)> = vec![
        ("operation", Stat::I32(OPERATION_MIGRATION_OUT)),
        ("time_elapsed", Stat::U64(elapsed_ms)),
        ("data_total", Stat::U64(total)),
        ("data_processed", Stat::U64(done)),
        ("data_remaining", Stat::U64(left)),
        ("memory_total", Stat::U64(total)),
        ("memory_processed", Stat::U64(done)),
        ("memory_remaining", Stat::U64(left)),
        ("memory_constant", Stat::U64(n(&ram, "duplicate"))),
        ("memory_normal", Stat::U64(n(&ram, "normal"))),
        ("memory_normal_bytes", Stat::U64(n(&ram, "normal-bytes"))),
        ("memory_bps", Stat::U64(bps as u64)),
        ("memory_dirty_rate", Stat::U64(n(&ram, "dirty-pages-rate"))),
        ("memory_page_size", Stat::U64(n(&ram, "page-size"))),
        ("memory_iteration", Stat::U64(n(&ram, "dirty-sync-count"))),
        (
            "memory_postcopy_requests",
            Stat::U64(n(&ram, "postcopy-requests")),
        ),
        ("setup_time", Stat::U64(n(q, "setup-time"))),
    ];
    if q.get("downtime").is_some() {
        s.push(("downtime", Stat::U64(n(q, "downtime"))));
    }
    if let Some(x) = q.get("xbzrle-cache") {
        s.push(("compression_cache", Stat::U64(n(x, "cache-size"))));
        s.push(("compression_bytes", Stat::U64(n(x, "bytes"))));
        s.push(("compression_pages", Stat::U64(n(x, "pages"))));
        s.push(("compression_cache_misses", Stat::U64(n(x, "cache-miss"))));
        s.push(("compression_overflow", Stat::U64(n(x, "overflow"))));
    }
    if let Some(t) = q.get("cpu-throttle-percentage").and_then(Value::as_i64) {
        s.push(("auto_converge_throttle", Stat::I32(t as i32)));
    }
    if let Some(ok) = success {
        s.push(("success", Stat::Bool(ok)));
    }
    s.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

fn stat_u64(s: &[(String, Stat)], k: &str) -> u64 {
    s.iter()
        .find_map(|(n, v)| match v {
            Stat::U64(x) if n == k => Some(*x),
            _ => None,
        })
        .unwrap_or(0)
}

/// Where QEMU's migration stream goes: `tcp:HOST:PORT` from libvirt's `tcp://HOST:PORT`
/// or QEMU's own `tcp:HOST:PORT`; the host and the port may each be missing.
fn split_tcp(uri: &str) -> Result<(Option<String>, Option<u16>), VirError> {
    let bad = || {
        VirError::invalid_arg(format!(
            "unsupported migration URI '{uri}': use tcp://HOST[:PORT]"
        ))
    };
    let rest = uri
        .strip_prefix("tcp://")
        .or_else(|| uri.strip_prefix("tcp:"))
        .ok_or_else(bad)?;
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => (h, Some(p.parse::<u16>().map_err(|_| bad())?)),
        _ => (rest, None),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Ok(((!host.is_empty()).then(|| host.to_owned()), port))
}

fn tcp(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("tcp:[{host}]:{port}")
    } else {
        format!("tcp:{host}:{port}")
    }
}

/// A free port of libvirt's range on `addr`, for QEMU to listen on.
fn free_port(addr: &str) -> Result<u16, VirError> {
    PORTS
        .clone()
        .find(|p| std::net::TcpListener::bind((addr, *p)).is_ok())
        .ok_or_else(|| {
            VirError::operation_failed(format!(
                "Unable to find an unused port in range 'migration' ({}-{})",
                PORTS.start(),
                PORTS.end()
            ))
        })
}

/// The destination's listening setup for one incoming migration: `start_locked` hands
/// it to QEMU after spawning it with `-incoming defer`.
pub(super) struct Incoming {
    pub listen: String,
    pub record: Migration,
    pub postcopy: bool,
}

/// QEMU, started with `-incoming defer`, listens for the source's stream.
pub(super) async fn listen(qmp: &Qmp, inc: &Incoming) -> Result<(), VirError> {
    let caps = json!([
        {"capability": "events", "state": true},
        {"capability": "postcopy-ram", "state": inc.postcopy},
    ]);
    qmp.execute(
        "migrate-set-capabilities",
        Some(json!({ "capabilities": caps })),
    )
    .await?;
    qmp.execute("migrate-incoming", Some(json!({ "uri": inc.listen })))
        .await?;
    Ok(())
}

impl Driver {
    fn knobs<'a>(&self, dom: &'a Dom) -> std::sync::MutexGuard<'a, Knobs> {
        dom.migration.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the run's migration record and writes the status before anything
    /// depends on it.
    async fn record_migration(&self, dom: &Dom, m: Option<Migration>) {
        if let Some(l) = dom.lock().live.as_mut() {
            l.migration = m;
        }
        self.save_status(dom).await;
    }

    async fn set_out_phase(&self, dom: &Dom, phase: OutPhase) {
        let m = dom.lock().live.as_ref().and_then(|l| l.migration.clone());
        if let Some(Migration::Out {
            dconuri,
            resume,
            flags,
            ..
        }) = m
        {
            let m = Migration::Out {
                dconuri,
                phase,
                resume,
                flags,
            };
            self.record_migration(dom, Some(m)).await;
        }
    }

    /// `MigrateToURI3` with PEER2PEER: the whole migration, driven from here.
    pub async fn migrate_to_uri3(
        &self,
        dom: &Arc<Dom>,
        dconuri: &str,
        params: &HashMap<String, OwnedValue>,
        flags: u32,
    ) -> Result<(), VirError> {
        let f = check_migrate_flags(flags)?;
        let p = Params::parse(params)?;
        let caps = self.caps().await?;
        let _call = self.calls.enter();
        let lock = dom.begin_job().await;
        let (qmp, xml, was_running) = self.begin(dom, &p, &caps)?;
        let dest = Destination::dial(dconuri).await?;
        let job = Arc::new(OutJob {
            started: Instant::now(),
            qmp: qmp.clone(),
            flags: f,
            aborted: AtomicBool::new(false),
        });
        self.knobs(dom).job = Some(job.clone());
        let record = Migration::Out {
            dconuri: dconuri.to_owned(),
            phase: OutPhase::Perform,
            resume: was_running,
            flags,
        };
        self.record_migration(dom, Some(record)).await;
        let uuid = dom.uuid.to_string();
        let performed = async {
            let uri = dest.prepare(&xml, &p, flags).await?;
            self.perform(dom, &job, &uri, f, &p).await
        }
        .await;
        let stats = match performed {
            Ok(s) => s,
            Err(e) => {
                let _ = qmp.execute("migrate_cancel", None).await;
                let _ = dest.finish(&uuid, flags, true).await;
                self.end_out(dom, was_running).await;
                return Err(e);
            }
        };
        self.set_out_phase(dom, OutPhase::Finish).await;
        let runs_there = match dest.finish(&uuid, flags, false).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(refused)) => Err((refused, Some(false))),
            Err(e) => Err((e, ask_destination(dconuri, &uuid, RECOVER_WAIT).await)),
        };
        match runs_there {
            Ok(()) | Err((_, Some(true))) => self.confirm(dom, stats).await,
            Err((e, Some(false))) => {
                self.end_out(dom, was_running).await;
                return Err(e);
            }
            Err((e, None)) => {
                // Nobody can tell whether the destination runs it: the guest stays
                // paused here, as libvirt leaves it; the next restart asks again.
                tracing::error!(domain = %dom.name(), "the destination's Finish is unknown: {e}");
                self.knobs(dom).job = None;
                if let Some(d) = self.arc() {
                    let (dom, uri) = (dom.clone(), dconuri.to_owned());
                    tokio::spawn(async move {
                        d.settle_outgoing(&dom, &uri, OutPhase::Finish, was_running, flags)
                            .await;
                    });
                }
                return Err(e);
            }
        }
        drop(lock);
        if f.contains(MigrateFlags::UNDEFINE_SOURCE) && dom.persistent() {
            if let Err(e) = self.undefine(dom, 0).await {
                tracing::warn!(domain = %dom.name(), "undefining the migrated source: {e}");
            }
        }
        Ok(())
    }

    /// libvirt's Begin: the monitor, the definition the destination gets (DEST_XML, or
    /// the running one, renamed by DEST_NAME) and whether the guest runs.
    fn begin(
        &self,
        dom: &Dom,
        p: &Params,
        caps: &crate::caps::Caps,
    ) -> Result<(Qmp, String, bool), VirError> {
        let (qmp, def, state, migrating) = {
            let g = dom.lock();
            let l = g.live.as_ref().ok_or_else(not_running)?;
            (
                l.qmp.clone(),
                l.def.clone(),
                g.state.state(),
                l.migration.is_some(),
            )
        };
        if migrating {
            return Err(VirError::operation_invalid(
                "domain has an unfinished migration; it is settled at the next restart",
            ));
        }
        let mut out = match &p.dest_xml {
            Some(x) => {
                let other = DomainDef::parse_new(x, caps)?;
                if other.uuid != def.uuid {
                    return Err(VirError::operation_invalid(format!(
                        "target domain uuid {} does not match source {}",
                        other.uuid, def.uuid
                    )));
                }
                other
            }
            None => def,
        };
        if let Some(n) = &p.dest_name {
            out.dom.name = crate::xml::DomainName::new(n)?;
            out.name = n.clone();
        }
        Ok((
            qmp,
            out.to_xml_for(None, true),
            state == DomainState::Running,
        ))
    }

    /// libvirt's Perform: the knobs to QEMU, the stream out, and its progress watched
    /// until QEMU has sent the whole guest (the source's QEMU is paused then).
    async fn perform(
        &self,
        dom: &Arc<Dom>,
        job: &OutJob,
        uri: &str,
        f: MigrateFlags,
        p: &Params,
    ) -> Result<Vec<(String, Stat)>, VirError> {
        let qmp = &job.qmp;
        let caps = json!([
            {"capability": "events", "state": true},
            {"capability": "xbzrle", "state": f.contains(MigrateFlags::COMPRESSED)},
            {"capability": "auto-converge", "state": f.contains(MigrateFlags::AUTO_CONVERGE)},
            {"capability": "postcopy-ram", "state": f.contains(MigrateFlags::POSTCOPY)},
        ]);
        qmp.execute(
            "migrate-set-capabilities",
            Some(json!({ "capabilities": caps })),
        )
        .await?;
        let mib = p.bandwidth.unwrap_or_else(|| self.knobs(dom).max_speed);
        let mut params =
            json!({ "max-bandwidth": mib.saturating_mul(1 << 20).min(i64::MAX as u64 / 2) });
        if let Some(c) = p.xbzrle_cache {
            params["xbzrle-cache-size"] = c.into();
        }
        if let Some(i) = p.throttle_initial {
            params["cpu-throttle-initial"] = i.into();
        }
        if let Some(i) = p.throttle_increment {
            params["cpu-throttle-increment"] = i.into();
        }
        let postcopy = self.knobs(dom).max_speed_postcopy;
        if postcopy > 0 {
            params["max-postcopy-bandwidth"] = postcopy.saturating_mul(1 << 20).into();
        }
        qmp.execute("migrate-set-parameters", Some(params)).await?;
        if !f.contains(MigrateFlags::LIVE)
            && self.transition(
                dom,
                &[DomainState::Running],
                StateReason::Paused(PausedReason::Migration),
            )
        {
            // Not live: the guest stops first, as libvirt pauses it.
            qmp.execute("stop", None).await?;
            self.lifecycle(dom, DomainEvent::Suspended(SuspendedDetail::Migrated))
                .await;
        }
        qmp.execute("migrate", Some(json!({ "uri": uri }))).await?;
        loop {
            let q = qmp.execute("query-migrate", None).await?;
            let elapsed = job.started.elapsed().as_millis() as u64;
            match q.get("status").and_then(Value::as_str).unwrap_or("") {
                "completed" => {
                    // QEMU stopped the guest to send the last of it (its STOP may still
                    // be on the way to the monitor task, which then finds it told).
                    let paused = StateReason::Paused(PausedReason::Migration);
                    if self.transition(dom, &[DomainState::Running], paused) {
                        self.lifecycle(dom, DomainEvent::Suspended(SuspendedDetail::Migrated))
                            .await;
                    }
                    return Ok(stats_of(&q, elapsed, Some(true)));
                }
                "failed" => {
                    let why = q
                        .get("error-desc")
                        .and_then(Value::as_str)
                        .unwrap_or("unknown error");
                    return Err(VirError::operation_failed(format!(
                        "job 'migration out' failed: {why}"
                    )));
                }
                "cancelled" if job.aborted.load(Ordering::SeqCst) => {
                    return Err(VirError::new(
                        ErrorCode::OperationAborted,
                        "job 'migration out' canceled by client",
                    ))
                }
                "cancelled" => {
                    return Err(VirError::operation_failed(
                        "job 'migration out' unexpectedly canceled",
                    ))
                }
                _ => {}
            }
            if f.contains(MigrateFlags::ABORT_ON_ERROR) {
                let st = qmp.execute("query-status", None).await?;
                if st.get("status").and_then(Value::as_str) == Some("io-error") {
                    let _ = qmp.execute("migrate_cancel", None).await;
                    return Err(VirError::operation_failed(
                        "job 'migration out' failed due to I/O error",
                    ));
                }
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// libvirt's Confirm after a Finish that ran the guest there: the source's QEMU
    /// ends (STOPPED/MIGRATED), the statistics go out as JobCompleted.
    async fn confirm(&self, dom: &Arc<Dom>, stats: Vec<(String, Stat)>) {
        self.set_out_phase(dom, OutPhase::Confirm).await;
        {
            let mut k = self.knobs(dom);
            k.job = None;
            k.completed = Some(stats.clone());
        }
        self.outbox
            .send(super::Change::Signal(
                dom.clone(),
                DomainSignal::JobCompleted(stats),
            ))
            .await;
        if let Err(e) = self.destroy_locked(dom).await {
            tracing::error!(domain = %dom.name(), "ending the migrated source: {e}");
        }
    }

    /// A migration undone on the source: the guest runs here again if it ran before
    /// (libvirt's RESUMED/MIGRATED), the record goes.
    async fn end_out(&self, dom: &Arc<Dom>, resume: bool) {
        self.knobs(dom).job = None;
        if resume {
            self.resume_here(dom).await;
        }
        self.record_migration(dom, None).await;
    }

    async fn resume_here(&self, dom: &Arc<Dom>) {
        let Ok(qmp) = self.qmp_of(dom) else { return };
        // Marked before QEMU's RESUME arrives, so the monitor sees no news in it.
        let canceled = StateReason::Running(RunningReason::MigrationCanceled);
        if !self.transition(dom, &[DomainState::Paused], canceled) {
            return;
        }
        match qmp.execute("cont", None).await {
            Ok(_) => {
                self.lifecycle(dom, DomainEvent::Resumed(ResumedDetail::Migrated))
                    .await
            }
            Err(e) => {
                tracing::error!(domain = %dom.name(), "cannot resume after the migration: {e}");
                self.transition(
                    dom,
                    &[DomainState::Running],
                    StateReason::Paused(PausedReason::Migration),
                );
            }
        }
    }

    /// `GetJobInfo`: the migration in progress with libvirt's numbers, else NONE.
    pub async fn job_info(&self, dom: &Dom) -> Result<(i32, [u64; 11]), VirError> {
        let Some((kind, s)) = self.job_now(dom).await? else {
            return Ok((JOB_NONE, [0; 11]));
        };
        let g = |k| stat_u64(&s, k);
        Ok((
            kind,
            [
                g("time_elapsed"),
                g("time_remaining"),
                g("data_total"),
                g("data_processed"),
                g("data_remaining"),
                g("memory_total"),
                g("memory_processed"),
                g("memory_remaining"),
                0,
                0,
                0,
            ],
        ))
    }

    /// `GetJobStats`: the migration in progress, or with COMPLETED (1) the last one's.
    pub async fn job_stats(
        &self,
        dom: &Dom,
        flags: u32,
    ) -> Result<(i32, Vec<(String, Stat)>), VirError> {
        common::error::check_flags(flags, 1 | 2)?;
        if flags & 1 != 0 {
            let done = self.knobs(dom).completed.clone();
            return Ok(match done {
                Some(s) => (JOB_COMPLETED, s),
                None => (JOB_NONE, Vec::new()),
            });
        }
        Ok(self.job_now(dom).await?.unwrap_or((JOB_NONE, Vec::new())))
    }

    async fn job_now(&self, dom: &Dom) -> Result<Option<(i32, Vec<(String, Stat)>)>, VirError> {
        if !dom.active() {
            return Err(not_running());
        }
        let job = self.knobs(dom).job.clone();
        let Some(job) = job else { return Ok(None) };
        let q = job.qmp.execute("query-migrate", None).await?;
        let elapsed = job.started.elapsed().as_millis() as u64;
        Ok(Some((JOB_UNBOUNDED, stats_of(&q, elapsed, None))))
    }

    /// `AbortJob`: cancels the outgoing migration (QEMU's `migrate_cancel`); the
    /// migration call then undoes it and fails with libvirt's "canceled by client".
    pub async fn abort_job(&self, dom: &Arc<Dom>) -> Result<(), VirError> {
        if !dom.active() {
            return Err(not_running());
        }
        let job = self.knobs(dom).job.clone();
        let Some(job) = job else {
            return Err(VirError::operation_invalid(
                "no job is active on the domain",
            ));
        };
        job.aborted.store(true, Ordering::SeqCst);
        job.qmp.execute("migrate_cancel", None).await?;
        Ok(())
    }

    /// `MigrateSetMaxSpeed` (MiB/s; flags POSTCOPY 1: after a switch to post-copy):
    /// kept for the next migration and given to the QEMU of one in progress.
    pub async fn migrate_set_max_speed(
        &self,
        dom: &Dom,
        mib: u64,
        flags: u32,
    ) -> Result<(), VirError> {
        common::error::check_flags(flags, 1)?;
        if mib > BANDWIDTH_MAX {
            return Err(VirError::invalid_arg(format!(
                "bandwidth must be less than {}",
                BANDWIDTH_MAX + 1
            )));
        }
        let postcopy = flags & 1 != 0;
        let qmp = dom.lock().live.as_ref().map(|l| l.qmp.clone());
        if let Some(qmp) = qmp {
            let key = if postcopy {
                "max-postcopy-bandwidth"
            } else {
                "max-bandwidth"
            };
            let bytes = mib.saturating_mul(1 << 20).min(i64::MAX as u64 / 2);
            qmp.execute("migrate-set-parameters", Some(json!({ key: bytes })))
                .await?;
        }
        let mut k = self.knobs(dom);
        if postcopy {
            k.max_speed_postcopy = mib;
        } else {
            k.max_speed = mib;
        }
        Ok(())
    }

    pub fn migrate_get_max_speed(&self, dom: &Dom, flags: u32) -> Result<u64, VirError> {
        common::error::check_flags(flags, 1)?;
        let k = self.knobs(dom);
        Ok(if flags & 1 != 0 {
            k.max_speed_postcopy
        } else {
            k.max_speed
        })
    }

    /// `MigrateSetMaxDowntime` (ms): QEMU's `downtime-limit`, for the migration in
    /// progress and the next.
    pub async fn migrate_set_max_downtime(
        &self,
        dom: &Dom,
        ms: u64,
        flags: u32,
    ) -> Result<(), VirError> {
        common::error::check_flags(flags, 0)?;
        self.qmp_of(dom)?
            .execute(
                "migrate-set-parameters",
                Some(json!({ "downtime-limit": ms })),
            )
            .await?;
        Ok(())
    }

    /// `MigrateGetCompressionCache`: QEMU's XBZRLE cache size, bytes.
    pub async fn migrate_get_compression_cache(
        &self,
        dom: &Dom,
        flags: u32,
    ) -> Result<u64, VirError> {
        common::error::check_flags(flags, 0)?;
        let p = self
            .qmp_of(dom)?
            .execute("query-migrate-parameters", None)
            .await?;
        Ok(p.get("xbzrle-cache-size")
            .and_then(Value::as_u64)
            .unwrap_or(0))
    }

    pub async fn migrate_set_compression_cache(
        &self,
        dom: &Dom,
        bytes: u64,
        flags: u32,
    ) -> Result<(), VirError> {
        common::error::check_flags(flags, 0)?;
        self.qmp_of(dom)?
            .execute(
                "migrate-set-parameters",
                Some(json!({ "xbzrle-cache-size": bytes })),
            )
            .await?;
        Ok(())
    }

    /// `MigrateStartPostCopy`: the migration in progress switches to post-copy.
    pub async fn migrate_start_postcopy(&self, dom: &Dom, flags: u32) -> Result<(), VirError> {
        common::error::check_flags(flags, 0)?;
        if !dom.active() {
            return Err(not_running());
        }
        let job = self.knobs(dom).job.clone();
        let Some(job) = job else {
            return Err(VirError::operation_invalid(
                "post-copy can only be started while outgoing migration is in progress",
            ));
        };
        if !job.flags.contains(MigrateFlags::POSTCOPY) {
            return Err(VirError::operation_invalid(
                "switching to post-copy requires migration to be started with VIR_MIGRATE_POSTCOPY flag",
            ));
        }
        job.qmp.execute("migrate-start-postcopy", None).await?;
        Ok(())
    }
}

/// The destination's side: Prepare, Finish, and Recover for a source that lost track.
impl Driver {
    /// Prepare: the domain of `xml` starts here with `-incoming defer`, paused, and
    /// QEMU listens; the URI the source's QEMU sends to. `source_gone` resolves when
    /// the calling source daemon disconnects: an incoming QEMU that never got Finish
    /// is ended then.
    pub async fn migrate_prepare(
        &self,
        xml: &str,
        params: &HashMap<String, OwnedValue>,
        flags: u32,
        source_gone: Option<BoxFuture<'static, ()>>,
    ) -> Result<String, VirError> {
        let f = check_migrate_flags(flags)?;
        let p = Params::parse(params)?;
        let caps = self.caps().await?;
        let _call = self.calls.enter();
        let def = DomainDef::parse_new(xml, &caps)?;
        let (host, port) = match &p.uri {
            Some(u) => split_tcp(u)?,
            None => (None, None),
        };
        let listen_on = p
            .listen_address
            .clone()
            .or_else(|| host.clone())
            .unwrap_or_else(|| "0.0.0.0".into());
        let port = match port {
            Some(p) => p,
            None => free_port(&listen_on)?,
        };
        let (dom, added) = {
            let mut reg = self.reg();
            check_conflicts(&reg, &def)?;
            match reg.by_uuid.get(&def.uuid).cloned() {
                Some(d) => (d, false),
                None => {
                    let d = Dom::new(def.uuid, def.name.clone(), None, false);
                    reg.insert(d.name(), d.clone());
                    (d, true)
                }
            }
        };
        if added {
            self.publish_added(&dom).await;
        }
        let incoming = Incoming {
            listen: tcp(&listen_on, port),
            record: Migration::In {
                phase: InPhase::Prepared,
                flags,
                persist_xml: p.persist_xml.clone(),
            },
            postcopy: f.contains(MigrateFlags::POSTCOPY),
        };
        let r = {
            let _lock = dom.begin_job().await;
            if dom.active() {
                Err(VirError::operation_invalid(format!(
                    "domain '{}' is already active",
                    def.name
                )))
            } else {
                let from = Some(super::save::StartFrom::Incoming(incoming));
                self.start_locked(&dom, def, StartFlags::PAUSED, from).await
            }
        };
        if let Err(e) = r {
            if added {
                self.remove(&dom).await;
            }
            return Err(e);
        }
        if let (Some(gone), Some(d)) = (source_gone, self.arc()) {
            let dom = dom.clone();
            tokio::spawn(async move {
                gone.await;
                d.end_unfinished_incoming(&dom, "its source disconnected")
                    .await;
            });
        }
        // The source reaches QEMU where it asked to, else where it reached this daemon.
        Ok(tcp(host.as_deref().unwrap_or("127.0.0.1"), port))
    }

    /// Ends the incoming QEMU of `dom` if it never got Finish.
    async fn end_unfinished_incoming(&self, dom: &Arc<Dom>, why: &str) -> bool {
        let _lock = dom.begin_job().await;
        let unfinished = matches!(
            dom.lock().live.as_ref().and_then(|l| l.migration.clone()),
            Some(Migration::In {
                phase: InPhase::Prepared,
                ..
            })
        );
        if unfinished {
            tracing::warn!(domain = %dom.name(), "ending an incoming migration: {why}");
            let _ = self.destroy_locked(dom).await;
        }
        unfinished
    }

    /// Finish: with `cancelled` the incoming QEMU ends; else once QEMU has the whole
    /// guest it runs here (RESUMED/MIGRATED), or stays paused with PAUSED, and with
    /// PERSIST_DEST the domain is defined here. A Finish that fails ends the QEMU.
    pub async fn migrate_finish(
        &self,
        uuid: &str,
        flags: u32,
        cancelled: bool,
    ) -> Result<(), VirError> {
        let f: MigrateFlags = common::error::flags(flags)?;
        let dom = self.lookup_uuid_str(uuid)?;
        let _call = self.calls.enter();
        let lock = dom.begin_job().await;
        let persist_xml = match dom.lock().live.as_ref().and_then(|l| l.migration.clone()) {
            Some(Migration::In { persist_xml, .. }) => persist_xml,
            _ => {
                return Err(VirError::operation_invalid(format!(
                    "domain '{}' is not being migrated in",
                    dom.name()
                )))
            }
        };
        if cancelled {
            let _ = self.destroy_locked(&dom).await;
            return Ok(());
        }
        let record = Migration::In {
            phase: InPhase::Finishing,
            flags,
            persist_xml: persist_xml.clone(),
        };
        self.record_migration(&dom, Some(record)).await;
        if let Err(e) = self.run_incoming(&dom, f).await {
            let _ = self.destroy_locked(&dom).await;
            return Err(e);
        }
        drop(lock);
        if f.contains(MigrateFlags::PERSIST_DEST) {
            self.persist_migrated(&dom, persist_xml).await?;
        }
        Ok(())
    }

    /// The guest, whole in QEMU, runs here (or stays paused with PAUSED).
    async fn run_incoming(&self, dom: &Arc<Dom>, f: MigrateFlags) -> Result<(), VirError> {
        let qmp = self.qmp_of(dom)?;
        let deadline = Instant::now() + INCOMING_WAIT;
        loop {
            let q = qmp.execute("query-migrate", None).await?;
            match q.get("status").and_then(Value::as_str).unwrap_or("") {
                "completed" => break,
                "failed" | "cancelled" => {
                    return Err(VirError::operation_failed(
                        "job 'migration in' failed: the incoming stream broke",
                    ))
                }
                _ if Instant::now() >= deadline => {
                    return Err(VirError::new(
                        ErrorCode::OperationTimeout,
                        "job 'migration in': the guest's state did not arrive",
                    ))
                }
                _ => tokio::time::sleep(POLL).await,
            }
        }
        if f.contains(MigrateFlags::PAUSED) {
            self.transition(
                dom,
                &[DomainState::Paused],
                StateReason::Paused(PausedReason::User),
            );
            self.record_migration(dom, None).await;
            self.lifecycle(dom, DomainEvent::Suspended(SuspendedDetail::Paused))
                .await;
            return Ok(());
        }
        let migrated = StateReason::Running(RunningReason::Migrated);
        self.transition(dom, &[DomainState::Paused], migrated);
        if let Err(e) = qmp.execute("cont", None).await {
            self.transition(
                dom,
                &[DomainState::Running],
                StateReason::Paused(PausedReason::Migration),
            );
            return Err(e.into());
        }
        self.record_migration(dom, None).await;
        self.lifecycle(dom, DomainEvent::Resumed(ResumedDetail::Migrated))
            .await;
        Ok(())
    }

    /// PERSIST_DEST: the migrated domain is defined here (PERSIST_XML, else as it runs).
    async fn persist_migrated(&self, dom: &Dom, xml: Option<String>) -> Result<(), VirError> {
        let xml = match xml {
            Some(x) => x,
            None => dom
                .lock()
                .live
                .as_ref()
                .map(|l| l.def.to_xml_for(None, true))
                .ok_or_else(not_running)?,
        };
        self.define(&xml).await.map(|_| ())
    }

    /// Recover: a source that lost track asks whether the guest `uuid` runs here (1) or
    /// not (0); an incoming QEMU that never got Finish is ended first, so the answer
    /// stays true.
    pub async fn migrate_recover(&self, uuid: &str) -> Result<i32, VirError> {
        let Ok(dom) = self.lookup_uuid_str(uuid) else {
            return Ok(0);
        };
        let _call = self.calls.enter();
        if self
            .end_unfinished_incoming(&dom, "its source gave it up")
            .await
        {
            return Ok(0);
        }
        let g = dom.lock();
        let runs = g.live.is_some() && g.live.as_ref().is_some_and(|l| l.migration.is_none());
        Ok(i32::from(runs))
    }
}

/// A restarted daemon settles a migration its death cut short.
impl Driver {
    pub(super) async fn settle_migration(&self, dom: &Arc<Dom>, m: Migration) {
        let (Some(d), dom) = (self.arc(), dom.clone()) else {
            return;
        };
        // Each waits for the other side or for QEMU: the rest of the restart does not.
        match m {
            Migration::In {
                phase,
                flags,
                persist_xml,
            } => {
                tokio::spawn(async move {
                    d.settle_incoming(&dom, phase, flags, persist_xml).await;
                });
            }
            Migration::Out {
                dconuri,
                phase,
                resume,
                flags,
            } => {
                tokio::spawn(async move {
                    d.settle_outgoing(&dom, &dconuri, phase, resume, flags)
                        .await;
                });
            }
        }
    }

    /// The destination's side: QEMU that never got Finish is ended (its source resumes
    /// the guest); one whose Finish was cut runs the guest if the whole of it arrived.
    async fn settle_incoming(
        &self,
        dom: &Arc<Dom>,
        phase: InPhase,
        flags: u32,
        persist_xml: Option<String>,
    ) {
        let lock = dom.begin_job().await;
        if phase == InPhase::Prepared {
            tracing::warn!(domain = %dom.name(), "ending an incoming migration that never got Finish");
            let _ = self.destroy_locked(dom).await;
            return;
        }
        let f = MigrateFlags::from_bits_retain(flags);
        if let Err(e) = self.run_incoming(dom, f).await {
            tracing::warn!(domain = %dom.name(), "ending an incoming migration cut in Finish: {e}");
            let _ = self.destroy_locked(dom).await;
            return;
        }
        tracing::warn!(domain = %dom.name(), "finished an incoming migration cut in Finish");
        drop(lock);
        if f.contains(MigrateFlags::PERSIST_DEST) {
            if let Err(e) = self.persist_migrated(dom, persist_xml).await {
                tracing::warn!(domain = %dom.name(), "defining the migrated domain: {e}");
            }
        }
    }

    /// The source's side: before Finish the guest resumes here (no destination runs a
    /// guest without Finish); after, the destination says whether it runs it.
    async fn settle_outgoing(
        &self,
        dom: &Arc<Dom>,
        dconuri: &str,
        phase: OutPhase,
        resume: bool,
        flags: u32,
    ) {
        let uuid = dom.uuid.to_string();
        let runs_there = match phase {
            OutPhase::Confirm => Some(true),
            OutPhase::Perform => {
                // Best effort: the destination also ends it when this daemon's
                // connection went, or at its own restart.
                let _ = ask_destination(dconuri, &uuid, Duration::from_secs(5)).await;
                Some(false)
            }
            OutPhase::Finish => ask_destination(dconuri, &uuid, RECOVER_WAIT).await,
        };
        let lock = dom.begin_job().await;
        match runs_there {
            Some(true) => {
                tracing::warn!(domain = %dom.name(), "the destination runs the guest: ending the source");
                self.set_out_phase(dom, OutPhase::Confirm).await;
                let _ = self.destroy_locked(dom).await;
                drop(lock);
                let undefine = flags & MigrateFlags::UNDEFINE_SOURCE.bits() != 0;
                if undefine && dom.persistent() {
                    let _ = self.undefine(dom, 0).await;
                }
            }
            Some(false) => {
                tracing::warn!(domain = %dom.name(), "undoing a migration cut short: the guest stays here");
                if let Ok(qmp) = self.qmp_of(dom) {
                    let _ = qmp.execute("migrate_cancel", None).await;
                }
                self.end_out(dom, resume).await;
            }
            None => tracing::error!(domain = %dom.name(),
                "cannot learn from {dconuri} whether it runs the guest: it stays paused here"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_uris() {
        assert_eq!(
            split_tcp("tcp://10.0.0.2:49155").unwrap(),
            (Some("10.0.0.2".into()), Some(49155))
        );
        assert_eq!(split_tcp("tcp:host").unwrap(), (Some("host".into()), None));
        assert_eq!(
            split_tcp("tcp://[::1]:5").unwrap(),
            (Some("::1".into()), Some(5))
        );
        assert_eq!(
            split_tcp("tcp://[::1]").unwrap(),
            (Some("::1".into()), None)
        );
        assert!(split_tcp("unix:/x").is_err());
        assert!(split_tcp("tcp://h:99999").is_err());
        assert_eq!(tcp("::1", 7), "tcp:[::1]:7");
    }

    #[test]
    fn flags_are_libvirts() {
        assert!(check_migrate_flags(1)
            .unwrap_err()
            .message
            .contains("direct migration"));
        assert!(check_migrate_flags(2 | 4)
            .unwrap_err()
            .message
            .contains("tunnelled"));
        assert!(check_migrate_flags(2 | (1 << 30)).is_err());
        assert!(check_migrate_flags(2 | 1 | 8 | 16 | 32 | 2048 | 8192).is_ok());
    }

    #[test]
    fn stats_from_query_migrate() {
        let q = json!({"status": "completed", "downtime": 12, "setup-time": 3,
            "ram": {"total": 100, "transferred": 90, "remaining": 10, "mbps": 8.0,
                    "dirty-sync-count": 4, "page-size": 4096}});
        let s = stats_of(&q, 500, Some(true));
        assert_eq!(stat_u64(&s, "data_total"), 100);
        assert_eq!(stat_u64(&s, "memory_processed"), 90);
        assert_eq!(stat_u64(&s, "memory_bps"), 1_000_000);
        assert_eq!(stat_u64(&s, "downtime"), 12);
        assert_eq!(stat_u64(&s, "memory_iteration"), 4);
        assert!(s.contains(&("success".into(), Stat::Bool(true))));
    }
}
