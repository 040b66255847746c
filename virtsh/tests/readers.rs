//! virsh's domain readers, `create`, `--json`, the shell, a closed pipe, completion and
//! the man page, against a real virtqemud on a private bus.

use std::process::Stdio;

use common::harness::{Daemon, TestBus};

mod support;
use support::{command, fails, field, json, ok, sibling, virtsh, virtsh_stdin};

fn domain_xml(name: &str, disk: &str) -> String {
    format!(
        "<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>\
         <currentMemory unit='MiB'>64</currentMemory><vcpu>2</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type></os><devices>\
         <disk type='file' device='disk'><driver name='qemu' type='raw'/>\
         <source file='{disk}'/><target dev='vda' bus='virtio'/></disk>\
         <interface type='user'><mac address='52:54:00:12:34:56'/><model type='virtio'/></interface>\
         </devices></domain>"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domain_readers_json_and_create() {
    let bus = TestBus::start().expect("bus");
    let daemon = Daemon::builder(sibling("virtqemud"), "virtqemud")
        .spawn(&bus)
        .await
        .expect("virtqemud");
    let dir = daemon.dirs.root.path();
    let disk = dir.join("r1.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).expect("disk");
    let xml = dir.join("r1.xml");
    std::fs::write(&xml, domain_xml("r1", &disk.display().to_string())).expect("xml");
    let xml = xml.to_str().expect("utf-8 path");
    ok(virtsh(&bus, &["define", xml]));

    // Inactive: virsh's dominfo fields from the XML, "-" for the ID.
    let info = ok(virtsh(&bus, &["dominfo", "r1"]));
    assert_eq!(field(&info, "Id"), "-");
    assert_eq!(field(&info, "Name"), "r1");
    assert_eq!(field(&info, "State"), "shut off");
    assert_eq!(field(&info, "CPU(s)"), "2");
    assert_eq!(field(&info, "Max memory"), "65536 KiB");
    assert_eq!(field(&info, "Used memory"), "65536 KiB");
    assert_eq!(field(&info, "Persistent"), "yes");
    assert_eq!(field(&info, "Autostart"), "disable");
    assert!(info.starts_with("Id:             -\n"), "{info}");
    assert_eq!(ok(virtsh(&bus, &["domid", "r1"])), "-\n");
    let uuid = field(&info, "UUID");
    assert_eq!(ok(virtsh(&bus, &["domuuid", "r1"])).trim(), uuid);
    assert_eq!(ok(virtsh(&bus, &["domname", &uuid])).trim(), "r1");

    let blk = ok(virtsh(&bus, &["domblklist", "r1"]));
    let disk_s = disk.display().to_string();
    assert_eq!(
        blk,
        format!(
            " Target   Source\n{}\n vda      {disk_s}\n",
            "-".repeat(9 + disk_s.len() + 3)
        )
    );
    let ifl = ok(virtsh(&bus, &["domiflist", "r1"]));
    assert!(
        ifl.lines()
            .nth(2)
            .is_some_and(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["-", "user", "-", "virtio", "52:54:00:12:34:56"]),
        "{ifl}"
    );
    let j = json(virtsh(&bus, &["domiflist", "r1", "--json"]));
    assert_eq!(j[0]["mac"], "52:54:00:12:34:56");
    assert_eq!(j[0]["type"], "user");

    // Running (paused keeps it cheap): ID, stats from the live QEMU.
    ok(virtsh(&bus, &["start", "r1", "--paused"]));
    let id = ok(virtsh(&bus, &["domid", "r1"])).trim().to_string();
    assert!(id.parse::<u32>().is_ok(), "{id}");
    let info = ok(virtsh(&bus, &["dominfo", "r1"]));
    assert_eq!(field(&info, "Id"), id);
    assert_eq!(field(&info, "State"), "paused");
    assert!(field(&info, "CPU time").ends_with('s'), "{info}");
    let j = json(virtsh(&bus, &["dominfo", "r1", "--json"]));
    assert_eq!(j["id"].as_u64(), id.parse().ok());
    assert_eq!(j["max_memory"], 65536);
    assert_eq!(j["state"], "paused");
    assert_eq!(j["uuid"], uuid.as_str());

    assert_eq!(
        ok(virtsh(&bus, &["domstate", "r1", "--reason"])).trim(),
        "paused (user)"
    );
    let stats = ok(virtsh(&bus, &["domstats", "r1"]));
    assert!(
        stats.starts_with("Domain: 'r1'\n  state.state=3\n  state.reason="),
        "{stats}"
    );
    assert!(stats.contains("\n  block.0.name=vda\n"), "{stats}");
    assert!(stats.contains("\n  balloon.maximum=65536\n"), "{stats}");
    assert!(stats.ends_with("\n\n"), "{stats}");
    let j = json(virtsh(&bus, &["domstats", "--state", "--json"]));
    assert_eq!(j["r1"]["state.state"], 3);
    assert!(j["r1"].get("block.count").is_none(), "{j}");

    let blk = ok(virtsh(&bus, &["domblkstat", "r1", "vda"]));
    let names: Vec<&str> = blk
        .lines()
        .map(|l| l.split(' ').nth(1).unwrap_or(""))
        .collect();
    assert!(
        names.starts_with(&["rd_req", "rd_bytes", "wr_req", "wr_bytes"]),
        "{blk}"
    );
    assert!(blk.lines().all(|l| l.starts_with("vda ")), "{blk}");
    let j = json(virtsh(&bus, &["domblkstat", "r1", "vda", "--json"]));
    assert!(j["rd_req"].is_u64(), "{j}");
    let err = fails(virtsh(&bus, &["domblkstat", "r1", "vdz"]));
    assert!(err.contains("vdz"), "{err}");

    let mem = ok(virtsh(&bus, &["dommemstat", "r1"]));
    assert!(mem.lines().any(|l| l.starts_with("rss ")), "{mem}");
    let vcpus = ok(virtsh(&bus, &["vcpuinfo", "r1"]));
    assert_eq!(vcpus.matches("VCPU:").count(), 2, "{vcpus}");
    assert!(vcpus.starts_with("VCPU:           0\n"), "{vcpus}");
    let j = json(virtsh(&bus, &["vcpuinfo", "r1", "--json"]));
    assert_eq!(j.as_array().map(Vec::len), Some(2));

    // The user NIC has no host device and so no counters; a wrong name is an error.
    let err = fails(virtsh(&bus, &["domifstat", "r1", "vnet9"]));
    assert!(err.contains("vnet9"), "{err}");

    // A table under --json: typed ID, the name and state.
    let j = json(virtsh(&bus, &["list", "--json"]));
    assert_eq!(j[0]["name"], "r1");
    assert_eq!(j[0]["id"].as_u64(), id.parse().ok());
    ok(virtsh(&bus, &["destroy", "r1"]));

    // create: a transient domain that is gone once destroyed.
    let disk2 = dir.join("t1.img");
    std::fs::write(&disk2, vec![0u8; 1 << 20]).expect("disk");
    let xml2 = dir.join("t1.xml");
    std::fs::write(&xml2, domain_xml("t1", &disk2.display().to_string())).expect("xml");
    let out = ok(virtsh(
        &bus,
        &["create", xml2.to_str().expect("utf-8"), "--paused"],
    ));
    assert_eq!(
        out,
        format!("Domain 't1' created from {}\n", xml2.display())
    );
    assert_eq!(ok(virtsh(&bus, &["domstate", "t1"])).trim(), "paused");
    assert_eq!(
        field(&ok(virtsh(&bus, &["dominfo", "t1"])), "Persistent"),
        "no"
    );
    // One column, and the list filters: t1 is transient, r1 persistent and shut off.
    assert_eq!(ok(virtsh(&bus, &["list", "--all", "--name"])), "r1\nt1\n");
    assert_eq!(ok(virtsh(&bus, &["list", "--transient", "--name"])), "t1\n");
    assert_eq!(
        ok(virtsh(&bus, &["list", "--all", "--persistent", "--uuid"])),
        format!("{uuid}\n")
    );
    let j = json(virtsh(&bus, &["list", "--inactive", "--name", "--json"]));
    assert_eq!(j, serde_json::json!(["r1"]));
    let stats = ok(virtsh(&bus, &["domstats", "--state", "--list-paused"]));
    assert_eq!(stats, "Domain: 't1'\n  state.state=3\n  state.reason=1\n\n");
    ok(virtsh(&bus, &["destroy", "t1"]));
    let err = fails(virtsh(&bus, &["dominfo", "t1"]));
    assert!(err.starts_with("error: Domain not found"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_pipe_completion_and_man() {
    let bus = TestBus::start().expect("bus");
    let daemon = Daemon::builder(sibling("virtqemud"), "virtqemud")
        .spawn(&bus)
        .await
        .expect("virtqemud");
    let dir = daemon.dirs.root.path();
    for i in 0..3 {
        let xml = dir.join(format!("s{i}.xml"));
        std::fs::write(&xml, domain_xml(&format!("s{i}"), "/nonexistent.img")).expect("xml");
        ok(virtsh(&bus, &["define", xml.to_str().expect("utf-8")]));
    }

    // The shell with stdin not a terminal: no prompt, commands in order, an error
    // reported and the session going on, `quit` ending it before the last line.
    let out = virtsh_stdin(
        &bus,
        &[],
        "list --all\n# a comment\ndomname s1; domuuid nosuch\n  \ndomid s2 --json\nquit\nlist\n",
    );
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stdout.contains("virtsh #"), "{stdout}");
    assert_eq!(stdout.matches(" Id   Name   State").count(), 1, "{stdout}");
    assert!(stdout.contains(" -    s2     shut off\n"), "{stdout}");
    assert!(stdout.ends_with("shut off\ns1\nnull\n"), "{stdout}");
    assert!(stderr.starts_with("error: Domain not found"), "{stderr}");
    // End of input ends it too, with status 0; a bad line is a usage message.
    let out = virtsh_stdin(&bus, &[], "nosuchverb\ndomname s0");
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "s0\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("unrecognized subcommand 'nosuchverb'"));

    // On a terminal (a pty from script(1)): the greeting and virsh's kind of prompt.
    let mut child = std::process::Command::new("script")
        .args(["-qec", env!("CARGO_BIN_EXE_virtsh"), "/dev/null"])
        .env("DBUS_SESSION_BUS_ADDRESS", &bus.address)
        .env_remove("LIBVIRT_DEFAULT_URI")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("script (util-linux)");
    // stdin stays open until virtsh has quit: script(1) would end the session at its end.
    let mut input = child.stdin.take().expect("stdin");
    std::io::Write::write_all(&mut input, b"domname s0\nquit\n").expect("write");
    let out = child.wait_with_output().expect("script");
    drop(input);
    let tty = String::from_utf8_lossy(&out.stdout);
    assert!(tty.contains("Welcome to virtsh"), "{tty:?}");
    assert!(tty.contains("virtsh # "), "{tty:?}");
    // The terminal echoes the typed lines first; the answer follows the prompt.
    assert!(tty.contains("virtsh # s0\r\nvirtsh # "), "{tty:?}");

    // A line that is not UTF-8 is a bad command, not the end of the session.
    let mut child = command(&bus, &[])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("virtsh");
    let mut input = child.stdin.take().expect("stdin");
    std::io::Write::write_all(&mut input, b"dom\xffname s0\ndomname s1\n").expect("write");
    drop(input);
    let out = child.wait_with_output().expect("wait");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "s1\n");

    // A reader that closes the pipe at once: no panic, status 0, nothing on stderr.
    let mut child = command(&bus, &["list", "--all"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("virtsh");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Usage errors are virsh's status 1; help is 0.
    assert_eq!(virtsh(&bus, &["dominfo"]).status.code(), Some(1));
    assert_eq!(virtsh(&bus, &["--help"]).status.code(), Some(0));

    let bash = ok(virtsh(&bus, &["completion", "bash"]));
    assert!(
        bash.contains("complete -F _virtsh") && bash.contains("vol-upload"),
        "bash"
    );
    let zsh = ok(virtsh(&bus, &["completion", "zsh"]));
    assert!(zsh.starts_with("#compdef virtsh") && zsh.contains("dominfo"));
    let fish = ok(virtsh(&bus, &["completion", "fish"]));
    assert!(fish.contains("complete -c virtsh") && fish.contains("nodedev-detach"));
    let man = ok(virtsh(&bus, &["man"]));
    assert!(
        man.contains(".TH virtsh 1") && man.contains("LIBVIRT_DEFAULT_URI"),
        "{man}"
    );
}

/// domifstat needs a NIC with a host device: an ethernet NIC's tap, made by virtqemud
/// inside a network namespace the test creates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn domifstat_on_a_tap() {
    let bus = TestBus::start().expect("bus");
    let ns = common::harness::NetNs::new().expect("netns");
    let daemon = Daemon::builder(sibling("virtqemud"), "virtqemud")
        .netns(&ns)
        .spawn(&bus)
        .await
        .expect("virtqemud");
    let xml = daemon.dirs.root.path().join("e.xml");
    std::fs::write(
        &xml,
        "<domain type='qemu'><name>e1</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>\
         <os><type arch='x86_64' machine='pc'>hvm</type></os><devices>\
         <interface type='ethernet'><mac address='52:54:00:92:00:02'/>\
         <target dev='vstap0'/></interface></devices></domain>",
    )
    .expect("xml");
    ok(virtsh(&bus, &["define", xml.to_str().expect("utf-8")]));
    let err = fails(virtsh(&bus, &["domifstat", "e1", "vstap0"]));
    assert!(err.contains("domain is not running"), "{err}");
    ok(virtsh(&bus, &["start", "e1", "--paused"]));

    let fields = [
        "rx_bytes",
        "rx_packets",
        "rx_errs",
        "rx_drop",
        "tx_bytes",
        "tx_packets",
        "tx_errs",
        "tx_drop",
    ];
    let stat = ok(virtsh(&bus, &["domifstat", "e1", "vstap0"]));
    let names: Vec<&str> = stat
        .lines()
        .map(|l| {
            assert!(l.starts_with("vstap0 "), "{stat}");
            l.split(' ').nth(1).unwrap_or("")
        })
        .collect();
    assert_eq!(names, fields, "{stat}");
    // By MAC address too, and as JSON with the same counters.
    let by_mac = ok(virtsh(&bus, &["domifstat", "e1", "52:54:00:92:00:02"]));
    assert_eq!(by_mac.lines().count(), 8, "{by_mac}");
    let j = json(virtsh(&bus, &["domifstat", "e1", "vstap0", "--json"]));
    for f in fields {
        assert!(j[f].is_u64(), "{f}: {j}");
    }
    let ifl = ok(virtsh(&bus, &["domiflist", "e1"]));
    assert!(
        ifl.lines()
            .nth(2)
            .is_some_and(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["vstap0", "ethernet", "-", "rtl8139", "52:54:00:92:00:02"]),
        "{ifl}"
    );
    // domiftune: set on the tap, shown back; perf: switched on, listed, counted.
    ok(virtsh(
        &bus,
        &[
            "domiftune",
            "e1",
            "vstap0",
            "--inbound",
            "1000,2000",
            "--live",
        ],
    ));
    let tune = ok(virtsh(&bus, &["domiftune", "e1", "52:54:00:92:00:02"]));
    assert!(tune.contains("inbound.average: 1000"), "{tune}");
    assert!(tune.contains("inbound.peak   : 2000"), "{tune}");
    assert!(tune.contains("outbound.average: 0"), "{tune}");
    let class = ns
        .run_ok(&["tc", "class", "show", "dev", "vstap0"])
        .expect("tc");
    assert!(class.contains("rate 8Mbit"), "{class}");
    let e = fails(virtsh(
        &bus,
        &["domiftune", "e1", "vstap0", "--inbound", "x"],
    ));
    assert!(e.contains("'x' is not a number"), "{e}");
    ok(virtsh(
        &bus,
        &["perf", "e1", "--enable", "task_clock,page_faults"],
    ));
    let perf = ok(virtsh(&bus, &["perf", "e1"]));
    assert!(perf.contains("task_clock          : enabled"), "{perf}");
    assert!(perf.contains("cpu_cycles          : disabled"), "{perf}");
    let stats = ok(virtsh(&bus, &["domstats", "e1", "--perf"]));
    assert!(stats.contains("perf.task_clock="), "{stats}");
    let e = fails(virtsh(
        &bus,
        &["perf", "e1", "--enable", "warp", "--live", "--current"],
    ));
    assert!(e.contains("--current"), "{e}");
    ok(virtsh(&bus, &["destroy", "e1"]));
}
