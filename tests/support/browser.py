"""Pages rendered by Debian's headless Chromium, with every host but loopback unreachable: what a person
on a network without internet access would see."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

#: Name resolution fails for every host but loopback, so a page that needs a CDN shows it.
_OFFLINE = "MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"
_CONSOLE = re.compile(r":CONSOLE[^\]]*\] (.*)")


@dataclass(frozen=True)
class RenderedPage:
    """The page's DOM once its scripts ran, and what it wrote to the browser's console."""

    dom: str
    console: list[str]


def chromium() -> str:
    """The Chromium binary; fails (not skips) without it, saying how to get it."""
    found = shutil.which("chromium")
    if found is None:
        raise RuntimeError("Chromium is missing: apt-get install -y chromium (./dev test installs it)")
    return found


def render(
    url: str,
    *,
    budget_ms: int = 10_000,
    screenshot: Path | None = None,
    window: tuple[int, int] = (1400, 900),
) -> RenderedPage:
    """Load `url` in headless Chromium, offline but for loopback, and let its scripts run for up to
    `budget_ms` of virtual time; with `screenshot`, also save what a `window`-sized browser shows (PNG),
    from the same load as the DOM."""
    shot = [f"--screenshot={screenshot}", "--hide-scrollbars"] if screenshot is not None else []
    done = subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",  # tests run as root here
            "--disable-gpu",
            "--disable-dev-shm-usage",
            f"--host-resolver-rules={_OFFLINE}",
            "--enable-logging=stderr",
            "--v=0",
            f"--virtual-time-budget={budget_ms}",
            f"--window-size={window[0]},{window[1]}",
            *shot,
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    console = [m.group(1) for line in done.stderr.splitlines() if (m := _CONSOLE.search(line))]
    return RenderedPage(dom=done.stdout, console=console)
