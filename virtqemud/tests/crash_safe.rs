//! kill -9 of virtqemud at many points of Create: before QEMU is spawned, between the
//! spawn and its monitor answering, and after. Whatever the point, the restarted daemon
//! knows every QEMU of the domain (at most one, and the domain is active exactly when it
//! runs), Destroy leaves none, and the next Create starts exactly one.
//!
//! The same for ManagedSave and for the Create that restores from its image: whatever
//! the point, the guest is in exactly one place afterwards, its QEMU or its image.
//!
//! `VIRT_CHAOS_ROUNDS` sets the number of kills (15 by default).

use std::path::Path;
use std::time::{Duration, Instant};

mod support;

use common::harness::{wait_gone, Daemon};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use support::{bus_err, domain};

const BIN: &str = env!("CARGO_BIN_EXE_virtqemud");
const NAME: &str = "crashsafe";

fn xml() -> String {
    format!(
        "<domain type='qemu'><name>{NAME}</name><memory unit='MiB'>64</memory>\
         <vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os></domain>"
    )
}

/// With an emulated TPM: swtpm is started (and recorded) before QEMU.
fn xml_with_tpm() -> String {
    format!(
        "<domain type='qemu'><name>{NAME}</name><memory unit='MiB'>64</memory>\
         <vcpu>1</vcpu><os><type arch='x86_64' machine='q35'>hvm</type></os><devices>\
         <tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>\
         </devices></domain>"
    )
}

/// The QEMUs of domain `NAME` started under the test folder `root` (zombies have an
/// empty cmdline and are not counted).
fn qemu_pids(root: &Path) -> Vec<u32> {
    let guest = format!("guest={NAME},");
    pids_with(root, |args| args.iter().any(|a| a.starts_with(&guest)))
}

/// The swtpm processes serving a run under `root`.
fn swtpm_pids(root: &Path) -> Vec<u32> {
    pids_with(root, |args| {
        args.first().is_some_and(|a| a.ends_with("swtpm"))
    })
}

/// Processes whose arguments pass `is_it`, with one naming `root`.
fn pids_with(root: &Path, is_it: impl Fn(&[String]) -> bool) -> Vec<u32> {
    let root = root.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let args: Vec<String> = raw
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            is_it(&args) && args.iter().any(|a| a.contains(&root))
        })
        .collect()
}

/// SIGKILL, then waits through a pidfd: it reports exit once every thread is gone (and
/// with them QEMU's descriptors and its lock), where a zombie leader may be seen sooner.
async fn kill_all(pids: &[u32]) {
    for &pid in pids {
        let watch = common::child::ChildWatch::new(pid as i32);
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
        if let Ok(w) = watch {
            let _ = tokio::time::timeout(Duration::from_secs(5), w.exited()).await;
        }
        wait_gone(pid, Duration::from_secs(5));
    }
}

/// Waits (bounded) until the domain's QEMUs number `n`.
fn wait_count(root: &Path, n: usize, within: Duration) -> Vec<u32> {
    wait_for(root, qemu_pids, n, within)
}

/// Waits (bounded) until `find` lists `n` processes.
fn wait_for(root: &Path, find: fn(&Path) -> Vec<u32>, n: usize, within: Duration) -> Vec<u32> {
    let start = Instant::now();
    loop {
        let pids = find(root);
        if pids.len() == n || start.elapsed() > within {
            return pids;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn rounds() -> usize {
    std::env::var("VIRT_CHAOS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15)
        .max(1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_create_never_leaves_an_unknown_qemu() {
    storm(&xml(), false).await;
}

/// The same with swtpm, which runs before QEMU: after every restart there is one swtpm
/// exactly when the domain runs, none otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_create_never_leaves_an_unknown_swtpm() {
    assert!(
        Path::new("/usr/bin/swtpm").exists(),
        "this test needs the 'swtpm' package (scripts/install-deps.sh installs it)"
    );
    storm(&xml_with_tpm(), true).await;
}

async fn storm(xml: &str, tpm: bool) {
    let q = support::qemud(BIN).await;
    let bus = q.bus;
    let conn = q.conn;
    let mut daemon: Daemon = q.daemon;
    let root = daemon.dirs.root.path().to_owned();
    let path = q.qc.domain_define_xml(xml).await.expect("define");

    // A warm-up start probes and caches the emulator's capabilities and tells how long
    // a Create takes here, so the kills can be spread over the whole of it.
    let d = domain(&conn, &path).await;
    let t = Instant::now();
    d.create(0).await.expect("warm-up create");
    let create_time = t.elapsed();
    d.destroy(0).await.expect("warm-up destroy");
    assert!(wait_count(&root, 0, Duration::from_secs(5)).is_empty());
    let span = create_time.max(Duration::from_millis(40)).mul_f64(1.2);
    eprintln!("a Create takes {create_time:?} here; kills spread over 0..{span:?}");

    let n = rounds();
    let mut broken: Vec<String> = Vec::new();
    let mut adopted = 0;
    let mut killed = 0;
    let mut logged = [0, 0];
    for i in 0..n {
        // Denser early: QEMU is spawned within the first few milliseconds, most of a
        // Create is waiting for its monitor.
        let delay = if n == 1 {
            Duration::ZERO
        } else {
            span.mul_f64((i as f64 / (n - 1) as f64).powi(2))
        };
        let d = domain(&conn, &path).await;
        let call = tokio::spawn(async move { d.create(0).await });
        let replied;
        (replied, daemon) = support::kill_during(daemon, &bus, delay, call).await;
        let d = domain(&conn, &path).await;
        // What the restarted daemon says it found, for the figures.
        let log = daemon.log_text();
        let count = |what: &str| log.matches(what).count();
        let found = [
            count("killing its QEMU"),
            count("interrupted before QEMU ran"),
        ];
        let seen = match (found[0] - logged[0], found[1] - logged[1]) {
            (1, _) => {
                killed += 1;
                "a spawned QEMU killed"
            }
            (_, 1) => "ended before the spawn",
            _ => "no start in progress",
        };
        logged = found;

        let mut problems = Vec::new();
        let pids = qemu_pids(&root);
        let active = d.active().await.expect("active");
        if pids.len() > 1 {
            problems.push(format!("{} QEMUs after restart", pids.len()));
        }
        if active != (pids.len() == 1) {
            problems.push(format!("active={active} while {} QEMU(s) run", pids.len()));
        }
        if tpm {
            // A run ended by the restart gives its swtpm a grace period to go.
            let want = usize::from(active);
            let swtpms = wait_for(&root, swtpm_pids, want, Duration::from_secs(10));
            if swtpms.len() != want {
                problems.push(format!("{} swtpm(s) while active={active}", swtpms.len()));
            }
        }
        if active {
            adopted += 1;
            d.destroy(0).await.expect("destroy after restart");
            let left = wait_count(&root, 0, Duration::from_secs(10));
            if !left.is_empty() {
                problems.push(format!("Destroy left QEMU {left:?}"));
            }
        }
        // Whatever the daemon left, this round ends here: the next start must work.
        let before = qemu_pids(&root);
        match d.create(0).await {
            Ok(()) => {
                let now = qemu_pids(&root);
                if now.len() != 1 {
                    problems.push(format!("{} QEMUs after a new Create", now.len()));
                }
                if let Err(e) = d.destroy(0).await {
                    problems.push(format!("Destroy after the new Create: {e}"));
                }
                let left = wait_count(&root, before.len(), Duration::from_secs(10));
                if left.len() > before.len() {
                    problems.push(format!("Destroy left QEMU {left:?}"));
                }
            }
            Err(e) => {
                let msg = bus_err(Err::<(), _>(e));
                // Refusing because an unknown QEMU still holds the domain is right only
                // if that QEMU was the problem already reported.
                if before.is_empty() {
                    problems.push(format!("Create after restart failed: {msg}"));
                } else {
                    eprintln!("round {i}: Create refused: {msg}");
                }
            }
        }
        kill_all(&qemu_pids(&root)).await;
        kill_all(&swtpm_pids(&root)).await;

        eprintln!(
            "round {i}: kill after {delay:?}, Create {}, restart: {seen}, {} QEMU(s), {}",
            if replied { "replied" } else { "cut" },
            pids.len(),
            if problems.is_empty() {
                "ok".to_string()
            } else {
                problems.join("; ")
            }
        );
        if !problems.is_empty() {
            broken.push(format!("round {i} ({delay:?}): {}", problems.join("; ")));
        }
    }
    eprintln!(
        "{n} rounds: {} broken, {adopted} adopted as active, {killed} half-started QEMUs killed",
        broken.len()
    );
    assert!(
        broken.is_empty(),
        "{} of {n} rounds broken:\n{}",
        broken.len(),
        broken.join("\n")
    );
}

/// The lock outlives a lost record: a QEMU the daemon does not know (its status file
/// gone while the daemon was away) still holds the domain, and Create says so instead
/// of starting a second QEMU on the same disks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_refused_while_an_unknown_qemu_holds_the_domain() {
    let q = support::qemud(BIN).await;
    let mut daemon = q.daemon;
    let root = daemon.dirs.root.path().to_owned();
    let path = q.qc.domain_define_xml(&xml()).await.expect("define");
    let d = domain(&q.conn, &path).await;
    d.create(0).await.expect("create");
    let pids = qemu_pids(&root);
    assert_eq!(pids.len(), 1);

    daemon.kill9();
    let status = daemon.dirs.runtime.join(format!("qemu/{NAME}.json"));
    std::fs::remove_file(&status).expect("remove the status file");
    let _daemon = daemon
        .restart_builder()
        .spawn(&q.bus)
        .await
        .expect("restart");
    let d = domain(&q.conn, &path).await;
    assert!(!d.active().await.expect("active"), "no record, no run");
    let e = bus_err(d.create(0).await);
    assert!(
        e.contains(&format!(
            "Requested operation is not valid: domain '{NAME}' is already running in process {}",
            pids[0]
        )),
        "{e}"
    );
    assert_eq!(qemu_pids(&root), pids, "no second QEMU");

    // Once that QEMU is gone the domain starts again.
    kill_all(&pids).await;
    d.create(0)
        .await
        .expect("create after the stray QEMU is gone");
    assert_eq!(qemu_pids(&root).len(), 1);
    d.destroy(0).await.expect("destroy");
    assert!(wait_count(&root, 0, Duration::from_secs(10)).is_empty());
}

/// Half-written images (`.NAME.save.part-PID`) anywhere under `root`.
fn partial_images(root: &Path) -> Vec<std::path::PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if e.file_name().to_string_lossy().contains(".save.part-") {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    walk(root, &mut out);
    out
}

/// kill -9 during ManagedSave, then during the Create that resumes from the image. After
/// every restart the guest is exactly in one place: running (one QEMU, no image) or
/// saved (no QEMU, an image). Never both, which would let a later Create resume an old
/// state over disks that moved on; never neither, which would lose it; never a partial
/// image left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_save_or_restore_keeps_the_guest_in_one_place() {
    let q = support::qemud(BIN).await;
    let bus = q.bus;
    let conn = q.conn;
    let mut daemon: Daemon = q.daemon;
    let root = daemon.dirs.root.path().to_owned();
    let path = q.qc.domain_define_xml(&xml()).await.expect("define");

    // Warm-up: how long a save and a restore take here, to spread the kills over them.
    let d = domain(&conn, &path).await;
    d.create(0).await.expect("warm-up create");
    let t = Instant::now();
    d.managed_save(0).await.expect("warm-up save");
    let save_time = t.elapsed();
    let t = Instant::now();
    d.create(0).await.expect("warm-up restore");
    let restore_time = t.elapsed();
    assert!(!d.has_managed_save_image(0).await.expect("has image"));
    eprintln!("a ManagedSave takes {save_time:?} here, a restoring Create {restore_time:?}");

    let n = rounds();
    let mut broken: Vec<String> = Vec::new();
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    for i in 0..n {
        let frac = if n == 1 {
            0.5
        } else {
            i as f64 / (n - 1) as f64
        };
        for (what, span) in [("save", save_time), ("restore", restore_time)] {
            let d = domain(&conn, &path).await;
            // Each phase starts from the state the previous one should leave.
            let ready = match what {
                "save" => d.active().await.expect("active"),
                _ => d.has_managed_save_image(0).await.expect("has image"),
            };
            if !ready {
                continue;
            }
            // Every other round near the end, where the image appears and the run ends.
            let delay = if i % 2 == 0 {
                span.mul_f64(1.2 * frac)
            } else {
                span.mul_f64(0.8 + 0.4 * frac)
            };
            let call = tokio::spawn(async move {
                match what {
                    "save" => d.managed_save(0).await,
                    _ => d.create(0).await,
                }
            });
            let replied;
            (replied, daemon) = support::kill_during(daemon, &bus, delay, call).await;
            let d = domain(&conn, &path).await;
            let pids = wait_count(&root, 1, Duration::from_millis(200));
            let active = d.active().await.expect("active");
            let image = d.has_managed_save_image(0).await.expect("has image");
            let mut problems = Vec::new();
            if pids.len() > 1 {
                problems.push(format!("{} QEMUs", pids.len()));
            }
            if active != (pids.len() == 1) {
                problems.push(format!("active={active} while {} QEMU(s) run", pids.len()));
            }
            match (active, image) {
                (true, true) => problems.push("running and a managed save image".into()),
                (false, false) => problems.push("guest lost: no QEMU, no image".into()),
                _ => {}
            }
            let partial = partial_images(&root);
            if !partial.is_empty() {
                problems.push(format!("partial images left: {partial:?}"));
            }
            let outcome = format!(
                "{what} {} -> {}",
                if replied { "replied" } else { "cut" },
                if active { "running" } else { "saved" }
            );
            *outcomes.entry(outcome.clone()).or_default() += 1;
            eprintln!(
                "round {i}: kill {delay:?} into {outcome}: {}",
                support::verdict(&problems)
            );
            if !problems.is_empty() {
                broken.push(format!(
                    "round {i} ({what}, {delay:?}): {}",
                    problems.join("; ")
                ));
                // Back to a known state for the next round.
                kill_all(&qemu_pids(&root)).await;
                let _ = d.managed_save_remove(0).await;
            }
        }
        // A round that ends saved, or broken, resumes for the next.
        let d = domain(&conn, &path).await;
        if !d.active().await.expect("active") {
            d.create(0).await.expect("create for the next round");
        }
    }
    let d = domain(&conn, &path).await;
    d.destroy(0).await.expect("destroy");
    assert!(wait_count(&root, 0, Duration::from_secs(10)).is_empty());
    // What the restarts had to mend (each daemon's log starts where the last one ended).
    let log = daemon.log_text();
    let mended = [
        "finishing a save cut short",
        "its save had finished",
        "undoing a save cut short",
        "removing the managed save image",
        "killing its QEMU",
    ]
    .map(|m| format!("{m}: {}", log.matches(m).count()));
    eprintln!(
        "{n} rounds: {} broken; outcomes {outcomes:?}; {}",
        broken.len(),
        mended.join(", ")
    );
    assert!(
        broken.is_empty(),
        "{} kills broke the guest:\n{}",
        broken.len(),
        broken.join("\n")
    );
}

/// The narrow windows the storm above rarely hits, made on purpose: the daemon is killed
/// and its record set to what a kill at that instant leaves. A restart settles each:
/// - restored from the managed image, killed before removing it: the image goes (left,
///   a later Create would resume an old state over disks that moved on);
/// - the save's image whole, killed before ending QEMU: the save finishes;
/// - killed mid-save (guest paused, a partial file): the save is undone, the guest runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_settles_a_save_or_restore_it_did_not_see_through() {
    let q = support::qemud(BIN).await;
    let mut daemon = q.daemon;
    let root = daemon.dirs.root.path().to_owned();
    let path = q.qc.domain_define_xml(&xml()).await.expect("define");
    let image = daemon.dirs.config.join(format!("qemu/save/{NAME}.save"));
    let status = daemon.dirs.runtime.join(format!("qemu/{NAME}.json"));
    let temp = image.with_file_name(format!(".{NAME}.save.part-1"));
    let d = domain(&q.conn, &path).await;
    d.create(0).await.expect("create");
    d.managed_save(0).await.expect("managed save");
    let kept = std::fs::read(&image).expect("the image");
    d.create(0).await.expect("restore");
    assert!(!image.exists(), "a restore consumes the managed image");

    let record_save = |resume: bool| {
        let mut st: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&status).expect("status")).expect("json");
        st["saving"] = serde_json::json!({"image": image, "temp": temp, "resume": resume});
        std::fs::write(&status, serde_json::to_vec(&st).expect("json")).expect("write status");
    };

    // Restored, killed before the image was removed.
    daemon.kill9();
    std::fs::write(&image, &kept).expect("put the image back");
    daemon = daemon
        .restart_builder()
        .spawn(&q.bus)
        .await
        .expect("restart");
    let d = domain(&q.conn, &path).await;
    assert!(
        d.active().await.expect("active"),
        "the restored run is adopted"
    );
    assert!(!image.exists(), "the consumed image is removed at adoption");
    assert_eq!(qemu_pids(&root).len(), 1);

    // The image whole, killed before QEMU was ended.
    daemon.kill9();
    record_save(true);
    std::fs::write(&image, &kept).expect("the image of the save");
    daemon = daemon
        .restart_builder()
        .spawn(&q.bus)
        .await
        .expect("restart");
    let d = domain(&q.conn, &path).await;
    assert!(!d.active().await.expect("active"), "the save is finished");
    assert_eq!(
        d.get_state(0).await.expect("state"),
        (5, 5),
        "shut off, saved"
    );
    assert!(d.has_managed_save_image(0).await.expect("has image"));
    assert!(wait_count(&root, 0, Duration::from_secs(10)).is_empty());

    // Paused by a save that wrote only part of its file.
    d.create(0).await.expect("restore again");
    d.suspend().await.expect("suspend, as the save does");
    daemon.kill9();
    record_save(true);
    std::fs::write(&temp, b"half an image").expect("partial file");
    daemon = daemon
        .restart_builder()
        .spawn(&q.bus)
        .await
        .expect("restart");
    let d = domain(&q.conn, &path).await;
    assert_eq!(d.get_state(0).await.expect("state").0, 1, "running again");
    assert!(!temp.exists(), "the partial file is removed");
    assert!(!d.has_managed_save_image(0).await.expect("has image"));
    assert_eq!(qemu_pids(&root).len(), 1);
    d.destroy(0).await.expect("destroy");
    assert!(wait_count(&root, 0, Duration::from_secs(10)).is_empty());
    drop(daemon);
}
