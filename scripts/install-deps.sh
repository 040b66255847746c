#!/usr/bin/env bash
# Installs what building, running and testing need on Debian 12, only if it is missing.
# Idempotent and quiet when everything is there already.
set -euo pipefail

PACKAGES=(
  dbus                # dbus-daemon for the private test/demo bus, busctl
  systemd             # systemd-socket-activate, systemd-analyze
  qemu-system-x86     # the hypervisor
  qemu-utils          # qemu-img, qemu-nbd (the nbd server of the network-disk test)
  qemu-block-extra    # QEMU's curl (http/https/ftp), iscsi, rbd and gluster block drivers
  ovmf                # UEFI firmware and its descriptors, for firmware='efi'
  swtpm               # emulated TPMs
  nftables            # nft, for checking rules in tests
  dnsmasq-base        # DHCP/DNS of virtual networks
  iproute2            # ip netns for tests
  busybox-static      # udhcpc and ping inside test namespaces; the test guest's userland
  lvm2                # logical storage pools
  e2fsprogs           # mkfs.ext4 for fs pools
  util-linux          # losetup, mount, lsblk
  pciutils pci.ids    # lspci, PCI names
  usbutils            # usb.ids
  kmod                # modprobe for loop and vfio modules
  openssh-server openssh-client  # sshd and ssh for virtsh's qemu+ssh:// transport test
  bsdutils            # script(1): a pty for virtsh's terminal tests
  python3-dbus python3-gi python3-pytest  # libvirt-dbus's own test suite, run through virtproxyd
  # cockpit-machines in a browser through virtproxyd (virtproxyd/tests/cockpit.rs):
  # the web server and bridge, headless Chromium, and python3-websocket for the
  # DevTools-protocol driver. cockpit-machines itself is unpacked below.
  cockpit-ws cockpit-bridge chromium python3-websocket
  polkitd             # polkit: who may call the daemons on the system bus (docs/access.md)
  gcc libc6-dev pkg-config  # for crates that build C
  ca-certificates curl
)

need=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need+=("$p")
done

if [ ${#need[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { echo "install-deps: missing packages (${need[*]}); run as root" >&2; exit 1; }
  echo "install-deps: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Installed for tests, which start their own sshd in a namespace: the host's ssh
  # service is not started by the install (policy-rc.d says no while it runs).
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  apt-get update -q
  if ! apt-get install -y -q --no-install-recommends "${need[@]}"; then
    # A newer qemu-utils (from backports) conflicts with Debian 12's qemu-system-x86:
    # install the qemu packages at one version, the one qemu-system-x86 offers.
    v=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
    rest=()
    for p in "${need[@]}"; do case "$p" in qemu-*) ;; *) rest+=("$p") ;; esac; done
    apt-get install -y -q --no-install-recommends --allow-downgrades \
      "qemu-system-x86=$v" "qemu-system-common=$v" "qemu-utils=$v" "qemu-block-extra=$v" \
      "${rest[@]}"
  fi
fi

# Debian's cockpit-machines, unpacked (not installed) into /usr/local/share/cockpit, where
# cockpit-bridge finds packages too: installing it would pull libvirt-daemon-system and
# libvirt-dbus, i.e. libvirt's own libvirtd and a second owner of org.libvirt, which this
# project replaces (docs/cockpit.md). It is static HTML/JS, architecture "all".
if [ ! -e /usr/share/cockpit/machines/manifest.json ] &&
   [ ! -e /usr/local/share/cockpit/machines/manifest.json ]; then
  [ "$(id -u)" = 0 ] || { echo "install-deps: cockpit-machines missing; run as root" >&2; exit 1; }
  tmp=$(mktemp -d)
  chown _apt "$tmp" 2>/dev/null || true   # apt-get download runs as _apt where it can
  (cd "$tmp" && apt-get download -q cockpit-machines)
  dpkg-deb -x "$tmp"/cockpit-machines_*.deb "$tmp/x"
  mkdir -p /usr/local/share/cockpit
  cp -a "$tmp/x/usr/share/cockpit/machines" /usr/local/share/cockpit/
  rm -rf "$tmp"
fi

# The test guest is built from Debian packages fetched with `apt-get download`
# (scripts/build-test-guest.sh): that needs package lists even when nothing is missing.
if ! apt-cache show linux-image-cloud-amd64 >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || { echo "install-deps: no apt package lists; run as root" >&2; exit 1; }
  apt-get update -q
fi

# Rust: the workspace needs a toolchain newer than Debian 12's (1.63).
if ! command -v cargo >/dev/null 2>&1; then
  [ -x "$HOME/.cargo/bin/cargo" ] || curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c clippy,rustfmt
fi
export PATH="$HOME/.cargo/bin:$PATH"
# scripts/test.sh checks formatting and lints: a toolchain installed without them (e.g.
# rustup's minimal profile before they were asked for) gets them added.
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  command -v rustup >/dev/null 2>&1 || {
    echo "install-deps: cargo fmt or cargo clippy missing, and no rustup to add them" >&2
    exit 1
  }
  rustup component add rustfmt clippy
fi
