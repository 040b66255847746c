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
cargo test --workspace --locked -- --test-threads="${TEST_THREADS:-2}"
