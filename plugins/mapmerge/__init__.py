"""Controllable merging compiled once, queried per preference: ``map`` and ``merge-lite``.

Both merge the shared per-objective LoRA DPO experts (rewarded-soups' cached ones) as an exact soup
``sum_i c_i s_i B_i A_i`` (:mod:`.soup`) and, once per task, compile a map from coefficients to
per-objective fitness (:mod:`.fitness`: by default the task's objectives scoring greedy generations for the
task's validation prompts, never its evaluation prompts; or DPO implicit-reward margins on held-out pairs),
cached as an artifact; decoding a preference then costs one merge.

``map``: Li et al., "Model Merging with Amortized Pareto Fronts via Quadratic Approximation"
(arXiv 2406.07529; code luli-git/MAP). As in the paper: evaluate a few coefficient vectors, fit one
quadratic per objective (squares, cross terms, linear terms, constant) by least squares, search the
surrogates with NSGA-II (NSGA-III beyond two objectives) for the predicted Pareto front, and answer a
preference w with the front point maximising sum_i w_i f_i, each f normalised to [0, 1] over the front.
Coefficients live in a box (``low``, ``high``), not on the simplex, as MAP's code allows (it searches
[-3, 3]). Departures: the fitness is a z-scored objective mean (or the DPO margin), not a task accuracy,
so there is no sigmoid/softplus link on the quadratic; the initial design is the vertices, the uniform soup and a Latin hypercube
(MAP samples at random, and adds Bayesian refinement rounds, which are left out); the predicted front
is re-evaluated for ``reevaluate`` spread points, recorded beside the prediction (``choose_from``
switches the query to the evaluated non-dominated set).

``merge-lite``: an adaptation of Qiu et al., "Fine-Grained Model Merging via Modular Expert
Recombination" (arXiv 2602.06552; no public code). Taken from the paper: merging at the granularity of
components (here attention vs MLP modules in each of ``bands`` layer bands, each group with its own
coefficients; one-expert-per-group recombinations are part of the initial design), a library of evaluated
non-dominated merged configurations kept for reuse (an artifact: a second prepare evaluates nothing), and
a router to a library entry. This adaptation's: the router maps the *preference* to an entry (argmax of
the normalised weighted sum; with ``interpolate`` the two entries whose anchors bracket w, blended
linearly, so controllability is not piecewise flat), where the paper routes each *input* and optimises
storage against performance; the search is MAP's quadratic surrogate over the group coefficients.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal

import numpy as np

from mobench import hookimpl
from mobench.api import MobenchError, Preference, RunContext, TaskInstance
from mobench.methods.mapmerge.front import (
    QuadraticSurrogate,
    best_for,
    latin_hypercube,
    n_quadratic_params,
    non_dominated,
    route,
    search_front,
    spread,
)
from mobench.options import Options, budget, option
from mobench.training import DpoBudget, ExpertsMethod

KIND = "merge-libraries"
LIBRARY_FILE = "library.json"


@dataclass(frozen=True)
class CompileOptions(Options):
    """What MAP and merge-lite share: the experts, the fitness, the initial design and the surrogate search."""

    experts: DpoBudget = budget(DpoBudget, "the per-objective LoRA DPO experts (rewarded-soups' cached ones)")
    fitness: Literal["margin", "scored"] = option("scored", "scored: greedy generations for validation prompts scored by the task's objectives (z-units); margin: DPO implicit-reward margin on held-out pairs (teacher-forced, cheaper, but on hh it ranks the helpful expert above the harmless one on harmless pairs)")
    fitness_pairs: int = option(8, "held-out pairs per objective (after the experts' n_pairs) for the margin fitness")
    fitness_max_length: int | None = option(None, "tokens of prompt + completion in the margin fitness (None: the experts' max_length)")
    fitness_prompts: int = option(16, "prompts the scored fitness generates for: the task's validation prompts (disjoint from the evaluation prompts), then held-out pair prompts")
    fitness_tokens: int | None = option(None, "new tokens per generation of the scored fitness (None: the task's evaluation length, so the fitness scores what the evaluation scores)")
    fitness_batch_size: int = option(8, "sequences per forward pass or generation batch of the fitness")
    samples: int | None = option(None, "Latin-hypercube coefficient samples besides the structured ones (None: the quadratic's parameter count)")
    low: float = option(0.0, "lower bound of every soup coefficient (MAP's code searches [-3, 3])")
    high: float = option(1.0, "upper bound of every soup coefficient; the box leaves the simplex (sums need not be 1)")
    population: int = option(48, "NSGA-II/III population on the surrogate")
    generations: int = option(60, "NSGA-II/III generations on the surrogate")
    reevaluate: int = option(3, "points of the predicted front evaluated for real (spread over preferences)")

    def check(self) -> None:
        if not self.low < self.high:
            raise MobenchError(f"coefficient bounds need low < high, got {self.low} and {self.high}")
        for name in ("fitness_pairs", "fitness_prompts", "fitness_tokens", "fitness_batch_size", "population", "generations"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise MobenchError(f"{name} must be at least 1, not {getattr(self, name)!r}")
        if self.reevaluate < 0 or (self.samples is not None and self.samples < 0):
            raise MobenchError("reevaluate and samples must not be negative")
        if self.fitness_max_length is not None and self.fitness_max_length < 8:
            raise MobenchError(f"fitness_max_length must be at least 8 tokens, not {self.fitness_max_length}")


# MAP's own code: population 100, 150 generations; tiny keeps the prepare to a few minutes on a CPU.
_PAPER = {"fitness_pairs": 64, "fitness_prompts": 32, "population": 100, "generations": 150, "reevaluate": 10}


@dataclass(frozen=True)
class MapOptions(CompileOptions):
    """MAP's options: the shared ones plus where a preference is answered from."""

    choose_from: Literal["predicted", "evaluated"] = option("predicted", "answer from the surrogate's predicted front (MAP) or the evaluated non-dominated set")

    PRESETS: ClassVar = {"tiny": {}, "paper": _PAPER}


@dataclass(frozen=True)
class MergeLiteOptions(CompileOptions):
    """merge-lite's options: the shared ones plus the component groups, recombinations and the router."""

    bands: int = option(1, "layer bands; each band's attention and MLP modules get their own coefficients (2 x bands groups)")
    recombinations: int = option(16, "evaluate every one-expert-per-group configuration when there are at most this many")
    interpolate: bool = option(True, "blend the two library entries nearest the preference instead of taking one")

    PRESETS: ClassVar = {"tiny": {}, "paper": {**_PAPER, "bands": 2}}

    def check(self) -> None:
        super().check()
        if self.bands < 1 or self.recombinations < 0:
            raise MobenchError(f"bands must be at least 1 and recombinations not negative (got {self.bands}, {self.recombinations})")


# Options that only change how a compiled library is queried: not part of the library's key.
_QUERY_ONLY = ("choose_from", "interpolate")


def initial_design(groups: int, m: int, low: float, high: float, samples: int | None, recombinations: int,
                   seed: int) -> tuple[np.ndarray, list[str]]:
    """Coefficient vectors (rows; group-major, one coefficient per expert in each group) and where each came from.

    The experts (e_i in every group), the uniform soup, the one-expert-per-group recombinations when
    there are at most ``recombinations`` of them, then ``samples`` Latin-hypercube points of the box.
    """
    rows, source = [], []
    for i in range(m):
        rows.append(np.tile(np.eye(m)[i], groups))
        source.append(f"expert {i}")
    rows.append(np.full(groups * m, 1.0 / m))
    source.append("uniform")
    if groups > 1 and m ** groups <= recombinations:
        for choice in product(range(m), repeat=groups):
            if len(set(choice)) > 1:
                rows.append(np.concatenate([np.eye(m)[c] for c in choice]))
                source.append("recombination " + ",".join(map(str, choice)))
    d = groups * m
    n = n_quadratic_params(d) if samples is None else int(samples)
    lhs = latin_hypercube(n, d, low, high, seed)
    return np.vstack([np.array(rows), lhs]), source + ["latin hypercube"] * len(lhs)


@dataclass
class Compilation:
    """What a library build needs: the soup, a fitness factory, the options, the seed and a progress reporter."""

    soup: Any
    make_fitness: Callable[[], Any]
    options: CompileOptions
    seed: int
    progress: Any = None
    recombinations: int = 0


def _evaluate(soup, fitness, X: np.ndarray, bar) -> np.ndarray:
    out = []
    for x in X:
        soup.apply(x)
        out.append(fitness())
        if bar is not None:
            bar.advance(1)
    return np.array(out).reshape(len(X), -1)


def build_library(out: Path, plan: Compilation) -> None:
    """Evaluate the initial design, fit the quadratics, search their front, re-evaluate it; write ``library.json``."""
    started = time.perf_counter()
    o, (G, m) = plan.options, plan.soup.shape
    X0, source = initial_design(G, m, o.low, o.high, o.samples, plan.recombinations, plan.seed)
    bar = plan.progress.step("compiling merge library", total=len(X0) + o.reevaluate) if plan.progress is not None else None
    try:
        fitness = plan.make_fitness()
        F0 = _evaluate(plan.soup, fitness, X0, bar)
        surrogate = QuadraticSurrogate.fit(X0, F0)
        Xp, Fp = search_front(surrogate, G * m, o.low, o.high, o.population, o.generations, plan.seed)
        picks = spread(Fp, o.reevaluate)
        F1 = _evaluate(plan.soup, fitness, Xp[picks], bar)
    finally:
        if bar is not None:
            bar.close()
    X, F = np.vstack([X0, Xp[picks]]), np.vstack([F0, F1])
    record = {
        "groups": plan.soup.groups,
        "modules_per_group": plan.soup.module_groups,
        "adapters": plan.soup.adapters,
        "evaluated": {"coefficients": X.tolist(), "fitness": F.tolist(), "source": source + ["predicted front"] * len(picks)},
        "surrogate": {"params": surrogate.params.tolist(), "r2": surrogate.r2(X0, F0),
                      "r2_on_reevaluated": surrogate.r2(Xp[picks], F1) if len(picks) > 2 else None},
        "predicted_front": {"coefficients": Xp.tolist(), "fitness": Fp.tolist()},
        "reevaluated": {"front_index": [int(i) for i in picks], "predicted": Fp[picks].tolist(), "real": F1.tolist()},
        "library": [int(i) for i in non_dominated(F)],
        "fitness_evaluations": int(fitness.calls),
        "seconds": round(time.perf_counter() - started, 2),
    }
    (out / LIBRARY_FILE).write_text(json.dumps(record, indent=1))


class CompiledMerge(ExpertsMethod):
    """Base of ``map`` and ``merge-lite``: prepare compiles (or loads) the library, generate merges per preference."""

    batch_preferences = False
    #: layer bands of the component groups (0: one group, MAP's soup coefficients)
    bands: int = 0

    def prepare(self, task: TaskInstance, context: RunContext) -> None:
        """Load the experts, build the soup, then get the compiled library from the cache (building it once)."""
        from mobench.artifacts import get_or_build

        started = time.perf_counter()
        super().prepare(task, context)
        from mobench.methods.mapmerge.soup import GroupedSoup

        self.soup = GroupedSoup(self.model, list(self.experts), self.bands)
        self.fitness = None
        plan = Compilation(self.soup, self._make_fitness, self.options, int(context.seed), context.progress,
                           int(getattr(self.options, "recombinations", 0)))
        self.library_path = get_or_build(KIND, self.library_key(), lambda out: build_library(out, plan))
        self.library = json.loads((self.library_path / LIBRARY_FILE).read_text())
        self.chosen: dict[str, Any] = {}
        self.prepare_seconds = time.perf_counter() - started

    @property
    def fitness_evaluations(self) -> int:
        """Fitness calls made by this object (0 when the library came from the cache)."""
        return self.fitness.calls if self.fitness is not None else 0

    def _make_fitness(self):
        from mobench.methods.mapmerge.fitness import MarginFitness, ScoredFitness, fitness_prompts, held_out_pairs

        task, context = self.prepared()
        o = self.options
        if o.fitness == "margin":
            self.fitness = MarginFitness(self.model, self.tokenizer, held_out_pairs(task, o.experts, o.fitness_pairs),
                                         o.experts.beta, o.fitness_max_length or o.experts.max_length, o.fitness_batch_size)
        else:
            self.fitness = ScoredFitness(self.model, self.tokenizer, task, fitness_prompts(task, o.experts, o.fitness_prompts),
                                         o.fitness_tokens or task.generation.max_new_tokens, o.fitness_batch_size, context.seed)
        return self.fitness

    def library_key(self) -> dict[str, Any]:
        """What determines the library: the experts' keys, the groups, the compile options, the fitness data, the seed."""
        from mobench.methods.mapmerge.fitness import fitness_prompts, held_out_pairs
        from mobench.training import data_hash, expert_key

        task, context = self.prepared()
        o = self.options
        if o.fitness == "margin":
            data = {k: data_hash(v) for k, v in held_out_pairs(task, o.experts, o.fitness_pairs).items()}
        else:
            data = {"prompts": fitness_prompts(task, o.experts, o.fitness_prompts),
                    "max_new_tokens": o.fitness_tokens or task.generation.max_new_tokens,
                    "normalisation": {k: [v.mean, v.std] for k, v in sorted(task.normalisation.items())},
                    "objectives": {ob.name: ob.provenance() for ob in task.objectives}}
        compile_options = {k: v for k, v in o.to_dict().items() if k not in ("experts", *_QUERY_ONLY)}
        return {
            "experts": {name: expert_key(task.policy, name, task.pairs[name], o.experts, context) for name in self.experts},
            "groups": self.soup.module_groups,
            "compile": compile_options,
            "fitness_data": data,
            "seed": int(context.seed),
        }

    def candidates(self) -> tuple[np.ndarray, np.ndarray]:
        """The (coefficients, fitness) rows a preference is answered from: the evaluated non-dominated library."""
        ev, keep = self.library["evaluated"], self.library["library"]
        return np.array(ev["coefficients"])[keep], np.array(ev["fitness"])[keep]

    def choose(self, preference: Preference) -> tuple[np.ndarray, list[tuple[int, float]]]:
        """The coefficients for ``preference`` and the candidate rows (with blend weights) they came from."""
        X, F = self.candidates()
        picks = [(best_for(preference.weights, F), 1.0)]
        return X[picks[0][0]], picks

    def generate(self, prompts: list[str], preferences: list[Preference]) -> list[list[str]]:
        """Per preference: its coefficients from the library, the grouped soup, then greedy decoding."""
        from mobench.decoding import generate_for_task

        task, context = self.prepared()
        self.check_preferences(preferences)
        out = []
        for preference in preferences:
            x, picks = self.choose(preference)
            self.soup.apply(x)
            self.chosen[preference.key] = {"rows": [[int(j), round(float(s), 6)] for j, s in picks],
                                           "coefficients": [round(float(c), 6) for c in x]}
            out.append(generate_for_task(self.model, self.tokenizer, prompts, task.generation, context,
                                         f"{self.name} w=({preference.key})"))
        return out

    def provenance(self) -> dict[str, Any]:
        """Experts and options, plus the library (where, its build's evaluations and seconds, fit) and each point's choice."""
        base = super().provenance()
        library = getattr(self, "library", None)
        if library is None:
            return base
        X, F = self.candidates()
        return {
            **base,
            "merge": "exact LoRA-delta soup per component group: sum_i C[g, i] s_i B_i A_i (peft cat blocks)",
            "groups": library["modules_per_group"],
            "library": {
                "path": str(self.library_path),
                "build_fitness_evaluations": library["fitness_evaluations"],
                "build_seconds": library["seconds"],
                "surrogate_r2": library["surrogate"]["r2"],
                "surrogate_r2_on_reevaluated": library["surrogate"]["r2_on_reevaluated"],
                "reevaluated": library["reevaluated"],
                "candidates": {"coefficients": X.round(6).tolist(), "fitness": F.round(6).tolist()},
            },
            "fitness_evaluations": self.fitness_evaluations,
            "prepare_seconds": round(self.prepare_seconds, 2),
            "chosen": dict(self.chosen),
        }


class Map(CompiledMerge):
    """MAP: one soup coefficient per expert, quadratic surrogates, NSGA front, weighted-sum query."""

    Options = MapOptions
    name = "map"
    bands = 0

    def candidates(self) -> tuple[np.ndarray, np.ndarray]:
        """The predicted front (MAP's amortised front) or, with choose_from=evaluated, the evaluated library."""
        if self.options.choose_from == "evaluated":
            return super().candidates()
        front = self.library["predicted_front"]
        return np.array(front["coefficients"]), np.array(front["fitness"])


class MergeLite(CompiledMerge):
    """merge-lite: coefficients per component group, an evaluated non-dominated library, a preference router."""

    Options = MergeLiteOptions
    name = "merge-lite"

    @property
    def bands(self) -> int:  # type: ignore[override]
        return int(self.options.bands)

    def choose(self, preference: Preference) -> tuple[np.ndarray, list[tuple[int, float]]]:
        """The routed library entry, or the blend of the two entries nearest the preference (``interpolate``)."""
        X, F = self.candidates()
        picks = route(preference.weights, F, self.options.interpolate)
        return sum(share * X[j] for j, share in picks), picks


@hookimpl
def register_methods(register):
    register.method("map", Map, "MAP: quadratic surrogates of per-objective fitness over soup coefficients, NSGA front, weighted-sum query")
    register.method("merge-lite", MergeLite, "MERGE adaptation: per-component-group soups, a cached non-dominated library, a preference router")
