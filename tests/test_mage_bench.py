"""bench/mage.py on the micro model: each chosen variant decodes the fixed number of tokens and the ratios are
those of the variants' own tokens/s (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_reports_folded_and_per_row_mage_against_generate():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "mage.py"), "--model", "micro", "--batch", "2",
                           "--max-new-tokens", "3", "--variants", "generate,mage,mage-per-row"], capture_output=True,
                          text=True, timeout=1800)  # a hang guard, not a speed limit
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    speed = {r["variant"]: r["tokens_per_s"] for r in out["results"]}
    assert list(speed) == ["generate", "mage", "mage-per-row"]
    assert all(r["tokens"] == 2 * 3 and r["seconds"] > 0 for r in out["results"])
    assert out["ratios"]["mage_vs_mage-per-row"] == round(speed["mage"] / speed["mage-per-row"], 3)
    assert out["ratios"]["mage_vs_generate"] == round(speed["mage"] / speed["generate"], 3)


def test_bench_names_an_unknown_variant():
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "mage.py"), "--variants", "mage,warp"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0 and "unknown variant(s) warp" in proc.stderr
