#!/usr/bin/env bash
# Debian 12's real libvirt (libvirtd 9.0, QEMU driver, and libvirt-dbus on a private
# system-type bus) as a reference, in a sandbox that leaves the host untouched:
#
#   scripts/reference-libvirt.sh [--no-install] [--no-dbus] [--] COMMAND [ARGS...]
#
# COMMAND runs inside the sandbox with LIBVIRT_DEFAULT_URI=qemu:///system and
# DBUS_SYSTEM_BUS_ADDRESS pointing at the private bus where libvirt-dbus owns
# org.libvirt (also exported as REFERENCE_LIBVIRT_BUS). The bus socket lives in a host
# folder, so a client outside the sandbox can reach it while COMMAND runs: the
# benchmark runs `sh -c 'echo READY $REFERENCE_LIBVIRT_BUS; cat >/dev/null'`.
#
# The sandbox: `unshare -m -n -p -f` (own mount, network and PID namespaces). tmpfs over
# /etc/libvirt (a minimal libvirtd.conf and qemu.conf: no autostarted default network,
# no auth on the unix socket, no cgroups, no virtlogd), /run/libvirt, /var/lib/libvirt,
# /var/cache/libvirt and /var/log/libvirt. When COMMAND ends, every domain is destroyed,
# libvirt-dbus, libvirtd and the bus are stopped by PID, and the PID namespace's end
# kills whatever is left (QEMU daemonizes away from libvirtd). Afterwards the host is
# checked: no new interfaces, no nft tables, no process left in the sandbox's namespaces.
#
# The packages are installed here when missing (policy-rc.d keeps their services from
# starting); they are never dependencies of the project's daemons or install-deps.sh.
# --no-install fails instead (exit 4): the benchmark uses it, so that running every
# benchmark never installs libvirt.
set -euo pipefail

PACKAGES=(libvirt-daemon libvirt-daemon-driver-qemu libvirt-daemon-system libvirt-clients
  libvirt-dbus virtinst python3-libvirt qemu-system-x86 qemu-utils ovmf swtpm swtpm-tools dbus)

if [[ "${1:-}" == --inner ]]; then
  shift
  inner=1
else
  inner=0
fi

install=1
if [[ "${1:-}" == --no-install ]]; then
  install=0
  shift
fi
with_dbus=1
if [[ "${1:-}" == --no-dbus ]]; then
  with_dbus=0
  shift
fi
[[ "${1:-}" == -- ]] && shift
if [[ $# -eq 0 ]]; then
  sed -n '2,20p' "$0" >&2
  exit 2
fi

if [[ $inner == 0 ]]; then
  [[ $(id -u) == 0 ]] || { echo "reference-libvirt: needs root (namespaces, libvirtd)" >&2; exit 1; }
  missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if ((${#missing[@]})) && ((install == 0)); then
    echo "reference-libvirt: not installed: ${missing[*]} (run scripts/reference-libvirt.sh once to install them)" >&2
    exit 4
  fi
  if ((${#missing[@]})); then
    echo "reference-libvirt: installing ${missing[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}" >&2
  fi
  state=$(mktemp -d /tmp/reference-libvirt.XXXXXX)
  chmod 755 "$state"
  links_before=$(ip -o link | awk -F': ' '{print $2}' | sort)
  nft_before=$(nft list tables 2>/dev/null || true)
  rc=0
  # -p -f: the sandbox's PID 1 is this script; when it ends the kernel kills every
  # process left in the namespace, so nothing libvirt started can outlive it.
  REFERENCE_LIBVIRT_STATE=$state REFERENCE_LIBVIRT_DBUS=$with_dbus \
    unshare -m -n -p -f --propagation private --mount-proc \
    "$0" --inner -- "$@" || rc=$?
  nsids=$(cat "$state/ns" 2>/dev/null || true)
  # The host afterwards: the same interfaces, the same nft tables, no process in the
  # sandbox's namespaces.
  problems=()
  links_after=$(ip -o link | awk -F': ' '{print $2}' | sort)
  new_links=$(comm -13 <(echo "$links_before") <(echo "$links_after"))
  [[ -z "$new_links" ]] || problems+=("new host interfaces: $new_links")
  nft_after=$(nft list tables 2>/dev/null || true)
  [[ "$nft_before" == "$nft_after" ]] || problems+=("host nft tables changed: $nft_after")
  if [[ -n "$nsids" ]]; then
    for p in /proc/[0-9]*; do
      for kind in net pid; do
        id=$(readlink "$p/ns/$kind" 2>/dev/null || true)
        if [[ -n "$id" ]] && grep -qxF "$id" <<<"$nsids"; then
          problems+=("process ${p#/proc/} ($(cat "$p/comm" 2>/dev/null)) still in the sandbox's $kind namespace")
        fi
      done
    done
  fi
  rm -rf "$state"
  if ((${#problems[@]})); then
    printf 'reference-libvirt: HOST CHECK FAILED: %s\n' "${problems[@]}" >&2
    exit 3
  fi
  echo "reference-libvirt: host check ok (no new interfaces, nft tables unchanged, no process left)" >&2
  exit "$rc"
fi

# ---- inside the sandbox (PID 1 of its PID namespace) ----
state=$REFERENCE_LIBVIRT_STATE
readlink /proc/self/ns/net /proc/self/ns/pid >"$state/ns"
ip link set lo up
for d in /etc/libvirt /run/libvirt /var/lib/libvirt /var/cache/libvirt /var/log/libvirt; do
  mkdir -p "$d"
  mount -t tmpfs -o mode=0755 reference-libvirt "$d"
done
# Nothing from the host's /run either: no host system bus, no machined.
mkdir -p /run/dbus && mount -t tmpfs -o mode=0755 reference-libvirt /run/dbus
mkdir -p /etc/libvirt/qemu/networks/autostart /var/lib/libvirt/qemu/nvram /var/lib/libvirt/images \
  /var/log/libvirt/qemu
cat >/etc/libvirt/libvirtd.conf <<'EOF'
# reference-libvirt sandbox: only the unix socket, no auth, nothing else.
unix_sock_group = "root"
unix_sock_ro_perms = "0777"
unix_sock_rw_perms = "0770"
auth_unix_ro = "none"
auth_unix_rw = "none"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
EOF
cat >/etc/libvirt/qemu.conf <<'EOF'
# reference-libvirt sandbox: QEMU as root, no security driver, no cgroups, no mount
# namespace per domain, stdio to files instead of virtlogd.
user = "root"
group = "root"
dynamic_ownership = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "file"
EOF
: >/etc/libvirt/libvirt.conf

pids=()
cleanup() {
  set +e
  if [[ -S /run/libvirt/libvirt-sock ]]; then
    for d in $(virsh -q -c qemu:///system list --name 2>/dev/null); do
      virsh -q -c qemu:///system destroy "$d" >/dev/null 2>&1
    done
  fi
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill "${pids[i]}" 2>/dev/null && wait "${pids[i]}" 2>/dev/null
  done
  cp /var/log/libvirt/libvirtd.log "$state/libvirtd.log" 2>/dev/null
}
trap cleanup EXIT

bus_addr=
if [[ $REFERENCE_LIBVIRT_DBUS == 1 ]]; then
  # A private bus of system type: libvirt-dbus serves its system mode there. The
  # policy lets anyone own and call, like the project's own test buses.
  cat >"$state/bus.conf" <<EOF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path=$state/bus.sock</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_type="method_call"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
EOF
  dbus-daemon --config-file="$state/bus.conf" --nofork --nopidfile >"$state/bus.log" 2>&1 &
  pids+=($!)
  bus_addr="unix:path=$state/bus.sock"
  for _ in $(seq 100); do [[ -S $state/bus.sock ]] && break; sleep 0.05; done
  chmod 777 "$state/bus.sock"
fi
export DBUS_SYSTEM_BUS_ADDRESS=${bus_addr:-unix:path=/nonexistent}

/usr/sbin/libvirtd -f /etc/libvirt/libvirtd.conf >"$state/libvirtd.out" 2>&1 &
pids+=($!)
for _ in $(seq 200); do [[ -S /run/libvirt/libvirt-sock ]] && break; sleep 0.05; done
if ! virsh -q -c qemu:///system uri >/dev/null 2>&1; then
  echo "reference-libvirt: libvirtd did not come up:" >&2
  cat "$state/libvirtd.out" /var/log/libvirt/libvirtd.log >&2 2>/dev/null
  exit 1
fi

if [[ $REFERENCE_LIBVIRT_DBUS == 1 ]]; then
  /usr/sbin/libvirt-dbus --system >"$state/libvirt-dbus.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 200); do
    busctl --address="$bus_addr" status org.libvirt >/dev/null 2>&1 && break
    sleep 0.05
  done
  busctl --address="$bus_addr" status org.libvirt >/dev/null 2>&1 ||
    { echo "reference-libvirt: libvirt-dbus did not take org.libvirt" >&2; cat "$state/libvirt-dbus.log" >&2; exit 1; }
fi

export LIBVIRT_DEFAULT_URI=qemu:///system REFERENCE_LIBVIRT_BUS=$bus_addr
rc=0
"$@" || rc=$?
exit $rc
