"""Open an HTML report in Debian's headless Chromium with the network off, and look inside."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
    # The network is off for the page: every host fails to resolve and any proxy use fails.
    "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=http://127.0.0.1:9",
]


def chromium_or_skip() -> str:
    """Chromium's path; in CI its absence is a failure, locally a skip that says how to get it."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe:
        return exe
    if os.environ.get("CI"):
        pytest.fail("Debian's chromium is not installed: `make browser` (part of `make test`) installs it")
    pytest.skip("chromium not installed: run `make browser`")


def _run(exe: str, args: list[str], timeout: int = 120) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=timeout)


def rendered_dom(html: Path, budget_ms: int = 20000) -> str:
    exe = chromium_or_skip()
    out = _run(exe, [f"--virtual-time-budget={budget_ms}", "--dump-dom", html.resolve().as_uri()])
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def screenshot(html: Path, png: Path, size: str = "1200,2400") -> Path:
    exe = chromium_or_skip()
    out = _run(exe, ["--virtual-time-budget=20000", f"--window-size={size}", f"--screenshot={png}",
                     html.resolve().as_uri()])
    assert out.returncode == 0 and png.is_file(), out.stderr[-2000:]
    return png
