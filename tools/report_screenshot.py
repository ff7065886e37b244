"""The report screenshot in docs/: an auto-mode run on the bundled ResNet, rendered by Chromium.

    python tools/report_screenshot.py

Runs `onnx-compress compress models/resnet_small.onnx --scheme channel_pruning --target 0.5
--quantize int8 --report ...`, then headless Chromium renders the report to
docs/report.png (and the page itself to docs/report_example.html). Needs Chromium
(apt-get install chromium). Not run by CI.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


def main() -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        sys.exit("Chromium is not installed: apt-get install chromium")
    docs = ROOT / "docs"
    with tempfile.TemporaryDirectory() as tmp:
        page = docs / "report_example.html"
        (ROOT / "out").mkdir(exist_ok=True)
        subprocess.run([sys.executable, "-m", "onnx_compress.cli", "-q", "compress", "models/resnet_small.onnx",
                        "-o", "out/resnet_auto_int8.onnx", "--scheme", "channel_pruning", "--target", "0.5",
                        "--data", "models/digits32_calib.npz", "--eval-data", "models/digits32_test.npz",
                        "--samples", "500", "--quantize", "int8", "--report", "docs/report_example.html"], cwd=ROOT, check=True)
        subprocess.run([browser, *FLAGS, f"--user-data-dir={tmp}/profile", "--window-size=1200,3300",
                        f"--screenshot={docs / 'report.png'}", page.as_uri()], check=True, capture_output=True)
    print(f"wrote {page} and {docs / 'report.png'}")


if __name__ == "__main__":
    main()
