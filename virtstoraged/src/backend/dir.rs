//! The `dir` pool: a directory of image files. Also the file-level helpers that the
//! `fs` pool will reuse once mounted (volumes are files under the target).

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::{BackendError, PoolBackend, PoolSizes, Result, WipePattern};
use crate::qemu_img;
use crate::xml::{BackingStore, Name, PoolDef, VolDef, VolFormat};

pub struct DirBackend;

/// Copy chunk: big enough for throughput, small enough to never hold a volume in memory.
pub const CHUNK: usize = 1 << 20;
const QCOW2_MAGIC: &[u8; 4] = b"QFI\xfb";
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

fn punch_hole(file: &File, offset: u64, len: u64) -> std::io::Result<()> {
    use nix::fcntl::{fallocate, FallocateFlags};
    fallocate(
        file.as_raw_fd(),
        FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
        offset as i64,
        len as i64,
    )
    .map_err(std::io::Error::from)
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

/// Copies up to `limit` bytes from `src` into `dst` at `offset`, in chunks, keeping holes:
/// a chunk of zeros is punched (inside the old file) or skipped (past its end) rather than
/// written. Returns the number of bytes copied; `progress` sees the running total.
pub fn copy_sparse(
    src: &mut dyn Read,
    dst: &File,
    offset: u64,
    limit: Option<u64>,
    progress: &mut dyn FnMut(u64),
) -> std::io::Result<u64> {
    let meta = dst.metadata()?;
    // A block device (an LV) has no holes to keep: its zeros are written.
    let dst_is_file = meta.is_file();
    let old_len = meta.len();
    let mut buf = vec![0u8; CHUNK];
    let mut done: u64 = 0;
    let mut out = dst;
    loop {
        let want = match limit {
            Some(l) if l - done < CHUNK as u64 => (l - done) as usize,
            _ => CHUNK,
        };
        if want == 0 {
            break;
        }
        // Fill the chunk fully (pipes deliver short reads) so zero detection sees blocks.
        let mut got = 0;
        while got < want {
            match src.read(&mut buf[got..want]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if got == 0 {
            break;
        }
        let pos = offset + done;
        if dst_is_file && buf[..got].iter().all(|b| *b == 0) {
            if pos < old_len {
                punch_hole(dst, pos, got as u64)?;
            }
        } else {
            out.seek(SeekFrom::Start(pos))?;
            out.write_all(&buf[..got])?;
        }
        done += got as u64;
        progress(done);
        if got < want {
            break;
        }
    }
    let end = offset + done;
    if dst_is_file && dst.metadata()?.len() < end {
        dst.set_len(end)?;
    }
    Ok(done)
}

/// The next data (`SEEK_DATA`) or hole (`SEEK_HOLE`) offset at or after `pos`; `None`
/// when there is no more data.
fn seek_extent(f: &File, pos: u64, whence: libc::c_int) -> std::io::Result<Option<u64>> {
    // SAFETY: lseek only reads the descriptor, which `f` keeps open.
    let r = unsafe { libc::lseek(f.as_raw_fd(), pos as libc::off_t, whence) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENXIO) => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some(r as u64))
}

/// Whether an in-kernel copy failed only because the kernel cannot do it for these
/// files (the caller then copies through user space).
fn unsupported(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EXDEV | libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
    )
}

/// Copies up to `len` bytes of the regular file `src` from `src_off` into `dst` at
/// `dst_off` inside the kernel (`copy_file_range`), extent by extent: holes of `src`
/// (`SEEK_DATA`/`SEEK_HOLE`) are skipped, or punched where `dst` had data, so the
/// copy stays as sparse as its source. Returns the bytes covered, or `Ok(None)` when
/// the kernel cannot copy between these files (nothing was written then).
pub fn copy_extents(
    src: &File,
    src_off: u64,
    dst: &File,
    dst_off: u64,
    len: u64,
    progress: &mut dyn FnMut(u64),
) -> std::io::Result<Option<u64>> {
    let (src_meta, dst_meta) = (src.metadata()?, dst.metadata()?);
    // Block devices (LVs) have no extents to seek and no length in their metadata.
    if !src_meta.is_file() || !dst_meta.is_file() {
        return Ok(None);
    }
    let end = src_off.saturating_add(len).min(src_meta.len());
    let old_len = dst_meta.len();
    let out = |p: u64| dst_off + (p - src_off);
    let mut pos = src_off;
    let mut wrote = false;
    while pos < end {
        let data = seek_extent(src, pos, libc::SEEK_DATA)?
            .unwrap_or(end)
            .min(end);
        if data > pos {
            let hole_at = out(pos);
            if hole_at < old_len {
                punch_hole(dst, hole_at, (data - pos).min(old_len - hole_at))?;
            }
            pos = data;
            progress(pos - src_off);
            continue;
        }
        let hole = seek_extent(src, pos, libc::SEEK_HOLE)?
            .unwrap_or(end)
            .min(end);
        let (mut off_in, mut off_out) = (pos as libc::loff_t, out(pos) as libc::loff_t);
        while (off_in as u64) < hole {
            // Pieces of 64 MiB keep the progress counter moving.
            let want = (hole - off_in as u64).min(64 << 20) as usize;
            // SAFETY: both descriptors stay open for the call; the offsets are ours.
            let n = unsafe {
                libc::copy_file_range(
                    src.as_raw_fd(),
                    &mut off_in,
                    dst.as_raw_fd(),
                    &mut off_out,
                    want,
                    0,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                if !wrote && unsupported(&e) {
                    return Ok(None);
                }
                return Err(e);
            }
            if n == 0 {
                // The source shrank under us: stop at what it has.
                return finish(dst, out(off_in as u64), off_in as u64 - src_off);
            }
            wrote = true;
            progress(off_in as u64 - src_off);
        }
        pos = hole;
    }
    finish(dst, out(end), end.saturating_sub(src_off))
}

fn finish(dst: &File, end: u64, done: u64) -> std::io::Result<Option<u64>> {
    if dst.metadata()?.len() < end {
        dst.set_len(end)?;
    }
    Ok(Some(done))
}

/// Sends `limit` bytes of `src` from `offset` into a pipe or socket inside the kernel
/// (`sendfile`). Returns the bytes sent, or `Ok(None)` when the kernel cannot.
pub fn send_file(
    src: &File,
    offset: u64,
    dst: &File,
    limit: u64,
    progress: &mut dyn FnMut(u64),
) -> std::io::Result<Option<u64>> {
    let mut off = offset as libc::off_t;
    let mut done = 0u64;
    while done < limit {
        let want = (limit - done).min(64 << 20) as usize;
        // SAFETY: both descriptors stay open for the call; the offset is ours.
        let n = unsafe { libc::sendfile(dst.as_raw_fd(), src.as_raw_fd(), &mut off, want) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            if done == 0 && unsupported(&e) {
                return Ok(None);
            }
            return Err(e);
        }
        if n == 0 {
            break;
        }
        done += n as u64;
        progress(done);
    }
    Ok(Some(done))
}

/// Asks for a pipe buffer of one chunk, so a reader gets whole chunks per read instead
/// of the default 64 KiB; not a pipe, or the system limit is lower: left as it is.
pub fn widen_pipe(f: &File) {
    use std::os::unix::fs::FileTypeExt;
    if f.metadata().is_ok_and(|m| m.file_type().is_fifo()) {
        // SAFETY: F_SETPIPE_SZ only changes the pipe's buffer; the fd stays open.
        unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETPIPE_SZ, CHUNK as libc::c_int) };
    }
}

/// Copies `limit` bytes in chunks to a stream (a pipe or socket) that cannot hold holes.
pub fn copy_plain(
    src: &mut dyn Read,
    dst: &mut dyn Write,
    limit: u64,
    progress: &mut dyn FnMut(u64),
) -> std::io::Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut done = 0u64;
    while done < limit {
        let want = (limit - done).min(CHUNK as u64) as usize;
        let n = match src.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        dst.write_all(&buf[..n])?;
        done += n as u64;
        progress(done);
    }
    Ok(done)
}

/// Opens a volume file without following a symlink.
pub fn open_vol(path: &Path, write: bool) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(write)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
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
    };
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
            },
            None => qemu_img::info(&path)?,
        };
        vol.format = VolFormat::Qcow2;
        vol.capacity = info.virtual_size;
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
fn make_image(tmp: &Path, vol: &VolDef, from: Option<&VolDef>) -> Result<()> {
    let prealloc = vol.allocation.is_some_and(|a| a >= vol.capacity && a > 0);
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
            qemu_img::run(&[
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
                qemu_img::run(&[
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
                qemu_img::run(&argv)?;
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
    fn build(&self, def: &PoolDef, _flags: u32) -> Result<()> {
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
    use std::os::unix::fs::FileExt;

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
        b.build(&def, 0).unwrap();
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
        DirBackend.build(&def, 0).unwrap();
        fs::write(tmp.path().join("secret"), b"x").unwrap();
        std::os::unix::fs::symlink(tmp.path().join("secret"), def.target.join("leak")).unwrap();
        fs::write(def.target.join("inside"), b"y").unwrap();
        std::os::unix::fs::symlink(def.target.join("inside"), def.target.join("alias")).unwrap();
        let (_, vols) = DirBackend.refresh(&def).unwrap();
        let names: Vec<_> = vols.iter().map(|v| v.name.as_str().to_owned()).collect();
        assert_eq!(names, ["alias", "inside"]);
        assert!(open_vol(&def.target.join("leak"), false).is_err());
    }

    #[test]
    fn sparse_copy_punches_and_skips() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("f");
        fs::write(&p, vec![7u8; 3 * CHUNK]).unwrap();
        let f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
        let mut src = vec![0u8; 2 * CHUNK];
        src[CHUNK + 3] = 1;
        let mut seen = 0;
        let n = copy_sparse(&mut &src[..], &f, 0, None, &mut |d| seen = d).unwrap();
        assert_eq!(n, 2 * CHUNK as u64);
        assert_eq!(seen, n);
        let back = fs::read(&p).unwrap();
        assert_eq!(&back[..2 * CHUNK], &src[..]);
        assert!(back[2 * CHUNK..].iter().all(|b| *b == 7));
    }

    /// data | hole | data in the source over a destination full of 7s: the hole is
    /// punched, the data copied in the kernel, the tail past the copy kept.
    #[test]
    fn extent_copy_keeps_holes() {
        let tmp = tempfile::tempdir().unwrap();
        let (sp, dp) = (tmp.path().join("src"), tmp.path().join("dst"));
        let src = File::create(&sp).unwrap();
        let block = 1 << 20;
        src.set_len(4 * block).unwrap();
        (&src).write_all(&vec![1u8; block as usize]).unwrap();
        (&src).seek(SeekFrom::Start(3 * block)).unwrap();
        (&src).write_all(&vec![2u8; block as usize]).unwrap();
        src.sync_all().unwrap();
        fs::write(&dp, vec![7u8; 5 * block as usize]).unwrap();
        let dst = OpenOptions::new().read(true).write(true).open(&dp).unwrap();
        let src = File::open(&sp).unwrap();
        let mut seen = 0;
        let n = copy_extents(&src, 0, &dst, 0, 4 * block, &mut |d| seen = d)
            .unwrap()
            .expect("copy_file_range works on one filesystem");
        assert_eq!((n, seen), (4 * block, 4 * block));
        let back = fs::read(&dp).unwrap();
        let b = block as usize;
        assert!(back[..b].iter().all(|x| *x == 1));
        assert!(back[b..3 * b].iter().all(|x| *x == 0));
        assert!(back[3 * b..4 * b].iter().all(|x| *x == 2));
        assert!(back[4 * b..].iter().all(|x| *x == 7));
        // 3 MiB of data left allocated, not 5.
        let blocks = dst.metadata().unwrap().blocks() * 512;
        assert!(blocks <= 3 * block + 64 * 1024, "allocated {blocks}");
    }

    /// A block device (what an LV is) gets its zeros written, not skipped, and no
    /// in-kernel extent copy: tried on a loop device over a file of 7s.
    #[test]
    fn block_devices_get_zeros_written() {
        struct Loop(String);
        impl Drop for Loop {
            fn drop(&mut self) {
                let _ = std::process::Command::new("losetup")
                    .args(["-d", &self.0])
                    .status();
            }
        }
        let tmp = tempfile::tempdir().unwrap();
        let img = tmp.path().join("img");
        let block = 1usize << 20;
        fs::write(&img, vec![7u8; 4 * block]).unwrap();
        let out = std::process::Command::new("losetup")
            .args(["-f", "--show"])
            .arg(&img)
            .output()
            .unwrap();
        assert!(out.status.success(), "losetup: {out:?}");
        let dev = Loop(String::from_utf8_lossy(&out.stdout).trim().to_owned());
        let dst = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&dev.0)
            .unwrap();
        let sp = tmp.path().join("src");
        let mut data = vec![0u8; 3 * block];
        data[block..2 * block].fill(1);
        fs::write(&sp, &data).unwrap();
        let src = File::open(&sp).unwrap();
        assert!(
            copy_extents(&src, 0, &dst, 0, 3 * block as u64, &mut |_| {})
                .unwrap()
                .is_none()
        );
        let n = copy_sparse(&mut &src, &dst, 0, Some(3 * block as u64), &mut |_| {}).unwrap();
        assert_eq!(n, 3 * block as u64);
        let mut back = vec![0u8; 4 * block];
        dst.read_exact_at(&mut back, 0).unwrap();
        assert!(back[..block].iter().all(|x| *x == 0));
        assert!(back[block..2 * block].iter().all(|x| *x == 1));
        assert!(back[2 * block..3 * block].iter().all(|x| *x == 0));
        assert!(back[3 * block..].iter().all(|x| *x == 7));
    }

    #[test]
    fn send_file_feeds_a_pipe() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("v");
        let data: Vec<u8> = (0..3 * CHUNK).map(|i| (i % 253) as u8).collect();
        fs::write(&p, &data).unwrap();
        let (r, w) = nix::unistd::pipe().unwrap();
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            File::from(r).read_to_end(&mut got).unwrap();
            got
        });
        let w = File::from(w);
        let n = send_file(
            &File::open(&p).unwrap(),
            5,
            &w,
            2 * CHUNK as u64,
            &mut |_| {},
        )
        .unwrap()
        .expect("sendfile to a pipe");
        drop(w);
        assert_eq!(n, 2 * CHUNK as u64);
        assert_eq!(reader.join().unwrap(), &data[5..5 + 2 * CHUNK]);
    }
}
