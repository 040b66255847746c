//! PCI passthrough preparation: detach a device from its host driver and bind it to a
//! stub (vfio-pci) through `driver_override`, give it back, or reset it. Only sysfs
//! files are written, so the sequence is tested on fixture trees by what it writes.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use common::error::{ErrorCode, VirError};

use crate::sysfs::{PciAddr, Roots};

#[derive(Debug, thiserror::Error)]
pub enum PciError {
    #[error("unknown driver name '{0}' (expected 'vfio' or 'kvm')")]
    UnknownDriver(String),
    #[error("cannot write '{value}' to '{path}': {err}")]
    Write {
        path: String,
        value: String,
        err: std::io::Error,
    },
    #[error("PCI device {0} has no reset function")]
    NoReset(PciAddr),
    #[error("PCI device {0} has no driver_override (kernel too old or not a PCI device)")]
    NoOverride(PciAddr),
    #[error("PCI device {addr} is bound to '{now}' after the probe, not '{want}'")]
    NotBound {
        addr: PciAddr,
        want: String,
        now: String,
    },
}

impl From<PciError> for VirError {
    fn from(e: PciError) -> Self {
        match e {
            PciError::UnknownDriver(_) => VirError::new(ErrorCode::InvalidArg, e),
            PciError::Write { .. } => VirError::new(ErrorCode::SystemError, e),
            PciError::NotBound { .. } => VirError::new(ErrorCode::OperationFailed, e),
            PciError::NoReset(_) | PciError::NoOverride(_) => {
                VirError::new(ErrorCode::OperationInvalid, e)
            }
        }
    }
}

/// libvirt's `Detach` driver names to kernel stub drivers.
pub fn stub_driver(name: &str) -> Result<&'static str, PciError> {
    match name {
        "" | "vfio" | "vfio-pci" => Ok("vfio-pci"),
        "kvm" | "pci-stub" => Ok("pci-stub"),
        other => Err(PciError::UnknownDriver(other.to_string())),
    }
}

fn write(path: &Path, value: &str) -> Result<(), PciError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(|err| PciError::Write {
            path: path.display().to_string(),
            value: value.trim().to_string(),
            err,
        })?;
    f.write_all(value.as_bytes())
        .map_err(|err| PciError::Write {
            path: path.display().to_string(),
            value: value.trim().to_string(),
            err,
        })
}

fn current_driver(dir: &Path) -> Option<String> {
    Some(
        fs::read_link(dir.join("driver"))
            .ok()?
            .file_name()?
            .to_string_lossy()
            .into_owned(),
    )
}

/// Points the device at `driver` (empty: none) and lets the kernel re-probe it.
fn rebind(roots: &Roots, dir: &Path, addr: PciAddr, driver: &str) -> Result<(), PciError> {
    let ovr = dir.join("driver_override");
    if !ovr.exists() {
        return Err(PciError::NoOverride(addr));
    }
    write(&ovr, &format!("{driver}\n"))?;
    if current_driver(dir).is_some() {
        write(&dir.join("driver/unbind"), &addr.to_string())?;
    }
    write(&roots.sys.join("bus/pci/drivers_probe"), &addr.to_string())
}

/// Where rebinds in progress are recorded (one file per device, named by address).
pub fn intent_dir(runtime: &Path) -> PathBuf {
    runtime.join("nodedev").join("rebind")
}

/// What a record says: the device's folder and the driver it is being bound to
/// (empty: its host driver).
#[derive(serde::Serialize, serde::Deserialize)]
struct Intent {
    dir: PathBuf,
    driver: String,
}

/// A rebind recorded on disk before its first write and forgotten after its last: a
/// daemon killed between the unbind and the probe would leave the device bound to no
/// driver at all; the next start finds the record and finishes the rebind.
fn recorded_rebind(
    roots: &Roots,
    intents: &Path,
    dir: &Path,
    addr: PciAddr,
    driver: &str,
) -> Result<(), PciError> {
    let record = intents.join(addr.to_string());
    let io = |err| PciError::Write {
        path: record.display().to_string(),
        value: driver.to_string(),
        err,
    };
    let intent = Intent {
        dir: dir.to_path_buf(),
        driver: driver.to_string(),
    };
    let text = serde_json::to_vec(&intent).map_err(|e| io(e.into()))?;
    common::persist::create_dir_all(intents, 0o700).map_err(io)?;
    common::persist::write_atomic(&record, &text, 0o600).map_err(io)?;
    rebind(roots, dir, addr, driver)?;
    common::persist::remove_durable(&record).map_err(io)
}

/// Finishes the rebinds a killed daemon left recorded in `intents` (at start, before
/// the device tree is read). A device whose record cannot be acted on is logged; its
/// record stays for the next start.
pub fn finish_rebinds(roots: &Roots, intents: &Path) {
    let Ok(rd) = fs::read_dir(intents) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            // A record whose write was cut short: the rebind had not begun.
            let _ = fs::remove_file(e.path());
            continue;
        }
        let parsed = fs::read(e.path())
            .ok()
            .and_then(|t| serde_json::from_slice::<Intent>(&t).ok());
        let (Some(intent), Some(addr)) = (parsed, PciAddr::parse(&name)) else {
            tracing::warn!("ignoring unreadable rebind record {}", e.path().display());
            continue;
        };
        let to = if intent.driver.is_empty() {
            "its host driver"
        } else {
            intent.driver.as_str()
        };
        tracing::info!("finishing the rebind of {addr} to {to}, cut short by a restart");
        match rebind(roots, &intent.dir, addr, &intent.driver) {
            Ok(()) => {
                let _ = common::persist::remove_durable(&e.path());
            }
            Err(err) => tracing::warn!("cannot finish the rebind of {addr}: {err}"),
        }
    }
}

/// Binds the device at `dir` to the stub driver (vfio-pci), as `virNodeDeviceDetachFlags`.
pub fn detach(
    roots: &Roots,
    intents: &Path,
    dir: &Path,
    addr: PciAddr,
    stub: &str,
) -> Result<(), PciError> {
    if current_driver(dir).as_deref() == Some(stub) {
        return Ok(());
    }
    if roots.real && !roots.sys.join("bus/pci/drivers").join(stub).exists() {
        // The stub module may not be loaded yet; a failure shows up as "not bound" below.
        let module = stub.replace('-', "_");
        let _ = std::process::Command::new("modprobe")
            .arg(module)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
    recorded_rebind(roots, intents, dir, addr, stub)?;
    // The kernel probes synchronously during the drivers_probe write. A fixture tree has
    // no kernel behind it, so only the machine's own sysfs is checked.
    match current_driver(dir) {
        Some(d) if d == stub => Ok(()),
        _ if !roots.real => Ok(()),
        now => Err(PciError::NotBound {
            addr,
            want: stub.to_string(),
            now: now.unwrap_or_else(|| "no driver".into()),
        }),
    }
}

/// Gives the device back to its host driver (clears the override and re-probes).
pub fn reattach(roots: &Roots, intents: &Path, dir: &Path, addr: PciAddr) -> Result<(), PciError> {
    recorded_rebind(roots, intents, dir, addr, "")
}

/// Writes `1` to a kernel trigger file (`remove` of a mediated device).
pub fn write_flag(path: &Path) -> Result<(), PciError> {
    write(path, "1")
}

/// Function-level reset through the kernel's `reset` file.
pub fn reset(dir: &Path, addr: PciAddr) -> Result<(), PciError> {
    let f: PathBuf = dir.join("reset");
    if !f.exists() {
        return Err(PciError::NoReset(addr));
    }
    write(&f, "1")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_names_map_to_stubs() {
        assert_eq!(stub_driver("").ok(), Some("vfio-pci"));
        assert_eq!(stub_driver("vfio").ok(), Some("vfio-pci"));
        assert_eq!(stub_driver("kvm").ok(), Some("pci-stub"));
        let e: VirError = stub_driver("xen")
            .err()
            .map(VirError::from)
            .unwrap_or_else(|| VirError::internal("accepted"));
        assert_eq!(
            e.message,
            "invalid argument: unknown driver name 'xen' (expected 'vfio' or 'kvm')"
        );
    }
}
