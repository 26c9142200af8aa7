"""The headless browser the page tests drive: Chromium (Debian) + playwright-core (npm), both
installed by scripts/install_chromium.sh (scripts/test.sh runs it)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

BROWSER = Path(__file__).resolve().parents[1] / "browser"  # the node scripts and node_modules/
CHROMIUM = shutil.which("chromium")
NODE = shutil.which("node")
needs_browser = pytest.mark.skipif(
    CHROMIUM is None or NODE is None or not (BROWSER / "node_modules" / "playwright-core").is_dir(),
    reason="chromium or playwright-core not installed: run scripts/install_chromium.sh (scripts/test.sh does)",
)
