//! The emulated TPM: the swtpm control socket the runtime started as a chardev, the
//! `-tpmdev` on it, and the TIS/CRB front end.

use crate::xml::{Domain, Tpm};

use super::device::DeviceProps;
use super::{path_opt, unsupported, Argv, LaunchContext, Result};

pub(super) fn tpm(a: &mut Argv, dom: &Domain, ctx: &LaunchContext) -> Result<()> {
    let Some(t) = dom.devices.tpms.first() else {
        return Ok(());
    };
    if t.backend != "emulator" {
        return Err(unsupported(
            "tpm backend type",
            &t.backend,
            "only 'emulator' (swtpm) is implemented",
        ));
    }
    let sock = ctx
        .tpm_socket
        .as_ref()
        .ok_or_else(|| unsupported("tpm", &t.model, "the runtime must start swtpm first"))?;
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
