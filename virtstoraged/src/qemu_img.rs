//! qemu-img, driven through argv vectors; image facts come from its JSON output.

use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

use crate::xml::VolFormat;

#[derive(Debug, thiserror::Error)]
pub enum QemuImgError {
    #[error("cannot run qemu-img: {0}")]
    Spawn(std::io::Error),
    #[error("qemu-img failed: {0}")]
    Failed(String),
    #[error("cannot read qemu-img output: {0}")]
    Output(String),
}

/// What `qemu-img info --output=json` says about an image.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct ImageInfo {
    #[serde(rename = "virtual-size")]
    pub virtual_size: u64,
    #[serde(rename = "actual-size", default)]
    pub actual_size: u64,
    pub format: String,
    #[serde(rename = "backing-filename", default)]
    pub backing_filename: Option<String>,
    #[serde(rename = "backing-filename-format", default)]
    pub backing_format: Option<String>,
    #[serde(default)]
    pub encrypted: bool,
}

/// Options of `-o`: values must not carry qemu-img's separator, so they are checked here.
pub fn option_value(v: &str) -> Option<&str> {
    (!v.contains(',') && !v.contains('=')).then_some(v)
}

pub fn create_argv(
    path: &Path,
    format: VolFormat,
    size: u64,
    prealloc: bool,
    compat: Option<&str>,
    backing: Option<(&str, VolFormat)>,
) -> Vec<OsString> {
    let mut argv: Vec<OsString> = vec!["create".into(), "-q".into(), "-f".into()];
    argv.push(format.as_str().into());
    let mut opts = Vec::new();
    if prealloc {
        opts.push("preallocation=falloc".to_owned());
    }
    if let Some(c) = compat.and_then(option_value) {
        opts.push(format!("compat={c}"));
    }
    if !opts.is_empty() {
        argv.push("-o".into());
        argv.push(opts.join(",").into());
    }
    if let Some((b, f)) = backing {
        argv.push("-b".into());
        argv.push(b.into());
        argv.push("-F".into());
        argv.push(f.as_str().into());
    }
    argv.push(path.into());
    argv.push(size.to_string().into());
    argv
}

pub fn run(argv: &[OsString]) -> Result<String, QemuImgError> {
    let mut cmd = Command::new("qemu-img");
    cmd.args(argv);
    output(cmd)
}

/// Runs qemu-img for a command that writes only into a temporary file the daemon
/// renames into place afterwards (create, convert, resize of the `.part` file): it dies
/// with the daemon (`PR_SET_PDEATHSIG`), so a daemon killed mid-way leaves no qemu-img
/// it does not know, only a `.part` file that the next refresh removes. The thread
/// that spawns it waits for it, so the signal cannot come from that thread ending.
/// (A resize in place of a volume is left to finish: it only rewrites metadata, and
/// killing it half-way could damage the image.)
pub fn run_into_temp(argv: &[OsString]) -> Result<String, QemuImgError> {
    use std::os::unix::process::CommandExt;
    let daemon = std::process::id();
    let mut cmd = Command::new("qemu-img");
    cmd.args(argv);
    // SAFETY: prctl and getppid are async-signal-safe and touch no memory of ours.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The daemon died before the prctl: no signal will come, so do not run.
            if libc::getppid() as u32 != daemon {
                return Err(std::io::Error::other("the daemon is gone"));
            }
            Ok(())
        });
    }
    output(cmd)
}

fn output(mut cmd: Command) -> Result<String, QemuImgError> {
    let out = cmd.output().map_err(QemuImgError::Spawn)?;
    if !out.status.success() {
        return Err(QemuImgError::Failed(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub fn info(path: &Path) -> Result<ImageInfo, QemuImgError> {
    let out = run(&[
        "info".into(),
        "-U".into(),
        "--output=json".into(),
        path.into(),
    ])?;
    parse_info(&out)
}

pub fn parse_info(json: &str) -> Result<ImageInfo, QemuImgError> {
    serde_json::from_str(json).map_err(|e| QemuImgError::Output(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_argv_with_backing() {
        let a = create_argv(
            Path::new("/p/x,y.qcow2"),
            VolFormat::Qcow2,
            1024,
            true,
            Some("1.1"),
            Some(("/p/base", VolFormat::Raw)),
        );
        let a: Vec<String> = a.iter().map(|s| s.to_string_lossy().into()).collect();
        assert_eq!(
            a,
            [
                "create",
                "-q",
                "-f",
                "qcow2",
                "-o",
                "preallocation=falloc,compat=1.1",
                "-b",
                "/p/base",
                "-F",
                "raw",
                "/p/x,y.qcow2",
                "1024"
            ]
        );
        assert_eq!(option_value("1.1,x=y"), None);
    }

    #[test]
    fn parses_info_json() {
        let j = r#"{"virtual-size": 1073741824, "filename": "a", "format": "qcow2",
            "actual-size": 200704, "backing-filename": "/p/b", "backing-filename-format": "raw"}"#;
        let i = parse_info(j).unwrap();
        assert_eq!(i.virtual_size, 1 << 30);
        assert_eq!(i.backing_filename.as_deref(), Some("/p/b"));
        assert!(parse_info("{}").is_err());
    }
}
