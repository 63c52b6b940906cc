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


def machine() -> dict[str, Any]:
    """CPU, memory and GPU of this machine."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": platform.machine(),
        "cpu_count": os.cpu_count(),
    }
    try:
        import psutil

        info["memory_gib"] = round(psutil.virtual_memory().total / 2**30, 1)
    except ImportError:
        pass
    try:
        import torch

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
