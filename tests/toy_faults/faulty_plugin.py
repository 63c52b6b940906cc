"""A test-only plugin file of faults (loaded with --plugins-dir tests/toy_faults) for tests/test_faults.py.

Tasks whose instance is incoherent (reference point or normalisation not matching the objectives,
objective names breaking the rule, a scorer returning NaN) and methods that fail in prepare or after
MOBENCH_FAULT_AT grid points, or answer with the wrong number of responses. Every score is a letter
count, known by hand, as in tests/toy/toy_plugin.py.
"""

import os
import time

from mobench import hookimpl
from mobench.api import Method, MobenchError, Normalisation, TaskInstance


class Count:
    direction = 1

    def __init__(self, name, letter, nan=False):
        self.name, self.letter, self.nan = name, letter, nan

    def score(self, prompts, responses):
        return [float("nan") if self.nan else float(r.count(self.letter)) for r in responses]

    def provenance(self):
        return {"kind": "letter count", "letter": self.letter}


def _loader(names=("count-x", "count-y"), reference_point=(0.0, 0.0), normalised=None, nan=False):
    def load(scale, context):
        objectives = [Count(names[0], "a", nan=nan), Count(names[1], "b")]
        norm = {n: Normalisation(0.0, 1.0) for n in (normalised or names)}
        return TaskInstance(name="faulty", scale=scale, policy="none", objectives=objectives,
                            prompts=[f"prompt {i}" for i in range(3)], normalisation=norm,
                            reference_point=reference_point, grid_points=3)
    return load


class Good(Method):
    def prepare(self, task, context):
        super().prepare(task, context)
        self.done = 0

    def generate(self, prompts, preferences):
        out = []
        for p in preferences:
            at = os.environ.get("MOBENCH_FAULT_AT")
            if at is not None and self.done >= int(at):
                raise MobenchError(f"fault injected after {self.done} grid points [/boom]")
            time.sleep(float(os.environ.get("MOBENCH_FAULT_SLEEP", "0")))
            self.done += 1
            out.append(["a" * round(10 * p[0]) + "b" * round(10 * p[1]) for _ in prompts])
        return out


class FailsPrepare(Good):
    def prepare(self, task, context):
        raise RuntimeError("CUDA is missing [/gpu] on this machine")


class WrongCount(Good):
    def generate(self, prompts, preferences):
        return [["a"] for _ in preferences]


@hookimpl
def register_tasks(register):
    register.task("good", _loader(), objectives=("count-x", "count-y"))
    register.task("bad-ref", _loader(reference_point=(0.0, 0.0, 0.0)), objectives=("count-x", "count-y"))
    register.task("bad-norm", _loader(normalised=("count-x", "count-z")), objectives=("count-x", "count-y"))
    register.task("dollar", _loader(names=("a$b", "count-y")), objectives=("a$b", "count-y"))
    register.task("html", _loader(names=("a|<b>x</b>", "count-y")), objectives=("a|<b>x</b>", "count-y"))
    register.task("nan-task", _loader(nan=True), objectives=("count-x", "count-y"))


@hookimpl
def register_methods(register):
    register.method("good", Good, "writes letters; MOBENCH_FAULT_AT=k fails after k points")
    register.method("fails-prepare", FailsPrepare, "raises in prepare")
    register.method("wrong-count", WrongCount, "one response for every prompt set")


@hookimpl
def register_objectives(register):
    register.objective("count-x", lambda scale: Count("count-x", "a"), direction=1)
    register.objective("count-y", lambda scale: Count("count-y", "b"), direction=1)
