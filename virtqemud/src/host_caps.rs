//! `GetCapabilities` and `GetDomainCapabilities`, answered from the emulator's
//! capabilities probed once through QMP and cached by binary identity (`crate::caps`).

use std::path::Path;

use common::error::VirError;

use crate::caps::{capabilities_xml, domain_capabilities_xml, Caps};

/// The one emulator this daemon launches (libvirt's default on Debian).
pub const EMULATOR: &str = "/usr/bin/qemu-system-x86_64";

/// The host's identity for `<host><uuid>`: systemd's machine id, as libvirt falls back
/// to when SMBIOS has none.
fn host_uuid() -> uuid::Uuid {
    std::fs::read_to_string("/etc/machine-id")
        .ok()
        .and_then(|s| uuid::Uuid::parse_str(s.trim()).ok())
        .unwrap_or_default()
}

/// `Connect.GetCapabilities`: the `<host>` part from virtnodedevd's
/// `NodeGetHostCapabilities` (bus-activated where it is installed) when it answers, else
/// the minimal local one, with a warning; the `<guest>` part from the probed emulator.
pub async fn capabilities(cache_dir: &Path, mode: common::cli::Mode) -> Result<String, VirError> {
    let caps = Caps::load_or_probe(Path::new(EMULATOR), cache_dir).await?;
    match remote_host(mode).await {
        Ok(host) => {
            let mut root = common::xml::Element::new("capabilities").child(host);
            root.push(caps.guest_element());
            Ok(root.to_xml())
        }
        Err(e) => {
            tracing::warn!(
                "host capabilities from virtnodedevd unavailable, using the local minimum: {e}"
            );
            Ok(capabilities_xml(&host_uuid(), std::slice::from_ref(&caps)))
        }
    }
}

/// virtnodedevd's `<host>` element, checked to be one.
async fn remote_host(mode: common::cli::Mode) -> Result<common::xml::Element, String> {
    let conn = crate::nics::bus(mode).await.map_err(|e| e.to_string())?;
    let call = async {
        let p = common::proxies::nodedev::NodeInfoProxy::new(&conn).await?;
        p.node_get_host_capabilities(0).await
    };
    let text = tokio::time::timeout(std::time::Duration::from_secs(10), call)
        .await
        .map_err(|_| "virtnodedevd did not answer within 10 s".to_owned())?
        .map_err(|e| e.to_string())?;
    common::xml::parse_root(&text, "host").map_err(|e| format!("its <host> is unusable: {e}"))
}

/// `Connect.GetDomainCapabilities`. Only the known emulator is probed: a caller must not
/// make the daemon run a binary of its choosing.
pub async fn domain_capabilities(
    cache_dir: &Path,
    emulator: &str,
    arch: &str,
    machine: &str,
    virttype: &str,
) -> Result<String, VirError> {
    if !arch.is_empty() && arch != "x86_64" {
        return Err(VirError::unsupported(format!(
            "architecture '{arch}' is not supported"
        )));
    }
    if !emulator.is_empty() && emulator != EMULATOR {
        return Err(VirError::unsupported(format!(
            "emulator '{emulator}' is not supported, only {EMULATOR}"
        )));
    }
    let caps = Caps::load_or_probe(Path::new(EMULATOR), cache_dir).await?;
    domain_capabilities_xml(&caps, machine, virttype).map_err(VirError::unsupported)
}
