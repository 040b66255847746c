//! The forwarding core. Every method call reaching the front (on the bus or a peer
//! socket) is re-addressed to the daemon that owns it and sent on as the same bytes and
//! fds; the reply (or error) goes back the same way. Signals the daemons broadcast are
//! re-emitted unchanged from the front. The front keeps no state but the calls in flight.

use std::collections::{HashMap, HashSet};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::oneshot;
use zbus::message::{Flags, Type};
use zbus::zvariant::OwnedValue;
use zbus::{Connection, Message, MessageStream};

use common::access::{self, Access};

use crate::merge;
use crate::route::{self, Action, Backend, CONNECT_PATH};

const DBUS: &str = "org.freedesktop.DBus";
const PROPERTIES: &str = "org.freedesktop.DBus.Properties";
const INTROSPECTABLE: &str = "org.freedesktop.DBus.Introspectable";
/// How long the front waits for a backend's answer to a call of its own.
const ASK_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// The front: cheap to clone, one per process.
#[derive(Clone)]
pub struct Front {
    inner: Arc<Inner>,
}

struct Inner {
    bus: Connection,
    /// Who may call what: the front checks the real caller, then forwards as itself.
    access: Access,
    /// Calls sent to a daemon, by the serial of the forwarded message.
    pending: Mutex<HashMap<u32, oneshot::Sender<Message>>>,
    peers: Mutex<HashMap<u64, Connection>>,
    next_peer: AtomicU64,
    activity: Activity,
}

/// What keeps the front from exiting when idle.
struct Activity {
    last: Mutex<Instant>,
    in_flight: AtomicUsize,
    /// Bus clients that called the front and are still connected: they may be waiting
    /// for signals, which only reach them while the front runs.
    callers: Mutex<HashSet<String>>,
}

/// Counts a call in flight until dropped (then the idle clock starts again).
struct Busy(Front);

impl Busy {
    fn new(front: &Front) -> Busy {
        front
            .inner
            .activity
            .in_flight
            .fetch_add(1, Ordering::SeqCst);
        Busy(front.clone())
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let a = &self.0.inner.activity;
        a.in_flight.fetch_sub(1, Ordering::SeqCst);
        *lock(&a.last) = Instant::now();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A copy of a message's fds, in order, so a body's fd indices keep their meaning.
fn dup_fds(msg: &Message) -> zbus::Result<Vec<zbus::zvariant::OwnedFd>> {
    msg.body()
        .data()
        .fds()
        .iter()
        .map(|fd| {
            fd.as_fd()
                .try_clone_to_owned()
                .map(zbus::zvariant::OwnedFd::from)
                .map_err(zbus::Error::from)
        })
        .collect()
}

/// `builder` completed with `from`'s body as it is: same bytes, signature, byte order
/// and fds.
fn with_body_of(builder: zbus::message::Builder<'_>, from: &Message) -> zbus::Result<Message> {
    let body = from.body();
    let fds = dup_fds(from)?;
    // From the bytes: the parsed header signature cannot tell a body of one struct
    // `(ii)` from two values `ii`, and would rebuild the first as the second.
    let wire = common::wire::body_signature(from)
        .map_err(|e| zbus::Error::Failure(format!("unreadable header: {e}")))?;
    let signature = common::wire::signature_for(&wire)?;
    let builder = builder.endian(from.primary_header().endian_sig().into());
    // SAFETY: the bytes are a body that was valid for this signature in a message of the
    // same byte order (the body starts 8-aligned in both), and the fds are copies of the
    // original's in the same order, so the body's fd indices still point at them.
    unsafe { builder.build_raw_body(body.data().bytes(), signature, fds) }
}

/// libvirt's error for a call the bus could not deliver or the daemon did not answer.
fn bus_failure(to: Backend, call: &Message, reply: &Message) -> String {
    let hdr = call.header();
    let what = format!(
        "{}.{}",
        hdr.interface().map(|i| i.as_str()).unwrap_or("?"),
        hdr.member().map(|m| m.as_str()).unwrap_or("?")
    );
    let name = reply
        .header()
        .error_name()
        .map(|e| e.as_str().to_owned())
        .unwrap_or_default();
    let detail: String = reply.body().deserialize::<String>().unwrap_or_default();
    let why = if name == "org.freedesktop.DBus.Error.NoReply" {
        format!("{} exited before answering {what}", to.daemon())
    } else {
        format!("cannot reach {} for {what}", to.daemon())
    };
    common::VirError::internal(format!("{why}: {detail}")).message
}

impl Front {
    pub fn new(bus: Connection, access: Access) -> Front {
        Front {
            inner: Arc::new(Inner {
                bus,
                access,
                pending: Mutex::new(HashMap::new()),
                peers: Mutex::new(HashMap::new()),
                next_peer: AtomicU64::new(0),
                activity: Activity {
                    last: Mutex::new(Instant::now()),
                    in_flight: AtomicUsize::new(0),
                    callers: Mutex::new(HashSet::new()),
                },
            }),
        }
    }

    /// How long nothing has kept the front busy; `None` while a call is in flight, a
    /// peer is connected or a bus client that called it is still on the bus.
    pub fn idle_for(&self) -> Option<Duration> {
        let a = &self.inner.activity;
        if a.in_flight.load(Ordering::SeqCst) > 0
            || !lock(&self.inner.peers).is_empty()
            || !lock(&a.callers).is_empty()
        {
            return None;
        }
        Some(lock(&a.last).elapsed())
    }

    /// Asks the bus for every signal the four daemons emit.
    pub async fn subscribe_backends(&self) -> zbus::Result<()> {
        for b in Backend::ALL {
            self.bus_call(
                "AddMatch",
                &(format!("type='signal',sender='{}'", b.bus_name()),),
            )
            .await?;
        }
        Ok(())
    }

    async fn bus_call<B>(&self, member: &str, body: &B) -> zbus::Result<Message>
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
    {
        self.inner
            .bus
            .call_method(
                Some(DBUS),
                "/org/freedesktop/DBus",
                Some(DBUS),
                member,
                body,
            )
            .await
    }

    /// Reads everything the bus connection receives until it closes. Must not await
    /// a bus call itself (its reply would queue behind this very stream).
    pub async fn pump_bus(self, mut stream: MessageStream) {
        while let Some(msg) = stream.next().await {
            let Ok(msg) = msg else { continue };
            match msg.message_type() {
                Type::MethodCall => self.on_call(&self.inner.bus.clone(), msg).await,
                Type::MethodReturn | Type::Error => self.on_reply(msg),
                Type::Signal => self.on_signal(&msg).await,
            }
        }
        // The bus is gone: callers waiting for a daemon get an error, not a hang.
        lock(&self.inner.pending).clear();
    }

    /// Serves a peer-to-peer connection (given as its stream, made before the first
    /// message was read) until it closes.
    pub async fn serve_peer(self, mut stream: MessageStream) {
        let conn = Connection::from(&stream);
        let id = self.inner.next_peer.fetch_add(1, Ordering::Relaxed);
        lock(&self.inner.peers).insert(id, conn.clone());
        while let Some(msg) = stream.next().await {
            let Ok(msg) = msg else { continue };
            if msg.message_type() == Type::MethodCall {
                self.on_call(&conn, msg).await;
            }
        }
        lock(&self.inner.peers).remove(&id);
        *lock(&self.inner.activity.last) = Instant::now();
    }

    fn on_reply(&self, msg: Message) {
        let Some(serial) = msg.header().reply_serial() else {
            return;
        };
        if let Some(tx) = lock(&self.inner.pending).remove(&serial.get()) {
            let _ = tx.send(msg);
        }
    }

    async fn on_signal(&self, msg: &Message) {
        let hdr = msg.header();
        let from_bus = hdr.sender().is_none_or(|s| s.as_str() == DBUS);
        if from_bus {
            if hdr
                .member()
                .is_some_and(|m| m.as_str() == "NameOwnerChanged")
            {
                self.on_name_owner_changed(msg);
            }
            return;
        }
        // Unicast signals are not the daemons' broadcasts; only those are re-emitted.
        if hdr.destination().is_some() {
            return;
        }
        let (Some(path), Some(iface), Some(member)) = (hdr.path(), hdr.interface(), hdr.member())
        else {
            return;
        };
        let built = Message::signal(path.clone(), iface.clone(), member.clone())
            .and_then(|b| with_body_of(b, msg));
        let signal = match built {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("cannot re-emit {iface}.{member} on {path}: {e}");
                return;
            }
        };
        if let Err(e) = self.inner.bus.send(&signal).await {
            tracing::debug!("re-emitting {iface}.{member} on the bus: {e}");
        }
        let peers: Vec<Connection> = lock(&self.inner.peers).values().cloned().collect();
        for p in peers {
            let _ = p.send(&signal).await;
        }
    }

    fn on_name_owner_changed(&self, msg: &Message) {
        let Ok((name, _old, new)) = msg.body().deserialize::<(String, String, String)>() else {
            return;
        };
        if new.is_empty() && lock(&self.inner.activity.callers).remove(&name) {
            *lock(&self.inner.activity.last) = Instant::now();
            let front = self.clone();
            tokio::spawn(async move {
                let _ = front.bus_call("RemoveMatch", &(gone_rule(&name),)).await;
            });
        }
    }

    /// Remembers a bus caller until it leaves the bus (see [`Activity::callers`]).
    fn watch_caller(&self, origin: &Connection, msg: &Message) {
        if !origin.is_bus() {
            return;
        }
        let Some(sender) = msg.header().sender().map(|s| s.to_string()) else {
            return;
        };
        if !lock(&self.inner.activity.callers).insert(sender.clone()) {
            return;
        }
        let front = self.clone();
        tokio::spawn(async move {
            if let Err(e) = front.bus_call("AddMatch", &(gone_rule(&sender),)).await {
                // Unwatched, it must not keep the front from its idle exit forever.
                tracing::warn!("cannot watch caller {sender}: {e}");
                lock(&front.inner.activity.callers).remove(&sender);
                return;
            }
            // It may have left before the rule was in place.
            let here = front
                .bus_call("NameHasOwner", &(sender.as_str(),))
                .await
                .and_then(|r| r.body().deserialize::<bool>())
                .unwrap_or(false);
            if !here {
                lock(&front.inner.activity.callers).remove(&sender);
                let _ = front.bus_call("RemoveMatch", &(gone_rule(&sender),)).await;
            }
        });
    }

    async fn on_call(&self, origin: &Connection, msg: Message) {
        *lock(&self.inner.activity.last) = Instant::now();
        self.watch_caller(origin, &msg);
        let hdr = msg.header();
        let path = hdr.path().map_or("/", |p| p.as_str()).to_owned();
        let iface = hdr.interface().map(|i| i.as_str().to_owned());
        let member = hdr.member().map_or("", |m| m.as_str()).to_owned();
        let property = (iface.as_deref() == Some(PROPERTIES) && member != "GetAll")
            .then(|| property_name(&msg))
            .flatten();
        let action = route::classify(&path, iface.as_deref(), &member, property.as_deref());
        tracing::debug!(%path, ?iface, %member, ?action, "call");
        if matches!(action, Action::Forward { .. } | Action::MergedGetAll) {
            let iface_name = iface.as_deref().unwrap_or("");
            // The one flag that raises an action: the domain XML with secrets.
            let flags = if member == "GetXMLDesc" {
                msg.body().deserialize::<u32>().unwrap_or(0)
            } else {
                0
            };
            let needs = access::action_for_flags(iface_name, &member, flags);
            let sender = hdr.sender().map(|s| s.to_string());
            if !self.inner.access.allowed_now(sender.as_deref(), needs) {
                // Asking the bus and polkit is a bus call: never from the pump itself.
                let (front, origin) = (self.clone(), origin.clone());
                let busy = Busy::new(self);
                tokio::spawn(async move {
                    let _busy = busy;
                    let checked = front
                        .inner
                        .access
                        .check(sender.as_deref(), needs, &member)
                        .await;
                    let r = match checked {
                        Ok(()) => front.dispatch(&origin, msg, action, &path, &member).await,
                        Err(e) => error(&origin, &msg, "org.libvirt.Error", &e.message).await,
                    };
                    if let Err(e) = r {
                        tracing::debug!("{path} {member}: {e}");
                    }
                });
                return;
            }
        }
        if let Err(e) = self.dispatch(origin, msg, action, &path, &member).await {
            tracing::debug!("{path} {member}: {e}");
        }
    }

    async fn dispatch(
        &self,
        origin: &Connection,
        msg: Message,
        action: Action,
        path: &str,
        member: &str,
    ) -> zbus::Result<()> {
        match action {
            Action::Hello => reply(origin, &msg, &(":1.1",)).await,
            Action::Peer => self.peer(origin, &msg, member).await,
            // A node's own introspection, flattened: zbus inlines the interfaces of child
            // nodes, which busctl misreads ("Unexpected signal <arg> direction");
            // libvirt-dbus lists children by name only.
            Action::Forward { to, .. }
                if msg.header().interface().map(|i| i.as_str()) == Some(INTROSPECTABLE)
                    && member == "Introspect" =>
            {
                let (front, origin, path) = (self.clone(), origin.clone(), path.to_owned());
                tokio::spawn(async move {
                    let _busy = Busy::new(&front);
                    if let Err(e) = front.introspect_of(&origin, &msg, &path, &[to]).await {
                        tracing::debug!("introspection of {path}: {e}");
                    }
                });
                Ok(())
            }
            Action::Forward { to, double_wrap } => self.forward(origin, msg, to, double_wrap).await,
            Action::MergedIntrospect | Action::MergedGetAll => {
                let (front, origin, path) = (self.clone(), origin.clone(), path.to_owned());
                tokio::spawn(async move {
                    let _busy = Busy::new(&front);
                    let r = if action == Action::MergedGetAll {
                        front.merged_get_all(&origin, &msg).await
                    } else {
                        front.merged_introspect(&origin, &msg, &path).await
                    };
                    if let Err(e) = r {
                        tracing::debug!("merged answer: {e}");
                    }
                });
                Ok(())
            }
            Action::UnknownObject => {
                error(
                    origin,
                    &msg,
                    "org.freedesktop.DBus.Error.UnknownObject",
                    &format!("Unknown object '{path}'."),
                )
                .await
            }
        }
    }

    async fn peer(&self, origin: &Connection, msg: &Message, member: &str) -> zbus::Result<()> {
        match member {
            "Ping" => reply(origin, msg, &()).await,
            "GetMachineId" => {
                let id = std::fs::read_to_string("/etc/machine-id").unwrap_or_default();
                reply(origin, msg, &(id.trim(),)).await
            }
            _ => {
                error(
                    origin,
                    msg,
                    "org.freedesktop.DBus.Error.UnknownMethod",
                    &format!("Unknown method '{member}'"),
                )
                .await
            }
        }
    }

    /// Sends the call on now (so calls reach a daemon in the order they came) and
    /// relays the answer from a task of its own.
    async fn forward(
        &self,
        origin: &Connection,
        call: Message,
        to: Backend,
        double_wrap: bool,
    ) -> zbus::Result<()> {
        let out = build_forward(&call, to)?;
        let no_reply = call
            .primary_header()
            .flags()
            .contains(Flags::NoReplyExpected);
        if no_reply {
            return self.inner.bus.send(&out).await;
        }
        let serial = out.primary_header().serial_num().get();
        let (tx, rx) = oneshot::channel();
        lock(&self.inner.pending).insert(serial, tx);
        let busy = Busy::new(self);
        if let Err(e) = self.inner.bus.send(&out).await {
            lock(&self.inner.pending).remove(&serial);
            return error(
                origin,
                &call,
                "org.libvirt.Error",
                &common::VirError::internal(format!("cannot forward to {}: {e}", to.daemon()))
                    .message,
            )
            .await;
        }
        let origin = origin.clone();
        tokio::spawn(async move {
            let _busy = busy;
            let r = match rx.await {
                Ok(answer) => relay(&origin, &call, &answer, to, double_wrap).await,
                Err(_) => {
                    let text = common::VirError::internal(format!(
                        "the connection to {} closed during the call",
                        to.daemon()
                    ))
                    .message;
                    error(&origin, &call, "org.libvirt.Error", &text).await
                }
            };
            if let Err(e) = r {
                tracing::debug!("relaying the answer: {e}");
            }
        });
        Ok(())
    }

    /// The introspection of a node every daemon serves part of.
    async fn merged_introspect(
        &self,
        origin: &Connection,
        msg: &Message,
        path: &str,
    ) -> zbus::Result<()> {
        self.introspect_of(origin, msg, path, &Backend::ALL).await
    }

    /// The introspection of `path` from `backends`, merged into one document whose
    /// child nodes are listed by name.
    async fn introspect_of(
        &self,
        origin: &Connection,
        msg: &Message,
        path: &str,
        backends: &[Backend],
    ) -> zbus::Result<()> {
        let answers = futures_util::future::join_all(
            backends
                .iter()
                .map(|b| self.ask(*b, path, INTROSPECTABLE, "Introspect", &())),
        )
        .await;
        let mut docs = Vec::new();
        let mut refused = None;
        for (b, a) in backends.iter().zip(answers) {
            match a.and_then(|m| m.body().deserialize::<String>()) {
                Ok(xml) => docs.push(xml),
                // The one daemon's own answer (an object that is gone) goes back as is.
                Err(zbus::Error::MethodError(name, text, _)) if backends.len() == 1 => {
                    refused = Some((name.to_string(), text.unwrap_or_default()));
                }
                Err(e) => tracing::warn!("{} left out of {path}'s introspection: {e}", b.daemon()),
            }
        }
        if let Some((name, text)) = refused {
            return error(origin, msg, &name, &text).await;
        }
        if docs.is_empty() {
            let text = common::VirError::internal("no daemon answered the introspection").message;
            return error(origin, msg, "org.libvirt.Error", &text).await;
        }
        match merge::introspection(&docs) {
            Ok(xml) => reply(origin, msg, &(xml,)).await,
            Err(e) => {
                let text = common::VirError::internal(format!("bad introspection: {e}")).message;
                error(origin, msg, "org.libvirt.Error", &text).await
            }
        }
    }

    /// A call of the front's own to a backend (merged introspection, `GetAll`): its
    /// reply is matched by the bus loop, as forwarded calls' replies are, and waited
    /// for a bounded time, so a backend that never answers is an error, not a hang.
    /// (zbus's own `call_method` here lost a reply now and then while the backends
    /// were being activated, and the caller waited forever.)
    async fn ask<B>(
        &self,
        to: Backend,
        path: &str,
        iface: &str,
        member: &str,
        body: &B,
    ) -> zbus::Result<Message>
    where
        B: serde::Serialize + zbus::zvariant::DynamicType,
    {
        let call = Message::method_call(path, member)?
            .destination(to.bus_name())?
            .interface(iface)?
            .build(body)?;
        let serial = call.primary_header().serial_num().get();
        let (tx, rx) = oneshot::channel();
        lock(&self.inner.pending).insert(serial, tx);
        if let Err(e) = self.inner.bus.send(&call).await {
            lock(&self.inner.pending).remove(&serial);
            return Err(e);
        }
        let answer = match tokio::time::timeout(ASK_WAIT, rx).await {
            Ok(Ok(m)) => m,
            Ok(Err(_)) => {
                return Err(zbus::Error::Failure(format!(
                    "the connection to {} closed during the call",
                    to.daemon()
                )))
            }
            Err(_) => {
                lock(&self.inner.pending).remove(&serial);
                return Err(zbus::Error::Failure(format!(
                    "{} did not answer {member} within {ASK_WAIT:?}",
                    to.daemon()
                )));
            }
        };
        if answer.message_type() == Type::Error {
            let name = answer
                .header()
                .error_name()
                .map(|n| n.to_owned().into())
                .ok_or(zbus::Error::MissingField)?;
            let text = answer.body().deserialize::<String>().ok();
            return Err(zbus::Error::MethodError(name, text, answer));
        }
        Ok(answer)
    }

    /// `GetAll` of the Connect object from all four, merged and double-wrapped.
    async fn merged_get_all(&self, origin: &Connection, msg: &Message) -> zbus::Result<()> {
        let iface: String = msg.body().deserialize().unwrap_or_default();
        let body = (iface.as_str(),);
        let answers = futures_util::future::join_all(
            Backend::ALL
                .iter()
                .map(|b| self.ask(*b, CONNECT_PATH, PROPERTIES, "GetAll", &body)),
        )
        .await;
        let mut dicts = Vec::new();
        let mut first_error = None;
        for a in answers {
            match a.and_then(|m| m.body().deserialize::<HashMap<String, OwnedValue>>()) {
                Ok(d) => dicts.push(d),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match (dicts.is_empty(), first_error) {
            (true, Some(zbus::Error::MethodError(name, text, _))) => {
                error(
                    origin,
                    msg,
                    name.as_str(),
                    text.as_deref().unwrap_or_default(),
                )
                .await
            }
            (true, e) => {
                let text = common::VirError::internal(format!(
                    "no daemon answered GetAll: {}",
                    e.map(|e| e.to_string()).unwrap_or_default()
                ))
                .message;
                error(origin, msg, "org.libvirt.Error", &text).await
            }
            (false, _) => reply(origin, msg, &(merge::double_wrapped(dicts),)).await,
        }
    }
}

fn gone_rule(name: &str) -> String {
    format!(
        "type='signal',sender='{DBUS}',interface='{DBUS}',member='NameOwnerChanged',arg0='{name}'"
    )
}

/// The property a `Properties.Get` (`ss`) or `Set` (`ssv`) names.
fn property_name(msg: &Message) -> Option<String> {
    let body = msg.body();
    if let Ok((_, p)) = body.deserialize::<(String, String)>() {
        return Some(p);
    }
    body.deserialize::<(String, String, OwnedValue)>()
        .ok()
        .map(|(_, p, _)| p)
}

/// The same call, addressed to `to`'s well-known name (the bus activates it if needed).
fn build_forward(call: &Message, to: Backend) -> zbus::Result<Message> {
    let hdr = call.header();
    let (Some(path), Some(member)) = (hdr.path(), hdr.member()) else {
        return Err(zbus::Error::MissingField);
    };
    let mut b = Message::method_call(path.clone(), member.clone())?.destination(to.bus_name())?;
    if let Some(i) = hdr.interface() {
        b = b.interface(i.clone())?;
    }
    if call
        .primary_header()
        .flags()
        .contains(Flags::NoReplyExpected)
    {
        b = b.with_flags(Flags::NoReplyExpected)?;
    }
    if call
        .primary_header()
        .flags()
        .contains(Flags::AllowInteractiveAuth)
    {
        b = b.with_flags(Flags::AllowInteractiveAuth)?;
    }
    with_body_of(b, call)
}

/// The daemon's answer to `call`, back to its caller: unchanged, except that the bus'
/// own errors (daemon gone, not activatable) become libvirt's and `GetAll` is
/// double-wrapped.
async fn relay(
    origin: &Connection,
    call: &Message,
    answer: &Message,
    to: Backend,
    double_wrap: bool,
) -> zbus::Result<()> {
    let hdr = answer.header();
    if answer.message_type() == Type::Error {
        if hdr.sender().is_some_and(|s| s.as_str() == DBUS) {
            return error(
                origin,
                call,
                "org.libvirt.Error",
                &bus_failure(to, call, answer),
            )
            .await;
        }
        let Some(name) = hdr.error_name() else {
            return Err(zbus::Error::MissingField);
        };
        let call_hdr = call.header();
        let libvirts = match name.as_str() {
            "org.freedesktop.DBus.Error.UnknownObject" => {
                call_hdr.path().and_then(|p| route::not_found(p))
            }
            "org.freedesktop.DBus.Error.UnknownMethod" => {
                match (call_hdr.interface(), call_hdr.member()) {
                    (Some(i), Some(m)) => route::not_supported(i, m),
                    _ => None,
                }
            }
            _ => None,
        };
        if let Some(text) = libvirts {
            return error(origin, call, "org.libvirt.Error", &text).await;
        }
        let out = with_body_of(Message::error(&call.header(), name.clone())?, answer)?;
        return origin.send(&out).await;
    }
    if double_wrap {
        if let Ok(dict) = answer.body().deserialize::<HashMap<String, OwnedValue>>() {
            return reply(origin, call, &(merge::double_wrapped(vec![dict]),)).await;
        }
    }
    let out = with_body_of(Message::method_return(&call.header())?, answer)?;
    origin.send(&out).await
}

async fn reply<B>(origin: &Connection, call: &Message, body: &B) -> zbus::Result<()>
where
    B: serde::Serialize + zbus::zvariant::DynamicType,
{
    if call
        .primary_header()
        .flags()
        .contains(Flags::NoReplyExpected)
    {
        return Ok(());
    }
    origin
        .send(&Message::method_return(&call.header())?.build(body)?)
        .await
}

async fn error(origin: &Connection, call: &Message, name: &str, text: &str) -> zbus::Result<()> {
    if call
        .primary_header()
        .flags()
        .contains(Flags::NoReplyExpected)
    {
        return Ok(());
    }
    origin
        .send(&Message::error(&call.header(), name)?.build(&(text,))?)
        .await
}
