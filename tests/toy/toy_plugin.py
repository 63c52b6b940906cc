"""A test-only plugin file (loaded with --plugins-dir): the task `toy` and the method `letters`.

`letters` answers every prompt with round(unit * w_1) letters 'a' and round(unit * w_2) letters 'b'
(unit: an option, 10 by default); the toy objectives count them, so every score is known by hand.
MOBENCH_TOY_SLEEP makes each grid point slow enough to kill a run in the middle; MOBENCH_TOY_HOLD_AFTER=k makes
the run stop after its k-th grid point and wait (up to 10 minutes) for a signal, so a test that signals it once
it sees k rows never races the run's end on a loaded machine. The command
`toy-hello` exercises the register_commands hook.
"""

import os
import random
import time
from dataclasses import dataclass

import click

from mobench import hookimpl
from mobench.api import Method, Normalisation, TaskInstance
from mobench.options import Options, option


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


@dataclass(frozen=True)
class LettersOptions(Options):
    unit: int = option(10, "letters written for a weight of 1")

    PRESETS = {"paper": {"unit": 100}}


def hold_after(done: int, variable: str = "MOBENCH_TOY_HOLD_AFTER") -> None:
    """Once ``done`` grid points reach the count in ``variable``, block until a signal ends the process (10 minutes
    at most): a kill test that waits for that many rows then never races the run's end on a loaded machine."""
    hold = os.environ.get(variable)
    if hold and done >= int(hold):
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            time.sleep(0.05)


class Letters(Method):
    Options = LettersOptions

    def prepare(self, task, context):
        super().prepare(task, context)
        self.draw = random.random()  # the runner seeded `random` from --seed just before prepare
        self.sleep = float(os.environ.get("MOBENCH_TOY_SLEEP", "0"))
        self.generated = []

    def generate(self, prompts, preferences):
        out = []
        for p in preferences:
            hold_after(len(self.generated))
            time.sleep(self.sleep)
            self.generated.append(p.key)
            unit = self.options.unit
            out.append(["a" * round(unit * p[0]) + "b" * round(unit * p[1]) for _ in prompts])
        return out

    def provenance(self):
        return {"kind": "test-only", "generated": list(self.generated), "unit": self.options.unit, "seeded_draw": self.draw}


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


@hookimpl
def register_commands(cli):
    @cli.command("toy-hello")
    @click.option("--name", default="world")
    def toy_hello(name):
        """Say hello (a test of the register_commands hook)."""
        click.echo(f"hello {name}")
