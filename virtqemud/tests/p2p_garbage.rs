//! Broken wire messages on the daemon's peer-to-peer socket, where no dbus-daemon checks
//! them first: after a real SASL handshake, each connection sends one message made from
//! a valid call by flipping, dropping, repeating or overwriting bytes (header lengths,
//! field codes, signatures, body), or bytes that are no message at all, or stops in the
//! middle of one. The daemon may answer or close the connection; it must stay up and
//! keep answering everyone else. `VIRT_FUZZ_RAW` sets the number of messages (1000).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use common::harness::Daemon;
use common::mutate::Rng;
use zbus::message::Message;

mod support;

const BIN: &str = env!("CARGO_BIN_EXE_virtqemud");

/// Valid calls the broken ones are made from: a method with a string, one with a
/// struct-heavy reply, a property write (a variant in the body) and one with no body.
fn seeds() -> Vec<Vec<u8>> {
    fn call(member: &'static str) -> zbus::Result<zbus::message::Builder<'static>> {
        Message::method_call("/org/libvirt/QEMU", member)
            .and_then(|b| b.interface("org.libvirt.Connect"))
    }
    let mut out = Vec::new();
    let xml = "<domain type='qemu'><name>p2p</name><memory unit='MiB'>64</memory>\
               <os><type arch='x86_64'>hvm</type></os></domain>";
    let msgs = [
        call("DomainDefineXML").and_then(|b| b.build(&(xml,))),
        call("ListDomains").and_then(|b| b.build(&(0u32,))),
        call("DomainLookupByName").and_then(|b| b.build(&("p2p",))),
        Message::method_call("/org/libvirt/QEMU", "Set")
            .and_then(|b| b.interface("org.freedesktop.DBus.Properties"))
            .and_then(|b| {
                b.build(&(
                    "org.libvirt.Connect",
                    "Hostname",
                    zbus::zvariant::Value::from("x"),
                ))
            }),
        Message::method_call("/org/libvirt/QEMU", "Introspect")
            .and_then(|b| b.interface("org.freedesktop.DBus.Introspectable"))
            .and_then(|b| b.build(&())),
    ];
    for m in msgs {
        out.push(m.expect("seed message").data().to_vec());
    }
    out
}

/// One broken variant of `seed`.
fn breaks(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut m = seed.to_vec();
    let at = |rng: &mut Rng, m: &[u8]| rng.below(m.len().max(1));
    for _ in 0..=rng.below(4) {
        if m.is_empty() {
            m.push(b'l');
        }
        match rng.below(8) {
            0 => {
                let i = at(rng, &m);
                if let Some(b) = m.get_mut(i) {
                    *b ^= 1 << rng.below(8);
                }
            }
            // The fixed header: endianness, type, flags, version, body length, serial,
            // header-field array length; where the lengths lie, a parser trusts them.
            1 => {
                let i = rng.below(16.min(m.len()));
                m[i] = [0, 0xff, 0x7f, 0x80, 1, b'l', b'B'][rng.below(7)];
            }
            2 => m.truncate(at(rng, &m)),
            3 => {
                let i = at(rng, &m);
                let n = rng.below(64);
                let chunk: Vec<u8> = m[i..(i + n).min(m.len())].to_vec();
                m.splice(i..i, chunk);
            }
            4 => {
                let i = at(rng, &m);
                let n = rng.below(32).min(m.len() - i);
                m.drain(i..i + n);
            }
            5 => {
                // A length field set huge: 4 bytes of 0xff somewhere in the header.
                let i = rng.below(m.len().min(64).saturating_sub(4).max(1));
                for b in m.iter_mut().skip(i).take(4) {
                    *b = 0xff;
                }
            }
            6 => {
                let i = at(rng, &m);
                m.insert(i, [b'(', b')', b'a', b'v', b'{', 0][rng.below(6)]);
            }
            _ => m = (0..rng.below(256)).map(|_| rng.below(256) as u8).collect(),
        }
    }
    m
}

/// Connects and authenticates as the calling user (EXTERNAL), as zbus would.
fn handshake(socket: &Path) -> std::io::Result<UnixStream> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let uid: String = nix::unistd::getuid()
        .to_string()
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect();
    s.write_all(format!("\0AUTH EXTERNAL {uid}\r\n").as_bytes())?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line)?;
    if !line.starts_with("OK ") {
        return Err(std::io::Error::other(format!("auth refused: {line:?}")));
    }
    s.write_all(b"BEGIN\r\n")?;
    Ok(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_messages_on_the_peer_socket_leave_the_daemon_up() {
    let n: usize = std::env::var("VIRT_FUZZ_RAW")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let q = support::qemud(BIN).await;
    let daemon: &Daemon = &q.daemon;
    let socket = daemon.socket();
    let seeds = seeds();
    // The harness itself: an unbroken call on a raw connection gets its reply.
    let mut s = handshake(&socket).expect("handshake");
    s.write_all(&seeds[1]).expect("send");
    let mut buf = [0u8; 4096];
    assert!(
        s.read(&mut buf).expect("reply") > 0,
        "no reply to a valid call"
    );
    drop(s);
    let fds = |pid: u32| std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count());
    let fds_before = fds(daemon.pid);
    let mut rng = Rng(0x5eed_2026);
    let (mut answered, mut closed, mut stalled) = (0, 0, 0);
    for i in 0..n {
        let seed = &seeds[i % seeds.len()];
        let msg = breaks(&mut rng, seed);
        let mut s = handshake(&socket).expect("handshake");
        // Half the time stop there, as a client that dies mid-message would.
        let cut = rng.below(2) == 0;
        let sent = if cut {
            let half = msg.len() / 2;
            s.write_all(&msg[..half])
        } else {
            s.write_all(&msg)
        };
        if cut {
            drop(s);
            stalled += 1;
        } else if sent.is_ok() {
            s.set_read_timeout(Some(Duration::from_millis(50)))
                .expect("timeout");
            let mut buf = [0u8; 4096];
            match s.read(&mut buf) {
                Ok(0) | Err(_) => closed += 1,
                Ok(_) => answered += 1,
            }
        } else {
            closed += 1;
        }
        if i % 100 == 99 {
            q.qc.list_domains(0)
                .await
                .unwrap_or_else(|e| panic!("daemon not answering after {} messages: {e}", i + 1));
        }
    }
    let log = q.daemon.log_text();
    assert!(
        !log.contains("panicked"),
        "a task of the daemon panicked:\n{log}"
    );
    // Every connection it was sent is closed: none is kept (bounded wait for the
    // daemon to see the last ones end).
    let mut fds_after = fds(daemon.pid);
    for _ in 0..100 {
        if fds_after <= fds_before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        fds_after = fds(daemon.pid);
    }
    // One more is the definitions' journal, opened by the first DomainDefineXML that
    // got through.
    assert!(
        fds_after <= fds_before + 1,
        "the daemon holds {fds_after} descriptors after the garbage, {fds_before} before"
    );
    // Still up, on the bus and on its socket.
    q.qc.list_domains(0)
        .await
        .expect("bus call after the garbage");
    let peer = q.daemon.peer_connection().await.expect("peer connection");
    let pc = common::proxies::qemu::QemuConnectProxy::new(&peer)
        .await
        .expect("proxy");
    pc.list_domains(0)
        .await
        .expect("peer call after the garbage");
    eprintln!(
        "{n} broken messages: {answered} answered, {closed} closed or unanswered, \
         {stalled} cut mid-message; daemon up"
    );
}
