"""The real `imgsearch serve` and a real headless Chromium, for the web UI tests and for
scripts/screenshot.py (which makes the README's picture the same way the tests look)."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# What Chromium needs to run headless in a container, and to reach nothing but the server.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def missing() -> str | None:
    """Why Chromium cannot be driven here, or None."""
    absent = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if not absent:
        return None
    return (
        f"the web UI needs Chromium and its driver, but {' and '.join(absent)} "
        f"{'is' if len(absent) == 1 else 'are'} missing: apt-get install chromium "
        "chromium-driver (as .ci/run does)"
    )


def chromium(profile: Path, size: tuple[int, int] = (1280, 900)) -> WebDriver:
    """Headless Chromium with a fresh profile. The driver's path is given, so Selenium
    Manager never looks for (or downloads) one."""
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--window-size={size[0]},{size[1]}", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def request(
    url: str,
    path: str,
    method: str = "GET",
    body: bytes | None = None,
    timeout: float = 60,
    headers: dict[str, str] | None = None,
) -> tuple[int, bytes]:
    """One request with the path sent exactly as written (no client-side normalising)."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@contextlib.contextmanager
def serving(
    cwd: Path, logs: Path, db: Path | None = None, timeout: float = 60
) -> Iterator[tuple[str, subprocess.Popen]]:
    """`imgsearch serve` as a user starts it, on a free loopback port; yields its URL once it
    answers, and stops it with Ctrl-C (SIGINT) at the end. stdout and stderr go to ``logs``."""
    port = free_port()
    command = [sys.executable, "-m", "imgsearch.cli", "serve", "--port", str(port)]
    if db is not None:
        command += ["--db", str(db)]
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / "out", "w") as out, open(logs / "err", "w") as err:
        process = subprocess.Popen(
            command, cwd=cwd, stdout=out, stderr=err, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"imgsearch serve exited with {process.returncode}: {read(logs / 'err')}"
                )
            with contextlib.suppress(OSError):
                if request(url, "/api/status", timeout=5)[0] == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"imgsearch serve did not answer within {timeout} s: {read(logs / 'err')}"
                )
            time.sleep(0.2)
        yield url, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def read(path: Path) -> str:
    return path.read_text(errors="replace")


def wait(
    driver: WebDriver, condition: Callable[[WebDriver], object], what: str, timeout: float = 60
) -> object:
    """Wait for a condition on the page; on time out, say what the page's error box shows."""
    try:
        return WebDriverWait(driver, timeout).until(lambda d: condition(d))
    except TimeoutException:
        error = driver.find_element("id", "error").text
        raise AssertionError(
            f"timed out waiting for {what}; the page's error box says: {error!r}"
        ) from None


def cards(driver: WebDriver) -> list[dict]:
    """The result grid as shown: each card's name, score, shared captions, thumbnail state."""
    return driver.execute_script(
        """return [...document.querySelectorAll('#results figure.hit')].map(f => ({
            id: Number(f.dataset.id),
            name: f.querySelector('.name').textContent,
            score: Number(f.querySelector('.score').textContent),
            shared: f.querySelector('.shared').textContent,
            loaded: f.querySelector('img').complete && f.querySelector('img').naturalWidth > 0,
        }))"""
    )


def search_done(driver: WebDriver) -> bool:
    note = driver.find_element("id", "search-note").text
    return bool(note) and note != "Searching…"


def results(driver: WebDriver, what: str) -> list[dict]:
    """The grid once a search has filled it and its first thumbnails have loaded."""
    wait(driver, lambda d: search_done(d) and cards(d), what)
    wait(driver, lambda d: all(c["loaded"] for c in cards(d)[:3]), f"{what}'s thumbnails")
    return cards(driver)
