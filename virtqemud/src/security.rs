//! Who QEMU runs as, and the files it is given (libvirt's qemu.conf `user`/`group` and
//! its DAC security driver).
//!
//! In system mode each running guest's QEMU (and swtpm) gets a uid and gid of its own,
//! picked from qemu.conf's `dynamic_user_range` ([`UidPool`]), with `kvm` as its only
//! supplementary group; qemu.conf's `user` (and `group`) instead runs every guest as
//! that one user, as libvirt does. There is no fallback: a missing user or a full range
//! stops the start. In session mode QEMU runs as the daemon's user, unless the daemon
//! runs as root and qemu.conf names a user or a range. That last case is this project's
//! choice: it is harmless, and it makes the system-mode path testable on a private bus.
//!
//! With a switch, and `dynamic_ownership` on (libvirt's default), the files QEMU opens
//! itself are handed to its user for the domain's run and given back afterwards. Those
//! are disk images, kernel/initrd/dtb, the UEFI variable store, file chardevs and
//! swtpm's state and log. The original owners are kept in the domain's status file, so
//! a restarted daemon still restores them. QEMU's monitor socket and helper sockets
//! live in a per-domain folder owned by its user.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

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
    /// `dynamic_user_range = "FIRST-LAST"`: the uids (and gids) of per-guest users.
    pub dynamic_user_range: Option<UidRange>,
    /// `cgroup_controllers = [ "cpu", ... ]`: the controllers domains' cgroups use
    /// (libvirt's names; all when unset, none with an empty list).
    pub cgroup_controllers: Option<Vec<String>>,
}

/// A range of uids reserved for QEMU's per-guest users; each one is used as a gid too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidRange {
    pub first: u32,
    pub last: u32,
}

impl UidRange {
    /// Above the 16-bit ids that distributions and systemd hand out (Debian's static
    /// and on-demand ids end at 64999, systemd's DynamicUser range is 61184-65519,
    /// nobody is 65534), below the first subordinate ids of `useradd` (100000) and
    /// systemd's container ranges (524288 up).
    pub const DEFAULT: UidRange = UidRange {
        first: 66000,
        last: 66999,
    };

    /// `FIRST-LAST`, inclusive; refuses root, nobody and the ids that mean "none".
    pub fn parse(s: &str) -> Result<UidRange, String> {
        let (a, b) = s
            .split_once('-')
            .ok_or_else(|| format!("'{s}' is not FIRST-LAST"))?;
        let num = |v: &str| {
            v.trim()
                .parse::<u32>()
                .map_err(|_| format!("'{v}' in '{s}' is not a uid"))
        };
        let r = UidRange {
            first: num(a)?,
            last: num(b)?,
        };
        if r.first > r.last {
            return Err(format!("'{s}': FIRST is above LAST"));
        }
        if let Some(bad) = [0, 65534, 65535, u32::MAX]
            .into_iter()
            .find(|u| r.contains(*u))
        {
            return Err(format!("'{s}' holds uid {bad}, which no guest may have"));
        }
        Ok(r)
    }

    pub fn contains(&self, uid: u32) -> bool {
        (self.first..=self.last).contains(&uid)
    }
}

impl std::fmt::Display for UidRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
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
                "cgroup_controllers" => {
                    let list = value
                        .strip_prefix('[')
                        .and_then(|v| v.strip_suffix(']'))
                        .ok_or_else(|| conf_err(file, n, format!("{key} must be a list")))?;
                    let mut names = Vec::new();
                    for item in list.split(',').map(str::trim).filter(|i| !i.is_empty()) {
                        let name = item
                            .strip_prefix('"')
                            .and_then(|v| v.strip_suffix('"'))
                            .ok_or_else(|| {
                                conf_err(file, n, format!("bad item {item} in {key}"))
                            })?;
                        if !crate::cgroup::LIBVIRT_CONTROLLERS.contains(&name) {
                            return Err(conf_err(
                                file,
                                n,
                                format!("Unknown cgroup controller '{name}'"),
                            ));
                        }
                        names.push(name.to_owned());
                    }
                    c.cgroup_controllers = Some(names);
                }
                "dynamic_user_range" => {
                    let r = UidRange::parse(&string()?).map_err(|e| conf_err(file, n, e))?;
                    c.dynamic_user_range = Some(r);
                }
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
    /// The name for messages: the configured user, or `+UID`.
    pub user: String,
    /// A per-guest uid from the pool, to release when the run ends.
    pub dynamic: bool,
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
            "QEMU's user '{spec}' (qemu.conf user) does not exist: create it, or remove \
             'user' from qemu.conf to run each guest under a uid of its own"
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
            "QEMU's group '{spec}' (qemu.conf group) does not exist"
        ))),
    }
}

/// The gid of `kvm`, which owns /dev/kvm, if the host has that group.
fn kvm_gid() -> Option<u32> {
    Group::from_name("kvm")
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw())
}

/// Who QEMU runs as, decided once from qemu.conf and the daemon's mode; the user of
/// one run is then [`RunAs::for_run`].
#[derive(Debug)]
pub enum RunAs {
    /// The daemon's own user (session mode).
    Daemon,
    /// Every guest as the one user qemu.conf names (`user`, `group`), as libvirt does.
    /// Resolved at each start, so a user created later is found.
    Configured { user: String, group: Option<String> },
    /// Each running guest under a uid of its own.
    PerGuest(UidPool),
}

impl RunAs {
    /// Root in system mode runs each guest under its own uid unless qemu.conf names a
    /// `user`; a root session daemon switches only when qemu.conf names a `user` or a
    /// `dynamic_user_range`; any other daemon runs QEMU as itself.
    pub fn from_conf(conf: &QemuConf, system: bool) -> Result<RunAs, VirError> {
        let named = conf.user.is_some() || conf.group.is_some();
        if !nix::unistd::geteuid().is_root() {
            if named || conf.dynamic_user_range.is_some() {
                tracing::debug!("qemu.conf user/group/range ignored: the daemon is not root");
            }
            return Ok(RunAs::Daemon);
        }
        if let Some(user) = &conf.user {
            if resolve_user(user).is_err() {
                tracing::warn!("QEMU's user '{user}' (qemu.conf user) does not exist yet");
            }
            return Ok(RunAs::Configured {
                user: user.clone(),
                group: conf.group.clone(),
            });
        }
        if conf.group.is_some() {
            return Err(VirError::invalid_arg(
                "qemu.conf sets 'group' without 'user': a guest with a uid of its own has a \
                 group of its own too; set 'user' as well, or remove 'group'",
            ));
        }
        if system || conf.dynamic_user_range.is_some() {
            let range = conf.dynamic_user_range.unwrap_or(UidRange::DEFAULT);
            return Ok(RunAs::PerGuest(UidPool::new(range)));
        }
        Ok(RunAs::Daemon)
    }

    /// The user one run of QEMU gets, `None` for the daemon's own. A per-guest uid is
    /// reserved until [`UidPool::release`]; it is the identity's `dynamic`.
    pub fn for_run(&self) -> Result<Option<Identity>, VirError> {
        match self {
            RunAs::Daemon => Ok(None),
            RunAs::Configured { user, group } => configured(user, group.as_deref()).map(Some),
            RunAs::PerGuest(pool) => pool.pick().map(Some),
        }
    }

    /// The pool of per-guest uids, if guests get one.
    pub fn pool(&self) -> Option<&UidPool> {
        match self {
            RunAs::PerGuest(p) => Some(p),
            _ => None,
        }
    }

    pub fn switches(&self) -> bool {
        !matches!(self, RunAs::Daemon)
    }
}

/// The configured user with its group (qemu.conf's, else the user's own), the user's
/// supplementary groups and `kvm`.
fn configured(user: &str, group: Option<&str>) -> Result<Identity, VirError> {
    let (uid, entry) = resolve_user(user)?;
    if uid == 0 {
        return Err(VirError::invalid_arg(
            "qemu.conf user is root: QEMU would run with every privilege; set another user",
        ));
    }
    let gid = match (group, &entry) {
        (Some(g), _) => resolve_group(g)?,
        (None, Some(u)) => u.gid.as_raw(),
        (None, None) => {
            return Err(VirError::invalid_arg(format!(
                "QEMU's user '{user}' (qemu.conf user) has no passwd entry to take a group \
                 from: set qemu.conf group"
            )))
        }
    };
    let mut groups = match &entry {
        Some(u) => std::ffi::CString::new(u.name.clone())
            .ok()
            .and_then(|c| nix::unistd::getgrouplist(&c, Gid::from_raw(gid)).ok())
            .map(|g| g.into_iter().map(Gid::as_raw).collect())
            .unwrap_or_else(|| vec![gid]),
        None => vec![gid],
    };
    groups.extend(kvm_gid());
    groups.sort_unstable();
    groups.dedup();
    Ok(Identity {
        uid,
        gid,
        groups,
        user: user.to_owned(),
        dynamic: false,
    })
}

/// The uids of per-guest users: which are in use by runs of this daemon, and the
/// round-robin cursor, so a uid just released is the last one picked again.
#[derive(Debug)]
pub struct UidPool {
    range: UidRange,
    state: Mutex<PoolState>,
}

#[derive(Debug)]
struct PoolState {
    taken: BTreeSet<u32>,
    next: u32,
}

impl UidPool {
    pub fn new(range: UidRange) -> UidPool {
        UidPool {
            range,
            state: Mutex::new(PoolState {
                taken: BTreeSet::new(),
                next: range.first,
            }),
        }
    }

    pub fn range(&self) -> UidRange {
        self.range
    }

    fn state(&self) -> std::sync::MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A free uid, reserved for one run: not used by another run, not the uid of a
    /// user or the gid of a group (passwd and group, through NSS, read now), and not
    /// the uid of any process (an swtpm still exiting, a QEMU whose status was lost).
    pub fn pick(&self) -> Result<Identity, VirError> {
        let busy = process_uids();
        let mut st = self.state();
        let span = u64::from(self.range.last - self.range.first) + 1;
        let start = st.next.clamp(self.range.first, self.range.last);
        for i in 0..span {
            let off = (u64::from(start - self.range.first) + i) % span;
            let uid = self.range.first + off as u32;
            if st.taken.contains(&uid) || busy.contains(&uid) {
                continue;
            }
            if matches!(User::from_uid(Uid::from_raw(uid)), Ok(Some(_)))
                || matches!(Group::from_gid(Gid::from_raw(uid)), Ok(Some(_)))
            {
                continue;
            }
            st.taken.insert(uid);
            st.next = if uid == self.range.last {
                self.range.first
            } else {
                uid + 1
            };
            let mut groups = vec![uid];
            groups.extend(kvm_gid());
            return Ok(Identity {
                uid,
                gid: uid,
                groups,
                user: format!("+{uid}"),
                dynamic: true,
            });
        }
        Err(VirError::operation_failed(format!(
            "no free uid for QEMU in qemu.conf dynamic_user_range {}: {} in use by running \
             guests, the others belong to users, groups or processes; widen the range",
            self.range,
            st.taken.len()
        )))
    }

    /// Marks `uid` as used by a run found still running after a restart.
    pub fn reserve(&self, uid: u32) {
        if self.range.contains(uid) {
            self.state().taken.insert(uid);
        } else {
            tracing::warn!(
                uid,
                "a running guest's uid is outside dynamic_user_range now"
            );
        }
    }

    /// Gives back the uid of a run that has ended.
    pub fn release(&self, uid: u32) {
        self.state().taken.remove(&uid);
    }
}

/// The uids of every live process (from /proc/PID/status: the folder's owner is root
/// for processes that changed uid, which are not dumpable). A zombie holds nothing.
fn process_uids() -> BTreeSet<u32> {
    let mut uids = BTreeSet::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return uids;
    };
    for e in entries.flatten() {
        if !e
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        if text
            .lines()
            .any(|l| l.starts_with("State:") && l.contains("Z (zombie)"))
        {
            continue;
        }
        if let Some(line) = text.lines().find(|l| l.starts_with("Uid:")) {
            uids.extend(
                line.split_whitespace()
                    .skip(1)
                    .filter_map(|v| v.parse::<u32>().ok()),
            );
        }
    }
    uids
}

/// A file's owner before the domain took it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub path: PathBuf,
    pub uid: u32,
    pub gid: u32,
    /// A folder handed over with all it holds (swtpm's state): everything found in it
    /// afterwards, also what QEMU's user created, goes to `uid`:`gid`.
    #[serde(default)]
    pub tree: bool,
}

/// The files of `dom`'s file chardevs (serial, console, channel, parallel) and their
/// `<log>` files.
fn chardev_files(dom: &Domain) -> impl Iterator<Item = &PathBuf> {
    let all = || {
        dom.devices
            .serials
            .iter()
            .chain(&dom.devices.consoles)
            .chain(&dom.devices.channels)
            .chain(&dom.devices.parallels)
    };
    all()
        .filter_map(|c| match &c.source {
            ChardevSource::File { path, .. } => Some(path),
            _ => None,
        })
        .chain(all().filter_map(|c| c.log.as_ref().map(|l| &l.0)))
}

/// What pipe and device chardevs make QEMU open, as libvirt hands them over: a pipe's
/// `PATH.in` and `PATH.out` where both exist (QEMU then opens those), else `PATH`
/// itself; a device's path.
fn chardev_devices(dom: &Domain) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for c in dom
        .devices
        .serials
        .iter()
        .chain(&dom.devices.consoles)
        .chain(&dom.devices.channels)
        .chain(&dom.devices.parallels)
    {
        match &c.source {
            ChardevSource::Dev(p) => v.push(p.clone()),
            ChardevSource::Pipe(p) => {
                let with = |ext: &str| {
                    let mut s = p.clone().into_os_string();
                    s.push(ext);
                    PathBuf::from(s)
                };
                let (input, output) = (with(".in"), with(".out"));
                if input.exists() && output.exists() {
                    v.extend([input, output]);
                } else {
                    v.push(p.clone());
                }
            }
            _ => {}
        }
    }
    v
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
    v.extend(chardev_devices(dom));
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
            tree: false,
        });
    }
    Ok(taken)
}

/// Hands folder `dir` and everything in it to `id`; returns its owner before, for
/// [`restore`], which gives the whole tree back to that owner.
pub fn take_tree(dir: &Path, id: &Identity) -> Result<Owner, VirError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(dir)
        .map_err(|e| VirError::system(format!("cannot stat '{}'", dir.display()), &e))?;
    let owner = Owner {
        path: dir.to_owned(),
        uid: meta.uid(),
        gid: meta.gid(),
        tree: true,
    };
    chown_tree(dir, id.uid, id.gid).map_err(|e| {
        chown_tree(dir, owner.uid, owner.gid).ok();
        VirError::system(format!("cannot chown '{}'", dir.display()), &e)
    })?;
    Ok(owner)
}

/// Changes the owner of `dir` and all below it, never following a symlink. A regular
/// file with several links is left alone: the folder's user may have linked in a file
/// that is not part of it.
fn chown_tree(dir: &Path, uid: u32, gid: u32) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(dir)?;
    if meta.is_dir() {
        for e in std::fs::read_dir(dir)? {
            chown_tree(&e?.path(), uid, gid)?;
        }
    } else if meta.is_file() && meta.nlink() > 1 {
        return Ok(());
    }
    std::os::unix::fs::lchown(dir, Some(uid), Some(gid))
}

/// Refuses `paths` when one belongs to a per-guest uid of `range` other than `id`'s:
/// another running guest holds it, and handing it over would take it from that guest.
pub fn check_not_held(paths: &[PathBuf], range: UidRange, id: &Identity) -> Result<(), VirError> {
    use std::os::unix::fs::MetadataExt;
    for p in paths {
        if let Ok(m) = std::fs::metadata(p) {
            if range.contains(m.uid()) && m.uid() != id.uid {
                return Err(VirError::operation_invalid(format!(
                    "'{}' is in use by another running guest (uid {}): guests with a uid \
                     of their own cannot share a file",
                    p.display(),
                    m.uid()
                )));
            }
        }
    }
    Ok(())
}

/// Gives files back to their owners (best effort: a file may be gone by now).
pub fn restore(owners: &[Owner]) {
    for o in owners.iter().rev() {
        let r = if o.tree {
            chown_tree(&o.path, o.uid, o.gid)
        } else {
            std::os::unix::fs::chown(&o.path, Some(o.uid), Some(o.gid))
        };
        if let Err(e) = r {
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

/// Creates `path` if missing, mode 0600 (a log QEMU's user writes by name).
pub fn precreate(path: &Path) -> Result<(), VirError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map(drop)
        .map_err(|e| VirError::system(format!("cannot create '{}'", path.display()), &e))
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
        assert_eq!(c.cgroup_controllers, Some(vec!["cpu".to_owned()]));
        let c = conf("cgroup_controllers = [ ]\n").expect("empty list");
        assert_eq!(c.cgroup_controllers, Some(Vec::new()));
        let e = conf("cgroup_controllers = [ \"gpu\" ]\n").expect_err("unknown");
        assert!(
            e.to_string().contains("Unknown cgroup controller 'gpu'"),
            "{e}"
        );
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
        let run_as = RunAs::from_conf(&c, false).expect("mode");
        if nix::unistd::geteuid().is_root() {
            let id = run_as.for_run().expect("resolve").expect("a switch");
            assert_eq!((id.uid, id.gid, id.dynamic), (65534, 65534, false));
            let bad = QemuConf {
                user: Some("no-such-user-here".into()),
                ..QemuConf::default()
            };
            let e = RunAs::from_conf(&bad, true)
                .expect("mode")
                .for_run()
                .expect_err("unknown user: no fallback");
            assert!(e.to_string().contains("'no-such-user-here'"), "{e}");
            let root = QemuConf {
                user: Some("root".into()),
                ..QemuConf::default()
            };
            let root = RunAs::from_conf(&root, true).expect("mode");
            assert!(root.for_run().is_err(), "root must be refused");
            let group_only = QemuConf {
                group: Some("kvm".into()),
                ..QemuConf::default()
            };
            assert!(RunAs::from_conf(&group_only, true).is_err());
            assert!(matches!(
                RunAs::from_conf(&QemuConf::default(), true),
                Ok(RunAs::PerGuest(_))
            ));
            assert!(matches!(
                RunAs::from_conf(&QemuConf::default(), false),
                Ok(RunAs::Daemon)
            ));
        } else {
            // Not root: never a switch.
            assert!(matches!(run_as, RunAs::Daemon));
        }
    }

    #[test]
    fn ranges_parse_and_refuse_special_ids() {
        assert_eq!(
            UidRange::parse("66000-66999"),
            Ok(UidRange {
                first: 66000,
                last: 66999
            })
        );
        for bad in ["66000", "5-4", "0-10", "65000-65535", "a-b", "1-4294967295"] {
            assert!(UidRange::parse(bad).is_err(), "{bad}");
        }
        let e = conf("dynamic_user_range = \"9-8\"\n").expect_err("bad range");
        assert!(e.to_string().contains("qemu.conf:1"), "{e}");
        let c = conf("dynamic_user_range = \"70000-70009\"\n").expect("range");
        assert_eq!(
            c.dynamic_user_range.map(|r| r.to_string()).as_deref(),
            Some("70000-70009")
        );
    }

    #[test]
    fn the_pool_picks_round_robin_and_never_twice() {
        // Ids no account on a test machine has.
        let pool = UidPool::new(UidRange {
            first: 3_000_000_000,
            last: 3_000_000_002,
        });
        let a = pool.pick().expect("a");
        let b = pool.pick().expect("b");
        let c = pool.pick().expect("c");
        assert_eq!(
            (a.uid, b.uid, c.uid),
            (3_000_000_000, 3_000_000_001, 3_000_000_002)
        );
        assert!(a.dynamic && a.gid == a.uid && a.groups.contains(&a.uid));
        let e = pool.pick().expect_err("full");
        assert!(
            e.to_string()
                .contains("dynamic_user_range 3000000000-3000000002"),
            "{e}"
        );
        pool.release(b.uid);
        assert_eq!(pool.pick().expect("again").uid, b.uid);
        pool.release(a.uid);
        // The cursor is past b: c, then a after the wrap, are next.
        pool.release(c.uid);
        assert_eq!(pool.pick().expect("next").uid, c.uid);
        assert_eq!(pool.pick().expect("wrapped").uid, a.uid);
        let fresh = UidPool::new(pool.range());
        fresh.reserve(a.uid);
        assert_ne!(fresh.pick().expect("not a").uid, a.uid);
    }

    #[test]
    fn a_tree_is_handed_over_and_back_whole() {
        if !nix::unistd::geteuid().is_root() {
            return;
        }
        let dir = tempfile::tempdir().expect("tmp");
        let tree = dir.path().join("state");
        std::fs::create_dir_all(tree.join("tpm2")).expect("mkdir");
        std::fs::write(tree.join("tpm2/old"), b"x").expect("write");
        let id = Identity {
            uid: 3_000_000_000,
            gid: 3_000_000_000,
            groups: vec![],
            user: "+3000000000".into(),
            dynamic: true,
        };
        let owner = take_tree(&tree, &id).expect("take");
        use std::os::unix::fs::MetadataExt;
        let uid = |p: &Path| std::fs::symlink_metadata(p).expect("meta").uid();
        assert_eq!(uid(&tree.join("tpm2/old")), id.uid);
        // What the user made meanwhile comes back too.
        std::fs::write(tree.join("tpm2/new"), b"y").expect("write");
        std::os::unix::fs::chown(tree.join("tpm2/new"), Some(id.uid), None).expect("chown");
        std::os::unix::fs::symlink("/etc/passwd", tree.join("tpm2/link")).expect("link");
        restore(&[owner]);
        for p in ["", "tpm2", "tpm2/old", "tpm2/new"] {
            assert_eq!(uid(&tree.join(p)), 0, "{p}");
        }
        assert_eq!(uid(Path::new("/etc/passwd")), 0);
    }

    #[test]
    fn pipes_and_devices_are_handed_over_as_libvirt_does() {
        let dir = tempfile::tempdir().expect("tmp");
        let pair = dir.path().join("pair");
        let single = dir.path().join("single");
        for p in ["pair.in", "pair.out", "single"] {
            std::fs::write(dir.path().join(p), b"").expect("write");
        }
        let xml = format!(
            "<domain type='qemu'><name>p</name><memory unit='MiB'>64</memory>\
             <os><type arch='x86_64'>hvm</type></os><devices>\
             <serial type='pipe'><source path='{}'/><target port='0'/></serial>\
             <serial type='pipe'><source path='{}'/><target port='1'/></serial>\
             <serial type='dev'><source path='/dev/ttyS7'/><target port='2'/></serial>\
             </devices></domain>",
            pair.display(),
            single.display()
        );
        let dom = Domain::parse(&xml).expect("parse");
        let got = files(&dom, &[]);
        for want in [
            dir.path().join("pair.in"),
            dir.path().join("pair.out"),
            single.clone(),
            PathBuf::from("/dev/ttyS7"),
        ] {
            assert!(
                got.contains(&want),
                "{} missing from {got:?}",
                want.display()
            );
        }
        assert!(!got.contains(&pair), "{got:?}");
    }
}
