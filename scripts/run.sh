#!/usr/bin/env bash
# Builds the daemons in release mode and runs all four, and virtproxyd (the org.libvirt
# front for libvirt-dbus clients) before them, on a private session bus; then defines and
# boots the tiny test guest through virtqemud's D-Bus API and shows it through org.libvirt.
# Everything runs as session-mode daemons under one folder; Ctrl-C stops it all.
#   RUN_DIR=/path   where the bus, configs, logs and sockets go (default: /tmp/virt-rs-demo)
#   DEMO_ONCE=1     stop after showing the guest instead of waiting for Ctrl-C
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --bins --locked
[ -x scripts/build-test-guest.sh ] && scripts/build-test-guest.sh
GUEST_DIR="${VIRT_TEST_GUEST_DIR:-$HOME/.cache/virt-rs/guest}"

RUN_DIR="${RUN_DIR:-/tmp/virt-rs-demo}"
BIN="$PWD/target/release"
rm -rf "$RUN_DIR"
mkdir -p "$RUN_DIR"/{etc,lib,run}
PIDS=()
cleanup() {
  # Stop only what this script started, by PID; the daemons leave guests running,
  # so destroy the demo guest first.
  if [ -n "${DOMAIN_PATH:-}" ]; then
    busctl --address="$BUS" call org.libvirt.virtqemud "$DOMAIN_PATH" org.libvirt.Domain Destroy u 0 >/dev/null 2>&1 || true
  fi
  for ((i=${#PIDS[@]}-1; i>=0; i--)); do kill "${PIDS[$i]}" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 0' INT TERM

dbus-daemon --session --nofork --print-address=1 --address="unix:path=$RUN_DIR/bus" >"$RUN_DIR/bus.address" 2>"$RUN_DIR/bus.log" &
PIDS+=($!)
for _ in $(seq 100); do [ -s "$RUN_DIR/bus.address" ] && break; sleep 0.05; done
BUS="unix:path=$RUN_DIR/bus"
export DBUS_SESSION_BUS_ADDRESS="$BUS"

for d in virtqemud virtnetworkd virtstoraged virtnodedevd virtproxyd; do
  "$BIN/$d" --session --config-dir "$RUN_DIR/etc" --state-dir "$RUN_DIR/lib" \
    --runtime-dir "$RUN_DIR/run" 2>"$RUN_DIR/$d.log" &
  PIDS+=($!)
done
for d in virtqemud virtnetworkd virtstoraged virtnodedevd virtproxyd; do
  for _ in $(seq 200); do
    busctl --address="$BUS" status "org.libvirt.$d" >/dev/null 2>&1 && break
    sleep 0.05
  done
  printf '%-13s pid %-7s %s\n' "$d" "$(cat "$RUN_DIR/run/$d.pid")" \
    "$(busctl --address="$BUS" get-property "org.libvirt.$d" /org/libvirt/QEMU org.libvirt.Connect Hostname LibVersion | tr '\n' ' ')"
done

echo
echo "== virtqemud's API (busctl introspect org.libvirt.virtqemud /org/libvirt/QEMU):"
busctl --address="$BUS" introspect org.libvirt.virtqemud /org/libvirt/QEMU | head -40

if busctl --address="$BUS" introspect org.libvirt.virtqemud /org/libvirt/QEMU | grep -q DomainDefineXML; then
  SERIAL="$RUN_DIR/demo-serial.log"
  XML="<domain type='qemu'>
  <name>demo</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$GUEST_DIR/vmlinuz</kernel><initrd>$GUEST_DIR/initrd.img</initrd>
    <cmdline>console=ttyS0 panic=-1</cmdline></os>
  <devices>
    <serial type='file'><source path='$SERIAL'/><target port='0'/></serial>
  </devices>
</domain>"
  echo
  echo "== DomainDefineXML + Create of the tiny test guest"
  DOMAIN_PATH=$(busctl --address="$BUS" call org.libvirt.virtqemud /org/libvirt/QEMU org.libvirt.Connect DomainDefineXML s "$XML" | awk '{print $2}' | tr -d '"')
  echo "defined $DOMAIN_PATH"
  busctl --address="$BUS" call org.libvirt.virtqemud "$DOMAIN_PATH" org.libvirt.Domain Create u 0
  for _ in $(seq 600); do grep -q TINYGUEST-BOOTED "$SERIAL" 2>/dev/null && break; sleep 0.1; done
  echo "GetState: $(busctl --address="$BUS" call org.libvirt.virtqemud "$DOMAIN_PATH" org.libvirt.Domain GetState u 0)"
  echo "serial console says: $(grep -a TINYGUEST-BOOTED "$SERIAL" || echo '(no boot marker yet)')"
  echo
  echo "== The same guest through org.libvirt, as libvirt-dbus clients see it (busctl tree org.libvirt):"
  busctl --address="$BUS" --list tree org.libvirt | grep -E '^/org/libvirt/QEMU(/domain|$)'
else
  echo "(this build of virtqemud does not serve domains yet)"
fi

echo
echo "Daemons are on the private bus: export DBUS_SESSION_BUS_ADDRESS=$BUS"
echo "  busctl --user tree org.libvirt             # the whole tree, as libvirt-dbus clients see it"
echo "  busctl --user tree org.libvirt.virtqemud   # or busctl --address=unix:path=$RUN_DIR/run/virtqemud-sock ..."
[ -n "${DEMO_ONCE:-}" ] && exit 0
echo "Ctrl-C stops everything."
while true; do sleep 3600; done
