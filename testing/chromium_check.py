"""Open an HTML file in headless Chromium and report what a reader's browser would complain about.

Talks the DevTools protocol over --remote-debugging-pipe (fd 3: commands in, fd 4: events out,
NUL-terminated JSON), so it needs no driver or extra Python package: only Debian's `chromium`.
Collects console errors and warnings, uncaught exceptions, browser log errors and every request
the page makes; can save a full-page screenshot.

    python -m testing.chromium_check reports/X/report.html --screenshot /tmp/report.png
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         "--disable-default-apps", "--disable-extensions", "--mute-audio",
         "--disable-dev-shm-usage",  # containers often have a tiny /dev/shm
         "--host-resolver-rules=MAP * ~NOTFOUND",  # a request that slips out cannot resolve
         "--remote-debugging-pipe")


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageReport:
    console: list[str] = field(default_factory=list)      # "type: text"
    exceptions: list[str] = field(default_factory=list)
    log_errors: list[str] = field(default_factory=list)   # Log.entryAdded at level error
    requests: list[str] = field(default_factory=list)     # URLs the page asked for
    title: str = ""
    loaded: bool = False

    @property
    def errors(self) -> list[str]:
        bad = [c for c in self.console if c.split(":", 1)[0] in ("error", "assert")]
        return bad + self.exceptions + self.log_errors

    @property
    def external_requests(self) -> list[str]:
        return [u for u in self.requests if not u.startswith(("file:", "data:", "about:"))]


class Pipe:
    """One Chromium process and its DevTools pipe."""

    def __init__(self, chromium: str, profile: str, width: int, height: int):
        to_browser_r, self.to_browser = os.pipe()
        self.from_browser, from_browser_w = os.pipe()
        # Move our ends of the child's fds above 9 so dup2 onto 3 and 4 cannot clobber them.
        high_r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
        high_w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
        os.close(to_browser_r)
        os.close(from_browser_w)

        def child_fds():
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        self.proc = subprocess.Popen(
            [chromium, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
             "about:blank"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, pass_fds=(3, 4, high_r, high_w), preexec_fn=child_fds)
        os.close(high_r)
        os.close(high_w)
        self.buffer, self.next_id, self.events = b"", 0, []

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 30.0) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.to_browser, json.dumps(msg).encode() + b"\0")
        deadline = time.time() + timeout
        while time.time() < deadline:
            for reply in self.read(deadline - time.time()):
                if reply.get("id") == self.next_id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply.get("result", {})
                self.events.append(reply)
        raise TimeoutError(f"chromium did not answer {method} within {timeout:.0f} s")

    def read(self, timeout: float) -> list[dict]:
        import select
        ready, _, _ = select.select([self.from_browser], [], [], max(0.0, timeout))
        if not ready:
            return []
        chunk = os.read(self.from_browser, 1 << 20)
        if not chunk:
            raise RuntimeError("chromium closed its DevTools pipe (it exited)")
        self.buffer += chunk
        *messages, self.buffer = self.buffer.split(b"\0")
        return [json.loads(m) for m in messages if m]

    def drain(self, seconds: float) -> None:
        deadline = time.time() + seconds
        while time.time() < deadline:
            self.events += self.read(deadline - time.time())

    def close(self) -> None:
        try:
            os.write(self.to_browser, json.dumps({"id": 0, "method": "Browser.close"}).encode()
                     + b"\0")
            self.proc.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        finally:
            os.close(self.to_browser)
            os.close(self.from_browser)


def check_page(html: str | Path, screenshot: str | Path | None = None, width: int = 1280,
               height: int = 2000, chromium: str | None = None,
               settle: float = 1.0) -> PageReport:
    """Load the file, wait for its load event (plus `settle` seconds for late errors)."""
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError("chromium is not installed (apt-get install chromium)")
    url = Path(html).absolute().as_uri()
    report = PageReport()
    with tempfile.TemporaryDirectory(prefix="genbench-chromium-") as profile:
        pipe = Pipe(chromium, profile, width, height)
        try:
            target = pipe.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = pipe.send("Target.attachToTarget", {"targetId": target,
                                                          "flatten": True})["sessionId"]
            for domain in ("Runtime", "Log", "Network", "Page"):
                pipe.send(f"{domain}.enable", session=session)
            pipe.send("Emulation.setDeviceMetricsOverride", {"width": width, "height": height,
                      "deviceScaleFactor": 1, "mobile": False}, session=session)
            pipe.send("Page.navigate", {"url": url}, session=session)
            deadline = time.time() + 30
            while time.time() < deadline and not report.loaded:
                pipe.drain(0.2)
                report.loaded = any(e.get("method") == "Page.loadEventFired"
                                    for e in pipe.events)
            pipe.drain(settle)
            report.title = pipe.send("Runtime.evaluate", {"expression": "document.title",
                                     "returnByValue": True}, session=session)["result"]["value"]
            if screenshot:
                size = pipe.send("Page.getLayoutMetrics", session=session)["cssContentSize"]
                shot = pipe.send("Page.captureScreenshot", {
                    "format": "png", "captureBeyondViewport": True,
                    "clip": {"x": 0, "y": 0, "width": width, "height": size["height"],
                             "scale": 1}}, session=session)
                import base64
                Path(screenshot).write_bytes(base64.b64decode(shot["data"]))
        finally:
            pipe.close()
    for e in pipe.events:
        method, p = e.get("method"), e.get("params", {})
        if method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"])
            report.console.append(f"{p['type']}: {text}")
        elif method == "Runtime.exceptionThrown":
            d = p["exceptionDetails"]
            report.exceptions.append(d.get("exception", {}).get("description", d.get("text")))
        elif method == "Log.entryAdded" and p["entry"]["level"] == "error":
            report.log_errors.append(f"{p['entry']['source']}: {p['entry']['text']} "
                                     f"{p['entry'].get('url', '')}".strip())
        elif method == "Network.requestWillBeSent":
            report.requests.append(p["request"]["url"])
    return report


def main(argv: list[str]) -> int:
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html")
    parser.add_argument("--screenshot")
    args = parser.parse_args(argv)
    report = check_page(args.html, args.screenshot)
    print(f"loaded: {report.loaded}; title: {report.title!r}; requests: {len(report.requests)} "
          f"({len(report.external_requests)} external); console messages: "
          f"{len(report.console)}; errors: {len(report.errors)}")
    for line in report.errors + [f"external request: {u}" for u in report.external_requests]:
        print(f"  {line}")
    if args.screenshot:
        print(f"screenshot: {args.screenshot}")
    return 0 if report.loaded and not report.errors and not report.external_requests else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
