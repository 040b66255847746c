//! Atomic file persistence: a reader sees the old file or the new one, never half of
//! either, and a crash right after `write_atomic` returns keeps the new one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Writes `data` to a temp file beside `path`, fsyncs it, renames it over `path` and
/// fsyncs the folder so the rename itself is durable.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no parent folder"))?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Removes a file and makes the removal durable; a file already gone is fine.
pub fn remove_durable(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    }
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Creates a folder and its parents with `mode` for the ones it creates.
pub fn create_dir_all(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
}

/// The files of `dir` named `STEM{suffix}`, with their stems; hidden files (a write's
/// temporary `.NAME.tmp`) are left out.
pub fn named_files(dir: &Path, suffix: &str) -> io::Result<Vec<(String, std::path::PathBuf)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        let stem = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(suffix))
            .filter(|n| !n.starts_with('.') && !n.is_empty())
            .map(str::to_owned);
        if let Some(stem) = stem {
            out.push((stem, p));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_whole_file_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.xml");
        write_atomic(&p, b"first", 0o600).unwrap();
        write_atomic(&p, b"second", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"second");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "temp file left behind");
        remove_durable(&p).unwrap();
        remove_durable(&p).unwrap();
        assert!(!p.exists());
    }

    #[test]
    fn failed_write_keeps_old_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub");
        fs::create_dir(&p).unwrap();
        // Renaming a file over a non-empty folder fails; the folder must survive.
        fs::write(p.join("x"), b"x").unwrap();
        assert!(write_atomic(&p, b"data", 0o600).is_err());
        assert!(p.join("x").exists());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn named_files_leave_out_hidden_and_other_suffixes() {
        let d = tempfile::tempdir().unwrap();
        for f in ["a.xml", ".a.xml.tmp", ".b.xml", "c.json", ".xml"] {
            std::fs::write(d.path().join(f), "").unwrap();
        }
        let mut got: Vec<String> = named_files(d.path(), ".xml")
            .unwrap()
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        got.sort();
        assert_eq!(got, vec!["a".to_owned()]);
    }
}
