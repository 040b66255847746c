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

mod destination;
mod job;
mod settle;
mod source;

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
/// One Recover call; it may wait for a Finish in progress there.
const ASK_WAIT: Duration = Duration::from_secs(70);
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

    /// Finish on the destination: Ok(Ok) it runs the guest, Ok(Err) it refused with
    /// libvirt's error (its QEMU is gone), Err: no answer, nobody knows yet.
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
            let d = Destination::dial(dconuri).await?;
            let p = d.proxy().await?;
            // A call that hangs is given up and asked again on a new connection.
            tokio::time::timeout(ASK_WAIT, p.recover(uuid))
                .await
                .map_err(|_| lost(dconuri, "no answer to Recover"))?
                .map_err(|e| d.error(&e))
        }
        .await;
        match answer {
            Ok(runs) => {
                tracing::info!(%uuid, runs, "{dconuri} answered whether it runs the guest");
                return Some(runs == 1);
            }
            Err(e) => tracing::warn!(%uuid, "asking the destination: {e}"),
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
        // The disks stay the source's until Finish runs the guest here (libvirt sets
        // it too): a destination that never runs it never took them.
        {"capability": "late-block-activate", "state": true},
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
