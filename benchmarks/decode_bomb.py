"""Memory under a decompression-bomb attack, with the decode budget off and on, side by side in one run.

    python benchmarks/decode_bomb.py attack --model-dir runs/demo            # 16 concurrent bombs, 3 waves
    python benchmarks/decode_bomb.py calibrate                               # budget estimate vs measured peak

``attack`` starts ``tailor serve`` on loopback once per setting: ``--max-decode-mb 0`` (no budget: what the
server did before it had one) and each of ``--budgets``. It sends WAVES waves of CONCURRENCY requests, each
carrying a 4.9 KB 1-bit PNG that claims 6300x6300 pixels (under the 40 Mpx per-image limit, about 480 MB to
decode), and prints the server's resident memory before the attack, its peak during it (the kernel's VmHWM,
reset before the attack) and after it, and the status codes.

``calibrate`` decodes a 6300x6300 image of each accepted format and PIL mode in a fresh process and prints the
bytes the budget reserves for it (``tailorrt.images.decode_cost``) against the peak memory measured.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
from PIL import Image

from tailorrt.serving.local import png_bytes, serve_process

MB = 1024 * 1024


def bomb() -> bytes:
    buf = io.BytesIO()
    Image.new("1", (6300, 6300)).save(buf, format="PNG")
    return buf.getvalue()


def _reset_peak(pid: int) -> bool:
    """Reset the kernel's peak-RSS counter of ``pid`` (Linux: ``echo 5 > /proc/PID/clear_refs``)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc (not Linux?)")


def attack_once(model_dir: str, budget_mb: float, concurrency: int, waves: int) -> dict:
    payload = bomb()
    with serve_process(model_dir, "--max-decode-mb", str(budget_mb), "--max-queue", "4096") as (url, proc), \
            httpx.Client(base_url=url, timeout=120, limits=httpx.Limits(max_connections=concurrency)) as client:
        server = psutil.Process(proc.pid)
        task = client.get("/v1/tasks").json()["tasks"][0]["name"]
        client.post(f"/v1/tasks/{task}:predict", content=png_bytes(Image.new("RGB", (32, 32))))  # warm
        time.sleep(0.5)
        before = server.memory_info().rss
        if not _reset_peak(proc.pid):
            raise RuntimeError("cannot reset the peak-RSS counter (needs Linux and permission on /proc/PID)")
        codes: dict[int, int] = {}
        start = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            for _ in range(waves):
                for r in pool.map(lambda _: client.post(f"/v1/tasks/{task}:predict", content=payload),
                                  range(concurrency)):
                    codes[r.status_code] = codes.get(r.status_code, 0) + 1
        seconds = time.perf_counter() - start
        peak = _peak_rss(proc.pid)
        time.sleep(1.0)
        after = server.memory_info().rss
        ok = client.post(f"/v1/tasks/{task}:predict", content=png_bytes(Image.new("RGB", (32, 32)))).status_code
    return {"budget_mb": budget_mb, "before_mb": before / MB, "peak_mb": peak / MB, "after_mb": after / MB,
            "codes": dict(sorted(codes.items())), "seconds": seconds, "served_after": ok}


def attack(args: argparse.Namespace) -> None:
    settings = [0.0] + [float(b) for b in args.budgets.split(",")]
    print(f"{args.concurrency} concurrent requests x {args.waves} waves, each a {len(bomb()):,}-byte PNG of "
          f"6300x6300 1-bit pixels, against tailor serve on {args.model_dir}")
    print("| --max-decode-mb | RSS before | peak RSS | RSS after | status codes | seconds | served after |")
    print("|---|---|---|---|---|---|---|")
    for budget in settings:
        r = attack_once(args.model_dir, budget, args.concurrency, args.waves)
        label = "0 (no budget)" if budget == 0 else f"{budget:g}"
        codes = ", ".join(f"{n}x {c}" for c, n in r["codes"].items())
        print(f"| {label} | {r['before_mb']:.0f} MB | {r['peak_mb']:.0f} MB | {r['after_mb']:.0f} MB | {codes} | "
              f"{r['seconds']:.1f} | {r['served_after']} |", flush=True)


CASES = [("1", "PNG"), ("L", "PNG"), ("RGB", "PNG"), ("RGBA", "PNG"), ("I;16", "PNG"), ("P", "GIF"),
         ("RGB", "JPEG"), ("L", "JPEG"), ("CMYK", "JPEG"), ("RGB", "WEBP"), ("RGBA", "WEBP"), ("RGB", "BMP"),
         ("RGB", "PPM")]

_PROBE = """
import resource, sys
from PIL import Image
from tailorrt.training.datasets import Preprocess
from tailorrt.images import decode_cost, open_image, to_batch
from tailorrt.limits import Limits
from tailorrt.serving.local import png_bytes
data = open(sys.argv[1], "rb").read()  # encoded by the parent: this process's high-water is the decode's
pre = Preprocess(32, (0.5,) * 3, (0.25,) * 3)
to_batch([png_bytes(Image.new("RGB", (8, 8)))], pre)  # load the transform's code first
limits = Limits(max_pixels=10**9, max_request_pixels=10**9, max_decode_bytes=0)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
to_batch([data], pre, limits)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
print(decode_cost(open_image(data, limits)), peak)
"""


def calibrate(_args: argparse.Namespace) -> None:
    print("| format | mode | budget reserves | measured peak | reserve / peak |")
    print("|---|---|---|---|---|")
    for mode, fmt in CASES:
        with tempfile.NamedTemporaryFile(suffix=f".{fmt.lower()}") as f:
            Image.new(mode, (6300, 6300)).save(f, format=fmt)
            f.flush()
            out = subprocess.run([sys.executable, "-c", _PROBE, f.name], capture_output=True, text=True, check=True)
        cost, peak = (int(v) for v in out.stdout.split())
        print(f"| {fmt} | {mode} | {cost / MB:.0f} MB | {peak / MB:.0f} MB | {cost / peak:.2f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    a = sub.add_parser("attack", help="peak memory of the server under concurrent bombs, budget off and on")
    a.add_argument("--model-dir", default="runs/demo")
    a.add_argument("--concurrency", type=int, default=16)
    a.add_argument("--waves", type=int, default=3)
    a.add_argument("--budgets", default="1024,512", help="--max-decode-mb settings to compare with no budget")
    a.set_defaults(run=attack)
    c = sub.add_parser("calibrate", help="decode cost reserved vs measured peak, per format and mode")
    c.set_defaults(run=calibrate)
    args = ap.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
