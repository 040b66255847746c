//! The bridge of a network over rtnetlink: create with its MAC and MTU, add the
//! addresses (the kernel adds the connected routes), bring up; look up; delete.

use std::net::IpAddr;

use futures_util::TryStreamExt;
use rtnetlink::Handle;

use netlink_packet_route::link::{InfoBridge, InfoData, InfoKind, LinkAttribute, LinkInfo};

use crate::xml::Mac;

/// How the bridge is made: libvirt's `<bridge stp delay>`, `<mac>`, `<mtu>`.
#[derive(Debug, Clone, Copy)]
pub struct BridgeOpts {
    pub mac: Option<Mac>,
    pub mtu: Option<u32>,
    pub stp: bool,
    /// Seconds.
    pub delay: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("netlink: {0}")]
    Netlink(String),
    #[error("cannot open a netlink socket: {0}")]
    Socket(std::io::Error),
}

fn nl(e: rtnetlink::Error) -> BridgeError {
    BridgeError::Netlink(e.to_string())
}

pub struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens the socket in the daemon's network namespace; must run inside tokio.
    pub fn new() -> Result<Netlink, BridgeError> {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(BridgeError::Socket)?;
        tokio::spawn(conn);
        Ok(Netlink { handle })
    }

    /// The link's index, or None when no such link exists.
    pub async fn index(&self, name: &str) -> Result<Option<u32>, BridgeError> {
        let mut links = self
            .handle
            .link()
            .get()
            .match_name(name.to_owned())
            .execute();
        match links.try_next().await {
            Ok(Some(l)) => Ok(Some(l.header.index)),
            Ok(None) => Ok(None),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
            Err(e) => Err(nl(e)),
        }
    }

    pub async fn create_bridge(
        &self,
        name: &str,
        opts: BridgeOpts,
        addrs: &[(IpAddr, u8)],
    ) -> Result<(), BridgeError> {
        let BridgeOpts {
            mac,
            mtu,
            stp,
            delay,
        } = opts;
        let mut req = self.handle.link().add();
        // The forward delay goes before STP so the kernel takes libvirt's default of 0
        // (it range-checks the delay only while STP is on). /sys is not used: it may
        // belong to another namespace than the daemon's netlink socket.
        let info = vec![
            InfoBridge::ForwardDelay(delay.saturating_mul(100)),
            InfoBridge::StpState(u32::from(stp)),
        ];
        let attrs = &mut req.message_mut().attributes;
        attrs.push(LinkAttribute::IfName(name.to_owned()));
        attrs.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Bridge),
            LinkInfo::Data(InfoData::Bridge(info)),
        ]));
        if let Some(m) = mac {
            req = req.address(m.0.to_vec());
        }
        req.execute().await.map_err(nl)?;
        let idx = self
            .index(name)
            .await?
            .ok_or_else(|| BridgeError::Netlink(format!("bridge {name} vanished")))?;
        if let Some(mtu) = mtu {
            self.handle
                .link()
                .set(idx)
                .mtu(mtu)
                .execute()
                .await
                .map_err(nl)?;
        }
        for (a, p) in addrs {
            self.handle
                .address()
                .add(idx, *a, *p)
                .execute()
                .await
                .map_err(nl)?;
        }
        self.handle
            .link()
            .set(idx)
            .up()
            .execute()
            .await
            .map_err(nl)?;
        Ok(())
    }

    /// Deletes the link if it exists.
    pub async fn delete(&self, name: &str) -> Result<(), BridgeError> {
        if let Some(idx) = self.index(name).await? {
            self.handle.link().del(idx).execute().await.map_err(nl)?;
        }
        Ok(())
    }
}
