//! The async QMP client: one connection to one QEMU monitor socket.
//!
//! Commands carry an id and their replies are matched by it, so callers on several tasks
//! share one connection; events go to an mpsc channel that closes when QEMU's side does
//! (EOF). Every command has a timeout so a hung QEMU never blocks the daemon.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot};

/// How long a command may take before the caller gets [`QmpError::Timeout`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("cannot connect to QEMU monitor '{path}': {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("QEMU monitor I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("QEMU monitor sent an invalid message: {0}")]
    Protocol(String),
    #[error("QEMU monitor did not answer '{0}' in time")]
    Timeout(String),
    #[error("QEMU monitor closed the connection")]
    Closed,
    #[error("QEMU refused '{command}': {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
}

impl From<QmpError> for common::error::VirError {
    fn from(e: QmpError) -> Self {
        use common::error::{ErrorCode, VirError};
        match e {
            QmpError::Timeout(_) => VirError::new(ErrorCode::OperationTimeout, e),
            QmpError::Command { .. } => VirError::operation_failed(e),
            _ => VirError::operation_failed(e),
        }
    }
}

/// An asynchronous QMP event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub name: String,
    pub data: Value,
}

type Pending = Arc<Mutex<Option<HashMap<u64, oneshot::Sender<Result<Value, QmpError>>>>>>;

/// A connected, capability-negotiated QMP monitor. Cheap to clone.
#[derive(Clone)]
pub struct Qmp {
    writer: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    pending: Pending,
    next_id: Arc<AtomicU64>,
    timeout: Duration,
    /// The greeting's QEMU version (major, minor, micro).
    pub version: (u64, u64, u64),
}

impl Qmp {
    /// Connects to `path`, reads the greeting and leaves negotiation mode
    /// (`qmp_capabilities`). The receiver yields events and ends at EOF.
    pub async fn connect(
        path: &Path,
        timeout: Duration,
    ) -> Result<(Qmp, mpsc::UnboundedReceiver<Event>), QmpError> {
        let stream = tokio::time::timeout(timeout, UnixStream::connect(path))
            .await
            .map_err(|_| QmpError::Timeout("connect".into()))?
            .map_err(|source| QmpError::Connect {
                path: path.display().to_string(),
                source,
            })?;
        let (read, write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let greeting = tokio::time::timeout(timeout, read_greeting(&mut lines))
            .await
            .map_err(|_| QmpError::Timeout("greeting".into()))??;
        let v = greeting
            .pointer("/QMP/version/qemu")
            .ok_or_else(|| QmpError::Protocol("greeting without QMP version".into()))?;
        let num = |k: &str| v.get(k).and_then(Value::as_u64).unwrap_or(0);
        let version = (num("major"), num("minor"), num("micro"));

        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        tokio::spawn(read_loop(lines, pending.clone(), events_tx));
        let qmp = Qmp {
            writer: Arc::new(tokio::sync::Mutex::new(write)),
            pending,
            next_id: Arc::new(AtomicU64::new(1)),
            timeout,
            version,
        };
        qmp.execute("qmp_capabilities", None).await?;
        Ok((qmp, events_rx))
    }

    /// Runs one command and returns its `return` value.
    pub async fn execute(
        &self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        let (id, rx) = self.register()?;
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let mut line = msg.to_string();
        line.push('\n');
        tracing::debug!(qmp_send = %line.trim_end());
        let result = tokio::time::timeout(self.timeout, async {
            {
                let mut w = self.writer.lock().await;
                w.write_all(line.as_bytes()).await?;
            }
            rx.await.map_err(|_| QmpError::Closed)?
        })
        .await;
        self.outcome(id, command, result)
    }

    /// Runs one command with a descriptor passed alongside (SCM_RIGHTS), as `getfd`
    /// and `add-fd` want it; returns its `return` value.
    pub async fn execute_with_fd(
        &self,
        command: &str,
        arguments: Option<Value>,
        fd: std::os::fd::BorrowedFd<'_>,
    ) -> Result<Value, QmpError> {
        let (id, rx) = self.register()?;
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(args) = arguments {
            msg["arguments"] = args;
        }
        let line = format!("{msg}\n");
        let sent = tokio::time::timeout(self.timeout, async {
            let w = self.writer.lock().await;
            let stream: &UnixStream = w.as_ref();
            let mut done = 0;
            // The descriptor rides on the first byte(s) sent; the rest follows plainly.
            while done == 0 {
                stream.writable().await?;
                match stream.try_io(tokio::io::Interest::WRITABLE, || {
                    use std::os::fd::AsRawFd;
                    let fds = [fd.as_raw_fd()];
                    let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
                    let iov = [std::io::IoSlice::new(line.as_bytes())];
                    nix::sys::socket::sendmsg::<()>(
                        stream.as_raw_fd(),
                        &iov,
                        &cmsg,
                        nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
                        None,
                    )
                    .map_err(std::io::Error::from)
                }) {
                    Ok(n) => done = n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(QmpError::Io(e)),
                }
            }
            let mut rest = &line.as_bytes()[done..];
            while !rest.is_empty() {
                stream.writable().await?;
                match stream.try_write(rest) {
                    Ok(n) => rest = &rest[n..],
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(QmpError::Io(e)),
                }
            }
            drop(w);
            rx.await.map_err(|_| QmpError::Closed)?
        })
        .await;
        self.outcome(id, command, sent)
    }

    /// A new command id, and the channel its reply comes on.
    fn register(&self) -> Result<(u64, oneshot::Receiver<Result<Value, QmpError>>), QmpError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let mut guard = self
            .pending
            .lock()
            .map_err(|_| QmpError::Protocol("poisoned".into()))?;
        guard.as_mut().ok_or(QmpError::Closed)?.insert(id, tx);
        Ok((id, rx))
    }

    /// What command `id` came to: QEMU's error names the command; one that got no
    /// reply (cut, or timed out) is forgotten.
    fn outcome(
        &self,
        id: u64,
        command: &str,
        r: Result<Result<Value, QmpError>, tokio::time::error::Elapsed>,
    ) -> Result<Value, QmpError> {
        match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(QmpError::Command { class, desc, .. })) => Err(QmpError::Command {
                command: command.to_string(),
                class,
                desc,
            }),
            Ok(Err(e)) => {
                self.forget(id);
                Err(e)
            }
            Err(_) => {
                self.forget(id);
                Err(QmpError::Timeout(command.to_string()))
            }
        }
    }

    fn forget(&self, id: u64) {
        if let Ok(mut g) = self.pending.lock() {
            if let Some(map) = g.as_mut() {
                map.remove(&id);
            }
        }
    }

    /// True once QEMU's side of the socket is gone.
    pub fn is_closed(&self) -> bool {
        self.pending.lock().map(|g| g.is_none()).unwrap_or(true)
    }
}

/// The greeting of a new connection. A monitor whose previous client went away (a
/// daemon killed mid-operation) keeps what it could not send then, events of a job
/// still running and late replies, and sends it ahead of the greeting: skipped here,
/// since an adopting daemon asks QEMU for its state anyway.
async fn read_greeting(
    lines: &mut tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
) -> Result<Value, QmpError> {
    loop {
        let line = lines.next_line().await?.ok_or(QmpError::Closed)?;
        let msg: Value = serde_json::from_str(&line)
            .map_err(|e| QmpError::Protocol(format!("greeting: {e}")))?;
        let stale = ["event", "return", "error"]
            .iter()
            .any(|k| msg.get(k).is_some());
        if !stale {
            return Ok(msg);
        }
        tracing::debug!(qmp_stale = %line, "left from the monitor's previous client");
    }
}

async fn read_loop(
    mut lines: tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    pending: Pending,
    events: mpsc::UnboundedSender<Event>,
) {
    loop {
        let line = match lines.next_line().await {
            Ok(Some(l)) => l,
            Ok(None) | Err(_) => break,
        };
        tracing::debug!(qmp_recv = %line);
        let msg: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!("QMP: unparsable message dropped: {e}");
                continue;
            }
        };
        if let Some(name) = msg.get("event").and_then(Value::as_str) {
            let data = msg.get("data").cloned().unwrap_or(Value::Null);
            let _ = events.send(Event {
                name: name.to_string(),
                data,
            });
            continue;
        }
        let Some(id) = msg.get("id").and_then(Value::as_u64) else {
            continue;
        };
        let reply = if let Some(ret) = msg.get("return") {
            Ok(ret.clone())
        } else if let Some(err) = msg.get("error") {
            let s = |k: &str| err.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            Err(QmpError::Command {
                command: String::new(),
                class: s("class"),
                desc: s("desc"),
            })
        } else {
            Err(QmpError::Protocol(format!("reply without return: {line}")))
        };
        let tx = pending
            .lock()
            .ok()
            .and_then(|mut g| g.as_mut().and_then(|m| m.remove(&id)));
        if let Some(tx) = tx {
            let _ = tx.send(reply);
        }
    }
    // EOF: fail everything still waiting and refuse new commands; dropping `events`
    // ends the event stream, which is how the owner learns QEMU went away.
    if let Ok(mut g) = pending.lock() {
        if let Some(map) = g.take() {
            for (_, tx) in map {
                let _ = tx.send(Err(QmpError::Closed));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    struct Qemu {
        child: std::process::Child,
        _dir: tempfile::TempDir,
        sock: std::path::PathBuf,
    }

    impl Drop for Qemu {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn qemu() -> Qemu {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("qmp.sock");
        let child = Command::new("qemu-system-x86_64")
            .args([
                "-S",
                "-nodefaults",
                "-nographic",
                "-machine",
                "none",
                "-qmp",
            ])
            .arg(format!("unix:{},server=on,wait=off", sock.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("qemu-system-x86_64 must be installed");
        Qemu {
            child,
            _dir: dir,
            sock,
        }
    }

    async fn connect(q: &Qemu) -> (Qmp, mpsc::UnboundedReceiver<Event>) {
        for _ in 0..500 {
            if q.sock.exists() {
                if let Ok(c) = Qmp::connect(&q.sock, Duration::from_secs(5)).await {
                    return c;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("QEMU's monitor never answered");
    }

    #[tokio::test]
    async fn greeting_commands_errors_and_eof() {
        let q = qemu();
        let (qmp, mut events) = connect(&q).await;
        assert!(qmp.version.0 >= 5, "version {:?}", qmp.version);
        let status = qmp
            .execute("query-status", None)
            .await
            .expect("query-status");
        assert_eq!(status["status"], "prelaunch");
        // Replies are matched by id even when many commands are in flight.
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let q2 = qmp.clone();
            tasks.push(tokio::spawn(
                async move { q2.execute("query-name", None).await },
            ));
        }
        for t in tasks {
            assert!(t.await.expect("join").is_ok());
        }
        match qmp.execute("no-such-command", None).await {
            Err(QmpError::Command { command, class, .. }) => {
                assert_eq!(command, "no-such-command");
                assert_eq!(class, "CommandNotFound");
            }
            other => panic!("unexpected {other:?}"),
        }
        // quit: SHUTDOWN event, then EOF ends the stream and later commands fail fast.
        let _ = qmp.execute("quit", None).await;
        let mut names = Vec::new();
        while let Some(ev) = tokio::time::timeout(Duration::from_secs(10), events.recv())
            .await
            .expect("EOF within 10 s")
        {
            names.push(ev.name);
        }
        assert!(names.iter().any(|n| n == "SHUTDOWN"), "events {names:?}");
        assert!(matches!(
            qmp.execute("query-status", None).await,
            Err(QmpError::Closed)
        ));
        assert!(qmp.is_closed());
    }

    #[tokio::test]
    async fn hung_monitor_times_out() {
        // A fake monitor that greets and then never answers.
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("fake.sock");
        let listener = tokio::net::UnixListener::bind(&sock).expect("bind");
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            s.write_all(
                b"{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 2, \"major\": 7}}, \"capabilities\": []}}\n",
            )
            .await
            .expect("greet");
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(s);
        });
        let start = std::time::Instant::now();
        let r = Qmp::connect(&sock, Duration::from_millis(300)).await;
        assert!(matches!(r, Err(QmpError::Timeout(ref c)) if c == "qmp_capabilities"));
        assert!(start.elapsed() < Duration::from_secs(3));
        server.abort();
    }

    /// What a monitor kept from its previous client comes before the greeting of the
    /// next connection; the client skips it.
    #[tokio::test]
    async fn stale_output_before_the_greeting_is_skipped() {
        use tokio::io::AsyncWriteExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("m.sock");
        let listener = tokio::net::UnixListener::bind(&sock).expect("bind");
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.expect("accept");
            let (r, mut w) = s.into_split();
            w.write_all(
                b"{\"event\": \"JOB_STATUS_CHANGE\", \"data\": {\"id\": \"j\", \"status\": \"concluded\"}}\n\
                  {\"return\": {}, \"id\": 7}\n\
                  {\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 2, \"major\": 7}}, \"capabilities\": []}}\n",
            )
            .await
            .expect("write");
            let mut lines = BufReader::new(r).lines();
            let cmd = lines.next_line().await.expect("read").expect("a command");
            let id: Value = serde_json::from_str(&cmd).expect("json");
            let reply = json!({"return": {}, "id": id["id"]}).to_string() + "\n";
            w.write_all(reply.as_bytes()).await.expect("reply");
            // Keep the connection open until the client is done.
            let _ = lines.next_line().await;
        });
        let (qmp, _events) = Qmp::connect(&sock, Duration::from_secs(5))
            .await
            .expect("connected past the stale lines");
        assert!(!qmp.is_closed());
        drop(qmp);
        server.abort();
    }
}
