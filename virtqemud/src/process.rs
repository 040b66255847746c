//! QEMU processes: spawned from an argv (never a shell) in their own session, output to a
//! log file. They are watched with `common::child::ChildWatch` (a pidfd), so exit is
//! noticed at once, without polling, both for our children and for QEMUs re-adopted
//! after a daemon restart.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Starts `argv` with stdout/stderr appended to `log`; returns its PID.
pub fn spawn(argv: &[String], log: &Path) -> std::io::Result<u32> {
    spawn_keeping(argv, log, &[], &[], None, None, &[])
}

/// As [`spawn`], and the child also inherits exactly the descriptors in `keep` (tap
/// devices), under the same numbers: their close-on-exec flag is cleared in the child
/// only, so no other process started meanwhile gets them. `env` is added to the
/// daemon's environment (`<qemu:env>`). With `user`, the child drops to that user, its
/// group and supplementary groups before it runs QEMU. With `cpus`, the child and so
/// every thread QEMU starts run only on those host CPUs (`<vcpu cpuset>`). The child
/// writes itself into each `cgroup.procs` file of `cgroup` while still root, before
/// exec: QEMU runs no instruction outside its cgroup (libvirt's order). The child's
/// umask is 077 and the log is 0600.
pub fn spawn_keeping(
    argv: &[String],
    log: &Path,
    keep: &[i32],
    env: &[(String, String)],
    user: Option<&crate::security::Identity>,
    cpus: Option<nix::sched::CpuSet>,
    cgroup: &[std::path::PathBuf],
) -> std::io::Result<u32> {
    let keep = keep.to_vec();
    // Opened here (close-on-exec): the child only writes to them.
    let joins = cgroup
        .iter()
        .map(|p| OpenOptions::new().write(true).open(p))
        .collect::<std::io::Result<Vec<_>>>()?;
    let join_fds: Vec<i32> = joins.iter().map(std::os::fd::AsRawFd::as_raw_fd).collect();
    // Everything the child needs is allocated before the fork.
    let ids: Option<(libc::uid_t, libc::gid_t, Vec<libc::gid_t>)> =
        user.map(|u| (u.uid, u.gid, u.groups.clone()));
    let (prog, args) = argv
        .split_first()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "empty argv"))?;
    // The log is the daemon's: QEMU writes it through the descriptor, nobody else reads.
    let out = {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let f = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(log)?;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f
    };
    let err = out.try_clone()?;
    let mut cmd = Command::new(prog);
    cmd.args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    // SAFETY: setsid, umask, fcntl, sched_setaffinity, write, setgroups, setgid and setuid
    // are async-signal-safe; `keep`, `ids`, `cpus` and `join_fds` were made before the fork
    // and are only read.
    unsafe {
        cmd.pre_exec(move || {
            // What QEMU creates (monitor socket, pidfile) is for its user alone.
            libc::umask(0o077);
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            for fd in &keep {
                if libc::fcntl(*fd, libc::F_SETFD, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            // "0" is the writer itself; as root, before the user changes, and before
            // the affinity, which joining a cpuset group would reset.
            for fd in &join_fds {
                if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some(set) = &cpus {
                nix::sched::sched_setaffinity(Pid::from_raw(0), set)?;
            }
            // Groups first, then the gid, the uid last: after setuid nothing else may
            // change. Each failure stops the start rather than run QEMU as root.
            if let Some((uid, gid, groups)) = &ids {
                if libc::setgroups(groups.len(), groups.as_ptr()) < 0
                    || libc::setgid(*gid) < 0
                    || libc::setuid(*uid) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    // std opens every descriptor with O_CLOEXEC, so QEMU inherits only 0, 1, 2 and `keep`. The
    // Child handle is dropped: the pidfd watcher reaps it.
    let child = cmd.spawn()?;
    drop(joins);
    Ok(child.id())
}

pub fn alive(pid: u32) -> bool {
    kill(Pid::from_raw(pid as i32), None).is_ok()
}

pub fn signal(pid: u32, sig: Signal) {
    let _ = kill(Pid::from_raw(pid as i32), sig);
}

/// True when /proc/PID/cmdline holds `marker` as one of its arguments' substrings: the
/// check that a PID from a status file is still the QEMU we started.
pub fn cmdline_mentions(pid: u32, marker: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .any(|arg| String::from_utf8_lossy(arg).contains(marker))
        })
        .unwrap_or(false)
}

/// The processes whose cmdline holds `marker` (see [`cmdline_mentions`]): how a QEMU
/// spawned just before the daemon died is found when its PID was never recorded.
pub fn pids_mentioning(marker: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != std::process::id() && cmdline_mentions(*pid, marker))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn spawn_watch_terminate() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("x.log");
        let marker = dir.path().join("marker").display().to_string();
        let pid = spawn(
            &[
                "sh".into(),
                "-c".into(),
                "echo hello; exec sleep 30".into(),
                marker.clone(),
            ],
            &log,
        )
        .expect("spawn");
        let qemu = common::child::ChildWatch::new(pid as i32).expect("pidfd");
        for _ in 0..200 {
            if std::fs::read_to_string(&log).is_ok_and(|t| t.contains("hello")) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // While the shell execs sleep, /proc/PID/cmdline reads empty for a moment.
        let mut ours = false;
        for _ in 0..200 {
            ours = cmdline_mentions(pid, "sleep") || cmdline_mentions(pid, &marker);
            if ours {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(ours, "the child's cmdline names it");
        // Its own session.
        assert_eq!(
            nix::unistd::getsid(Some(Pid::from_raw(pid as i32))).ok(),
            Some(Pid::from_raw(pid as i32))
        );
        let start = std::time::Instant::now();
        qemu.terminate(Duration::from_secs(5)).await;
        assert!(start.elapsed() < Duration::from_secs(2));
        assert!(!alive(pid), "reaped, not a zombie");
        let text = std::fs::read_to_string(&log).expect("log");
        assert!(text.contains("hello"));
    }
}
