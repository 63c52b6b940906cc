"""A test-only plugin file (loaded with --plugins-dir): the task `toy` and the method `letters`.

`letters` answers every prompt with round(10 * w_1) letters 'a' and round(10 * w_2) letters 'b';
the toy objectives count them, so every score is known by hand. MOBENCH_TOY_SLEEP makes each grid
point slow enough to kill a run in the middle.
"""

import os
import time

from mobench import hookimpl
from mobench.api import Normalisation, TaskInstance


class Count:
    direction = 1

    def __init__(self, letter):
        self.letter = letter
        self.name = f"count-{letter}"

    def score(self, prompts, responses):
        return [float(r.count(self.letter)) for r in responses]

    def provenance(self):
        return {"kind": "letter count", "letter": self.letter}


def load(scale, context):
    return TaskInstance(
        name="toy",
        scale=scale,
        policy=os.environ.get("MOBENCH_TOY_POLICY", "none"),
        objectives=[Count("a"), Count("b")],
        prompts=[f"prompt {i}" for i in range(4)],
        normalisation={"count-a": Normalisation(0.0, 1.0), "count-b": Normalisation(0.0, 1.0)},
        reference_point=(0.0, 0.0),
        grid_points=3,
        generation={"max_new_tokens": 4, "do_sample": False, "batch_size": 4},
    )


class Letters:
    name = "letters"
    batch_preferences = False

    def prepare(self, task, context):
        self.sleep = float(os.environ.get("MOBENCH_TOY_SLEEP", "0"))
        self.generated = []

    def generate(self, prompts, preferences):
        out = []
        for p in preferences:
            time.sleep(self.sleep)
            self.generated.append(p.key)
            out.append(["a" * round(10 * p[0]) + "b" * round(10 * p[1]) for _ in prompts])
        return out

    def provenance(self):
        return {"kind": "test-only", "generated": list(self.generated)}


@hookimpl
def register_tasks(register):
    register.task("toy", load, objectives=("count-a", "count-b"), description="test-only task")


@hookimpl
def register_methods(register):
    register.method("letters", Letters, "test-only method")


@hookimpl
def register_objectives(register):
    register.objective("count-a", lambda scale: Count("a"), direction=1, description="letters 'a'")
    register.objective("count-b", lambda scale: Count("b"), direction=1, description="letters 'b'")
