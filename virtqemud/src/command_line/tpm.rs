//! The emulated TPM: the swtpm control socket the runtime started (or an external
//! swtpm's) as a chardev, the `-tpmdev` on it, and the TIS/CRB front end.

use crate::xml::{Domain, Tpm};

use super::device::DeviceProps;
use super::{path_opt, unsupported, Argv, LaunchContext, Result};

pub(super) fn tpm(a: &mut Argv, dom: &Domain, ctx: &LaunchContext) -> Result<()> {
    let Some(t) = dom.devices.tpms.first() else {
        return Ok(());
    };
    // An external TPM is a swtpm someone else started: QEMU connects to its socket as
    // to the one the runtime starts for an emulated TPM (qemuBuildTPMBackendStr).
    let sock = match t.backend.as_str() {
        "emulator" => ctx
            .tpm_socket
            .as_ref()
            .ok_or_else(|| unsupported("tpm", &t.model, "the runtime must start swtpm first"))?,
        "external" => t
            .socket
            .as_ref()
            .ok_or_else(|| unsupported("tpm/backend/source", &t.model, "no socket path"))?,
        b => {
            return Err(unsupported(
                "tpm backend type",
                b,
                "only 'emulator' (swtpm) and 'external' are implemented",
            ))
        }
    };
    a.pair(
        "-chardev",
        format!("socket,id=chrtpm,path={}", path_opt("tpm socket", sock)?),
    );
    a.pair("-tpmdev", "emulator,id=tpm-tpm0,chardev=chrtpm");
    a.device(&tpm_props(t))
}

/// The front end (`tpm-tis`/`tpm-crb`, the model's name) on backend `tpm-tpm0`.
fn tpm_props(t: &Tpm) -> DeviceProps {
    DeviceProps::new(t.model.as_str())
        .str("tpmdev", "tpm-tpm0")
        .str("id", "tpm0")
}
