//! Running virtsh against daemons the tests start: the binaries are the workspace's
//! (`cargo build --workspace` builds them first).

#![allow(dead_code)]

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use common::harness::TestBus;

pub fn sibling(name: &str) -> PathBuf {
    let me = PathBuf::from(env!("CARGO_BIN_EXE_virtsh"));
    let p = me.with_file_name(name);
    assert!(
        p.exists(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        p.display()
    );
    p
}

/// virtsh on the test's session bus, with no URI from the environment.
pub fn command(bus: &TestBus, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_virtsh"));
    c.args(args)
        .env("DBUS_SESSION_BUS_ADDRESS", &bus.address)
        .env_remove("LIBVIRT_DEFAULT_URI")
        .stdin(Stdio::null());
    c
}

pub fn virtsh(bus: &TestBus, args: &[&str]) -> Output {
    command(bus, args).output().expect("run virtsh")
}

/// virtsh with `input` on its stdin (the shell).
pub fn virtsh_stdin(bus: &TestBus, args: &[&str], input: &str) -> Output {
    let mut child = command(bus, args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run virtsh");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input.as_bytes()).expect("write stdin");
    drop(stdin);
    child.wait_with_output().expect("wait virtsh")
}

/// stdout of a command that must succeed.
pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "virtsh failed ({:?}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// stderr of a command that must fail with virsh's status 1 and print nothing.
pub fn fails(out: Output) -> String {
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// stdout of a `--json` command, parsed.
pub fn json(out: Output) -> serde_json::Value {
    let text = ok(out);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// `Label:   value` of an info block.
pub fn field(text: &str, label: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{label}:")))
        .unwrap_or_else(|| panic!("no '{label}:' in {text}"))
        .trim()
        .to_string()
}
