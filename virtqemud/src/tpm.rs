//! Emulated TPMs (`<tpm><backend type='emulator'/>`), run by swtpm as libvirt does.
//!
//! Each start launches `swtpm socket --daemon --terminate`: swtpm sets up its control
//! socket, detaches (so init, not this daemon, becomes its parent) and exits on its own
//! when QEMU, its only client, disconnects. So a QEMU that dies, is destroyed or
//! outlives a daemon restart takes its swtpm with it, with no process to track here.
//! Until QEMU has connected, a failed start must stop swtpm itself: [`Swtpm`] does so
//! when dropped unless the start went through.
//!
//! The TPM's state lives in `<swtpm>/<uuid>/tpm2` (libvirt: /var/lib/libvirt/swtpm in
//! system mode, ~/.config/libvirt/qemu/swtpm in session mode), created by swtpm on
//! first use (a fresh TPM is manufactured then). Undefine removes it unless
//! `VIR_DOMAIN_UNDEFINE_KEEP_TPM`, as libvirt does.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::error::VirError;

use crate::xml::Domain;

pub const SWTPM: &str = "swtpm";

/// A started swtpm: its control socket, and its pidfile while it is not handed over.
pub struct Swtpm {
    pub socket: PathBuf,
    pidfile: Option<PathBuf>,
}

impl Swtpm {
    /// QEMU runs and has connected: from now on swtpm ends with it.
    pub fn handed_over(mut self) {
        self.pidfile = None;
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let Some(pidfile) = self.pidfile.take() else {
            return;
        };
        let pid = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok());
        if let Some(pid) = pid.filter(|p| *p > 1) {
            // Our own swtpm, by the pidfile it wrote moments ago; it has no client yet.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let _ = std::fs::remove_file(&pidfile);
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// The state folder of a domain's TPM (`version` 1.2 or 2.0).
pub fn state_dir(root: &Path, uuid: &str, version: &str) -> PathBuf {
    root.join(uuid)
        .join(if version == "1.2" { "tpm1.2" } else { "tpm2" })
}

/// The TPM version a definition asks for, libvirt's default being 2.0.
fn version(dom: &Domain) -> Result<Option<String>, VirError> {
    let Some(t) = dom.devices.tpms.first() else {
        return Ok(None);
    };
    if dom.devices.tpms.len() > 1 {
        return Err(VirError::unsupported("only one <tpm> device is supported"));
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

/// Starts swtpm for the domain's emulated TPM, if it has one.
pub async fn start(
    dom: &Domain,
    uuid: &str,
    state_root: &Path,
    run_dir: &Path,
    log: &Path,
) -> Result<Option<Swtpm>, VirError> {
    let Some(version) = version(dom)? else {
        return Ok(None);
    };
    let state = state_dir(state_root, uuid, &version);
    common::persist::create_dir_all(&state, 0o700)
        .map_err(|e| VirError::system(format!("cannot create '{}'", state.display()), &e))?;
    let socket = run_dir.join(format!("swtpm-{uuid}.sock"));
    let pidfile = run_dir.join(format!("swtpm-{uuid}.pid"));
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
    let started = Swtpm {
        socket: socket.clone(),
        pidfile: Some(pidfile),
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
    Ok(Some(started))
}
