"""Screenshots of a run's TensorBoard as a person sees it: TensorBoard serves the run's logs on 127.0.0.1, and
headless Chromium (Debian's `chromium` package) captures each dashboard as a PNG.

    python -m ds_train demo --steps 100 --output-dir runs/demo
    python -m benchmarks.tensorboard_screenshots runs/demo/run/tensorboard --out runs/screenshots

Needs `apt-get install -y chromium`. Nothing leaves the machine: TensorBoard listens on 127.0.0.1 only and Chromium
runs with networking features off and a fresh profile.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

DASHBOARDS = ("timeseries", "scalars", "custom_scalars", "images", "audio", "text", "hparams")
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars")  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_serving(url: str, seconds: float = 60.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit(f"error: TensorBoard did not answer at {url} within {seconds:.0f} s")


def screenshot(chromium: str, url: str, png: Path, size: str, wait_ms: int) -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={size}",
                        f"--virtual-time-budget={wait_ms}", f"--screenshot={png}", url],
                       check=True, capture_output=True, timeout=120)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("logdir")
    parser.add_argument("--out", default="runs/screenshots")
    parser.add_argument("--size", default="1600,1400", help="browser window, width,height in pixels")
    parser.add_argument("--wait-ms", type=int, default=20000, help="page time allowed to load and draw")
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("error: chromium not found; install it with `apt-get install -y chromium`")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", args.logdir, "--host", "127.0.0.1",
                               "--port", str(port), "--load_fast=false"],  # fmt: skip
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}/"
        wait_until_serving(base)
        for name in DASHBOARDS:
            started = time.perf_counter()
            screenshot(chromium, f"{base}#{name}", out / f"{name}.png", args.size, args.wait_ms)
            print(f"{out / f'{name}.png'} ({time.perf_counter() - started:.1f} s)")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
