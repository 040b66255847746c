#!/usr/bin/env bash
# Builds everything and runs every test (unit, golden files, and integration tests that
# start a private dbus-daemon, real QEMU, bridges, nftables and dnsmasq inside network
# namespaces they create). Run as root on Debian 12.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
# The tiny test guest (kernel + initramfs from Debian packages), cached across runs.
if [ -x scripts/build-test-guest.sh ]; then
  scripts/build-test-guest.sh
fi
cargo build --workspace --all-targets --locked
# The house habits as checks (root Cargo.toml [workspace.lints], clippy.toml): rustfmt's
# layout, no unwrap() outside tests, a SAFETY comment on every unsafe block, functions
# under 150 lines, and no clippy warning.
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# Each test binary under a time limit (scripts/test-runner.sh): a hang fails fast.
CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="$PWD/scripts/test-runner.sh" \
  cargo test --workspace --locked -- --test-threads="${TEST_THREADS:-2}"
