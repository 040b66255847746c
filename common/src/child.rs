//! Watches a process through a pidfd, so its exit is noticed at once without polling or
//! a thread per child: dnsmasq now, QEMU and swtpm later. A child of ours is reaped by
//! the watch, through the pidfd itself, so a recycled PID can never be reaped by mistake.

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;

/// One watched process. Any number of tasks may await [`ChildWatch::exited`] at once.
pub struct ChildWatch {
    fd: AsyncFd<OwnedFd>,
    pid: i32,
}

impl std::fmt::Debug for ChildWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildWatch")
            .field("pid", &self.pid)
            .finish()
    }
}

impl ChildWatch {
    /// Opens a pidfd for `pid`. For a child, open it before anything could reap the
    /// child (a zombie still has its pidfd; a reaped PID does not).
    pub fn new(pid: i32) -> io::Result<ChildWatch> {
        // SAFETY: plain syscall with integer arguments; the result is a new fd we own.
        let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        let raw = i32::try_from(raw).map_err(|_| io::Error::other("pidfd out of range"))?;
        // SAFETY: the kernel just returned this descriptor to us.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: we own `fd` and hand it over whole; nothing else polls or closes it.
        let fd = unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)?;
        Ok(ChildWatch { fd, pid })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Returns once the process has exited, and reaps it when it is our child.
    pub async fn exited(&self) {
        loop {
            match self.fd.readable().await {
                Ok(mut g) => {
                    // Exit is final: keep the readiness for every other waiter.
                    g.retain_ready();
                    break;
                }
                Err(_) => {
                    // The reactor lost the fd (never expected): fall back to polling.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if self.has_exited() {
                        break;
                    }
                }
            }
        }
        self.reap();
    }

    /// True once the process has exited (without waiting); reaps it when our child.
    pub fn has_exited(&self) -> bool {
        let mut fds = [libc::pollfd {
            fd: self.fd.get_ref().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: one valid pollfd, zero timeout.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) };
        let gone = n > 0 && fds[0].revents & libc::POLLIN != 0;
        if gone {
            self.reap();
        }
        gone
    }

    /// Sends `sig` (through the PID; the pidfd keeps it from being recycled while the
    /// process is an unreaped child).
    pub fn signal(&self, sig: Signal) {
        let _ = kill(Pid::from_raw(self.pid), sig);
    }

    /// SIGTERM, then SIGKILL after `grace`; returns once the process is gone.
    pub async fn terminate(&self, grace: Duration) {
        self.signal(Signal::SIGTERM);
        if tokio::time::timeout(grace, self.exited()).await.is_err() {
            self.signal(Signal::SIGKILL);
            self.exited().await;
        }
    }

    fn reap(&self) {
        // Through the pidfd: only this very process. ECHILD (not our child, or already
        // reaped by another waiter) is expected and harmless.
        let _ = waitid(
            Id::PIDFd(self.fd.get_ref().as_fd()),
            WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn notices_exit_and_reaps() {
        let child = std::process::Command::new("sleep")
            .arg("0.2")
            .spawn()
            .expect("spawn sleep");
        let pid = child.id() as i32;
        let w = ChildWatch::new(pid).expect("pidfd");
        assert!(!w.has_exited());
        tokio::time::timeout(Duration::from_secs(5), w.exited())
            .await
            .expect("exit noticed");
        assert!(w.has_exited());
        // Reaped: no zombie left behind.
        assert!(std::fs::metadata(format!("/proc/{pid}")).is_err());
        drop(child);
    }

    #[tokio::test]
    async fn terminate_and_many_waiters() {
        let child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let w = std::sync::Arc::new(ChildWatch::new(child.id() as i32).expect("pidfd"));
        let w2 = w.clone();
        let other = tokio::spawn(async move { w2.exited().await });
        w.terminate(Duration::from_secs(2)).await;
        tokio::time::timeout(Duration::from_secs(5), other)
            .await
            .expect("second waiter woken")
            .expect("join");
        // Reaped through the pidfd by terminate(), not by Child::wait.
        drop(child);
    }
}
