//! The `fs` pool: a block device (or image) holding a filesystem, mounted by the daemon
//! at the pool's target. Once mounted its volumes are files, handled by the `dir`
//! backend; this one only adds formatting, mounting and adoption of an existing mount.

use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::dir::DirBackend;
use super::loopdev;
use super::{BackendError, BuildFlags, PoolBackend, PoolSizes, Result};
use crate::xml::{PoolDef, VolDef};

pub struct FsBackend {
    files: DirBackend,
}

impl FsBackend {
    pub fn new() -> FsBackend {
        FsBackend { files: DirBackend }
    }
}

impl Default for FsBackend {
    fn default() -> Self {
        Self::new()
    }
}

/// The pool's device and filesystem type (`None` lets mount probe: libvirt's `auto`).
fn source(def: &PoolDef) -> Result<(PathBuf, Option<String>)> {
    let dev = def
        .source_device()
        .ok_or_else(|| BackendError::Invalid("fs pool has no <source><device path=...>".into()))?;
    let fmt = def
        .source
        .as_ref()
        .and_then(|s| s.first("format"))
        .and_then(|f| f.get_attr("type"))
        .filter(|t| *t != "auto")
        .map(str::to_owned);
    if let Some(t) = &fmt {
        // The type becomes part of a program name (mkfs.TYPE) and a mount option.
        let ok = !t.is_empty()
            && t.len() <= 16
            && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !ok {
            return Err(BackendError::Invalid(format!(
                "unsupported filesystem format '{t}'"
            )));
        }
    }
    Ok((PathBuf::from(dev), fmt))
}

/// Runs a tool given as argv; its stderr becomes the error.
fn run(program: &str, args: &[OsString]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| BackendError::io("cannot run", program, e))?;
    if !out.status.success() {
        return Err(BackendError::Invalid(format!(
            "{program} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The filesystem blkid finds on `dev`, if any.
fn probe(dev: &Path) -> Result<Option<String>> {
    let out = Command::new("blkid")
        .args(["-p", "-o", "value", "-s", "TYPE"])
        .arg(dev)
        .output()
        .map_err(|e| BackendError::io("cannot run", "blkid", e))?;
    // blkid exits 2 when it finds nothing.
    let found = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    Ok((out.status.success() && !found.is_empty()).then_some(found))
}

/// One line of /proc/self/mountinfo: the mount point and its source, unescaped.
pub fn mounts() -> Result<Vec<(PathBuf, String)>> {
    let text = fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| BackendError::io("cannot read", "/proc/self/mountinfo", e))?;
    Ok(parse_mountinfo(&text))
}

fn parse_mountinfo(text: &str) -> Vec<(PathBuf, String)> {
    text.lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let point = pre.split(' ').nth(4)?;
            let src = post.split(' ').nth(1)?;
            Some((PathBuf::from(unescape(point)), unescape(src)))
        })
        .collect()
}

/// mountinfo writes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether `target` is mounted, and if so whether from `dev`.
fn mounted(target: &Path, dev: &Path) -> Result<Option<bool>> {
    let target = fs::canonicalize(target).unwrap_or_else(|_| target.to_path_buf());
    let dev = fs::canonicalize(dev).unwrap_or_else(|_| dev.to_path_buf());
    // The last mount on a point is the visible one.
    Ok(mounts()?
        .into_iter()
        .rev()
        .find(|(p, _)| *p == target)
        .map(|(_, src)| {
            let src = fs::canonicalize(&src).unwrap_or_else(|_| PathBuf::from(&src));
            // An image source is mounted through the loop device attached over it.
            src == dev || loopdev::backing_file(&src).is_some_and(|b| b == dev)
        }))
}

fn mkfs(dev: &Path, kind: &str) -> Result<()> {
    let mut args: Vec<OsString> = Vec::new();
    if kind.starts_with("ext") {
        // -F: the device may be an image file; -q: no progress on stderr.
        args.extend(["-F".into(), "-q".into()]);
    } else if kind == "xfs" {
        args.push("-f".into());
    }
    args.push(dev.into());
    run(&format!("mkfs.{kind}"), &args).map(|_| ())
}

impl PoolBackend for FsBackend {
    /// libvirt's build: the target directory always; the filesystem only when a flag
    /// asks for it (NO_OVERWRITE refuses a device that already has one).
    fn build(&self, def: &PoolDef, flags: BuildFlags) -> Result<()> {
        if flags.contains(BuildFlags::OVERWRITE | BuildFlags::NO_OVERWRITE) {
            return Err(BackendError::Invalid(
                "Overwrite and no overwrite flags are mutually exclusive".into(),
            ));
        }
        let (dev, fmt) = source(def)?;
        if flags.intersects(BuildFlags::OVERWRITE | BuildFlags::NO_OVERWRITE) {
            let kind = fmt.as_deref().unwrap_or("ext4");
            if flags.contains(BuildFlags::NO_OVERWRITE) {
                if let Some(found) = probe(&dev)? {
                    return Err(BackendError::Invalid(format!(
                        "Storage pool already built: device '{}' has a '{found}' filesystem",
                        dev.display()
                    )));
                }
            }
            if mounted(&def.target, &dev)?.is_some() {
                return Err(BackendError::Invalid(format!(
                    "cannot format '{}': it is mounted",
                    dev.display()
                )));
            }
            mkfs(&dev, kind)?;
        }
        self.files.build(def, BuildFlags::empty())
    }

    /// Mounts the device at the target, or adopts the mount that is already there.
    /// The mount is made by this process (mount(2), not a mount(8) child): a kill -9
    /// cannot land between the kernel mounting and the daemon knowing, nor leave a
    /// child that mounts after a restarted daemon has looked.
    fn start(&self, def: &PoolDef) -> Result<()> {
        let (dev, fmt) = source(def)?;
        match mounted(&def.target, &dev)? {
            Some(true) => return Ok(()),
            Some(false) => {
                return Err(BackendError::Invalid(format!(
                    "target '{}' is already mounted from another source",
                    def.target.display()
                )))
            }
            None => {}
        }
        if !def.target.is_dir() {
            return Err(BackendError::Invalid(format!(
                "cannot mount at '{}': it does not exist (build the pool first)",
                def.target.display()
            )));
        }
        let fstype = match fmt {
            Some(t) => t,
            None => probe(&dev)?.ok_or_else(|| {
                BackendError::Invalid(format!(
                    "no filesystem found on '{}' (build the pool with a format first)",
                    dev.display()
                ))
            })?,
        };
        // An image file gets a loop device, held open until the mount holds it.
        let is_file = fs::metadata(&dev)
            .map_err(|e| BackendError::io("cannot stat", &dev, e))?
            .is_file();
        let attached = if is_file {
            Some(loopdev::attach(&dev)?)
        } else {
            None
        };
        let from = attached.as_ref().map_or(dev.as_path(), |a| a.dev.as_path());
        // nodev,nosuid: guest-writable images must not become device nodes or setuid
        // programs on the host.
        nix::mount::mount(
            Some(from),
            &def.target,
            Some(fstype.as_str()),
            nix::mount::MsFlags::MS_NODEV | nix::mount::MsFlags::MS_NOSUID,
            None::<&str>,
        )
        .map_err(|e| {
            BackendError::Invalid(format!(
                "cannot mount '{}' on '{}': {e}",
                dev.display(),
                def.target.display()
            ))
        })
    }

    fn stop(&self, def: &PoolDef) -> Result<()> {
        let (dev, _) = source(def)?;
        if mounted(&def.target, &dev)? == Some(true) {
            nix::mount::umount(&def.target).map_err(|e| {
                BackendError::io("cannot unmount", &def.target, std::io::Error::from(e))
            })?;
        }
        Ok(())
    }

    fn delete(&self, def: &PoolDef) -> Result<()> {
        self.files.delete(def)
    }

    fn refresh(&self, def: &PoolDef) -> Result<(PoolSizes, Vec<VolDef>)> {
        let (dev, _) = source(def)?;
        if mounted(&def.target, &dev)? != Some(true) {
            return Err(BackendError::Invalid(format!(
                "'{}' is not mounted at '{}'",
                dev.display(),
                def.target.display()
            )));
        }
        self.files.refresh(def)
    }

    fn create_vol(&self, def: &PoolDef, vol: &VolDef, from: Option<&VolDef>) -> Result<VolDef> {
        self.files.create_vol(def, vol, from)
    }
    fn delete_vol(&self, def: &PoolDef, vol: &VolDef) -> Result<()> {
        self.files.delete_vol(def, vol)
    }
    fn resize_vol(&self, def: &PoolDef, vol: &VolDef, capacity: u64, shrink: bool) -> Result<()> {
        self.files.resize_vol(def, vol, capacity, shrink)
    }
    fn wipe_vol(&self, def: &PoolDef, vol: &VolDef, pattern: super::WipePattern) -> Result<()> {
        self.files.wipe_vol(def, vol, pattern)
    }
    fn vol_info(&self, def: &PoolDef, vol: &VolDef) -> Result<VolDef> {
        self.files.vol_info(def, vol)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_is_parsed_and_unescaped() {
        let text = "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n\
                    90 22 7:3 / /mnt/my\\040pool rw,nodev - ext4 /dev/loop3 rw\n";
        let m = parse_mountinfo(text);
        assert_eq!(m[0], (PathBuf::from("/"), "/dev/vda".into()));
        assert_eq!(m[1], (PathBuf::from("/mnt/my pool"), "/dev/loop3".into()));
    }

    #[test]
    fn hostile_formats_are_refused() {
        for f in ["ext4 -o", "../x", "ext4,ro", ""] {
            let x = format!(
                "<pool type='fs'><name>f</name><source><device path='/dev/loop9'/>\
                 <format type='{f}'/></source><target><path>/mnt/f</path></target></pool>"
            );
            let def = PoolDef::parse(&x).expect("parse");
            assert!(source(&def).is_err(), "{f:?} accepted");
        }
    }

    #[test]
    fn overwrite_flags_are_exclusive() {
        let x = "<pool type='fs'><name>f</name><source><device path='/dev/loop9'/></source>\
                 <target><path>/nonexistent/f</path></target></pool>";
        let def = PoolDef::parse(x).expect("parse");
        let e = FsBackend::new()
            .build(&def, BuildFlags::OVERWRITE | BuildFlags::NO_OVERWRITE)
            .expect_err("both flags");
        assert!(e.to_string().contains("mutually exclusive"));
    }
}
