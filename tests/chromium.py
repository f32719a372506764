"""One page measured in headless Chromium at 1366 × 768, without a server: the admin HTML the test client
rendered, its static files read from Django's admin package, and a script that writes what it measured into
``data-measure`` on ``<body>`` (``--dump-dom`` prints it). Skips the test when there is no Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import django.contrib.admin
import pytest

ADMIN_STATIC = Path(django.contrib.admin.__file__).parent / "static"

# The admin list's table (``.results``) against the room it has, and the page against the window.
MEASURE = """<script>window.addEventListener('load', () => {
  const results = document.querySelector('.results');
  document.body.setAttribute('data-measure', JSON.stringify({
    page: document.documentElement.scrollWidth, window: window.innerWidth,
    results: results.scrollWidth, room: results.clientWidth}));
});</script></body>"""


def measure_at_1366(html: str, into: Path, *, measure: str = MEASURE) -> dict[str, Any]:
    """Load ``html`` (written into ``into``) with ``measure`` before ``</body>``; returns what it measured."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if not chromium:
        pytest.skip("no Chromium to measure the page with (apt-get install chromium)")
    page = into / "page.html"
    page.write_text(html.replace('"/static/', f'"file://{ADMIN_STATIC}/').replace("</body>", measure))
    done = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1366,768",
         "--allow-file-access-from-files", "--virtual-time-budget=3000", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    found = re.search(r'data-measure="([^"]+)"', done.stdout)
    assert found, done.stderr[-2000:]
    return dict(json.loads(found.group(1).replace("&quot;", '"')))
