#!/usr/bin/env bash
# libvirt's side of the corpus benchmark: Debian 12's libvirtd 9.0 (in the sandbox of
# reference-libvirt.sh) turns every corpus document into QEMU's argv with
# `virsh domxml-to-native qemu-argv`, documents per second. The corpus is the one of
# virtqemud/tests/libvirt_corpus.rs: the documents named in libvirt_corpus.pass (the
# x86 documents libvirt's own suite accepts that define here), read from the unpacked
# libvirt 9.0 source that test keeps in ~/.cache/virt-rs/libvirt (or VIRT_LIBVIRT_SRC).
#
#   scripts/reference-libvirt-domxml-to-native.sh
#
# Two figures: one `virsh domxml-to-native` process per document (what a user types,
# process start and connection included), and the same call (virConnectDomainXMLToNative)
# over one connection from python3-libvirt, which is libvirtd's own work plus one RPC.
# Ours: cargo bench -p virtqemud --bench corpus.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=${VIRT_LIBVIRT_SRC:-$HOME/.cache/virt-rs/libvirt/libvirt-9.0.0}
pass=$here/../virtqemud/tests/libvirt_corpus.pass

if [[ "${REFERENCE_LIBVIRT_INNER:-}" != 1 ]]; then
  [[ -d $src/tests/qemuxml2argvdata ]] || {
    echo "no libvirt 9.0 source at $src: run cargo test -p virtqemud --test libvirt_corpus once" >&2
    exit 1
  }
  exec env REFERENCE_LIBVIRT_INNER=1 VIRT_LIBVIRT_SRC="$src" "$here/reference-libvirt.sh" --no-dbus -- "$0"
fi

# ---- inside the sandbox ----
list=$(mktemp)
# libvirtd 9.0 dies (SIGSEGV or SIGABRT) converting documents with an
# <interface type='hostdev'> (net-hostdev, net-hostdev-bootorder, net-virtio-teaming
# seen): the six such documents are left out of both figures.
# One line per document: the stage it reaches here (argv or define), its path.
while read -r kind n; do
  f=$src/tests/qemuxml2argvdata/$n.xml
  grep -q "<interface type=.hostdev" "$f" || echo "$kind $f"
done <"$pass" >"$list"
total=$(wc -l <"$list")

ok=0
start=$(date +%s.%N)
while read -r _ f; do
  virsh -q domxml-to-native qemu-argv "$f" >/dev/null 2>&1 && ok=$((ok + 1))
done <"$list"
end=$(date +%s.%N)
virsh -q uri >/dev/null || { echo "libvirtd died during the run" >&2; exit 1; }
awk -v n="$total" -v ok="$ok" -v s="$start" -v e="$end" 'BEGIN {
  printf "virsh domxml-to-native qemu-argv, one process per document: %d documents (%d converted, %d refused) in %.2f s = %.0f documents/s\n", n, ok, n - ok, e - s, n / (e - s) }'

/usr/bin/python3 - "$list" <<'EOF'
import sys, time, libvirt
libvirt.registerErrorHandler(lambda *a: None, None)
lines = [l.split(None, 1) for l in open(sys.argv[1]) if l.strip()]
docs = [(kind, open(f.strip()).read()) for kind, f in lines]
conn = libvirt.open("qemu:///system")

def run(what, subset):
    ok = 0
    t = time.perf_counter()
    for x in subset:
        try:
            conn.domainXMLToNative("qemu-argv", x, 0)
            ok += 1
        except libvirt.libvirtError:
            pass
    el = time.perf_counter() - t
    print(f"virConnectDomainXMLToNative over one connection (python3-libvirt), {what}: "
          f"{len(subset)} documents ({ok} converted, {len(subset) - ok} refused) in {el:.2f} s "
          f"= {len(subset) / el:.0f} documents/s")

run("all", [x for _, x in docs])
run("the ones ours turns into argv", [x for k, x in docs if k == "argv"])
EOF
rm -f "$list"
