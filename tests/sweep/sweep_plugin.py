"""A test-only plugin file for `mobench sweep` (loaded with --plugins-dir).

On the toy task of tests/toy (4 prompts, a 3-point grid, letters counted by hand-checkable objectives), two
methods that both build one shared trained piece per (task, seed) through the artifact cache, the
"codebook": `letters-shared` (all its points in one job) and `letters-per-point` (trains_per_preference:
it also builds one "policy" artifact per grid point, so a sweep splits its grid across shards).
MOBENCH_SWEEP_BUILD_SLEEP slows each build (jobs then really meet on a key being built);
MOBENCH_TOY_SLEEP slows each grid point (a sweep can be killed half way).

The micro-model task `micro-pairs` and the method `expert-switch` come from tests/shared_pieces (real
LoRA DPO experts of a randomly initialised micro model, shared between methods); `expert-switch-last` is
the same method registered with ``prefer_last`` fixed, so two methods share every expert.
"""

import importlib.util
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from mobench import hookimpl
from mobench.api import Method
from mobench.artifacts import get_or_build
from mobench.options import Options, option

TESTS = Path(__file__).resolve().parents[1]


def _module(name, path):
    """Another test plugin file as a module (its hooks are not registered: only this file's are)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = sys.modules[name] = importlib.util.module_from_spec(spec)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


toy = _module("sweep_test_toy", TESTS / "toy" / "toy_plugin.py")
expert_switch = _module("sweep_test_expert_switch", TESTS / "shared_pieces" / "expert_switch.py")


def builder(key):
    """The build of a test piece (a file holding its key), slowed by MOBENCH_SWEEP_BUILD_SLEEP."""
    def build(out):
        time.sleep(float(os.environ.get("MOBENCH_SWEEP_BUILD_SLEEP", "0")))
        (out / "piece.json").write_text(json.dumps(key))

    return build


_points_done = 0  # grid points this process has started generating


def _hold_if_done_enough():
    """MOBENCH_SWEEP_HOLD_AFTER=k: this process generates k grid points, then blocks until a signal ends it (the
    kill tests send one), so a test kills a sweep mid-run without a race against its end."""
    global _points_done
    toy.hold_after(_points_done, "MOBENCH_SWEEP_HOLD_AFTER")
    _points_done += 1


def _build(kind, key):
    return get_or_build(kind, key, builder(key))


@dataclass(frozen=True)
class LettersOptions(Options):
    unit: int = option(10, "letters written for a weight of 1")


class LettersShared(Method):
    Options = LettersOptions

    def prepare(self, task, context):
        super().prepare(task, context)
        self.codebook = _build("sweep-codebook", {"task": task.name, "seed": context.seed})

    def letters(self, preference):
        return "a" * round(self.options.unit * preference[0]) + "b" * round(self.options.unit * preference[1])

    def generate(self, prompts, preferences):
        out = []
        for p in preferences:
            _hold_if_done_enough()
            time.sleep(float(os.environ.get("MOBENCH_TOY_SLEEP", "0")))
            out.append([self.letters(p) for _ in prompts])
        return out

    def provenance(self):
        return {**super().provenance(), "codebook": str(getattr(self, "codebook", ""))}


class LettersPerPoint(LettersShared):
    trains_per_preference = True

    def generate(self, prompts, preferences):
        task, context = self.prepared()
        for p in preferences:
            _build("sweep-policy", {"task": task.name, "seed": context.seed, "w": p.key})
        return super().generate(prompts, preferences)


@hookimpl
def register_tasks(register):
    register.task("toy", toy.load, objectives=("count-a", "count-b"), description="test-only task")
    register.task("micro-pairs", expert_switch.load_micro, objectives=("brevity", "sentiment"),
                  description="a micro-model task with pairs")


@hookimpl
def register_methods(register):
    register.method("letters-shared", LettersShared, "test-only: one shared piece per (task, seed)")
    register.method("letters-per-point", LettersPerPoint, "test-only: a shared piece and one piece per grid point")
    register.method("expert-switch", expert_switch.ExpertSwitch, "decode with the expert of the largest weight")
    register.method("expert-switch-last", expert_switch.ExpertSwitch, "expert-switch, ties to the last", prefer_last=True)


@hookimpl
def register_objectives(register):
    register.objective("count-a", lambda scale: toy.Count("a"), direction=1, description="letters 'a'")
    register.objective("count-b", lambda scale: toy.Count("b"), direction=1, description="letters 'b'")
