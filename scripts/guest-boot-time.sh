#!/bin/sh
# Boots the tiny test guest(s) under TCG and prints the time from starting QEMU to the
# TINYGUEST-BOOTED marker on the serial console, and the guest's own uptime in that
# marker (without QEMU's start-up, less shaken by a busy host), per run and the medians,
# so that a change of the guest's recipe can be checked for its boot time.
#   scripts/guest-boot-time.sh RUNS GUESTDIR [GUESTDIR...]
# The guests are booted in turn (one run of each, then again), so that a busy machine
# weighs on all of them alike.
set -eu
RUNS=${1:?runs}; shift
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gbt.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
i=0
while [ $i -lt "$RUNS" ]; do
    for g in "$@"; do
        log="$WORK/serial"; : > "$log"
        start=$(date +%s%N)
        qemu-system-x86_64 -accel tcg -m 256 -machine pc -nodefaults -display none \
            -kernel "$g/vmlinuz" -initrd "$g/initrd.img" -append "console=ttyS0 panic=-1" \
            -serial "file:$log" -no-reboot &
        pid=$!
        while ! grep -q TINYGUEST-BOOTED "$log" 2>/dev/null; do
            sleep 0.02
            [ $(( ($(date +%s%N) - start) / 1000000 )) -gt 60000 ] && break
        done
        ms=$(( ($(date +%s%N) - start) / 1000000 ))
        kill "$pid"; wait "$pid" 2>/dev/null || true
        up=$(grep -o 'TINYGUEST-BOOTED uptime=[0-9.]*' "$log" | sed 's/.*=//')
        echo "$g $ms ${up:-0}" >> "$WORK/times"
        echo "recipe $(head -n1 "$g/manifest.txt" | sed 's/.*recipe=//') run $i: $ms ms, guest uptime ${up:-?} s"
    done
    i=$((i + 1))
done
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
for g in "$@"; do
    med=$(grep "^$g " "$WORK/times" | awk '{print $2}' | median)
    up=$(grep "^$g " "$WORK/times" | awk '{print $3}' | median)
    echo "recipe $(head -n1 "$g/manifest.txt" | sed 's/.*recipe=//'): median $med ms to the marker, guest uptime $up s ($g)"
done
