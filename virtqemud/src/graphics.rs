//! Graphics at start: SPICE ports and client passwords.
//!
//! QEMU finds a free VNC display itself (`to=`), but SPICE needs a port on its command
//! line, so the runtime picks one as libvirt does: the first port from 5900 that it
//! can bind on the listen address. A port handed out stays reserved for a while, so two
//! domains starting at once cannot both take it before their QEMUs bind it. The live
//! definition records the port.
//!
//! Passwords never go on QEMU's command line (anyone can read /proc/PID/cmdline): the
//! listener starts with passwords required (`password=on`, no `disable-ticketing`) and
//! the password is set over QMP before the guest runs.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::error::VirError;

use crate::qmp::Qmp;
use crate::xml::{Domain, GraphicsKind};

const FIRST: u16 = 5900;
/// Long enough for QEMU to start and bind the port it was given.
const HOLD: Duration = Duration::from_secs(60);

static HANDED_OUT: Mutex<Option<HashMap<u16, Instant>>> = Mutex::new(None);

/// Gives every SPICE listener without a fixed port a free one, in `dom` (the live
/// definition).
pub fn assign_ports(dom: &mut Domain) -> Result<(), VirError> {
    for g in &mut dom.devices.graphics {
        if g.kind != GraphicsKind::Spice || !(g.autoport || g.port.is_none_or(|p| p <= 0)) {
            continue;
        }
        let addr: IpAddr = match g.listen.as_deref() {
            Some(l) => l.parse().map_err(|_| {
                VirError::invalid_arg(format!("graphics listen address '{l}' is not an IP"))
            })?,
            None => IpAddr::V4(Ipv4Addr::LOCALHOST),
        };
        let port = free_port(addr).ok_or_else(|| {
            VirError::operation_failed(format!("no free port for SPICE on {addr} from {FIRST}"))
        })?;
        g.port = Some(i32::from(port));
    }
    Ok(())
}

fn free_port(addr: IpAddr) -> Option<u16> {
    let mut held = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
    let held = held.get_or_insert_with(HashMap::new);
    let now = Instant::now();
    held.retain(|_, at| now.duration_since(*at) < HOLD);
    let port = (FIRST..=u16::MAX)
        .filter(|p| !held.contains_key(p))
        .find(|p| TcpListener::bind((addr, *p)).is_ok())?;
    held.insert(port, now);
    Some(port)
}

/// Sets each graphics password over QMP (before the guest runs).
pub async fn set_passwords(qmp: &Qmp, dom: &Domain) -> Result<(), VirError> {
    for g in &dom.devices.graphics {
        let Some(pw) = &g.passwd else { continue };
        qmp.execute(
            "set_password",
            Some(serde_json::json!({
                "protocol": g.kind.as_str(),
                "password": pw,
            })),
        )
        .await
        .map_err(|e| {
            VirError::operation_failed(format!("cannot set the {} password: {e}", g.kind.as_str()))
        })?;
    }
    Ok(())
}

/// Takes down the link of every NIC whose `<link state='down'/>` says so (QEMU starts
/// all links up; its NIC ids are `netN` in interface order).
pub async fn set_links(qmp: &Qmp, dom: &Domain) -> Result<(), VirError> {
    for (i, nic) in dom.devices.interfaces.iter().enumerate() {
        if nic.link_up == Some(false) {
            qmp.execute(
                "set_link",
                Some(serde_json::json!({"name": format!("net{i}"), "up": false})),
            )
            .await
            .map_err(|e| VirError::operation_failed(format!("cannot set link of net{i}: {e}")))?;
        }
    }
    Ok(())
}

/// Records in the live definition the port QEMU chose for an auto-port VNC display, as
/// libvirt shows it (`query-vnc` answers `service`, the port as a string).
pub async fn record_vnc_port(qmp: &Qmp, dom: &mut Domain) {
    let Some(g) = dom
        .devices
        .graphics
        .iter_mut()
        .find(|g| g.kind == GraphicsKind::Vnc && (g.autoport || g.port.is_none_or(|p| p <= 0)))
    else {
        return;
    };
    match qmp.execute("query-vnc", None).await {
        Ok(v) => {
            if let Some(p) = v["service"].as_str().and_then(|s| s.parse::<i32>().ok()) {
                g.port = Some(p);
            }
        }
        Err(e) => tracing::warn!("query-vnc: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_free_and_not_handed_out_twice() {
        let a = free_port(IpAddr::V4(Ipv4Addr::LOCALHOST)).expect("a port");
        let b = free_port(IpAddr::V4(Ipv4Addr::LOCALHOST)).expect("another");
        assert_ne!(a, b);
        assert!(a >= FIRST && b >= FIRST);
        // Once its QEMU holds it, a port is skipped even after its reservation ends.
        let _qemu = TcpListener::bind((Ipv4Addr::LOCALHOST, a)).expect("bind the port");
        HANDED_OUT.lock().expect("lock").take();
        let c = free_port(IpAddr::V4(Ipv4Addr::LOCALHOST)).expect("a third");
        assert_ne!(c, a);
    }
}
