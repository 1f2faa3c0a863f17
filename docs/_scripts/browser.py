"""Open a local HTML page in headless Chromium: a full-page screenshot and the page's errors.

Used by ``tests/test_report.py`` (the report checked in a real browser) and by the docs
build (the screenshot on the report page). It speaks the DevTools protocol over
``--remote-debugging-pipe`` (file descriptors 3 and 4), so it needs nothing but a
Chromium binary: Debian's ``chromium`` package (``apt-get install chromium``; ``.ci/run``
installs it when missing).

Every request the page makes is recorded; name resolution is disabled, so a page that
fetches anything from the network fails visibly instead of fetching it.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--remote-debugging-pipe",
)


def find_chromium() -> str | None:
    """The path of a Chromium (or Chrome) binary, or ``None``."""
    for name in (os.environ.get("CHROMIUM"), *CHROMIUM_NAMES):
        if name and (path := shutil.which(name)):
            return path
    return None


@dataclass
class PageShot:
    """What the browser saw: the screenshot, its size, errors and requests."""

    png: bytes
    width: int
    height: int
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)


class _Pipe:
    """DevTools messages over Chromium's pipe: JSON objects separated by NUL bytes."""

    def __init__(self, read_fd: int, write_fd: int, timeout: float) -> None:
        self.read_fd, self.write_fd, self.deadline = read_fd, write_fd, time.monotonic() + timeout
        self.buffer, self.next_id, self.events = b"", 0, []

    def _message(self) -> dict:
        while b"\0" not in self.buffer:
            left = self.deadline - time.monotonic()
            if left <= 0 or not select.select([self.read_fd], [], [], left)[0]:
                raise TimeoutError("Chromium did not answer in time.")
            chunk = os.read(self.read_fd, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe.")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, session: str | None = None, **params) -> dict:
        self.next_id += 1
        request = {"id": self.next_id, "method": method, "params": params}
        if session is not None:
            request["sessionId"] = session
        os.write(self.write_fd, json.dumps(request).encode() + b"\0")
        while True:
            message = self._message()
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, method: str) -> dict:
        for i, event in enumerate(self.events):
            if event.get("method") == method:
                return self.events.pop(i)
        while True:
            message = self._message()
            if message.get("method") == method:
                return message
            self.events.append(message)


def _errors_and_requests(events: list[dict]) -> tuple[list[str], list[str]]:
    errors, requests = [], []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
            errors.append(f"console.{params['type']}: {args}")
        elif method == "Runtime.exceptionThrown":
            errors.append(f"exception: {params['exceptionDetails'].get('text')}")
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            entry = params["entry"]
            errors.append(f"log: {entry.get('text')} {entry.get('url', '')}".strip())
        elif method == "Network.loadingFailed":
            errors.append(f"failed load: {params.get('errorText')}")
        elif method == "Network.requestWillBeSent":
            url = params["request"]["url"]
            requests.append(url if not url.startswith("data:") else url[:30])
    return errors, requests


def screenshot(
    page: str | os.PathLike,
    out: str | os.PathLike | None = None,
    width: int = 1280,
    timeout: float = 120.0,
    chromium: str | None = None,
) -> PageShot:
    """Load ``page`` (a local file) and take a full-page screenshot, written to ``out``.

    Raises ``FileNotFoundError`` when no Chromium binary can be found.
    """
    binary = chromium or find_chromium()
    if binary is None:
        raise FileNotFoundError(
            f"No Chromium binary ({', '.join(CHROMIUM_NAMES)}) on PATH; install Debian's "
            "`chromium` package or set $CHROMIUM."
        )
    url = Path(page).resolve().as_uri()
    to_chrome_r, to_chrome_w = os.pipe()
    from_chrome_r, from_chrome_w = os.pipe()
    # Chromium reads commands on fd 3 and answers on fd 4. Its ends of the pipes are moved
    # to fds >= 10 (never 3 or 4), then bash puts them in place and execs it.
    child_r, child_w = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_chrome_r, from_chrome_w))
    for fd in (to_chrome_r, from_chrome_w):
        os.close(fd)
    place = f'exec "$@" 3<&{child_r} 4>&{child_w} {child_r}<&- {child_w}>&-'
    with (
        tempfile.TemporaryDirectory(prefix="scetm-mnn-chromium-") as profile,
        tempfile.TemporaryFile() as log,
    ):
        proc = subprocess.Popen(
            [
                shutil.which("bash") or "bash",
                "-c",
                place,
                "bash",
                binary,
                *FLAGS,
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            pass_fds=(child_r, child_w),
        )
        os.close(child_r)
        os.close(child_w)
        pipe = _Pipe(from_chrome_r, to_chrome_w, timeout)
        try:
            target = pipe.call("Target.createTarget", url="about:blank")["targetId"]
            session = pipe.call("Target.attachToTarget", targetId=target, flatten=True)[
                "sessionId"
            ]
            for domain in ("Runtime", "Log", "Network", "Page"):
                pipe.call(f"{domain}.enable", session)
            pipe.call(
                "Emulation.setDeviceMetricsOverride",
                session,
                width=width,
                height=900,
                deviceScaleFactor=1,
                mobile=False,
            )
            pipe.events.clear()  # about:blank's own events
            pipe.call("Page.navigate", session, url=url)
            pipe.wait_for("Page.loadEventFired")
            size = pipe.call("Page.getLayoutMetrics", session)["cssContentSize"]
            w, h = int(size["width"]), int(size["height"])
            shot = pipe.call(
                "Page.captureScreenshot",
                session,
                format="png",
                captureBeyondViewport=True,
                clip={"x": 0, "y": 0, "width": w, "height": h, "scale": 1},
            )
            try:
                pipe.call("Browser.close")
            except (RuntimeError, TimeoutError, OSError):
                pass
        except (RuntimeError, TimeoutError, OSError) as err:
            log.seek(0)
            tail = log.read().decode(errors="replace")[-3000:]
            raise RuntimeError(f"Chromium failed ({err}); its log ends with:\n{tail}") from err
        finally:
            os.close(from_chrome_r)
            os.close(to_chrome_w)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    errors, requests = _errors_and_requests(pipe.events)
    png = base64.b64decode(shot["data"])
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_bytes(png)
    return PageShot(png=png, width=w, height=h, errors=errors, requests=requests)


if __name__ == "__main__":  # python docs/_scripts/browser.py page.html shot.png
    import sys

    result = screenshot(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
    print(f"{result.width}×{result.height}, errors: {result.errors}, requests: {result.requests}")
