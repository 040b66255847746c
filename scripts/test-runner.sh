#!/usr/bin/env bash
# Cargo's runner for the test binaries (scripts/test.sh): each runs under a time limit,
# so a test that hangs fails within minutes and names its binary, instead of holding CI
# until its own limit. TEST_BINARY_TIMEOUT (seconds) overrides the limit.
limit="${TEST_BINARY_TIMEOUT:-900}"
timeout --kill-after=30 "$limit" "$@"
rc=$?
if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
  echo "test binary $(basename "$1") ran over ${limit}s and was stopped" >&2
fi
exit "$rc"
