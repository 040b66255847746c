//! The `dir` pool: a directory of image files, which the `fs` pool reuses once mounted
//! (volumes are files under the target). Byte copies are in `crate::transfer`.

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{BackendError, BuildFlags, PoolBackend, PoolSizes, Result, WipePattern};
use crate::qemu_img;
use crate::transfer::{copy_sparse, open_vol, punch_hole};
use crate::xml::{BackingStore, Name, PoolDef, VolDef, VolFormat};

pub struct DirBackend;

const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";
/// A LUKS container's first bytes (LUKS1 and LUKS2).
const LUKS_MAGIC: &[u8; 6] = b"LUKS\xba\xbe";
/// Half-made volumes live under this name until complete (a leading dot, which no
/// valid volume name has, so they are never listed).
fn temp_path(target: &Path, name: &Name) -> PathBuf {
    target.join(format!(".{}.part", name.as_str()))
}

pub fn vol_path(def: &PoolDef, name: &Name) -> PathBuf {
    def.target.join(name.as_str())
}

fn chown(path: &Path, def: &crate::xml::Permissions) -> Result<()> {
    if def.owner.is_some() || def.group.is_some() {
        std::os::unix::fs::chown(path, def.owner, def.group)
            .map_err(|e| BackendError::io("cannot chown", path, e))?;
    }
    Ok(())
}

fn preallocate(file: &File, len: u64) -> std::io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    nix::fcntl::fallocate(
        file.as_raw_fd(),
        nix::fcntl::FallocateFlags::empty(),
        0,
        len as i64,
    )
    .map_err(std::io::Error::from)
}

/// Reads a volume from its file. `None` for what is not a volume (directories,
/// symlinks leaving the pool, half-made files).
fn read_vol(def: &PoolDef, name: &str) -> Result<Option<VolDef>> {
    let dir = File::open(&def.target)
        .map_err(|e| BackendError::io("cannot open directory", &def.target, e))?;
    read_vol_in(def, &dir, name)
}

/// Reads the volume `name` of the pool whose target folder is open as `dir`: each
/// lookup is then one path component, and one descriptor serves stat and header.
fn read_vol_in(def: &PoolDef, dir: &File, name: &str) -> Result<Option<VolDef>> {
    use nix::errno::Errno;
    use nix::fcntl::OFlag;
    let Ok(name) = Name::new("name", name) else {
        return Ok(None);
    };
    let path = vol_path(def, &name);
    // O_NOFOLLOW makes a symlink fail with ELOOP; O_NONBLOCK keeps a FIFO from blocking.
    let flags = OFlag::O_RDONLY
        | OFlag::O_NOFOLLOW
        | OFlag::O_NONBLOCK
        | OFlag::O_NOCTTY
        | OFlag::O_CLOEXEC;
    let opened = nix::fcntl::openat(
        Some(dir.as_raw_fd()),
        name.as_str(),
        flags,
        nix::sys::stat::Mode::empty(),
    );
    let file = match opened {
        // SAFETY: openat just returned this descriptor; nothing else owns it.
        Ok(fd) => unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(fd) },
        Err(Errno::ENOENT) => return Ok(None),
        Err(Errno::ELOOP) => {
            // A symlink is only a volume when it resolves inside the pool.
            let (Ok(real), Ok(root)) = (fs::canonicalize(&path), fs::canonicalize(&def.target))
            else {
                return Ok(None);
            };
            if !real.starts_with(&root) || !real.is_file() {
                return Ok(None);
            }
            File::open(&real).map_err(|e| BackendError::io("cannot open", &path, e))?
        }
        Err(e) => return Err(BackendError::io("cannot open", &path, e.into())),
    };
    let meta = file
        .metadata()
        .map_err(|e| BackendError::io("cannot stat", &path, e))?;
    if !meta.is_file() {
        return Ok(None);
    }
    let mut magic = [0u8; 4];
    let is_qcow2 = std::os::unix::fs::FileExt::read_exact_at(&file, &mut magic, 0).is_ok()
        && &magic == QCOW2_MAGIC;
    let path_s = path.to_string_lossy().into_owned();
    let mut vol = VolDef {
        name,
        key: path_s.clone(),
        capacity: meta.len(),
        allocation: Some(meta.blocks() * 512),
        path: path_s,
        format: VolFormat::Raw,
        permissions: crate::xml::Permissions {
            mode: Some(meta.mode() & 0o7777),
            owner: Some(meta.uid()),
            group: Some(meta.gid()),
        },
        compat: None,
        backing: None,
        encryption: None,
        key_file: None,
    };
    if !is_qcow2 {
        // A raw file that is a LUKS container: libvirt shows it as raw, encrypted.
        let mut luks = [0u8; 6];
        if std::os::unix::fs::FileExt::read_exact_at(&file, &mut luks, 0).is_ok()
            && &luks == LUKS_MAGIC
        {
            vol.encryption = Some(crate::xml::VolEncryption { secret: None });
            // The guest sees what follows the header (LUKS1: payload offset in sectors).
            let mut hdr = [0u8; 108];
            if std::os::unix::fs::FileExt::read_exact_at(&file, &mut hdr, 0).is_ok()
                && hdr[6..8] == [0, 1]
            {
                let sectors = u32::from_be_bytes([hdr[104], hdr[105], hdr[106], hdr[107]]);
                vol.capacity = vol.capacity.saturating_sub(u64::from(sectors) * 512);
            }
        }
    }
    if is_qcow2 {
        // The header says it all for ordinary images; qemu-img for the rest.
        let native = crate::qcow2::read_header(&file);
        let info = match native {
            Some(h) => qemu_img::ImageInfo {
                virtual_size: h.virtual_size,
                actual_size: meta.blocks() * 512,
                format: "qcow2".into(),
                backing_filename: h.backing_file,
                backing_format: h.backing_format,
                encrypted: h.encrypted,
            },
            None => qemu_img::info(&path)?,
        };
        vol.format = VolFormat::Qcow2;
        vol.capacity = info.virtual_size;
        if info.encrypted {
            vol.encryption = Some(crate::xml::VolEncryption { secret: None });
        }
        vol.backing = match info.backing_filename {
            Some(p) => Some(BackingStore {
                path: p,
                format: match info.backing_format.as_deref() {
                    Some("qcow2") => VolFormat::Qcow2,
                    _ => VolFormat::Raw,
                },
            }),
            None => None,
        };
    }
    Ok(Some(vol))
}

fn pool_sizes(target: &Path) -> Result<PoolSizes> {
    let s = nix::sys::statvfs::statvfs(target)
        .map_err(|e| BackendError::io("cannot statvfs", target, e.into()))?;
    let frag = s.fragment_size();
    let capacity = s.blocks() * frag;
    let available = s.blocks_available() * frag;
    Ok(PoolSizes {
        capacity,
        allocation: capacity.saturating_sub(s.blocks_free() * frag),
        available,
    })
}

/// Builds the image under `tmp` (the caller renames it into place).
/// A LUKS volume, by qemu-img with the passphrase file the driver made
/// (`VolDef::key_file`): QEMU's `luks` format for raw, LUKS inside for qcow2.
fn make_luks_image(tmp: &Path, vol: &VolDef, from: Option<&VolDef>, prealloc: bool) -> Result<()> {
    if from.is_some() {
        return Err(BackendError::Unsupported(
            "cloning into an encrypted volume".into(),
        ));
    }
    let key = vol
        .key_file
        .as_ref()
        .and_then(|k| k.to_str())
        .and_then(qemu_img::option_value)
        .ok_or_else(|| BackendError::Invalid("no usable passphrase for the LUKS volume".into()))?;
    let mut opts = vec![match vol.format {
        VolFormat::Raw => "key-secret=sec0".to_owned(),
        VolFormat::Qcow2 => "encrypt.format=luks,encrypt.key-secret=sec0".to_owned(),
    }];
    if prealloc {
        opts.push("preallocation=falloc".into());
    }
    if let Some(c) = vol.compat.as_deref().and_then(qemu_img::option_value) {
        opts.push(format!("compat={c}"));
    }
    let format = match vol.format {
        VolFormat::Raw => "luks",
        VolFormat::Qcow2 => "qcow2",
    };
    let mut argv: Vec<std::ffi::OsString> = vec![
        "create".into(),
        "-q".into(),
        "--object".into(),
        format!("secret,id=sec0,file={key}").into(),
        "-f".into(),
        format.into(),
        "-o".into(),
        opts.join(",").into(),
    ];
    if let Some(b) = &vol.backing {
        argv.extend([
            "-b".into(),
            b.path.clone().into(),
            "-F".into(),
            b.format.as_str().into(),
        ]);
    }
    argv.extend([tmp.into(), vol.capacity.to_string().into()]);
    qemu_img::run_into_temp(&argv)?;
    // 0600 unless asked, as the volumes made here without qemu-img.
    let mode = vol.permissions.mode.unwrap_or(0o600);
    fs::set_permissions(tmp, fs::Permissions::from_mode(mode))
        .map_err(|e| BackendError::io("cannot chmod", tmp, e))?;
    chown(tmp, &vol.permissions)
}

fn make_image(tmp: &Path, vol: &VolDef, from: Option<&VolDef>) -> Result<()> {
    let prealloc = vol.allocation.is_some_and(|a| a >= vol.capacity && a > 0);
    if vol.encryption.is_some() {
        return make_luks_image(tmp, vol, from, prealloc);
    }
    match (vol.format, from) {
        (VolFormat::Raw, src) => {
            let file = OpenOptions::new()
                .write(true)
                .read(true)
                .create_new(true)
                .mode(vol.permissions.mode.unwrap_or(0o600))
                .custom_flags(libc::O_NOFOLLOW)
                .open(tmp)
                .map_err(|e| BackendError::io("cannot create", tmp, e))?;
            if let Some(src) = src {
                let mut input: Box<dyn Read> = if src.format == VolFormat::Raw {
                    Box::new(
                        open_vol(Path::new(&src.path), false)
                            .map_err(|e| BackendError::io("cannot open", &src.path, e))?,
                    )
                } else {
                    return Err(BackendError::Unsupported(
                        "cloning a qcow2 volume into a raw one".into(),
                    ));
                };
                copy_sparse(&mut *input, &file, 0, Some(vol.capacity), &mut |_| {})
                    .map_err(|e| BackendError::io("cannot copy into", tmp, e))?;
            }
            file.set_len(vol.capacity)
                .map_err(|e| BackendError::io("cannot resize", tmp, e))?;
            if prealloc {
                preallocate(&file, vol.capacity)
                    .map_err(|e| BackendError::io("cannot allocate", tmp, e))?;
            }
            file.sync_all()
                .map_err(|e| BackendError::io("cannot sync", tmp, e))?;
        }
        (VolFormat::Qcow2, Some(src)) => {
            qemu_img::run_into_temp(&[
                "convert".into(),
                "-q".into(),
                "-f".into(),
                src.format.as_str().into(),
                "-O".into(),
                "qcow2".into(),
                src.path.clone().into(),
                tmp.into(),
            ])?;
            let info = qemu_img::info(tmp)?;
            if info.virtual_size < vol.capacity {
                qemu_img::run_into_temp(&[
                    "resize".into(),
                    "-q".into(),
                    "-f".into(),
                    "qcow2".into(),
                    tmp.into(),
                    vol.capacity.to_string().into(),
                ])?;
            }
        }
        (VolFormat::Qcow2, None) => {
            if let Some(b) = &vol.backing {
                if !Path::new(&b.path).is_file() {
                    return Err(BackendError::Invalid(format!(
                        "backing store '{}' does not exist",
                        b.path
                    )));
                }
            }
            // An empty v3 image is written here; qemu-img only for what this writer
            // does not make (preallocation, compat 0.10, odd sizes): one process per
            // volume was most of the time of creating one.
            let native = (!prealloc && vol.compat.as_deref().is_none_or(|c| c == "1.1"))
                .then(|| {
                    crate::qcow2::empty_image(
                        vol.capacity,
                        vol.backing
                            .as_ref()
                            .map(|b| (b.path.as_str(), b.format.as_str())),
                    )
                })
                .flatten();
            if let Some(img) = native {
                let file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(vol.permissions.mode.unwrap_or(0o600))
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(tmp)
                    .map_err(|e| BackendError::io("cannot create", tmp, e))?;
                crate::qcow2::write_empty(&file, &img)
                    .and_then(|()| file.sync_all())
                    .map_err(|e| BackendError::io("cannot write", tmp, e))?;
            } else {
                let argv = qemu_img::create_argv(
                    tmp,
                    VolFormat::Qcow2,
                    vol.capacity,
                    prealloc,
                    vol.compat.as_deref(),
                    vol.backing.as_ref().map(|b| (b.path.as_str(), b.format)),
                );
                qemu_img::run_into_temp(&argv)?;
            }
        }
    }
    if let Some(m) = vol.permissions.mode {
        fs::set_permissions(tmp, fs::Permissions::from_mode(m))
            .map_err(|e| BackendError::io("cannot chmod", tmp, e))?;
    }
    chown(tmp, &vol.permissions)
}

impl PoolBackend for DirBackend {
    fn build(&self, def: &PoolDef, _flags: BuildFlags) -> Result<()> {
        let t = &def.target;
        match fs::create_dir(t) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && t.is_dir() => {}
            Err(e) => {
                if let Some(parent) = t.parent() {
                    fs::create_dir_all(parent)
                        .map_err(|e| BackendError::io("cannot create directory", parent, e))?;
                    fs::create_dir(t)
                        .map_err(|e| BackendError::io("cannot create directory", t, e))?;
                } else {
                    return Err(BackendError::io("cannot create directory", t, e));
                }
            }
        }
        fs::set_permissions(
            t,
            fs::Permissions::from_mode(def.permissions.mode.unwrap_or(0o755)),
        )
        .map_err(|e| BackendError::io("cannot chmod", t, e))?;
        chown(t, &def.permissions)
    }

    fn start(&self, def: &PoolDef) -> Result<()> {
        if !def.target.is_dir() {
            return Err(BackendError::Invalid(format!(
                "cannot open directory '{}': it does not exist (build the pool first)",
                def.target.display()
            )));
        }
        Ok(())
    }

    fn stop(&self, _def: &PoolDef) -> Result<()> {
        Ok(())
    }

    fn delete(&self, def: &PoolDef) -> Result<()> {
        fs::remove_dir(&def.target)
            .map_err(|e| BackendError::io("cannot remove directory", &def.target, e))
    }

    fn refresh(&self, def: &PoolDef) -> Result<(PoolSizes, Vec<VolDef>)> {
        let sizes = pool_sizes(&def.target)?;
        let mut vols = Vec::new();
        let dir = fs::read_dir(&def.target)
            .map_err(|e| BackendError::io("cannot read directory", &def.target, e))?;
        let dir_fd = File::open(&def.target)
            .map_err(|e| BackendError::io("cannot open directory", &def.target, e))?;
        for entry in dir {
            let entry =
                entry.map_err(|e| BackendError::io("cannot read directory", &def.target, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') && name.ends_with(".part") {
                // Left by a daemon killed mid-create: never a good volume.
                let _ = fs::remove_file(entry.path());
                continue;
            }
            // The entry's type comes with the listing: sockets, FIFOs, devices and
            // folders are skipped without a syscall.
            if entry
                .file_type()
                .is_ok_and(|t| !t.is_file() && !t.is_symlink())
            {
                continue;
            }
            if let Some(v) = read_vol_in(def, &dir_fd, name)? {
                vols.push(v);
            }
        }
        vols.sort_by(|a, b| a.name.cmp(&b.name));
        Ok((sizes, vols))
    }

    fn create_vol(&self, def: &PoolDef, vol: &VolDef, from: Option<&VolDef>) -> Result<VolDef> {
        let path = vol_path(def, &vol.name);
        if fs::symlink_metadata(&path).is_ok() {
            return Err(BackendError::VolExists(vol.name.to_string()));
        }
        let tmp = temp_path(&def.target, &vol.name);
        let _ = fs::remove_file(&tmp);
        if let Err(e) = make_image(&tmp, vol, from) {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        // link() never replaces: a volume made meanwhile under the name is kept.
        let linked = fs::hard_link(&tmp, &path);
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(BackendError::VolExists(vol.name.to_string()))
            }
            Err(e) => return Err(BackendError::io("cannot create", &path, e)),
        }
        read_vol(def, vol.name.as_str())?.ok_or_else(|| {
            BackendError::Invalid(format!("volume '{}' vanished after creation", vol.name))
        })
    }

    fn delete_vol(&self, _def: &PoolDef, vol: &VolDef) -> Result<()> {
        fs::remove_file(&vol.path).map_err(|e| BackendError::io("cannot remove", &vol.path, e))
    }

    fn resize_vol(&self, _def: &PoolDef, vol: &VolDef, capacity: u64, shrink: bool) -> Result<()> {
        match vol.format {
            VolFormat::Raw => {
                let f = open_vol(Path::new(&vol.path), true)
                    .map_err(|e| BackendError::io("cannot open", &vol.path, e))?;
                f.set_len(capacity)
                    .map_err(|e| BackendError::io("cannot resize", &vol.path, e))
            }
            VolFormat::Qcow2 => {
                let mut argv: Vec<std::ffi::OsString> = vec!["resize".into(), "-q".into()];
                if shrink {
                    argv.push("--shrink".into());
                }
                argv.extend([
                    "-f".into(),
                    "qcow2".into(),
                    vol.path.clone().into(),
                    capacity.to_string().into(),
                ]);
                qemu_img::run(&argv)?;
                Ok(())
            }
        }
    }

    fn wipe_vol(&self, def: &PoolDef, vol: &VolDef, pattern: WipePattern) -> Result<()> {
        match (vol.format, pattern) {
            (VolFormat::Raw, WipePattern::Random) => {
                let f = open_vol(Path::new(&vol.path), true)
                    .map_err(|e| BackendError::io("cannot open", &vol.path, e))?;
                let len = f
                    .metadata()
                    .map_err(|e| BackendError::io("cannot stat", &vol.path, e))?
                    .len();
                super::fill_random(&f, len)
                    .map_err(|e| BackendError::io("cannot wipe", &vol.path, e))
            }
            // Random bytes over a qcow2 file would destroy the image, not its data.
            (VolFormat::Qcow2, WipePattern::Random) => Err(BackendError::Unsupported(
                "wipe algorithm random (8) on a qcow2 volume; zero (0) makes it a fresh image"
                    .into(),
            )),
            (VolFormat::Raw, WipePattern::Zero) => {
                let f = open_vol(Path::new(&vol.path), true)
                    .map_err(|e| BackendError::io("cannot open", &vol.path, e))?;
                let len = f
                    .metadata()
                    .map_err(|e| BackendError::io("cannot stat", &vol.path, e))?
                    .len();
                punch_hole(&f, 0, len)
                    .and_then(|_| f.sync_all())
                    .map_err(|e| BackendError::io("cannot wipe", &vol.path, e))
            }
            (VolFormat::Qcow2, WipePattern::Zero) => {
                // A wiped qcow2 image is a fresh one of the same size and backing.
                let tmp = temp_path(&def.target, &vol.name);
                let _ = fs::remove_file(&tmp);
                let fresh = VolDef {
                    allocation: None,
                    ..vol.clone()
                };
                make_image(&tmp, &fresh, None)?;
                fs::rename(&tmp, &vol.path)
                    .map_err(|e| BackendError::io("cannot replace", &vol.path, e))
            }
        }
    }

    fn vol_info(&self, def: &PoolDef, vol: &VolDef) -> Result<VolDef> {
        read_vol(def, vol.name.as_str())?
            .ok_or_else(|| BackendError::Invalid(format!("volume '{}' is gone", vol.name)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Seek, SeekFrom, Write};

    fn pool(dir: &Path) -> PoolDef {
        PoolDef::parse(&format!(
            "<pool type='dir'><name>t</name><target><path>{}</path></target></pool>",
            dir.join("pool").display()
        ))
        .unwrap()
    }

    fn vol(xml: &str) -> VolDef {
        VolDef::parse(xml).unwrap()
    }

    #[test]
    fn raw_qcow2_clone_resize_wipe() {
        let tmp = tempfile::tempdir().unwrap();
        let def = pool(tmp.path());
        let b = DirBackend;
        b.build(&def, BuildFlags::empty()).unwrap();
        b.start(&def).unwrap();
        let raw = b
            .create_vol(
                &def,
                &vol("<volume><name>a.img</name><capacity unit='M'>8</capacity></volume>"),
                None,
            )
            .unwrap();
        assert_eq!(raw.capacity, 8 << 20);
        assert_eq!(raw.allocation, Some(0), "raw volumes are sparse");
        let pre = b
            .create_vol(&def, &vol("<volume><name>p.img</name><capacity unit='M'>4</capacity><allocation unit='M'>4</allocation></volume>"), None)
            .unwrap();
        assert!(pre.allocation.unwrap() >= 4 << 20);
        // Data, then clone keeps it.
        {
            let mut f = open_vol(Path::new(&raw.path), true).unwrap();
            f.seek(SeekFrom::Start(1 << 20)).unwrap();
            f.write_all(b"hello").unwrap();
        }
        let clone = b
            .create_vol(
                &def,
                &vol("<volume><name>c.img</name><capacity unit='M'>8</capacity></volume>"),
                Some(&raw),
            )
            .unwrap();
        let data = fs::read(&clone.path).unwrap();
        assert_eq!(&data[1 << 20..(1 << 20) + 5], b"hello");
        assert!(clone.allocation.unwrap() <= 2 << 20, "clone kept holes");
        // qcow2 with a backing store.
        let q = b
            .create_vol(&def, &vol(&format!("<volume><name>q.qcow2</name><capacity unit='M'>16</capacity><target><format type='qcow2'/></target><backingStore><path>{}</path><format type='raw'/></backingStore></volume>", raw.path)), None)
            .unwrap();
        assert_eq!(q.format, VolFormat::Qcow2);
        assert_eq!(q.capacity, 16 << 20);
        assert_eq!(q.backing.as_ref().unwrap().path, raw.path);
        b.resize_vol(&def, &q, 32 << 20, false).unwrap();
        assert_eq!(b.vol_info(&def, &q).unwrap().capacity, 32 << 20);
        b.wipe_vol(&def, &raw, WipePattern::Zero).unwrap();
        assert!(fs::read(&raw.path).unwrap().iter().all(|x| *x == 0));
        b.wipe_vol(&def, &q, WipePattern::Zero).unwrap();
        // Existing names are refused; half-made files vanish on refresh.
        assert!(matches!(
            b.create_vol(
                &def,
                &vol("<volume><name>a.img</name><capacity>1</capacity></volume>"),
                None
            ),
            Err(BackendError::VolExists(_))
        ));
        fs::write(def.target.join(".x.img.part"), b"half").unwrap();
        let (_, vols) = b.refresh(&def).unwrap();
        let names: Vec<_> = vols.iter().map(|v| v.name.as_str().to_owned()).collect();
        assert_eq!(names, ["a.img", "c.img", "p.img", "q.qcow2"]);
        assert!(!def.target.join(".x.img.part").exists());
        b.delete_vol(&def, &q).unwrap();
        assert_eq!(b.refresh(&def).unwrap().1.len(), 3);
    }

    #[test]
    fn symlinks_out_of_the_pool_are_not_volumes() {
        let tmp = tempfile::tempdir().unwrap();
        let def = pool(tmp.path());
        DirBackend.build(&def, BuildFlags::empty()).unwrap();
        fs::write(tmp.path().join("secret"), b"x").unwrap();
        std::os::unix::fs::symlink(tmp.path().join("secret"), def.target.join("leak")).unwrap();
        fs::write(def.target.join("inside"), b"y").unwrap();
        std::os::unix::fs::symlink(def.target.join("inside"), def.target.join("alias")).unwrap();
        let (_, vols) = DirBackend.refresh(&def).unwrap();
        let names: Vec<_> = vols.iter().map(|v| v.name.as_str().to_owned()).collect();
        assert_eq!(names, ["alias", "inside"]);
        assert!(open_vol(&def.target.join("leak"), false).is_err());
    }
}
