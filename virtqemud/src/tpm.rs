//! Emulated TPMs (`<tpm><backend type='emulator'/>`), run by swtpm as libvirt does.
//!
//! Each start launches `swtpm socket --daemon --terminate`: swtpm sets up its control
//! socket, detaches and exits on its own when QEMU, its only client, disconnects. The
//! daemon is a child subreaper, so the detached swtpm comes back to it as its child: it
//! is watched through a pidfd (`common::child`) and reaped when it exits, never left a
//! zombie. After a daemon restart it belongs to init and still ends with its QEMU.
//! Until QEMU has connected, a failed start must stop swtpm itself: [`Swtpm`] does so
//! when dropped unless the start went through.
//!
//! swtpm runs as QEMU's user; its control socket and pidfile are in QEMU's folder of
//! the run. The TPM's state lives in `<swtpm>/<uuid>/tpm2` (libvirt:
//! /var/lib/libvirt/swtpm in system mode, ~/.config/libvirt/qemu/swtpm in session
//! mode), filled by swtpm on first use (a fresh TPM is manufactured then); the driver
//! hands `<swtpm>/<uuid>` to the run's user and takes it back afterwards. Undefine removes it unless
//! `VIR_DOMAIN_UNDEFINE_KEEP_TPM`, as libvirt does.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::child::ChildWatch;
use common::error::VirError;

use crate::xml::Domain;

pub const SWTPM: &str = "swtpm";

/// A started swtpm: its control socket, its pidfile while it is not handed over, and
/// the watch that reaps it.
pub struct Swtpm {
    pub socket: PathBuf,
    pidfile: Option<PathBuf>,
    watch: Option<ChildWatch>,
}

impl Swtpm {
    /// QEMU runs and has connected: from now on swtpm ends with it, and is reaped then.
    pub fn handed_over(mut self) {
        self.pidfile = None;
        reap_when_gone(self.watch.take());
    }
}

/// Waits, in the background, for a watched swtpm to exit, which reaps it.
fn reap_when_gone(watch: Option<ChildWatch>) {
    let (Some(w), Ok(rt)) = (watch, tokio::runtime::Handle::try_current()) else {
        return;
    };
    rt.spawn(async move { w.exited().await });
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let Some(pidfile) = self.pidfile.take() else {
            return;
        };
        // Our own swtpm, by the pidfd opened on the pid it wrote; it has no client yet.
        if let Some(w) = &self.watch {
            w.signal(nix::sys::signal::Signal::SIGTERM);
        }
        reap_when_gone(self.watch.take());
        let _ = std::fs::remove_file(&pidfile);
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Waits until the swtpm of the run whose folder is `run_dir` has exited (it ends when
/// QEMU disconnects), so it writes nothing into its state after that is given back;
/// kills it when it takes longer than `grace`. A no-op when the run had no swtpm.
pub async fn wait_gone(run_dir: &Path, grace: Duration) {
    for w in processes(run_dir) {
        if tokio::time::timeout(grace, w.exited()).await.is_err() {
            tracing::warn!(pid = w.pid(), "swtpm outlived its QEMU: killing it");
            w.signal(nix::sys::signal::Signal::SIGKILL);
            let _ = tokio::time::timeout(grace, w.exited()).await;
        }
    }
}

/// Kills the swtpm of a run whose start was cut short (it has no QEMU to end with).
pub async fn kill(run_dir: &Path) {
    for w in processes(run_dir) {
        tracing::warn!(pid = w.pid(), "killing the swtpm of an interrupted start");
        w.signal(nix::sys::signal::Signal::SIGKILL);
        let _ = tokio::time::timeout(Duration::from_secs(5), w.exited()).await;
    }
}

/// The swtpm processes of the run whose folder is `run_dir`: the one its pidfile names,
/// and any other whose command line names the run's socket (a swtpm started just before
/// the daemon died may not have written its pidfile yet). Each is pinned by its pidfd
/// before it is checked, so a recycled PID is never signalled.
fn processes(run_dir: &Path) -> Vec<ChildWatch> {
    let socket = run_dir.join("swtpm.sock").to_string_lossy().into_owned();
    let from_pidfile = std::fs::read_to_string(run_dir.join("swtpm.pid"))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .filter(|p| *p > 1);
    let mut pids: Vec<u32> = from_pidfile
        .into_iter()
        .chain(crate::process::pids_mentioning(&socket))
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids.into_iter()
        .filter_map(|pid| {
            let w = ChildWatch::new(pid as i32).ok()?;
            let ours =
                !w.has_exited() && is_swtpm(pid) && crate::process::cmdline_mentions(pid, &socket);
            ours.then_some(w)
        })
        .collect()
}

/// Whether the program of `pid` is swtpm (QEMU's command line names the socket too).
fn is_swtpm(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .ok()
        .and_then(|raw| {
            let argv0 = raw.split(|b| *b == 0).next()?.to_vec();
            Some(String::from_utf8_lossy(&argv0).ends_with("swtpm"))
        })
        .unwrap_or(false)
}

/// The state folder of a domain's TPM (`version` 1.2 or 2.0).
pub fn state_dir(root: &Path, uuid: &str, version: &str) -> PathBuf {
    root.join(uuid)
        .join(if version == "1.2" { "tpm1.2" } else { "tpm2" })
}

/// The TPM version of the emulated TPM a definition asks for, libvirt's default being
/// 2.0; `None` without one to run (none, or an external one).
fn version(dom: &Domain) -> Result<Option<String>, VirError> {
    let Some(t) = dom.devices.tpms.first() else {
        return Ok(None);
    };
    if dom.devices.tpms.len() > 1 {
        return Err(VirError::unsupported("only one <tpm> device is supported"));
    }
    // An external TPM's swtpm is someone else's: nothing to start or keep here.
    if t.backend == "external" {
        return Ok(None);
    }
    if t.backend != "emulator" {
        return Err(VirError::unsupported(format!(
            "tpm backend type '{}' is not implemented (only 'emulator')",
            t.backend
        )));
    }
    let v = t.version.clone().unwrap_or_else(|| "2.0".into());
    match (v.as_str(), t.model.as_str()) {
        ("2.0", _) | ("1.2", "tpm-tis") => Ok(Some(v)),
        ("1.2", m) => Err(VirError::unsupported(format!(
            "tpm model '{m}' needs TPM version 2.0"
        ))),
        (v, _) => Err(VirError::unsupported(format!(
            "tpm backend version '{v}': expected 1.2 or 2.0"
        ))),
    }
}

/// Creates the state folder of the domain's emulated TPM, if it has one; returns the
/// domain's folder above it (`<swtpm>/<uuid>`), what swtpm's user must own.
pub fn prepare(dom: &Domain, uuid: &str, state_root: &Path) -> Result<Option<PathBuf>, VirError> {
    let Some(version) = version(dom)? else {
        return Ok(None);
    };
    let state = state_dir(state_root, uuid, &version);
    common::persist::create_dir_all(&state, 0o700)
        .map_err(|e| VirError::system(format!("cannot create '{}'", state.display()), &e))?;
    Ok(Some(state_root.join(uuid)))
}

/// Starts swtpm for the domain's emulated TPM, if it has one (its state folder made by
/// [`prepare`]), as `user`, with its socket and pidfile in `run_dir`.
pub async fn start(
    dom: &Domain,
    uuid: &str,
    state_root: &Path,
    run_dir: &Path,
    log: &Path,
    user: Option<&crate::security::Identity>,
) -> Result<Option<Swtpm>, VirError> {
    let Some(version) = version(dom)? else {
        return Ok(None);
    };
    let state = state_dir(state_root, uuid, &version);
    let socket = run_dir.join("swtpm.sock");
    let pidfile = run_dir.join("swtpm.pid");
    let _ = std::fs::remove_file(&socket);
    let _ = std::fs::remove_file(&pidfile);
    let opt = |k: &str, p: &Path, extra: &str| -> Result<String, VirError> {
        let p = p.to_str().filter(|p| !p.contains(',')).ok_or_else(|| {
            VirError::unsupported(format!(
                "path '{}' cannot be given to swtpm (not UTF-8 or has a comma)",
                p.display()
            ))
        })?;
        Ok(format!("{k}={p}{extra}"))
    };
    let mut cmd = Command::new(SWTPM);
    cmd.arg("socket");
    if version == "2.0" {
        cmd.arg("--tpm2");
    }
    cmd.args(["--tpmstate", &opt("dir", &state, ",mode=0600")?])
        .args(["--ctrl", &opt("type=unixio,path", &socket, ",mode=0600")?])
        .args(["--log", &opt("file", log, "")?])
        .args(["--pid", &opt("file", &pidfile, "")?])
        .args(["--terminate", "--daemon"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(u) = user {
        // std drops the supplementary groups when root switches: swtpm needs none.
        use std::os::unix::process::CommandExt;
        cmd.uid(u.uid).gid(u.gid);
    }
    let mut started = Swtpm {
        socket: socket.clone(),
        pidfile: Some(pidfile.clone()),
        watch: None,
    };
    // The foreground swtpm exits once the daemon copy listens.
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .map_err(|e| VirError::internal(format!("swtpm launcher: {e}")))?
        .map_err(|e| {
            VirError::operation_failed(format!(
                "cannot run {SWTPM} (install the 'swtpm' package): {e}"
            ))
        })?;
    if !out.status.success() {
        return Err(VirError::operation_failed(format!(
            "swtpm failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let since = Instant::now();
    while !socket.exists() {
        if since.elapsed() > Duration::from_secs(5) {
            return Err(VirError::operation_failed(format!(
                "swtpm did not create '{}'",
                socket.display()
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // swtpm writes its pidfile before it listens.
    let pid = std::fs::read_to_string(&pidfile)
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .filter(|p| *p > 1);
    started.watch = pid.and_then(|p| ChildWatch::new(p).ok());
    if started.watch.is_none() {
        tracing::warn!("swtpm's pid is not readable from '{}'", pidfile.display());
    }
    Ok(Some(started))
}
