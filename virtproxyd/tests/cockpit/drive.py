#!/usr/bin/python3
"""Drives cockpit-machines in a headless Chromium over the DevTools protocol.

Run by virtproxyd/tests/cockpit.rs inside the test's network namespace, where Chromium
and cockpit-ws listen on loopback. Only Debian packages: python3 and python3-websocket.

    drive.py DEVTOOLS_PORT_FILE COCKPIT_URL SCREENSHOT_DIR VM OTHER_VM MAC DISK_PATH

VM is started, checked, forced off and deleted; OTHER_VM must stay listed, shut off.
Every step prints one line; the first failure exits 1 after a screenshot of the page.
"""

import base64
import json
import os
import sys
import time
import urllib.request

import websocket

TIMEOUT = 60.0


class Fail(Exception):
    pass


class Page:
    def __init__(self, port):
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list"))
        page = next(t for t in targets if t["type"] == "page")
        self.ws = websocket.create_connection(
            page["webSocketDebuggerUrl"], suppress_origin=True, timeout=TIMEOUT
        )
        self.next_id = 0
        self.console = []
        self.call("Runtime.enable")
        self.call("Page.enable")

    def call(self, method, **params):
        self.next_id += 1
        me = self.next_id
        self.ws.send(json.dumps({"id": me, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("method") == "Runtime.consoleAPICalled":
                args = msg["params"]["args"]
                self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in args))
            if msg.get("id") == me:
                if "error" in msg:
                    raise Fail(f"{method}: {msg['error']}")
                return msg["result"]

    def js(self, expr):
        r = self.call("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise Fail(f"{expr}: {r['exceptionDetails'].get('exception', {}).get('description')}")
        return r["result"].get("value")

    def wait(self, what, expr, timeout=TIMEOUT):
        """Polls `expr` until it is truthy; returns its value."""
        end = time.monotonic() + timeout
        while True:
            v = self.js(expr)
            if v:
                return v
            if time.monotonic() > end:
                raise Fail(f"timed out waiting for {what} ({expr})")
            time.sleep(0.25)

    def text(self, sel):
        return self.js(f"(e => e ? e.innerText.trim() : null)(document.querySelector({json.dumps(sel)}))")

    def click(self, sel, what):
        self.wait(what, f"(e => !!e && !e.disabled && !e.getAttribute('aria-disabled')?.startsWith('t'))"
                        f"(document.querySelector({json.dumps(sel)}))")
        self.js(f"document.querySelector({json.dumps(sel)}).click()")

    def screenshot(self, path):
        # The whole page, not only the window: the overview's disks and NICs are below,
        # in cockpit's own scrolling element, so the window is made as tall as it.
        height = self.js("Math.max(...[...document.querySelectorAll('body *')].map(e => e.scrollHeight))")
        self.call("Emulation.setDeviceMetricsOverride", width=1400, height=min(int(height), 6000),
                  deviceScaleFactor=1, mobile=False)
        time.sleep(0.3)  # a layout pass at the new size
        data = self.call("Page.captureScreenshot", format="png")["data"]
        self.call("Emulation.clearDeviceMetricsOverride")
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))
        print(f"screenshot {path}", flush=True)


def step(msg):
    print(f"ok: {msg}", flush=True)


def state_of(page, vm):
    return page.text(f"#vm-{vm}-system-state")


def wait_state(page, vm, want):
    page.wait(f"{vm} {want}", f"(e => e && e.innerText.trim() === {json.dumps(want)})"
                              f"(document.querySelector('#vm-{vm}-system-state'))")


def kebab(page, vm, item):
    page.click(f"#vm-{vm}-system-action-kebab button", f"{vm}'s action menu")
    sel = f"#vm-{vm}-system-{item}"
    page.wait(f"menu item {item}", f"!!document.querySelector({json.dumps(sel)})")
    # The id is on the menu item's <li> or its button, depending on the PatternFly part.
    page.js(f"(e => (e.querySelector('button,a') || e).click())(document.querySelector({json.dumps(sel)}))")


def wait_http(url):
    """Polls until cockpit-ws serves `url` (it may still be starting)."""
    end = time.monotonic() + TIMEOUT
    while True:
        try:
            with urllib.request.urlopen(url) as r:
                return r.read()
        except OSError as e:
            if time.monotonic() > end:
                raise Fail(f"cockpit-ws does not serve {url}: {e}")
            time.sleep(0.2)


def expected_banner(page, title, member, why):
    """Waits for cockpit-machines' error banner `title`, checks that its detail ("show
    more") names only `member` failing, says so, and closes it."""
    alert = ("[...document.querySelectorAll('.pf-c-alert')]"
             f".find(a => a.innerText.includes({json.dumps(title)}))")
    page.wait(f"the {title!r} banner", f"!!{alert}", timeout=20)
    page.js(f"(b => b && b.click())([...{alert}.querySelectorAll('button')]"
            ".find(b => b.innerText.includes('show more')))")
    detail = page.wait(f"the {title!r} banner's detail",
                       f"(a => a.innerText.includes('show more') ? '' : a.innerText)({alert})", timeout=5)
    reasons = [line.strip() for line in detail.splitlines()[2:] if line.strip()]
    if not reasons or any(member not in r for r in reasons):
        raise Fail(f"the {title!r} banner names other failures than {member}: {reasons!r}")
    step(f"banner {title!r} present, as expected: {why}; its detail: {' | '.join(reasons)!r}")
    page.js(f"(b => b && b.click())([...{alert}.querySelectorAll('button')]"
            ".find(b => (b.getAttribute('aria-label') || '').startsWith('Close')))")


def absent_banner(page, title, seconds=3):
    """Fails if cockpit-machines shows the error banner `title` within `seconds`."""
    alert = ("[...document.querySelectorAll('.pf-c-alert')]"
             f".find(a => a.innerText.includes({json.dumps(title)}))")
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if page.js(f"!!{alert}"):
            raise Fail(f"the {title!r} banner appeared")
        time.sleep(0.2)
    step(f"no {title!r} banner within {seconds} s")


def run(page, url, shots, vm, other, mac, disk):
    # The package must be found by cockpit-bridge before the page can be opened.
    wait_http(url.rsplit("/", 1)[0] + "/manifest.json")
    step("cockpit-ws serves cockpit-machines")
    page.call("Page.navigate", url=url)
    page.wait("the machines page", "document.readyState === 'complete' && !!document.querySelector('#app, main, body')")

    # cockpit's virt-host-validate check fails here (no such tool / no VT-x in the VM
    # running the tests): an empty state with an Ignore button replaces the list.
    seen = page.wait("the VM list or the virtualization notice",
                     "document.querySelector('#ignore-hw-virtualization-disabled-btn') ? 'notice' : "
                     "(document.querySelector('#virtual-machines-listing') ? 'list' : '')")
    if seen == "notice":
        page.click("#ignore-hw-virtualization-disabled-btn", "Ignore")
        step("dismissed cockpit's 'Hardware virtualization is disabled' notice")

    for name in (vm, other):
        page.wait(f"{name} listed", f"!!document.querySelector('tr[data-row-id=\"vm-{name}-system\"]')")
        wait_state(page, name, "Shut off")
        step(f"{name} listed, state {state_of(page, name)!r}")

    # One network and one pool, both active (the test made them so): cockpit-machines
    # reads `Active` from GetAll, which libvirt-dbus double-wraps.
    for card in ("networks", "storage-pools"):
        sel = f"#card-pf-{card} .active-resources"
        counts = page.wait(f"the {card} card counting 1 active, 0 inactive",
                           f"(c => c.join() === '1,0' && c)([...document.querySelectorAll({json.dumps(sel)})]"
                           ".map(e => e.innerText.trim()))")
        step(f"{card}: {counts[0]} active, {counts[1]} inactive")

    # Host interfaces (org.libvirt.Interface) are served: cockpit-machines lists them
    # (ListInterfaces, then each one's GetAll) without a "failed to fetch" banner.
    absent_banner(page, "Failed to fetch some resources")

    page.click(f"#vm-{vm}-system-run", f"{vm}'s Run button")
    wait_state(page, vm, "Running")
    step(f"{vm} started, state {state_of(page, vm)!r}")

    page.click(f"#vm-{vm}-system-name", f"{vm}'s name link")
    page.wait("the overview", f"!!document.querySelector('#vm-{vm}-system-vcpus-count, #vm-{vm}-vcpus-count')")
    # The overview's fields, each checked against the domain's XML.
    want = {
        f"#vm-{vm}-vcpus-count": lambda t: t.splitlines()[0] == "2",
        f"#vm-{vm}-memory-count": lambda t: t.splitlines()[0] in ("96 MiB", "96.0 MiB"),
        f"#vm-{vm}-disks-vda-source-file": lambda t: t == disk,
        f"#vm-{vm}-disks-vda-bus": lambda t: t == "virtio",
        f"#vm-{vm}-network-1-type": lambda t: t == "user",
        f"#vm-{vm}-network-1-model": lambda t: t == "virtio",
        f"#vm-{vm}-network-1-mac": lambda t: t.lower() == mac.lower(),
    }
    for sel, good in want.items():
        page.wait(sel, f"!!document.querySelector({json.dumps(sel)})")
        t = page.text(sel)
        if not good(t):
            raise Fail(f"{sel} shows {t!r}")
        step(f"overview {sel[len(vm) + 5:]}: {t.splitlines()[0]!r}")
    # InterfaceAddresses is served: the running guest's NIC gets no error banner (its
    # user-mode NIC has no lease, so no address either).
    absent_banner(page, f"Failed to fetch the IP addresses of the interfaces present in {vm}")
    page.screenshot(os.path.join(shots, "overview-running.png"))

    kebab(page, vm, "forceOff")
    wait_state(page, vm, "Shut off")
    step(f"{vm} forced off, state {state_of(page, vm)!r}")

    kebab(page, vm, "delete")
    dialog = f"#vm-{vm}-delete-modal-dialog"
    page.click(f"{dialog} button.pf-m-danger", "the delete dialog's Delete button")
    page.wait(f"{vm} gone from the list",
              f"!document.querySelector('tr[data-row-id=\"vm-{vm}-system\"]') && "
              f"!document.querySelector('#vm-{vm}-system-vcpus-count') && "
              f"!!document.querySelector('tr[data-row-id=\"vm-{other}-system\"]')")
    step(f"{vm} deleted; {other} still listed, state {state_of(page, other)!r}")
    page.screenshot(os.path.join(shots, "list-after-delete.png"))


def main():
    port_file, url, shots, vm, other, mac, disk = sys.argv[1:8]
    end = time.monotonic() + TIMEOUT
    while True:
        try:
            port = open(port_file).readline().strip()
            if port:
                break
        except FileNotFoundError:
            pass
        if time.monotonic() > end:
            print(f"FAIL: Chromium wrote no {port_file}", flush=True)
            sys.exit(1)
        time.sleep(0.1)
    page = Page(port)
    try:
        run(page, url, shots, vm, other, mac, disk)
    except Exception as e:  # every failure: say it, keep the page, exit 1
        print(f"FAIL: {e}", flush=True)
        try:
            page.screenshot(os.path.join(shots, "failure.png"))
            print("page text:\n" + (page.js("document.body.innerText") or ""), flush=True)
            print("ids: " + " ".join(page.js("[...document.querySelectorAll('[id]')].map(e => e.id)"
                                             ".filter(i => i.startsWith('vm-'))") or []), flush=True)
        except Exception as e2:
            print(f"(no screenshot: {e2})", flush=True)
        for line in page.console[-30:]:
            print(f"console: {line}", flush=True)
        sys.exit(1)
    print("PASS", flush=True)


if __name__ == "__main__":
    main()
