//! The save image: a running domain's memory and device state as QEMU's migration
//! stream, after a header with the domain's definition and whether it ran, so that
//! `DomainRestore` (or `Create` of a domain with a managed save image) can start the
//! same machine from it. The layout is this project's own (libvirt's save images are
//! read only by libvirt):
//!
//! | bytes | what |
//! |---|---|
//! | 16 | magic `VirtRsQemuSave\0\x01` (format 1) |
//! | 4 | length of the definition, little-endian |
//! | 4 | flags, little-endian: bit 0, the domain was running |
//! | n | the domain's XML, UTF-8 |
//! | rest | QEMU's migration stream |

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use common::error::{ErrorCode, VirError};

const MAGIC: &[u8; 16] = b"VirtRsQemuSave\0\x01";
/// A definition longer than any document the daemon accepts is not one of ours.
const MAX_XML: u32 = 16 << 20;
const RUNNING: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub xml: String,
    pub running: bool,
}

fn bad(path: &Path, why: impl std::fmt::Display) -> VirError {
    VirError::new(
        ErrorCode::OperationFailed,
        format!("'{}' is not a usable save image: {why}", path.display()),
    )
}

/// Opens `path` and reads its header; the file is left at the migration stream.
pub fn open(path: &Path) -> Result<(Header, File), VirError> {
    let mut f = File::open(path).map_err(|e| {
        VirError::new(
            ErrorCode::SystemError,
            format!("cannot open save image '{}': {e}", path.display()),
        )
    })?;
    let mut fixed = [0u8; 24];
    f.read_exact(&mut fixed).map_err(|e| bad(path, e))?;
    if &fixed[..16] != MAGIC {
        return Err(bad(path, "no save image header"));
    }
    let len = u32::from_le_bytes([fixed[16], fixed[17], fixed[18], fixed[19]]);
    let flags = u32::from_le_bytes([fixed[20], fixed[21], fixed[22], fixed[23]]);
    if len > MAX_XML {
        return Err(bad(path, format!("a definition of {len} bytes")));
    }
    let mut xml = vec![0u8; len as usize];
    f.read_exact(&mut xml).map_err(|e| bad(path, e))?;
    let xml = String::from_utf8(xml).map_err(|e| bad(path, e))?;
    Ok((
        Header {
            xml,
            running: flags & RUNNING != 0,
        },
        f,
    ))
}

/// Writes `header` to the start of `f`.
pub fn write_header(f: &mut File, header: &Header) -> std::io::Result<()> {
    let len = u32::try_from(header.xml.len())
        .ok()
        .filter(|l| *l <= MAX_XML)
        .ok_or_else(|| std::io::Error::other("the definition is too long for a save image"))?;
    let mut out = Vec::with_capacity(24 + header.xml.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&u32::from(header.running).to_le_bytes());
    out.extend_from_slice(header.xml.as_bytes());
    f.write_all(&out)
}

/// A file beside `target` to write into and rename over it once complete, so a save
/// cut short never leaves a half image under the name.
pub fn temp_beside(target: &Path) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(".{name}.part-{}", std::process::id()))
}

/// A client's path for an image: absolute, not a folder.
pub fn check_path(path: &str) -> Result<PathBuf, VirError> {
    let p = PathBuf::from(path);
    if !p.is_absolute() || path.ends_with('/') {
        return Err(VirError::invalid_arg(format!(
            "save image path '{path}' must be an absolute file path"
        )));
    }
    Ok(p)
}

/// `DomainSaveImageDefineXML`: the same image with another header, written as a new
/// file and renamed over the old one.
pub fn rewrite(path: &Path, header: &Header) -> Result<(), VirError> {
    let (_, mut old) = open(path)?;
    let tmp = temp_beside(path);
    let io = |e: std::io::Error| {
        VirError::new(
            ErrorCode::SystemError,
            format!("cannot rewrite save image '{}': {e}", path.display()),
        )
    };
    let r = (|| {
        let mut new = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode_0600()
            .open(&tmp)?;
        write_header(&mut new, header)?;
        std::io::copy(&mut old, &mut new)?;
        new.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r.map_err(io)
}

trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl Mode0600 for std::fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::mode(self, 0o600)
    }
}

/// Creates the file a save writes (0600: the definition may hold passwords).
pub fn create(path: &Path) -> std::io::Result<File> {
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode_0600()
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_rewrite() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("a.save");
        let h = Header {
            xml: "<domain/>".into(),
            running: true,
        };
        let mut f = create(&path).expect("create");
        write_header(&mut f, &h).expect("header");
        f.write_all(b"QEVM stream").expect("stream");
        drop(f);
        let (got, mut rest) = open(&path).expect("open");
        assert_eq!(got, h);
        let mut stream = String::new();
        rest.read_to_string(&mut stream).expect("rest");
        assert_eq!(stream, "QEVM stream");

        let h2 = Header {
            xml: "<domain><name>longer</name></domain>".into(),
            running: false,
        };
        rewrite(&path, &h2).expect("rewrite");
        let (got, mut rest) = open(&path).expect("open");
        assert_eq!(got, h2);
        let mut stream = String::new();
        rest.read_to_string(&mut stream).expect("rest");
        assert_eq!(stream, "QEVM stream");
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 1);
    }

    #[test]
    fn foreign_and_hostile_files_are_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("x");
        std::fs::write(&path, b"not a save image at all, really").expect("write");
        assert!(open(&path)
            .unwrap_err()
            .message
            .contains("no save image header"));
        let mut big = MAGIC.to_vec();
        big.extend_from_slice(&u32::MAX.to_le_bytes());
        big.extend_from_slice(&0u32.to_le_bytes());
        std::fs::write(&path, &big).expect("write");
        assert!(open(&path).unwrap_err().message.contains("bytes"));
        assert!(check_path("relative/x.save").is_err());
        assert!(check_path("/tmp/").is_err());
        assert!(check_path("/tmp/x.save").is_ok());
    }
}
