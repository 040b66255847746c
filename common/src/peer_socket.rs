//! The read side of a peer-to-peer client connection, checked before zbus sees a
//! message. On the bus, dbus-daemon rejects a message whose header names are invalid;
//! on a daemon's own socket nothing did, and zbus 5.19 panics in its socket reader on
//! such a header (an interface name like `a*b`): the reader dies without closing the
//! connection, which then leaks its descriptor and tasks for good. Here such a message
//! is a read error instead, which zbus handles by closing the connection.

use std::io;
use std::os::fd::OwnedFd;

use zbus::connection::socket::{BoxedSplit, ReadHalf, Split};
use zbus::fdo::ConnectionCredentials;
use zbus::names::{BusName, ErrorName, InterfaceName, MemberName, UniqueName};
use zbus::zvariant::{ObjectPath, Value};
use zbus::AuthMechanism;

/// `stream`, split for a zbus connection whose incoming messages are checked.
pub fn checked(stream: tokio::net::UnixStream) -> BoxedSplit {
    let (read, write) = BoxedSplit::from(stream).take();
    Split::new(Box::new(Checked(read)), write)
}

#[derive(Debug)]
struct Checked(Box<dyn ReadHalf>);

#[async_trait::async_trait]
impl ReadHalf for Checked {
    async fn receive_message(
        &mut self,
        seq: u64,
        already_received_bytes: &mut Vec<u8>,
        already_received_fds: &mut Vec<OwnedFd>,
    ) -> zbus::Result<zbus::Message> {
        // The inner half's own reading (the default, on its recvmsg) does the framing.
        let msg = self
            .0
            .receive_message(seq, already_received_bytes, already_received_fds)
            .await?;
        check_header(&msg)?;
        Ok(msg)
    }

    async fn recvmsg(&mut self, buf: &mut [u8]) -> io::Result<(usize, Vec<OwnedFd>)> {
        self.0.recvmsg(buf).await
    }

    fn can_pass_unix_fd(&self) -> bool {
        self.0.can_pass_unix_fd()
    }

    async fn peer_credentials(&mut self) -> io::Result<ConnectionCredentials> {
        self.0.peer_credentials().await
    }

    fn auth_mechanism(&self) -> AuthMechanism {
        self.0.auth_mechanism()
    }
}

/// The header fields in `msg` that zbus later reads as names are valid names (read
/// leniently here, as zbus reads them first, then checked as zbus checks them later).
fn check_header(msg: &zbus::Message) -> zbus::Result<()> {
    type Primary<'a> = (u8, u8, u8, u8, u32, u32, Vec<(u8, Value<'a>)>);
    let (header, _): (Primary<'_>, usize) = msg.data().deserialize()?;
    for (code, value) in &header.6 {
        let ok = match (code, value) {
            (1, Value::ObjectPath(p)) => ObjectPath::try_from(p.as_str()).is_ok(),
            (2, Value::Str(s)) => InterfaceName::try_from(s.as_str()).is_ok(),
            (3, Value::Str(s)) => MemberName::try_from(s.as_str()).is_ok(),
            (4, Value::Str(s)) => ErrorName::try_from(s.as_str()).is_ok(),
            (6, Value::Str(s)) => BusName::try_from(s.as_str()).is_ok(),
            (7, Value::Str(s)) => UniqueName::try_from(s.as_str()).is_ok(),
            (1..=4 | 6 | 7, _) => false,
            _ => true,
        };
        if !ok {
            return Err(zbus::Error::InvalidField);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_headers_pass() {
        let m = zbus::Message::method_call("/org/libvirt/QEMU", "ListDomains")
            .and_then(|b| b.interface("org.libvirt.Connect"))
            .and_then(|b| b.build(&(0u32,)))
            .expect("message");
        check_header(&m).expect("valid");
    }
}
