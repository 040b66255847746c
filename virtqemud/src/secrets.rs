//! Disk secrets at start: the passphrase of a LUKS-encrypted disk (`<encryption
//! format='luks'><secret type='passphrase' uuid|usage='...'/>`) comes from virtstoraged,
//! which serves libvirt's secrets and gives a private one's value only to this daemon.
//! QEMU reads it from a file in the run's own folder (0600, QEMU's user) as a `secret`
//! object; the file is removed once QEMU has read it, so the passphrase is on the
//! command line nowhere and on disk only while QEMU starts.

use std::path::{Path, PathBuf};

use common::error::{ErrorCode, VirError};
use common::proxies::storage::{SecretProxy, StorageConnectProxy};
use common::xml::Element;
use zbus::proxy::CacheProperties;

use crate::security::Identity;
use crate::xml::{Disk, Domain};

/// How a disk names its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretRef {
    Uuid(String),
    /// A volume secret by its usage ID (the volume's path).
    Usage(String),
}

/// The `<encryption>` of a disk, inside its `<source>` (libvirt's place) or the disk
/// itself (the older one).
pub fn encryption(disk: &Disk) -> Option<&Element> {
    disk.source_children
        .iter()
        .chain(disk.unhandled.iter())
        .find(|c| c.name == "encryption")
}

fn unsupported(what: &str, detail: impl std::fmt::Display) -> VirError {
    VirError::new(ErrorCode::ConfigUnsupported, format!("{what}: {detail}"))
}

/// The secret a disk's LUKS encryption needs; `None` for a disk without encryption.
/// Any other encryption is refused, naming it.
pub fn luks_secret(disk: &Disk) -> Result<Option<SecretRef>, VirError> {
    let Some(enc) = encryption(disk) else {
        return Ok(None);
    };
    let what = format!("disk '{}' <encryption>", disk.target_dev);
    match enc.get_attr("format") {
        Some("luks") => {}
        Some(f) => {
            return Err(unsupported(
                &what,
                format!("format '{f}' is not supported, only luks"),
            ))
        }
        None => return Err(unsupported(&what, "no format")),
    }
    if let Some(e) = enc.get_attr("engine").filter(|e| *e != "qemu") {
        return Err(unsupported(
            &what,
            format!("engine '{e}' is not supported, only qemu"),
        ));
    }
    let secret = enc
        .children_named("secret")
        .find(|s| s.get_attr("type") == Some("passphrase"))
        .ok_or_else(|| unsupported(&what, "no <secret type='passphrase'>"))?;
    match (secret.get_attr("uuid"), secret.get_attr("usage")) {
        (Some(u), _) => Ok(Some(SecretRef::Uuid(u.to_owned()))),
        (None, Some(u)) => Ok(Some(SecretRef::Usage(u.to_owned()))),
        (None, None) => Err(unsupported(
            &what,
            "its <secret> names neither uuid nor usage",
        )),
    }
}

fn remote(e: zbus::Error) -> VirError {
    VirError::from_remote(&e).unwrap_or_else(|| {
        VirError::operation_failed(format!("secret: virtstoraged did not answer: {e}"))
    })
}

/// The value of `secret`, asked of virtstoraged over `bus` (the connection that owns
/// virtqemud's name: only it may read a private secret).
async fn fetch(bus: &zbus::Connection, secret: &SecretRef) -> Result<Vec<u8>, VirError> {
    let c = StorageConnectProxy::new(bus).await.map_err(remote)?;
    let path = match secret {
        SecretRef::Uuid(u) => c.secret_lookup_by_uuid(u).await,
        SecretRef::Usage(u) => c.secret_lookup_by_usage(1, u).await,
    }
    .map_err(remote)?;
    SecretProxy::builder(bus)
        .path(path)
        .map(|b| b.cache_properties(CacheProperties::No))
        .map_err(remote)?
        .build()
        .await
        .map_err(remote)?
        .get_value(0)
        .await
        .map_err(remote)
}

/// For every LUKS disk of `dom`: its index and the file in `dir` that holds its
/// passphrase for QEMU (owned by QEMU's `user`).
pub async fn prepare(
    dom: &Domain,
    dir: &Path,
    user: Option<&Identity>,
    bus: Option<&zbus::Connection>,
) -> Result<Vec<(usize, PathBuf)>, VirError> {
    let mut out = Vec::new();
    for (i, disk) in dom.devices.disks.iter().enumerate() {
        let Some(secret) = luks_secret(disk)? else {
            continue;
        };
        let bus = bus.ok_or_else(|| {
            VirError::operation_failed("no bus to reach virtstoraged's secrets on")
        })?;
        let value = fetch(bus, &secret).await?;
        let file = dir.join(format!("disk{i}-luks.secret"));
        write_secret(&file, &value, user)
            .map_err(|e| VirError::system(format!("write '{}'", file.display()), &e))?;
        out.push((i, file));
    }
    Ok(out)
}

fn write_secret(file: &Path, value: &[u8], user: Option<&Identity>) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    use std::os::unix::io::AsRawFd;
    let _ = std::fs::remove_file(file);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)?;
    f.write_all(value)?;
    if let Some(u) = user {
        nix::unistd::fchown(
            f.as_raw_fd(),
            Some(nix::unistd::Uid::from_raw(u.uid)),
            Some(nix::unistd::Gid::from_raw(u.gid)),
        )
        .map_err(std::io::Error::from)?;
    }
    Ok(())
}

/// Once QEMU has read them (its objects are made before its monitor answers).
pub fn remove(files: &[(usize, PathBuf)]) {
    for (_, f) in files {
        let _ = std::fs::remove_file(f);
    }
}
