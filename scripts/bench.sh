#!/usr/bin/env bash
# Builds the release binaries and prints every benchmark's figures (nothing is asserted).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --bins --locked
cargo bench --workspace --all-features --locked "$@"
