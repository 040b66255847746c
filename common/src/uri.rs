//! Connections by libvirt URI, for virtsh and for a virtqemud dialing a migration's
//! destination (`dconuri`): `qemu:///system` and `qemu:///session` are the system
//! and session bus; `qemu+unix:///system?socket=PATH` is a socket, either a daemon's
//! peer-to-peer one or a bus; `qemu+ssh://[user@]host[:port]/system|session` runs
//! `ssh ... systemd-stdio-bridge` and speaks D-Bus over its stdio, as `busctl -H` does.
//!
//! URI parameters follow libvirt's: `socket` (the remote bus, given to the bridge as
//! `--bus-path`), `netcat` (the remote bridge command instead of `systemd-stdio-bridge`),
//! `command` (the local ssh binary), `keyfile`, `known_hosts`, `no_verify`, `no_tty`.

use std::os::fd::OwnedFd;
use std::process::{Child, Command, Stdio};

use anyhow::{anyhow, bail, Context as _};

/// A parsed libvirt URI.
#[derive(Debug, PartialEq)]
pub struct Uri {
    pub transport: Transport,
    pub user: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    /// `system` or `session`.
    pub session: bool,
    pub params: Vec<(String, String)>,
}

#[derive(Debug, PartialEq, Clone, Copy)]
pub enum Transport {
    Local,
    Unix,
    Ssh,
}

impl Uri {
    pub fn parse(s: &str) -> anyhow::Result<Uri> {
        let bad = || anyhow!("invalid connection URI '{s}'");
        let (scheme, rest) = s.split_once("://").ok_or_else(bad)?;
        let transport = match scheme {
            "qemu" => Transport::Local,
            "qemu+unix" => Transport::Unix,
            "qemu+ssh" => Transport::Ssh,
            _ => {
                bail!(
                    "unsupported connection URI '{s}': only qemu, qemu+unix and qemu+ssh are known"
                )
            }
        };
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let session = match path {
            "/system" => false,
            "/session" => true,
            _ => bail!("unsupported connection URI '{s}': the path must be /system or /session"),
        };
        let (user, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(decode(u)), h),
            None => (None, authority),
        };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() => (h, Some(p.parse::<u16>().map_err(|_| bad())?)),
            _ => (hostport, None),
        };
        // An IPv6 literal is bracketed in a URI, bare on ssh's command line.
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let host = (!host.is_empty()).then(|| host.to_string());
        match (transport, &host) {
            (Transport::Ssh, None) => bail!("the ssh transport needs a host: '{s}'"),
            (Transport::Local | Transport::Unix, Some(h)) => {
                bail!("unsupported connection URI '{s}': host '{h}' needs a remote transport such as qemu+ssh")
            }
            _ => {}
        }
        let params = query
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|p| match p.split_once('=') {
                Some((k, v)) => (decode(k), decode(v)),
                None => (decode(p), String::new()),
            })
            .collect();
        Ok(Uri {
            transport,
            user,
            host,
            port,
            session,
            params,
        })
    }

    pub fn param(&self, k: &str) -> Option<&str> {
        self.params
            .iter()
            .rev()
            .find(|(pk, _)| pk == k)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, k: &str) -> bool {
        self.param(k).is_some_and(|v| v != "0")
    }

    /// The ssh command line: `ssh [-p PORT] [options] [user@]host BRIDGE [ARGS]`.
    pub fn ssh_command(&self) -> Vec<String> {
        let mut argv = vec![self.param("command").unwrap_or("ssh").to_string()];
        if let Some(p) = self.port {
            argv.extend(["-p".into(), p.to_string()]);
        }
        // No pseudo-terminal and no escape character: the channel carries binary D-Bus.
        argv.extend(["-T".into(), "-e".into(), "none".into()]);
        if let Some(k) = self.param("keyfile") {
            argv.extend(["-i".into(), k.to_string()]);
        }
        if let Some(k) = self.param("known_hosts") {
            argv.extend(["-o".into(), format!("UserKnownHostsFile={k}")]);
        }
        if self.flag("no_verify") {
            argv.extend(["-o".into(), "StrictHostKeyChecking=no".into()]);
        }
        if self.flag("no_tty") {
            argv.extend(["-o".into(), "BatchMode=yes".into()]);
        }
        let host = self.host.clone().unwrap_or_default();
        argv.push(match &self.user {
            Some(u) => format!("{u}@{host}"),
            None => host,
        });
        argv.push("--".into());
        // ssh hands the remote side one shell command line: quote each word.
        let mut remote = vec![self
            .param("netcat")
            .unwrap_or("systemd-stdio-bridge")
            .to_string()];
        match self.param("socket") {
            Some(s) => remote.push(format!("--bus-path={}", bus_address(s))),
            None if self.session => remote.push("--user".into()),
            None => {}
        }
        argv.push(
            remote
                .iter()
                .map(|w| shell_quote(w))
                .collect::<Vec<_>>()
                .join(" "),
        );
        argv
    }
}

/// A socket given as a path is `unix:path=PATH`; anything with `=` is an address already.
fn bus_address(s: &str) -> String {
    if s.contains('=') {
        s.to_string()
    } else {
        format!("unix:path={s}")
    }
}

fn shell_quote(w: &str) -> String {
    if !w.is_empty()
        && w.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@+".contains(c))
    {
        return w.to_string();
    }
    format!("'{}'", w.replace('\'', "'\\''"))
}

/// `%XX` escapes of a URI component.
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An open connection and what it needs to stay open.
pub struct Conn {
    pub bus: zbus::Connection,
    /// A peer-to-peer connection to one daemon: no bus names to address.
    pub peer: bool,
    pub uri: String,
    _ssh: Option<SshChild>,
}

/// The ssh process of a `qemu+ssh` connection, ended by PID when the connection goes.
struct SshChild(Child);

impl Drop for SshChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// How the user asked to connect, first match wins: `--address`, `-c URI`, `--system`,
/// `LIBVIRT_DEFAULT_URI`, else the session bus.
pub fn choose_uri(address: Option<&str>, uri: Option<&str>, system: bool) -> Choice {
    if let Some(a) = address {
        return Choice::Address(a.to_string());
    }
    if let Some(u) = uri {
        return Choice::Uri(u.to_string());
    }
    if system {
        return Choice::Uri("qemu:///system".into());
    }
    match std::env::var("LIBVIRT_DEFAULT_URI") {
        Ok(u) if !u.is_empty() => Choice::Uri(u),
        _ => Choice::Uri("qemu:///session".into()),
    }
}

#[derive(Clone, Debug)]
pub enum Choice {
    Address(String),
    Uri(String),
}

impl Choice {
    pub fn text(&self) -> &str {
        match self {
            Choice::Address(a) | Choice::Uri(a) => a,
        }
    }
}

pub async fn open(choice: &Choice) -> anyhow::Result<Conn> {
    let uri_text = choice.text().to_string();
    let conn = |bus, peer, ssh| Conn {
        bus,
        peer,
        uri: uri_text.clone(),
        _ssh: ssh,
    };
    let uri = match choice {
        Choice::Address(a) => {
            let bus = zbus::connection::Builder::address(a.as_str())?
                .p2p()
                .build()
                .await?;
            return Ok(conn(bus, true, None));
        }
        Choice::Uri(u) => Uri::parse(u)?,
    };
    match uri.transport {
        Transport::Local | Transport::Unix => match uri.param("socket") {
            None if uri.session => Ok(conn(zbus::Connection::session().await?, false, None)),
            None => Ok(conn(zbus::Connection::system().await?, false, None)),
            Some(s) => {
                let (bus, peer) = socket(&bus_address(s)).await?;
                Ok(conn(bus, peer, None))
            }
        },
        Transport::Ssh => {
            let (bus, child) = ssh(&uri).await?;
            Ok(conn(bus, false, Some(child)))
        }
    }
}

/// A socket is a bus if it answers the bus's Hello, else a daemon's peer socket.
async fn socket(address: &str) -> anyhow::Result<(zbus::Connection, bool)> {
    // A peer that ignored Hello instead of refusing it must not hang the probe.
    let bus = zbus::connection::Builder::address(address)?.build();
    if let Ok(Ok(b)) = tokio::time::timeout(std::time::Duration::from_secs(5), bus).await {
        return Ok((b, false));
    }
    let b = zbus::connection::Builder::address(address)?
        .p2p()
        .build()
        .await
        .with_context(|| format!("cannot connect to '{address}'"))?;
    Ok((b, true))
}

/// Runs ssh with one end of a socket pair as its stdin and stdout and speaks D-Bus on
/// the other; the remote bridge relays it to the remote bus.
async fn ssh(uri: &Uri) -> anyhow::Result<(zbus::Connection, SshChild)> {
    let argv = uri.ssh_command();
    let (mine, theirs) = std::os::unix::net::UnixStream::pair()?;
    let theirs: OwnedFd = theirs.into();
    let theirs2 = theirs.try_clone()?;
    let child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::from(theirs))
        .stdout(Stdio::from(theirs2))
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot run '{}'", argv[0]))?;
    let child = SshChild(child);
    mine.set_nonblocking(true)?;
    let stream = tokio::net::UnixStream::from_std(mine)?;
    // systemd-stdio-bridge authenticates its stdio side anonymously: its peer is ssh's
    // pipe, whose credentials say nothing about the caller (ssh already checked them).
    let bus = zbus::connection::Builder::unix_stream(stream)
        .auth_mechanism(zbus::AuthMechanism::Anonymous)
        .build()
        .await
        .with_context(|| format!("cannot connect over '{}'", argv.join(" ")))?;
    Ok((bus, child))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris() {
        let u = Uri::parse("qemu:///system").unwrap();
        assert_eq!((u.transport, u.session), (Transport::Local, false));
        let u = Uri::parse("qemu+unix:///session?socket=/run/x%20y").unwrap();
        assert_eq!(u.param("socket"), Some("/run/x y"));
        assert!(u.session);
        let u = Uri::parse("qemu+ssh://root@10.0.0.1:2222/system?keyfile=/k&socket=/b").unwrap();
        assert_eq!(u.user.as_deref(), Some("root"));
        assert_eq!(u.port, Some(2222));
        let argv = u.ssh_command();
        assert_eq!(argv[0], "ssh");
        assert!(argv.contains(&"root@10.0.0.1".to_string()));
        assert_eq!(
            argv.last().unwrap(),
            "systemd-stdio-bridge --bus-path=unix:path=/b"
        );
        let u = Uri::parse("qemu+ssh://h/session").unwrap();
        assert_eq!(argv_tail(&u), "systemd-stdio-bridge --user");
        assert!(Uri::parse("qemu:///nope").is_err());
        assert!(Uri::parse("xen:///system").is_err());
        assert!(Uri::parse("qemu+ssh:///system").is_err());
        assert!(Uri::parse("qemu://host/system").is_err());
        assert!(Uri::parse("qemu+ssh://h:99999/system").is_err());
        assert!(Uri::parse("%").is_err());
        let u = Uri::parse("qemu+ssh://[::1]:22/system").unwrap();
        assert_eq!((u.host.as_deref(), u.port), (Some("::1"), Some(22)));
        assert_eq!(decode("%4"), "%4");
        assert_eq!(shell_quote("a b'c"), "'a b'\\''c'");
    }

    fn argv_tail(u: &Uri) -> String {
        u.ssh_command().last().cloned().unwrap_or_default()
    }
}
