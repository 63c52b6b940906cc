"""How a result was made: library versions, git revision and machine, for every manifest."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from mobench.artifacts import library_versions

TRACKED = ("mobench", "torch", "transformers", "trl", "peft", "datasets", "pymoo", "pluggy", "numpy")


def git_revision() -> str | None:
    """The git commit of the mobench checkout (with ``-dirty`` if modified), or None outside git."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{rev}-dirty" if dirty else rev


def cpu_model() -> str | None:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else :func:`platform.processor`); None when unknown."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name") and ":" in line:
                    return line.split(":", 1)[1].strip() or None
    except OSError:
        pass
    return platform.processor() or None


def machine() -> dict[str, Any]:
    """CPU, memory and GPU of this machine."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
    }
    try:
        import psutil

        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    try:
        import torch

        # The kernels torch picked for this CPU (e.g. AVX2 or AVX512) and its threads: both change the last float
        # digits of a matmul, so a greedy near-tie can decode differently on another host with the same code.
        info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        else:
            info["gpu"] = None
    except ImportError:
        info["gpu"] = None
    return info


def versions() -> dict[str, str]:
    """Versions of mobench and the libraries whose behaviour shapes a result."""
    return library_versions(*TRACKED)


# An objective's provenance names how a text is scored (scorer, model, features, the empty-reply floor, a
# third party's own fields) and, beside that, where its files lie and how well it did on held-out data. Runs
# whose scoring rule differs get different run ids and are not ranked together; these fields are left out of
# the rule (paths differ between machines, evaluation statistics are reports, not the rule).
NOT_SCORING_FIELDS = frozenset({"artifact", "data", "heldout_accuracy", "n_train", "n_heldout",
                                "length_baseline_accuracy", "length_baseline_rule"})


def scoring_rule_of(provenance: Any) -> dict[str, Any] | None:
    """Per objective, its provenance without :data:`NOT_SCORING_FIELDS` (floats to 6 significant digits, so
    that float noise between machines does not split runs); None when there is no such mapping."""
    if not isinstance(provenance, dict):
        return None

    def rounded(value: Any) -> Any:
        if isinstance(value, float):
            return float(f"{value:.6g}")
        if isinstance(value, dict):
            return {k: rounded(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [rounded(v) for v in value]
        return value

    return {name: rounded({k: v for k, v in prov.items() if k not in NOT_SCORING_FIELDS})
            for name, prov in sorted(provenance.items()) if isinstance(prov, dict)}
