//! Serves a daemon's objects on every connection it has: the bus and each peer-to-peer
//! client of its socket. Objects are registered once here and appear on connections
//! that come later; signals go out on all of them. It also keeps the activity clock
//! that idle exit reads.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use serde::Serialize;
use zbus::connection::Builder;
use zbus::message::Type as MessageType;
use zbus::object_server::Interface;
use zbus::zvariant::{DynamicType, OwnedObjectPath, Value};
use zbus::Connection;

type Attach = Arc<dyn Fn(Connection) -> BoxFuture<'static, ()> + Send + Sync>;
type Prepare = Arc<dyn Fn(Builder<'static>) -> zbus::Result<Builder<'static>> + Send + Sync>;

struct Registration {
    /// When it was registered, to catch up connections built meanwhile.
    seq: u64,
    attach: Attach,
    /// Registers on a connection still being built, so no early call finds it missing.
    prepare: Prepare,
    detach: Attach,
}

type Key = (String, String);

struct Inner {
    conns: Vec<(u64, Connection, bool)>,
    next_id: u64,
    seq: u64,
    objects: BTreeMap<Key, Registration>,
    /// Objects removed while peer connections were being built, with when.
    removed: Vec<(u64, Key, Attach)>,
    building: usize,
    last_activity: Instant,
}

/// Cheap to clone; every clone is the same hub.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Mutex<Inner>>,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl Hub {
    pub fn new() -> Self {
        Hub {
            inner: Arc::new(Mutex::new(Inner {
                conns: Vec::new(),
                next_id: 0,
                seq: 0,
                objects: BTreeMap::new(),
                removed: Vec::new(),
                building: 0,
                last_activity: Instant::now(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic elsewhere must not take the whole daemon down with a poisoned lock.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every connection objects are served on now: the bus and each peer. The D-Bus
    /// layers emit their zbus-declared signals on each.
    pub fn connections(&self) -> Vec<Connection> {
        self.lock()
            .conns
            .iter()
            .map(|(_, c, _)| c.clone())
            .collect()
    }

    /// Serves an interface at `path` on every connection, now and later. `make` builds
    /// one instance per connection, so interface structs should be thin handles.
    pub async fn serve<I, F>(&self, path: OwnedObjectPath, make: F)
    where
        I: Interface,
        F: Fn() -> I + Send + Sync + 'static,
    {
        let make = Arc::new(make);
        let prepare: Prepare = {
            let path = path.clone();
            let make = make.clone();
            Arc::new(move |builder: Builder<'static>| {
                builder.serve_at(path.clone().into_inner(), make())
            })
        };
        let attach: Attach = {
            let path = path.clone();
            Arc::new(move |conn: Connection| {
                let iface = make();
                let path = path.clone();
                Box::pin(async move {
                    if let Err(e) = conn.object_server().at(&path, iface).await {
                        tracing::warn!("cannot serve {} at {path}: {e}", I::name());
                    }
                })
            })
        };
        let detach: Attach = {
            let path = path.clone();
            Arc::new(move |conn: Connection| {
                let path = path.clone();
                Box::pin(async move {
                    let _ = conn.object_server().remove::<I, _>(&path).await;
                })
            })
        };
        let conns = {
            let mut inner = self.lock();
            inner.seq += 1;
            let seq = inner.seq;
            inner.objects.insert(
                (path.to_string(), I::name().to_string()),
                Registration {
                    seq,
                    attach: attach.clone(),
                    prepare,
                    detach,
                },
            );
            inner
                .conns
                .iter()
                .map(|(_, c, _)| c.clone())
                .collect::<Vec<_>>()
        };
        for conn in conns {
            attach(conn).await;
        }
    }

    /// Stops serving an interface at `path` everywhere.
    pub async fn unserve<I: Interface>(&self, path: &OwnedObjectPath) {
        let (reg, conns) = {
            let mut inner = self.lock();
            let key = (path.to_string(), I::name().to_string());
            let reg = inner.objects.remove(&key);
            if let (Some(r), true) = (&reg, inner.building > 0) {
                inner.seq += 1;
                let seq = inner.seq;
                inner.removed.push((seq, key, r.detach.clone()));
            }
            (
                reg,
                inner
                    .conns
                    .iter()
                    .map(|(_, c, _)| c.clone())
                    .collect::<Vec<_>>(),
            )
        };
        if let Some(reg) = reg {
            for conn in conns {
                (reg.detach)(conn).await;
            }
        }
    }

    /// Adds the bus connection: every object is served on it and its method calls
    /// count as activity. Call it before owning the name, so no caller can come early.
    pub async fn attach(&self, conn: Connection) {
        let (id, attaches) = {
            let mut inner = self.lock();
            let id = inner.next_id;
            inner.next_id += 1;
            inner.conns.push((id, conn.clone(), false));
            inner.last_activity = Instant::now();
            let attaches: Vec<Attach> = inner.objects.values().map(|r| r.attach.clone()).collect();
            (id, attaches)
        };
        for attach in attaches {
            attach(conn.clone()).await;
        }
        self.watch(id, conn);
    }

    /// Builds a peer-to-peer server connection on an accepted socket with every object
    /// already served on it (a peer may call before the handshake has returned here),
    /// plus `extra` (the `Hello` shim). It is forgotten when the peer hangs up.
    pub async fn attach_peer(
        &self,
        builder: Builder<'static>,
        extra: impl FnOnce(Builder<'static>) -> zbus::Result<Builder<'static>>,
    ) -> zbus::Result<()> {
        let (snapshot, prepares) = {
            let mut inner = self.lock();
            inner.building += 1;
            let prepares: Vec<Prepare> =
                inner.objects.values().map(|r| r.prepare.clone()).collect();
            (inner.seq, prepares)
        };
        let built = async {
            let mut builder = extra(builder)?;
            for prepare in prepares {
                builder = prepare(builder)?;
            }
            builder.build().await
        }
        .await;
        let (conn, id, catch_up, stale) = {
            let mut inner = self.lock();
            inner.building -= 1;
            let conn = match built {
                Ok(c) => c,
                Err(e) => {
                    if inner.building == 0 {
                        inner.removed.clear();
                    }
                    return Err(e);
                }
            };
            let id = inner.next_id;
            inner.next_id += 1;
            inner.conns.push((id, conn.clone(), true));
            inner.last_activity = Instant::now();
            let catch_up: Vec<Attach> = inner
                .objects
                .values()
                .filter(|r| r.seq > snapshot)
                .map(|r| r.attach.clone())
                .collect();
            let stale: Vec<Attach> = inner
                .removed
                .iter()
                .filter(|(seq, key, _)| *seq > snapshot && !inner.objects.contains_key(key))
                .map(|(_, _, detach)| detach.clone())
                .collect();
            if inner.building == 0 {
                inner.removed.clear();
            }
            (conn, id, catch_up, stale)
        };
        for f in catch_up.into_iter().chain(stale) {
            f(conn.clone()).await;
        }
        self.watch(id, conn);
        Ok(())
    }

    fn watch(&self, id: u64, conn: Connection) {
        let hub = self.clone();
        let mut stream = zbus::MessageStream::from(&conn);
        drop(conn);
        tokio::spawn(async move {
            while let Some(msg) = stream.next().await {
                match msg {
                    Ok(m) if m.message_type() == MessageType::MethodCall => {
                        hub.lock().last_activity = Instant::now();
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            let mut inner = hub.lock();
            inner.conns.retain(|(i, _, _)| *i != id);
            inner.last_activity = Instant::now();
        });
    }

    /// When the daemon last had a call, or `None` while a peer is connected (an open
    /// client keeps the daemon alive, as a libvirt client connection does).
    pub fn idle_since(&self) -> Option<Instant> {
        let inner = self.lock();
        if inner.conns.iter().any(|(_, _, peer)| *peer) {
            None
        } else {
            Some(inner.last_activity)
        }
    }

    /// Emits a zbus-declared signal on every connection: `emit` gets the emitter of
    /// `path` on each one (e.g. `|e| async move { Connect::domain_event(&e, ..).await }`).
    pub async fn signal<F, Fut>(&self, path: &OwnedObjectPath, emit: F)
    where
        F: Fn(zbus::object_server::SignalEmitter<'static>) -> Fut,
        Fut: std::future::Future<Output = zbus::Result<()>>,
    {
        for conn in self.connections() {
            let e = match zbus::object_server::SignalEmitter::new(&conn, path.clone()) {
                Ok(e) => e.into_owned(),
                Err(err) => {
                    tracing::debug!("no signal emitter for {path}: {err}");
                    continue;
                }
            };
            if let Err(err) = emit(e).await {
                tracing::debug!("signal from {path} not sent: {err}");
            }
        }
    }

    /// Emits a signal on every connection.
    pub async fn emit<B>(&self, path: &OwnedObjectPath, iface: &str, member: &str, body: &B)
    where
        B: Serialize + DynamicType,
    {
        for conn in self.connections() {
            if let Err(e) = conn
                .emit_signal(None::<&str>, path.as_ref(), iface, member, body)
                .await
            {
                tracing::debug!("signal {iface}.{member} not sent: {e}");
            }
        }
    }

    /// Emits `org.freedesktop.DBus.Properties.PropertiesChanged` for `iface`.
    pub async fn properties_changed(
        &self,
        path: &OwnedObjectPath,
        iface: &str,
        changed: &[(&str, Value<'_>)],
    ) {
        let map: std::collections::HashMap<&str, &Value<'_>> =
            changed.iter().map(|(k, v)| (*k, v)).collect();
        let invalidated: &[&str] = &[];
        self.emit(
            path,
            "org.freedesktop.DBus.Properties",
            "PropertiesChanged",
            &(iface, map, invalidated),
        )
        .await;
    }
}
