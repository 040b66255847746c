//! Changes to what a domain is, live and in its config, short of redefining it:
//! metadata (title, description, applications' elements).

use std::sync::Arc;

use common::error::VirError;

use super::{io_err, no_definition, not_running, Change, Dom, Driver, Impact};
use crate::metadata;

/// Which definitions a change with `flags` (`virDomainModificationImpact`) affects:
/// (live, config). "Current" is the live one of a running domain, else the config.
fn affected(dom: &Dom, flags: u32) -> Result<(bool, bool), VirError> {
    let impact: Impact = common::error::flags(flags)?;
    let g = dom.lock();
    let (active, persistent) = (g.live.is_some(), g.config.is_some());
    let (mut live, mut config) = (
        impact.contains(Impact::LIVE),
        impact.contains(Impact::CONFIG),
    );
    if !live && !config {
        live = active;
        config = !active;
    }
    if live && !active {
        return Err(not_running());
    }
    if config && !persistent {
        return Err(VirError::operation_invalid(
            "transient domains do not have any persistent config",
        ));
    }
    Ok((live, config))
}

impl Driver {
    /// `SetMetadata`: the config is written first (a failed write changes nothing),
    /// then the live definition, kept in the run's status file.
    pub async fn set_metadata(
        &self,
        dom: &Arc<Dom>,
        change: metadata::Change,
        flags: u32,
    ) -> Result<(), VirError> {
        let _call = self.calls.enter();
        let _lock = dom.job.lock().await;
        let (live, config) = affected(dom, flags)?;
        if config {
            let (name, mut def) = {
                let g = dom.lock();
                (g.name.clone(), g.config.clone().ok_or_else(no_definition)?)
            };
            change.apply(&mut def.dom);
            let text = def.to_xml(None);
            self.configs
                .put(&format!("{name}.xml"), text.as_bytes(), 0o600)
                .await
                .map_err(|e| io_err("write", &self.config_file(&name), &e))?;
            dom.lock().config = Some(def);
        }
        if live {
            if let Some(l) = dom.lock().live.as_mut() {
                change.apply(&mut l.def.dom);
            }
            self.save_status(dom).await;
        }
        let kind = change.kind() as i32;
        self.outbox
            .send(Change::Metadata(dom.clone(), kind, change.uri().to_owned()))
            .await;
        Ok(())
    }

    /// `GetMetadata` of the live definition or (`Impact::CONFIG`) the config.
    pub fn metadata(
        &self,
        dom: &Dom,
        kind: metadata::Kind,
        uri: &str,
        flags: u32,
    ) -> Result<String, VirError> {
        let impact: Impact = common::error::flags(flags)?;
        if impact.contains(Impact::LIVE | Impact::CONFIG) {
            return Err(VirError::invalid_arg(
                "flags 'affect live' and 'affect config' are mutually exclusive",
            ));
        }
        let g = dom.lock();
        let def = match (
            impact.contains(Impact::LIVE),
            impact.contains(Impact::CONFIG),
        ) {
            (true, _) => g.live.as_ref().map(|l| &l.def).ok_or_else(not_running)?,
            (_, true) => g.config.as_ref().ok_or_else(|| {
                VirError::operation_invalid("transient domains do not have any persistent config")
            })?,
            _ => g
                .live
                .as_ref()
                .map(|l| &l.def)
                .or(g.config.as_ref())
                .ok_or_else(no_definition)?,
        };
        metadata::get(&def.dom, kind, uri)
    }
}
