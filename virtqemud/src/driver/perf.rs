//! `GetPerfEvents` / `SetPerfEvents` and the perf counters' statistics (`crate::perf`).

use std::collections::HashMap;

use common::error::VirError;
use zbus::zvariant::{OwnedValue, Value};

use super::{no_definition, Dom, Driver};

impl Driver {
    /// `GetPerfEvents`: every event libvirt knows with whether it is on, live (the
    /// counters open on QEMU) or in the config, per libvirt's impact flags.
    pub fn perf_events(
        &self,
        dom: &Dom,
        flags: u32,
    ) -> Result<HashMap<String, OwnedValue>, VirError> {
        let (live, _) = super::settings::affected(dom, flags)?;
        let g = dom.lock();
        let on: Vec<String> = match (live, g.live.as_ref(), g.config.as_ref()) {
            (true, Some(l), _) => crate::perf::EVENTS
                .iter()
                .filter(|(n, _)| l.perf.is_enabled(n))
                .map(|(n, _)| (*n).to_owned())
                .collect(),
            (_, _, Some(c)) => crate::perf::enabled_in(&c.dom.other),
            _ => return Err(no_definition()),
        };
        Ok(crate::perf::EVENTS
            .iter()
            .filter_map(|(n, _)| {
                let v = OwnedValue::try_from(Value::from(on.iter().any(|o| o == n))).ok()?;
                Some(((*n).to_owned(), v))
            })
            .collect())
    }

    /// `SetPerfEvents`: each named event on or off, live (its counter opened on QEMU or
    /// closed) and/or in the config. Every parameter is checked before anything
    /// changes; a counter the kernel cannot open is libvirt's error, and the events
    /// switched before it stay as they are, as in libvirt.
    pub async fn set_perf_events(
        &self,
        dom: &Dom,
        params: &HashMap<String, OwnedValue>,
        flags: u32,
    ) -> Result<(), VirError> {
        let _call = self.calls.enter();
        let _lock = dom.begin_job().await;
        let (live, config) = super::settings::affected(dom, flags)?;
        let mut wanted = Vec::with_capacity(params.len());
        for (k, v) in params {
            if !crate::perf::is_event(k) {
                return Err(VirError::new(
                    common::error::ErrorCode::ArgumentUnsupported,
                    format!("parameter '{k}' not supported"),
                ));
            }
            let on = bool::try_from(v)
                .map_err(|_| VirError::invalid_arg(format!("parameter '{k}' must be a boolean")))?;
            wanted.push((k.clone(), on));
        }
        if config {
            let mut def = dom.lock().config.clone().ok_or_else(no_definition)?;
            for (k, on) in &wanted {
                crate::perf::set_in(&mut def.dom.other, k, *on);
            }
            self.put_config(dom, def).await?;
        }
        if live {
            let result = {
                let mut g = dom.lock();
                let l = g.live.as_mut().ok_or_else(super::not_running)?;
                let mut r = Ok(());
                for (k, on) in &wanted {
                    if *on {
                        if let Err(e) = l.perf.enable(k, l.pid) {
                            r = Err(e);
                            break;
                        }
                    } else {
                        l.perf.disable(k);
                    }
                    crate::perf::set_in(&mut l.def.dom.other, k, *on);
                }
                r
            };
            self.save_status(dom).await;
            result?;
        }
        Ok(())
    }

    /// The `perf.<event>` statistics: each open counter's value.
    pub(super) fn perf_stats(&self, dom: &Dom) -> Vec<(String, u64)> {
        let g = dom.lock();
        g.live.as_ref().map(|l| l.perf.read()).unwrap_or_default()
    }
}
