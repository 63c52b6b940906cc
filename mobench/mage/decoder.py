"""MageDecoder: assembles MAGE's scorers on one PeftModel and decodes (prompt, preference) rows in batches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from mobench.api import MobenchError, Preference, Progress

GUIDANCE = ("both", "implicit", "explicit")
PROXY = ("merged", "ensemble")
BASE = ("bonesoup", "reference")


@dataclass
class MageSettings:
    """MAGE's knobs: ablation switches and the guidance constants (see plugins/mage.py for the formula)."""

    guidance: str = "both"
    proxy: str = "merged"
    base: str = "bonesoup"
    b: float = 0.7
    k: tuple[float, ...] | None = None
    alpha: float = 1.0
    top_k: int = 8
    beta: float = 0.1
    implicit_weight: float | None = None  # None: 1/beta, so the implicit term is the log-ratio itself
    explicit_weight: float = 1.0

    def check(self) -> None:
        for name, value, allowed in (("guidance", self.guidance, GUIDANCE), ("proxy", self.proxy, PROXY), ("base", self.base, BASE)):
            if value not in allowed:
                raise MobenchError(f"mage option {name}={value!r}: choose one of {', '.join(allowed)}")
        if int(self.top_k) < 1:
            raise MobenchError(f"mage top_k must be >= 1, got {self.top_k}")
        if self.beta <= 0:
            raise MobenchError(f"mage beta must be > 0, got {self.beta}")

    @property
    def uses_implicit(self) -> bool:
        return self.guidance in ("both", "implicit")

    @property
    def uses_explicit(self) -> bool:
        return self.guidance in ("both", "explicit")

    @property
    def w_implicit(self) -> float:
        return (1.0 / self.beta if self.implicit_weight is None else float(self.implicit_weight)) if self.uses_implicit else 0.0

    @property
    def w_explicit(self) -> float:
        return float(self.explicit_weight) if self.uses_explicit else 0.0


class MageDecoder:
    """Guided decoding over a PeftModel holding backbone (bone*), DPO (dpo*) and value (value*) adapters."""

    def __init__(self, model, tokenizer, settings: MageSettings, backbones: Sequence[str] = (),
                 experts: Sequence[str] = (), values: Sequence[str] = (), heads=None):
        from mobench.mage.guidance import MergedScorer, ValueScorer, mage_combiner

        settings.check()
        self.model, self.tokenizer, self.settings = model, tokenizer, settings
        self.backbones, self.experts, self.values = list(backbones), list(experts), list(values)
        if settings.base == "bonesoup" and not self.backbones:
            raise MobenchError("a Bone-Soup base needs backbone adapters")
        if settings.uses_implicit and not self.experts:
            raise MobenchError("implicit guidance needs the per-objective DPO experts")
        if settings.uses_explicit and (not self.values or heads is None):
            raise MobenchError("explicit guidance needs the per-objective value models and their heads")
        ensemble = settings.proxy == "ensemble"
        self.base = MergedScorer(model, self.backbones if settings.base == "bonesoup" else [], "base")
        self.scorers, layout = [self.base], {"base": 0, "ref": None, "ensemble": ensemble}
        self.roles: list[str] = ["bone-soup"]  # how each scorer's per-row coefficients are set
        if settings.uses_implicit and settings.base == "bonesoup":
            self._add(MergedScorer(model, [], "reference"), "none")
            layout["ref"] = len(self.scorers) - 1
        if settings.uses_implicit:
            groups = [[e] for e in self.experts] if ensemble else [self.experts]
            layout["implicit"] = []
            for group in groups:
                self._add(MergedScorer(model, group, "+".join(group)), "one" if ensemble else "mu")
                layout["implicit"].append(len(self.scorers) - 1)
        if settings.uses_explicit:
            weight, bias = heads
            groups = [[i] for i in range(len(self.values))] if ensemble else [list(range(len(self.values)))]
            layout["explicit"] = []
            for group in groups:
                names = [self.values[i] for i in group]
                self._add(ValueScorer(model, names, (weight[group], bias[group]), self.base, settings.top_k), "one" if ensemble else "mu")
                layout["explicit"].append(len(self.scorers) - 1)
        self.layout = layout
        self.combiner = mage_combiner(layout, int(settings.top_k), float(settings.alpha),
                                      settings.w_implicit, settings.w_explicit, float(settings.beta))

    def _add(self, scorer, role: str) -> None:
        self.scorers.append(scorer)
        self.roles.append(role)

    def _set_rows(self, mus) -> None:
        import torch

        from mobench.bonesoup import bone_soup_coefficients

        device = self.model.device
        for scorer, role in zip(self.scorers, self.roles):
            if role == "bone-soup":
                c = [bone_soup_coefficients(mu, self.settings.b, self.settings.k) for mu in mus] if scorer.adapters else None
                scorer.coefficients = torch.tensor(c, dtype=torch.float32, device=device) if c else None
            elif role == "mu":
                scorer.coefficients = torch.tensor(mus, dtype=torch.float32, device=device)
            elif role == "one":
                scorer.coefficients = torch.ones(len(mus), 1, device=device)
            else:
                scorer.coefficients = None

    def generate(self, prompts: Sequence[str], preferences: Sequence[Preference], generation: dict, seed: int = 0,
                 progress: Progress | None = None, eos_token_ids: Sequence[int] | None = None) -> list[list[str]]:
        """Responses per preference (in order), each one per prompt; all (prompt, preference) rows batched.

        ``eos_token_ids`` (default: the model's) end a row; [-1] never ends one (fixed-length runs for bench/).
        """
        from mobench.decoding.loop import DecodeSettings, decode

        settings = DecodeSettings.from_task(generation, seed)
        rows = [(p, tuple(pref.weights)) for pref in preferences for p in prompts]
        for _, mu in rows:
            if len(mu) != max(len(self.backbones), len(self.experts), len(self.values)):
                raise MobenchError(f"preference {list(mu)} does not match the {len(self.experts or self.values)} objectives")
        texts: list[str] = []
        bar = progress.step("MAGE guided decoding", total=len(rows)) if progress is not None else None
        for start in range(0, len(rows), settings.batch_size):
            chunk = rows[start : start + settings.batch_size]
            self._set_rows([mu for _, mu in chunk])
            # One loop call per chunk: its rows' coefficients are fixed for the chunk; seeded per chunk.
            chunk_settings = DecodeSettings(settings.max_new_tokens, settings.do_sample, settings.temperature, len(chunk), settings.seed + start)
            texts.extend(decode(self.scorers, self.combiner, self.tokenizer, [p for p, _ in chunk], [mu for _, mu in chunk], chunk_settings,
                                eos_token_ids))
            if bar is not None:
                bar.advance(len(chunk))
        if bar is not None:
            bar.close()
        n = len(prompts)
        return [texts[i * n : (i + 1) * n] for i in range(len(preferences))]
