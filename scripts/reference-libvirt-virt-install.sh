#!/usr/bin/env bash
# virt-install's XML as it really comes: runs Debian 12's `virt-install --print-xml`
# (virtinst 4.1) against Debian's libvirtd 9.0 in the sandbox of reference-libvirt.sh,
# across a covering matrix of os variants, machines, firmware, disks, NICs, graphics and
# TPM, and writes one document per case into virtqemud/tests/data/virt-install/.
#
#   scripts/reference-libvirt-virt-install.sh [OUTDIR]
#
# virtqemud/tests/virt_install.rs defines and starts every document written here.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$(realpath -m "${1:-$here/../virtqemud/tests/data/virt-install}")
mkdir -p "$out"

if [[ "${REFERENCE_LIBVIRT_INNER:-}" != 1 ]]; then
  exec env REFERENCE_LIBVIRT_INNER=1 "$here/reference-libvirt.sh" --no-dbus -- "$0" "$out"
fi

# ---- inside the sandbox ----
img=/var/lib/libvirt/images
mkdir -p "$img"
# Install media and an existing disk: virt-install checks that they exist. Sizes do not
# matter, --print-xml starts nothing (it does create the size= disks, on the tmpfs).
truncate -s 4M "$img/install.iso" "$img/virtio-win.iso"
qemu-img create -q -f qcow2 "$img/existing.qcow2" 1G
virsh -q pool-define-as default dir --target "$img" >/dev/null
virsh -q pool-start default >/dev/null
for v in data1.qcow2 data2.qcow2 win.qcow2 bsd.qcow2; do
  virsh -q vol-create-as default "$v" 1G --format qcow2 >/dev/null
done
virsh -q vol-create-as default raw1.img 1G --format raw >/dev/null
# The bridge a `bridge=br0` NIC names (virt-install does not check; made for realism).
ip link add br0 type bridge && ip link set br0 up

# Debian 12's osinfo-db (20221130) predates two of the matrix's variants: debian12 is
# still `debiantesting` there, and the newest Fedora is fedora37. rhel9 and freebsd13
# are spelled with their minor release.
declare -A OSV=(
  [generic]=generic [debian12]=debiantesting [ubuntu22.04]=ubuntu22.04 [fedora38]=fedora37
  [rhel9]=rhel9.0 [win10]=win10 [win11]=win11 [freebsd13]=freebsd13.1
)
UEFI=(--boot uefi,firmware.feature0.name=secure-boot,firmware.feature0.enabled=no)
UEFI_SB=(--boot uefi,firmware.feature0.name=secure-boot,firmware.feature0.enabled=yes,firmware.feature1.name=enrolled-keys,firmware.feature1.enabled=yes)

n=0
failed=0
# case NAME OSKEY ARGS...: one document. Cases with install media print the first
# (install) phase, which is what a first `virsh define` would see.
case_() {
  local name=$1 os=$2
  shift 2
  local step=()
  for a in "$@"; do [[ $a == --cdrom || $a == --location ]] && step=(1); done
  local args=(--print-xml "${step[@]}" --name "$name" --osinfo "${OSV[$os]}" --noautoconsole "$@")
  if ! virt-install "${args[@]}" >"$out/$name.xml.tmp" 2>"$out/$name.err"; then
    echo "virt-install failed for $name: $(cat "$out/$name.err")" >&2
    rm -f "$out/$name.xml.tmp" "$out/$name.err"
    failed=$((failed + 1))
    return 0
  fi
  rm -f "$out/$name.err"
  mv "$out/$name.xml.tmp" "$out/$name.xml"
  printf '%s\tvirt-install %s\n' "$name.xml" "${args[*]}" >>"$out/COMMANDS.tsv.tmp"
  n=$((n + 1))
}
: >"$out/COMMANDS.tsv.tmp"
rm -f "$out"/*.xml

file_disk() { echo "path=$img/$1.qcow2,size=1"; }

# generic: the plainest cases, every machine and firmware.
case_ generic-pc-bios-file-user-vnc generic --memory 512 --machine pc --disk "$(file_disk g1)" --import --network user --graphics vnc
case_ generic-q35-bios-file-user-vnc generic --memory 512 --machine q35 --disk "$(file_disk g2)" --import --network user --graphics vnc
case_ generic-pc-uefi-file-network-none generic --memory 512 --machine pc "${UEFI[@]}" --disk "$(file_disk g3)" --import --network network=default --graphics none
case_ generic-q35-uefi-sb-volume-bridge-spice generic --memory 1024 --machine q35 "${UEFI_SB[@]}" --disk vol=default/data1.qcow2 --import --network bridge=br0 --graphics spice
case_ generic-q35-cdrom-only-none generic --memory 512 --machine q35 --cdrom "$img/install.iso" --disk none --network none --graphics none
case_ generic-pc-volume-type-raw-vnc-tpm generic --memory 512 --machine pc --disk type=volume,source.pool=default,source.volume=raw1.img --import --network user --graphics vnc --tpm emulator

# Linux variants: cdrom installs, every NIC and graphics kind.
case_ debian12-q35-bios-cdrom-network-spice debian12 --memory 2048 --machine q35 --disk "$(file_disk d1)" --cdrom "$img/install.iso" --network network=default --graphics spice
case_ debian12-pc-bios-cdrom-bridge-vnc debian12 --memory 2048 --machine pc --disk "$(file_disk d2)" --cdrom "$img/install.iso" --network bridge=br0 --graphics vnc
case_ debian12-q35-uefi-import-user-none debian12 --memory 1024 --machine q35 "${UEFI[@]}" --disk "$img/existing.qcow2" --import --network user --graphics none
case_ debian12-q35-uefi-sb-volume-network-vnc-tpm debian12 --memory 1024 --machine q35 "${UEFI_SB[@]}" --disk vol=default/data2.qcow2 --import --network network=default --graphics vnc --tpm emulator
case_ ubuntu22.04-q35-bios-cdrom-network-spice ubuntu22.04 --memory 4096 --vcpus 2 --machine q35 --disk "$(file_disk u1)" --cdrom "$img/install.iso" --network network=default --graphics spice
case_ ubuntu22.04-pc-bios-file-user-vnc ubuntu22.04 --memory 2048 --machine pc --disk "$(file_disk u2)" --import --network user --graphics vnc
case_ ubuntu22.04-q35-uefi-cdrom-bridge-none ubuntu22.04 --memory 2048 --machine q35 "${UEFI[@]}" --disk "$(file_disk u3)" --cdrom "$img/install.iso" --network bridge=br0 --graphics none
case_ ubuntu22.04-q35-uefi-sb-file-network-spice-tpm ubuntu22.04 --memory 2048 --machine q35 "${UEFI_SB[@]}" --disk "$(file_disk u4)" --import --network network=default --graphics spice --tpm emulator
case_ fedora38-q35-bios-cdrom-network-spice fedora38 --memory 2048 --machine q35 --disk "$(file_disk f1)" --cdrom "$img/install.iso" --network network=default --graphics spice
case_ fedora38-q35-uefi-file-user-vnc fedora38 --memory 2048 --machine q35 "${UEFI[@]}" --disk "$(file_disk f2)" --import --network user --graphics vnc
case_ fedora38-q35-uefi-sb-cdrom-bridge-spice fedora38 --memory 2048 --machine q35 "${UEFI_SB[@]}" --disk "$(file_disk f3)" --cdrom "$img/install.iso" --network bridge=br0 --graphics spice
case_ fedora38-pc-bios-file-network-none fedora38 --memory 1024 --machine pc --disk "$(file_disk f4)" --import --network network=default --graphics none
case_ rhel9-q35-bios-cdrom-network-vnc rhel9 --memory 2048 --machine q35 --disk "$(file_disk r1)" --cdrom "$img/install.iso" --network network=default --graphics vnc
case_ rhel9-q35-uefi-file-bridge-spice rhel9 --memory 2048 --machine q35 "${UEFI[@]}" --disk "$(file_disk r2)" --import --network bridge=br0 --graphics spice
case_ rhel9-q35-uefi-sb-cdrom-user-none-tpm rhel9 --memory 2048 --machine q35 "${UEFI_SB[@]}" --disk "$(file_disk r3)" --cdrom "$img/install.iso" --network user --graphics none --tpm emulator
case_ rhel9-pc-bios-volume-network-vnc rhel9 --memory 2048 --machine pc --disk vol=default/data1.qcow2 --import --network network=default --graphics vnc

# Windows: SATA/e1000e/hyperv defaults, virtio-win as a second cdrom, TPM.
case_ win10-q35-bios-cdrom-network-spice win10 --memory 4096 --vcpus 2 --machine q35 --disk "$(file_disk w1)" --cdrom "$img/install.iso" --network network=default --graphics spice
case_ win10-pc-bios-cdrom-user-vnc win10 --memory 4096 --machine pc --disk "$(file_disk w2)" --cdrom "$img/install.iso" --network user --graphics vnc
case_ win10-q35-uefi-virtio-win-bridge-vnc win10 --memory 4096 --machine q35 "${UEFI[@]}" --disk "$(file_disk w3),bus=virtio" --cdrom "$img/install.iso" --disk "$img/virtio-win.iso,device=cdrom" --network bridge=br0,model=virtio --graphics vnc
case_ win10-q35-uefi-sb-volume-network-spice-tpm win10 --memory 4096 --machine q35 "${UEFI_SB[@]}" --disk vol=default/win.qcow2 --import --network network=default --graphics spice --tpm emulator
case_ win11-q35-default-cdrom-network-spice win11 --memory 4096 --vcpus 2 --machine q35 --disk "$(file_disk w4)" --cdrom "$img/install.iso" --network network=default --graphics spice
case_ win11-q35-uefi-sb-cdrom-bridge-vnc win11 --memory 4096 --machine q35 "${UEFI_SB[@]}" --disk "$(file_disk w5)" --cdrom "$img/install.iso" --network bridge=br0 --graphics vnc
case_ win11-q35-uefi-import-user-none win11 --memory 4096 --machine q35 "${UEFI[@]}" --disk "$img/existing.qcow2" --import --network user --graphics none
case_ win11-q35-volume-type-network-spice win11 --memory 4096 --machine q35 --disk type=volume,source.pool=default,source.volume=win.qcow2 --import --network network=default --graphics spice

# FreeBSD: its osinfo defaults (no virtio guest agent, e1000 or virtio).
case_ freebsd13-pc-bios-cdrom-network-vnc freebsd13 --memory 1024 --machine pc --disk "$(file_disk b1)" --cdrom "$img/install.iso" --network network=default --graphics vnc
case_ freebsd13-q35-bios-volume-bridge-none freebsd13 --memory 1024 --machine q35 --disk vol=default/bsd.qcow2 --import --network bridge=br0 --graphics none
case_ freebsd13-q35-uefi-file-user-spice freebsd13 --memory 1024 --machine q35 "${UEFI[@]}" --disk "$(file_disk b2)" --import --network user --graphics spice
case_ freebsd13-pc-bios-file-user-none-tpm freebsd13 --memory 1024 --machine pc --disk "$(file_disk b3)" --import --network user --graphics none --tpm emulator

# A few habits: several disks and NICs, no NIC at all, host-passthrough off, a serial
# console, and the default machine (q35 for modern variants).
case_ debian12-default-two-disks-two-nics debian12 --memory 1024 --disk "$(file_disk m1)" --disk "$(file_disk m2),bus=scsi" --controller type=scsi,model=virtio-scsi --import --network network=default --network user --graphics vnc
case_ generic-default-no-nic-serial generic --memory 512 --disk "$(file_disk m3)" --import --network none --graphics none --serial pty
case_ ubuntu22.04-default-cpu-model-sata-e1000 ubuntu22.04 --memory 1024 --cpu qemu64 --disk "$(file_disk m4),bus=sata" --import --network user,model=e1000 --graphics vnc
case_ fedora38-default-usb-disk-vga fedora38 --memory 1024 --disk "$(file_disk m5),bus=usb" --import --network user --graphics vnc --video vga --sound ich9

sort "$out/COMMANDS.tsv.tmp" >"$out/COMMANDS.tsv"
rm -f "$out/COMMANDS.tsv.tmp"
echo "reference-libvirt-virt-install: $n documents in $out, $failed cases failed" >&2
((failed == 0))
