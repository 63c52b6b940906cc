"""The guided loop over a whole preference grid: every (prompt, grid point) row decoded in shared batches."""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

from mobench.api import Generation, Preference, RunContext
from mobench.decoding.loop import Combiner, DecodeSettings, ModelScorer, decode


def decode_grid(scorers: Sequence[ModelScorer], combiner: Combiner, tokenizer, prompts: Sequence[str],
                preferences: Sequence[Preference], generation: Generation, context: RunContext, max_rows: int,
                description: str) -> list[list[str]]:
    """For each preference in order, one response per prompt, all decoded by :func:`decode` under the task's settings.

    Rows are prompt-major and a batch holds ``generation.batch_size`` prompts at every grid point (at most
    ``max_rows`` rows), so a batch's rows share prompts: little padding, and scorers that copy cache rows
    prefill each prompt once for all its grid points.
    """
    settings = DecodeSettings.from_generation(generation, context.seed)
    settings = replace(settings, batch_size=max(1, min(int(max_rows), settings.batch_size * len(preferences))))
    rows = [(i, j) for i in range(len(prompts)) for j in range(len(preferences))]
    texts = decode(
        scorers,
        combiner,
        tokenizer,
        [prompts[i] for i, _ in rows],
        [preferences[j].weights for _, j in rows],
        settings,
        progress=context.progress,
        description=f"{description} ({len(preferences)} grid points x {len(prompts)} prompts)",
    )
    out = [[""] * len(prompts) for _ in preferences]
    for (i, j), text in zip(rows, texts):
        out[j][i] = text
    return out
