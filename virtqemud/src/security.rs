//! Who QEMU runs as, and the files it is given (libvirt's qemu.conf `user`/`group` and
//! its DAC security driver).
//!
//! In system mode QEMU runs as an unprivileged user: qemu.conf's `user` and `group`,
//! else Debian's `libvirt-qemu`/`kvm` when they exist, else `nobody`/`nogroup`. It also
//! gets the user's supplementary groups and `kvm`. In session mode QEMU runs as the
//! daemon's user, unless the daemon runs as root and qemu.conf names a user or group.
//! That last case is this project's choice: it is harmless, and it makes the system-mode
//! path testable on a private bus.
//!
//! With a switch, and `dynamic_ownership` on (libvirt's default), the files QEMU opens
//! itself are handed to its user for the domain's run and given back afterwards. Those
//! are disk images, kernel/initrd/dtb, the UEFI variable store, file chardevs and swtpm's
//! socket. The original owners are kept in the domain's status file, so a restarted
//! daemon still restores them. QEMU's monitor socket and helper sockets live in a
//! per-domain folder owned by its user.

use std::path::{Path, PathBuf};

use common::error::VirError;
use nix::unistd::{Gid, Group, Uid, User};
use serde::{Deserialize, Serialize};

use crate::xml::{ChardevSource, DiskSource, Domain};

/// The settings of `<config-dir>/qemu.conf` this daemon reads.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct QemuConf {
    pub user: Option<String>,
    pub group: Option<String>,
    pub dynamic_ownership: Option<bool>,
    pub seccomp_sandbox: Option<bool>,
}

fn conf_err(file: &Path, line: usize, what: impl std::fmt::Display) -> VirError {
    VirError::new(
        common::error::ErrorCode::ConfSyntax,
        format!("{}:{line}: {what}", file.display()),
    )
}

impl QemuConf {
    /// Reads `file` (libvirt's syntax: `key = "string"` or `key = number`, `#`
    /// comments); a missing file is an empty one. Keys this daemon does not use are
    /// skipped, as libvirt skips unknown keys.
    pub fn load(file: &Path) -> Result<QemuConf, VirError> {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(QemuConf::default()),
            Err(e) => {
                return Err(VirError::system(
                    format!("cannot read '{}'", file.display()),
                    &e,
                ))
            }
        };
        let mut c = QemuConf::default();
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, value) = line.split_once('=').ok_or_else(|| {
                conf_err(file, n, format!("expected 'key = value', got '{line}'"))
            })?;
            let key = key.trim();
            if key.is_empty()
                || !key
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
            {
                return Err(conf_err(file, n, format!("bad key '{key}'")));
            }
            let value = value.trim();
            let string = || -> Result<String, VirError> {
                value
                    .strip_prefix('"')
                    .and_then(|v| v.strip_suffix('"'))
                    .filter(|v| !v.contains('"'))
                    .map(str::to_owned)
                    .ok_or_else(|| conf_err(file, n, format!("{key} must be a quoted string")))
            };
            let flag = || -> Result<bool, VirError> {
                match value {
                    "0" => Ok(false),
                    "1" => Ok(true),
                    _ => Err(conf_err(file, n, format!("{key} must be 0 or 1"))),
                }
            };
            match key {
                "user" => c.user = Some(string()?),
                "group" => c.group = Some(string()?),
                "dynamic_ownership" => c.dynamic_ownership = Some(flag()?),
                "seccomp_sandbox" => c.seccomp_sandbox = Some(flag()?),
                other => {
                    // A value must still look like one of libvirt's.
                    let looks_ok =
                        value.starts_with('"') && value.ends_with('"') && value.len() >= 2
                            || value.starts_with('[') && value.ends_with(']')
                            || value.parse::<i64>().is_ok();
                    if !looks_ok {
                        return Err(conf_err(file, n, format!("bad value for {other}")));
                    }
                    tracing::debug!("{}: ignoring {other}", file.display());
                }
            }
        }
        Ok(c)
    }
}

/// The user QEMU runs as, resolved before any fork.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub user: String,
}

fn resolve_user(spec: &str) -> Result<(u32, Option<User>), VirError> {
    if let Some(n) = spec.strip_prefix('+') {
        let uid: u32 = n
            .parse()
            .map_err(|_| VirError::invalid_arg(format!("qemu.conf user '{spec}' is not +UID")))?;
        return Ok((uid, User::from_uid(Uid::from_raw(uid)).ok().flatten()));
    }
    match User::from_name(spec) {
        Ok(Some(u)) => Ok((u.uid.as_raw(), Some(u))),
        _ => Err(VirError::invalid_arg(format!(
            "qemu.conf user '{spec}' does not exist"
        ))),
    }
}

fn resolve_group(spec: &str) -> Result<u32, VirError> {
    if let Some(n) = spec.strip_prefix('+') {
        return n
            .parse()
            .map_err(|_| VirError::invalid_arg(format!("qemu.conf group '{spec}' is not +GID")));
    }
    match Group::from_name(spec) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        _ => Err(VirError::invalid_arg(format!(
            "qemu.conf group '{spec}' does not exist"
        ))),
    }
}

fn exists_user(name: &str) -> bool {
    matches!(User::from_name(name), Ok(Some(_)))
}

fn exists_group(name: &str) -> bool {
    matches!(Group::from_name(name), Ok(Some(_)))
}

/// Whom QEMU runs as: `None` keeps the daemon's own user.
pub fn identity(conf: &QemuConf, system: bool) -> Result<Option<Identity>, VirError> {
    let root = nix::unistd::geteuid().is_root();
    let named = conf.user.is_some() || conf.group.is_some();
    if !root || !(system || named) {
        if named && !root {
            tracing::debug!("qemu.conf user/group ignored: the daemon is not root");
        }
        return Ok(None);
    }
    let user = conf.user.clone().unwrap_or_else(|| {
        if exists_user("libvirt-qemu") {
            "libvirt-qemu"
        } else {
            "nobody"
        }
        .to_owned()
    });
    let (uid, entry) = resolve_user(&user)?;
    let gid = match &conf.group {
        Some(g) => resolve_group(g)?,
        None if conf.user.is_none() && exists_group("kvm") => resolve_group("kvm")?,
        None => match &entry {
            Some(u) => u.gid.as_raw(),
            None => resolve_group("nogroup")?,
        },
    };
    let mut groups = match &entry {
        Some(u) => std::ffi::CString::new(u.name.clone())
            .ok()
            .and_then(|c| nix::unistd::getgrouplist(&c, Gid::from_raw(gid)).ok())
            .map(|g| g.into_iter().map(Gid::as_raw).collect())
            .unwrap_or_else(|| vec![gid]),
        None => vec![gid],
    };
    // /dev/kvm belongs to group kvm.
    if let Ok(Some(k)) = Group::from_name("kvm") {
        groups.push(k.gid.as_raw());
    }
    groups.sort_unstable();
    groups.dedup();
    if uid == 0 {
        return Err(VirError::invalid_arg(
            "qemu.conf user is root: QEMU would run with every privilege; set another user",
        ));
    }
    Ok(Some(Identity {
        uid,
        gid,
        groups,
        user,
    }))
}

/// A file's owner before the domain took it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub path: PathBuf,
    pub uid: u32,
    pub gid: u32,
}

/// The files of `dom`'s file chardevs (serial, console, channel).
fn chardev_files(dom: &Domain) -> impl Iterator<Item = &PathBuf> {
    dom.devices
        .serials
        .iter()
        .chain(&dom.devices.consoles)
        .chain(&dom.devices.channels)
        .filter_map(|c| match &c.source {
            ChardevSource::File { path, .. } => Some(path),
            _ => None,
        })
}

/// The files QEMU opens itself for `dom` (live definition), with `extra` (resolved
/// volume paths, swtpm's socket).
pub fn files(dom: &Domain, extra: &[PathBuf]) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = Vec::new();
    for d in &dom.devices.disks {
        match &d.source {
            Some(DiskSource::File(p)) | Some(DiskSource::Block(p)) => v.push(p.clone()),
            _ => {}
        }
    }
    for p in [&dom.os.kernel, &dom.os.initrd, &dom.os.dtb, &dom.os.nvram]
        .into_iter()
        .flatten()
    {
        v.push(p.clone());
    }
    v.extend(chardev_files(dom).cloned());
    v.extend(extra.iter().cloned());
    v.sort();
    v.dedup();
    v
}

/// Hands `paths` to `id` (creating file chardevs that do not exist yet, as QEMU would);
/// returns their previous owners, for [`restore`]. A failure gives back what was taken.
pub fn take(paths: &[PathBuf], id: &Identity) -> Result<Vec<Owner>, VirError> {
    use std::os::unix::fs::MetadataExt;
    let mut taken = Vec::new();
    for p in paths {
        let meta = match std::fs::metadata(p) {
            Ok(m) => m,
            Err(e) => {
                restore(&taken);
                return Err(VirError::system(
                    format!("cannot stat '{}'", p.display()),
                    &e,
                ));
            }
        };
        if meta.uid() == id.uid && meta.gid() == id.gid {
            continue;
        }
        if let Err(e) = std::os::unix::fs::chown(p, Some(id.uid), Some(id.gid)) {
            restore(&taken);
            return Err(VirError::system(
                format!("cannot chown '{}'", p.display()),
                &e,
            ));
        }
        taken.push(Owner {
            path: p.clone(),
            uid: meta.uid(),
            gid: meta.gid(),
        });
    }
    Ok(taken)
}

/// Gives files back to their owners (best effort: a file may be gone by now).
pub fn restore(owners: &[Owner]) {
    for o in owners.iter().rev() {
        if let Err(e) = std::os::unix::fs::chown(&o.path, Some(o.uid), Some(o.gid)) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(
                    "cannot give '{}' back to {}:{}: {e}",
                    o.path.display(),
                    o.uid,
                    o.gid
                );
            }
        }
    }
}

/// Lets everyone pass through folder `d` by name (adds the x bits for group and others;
/// nothing else changes, and a folder that allows it already is left alone).
pub fn make_traversable(d: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(d)?.permissions().mode() & 0o7777;
    if mode & 0o011 != 0o011 {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(mode | 0o011))?;
    }
    Ok(())
}

/// Creates the file chardevs of `dom` that do not exist yet (QEMU, as another user,
/// could not create them in a folder it cannot write).
pub fn precreate_chardev_files(dom: &Domain) -> Result<(), VirError> {
    for path in chardev_files(dom) {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| VirError::system(format!("cannot create '{}'", path.display()), &e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conf(text: &str) -> Result<QemuConf, VirError> {
        let dir = tempfile::tempdir().expect("tmp");
        let f = dir.path().join("qemu.conf");
        std::fs::write(&f, text).expect("write");
        QemuConf::load(&f)
    }

    #[test]
    fn reads_libvirt_syntax_and_names_bad_lines() {
        let c = conf(
            "# qemu.conf\nuser = \"nobody\"\n group=\"+65534\"\n\ndynamic_ownership = 1\n\
             seccomp_sandbox = 0\nvnc_listen = \"0.0.0.0\"\ncgroup_controllers = [ \"cpu\" ]\n",
        )
        .expect("parse");
        assert_eq!(c.user.as_deref(), Some("nobody"));
        assert_eq!(c.group.as_deref(), Some("+65534"));
        assert_eq!(c.dynamic_ownership, Some(true));
        assert_eq!(c.seccomp_sandbox, Some(false));
        let e = conf("user = \"nobody\"\nthis is not a setting\n").expect_err("bad line");
        assert!(e.to_string().contains("qemu.conf:2"), "{e}");
        let e = conf("seccomp_sandbox = yes\n").expect_err("bad flag");
        assert!(
            e.to_string().contains("qemu.conf:1") && e.to_string().contains("0 or 1"),
            "{e}"
        );
        let e = conf("user = nobody\n").expect_err("unquoted");
        assert!(e.to_string().contains("quoted string"), "{e}");
        assert_eq!(
            QemuConf::load(Path::new("/nonexistent/qemu.conf")).expect("missing"),
            QemuConf::default()
        );
    }

    #[test]
    fn users_and_groups_resolve_by_name_and_number() {
        let c = QemuConf {
            user: Some("nobody".into()),
            group: Some("+65534".into()),
            ..QemuConf::default()
        };
        if nix::unistd::geteuid().is_root() {
            let id = identity(&c, false).expect("resolve").expect("a switch");
            assert_eq!((id.uid, id.gid), (65534, 65534));
            let bad = QemuConf {
                user: Some("no-such-user-here".into()),
                ..QemuConf::default()
            };
            let e = identity(&bad, true).expect_err("unknown user");
            assert!(e.to_string().contains("no-such-user-here"), "{e}");
            let root = QemuConf {
                user: Some("root".into()),
                ..QemuConf::default()
            };
            assert!(identity(&root, true).is_err(), "root must be refused");
        } else {
            // Not root: never a switch.
            assert_eq!(identity(&c, true).expect("resolve"), None);
        }
    }
}
