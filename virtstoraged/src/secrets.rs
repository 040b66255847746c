//! The secrets of the node: definitions and values, kept as libvirt keeps them
//! (`<config>/secrets/UUID.xml` and `UUID.base64`, both 0600, written atomically;
//! ephemeral ones only in memory). Define and Undefine go one at a time, so of racing
//! calls on one secret exactly one wins; reads take the map's lock for a copy only.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use common::error::{check_flags, ErrorCode, VirError};
use uuid::Uuid;

use crate::secret::{SecretDef, Usage};

bitflags::bitflags! {
    /// `virConnectListAllSecretsFlags`.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct ListFlags: u32 {
        const EPHEMERAL = 1;
        const NO_EPHEMERAL = 2;
        const PRIVATE = 4;
        const NO_PRIVATE = 8;
    }
}

/// `VIR_SECRET_DEFINE_VALIDATE`: the schema check libvirt offers; the parser here
/// checks as much either way.
const DEFINE_VALIDATE: u32 = 1;

struct Entry {
    def: SecretDef,
    value: Option<Vec<u8>>,
}

pub struct Secrets {
    dir: PathBuf,
    map: Mutex<HashMap<Uuid, Entry>>,
    /// Held by Define, Undefine and SetValue across their file work.
    ops: tokio::sync::Mutex<()>,
}

pub fn no_secret(uuid: &Uuid) -> VirError {
    VirError::new(
        ErrorCode::NoSecret,
        format!("no secret with matching uuid '{uuid}'"),
    )
}

fn io_err(what: &str, path: &std::path::Path, e: &std::io::Error) -> VirError {
    VirError::system(format!("{what} '{}'", path.display()), e)
}

/// What [`Secrets::define`] did.
pub enum Defined {
    New,
    Replaced,
}

impl Secrets {
    pub fn new(dir: PathBuf) -> Secrets {
        Secrets {
            dir,
            map: Mutex::new(HashMap::new()),
            ops: tokio::sync::Mutex::new(()),
        }
    }

    fn map(&self) -> MutexGuard<'_, HashMap<Uuid, Entry>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn xml_file(&self, uuid: &Uuid) -> PathBuf {
        self.dir.join(format!("{uuid}.xml"))
    }

    fn value_file(&self, uuid: &Uuid) -> PathBuf {
        self.dir.join(format!("{uuid}.base64"))
    }

    /// Reads the stored secrets (at start); unreadable files are named and skipped.
    pub fn load(&self) -> Vec<Uuid> {
        if let Err(e) = common::persist::create_dir_all(&self.dir, 0o700) {
            tracing::warn!("{}: {e}", self.dir.display());
        }
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut found = Vec::new();
        let mut map = self.map();
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().and_then(|x| x.to_str()) != Some("xml") {
                continue;
            }
            let def = std::fs::read_to_string(&p)
                .map_err(|e| e.to_string())
                .and_then(|t| SecretDef::parse(&t).map_err(|e| e.message));
            let def = match def {
                Ok(d) if p.file_stem().and_then(|s| s.to_str()) == Some(&d.uuid.to_string()) => d,
                Ok(_) => {
                    tracing::warn!("ignoring {}: its UUID is not its name", p.display());
                    continue;
                }
                Err(e) => {
                    tracing::warn!("ignoring {}: {e}", p.display());
                    continue;
                }
            };
            let value = std::fs::read_to_string(self.value_file(&def.uuid))
                .ok()
                .and_then(|t| common::base64::decode(&t));
            found.push(def.uuid);
            map.insert(def.uuid, Entry { def, value });
        }
        found
    }

    pub fn list(&self, flags: u32) -> Result<Vec<Uuid>, VirError> {
        let f: ListFlags = common::error::flags(flags)?;
        let keep = |on: bool, yes: ListFlags, no: ListFlags| {
            !(f.contains(yes) || f.contains(no))
                || (on && f.contains(yes))
                || (!on && f.contains(no))
        };
        let mut out: Vec<Uuid> = self
            .map()
            .values()
            .filter(|e| {
                keep(
                    e.def.ephemeral,
                    ListFlags::EPHEMERAL,
                    ListFlags::NO_EPHEMERAL,
                )
            })
            .filter(|e| keep(e.def.private, ListFlags::PRIVATE, ListFlags::NO_PRIVATE))
            .map(|e| e.def.uuid)
            .collect();
        out.sort();
        Ok(out)
    }

    pub fn get(&self, uuid: &Uuid) -> Result<SecretDef, VirError> {
        self.map()
            .get(uuid)
            .map(|e| e.def.clone())
            .ok_or_else(|| no_secret(uuid))
    }

    pub fn by_uuid_str(&self, uuid: &str) -> Result<SecretDef, VirError> {
        let u = Uuid::parse_str(uuid).map_err(|_| {
            VirError::new(
                ErrorCode::NoSecret,
                format!("no secret with matching uuid '{uuid}'"),
            )
        })?;
        self.get(&u)
    }

    pub fn by_usage(&self, usage: &Usage) -> Result<SecretDef, VirError> {
        self.map()
            .values()
            .find(|e| &e.def.usage == usage)
            .map(|e| e.def.clone())
            .ok_or_else(|| {
                VirError::new(
                    ErrorCode::NoSecret,
                    format!("no secret with matching usage '{}'", usage.id()),
                )
            })
    }

    /// `SecretDefineXML`, with libvirt's rules: a usage belongs to one secret; a
    /// secret keeps its usage; a private secret stays private.
    pub async fn define(&self, xml: &str, flags: u32) -> Result<(SecretDef, Defined), VirError> {
        check_flags(flags, DEFINE_VALIDATE)?;
        let def = SecretDef::parse(xml)?;
        let _op = self.ops.lock().await;
        let old = {
            let map = self.map();
            if let Some(other) = map.values().find(|e| {
                e.def.uuid != def.uuid && e.def.usage != Usage::None && e.def.usage == def.usage
            }) {
                return Err(VirError::internal(format!(
                    "a secret with UUID {} already defined for use with {}",
                    other.def.uuid,
                    def.usage.id()
                )));
            }
            map.get(&def.uuid).map(|e| e.def.clone())
        };
        if let Some(old) = &old {
            if old.usage != def.usage {
                return Err(VirError::internal(format!(
                    "a secret with UUID {} is already defined for use with {}",
                    def.uuid,
                    old.usage.describe()
                )));
            }
            if old.private && !def.private {
                return Err(VirError::new(
                    ErrorCode::InvalidSecret,
                    "cannot change private flag on existing secret",
                ));
            }
        }
        let file = self.xml_file(&def.uuid);
        if def.ephemeral {
            // Kept in memory only: nothing of it stays on disk, also from before.
            self.forget_files(&def.uuid).await?;
        } else {
            let text = def.to_xml();
            let f = file.clone();
            blocking(move || common::persist::write_atomic(&f, text.as_bytes(), 0o600))
                .await
                .map_err(|e| io_err("write", &file, &e))?;
            let value = self.map().get(&def.uuid).and_then(|e| e.value.clone());
            if let Some(v) = value {
                self.write_value(&def.uuid, &v).await?;
            }
        }
        let mut map = self.map();
        let value = map.remove(&def.uuid).and_then(|e| e.value);
        map.insert(
            def.uuid,
            Entry {
                def: def.clone(),
                value,
            },
        );
        Ok((
            def,
            if old.is_some() {
                Defined::Replaced
            } else {
                Defined::New
            },
        ))
    }

    pub async fn undefine(&self, uuid: &Uuid) -> Result<(), VirError> {
        let _op = self.ops.lock().await;
        if !self.map().contains_key(uuid) {
            return Err(no_secret(uuid));
        }
        self.forget_files(uuid).await?;
        self.map().remove(uuid);
        Ok(())
    }

    pub async fn set_value(&self, uuid: &Uuid, value: &[u8], flags: u32) -> Result<(), VirError> {
        check_flags(flags, 0)?;
        let _op = self.ops.lock().await;
        let ephemeral = self.get(uuid)?.ephemeral;
        if !ephemeral {
            self.write_value(uuid, value).await?;
        }
        if let Some(e) = self.map().get_mut(uuid) {
            e.value = Some(value.to_vec());
        }
        Ok(())
    }

    /// The value; a private secret's only for `internal` (one of the project's own
    /// daemons), as libvirt gives it only to its drivers.
    pub fn value(&self, uuid: &Uuid, flags: u32, internal: bool) -> Result<Vec<u8>, VirError> {
        check_flags(flags, 0)?;
        let map = self.map();
        let e = map.get(uuid).ok_or_else(|| no_secret(uuid))?;
        if e.def.private && !internal {
            return Err(VirError::new(ErrorCode::InvalidSecret, "secret is private"));
        }
        e.value.clone().ok_or_else(|| {
            VirError::new(
                ErrorCode::NoSecret,
                format!("secret '{uuid}' does not have a value"),
            )
        })
    }

    async fn write_value(&self, uuid: &Uuid, value: &[u8]) -> Result<(), VirError> {
        let file = self.value_file(uuid);
        let text = common::base64::encode(value);
        let f = file.clone();
        blocking(move || common::persist::write_atomic(&f, text.as_bytes(), 0o600))
            .await
            .map_err(|e| io_err("write", &file, &e))
    }

    /// Removes a secret's files, the value first: a definition never outlives its
    /// value's removal half-done into a secret that seems to have none.
    async fn forget_files(&self, uuid: &Uuid) -> Result<(), VirError> {
        for file in [self.value_file(uuid), self.xml_file(uuid)] {
            let f = file.clone();
            match blocking(move || common::persist::remove_durable(&f)).await {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io_err("remove", &file, &e))
                }
                _ => {}
            }
        }
        Ok(())
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(std::io::Error::other)?
}
