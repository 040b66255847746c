//! Starting QEMU for a domain, and the one step that releases what a run held. A failed
//! start, QEMU's exit and a reattach that finds QEMU gone all end a run through
//! [`Driver::release`], so nothing is undone one way here and another way there.
//! A start holds the domain's lock file from its first step, and QEMU inherits it, so
//! there is never a second QEMU for one domain; the run is on disk before it takes
//! anything, and again after each step that takes something.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::error::VirError;
use common::event::{
    DomainEvent, PausedReason, RunningReason, StartedDetail, StateReason, SuspendedDetail,
};
use tokio::sync::{mpsc, watch};

use super::domain::Live;
use super::registry::check_conflicts;
use super::status::{qemu_pidfile, Status};
use super::{firmware_dirs, io_err, no_definition, Dom, Driver, StartFlags, MONITOR_WAIT};
use crate::model::{self, DomainDef};
use common::child::ChildWatch;

use crate::process;
use crate::qmp::{self, Qmp};

/// What a run holds besides QEMU itself, to give back when it ends.
#[derive(Default)]
pub(super) struct Held {
    /// Host devices detached from their host drivers.
    pub hostdevs: bool,
    /// Network ports and taps (recorded in the live definition).
    pub nics: bool,
    /// QEMU's monitor socket; its folder is the run's own (pidfile, helper sockets).
    pub qmp: Option<PathBuf>,
    /// Files handed to QEMU's user, with their owners before.
    pub owners: Vec<crate::security::Owner>,
    /// The uid of its own the run got, back to the pool when it ends.
    pub dynamic_uid: Option<u32>,
    /// Its cgroup, removed when it ends.
    pub cgroup: Option<crate::cgroup::DomainGroup>,
}

impl Held {
    /// Everything a running QEMU holds.
    pub fn all(
        qmp: PathBuf,
        owners: Vec<crate::security::Owner>,
        dynamic_uid: Option<u32>,
    ) -> Held {
        Held {
            hostdevs: true,
            nics: true,
            qmp: Some(qmp),
            owners,
            dynamic_uid,
            cgroup: None,
        }
    }

    /// With the run's cgroup (named by its id and the domain's name).
    pub fn with_cgroup(mut self, g: Option<crate::cgroup::DomainGroup>) -> Held {
        self.cgroup = g;
        self
    }
}

/// A QEMU spawned and answering on its monitor, not yet running the guest.
struct Spawned {
    id: u32,
    pid: u32,
    qemu: ChildWatch,
    qmp: Qmp,
    events: mpsc::UnboundedReceiver<qmp::Event>,
    /// Stopped if the start fails before QEMU runs; ends with QEMU after.
    swtpm: Option<crate::tpm::Swtpm>,
}

impl Driver {
    /// DomainCreateXML: a transient domain, started at once.
    pub async fn create_xml(&self, xml: &str, flags: u32) -> Result<Arc<Dom>, VirError> {
        let flags: StartFlags = common::error::flags(flags)?;
        let caps = self.caps().await?;
        let _call = self.calls.enter();
        let def = DomainDef::parse_new(xml, &caps)?;
        let dom = {
            let mut reg = self.reg();
            check_conflicts(&reg, &def)?;
            if let Some(d) = reg.by_uuid.get(&def.uuid) {
                if d.active() {
                    return Err(VirError::operation_invalid(format!(
                        "domain '{}' is already active",
                        def.name
                    )));
                }
                return Err(VirError::operation_failed(format!(
                    "domain '{}' already exists with uuid {}",
                    def.name, def.uuid
                )));
            }
            let dom = Dom::new(def.uuid, def.name.clone(), None, false);
            reg.insert(dom.name(), dom.clone());
            dom
        };
        self.publish_added(&dom).await;
        let r = {
            let _lock = dom.begin_job().await;
            self.start_locked(&dom, def, flags, None).await
        };
        if let Err(e) = r {
            self.remove(&dom).await;
            return Err(e);
        }
        Ok(dom)
    }

    /// Domain.Create: starts a defined domain.
    pub async fn create(&self, dom: &Arc<Dom>, flags: u32) -> Result<(), VirError> {
        let flags: StartFlags = common::error::flags(flags)?;
        if flags.contains(StartFlags::AUTODESTROY) {
            return Err(VirError::unsupported_flags(StartFlags::AUTODESTROY.bits()));
        }
        let _call = self.calls.enter();
        let _lock = dom.begin_job().await;
        let def = {
            let g = dom.lock();
            if g.live.is_some() {
                return Err(VirError::operation_invalid("domain is already running"));
            }
            g.config.clone().ok_or_else(no_definition)?
        };
        // A managed save image is where the domain left off: it resumes from there,
        // unless FORCE_BOOT discards the image.
        let image = self.managed_save_path(&def.name);
        if image.exists() {
            if !flags.contains(StartFlags::FORCE_BOOT) {
                return self.start_from_managed_save(dom, &image, flags).await;
            }
            std::fs::remove_file(&image).map_err(|e| io_err("remove", &image, &e))?;
        }
        self.start_locked(dom, def, flags, None).await
    }

    pub(super) async fn start_locked(
        &self,
        dom: &Arc<Dom>,
        mut def: DomainDef,
        flags: StartFlags,
        from: Option<super::save::StartFrom>,
    ) -> Result<(), VirError> {
        // First: nothing of the run is touched while another QEMU still holds the domain.
        let lock = self.lock_domain(&def.name)?;
        let dropped = drop_missing_optional(&mut def);
        // UEFI firmware and its variable store are chosen now, into the live definition.
        let dirs = firmware_dirs();
        let dirs: Vec<&Path> = dirs.iter().map(PathBuf::as_path).collect();
        crate::firmware::prepare(&mut def.dom, &dirs, &self.paths.nvram)?;
        crate::graphics::assign_ports(&mut def.dom)?;
        let mut held = Held::default();
        use super::save::StartFrom;
        let extra_argv: Vec<String> = match &from {
            // The guest's state comes over the monitor's migrate-incoming, not from boot.
            Some(StartFrom::Image(_) | StartFrom::Incoming(_)) => {
                vec!["-incoming".into(), "defer".into()]
            }
            Some(StartFrom::Snapshot(tag)) => vec!["-loadvm".into(), tag.clone()],
            None => Vec::new(),
        };
        let restored = matches!(from, Some(StartFrom::Image(_)));
        // A migration's destination: QEMU listens and stays paused until Finish.
        let incoming = match &from {
            Some(StartFrom::Incoming(i)) => Some(i.record.clone()),
            _ => None,
        };
        let boots = from.is_none();
        let mut spawned = match self
            .spawn(dom, &mut def, &mut held, &lock, extra_argv)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                self.release(dom, &def.dom, held).await;
                return Err(e);
            }
        };
        let mut prepared = Self::prepare_guest(&spawned.qmp, &mut def).await;
        // Threads to their groups first: a move into a cpuset group resets a thread's
        // affinity, the pins after it stay.
        if let (Ok(()), Some(g)) = (&prepared, &held.cgroup) {
            let t = std::time::Instant::now();
            prepared = super::tuning::place_threads(g, &spawned.qmp, spawned.pid, &def).await;
            tracing::info!(domain = %def.name, "threads placed in {:?}", t.elapsed());
        }
        if prepared.is_ok() {
            prepared = super::settings::apply_pins(&spawned.qmp, spawned.pid, &def).await;
        }
        // libvirt fails a start whose perf events cannot be opened.
        let mut perf = crate::perf::Counters::default();
        if prepared.is_ok() {
            prepared = crate::perf::enabled_in(&def.dom.other)
                .iter()
                .try_for_each(|e| perf.enable(e, spawned.pid));
        }
        let mut run_after = !flags.contains(StartFlags::PAUSED) && incoming.is_none();
        match (&prepared, from) {
            (Ok(()), Some(StartFrom::Image(r))) => {
                run_after &= r.running;
                let dom_dir = held
                    .qmp
                    .as_deref()
                    .and_then(Path::parent)
                    .map(Path::to_path_buf);
                prepared = match dom_dir {
                    Some(d) => super::save::migrate_in(&spawned.qmp, &d, r.file).await,
                    None => Err(VirError::internal("the run has no folder")),
                };
            }
            (Ok(()), Some(StartFrom::Incoming(i))) => {
                prepared = super::migrate::listen(&spawned.qmp, &i).await;
            }
            _ => {}
        }
        if let Err(e) = prepared {
            spawned.qemu.terminate(Duration::from_secs(1)).await;
            self.release(dom, &def.dom, held).await;
            return Err(e);
        }
        // For people and tools, like libvirt's: nothing here reads it back, so no fsync.
        let _ = common::persist::write_atomic(
            &self.pid_file(&def.name),
            format!("{}\n", spawned.pid).as_bytes(),
            0o600,
        );
        if let Some(t) = spawned.swtpm.take() {
            t.handed_over();
        }
        let paused = !run_after;
        let qmp = spawned.qmp.clone();
        let (reason, started, suspended) = if incoming.is_some() {
            (
                RunningReason::Migrated,
                StartedDetail::Migrated,
                SuspendedDetail::Migrated,
            )
        } else if restored {
            (
                RunningReason::Restored,
                StartedDetail::Restored,
                SuspendedDetail::Restored,
            )
        } else if !boots {
            (
                RunningReason::FromSnapshot,
                StartedDetail::FromSnapshot,
                SuspendedDetail::FromSnapshot,
            )
        } else {
            (
                RunningReason::Booted,
                StartedDetail::Booted,
                SuspendedDetail::Paused,
            )
        };
        self.go_live(dom, def, held, spawned, paused, reason);
        if let Some(l) = dom.lock().live.as_mut() {
            l.perf = perf;
        }
        if let Some(m) = &incoming {
            let mut g = dom.lock();
            g.state = StateReason::Paused(PausedReason::Migration);
            if let Some(l) = g.live.as_mut() {
                l.migration = Some(m.clone());
            }
        }
        self.save_status(dom).await;
        if !paused {
            if let Err(e) = qmp.execute("cont", None).await {
                drop(self.destroy_locked(dom).await);
                return Err(e.into());
            }
        }
        self.lifecycle(dom, DomainEvent::Started(started)).await;
        for s in dropped {
            self.outbox
                .send(super::Change::Signal(dom.clone(), s))
                .await;
        }
        // libvirt's destination tells STARTED/MIGRATED alone: it is paused until Finish.
        if paused && incoming.is_none() {
            self.lifecycle(dom, DomainEvent::Suspended(suspended)).await;
        }
        self.props_changed(dom).await;
        Ok(())
    }

    /// Records the run as starting, takes its resources (its user, volumes, host
    /// devices, network ports and taps, its folder, files for QEMU's user, swtpm),
    /// recording each, and spawns QEMU at `-S` (handing it `lock`) up to an open monitor. What it took
    /// is in `held` also when it fails; QEMU and swtpm are gone then.
    async fn spawn(
        &self,
        dom: &Dom,
        def: &mut DomainDef,
        held: &mut Held,
        lock: &File,
        extra_argv: Vec<String>,
    ) -> Result<Spawned, VirError> {
        let mode = self.ctx.settings.mode;
        // First the user, so a start that cannot have one touches nothing else.
        let user = self.run_as.for_run()?;
        held.dynamic_uid = user.as_ref().filter(|u| u.dynamic).map(|u| u.uid);
        if let Some(u) = &user {
            tracing::info!(domain = %def.name, uid = u.uid, gid = u.gid, "QEMU's user");
        }
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let next = self.paths.run.join("next-id");
        // Off the async workers: it syncs.
        let _ = tokio::task::spawn_blocking(move || {
            common::persist::write_atomic(&next, (id + 1).to_string().as_bytes(), 0o600)
        })
        .await;
        // QEMU's own folder, owned by its user: monitor socket, its pidfile, helper
        // sockets. The daemon keeps NAME.pid beside it, as libvirt does.
        let dom_dir = self.paths.run.join(format!("domain-{id}"));
        let qmp_path = dom_dir.join("monitor.sock");
        held.qmp = Some(qmp_path.clone());
        // The run is on disk before it takes anything, and again after each step that
        // takes something: a daemon killed at any point finds what to give back.
        let mut record = starting_record(dom, def, id, &qmp_path, held);
        self.record_starting(dom, &record).await?;
        let volume_paths = crate::volumes::resolve(&mut def.dom, mode).await?;
        crate::hostdevs::detach(&def.dom, mode).await?;
        held.hostdevs = true;
        if crate::hostdevs::any_managed(&def.dom) {
            record = starting_record(dom, def, id, &qmp_path, held);
            self.record_starting(dom, &record).await?;
        }
        let nics = crate::nics::prepare(&mut def.dom, mode).await?;
        held.nics = true;
        if def.dom.devices.interfaces.iter().any(|n| {
            n.portid.is_some() || matches!(n.kind, crate::xml::InterfaceKind::Direct { .. })
        }) {
            record = starting_record(dom, def, id, &qmp_path, held);
            self.record_starting(dom, &record).await?;
        }
        let tap_fds = nics.raw_fds();
        let _ = std::fs::remove_file(self.pid_file(&def.name));
        make_domain_dir(&dom_dir, user.as_ref())?;
        let extra: Vec<PathBuf> = volume_paths.iter().map(|v| v.2.clone()).collect();
        let swtpm_log = self.paths.log.join(format!("{}-swtpm.log", def.name));
        let tpm_dir = crate::tpm::prepare(&def.dom, &dom.uuid.to_string(), &self.paths.swtpm)?;
        let tpm = tpm_dir.as_deref().map(|d| (d, swtpm_log.as_path()));
        held.owners = self.take_files(&def.dom, &extra, tpm, user.as_ref())?;
        // The final record before QEMU exists: owners, and the definition with every
        // path, port and tap resolved. swtpm's pidfile is in the run's folder, so a
        // daemon killed from here on finds swtpm too.
        record = starting_record(dom, def, id, &qmp_path, held);
        self.record_starting(dom, &record).await?;
        // swtpm before QEMU, which connects to it at once; it ends with QEMU.
        let swtpm = crate::tpm::start(
            &def.dom,
            &dom.uuid.to_string(),
            &self.paths.swtpm,
            &dom_dir,
            &swtpm_log,
            user.as_ref(),
        )
        .await?;
        let bus = self
            .ctx
            .hub
            .connections()
            .into_iter()
            .find(|c| c.unique_name().is_some());
        let disk_secrets =
            crate::secrets::prepare(&def.dom, &dom_dir, user.as_ref(), bus.as_ref()).await?;
        let mut argv = model::argv(
            def,
            &model::LaunchPaths {
                qmp: &qmp_path,
                pidfile: &dom_dir.join("qemu.pid"),
                runtime_dir: &dom_dir,
                tap_fds: &tap_fds,
                volume_paths: &volume_paths,
                tpm_socket: swtpm.as_ref().map(|t| t.socket.as_path()),
                disk_secrets: &disk_secrets,
            },
            self.sandbox,
        )?;
        argv.extend(extra_argv);
        let log = self.log_file(&def.name);
        tracing::info!(domain = %def.name, "starting: {}", argv.join(" "));
        let mut keep: Vec<i32> = tap_fds.iter().flatten().copied().collect();
        keep.push(lock.as_raw_fd());
        let env = def
            .dom
            .qemu_commandline
            .as_ref()
            .map(|c| c.env.clone())
            .unwrap_or_default();
        if def.dom.qemu_commandline.is_some() {
            taint_custom_argv(&def.name, id, &log);
        }
        let cpus = pinned_cpus(&def.dom)?;
        // Its cgroup, with the domain-wide knobs, before QEMU exists; QEMU joins it
        // before exec. The record has the id, so a restart finds the group by name.
        let t = std::time::Instant::now();
        self.make_group(&def.dom, id, &def.name, &mut held.cgroup)?;
        let mut join = Vec::new();
        if let Some(g) = &held.cgroup {
            Self::tune_group(g, &def.dom)?;
            join = g.join_files();
            tracing::info!(domain = %def.name, "cgroup made and tuned in {:?}", t.elapsed());
        }
        let spawned = process::spawn_keeping(&argv, &log, &keep, &env, user.as_ref(), cpus, &join)
            .map_err(|e| {
                VirError::operation_failed(format!("cannot start QEMU '{}': {e}", argv[0]))
            })
            .and_then(|pid| {
                ChildWatch::new(pid as i32)
                    .map(|w| (pid, w))
                    .map_err(|e| VirError::system("pidfd_open", &e))
            });
        // QEMU holds its own copies now: a tap lives exactly as long as QEMU does.
        drop(nics);
        let (pid, qemu) = spawned?;
        // The PID at once; without it a restart still finds QEMU by its pidfile or its
        // command line, so a failed write does not stop the start.
        record.pid = pid;
        if let Err(e) = self.save_starting(dom, &record).await {
            tracing::warn!(domain = %def.name, "status with the PID not written: {e}");
        }
        write_holder(lock, pid);
        let monitor = connect_monitor(&qmp_path, &qemu).await;
        crate::secrets::remove(&disk_secrets);
        match monitor {
            Ok((qmp, events)) => Ok(Spawned {
                id,
                pid,
                qemu,
                qmp,
                events,
                swtpm,
            }),
            Err(e) => {
                qemu.terminate(Duration::from_secs(1)).await;
                Err(VirError::operation_failed(format!(
                    "QEMU for domain '{}' did not start: {e}{}",
                    def.name,
                    log_tail(&log)
                )))
            }
        }
    }

    /// Writes the record of a run that is starting; a start that cannot record itself
    /// does not go on.
    async fn record_starting(&self, dom: &Dom, record: &Status) -> Result<(), VirError> {
        self.save_starting(dom, record)
            .await
            .map_err(|e| io_err("write the status of", &self.status_file(&record.name), &e))
    }

    /// Passwords before anything can connect to a running guest (QEMU is at -S), links
    /// that start down, and the VNC port QEMU picked.
    async fn prepare_guest(qmp: &Qmp, def: &mut DomainDef) -> Result<(), VirError> {
        crate::graphics::set_passwords(qmp, &def.dom).await?;
        crate::graphics::set_links(qmp, &def.dom).await?;
        crate::graphics::record_vnc_port(qmp, &mut def.dom).await;
        Ok(())
    }

    /// Records the run in the domain and starts its monitor task.
    fn go_live(
        &self,
        dom: &Arc<Dom>,
        def: DomainDef,
        held: Held,
        s: Spawned,
        paused: bool,
        reason: RunningReason,
    ) {
        let (exit_tx, exit_rx) = watch::channel(false);
        {
            let mut g = dom.lock();
            g.live = Some(Live {
                id: s.id,
                pid: s.pid,
                owners: held.owners,
                dynamic_uid: held.dynamic_uid,
                saving: None,
                qmp_path: held.qmp.unwrap_or_default(),
                qmp: s.qmp,
                def,
                destroying: false,
                shutdown_seen: false,
                crashed: false,
                fake_reboot: false,
                saved: false,
                dumped_crash: false,
                plugging: None,
                copying: None,
                perf: crate::perf::Counters::default(),
                migration: None,
                exited: exit_rx,
            });
            g.state = if paused {
                StateReason::Paused(PausedReason::User)
            } else {
                StateReason::Running(reason)
            };
        }
        if let Some(d) = self.arc() {
            tokio::spawn(super::monitor::monitor(
                d,
                dom.clone(),
                s.events,
                s.qemu,
                exit_tx,
            ));
        }
    }

    /// Gives back what a run held: files to their owners, its folder and files, its
    /// uid, network ports, host devices. The one way a run ends, whatever ended it.
    pub(super) async fn release(&self, dom: &Dom, def: &crate::xml::Domain, held: Held) {
        let mode = self.ctx.settings.mode;
        // swtpm may still be saving the TPM's state as QEMU's user.
        if let Some(dir) = held.qmp.as_deref().and_then(Path::parent) {
            crate::tpm::wait_gone(dir, Duration::from_secs(5)).await;
        }
        crate::security::restore(&held.owners);
        if let Some(qmp) = &held.qmp {
            self.cleanup_files(dom, qmp).await;
        }
        // Last of the files: nothing of the run is its any more. A process still left
        // with the uid (an swtpm exiting) keeps the pool from handing it out again.
        if let (Some(uid), Some(pool)) = (held.dynamic_uid, self.run_as.pool()) {
            pool.release(uid);
        }
        if held.nics {
            crate::nics::release(def, mode).await;
        }
        if held.hostdevs {
            crate::hostdevs::reattach(def, mode).await;
        }
        // QEMU's threads have left it by now (a few tries while they exit).
        if let Some(g) = held.cgroup {
            let _ = tokio::task::spawn_blocking(move || g.remove()).await;
        }
    }

    /// Takes the domain's lock (`<run>/NAME.lock`, an exclusive `flock`). QEMU inherits
    /// the descriptor, so the lock lives as long as QEMU, whoever started it; the file
    /// holds QEMU's PID for the message of a start it refuses. Never removed: a lock file
    /// unlinked while held would let the next start lock a new one.
    fn lock_domain(&self, name: &str) -> Result<File, VirError> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.lock_file(name);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io_err("open", &path, &e))?;
        // SAFETY: flock on a descriptor this function owns; no memory is passed.
        let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(io_err("lock", &path, &e));
            }
            let holder = std::fs::read_to_string(&path)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok());
            return Err(VirError::operation_invalid(match holder {
                Some(pid) => format!("domain '{name}' is already running in process {pid}"),
                None => format!("domain '{name}' is already being started"),
            }));
        }
        // The PID of an earlier run is stale now.
        let _ = file.set_len(0);
        Ok(file)
    }

    /// Hands the files QEMU and swtpm open themselves to their user: swtpm's state
    /// folder and log (`tpm`) always, as swtpm writes them; the others with qemu.conf
    /// `dynamic_ownership`. Returns their owners before, to give them back when QEMU
    /// is gone.
    fn take_files(
        &self,
        dom: &crate::xml::Domain,
        extra: &[PathBuf],
        tpm: Option<(&Path, &Path)>,
        user: Option<&crate::security::Identity>,
    ) -> Result<Vec<crate::security::Owner>, VirError> {
        let Some(id) = user else {
            return Ok(Vec::new());
        };
        let mut owners = Vec::new();
        if let Some((dir, log)) = tpm {
            owners.push(crate::security::take_tree(dir, id)?);
            let log = crate::security::precreate(log)
                .and_then(|()| crate::security::take(&[log.to_owned()], id));
            match log {
                Ok(t) => owners.extend(t),
                Err(e) => {
                    crate::security::restore(&owners);
                    return Err(e);
                }
            }
        }
        if self.dynamic_ownership {
            let files = crate::security::files(dom, extra);
            let taken = match self.run_as.pool() {
                Some(pool) => crate::security::check_not_held(&files, pool.range(), id),
                None => Ok(()),
            }
            .and_then(|()| crate::security::precreate_chardev_files(dom))
            .and_then(|()| crate::security::take(&files, id));
            match taken {
                Ok(t) => owners.extend(t),
                Err(e) => {
                    crate::security::restore(&owners);
                    return Err(e);
                }
            }
        }
        Ok(owners)
    }
}

/// Creates QEMU's own folder for a run (mode 0700), owned by the user QEMU runs as:
/// only that user and root reach its monitor socket, pidfile and helper sockets.
/// The host CPUs `<vcpu cpuset>` pins QEMU to, those this host has (the daemon's own
/// affinity): libvirt's pinning of the emulator and its vCPUs when no finer pinning
/// is given.
fn pinned_cpus(dom: &crate::xml::Domain) -> Result<Option<nix::sched::CpuSet>, VirError> {
    let Some(wanted) = crate::command_line::host_cpus(dom)? else {
        return Ok(None);
    };
    let ours = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
        .map_err(|e| VirError::system("sched_getaffinity", &std::io::Error::from(e)))?;
    let mut set = nix::sched::CpuSet::new();
    for cpu in wanted {
        if ours.is_set(cpu).unwrap_or(false) {
            set.set(cpu)
                .map_err(|e| VirError::system("CPU set", &std::io::Error::from(e)))?;
        }
    }
    if (0..nix::sched::CpuSet::count()).all(|c| !set.is_set(c).unwrap_or(false)) {
        return Err(VirError::new(
            common::error::ErrorCode::ConfigUnsupported,
            format!(
                "<vcpu cpuset> '{}' names no CPU this host lets QEMU run on",
                dom.vcpu_cpuset.as_deref().unwrap_or_default()
            ),
        ));
    }
    Ok(Some(set))
}

fn make_domain_dir(dir: &Path, user: Option<&crate::security::Identity>) -> Result<(), VirError> {
    let _ = std::fs::remove_dir_all(dir);
    common::persist::create_dir_all(dir, 0o700).map_err(|e| io_err("create", dir, &e))?;
    if let Some(u) = user {
        std::os::unix::fs::chown(dir, Some(u.uid), Some(u.gid))
            .map_err(|e| io_err("chown", dir, &e))?;
    }
    Ok(())
}

/// The status of a run about to spawn QEMU: everything [`Driver::release`] needs (the
/// live definition records the ports and host devices), no PID yet.
fn starting_record(dom: &Dom, def: &DomainDef, id: u32, qmp: &Path, held: &Held) -> Status {
    let (state, reason) = StateReason::Paused(PausedReason::StartingUp).wire();
    Status {
        name: def.name.clone(),
        uuid: dom.uuid,
        id,
        pid: 0,
        qmp: qmp.to_owned(),
        pidfile: Some(qemu_pidfile(qmp)),
        starting: true,
        holds_hostdevs: held.hostdevs,
        holds_nics: held.nics,
        xml: def.to_xml(None),
        persistent: dom.persistent(),
        state,
        reason,
        owners: held.owners.clone(),
        dynamic_uid: held.dynamic_uid,
        saving: None,
        ids: Default::default(),
        plugging: None,
        copying: None,
        migration: None,
    }
}

/// Writes QEMU's PID into the domain's lock file, for people and for the message of a
/// refused start; nothing depends on it, so no sync.
fn write_holder(lock: &File, pid: u32) {
    use std::os::unix::fs::FileExt;
    let _ = lock.set_len(0);
    let _ = lock.write_all_at(format!("{pid}\n").as_bytes(), 0);
}

/// As libvirt, in QEMU's log: this domain runs with arguments we did not make.
fn taint_custom_argv(name: &str, id: u32, log: &Path) {
    use std::io::Write;
    tracing::warn!(domain = %name, "Domain id={id} is tainted: custom-argv");
    use std::os::unix::fs::OpenOptionsExt;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(log)
    {
        let _ = writeln!(f, "Domain id={id} is tainted: custom-argv");
    }
}

async fn connect_monitor(
    path: &Path,
    qemu: &ChildWatch,
) -> Result<(Qmp, mpsc::UnboundedReceiver<qmp::Event>), String> {
    let deadline = tokio::time::Instant::now() + MONITOR_WAIT;
    let mut delay = Duration::from_millis(1);
    loop {
        if path.exists() {
            match Qmp::connect(path, qmp::DEFAULT_TIMEOUT).await {
                Ok(c) => return Ok(c),
                Err(e) if tokio::time::Instant::now() > deadline => return Err(e.to_string()),
                Err(_) => {}
            }
        }
        if qemu.has_exited() {
            return Err("QEMU exited".into());
        }
        if tokio::time::Instant::now() > deadline {
            return Err("timed out waiting for the monitor".into());
        }
        tokio::select! {
            _ = qemu.exited() => return Err("QEMU exited".into()),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_millis(2));
    }
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(3).collect();
    if lines.is_empty() {
        String::new()
    } else {
        let mut l = lines;
        l.reverse();
        format!(": {}", l.join(" | "))
    }
}

/// libvirt's `startupPolicy` at start: a file medium that is missing with policy
/// `optional` is dropped from the run (a cdrom or floppy stays, empty; a disk goes), each
/// told by DiskChange. `mandatory` and `requisite` keep it, and QEMU refuses the start
/// naming the file.
fn drop_missing_optional(def: &mut DomainDef) -> Vec<crate::events::DomainSignal> {
    use crate::xml::{DiskDevice, DiskSource};
    let mut out = Vec::new();
    let mut i = 0;
    while i < def.dom.devices.disks.len() {
        let d = &def.dom.devices.disks[i];
        let optional = d
            .extra_attrs
            .iter()
            .any(|(e, k, v)| e == "source" && k == "startupPolicy" && v == "optional");
        let missing = match &d.source {
            Some(DiskSource::File(p)) => (!p.exists()).then(|| p.display().to_string()),
            _ => None,
        };
        let (Some(path), true) = (missing, optional) else {
            i += 1;
            continue;
        };
        tracing::warn!(domain = %def.name, disk = %d.target_dev, "dropping the missing optional medium '{path}'");
        out.push(crate::events::DomainSignal::DiskChange {
            old_src: path,
            new_src: String::new(),
            device: def.disk_qdev(i),
            reason: 0,
        });
        if matches!(d.device, DiskDevice::Cdrom | DiskDevice::Floppy) {
            def.dom.devices.disks[i].source = None;
            i += 1;
        } else {
            def.dom.devices.disks.remove(i);
        }
    }
    out
}
