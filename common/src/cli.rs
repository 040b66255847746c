//! The command line every daemon shares, and the folders it resolves to.

use std::path::PathBuf;

use clap::Parser;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Root, the system bus, `/etc/libvirt`, `/var/lib/libvirt`, `/run/libvirt`.
    System,
    /// Any user, the session bus, XDG folders (like `qemu:///session`).
    Session,
}

#[derive(Debug, Clone, Parser)]
#[command(version, about = None, long_about = None)]
pub struct Args {
    /// Run as the system instance (the default for root).
    #[arg(long, conflicts_with = "session")]
    pub system: bool,
    /// Run as a per-user session instance (the default for other users).
    #[arg(long)]
    pub session: bool,
    /// Exit after this many idle seconds with nothing to watch; 0 never exits.
    #[arg(long, value_name = "SECS", default_value_t = 0)]
    pub timeout: u64,
    /// Where persistent definitions live.
    #[arg(long, value_name = "DIR")]
    pub config_dir: Option<PathBuf>,
    /// Where the daemon keeps state such as images and leases.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Where runtime status and the daemon's socket live.
    #[arg(long, value_name = "DIR")]
    pub runtime_dir: Option<PathBuf>,
    /// Read devices from this sysfs tree instead of /sys (tests with fixture trees;
    /// only virtnodedevd uses it).
    #[arg(long, value_name = "DIR", hide = true)]
    pub sysfs_root: Option<PathBuf>,
    /// More logging (-v debug, -vv trace).
    #[arg(short, long, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// The resolved settings a driver starts with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub mode: Mode,
    pub timeout: u64,
    pub config_dir: PathBuf,
    pub state_dir: PathBuf,
    pub runtime_dir: PathBuf,
    pub verbose: u8,
    /// `/sys` unless a test points elsewhere.
    pub sysfs_root: PathBuf,
}

impl Settings {
    /// Resolves defaults as libvirt does: system folders for root, XDG ones otherwise.
    pub fn resolve(args: &Args) -> anyhow::Result<Settings> {
        let mode = if args.system {
            Mode::System
        } else if args.session || !nix::unistd::geteuid().is_root() {
            Mode::Session
        } else {
            Mode::System
        };
        let (config, state, runtime) = match mode {
            Mode::System => (
                PathBuf::from("/etc/libvirt"),
                PathBuf::from("/var/lib/libvirt"),
                PathBuf::from("/run/libvirt"),
            ),
            Mode::Session => {
                let home = std::env::var_os("HOME").map(PathBuf::from);
                let xdg = |var: &str, fallback: &str| -> anyhow::Result<PathBuf> {
                    match std::env::var_os(var) {
                        Some(v) if !v.is_empty() => Ok(PathBuf::from(v)),
                        _ => home
                            .as_ref()
                            .map(|h| h.join(fallback))
                            .ok_or_else(|| anyhow::anyhow!("neither ${var} nor $HOME is set")),
                    }
                };
                let runtime = match std::env::var_os("XDG_RUNTIME_DIR") {
                    Some(v) if !v.is_empty() => PathBuf::from(v),
                    _ => xdg("XDG_CACHE_HOME", ".cache")?,
                };
                (
                    xdg("XDG_CONFIG_HOME", ".config")?.join("libvirt"),
                    xdg("XDG_DATA_HOME", ".local/share")?.join("libvirt"),
                    runtime.join("libvirt"),
                )
            }
        };
        Ok(Settings {
            mode,
            timeout: args.timeout,
            config_dir: args.config_dir.clone().unwrap_or(config),
            state_dir: args.state_dir.clone().unwrap_or(state),
            runtime_dir: args.runtime_dir.clone().unwrap_or(runtime),
            verbose: args.verbose,
            sysfs_root: args
                .sysfs_root
                .clone()
                .unwrap_or_else(|| PathBuf::from("/sys")),
        })
    }

    /// The peer-to-peer D-Bus socket of `daemon`.
    pub fn socket_path(&self, daemon: &str) -> PathBuf {
        self.runtime_dir.join(format!("{daemon}-sock"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_folders_win_and_modes_parse() {
        let args = Args::parse_from([
            "d",
            "--session",
            "--timeout",
            "5",
            "--config-dir",
            "/c",
            "--state-dir",
            "/s",
            "--runtime-dir",
            "/r",
            "-vv",
        ]);
        let s = Settings::resolve(&args).unwrap();
        assert_eq!(s.mode, Mode::Session);
        assert_eq!(s.timeout, 5);
        assert_eq!(s.config_dir, PathBuf::from("/c"));
        assert_eq!(
            s.socket_path("virtqemud"),
            PathBuf::from("/r/virtqemud-sock")
        );
        assert_eq!(s.verbose, 2);
        assert!(Args::try_parse_from(["d", "--system", "--session"]).is_err());
        let sys = Settings::resolve(&Args::parse_from(["d", "--system"])).unwrap();
        assert_eq!(sys.runtime_dir, PathBuf::from("/run/libvirt"));
    }
}
