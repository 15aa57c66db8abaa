"""Screenshots of dashboard pages with headless Chromium (Debian's ``chromium``).

Chromium runs with ``--headless --no-sandbox --disable-gpu`` and is driven over the
DevTools protocol on a pair of pipes (``--remote-debugging-pipe``: its fds 3 and 4, JSON
messages ended by a NUL byte): load a page, wait until a JavaScript condition holds (e.g.
its Plotly charts have drawn and the script stopped running), grow the viewport to the
page's content and capture a PNG. The end-to-end test and ``docs/screenshots.py`` use it.

Never a DevTools port: whoever reaches one drives the browser, which runs as this user
(``file://`` pages read this user's files), and any local user can reach a loopback port.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
CHARTS_DRAWN = ("Array.from(document.querySelectorAll('.js-plotly-plot'))"
                ".filter(e => e.querySelector('.main-svg')).length")
SCRIPT_DONE = "document.querySelector('[data-testid=\"stStatusWidget\"]') === null"
CONTENT_HEIGHT = ("Math.max(document.body.scrollHeight, ...Array.from(document."
                  "querySelectorAll('[data-testid=\"stMain\"], section.main')).map("
                  "e => e.scrollHeight))")


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


class Chromium:
    """A headless Chromium process (use as a context manager)."""

    def __init__(self, binary: str | None = None, width: int = 1400, height: int = 900):
        binary = binary or find_chromium()
        if binary is None:
            raise FileNotFoundError("Chromium is not installed (apt-get install chromium)")
        self.width, self.height = width, height
        self._profile = tempfile.mkdtemp(prefix="ds-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _AT_3_AND_4, str(to_browser_r), str(from_browser_w),
                 binary, "--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--hide-scrollbars",
                 f"--user-data-dir={self._profile}", "--remote-debugging-pipe",
                 f"--window-size={width},{height}", "about:blank"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, pass_fds=(to_browser_r, from_browser_w))
        except BaseException:
            os.close(self._to_browser)
            os.close(self._from_browser)
            shutil.rmtree(self._profile, ignore_errors=True)
            raise
        finally:
            os.close(to_browser_r)
            os.close(from_browser_w)
        self._buffer = bytearray()
        self._ids = itertools.count(1)
        try:
            self.call("Target.getTargets", timeout=30)
        except BaseException:
            self.close()
            raise

    def _send(self, msg: dict[str, Any]) -> None:
        data = memoryview(json.dumps(msg).encode() + b"\0")
        while data:
            data = data[os.write(self._to_browser, data):]

    def _receive(self, deadline: float) -> dict[str, Any]:
        """The next message from the browser (``TimeoutError`` at ``deadline``)."""
        while True:
            end = self._buffer.find(b"\0")
            if end >= 0:
                message = bytes(self._buffer[:end])
                del self._buffer[:end + 1]
                return json.loads(message)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("headless Chromium did not answer on its DevTools pipe")
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if ready:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise RuntimeError("headless Chromium closed its DevTools pipe (exited "
                                       f"with code {self.proc.poll()})")
                self._buffer += chunk

    def call(self, method: str, params: dict[str, Any] | None = None,
             session: str | None = None, timeout: float = 60.0) -> dict[str, Any]:
        """One DevTools command; events arriving meanwhile are dropped."""
        msg_id = next(self._ids)
        msg: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self._send(msg)
        deadline = time.monotonic() + timeout
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == msg_id:
                if "error" in reply:
                    raise RuntimeError(f"DevTools {method}: {reply['error']}")
                return reply.get("result", {})

    def evaluate(self, session: str, expression: str) -> Any:
        result = self.call("Runtime.evaluate", {"expression": expression,
                                                "returnByValue": True}, session)
        return result.get("result", {}).get("value")

    def capture(self, url: str, path: str | Path | None, ready: str, *,
                timeout: float = 90.0, settle: float = 1.0) -> dict[str, Any]:
        """Open ``url``; once the JavaScript ``ready`` is true (and still true after
        ``settle`` seconds), write a PNG of the whole page to ``path`` (None: none).
        Returns the page's chart count, its text and the PNG's size."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target,
                                                      "flatten": True})["sessionId"]
        try:
            self._metrics(session, self.height)
            self.call("Page.enable", session=session)
            self.call("Page.navigate", {"url": url}, session)
            self._wait(session, ready, timeout, settle)
            height = int(self.evaluate(session, CONTENT_HEIGHT) or self.height)
            if height > self.height:
                self._metrics(session, min(height + 40, 12000))
                self._wait(session, ready, timeout, settle)
            size = 0
            if path is not None:
                shot = self.call("Page.captureScreenshot", {"format": "png"}, session)
                data = base64.b64decode(shot["data"])
                Path(path).write_bytes(data)
                size = len(data)
            return {"charts": self.evaluate(session, CHARTS_DRAWN),
                    "text": self.evaluate(session, "document.body.innerText"), "png": size}
        finally:
            self.call("Target.closeTarget", {"targetId": target})

    def _metrics(self, session: str, height: int) -> None:
        self.call("Emulation.setDeviceMetricsOverride", {
            "width": self.width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session)

    def _wait(self, session: str, ready: str, timeout: float, settle: float) -> None:
        deadline = time.monotonic() + timeout
        held_since = None
        while True:
            ok = bool(self.evaluate(session, ready))
            now = time.monotonic()
            if ok:
                held_since = held_since or now
                if now - held_since >= settle:
                    return
            else:
                held_since = None
            if now > deadline:
                raise TimeoutError(f"the page did not get ready within {timeout} s: {ready}")
            time.sleep(0.2)

    def close(self) -> None:
        for fd in (self._to_browser, self._from_browser):
            with contextlib.suppress(OSError):
                os.close(fd)
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# runs Chromium with the DevTools pipes where it expects them (it reads commands from fd 3,
# writes replies to fd 4): a trampoline, not a preexec_fn (unsafe in a threaded process)
_AT_3_AND_4 = ("import os, sys\n"
               "r, w = os.dup(int(sys.argv[1])), os.dup(int(sys.argv[2]))\n"
               "os.dup2(r, 3)\nos.dup2(w, 4)\n"  # dup2(3, 3) keeps close-on-exec:
               "os.set_inheritable(3, True)\nos.set_inheritable(4, True)\n"
               "os.closerange(5, 1 << 16)\n"
               "os.execv(sys.argv[3], sys.argv[3:])\n")


def charts_ready(count: int) -> str:
    """JavaScript: at least ``count`` Plotly charts drawn and the page's script done."""
    return f"({CHARTS_DRAWN}) >= {count} && {SCRIPT_DONE}"


# the dashboard's pages a screenshot run captures: (file name, URL path)
PAGES = (("workflow", ""), ("planners", "planners"), ("predictions", "predictions"),
         ("simulator", "simulator"))
PAGE_DONE = f"{SCRIPT_DONE} && document.body.innerText.length > 0"


def capture_pages(metrics_url: str, out_dir: str | Path, *, width: int = 1500,
                  settle: float = 3.0, say=print) -> list[Path]:
    """Start a dashboard over ``metrics_url``, write a PNG of each page in ``PAGES`` to
    ``out_dir`` (made if missing) with headless Chromium, stop the dashboard; returns
    the files. ``say`` gets a line per page."""
    from ..storage.embedded import free_port
    from . import launcher

    browser_binary = find_chromium()
    if browser_binary is None:
        raise FileNotFoundError("screenshots need Chromium (e.g. apt-get install chromium)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    proc, url = launcher.start(metrics_url, free_port())
    written = []
    try:
        if not launcher.wait_healthy(url, 90, proc):
            raise RuntimeError(f"the dashboard did not start; its log: "
                               f"{launcher.log_path(int(url.rsplit(':', 1)[1]))}")
        with Chromium(browser_binary, width=width, height=900) as browser:
            for name, path in PAGES:
                target = out / f"{name}.png"
                shot = browser.capture(launcher.page_url(url, path), target, PAGE_DONE,
                                       settle=settle)
                say(f"{target}: {shot['charts']} charts, {shot['png']:,} bytes")
                written.append(target)
    finally:
        launcher.stop(proc)
    return written
