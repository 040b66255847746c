//! Pool backends: one implementation per pool type behind [`PoolBackend`], chosen once
//! by [`for_type`]; the driver never matches on the pool type again.

use std::path::PathBuf;

use common::error::{ErrorCode, VirError};

use crate::qemu_img::QemuImgError;
use crate::xml::{PoolDef, PoolType, VolDef};

pub mod dir;
pub mod fs;
pub mod logical;
pub mod loopdev;

bitflags::bitflags! {
    /// `virStoragePoolBuildFlags` (NEW is the empty set).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct BuildFlags: u32 {
        const REPAIR = 1;
        const RESIZE = 2;
        const NO_OVERWRITE = 4;
        const OVERWRITE = 8;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{what} '{path}': {err}")]
    Io {
        what: &'static str,
        path: PathBuf,
        err: std::io::Error,
    },
    #[error(transparent)]
    QemuImg(#[from] QemuImgError),
    #[error("storage volume '{0}' exists already")]
    VolExists(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Unsupported(String),
    /// The caller's input is unusable (a transfer's fd that cannot be read or written).
    #[error("{0}")]
    InvalidArg(String),
    /// The operation ran and did not succeed (an upload that ended early).
    #[error("{0}")]
    Failed(String),
    /// A transfer was stopped from outside; the driver says why.
    #[error("transfer cancelled")]
    Cancelled,
}

impl BackendError {
    pub fn io(what: &'static str, path: impl Into<PathBuf>, err: std::io::Error) -> Self {
        BackendError::Io {
            what,
            path: path.into(),
            err,
        }
    }
}

impl From<BackendError> for VirError {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::Io { .. } => VirError::new(ErrorCode::SystemError, e),
            BackendError::QemuImg(q) => VirError::internal(q),
            BackendError::VolExists(n) => VirError::new(ErrorCode::StorageVolExist, n),
            BackendError::Invalid(m) => VirError::operation_invalid(m),
            BackendError::Unsupported(m) => VirError::unsupported(m),
            BackendError::InvalidArg(m) => VirError::invalid_arg(m),
            BackendError::Failed(m) => VirError::operation_failed(m),
            BackendError::Cancelled => VirError::operation_failed("transfer cancelled"),
        }
    }
}

pub type Result<T> = std::result::Result<T, BackendError>;

/// What a wipe writes over a volume: the algorithms of libvirt's
/// `virStorageVolWipeAlgorithm` that are done here. The multi-pass patterns libvirt
/// hands to `scrub` (NNSA, DoD, BSI, Gutmann, Schneier, Pfitzner) and TRIM are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WipePattern {
    /// `VIR_STORAGE_VOL_WIPE_ALG_ZERO` (0): reads back as zeros afterwards.
    Zero,
    /// `VIR_STORAGE_VOL_WIPE_ALG_RANDOM` (8): one pass of random bytes over every byte.
    Random,
}

impl WipePattern {
    const NAMES: [&'static str; 10] = [
        "zero",
        "nnsa",
        "dod",
        "bsi",
        "gutmann",
        "schneier",
        "pfitzner7",
        "pfitzner33",
        "random",
        "trim",
    ];

    pub fn from_wire(alg: u32) -> std::result::Result<Self, VirError> {
        match alg {
            0 => Ok(WipePattern::Zero),
            8 => Ok(WipePattern::Random),
            n => Err(match Self::NAMES.get(n as usize) {
                Some(name) => VirError::unsupported(format!(
                    "wipe algorithm {n} ({name}) is not supported; supported: zero (0), random (8)"
                )),
                None => VirError::new(ErrorCode::InvalidArg, format!("unknown wipe algorithm {n}")),
            }),
        }
    }
}

/// Writes `len` random bytes over `file` from its start, in chunks, then syncs it.
pub fn fill_random(file: &std::fs::File, len: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; crate::transfer::CHUNK];
    let mut at = 0u64;
    while at < len {
        let n = (len - at).min(buf.len() as u64) as usize;
        let mut got = 0;
        while got < n {
            // SAFETY: the buffer is ours and `n - got` bytes long from `got`.
            let r = unsafe { libc::getrandom(buf[got..].as_mut_ptr().cast(), n - got, 0) };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            } else {
                got += r as usize;
            }
        }
        file.write_all_at(&buf[..n], at)?;
        at += n as u64;
    }
    file.sync_all()
}

/// Sizes of a pool as refreshed from the real thing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolSizes {
    pub capacity: u64,
    pub allocation: u64,
    pub available: u64,
}

/// What a pool type does. Every method is blocking: the driver calls it on a blocking
/// thread while holding the pool's job lock.
pub trait PoolBackend: Send + Sync {
    /// Prepares the storage (creates the directory, formats, creates the VG).
    fn build(&self, def: &PoolDef, flags: BuildFlags) -> Result<()>;
    /// Makes the pool usable (mounts, activates); adopting what is already there.
    fn start(&self, def: &PoolDef) -> Result<()>;
    fn stop(&self, def: &PoolDef) -> Result<()>;
    /// Removes the storage itself (the directory; the VG).
    fn delete(&self, def: &PoolDef) -> Result<()>;
    /// Reads sizes and volumes from the storage; removes half-made volumes.
    fn refresh(&self, def: &PoolDef) -> Result<(PoolSizes, Vec<VolDef>)>;
    /// Creates `vol` (copying `from` when cloning) and returns it as read back.
    fn create_vol(&self, def: &PoolDef, vol: &VolDef, from: Option<&VolDef>) -> Result<VolDef>;
    fn delete_vol(&self, def: &PoolDef, vol: &VolDef) -> Result<()>;
    fn resize_vol(&self, def: &PoolDef, vol: &VolDef, capacity: u64, shrink: bool) -> Result<()>;
    fn wipe_vol(&self, def: &PoolDef, vol: &VolDef, pattern: WipePattern) -> Result<()>;
    /// Re-reads one volume (after resize, wipe, upload).
    fn vol_info(&self, def: &PoolDef, vol: &VolDef) -> Result<VolDef>;
    /// `FindStoragePoolSources`: the `<sources>` document of what this pool type could
    /// use on this host. `spec` is the caller's `<source>` hint, if any.
    fn find_sources(&self, _spec: Option<&str>) -> Result<String> {
        Err(BackendError::Unsupported(
            "this pool type has no source discovery".into(),
        ))
    }
}

/// Picks the backend of a pool type.
pub fn for_type(kind: PoolType) -> std::result::Result<Box<dyn PoolBackend>, VirError> {
    match kind {
        PoolType::Dir => Ok(Box::new(dir::DirBackend)),
        PoolType::Fs => Ok(Box::new(fs::FsBackend::new())),
        PoolType::Logical => Ok(Box::new(logical::LogicalBackend)),
    }
}
