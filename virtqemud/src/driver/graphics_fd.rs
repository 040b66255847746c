//! `OpenGraphicsFD`: a client's end of a connection to a running domain's VNC or SPICE
//! server, made without the network: one end of a socket pair goes to QEMU (`getfd`,
//! then `add_client`), the other to the caller, as libvirt's QEMU driver does it.

use std::os::fd::{AsFd, OwnedFd};

use common::error::VirError;
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use serde_json::json;

use super::{not_running, Dom, Driver};
use crate::xml::GraphicsKind;

bitflags::bitflags! {
    /// `virDomainOpenGraphicsFlags`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct OpenGraphicsFlags: u32 {
        const SKIPAUTH = 1;
    }
}

impl Driver {
    pub async fn open_graphics_fd(
        &self,
        dom: &Dom,
        idx: u32,
        flags: u32,
    ) -> Result<OwnedFd, VirError> {
        let f: OpenGraphicsFlags = common::error::flags(flags)?;
        let (qmp, kind) = {
            let g = dom.lock();
            let l = g.live.as_ref().ok_or_else(not_running)?;
            let gr = l
                .def
                .dom
                .devices
                .graphics
                .get(idx as usize)
                .ok_or_else(|| {
                    VirError::invalid_arg(format!("No graphics backend with index {idx}"))
                })?;
            (l.qmp.clone(), gr.kind)
        };
        // The only kinds a `<graphics>` is here; libvirt refuses the rest by name.
        let protocol = match kind {
            GraphicsKind::Vnc | GraphicsKind::Spice => kind.as_str(),
        };
        let (ours, qemus) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| VirError::system("socketpair", &std::io::Error::from(e)))?;
        let name = "graphicsfd";
        qmp.execute_with_fd("getfd", Some(json!({ "fdname": name })), qemus.as_fd())
            .await?;
        drop(qemus);
        let added = qmp
            .execute(
                "add_client",
                Some(json!({
                    "protocol": protocol,
                    "fdname": name,
                    "skipauth": f.contains(OpenGraphicsFlags::SKIPAUTH),
                    "tls": false,
                })),
            )
            .await;
        if let Err(e) = added {
            let _ = qmp
                .execute("closefd", Some(json!({ "fdname": name })))
                .await;
            return Err(e.into());
        }
        Ok(ours)
    }
}
