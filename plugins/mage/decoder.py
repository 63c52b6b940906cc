"""MageDecoder: assembles MAGE's scorers on one PeftModel and decodes (prompt, preference) rows in batches."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

from mobench.api import Generation, MobenchError, Preference, Progress

if TYPE_CHECKING:
    from . import MageOptions


class MageDecoder:
    """Guided decoding over a PeftModel holding backbone (bone*), DPO (dpo*) and value (value*) adapters."""

    def __init__(self, model, tokenizer, settings: "MageOptions", backbones: Sequence[str] = (),
                 experts: Sequence[str] = (), values: Sequence[str] = (), heads=None, k: Sequence[float] | None = None,
                 eos: Sequence[int] | None = None):
        """``settings``: MAGE's options (switches and constants; beta is ``settings.experts.beta``).

        ``k``: the Bone-Soup rescaling (default ``settings.k``; None: all 1); ``eos``: the ids always added to
        the candidates (default: the model's end-of-sequence ids, :func:`mobench.decoding.eos_ids`).
        """
        from mobench.decoding import eos_ids

        from .guidance import MergedScorer, ValueScorer, mage_combiner

        settings.check_all()
        self.model, self.tokenizer, self.settings = model, tokenizer, settings
        self.k = settings.k if k is None else tuple(float(x) for x in k)
        self.eos = list(eos) if eos is not None else (eos_ids(model, tokenizer) if model is not None else [])
        self.backbones, self.experts, self.values = list(backbones), list(experts), list(values)
        if settings.base == "bonesoup" and not self.backbones:
            raise MobenchError("a Bone-Soup base needs backbone adapters")
        if settings.uses_implicit and not self.experts:
            raise MobenchError("implicit guidance needs the per-objective DPO experts")
        if settings.uses_explicit and (not self.values or heads is None):
            raise MobenchError("explicit guidance needs the per-objective value models and their heads")
        ensemble = settings.proxy == "ensemble"
        fold = bool(settings.chunk_merge)
        self.base = MergedScorer(model, self.backbones if settings.base == "bonesoup" else [], "base", fold=fold)
        self.scorers, layout = [self.base], {"base": 0, "ref": None, "ensemble": ensemble}
        self.roles: list[str] = ["bone-soup"]  # how each scorer's per-row coefficients are set
        if settings.uses_implicit and settings.base == "bonesoup":
            self._add(MergedScorer(model, [], "reference"), "none")
            layout["ref"] = len(self.scorers) - 1
        if settings.uses_implicit:
            groups = [[e] for e in self.experts] if ensemble else [self.experts]
            layout["implicit"] = []
            for group in groups:
                self._add(MergedScorer(model, group, "+".join(group), fold=fold), "one" if ensemble else "mu")
                layout["implicit"].append(len(self.scorers) - 1)
        if settings.uses_explicit:
            weight, bias = heads
            groups = [[i] for i in range(len(self.values))] if ensemble else [list(range(len(self.values)))]
            layout["explicit"] = []
            for group in groups:
                names = [self.values[i] for i in group]
                scorer = ValueScorer(model, names, (weight[group], bias[group]), self.base, settings.top_k, rule=settings.candidates,
                                     eos=self.eos, fold=fold)
                self._add(scorer, "one" if ensemble else "mu")
                layout["explicit"].append(len(self.scorers) - 1)
        self.layout = layout
        self.combiner = mage_combiner(layout, int(settings.top_k), float(settings.alpha), settings.w_implicit,
                                      settings.w_explicit, float(settings.experts.beta), rule=settings.candidates,
                                      top_p=float(settings.top_p), eos=self.eos)

    def _add(self, scorer, role: str) -> None:
        self.scorers.append(scorer)
        self.roles.append(role)

    def _set_rows(self, mus) -> None:
        import torch

        from .bonesoup import bone_soup_coefficients

        device = self.model.device
        for scorer, role in zip(self.scorers, self.roles):
            if role == "bone-soup":
                c = [bone_soup_coefficients(mu, self.settings.b, self.k) for mu in mus] if scorer.adapters else None
                scorer.coefficients = torch.tensor(c, dtype=torch.float32, device=device) if c else None
            elif role == "mu":
                scorer.coefficients = torch.tensor(mus, dtype=torch.float32, device=device)
            elif role == "one":
                scorer.coefficients = torch.ones(len(mus), 1, device=device)
            else:
                scorer.coefficients = None

    def generate(self, prompts: Sequence[str], preferences: Sequence[Preference], generation: Generation | dict, seed: int = 0,
                 progress: Progress | None = None, eos_token_ids: Sequence[int] | None = None) -> list[list[str]]:
        """Responses per preference (in order), each one per prompt; all (prompt, preference) rows batched.

        ``generation``: the task's decoding settings (a dict of some of its fields is completed by its defaults);
        ``eos_token_ids`` (default: the model's) end a row; [-1] never ends one (fixed-length runs for bench/).
        """
        from mobench.decoding import DecodeSettings, decode

        settings = DecodeSettings.from_generation(Generation.of(generation), seed)
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
            chunk_settings = DecodeSettings(settings.max_new_tokens, settings.do_sample, settings.temperature, len(chunk),
                                            settings.seed + start, settings.top_p)
            texts.extend(decode(self.scorers, self.combiner, self.tokenizer, [p for p, _ in chunk], [mu for _, mu in chunk], chunk_settings,
                                eos_token_ids))
            if bar is not None:
                bar.advance(len(chunk))
        if bar is not None:
            bar.close()
        n = len(prompts)
        return [texts[i * n : (i + 1) * n] for i in range(len(preferences))]
