"""The report as a picture: a headless browser's screenshot of ``index.html``, and a check that its figures
were drawn (not only its text): the screenshot must hold far more task-blue and universal-gray pixels than a
screenshot of the same page with its PNGs missing."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from tailorrt.errors import DependencyMissingError

# the report's figures add thousands of each colour (a task of only universal blocks few blue); a broken image none
FIGURE_PIXELS = 2000
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> str | None:
    """A Chromium-family browser on PATH, or None."""
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def screenshot(page: Path, png: Path, *, browser: str | None = None, width: int = 1200, height: int = 6000,
               timeout: float = 120) -> Path:
    """Render ``page`` (a file) headless at ``width`` x ``height`` pixels and write the screenshot to ``png``."""
    browser = browser or find_browser()
    if browser is None:
        raise DependencyMissingError("no headless browser found; install one (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="tailorrt-browser-") as profile:
        proc = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                               f"--user-data-dir={profile}", f"--window-size={width},{height}",
                               f"--screenshot={png}", page.resolve().as_uri()],
                              capture_output=True, text=True, timeout=timeout, check=False)
    if not png.is_file():
        raise RuntimeError(f"{browser} wrote no screenshot: {proc.stderr.strip()[-300:]}")
    return png


def figure_pixels(png: Path) -> dict[str, int]:
    """Pixels of the report's two figure colours: task blue (#1f77b4 at any opacity over white) and the gray
    of universal blocks."""
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    blue = (b - r > 40) & (b > 150)
    gray = (np.abs(r - g) < 4) & (np.abs(g - b) < 4) & (r > 110) & (r < 190)
    return {"blue": int(blue.sum()), "gray": int(gray.sum())}


def check_rendering(report_dir: Path, out: Path, *, browser: str | None = None) -> dict:
    """Screenshot the report (to ``out``) and the same page without its PNGs; the figures count as drawn
    when the report holds at least ``FIGURE_PIXELS`` more blue and more gray pixels than the bare page (whose
    text, tables and missing-image marks have some of both, the same in the two screenshots)."""
    page = report_dir / "index.html"
    screenshot(page, out, browser=browser)
    with tempfile.TemporaryDirectory(prefix="tailorrt-bare-") as tmp:
        shutil.copy(page, Path(tmp) / "index.html")  # the same page, its images missing
        bare = screenshot(Path(tmp) / "index.html", Path(tmp) / "bare.png", browser=browser)
        without = figure_pixels(bare)
    full = figure_pixels(out)
    ok = all(full[k] - without[k] >= FIGURE_PIXELS for k in full)
    return {"screenshot": str(out), "pixels": full, "pixels_without_figures": without, "figures_drawn": ok}


def image_difference(a: Path, b: Path) -> float:
    """Mean absolute difference of two PNGs' pixels (0-255), over their common top-left area."""
    x = np.asarray(Image.open(a).convert("L")).astype(float)
    y = np.asarray(Image.open(b).convert("L")).astype(float)
    h, w = min(x.shape[0], y.shape[0]), min(x.shape[1], y.shape[1])
    return float(np.abs(x[:h, :w] - y[:h, :w]).mean())
