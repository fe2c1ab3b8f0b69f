"""Check that a model dir's ``tailor report`` renders in a headless browser, as a picture.

    python benchmarks/render_report.py --model-dir runs/demo --easy synth-digits --hard synth-glyphs

Builds the report, screenshots ``index.html`` with Chromium (Debian: ``apt-get install chromium``) and
prints JSON: the screenshot's path, its figure pixels against the same page without its PNGs, and how much
the easy and the hard task's architecture pictures differ (mean absolute pixel difference, 0-255).
Exits 1 when the figures were not drawn or the two pictures are the same.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tailorrt.tools.render import check_rendering, image_difference
from tailorrt.tools.report import ReportRequest, build_report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default="runs/demo")
    ap.add_argument("--easy", required=True, help="A task the backbone already suits.")
    ap.add_argument("--hard", required=True, help="A task far from the backbone's source task.")
    ap.add_argument("--out", type=Path, default=None, help="The screenshot (default <report>/screenshot.png).")
    args = ap.parse_args()
    page = build_report(ReportRequest(args.model_dir), report=lambda m: print(m, file=sys.stderr))
    result = check_rendering(page.parent, args.out or page.parent / "screenshot.png")
    result["architecture_difference"] = round(image_difference(page.parent / f"{args.easy}-architecture.png",
                                                               page.parent / f"{args.hard}-architecture.png"), 2)
    print(json.dumps(result, indent=2))
    return 0 if result["figures_drawn"] and result["architecture_difference"] > 0.5 else 1


if __name__ == "__main__":
    sys.exit(main())
