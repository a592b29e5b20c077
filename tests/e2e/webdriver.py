"""A small W3C WebDriver client over httpx, for the dashboard's page test:
Debian's `chromedriver` driving headless `chromium` (scripts/lib/envoy.sh
installs both). Only what the test needs: open a page, find elements, type,
click, read text and attributes, run a script, take a screenshot."""

from __future__ import annotations

import base64
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

from hosts import Missing, _popen, free_port, stop_group

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"


class Browser:
    def __init__(self, log: Path):
        driver, chromium = shutil.which("chromedriver"), shutil.which("chromium")
        if not driver or not chromium:
            raise Missing("chromium and chromedriver are needed for the dashboard test: run scripts/test (it installs them)")
        self.profile = tempfile.mkdtemp(prefix="tollgate-chromium-")
        port = free_port()
        self.proc: subprocess.Popen | None = _popen([driver, f"--port={port}"], log)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
        deadline = time.monotonic() + 20
        while True:
            try:
                if self.http.get("/status").json()["value"]["ready"]:
                    break
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            if time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"chromedriver did not start; see {log}")
            time.sleep(0.1)
        args = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,1900", f"--user-data-dir={self.profile}"]
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome",
                                                 "goog:chromeOptions": {"binary": chromium, "args": args}}}}
        self.session = self._call("POST", "/session", caps)["sessionId"]

    def _call(self, method: str, path: str, body: dict | None = None):
        r = self.http.request(method, path, json=body)
        value = r.json().get("value")
        if r.status_code != 200:
            raise RuntimeError(f"webdriver {method} {path}: {r.status_code} {value}")
        return value

    def _s(self, path: str) -> str:
        return f"/session/{self.session}{path}"

    def open(self, url: str) -> None:
        self._call("POST", self._s("/url"), {"url": url})

    def find(self, css: str) -> str:
        return self._call("POST", self._s("/element"), {"using": "css selector", "value": css})[ELEMENT]

    def type(self, css: str, text: str) -> None:
        element = self.find(css)
        self._call("POST", self._s(f"/element/{element}/clear"), {})
        self._call("POST", self._s(f"/element/{element}/value"), {"text": text})

    def click(self, css: str) -> None:
        self._call("POST", self._s(f"/element/{self.find(css)}/click"), {})

    def text(self, css: str) -> str:
        return self._call("GET", self._s(f"/element/{self.find(css)}/text"))

    def script(self, source: str, *args):
        return self._call("POST", self._s("/execute/sync"), {"script": source, "args": list(args)})

    def wait_for(self, source: str, timeout: float = 20.0):
        """Poll `source` (a script returning a value) until it is truthy."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.script(source)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for: {source}")
            time.sleep(0.1)

    def screenshot(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(self._call("GET", self._s("/screenshot"))))

    def close(self) -> None:
        try:
            if getattr(self, "session", None):
                self.http.delete(self._s(""))
        except httpx.HTTPError:
            pass
        stop_group(self.proc)
        self.proc = None
        shutil.rmtree(self.profile, ignore_errors=True)
