//! The QEMU guest agent (qemu-ga) of a running domain, over its virtio-serial channel
//! `org.qemu.guest_agent.0`: QEMU listens on the channel's Unix socket, the daemon
//! connects for each exchange. An exchange starts with `guest-sync-delimited` (the
//! agent answers after a 0xFF byte, which drops whatever an earlier client left half
//! read), then one command and its one-line answer.
//!
//! Whether the guest has the port open is QEMU's `frontend-open` of the channel's
//! chardev: libvirt's "connected" state. A port nobody opened is refused at once
//! instead of waiting for a timeout, as libvirt does.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::error::{ErrorCode, VirError};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use crate::qmp::Qmp;
use crate::xml::{ChardevSource, Domain};

/// The channel name qemu-ga opens.
pub const CHANNEL: &str = "org.qemu.guest_agent.0";
/// How long one exchange may take (libvirt's default agent timeout).
const TIMEOUT: Duration = Duration::from_secs(5);
/// At most this much of an answer is read (a guest writes what it likes).
const MAX_REPLY: u64 = 4 << 20;

static SYNC_ID: AtomicU64 = AtomicU64::new(1);

pub fn not_configured() -> VirError {
    VirError::new(
        ErrorCode::ArgumentUnsupported,
        "QEMU guest agent is not configured",
    )
}

fn unresponsive(why: impl std::fmt::Display) -> VirError {
    VirError::new(ErrorCode::AgentUnresponsive, why)
}

/// The agent's channel in a running definition: its index among the channels (its
/// chardev is `charchannelN`) and the socket QEMU listens on (`run_dir` holds the
/// ones without a path, as the command line puts them).
pub fn channel(dom: &Domain, run_dir: &Path) -> Result<(usize, PathBuf), VirError> {
    let (i, ch) = dom
        .devices
        .channels
        .iter()
        .enumerate()
        .find(|(_, c)| c.target_name.as_deref() == Some(CHANNEL))
        .ok_or_else(not_configured)?;
    match &ch.source {
        ChardevSource::Unix { path, listen: true } => Ok((
            i,
            path.clone()
                .unwrap_or_else(|| run_dir.join(format!("charchannel{i}.sock"))),
        )),
        _ => Err(VirError::new(
            ErrorCode::ArgumentUnsupported,
            "the guest agent channel must be a Unix socket QEMU listens on (<source mode='bind'/>)",
        )),
    }
}

/// Whether the guest has opened the agent's port (query-chardev's `frontend-open`).
pub async fn connected(qmp: &Qmp, index: usize) -> Result<bool, VirError> {
    let label = format!("charchannel{index}");
    let chardevs = qmp.execute("query-chardev", None).await?;
    Ok(chardevs
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c.get("label").and_then(Value::as_str) == Some(label.as_str()))
        .and_then(|c| c.get("frontend-open"))
        .and_then(Value::as_bool)
        .unwrap_or(false))
}

/// Runs `command` with `args` and returns its `return` value. Commands after which
/// the agent answers nothing when they succeed (guest-shutdown) pass `reply: false`.
pub async fn execute(
    socket: &Path,
    command: &str,
    args: Option<Value>,
    reply: bool,
) -> Result<Value, VirError> {
    tokio::time::timeout(TIMEOUT, exchange(socket, command, args, reply))
        .await
        .map_err(|_| {
            unresponsive(format!(
                "the guest agent did not answer '{command}' within {} s",
                TIMEOUT.as_secs()
            ))
        })?
}

async fn exchange(
    socket: &Path,
    command: &str,
    args: Option<Value>,
    reply: bool,
) -> Result<Value, VirError> {
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|e| unresponsive(format!("cannot connect to the guest agent's channel: {e}")))?;
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read.take(MAX_REPLY));
    let io = |e: std::io::Error| unresponsive(format!("guest agent channel: {e}"));

    let id = SYNC_ID.fetch_add(1, Ordering::Relaxed);
    let mut sync = vec![0xffu8];
    sync.extend(
        json!({"execute": "guest-sync-delimited", "arguments": {"id": id}})
            .to_string()
            .bytes(),
    );
    sync.push(b'\n');
    write.write_all(&sync).await.map_err(io)?;
    // Everything up to the agent's 0xFF is an earlier client's leftover.
    let mut skipped = Vec::new();
    read.read_until(0xff, &mut skipped).await.map_err(io)?;
    if skipped.last() != Some(&0xff) {
        return Err(unresponsive("the guest agent closed its channel"));
    }
    loop {
        let answer = read_line(&mut read).await?;
        if answer.get("return").and_then(Value::as_u64) == Some(id) {
            break;
        }
    }

    let mut msg = json!({ "execute": command });
    if let Some(a) = args {
        msg["arguments"] = a;
    }
    let mut line = msg.to_string().into_bytes();
    line.push(b'\n');
    write.write_all(&line).await.map_err(io)?;
    if !reply {
        return Ok(Value::Null);
    }
    let answer = read_line(&mut read).await?;
    if let Some(v) = answer.get("return") {
        return Ok(v.clone());
    }
    let desc = answer
        .pointer("/error/desc")
        .and_then(Value::as_str)
        .unwrap_or("no answer");
    Err(VirError::internal(format!(
        "unable to execute QEMU agent command '{command}': {desc}"
    )))
}

/// One JSON answer: a line of its own.
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(read: &mut R) -> Result<Value, VirError> {
    let mut line = String::new();
    let n = read
        .read_line(&mut line)
        .await
        .map_err(|e| unresponsive(format!("guest agent channel: {e}")))?;
    if n == 0 {
        return Err(unresponsive("the guest agent closed its channel"));
    }
    serde_json::from_str(line.trim())
        .map_err(|e| VirError::internal(format!("the guest agent sent malformed JSON: {e}")))
}

/// libvirt's compact CPU list ("0-3,5") of the set indices.
pub fn cpu_list(ids: impl IntoIterator<Item = u32>) -> String {
    let mut ids: Vec<u32> = ids.into_iter().collect();
    ids.sort_unstable();
    ids.dedup();
    let mut parts = Vec::new();
    let mut i = 0;
    while i < ids.len() {
        let start = ids[i];
        while i + 1 < ids.len() && ids[i + 1] == ids[i] + 1 {
            i += 1;
        }
        parts.push(if ids[i] == start {
            start.to_string()
        } else {
            format!("{start}-{}", ids[i])
        });
        i += 1;
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_are_compact() {
        assert_eq!(cpu_list([0, 1, 2, 3, 5]), "0-3,5");
        assert_eq!(cpu_list([]), "");
        assert_eq!(cpu_list([7, 1, 2]), "1-2,7");
    }

    /// A fake agent on a socket pair: a leftover line before the sync, then answers.
    #[tokio::test]
    async fn exchange_syncs_past_leftovers_and_maps_errors() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("qga.sock");
        let listener = tokio::net::UnixListener::bind(&path).expect("bind");
        let agent = tokio::spawn(async move {
            for answer in [
                r#"{"return": {"host-name": "tinyguest"}}"#,
                r#"{"error": {"class": "GenericError", "desc": "no such user"}}"#,
            ] {
                let (s, _) = listener.accept().await.expect("accept");
                let (r, mut w) = s.into_split();
                let mut r = BufReader::new(r);
                let mut sync = Vec::new();
                r.read_until(b'\n', &mut sync).await.expect("sync");
                let v: Value = serde_json::from_slice(&sync[1..]).expect("sync json after 0xff");
                let id = v.pointer("/arguments/id").cloned().expect("id");
                w.write_all(b"{\"return\": 0}\n\xff").await.expect("write");
                w.write_all(format!("{{\"return\": {id}}}\n").as_bytes())
                    .await
                    .expect("write");
                let mut cmd = String::new();
                r.read_line(&mut cmd).await.expect("command");
                w.write_all(format!("{answer}\n").as_bytes())
                    .await
                    .expect("write");
            }
        });
        let v = execute(&path, "guest-get-host-name", None, true)
            .await
            .expect("answer");
        assert_eq!(v["host-name"], "tinyguest");
        let e = execute(&path, "guest-set-user-password", None, true)
            .await
            .expect_err("error");
        assert_eq!(
            e.message,
            "internal error: unable to execute QEMU agent command 'guest-set-user-password': no such user"
        );
        agent.await.expect("agent");
    }
}
