"""Our fixtures for libvirt-dbus's own test suite (issue 13, item 2).

libvirt-dbus's tests/libvirttest.py starts libvirt-dbus on libvirt's test:///default for
every test; this plugin replaces that fixture: before each test it puts the objects of
test:///default back through the D-Bus API of org.libvirt (a running domain 'test', an
active network 'default', an active dir pool 'default-pool', the node devices of a
fixture sysfs tree with a vport-capable fc_host scsi_host2 as the test driver has,
nothing else) and hands the test the Connect object at /org/libvirt/QEMU. The domain
has a qcow2 disk, where the QEMU driver keeps internal snapshots. The suite's own
conftest.py (which starts a bus of its own) is not used; everything else of the suite
runs unchanged.
"""

import os
import subprocess
import time

import dbus
import pytest

os.environ.setdefault('TEST_INSTALLED', '1')
import libvirttest  # noqa: E402  (the suite's module, after the variable it reads)

CONNECT = '/org/libvirt/QEMU'
POOL_DIR = os.environ['VIRT_SUITE_POOL_DIR']
# The domain's disk: a qcow2 image, so that it can hold internal snapshots (libvirt's
# QEMU driver needs one; the test driver fakes them without disks).
DISK = os.environ['VIRT_SUITE_DISK']

DOMAIN_XML = """<domain type='qemu'>
  <name>test</name>
  <uuid>6695eb01-f6a4-8304-79aa-97f2502e193f</uuid>
  <memory unit='MiB'>64</memory>
  <currentMemory unit='MiB'>64</currentMemory>
  <vcpu placement='static'>2</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type><boot dev='hd'/></os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='%s'/>
      <target dev='vda' bus='virtio'/>
    </disk>
  </devices>
</domain>""" % DISK

NETWORK_XML = """<network>
  <name>default</name>
  <uuid>dd8fe884-6c02-601e-7551-cca97df1c5df</uuid>
  <forward mode='nat'/>
  <bridge name='virbr0' stp='on' delay='0'/>
  <ip address='192.168.122.1' netmask='255.255.255.0'>
    <dhcp><range start='192.168.122.2' end='192.168.122.254'/></dhcp>
  </ip>
</network>"""

POOL_XML = """<pool type='dir'>
  <name>default-pool</name>
  <uuid>dfe224cb-28fb-8dd0-c4b2-64eb3f0f4566</uuid>
  <target><path>%s</path></target>
</pool>""" % POOL_DIR


def _iface(bus, path, name):
    return dbus.Interface(bus.get_object('org.libvirt', path), name)


def _prop(bus, path, iface, name):
    return _iface(bus, path, 'org.freedesktop.DBus.Properties').Get(iface, name)


def _clear(bus, lister, iface, stop, remove):
    for path in lister(0):
        obj = _iface(bus, path, iface)
        # Read both first: a transient object is gone once stopped.
        active = _prop(bus, path, iface, 'Active')
        persistent = _prop(bus, path, iface, 'Persistent')
        if active:
            stop(obj)
        if persistent:
            remove(obj)


def reset(bus):
    """test:///default's objects, and only those, through org.libvirt."""
    c = _iface(bus, CONNECT, 'org.libvirt.Connect')
    # Undefine with its snapshots' metadata (2); the image is made afresh below.
    _clear(bus, c.ListDomains, 'org.libvirt.Domain',
           lambda d: d.Destroy(0), lambda d: d.Undefine(2))
    _clear(bus, c.ListNetworks, 'org.libvirt.Network',
           lambda n: n.Destroy(), lambda n: n.Undefine())

    def drop_pool(p):
        for vol in p.ListStorageVolumes(0):
            _iface(bus, vol, 'org.libvirt.StorageVol').Delete(0)
    for path in c.ListStoragePools(0):
        pool = _iface(bus, path, 'org.libvirt.StoragePool')
        active = _prop(bus, path, 'org.libvirt.StoragePool', 'Active')
        persistent = _prop(bus, path, 'org.libvirt.StoragePool', 'Persistent')
        if active:
            drop_pool(pool)
            pool.Destroy()
        if persistent:
            pool.Undefine()

    # The vports tests made on scsi_host2 (test:///default has none): Destroy hands the
    # request to the kernel, the device goes a moment later.
    made = [p for p in c.ListNodeDevices(0)
            if _prop(bus, p, 'org.libvirt.NodeDevice', 'Parent') == 'scsi_host2']
    for path in made:
        _iface(bus, path, 'org.libvirt.NodeDevice').Destroy()
    deadline = time.monotonic() + 10
    while made and time.monotonic() < deadline:
        time.sleep(0.02)
        made = [p for p in made if p in c.ListNodeDevices(0)]
    assert not made, 'vports still there after Destroy: %s' % made

    subprocess.run(['qemu-img', 'create', '-q', '-f', 'qcow2', DISK, '16M'], check=True)
    dom = c.DomainDefineXML(DOMAIN_XML)
    _iface(bus, dom, 'org.libvirt.Domain').Create(0)
    net = c.NetworkDefineXML(NETWORK_XML)
    _iface(bus, net, 'org.libvirt.Network').Create()
    # A test deletes the pool's folder.
    os.makedirs(POOL_DIR, exist_ok=True)
    pool = c.StoragePoolDefineXML(POOL_XML, 0)
    _iface(bus, pool, 'org.libvirt.StoragePool').Create(0)


@pytest.fixture(autouse=True)
def libvirt_dbus_setup(self, request):
    self.bus = dbus.SessionBus()
    reset(self.bus)
    self.connect = _iface(self.bus, CONNECT, 'org.libvirt.Connect')


@pytest.fixture(autouse=True)
def libvirt_dbus_teardown(self):
    yield


# Collected from the class, so replaced before collection starts.
libvirttest.BaseTestClass.libvirt_dbus_setup = libvirt_dbus_setup
libvirttest.BaseTestClass.libvirt_dbus_teardown = libvirt_dbus_teardown
