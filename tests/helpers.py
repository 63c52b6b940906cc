"""Helpers for running the real `mobench` command line in tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TOY = Path(__file__).resolve().parent / "toy"


def mobench(*args: str, env: dict | None = None, check: bool = False, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m mobench.cli ARGS`` in a subprocess and return the completed process."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "mobench.cli", *args], capture_output=True, text=True, env=full_env, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"mobench {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


# The device the method tests train and decode on: cpu (CI has no GPU) unless MOBENCH_TEST_DEVICE names another,
# e.g. `MOBENCH_TEST_DEVICE=cuda python -m pytest -m "not slow"` on a GPU machine checks every method's CUDA path.
TEST_DEVICE = os.environ.get("MOBENCH_TEST_DEVICE", "cpu")
# The tests check formulas and identities (a one-hot soup is the expert, batched margins equal one-by-one ones), which
# hold exactly in float32 only: the method tests pin it, also on CUDA, where the run's default would be bf16.
TEST_DTYPE = os.environ.get("MOBENCH_TEST_DTYPE", "float32")
