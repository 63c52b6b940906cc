"""bench/mage_profile.py on the micro model: every MAGE scorer is timed, prefills apart, inside the run's total.

No timing is asserted: the figures are checked for what they cover (each scorer of the merged-proxy decoder, the
combiner, one prefill per scorer) and for the one exact relation between them, that the timed parts are disjoint
sub-intervals of the timed generate.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_profile_times_each_scorer_within_the_generate():
    steps = 2
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "mage_profile.py"), "--model", "micro", "--batch", "2",
                           "--max-new-tokens", str(steps), "--rows", "3", "--repeat", "2"], capture_output=True, text=True,
                          timeout=1800)  # a hang guard, not a speed limit
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    scorers = {"base", "reference", "dpo_a+dpo_b", "value"}  # base, the reference (implicit), merged DPO, merged value
    assert set(out["per_step_ms"]) == scorers | {"combiner"}
    assert set(out["prefill_ms"]) == {f"{name} prefill" for name in scorers}
    assert (out["device"], out["batch"], out["max_new_tokens"], out["kernel_launches_per_step"]) == ("cpu", 2, steps, None)
    assert out["plain_forward_ms"] > 0 and out["lora2_forward_ms"] > 0 and out["lora2_folded_forward_ms"] > 0
    timed = sum(out["per_step_ms"].values()) + sum(out["prefill_ms"].values()) / steps  # ms per step, rounded to 0.01
    assert timed <= out["guided_ms_per_new_token"] + 0.01 * (len(scorers) * 2 + 1)
    assert "Self CPU" in proc.stderr  # the profiler's operator table
