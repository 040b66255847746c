#!/bin/sh
# Builds the tiny test guest (Debian cloud kernel + busybox initramfs) into OUTDIR:
#   OUTDIR/vmlinuz, OUTDIR/initrd.img, OUTDIR/manifest.txt
# Recipe: shared/design/test-guest.md. Needs apt lists (apt-get update once), dpkg-deb,
# gzip; downloads .debs with `apt-get download` only (nothing is installed).
# Env: WITH_QGA=0 to leave out qemu-guest-agent; FORCE=1 to rebuild.
set -eu

OUT=${1:-${VIRT_TEST_GUEST_DIR:-$HOME/.cache/virt-rs/guest}}
WITH_QGA=${WITH_QGA:-1}
DEBS="$OUT/debs"
mkdir -p "$OUT" "$DEBS"
# Test processes of several sessions may call this at once: one builds, the others
# wait and then find the guest up to date.
exec 9>"$OUT/.build.lock"
flock 9

# The kernel ABI in the package name changes with security updates: resolve it now.
KPKG=$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
    awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
[ -n "$KPKG" ] || { echo "cannot resolve linux-image-cloud-amd64 (run apt-get update)" >&2; exit 1; }
KVER=${KPKG#linux-image-}
STAMP="kernel=$KPKG qga=$WITH_QGA recipe=5"

if [ "${FORCE:-0}" != 1 ] && [ -s "$OUT/vmlinuz" ] && [ -s "$OUT/initrd.img" ] &&
    [ "$(head -n1 "$OUT/manifest.txt" 2>/dev/null)" = "$STAMP" ]; then
    echo "test guest up to date in $OUT"
    exit 0
fi

PKGS="$KPKG busybox-static"
[ "$WITH_QGA" = 1 ] && PKGS="$PKGS qemu-guest-agent libc6 libglib2.0-0 libpcre2-8-0 libnuma1 libudev1 liburing2"
for p in $PKGS; do
    if ! ls "$DEBS/${p}_"*.deb >/dev/null 2>&1; then
        (cd "$DEBS" && apt-get download "$p" 2>&1 | grep -v unsandboxed) || true
        ls "$DEBS/${p}_"*.deb >/dev/null 2>&1 || { echo "cannot download $p" >&2; exit 1; }
    fi
done

WORK=$(mktemp -d "${TMPDIR:-/tmp}/tgbuild.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
X="$WORK/x"; R="$WORK/root"
mkdir -p "$X" "$R"
for p in $PKGS; do dpkg-deb -x "$(ls "$DEBS/${p}_"*.deb | head -n1)" "$X"; done

BB="$X/bin/busybox"
mkdir -p "$R/bin" "$R/sbin" "$R/etc/init.d" "$R/etc/acpi/PWRF" "$R/proc" "$R/sys" "$R/dev" \
    "$R/run" "$R/tmp" "$R/var/log" "$R/var/run" "$R/usr/bin" "$R/usr/sbin" "$R/lib/modules/$KVER"
cp "$BB" "$R/bin/busybox"
for a in $("$BB" --list); do
    [ -e "$R/bin/$a" ] || ln -s busybox "$R/bin/$a"
done
ln -s /bin/busybox "$R/init"
# qemu-ga's guest-set-time runs /sbin/hwclock (and refuses without it).
ln -s /bin/busybox "$R/sbin/hwclock"

# Kernel and the modules the guest needs (none of them is built in).
cp "$X/boot/vmlinuz-$KVER" "$OUT/vmlinuz.new"
for m in virtio virtio_ring virtio_pci virtio_pci_modern_dev virtio_pci_legacy_dev virtio_net \
    net_failover failover virtio_console virtio-rng button evdev \
    virtio_blk scsi_common scsi_mod virtio_scsi sd_mod; do
    f=$(find "$X/lib/modules/$KVER" -name "$m.ko*" | head -n1)
    [ -n "$f" ] || continue
    d="$R/lib/modules/$KVER/${f#"$X/lib/modules/$KVER/"}"
    mkdir -p "$(dirname "$d")"
    cp "$f" "$d"
done
cp "$X/lib/modules/$KVER/modules.builtin"* "$R/lib/modules/$KVER/" 2>/dev/null || true
"$BB" depmod -b "$R" "$KVER"

if [ "$WITH_QGA" = 1 ]; then
    cp "$X/usr/sbin/qemu-ga" "$R/usr/sbin/qemu-ga"
    mkdir -p "$R/lib/x86_64-linux-gnu" "$R/lib64"
    cp -a "$X/lib/x86_64-linux-gnu/"*.so* "$R/lib/x86_64-linux-gnu/" 2>/dev/null || true
    cp -a "$X/usr/lib/x86_64-linux-gnu/"*.so* "$R/lib/x86_64-linux-gnu/" 2>/dev/null || true
    cp -L "$X/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" "$R/lib64/" 2>/dev/null ||
        cp -L "$X/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" "$R/lib64/"
fi

cat > "$R/etc/inittab" <<'EOF'
::sysinit:/etc/init.d/rcS
::respawn:-/bin/cttyhack /bin/sh
::shutdown:/etc/init.d/rcK
EOF
cat > "$R/etc/os-release" <<'EOF'
ID=tinyguest
NAME="tiny guest"
VERSION_ID=1
EOF
cat > "$R/etc/init.d/rcS" <<'EOF'
#!/bin/sh
mount -t proc proc /proc; mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null; mkdir -p /dev/pts; mount -t devpts devpts /dev/pts
mount -t tmpfs run /run
for a in $(cat /proc/cmdline); do
  case "$a" in tg.hostname=*) hostname "${a#tg.hostname=}";; tg.debug) set -x;; esac
done
modprobe -a virtio_pci virtio_net virtio_console virtio-rng button evdev 2>/dev/null
ip link set lo up
if [ -e /sys/class/net/eth0 ]; then
  ip link set eth0 up
  udhcpc -f -i eth0 -s /etc/udhcpc.hook -t 5 -T 1 -A 1 -p /run/udhcpc.pid >/dev/null 2>&1 &
fi
# busybox acpid dies without its log folder.
mkdir -p /var/log /var/run
grep -q tg.noacpi /proc/cmdline || acpid -l /var/log/acpid.log
mkdir -p /dev/virtio-ports
for p in /sys/class/virtio-ports/vport*; do
  [ -e "$p/name" ] && ln -sf "/dev/$(basename "$p")" "/dev/virtio-ports/$(cat "$p/name")"
done
if [ -x /usr/sbin/qemu-ga ] && [ -e /dev/virtio-ports/org.qemu.guest_agent.0 ]; then
  mkdir -p /run/qga
  qemu-ga -d -m virtio-serial -p /dev/virtio-ports/org.qemu.guest_agent.0 -f /run/qemu-ga.pid -t /run/qga
fi
echo "TINYGUEST-BOOTED uptime=$(cut -d' ' -f1 /proc/uptime)"
# Disks and NICs come and go by hotplug: their modules load after the marker (they
# cost boot time no other test needs), then a watcher reports every block device and
# network interface that appears or goes as a line on the console.
(modprobe -a virtio_blk virtio_scsi sd_mod 2>/dev/null; exec /etc/devwatch) &
EOF
cat > "$R/etc/devwatch" <<'EOF'
#!/bin/sh
# Polls with shell builtins (one sleep a round): the guest has no udev and this kernel
# no uevent helper.
list() { for d in /sys/block/* /sys/class/net/*; do [ -e "$d" ] && echo "${d#/sys/}"; done; }
old=$(list)
echo "TINYGUEST-DEVWATCH $(echo $old)" > /dev/console
while sleep 0.3; do
  new=$(list)
  [ "$new" = "$old" ] && continue
  for d in $new; do case " $(echo $old) " in *" $d "*) ;; *)
    echo "TINYGUEST-DEV add $d" > /dev/console
    # A NIC plugged in later asks for an address as eth0 does at boot.
    case "$d" in class/net/eth*) i=${d#class/net/}; ip link set "$i" up
      udhcpc -f -i "$i" -s /etc/udhcpc.hook -t 5 -T 1 -A 1 >/dev/null 2>&1 &;; esac;;
  esac; done
  for d in $old; do case " $(echo $new) " in *" $d "*) ;; *) echo "TINYGUEST-DEV remove $d" > /dev/console;; esac; done
  old=$new
done
EOF
cat > "$R/etc/init.d/rcK" <<'EOF'
#!/bin/sh
for a in $(cat /proc/cmdline); do
  case "$a" in tg.poweroff_delay=*) sleep "${a#tg.poweroff_delay=}";; esac
done
[ -f /run/qemu-ga.pid ] && kill "$(cat /run/qemu-ga.pid)" 2>/dev/null
if [ -f /run/udhcpc.pid ]; then
  kill -USR2 "$(cat /run/udhcpc.pid)" 2>/dev/null
  i=0; while [ $i -lt 5 ] && [ ! -e /run/udhcpc.released ]; do sleep 0.1; i=$((i+1)); done
fi
sync
echo "TINYGUEST-POWEROFF"
EOF
cat > "$R/etc/udhcpc.hook" <<'EOF'
#!/bin/sh
case "$1" in
  deconfig) ip addr flush dev "$interface"; touch /run/udhcpc.released;;
  bound|renew) ip addr add "$ip/${mask:-24}" dev "$interface" 2>/dev/null
    [ -n "${router:-}" ] && ip route add default via "${router%% *}" 2>/dev/null
    echo "TINYGUEST-DHCP bound $ip" > /dev/console;;
esac
EOF
cat > "$R/etc/acpi/PWRF/00000080" <<'EOF'
#!/bin/sh
grep -q tg.noacpi /proc/cmdline && exit 0
echo "TINYGUEST-ACPI power button" > /dev/console
/etc/init.d/rcK > /dev/console 2>&1
poweroff -f
EOF
cat > "$R/sbin/shutdown" <<'EOF'
#!/bin/sh
/etc/init.d/rcK > /dev/console 2>&1
case "$*" in *-r*) reboot -f;; *-H*) halt -f;; *) poweroff -f;; esac
EOF
chmod 755 "$R/etc/init.d/rcS" "$R/etc/init.d/rcK" "$R/etc/devwatch" "$R/etc/udhcpc.hook" \
    "$R/etc/acpi/PWRF/00000080" "$R/sbin/shutdown"

(cd "$R" && find . | "$BB" cpio -o -H newc -R 0:0 2>/dev/null) | gzip -9 > "$OUT/initrd.img.new"
mv "$OUT/vmlinuz.new" "$OUT/vmlinuz"
mv "$OUT/initrd.img.new" "$OUT/initrd.img"
{
    echo "$STAMP"
    for p in $PKGS; do basename "$(ls "$DEBS/${p}_"*.deb | head -n1)"; done
} > "$OUT/manifest.txt"
echo "test guest built in $OUT ($KVER)"
