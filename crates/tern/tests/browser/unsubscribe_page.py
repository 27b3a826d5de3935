"""Drive headless Chromium (Debian's `chromium`) through the unsubscribe page.

Usage: python3 unsubscribe_page.py URL ARTIFACTS_DIR

Talks the Chrome DevTools Protocol over --remote-debugging-pipe (fd 3 in,
fd 4 out, NUL-terminated JSON), so it needs Python's standard library only
and opens no port. JavaScript is disabled for the page, so what passes here
works without it. Loads URL, checks what a screen reader and a person see
(the `lang` attribute, exactly one button with an accessible name), takes a
screenshot, clicks the button with a real mouse event at its centre, waits
for the answer page, takes a second screenshot and prints one JSON object
on stdout: {"lang", "buttons": [names], "title", "text"} of the pages.
Exits non-zero (message on stderr) on any protocol error or after a
deadline.
"""

import base64
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time

DEADLINE_S = 60
# Without these Chromium reaches for the network (updates, sync, QUIC
# probes); as root it needs --no-sandbox.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=800,600",
    "--remote-debugging-pipe",
]


class Cdp:
    """One DevTools connection over the pipe; commands answered in order."""

    def __init__(self, to_browser, from_browser):
        self.w = to_browser
        self.r = from_browser
        self.next_id = 0
        self.buf = b""
        self.events = []
        self.deadline = time.monotonic() + DEADLINE_S

    def _read_message(self):
        while b"\0" not in self.buf:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no answer from chromium before the deadline")
            ready, _, _ = select.select([self.r], [], [], left)
            if ready:
                chunk = os.read(self.r, 65536)
                if not chunk:
                    raise EOFError("chromium closed the pipe")
                self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method, session=None, **params):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        while True:
            m = self._read_message()
            if m.get("id") == self.next_id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def wait_event(self, method):
        """The first event `method` not seen yet (events arrive in order)."""
        while True:
            for i, m in enumerate(self.events):
                if m.get("method") == method:
                    return self.events.pop(i)
            self.events.append(self._read_message())


def launch(profile):
    """Chromium with the pipe on fds 3 (its input) and 4 (its output)."""
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    chromium = shutil.which("chromium") or "/usr/bin/chromium"

    def fds():
        # Copies above 4 first, so neither end is overwritten by the other;
        # dup2 onto another number also clears close-on-exec.
        a, b = os.dup(to_child_r), os.dup(from_child_w)
        os.dup2(a, 3)
        os.dup2(b, 4)

    proc = subprocess.Popen(
        [chromium, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
        preexec_fn=fds,
        close_fds=False,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(to_child_r)
    os.close(from_child_w)
    return proc, Cdp(to_child_w, from_child_r)


def text_of(cdp, s):
    root = cdp.call("DOM.getDocument", s, depth=-1)["root"]["nodeId"]
    html = cdp.call("DOM.getOuterHTML", s, nodeId=root)["outerHTML"]
    return root, html


def load(cdp, s, url):
    cdp.call("Page.navigate", s, url=url)
    cdp.wait_event("Page.loadEventFired")


def screenshot(cdp, s, path):
    data = cdp.call("Page.captureScreenshot", s, format="png")["data"]
    with open(path, "wb") as f:
        f.write(base64.b64decode(data))


def buttons(cdp, s):
    """Accessible names of every node whose role is button."""
    nodes = cdp.call("Accessibility.getFullAXTree", s)["nodes"]
    out = []
    for n in nodes:
        if n.get("ignored") or n.get("role", {}).get("value") != "button":
            continue
        out.append(n.get("name", {}).get("value", ""))
    return out


def click_button(cdp, s, root):
    node = cdp.call("DOM.querySelector", s, nodeId=root, selector="button")["nodeId"]
    quad = cdp.call("DOM.getBoxModel", s, nodeId=node)["model"]["content"]
    x = (quad[0] + quad[2] + quad[4] + quad[6]) / 4
    y = (quad[1] + quad[3] + quad[5] + quad[7]) / 4
    for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
        cdp.call(
            "Input.dispatchMouseEvent", s, type=kind, x=x, y=y, button="left", clickCount=1
        )


def title_of(cdp, s, root):
    node = cdp.call("DOM.querySelector", s, nodeId=root, selector="title")["nodeId"]
    html = cdp.call("DOM.getOuterHTML", s, nodeId=node)["outerHTML"]
    return html.removeprefix("<title>").removesuffix("</title>")


def run(cdp, url, artifacts):
    target = cdp.call("Target.createTarget", url="about:blank")["targetId"]
    s = cdp.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    cdp.call("Page.enable", s)
    cdp.call("Emulation.setScriptExecutionDisabled", s, value=True)
    load(cdp, s, url)
    root, _ = text_of(cdp, s)
    html_node = cdp.call("DOM.querySelector", s, nodeId=root, selector="html")["nodeId"]
    attrs = cdp.call("DOM.getAttributes", s, nodeId=html_node)["attributes"]
    lang = dict(zip(attrs[::2], attrs[1::2])).get("lang")
    before = {"title": title_of(cdp, s, root), "buttons": buttons(cdp, s)}
    screenshot(cdp, s, os.path.join(artifacts, "1-page.png"))
    click_button(cdp, s, root)
    # The form's POST answers with a new page.
    cdp.wait_event("Page.loadEventFired")
    root, html = text_of(cdp, s)
    screenshot(cdp, s, os.path.join(artifacts, "2-unsubscribed.png"))
    after = {"title": title_of(cdp, s, root), "html": html}
    return {"lang": lang, "before": before, "after": after}


def main():
    url, artifacts = sys.argv[1], sys.argv[2]
    os.makedirs(artifacts, exist_ok=True)
    profile = tempfile.mkdtemp(prefix="tern-chromium-")
    proc, cdp = launch(profile)
    try:
        print(json.dumps(run(cdp, url, artifacts)))
        try:
            cdp.call("Browser.close")
        except (EOFError, RuntimeError):
            pass
    finally:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(profile, ignore_errors=True)


if __name__ == "__main__":
    main()
