//! What the front's benchmarks share: percentiles, and virtqemud with the front in
//! front of it on a private bus.

#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use common::harness::{Daemon, TestBus};

pub const FRONT: &str = env!("CARGO_BIN_EXE_virtproxyd");
pub const CONNECT: &str = "/org/libvirt/QEMU";

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A private bus with virtqemud and the front on it (both stop when dropped).
pub struct Stack {
    pub bus: TestBus,
    pub qemud: Daemon,
    pub front: Daemon,
}

impl Stack {
    pub async fn start() -> Stack {
        let qemud = Path::new(FRONT).with_file_name("virtqemud");
        assert!(
            qemud.exists(),
            "build virtqemud first (cargo build --workspace)"
        );
        let bus = TestBus::start().expect("bus");
        let qemud = Daemon::builder(&qemud, "virtqemud")
            .spawn(&bus)
            .await
            .expect("virtqemud");
        let front = Daemon::builder(FRONT, "virtproxyd")
            .spawn(&bus)
            .await
            .expect("virtproxyd");
        Stack { bus, qemud, front }
    }
}
