//! `GetInterfaceParameters` / `SetInterfaceParameters`: a NIC's `<bandwidth>` in the
//! definition and on its tap (`crate::bandwidth`).

use std::collections::HashMap;

use common::error::{ErrorCode, VirError};
use zbus::zvariant::{OwnedValue, Value};

use super::{no_definition, not_running, Dom, Driver};
use crate::bandwidth::Bandwidth;
use crate::model::DomainDef;

/// The NIC `device` names (its host device, as libvirt's `vnet0`, or its MAC).
fn nic_of(def: &DomainDef, device: &str) -> Result<usize, VirError> {
    def.dom
        .devices
        .interfaces
        .iter()
        .position(|n| {
            n.target_dev.as_deref() == Some(device)
                || n.mac
                    .is_some_and(|m| m.to_string().eq_ignore_ascii_case(device))
        })
        .ok_or_else(|| VirError::invalid_arg(format!("Can't find interface: {device}")))
}

impl Driver {
    /// `GetInterfaceParameters`: libvirt's seven numbers, live or from the config.
    pub fn interface_parameters(
        &self,
        dom: &Dom,
        device: &str,
        flags: u32,
    ) -> Result<HashMap<String, OwnedValue>, VirError> {
        let (live, _) = super::settings::affected(dom, flags)?;
        let g = dom.lock();
        let def = match (live, g.live.as_ref(), g.config.as_ref()) {
            (true, Some(l), _) => &l.def,
            (_, _, Some(c)) => c,
            _ => return Err(no_definition()),
        };
        let i = nic_of(def, device)?;
        let bw = Bandwidth::of(&def.dom.devices.interfaces[i].unhandled)?.unwrap_or_default();
        Ok(bw
            .params()
            .into_iter()
            .filter_map(|(k, v)| Some((k.to_owned(), OwnedValue::try_from(Value::from(v)).ok()?)))
            .collect())
    }

    /// `SetInterfaceParameters`: the given numbers over the current ones, on the tap
    /// (live) and/or in the config; all checked before anything changes.
    pub async fn set_interface_parameters(
        &self,
        dom: &Dom,
        device: &str,
        params: &HashMap<String, OwnedValue>,
        flags: u32,
    ) -> Result<(), VirError> {
        let _call = self.calls.enter();
        let _lock = dom.begin_job().await;
        let (live, config) = super::settings::affected(dom, flags)?;
        let mut given = Vec::with_capacity(params.len());
        for (k, v) in params {
            if !crate::bandwidth::PARAMS.contains(&k.as_str()) {
                return Err(VirError::new(
                    ErrorCode::ArgumentUnsupported,
                    format!("parameter '{k}' not supported"),
                ));
            }
            let n = u32::try_from(v).map_err(|_| {
                VirError::invalid_arg(format!("parameter '{k}' must be an unsigned int"))
            })?;
            given.push((k.clone(), n));
        }
        if live {
            let (i, tap, bw) = {
                let g = dom.lock();
                let l = g.live.as_ref().ok_or_else(not_running)?;
                let i = nic_of(&l.def, device)?;
                let nic = &l.def.dom.devices.interfaces[i];
                let tap = nic
                    .target_dev
                    .clone()
                    .filter(|_| nic.has_runtime_tap())
                    .ok_or_else(|| {
                        VirError::new(
                            ErrorCode::OperationUnsupported,
                            format!("interface {device}: bandwidth needs a tap of the runtime's"),
                        )
                    })?;
                let bw = Bandwidth::of(&nic.unhandled)?
                    .unwrap_or_default()
                    .merged(&given)?;
                (i, tap, bw)
            };
            crate::bandwidth::apply(&tap, &bw).await?;
            if let Some(l) = dom.lock().live.as_mut() {
                if let Some(n) = l.def.dom.devices.interfaces.get_mut(i) {
                    bw.put(&mut n.unhandled);
                }
            }
            self.save_status(dom).await;
        }
        if config {
            let mut def = dom.lock().config.clone().ok_or_else(no_definition)?;
            let i = nic_of(&def, device)?;
            let n = &mut def.dom.devices.interfaces[i];
            let bw = Bandwidth::of(&n.unhandled)?
                .unwrap_or_default()
                .merged(&given)?;
            bw.put(&mut n.unhandled);
            self.put_config(dom, def).await?;
        }
        Ok(())
    }
}
