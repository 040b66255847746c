//! Loop devices for `fs` pools whose source is an image file. Attached in the daemon's
//! own process with `LOOP_CONFIGURE` and autoclear in one step, so the device goes away
//! with its last user: a daemon killed before the mount leaves none, and unmounting
//! the pool detaches it.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::{BackendError, Result};

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// `struct loop_info64` of `<linux/loop.h>`.
#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

/// `struct loop_config` of `<linux/loop.h>`.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// A loop device attached over an image, open: it stays attached while this (or a
/// mount of it) holds it.
pub struct Attached {
    pub dev: PathBuf,
    _file: File,
}

/// Attaches a free loop device over `image` with autoclear set.
pub fn attach(image: &Path) -> Result<Attached> {
    let backing = OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .map_err(|e| BackendError::io("cannot open", image, e))?;
    let ctl = File::open("/dev/loop-control")
        .map_err(|e| BackendError::io("cannot open", "/dev/loop-control", e))?;
    // Another process may take the device between GET_FREE and CONFIGURE (EBUSY).
    for _ in 0..16 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
        let n = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return Err(BackendError::io("cannot find a free loop device", image, e));
        }
        let dev = PathBuf::from(format!("/dev/loop{n}"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&dev)
            .map_err(|e| BackendError::io("cannot open", &dev, e))?;
        let mut name = [0u8; 64];
        let src = image.as_os_str().as_encoded_bytes();
        let len = src.len().min(63);
        name[..len].copy_from_slice(&src[..len]);
        let cfg = LoopConfig {
            fd: backing.as_raw_fd() as u32,
            block_size: 0,
            info: LoopInfo64 {
                device: 0,
                inode: 0,
                rdevice: 0,
                offset: 0,
                sizelimit: 0,
                number: 0,
                encrypt_type: 0,
                encrypt_key_size: 0,
                flags: LO_FLAGS_AUTOCLEAR,
                file_name: name,
                crypt_name: [0; 64],
                encrypt_key: [0; 32],
                init: [0; 2],
            },
            reserved: [0; 8],
        };
        // SAFETY: `cfg` is a valid `struct loop_config` that outlives the call; the
        // kernel only reads it.
        let r = unsafe { libc::ioctl(file.as_raw_fd(), LOOP_CONFIGURE, &cfg as *const LoopConfig) };
        if r == 0 {
            return Ok(Attached { dev, _file: file });
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) {
            return Err(BackendError::io(
                "cannot attach a loop device over",
                image,
                e,
            ));
        }
    }
    Err(BackendError::Invalid(format!(
        "cannot attach a loop device over '{}': every free one was taken meanwhile",
        image.display()
    )))
}

/// The image a loop device (`/dev/loopN`) is attached over, if it is one.
pub fn backing_file(dev: &Path) -> Option<PathBuf> {
    let name = dev.file_name()?.to_str()?;
    if !name.starts_with("loop") {
        return None;
    }
    let text = std::fs::read_to_string(format!("/sys/block/{name}/loop/backing_file")).ok()?;
    Some(PathBuf::from(text.trim_end_matches('\n')))
}
