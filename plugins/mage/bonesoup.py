"""Bone Soup (Xie et al. 2025): backbones trained on mixed rewards, merged by c = (B^T)^-1 diag(k) mu.

Backbone j is trained on the scalarised reward sum_i B_ji r_i, with B = b I + (1 - b)/(m - 1) (J - I).
If a backbone's LoRA delta is linear in its reward weights, theta_j = sum_i B_ji tau_i (tau_i: the
delta of objective i alone), so tau = B^-1 theta and tau_i = sum_j [(B^T)^-1 e_i]_j theta_j.

Rescaling, as in the reference code (andyclsr/BoneSoups, ppo/BoneSoups.py): objective i's solved
combination is extrapolated away from the SFT (here: reference) policy by k_i = 1/(1 - a_i) >= 1,
    model_i = k_i sum_j [(B^T)^-1 e_i]_j theta_j^full + (1 - k_i) theta_sft,
and the preference mixes these: weights x = (B^T)^-1 diag(k) mu on the backbones and sum_i (1 - k_i) mu_i
on theta_sft. The weights sum to 1 (B's rows do), so in LoRA-delta form (every backbone is theta_sft plus
its delta) the merge is theta_sft + sum_j c_j delta_j with c = (B^T)^-1 diag(k) mu: the (1 - k) weight on
theta_sft is the part of the delta that is not added. k = 1 is the plain solve; k_i > 1 pushes objective i
further from the reference. The reference picks k_i from a in {0.1, ..., 0.5} (k in [1.11, 2]) as the one
whose merge at mu = e_i gets the highest mean reward i on a validation split: :func:`choose_k` does the
same on the task's validation prompts (never its evaluation prompts). It is MAGE's option k_rule=search, not
its default (k = 1): the rule scores each k at one corner only, so it favours the largest k wherever an objective
rewards going further, whatever that does to the trade-off; on validation prompts its base's hypervolume was
lower than k = 1's on both tasks (README, "Tuning").
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from mobench.api import MobenchError, Normalisation, Objective, RunContext

if TYPE_CHECKING:
    from mobench.training import RlBudget


def mixing_matrix(m: int, b: float) -> list[list[float]]:
    """B = b I + (1 - b)/(m - 1) (J - I): row j is backbone j's reward weights (on the simplex)."""
    if m < 2:
        raise MobenchError(f"Bone Soup needs at least 2 objectives, got {m}")
    b = float(b)
    # b = 1/m makes every row equal (B singular); below it the backbones' roles swap. Keep b in (1/m, 1].
    if not (1.0 / m < b <= 1.0):
        raise MobenchError(f"Bone-Soup mixing b={b:g} must lie in (1/m, 1] = ({1.0 / m:g}, 1]")
    off = (1.0 - b) / (m - 1)
    return [[b if i == j else off for i in range(m)] for j in range(m)]


def bone_soup_coefficients(mu: Sequence[float], b: float, k: Sequence[float] | None = None) -> list[float]:
    """Merge coefficients of the backbones' deltas for preference mu: c = (B^T)^-1 diag(k) mu (k None: all 1).

    ``k`` has one factor per objective (k_i scales objective i's solved combination, as in the reference).
    """
    import numpy as np

    mu = np.asarray([float(x) for x in mu])
    if k is not None:
        if len(k) != len(mu):
            raise MobenchError(f"{len(k)} rescaling factors k for {len(mu)} objectives")
        mu = mu * np.asarray([float(x) for x in k])
    matrix = np.asarray(mixing_matrix(len(mu), b))
    return [float(x) for x in np.linalg.solve(matrix.T, mu)]


def train_backbones(policy: str, objectives: Sequence[Objective], normalisation: dict[str, Normalisation], b: float,
                    prompts: Sequence[str], budget: "RlBudget", context: RunContext | None = None) -> list[Path]:
    """The m backbone LoRA policies (MORLHF/RLOO on row j of B), each a cached artifact shared with morlhf.

    ``prompts`` are the RL training prompts and ``budget`` the RL budget (morlhf's, for a shared cache).
    """
    from mobench.training import train_rl_policy

    rows = mixing_matrix(len(objectives), b)
    return [Path(train_rl_policy(policy, list(objectives), normalisation, row, list(prompts), budget, context)) for row in rows]


K_KIND = "bonesoup-k"
A_GRID = (0.1, 0.2, 0.3, 0.4, 0.5)  # the reference's a candidates: k = 1/(1 - a) in [1.11, 2]


def k_grid() -> list[float]:
    """The reference's k candidates 1/(1 - a), a in A_GRID."""
    return [1.0 / (1.0 - a) for a in A_GRID]


def spread(prompts: Sequence[str], n: int) -> list[str]:
    """``n`` prompts evenly spaced over ``prompts`` (all of them when n >= len): both halves of a two-part list."""
    prompts = list(prompts)
    if n >= len(prompts):
        return prompts
    return [prompts[i * len(prompts) // n] for i in range(n)]


def choose_k(model, tokenizer, backbones: Sequence[str], objectives: Sequence[Objective],
             normalisation: dict[str, Normalisation], prompts: Sequence[str], b: float, generation, seed: int = 0,
             key: dict | None = None) -> dict:
    """The reference's rule for k: for each objective i, the k in :func:`k_grid` whose Bone-Soup base at mu = e_i
    (c = k (B^T)^-1 e_i, only k_i matters there) gets the highest mean z_i on ``prompts`` (ties: the smaller k).

    ``model`` is a PeftModel holding the ``backbones`` adapters; ``prompts`` must be validation prompts (never
    the evaluation prompts). Greedy decoding at the task's ``generation`` (a Generation or dict). With ``key``
    (what determines the choice besides the code) the result is cached as an artifact. Returns
    {"k": [...], "grid": [...], "mean_z": {objective: [mean z per grid k]}, "n_prompts": n}.
    """
    import json

    if key is None:
        return _search_k(model, tokenizer, backbones, objectives, normalisation, prompts, b, generation, seed)
    from mobench.artifacts import get_or_build

    def build(out: Path) -> None:
        found = _search_k(model, tokenizer, backbones, objectives, normalisation, prompts, b, generation, seed)
        (out / "k.json").write_text(json.dumps(found, indent=2))

    return json.loads((get_or_build(K_KIND, key, build) / "k.json").read_text())


def _search_k(model, tokenizer, backbones, objectives, normalisation, prompts, b, generation, seed) -> dict:
    import torch

    from mobench.api import Generation
    from mobench.decoding import DecodeSettings, decode

    from .guidance import MergedScorer

    m, grid, prompts = len(objectives), k_grid(), list(prompts)
    if not prompts:
        raise MobenchError("the Bone-Soup k search needs validation prompts")
    settings = DecodeSettings.from_generation(Generation.of(generation), seed)
    settings.do_sample = False  # the search compares means: greedy, so a k's score is no sampling noise
    scorer = MergedScorer(model, list(backbones), "bone-soup")
    rows = []  # (objective, k, prompt, coefficients): every (i, k) on every prompt, batched together
    for i in range(m):
        e = [1.0 if j == i else 0.0 for j in range(m)]
        for k in grid:
            c = bone_soup_coefficients(e, b, [k if j == i else 1.0 for j in range(m)])
            rows += [(i, k, p, c) for p in prompts]
    texts: list[str] = []
    for start in range(0, len(rows), settings.batch_size):
        chunk = rows[start : start + settings.batch_size]
        scorer.coefficients = torch.tensor([r[3] for r in chunk], dtype=torch.float32, device=model.device)
        step = DecodeSettings(settings.max_new_tokens, False, 1.0, len(chunk), settings.seed + start)
        texts += decode([scorer], lambda lps, w: lps[0], tokenizer, [r[2] for r in chunk], [[1.0]] * len(chunk), step)
    mean_z: dict[str, list[float]] = {}
    chosen = []
    for i, objective in enumerate(objectives):
        norm = normalisation[objective.name]
        means = []
        for k in grid:
            picked = [(r[2], t) for r, t in zip(rows, texts) if r[0] == i and r[1] == k]
            scores = objective.score([p for p, _ in picked], [t for _, t in picked])
            means.append(sum(norm.apply(float(s), objective.direction) for s in scores) / len(scores))
        mean_z[objective.name] = means
        chosen.append(grid[max(range(len(grid)), key=lambda j: (means[j], -j))])
    return {"k": chosen, "grid": grid, "mean_z": mean_z, "n_prompts": len(prompts)}
