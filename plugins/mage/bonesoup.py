"""Bone Soup (Xie et al. 2025): backbones trained on mixed rewards, merged by c = diag(k) (B^T)^-1 mu.

Backbone j is trained on the scalarised reward sum_i B_ji r_i, with B = b I + (1 - b)/(m - 1) (J - I).
If a backbone's LoRA delta is linear in its reward weights, theta_j = sum_i B_ji tau_i (tau_i: the
delta of objective i alone), so tau = B^-1 theta and sum_i mu_i tau_i = sum_j [(B^T)^-1 mu]_j theta_j.
k_j (default 1) rescales backbone j's delta toward the reference policy (k_j < 1 shrinks it), as in Bone Soups.
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
    """Merge coefficients of the backbones for preference mu: c_j = k_j [(B^T)^-1 mu]_j."""
    import numpy as np

    mu = np.asarray([float(x) for x in mu])
    matrix = np.asarray(mixing_matrix(len(mu), b))
    c = np.linalg.solve(matrix.T, mu)
    if k is not None:
        if len(k) != len(mu):
            raise MobenchError(f"{len(k)} rescaling factors k for {len(mu)} backbones")
        c = c * np.asarray([float(x) for x in k])
    return [float(x) for x in c]


def train_backbones(policy: str, objectives: Sequence[Objective], normalisation: dict[str, Normalisation], b: float,
                    prompts: Sequence[str], budget: "RlBudget", context: RunContext | None = None) -> list[Path]:
    """The m backbone LoRA policies (MORLHF/RLOO on row j of B), each a cached artifact shared with morlhf.

    ``prompts`` are the RL training prompts and ``budget`` the RL budget (morlhf's, for a shared cache).
    """
    from mobench.training import train_rl_policy

    rows = mixing_matrix(len(objectives), b)
    return [Path(train_rl_policy(policy, list(objectives), normalisation, row, list(prompts), budget, context)) for row in rows]
