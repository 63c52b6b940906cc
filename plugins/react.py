"""ReACT (Wu et al., "From Parameter to Representation: A Closed-Form Approach for Controllable Model Merging",
arXiv 2511.10943): correct the merged model's final representation by a per-objective linear map fitted in
closed form, and mix the maps by the preference.

Backbone: the uniform exact LoRA soup of the m per-objective DPO experts (the Rewarded-Soups merge at
w = (1/m, ..., 1/m); the experts are the shared cached ones). h is the final-norm output that feeds the
(tied) LM head E; ReACT decodes with logits = E W_p h. Calibration, per objective t: the prompt + chosen
response of held-out pairs (``calibration_pairs`` of them, right after the ``experts.n_pairs`` the experts
trained on) teacher-forced through the backbone (Z_t, one column per position) and through expert t (Z*_t).
With n_t positions, G_t = Z_t Z_t^T / n_t, X_t = Z*_t Z_t^T / n_t and the ridge lam = beta * s:

    O_t = U V^T from the SVD U S V^T of X_t        (orthogonal Procrustes: argmin ||O Z_t - Z*_t|| over orthogonal O)
    C_t = G_t + lam I,   N_t = X_t + lam O_t,   W_t = N_t C_t^-1
    W_p = (sum_t p_t W_t C_t)(sum_t p_t C_t)^-1 = (sum_t p_t N_t)(sum_t p_t C_t)^-1

W_p minimises the scalarised loss sum_t p_t (||W Z_t - Z*_t||^2 / n_t + lam ||W - O_t||^2), so p = e_t gives
W_t (computed by the very same solve, hence bit-identical) and the cost is linear in m.

Where mobench departs from the notation of the issue (the paper's code is not public):
- The statistics are per-position means (Z Z^T / n_t, not Z Z^T), so an objective's weight in the mix is
  p_t, not p_t times its number of calibration tokens.
- beta is relative: lam = beta * s with s = mean_t trace(G_t) / d, the mean squared coordinate of h. One
  lam for every objective, so beta -> inf gives W_p -> sum_t p_t O_t.
- The default beta = 1e-4 was chosen on the tasks' VALIDATION prompts (never the evaluation prompts) with
  ``bench/validation_sweep.py --method react --set beta=...`` over 1e-5 ... 1 on hh and summarize (tiny,
  16 validation prompts, 5-point grid): hh is best at beta <= 1e-4 (1e-4 and 1e-5 decode identically;
  0.1, the first default, is 1.57 HV lower, and 1.43 [0.01, 2.88] below 1e-3 in one paired bootstrap),
  summarize at 0.01, with 1e-4 0.41 HV below it;
  1e-4 has the smallest worst-task shortfall from each task's best (0.41, against 0.61 for 1e-3 and 0.78
  for 0.01). A task's own best comes from the same sweep and ``-o beta=...``.
- Positions (``positions``): "completion" (default) keeps the positions whose next token is a response
  token (the prompt's last token to the response's second-to-last, EOS included as a predicted token): the
  positions decoding visits and DPO trained on. "all" keeps every position of prompt + response.
  Sequences are built as the experts' trainer builds them (prompt cut to its end, response + EOS, at
  most ``experts.max_length`` tokens).

Decoding: one backbone for every grid point. A scorer returns the backbone's h at the last position (its
KV cache shared by every grid point; a prompt's prefill is shared by all the rows that decode it), and the
combiner applies each row's W_p before the model's own output embedding, so rows with different
preferences decode in one batch. Greedy or sampled exactly as the task's generation settings say.

The calibration statistics are cached in the artifact cache (kind ``react-calibration``), keyed by the
experts' artifacts, the held-out pairs and the positions rule; a second prepare computes none. The
closed-form solve is written here (float64, ``torch.linalg.solve``, no explicit inverse): it is the
paper's formula, and no library has it. Procrustes is the SVD of X_t directly (scipy's
``orthogonal_procrustes`` wants Z_t and Z*_t themselves, which are not kept).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Sequence

from mobench import hookimpl
from mobench.api import MobenchError, Preference, PreferencePair
from mobench.decoding import ModelScorer
from mobench.options import Options, budget, option
from mobench.training import DpoBudget, ExpertsMethod

CALIBRATION_KIND = "react-calibration"
STATISTICS_FILE = "statistics.safetensors"
COUNTS_FILE = "counts.json"


@dataclass(frozen=True)
class ReactOptions(Options):
    """ReACT's options: the ridge toward the Procrustes rotation, the calibration data, decoding rows, experts."""

    beta: float = option(1e-4, "ridge toward the Procrustes rotation O_t, relative: lam = beta * mean_t trace(Z_t Z_t^T / n_t) / d "
                               "(1e-4: chosen on both tasks' validation prompts, see the module docstring)")
    calibration_pairs: int = option(64, "held-out pairs per objective (after the experts' n_pairs) teacher-forced for Z_t and Z*_t")
    positions: Literal["completion", "all"] = option("completion", "calibration positions: those predicting a response token, or all")
    calibration_batch: int = option(8, "sequences per calibration forward pass")
    max_rows: int = option(64, "rows (prompt x grid point) decoded per batch at most")
    experts: DpoBudget = budget(DpoBudget, "the per-objective LoRA DPO experts (shared with other methods through the cache)")

    PRESETS: ClassVar = {"tiny": {}, "paper": {"calibration_pairs": 512, "calibration_batch": 16}}

    def check(self) -> None:
        if not self.beta > 0:
            raise MobenchError(f"react beta must be positive, not {self.beta!r}")
        for name in ("calibration_pairs", "calibration_batch", "max_rows"):
            if getattr(self, name) < 1:
                raise MobenchError(f"react {name} must be >= 1, not {getattr(self, name)!r}")


# -- the closed form (float64) ----------------------------------------------------------------------------


def procrustes(cross):
    """U V^T from the SVD U S V^T of ``cross`` = Z* Z^T: the orthogonal O minimising ||O Z - Z*||_F."""
    import torch

    u, _, vh = torch.linalg.svd(cross)
    return u @ vh


def right_solve(numerator, denominator):
    """numerator @ denominator^-1 by a linear solve (``denominator`` symmetric positive definite)."""
    import torch

    # X D = N  <=>  D^T X^T = N^T, and D is symmetric
    return torch.linalg.solve(denominator, numerator.transpose(-1, -2)).transpose(-1, -2)


@dataclass
class ReactMaps:
    """Per-objective pieces of the closed form, stacked over objectives [m, d, d] in float64.

    ``C`` = G_t + lam I, ``N`` = X_t + lam O_t (= W_t C_t), ``O`` the Procrustes rotations, ``lam`` the ridge.
    """

    C: Any
    N: Any
    O: Any
    lam: float

    @classmethod
    def fit(cls, grams, crosses, beta: float) -> "ReactMaps":
        """The maps from G_t = Z_t Z_t^T / n_t and X_t = Z*_t Z_t^T / n_t ([m, d, d]) with lam = beta * mean trace(G_t) / d."""
        import torch

        grams, crosses = grams.double(), crosses.double()
        d = grams.shape[-1]
        scale = float(torch.diagonal(grams, dim1=-2, dim2=-1).sum(-1).mean()) / d
        if not scale > 0:
            raise MobenchError("react: the calibration representations are all zero; nothing to fit")
        lam = float(beta) * scale
        eye = torch.eye(d, dtype=grams.dtype, device=grams.device)
        rotations = procrustes(crosses)
        return cls(C=grams + lam * eye, N=crosses + lam * rotations, O=rotations, lam=lam)

    def mix(self, p):
        """W_p = (sum_t p_t N_t)(sum_t p_t C_t)^-1 for a weight vector ``p`` (length m)."""
        import torch

        p = torch.as_tensor(p, dtype=self.C.dtype, device=self.C.device).reshape(-1, 1, 1)
        if p.shape[0] != self.C.shape[0]:
            raise MobenchError(f"react: {p.shape[0]} weights for {self.C.shape[0]} objectives")
        return right_solve((p * self.N).sum(0), (p * self.C).sum(0))

    def expert_map(self, t: int):
        """W_t = N_t C_t^-1 (the same solve as :meth:`mix` at p = e_t)."""
        return right_solve(self.N[t], self.C[t])


# -- calibration --------------------------------------------------------------------------------------------


def calibration_pairs(objective: str, pairs: Sequence[PreferencePair], experts: DpoBudget, n: int) -> list[PreferencePair]:
    """The ``n`` pairs after the first ``experts.n_pairs`` (those the experts trained on); an error if too few."""
    held_out = list(pairs)[int(experts.n_pairs) : int(experts.n_pairs) + int(n)]
    if len(held_out) < n:
        raise MobenchError(
            f"react: objective {objective!r} has {len(pairs)} pairs; the experts train on {experts.n_pairs} and calibration "
            f"needs {n} more (lower -o calibration_pairs or -o experts.n_pairs)"
        )
    return held_out


def calibration_sequences(pairs: Sequence[PreferencePair], tokenizer, max_length: int, positions: str):
    """Per pair, (token ids of prompt + chosen + EOS, the kept positions): the experts' trainer's sequences."""
    from mobench.training import truncate_prompts

    eos = tokenizer.eos_token_id
    out = []
    for pair in truncate_prompts(pairs, tokenizer, max_length):
        prompt = tokenizer(pair.prompt, add_special_tokens=False)["input_ids"]
        response = tokenizer(pair.chosen, add_special_tokens=False)["input_ids"] + ([eos] if eos is not None else [])
        ids = (prompt + response)[:max_length]
        first = max(len(prompt) - 1, 0) if positions == "completion" else 0
        last = len(ids) - 1 if positions == "completion" else len(ids)  # exclusive: the last token predicts nothing in the data
        if last > first:
            out.append((ids, list(range(first, last))))
    return out


def final_hidden(model, adapter: str, input_ids, attention_mask):
    """The final-norm output h [rows, len, d] of ``model`` with ``adapter`` active (what the LM head reads)."""
    import torch

    if model.active_adapter != adapter:
        model.set_adapter(adapter)
    with torch.no_grad():
        return model.get_base_model().get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state


def representation_statistics(model, tokenizer, backbone: str, expert: str, sequences, batch: int):
    """(G, X, n): Z Z^T / n and Z* Z^T / n in float64 over the kept positions (backbone Z, expert Z*)."""
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    gram = cross = None
    count = 0
    for start in range(0, len(sequences), batch):
        chunk = sequences[start : start + batch]
        width = max(len(ids) for ids, _ in chunk)
        # right padding: every real token keeps its position without position ids
        ids = torch.tensor([s + [pad] * (width - len(s)) for s, _ in chunk], device=model.device)
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s, _ in chunk], device=model.device)
        rows = torch.tensor([r for r, (_, kept) in enumerate(chunk) for _ in kept], device=model.device)
        cols = torch.tensor([c for _, kept in chunk for c in kept], device=model.device)
        z = final_hidden(model, backbone, ids, mask)[rows, cols].double()
        z_star = final_hidden(model, expert, ids, mask)[rows, cols].double()
        gram = z.T @ z if gram is None else gram + z.T @ z
        cross = z_star.T @ z if cross is None else cross + z_star.T @ z
        count += len(cols)
    if not count:
        raise MobenchError("react: no calibration positions (responses empty?)")
    return gram / count, cross / count, count


# -- decoding -----------------------------------------------------------------------------------------------


class HiddenStateScorer(ModelScorer):
    """The backbone's final-norm output h at the last position [rows, d] (what the LM head reads), with its KV cache.

    It depends on the tokens alone (one backbone for every row), so it keeps ``select_rows``: a prompt's
    prefill is shared by every grid point that decodes it. The head is left to :class:`ReactCombiner`.
    """

    def __call__(self, input_ids, attention_mask, position_ids):
        import torch

        if self.model.active_adapter != self.adapter:
            self.model.set_adapter(self.adapter)
        with torch.no_grad():
            out = self.model.get_base_model().get_decoder()(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                past_key_values=self.cache, use_cache=True,
            )
        self.cache = out.past_key_values
        return out.last_hidden_state[:, -1, :]


class ReactCombiner:
    """Next-token log-probs log softmax(E W_p h) per row, W_p from the row's weights (computed once per preference)."""

    def __init__(self, maps: ReactMaps, head):
        self.maps, self.head = maps, head
        self.cache: dict[tuple[float, ...], Any] = {}

    def map_for(self, weights: Sequence[float]):
        """W_p for one row's weights, in float32 on the head's device (solved in float64 once per preference)."""
        key = tuple(float(x) for x in weights)
        if key not in self.cache:
            self.cache[key] = self.maps.mix(key).float().to(self.head.weight.device)
        return self.cache[key]

    def __call__(self, hidden: list, weights):
        import torch

        h = hidden[0]
        keys = [tuple(row) for row in weights.tolist()]
        out = None
        for key in dict.fromkeys(keys):
            rows = torch.tensor([i for i, k in enumerate(keys) if k == key], device=h.device)
            corrected = h[rows].float() @ self.map_for(key).T
            scores = torch.log_softmax(self.head(corrected.to(self.head.weight.dtype)).float(), dim=-1)
            if out is None:
                out = scores.new_empty((h.shape[0], scores.shape[-1]))
            out[rows] = scores
        return out


# -- the method ---------------------------------------------------------------------------------------------


class React(ExpertsMethod):
    """Decode every grid point from the uniform soup, each row's final representation corrected by W_p."""

    Options = ReactOptions
    name = "react"
    batch_preferences = True
    backbone = "soup"

    def prepare(self, task, context) -> None:
        from mobench.merging import merge_lora_adapters

        started = time.perf_counter()
        super().prepare(task, context)  # the experts, as adapters on one policy
        names = list(self.experts)
        self.backbone = merge_lora_adapters(self.model, names, [1.0 / len(names)] * len(names))
        folder, built, seconds = self._statistics(task, context)
        grams, crosses, counts = _read_statistics(folder, names)
        self.maps = ReactMaps.fit(grams, crosses, self.options.beta)
        self.model.set_adapter(self.backbone)  # calibration visited the experts; leave the backbone active
        self.calibration = {
            "folder": str(folder), "computed_now": built, "seconds": seconds, "beta": self.options.beta,
            "lam": self.maps.lam, "positions_rule": self.options.positions,
            "objectives": {name: {**counts[name], **_diagnostics(self.maps, crosses, i)} for i, name in enumerate(names)},
        }
        self.calibration["prepare_seconds"] = time.perf_counter() - started

    def _statistics(self, task, context) -> tuple[Path, bool, float]:
        """The cached calibration statistics' folder, whether this call computed them, and the seconds it took."""
        from mobench.artifacts import get_or_build
        from mobench.training import data_hash, key_environment

        opts, names = self.options, list(self.experts)
        held_out = {name: calibration_pairs(name, task.pairs.get(name, []), opts.experts, opts.calibration_pairs) for name in names}
        key = {
            "backbone": "uniform exact LoRA soup",
            "experts": {name: Path(self.experts[name]).name for name in names},
            "data": {name: data_hash(held_out[name]) for name in names},
            "positions": opts.positions,
            "max_length": int(opts.experts.max_length),
            **key_environment(task.policy, context),
        }
        built = []

        def build(out: Path) -> None:
            _write_statistics(out, self.model, self.tokenizer, self.backbone, held_out, opts)
            built.append(True)

        started = time.perf_counter()
        folder = get_or_build(CALIBRATION_KIND, key, build)
        return folder, bool(built), time.perf_counter() - started

    def generate(self, prompts: list[str], preferences: list[Preference]) -> list[list[str]]:
        from mobench.decoding import decode_grid

        task, context = self.prepared()
        self.check_preferences(preferences)
        scorer = HiddenStateScorer(self.model, self.backbone)
        combiner = ReactCombiner(self.maps, self.model.get_output_embeddings())
        return decode_grid([scorer], combiner, self.tokenizer, prompts, preferences, task.generation, context,
                           self.options.max_rows, "react")

    def provenance(self) -> dict[str, Any]:
        decoding = "logits = E W_p h, h the uniform soup's final-norm output, W_p = (sum p_t N_t)(sum p_t C_t)^-1 per row"
        return {**super().provenance(), "decoding": decoding, "calibration": getattr(self, "calibration", {})}


def _write_statistics(out: Path, model, tokenizer, backbone: str, held_out: dict[str, list[PreferencePair]], opts: ReactOptions) -> None:
    from safetensors.torch import save_file

    tensors, counts = {}, {}
    for name, pairs in held_out.items():
        sequences = calibration_sequences(pairs, tokenizer, int(opts.experts.max_length), opts.positions)
        gram, cross, n = representation_statistics(model, tokenizer, backbone, name, sequences, int(opts.calibration_batch))
        tensors[f"{name}.gram"], tensors[f"{name}.cross"] = gram.cpu().contiguous(), cross.cpu().contiguous()
        counts[name] = {"pairs": len(pairs), "sequences": len(sequences), "positions": n}
    save_file(tensors, str(out / STATISTICS_FILE))
    (out / COUNTS_FILE).write_text(json.dumps(counts, indent=2))


def _read_statistics(folder: Path, names: Sequence[str]):
    import torch
    from safetensors.torch import load_file

    tensors = load_file(str(folder / STATISTICS_FILE))
    counts = json.loads((folder / COUNTS_FILE).read_text())
    grams = torch.stack([tensors[f"{n}.gram"] for n in names])
    crosses = torch.stack([tensors[f"{n}.cross"] for n in names])
    return grams, crosses, counts


def _diagnostics(maps: ReactMaps, crosses, t: int) -> dict[str, float]:
    """Singular-value range of X_t, condition number of C_t, and how far W_t is from the identity (RMS entry)."""
    import torch

    s = torch.linalg.svdvals(crosses[t].double())
    w = maps.expert_map(t)
    eye = torch.eye(w.shape[0], dtype=w.dtype)
    return {
        "cross_singular_max": float(s.max()), "cross_singular_min": float(s.min()),
        "cond_C": float(torch.linalg.cond(maps.C[t])),
        "map_rms_from_identity": float((w - eye).pow(2).mean().sqrt()),
        "rotation_rms_from_identity": float((maps.O[t] - eye).pow(2).mean().sqrt()),
    }


@hookimpl
def register_methods(register):
    register.method("react", React, "ReACT: uniform soup with a closed-form per-objective correction of the final representation, mixed by the preference")
