#!/usr/bin/env bash
# Host dumps: starts one domain per device family under TCG in Debian 12's libvirtd (the
# sandbox of reference-libvirt.sh) and saves `virsh dumpxml` of each while it runs, with
# everything libvirt adds to a live domain (aliases, PCI addresses, <seclabel>,
# <resource>, pty paths, ports), as virtqemud/tests/golden/libvirt-dumpxml-FAMILY.xml.
#
#   scripts/reference-libvirt-host-dumps.sh [OUTDIR]
#
# virtqemud/tests/golden.rs then checks that each defines unchanged and round-trips.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$(realpath -m "${1:-$here/../virtqemud/tests/golden}")

if [[ "${REFERENCE_LIBVIRT_INNER:-}" != 1 ]]; then
  exec env REFERENCE_LIBVIRT_INNER=1 "$here/reference-libvirt.sh" --no-dbus -- "$0" "$out"
fi

# ---- inside the sandbox ----
img=/var/lib/libvirt/images
mkdir -p "$img"
for d in vda sdb sdc; do qemu-img create -q -f qcow2 "$img/$d.qcow2" 64M; done
qemu-img create -q -f raw "$img/hda.raw" 16M
truncate -s 4M "$img/install.iso"
ip link add br0 type bridge && ip link set br0 up
# libvirt's default network, started: virbr0, dnsmasq and iptables rules, all in the
# sandbox's network namespace.
cat >/tmp/default-net.xml <<'EOF'
<network><name>default</name><forward mode='nat'/><bridge name='virbr0' stp='on' delay='0'/>
<ip address='192.168.122.1' netmask='255.255.255.0'><dhcp><range start='192.168.122.2' end='192.168.122.254'/></dhcp></ip></network>
EOF
virsh -q net-define /tmp/default-net.xml >/dev/null
virsh -q net-start default >/dev/null || echo "reference-libvirt-host-dumps: the default network did not start" >&2

head_() { # NAME MACHINE
  cat <<EOF
<domain type='qemu'>
  <name>$1</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='$2'>hvm</type><boot dev='hd'/></os>
  <features><acpi/><apic/></features>
  <clock offset='utc'/>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
EOF
}
tail_() { printf '  </devices>\n</domain>\n'; }

declare -A DOC
DOC[disks-controllers-q35]="$(head_ disks-q35 q35)
    <disk type='file' device='disk'><driver name='qemu' type='qcow2' discard='unmap'/><source file='$img/vda.qcow2'/><target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2' cache='none'/><source file='$img/sdb.qcow2'/><target dev='sdb' bus='scsi'/></disk>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='$img/sdc.qcow2'/><target dev='sdc' bus='sata'/><serial>data-1</serial></disk>
    <disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='$img/install.iso'/><target dev='sda' bus='sata'/><readonly/></disk>
    <controller type='scsi' model='virtio-scsi'/>
    <controller type='usb' model='qemu-xhci' ports='15'/>
    <controller type='virtio-serial'/>
$(tail_)"
DOC[disks-controllers-i440fx]="$(head_ disks-pc pc)
    <disk type='file' device='disk'><driver name='qemu' type='raw'/><source file='$img/hda.raw'/><target dev='hda' bus='ide'/></disk>
    <disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='$img/install.iso'/><target dev='hdc' bus='ide'/><readonly/></disk>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/><source file='$img/vda.qcow2'/><target dev='vda' bus='virtio'/></disk>
    <controller type='usb' model='ich9-ehci1'/>
    <controller type='usb' model='ich9-uhci1'><master startport='0'/></controller>
    <controller type='usb' model='ich9-uhci2'><master startport='2'/></controller>
    <controller type='usb' model='ich9-uhci3'><master startport='4'/></controller>
$(tail_)"
DOC[nics]="$(head_ nics q35)
    <interface type='network'><source network='default'/><model type='virtio'/></interface>
    <interface type='bridge'><source bridge='br0'/><model type='e1000e'/></interface>
    <interface type='user'><model type='rtl8139'/></interface>
    <interface type='ethernet'><target dev='tap-eth0' managed='yes'/><model type='virtio'/></interface>
$(tail_)"
DOC[chardevs-consoles]="$(head_ chardevs q35)
    <serial type='pty'><target port='0'/></serial>
    <serial type='file'><source path='/var/log/libvirt/qemu/chardevs-serial1.log'/><target port='1'/></serial>
    <console type='pty'><target type='virtio' port='0'/></console>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <channel type='pty'><target type='virtio' name='org.example.pty.0'/></channel>
$(tail_)"
DOC[graphics-video-input-sound]="$(head_ graphics q35)
    <graphics type='vnc' port='-1' autoport='yes' listen='127.0.0.1'><listen type='address' address='127.0.0.1'/></graphics>
    <graphics type='spice' autoport='yes'><listen type='address' address='127.0.0.1'/><image compression='off'/></graphics>
    <video><model type='qxl' ram='65536' vram='65536' vgamem='16384' heads='1' primary='yes'/></video>
    <video><model type='virtio' heads='1'/></video>
    <input type='tablet' bus='usb'/>
    <input type='keyboard' bus='virtio'/>
    <sound model='ich9'/>
    <channel type='spicevmc'><target type='virtio' name='com.redhat.spice.0'/></channel>
    <redirdev bus='usb' type='spicevmc'/>
$(tail_)"
DOC[extras-rng-watchdog-balloon-tpm]="$(head_ extras q35)
    <rng model='virtio'><rate bytes='1024' period='1000'/><backend model='random'>/dev/urandom</backend></rng>
    <watchdog model='i6300esb' action='reset'/>
    <memballoon model='virtio'><stats period='10'/></memballoon>
    <tpm model='tpm-crb'><backend type='emulator' version='2.0'/></tpm>
    <panic model='isa'/>
$(tail_)"

rc=0
for fam in "${!DOC[@]}"; do
  f=/tmp/$fam.xml
  printf '%s\n' "${DOC[$fam]}" >"$f"
  name=$(sed -n 's:.*<name>\(.*\)</name>.*:\1:p' "$f" | head -1)
  if virsh -q define "$f" >/dev/null && virsh -q start "$name" >/dev/null; then
    virsh dumpxml "$name" >"$out/libvirt-dumpxml-$fam.xml"
    virsh -q destroy "$name" >/dev/null
    echo "libvirt-dumpxml-$fam.xml" >&2
  else
    echo "reference-libvirt-host-dumps: $fam did not start" >&2
    tail -5 "/var/log/libvirt/qemu/$name.log" >&2 2>/dev/null || true
    rc=1
  fi
done
exit $rc
